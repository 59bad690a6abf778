package multiraft

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// Three hosts elect a leader; proposals made concurrently on every node (followers forward
// to the leader) are applied in one order on all, and each proposer gets its own result.
func TestProposeAppliesInOrderOnAll(t *testing.T) {
	before := runtime.NumGoroutine()
	c := newTestCluster(t, 3, nil)
	gs, sms := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	t.Logf("leader %s", lead)
	const perNode = 40
	var wg sync.WaitGroup
	results := make(chan int, 3*perNode)
	for name, g := range gs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perNode; i++ {
				res := propose(t, g, fmt.Sprintf("%s-%d", name, i))
				results <- res.(int)
			}
		}()
	}
	wg.Wait()
	close(results)
	waitApplied(t, sms, 3*perNode, 10*time.Second)
	log := sameLogs(t, sms)
	if len(log) != 3*perNode {
		t.Fatalf("applied %d commands, want %d", len(log), 3*perNode)
	}
	// Results are positions in the log: each proposer saw its own, all distinct.
	seen := map[int]bool{}
	for r := range results {
		if seen[r] || r < 1 || r > 3*perNode {
			t.Fatalf("result %d duplicated or out of range", r)
		}
		seen[r] = true
	}
	// Per proposer, commands keep their order (each waited for the previous).
	for name := range gs {
		next := 0
		for _, cmd := range log {
			var n string
			var i int
			if _, err := fmt.Sscanf(cmd, "n%1s-%d", &n, &i); err != nil {
				t.Fatal(err)
			}
			if "n"+n == name {
				if i != next {
					t.Fatalf("%s: command %d applied where %d was expected", name, i, next)
				}
				next++
			}
		}
	}
	st := gs[lead].Status()
	if st.State != "StateLeader" || st.Leader != lead || len(st.Members) != 3 || st.Applied < uint64(3*perNode) || st.Commit < st.Applied {
		t.Errorf("leader status = %+v", st)
	}
	for _, h := range c.hosts {
		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range c.proxies {
		_ = p.Close()
	}
	checkGoroutines(t, before)
	if _, err := gs[lead].Propose(context.Background(), []byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("propose after close: %v, want ErrClosed", err)
	}
}

// Killing the leader (Close: no handover) lets the others elect a new one and serve
// proposals; the time from the kill to the first applied proposal is measured.
func TestLeaderFailover(t *testing.T) {
	// Production timing: 100 ms ticks, election after 10-20 ticks.
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.TickInterval = DefaultTickInterval
		cfg.ElectionTicks = DefaultElectionTicks
		cfg.NoSync = false
	})
	gs, sms := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	propose(t, gs[lead], "before")
	waitApplied(t, sms, 1, 5*time.Second)

	killed := time.Now()
	c.stop(lead)
	delete(gs, lead)
	delete(sms, lead)
	var survivor *Group
	for _, g := range gs {
		survivor = g
	}
	// Propose through a survivor until it succeeds (a proposal made while the old leader is
	// still believed alive is lost with it; the retry is what a client does).
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := survivor.Propose(ctx, []byte("after"))
		cancel()
		if err == nil {
			break
		}
		if time.Since(killed) > 15*time.Second {
			t.Fatalf("no proposal applied 15 s after the leader was killed: %v", err)
		}
	}
	recovered := time.Since(killed)
	newLead := waitLeader(t, gs, 5*time.Second)
	t.Logf("leader %s killed; %s leads; first proposal applied after %v (target < 2 s)", lead, newLead, recovered.Round(time.Millisecond))
	if recovered > 5*time.Second {
		t.Errorf("recovery took %v", recovered)
	}
	// The killed node comes back from its data directory and catches up.
	c.start(lead)
	sm := &logSM{}
	g, err := c.hosts[lead].Group(MetadataGroup, sm)
	if err != nil {
		t.Fatal(err)
	}
	gs[lead], sms[lead] = g, sm
	n := len(sms[newLead].list())
	waitApplied(t, sms, n, 10*time.Second)
	sameLogs(t, sms)
}

