package conformance

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// dlxSetup declares a fanout dead-letter exchange bound to a fresh queue and returns both plus a
// consumer on the dead-letter queue.
func dlxSetup(t *testing.T, ch *amqp.Channel) (dlx, dlq string, dead <-chan amqp.Delivery) {
	t.Helper()
	dlx = declareExchange(t, ch, "fanout", nil)
	dlq = declareQueue(t, ch, nil)
	bind(t, ch, dlq, "", dlx, nil)
	return dlx, dlq, consume(t, ch, dlq, true)
}

// xDeath returns the x-death entries of m.
func xDeath(t *testing.T, m amqp.Delivery) []amqp.Table {
	t.Helper()
	raw, ok := m.Headers["x-death"].([]any)
	if !ok {
		t.Fatalf("x-death header missing or not an array: %#v", m.Headers)
	}
	var out []amqp.Table
	for _, e := range raw {
		tb, ok := e.(amqp.Table)
		if !ok {
			t.Fatalf("x-death entry %#v is not a table", e)
		}
		out = append(out, tb)
	}
	return out
}

// checkDeath asserts one x-death entry.
func checkDeath(t *testing.T, e amqp.Table, count int64, reason, queue, exchange string, keys ...string) {
	t.Helper()
	if c, ok := e["count"].(int64); !ok || c != count {
		t.Errorf("x-death count = %#v (%T), want int64 %d", e["count"], e["count"], count)
	}
	if e["reason"] != reason || e["queue"] != queue || e["exchange"] != exchange {
		t.Errorf("x-death reason/queue/exchange = %v/%v/%v, want %s/%s/%s", e["reason"], e["queue"], e["exchange"], reason, queue, exchange)
	}
	var want []any
	for _, k := range keys {
		want = append(want, k)
	}
	if !reflect.DeepEqual(e["routing-keys"], want) {
		t.Errorf("x-death routing-keys = %#v, want %#v", e["routing-keys"], want)
	}
	ts, ok := e["time"].(time.Time)
	if !ok || time.Since(ts) > time.Minute || time.Until(ts) > time.Minute {
		t.Errorf("x-death time = %#v, want a timestamp close to now", e["time"])
	}
}

func checkFirstDeath(t *testing.T, m amqp.Delivery, reason, queue, exchange string) {
	t.Helper()
	h := m.Headers
	if h["x-first-death-reason"] != reason || h["x-first-death-queue"] != queue || h["x-first-death-exchange"] != exchange {
		t.Errorf("x-first-death-* = %v/%v/%v, want %s/%s/%s", h["x-first-death-reason"], h["x-first-death-queue"],
			h["x-first-death-exchange"], reason, queue, exchange)
	}
}

func TestDeadLetterRejected(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		settle func(ch *amqp.Channel, ds []amqp.Delivery) error
		dead   []string
	}{
		{"reject", func(ch *amqp.Channel, ds []amqp.Delivery) error { return ds[1].Reject(false) }, []string{"1"}},
		{"nack", func(ch *amqp.Channel, ds []amqp.Delivery) error { return ds[0].Nack(false, false) }, []string{"0"}},
		{"nack-multiple", func(ch *amqp.Channel, ds []amqp.Delivery) error { return ds[2].Nack(true, false) }, []string{"0", "1", "2"}},
		{"requeue-is-not-dead", func(ch *amqp.Channel, ds []amqp.Delivery) error { return ds[2].Nack(true, true) }, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, ch := setup(t)
			dlx, _, dead := dlxSetup(t, ch)
			x := declareExchange(t, ch, "direct", nil)
			q := declareQueue(t, ch, amqp.Table{"x-dead-letter-exchange": dlx})
			bind(t, ch, q, "rk", x, nil)
			publishConfirmed(t, c, x, "rk", nums(0, 2)...)
			cch := openCh(t, c)
			ds := collect(t, consume(t, cch, q, false), 3)
			if err := tc.settle(cch, ds); err != nil {
				t.Fatal(err)
			}
			if tc.dead == nil {
				expectNoDelivery(t, dead)
				return
			}
			got := collect(t, dead, len(tc.dead))
			assertBodies(t, got, tc.dead...)
			for _, m := range got {
				// Dead-lettered messages are published to the DLX with their original routing key.
				if m.Exchange != dlx || m.RoutingKey != "rk" {
					t.Errorf("dead letter came via %q/%q", m.Exchange, m.RoutingKey)
				}
				d := xDeath(t, m)
				if len(d) != 1 {
					t.Fatalf("x-death has %d entries", len(d))
				}
				checkDeath(t, d[0], 1, "rejected", q, x, "rk")
				checkFirstDeath(t, m, "rejected", q, x)
			}
		})
	}
}

