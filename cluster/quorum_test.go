package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/server"
)

// raftNode is one in-process cluster member: an AMQP server whose broker is attached to a
// real cluster Node (multiraft over loopback TCP).
type raftNode struct {
	t    testing.TB
	name string
	nc   NodeConfig // kept for a restart (same data directory and cluster address)
	srv  *server.Server
	node *Node
	url  string
	once *sync.Once
}

// kill stops the node as a shutdown does: its AMQP server first.
func (n *raftNode) kill() {
	n.once.Do(func() {
		_ = n.srv.Close()
		_ = n.node.Close()
	})
}

// crash stops the node's Raft host before its AMQP server: nothing of what its clients held
// is given back through the log, as after a kill -9.
func (n *raftNode) crash() {
	n.once.Do(func() {
		_ = n.node.Close()
		_ = n.srv.Close()
	})
}

// start starts (or restarts, after kill or crash) the node.
func (n *raftNode) start() {
	n.t.Helper()
	if err := n.startE(); err != nil {
		n.t.Fatal(err)
	}
}

// startE is start returning its error (for starting nodes in parallel: a node waits at start
// until the metadata log has a leader).
func (n *raftNode) startE() error {
	cfg := server.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = n.nc.DataDir
	cfg.Logger = quietLog()
	cfg.Attach = func(b *broker.Broker) error {
		node, err := StartNode(n.nc, b)
		n.node = node
		return err
	}
	s, err := server.New(cfg)
	if err != nil {
		return err
	}
	if err := s.Start(); err != nil {
		return err
	}
	n.srv, n.once = s, &sync.Once{}
	n.url = "amqp://guest:guest@" + s.Addr().String() + "/"
	return nil
}