// All hosts restart from their data directories: state machines are rebuilt from the last
// snapshot plus the log after it, and the group goes on.
func TestRestartRestoresState(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.SnapshotEvery = 16 })
	gs, sms := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	for i := 0; i < 50; i++ {
		propose(t, gs[lead], fmt.Sprintf("c%d", i))
	}
	waitApplied(t, sms, 50, 10*time.Second)
	want := sameLogs(t, sms)
	for _, name := range c.names {
		c.stop(name)
	}
	for _, name := range c.names {
		c.start(name)
	}
	gs, sms = c.groups(MetadataGroup)
	// Restored before any new proposal: snapshot restore plus replay of the committed tail.
	waitApplied(t, sms, 50, 10*time.Second)
	for name, sm := range sms {
		if sm.restoreCount() == 0 {
			t.Errorf("%s: state machine not restored from a snapshot", name)
		}
	}
	if got := sameLogs(t, sms); len(got) != 50 || got[49] != want[49] {
		t.Fatalf("after restart: %d commands, want %d", len(got), len(want))
	}
	lead = waitLeader(t, gs, 10*time.Second)
	propose(t, gs[lead], "after-restart")
	waitApplied(t, sms, 51, 10*time.Second)
	sameLogs(t, sms)
}

// A node restarted with an empty data directory rejoins and catches up through a snapshot,
// as an initial member that bootstraps again and with Join set: raft ignores the node's
// rejections below the index it had acknowledged, so the leader sends one whether it
// compacted the log the node would need or not (lostlog.go).
func TestRejoinWithEmptyDataDir(t *testing.T) {
	for _, tc := range []struct {
		join     bool
		snapshot bool
	}{{false, true}, {true, true}, {false, false}} {
		join := tc.join
		t.Run(fmt.Sprintf("join=%v,snapshot=%v", join, tc.snapshot), func(t *testing.T) {
			every := uint64(10)
			if !tc.snapshot {
				every = 100000
			}
			c := newTestCluster(t, 3, func(cfg *Config) { cfg.SnapshotEvery = every })
			gs, sms := c.groups(MetadataGroup)
			lead := waitLeader(t, gs, 10*time.Second)
			victim := "n3"
			if lead == victim {
				victim = "n2"
			}
			for i := 0; i < 60; i++ {
				propose(t, gs[lead], fmt.Sprintf("c%d", i))
			}
			c.stop(victim)
			for i := 60; i < 100; i++ {
				propose(t, gs[lead], fmt.Sprintf("c%d", i))
			}
			if err := os.RemoveAll(c.dirs[victim]); err != nil {
				t.Fatal(err)
			}
			c.dirs[victim] = t.TempDir()
			cfg := c.config(victim)
			cfg.Join = join
			h := c.startWith(victim, cfg)
			sm := &logSM{}
			g, err := h.Group(MetadataGroup, sm)
			if err != nil {
				t.Fatal(err)
			}
			gs[victim], sms[victim] = g, sm
			waitApplied(t, sms, 100, 15*time.Second)
			sameLogs(t, sms)
			if sm.restoreCount() == 0 {
				t.Errorf("%s caught up without a snapshot", victim)
			}
			propose(t, gs[victim], "from-rejoined")
			waitApplied(t, sms, 101, 10*time.Second)
			sameLogs(t, sms)
		})
	}
}