func TestDeadLetterRoutingKeyAndCC(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	dlx := declareExchange(t, ch, "direct", nil)
	dlq := declareQueue(t, ch, nil)
	bind(t, ch, dlq, "dead-key", dlx, nil)
	dead := consume(t, ch, dlq, true)
	q := declareQueue(t, ch, amqp.Table{"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead-key"})
	bind(t, ch, q, "cc-key", "amq.direct", nil)
	// Routed by its CC header only; the queue gets one copy.
	publishMsg(t, ch, "amq.direct", "main-key", amqp.Publishing{Headers: amqp.Table{"CC": []any{"cc-key"}}, Body: []byte("m")})
	getOne(t, ch, q, false).Reject(false)
	m := collect(t, dead, 1)[0]
	if m.RoutingKey != "dead-key" || m.Exchange != dlx {
		t.Errorf("dead letter came via %q/%q, want %s/dead-key", m.Exchange, m.RoutingKey, dlx)
	}
	// routing-keys records the original routing key followed by the CC keys.
	checkDeath(t, xDeath(t, m)[0], 1, "rejected", q, "amq.direct", "main-key", "cc-key")
	// With an explicit dead-letter routing key RabbitMQ strips the CC header (so the dead letter is
	// routed with dead-key only).
	if _, ok := m.Headers["CC"]; ok {
		t.Errorf("CC header = %#v, want removed", m.Headers["CC"])
	}
	if n, _ := queueCounts(t, dlq); n != 0 {
		t.Fatalf("dead-letter queue holds %d extra messages", n)
	}
}

func TestDeadLetterQueueTTL(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	dlx, _, dead := dlxSetup(t, ch)
	q := declareQueue(t, ch, amqp.Table{"x-dead-letter-exchange": dlx, "x-message-ttl": int32(20)})
	publishN(t, ch, q, 3)
	got := collect(t, dead, 3)
	assertBodies(t, got, "0", "1", "2")
	for _, m := range got {
		d := xDeath(t, m)
		checkDeath(t, d[0], 1, "expired", q, "", q)
		if _, ok := d[0]["original-expiration"]; ok {
			t.Error("original-expiration set for a queue TTL expiry")
		}
		checkFirstDeath(t, m, "expired", q, "")
	}
}

func TestDeadLetterPerMessageTTL(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	dlx, _, dead := dlxSetup(t, ch)
	q := declareQueue(t, ch, amqp.Table{"x-dead-letter-exchange": dlx})
	publishMsg(t, ch, "", q, amqp.Publishing{Expiration: "10", Body: []byte("short")})
	m := collect(t, dead, 1)[0]
	if m.Expiration != "" {
		t.Errorf("expiration property %q kept on the dead letter", m.Expiration)
	}
	d := xDeath(t, m)
	checkDeath(t, d[0], 1, "expired", q, "", q)
	if d[0]["original-expiration"] != "10" {
		t.Errorf("original-expiration = %#v, want \"10\"", d[0]["original-expiration"])
	}
}

