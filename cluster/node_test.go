package cluster

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/cluster/multiraft"
)

// nodeSet is n in-process Nodes (real Raft over loopback TCP), each with its own broker and
// data directory, restartable on it.
type nodeSet struct {
	t       *testing.T
	addrs   map[string]string
	dirs    map[string]string
	nodes   map[string]*Node
	brokers map[string]*broker.Broker
	timeout time.Duration
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func newNodeSet(t *testing.T, names ...string) *nodeSet {
	ns := &nodeSet{t: t, addrs: map[string]string{}, dirs: map[string]string{}, nodes: map[string]*Node{}, brokers: map[string]*broker.Broker{}}
	for _, n := range names {
		ns.addrs[n], ns.dirs[n] = freeAddr(t), t.TempDir()
	}
	t.Cleanup(func() {
		for _, n := range ns.runningNodes() {
			ns.stop(n)
		}
	})
	return ns
}

// start starts node name with the member list peers (every member of ns when nil).
func (ns *nodeSet) start(name string, join bool, peers map[string]string) *Node {
	ns.t.Helper()
	n, err := ns.startErr(name, join, peers)
	if err != nil {
		ns.t.Fatal(err)
	}
	return n
}

// startAll starts the named nodes at once (each StartNode waits for a majority).
func (ns *nodeSet) startAll(join bool, peers map[string]string, names ...string) {
	ns.t.Helper()
	errs := make(chan error, len(names))
	for _, n := range names {
		go func() {
			_, err := ns.startErr(n, join, peers)
			errs <- err
		}()
	}
	for range names {
		if err := <-errs; err != nil {
			ns.t.Fatal(err)
		}
	}
}

func (ns *nodeSet) startErr(name string, join bool, peers map[string]string) (*Node, error) {
	if peers == nil {
		peers = ns.addrs
	}
	b, err := broker.New(broker.Options{DataDir: ns.dirs[name], MaxRAMMessages: 4096, Logger: quietLog(),
		VHosts: []broker.VHostSettings{{Name: "/", MaxQueues: -1}}})
	if err != nil {
		return nil, err
	}
	n, err := StartNode(NodeConfig{Name: "test", NodeName: name, Listen: ns.addrs[name], Nodes: peers,
		Secret: "a-test-secret-of-enough-length", DataDir: ns.dirs[name], Logger: quietLog(), Join: join,
		TickInterval: 20 * time.Millisecond, ElectionTicks: 10, NoSync: true, NodeTimeout: ns.timeout, CatchUpTimeout: 30 * time.Second}, b)
	if err != nil {
		_ = b.Close()
		return nil, err
	}
	nodeSetMu.Lock()
	ns.nodes[name], ns.brokers[name] = n, b
	nodeSetMu.Unlock()
	return n, nil
}

func (ns *nodeSet) stop(name string) {
	nodeSetMu.Lock()
	n, b := ns.nodes[name], ns.brokers[name]
	delete(ns.nodes, name)
	delete(ns.brokers, name)
	nodeSetMu.Unlock()
	if n != nil {
		_ = n.Close()
		_ = b.Close()
	}
}

// declare declares durable queue q on node name, retrying while the cluster has no leader.
func (ns *nodeSet) declare(name, q string) {
	t := ns.t
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := ns.broker(name).VHost("/").DeclareQueue(broker.System, broker.QueueSpec{Name: q, Durable: true})
		if err == nil {
			return
		}
		if err.Code != amqp.InternalError || time.Now().After(deadline) {
			t.Fatalf("declare %s on %s: %v", q, name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hasQueue(b *broker.Broker, name string) bool {
	for _, q := range b.VHost("/").Queues() {
		if q.Name == name {
			return true
		}
	}
	return false
}

// TestNodeRestartCatchesUpBeforeServing: StartNode returns only once the restarted node's
// broker has what the cluster committed while it was down, so its first client cannot see an
// older topology.
func TestNodeRestartCatchesUpBeforeServing(t *testing.T) {
	ns := newNodeSet(t, "n1", "n2", "n3")
	ns.startAll(false, nil, "n1", "n2", "n3")
	ns.declare("n1", "before")
	waitFor(t, 5*time.Second, "n3 applies before", func() bool { return hasQueue(ns.broker("n3"), "before") })
	ns.stop("n3")
	for _, q := range []string{"while-away-1", "while-away-2", "while-away-3"} {
		ns.declare("n1", q)
	}
	ns.start("n3", false, nil)
	b3 := ns.broker("n3")
	for _, q := range []string{"before", "while-away-1", "while-away-2", "while-away-3"} {
		if !hasQueue(b3, q) {
			t.Errorf("n3 serves right after StartNode without queue %s, committed while it was down", q)
		}
	}
}

// TestNodeJoinsRunningCluster: a fourth node started with Join gets the topology once the
// running nodes' member list (Reload) includes it; it never bootstraps a cluster of its own.
func TestNodeJoinsRunningCluster(t *testing.T) {
	ns := newNodeSet(t, "n1", "n2", "n3", "n4")
	three := map[string]string{"n1": ns.addrs["n1"], "n2": ns.addrs["n2"], "n3": ns.addrs["n3"]}
	ns.startAll(false, three, "n1", "n2", "n3")
	ns.declare("n2", "q-before-join")
	// The running nodes learn of n4 first, then n4 starts as a joiner (StartNode waits for the
	// leader's log before it serves).
	for _, n := range []string{"n1", "n2", "n3"} {
		if err := ns.node(n).Reload(ns.addrs, ""); err != nil {
			t.Fatal(err)
		}
	}
	ns.start("n4", true, ns.addrs)
	waitFor(t, 10*time.Second, "n4 has the topology", func() bool { return hasQueue(ns.broker("n4"), "q-before-join") })
	ns.declare("n4", "q-on-n4")
	waitFor(t, 5*time.Second, "n1 learns q-on-n4", func() bool { return hasQueue(ns.broker("n1"), "q-on-n4") })
	waitFor(t, 10*time.Second, "n4 a voter", func() bool { return len(ns.node("n1").mg.Status().Members) == 4 })
}

// TestNodeDownDropsItsQueues: a member silent for the node timeout is taken for dead by the
// leader: its exclusive and non-durable queues go, its durable queues answer RabbitMQ's 404; when
// it returns they are available again.
func TestNodeDownDropsItsQueues(t *testing.T) {
	ns := newNodeSet(t, "n1", "n2", "n3")
	ns.timeout = time.Second
	ns.startAll(false, nil, "n1", "n2", "n3")
	v3 := ns.broker("n3").VHost("/")
	ns.declare("n3", "durable3")
	if _, err := v3.DeclareQueue(broker.System, broker.QueueSpec{Name: "transient3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := v3.DeclareQueue(broker.Actor{Owner: 7}, broker.QueueSpec{Name: "excl3", Exclusive: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "n1 learns n3's queues", func() bool {
		return hasQueue(ns.broker("n1"), "durable3") && hasQueue(ns.broker("n1"), "transient3") && hasQueue(ns.broker("n1"), "excl3")
	})
	ns.stop("n3")
	waitFor(t, 10*time.Second, "n3's exclusive and transient queues go", func() bool {
		b := ns.broker("n1")
		return !hasQueue(b, "transient3") && !hasQueue(b, "excl3") && hasQueue(b, "durable3")
	})
	_, err := ns.broker("n1").VHost("/").DeclareQueue(broker.System, broker.QueueSpec{Name: "durable3", Durable: true})
	if err == nil || err.Code != amqp.NotFound || err.Text != "NOT_FOUND - home node 'n3' of durable queue 'durable3' in vhost '/' is down or inaccessible" {
		t.Fatalf("declare of a queue whose home is down: %v", err)
	}
	ns.start("n3", false, nil)
	// Back, and not taken for dead again while it serves: the leader's last status of n3 is
	// from before it stopped, more than a node timeout ago.
	waitFor(t, 5*time.Second, "n1 sees n3 back", func() bool { return !ns.node("n1").meta.IsDown("n3") })
	for end := time.Now().Add(2*ns.timeout + time.Second/2); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if ns.node("n1").meta.IsDown("n3") {
			t.Fatal("n3, restarted and serving, was taken for dead again")
		}
	}
	ns.declare("n1", "durable3")
	if !hasQueue(ns.broker("n3"), "durable3") {
		t.Errorf("n3 lost its durable queue")
	}
}

// leader is the name of the node that leads the metadata group ("" while none does).
func (ns *nodeSet) leader() string {
	for _, name := range ns.runningNodes() {
		if n := ns.node(name); n != nil && n.mg.Status().State == "StateLeader" {
			return name
		}
	}
	return ""
}

// TestDeadNodeStaysDownAcrossElections: a new leader starts with no view of when members were
// last heard from; a member already taken for dead must not be brought back (node_up) by that
// alone, and then taken for dead again one timeout later.
func TestDeadNodeStaysDownAcrossElections(t *testing.T) {
	ns := newNodeSet(t, "n1", "n2", "n3", "n4", "n5")
	ns.timeout = time.Second
	ns.startAll(false, nil, "n1", "n2", "n3", "n4", "n5")
	var lead string
	waitFor(t, 10*time.Second, "a leader", func() bool { lead = ns.leader(); return lead != "" })
	dead := "n1"
	if lead == dead {
		dead = "n2"
	}
	ns.stop(dead)
	waitFor(t, 10*time.Second, dead+" taken for dead", func() bool { return ns.node(lead).meta.IsDown(dead) })
	ns.stop(lead)
	var next string
	waitFor(t, 10*time.Second, "a new leader", func() bool { next = ns.leader(); return next != "" })
	// The new leader has ticked several times within 3 s (every 250 ms here).
	watcher := ns.node(next)
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if !watcher.meta.IsDown(dead) {
			t.Fatalf("%s, dead, was brought back up by the new leader %s", dead, next)
		}
	}
}

// TestRestartedMemberGetsFullTimeout: a member taken for dead that comes back through
// node_restarted (proposed by the restarted node during its catch-up, before its first status)
// gets a full node timeout from when the leader sees it back, not the leader's last status of
// it from before it died. Here node_restarted is proposed for a node that stays dead: the leader
// takes it for dead again only after a timeout.
func TestRestartedMemberGetsFullTimeout(t *testing.T) {
	ns := newNodeSet(t, "n1", "n2", "n3")
	ns.timeout = time.Second
	ns.startAll(false, nil, "n1", "n2", "n3")
	var lead string
	waitFor(t, 10*time.Second, "a leader", func() bool { lead = ns.leader(); return lead != "" })
	dead := "n1"
	if lead == dead {
		dead = "n2"
	}
	ns.stop(dead)
	n := ns.node(lead)
	waitFor(t, 10*time.Second, dead+" taken for dead", func() bool { return n.meta.IsDown(dead) })
	restart := RestartCommand(dead, 99<<32)
	if _, err := n.mg.Propose(t.Context(), restart.Encode()); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	if n.meta.IsDown(dead) {
		t.Fatal("node_restarted did not end node_down")
	}
	waitFor(t, 10*time.Second, dead+" taken for dead again", func() bool { return n.meta.IsDown(dead) })
	// A full timeout (1 s) from the leader's next look; without it, the next look (every 250 ms).
	if back := time.Since(up); back < 600*time.Millisecond {
		t.Errorf("%s taken for dead again %v after it came back, want about a node timeout (1 s)", dead, back.Round(time.Millisecond))
	}
}

// TestSlowApplyDoesNotStallOtherGroups: while the broker takes its time over one change (a
// queue delete of many stored messages), the Raft loop goes on: another group commits, and a
// later metadata command is decided (its broker part waits its turn, in log order).
//
// With SnapshotEvery 3 the metadata group wants a snapshot while the broker is busy: the
// snapshot waits for a later round (multiraft.ErrSnapshotLater) instead of holding the loop.
func TestSlowApplyDoesNotStallOtherGroups(t *testing.T) {
	for _, every := range []uint64{0, 3} {
		t.Run(fmt.Sprintf("SnapshotEvery=%d", every), func(t *testing.T) { testSlowApply(t, every) })
	}
}

func testSlowApply(t *testing.T, snapshotEvery uint64) {
	addr := freeAddr(t)
	h, err := multiraft.NewHost(multiraft.Config{NodeName: "n1", ListenAddr: addr, Peers: map[string]string{"n1": addr},
		Secret: []byte("s"), DataDir: t.TempDir(), Logger: quietLog(), TickInterval: 10 * time.Millisecond, NoSync: true,
		SnapshotEvery: snapshotEvery})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	slow := &slowApplier{release: make(chan struct{})}
	m := NewMetadata(slow, quietLog())
	m.StartWorker()
	defer m.StopWorker()
	defer close(slow.release)
	mg, err := h.Group(multiraft.MetadataGroup, m)
	if err != nil {
		t.Fatal(err)
	}
	other, err := h.Group(StatusGroup, NewStatusBoard(NewConfigCheck("n1", "", quietLog())))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	propose := func(c Command) any {
		out, err := mg.Propose(ctx, c.Encode())
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	propose(Command{Op: OpDeclareQueue, VHost: "/", Name: "big", Durable: true, Node: "n1"})
	del := propose(Command{Op: OpDeleteQueue, VHost: "/", Name: "big", Node: "n1"}) // the broker blocks on it
	waitFor(t, 5*time.Second, "the broker busy with the delete", func() bool { return slow.deleting() })

	// Another group and the metadata log itself go on.
	short, cancelShort := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancelShort()
	if _, err := other.Propose(short, []byte(`{"node":"n1","at":"2026-01-01T00:00:00Z"}`)); err != nil {
		t.Fatalf("the status group stalled behind a slow metadata apply: %v", err)
	}
	next, err := mg.Propose(short, (&Command{Op: OpDeclareQueue, VHost: "/", Name: "big", Durable: true, Node: "n1"}).Encode())
	if err != nil {
		t.Fatalf("the metadata log stalled behind a slow apply: %v", err)
	}
	// Its broker part waits for the delete: log order holds on this node.
	if _, err := next.(*Applying).Wait(short); err == nil {
		t.Fatal("a later change reached the broker before the delete before it")
	}
	// More metadata entries (a snapshot falls due among them) and the other group still go on.
	for i := range 4 {
		again, cancelAgain := context.WithTimeout(t.Context(), 2*time.Second)
		_, err := mg.Propose(again, (&Command{Op: OpDeclareExchange, VHost: "/", Name: fmt.Sprintf("x%d", i), Type: "direct"}).Encode())
		if err == nil {
			_, err = other.Propose(again, []byte(`{"node":"n1","at":"2026-01-01T00:00:01Z"}`))
		}
		cancelAgain()
		if err != nil {
			t.Fatalf("proposal %d stalled behind a slow apply: %v", i, err)
		}
	}
	slow.release <- struct{}{}
	res, err := del.(*Applying).Wait(ctx)
	if err != nil || res.Messages != 42 {
		t.Fatalf("delete result %+v %v, want 42 messages", res, err)
	}
	if _, err := next.(*Applying).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if got := slow.kinds(); len(got) != 7 || got[0] != broker.OpDeclareQueue || got[1] != broker.OpDeleteQueue || got[2] != broker.OpDeclareQueue {
		t.Fatalf("broker saw %v, want declare, delete, declare, then 4 exchange declares", got)
	}
}

// slowApplier blocks on a queue delete until released, and reports 42 messages deleted.
type slowApplier struct {
	mu      sync.Mutex
	ops     []broker.TopologyKind
	inDel   bool
	release chan struct{}
}

func (s *slowApplier) ApplyTopology(op broker.TopologyOp) (broker.TopologyResult, *amqp.Error) {
	s.mu.Lock()
	s.ops = append(s.ops, op.Kind)
	s.inDel = op.Kind == broker.OpDeleteQueue
	s.mu.Unlock()
	if op.Kind == broker.OpDeleteQueue {
		<-s.release
		return broker.TopologyResult{Messages: 42}, nil
	}
	return broker.TopologyResult{}, nil
}

func (s *slowApplier) deleting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inDel
}

func (s *slowApplier) kinds() []broker.TopologyKind {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]broker.TopologyKind(nil), s.ops...)
}

var nodeSetMu sync.Mutex

func (ns *nodeSet) runningNodes() []string {
	nodeSetMu.Lock()
	defer nodeSetMu.Unlock()
	var out []string
	for n := range ns.nodes {
		out = append(out, n)
	}
	return out
}

func (ns *nodeSet) node(name string) *Node {
	nodeSetMu.Lock()
	defer nodeSetMu.Unlock()
	return ns.nodes[name]
}

func (ns *nodeSet) broker(name string) *broker.Broker {
	nodeSetMu.Lock()
	defer nodeSetMu.Unlock()
	return ns.brokers[name]
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
