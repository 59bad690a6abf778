package cluster

import (
	"testing"
	"time"

	"github.com/warrenmq/warren/cluster/faultproxy"
)

// startProxiedRaftCluster is startRaftClusterWith with every inter-node connection through a
// faultproxy; isolate(node, true) partitions node from the others, isolate(node, false) heals.
func startProxiedRaftCluster(t *testing.T, tweak func(*NodeConfig), names ...string) (map[string]*raftNode, func(node string, cut bool)) {
	t.Helper()
	addrs := map[string]string{}
	for _, n := range names {
		addrs[n] = freeLoopback(t)
	}
	proxies := map[[2]string]*faultproxy.Proxy{}
	nodes := map[string]*raftNode{}
	for _, from := range names {
		peers := map[string]string{from: addrs[from]}
		for _, to := range names {
			if to == from {
				continue
			}
			p, err := faultproxy.New(addrs[to])
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = p.Close() })
			proxies[[2]string{from, to}] = p
			peers[to] = p.Addr()
		}
		rn := &raftNode{t: t, name: from}
		rn.nc = NodeConfig{Name: "qtest", NodeName: from, Listen: addrs[from], Nodes: peers, Secret: "quorum-test-secret-0123456789",
			DataDir: t.TempDir(), Logger: testQuorumLog()}
		if tweak != nil {
			tweak(&rn.nc)
		}
		nodes[from] = rn
	}
	startRaftNodes(t, nodes)
	isolate := func(node string, cut bool) {
		for k, p := range proxies {
			if k[0] == node || k[1] == node {
				if cut {
					p.Partition()
				} else {
					p.Heal()
				}
			}
		}
	}
	return nodes, isolate
}

// TestQuorumQueuePartitionedConsumerNodeCounts: the node of a consumer is cut off from the
// two others (a partition, not a crash) and taken for dead; meanwhile its consumer acks one
// message and receives the next, whose delivery mark cannot reach the log before the
// node_down takes both back. RabbitMQ 3.10 returns every message a node's consumers had
// checked out with its delivery count incremented (rabbit_fifo's return_all on
// noconnection): both come to a consumer of another node with x-delivery-count 1 and
// redelivered set. The late mark is counted when the partition heals (before, the message
// came back flagged redelivered without the header).
func TestQuorumQueuePartitionedConsumerNodeCounts(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a node_down and a heal (about 10 s)")
	}
	const timeout = 2 * time.Second
	nodes, isolate := startProxiedRaftCluster(t, func(nc *NodeConfig) {
		nc.TickInterval, nc.ElectionTicks, nc.NoSync = 20*time.Millisecond, 10, true
		nc.NodeTimeout = timeout
	}, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qp", nil)
	_, pch := dial(t, nodes["n1"].url)
	publishConfirmed(t, pch, "qp", "x1", "x2")

	// The consumer's client talks to n3 directly: only n3's links to n1 and n2 are cut.
	_, cch := dial(t, nodes["n3"].url)
	if err := cch.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	ds, err := cch.Consume("qp", "cut", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := recv(t, ds)
	if string(first.Body) != "x1" {
		t.Fatalf("got %q, want x1", first.Body)
	}
	time.Sleep(500 * time.Millisecond) // x1's mark reaches the log

	isolate("n3", true)
	// n3's consumer acks x1 and gets x2: the settlement and x2's mark stay with n3.
	if err := first.Ack(false); err != nil {
		t.Fatal(err)
	}
	if d := recv(t, ds); string(d.Body) != "x2" || d.Redelivered {
		t.Fatalf("got %q redelivered=%v, want x2 first delivery", d.Body, d.Redelivered)
	}
	waitFor(t, timeout+2*StatusInterval, "n3 taken for dead", func() bool { return nodes["n1"].node.meta.IsDown("n3") })
	time.Sleep(4 * quorumWatchEvery) // the queue's NodeDown of n3 is applied
	// The consumer goes (its channel's requeue reaches the log after the heal, where n3 holds
	// nothing any more); not waited for: n3 cannot commit before the heal.
	go func() { _ = cch.Close() }()
	isolate("n3", false)
	waitFor(t, timeout+2*StatusInterval, "n3 back", func() bool { return !nodes["n1"].node.meta.IsDown("n3") })
	time.Sleep(2 * time.Second) // n3's proposals of the partition reach the log

	_, hch := dial(t, nodes["n2"].url)
	hds, err := hch.Consume("qp", "heir", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"x1", "x2"} {
		d := recv(t, hds)
		if string(d.Body) != want || !d.Redelivered || deliveryCount(d) != 1 {
			t.Fatalf("got %q redelivered=%v x-delivery-count=%d, want %s redelivered with 1", d.Body, d.Redelivered, deliveryCount(d), want)
		}
		_ = d.Ack(false)
	}
}