func TestDeadLetterTTLOnlyAtHead(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	dlx, _, dead := dlxSetup(t, ch)
	q := declareQueue(t, ch, amqp.Table{"x-dead-letter-exchange": dlx})
	publishMsg(t, ch, "", q, amqp.Publishing{Expiration: "60000", Body: []byte("long")})
	publishMsg(t, ch, "", q, amqp.Publishing{Expiration: "1", Body: []byte("short")})
	// The short-lived message is stuck behind the long-lived head and is not dead-lettered yet.
	expectNoDelivery(t, dead)
	if m, _ := queueCounts(t, q); m != 2 {
		t.Fatalf("queue holds %d, want 2", m)
	}
	if m := getOne(t, ch, q, true); string(m.Body) != "long" {
		t.Fatalf("head is %q", m.Body)
	}
	// Now it is at the head and long expired: it is never delivered, only dead-lettered.
	if _, ok, err := ch.Get(q, true); err != nil || ok {
		t.Fatalf("expired message delivered by basic.get (ok=%v err=%v)", ok, err)
	}
	assertBodies(t, collect(t, dead, 1), "short")
}

func TestDeadLetterZeroTTLWithoutConsumer(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	dlx, _, dead := dlxSetup(t, ch)
	q := declareQueue(t, ch, amqp.Table{"x-dead-letter-exchange": dlx, "x-message-ttl": int32(0)})
	publish(t, ch, "", q, "gone")
	m := collect(t, dead, 1)[0]
	checkDeath(t, xDeath(t, m)[0], 1, "expired", q, "", q)
}

func TestDeadLetterMaxLength(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     amqp.Table
		bodies   []string
		wantLeft []string
		wantDead []string
		reason   string
		nacked   int // publisher nacks expected
	}{
		{"drop-head", amqp.Table{"x-max-length": int32(2)}, nums(0, 4), []string{"3", "4"}, []string{"0", "1", "2"}, "maxlen", 0},
		{"drop-head-explicit", amqp.Table{"x-max-length": int32(1), "x-overflow": "drop-head"}, nums(0, 2), []string{"2"}, []string{"0", "1"}, "maxlen", 0},
		{"bytes", amqp.Table{"x-max-length-bytes": int32(10)}, []string{"aaaa", "bbbb", "cccc", "dddd"}, []string{"cccc", "dddd"}, []string{"aaaa", "bbbb"}, "maxlen", 0},
		{"reject-publish", amqp.Table{"x-max-length": int32(2), "x-overflow": "reject-publish"}, nums(0, 3), []string{"0", "1"}, nil, "", 2},
		{"reject-publish-dlx", amqp.Table{"x-max-length": int32(2), "x-overflow": "reject-publish-dlx"}, nums(0, 3), []string{"0", "1"}, []string{"2", "3"}, "maxlen", 2},
		{"zero-length", amqp.Table{"x-max-length": int32(0)}, nums(0, 1), nil, []string{"0", "1"}, "maxlen", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, ch := setup(t)
			dlx, _, dead := dlxSetup(t, ch)
			args := amqp.Table{"x-dead-letter-exchange": dlx}
			for k, v := range tc.args {
				args[k] = v
			}
			q := declareQueue(t, ch, args)
			pch, confs := confirmCh(t, c, len(tc.bodies))
			for _, b := range tc.bodies {
				publish(t, pch, "", q, b)
			}
			nacks := 0
			for range tc.bodies {
				if !nextConfirm(t, confs).Ack {
					nacks++
				}
			}
			if nacks != tc.nacked {
				t.Errorf("%d publisher nacks, want %d", nacks, tc.nacked)
			}
			if len(tc.wantDead) > 0 {
				got := collect(t, dead, len(tc.wantDead))
				assertBodies(t, got, tc.wantDead...)
				for _, m := range got {
					checkDeath(t, xDeath(t, m)[0], 1, tc.reason, q, "", q)
				}
			} else {
				expectNoDelivery(t, dead)
			}
			if got := getAll(t, ch, q); strings.Join(got, " ") != strings.Join(tc.wantLeft, " ") {
				t.Fatalf("queue holds %v, want %v", got, tc.wantLeft)
			}
		})
	}
}

