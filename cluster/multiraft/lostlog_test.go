package multiraft

import (
	"fmt"
	"os"
	"slices"
	"testing"
	"time"
)

// Both followers of an idle group are wiped and rejoin (Join, empty data directory) one
// after the other, then the leader dies: the two wiped nodes must have got the whole log
// back before, without any new proposal, and elect a leader holding it. Before lostlog.go
// the leader took the wiped follower's acknowledged index for granted (raft never resends
// below it, and heartbeats carry no entries), so the first wiped node never caught up; a
// second wipe left the log on the leader alone, and the leader handed over to the other
// empty voter on the strength of its stale match index.
func TestWipedFollowersCatchUpInIdleGroup(t *testing.T) {
	for _, every := range []uint64{100000, 5} { // the leader's log intact, or compacted
		t.Run(fmt.Sprintf("snapshotEvery=%d", every), func(t *testing.T) {
			c := newTestCluster(t, 3, func(cfg *Config) { cfg.SnapshotEvery = every })
			gs, sms := c.groups(MetadataGroup)
			lead := waitLeader(t, gs, 10*time.Second)
			const n = 20
			for i := 0; i < n; i++ {
				propose(t, gs[lead], fmt.Sprintf("c%d", i))
			}
			waitApplied(t, sms, n, 10*time.Second)
			for _, victim := range c.names {
				if victim == lead {
					continue
				}
				c.stop(victim)
				if err := os.RemoveAll(c.dirs[victim]); err != nil {
					t.Fatal(err)
				}
				c.dirs[victim] = t.TempDir()
				cfg := c.config(victim)
				cfg.Join = true
				h := c.startWith(victim, cfg)
				// The group opens a while after the host connected, as a quorum queue's does
				// after the metadata's catch-up: the leader, woken by the reconnection, has
				// quiesced again meanwhile, its heartbeats to the group dropped here.
				time.Sleep(time.Duration(10*cfg.ElectionTicks) * cfg.TickInterval)
				sm := &logSM{}
				g, err := h.Group(MetadataGroup, sm)
				if err != nil {
					t.Fatal(err)
				}
				gs[victim], sms[victim] = g, sm
				waitApplied(t, sms, n, 15*time.Second)
				deadline := time.Now().Add(10 * time.Second)
				for g.LostLog() && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if g.LostLog() {
					t.Fatalf("%s has the log again but still takes it for lost (votes refused)", victim)
				}
			}
			c.stop(lead)
			delete(gs, lead)
			delete(sms, lead)
			newLead := waitLeader(t, gs, 15*time.Second)
			propose(t, gs[newLead], "after")
			waitApplied(t, sms, n+1, 10*time.Second)
			if got := sameLogs(t, sms); got[0] != "c0" || got[n-1] != fmt.Sprintf("c%d", n-1) {
				t.Fatalf("log after both wipes and the leader's death: %v", got)
			}
		})
	}
}

// A group a joined host opens with no local state is taken for lost (no votes) only until
// NewGroupsFromNow, and only on a host that started with an empty log: a node that was
// already running opens new groups, whose log it never had.
func TestLostLogOnlyForGroupsOfAWipedJoiner(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	gs, _ := c.groups(MetadataGroup)
	waitLeader(t, gs, 10*time.Second)
	victim := "n3"
	c.stop(victim)
	c.dirs[victim] = t.TempDir()
	cfg := c.config(victim)
	cfg.Join = true
	h := c.startWith(victim, cfg)
	old, err := h.Group(MetadataGroup, &logSM{})
	if err != nil {
		t.Fatal(err)
	}
	h.NewGroupsFromNow()
	fresh, err := h.Group(MetadataGroup+100, &logSM{})
	if err != nil {
		t.Fatal(err)
	}
	if fresh.LostLog() {
		t.Error("a group opened after NewGroupsFromNow is taken for lost")
	}
	// The old group gets its log back from the leader and votes again.
	deadline := time.Now().Add(15 * time.Second)
	for old.LostLog() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if old.LostLog() {
		t.Error("the wiped joiner's metadata group never got its log back")
	}
}