// A partition of the leader from both followers (all connections cut, reconnects refused):
// the majority elects a new leader and goes on; the old leader steps down (check quorum);
// after healing it catches up. Delays and dropped bytes on the way slow but do not break it.
func TestPartitionHeals(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	gs, sms := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	propose(t, gs[lead], "before")

	// Slow links first: 30 ms each way on every pair.
	for _, p := range c.proxies {
		p.SetDelay(30 * time.Millisecond)
	}
	propose(t, gs[lead], "slow")
	for _, p := range c.proxies {
		p.SetDelay(0)
	}

	isolated := lead
	var cut []string
	for _, o := range c.names {
		if o != isolated {
			c.proxies[pairKey(isolated, o)].Partition()
			cut = append(cut, o)
		}
	}
	majority := map[string]*Group{cut[0]: gs[cut[0]], cut[1]: gs[cut[1]]}
	newLead := waitLeader(t, majority, 10*time.Second)
	for i := 0; i < 10; i++ {
		propose(t, majority[newLead], fmt.Sprintf("majority-%d", i))
	}
	// The isolated old leader cannot commit and steps down.
	deadline := time.Now().Add(5 * time.Second)
	for gs[isolated].Status().State == "StateLeader" {
		if time.Now().After(deadline) {
			t.Fatal("isolated leader did not step down")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	if _, err := gs[isolated].Propose(ctx, []byte("lost")); err == nil {
		t.Error("proposal in the minority succeeded")
	}
	cancel()

	// One healed link drops bytes silently for a while: no progress through it, no harm.
	c.proxies[pairKey(isolated, cut[0])].Heal()
	c.proxies[pairKey(isolated, cut[0])].SetDrop(true)
	time.Sleep(200 * time.Millisecond)
	for _, o := range cut {
		c.proxies[pairKey(isolated, o)].Heal()
		c.proxies[pairKey(isolated, o)].Cut() // the silent connection is replaced
	}
	waitApplied(t, sms, 12, 15*time.Second)
	log := sameLogs(t, sms)
	for _, cmd := range log {
		if cmd == "lost" {
			// It may only appear if a later leader committed it; with a single minority
			// node that cannot happen before it rejoins, and then raft discards it.
			t.Error("minority proposal was applied")
		}
	}
	lead = waitLeader(t, gs, 10*time.Second)
	propose(t, gs[lead], "healed")
	waitApplied(t, sms, len(log)+1, 10*time.Second)
	sameLogs(t, sms)
}

// Nodes with different secrets never talk; with the same secret over mutual TLS they do.
func TestSecretRequired(t *testing.T) {
	c := newTestCluster(t, 2, nil)
	c.stop("n2")
	cfg := c.config("n2")
	cfg.Secret = []byte("wrong")
	c.startWith("n2", cfg)
	gs, _ := c.groups(MetadataGroup)
	time.Sleep(time.Second)
	for name, g := range gs {
		if l, ok := g.Leader(); ok {
			t.Fatalf("%s sees leader %s across a secret mismatch", name, l)
		}
	}
	if _, err := NewHost(Config{NodeName: "a", Peers: map[string]string{"a": ""}, DataDir: t.TempDir()}); err == nil {
		t.Error("host without a secret started")
	}
}

// SetPeers adds a fourth node (started with Join) to a running group, then removes it.
func TestSetPeersAddsAndRemoves(t *testing.T) {
	c := newTestCluster(t, 4, nil)
	// Start with three members: n4 runs but is not in anyone's peer set yet.
	three := c.names[:3]
	for _, name := range c.names {
		c.stop(name)
	}
	for _, name := range three {
		cfg := c.config(name)
		cfg.Peers = c.peersFor(name, three)
		c.startWith(name, cfg)
	}
	gs, sms := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	for i := 0; i < 20; i++ {
		propose(t, gs[lead], fmt.Sprintf("c%d", i))
	}
	cfg := c.config("n4")
	cfg.Join = true
	h4 := c.startWith("n4", cfg)
	sm4 := &logSM{}
	g4, err := h4.Group(MetadataGroup, sm4)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range three {
		if err := c.hosts[name].SetPeers(c.peersFor(name, c.names)); err != nil {
			t.Fatal(err)
		}
	}
	gs["n4"], sms["n4"] = g4, sm4
	waitApplied(t, sms, 20, 15*time.Second)
	waitMembers(t, gs[lead], 4)
	propose(t, g4, "from-n4")
	waitApplied(t, sms, 21, 10*time.Second)
	sameLogs(t, sms)

	for _, name := range c.names {
		if err := c.hosts[name].SetPeers(c.peersFor(name, three)); err != nil {
			t.Fatal(err)
		}
	}
	lead = waitLeader(t, map[string]*Group{"n1": gs["n1"], "n2": gs["n2"], "n3": gs["n3"]}, 10*time.Second)
	waitMembers(t, gs[lead], 3)
	if err := c.hosts["n1"].SetPeers(map[string]string{"x": "y"}); err == nil {
		t.Error("peer set without this node accepted")
	}
}

func waitMembers(t *testing.T, g *Group, n int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for len(g.Status().Members) != n {
		if time.Now().After(deadline) {
			t.Fatalf("members = %v, want %d", g.Status().Members, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// failRestoreSM is a logSM whose Restore always fails.
type failRestoreSM struct{ logSM }

func (s *failRestoreSM) Restore([]byte) error {
	s.mu.Lock()
	s.restores++
	s.mu.Unlock()
	return errors.New("restore refused")
}

// A follower whose state machine cannot restore the leader's snapshot stops the group: it
// applies nothing after it (its state is not the snapshot's), says why in Status and refuses
// proposals; its dedupe table is left as it was.
func TestFailedRestoreStopsGroup(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.SnapshotEvery = 10 })
	gs, sms := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	victim := "n3"
	if lead == victim {
		victim = "n2"
	}
	for i := 0; i < 60; i++ {
		propose(t, gs[lead], fmt.Sprintf("c%d", i))
	}
	c.stop(victim)
	if err := os.RemoveAll(c.dirs[victim]); err != nil {
		t.Fatal(err)
	}
	c.dirs[victim] = t.TempDir()
	h := c.start(victim)
	sm := &failRestoreSM{}
	g, err := h.Group(MetadataGroup, sm)
	if err != nil {
		t.Fatal(err)
	}
	// Proposals go on meanwhile (as in TestRejoinWithEmptyDataDir): the leader learns the new
	// follower is behind its log and sends the snapshot.
	n := 60
	deadline := time.Now().Add(30 * time.Second)
	for g.Status().Failed == "" {
		if time.Now().After(deadline) {
			t.Fatalf("group not stopped after a failed restore; restores tried: %d", sm.restoreCount())
		}
		propose(t, gs[lead], fmt.Sprintf("c%d", n))
		n++
		time.Sleep(10 * time.Millisecond)
	}
	if st := g.Status(); !strings.Contains(st.Failed, "restore refused") {
		t.Errorf("Status().Failed = %q, want the restore error", st.Failed)
	}
	applied := g.Status().Applied
	delete(sms, victim)
	for i := 0; i < 20; i++ {
		propose(t, gs[lead], fmt.Sprintf("c%d", n))
		n++
	}
	waitApplied(t, sms, n, 10*time.Second)
	if n := len(sm.list()); n != 0 {
		t.Errorf("stopped group applied %d entries after the failed restore", n)
	}
	if a := g.Status().Applied; a != applied || a >= 60 {
		t.Errorf("stopped group's applied index: %d, was %d at the failure (below the snapshot)", a, applied)
	}
	if len(g.dedupe) != 0 {
		t.Errorf("dedupe table replaced by the failed snapshot's: %d entries", len(g.dedupe))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := g.Propose(ctx, []byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Propose on the stopped group: %v, want ErrClosed", err)
	}
}

// A node whose Raft log can no longer be written stops serving, and must look dead to its
// peers: the quiesced group it leads elects another leader, and DeleteGroup on it returns
// ErrStopped instead of blocking until Close.
func TestLogFailureLooksLikeACrash(t *testing.T) {
	c := newTestCluster(t, 3, productionTiming)
	gs, _ := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	propose(t, gs[lead], "x")
	waitQuiesced(t, c, c.names, 1, 10*time.Second)
	h := c.hosts[lead]
	// The disk fails: every write of the log returns an error from now on.
	if err := h.rlog.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, _ = gs[lead].Propose(ctx, []byte("never stored"))
	cancel()
	select {
	case <-h.dead:
	case <-time.After(5 * time.Second):
		t.Fatal("the loop did not stop on the failed write")
	}
	errc := make(chan error, 1)
	go func() { errc <- h.DeleteGroup(MetadataGroup) }()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrStopped) {
			t.Errorf("DeleteGroup: %v, want ErrStopped", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("DeleteGroup blocks on a host whose loop stopped")
	}
	rest := map[string]*Group{}
	for name, g := range gs {
		if name != lead {
			rest[name] = g
		}
	}
	if nl := waitLeader(t, rest, 10*time.Second); nl == lead {
		t.Fatalf("leader still %s", lead)
	}
}
