package multiraft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

// Proposal entries carry who proposed them, so that the proposer (and only it) hands the
// state machine's result to the waiting caller, and so that a proposal sent twice (a retry
// after a loss that could not be told from a delay) is applied once:
//
//	version(1)=2 proposerID(8) incarnation(8) request(8) watermark(8) command
//
// The watermark is the proposer's lowest request still waiting when it proposed: every
// request below it has been applied or given up, so copies of them are skipped.
const proposalHeader = 33

type proposalHdr struct {
	proposer, inc, req, watermark uint64
}

// proposalData is an entry's data: header and command.
func proposalData(h proposalHdr, cmd []byte) []byte {
	data := make([]byte, proposalHeader, proposalHeader+len(cmd))
	data[0] = 2
	binary.BigEndian.PutUint64(data[1:], h.proposer)
	binary.BigEndian.PutUint64(data[9:], h.inc)
	binary.BigEndian.PutUint64(data[17:], h.req)
	binary.BigEndian.PutUint64(data[25:], h.watermark)
	return append(data, cmd...)
}

// parseHeader returns the proposal header of entry data (ok false: not a proposal).
func parseHeader(d []byte) (proposalHdr, bool) {
	if len(d) < proposalHeader || d[0] != 2 {
		return proposalHdr{}, false
	}
	return proposalHdr{
		proposer:  binary.BigEndian.Uint64(d[1:]),
		inc:       binary.BigEndian.Uint64(d[9:]),
		req:       binary.BigEndian.Uint64(d[17:]),
		watermark: binary.BigEndian.Uint64(d[25:]),
	}, true
}

// dedupeTable is, per proposer incarnation, the requests applied at or above its watermark.
// It is built only from the log and snapshots, so it is the same on every member at the same
// index, and applying the same log skips the same copies everywhere.
type dedupeTable map[[2]uint64]*dedupeState

type dedupeState struct {
	watermark uint64
	last      uint64 // index of the proposer's last entry: idle incarnations are dropped
	applied   map[uint64]struct{}
}

// dedupeIdle: an incarnation with no entry for this many indices is forgotten (its process
// is gone, and a retry never waits that long).
const dedupeIdle = 100_000

// admit says whether the entry at idx with header ph is applied (false: a copy of a request
// already applied, or below the proposer's watermark).
func (t dedupeTable) admit(ph proposalHdr, idx uint64) bool {
	if idx%dedupeIdle == 0 {
		for k, st := range t {
			if idx-st.last > dedupeIdle {
				delete(t, k)
			}
		}
	}
	k := [2]uint64{ph.proposer, ph.inc}
	st := t[k]
	if st == nil {
		st = &dedupeState{applied: make(map[uint64]struct{})}
		t[k] = st
	}
	st.last = idx
	if ph.watermark > st.watermark {
		st.watermark = ph.watermark
		for r := range st.applied {
			if r < st.watermark {
				delete(st.applied, r)
			}
		}
	}
	if ph.req < st.watermark {
		return false
	}
	if _, dup := st.applied[ph.req]; dup {
		return false
	}
	st.applied[ph.req] = struct{}{}
	return true
}

// Snapshots hold the dedupe table before the state machine's data:
//
//	'D' uvarint(n) { proposer(8) inc(8) watermark(8) last(8) uvarint(m) { req(8) }* }* smdata
func (t dedupeTable) encode(b []byte) []byte {
	keys := make([][2]uint64, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i][0] < keys[j][0] || keys[i][0] == keys[j][0] && keys[i][1] < keys[j][1]
	})
	b = append(b, 'D')
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		st := t[k]
		b = binary.BigEndian.AppendUint64(b, k[0])
		b = binary.BigEndian.AppendUint64(b, k[1])
		b = binary.BigEndian.AppendUint64(b, st.watermark)
		b = binary.BigEndian.AppendUint64(b, st.last)
		b = binary.AppendUvarint(b, uint64(len(st.applied)))
		reqs := make([]uint64, 0, len(st.applied))
		for r := range st.applied {
			reqs = append(reqs, r)
		}
		sort.Slice(reqs, func(i, j int) bool { return reqs[i] < reqs[j] })
		for _, r := range reqs {
			b = binary.BigEndian.AppendUint64(b, r)
		}
	}
	return b
}

