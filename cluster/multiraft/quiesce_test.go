package multiraft

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

// productionTiming is the default tick (100 ms) and election timeout (8 ticks), with fsync.
func productionTiming(cfg *Config) {
	cfg.TickInterval = DefaultTickInterval
	cfg.ElectionTicks = DefaultElectionTicks
	cfg.NoSync = false
}

// startGroups starts groups 1..n on every host of c.
func startGroups(t *testing.T, c *testCluster, n int) map[uint64]map[string]*Group {
	t.Helper()
	all := map[uint64]map[string]*Group{}
	for id := uint64(1); id <= uint64(n); id++ {
		all[id] = map[string]*Group{}
		for name, h := range c.hosts {
			g, err := h.Group(id, &logSM{})
			if err != nil {
				t.Fatal(err)
			}
			all[id][name] = g
		}
	}
	return all
}

// waitQuiesced waits until every given host has n groups quiesced.
func waitQuiesced(t *testing.T, c *testCluster, names []string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done := true
		var state []string
		for _, name := range names {
			q := c.hosts[name].Stats().Quiesced
			state = append(state, fmt.Sprintf("%s=%d", name, q))
			if q < n {
				done = false
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not all %d groups quiesced within %v: %v\n%s", n, timeout, state, awakeGroups(c, names))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// awakeGroups describes the groups not quiesced on the given hosts: why a group did not
// quiesce is in its Raft state (and, on a leader, in its followers' progress and liveness).
func awakeGroups(c *testCluster, names []string) string {
	var b strings.Builder
	for _, name := range names {
		h := c.hosts[name]
		h.mu.Lock()
		gs := make([]*Group, 0, len(h.groups))
		for _, g := range h.groups {
			gs = append(gs, g)
		}
		h.mu.Unlock()
		sort.Slice(gs, func(i, j int) bool { return gs[i].id < gs[j].id })
		live := h.tr.liveness(h.livenessTimeout())
		h.tr.mu.Lock()
		for _, p := range h.tr.peers {
			heard := "never"
			if ns := p.lastHeard.Load(); ns != 0 {
				heard = time.Since(time.Unix(0, ns)).Round(time.Millisecond).String() + " ago"
			}
			fmt.Fprintf(&b, "%s peer %s (%x): connected=%v epoch=%d heard %s\n", name, p.name, p.id,
				p.connected.Load(), p.epoch.Load(), heard)
		}
		h.tr.mu.Unlock()
		for _, g := range gs {
			g.mu.Lock()
			if g.quiesced {
				g.mu.Unlock()
				continue
			}
			st := g.rn.Status()
			last, _ := g.storage.LastIndex()
			fmt.Fprintf(&b, "%s group %d: %s lead=%x term=%d commit=%d applied=%d last=%d hasReady=%v\n",
				name, g.id, st.RaftState, st.Lead, st.HardState.GetTerm(), st.HardState.GetCommit(), st.Applied, last, g.rn.HasReady())
			for id, pr := range st.Progress {
				if id != h.id {
					fmt.Fprintf(&b, "    follower %x: %s live=%+v\n", id, &pr, live[id])
				}
			}
			g.mu.Unlock()
		}
	}
	return b.String()
}

func sentMessages(c *testCluster) uint64 {
	var n uint64
	for _, h := range c.hosts {
		n += h.Stats().MessagesSent
	}
	return n
}

// Idle groups quiesce on every member: no Raft message at all goes out, only one node
// heartbeat per node pair and tick. A proposal through a quiesced follower wakes the group,
// applies everywhere, and the group quiesces again.
func TestQuiesceIdleGroups(t *testing.T) {
	c := newTestCluster(t, 3, productionTiming)
	const n = 20
	all := startGroups(t, c, n)
	waitQuiesced(t, c, c.names, n, 20*time.Second)
	sent0, hb0 := sentMessages(c), c.hosts["n1"].Stats().NodeHeartbeats
	time.Sleep(time.Second)
	// Awake, the 20 groups would send about 800 (a heartbeat and its answer per follower and
	// tick); a busy machine may wake a few (a node heartbeat late looks like a death).
	if d := sentMessages(c) - sent0; d > 2*n {
		t.Errorf("%d raft messages sent in 1 s by %d quiesced groups", d, n)
	}
	// n1 writes to 2 peers; 10 ticks/s each, when its side of the pair was silent.
	if hb := c.hosts["n1"].Stats().NodeHeartbeats - hb0; hb < 10 || hb > 25 {
		t.Errorf("n1 wrote %d node heartbeats in 1 s, want about 20", hb)
	}
	gs := all[7]
	lead, _ := gs["n1"].Leader()
	var follower string
	for _, name := range c.names {
		if name != lead {
			follower = name
			break
		}
	}
	if !gs[follower].Status().Quiesced {
		t.Fatal("follower not quiesced")
	}
	applied0 := gs[lead].Status().Applied
	propose(t, gs[follower], "wake")
	// The leader committed the entry before the follower could apply it, and applies it in
	// the same round it sent the commit index (just after): it woke.
	for deadline := time.Now().Add(2 * time.Second); gs[lead].Status().Applied <= applied0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("leader's applied index still %d after a proposal: it did not wake", applied0)
		}
	}
	waitQuiesced(t, c, c.names, n, 10*time.Second)
	for name, g := range gs {
		if st := g.Status(); st.Applied != st.Commit || !st.Quiesced {
			t.Errorf("%s: %+v", name, st)
		}
	}
}

// Killing the host that leads quiesced groups: the followers see the node go and wake; each
// group elects a new leader and takes a proposal within 2 s of the kill (5 s under the race
// detector). The killed host comes back and its groups catch up.
func TestQuiescedLeaderFailover(t *testing.T) {
	c := newTestCluster(t, 3, productionTiming)
	const n = 12
	all := startGroups(t, c, n)
	for id := uint64(1); id <= n; id++ {
		waitLeader(t, all[id], 10*time.Second)
	}
	for id := uint64(1); id <= n; id++ {
		lead, _ := all[id]["n1"].Leader()
		propose(t, all[id][lead], "before")
	}
	waitQuiesced(t, c, c.names, n, 20*time.Second)
	// The host leading the most groups.
	count := map[string]int{}
	for id := uint64(1); id <= n; id++ {
		l, _ := all[id]["n1"].Leader()
		count[l]++
	}
	victim := "n1"
	for name, k := range count {
		if k > count[victim] {
			victim = name
		}
	}
	var led []uint64
	for id := uint64(1); id <= n; id++ {
		if l, _ := all[id]["n1"].Leader(); l == victim {
			led = append(led, id)
		}
	}
	killed := time.Now()
	c.stop(victim)
	type res struct {
		id  uint64
		d   time.Duration
		err error
	}
	results := make(chan res, len(led))
	for _, id := range led {
		var survivor *Group
		for name, g := range all[id] {
			if name != victim {
				survivor = g
			}
		}
		go func() {
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				_, err := survivor.Propose(ctx, []byte("after"))
				cancel()
				if err == nil {
					results <- res{id, time.Since(killed), nil}
					return
				}
				if time.Since(killed) > 15*time.Second {
					results <- res{id, 0, err}
					return
				}
			}
		}()
	}
	limit := 2 * time.Second
	if raceEnabled {
		limit = 5 * time.Second
	}
	var ds []time.Duration
	for range led {
		r := <-results
		if r.err != nil {
			t.Fatalf("group %d: no proposal applied 15 s after its leader's host was killed: %v", r.id, r.err)
		}
		ds = append(ds, r.d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	t.Logf("%s killed, leading %d quiesced groups; first proposal applied after %v", victim, len(led), ds)
	if ds[len(ds)-1] > limit {
		t.Errorf("slowest failover %v, want < %v", ds[len(ds)-1], limit)
	}
	c.start(victim)
	for id := uint64(1); id <= n; id++ {
		sm := &logSM{}
		g, err := c.hosts[victim].Group(id, sm)
		if err != nil {
			t.Fatal(err)
		}
		all[id][victim] = g
	}
	waitQuiesced(t, c, c.names, n, 20*time.Second)
	for id := uint64(1); id <= n; id++ {
		st := all[id][victim].Status()
		if st.Applied < 3 {
			t.Errorf("group %d on the restarted %s: applied %d", id, victim, st.Applied)
		}
	}
}

// A leader whose links go silent (bytes dropped, connections kept: only the node heartbeats'
// absence tells) while its group is quiesced: the followers wake and elect a new leader,
// the old one wakes too and steps down (CheckQuorum), and once the links work again the
// group converges and quiesces.
func TestQuiescedLeaderSilentPartition(t *testing.T) {
	c := newTestCluster(t, 3, productionTiming)
	gs, sms := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	propose(t, gs[lead], "before")
	waitQuiesced(t, c, c.names, 1, 10*time.Second)
	var others []string
	for _, name := range c.names {
		if name != lead {
			others = append(others, name)
			c.proxies[pairKey(lead, name)].SetDrop(true)
		}
	}
	majority := map[string]*Group{others[0]: gs[others[0]], others[1]: gs[others[1]]}
	newLead := waitLeader(t, majority, 10*time.Second)
	if newLead == lead {
		t.Fatal("the silent leader kept the majority")
	}
	deadline := time.Now().Add(10 * time.Second)
	for gs[lead].Status().State == "StateLeader" {
		if time.Now().After(deadline) {
			t.Fatal("silent leader did not step down")
		}
		time.Sleep(10 * time.Millisecond)
	}
	propose(t, majority[newLead], "majority")
	for _, name := range others {
		c.proxies[pairKey(lead, name)].SetDrop(false)
		c.proxies[pairKey(lead, name)].Cut() // replace the connections that lost bytes
	}
	waitApplied(t, sms, 2, 15*time.Second)
	sameLogs(t, sms)
	waitQuiesced(t, c, c.names, 1, 15*time.Second)
}

// A quiesced follower that wakes because its leader's node seemed to change (here: forced,
// as a late node heartbeat on a busy machine would) wakes the leader at once, and the group
// quiesces again well before the follower's election timeout (2 s here), with no election.
func TestWokenFollowerWakesLeader(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) {
		productionTiming(cfg)
		cfg.ElectionTicks = 20
	})
	gs, _ := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	propose(t, gs[lead], "x")
	waitQuiesced(t, c, c.names, 1, 10*time.Second)
	var follower string
	for _, name := range c.names {
		if name != lead {
			follower = name
			break
		}
	}
	g := gs[follower]
	term := g.Status().Term
	q := quiesceRound{out: map[uint64][]outMsg{}}
	g.mu.Lock()
	g.wakeOnPeerEventLocked(map[uint64]bool{NodeID(lead): true}, &q)
	woke := !g.quiesced
	g.mu.Unlock()
	if !woke || len(q.out[NodeID(lead)]) != 1 {
		t.Fatalf("follower woke: %v, wake-up calls: %d", woke, len(q.out[NodeID(lead)]))
	}
	start := time.Now()
	c.hosts[follower].tr.send(lead, q.out[NodeID(lead)])
	for !g.Status().Quiesced {
		if time.Since(start) > 5*time.Second {
			t.Fatal("follower not quiesced again")
		}
		time.Sleep(10 * time.Millisecond)
	}
	d := time.Since(start)
	t.Logf("quiesced again after %v", d)
	if d > time.Second {
		t.Errorf("quiesced again after %v: the leader was not woken (the follower's election timeout did it)", d)
	}
	if st := g.Status(); st.Term != term || st.Leader != lead {
		t.Errorf("term %d -> %d, leader %s -> %s", term, st.Term, lead, st.Leader)
	}
}

