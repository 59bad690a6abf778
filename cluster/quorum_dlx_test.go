package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// dlxGet takes one message from queue through url with no-ack, reconnecting after an error (a
// node of the cluster may have just died); ok false when the queue is empty.
func dlxGet(t *testing.T, url, queue string) (amqp091.Delivery, bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := amqp091.Dial(url)
		if err == nil {
			var ch *amqp091.Channel
			if ch, err = c.Channel(); err == nil {
				var d amqp091.Delivery
				var ok bool
				d, ok, err = ch.Get(queue, true)
				_ = c.Close()
				if err == nil {
					return d, ok
				}
			} else {
				_ = c.Close()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("basic.get %s: %v", queue, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dlxAwait collects n messages from queue (at least once: duplicates are counted, not
// failed) within 30 s and checks their x-death.
func dlxAwait(t *testing.T, url, queue, source string, want ...string) map[string]int {
	t.Helper()
	got := map[string]int{}
	deadline := time.Now().Add(30 * time.Second)
	for len(got) < len(want) {
		d, ok := dlxGet(t, url, queue)
		if !ok {
			if time.Now().After(deadline) {
				t.Fatalf("dead-lettered into %s: %v, want %v", queue, got, want)
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		got[string(d.Body)]++
		death, _ := d.Headers["x-death"].([]any)
		if len(death) != 1 {
			t.Fatalf("%q: x-death %v", d.Body, d.Headers["x-death"])
		}
		x := death[0].(amqp091.Table)
		if x["reason"] != "rejected" || x["queue"] != source || x["count"] != int64(1) {
			t.Fatalf("%q: x-death %v", d.Body, x)
		}
		if d.Headers["x-first-death-queue"] != source || d.Headers["x-first-death-reason"] != "rejected" {
			t.Fatalf("%q: x-first-death-* %v", d.Body, d.Headers)
		}
	}
	for _, w := range want {
		if got[w] == 0 {
			t.Fatalf("dead-lettered %v, want %v", got, want)
		}
	}
	return got
}

// rejectAll takes n messages from queue with basic.get and rejects them (no requeue).
func rejectAll(t *testing.T, ch *amqp091.Channel, queue string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		var d amqp091.Delivery
		deadline := time.Now().Add(10 * time.Second)
		for {
			var ok bool
			var err error
			d, ok, err = ch.Get(queue, false)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: message %d not there", queue, i)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := d.Nack(false, false); err != nil {
			t.Fatal(err)
		}
	}
}

// publishTaken publishes body to queue through a connection of its own and reports whether
// it was confirmed (false: nacked, or an error, as while a group elects its leader).
func publishTaken(url, queue, body string) bool {
	c, err := amqp091.Dial(url)
	if err != nil {
		return false
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil || ch.Confirm(false) != nil {
		return false
	}
	dc, err := ch.PublishWithDeferredConfirm("", queue, false, false, amqp091.Publishing{DeliveryMode: 2, Body: []byte(body)})
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ok, err := dc.WaitContext(ctx)
	return err == nil && ok
}

// TestQuorumDLXAtLeastOnceLeaderKilled: with x-dead-letter-strategy at-least-once, messages
// rejected while the dead-letter target refuses them (full, reject-publish) stay in the
// source queue, are not lost (at most once would have lost them: the target's nack drops
// them), survive a kill -9 of the source's leader, and reach the target once it has room,
// sent by the new leader, with the x-death of the at-most-once path; then they are settled
// (the source takes publishes again) and sent no more.
func TestQuorumDLXAtLeastOnceLeaderKilled(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "dlt", amqp091.Table{"x-max-length": int32(3), "x-overflow": "reject-publish"})
	declareQuorum(t, nodes, "n1", "src", amqp091.Table{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlt",
		"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish", "x-max-length": int32(3)})
	leader, others := quorumLeader(t, nodes, "src")
	url := nodes[others[0]].url
	_, ch := dial(t, url)
	publishConfirmed(t, ch, "dlt", "f1", "f2", "f3") // the target is full
	publishConfirmed(t, ch, "src", "m1", "m2", "m3")
	rejectAll(t, ch, "src", 3)

	// The leader's worker tries, the target refuses: nothing more in it, nothing ready in src.
	time.Sleep(time.Second)
	for _, q := range []string{"dlt", "src"} {
		st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]int{"dlt": 3, "src": 0}[q]; st.Messages != want {
			t.Fatalf("%s: %d messages, want %d", q, st.Messages, want)
		}
	}
	// The discards count against src's x-max-length: the three fill it, a publish is refused.
	if publishTaken(url, "src", "x0") {
		t.Fatal("src took a publish while its three discards fill its x-max-length 3")
	}
	nodes[leader].crash()
	t.Logf("killed %s, the leader of src's group", leader)
	for _, f := range []string{"f1", "f2", "f3"} {
		d, ok := dlxGet(t, url, "dlt")
		if !ok || string(d.Body) != f {
			t.Fatalf("filler: %q %v, want %s", d.Body, ok, f)
		}
	}
	got := dlxAwait(t, url, "dlt", "src", "m1", "m2", "m3")
	t.Logf("dead-lettered after the kill: %v", got)

	// Settled: src takes three publishes again, the third only with no discard left (ready
	// 2 + discards < 3). A worker that sent them again and again, never settling, fails here.
	taken := 0
	deadline := time.Now().Add(30 * time.Second)
	for taken < 3 {
		if publishTaken(url, "src", fmt.Sprintf("x%d", taken+1)) {
			taken++
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("the discards were never settled: src took %d of 3 publishes", taken)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Copies sent before the settlements (at least once) are in dlt by now (a settlement
	// follows its copy's confirm); none comes after, over more than the worker's retry
	// interval (5 s).
	for {
		d, ok := dlxGet(t, url, "dlt")
		if !ok {
			break
		}
		if b := string(d.Body); b != "m1" && b != "m2" && b != "m3" {
			t.Fatalf("dlt: %q", b)
		}
		got[string(d.Body)]++
	}
	time.Sleep(6 * time.Second)
	if d, ok := dlxGet(t, url, "dlt"); ok {
		t.Fatalf("%q dead-lettered again after its settlement (copies before: %v)", d.Body, got)
	}
}

// TestQuorumDLXAtLeastOnceTargetLater: a message rejected while its dead-letter exchange
// routes nowhere stays in the source queue (counted against its x-max-length: a publish is
// refused meanwhile) and reaches the target queue bound later; then it is settled (the
// source takes publishes again).
func TestQuorumDLXAtLeastOnceTargetLater(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	_, ch := dial(t, nodes["n2"].url)
	if err := ch.ExchangeDeclare("dlx2", "fanout", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	declareQuorum(t, nodes, "n1", "src2", amqp091.Table{"x-dead-letter-exchange": "dlx2", "x-max-length": int32(1),
		"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
	publishConfirmed(t, ch, "src2", "m")
	rejectAll(t, ch, "src2", 1)

	// Unroutable: it waits in src2, where it takes the one place x-max-length gives.
	time.Sleep(500 * time.Millisecond)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	dc, err := ch.PublishWithDeferredConfirm("", "src2", false, false, amqp091.Publishing{DeliveryMode: 2, Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := dc.WaitContext(context.Background()); err != nil || ok {
		t.Fatalf("publish while the discard waits: ack %v, %v; want a nack (x-max-length 1)", ok, err)
	}

	declareQuorum(t, nodes, "n3", "dlt2", nil)
	if err := ch.QueueBind("dlt2", "", "dlx2", false, nil); err != nil {
		t.Fatal(err)
	}
	got := dlxAwait(t, nodes["n1"].url, "dlt2", "src2", "m")
	if got["m"] != 1 {
		t.Fatalf("dead-lettered %v, want m once", got)
	}
	// Settled: the place is free again.
	deadline := time.Now().Add(10 * time.Second)
	for {
		dc, err := ch.PublishWithDeferredConfirm("", "src2", false, false, amqp091.Publishing{DeliveryMode: 2, Body: []byte("y")})
		if err != nil {
			t.Fatal(err)
		}
		ok, err := dc.WaitContext(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the discard was never settled: src2 still full")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestQuorumDLXAtLeastOnceRestarts: discards waiting for a route survive the crash of every
// node (restarted from their disks: the log replayed) and are dead-lettered once a target is
// bound.
func TestQuorumDLXAtLeastOnceRestarts(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	_, ch := dial(t, nodes["n1"].url)
	if err := ch.ExchangeDeclare("dlx3", "fanout", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	declareQuorum(t, nodes, "n1", "src3", amqp091.Table{"x-dead-letter-exchange": "dlx3",
		"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
	publishConfirmed(t, ch, "src3", "a", "b")
	rejectAll(t, ch, "src3", 2)
	time.Sleep(500 * time.Millisecond) // applied everywhere; the worker finds no route

	for _, n := range []string{"n1", "n2", "n3"} {
		nodes[n].crash()
	}
	errs := make(chan error, 3)
	for _, n := range []string{"n1", "n2", "n3"} {
		go func() { errs <- nodes[n].startE() }()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		waitQueue(t, n.url, "src3")
	}
	declareQuorum(t, nodes, "n2", "dlt3", nil)
	_, ch2 := dial(t, nodes["n2"].url)
	if err := ch2.QueueBind("dlt3", "", "dlx3", false, nil); err != nil {
		t.Fatal(err)
	}
	got := dlxAwait(t, nodes["n3"].url, "dlt3", "src3", "a", "b")
	t.Logf("dead-lettered after the restart: %v", got)
}
