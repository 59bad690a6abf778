package multiraft

import (
	"fmt"
	"sort"
)

// LogStatus is a group's log on this node, and, on its leader, how far each voter's log
// matches the leader's: what rabbitmq-queues quorum_status shows per member.
type LogStatus struct {
	// LastIndex is the last entry written to this node's log; SnapshotIndex the index of its
	// latest snapshot (0: none).
	LastIndex, SnapshotIndex uint64
	// Peers is the leader's view of every voter (itself included), sorted by node; nil on a
	// node that does not lead the group.
	Peers []PeerProgress
}

// PeerProgress is one voter as the group's leader tracks it.
type PeerProgress struct {
	Node string
	// Match is the highest index known to be in that voter's log (the leader's own last
	// index for itself).
	Match uint64
	// State is raft's replication state of the voter: StateProbe (finding where the logs
	// diverge, also while the voter is unreachable), StateReplicate or StateSnapshot.
	State string
	// RecentActive: the leader heard from the voter within an election timeout.
	RecentActive bool
}

// LogStatus reports the group's log indices on this node and, when this node leads it, the
// progress of every voter.
func (g *Group) LogStatus() LogStatus {
	last, _ := g.storage.LastIndex()
	ls := LogStatus{LastIndex: last, SnapshotIndex: g.storage.SnapshotIndex()}
	g.mu.Lock()
	st := g.rn.Status()
	g.mu.Unlock()
	for id, pr := range st.Progress {
		if pr.IsLearner {
			continue
		}
		n, ok := g.h.nameOf(id)
		if !ok {
			n = fmt.Sprintf("%016x", id)
		}
		ls.Peers = append(ls.Peers, PeerProgress{Node: n, Match: pr.Match, State: pr.State.String(), RecentActive: pr.RecentActive})
	}
	sort.Slice(ls.Peers, func(i, j int) bool { return ls.Peers[i].Node < ls.Peers[j].Node })
	return ls
}
