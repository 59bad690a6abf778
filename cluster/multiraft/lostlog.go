package multiraft

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"

	raft "go.etcd.io/raft/v3"
)

// A node that comes back with an empty data directory (wiped disk, cluster.join) keeps its
// Raft ID (NodeID of its name), but has forgotten its log and its votes: the classic Raft
// hazard. Two things go wrong if nothing is done:
//
//   - Safety. The entries it acknowledged counted towards commits; if it now votes, it can
//     make a majority with another empty replica (a second wiped node that has not caught
//     up yet) and elect a leader without those entries: confirmed messages vanish, and the
//     old leader's log conflicts with the new one's below its commit index. So a replica
//     that lost its log (Group.lostLog) grants no vote and no pre-vote, and asks for none
//     (Host.ready drops its own), until a leader has
//     given it the log up to that leader's commit index; a leader has every committed
//     entry, so from then on it holds whatever it had acknowledged.
//   - Liveness. raft's leader keeps a follower's match index, never sends it entries at or
//     below it again and takes its rejections at or below it for stale: the follower never
//     catches up from that leader, and in an idle (quiesced) group it never even rejects,
//     because heartbeats carry no entries. So the follower answers a heartbeat whose commit
//     index it does not have with a rejection naming its real last index, and a leader that
//     sees a rejection below a follower's match index sends it a snapshot at or above that
//     index itself (taking one first if its latest is older), which raft on the follower
//     installs since its commit index is lower. (Handing leadership over to another voter,
//     which this replaced, starts the new leader's progress afresh but trusts the other
//     voter's match index, which is just as stale if that voter was wiped too.)
//
// Only the groups the node had before it lost its state are affected: a host started with
// Config.Join on an empty log marks the groups it opens with no local state, until the
// owner calls NewGroupsFromNow (the cluster does after its metadata caught up: groups opened
// later were created after the node came back, so it never had their log).

// NewGroupsFromNow says that the groups opened from now on with no local state are new to
// this node, not ones whose log it lost with its data directory: they vote from the start.
func (h *Host) NewGroupsFromNow() {
	if h.lostState.Swap(false) {
		h.unmarkLost(lostHostMarker)
	}
}

// LostLog reports whether this replica lost its log and votes with its data directory and
// has not yet got them back from a leader.
func (g *Group) LostLog() bool { return g.lostLog.Load() }

// noteLostLogLocked (g.mu held, before stepping m) notes a follower that rejects an append
// below the index it had acknowledged: it lost its log, and this leader sends it a snapshot
// (sendLostLogSnapshots).
func (g *Group) noteLostLogLocked(m *pb.Message) {
	st := g.rn.Status()
	if st.RaftState != raft.StateLeader {
		return
	}
	pr, ok := st.Progress[m.GetFrom()]
	if !ok || m.GetRejectHint() >= pr.Match {
		return
	}
	if g.lostFollowers == nil {
		g.lostFollowers = make(map[uint64]uint64)
	}
	g.lostFollowers[m.GetFrom()] = max(g.lostFollowers[m.GetFrom()], pr.Match)
}

// sendLostLogSnapshots (loop goroutine, after the round's applies) sends each follower that
// lost its log a snapshot at or above the index it had acknowledged, at most once per
// election timeout per follower: the follower keeps rejecting until it has one.
func (g *Group) sendLostLogSnapshots() {
	if g.failed.Load() != nil || g.deleted.Load() {
		return
	}
	g.mu.Lock()
	if len(g.lostFollowers) == 0 {
		g.mu.Unlock()
		return
	}
	bs := g.rn.BasicStatus()
	if bs.RaftState != raft.StateLeader {
		g.lostFollowers = nil
		g.mu.Unlock()
		return
	}
	lost := make(map[uint64]uint64, len(g.lostFollowers))
	for id, idx := range g.lostFollowers {
		lost[id] = idx
	}
	g.mu.Unlock()
	var need uint64
	for _, idx := range lost {
		need = max(need, idx)
	}
	if g.snapIndex < need {
		if g.applied < need {
			return // a later round, once applied (the follower rejects again meanwhile)
		}
		data, err := g.snapshot()
		if errors.Is(err, ErrSnapshotLater) {
			return
		}
		if err != nil {
			g.log.Error("state machine snapshot for a follower that lost its log failed", "index", g.applied, "err", err)
			return
		}
		if err := g.storage.CreateSnapshot(g.applied, g.confState, data, g.keepAfterSnapshot(g.applied-g.snapIndex)); err != nil {
			g.log.Error("raft snapshot for a follower that lost its log failed", "index", g.applied, "err", err)
			return
		}
		g.snapIndex, g.bytesSinceSnap = g.applied, 0
	}
	snap, err := g.storage.Snapshot()
	if err != nil {
		g.log.Error("reading the raft snapshot for a follower that lost its log", "err", err)
		return
	}
	if g.lostSent == nil {
		g.lostSent = make(map[uint64]time.Time)
	}
	every := time.Duration(g.h.cfg.ElectionTicks) * g.h.cfg.TickInterval
	for id, want := range lost {
		if snap.GetMetadata().GetIndex() < want || time.Since(g.lostSent[id]) < every {
			continue
		}
		name, ok := g.h.nameOf(id)
		if !ok {
			continue
		}
		g.lostSent[id] = time.Now()
		to, from, term := id, g.h.id, bs.GetTerm()
		msg := &pb.Message{Type: pb.MessageType_MsgSnap.Enum(), To: &to, From: &from, Term: &term, Snapshot: snap}
		g.log.Warn("a follower lost its Raft log (restarted with an empty data directory?); sending it a snapshot",
			"follower", name, "had", want, "snapshot", snap.GetMetadata().GetIndex())
		g.h.tr.send(name, []outMsg{{group: g.id, msg: msg}})
		g.mu.Lock()
		if g.lostFollowers[id] == want {
			delete(g.lostFollowers, id)
		}
		g.mu.Unlock()
	}
}

