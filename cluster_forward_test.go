package main

import (
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// confirmedOn publishes body to the default exchange with key on ch (in confirm mode) and
// returns whether the broker acked it.
func confirmedOn(t *testing.T, ch *amqp091.Channel, key, body string) bool {
	t.Helper()
	dc, err := ch.PublishWithDeferredConfirm("", key, false, false, amqp091.Publishing{DeliveryMode: amqp091.Persistent, Body: []byte(body)})
	if err != nil {
		t.Fatalf("publish %s: %v", key, err)
	}
	select {
	case <-dc.Done():
		return dc.Acked()
	case <-time.After(15 * time.Second):
		t.Fatalf("no confirm for %s within 15 s", key)
	}
	return false
}

// Three processes: a client of n2 publishes persistent messages with confirms to durable
// queues homed on n1 and n3 and consumes them through n2 (forwarded and proxied over the
// nodes' data links); with n1 killed (SIGKILL) a publish for its queue is nacked at once and a
// consumer of it is cancelled; n1 restarted on its data directory has every confirmed message.
func TestClusterForwardingThreeProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three broker processes")
	}
	tc := newTestCluster(t, "n1", "n2", "n3")
	tc.start("n1", "n2", "n3")
	n1, n2, n3 := tc.nodes["n1"], tc.nodes["n2"], tc.nodes["n3"]
	for _, q := range []struct {
		node *clusterChild
		name string
	}{{n1, "fw1"}, {n3, "fw3"}} {
		declareUntil(t, q.node, q.name, 15*time.Second)
	}
	ch2 := channelOn(t, n2)
	if err := ch2.Confirm(false); err != nil {
		t.Fatal(err)
	}
	// n2 learns the other nodes' AMQP addresses from their status (within a status interval);
	// until then a forward is nacked.
	deadline := time.Now().Add(15 * time.Second)
	for !confirmedOn(t, ch2, "fw1", "probe") {
		if time.Now().After(deadline) {
			t.Fatal("forwarding from n2 to n1 never worked")
		}
		time.Sleep(200 * time.Millisecond)
	}
	const n = 200
	for i := range n {
		for _, q := range []string{"fw1", "fw3"} {
			if !confirmedOn(t, ch2, q, fmt.Sprint(i)) {
				t.Fatalf("publish %d to %s nacked", i, q)
			}
		}
	}
	// Consumed through n2 (proxied to n1), in order, after the probe.
	cons := channelOn(t, n2)
	if err := cons.Qos(50, 0, false); err != nil {
		t.Fatal(err)
	}
	ds, err := cons.Consume("fw1", "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	cancels := cons.NotifyCancel(make(chan string, 1))
	for i := -1; i < n; i++ {
		select {
		case d := <-ds:
			want := fmt.Sprint(i)
			if i < 0 {
				want = "probe"
			}
			if string(d.Body) != want || d.Redelivered {
				t.Fatalf("fw1 via n2: got %q (redelivered %v), want %q", d.Body, d.Redelivered, want)
			}
			if err := d.Ack(false); err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("fw1 via n2: message %d not delivered", i)
		}
	}
	// fw3 read on its home.
	ch3 := channelOn(t, n3)
	for i := range n {
		d, ok, err := ch3.Get("fw3", true)
		if err != nil || !ok || string(d.Body) != fmt.Sprint(i) {
			t.Fatalf("fw3 on n3: message %d: %v %v %q", i, ok, err, d.Body)
		}
	}

	// n1 killed: the consumer on n2 is cancelled, a publish for fw1 nacked without a hang.
	if !confirmedOn(t, ch2, "fw1", "kept") {
		t.Fatal("publish before the kill nacked")
	}
	// The consumer gets "kept" and leaves it unacked: it is requeued on n1... which dies, and
	// since the message is persistent on a durable queue, it comes back with n1.
	select {
	case d := <-ds:
		if string(d.Body) != "kept" {
			t.Fatalf("got %q, want kept", d.Body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("kept not delivered")
	}
	n1.kill()
	select {
	case <-cancels:
	case <-time.After(15 * time.Second):
		t.Fatal("consumer of fw1 on n2 not cancelled after n1 was killed")
	}
	start := time.Now()
	if confirmedOn(t, ch2, "fw1", "lost") {
		t.Fatal("publish for a queue whose node is down was acked")
	}
	t.Logf("nack for a dead home node after %v", time.Since(start))

	// n1 back on its data directory: fw1 has "kept" (confirmed, unacked when n1 died), not "lost".
	tc.spawn("n1").wait()
	deadline = time.Now().Add(20 * time.Second)
	for !confirmedOn(t, ch2, "fw1", "after") {
		if time.Now().After(deadline) {
			t.Fatal("forwarding to n1 did not resume after its restart")
		}
		time.Sleep(200 * time.Millisecond)
	}
	var got []string
	for deadline := time.Now().Add(10 * time.Second); len(got) < 2 && time.Now().Before(deadline); {
		d, ok, err := ch2.Get("fw1", true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		got = append(got, string(d.Body))
	}
	if fmt.Sprint(got) != "[kept after]" {
		t.Fatalf("fw1 after n1's restart, read through n2: %v, want [kept after]", got)
	}
}