func TestDeadLetterWithoutDLXDrops(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	// A DLX that does not exist: the dead letter is silently dropped.
	q := declareQueue(t, ch, amqp.Table{"x-dead-letter-exchange": uname(t, "missing-dlx")})
	publish(t, ch, "", q, "m")
	getOne(t, ch, q, false).Reject(false)
	if m, _ := queueCounts(t, q); m != 0 {
		t.Fatalf("queue holds %d", m)
	}
}

func TestDeadLetterRepeatedDeaths(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q1 := uname(t, "ping")
	q2 := uname(t, "pong")
	// Each queue dead-letters into the other through the default exchange.
	for _, p := range [][2]string{{q1, q2}, {q2, q1}} {
		if _, err := ch.QueueDeclare(p[0], false, false, false, false, amqp.Table{
			"x-dead-letter-exchange": "", "x-dead-letter-routing-key": p[1],
		}); err != nil {
			t.Fatal(err)
		}
		cleanupQueue(t, p[0])
	}
	publish(t, ch, "", q1, "ball")
	var m amqp.Delivery
	for i, q := range []string{q1, q2, q1} {
		eventually(t, fmt.Sprintf("message in %s", q), func() bool { n, _ := queueCounts(t, q); return n == 1 })
		m = getOne(t, ch, q, false)
		if i < 2 {
			m.Reject(false)
		}
	}
	d := xDeath(t, m)
	if len(d) != 2 {
		t.Fatalf("x-death has %d entries, want 2: %#v", len(d), d)
	}
	// Most recent death first; a repeated (queue, reason) pair increments count instead of adding an entry.
	checkDeath(t, d[0], 1, "rejected", q2, "", q2)
	checkDeath(t, d[1], 1, "rejected", q1, "", q1)
	checkFirstDeath(t, m, "rejected", q1, "")
	m.Reject(false)
	m = func() amqp.Delivery {
		eventually(t, "message back in pong", func() bool { n, _ := queueCounts(t, q2); return n == 1 })
		return getOne(t, ch, q2, true)
	}()
	d = xDeath(t, m)
	if len(d) != 2 {
		t.Fatalf("x-death has %d entries, want 2", len(d))
	}
	checkDeath(t, d[0], 2, "rejected", q1, "", q1)
	checkDeath(t, d[1], 1, "rejected", q2, "", q2)
	checkFirstDeath(t, m, "rejected", q1, "")
}

func TestQueueExpires(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q := declareQueue(t, ch, amqp.Table{"x-expires": int32(100)})
	publish(t, ch, "", q, "m")
	// A passive declare counts as use and restarts the expiry timer, so poll slower than x-expires.
	deadline := time.Now().Add(wait)
	for queueExists(t, q) {
		if time.Now().After(deadline) {
			t.Fatal("x-expires queue not removed")
		}
		time.Sleep(250 * time.Millisecond)
	}
	// A consumer keeps the queue in use. The queue must first live until the consume reaches
	// it: 100 ms was the load's bound, not the broker's (through another node of a loaded
	// cluster the declare's count request and the consume took longer, and the queue expired
	// before the consumer came), so this one has a second.
	q2 := declareQueue(t, ch, amqp.Table{"x-expires": int32(1000)})
	d := consume(t, ch, q2, true)
	expectNoDelivery(t, d)
	time.Sleep(1500 * time.Millisecond) // well beyond x-expires; the queue must survive it
	if !queueExists(t, q2) {
		t.Fatal("queue with a consumer expired")
	}
}

func TestQueueArgumentValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		durable bool
		args    amqp.Table
		text    string // expected reply text after "PRECONDITION_FAILED - "
	}{
		{"ttl-negative", false, amqp.Table{"x-message-ttl": int32(-1)}, "invalid arg 'x-message-ttl' for queue '%s' in vhost '/': {value_negative,-1}"},
		{"ttl-string", false, amqp.Table{"x-message-ttl": "abc"}, "invalid arg 'x-message-ttl' for queue '%s' in vhost '/': \"expected integer, got longstr\""},
		{"max-length-negative", false, amqp.Table{"x-max-length": int32(-1)}, "invalid arg 'x-max-length' for queue '%s' in vhost '/': {value_negative,-1}"},
		{"max-length-bytes-negative", false, amqp.Table{"x-max-length-bytes": int32(-1)}, "invalid arg 'x-max-length-bytes' for queue '%s' in vhost '/': {value_negative,-1}"},
		{"overflow-unknown", false, amqp.Table{"x-overflow": "nope"}, "invalid arg 'x-overflow' for queue '%s' in vhost '/': invalid_overflow"},
		{"expires-zero", false, amqp.Table{"x-expires": int32(0)}, "invalid arg 'x-expires' for queue '%s' in vhost '/': {value_zero,0}"},
		{"dlx-not-string", false, amqp.Table{"x-dead-letter-exchange": int32(1)}, "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '%s' in vhost '/'"},
		{"quorum-not-durable", false, amqp.Table{"x-queue-type": "quorum"}, "invalid property 'non-durable' for queue '%s' in vhost '/'"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, ch := setup(t)
			q := uname(t, "q")
			cleanupQueue(t, q)
			_, err := ch.QueueDeclare(q, tc.durable, false, false, false, tc.args)
			ae := expectChannelClosed(t, c, err, amqp.PreconditionFailed)
			want := "PRECONDITION_FAILED - " + fmt.Sprintf(tc.text, q)
			if ae.Reason != want {
				t.Errorf("reply text %q\nwant %q", ae.Reason, want)
			}
		})
	}
	t.Run("zero-ttl-ok", func(t *testing.T) {
		t.Parallel()
		_, ch := setup(t)
		declareQueue(t, ch, amqp.Table{"x-message-ttl": int32(0)})
	})
}

func TestPerMessageExpirationValidation(t *testing.T) {
	t.Parallel()
	tests := []struct{ exp, text string }{
		{"abc", "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"},
		{"-5", "PRECONDITION_FAILED - invalid expiration '-5': {value_negative,-5}"},
	}
	for _, tc := range tests {
		t.Run(tc.exp, func(t *testing.T) {
			t.Parallel()
			c, ch := setup(t)
			closes := ch.NotifyClose(make(chan *amqp.Error, 1))
			q := declareQueue(t, ch, nil)
			publishMsg(t, ch, "", q, amqp.Publishing{Expiration: tc.exp, Body: []byte("x")})
			select {
			case e := <-closes:
				ae := expectChannelClosed(t, c, e, amqp.PreconditionFailed)
				if ae.Reason != tc.text {
					t.Errorf("reply text %q, want %q", ae.Reason, tc.text)
				}
			case <-time.After(wait):
				t.Fatal("channel not closed")
			}
		})
	}
}

func TestDeliveryLimitQuorum(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	dlx, _, dead := dlxSetup(t, ch)
	q := declareQuorum(t, ch, amqp.Table{"x-delivery-limit": int32(2), "x-dead-letter-exchange": dlx})
	publish(t, ch, "", q, "poison")
	cch := openCh(t, dial(t))
	d := consume(t, cch, q, false)
	// Delivered limit+1 times; x-delivery-count counts earlier (failed) deliveries.
	for i := 0; i < 3; i++ {
		m := collect(t, d, 1)[0]
		if m.Redelivered != (i > 0) {
			t.Fatalf("delivery %d redelivered=%v", i, m.Redelivered)
		}
		if n, ok := m.Headers["x-delivery-count"]; i > 0 && n != int64(i) || i == 0 && ok && n != int64(0) {
			t.Fatalf("delivery %d x-delivery-count = %#v", i, m.Headers["x-delivery-count"])
		}
		m.Nack(false, true)
	}
	expectNoDelivery(t, d)
	m := collect(t, dead, 1)[0]
	if string(m.Body) != "poison" {
		t.Fatalf("dead letter %q", m.Body)
	}
	checkDeath(t, xDeath(t, m)[0], 1, "delivery_limit", q, "", q)
	checkFirstDeath(t, m, "delivery_limit", q, "")
}

