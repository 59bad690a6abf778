package multiraft

import (
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
)

// Quiescing (CockroachDB's technique). An idle Raft group still costs a heartbeat from its
// leader to every follower each heartbeat tick, and a tick of every replica: 1,000 idle
// groups on 3 nodes made 40,000 messages/s. A group whose leader has nothing in flight and
// whose live followers have all its log stops ticking:
//
//   - At a tick, a leader with every entry committed and applied, no Ready pending, no
//     leadership transfer or joint configuration, every follower on a live node at its last
//     index in replicate state, and a majority of voters live, sends those followers a
//     quiesce heartbeat (a MsgHeartbeat whose frame carries quiesceFlag in the group field,
//     with the commit index) and stops ticking itself.
//   - A follower steps it like any heartbeat (election timer reset, commit index learnt) and
//     stops ticking if it is then a follower of that leader, in its term, at its commit index.
//   - Anything else wakes a group: a proposal or conf change on any member (a follower's is
//     forwarded, which wakes the leader), any message but a heartbeat's answer, and a change of
//     a peer's liveness. A follower woken by its leader's node changing, or by a message from
//     another node than its leader (wakeLeaderLocked), sends the leader a wake-up call (a
//     heartbeat answer flagged with quiesceFlag).
//
// Liveness is per node pair, not per group: the transport writes an empty frame on a
// connection that was silent for a tick, and a peer is live while connected and heard from
// within livenessTicks ticks (peerEvents). When a peer dies, comes back, or reconnects (a
// restart), a quiesced leader with a member there wakes (it heartbeats again, and with
// CheckQuorum steps down if it lost its majority: a leader cut off from everyone sees all
// peers die), and a quiesced follower whose leader is there wakes: its election timer runs
// again, so it campaigns after the usual election timeout if the leader is really gone. With
// PreVote the others, still in their leader's lease, refuse a follower that woke for nothing.
// A woken leader's CheckQuorum may take up to two election timeouts, not one: raft clears a
// follower's RecentActive flag only at each quorum check, and the flags still hold what the
// leader heard before it quiesced, so the first check after waking may pass on them. The
// followers are not held back meanwhile: out of the leader's lease they elect another.
// A quiesce heartbeat that is lost leaves a follower ticking: it campaigns, which wakes the
// leader, whose heartbeats then keep the follower down as in any group.

// livenessTicks is how many ticks a peer may stay silent (no frame at all, while node
// heartbeats are written every tick) before it counts as dead. A peer whose connection
// closes (killed, restarted) is dead at once.
func (h *Host) livenessTimeout() time.Duration {
	return time.Duration(max(2, h.cfg.ElectionTicks/2)) * h.cfg.TickInterval
}

// peerEvents returns which peers are live and which changed liveness or connection since
// the last tick (loop goroutine).
func (h *Host) peerEvents() (live, changed map[uint64]bool) {
	cur := h.tr.liveness(h.livenessTimeout())
	live = make(map[uint64]bool, len(cur))
	for id, l := range cur {
		live[id] = l.alive
		if prev, ok := h.lastLive[id]; !ok || prev != l {
			if changed == nil {
				changed = make(map[uint64]bool)
			}
			changed[id] = true
		}
	}
	for id := range h.lastLive {
		if _, ok := cur[id]; !ok {
			if changed == nil {
				changed = make(map[uint64]bool)
			}
			changed[id] = true
		}
	}
	h.lastLive = cur
	return live, changed
}

// wakeOnPeerEventLocked wakes a quiesced group when a peer it depends on changed: for a
// leader any member, for a follower its leader (g.mu held). A follower also wakes its
// leader (a heartbeat answer flagged with quiesceFlag): if the leader is alive after all (a
// silence that only looked like death, a reconnect) its heartbeats resume and keep the
// follower from campaigning; if it is gone the message is lost and the follower's election
// timer decides.
func (g *Group) wakeOnPeerEventLocked(changed map[uint64]bool, q *quiesceRound) {
	bs := g.rn.BasicStatus()
	if bs.RaftState != raft.StateLeader {
		if bs.Lead == raft.None || changed[bs.Lead] {
			g.quiesced = false
			if lead := bs.Lead; lead != raft.None {
				q.out[lead] = append(q.out[lead], g.wakeUpCall(lead, bs.HardState.GetTerm()))
			}
		}
		return
	}
	for _, ids := range [][]uint64{g.confState.GetVoters(), g.confState.GetLearners()} {
		for _, id := range ids {
			if changed[id] {
				g.quiesced = false
				return
			}
		}
	}
}