var errBadSnapshot = errors.New("multiraft: malformed snapshot header")

// decodeDedupe reads a table written by encode and returns it with the rest of b.
func decodeDedupe(b []byte) (dedupeTable, []byte, error) {
	if len(b) == 0 || b[0] != 'D' {
		return nil, nil, errBadSnapshot
	}
	b = b[1:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return nil, nil, errBadSnapshot
	}
	b = b[k:]
	t := make(dedupeTable, n)
	for i := uint64(0); i < n; i++ {
		if len(b) < 32 {
			return nil, nil, errBadSnapshot
		}
		key := [2]uint64{binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])}
		st := &dedupeState{watermark: binary.BigEndian.Uint64(b[16:]), last: binary.BigEndian.Uint64(b[24:])}
		b = b[32:]
		m, k := binary.Uvarint(b)
		if k <= 0 || m > uint64(len(b)-k)/8 {
			return nil, nil, errBadSnapshot
		}
		b = b[k:]
		st.applied = make(map[uint64]struct{}, m)
		for j := uint64(0); j < m; j++ {
			st.applied[binary.BigEndian.Uint64(b)] = struct{}{}
			b = b[8:]
		}
		t[key] = st
	}
	return t, b, nil
}

// snapshot is the group's snapshot data: dedupe table, then the state machine's.
func (g *Group) snapshot() ([]byte, error) {
	data, err := g.sm.Snapshot()
	if err != nil {
		return nil, err
	}
	return append(g.dedupe.encode(nil), data...), nil
}

// restore replaces the dedupe table and the state machine from snapshot data.
func (g *Group) restore(b []byte) error {
	t, rest, err := decodeDedupe(b)
	if err != nil {
		return err
	}
	if err := g.sm.Restore(rest); err != nil {
		return err
	}
	// Only now: a failed restore leaves the table matching the state machine's old state.
	g.dedupe = t
	return nil
}

type proposalResult struct {
	v    any
	lost bool // overwritten by another entry: that copy never applies
}

// pendingProp is a proposal waiting for its result.
type pendingProp struct {
	ch     chan proposalResult // results; lost signals are sent without blocking
	placed atomic.Bool         // seen in this node's log (it will apply or be overwritten)
}

// notePlaced records where this incarnation's proposals landed in the log (loop goroutine).
func (g *Group) notePlaced(ents []*pb.Entry) {
	for _, e := range ents {
		ph, ok := parseHeader(e.GetData())
		ours := ok && ph.proposer == g.h.id && ph.inc == g.h.incarnation
		// An entry of ours overwritten by a new leader's entry can never apply.
		if old, had := g.placedAt[e.GetIndex()]; had && (!ours || old != ph.req) {
			delete(g.placedAt, e.GetIndex())
			g.finish(old, proposalResult{lost: true})
		}
		if ours {
			g.placedAt[e.GetIndex()] = ph.req
			g.pmu.Lock()
			if p := g.pending[ph.req]; p != nil {
				p.placed.Store(true)
			}
			g.pmu.Unlock()
		}
	}
}

// finish hands a result to the waiting proposal, if any.
func (g *Group) finish(req uint64, r proposalResult) {
	g.pmu.Lock()
	p := g.pending[req]
	if p != nil && !r.lost {
		delete(g.pending, req)
	}
	g.pmu.Unlock()
	if p == nil {
		return
	}
	if r.lost {
		p.placed.Store(false)
		select {
		case p.ch <- r:
		default: // a lost signal is already waiting
		}
		return
	}
	// A result replaces a lost signal not yet read.
	select {
	case <-p.ch:
	default:
	}
	p.ch <- r
}

