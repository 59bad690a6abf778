package main

// Durability of x-delayed-message exchanges (see broker/delayed.go): the broker is the test
// binary re-executed (spawnBroker), killed with SIGKILL or stopped, and restarted on the same
// data directory.

import (
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// declareDelayed declares a durable delayed direct exchange ex bound to durable queue q.
func declareDelayed(t *testing.T, ch *amqp091.Channel, ex, q string) {
	t.Helper()
	if err := ch.ExchangeDeclare(ex, "x-delayed-message", true, false, false, false, amqp091.Table{"x-delayed-type": "direct"}); err != nil {
		t.Fatalf("declare %s: %v", ex, err)
	}
	declareDurable(t, ch, q)
	if err := ch.QueueBind(q, "k", ex, false, nil); err != nil {
		t.Fatal(err)
	}
}

func delayedPublishing(body string, delay time.Duration, mode uint8) amqp091.Publishing {
	return amqp091.Publishing{DeliveryMode: mode, Body: []byte(body), Headers: amqp091.Table{"x-delay": int32(delay.Milliseconds())}}
}

// consumeUntil consumes q until every body of want has arrived (or timeout) and returns the
// arrival time of each body and the number of duplicates.
func consumeUntil(t *testing.T, b *childBroker, q string, want map[string]bool, timeout time.Duration) (map[string]time.Time, int) {
	t.Helper()
	ch := b.channel()
	msgs, err := ch.Consume(q, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]time.Time{}
	dups := 0
	deadline := time.After(timeout)
	missing := len(want)
	for missing > 0 {
		select {
		case d := <-msgs:
			body := string(d.Body)
			if _, seen := got[body]; seen {
				dups++
				continue
			}
			got[body] = time.Now()
			if x, ok := d.Headers["x-delay"].(int32); !ok || x >= 0 {
				t.Errorf("%s delivered with x-delay %#v, want the delay negated", body, d.Headers["x-delay"])
			}
			if want[body] {
				missing--
			}
		case <-deadline:
			for body := range want {
				if _, ok := got[body]; !ok {
					t.Errorf("confirmed delayed message %s never arrived", body)
				}
			}
			t.Fatalf("%d of %d confirmed delayed messages missing after %v", missing, len(want), timeout)
		}
	}
	return got, dups
}

// TestDelayedKill9Confirms: a confirming publisher sends persistent messages with delays of
// 0.3-4 s to a durable delayed exchange; the broker is killed while it publishes (some
// messages already routed, most held); after the restart every confirmed message arrives.
func TestDelayedKill9Confirms(t *testing.T) {
	rng := crashSeed(t)
	dir := t.TempDir()
	b := startBroker(t, dir)
	ch := b.channel()
	declareDelayed(t, ch, "dx", "dq")
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 10000))
	killAt := 500 + rng.IntN(1000)
	confirmed := map[string]bool{}
	var seq uint64
	bodies := map[uint64]string{}
	start := time.Now()
	for len(confirmed) < killAt {
		seq++
		body := fmt.Sprintf("m%d", seq)
		bodies[seq] = body
		delay := 300*time.Millisecond + time.Duration(rng.IntN(3700))*time.Millisecond
		if err := ch.Publish("dx", "k", false, false, delayedPublishing(body, delay, amqp091.Persistent)); err != nil {
			t.Fatal(err)
		}
		for drained := false; !drained; {
			select {
			case c := <-confirms:
				if !c.Ack {
					t.Fatalf("publish %d nacked", c.DeliveryTag)
				}
				confirmed[bodies[c.DeliveryTag]] = true
			default:
				drained = true
			}
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("only %d confirms in 20 s", len(confirmed))
		}
	}
	b.kill()
	t.Logf("killed after %d publishes, %d confirmed, %v after the first", seq, len(confirmed), time.Since(start).Round(time.Millisecond))
	nb := startBroker(t, dir)
	_, dups := consumeUntil(t, nb, "dq", confirmed, 30*time.Second)
	t.Logf("all %d confirmed delayed messages arrived after the restart (%d duplicates: routed just before the kill)", len(confirmed), dups)
}

// TestDelayedRestart: held messages survive a clean restart (persistent and transient alike,
// as the plugin keeps both), none arrives before it is due; the messages of a deleted delayed
// exchange and of a transient one do not come back.
func TestDelayedRestart(t *testing.T) {
	dir := t.TempDir()
	b := startBroker(t, dir)
	ch := b.channel()
	declareDelayed(t, ch, "dx", "dq")
	declareDelayed(t, ch, "gone", "gq")
	if err := ch.ExchangeDeclare("tx", "x-delayed-message", false, false, false, false, amqp091.Table{"x-delayed-type": "direct"}); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind("gq", "k", "tx", false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	due := map[string]time.Time{}
	first := time.Now()
	var dcs []*amqp091.DeferredConfirmation
	for i := 0; i < 200; i++ {
		body := fmt.Sprintf("m%d", i)
		delay := 6*time.Second + time.Duration(i)*10*time.Millisecond
		mode := amqp091.Persistent
		if i%2 == 1 {
			mode = amqp091.Transient
		}
		due[body] = time.Now().Add(delay)
		want[body] = true
		dc, err := ch.PublishWithDeferredConfirm("dx", "k", false, false, delayedPublishing(body, delay, mode))
		if err != nil {
			t.Fatal(err)
		}
		dcs = append(dcs, dc)
		for _, ex := range []string{"gone", "tx"} {
			dc, err := ch.PublishWithDeferredConfirm(ex, "k", false, false, delayedPublishing(ex+body, delay, mode))
			if err != nil {
				t.Fatal(err)
			}
			dcs = append(dcs, dc)
		}
	}
	for _, dc := range dcs {
		if ok, err := dc.WaitContext(t.Context()); err != nil || !ok {
			t.Fatalf("confirm: %v %v", ok, err)
		}
	}
	if err := ch.ExchangeDelete("gone", false, false); err != nil {
		t.Fatal(err)
	}
	b.stop()
	if time.Since(first) > 5*time.Second {
		// A transient message routed before the stop is lost with its queue's transient
		// messages, as it should be; the test is about held ones.
		t.Fatalf("publishing took %v: messages were due before the restart", time.Since(first))
	}
	nb := startBroker(t, dir)
	got, dups := consumeUntil(t, nb, "dq", want, 30*time.Second)
	if dups != 0 {
		t.Errorf("%d duplicates after a clean restart", dups)
	}
	for body, at := range got {
		// The broker counts whole milliseconds from its receipt of the publish: up to 1 ms
		// before the due time the client computed is its rounding.
		if at.Before(due[body].Add(-time.Millisecond)) {
			t.Errorf("%s arrived %v before it was due", body, due[body].Sub(at))
		}
	}
	time.Sleep(time.Second) // everything was due by now
	q, err := nb.channel().QueueDeclarePassive("gq", true, false, false, false, nil)
	if err != nil || q.Messages != 0 {
		t.Errorf("queue of the deleted and the transient exchange: %+v %v, want no message", q, err)
	}
}
