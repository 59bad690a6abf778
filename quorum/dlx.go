package quorum

import (
	"encoding/binary"
	"slices"
	"sync"
)

// At-least-once dead-lettering (x-dead-letter-strategy: at-least-once, as RabbitMQ 3.10's
// rabbit_fifo_dlx). With Limits.AtLeastOnce, a message the queue drops (rejected, over the
// delivery limit, expired) is not handed to the proposer for a dead-lettering at most once: it
// stays in the state, in the discards, until a DLXSettle names it. The broker's dead-letter
// worker on the group's leader publishes each discard to the dead-letter exchange and proposes
// its DLXSettle once every target confirmed it; a new leader (a leader change, a kill -9) finds
// the discards in its replica and publishes them again. The discards are not ready (no node
// is assigned them), count against x-max-length and x-max-length-bytes as RabbitMQ counts
// them, are not purged, and are in the snapshot (version 5).

// KindDLXSettle (IDs) removes discards that their dead-letter targets confirmed. Any node may
// propose it; naming a discard already settled changes nothing. Its number is fixed apart from
// the iota list of command.go, so that a command added there does not take it.
const KindDLXSettle Kind = 32

// dlxState is the discards: the messages dropped while Limits.AtLeastOnce, in the order they
// were dropped. Written on the Raft loop only; mu is for Discards' readers on other goroutines.
type dlxState struct {
	mu    sync.Mutex
	list  []Dropped
	bytes int64 // bodies' bytes, for x-max-length-bytes
}

// applyKeep is apply, and with Limits.AtLeastOnce the messages the command dropped (and those
// that expired at the head meanwhile) go to the discards instead of the proposer's result.
func (m *Machine) applyKeep(c *Command) Result {
	if c.Kind == KindDLXSettle {
		m.dlxSettle(c.IDs)
		return Result{}
	}
	r := m.apply(c)
	m.keepDiscards(&r.Dropped)
	m.keepDiscards(&m.expired)
	return r
}

// keepDiscards moves *ds to the discards when dead-lettering is at least once.
func (m *Machine) keepDiscards(ds *[]Dropped) {
	if !m.limits.AtLeastOnce || len(*ds) == 0 {
		return
	}
	m.dlx.mu.Lock()
	for _, d := range *ds {
		m.dlx.list = append(m.dlx.list, d)
		m.dlx.bytes += d.Msg.size()
	}
	m.dlx.mu.Unlock()
	*ds = nil
	if m.hooks.DeadLettered != nil {
		m.hooks.DeadLettered()
	}
}

// dlxSettle removes the discards named by ids.
func (m *Machine) dlxSettle(ids []uint64) {
	if len(ids) == 0 || len(m.dlx.list) == 0 {
		return
	}
	set := make(map[uint64]struct{}, len(ids))
	for _, id := range ids {
		set[id] = struct{}{}
	}
	m.dlx.mu.Lock()
	defer m.dlx.mu.Unlock()
	m.dlx.list = slices.DeleteFunc(m.dlx.list, func(d Dropped) bool {
		if _, ok := set[d.Msg.ID]; ok {
			m.dlx.bytes -= d.Msg.size()
			return true
		}
		return false
	})
	if len(m.dlx.list) == 0 {
		m.dlx.list = nil
	}
}

// Discards returns the messages waiting for their at-least-once dead-lettering, in the order
// they were dropped. The messages are shared and never written again: read only. Safe from
// any goroutine.
func (m *Machine) Discards() []Dropped {
	m.dlx.mu.Lock()
	defer m.dlx.mu.Unlock()
	return slices.Clone(m.dlx.list)
}

// DiscardsHead is Discards' first n at most (the dead-letter worker's window: it works on the
// oldest ones only, as RabbitMQ's worker checks out a prefetch of them). Safe from any
// goroutine.
func (m *Machine) DiscardsHead(n int) []Dropped {
	m.dlx.mu.Lock()
	defer m.dlx.mu.Unlock()
	return slices.Clone(m.dlx.list[:min(n, len(m.dlx.list))])
}

// DiscardCounts are the number of discards and their bodies' bytes. Safe from any goroutine.
func (m *Machine) DiscardCounts() (n int, bytes int64) {
	m.dlx.mu.Lock()
	defer m.dlx.mu.Unlock()
	return len(m.dlx.list), m.dlx.bytes
}

// discardLen is the number of discards (Raft loop: no lock, the loop is the only writer).
func (m *Machine) discardLen() int { return len(m.dlx.list) }

// appendDiscards writes the discards of a version 5 snapshot: their count, then each one's
// reason and message (with its state, as the other lists, but for its downFrom: a discard
// counts no late mark).
func appendDiscards(b []byte, ds []Dropped) []byte {
	b = binary.AppendUvarint(b, uint64(len(ds)))
	for _, d := range ds {
		b = append(b, byte(d.Reason))
		sm := snapOf(d.Msg)
		sm.downFrom = "" // a discard is never counted again: its node is not kept
		b = appendSnapMsg(b, sm)
	}
	return b
}

// discards reads what appendDiscards wrote.
func (d *decoder) discards() (ds []Dropped, bytes int64) {
	n := d.count("discards", 7)
	for i := 0; i < n && d.err == nil; i++ {
		why := Reason(d.byte("discard reason"))
		if why < Rejected || why > Expired {
			d.fail("discard reason")
			return nil, 0
		}
		msg := d.msg(true)
		ownMsg(msg)
		ds = append(ds, Dropped{Msg: msg, Reason: why})
		bytes += msg.size()
	}
	return ds, bytes
}
