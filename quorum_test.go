package main

// Quorum queues on three warren processes (see cluster_test.go for the harness): kill -9 of
// each node in turn while a publisher with confirms runs on another, each victim restarted
// from its data directory; at the end every confirmed message is in the queue.

import (
	"context"
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// declareQuorumOn declares a quorum queue on c, retrying while the cluster elects its
// metadata leader, then waits until every node has it.
func declareQuorumOn(t *testing.T, tc *testCluster, c *clusterChild, name string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := amqp091.Dial("amqp://guest:guest@" + c.addr + "/")
		if err == nil {
			var ch *amqp091.Channel
			if ch, err = conn.Channel(); err == nil {
				_, err = ch.QueueDeclare(name, true, false, false, false, amqp091.Table{"x-queue-type": "quorum"})
			}
			_ = conn.Close()
			if err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("declare %s: %v", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, n := range tc.nodes {
		waitPassive(t, n, name)
	}
}

func waitPassive(t *testing.T, c *clusterChild, name string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := amqp091.Dial("amqp://guest:guest@" + c.addr + "/")
		if err == nil {
			var ch *amqp091.Channel
			if ch, err = conn.Channel(); err == nil {
				_, err = ch.QueueDeclarePassive(name, true, false, false, false, nil)
			}
			_ = conn.Close()
			if err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue %s not on %s: %v", name, c.name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// publishAll publishes bodies with confirms (all outstanding at once) and returns how long the
// first confirm took; it fails on a nack or a timeout.
func publishAll(t *testing.T, ch *amqp091.Channel, queue string, bodies []string) time.Duration {
	t.Helper()
	start := time.Now()
	var dcs []*amqp091.DeferredConfirmation
	for _, b := range bodies {
		dc, err := ch.PublishWithDeferredConfirm("", queue, false, false, amqp091.Publishing{DeliveryMode: 2, Body: []byte(b)})
		if err != nil {
			t.Fatal(err)
		}
		dcs = append(dcs, dc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var first time.Duration
	for i, dc := range dcs {
		ok, err := dc.WaitContext(ctx)
		if err != nil || !ok {
			t.Fatalf("publish of %s: confirmed %v, %v", bodies[i], ok, err)
		}
		if i == 0 {
			first = time.Since(start)
		}
	}
	return first
}

func TestQuorumQueueThreeProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills warren processes")
	}
	tc := newTestCluster(t, "n1", "n2", "n3")
	tc.start(tc.names...)
	declareQuorumOn(t, tc, tc.nodes["n1"], "jq")

	var confirmed []string
	held := map[string]bool{}
	for round, victim := range tc.names {
		pub := tc.nodes[tc.names[(round+1)%3]]
		pch := channelOn(t, pub)
		if err := pch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		batch := func(tag string, n int) []string {
			var out []string
			for i := range n {
				out = append(out, fmt.Sprintf("r%d-%s-%03d", round, tag, i))
			}
			return out
		}
		before := batch("before", 50)
		publishAll(t, pch, "jq", before)
		confirmed = append(confirmed, before...)
		if round == 0 {
			// A consumer on the victim holds ten unacked when it dies: they come back
			// (x-delivery-count 1) when it restarts.
			cch := channelOn(t, tc.nodes[victim])
			if err := cch.Qos(10, 0, false); err != nil {
				t.Fatal(err)
			}
			ds, err := cch.Consume("jq", "doomed", false, false, false, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			for range 10 {
				select {
				case d := <-ds:
					held[string(d.Body)] = true
				case <-time.After(15 * time.Second):
					t.Fatal("the victim's consumer got nothing")
				}
			}
			time.Sleep(500 * time.Millisecond) // the deliveries' marks reach the log
		}
		tc.nodes[victim].kill()
		first := publishAll(t, pch, "jq", batch("after", 50))
		confirmed = append(confirmed, batch("after", 50)...)
		t.Logf("round %d: %s killed -9; first confirm on %s after %v", round, victim, pub.name, first.Round(time.Millisecond))
		tc.spawn(victim).wait()
		waitPassive(t, tc.nodes[victim], "jq")
	}

	// Every confirmed message is there; the consumer's ten come back counted.
	ch := channelOn(t, tc.nodes["n3"])
	seen := map[string]int{}
	var got int
	deadline := time.Now().Add(30 * time.Second)
	for got < len(confirmed) && time.Now().Before(deadline) {
		d, ok, err := ch.Get("jq", true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		b := string(d.Body)
		seen[b]++
		got++
		count, _ := d.Headers["x-delivery-count"].(int64)
		if held[b] != (count == 1) {
			t.Errorf("%s: x-delivery-count %d (held by the killed consumer: %v)", b, count, held[b])
		}
	}
	dups := 0
	for _, b := range confirmed {
		switch seen[b] {
		case 0:
			t.Errorf("confirmed message %s lost", b)
		case 1:
		default:
			dups += seen[b] - 1
		}
	}
	t.Logf("%d confirmed messages, all consumed; %d duplicates", len(confirmed), dups)
}
