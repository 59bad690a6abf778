package conformance

import (
	"fmt"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Priority queues, consumer priorities and single active consumer (issue 18). Every expectation
// here was checked against RabbitMQ 3.10.8.

func TestPriorityArgErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		args   amqp.Table
		detail string // after "invalid arg '<key>' for queue '<q>' in vhost '/': "
		key    string
	}{
		{"negative", amqp.Table{"x-max-priority": int32(-1)}, "{value_negative,-1}", "x-max-priority"},
		{"too large", amqp.Table{"x-max-priority": int32(256)}, "{max_value_exceeded,256}", "x-max-priority"},
		{"string", amqp.Table{"x-max-priority": "10"}, `"expected integer, got longstr"`, "x-max-priority"},
		{"sac int", amqp.Table{"x-single-active-consumer": int32(1)}, "{unacceptable_type,signedint}", "x-single-active-consumer"},
		{"sac string", amqp.Table{"x-single-active-consumer": "true"}, "{unacceptable_type,longstr}", "x-single-active-consumer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, ch := setup(t)
			q := uname(t, "q")
			cleanupQueue(t, q)
			_, err := ch.QueueDeclare(q, false, false, false, false, tc.args)
			ae := expectChannelClosed(t, c, err, amqp.PreconditionFailed)
			want := fmt.Sprintf("PRECONDITION_FAILED - invalid arg '%s' for queue '%s' in vhost '/': %s", tc.key, q, tc.detail)
			if ae.Reason != want {
				t.Errorf("reply text = %q, want %q", ae.Reason, want)
			}
		})
	}
	t.Run("bounds accepted", func(t *testing.T) {
		t.Parallel()
		_, ch := setup(t)
		for _, n := range []int32{0, 1, 255} {
			declareQueue(t, ch, amqp.Table{"x-max-priority": n})
		}
		declareQueue(t, ch, amqp.Table{"x-single-active-consumer": false})
	})
	t.Run("consumer priority string", func(t *testing.T) {
		t.Parallel()
		c, ch := setup(t)
		q := declareQueue(t, ch, nil)
		_, err := ch.Consume(q, "", false, false, false, false, amqp.Table{"x-priority": "high"})
		ae := expectChannelClosed(t, c, err, amqp.PreconditionFailed)
		want := fmt.Sprintf(`PRECONDITION_FAILED - invalid arg 'x-priority' for queue '%s' in vhost '/': "expected integer, got longstr"`, q)
		if ae.Reason != want {
			t.Errorf("reply text = %q, want %q", ae.Reason, want)
		}
	})
}

// publishPrio publishes body with a priority (nil: no priority property) through a confirming
// channel of c, so that the queue holds it when it returns.
func publishPrios(t *testing.T, c *amqp.Connection, q string, msgs ...prioMsg) {
	t.Helper()
	ch := openCh(t, c)
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm.select: %v", err)
	}
	confs := ch.NotifyPublish(make(chan amqp.Confirmation, len(msgs)+1))
	for _, m := range msgs {
		publishMsg(t, ch, "", q, amqp.Publishing{Body: []byte(m.body), Priority: m.prio})
	}
	for range msgs {
		if cf := nextConfirm(t, confs); !cf.Ack {
			t.Fatalf("publish nacked")
		}
	}
}

type prioMsg struct {
	body string
	prio uint8
}

func TestPriorityQueueOrder(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, amqp.Table{"x-max-priority": int32(10)})
	// Above the maximum counts as the maximum; no priority is 0; FIFO within a priority.
	publishPrios(t, c, q, prioMsg{"a0", 0}, prioMsg{"b5", 5}, prioMsg{"c10", 10}, prioMsg{"d3", 3},
		prioMsg{"e200", 200}, prioMsg{"f5", 5}, prioMsg{"g0", 0})
	got := collect(t, consume(t, ch, q, false), 7)
	assertBodies(t, got, "c10", "e200", "b5", "f5", "d3", "a0", "g0")
	// Requeued messages go back to their places in the priority order.
	for _, i := range []int{1, 3, 6} {
		got[i].Ack(false)
	}
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	re := collect(t, consume(t, openCh(t, c), q, false), 4)
	assertBodies(t, re, "c10", "b5", "d3", "a0")
	assertRedelivered(t, re, true)
}

func TestPriorityQueueGetAndPlainQueue(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	prio := declareQueue(t, ch, amqp.Table{"x-max-priority": int32(2)})
	plain := declareQueue(t, ch, amqp.Table{"x-max-priority": int32(0)}) // 0: a plain queue
	for _, q := range []string{prio, plain} {
		publishPrios(t, c, q, prioMsg{"low", 0}, prioMsg{"mid", 1}, prioMsg{"high", 2})
	}
	var gotPrio, gotPlain []string
	for range 3 {
		m, ok, err := ch.Get(prio, true)
		if err != nil || !ok {
			t.Fatalf("basic.get %s: ok=%v err=%v", prio, ok, err)
		}
		gotPrio = append(gotPrio, string(m.Body))
		m, ok, err = ch.Get(plain, true)
		if err != nil || !ok {
			t.Fatalf("basic.get %s: ok=%v err=%v", plain, ok, err)
		}
		gotPlain = append(gotPlain, string(m.Body))
		if m.Priority == 0 && string(m.Body) != "low" {
			t.Errorf("priority property of %q lost", m.Body)
		}
	}
	if s := strings.Join(gotPrio, ","); s != "high,mid,low" {
		t.Errorf("priority queue order = %s, want high,mid,low", s)
	}
	if s := strings.Join(gotPlain, ","); s != "low,mid,high" {
		t.Errorf("plain queue order = %s, want low,mid,high", s)
	}
}