func freeLoopback(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startRaftCluster starts names as a cluster of real nodes (Raft log in temp dirs, fast ticks).
func startRaftCluster(t testing.TB, names ...string) map[string]*raftNode {
	t.Helper()
	return startRaftClusterWith(t, func(nc *NodeConfig) {
		nc.TickInterval, nc.ElectionTicks, nc.NoSync = 20*time.Millisecond, 10, true
	}, names...)
}

// startRaftClusterWith is startRaftCluster with the nodes' configuration changed by tweak
// (nil: multiraft's default timing, with fsync).
func startRaftClusterWith(t testing.TB, tweak func(*NodeConfig), names ...string) map[string]*raftNode {
	t.Helper()
	peers := map[string]string{}
	for _, n := range names {
		peers[n] = freeLoopback(t)
	}
	nodes := map[string]*raftNode{}
	for _, name := range names {
		rn := &raftNode{t: t, name: name}
		rn.nc = NodeConfig{Name: "qtest", NodeName: name, Listen: peers[name], Nodes: peers, Secret: "quorum-test-secret-0123456789",
			DataDir: t.TempDir(), Logger: testQuorumLog()}
		if tweak != nil {
			tweak(&rn.nc)
		}
		nodes[name] = rn
	}
	startRaftNodes(t, nodes)
	return nodes
}

// startRaftNodes starts nodes at once (each waits for the others to form the cluster) and
// kills them at the test's end; a node that fails to start fails the test.
func startRaftNodes(t testing.TB, nodes map[string]*raftNode) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(nodes))
	for _, rn := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := rn.startE(); err != nil {
				errs <- fmt.Errorf("node %s: %w", rn.name, err)
			}
		}()
	}
	wg.Wait()
	for _, rn := range nodes {
		if rn.srv != nil {
			t.Cleanup(func() { rn.kill() })
		}
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// declareQuorum declares a quorum queue through node on, retrying while the metadata group
// elects its first leader, and waits until every node has applied the declare (a follower
// may apply it a little after the declaring node answered).
func declareQuorum(t testing.TB, nodes map[string]*raftNode, on, name string, args amqp091.Table) {
	t.Helper()
	declareQuorumAt(t, nodes[on].url, name, args)
	for _, n := range nodes {
		waitQueue(t, n.url, name)
	}
}

// waitQueue waits until a passive declare of name succeeds on url.
func waitQueue(t testing.TB, url, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := amqp091.Dial(url)
		if err == nil {
			var ch *amqp091.Channel
			if ch, err = c.Channel(); err == nil {
				_, err = ch.QueueDeclarePassive(name, true, false, false, false, nil)
			}
			_ = c.Close()
			if err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue %s not on %s: %v", name, url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func declareQuorumAt(t testing.TB, url, name string, args amqp091.Table) {
	t.Helper()
	if args == nil {
		args = amqp091.Table{}
	}
	args["x-queue-type"] = "quorum"
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := amqp091.Dial(url)
		if err == nil {
			ch, cerr := c.Channel()
			if cerr == nil {
				_, err = ch.QueueDeclare(name, true, false, false, false, args)
			} else {
				err = cerr
			}
			_ = c.Close()
			if err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("declare %s: %v", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// quorumLeader is the node leading queue's group, and the others.
func quorumLeader(t testing.TB, nodes map[string]*raftNode, queue string) (string, []string) {
	t.Helper()
	var leader string
	deadline := time.Now().Add(15 * time.Second)
	for leader == "" && time.Now().Before(deadline) {
		for _, n := range nodes {
			if st, ok := n.node.QuorumStatus("/", queue); ok && st.Leader != "" {
				leader = st.Leader
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if leader == "" {
		t.Fatal("no leader for the queue's group")
	}
	var others []string
	for n := range nodes {
		if n != leader {
			others = append(others, n)
		}
	}
	sort.Strings(others)
	return leader, others
}

func publishConfirmed(t testing.TB, ch *amqp091.Channel, queue string, bodies ...string) {
	t.Helper()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	var dcs []*amqp091.DeferredConfirmation
	for _, b := range bodies {
		dc, err := ch.PublishWithDeferredConfirm("", queue, false, false, amqp091.Publishing{DeliveryMode: 2, Body: []byte(b)})
		if err != nil {
			t.Fatal(err)
		}
		dcs = append(dcs, dc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, dc := range dcs {
		ok, err := dc.WaitContext(ctx)
		if err != nil || !ok {
			t.Fatalf("publish %d (%s): confirmed %v, %v", i, bodies[i], ok, err)
		}
	}
}

func deliveryCount(d amqp091.Delivery) int64 {
	switch v := d.Headers["x-delivery-count"].(type) {
	case int64:
		return v
	case int32:
		return int64(v)
	}
	return 0
}

func recv(t testing.TB, ds <-chan amqp091.Delivery) amqp091.Delivery {
	t.Helper()
	select {
	case d, ok := <-ds:
		if !ok {
			t.Fatal("consumer closed")
		}
		return d
	case <-time.After(15 * time.Second):
		t.Fatal("no delivery within 15s")
	}
	return amqp091.Delivery{}
}

// TestQuorumQueueAcrossNodes: a quorum queue declared on n1 takes publishes with confirms on
// n2 and serves a consumer on n3 and basic.get on n1; a channel closed with unacked messages
// requeues them, redelivered with x-delivery-count 1; a nack without requeue drops.
func TestQuorumQueueAcrossNodes(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qq", nil)

	_, chx := dial(t, nodes["n1"].url)
	if _, err := chx.QueueDeclare("qq-transient", false, false, false, false, amqp091.Table{"x-queue-type": "quorum"}); amqpCode(err) != 406 {
		t.Fatalf("non-durable quorum declare: %v", err)
	}
	_, ch1 := dial(t, nodes["n1"].url)

	_, ch2 := dial(t, nodes["n2"].url)
	var bodies []string
	for i := range 50 {
		bodies = append(bodies, fmt.Sprintf("m%02d", i))
	}
	publishConfirmed(t, ch2, "qq", bodies...)
	// The management API's count is the queue's backlog on every node (n1 applies a moment
	// after n2 confirmed).
	waitQuorum(t, "n1's count", func() bool {
		info, ok := nodes["n1"].srv.Broker().VHost("/").QueueInfo("qq")
		return ok && info.Counts.Ready == 50
	})

	_, ch3 := dial(t, nodes["n3"].url)
	if err := ch3.Qos(10, 0, false); err != nil {
		t.Fatal(err)
	}
	ds, err := ch3.Consume("qq", "c3", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		d := recv(t, ds)
		if string(d.Body) != bodies[i] || d.Redelivered || deliveryCount(d) != 0 {
			t.Fatalf("delivery %d: %q redelivered=%v count=%d", i, d.Body, d.Redelivered, deliveryCount(d))
		}
		if err := d.Ack(false); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch3.Cancel("c3", false); err != nil {
		t.Fatal(err)
	}

	// basic.get on n1, ack; then empty.
	publishConfirmed(t, ch2, "qq", "g1")
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, ok, err := ch1.Get("qq", false)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if string(d.Body) != "g1" {
				t.Fatalf("get: %q", d.Body)
			}
			if err := d.Ack(false); err != nil {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("basic.get found nothing")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Unacked on a channel that closes: back at the head, delivery count 1.
	publishConfirmed(t, ch2, "qq", "r1", "r2", "r3")
	c4, ch4 := dial(t, nodes["n2"].url)
	ds4, err := ch4.Consume("qq", "c4", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		recv(t, ds4)
	}
	_ = c4.Close()
	_, ch5 := dial(t, nodes["n3"].url)
	ds5, err := ch5.Consume("qq", "c5", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"r1", "r2", "r3"} {
		d := recv(t, ds5)
		if string(d.Body) != want || !d.Redelivered || deliveryCount(d) != 1 {
			t.Fatalf("redelivery: %q redelivered=%v count=%d, want %s", d.Body, d.Redelivered, deliveryCount(d), want)
		}
		if want == "r2" {
			if err := d.Nack(false, false); err != nil { // dropped: no dead-letter exchange
				t.Fatal(err)
			}
			continue
		}
		if err := d.Ack(false); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case d := <-ds5:
		t.Fatalf("unexpected delivery %q", d.Body)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestQuorumQueueLeaderKilled: the node leading the queue's group dies; a publisher on another
// node gets its confirms from the new leader (the time is logged), a consumer on a third node
// keeps receiving, and nothing confirmed is lost.
func TestQuorumQueueLeaderKilled(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qk", nil)
	leader, others := quorumLeader(t, nodes, "qk")
	pubNode, consNode := nodes[others[0]], nodes[others[1]]
	_, pch := dial(t, pubNode.url)
	publishConfirmed(t, pch, "qk", "a1", "a2", "a3")
	_, cch := dial(t, consNode.url)
	ds, err := cch.Consume("qk", "c", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for range 3 {
		d := recv(t, ds)
		got[string(d.Body)] = true
		_ = d.Ack(false)
	}

	nodes[leader].kill()
	start := time.Now()
	publishConfirmed(t, pch, "qk", "b1")
	t.Logf("leader %s killed: first confirm after %v", leader, time.Since(start))
	publishConfirmed(t, pch, "qk", "b2", "b3")
	for range 3 {
		d := recv(t, ds)
		got[string(d.Body)] = true
		_ = d.Ack(false)
	}
	for _, b := range []string{"a1", "a2", "a3", "b1", "b2", "b3"} {
		if !got[b] {
			t.Fatalf("%s not delivered (got %v)", b, got)
		}
	}
}

// TestQuorumQueueConsumerNodeDies: messages a dead node's consumer held unacked come back to
// a consumer on another node once the metadata takes the node for dead (node_down after
// cluster.node_timeout, the cluster's one failure detector), with x-delivery-count 1: not
// before the node_down, and not a separate, longer, quorum-only timeout after it.
func TestQuorumQueueConsumerNodeDies(t *testing.T) {
	const timeout = 2 * time.Second
	nodes := startRaftClusterWith(t, func(nc *NodeConfig) {
		nc.TickInterval, nc.ElectionTicks, nc.NoSync = 20*time.Millisecond, 10, true
		nc.NodeTimeout = timeout
	}, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qd", nil)
	_, pch := dial(t, nodes["n1"].url)
	publishConfirmed(t, pch, "qd", "x1", "x2")
	_, dch := dial(t, nodes["n3"].url)
	ds, err := dch.Consume("qd", "doomed", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	recv(t, ds)
	recv(t, ds)
	time.Sleep(500 * time.Millisecond) // the deliveries' marks reach the log (see SurvivesRestarts)
	start := time.Now()
	nodes["n3"].crash()
	_, cch := dial(t, nodes["n2"].url)
	ds2, err := cch.Consume("qd", "heir", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"x1", "x2"} {
		select {
		case d := <-ds2:
			if !nodes["n2"].node.meta.IsDown("n3") {
				t.Fatalf("%s redelivered %v after the crash, before the metadata took n3 for dead", d.Body, time.Since(start))
			}
			if string(d.Body) != want || !d.Redelivered || deliveryCount(d) != 1 {
				t.Fatalf("got %q redelivered=%v count=%d, want %s count 1", d.Body, d.Redelivered, deliveryCount(d), want)
			}
			_ = d.Ack(false)
			t.Logf("%s redelivered %v after the crash", want, time.Since(start))
		case <-time.After(timeout + 2*StatusInterval):
			// node_down comes within node_timeout plus a status period of the leader's
			// watch; the quorum queues follow within quorumWatchEvery.
			t.Fatalf("%s not redelivered %v after its consumer's node died (node_timeout %v)", want, time.Since(start), timeout)
		}
	}
}

// TestQuorumQueueLimits: x-delivery-limit dead-letters (at most once, to another quorum
// queue) a message requeued past the limit; x-max-length drops the head (drop-head) or nacks
// the publish (reject-publish).
func TestQuorumQueueLimits(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "dlq", nil)
	declareQuorum(t, nodes, "n1", "limited", amqp091.Table{"x-delivery-limit": int32(1),
		"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"})
	declareQuorum(t, nodes, "n2", "head", amqp091.Table{"x-max-length": int32(2)})
	declareQuorum(t, nodes, "n3", "reject", amqp091.Table{"x-max-length": int32(1), "x-overflow": "reject-publish"})

	_, pch := dial(t, nodes["n1"].url)
	publishConfirmed(t, pch, "limited", "L")
	_, cch := dial(t, nodes["n2"].url)
	ds, err := cch.Consume("limited", "c", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		d := recv(t, ds)
		if string(d.Body) != "L" || deliveryCount(d) != int64(i) {
			t.Fatalf("delivery %d: %q count %d", i, d.Body, deliveryCount(d))
		}
		if err := d.Nack(false, true); err != nil {
			t.Fatal(err)
		}
	}
	_, gch := dial(t, nodes["n3"].url)
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, ok, err := gch.Get("dlq", true)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			death, _ := d.Headers["x-death"].([]any)
			if string(d.Body) != "L" || len(death) != 1 {
				t.Fatalf("dead-lettered: %q x-death %v", d.Body, d.Headers["x-death"])
			}
			if reason := death[0].(amqp091.Table)["reason"]; reason != "delivery_limit" {
				t.Fatalf("x-death reason %v", reason)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing dead-lettered")
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case d := <-ds:
		t.Fatalf("delivered past the limit: %q", d.Body)
	case <-time.After(200 * time.Millisecond):
	}

	publishConfirmed(t, pch, "head", "h1", "h2", "h3")
	for _, want := range []string{"h2", "h3"} {
		d, ok, err := gch.Get("head", true)
		if err != nil || !ok || string(d.Body) != want {
			t.Fatalf("drop-head: got %q %v %v, want %s", d.Body, ok, err, want)
		}
	}

	if err := pch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	var acks []bool
	for _, b := range []string{"r1", "r2"} {
		dc, err := pch.PublishWithDeferredConfirm("", "reject", false, false, amqp091.Publishing{DeliveryMode: 2, Body: []byte(b)})
		if err != nil {
			t.Fatal(err)
		}
		ok, err := dc.WaitContext(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, ok)
	}
	if !acks[0] || acks[1] {
		t.Fatalf("reject-publish confirms %v, want ack then nack", acks)
	}
}

// TestQuorumQueueSurvivesRestarts: a replica that was down catches up; two of three nodes
// crash at once and restart from their disks; every confirmed message is still there, in
// order, and those a crashed node's consumer held unacked come back first with
// x-delivery-count 1.
func TestQuorumQueueSurvivesRestarts(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qr", nil)
	var bodies []string
	for i := range 30 {
		bodies = append(bodies, fmt.Sprintf("m%02d", i))
	}
	_, ch1 := dial(t, nodes["n1"].url)
	publishConfirmed(t, ch1, "qr", bodies[:20]...)

	nodes["n3"].crash()
	_, ch2 := dial(t, nodes["n2"].url)
	publishConfirmed(t, ch2, "qr", bodies[20:]...)
	nodes["n3"].start()

	// A consumer on n1 holds five unacked when n1 and n2 crash together.
	_, cch := dial(t, nodes["n1"].url)
	if err := cch.Qos(5, 0, false); err != nil {
		t.Fatal(err)
	}
	ds, err := cch.Consume("qr", "held", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if d := recv(t, ds); string(d.Body) != bodies[i] {
			t.Fatalf("delivery %d: %q", i, d.Body)
		}
	}
	// A delivery is marked in the log (so that a crash counts it) by a proposal that follows
	// it; give it time to commit. A crash inside that window gives the message back uncounted.
	time.Sleep(500 * time.Millisecond)
	nodes["n1"].crash()
	nodes["n2"].crash()
	nodes["n1"].start()
	nodes["n2"].start()
	waitQueue(t, nodes["n3"].url, "qr")

	_, rch := dial(t, nodes["n3"].url)
	for i, want := range bodies {
		var d amqp091.Delivery
		deadline := time.Now().Add(15 * time.Second)
		for {
			var ok bool
			d, ok, err = rch.Get("qr", true)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("message %d (%s) missing after the restarts", i, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
		wantCount := int64(0)
		if i < 5 {
			wantCount = 1
		}
		if string(d.Body) != want || deliveryCount(d) != wantCount {
			t.Fatalf("message %d: %q count %d, want %s count %d", i, d.Body, deliveryCount(d), want, wantCount)
		}
	}
}

// TestQuorumQueueNoAckConsumer: a no-ack consumer receives more than a node's credit window:
// its deliveries settle in the log by themselves.
func TestQuorumQueueNoAckConsumer(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qa", nil)
	_, pch := dial(t, nodes["n1"].url)
	const n = 3 * quorumCreditForTest
	var bodies []string
	for i := range n {
		bodies = append(bodies, fmt.Sprint(i))
	}
	publishConfirmed(t, pch, "qa", bodies...)
	_, cch := dial(t, nodes["n2"].url)
	ds, err := cch.Consume("qa", "auto", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if d := recv(t, ds); string(d.Body) != bodies[i] {
			t.Fatalf("delivery %d: %q", i, d.Body)
		}
	}
}

// quorumCreditForTest is broker's quorumNodeCredit (unexported there).
const quorumCreditForTest = 256

// TestQuorumQueueTransaction: tx.commit-ok comes once the publishes are committed (they are
// readable on another node right after it), and a transaction's acks settle.
func TestQuorumQueueTransaction(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qt", nil)
	_, tch := dial(t, nodes["n2"].url)
	if err := tch.Tx(); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"t1", "t2"} {
		if err := tch.Publish("", "qt", false, false, amqp091.Publishing{DeliveryMode: 2, Body: []byte(b)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	// Committed means applied on n2; n3 may apply it a moment later.
	_, gch := dial(t, nodes["n3"].url)
	for _, want := range []string{"t1", "t2"} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			d, ok, err := gch.Get("qt", false)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				if string(d.Body) != want {
					t.Fatalf("got %q, want %s", d.Body, want)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not there after tx.commit-ok", want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Both gets are unacked on gch; ack them in a transaction, then nothing comes back when
	// the channel closes.
	if err := gch.Tx(); err != nil {
		t.Fatal(err)
	}
	if err := gch.Ack(2, true); err != nil {
		t.Fatal(err)
	}
	if err := gch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	if err := gch.Close(); err != nil {
		t.Fatal(err)
	}
	_, ch := dial(t, nodes["n1"].url)
	time.Sleep(200 * time.Millisecond)
	if d, ok, err := ch.Get("qt", true); err != nil || ok {
		t.Fatalf("after the acks: %q %v %v", d.Body, ok, err)
	}
}

// TestQuorumQueueGetThenClose: a basic.get left unacked when its channel closes goes back to
// the queue (x-delivery-count 1), where a consumer of another node gets it.
func TestQuorumQueueGetThenClose(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qg", nil)
	_, pch := dial(t, nodes["n1"].url)
	publishConfirmed(t, pch, "qg", "g")
	c, gch := dial(t, nodes["n2"].url)
	d, ok, err := gch.Get("qg", false)
	if err != nil || !ok || string(d.Body) != "g" || d.Redelivered {
		t.Fatalf("get: %q %v %v redelivered=%v", d.Body, ok, err, d.Redelivered)
	}
	_ = c.Close()
	_, cch := dial(t, nodes["n3"].url)
	ds, err := cch.Consume("qg", "c", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := recv(t, ds); string(d.Body) != "g" || !d.Redelivered || deliveryCount(d) != 1 {
		t.Fatalf("after the close: %q redelivered=%v count=%d", d.Body, d.Redelivered, deliveryCount(d))
	}
}

// TestQuorumQueueTTL: x-message-ttl and the expiration property expire messages of an idle
// quorum queue at its head (the leader proposes the time), dead-lettered with reason expired.
func TestQuorumQueueTTL(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "ttl-dlq", nil)
	declareQuorum(t, nodes, "n2", "ttl", amqp091.Table{"x-message-ttl": int32(300),
		"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "ttl-dlq"})
	_, pch := dial(t, nodes["n3"].url)
	if err := pch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, p := range []amqp091.Publishing{{Body: []byte("ttl")}, {Body: []byte("exp"), Expiration: "100"}} {
		p.DeliveryMode = 2
		dc, err := pch.PublishWithDeferredConfirm("", "ttl", false, false, p)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(t.Context()); !ok || err != nil {
			t.Fatalf("confirm: %v %v", ok, err)
		}
	}
	_, gch := dial(t, nodes["n1"].url)
	for _, want := range []string{"ttl", "exp"} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			d, ok, err := gch.Get("ttl-dlq", true)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				death, _ := d.Headers["x-death"].([]any)
				if string(d.Body) != want || len(death) != 1 || death[0].(amqp091.Table)["reason"] != "expired" {
					t.Fatalf("dead-lettered %q x-death %v, want %s expired", d.Body, d.Headers["x-death"], want)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not expired", want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("expired after %v, before the queue's TTL", took)
	}
	if _, ok, _ := gch.Get("ttl", true); ok {
		t.Fatal("an expired message is still in the queue")
	}
}

// waitQuorum waits up to 10 s for cond.
func waitQuorum(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestQuorumQueueNoMajority: with two of three nodes down, basic.get on the third answers
// 541 after the operation timeout instead of hanging; once a second node is back, the
// message is there.
func TestQuorumQueueNoMajority(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the 10 s operation timeout")
	}
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qm", nil)
	_, pch := dial(t, nodes["n1"].url)
	publishConfirmed(t, pch, "qm", "m")
	nodes["n2"].crash()
	nodes["n3"].crash()
	_, gch := dial(t, nodes["n1"].url)
	start := time.Now()
	if _, _, err := gch.Get("qm", false); amqpCode(err) != 541 {
		t.Fatalf("get without a majority: %v", err)
	}
	t.Logf("541 after %v", time.Since(start))
	nodes["n2"].start()
	_, gch2 := dial(t, nodes["n1"].url)
	waitQuorum(t, "the message once a majority is back", func() bool {
		d, ok, err := gch2.Get("qm", true)
		if err != nil {
			t.Fatal(err)
		}
		return ok && string(d.Body) == "m"
	})
}

// TestQuorumQueueWithoutHost: brokers sharing an in-memory log (no Raft host) keep a quorum
// queue a durable classic queue homed on its declaring node, as before quorum queues.
func TestQuorumQueueWithoutHost(t *testing.T) {
	tc := newTestCluster(t, 2, false)
	args := amqp.Table{"x-queue-type": "quorum"}
	if _, err := tc.vhost(0).DeclareQueue(actor(1), broker.QueueSpec{Name: "cq", Durable: true, Args: args}); err != nil {
		t.Fatal(err)
	}
	qs, err := tc.vhost(1).Queue(actor(1), "cq")
	if err != nil {
		t.Fatal(err)
	}
	if qs.Home() != "n1" {
		t.Fatalf("home %q, want n1", qs.Home())
	}
}

// TestQuorumQueueSingleActiveConsumer: with x-single-active-consumer one consumer of the
// cluster receives; when it is cancelled, a consumer on another node takes over.
func TestQuorumQueueSingleActiveConsumer(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qs", amqp091.Table{"x-single-active-consumer": true})
	_, ach := dial(t, nodes["n2"].url)
	ads, err := ach.Consume("qs", "a", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The first consumer's checkout is in the log before the second's: wait for a delivery.
	_, pch := dial(t, nodes["n1"].url)
	publishConfirmed(t, pch, "qs", "first")
	if d := recv(t, ads); string(d.Body) != "first" {
		t.Fatalf("a got %q", d.Body)
	} else {
		_ = d.Ack(false)
	}
	_, bch := dial(t, nodes["n3"].url)
	bds, err := bch.Consume("qs", "b", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for i := range 10 {
		bodies = append(bodies, fmt.Sprint(i))
	}
	publishConfirmed(t, pch, "qs", bodies...)
	for _, want := range bodies {
		d := recv(t, ads)
		if string(d.Body) != want {
			t.Fatalf("a got %q, want %s", d.Body, want)
		}
		_ = d.Ack(false)
	}
	select {
	case d := <-bds:
		t.Fatalf("the inactive consumer got %q", d.Body)
	case <-time.After(200 * time.Millisecond):
	}
	if err := ach.Cancel("a", false); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, pch, "qs", "after")
	if d := recv(t, bds); string(d.Body) != "after" {
		t.Fatalf("b got %q", d.Body)
	}
}

// TestQuorumQueueDeleteDropsGroup: queue.delete answers the queue's backlog, and every node
// deletes its replica of the queue's group.
func TestQuorumQueueDeleteDropsGroup(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	groups := func() map[string]int {
		out := map[string]int{}
		for name, n := range nodes {
			out[name] = n.node.host.Stats().Groups
		}
		return out
	}
	before := groups()
	declareQuorum(t, nodes, "n1", "qdel", nil)
	_, ch := dial(t, nodes["n2"].url)
	publishConfirmed(t, ch, "qdel", "a", "b")
	n, err := ch.QueueDelete("qdel", false, false, false)
	if err != nil || n != 2 {
		t.Fatalf("delete: %d messages, %v", n, err)
	}
	waitQuorum(t, "every node's replica of the group deleted", func() bool {
		now := groups()
		for name := range nodes {
			if now[name] != before[name] {
				return false
			}
		}
		return true
	})
}

// testQuorumLog shows the nodes' errors (a failed group open, a failed proposal) on stderr.
func testQuorumLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}
