package conformance

import (
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Warren extensions: queue arguments RabbitMQ does not have. These tests skip on other brokers.

// The article's "time to redeliver": a requeued message waits x-redelivery-delay before it is
// deliverable again, while newer messages keep flowing, and once due it goes ahead of them.
func TestExtRedeliveryDelay(t *testing.T) {
	warrenOnly(t)
	t.Parallel()
	_, ch := setup(t)
	const delay = 300 * time.Millisecond
	q := declareQueue(t, ch, amqp.Table{"x-redelivery-delay": int32(delay / time.Millisecond)})
	if err := ch.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	publishN(t, ch, q, 3)
	d := consume(t, ch, q, false)
	first := collect(t, d, 1)[0]
	nackedAt := time.Now()
	if err := first.Nack(false, true); err != nil {
		t.Fatal(err)
	}
	// While "0" waits, "1" is delivered.
	m := collect(t, d, 1)[0]
	assertBodies(t, []amqp.Delivery{m}, "1")
	if m.Redelivered {
		t.Fatal("1 flagged redelivered")
	}
	// Hold "1" unacked until "0" is due: then "0" must come before "2".
	time.Sleep(delay + 50*time.Millisecond)
	if err := m.Ack(false); err != nil {
		t.Fatal(err)
	}
	again := collect(t, d, 1)[0]
	if string(again.Body) != "0" || !again.Redelivered {
		t.Fatalf("after the delay got %q (redelivered=%v), want 0 redelivered", again.Body, again.Redelivered)
	}
	if waited := time.Since(nackedAt); waited < delay {
		t.Fatalf("redelivered after %s, before the %s delay", waited, delay)
	}
	if err := again.Ack(false); err != nil {
		t.Fatal(err)
	}
	assertBodies(t, collect(t, d, 1), "2")
}

// x-redelivery-backoff multiplies the delay for each further requeue, up to x-redelivery-max-delay.
func TestExtRedeliveryBackoff(t *testing.T) {
	warrenOnly(t)
	t.Parallel()
	_, ch := setup(t)
	q := declareQueue(t, ch, amqp.Table{
		"x-redelivery-delay":     int32(40),
		"x-redelivery-backoff":   float64(3),
		"x-redelivery-max-delay": int32(200),
	})
	publishN(t, ch, q, 1)
	d := consume(t, ch, q, false)
	// Waits: 40 ms, 120 ms, then 360 ms capped to 200 ms.
	minimum := []time.Duration{40, 120, 200}
	m := collect(t, d, 1)[0]
	for i, want := range minimum {
		start := time.Now()
		if err := m.Nack(false, true); err != nil {
			t.Fatal(err)
		}
		m = collect(t, d, 1)[0]
		if got := time.Since(start); got < want*time.Millisecond {
			t.Fatalf("requeue %d: redelivered after %s, want at least %s", i+1, got, want*time.Millisecond)
		}
		if i == 2 && time.Since(start) > 2*time.Second {
			t.Fatal("the cap did not bound the third delay")
		}
	}
}

// Delivery limit and redelivery delay together: the article's poison message ends up in the
// exception destination after its retries, each retry spaced by the delay.
func TestExtDeliveryLimitWithDelay(t *testing.T) {
	warrenOnly(t)
	t.Parallel()
	_, ch := setup(t)
	dlx, _, dead := dlxSetup(t, ch)
	q := declareQueue(t, ch, amqp.Table{
		"x-redelivery-delay":     int32(30),
		"x-delivery-limit":       int32(2),
		"x-dead-letter-exchange": dlx,
	})
	publish(t, ch, "", q, "poison")
	d := consume(t, ch, q, false)
	start := time.Now()
	for i := 0; i < 3; i++ {
		collect(t, d, 1)[0].Nack(false, true)
	}
	m := collect(t, dead, 1)[0]
	if string(m.Body) != "poison" {
		t.Fatalf("dead letter %q", m.Body)
	}
	checkDeath(t, xDeath(t, m)[0], 1, "delivery_limit", q, "", q)
	if got := time.Since(start); got < 60*time.Millisecond {
		t.Fatalf("two delayed retries took only %s", got)
	}
	expectNoDelivery(t, d)
}

// Classic queues with x-delivery-limit behave like RabbitMQ quorum queues (delivered limit+1
// times, then dead-lettered); RabbitMQ itself refuses the argument on classic queues.
func TestExtDeliveryLimitClassic(t *testing.T) {
	warrenOnly(t)
	t.Parallel()
	_, ch := setup(t)
	dlx, _, dead := dlxSetup(t, ch)
	q := declareQueue(t, ch, amqp.Table{"x-delivery-limit": int32(1), "x-dead-letter-exchange": dlx})
	publish(t, ch, "", q, "m")
	d := consume(t, ch, q, false)
	first := collect(t, d, 1)[0]
	first.Nack(false, true)
	second := collect(t, d, 1)[0]
	if got := second.Headers["x-delivery-count"]; got != int64(1) {
		t.Fatalf("x-delivery-count = %#v, want 1", got)
	}
	second.Reject(true)
	collect(t, dead, 1)
	expectNoDelivery(t, d)
}
