// Package embeddedtest is the proof that another Go module can embed Warren: its test imports only
// the public package warren/embedded and the RabbitMQ client amqp091-go, starts a broker in-process,
// publishes with publisher confirms, consumes, and measures how long a broker takes to be usable.
package embeddedtest

import (
	"context"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/embedded"
)

func TestPublishConsumeWithConfirms(t *testing.T) {
	b := embedded.NewTestBroker(t)

	conn, err := amqp.Dial(b.URL())
	if err != nil {
		t.Fatalf("dial %s: %v", b.URL(), err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("jobs", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const n = 100
	confirms := make([]*amqp.DeferredConfirmation, n)
	for i := range n {
		confirms[i], err = ch.PublishWithDeferredConfirmWithContext(ctx, "", q.Name, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent,
			Body:         []byte{byte(i)},
		})
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	for i, dc := range confirms {
		if ok, err := dc.WaitContext(ctx); err != nil || !ok {
			t.Fatalf("confirm %d: ack=%v err=%v", i, ok, err)
		}
	}

	deliveries, err := ch.Consume(q.Name, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		select {
		case m := <-deliveries:
			if len(m.Body) != 1 || int(m.Body[0]) != i {
				t.Fatalf("delivery %d has body %v: out of order", i, m.Body)
			}
			if err := m.Ack(false); err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatalf("got %d of %d deliveries", i, n)
		}
	}
	st, err := ch.QueueDeclarePassive(q.Name, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != 0 {
		t.Fatalf("queue holds %d messages after all were acked", st.Messages)
	}
}

// TestStartupTime measures what a test using RabbitMQ waits for before its first line runs: from
// starting a broker until an amqp091-go connection has a channel open. It fails only when start-up
// is slower than the bound, which is far above the measured milliseconds yet far below the seconds a
// container needs.
func TestStartupTime(t *testing.T) {
	const runs = 20
	const bound = 2 * time.Second
	times := make([]time.Duration, runs)
	for i := range times {
		start := time.Now()
		b, err := embedded.Start(embedded.Options{})
		if err != nil {
			t.Fatal(err)
		}
		conn, err := amqp.Dial(b.URL())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Channel(); err != nil {
			t.Fatal(err)
		}
		times[i] = time.Since(start)
		_ = conn.Close()
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(times)
	median := times[runs/2]
	t.Logf("start to first channel over %d runs: min %s, median %s, max %s", runs, times[0], median, times[runs-1])
	if median > bound {
		t.Fatalf("median start-up %s, want under %s", median, bound)
	}
}
