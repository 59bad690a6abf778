package multiraft

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// groupsOn starts group id with explicit voters on the given hosts (opts per host).
func (c *testCluster) groupsOn(id uint64, on []string, opts GroupOptions) (map[string]*Group, map[string]*logSM) {
	c.t.Helper()
	gs, sms := map[string]*Group{}, map[string]*logSM{}
	for _, name := range on {
		sm := &logSM{}
		g, err := c.hosts[name].GroupWith(id, sm, opts)
		if err != nil {
			c.t.Fatal(err)
		}
		gs[name], sms[name] = g, sm
	}
	return gs, sms
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// A group placed on three of four nodes lives there only; a fourth replica added later
// catches up from a snapshot plus the log's tail (the log was compacted), and a replica
// removed (the leader itself here) leaves the group working on the other three.
func TestGroupWithVotersAddRemove(t *testing.T) {
	c := newTestCluster(t, 4, func(cfg *Config) { cfg.SnapshotEvery = 10 })
	three := []string{"n1", "n2", "n3"}
	const id = 42
	if _, err := c.hosts["n4"].GroupWith(id, &logSM{}, GroupOptions{Voters: three}); err == nil {
		t.Fatal("n4 started a group it is not a voter of")
	}
	if _, err := c.hosts["n1"].GroupWith(id, &logSM{}, GroupOptions{Voters: []string{"n1", "nx"}}); err == nil {
		t.Fatal("a voter that is no peer was accepted")
	}
	gs, sms := c.groupsOn(id, three, GroupOptions{Voters: three})
	lead := waitLeader(t, gs, 10*time.Second)
	if m := gs[lead].Members(); !slices.Equal(m, three) {
		t.Fatalf("members = %v, want %v", m, three)
	}
	for i := 0; i < 45; i++ {
		propose(t, gs[lead], fmt.Sprintf("c%d", i))
	}
	waitApplied(t, sms, 45, 10*time.Second)
	// n4 got nothing of the group: not even a message (nothing stored for it).
	if keys, _, err := c.hosts["n4"].rlog.GroupDiskUsage(id); err != nil || keys != 0 {
		t.Fatalf("n4 stores %d keys of the group (err %v)", keys, err)
	}
	if n := gs[lead].storage.SnapshotIndex(); n == 0 {
		t.Fatal("leader did not compact its log")
	}

	sm4 := &logSM{}
	g4, err := c.hosts["n4"].GroupWith(id, sm4, GroupOptions{Join: true})
	if err != nil {
		t.Fatal(err)
	}
	var follower string
	for _, n := range three {
		if n != lead {
			follower = n
			break
		}
	}
	// Through a follower: the conf change is forwarded like a proposal.
	if err := gs[follower].AddMember(ctxT(t, 15*time.Second), "n4"); err != nil {
		t.Fatal(err)
	}
	gs["n4"], sms["n4"] = g4, sm4
	waitApplied(t, sms, 45, 15*time.Second)
	if sm4.restoreCount() == 0 {
		t.Error("n4 caught up without a snapshot")
	}
	propose(t, g4, "from-n4")
	waitApplied(t, sms, 46, 10*time.Second)
	sameLogs(t, sms)
	waitMembers(t, g4, 4)
	if err := gs[lead].AddMember(ctxT(t, 5*time.Second), "n4"); err != nil {
		t.Errorf("adding a member twice: %v", err)
	}

	if err := g4.RemoveMember(ctxT(t, 15*time.Second), lead); err != nil {
		t.Fatal(err)
	}
	rest := map[string]*Group{}
	restSMs := map[string]*logSM{}
	for n, g := range gs {
		if n != lead {
			rest[n], restSMs[n] = g, sms[n]
		}
	}
	newLead := waitLeader(t, rest, 10*time.Second)
	waitMembers(t, rest[newLead], 3)
	if slices.Contains(rest[newLead].Members(), lead) {
		t.Fatalf("%s still a member: %v", lead, rest[newLead].Members())
	}
	propose(t, rest[newLead], "after-removal")
	waitApplied(t, restSMs, 47, 10*time.Second)
	sameLogs(t, restSMs)
	if err := g4.AddMember(ctxT(t, time.Second), "nobody"); err == nil {
		t.Error("added a node that is no peer")
	}
}

// Host.Group keeps its behaviour: every peer is a voter.
func TestGroupAllPeersVoters(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	gs, _ := c.groups(9)
	lead := waitLeader(t, gs, 10*time.Second)
	if m := gs[lead].Members(); len(m) != 3 {
		t.Fatalf("members = %v", m)
	}
	if _, err := c.hosts["n1"].Group(quiesceFlag, &logSM{}); err == nil {
		t.Error("group id with the top bit set accepted")
	}
}
