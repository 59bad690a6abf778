package cluster

import (
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// declareDelayedFanout declares the delayed exchange dx (fanout) on url, retrying while the
// cluster elects its leader, and a durable queue dq bound to it on qurl, known to every node.
func declareDelayedFanout(t *testing.T, nodes map[string]*raftNode, exNode, qNode string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := amqp091.Dial(nodes[exNode].url)
		if err == nil {
			var ch *amqp091.Channel
			if ch, err = c.Channel(); err == nil {
				err = ch.ExchangeDeclare("dx", "x-delayed-message", true, false, false, false, amqp091.Table{"x-delayed-type": "fanout"})
			}
			_ = c.Close()
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, ch := dial(t, nodes[qNode].url)
	if _, err := ch.QueueDeclare("dq", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind("dq", "", "dx", false, nil); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		waitQueue(t, n.url, "dq")
	}
}

// Many confirmed delayed messages due at once for a queue of another node: each is forwarded
// with a confirm and stays stored until its home accepted it (none is dropped because too many
// wait for the link).
func TestClusterDelayedBurstToRemoteQueue(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareDelayedFanout(t, nodes, "n1", "n2")
	_, ch1 := dial(t, nodes["n1"].url)
	if err := ch1.Confirm(false); err != nil {
		t.Fatal(err)
	}
	const n = 20000
	due := time.Now().Add(8 * time.Second)
	dcs := make([]*amqp091.DeferredConfirmation, 0, n)
	for range n {
		ms := max(int32(time.Until(due).Milliseconds()), 1)
		dc, err := ch1.PublishWithDeferredConfirm("dx", "", false, false, amqp091.Publishing{DeliveryMode: amqp091.Persistent,
			Body: make([]byte, 100), Headers: amqp091.Table{"x-delay": ms}})
		if err != nil {
			t.Fatal(err)
		}
		dcs = append(dcs, dc)
	}
	acked := 0
	for _, dc := range dcs {
		if ok, _ := dc.WaitContext(t.Context()); ok {
			acked++
		}
	}
	t.Logf("%d published, %d confirmed, %v before they are due", n, acked, time.Until(due))
	if acked == 0 {
		t.Fatal("no delayed publish confirmed")
	}
	_, ch2 := dial(t, nodes["n2"].url)
	deadline := time.Now().Add(time.Until(due) + 30*time.Second)
	got := 0
	for time.Now().Before(deadline) {
		q, err := ch2.QueueDeclarePassive("dq", true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got = q.Messages; got >= acked {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got < acked {
		t.Fatalf("confirmed %d delayed messages, %d reached the queue (forwards dropped on n1: %d)",
			acked, got, nodes["n1"].srv.Broker().ForwardsDropped())
	}
}

// A confirmed delayed message for a queue of another node that comes due while the exchange's
// home is down is routed there when the home restarts: the home arms its timer only once it
// replayed the metadata log (the binding) and installed its forwarder.
func TestClusterDelayedOverdueAtHomeRestart(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareDelayedFanout(t, nodes, "n1", "n2")
	_, ch3 := dial(t, nodes["n3"].url)
	if err := ch3.Confirm(false); err != nil {
		t.Fatal(err)
	}
	if !delayedPublish(t, ch3, "dx", "", "overdue", 300) {
		t.Fatal("delayed publish nacked")
	}
	nodes["n1"].crash()
	time.Sleep(time.Second)
	nodes["n1"].start()
	_, ch2 := dial(t, nodes["n2"].url)
	d, ok := awaitGet(t, ch2, "dq", 10*time.Second)
	if !ok || string(d.Body) != "overdue" {
		t.Fatalf("confirmed delayed message that came due while its home was down: got %v %q (held on n1 now %d)",
			ok, d.Body, nodes["n1"].srv.Broker().DelayedStats().Held)
	}
}