// resendUnplaced makes every proposal of this node that is not in its log yet propose again
// (loop goroutine, on a leader change): one forwarded to a leader that died was lost with it,
// and waiting for the two election timeouts of Propose's retry would add them to the failover
// time. A copy that did reach the log applies once anyway (the dedupe table).
func (g *Group) resendUnplaced() {
	g.pmu.Lock()
	defer g.pmu.Unlock()
	for _, p := range g.pending {
		if !p.placed.Load() {
			select {
			case p.ch <- proposalResult{lost: true}:
			default: // a lost signal is already waiting
			}
		}
	}
}

// watermark is the lowest request of this group still waiting (or the next one).
func (g *Group) watermark() uint64 {
	w := g.nextReq.Load() + 1
	for r := range g.pending {
		if r < w {
			w = r
		}
	}
	return w
}

// Propose replicates cmd through the group's log and waits until this node has applied it,
// returning the state machine's result. A follower forwards the proposal to the leader.
// A proposal that is not in this node's log after two election timeouts (lost on the wire,
// or dropped by a deposed leader) or when a new leader is elected, or that was overwritten in a
// leader change, is sent again;
// every member applies a request once however many copies reach the log. If ctx ends first,
// the command may or may not be applied, but once this node's later proposals are applied,
// a copy of it no longer can be.
func (g *Group) Propose(ctx context.Context, cmd []byte) (any, error) {
	p := &pendingProp{ch: make(chan proposalResult, 1)}
	g.pmu.Lock()
	if g.stopped {
		g.pmu.Unlock()
		return nil, ErrClosed
	}
	req := g.nextReq.Add(1)
	g.pending[req] = p
	wm := g.watermark() // at most req: req is pending
	g.pmu.Unlock()
	defer func() {
		g.pmu.Lock()
		delete(g.pending, req)
		g.pmu.Unlock()
	}()
	data := proposalData(proposalHdr{proposer: g.h.id, inc: g.h.incarnation, req: req, watermark: wm}, cmd)

	retry := 2 * time.Duration(g.h.cfg.ElectionTicks) * g.h.cfg.TickInterval
	for {
		if err := g.submit(ctx, data); err != nil {
			return nil, err
		}
		timer := time.NewTimer(retry)
	wait:
		for {
			select {
			case r := <-p.ch:
				if !r.lost {
					timer.Stop()
					return r.v, nil
				}
				g.log.Debug("proposal overwritten, or not in the log when a new leader came; proposing again", "req", req)
				break wait
			case <-timer.C:
				if !p.placed.Load() {
					g.log.Debug("proposal not in the log after two election timeouts; proposing again", "req", req)
					break wait
				}
				timer.Reset(retry)
			case <-ctx.Done():
				timer.Stop()
				return nil, fmt.Errorf("multiraft: group %d: %w", g.id, ctx.Err())
			case <-g.h.stop:
				timer.Stop()
				return nil, ErrClosed
			case <-g.done:
				timer.Stop()
				return nil, ErrClosed
			}
		}
		timer.Stop()
	}
}

// submit hands data to raft, waiting while no leader is known.
func (g *Group) submit(ctx context.Context, data []byte) error {
	for {
		g.mu.Lock()
		g.quiesced = false
		err := g.rn.Propose(data)
		g.mu.Unlock()
		if err == nil {
			g.h.markDirty(g)
			return nil
		}
		if !errors.Is(err, raft.ErrProposalDropped) {
			return fmt.Errorf("multiraft: group %d: propose: %w", g.id, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("multiraft: group %d: no leader: %w", g.id, ctx.Err())
		case <-g.h.stop:
			return ErrClosed
		case <-g.done:
			return ErrClosed
		case <-time.After(g.h.cfg.TickInterval / 2):
		}
	}
}
