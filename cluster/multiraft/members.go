package multiraft

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

// AddMember makes node a voter of the group (a quorum queue growing by one replica) and
// waits until this node has applied the change. The node must be a cluster peer and should
// run the group already, started with GroupOptions.Join: the leader then sends it the log,
// or a snapshot and the log's tail when the log was compacted. Adding a member already there
// returns at once.
func (g *Group) AddMember(ctx context.Context, node string) error {
	return g.changeMember(ctx, node, true)
}

// RemoveMember takes node out of the group's voters and waits until this node has applied
// the change. The removed node's copy stops taking part (it is no longer sent messages and
// never campaigns); delete it there with Host.DeleteGroup. The leader may remove itself: it
// steps down once the change is applied. Removing the last voter is refused.
func (g *Group) RemoveMember(ctx context.Context, node string) error {
	return g.changeMember(ctx, node, false)
}

// Members are the group's voters (node names, sorted) in the configuration this node has
// applied.
func (g *Group) Members() []string { return g.Status().Members }

func (g *Group) voterIDs() []uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.votersLocked()
}

// votersLocked is the applied configuration's voters (g.mu held).
func (g *Group) votersLocked() []uint64 {
	var ids []uint64
	for id := range g.rn.Status().Config.Voters.IDs() {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// changeMember proposes the conf change until the applied configuration has (add) or lacks
// node. A leader refuses a conf change while another is pending (raft turns it into an empty
// entry) and a proposal may be lost with a leader, so it is proposed again every election
// timeout; a copy that lands after the change applied is a no-op in raft.
func (g *Group) changeMember(ctx context.Context, node string, add bool) error {
	id := NodeID(node)
	if n, ok := g.h.nameOf(id); !ok || n != node {
		return fmt.Errorf("multiraft: group %d: %q is not a cluster peer", g.id, node)
	}
	typ := pb.ConfChangeType_ConfChangeAddNode
	if !add {
		typ = pb.ConfChangeType_ConfChangeRemoveNode
	}
	cc := &pb.ConfChange{Type: typ.Enum(), NodeId: &id}
	retry := time.Duration(g.h.cfg.ElectionTicks) * g.h.cfg.TickInterval
	poll := max(g.h.cfg.TickInterval/2, time.Millisecond)
	for {
		if err := g.failed.Load(); err != nil {
			return fmt.Errorf("multiraft: group %d stopped: %w", g.id, *err)
		}
		g.pmu.Lock()
		stopped := g.stopped
		g.pmu.Unlock()
		if stopped {
			return ErrClosed
		}
		g.mu.Lock()
		voters := g.votersLocked()
		if slices.Contains(voters, id) == add {
			g.mu.Unlock()
			return nil
		}
		if !add && len(voters) == 1 {
			g.mu.Unlock()
			return fmt.Errorf("multiraft: group %d: %q is its last voter", g.id, node)
		}
		g.quiesced = false
		err := g.rn.ProposeConfChange(cc)
		g.mu.Unlock()
		if err != nil && !errors.Is(err, raft.ErrProposalDropped) {
			return fmt.Errorf("multiraft: group %d: propose %s %s: %w", g.id, typ.String(), node, err)
		}
		if err == nil {
			g.log.Info("raft membership change proposed", "change", typ.String(), "node", node)
			g.h.markDirty(g)
		}
		deadline := time.Now().Add(retry)
		for time.Now().Before(deadline) && slices.Contains(g.voterIDs(), id) != add {
			select {
			case <-ctx.Done():
				return fmt.Errorf("multiraft: group %d: %s %s: %w", g.id, typ.String(), node, ctx.Err())
			case <-g.h.stop:
				return ErrClosed
			case <-g.done:
				return ErrClosed
			case <-time.After(poll):
			}
		}
	}
}
