package multiraft

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/warrenmq/warren/persistence"
)

func diskKeys(t *testing.T, h *Host, id uint64) int {
	t.Helper()
	keys, _, err := h.rlog.GroupDiskUsage(id)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// DeleteGroup on one member stops the group there and deletes everything it stored, while
// the other members go on (their messages to it store nothing); deleted everywhere, the id
// can be used again for a new, empty group. Other groups are untouched. A tombstone left by
// a crash in the middle of a deletion makes the host finish it at start.
func TestDeleteGroup(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.SnapshotEvery = 10 })
	all := []string{"n1", "n2", "n3"}
	const id, other = 5, 6
	gs, sms := c.groupsOn(id, all, GroupOptions{Voters: all})
	ogs, osms := c.groupsOn(other, all, GroupOptions{Voters: all})
	lead := waitLeader(t, gs, 10*time.Second)
	olead := waitLeader(t, ogs, 10*time.Second)
	for i := 0; i < 35; i++ {
		propose(t, gs[lead], fmt.Sprintf("c%d", i))
		propose(t, ogs[olead], fmt.Sprintf("o%d", i))
	}
	waitApplied(t, sms, 35, 10*time.Second)
	waitApplied(t, osms, 35, 10*time.Second)

	// A proposal waiting on the victim's copy (no leader reachable: its links are cut)
	// returns ErrClosed when the group is deleted.
	victim := lead
	for _, o := range all {
		if o != victim {
			c.proxies[pairKey(victim, o)].Partition()
		}
	}
	waiting := make(chan error, 1)
	go func() {
		time.Sleep(50 * time.Millisecond)
		_, err := gs[victim].Propose(context.Background(), []byte("never"))
		waiting <- err
	}()
	time.Sleep(300 * time.Millisecond)
	if diskKeys(t, c.hosts[victim], id) == 0 {
		t.Fatal("no keys stored before the deletion")
	}
	if err := c.hosts[victim].DeleteGroup(id); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waiting:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("waiting proposal: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a proposal on the deleted group still waits")
	}
	if n := diskKeys(t, c.hosts[victim], id); n != 0 {
		t.Fatalf("%d keys left after DeleteGroup", n)
	}
	for _, o := range all {
		if o != victim {
			c.proxies[pairKey(victim, o)].Heal()
		}
	}
	// The others elect a new leader, go on, and keep sending to the victim (it is still a
	// voter of theirs): nothing comes back to its disk.
	rest, restSMs := map[string]*Group{}, map[string]*logSM{}
	for _, n := range all {
		if n != victim {
			rest[n], restSMs[n] = gs[n], sms[n]
		}
	}
	nl := waitLeader(t, rest, 10*time.Second)
	for i := 35; i < 60; i++ {
		propose(t, rest[nl], fmt.Sprintf("c%d", i))
	}
	waitApplied(t, restSMs, 60, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	if n := diskKeys(t, c.hosts[victim], id); n != 0 {
		t.Fatalf("late messages stored %d keys of the deleted group", n)
	}
	if _, err := gs[victim].Propose(context.Background(), []byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("propose on the deleted group: %v, want ErrClosed", err)
	}
	if err := c.hosts[victim].DeleteGroup(id); err != nil {
		t.Errorf("deleting twice: %v", err)
	}

	for n := range rest {
		if err := c.hosts[n].DeleteGroup(id); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range all {
		if k := diskKeys(t, c.hosts[n], id); k != 0 {
			t.Fatalf("%s: %d keys left", n, k)
		}
	}
	// The other group did not notice.
	propose(t, ogs[waitLeader(t, ogs, 10*time.Second)], "o-after")
	waitApplied(t, osms, 36, 10*time.Second)

	// Created again: a new group with no state.
	gs, sms = c.groupsOn(id, all, GroupOptions{Voters: all})
	lead = waitLeader(t, gs, 10*time.Second)
	propose(t, gs[lead], "again")
	waitApplied(t, sms, 1, 10*time.Second)
	if log := sameLogs(t, sms); len(log) != 1 || log[0] != "again" {
		t.Fatalf("re-created group's log = %q", log)
	}
	if ts, _ := c.hosts["n1"].rlog.Tombstones(); len(ts) != 0 {
		t.Errorf("tombstones after re-creation: %v", ts)
	}

	// A crash between the tombstone and the drop: the host drops the group at start.
	c.stop("n2")
	rl, err := persistence.OpenRaftLog(filepath.Join(c.dirs["n2"], "raft"), persistence.RaftLogOptions{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if k, _, _ := rl.GroupDiskUsage(other); k == 0 {
		t.Fatal("n2 stores nothing of the other group")
	}
	if err := rl.MarkDeleted(other); err != nil {
		t.Fatal(err)
	}
	if err := rl.Close(); err != nil {
		t.Fatal(err)
	}
	h2 := c.start("n2")
	if err := h2.DeleteGroup(other); err != nil { // waits for the drop started at open
		t.Fatal(err)
	}
	if k := diskKeys(t, h2, other); k != 0 {
		t.Fatalf("tombstoned group not dropped at start: %d keys", k)
	}
}

// A deletion that completed leaves no tombstone and no entry in the host's map, whether
// DeleteGroup did it or the start after a crash (which drops every tombstoned group, one
// after the other).
func TestDeleteGroupClearsTombstones(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	h := c.hosts["n1"]
	voters := []string{"n1"}
	for id := uint64(2); id <= 5; id++ {
		gs, _ := c.groupsOn(id, voters, GroupOptions{Voters: voters})
		propose(t, gs[waitLeader(t, gs, 10*time.Second)], "x")
	}
	check := func(h *Host, ids ...uint64) {
		t.Helper()
		if ts, err := h.rlog.Tombstones(); err != nil || len(ts) != 0 {
			t.Errorf("tombstones %v (err %v), want none", ts, err)
		}
		h.mu.Lock()
		n := len(h.deleted)
		h.mu.Unlock()
		if n != 0 {
			t.Errorf("%d deletions still in the host's map", n)
		}
		for _, id := range ids {
			if k := diskKeys(t, h, id); k != 0 {
				t.Errorf("group %d: %d keys left", id, k)
			}
		}
	}
	if err := h.DeleteGroup(2); err != nil {
		t.Fatal(err)
	}
	check(h, 2)

	c.stop("n1")
	rl, err := persistence.OpenRaftLog(filepath.Join(c.dirs["n1"], "raft"), persistence.RaftLogOptions{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint64{3, 4, 5} {
		if err := rl.MarkDeleted(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := rl.Close(); err != nil {
		t.Fatal(err)
	}
	h = c.start("n1")
	h.bg.Wait() // the drops started at open
	check(h, 3, 4, 5)
}