// A placed group (GroupWith) opened with its original voters and Join false, as a quorum
// queue's is on a member whose member list never changed, is taken for lost on a wiped
// joiner all the same: bootstrapping it would give it a configuration, hence a vote and an
// election timer, with an empty log (the hazard lostlog.go guards against).
func TestWipedVoterOfPlacedGroupIsLost(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	const id = MetadataGroup + 7
	opts := GroupOptions{Voters: slices.Clone(c.names)}
	gs, sms := map[string]*Group{}, map[string]*logSM{}
	for _, name := range c.names {
		sm := &logSM{}
		g, err := c.hosts[name].GroupWith(id, sm, opts)
		if err != nil {
			t.Fatal(err)
		}
		gs[name], sms[name] = g, sm
	}
	lead := waitLeader(t, gs, 10*time.Second)
	const n = 5
	for i := 0; i < n; i++ {
		propose(t, gs[lead], fmt.Sprintf("c%d", i))
	}
	waitApplied(t, sms, n, 10*time.Second)
	victim := c.names[0]
	if victim == lead {
		victim = c.names[1]
	}
	c.stop(victim)
	c.dirs[victim] = t.TempDir()
	cfg := c.config(victim)
	cfg.Join = true
	h := c.startWith(victim, cfg)
	sm := &logSM{}
	g, err := h.GroupWith(id, sm, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !g.LostLog() {
		t.Fatal("a wiped joiner's placed group (Join false) is not taken for lost: it bootstrapped and votes")
	}
	gs[victim], sms[victim] = g, sm
	waitApplied(t, sms, n, 15*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for g.LostLog() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g.LostLog() {
		t.Fatal("the placed group never got its log back")
	}
	if got := sameLogs(t, sms); len(got) != n {
		t.Fatalf("log after the wipe: %v", got)
	}
}

// A wiped joiner restarted before its groups caught up (its peers down) is still lost after
// the restart, although it now has state of its own and starts without Join: the group it
// had opened stays lost, and so does one it opens for the first time before
// NewGroupsFromNow. Once the peers are back and the log is back, a further restart finds
// nothing lost. Before the markers the lost state lived in memory only.
func TestLostLogSurvivesRestart(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	gs, sms := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	const n = 5
	for i := 0; i < n; i++ {
		propose(t, gs[lead], fmt.Sprintf("c%d", i))
	}
	waitApplied(t, sms, n, 10*time.Second)
	victim := "n3"
	for _, name := range c.names {
		c.stop(name)
	}
	c.dirs[victim] = t.TempDir()
	cfg := c.config(victim)
	cfg.Join = true
	h := c.startWith(victim, cfg)
	g, err := h.Group(MetadataGroup, &logSM{})
	if err != nil {
		t.Fatal(err)
	}
	if !g.LostLog() {
		t.Fatal("the wiped joiner's group is not lost")
	}
	time.Sleep(time.Duration(3*cfg.ElectionTicks) * cfg.TickInterval) // a hard state may be saved
	c.stop(victim)

	h = c.start(victim) // no Join: a plain restart
	g, err = h.Group(MetadataGroup, &logSM{})
	if err != nil {
		t.Fatal(err)
	}
	if !g.LostLog() {
		t.Fatal("after a second restart the group that had not caught up is no longer taken for lost")
	}
	other, err := h.Group(MetadataGroup+100, &logSM{})
	if err != nil {
		t.Fatal(err)
	}
	if !other.LostLog() {
		t.Error("after a second restart a group opened before NewGroupsFromNow is not taken for lost")
	}
	h.NewGroupsFromNow()

	gs, sms = map[string]*Group{victim: g}, map[string]*logSM{}
	for _, name := range []string{"n1", "n2"} {
		sm := &logSM{}
		gg, err := c.start(name).Group(MetadataGroup, sm)
		if err != nil {
			t.Fatal(err)
		}
		gs[name], sms[name] = gg, sm
	}
	waitLeader(t, gs, 15*time.Second)
	deadline := time.Now().Add(15 * time.Second)
	for g.LostLog() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g.LostLog() {
		t.Fatal("the group never got its log back")
	}
	c.stop(victim)
	h = c.start(victim)
	if g, err = h.Group(MetadataGroup, &logSM{}); err != nil {
		t.Fatal(err)
	}
	if g.LostLog() {
		t.Error("a group whose log came back is taken for lost after a restart")
	}
	fresh, err := h.Group(MetadataGroup+200, &logSM{})
	if err != nil {
		t.Fatal(err)
	}
	if fresh.LostLog() {
		t.Error("a restart after NewGroupsFromNow takes a new group for lost")
	}
}

// A replica still lost after a restart (its marker there) has a configuration from its
// log: it must not campaign, or with a peer whose log is no longer than its own it is
// elected without the entries it lost. With that peer alone up, no leader is elected
// (the lost replica's vote is missing and it asks for none); once a third node is back,
// they elect one, and the lost replica gets the log and votes again.
func TestLostReplicaDoesNotCampaign(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	gs, sms := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	const n = 5
	for i := 0; i < n; i++ {
		propose(t, gs[lead], fmt.Sprintf("c%d", i))
	}
	waitApplied(t, sms, n, 10*time.Second)
	for _, name := range c.names {
		c.stop(name)
	}
	// What a wipe, a restart and a stop before catching up leave: state, and the marker.
	h := &Host{cfg: c.config("n3")}
	if err := h.markLost(groupMarker(MetadataGroup)); err != nil {
		t.Fatal(err)
	}
	gs, sms = map[string]*Group{}, map[string]*logSM{}
	for _, name := range []string{"n1", "n3"} {
		sm := &logSM{}
		g, err := c.start(name).Group(MetadataGroup, sm)
		if err != nil {
			t.Fatal(err)
		}
		gs[name], sms[name] = g, sm
	}
	if !gs["n3"].LostLog() {
		t.Fatal("the marked group is not lost")
	}
	cfg := c.config("n3")
	deadline := time.Now().Add(time.Duration(10*cfg.ElectionTicks) * cfg.TickInterval)
	for time.Now().Before(deadline) {
		for name, g := range gs {
			if l, ok := g.Leader(); ok {
				t.Fatalf("%s sees leader %s elected with the vote of (or by) the replica that lost its log", name, l)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	sm := &logSM{}
	g, err := c.start("n2").Group(MetadataGroup, sm)
	if err != nil {
		t.Fatal(err)
	}
	gs["n2"], sms["n2"] = g, sm
	waitLeader(t, gs, 15*time.Second)
	deadline = time.Now().Add(15 * time.Second)
	for gs["n3"].LostLog() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if gs["n3"].LostLog() {
		t.Fatal("the lost replica never got its log back")
	}
}
