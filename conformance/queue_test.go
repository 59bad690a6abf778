package conformance

import (
	"fmt"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestQueueServerNamed(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q, err := ch.QueueDeclare("", false, false, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(q.Name, "amq.gen-") || len(q.Name) <= len("amq.gen-") {
		t.Fatalf("server-named queue %q, want amq.gen-*", q.Name)
	}
	q2, err := ch.QueueDeclare("", false, false, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if q2.Name == q.Name {
		t.Fatal("two server-named queues got the same name")
	}
	// The default exchange routes to it by name.
	publish(t, ch, "", q.Name, "m")
	getOne(t, ch, q.Name, true)
}

func TestQueueDeclareOkCounts(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishConfirmed(t, c, "", q, "a", "b", "c")
	cch := openCh(t, c)
	consume(t, cch, q, false)
	cch2 := openCh(t, c)
	if err := cch2.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	consume(t, cch2, q, false)
	// Both consumers hold unacked messages now; declare-ok counts only ready messages.
	eventually(t, "all messages delivered", func() bool { m, _ := queueCounts(t, q); return m == 0 })
	durable, args := declaredAs(nil)
	st, err := ch.QueueDeclare(q, durable, false, false, false, args)
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != 0 || st.Consumers != 2 {
		t.Fatalf("declare-ok messages=%d consumers=%d, want 0 2", st.Messages, st.Consumers)
	}
	q2 := declareQueue(t, ch, nil)
	publishConfirmed(t, c, "", q2, "a", "b")
	st, err = ch.QueueDeclarePassive(q2, false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != 2 || st.Consumers != 0 {
		t.Fatalf("passive declare-ok messages=%d consumers=%d, want 2 0", st.Messages, st.Consumers)
	}
}

func TestQueueErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		op   func(t *testing.T, ch *amqp.Channel) error
		code int
		text string
	}{
		{"passive-missing", func(t *testing.T, ch *amqp.Channel) error {
			_, err := ch.QueueDeclarePassive("conf-missing-queue", false, false, false, false, nil)
			return err
		}, amqp.NotFound, "NOT_FOUND - no queue 'conf-missing-queue' in vhost '/'"},
		{"redeclare-durable", func(t *testing.T, ch *amqp.Channel) error {
			q := declareQueue(t, ch, nil)
			durable, args := declaredAs(nil)
			_, err := ch.QueueDeclare(q, !durable, false, false, false, args)
			return err
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '"},
		{"redeclare-auto-delete", func(t *testing.T, ch *amqp.Channel) error {
			q := declareQueue(t, ch, nil)
			durable, args := declaredAs(nil)
			_, err := ch.QueueDeclare(q, durable, true, false, false, args)
			return err
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue '"},
		{"redeclare-args", func(t *testing.T, ch *amqp.Channel) error {
			q := declareQueue(t, ch, amqp.Table{"x-max-length": int32(10)})
			durable, args := declaredAs(amqp.Table{"x-max-length": int32(20)})
			_, err := ch.QueueDeclare(q, durable, false, false, false, args)
			return err
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue '"},
		{"redeclare-missing-arg", func(t *testing.T, ch *amqp.Channel) error {
			q := declareQueue(t, ch, amqp.Table{"x-message-ttl": int32(1000)})
			durable, args := declaredAs(nil)
			_, err := ch.QueueDeclare(q, durable, false, false, false, args)
			return err
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '"},
		{"bind-missing-queue", func(t *testing.T, ch *amqp.Channel) error {
			return ch.QueueBind("conf-missing-queue", "k", "amq.direct", false, nil)
		}, amqp.NotFound, "NOT_FOUND - no queue 'conf-missing-queue' in vhost '/'"},
		{"bind-missing-exchange", func(t *testing.T, ch *amqp.Channel) error {
			q := declareQueue(t, ch, nil)
			return ch.QueueBind(q, "k", "conf-missing-exchange", false, nil)
		}, amqp.NotFound, "NOT_FOUND - no exchange 'conf-missing-exchange' in vhost '/'"},
		{"purge-missing", func(t *testing.T, ch *amqp.Channel) error {
			_, err := ch.QueuePurge("conf-missing-queue", false)
			return err
		}, amqp.NotFound, "NOT_FOUND - no queue 'conf-missing-queue' in vhost '/'"},
		{"consume-missing", func(t *testing.T, ch *amqp.Channel) error {
			_, err := ch.Consume("conf-missing-queue", "", false, false, false, false, nil)
			return err
		}, amqp.NotFound, "NOT_FOUND - no queue 'conf-missing-queue' in vhost '/'"},
		{"get-missing", func(t *testing.T, ch *amqp.Channel) error {
			_, _, err := ch.Get("conf-missing-queue", false)
			return err
		}, amqp.NotFound, "NOT_FOUND - no queue 'conf-missing-queue' in vhost '/'"},
		{"delete-if-empty", func(t *testing.T, ch *amqp.Channel) error {
			q := declareQueue(t, ch, nil)
			publish(t, ch, "", q, "m")
			waitCount(t, q, 1)
			_, err := ch.QueueDelete(q, false, true, false)
			return err
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - queue '"},
		{"delete-if-unused", func(t *testing.T, ch *amqp.Channel) error {
			q := declareQueue(t, ch, nil)
			consume(t, ch, q, false)
			_, err := ch.QueueDelete(q, true, false, false)
			return err
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - queue '"},
		{"declare-amq-prefix", func(t *testing.T, ch *amqp.Channel) error {
			_, err := ch.QueueDeclare("amq.conformance", false, false, false, false, nil)
			return err
		}, amqp.AccessRefused, "ACCESS_REFUSED - queue name 'amq.conformance' contains reserved prefix 'amq.*'"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, ch := setup(t)
			ae := expectChannelClosed(t, c, tc.op(t, ch), tc.code)
			if !strings.HasPrefix(ae.Reason, tc.text) {
				t.Errorf("reply text = %q, want prefix %q", ae.Reason, tc.text)
			}
		})
	}
}

func TestQueueIdempotentDeletes(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	n, err := ch.QueueDelete(uname(t, "never"), false, false, false)
	if err != nil || n != 0 {
		t.Fatalf("delete missing queue: n=%d err=%v", n, err)
	}
	q := declareQueue(t, ch, nil)
	// Unbinding a binding that does not exist succeeds.
	if err := ch.QueueUnbind(q, "nope", "amq.direct", nil); err != nil {
		t.Fatalf("unbind of a missing binding: %v", err)
	}
}

func TestQueueExclusive(t *testing.T) {
	t.Parallel()
	owner, och := setup(t)
	q := uname(t, "excl")
	if _, err := och.QueueDeclare(q, false, false, true, false, nil); err != nil {
		t.Fatal(err)
	}
	cleanupQueue(t, q)
	// The owner can use it freely, from any channel.
	och2 := openCh(t, owner)
	publish(t, och2, "", q, "m")
	getOne(t, och2, q, true)

	ops := []struct {
		name string
		op   func(ch *amqp.Channel) error
	}{
		{"declare", func(ch *amqp.Channel) error { _, err := ch.QueueDeclare(q, false, false, true, false, nil); return err }},
		{"declare-non-exclusive", func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclare(q, false, false, false, false, nil)
			return err
		}},
		{"passive", func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
			return err
		}},
		{"consume", func(ch *amqp.Channel) error { _, err := ch.Consume(q, "", false, false, false, false, nil); return err }},
		{"get", func(ch *amqp.Channel) error { _, _, err := ch.Get(q, false); return err }},
		{"purge", func(ch *amqp.Channel) error { _, err := ch.QueuePurge(q, false); return err }},
		{"delete", func(ch *amqp.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err }},
		{"bind", func(ch *amqp.Channel) error { return ch.QueueBind(q, "k", "amq.direct", false, nil) }},
		{"unbind", func(ch *amqp.Channel) error { return ch.QueueUnbind(q, "owner-key", "amq.direct", nil) }},
	}
	if err := och2.QueueBind(q, "owner-key", "amq.direct", false, nil); err != nil {
		t.Fatal(err)
	}
	other := dial(t)
	for _, op := range ops {
		ch := openCh(t, other)
		err := op.op(ch)
		if errCode(err) != amqp.ResourceLocked {
			t.Fatalf("%s from another connection: %v, want 405", op.name, err)
		}
		ae := expectChannelClosed(t, other, err, amqp.ResourceLocked)
		want := fmt.Sprintf("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '%s' in vhost '/'", q)
		if !strings.HasPrefix(ae.Reason, want) {
			t.Errorf("%s: reply text %q, want prefix %q", op.name, ae.Reason, want)
		}
	}
	// RabbitMQ 3.10 answers unbind-ok to an unbind of a binding that does not exist before it
	// checks exclusivity.
	uch := openCh(t, other)
	if err := uch.QueueUnbind(q, "no-such-key", "amq.direct", nil); err != nil {
		t.Fatalf("unbind of a missing binding from another connection: %v", err)
	}
	// Publishing to it from another connection is allowed.
	publishConfirmed(t, other, "", q, "from-other")
	if m := getOne(t, och2, q, true); string(m.Body) != "from-other" {
		t.Fatalf("body %q", m.Body)
	}
	// It disappears with its connection.
	owner.Close()
	eventually(t, "exclusive queue deletion", func() bool { return !queueExists(t, q) })
}

func TestQueueAutoDelete(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := uname(t, "ad")
	if _, err := ch.QueueDeclare(q, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	cleanupQueue(t, q)
	// basic.get does not count as a consumer, and a queue never consumed from stays.
	publish(t, ch, "", q, "m")
	getOne(t, ch, q, false)
	if !queueExists(t, q) {
		t.Fatal("auto-delete queue vanished without ever having a consumer")
	}
	cch1 := openCh(t, c)
	cch2 := openCh(t, c)
	d1, err := cch1.Consume(q, "c1", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = d1
	consume(t, cch2, q, false)
	if err := cch1.Cancel("c1", false); err != nil {
		t.Fatal(err)
	}
	if !queueExists(t, q) {
		t.Fatal("auto-delete queue deleted while a consumer remains")
	}
	// The last consumer goes with its channel.
	cch2.Close()
	eventually(t, "auto-delete queue removal", func() bool { return !queueExists(t, q) })
}

func TestQueueDurableFlagsRoundTrip(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q := uname(t, "durable")
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	cleanupQueue(t, q)
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatalf("equivalent redeclare: %v", err)
	}
	// Passive declare ignores the flags entirely.
	if _, err := ch.QueueDeclarePassive(q, false, true, true, false, amqp.Table{"x-max-length": int32(1)}); err != nil {
		t.Fatalf("passive declare with other flags: %v", err)
	}
}

func TestQueueBindUnbindPurgeDelete(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	x := declareExchange(t, ch, "direct", nil)
	q := declareQueue(t, ch, nil)
	bind(t, ch, q, "a", x, nil)
	bind(t, ch, q, "b", x, nil)
	// Binding twice is idempotent.
	bind(t, ch, q, "a", x, nil)
	publishConfirmed(t, c, x, "a", "1", "2")
	publishConfirmed(t, c, x, "b", "3")
	publishConfirmed(t, c, x, "c", "dropped")
	n, err := ch.QueuePurge(q, false)
	if err != nil || n != 3 {
		t.Fatalf("purge: n=%d err=%v, want 3", n, err)
	}
	if err := ch.QueueUnbind(q, "a", x, nil); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, c, x, "a", "dropped")
	publishConfirmed(t, c, x, "b", "4", "5")
	if n, err := ch.QueuePurge(q, false); err != nil || n != 2 {
		t.Fatalf("purge after unbind: n=%d err=%v, want 2", n, err)
	}
	publishConfirmed(t, c, x, "b", "6", "7", "8")
	n, err = ch.QueueDelete(q, false, false, false)
	if err != nil || n != 3 {
		t.Fatalf("delete: n=%d err=%v, want 3", n, err)
	}
	if queueExists(t, q) {
		t.Fatal("queue still exists after delete")
	}
	// An empty, unused queue passes both if-empty and if-unused.
	q2 := declareQueue(t, ch, nil)
	if _, err := ch.QueueDelete(q2, true, true, false); err != nil {
		t.Fatalf("delete if-unused if-empty: %v", err)
	}
}

func TestQueueOneCopyPerPublish(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	x := declareExchange(t, ch, "topic", nil)
	q := declareQueue(t, ch, nil)
	for _, k := range []string{"a.b", "a.*", "#", "*.b", "a.#"} {
		bind(t, ch, q, k, x, nil)
	}
	publish(t, ch, x, "a.b", "one")
	if got := getAll(t, ch, q); strings.Join(got, ",") != "one" {
		t.Fatalf("got %v, want one copy", got)
	}
}

func TestQueueBindingsGoWithQueue(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	x := declareExchange(t, ch, "fanout", nil)
	q := declareQueue(t, ch, nil)
	bind(t, ch, q, "", x, nil)
	if _, err := ch.QueueDelete(q, false, false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	publish(t, ch, x, "", "m")
	if got := getAll(t, ch, q); len(got) != 0 {
		t.Fatalf("recreated queue received %v through a binding of its predecessor", got)
	}
}

func TestQueuePurgeLeavesUnacked(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishConfirmed(t, c, "", q, nums(0, 4)...)
	cch := openCh(t, c)
	if err := cch.Qos(2, 0, false); err != nil {
		t.Fatal(err)
	}
	held := collect(t, consume(t, cch, q, false), 2)
	eventually(t, "3 ready messages", func() bool { m, _ := queueCounts(t, q); return m == 3 })
	n, err := ch.QueuePurge(q, false)
	if err != nil || n != 3 {
		t.Fatalf("purge n=%d err=%v, want 3 (unacked messages are not purged)", n, err)
	}
	// The unacked ones come back when their channel closes.
	cch.Close()
	waitCount(t, q, 2)
	again := collect(t, consume(t, ch, q, false), 2)
	assertBodies(t, again, bodies(held)...)
	assertRedelivered(t, again, true)
}

func TestQueueDeleteDropsUnacked(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishConfirmed(t, c, "", q, nums(0, 2)...)
	cch := openCh(t, c)
	collect(t, consume(t, cch, q, false), 3)
	// delete-ok's message-count counts only ready messages.
	n, err := ch.QueueDelete(q, false, false, false)
	if err != nil || n != 0 {
		t.Fatalf("delete n=%d err=%v, want 0", n, err)
	}
	// Acking a message of a deleted queue is not an error.
	if err := cch.Ack(3, true); err != nil {
		t.Fatal(err)
	}
	if _, err := cch.QueueDeclare(uname(t, "sync"), false, true, false, false, nil); err != nil {
		t.Fatalf("channel closed after acking messages of a deleted queue: %v", err)
	}
}

func TestQueuePassiveNoWaitStillFails(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	err := awaitClose(t, ch, func() {
		ch.QueueDeclarePassive(uname(t, "missing"), false, false, false, true, nil)
	})
	expectChannelClosed(t, c, err, amqp.NotFound)
}

func TestQueueDurableExclusiveIsTransient(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := uname(t, "durable-excl")
	if _, err := ch.QueueDeclare(q, true, false, true, false, nil); err != nil {
		t.Fatal(err)
	}
	cleanupQueue(t, q)
	c.Close()
	eventually(t, "durable exclusive queue deletion", func() bool { return !queueExists(t, q) })
}
