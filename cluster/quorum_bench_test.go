package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// dialTB is dial for benchmarks too.
func dialTB(t testing.TB, url string) (*amqp091.Connection, *amqp091.Channel) {
	t.Helper()
	c, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return c, ch
}

// TestQuorumFailoverDefaultTiming measures, with multiraft's default timing (100 ms tick,
// election after 8-16 ticks) and fsync on, the time from the death of a quorum queue's leader
// to the first publisher confirm on another node: the target is under 2 s. It fails
// above 4 s, which leaves room for a loaded shared machine.
func TestQuorumFailoverDefaultTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement: several seconds of default Raft timing")
	}
	nodes := startRaftClusterWith(t, nil, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qf", nil)
	leader, others := quorumLeader(t, nodes, "qf")
	_, pch := dialTB(t, nodes[others[0]].url)
	publishConfirmed(t, pch, "qf", "before")
	nodes[leader].crash()
	start := time.Now()
	publishConfirmed(t, pch, "qf", "after")
	took := time.Since(start)
	t.Logf("quorum queue leader %s killed: first confirm on %s after %v", leader, others[0], took)
	if took > 4*time.Second {
		t.Fatalf("failover took %v", took)
	}
	_, cch := dialTB(t, nodes[others[1]].url)
	for _, want := range []string{"before", "after"} {
		d, ok, err := cch.Get("qf", true)
		if err != nil || !ok || string(d.Body) != want {
			t.Fatalf("get: %q %v %v, want %s", d.Body, ok, err, want)
		}
	}
}

// BenchmarkQuorumQueue1p1c: 3 nodes in one process (fsync on, default timing), one queue, 1
// KiB persistent messages published with a confirm window of 256 and consumed with manual
// acks (prefetch 256). quorum: published on n1, consumed on n2. classic: a durable classic
// queue homed on n1, published and consumed there (the same cluster, for comparison).
// Reports messages per second end to end.
func BenchmarkQuorumQueue1p1c(b *testing.B) {
	nodes := startRaftClusterWith(b, nil, "n1", "n2", "n3")
	declareQuorum(b, nodes, "n1", "qb", nil)
	b.Run("quorum", func(b *testing.B) { bench1p1c(b, nodes["n1"].url, nodes["n2"].url, "qb") })
	_, ch := dialTB(b, nodes["n1"].url)
	if _, err := ch.QueueDeclare("cb", true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	b.Run("classic", func(b *testing.B) { bench1p1c(b, nodes["n1"].url, nodes["n1"].url, "cb") })
}

func bench1p1c(b *testing.B, pubURL, consURL, queue string) {
	_, pch := dialTB(b, pubURL)
	_, cch := dialTB(b, consURL)
	if err := cch.Qos(256, 0, false); err != nil {
		b.Fatal(err)
	}
	ds, err := cch.Consume(queue, "bench", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := pch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	confirms := pch.NotifyPublish(make(chan amqp091.Confirmation, 512))
	body := make([]byte, 1024)
	consumed := make(chan error, 1)
	b.ResetTimer()
	start := time.Now()
	go func() {
		for i := 0; i < b.N; i++ {
			select {
			case d := <-ds:
				if err := d.Ack(false); err != nil {
					consumed <- err
					return
				}
			case <-time.After(30 * time.Second):
				consumed <- fmt.Errorf("consumer stalled after %d of %d", i, b.N)
				return
			}
		}
		consumed <- nil
	}()
	ctx := context.Background()
	outstanding, nacks := 0, 0
	for i := 0; i < b.N; i++ {
		for outstanding >= 256 {
			c := <-confirms
			outstanding--
			if !c.Ack {
				nacks++
			}
		}
		if err := pch.PublishWithContext(ctx, "", queue, false, false, amqp091.Publishing{DeliveryMode: 2, Body: body}); err != nil {
			b.Fatal(err)
		}
		outstanding++
	}
	for ; outstanding > 0; outstanding-- {
		if c := <-confirms; !c.Ack {
			nacks++
		}
	}
	if err := <-consumed; err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	if nacks > 0 {
		b.Fatalf("%d nacks", nacks)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
}