// quiesceRound collects one tick's quiesce heartbeats.
type quiesceRound struct {
	live map[uint64]bool
	out  map[uint64][]outMsg
}

// maybeQuiesceLocked quiesces a leader that is idle and caught up everywhere it can tell,
// queueing the quiesce heartbeats (loop goroutine, g.mu held).
func (g *Group) maybeQuiesceLocked(q *quiesceRound) {
	bs := g.rn.BasicStatus()
	if bs.RaftState != raft.StateLeader || bs.LeadTransferee != raft.None || g.rn.HasReady() {
		return
	}
	last, _ := g.storage.LastIndex()
	if bs.HardState.GetCommit() != last || bs.Applied != last || len(g.confState.GetVotersOutgoing()) > 0 {
		return
	}
	ok, liveVoters := true, 0
	var to []uint64
	g.rn.WithProgress(func(id uint64, typ raft.ProgressType, pr tracker.Progress) {
		if id == g.h.id {
			if typ == raft.ProgressTypePeer {
				liveVoters++
			}
			return
		}
		if !q.live[id] {
			return // a dead node's replica catches up when it is back (its return wakes us)
		}
		if pr.Match != last || pr.State != tracker.StateReplicate {
			ok = false
			return
		}
		if typ == raft.ProgressTypePeer {
			liveVoters++
		}
		to = append(to, id)
	})
	if !ok || liveVoters <= len(g.confState.GetVoters())/2 {
		return
	}
	term := bs.HardState.GetTerm()
	for _, id := range to {
		m := &pb.Message{Type: pb.MessageType_MsgHeartbeat.Enum(), To: &id, From: &g.h.id, Term: &term, Commit: &last}
		q.out[id] = append(q.out[id], outMsg{group: g.id | quiesceFlag, msg: m})
	}
	g.quiesced = true
}

// quiesceFollowerLocked quiesces a follower that stepped its leader's quiesce heartbeat,
// if it follows that leader in that term and has its commit index (g.mu held). commit is
// the heartbeat's as sent.
func (g *Group) quiesceFollowerLocked(m *pb.Message, commit uint64) {
	bs := g.rn.BasicStatus()
	if bs.RaftState == raft.StateFollower && bs.Lead == m.GetFrom() && bs.HardState.GetTerm() == m.GetTerm() &&
		bs.HardState.GetCommit() == commit {
		g.quiesced = true
	}
}

// wakeUpCall is a follower's call to its quiesced leader to wake up: a heartbeat answer
// flagged with quiesceFlag, which the leader steps as activity (Host.deliver).
func (g *Group) wakeUpCall(lead, term uint64) outMsg {
	m := &pb.Message{Type: pb.MessageType_MsgHeartbeatResp.Enum(), To: &lead, From: &g.h.id, Term: &term}
	return outMsg{group: g.id | quiesceFlag, msg: m}
}

// wakeLeaderLocked returns the wake-up call a quiesced follower sends its leader when a
// message from another node (from) wakes it (g.mu held, before stepping the message; the
// caller sends it once g.mu is released). Without it, a follower woken by the pre-votes of
// a node cut off from the leader alone ticks with no heartbeat from the still quiesced
// leader, falls out of the leader's lease, and votes the cut-off node in, while the old
// leader stays quiesced in StateLeader: two leaders. Woken, the leader heartbeats this
// follower again and keeps it in the lease, so the pre-votes fail.
func (g *Group) wakeLeaderLocked(from uint64) []outMsg {
	bs := g.rn.BasicStatus()
	if bs.RaftState != raft.StateFollower || bs.Lead == raft.None || bs.Lead == from || bs.Lead == g.h.id {
		return nil
	}
	return []outMsg{g.wakeUpCall(bs.Lead, bs.HardState.GetTerm())}
}