func TestDeliveryLimitNegative(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	if isWarren() {
		// A deliberate difference, required by Warren's issue 4: a negative limit is a
		// declaration error rather than "dead-letter on the first requeue".
		q := uname(t, "qq")
		cleanupQueue(t, q)
		_, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "quorum", "x-delivery-limit": int32(-1)})
		ae := expectChannelClosed(t, c, err, amqp.PreconditionFailed)
		want := fmt.Sprintf("PRECONDITION_FAILED - invalid arg 'x-delivery-limit' for queue '%s' in vhost '/': {value_negative,-1}", q)
		if ae.Reason != want {
			t.Errorf("reply text %q, want %q", ae.Reason, want)
		}
		return
	}
	dlx, _, dead := dlxSetup(t, ch)
	// RabbitMQ 3.10 accepts x-delivery-limit = -1; the first requeue already exceeds it.
	q := declareQuorum(t, ch, amqp.Table{"x-delivery-limit": int32(-1), "x-dead-letter-exchange": dlx})
	publish(t, ch, "", q, "m")
	cch := openCh(t, dial(t))
	d := consume(t, cch, q, false)
	collect(t, d, 1)[0].Nack(false, true)
	m := collect(t, dead, 1)[0]
	checkDeath(t, xDeath(t, m)[0], 1, "delivery_limit", q, "", q)
	expectNoDelivery(t, d)
}

func TestMaxLengthCountsReadyOnly(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	dlx, _, dead := dlxSetup(t, ch)
	q := declareQueue(t, ch, amqp.Table{"x-max-length": int32(2), "x-dead-letter-exchange": dlx})
	publishConfirmed(t, c, "", q, "0", "1")
	cch := openCh(t, c)
	held := collect(t, consume(t, cch, q, false), 2)
	eventually(t, "queue drained to the consumer", func() bool { m, _ := queueCounts(t, q); return m == 0 })
	cch.Cancel(held[0].ConsumerTag, false)
	// Unacked messages do not count against x-max-length.
	publishConfirmed(t, c, "", q, "2", "3")
	expectNoDelivery(t, dead)
	if m, _ := queueCounts(t, q); m != 2 {
		t.Fatalf("queue holds %d ready, want 2", m)
	}
	// Requeueing the two unacked ones pushes the queue over the limit: the head is dropped.
	cch.Close()
	got := collect(t, dead, 2)
	assertBodies(t, got, "0", "1")
	if rest := getAll(t, ch, q); len(rest) != 2 || rest[0] != "2" || rest[1] != "3" {
		t.Fatalf("queue holds %v, want [2 3]", rest)
	}
}

func TestTTLExpiredWhileUnackedDeadLettersOnRequeue(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	dlx, _, dead := dlxSetup(t, ch)
	q := declareQueue(t, ch, amqp.Table{"x-message-ttl": int32(100), "x-dead-letter-exchange": dlx})
	publish(t, ch, "", q, "slow")
	m := getOne(t, ch, q, false)
	// An unacked message does not expire...
	expectNoDelivery(t, dead)
	time.Sleep(150 * time.Millisecond) // let its TTL run out while it is unacked
	// ... but once requeued past its TTL it is dead-lettered instead of being delivered again.
	m.Nack(false, true)
	d := collect(t, dead, 1)[0]
	checkDeath(t, xDeath(t, d)[0], 1, "expired", q, "", q)
	if _, ok, _ := ch.Get(q, true); ok {
		t.Fatal("expired message delivered again")
	}
}