// TestPriorityDeadLetterKeepsPriority: a message dead-lettered into a priority queue keeps its
// priority there.
func TestPriorityDeadLetterKeepsPriority(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	dlq := declareQueue(t, ch, amqp.Table{"x-max-priority": int32(5)})
	src := declareQueue(t, ch, amqp.Table{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
	publishPrios(t, c, src, prioMsg{"p1", 1}, prioMsg{"p4", 4}, prioMsg{"p0", 0})
	for _, d := range collect(t, consume(t, ch, src, false), 3) {
		d.Reject(false)
	}
	waitCount(t, dlq, 3)
	got := collect(t, consume(t, openCh(t, c), dlq, true), 3)
	assertBodies(t, got, "p4", "p1", "p0")
}

func TestConsumerPriority(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	consumeWith := func(prio int32, prefetch int) (*amqp.Channel, <-chan amqp.Delivery) {
		cch := openCh(t, c)
		if err := cch.Qos(prefetch, 0, false); err != nil {
			t.Fatalf("basic.qos: %v", err)
		}
		d, err := cch.Consume(q, "", false, false, false, false, amqp.Table{"x-priority": prio})
		if err != nil {
			t.Fatalf("basic.consume x-priority %d: %v", prio, err)
		}
		return cch, d
	}
	_, low := consumeWith(0, 100)
	_, high := consumeWith(10, 2)
	publishN(t, ch, q, 5)
	// The high-priority consumer is served while it has prefetch room, the rest goes lower.
	h := collect(t, high, 2)
	assertBodies(t, h, "0", "1")
	l := collect(t, low, 3)
	assertBodies(t, l, "2", "3", "4")
	expectNoDelivery(t, high)
	// With room again, the high consumer takes new messages before the low one.
	h[0].Ack(false)
	h[1].Ack(false)
	publishN(t, ch, q, 2)
	assertBodies(t, collect(t, high, 2), "0", "1")
	expectNoDelivery(t, low)
}

func TestSingleActiveConsumer(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, amqp.Table{"x-single-active-consumer": true})
	chA, chB := openCh(t, c), openCh(t, c)
	if err := chA.Qos(2, 0, false); err != nil {
		t.Fatal(err)
	}
	a := consume(t, chA, q, false)
	b := consume(t, chB, q, false)
	publishN(t, ch, q, 5)
	assertBodies(t, collect(t, a, 2), "0", "1")
	expectNoDelivery(t, b) // waits its turn although A has no prefetch room
	// A's channel closes: B gets the requeued ones first and in order, then the rest.
	if err := chA.Close(); err != nil {
		t.Fatal(err)
	}
	got := collect(t, b, 5)
	assertBodies(t, got, "0", "1", "2", "3", "4")
	for i, d := range got {
		if want := i < 2; d.Redelivered != want {
			t.Errorf("%s: redelivered = %v, want %v", d.Body, d.Redelivered, want)
		}
	}
}

func TestSingleActiveConsumerCancel(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, amqp.Table{"x-single-active-consumer": true})
	chA, chB, chC := openCh(t, c), openCh(t, c), openCh(t, c)
	da, err := chA.Consume(q, "a", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := consume(t, chB, q, false)
	cc := consume(t, chC, q, false)
	publishN(t, ch, q, 2)
	got := collect(t, da, 2)
	assertBodies(t, got, "0", "1")
	// basic.cancel: A's unacked stay with its channel; B (registered next) takes over.
	if err := chA.Cancel("a", false); err != nil {
		t.Fatal(err)
	}
	publish(t, ch, "", q, "2")
	assertBodies(t, collect(t, b, 1), "2")
	expectNoDelivery(t, cc)
	// Acks on A's channel still work after the cancel.
	got[0].Ack(false)
	got[1].Ack(false)
	if err := chA.Close(); err != nil {
		t.Fatalf("channel A after cancel and acks: %v", err)
	}
	expectNoDelivery(t, b)
}

func TestSingleActiveConsumerRefusesExclusive(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, amqp.Table{"x-single-active-consumer": true})
	_, err := ch.Consume(q, "", false, true, false, false, nil)
	ae := expectChannelClosed(t, c, err, amqp.AccessRefused)
	if want := fmt.Sprintf("ACCESS_REFUSED - queue '%s' in vhost '/' in exclusive use", q); ae.Reason != want {
		t.Errorf("reply text = %q, want %q", ae.Reason, want)
	}
}