// A single follower cut off from its quiesced leader (only that pair's bytes dropped) must
// not depose it: its pre-votes wake the other follower, which wakes the leader (a wake-up
// call), whose heartbeats keep that follower in its lease. Without the wake-up call the other
// follower, ticking with no heartbeat, falls out of the lease, votes the cut-off node in, and
// the old leader stays quiesced in StateLeader beside the new one.
func TestQuiescedLeaderOneFollowerCutOff(t *testing.T) {
	c := newTestCluster(t, 3, productionTiming)
	gs, _ := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	propose(t, gs[lead], "x")
	waitQuiesced(t, c, c.names, 1, 10*time.Second)
	term := gs[lead].Status().Term
	var cut string
	for _, name := range c.names {
		if name != lead {
			cut = name
			break
		}
	}
	c.proxies[pairKey(lead, cut)].SetDrop(true)
	defer c.proxies[pairKey(lead, cut)].SetDrop(false)
	// Several election timeouts (8 to 16 ticks of 100 ms).
	deadline := time.Now().Add(6 * time.Second)
	for time.Now().Before(deadline) {
		var leaders []string
		for name, g := range gs {
			if g.Status().State == "StateLeader" {
				leaders = append(leaders, name)
			}
		}
		if len(leaders) != 1 || leaders[0] != lead {
			sort.Strings(leaders)
			t.Fatalf("leaders %v, want only %s (the node cut off from it: %s)", leaders, lead, cut)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for name, g := range gs {
		if name == cut {
			continue
		}
		if st := g.Status(); st.Term != term || st.Leader != lead {
			t.Errorf("%s: term %d -> %d, leader %s -> %s", name, term, st.Term, lead, st.Leader)
		}
	}
}
