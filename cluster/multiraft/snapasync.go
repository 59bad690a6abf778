package multiraft

import (
	"errors"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// SnapshotStarter is a StateMachine whose snapshot is encoded off the Ready loop. A quorum
// queue's snapshot is its whole backlog: encoded on the loop, it stalled every group of the
// node for as long as the encoding took.
//
// StartSnapshot is called on the loop instead of Snapshot, as of the last applied index; it
// must capture the state quickly (an immutable view) and return a function that encodes that
// view. The function runs on another goroutine while Apply goes on, so it must not read the
// live state. ErrSnapshotLater means: ask again after a later round, as for Snapshot.
//
// The encoded snapshot is stored (CreateSnapshot and the log's compaction) back on the loop,
// at the index it was started at; entries applied meanwhile stay in the log. One snapshot per
// group is in flight at a time.
type SnapshotStarter interface {
	StartSnapshot() (encode func() ([]byte, error), err error)
}

// snapResult is an encoded snapshot on its way back to the loop.
type snapResult struct {
	g     *Group
	index uint64        // applied index it was started at
	cs    *pb.ConfState // configuration in force at index
	keep  uint64        // entries kept behind it (keepAfterSnapshot when started)
	bytes uint64        // bytesSinceSnap when started: what it accounts for
	data  []byte        // dedupe table, then the state machine's data
	err   error
	took  time.Duration
}

// startSnapshot starts an off-loop snapshot if the state machine can take one (loop
// goroutine). False: it cannot, and the caller snapshots on the loop.
func (g *Group) startSnapshot(since uint64) bool {
	st, ok := g.sm.(SnapshotStarter)
	if !ok {
		return false
	}
	if g.snapRunning {
		return true // the one in flight covers most of it; the next starts when it is stored
	}
	encode, err := st.StartSnapshot()
	if errors.Is(err, ErrSnapshotLater) {
		return true
	}
	if err != nil {
		g.log.Error("state machine snapshot failed", "index", g.applied, "err", err)
		return true
	}
	r := snapResult{g: g, index: g.applied, cs: proto.Clone(pb.EnsureConfState(g.confState)).(*pb.ConfState),
		keep: g.keepAfterSnapshot(since), bytes: g.bytesSinceSnap}
	// The dedupe table is small (requests in flight per proposer): encoded here, with the
	// state it goes with.
	head := g.dedupe.encode(nil)
	g.snapRunning = true
	h := g.h
	h.bg.Add(1)
	go func() {
		defer h.bg.Done()
		start := time.Now()
		data, err := encode()
		if err == nil {
			r.data = append(head, data...)
		}
		r.err, r.took = err, time.Since(start)
		select {
		case h.snapDone <- r:
		case <-h.stop: // closing: the snapshot is not stored; the log still has its entries
		}
	}()
	return true
}

// finishSnapshot stores a snapshot encoded off the loop (loop goroutine).
func (h *Host) finishSnapshot(r snapResult) {
	g := r.g
	g.snapRunning = false
	if g.failed.Load() != nil || g.deleted.Load() {
		return
	}
	if r.err != nil {
		g.log.Error("state machine snapshot failed", "index", r.index, "err", r.err)
		return
	}
	if r.index <= g.snapIndex {
		return // a snapshot from the leader was installed meanwhile
	}
	start := time.Now()
	if err := g.storage.CreateSnapshot(r.index, r.cs, r.data, r.keep); err != nil {
		if !errors.Is(err, raft.ErrSnapOutOfDate) {
			g.log.Error("raft snapshot failed", "index", r.index, "err", err)
		}
		return
	}
	g.snapIndex = r.index
	g.bytesSinceSnap -= min(r.bytes, g.bytesSinceSnap)
	g.log.Debug("snapshot stored", "index", r.index, "bytes", len(r.data), "encode", r.took, "store", time.Since(start))
}