// lostLogStepLocked (g.mu held, after stepping m) is the side of a replica that lost its
// log: once a message of its leader shows it has the leader's commit index (commit is the
// message's, before deliver clamped a heartbeat's), and the entry there is of the leader's
// term, it has every committed entry again and votes again; a heartbeat whose commit index it does not have is answered with a rejection
// naming its last index, which makes the leader send a snapshot (noteLostLogLocked).
func (g *Group) lostLogStepLocked(m *pb.Message, commit uint64) []outMsg {
	bs := g.rn.BasicStatus()
	if bs.Lead == raft.None || m.GetFrom() != bs.Lead || m.GetTerm() != bs.GetTerm() {
		return nil
	}
	want := commit
	switch m.GetType() {
	case pb.MessageType_MsgApp, pb.MessageType_MsgHeartbeat:
	case pb.MessageType_MsgSnap:
		want = m.GetSnapshot().GetMetadata().GetIndex()
	default:
		return nil
	}
	if want == 0 {
		return nil
	}
	// A heartbeat's commit index is min(match, committed): after a leader change the new
	// leader's match for this node can be below the real commit index, so reaching it proves
	// nothing. An entry of the leader's term at this node's commit index does: the leader's
	// first entry of its term follows every entry committed before it, and this node
	// acknowledged to this leader whatever it had acknowledged in this term (its match).
	// The entry must be in storage (persisted), not only stepped: the marker goes next.
	if term, err := g.storage.Term(bs.GetCommit()); bs.GetCommit() >= want && err == nil && term == bs.GetTerm() {
		g.lostLog.Store(false)
		g.h.unmarkLost(groupMarker(g.id))
		g.log.Info("the leader gave back the Raft log this node lost; it votes again", "commit", bs.GetCommit())
		return nil
	}
	if m.GetType() != pb.MessageType_MsgHeartbeat || bs.GetCommit() >= want {
		// raft rejects an append it cannot take: the leader hears of it anyway. At want
		// already: the leader's entries of its term reach this node by the way.
		return nil
	}
	last, _ := g.storage.LastIndex()
	to, from, term, reject := bs.Lead, g.h.id, bs.GetTerm(), true
	resp := &pb.Message{Type: pb.MessageType_MsgAppResp.Enum(), To: &to, From: &from, Term: &term,
		Index: &commit, Reject: &reject, RejectHint: &last}
	return []outMsg{{group: g.id, msg: resp}}
}

// callLeaderIfLostLocked (loop goroutine, g.mu held, every tick of a replica that lost its
// log) sends, every election timeout, a wake-up call to its leader, or to every other node
// while it knows none: the leader may have quiesced before this node opened the group (its
// heartbeats were dropped here meanwhile), trusting the match index this node had; and
// this node, with no configuration before the leader's snapshot, never campaigns. Woken,
// the leader heartbeats it, and the answer (lostLogStepLocked) brings the snapshot.
func (g *Group) callLeaderIfLostLocked(others []uint64, q *quiesceRound) {
	g.lostTicks++
	if g.lostTicks%g.h.cfg.ElectionTicks != 1 {
		return
	}
	bs := g.rn.BasicStatus()
	to := others
	if bs.Lead != raft.None && bs.Lead != g.h.id {
		to = []uint64{bs.Lead}
	}
	for _, id := range to {
		q.out[id] = append(q.out[id], g.wakeUpCall(id, bs.HardState.GetTerm()))
	}
}

// The lost state outlives a restart: a node wiped, restarted and restarted again before its
// groups caught up would otherwise find state of its own in them (a hard state, some of the
// log) and vote again, or open the groups it had not opened yet as new ones. So it is kept
// on disk in lostDir of the data directory: a file lostHostMarker while the host's groups
// with no local state are lost (until NewGroupsFromNow), and a file per group (its id in
// decimal) while that group's replica is lost (until a leader gave its log back).
const (
	lostDir        = "raft-lost"
	lostHostMarker = "host"
)

func (h *Host) lostPath(name string) string { return filepath.Join(h.cfg.DataDir, lostDir, name) }

func groupMarker(id uint64) string { return strconv.FormatUint(id, 10) }

// lostMarked reports whether the marker name exists.
func (h *Host) lostMarked(name string) bool {
	_, err := os.Stat(h.lostPath(name))
	return err == nil
}

// markLost creates the marker name, durably (unless NoSync): it must be on disk before
// anything the replica it stands for persists.
func (h *Host) markLost(name string) error {
	dir := filepath.Join(h.cfg.DataDir, lostDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("multiraft: lost-log marker: %w", err)
	}
	f, err := os.Create(h.lostPath(name))
	if err != nil {
		return fmt.Errorf("multiraft: lost-log marker: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("multiraft: lost-log marker: %w", err)
	}
	if h.cfg.NoSync {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("multiraft: lost-log marker: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("multiraft: lost-log marker: %w", err)
	}
	return nil
}

// unmarkLost removes the marker name. A failure is logged: the replica then stays lost
// after a restart until a leader gives its log back again, which is safe.
func (h *Host) unmarkLost(name string) {
	if err := os.Remove(h.lostPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		h.log.Warn("lost-log marker not removed", "marker", name, "err", err)
	}
}
