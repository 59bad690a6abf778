package multiraft

import (
	"errors"
	"fmt"
)

// Deleting a group (a quorum queue deleted, or a replica moved off this node) detaches it
// from the loop, writes a tombstone, then drops its keys from the Raft log in bounded
// batches (persistence.RaftLog.DropGroup) in the caller's goroutine: the loop goes on serving
// the other groups meanwhile. Groups are only ever created by Group and GroupWith, never by a
// message, so a late message from a peer still running the group is dropped like any message
// for a group this node does not run, and writes nothing. The tombstone makes the deletion
// survive a crash: at start the host drops the keys of every tombstoned group again (one
// after the other, in one goroutine), and creating the group again waits for that. Once the
// keys are dropped the tombstone is cleared.

// ErrStopped is returned by calls that need the host's loop after it stopped serving its
// groups because the Raft log could not be written (the host still needs Close).
var ErrStopped = errors.New("multiraft: host stopped serving (raft log write failed)")

type detachReq struct {
	g    *Group
	done chan struct{}
}

// DeleteGroup stops group id on this node and deletes its log entries, hard state and
// snapshot. Proposals waiting on it return ErrClosed. It does not change the group's
// membership: remove this node from the group first (RemoveMember) when the other members
// go on. Deleting a group this node does not run (or no longer has) deletes whatever is
// stored for it. The same id may be used again afterwards with Group or GroupWith, which
// starts a new group with no state: every member must have deleted the old one. On a host
// that stopped serving because its log could not be written it returns ErrStopped.
func (h *Host) DeleteGroup(id uint64) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return ErrClosed
	}
	if ch, ok := h.deleted[id]; ok {
		h.mu.Unlock()
		<-ch // deleted already (or being deleted)
		return nil
	}
	g := h.groups[id]
	ch := make(chan struct{})
	h.deleted[id] = ch
	h.bg.Add(1)
	h.mu.Unlock()
	defer h.bg.Done()
	if g != nil {
		r := detachReq{g: g, done: make(chan struct{})}
		select {
		case h.detachCh <- r:
			<-r.done
		case <-h.done:
			close(ch)
			return ErrClosed // the loop stopped (closing)
		case <-h.dead:
			close(ch)
			return ErrStopped
		}
	}
	if err := h.rlog.MarkDeleted(id); err != nil {
		close(ch)
		return fmt.Errorf("multiraft: delete group %d: %w", id, err)
	}
	h.unmarkLost(groupMarker(id)) // a group created again with this id is a new one
	if err := h.finishDrop(id, ch, h.rlog.DropGroup(id)); err != nil {
		return fmt.Errorf("multiraft: delete group %d: %w", id, err)
	}
	h.log.Info("raft group deleted", "group", id)
	return nil
}

// finishDrop ends the deletion of group id whose drop returned err, and closes ch (its
// entry in h.deleted). Dropped, the group needs its tombstone no more: it is cleared, and
// so is the entry, so that neither the tombstones nor the map grow with every group ever
// deleted. A failed drop keeps both: the next start, or creating the group again, drops
// again.
func (h *Host) finishDrop(id uint64, ch chan struct{}, err error) error {
	defer close(ch)
	if err == nil {
		err = h.rlog.ClearTombstone(id)
	}
	if err != nil {
		h.log.Error("dropping a deleted raft group failed", "group", id, "err", err)
		return err
	}
	h.mu.Lock()
	if h.deleted[id] == ch {
		delete(h.deleted, id)
	}
	h.mu.Unlock()
	return nil
}

// detach takes g out of the loop (loop goroutine, between two rounds: no Ready of g is in
// flight). Nothing of it is saved any more: markDirty and ready skip deleted groups.
func (h *Host) detach(g *Group) {
	h.mu.Lock()
	g.deleted.Store(true)
	if h.groups[g.id] == g {
		delete(h.groups, g.id)
	}
	delete(h.dirty, g.id)
	h.mu.Unlock()
	g.pmu.Lock()
	g.stopped = true
	g.pmu.Unlock()
	close(g.done)
}

// undelete lets group id be created again: it waits for the drop of a deleted group with
// that id, drops again whatever a failed drop left, and clears the tombstone.
func (h *Host) undelete(id uint64) error {
	h.mu.Lock()
	ch, ok := h.deleted[id]
	h.mu.Unlock()
	if !ok {
		return nil
	}
	<-ch
	if err := h.rlog.DropGroup(id); err != nil {
		return fmt.Errorf("multiraft: create group %d again: %w", id, err)
	}
	if err := h.rlog.ClearTombstone(id); err != nil {
		return fmt.Errorf("multiraft: create group %d again: %w", id, err)
	}
	h.mu.Lock()
	if h.deleted[id] == ch {
		delete(h.deleted, id)
	}
	h.mu.Unlock()
	return nil
}
