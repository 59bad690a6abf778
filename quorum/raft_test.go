package quorum

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/cluster/multiraft"
)

// replica is one node's copy of a queue in the 3-host test, with what it was assigned.
type replica struct {
	m  *Machine
	sm *lockedMachine // m as the group's state machine: Snapshot from the test goroutine
	g  *multiraft.Group
	mu sync.Mutex
	// got: messages assigned to this node (by body), with their delivery count.
	got map[string]uint32
	ids map[string]uint64
}

// lockedMachine is a Machine whose calls from the group's apply goroutine exclude the test's
// snapshot: Machine.Snapshot is meant for that goroutine only, and a test that called it
// while entries were still being applied read the state mid-Apply (a race under -race, and a
// state that differed from the other replica's).
type lockedMachine struct {
	mu sync.Mutex
	m  *Machine
}

func (l *lockedMachine) Apply(index uint64, cmd []byte) any {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m.Apply(index, cmd)
}

func (l *lockedMachine) Snapshot() ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m.Snapshot()
}

func (l *lockedMachine) Restore(b []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m.Restore(b)
}

func (r *replica) received() map[string]uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]uint32, len(r.got))
	for k, v := range r.got {
		out[k] = v
	}
	return out
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type raftCluster struct {
	t     *testing.T
	peers map[string]string
	dirs  map[string]string
	hosts map[string]*multiraft.Host
	reps  map[string]*replica
}

const testGroup = 1000

func newRaftCluster(t *testing.T) *raftCluster {
	c := &raftCluster{t: t, peers: map[string]string{}, dirs: map[string]string{},
		hosts: map[string]*multiraft.Host{}, reps: map[string]*replica{}}
	for _, n := range []string{"n1", "n2", "n3"} {
		c.peers[n] = freeAddr(t)
		c.dirs[n] = t.TempDir()
	}
	t.Cleanup(func() {
		for _, h := range c.hosts {
			_ = h.Close()
		}
	})
	for n := range c.peers {
		c.start(n)
	}
	return c
}

func (c *raftCluster) start(name string) {
	c.t.Helper()
	h, err := multiraft.NewHost(multiraft.Config{NodeName: name, ListenAddr: c.peers[name], Peers: c.peers,
		Secret: []byte("quorum-test-secret"), DataDir: c.dirs[name], Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		TickInterval: 20 * time.Millisecond, ElectionTicks: 10, HeartbeatTicks: 1, NoSync: true, SnapshotEvery: 16})
	if err != nil {
		c.t.Fatal(err)
	}
	r := &replica{got: map[string]uint32{}, ids: map[string]uint64{}}
	r.m = New(NoLimits(), Hooks{Assigned: func(node string, msgs []Msg) {
		if node != name {
			return
		}
		r.mu.Lock()
		for _, m := range msgs {
			r.got[string(m.Body)] = m.Count
			r.ids[string(m.Body)] = m.ID
		}
		r.mu.Unlock()
	}})
	r.sm = &lockedMachine{m: r.m}
	if r.g, err = h.Group(testGroup, r.sm); err != nil {
		c.t.Fatal(err)
	}
	c.hosts[name], c.reps[name] = h, r
}

func (c *raftCluster) stop(name string) {
	c.t.Helper()
	if err := c.hosts[name].Close(); err != nil {
		c.t.Fatal(err)
	}
	delete(c.hosts, name)
	delete(c.reps, name)
}

func (c *raftCluster) leader(timeout time.Duration) string {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for name, r := range c.reps {
			if l, ok := r.g.Leader(); ok && l == name {
				return name
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatal("no leader")
	return ""
}

func (c *raftCluster) propose(on string, cmd Command) any {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := c.reps[on].g.Propose(ctx, cmd.Encoded())
	if err != nil {
		c.t.Fatalf("propose %v on %s: %v", cmd.Kind, on, err)
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestThreeReplicasLeaderKilled: messages enqueued on one node are assigned to the leader's
// consumers; the leader dies; a survivor takes its messages back (NodeDown) and gets them
// again with delivery count 1. The restarted node catches up (snapshots are taken every 16
// entries) to the same state.
func TestThreeReplicasLeaderKilled(t *testing.T) {
	c := newRaftCluster(t)
	lead := c.leader(10 * time.Second)
	var others []string
	for n := range c.reps {
		if n != lead {
			others = append(others, n)
		}
	}
	pub, cons := others[0], others[1]
	const n = 40
	for i := 0; i < n; i += 4 {
		var msgs []string
		for j := i; j < i+4; j++ {
			msgs = append(msgs, fmt.Sprintf("m%02d", j))
		}
		if r := c.propose(pub, enq(msgs...)).(Result); len(r.Refused) > 0 {
			t.Fatalf("refused %v", r.Refused)
		}
	}
	c.propose(lead, Command{Kind: KindCheckout, Node: lead, Credit: n})
	waitFor(t, "assignment to the leader", func() bool { return len(c.reps[lead].received()) == n })
	var delivered []uint64
	r := c.reps[lead]
	r.mu.Lock()
	for k, v := range r.got {
		if v != 0 {
			t.Fatalf("first delivery of %s has count %d", k, v)
		}
		delivered = append(delivered, r.ids[k])
	}
	r.mu.Unlock()
	c.propose(lead, Command{Kind: KindDelivered, Node: lead, IDs: delivered})
	killed := lead
	c.stop(killed)
	start := time.Now()
	c.propose(cons, Command{Kind: KindNodeDown, Node: killed})
	t.Logf("NodeDown committed %v after the leader was killed", time.Since(start))
	c.propose(cons, Command{Kind: KindCheckout, Node: cons, Credit: n})
	waitFor(t, "redelivery to the survivor", func() bool { return len(c.reps[cons].received()) == n })
	for i := 0; i < n; i++ {
		if cnt, ok := c.reps[cons].received()[fmt.Sprintf("m%02d", i)]; !ok || cnt != 1 {
			t.Fatalf("m%02d redelivered with count %d (present %v)", i, cnt, ok)
		}
	}
	// Settle half; restart the killed node: it catches up to the same counts.
	var ids []uint64
	r = c.reps[cons]
	r.mu.Lock()
	for i := 0; i < n/2; i++ {
		ids = append(ids, r.ids[fmt.Sprintf("m%02d", i)])
	}
	r.mu.Unlock()
	c.propose(pub, Command{Kind: KindSettle, Node: cons, IDs: ids})
	c.start(killed)
	waitFor(t, "the restarted node to catch up", func() bool {
		r, h := c.reps[killed].m.Counts()
		return r == 0 && h == n/2
	})
	// Counts is reached before the restarted replica has applied everything the survivor has
	// (and either may still be applying): the states are compared once both have settled.
	var a, b []byte
	deadline := time.Now().Add(10 * time.Second)
	for {
		a, _ = c.reps[killed].sm.Snapshot()
		b, _ = c.reps[cons].sm.Snapshot()
		if string(a) == string(b) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the restarted replica's state differs from a survivor's")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
