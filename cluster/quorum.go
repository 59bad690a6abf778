package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/cluster/multiraft"
	"github.com/warrenmq/warren/quorum"
)

// QuorumGroupID is the multiraft group of a quorum queue: derived from its vhost, name and
// epoch (the metadata log index of its declare), so every node computes the same ID without
// agreeing on it, and a queue declared again after a delete is a new group. Bit 62 is set
// and bit 63 clear: the IDs are in multiraft's range (1 to 2^63-1) and never meet the fixed
// groups (MetadataGroup, StatusGroup).
func QuorumGroupID(vhost, name string, epoch uint64) uint64 {
	sum := sha256.Sum256([]byte("warren-quorum\x00" + vhost + "\x00" + name + "\x00" + strconv.FormatUint(epoch, 10)))
	return binary.BigEndian.Uint64(sum[:8])&(1<<62-1) | 1<<62
}

// quorumWatchEvery is how often the quorum queues look at the metadata's dead nodes: a
// node_down reaches the queues at most this long after it is applied.
const quorumWatchEvery = 250 * time.Millisecond

// errNoHost: the replicator's log is not a multiraft group (in-process tests with a shared
// memory log), so there is no host to run a quorum queue's group on.
var errNoHost = fmt.Errorf("cluster: no Raft host: %w", broker.ErrQuorumUnavailable)

// OpenQuorum implements broker.QuorumGroups: it starts (or rejoins) the queue's Raft group on
// this node's host, on the replicas the metadata placed it on (placement.go): the members it
// was created with bootstrap it with that list; a member added since joins the running group
// (its leader adds it, reconcileQuorum, and sends it a snapshot and the log's tail). A queue
// declared before placement (no members recorded) runs on every cluster member. nodeDown is
// called (on the watcher's goroutine) when the metadata takes another node for dead
// (node_down, quorumWatchLoop).
func (r *Replicator) OpenQuorum(vhost, name string, epoch uint64, sm *quorum.Machine, nodeDown func(node string)) (broker.QuorumGroup, error) {
	nl, ok := r.log.(nodeLog)
	if !ok {
		return nil, errNoHost
	}
	n := nl.n
	id := QuorumGroupID(vhost, name, epoch)
	// The placement is the metadata's now, which may be ahead of the declare being applied:
	// its voters never change for an epoch, and its members only through quorum_member
	// commands, which the broker applies after this one.
	p, ok := n.meta.QuorumPlacement(vhost, name)
	if !ok || p.Epoch != epoch {
		return nil, fmt.Errorf("cluster: quorum queue '%s' in vhost '%s' was deleted since (declared at %d)", name, vhost, epoch)
	}
	var g *multiraft.Group
	var err error
	if p.Voters == nil {
		g, err = n.host.Group(id, sm)
	} else {
		// Join unless this node is an original voter and the members are still exactly the
		// list the group was created with (same order): a node added later waits for the
		// leader rather than bootstrapping a configuration the group left. An original
		// member removed (its copy deleted) and added back is appended to the members, so
		// it joins too, unless it was the last of them and the list is the original again:
		// then it bootstraps with the entries every original member has at the start of its
		// log, and the leader's log overrides whatever follows. A node that lost its data
		// directory waits for the leader either way (multiraft's lost state, lostlog.go).
		join := !slices.Equal(p.Members, p.Voters) || !slices.Contains(p.Voters, n.cfg.NodeName)
		g, err = n.host.GroupWith(id, sm, multiraft.GroupOptions{Voters: p.Voters, Join: join})
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: opening quorum queue '%s' in vhost '%s': %w", name, vhost, err)
	}
	qg := &quorumGroup{Group: g, n: n, nodeDown: nodeDown, vhost: vhost, name: name, epoch: epoch, placed: p.Voters != nil}
	n.quorum.add(qg)
	return qg, nil
}

// quorumGroup is one quorum queue's group as the broker sees it.
type quorumGroup struct {
	*multiraft.Group
	n           *Node
	nodeDown    func(string)
	vhost, name string
	epoch       uint64
	// placed: the group's members are the metadata's (not every cluster member).
	placed bool
	// changing is set while a membership change of this group runs (reconcileQuorum).
	changing atomic.Bool
}

// QuorumStatus is the Raft state of a quorum queue's group on this node; ok is false when
// the node runs no group for that queue.
func (n *Node) QuorumStatus(vhost, name string) (st multiraft.GroupStatus, ok bool) {
	// Only the incarnation the metadata has: a group of a deleted queue of the same name may
	// still be closing here.
	p, placed := n.meta.QuorumPlacement(vhost, name)
	if !placed {
		return st, false
	}
	if g := n.localGroup(p, vhost, name); g != nil {
		return g.Status(), true
	}
	return st, false
}

// localGroup is this node's group of the incarnation p of quorum queue name in vhost (nil:
// it runs none).
func (n *Node) localGroup(p QuorumPlacement, vhost, name string) *quorumGroup {
	n.quorum.mu.Lock()
	defer n.quorum.mu.Unlock()
	for g := range n.quorum.groups {
		if g.vhost == vhost && g.name == name && g.epoch == p.Epoch {
			return g
		}
	}
	return nil
}

// recordMembers records in the metadata, off the caller's goroutine, that nodes have
// completed a membership change of g (kind: memberJoined or memberRemoved), then clears
// g.changing.
func (n *Node) recordMembers(g *quorumGroup, nodes []string, kind string) {
	go func() {
		defer g.changing.Store(false)
		for _, m := range nodes {
			if _, err := n.proposeMember(context.Background(), g.vhost, g.name, m, kind); err != nil {
				n.log.Warn("cluster: recording a quorum queue replica "+kind, "vhost", g.vhost, "queue", g.name, "node", m, "err", err)
				return
			}
		}
	}()
}

// Done implements broker.QuorumGroup: closed when the node stops.
func (g *quorumGroup) Done() <-chan struct{} { return g.n.stop }

// Close implements broker.QuorumGroup: the queue is deleted; the node stops watching for it
// and deletes its replica of the group (log, snapshot) on a goroutine of its own: Close runs
// where the metadata log applies the delete, on the host's loop, which DeleteGroup waits for.
func (g *quorumGroup) Close() {
	g.n.quorum.remove(g)
	go func() {
		if err := g.n.host.DeleteGroup(g.ID()); err != nil && !errors.Is(err, multiraft.ErrClosed) {
			g.n.log.Error("cluster: deleting a quorum queue's group", "vhost", g.vhost, "queue", g.name, "err", err)
		}
	}()
}

// quorumWatch tells the quorum queues of a node when the metadata takes another node for
// dead. There is one notion of dead in a cluster: the metadata's node_down, proposed by its
// leader after cluster.node_timeout of silence (watchMembers); the quorum queues follow it
// rather than running a detector of their own with another timeout.
type quorumWatch struct {
	mu     sync.Mutex
	groups map[*quorumGroup]bool
	// unsettled are the placed groups whose voters may differ from the metadata's members
	// (opened since, or the members changed: gen); reconcileQuorum looks at them only.
	unsettled map[*quorumGroup]bool
	gen       uint64
	// down: the nodes the queues were told about, until the metadata brings them up again.
	down map[string]bool
}

func newQuorumWatch() *quorumWatch {
	return &quorumWatch{groups: map[*quorumGroup]bool{}, unsettled: map[*quorumGroup]bool{}, down: map[string]bool{}}
}

func (w *quorumWatch) add(g *quorumGroup) {
	w.mu.Lock()
	w.groups[g] = true
	if g.placed {
		w.unsettled[g] = true
	}
	w.mu.Unlock()
}

func (w *quorumWatch) remove(g *quorumGroup) {
	w.mu.Lock()
	delete(w.groups, g)
	delete(w.unsettled, g)
	w.mu.Unlock()
}

// quorumWatchLoop looks at the metadata's dead members every quorumWatchEvery until the node
// stops. A member newly taken for dead (node_down) is told to every quorum queue, whose
// NodeDown takes back its checkouts; every node proposes it (the command is idempotent, and
// whichever node leads a queue's group, one of them gets it through). A member brought back
// (node_up, node_restarted) is forgotten, so that its next death counts again. The current
// state is read, not the log's history: a node replaying old node_downs at start does not
// take back checkouts their nodes made since. A queue opened later than a node_down still
// gets it: the loop tells every group it has not told (the command is idempotent). A
// restarted node takes its own checkouts back at once (openQuorum), not after a timeout.
func (n *Node) quorumWatchLoop() {
	t := time.NewTicker(quorumWatchEvery)
	defer t.Stop()
	told := map[*quorumGroup]map[string]bool{}
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		var down []string
		for name := range n.members() {
			if name != n.cfg.NodeName && n.meta.IsDown(name) {
				down = append(down, name)
			}
		}
		w := n.quorum
		w.mu.Lock()
		var newlyDown []string
		for _, name := range down {
			if !w.down[name] {
				w.down[name] = true
				newlyDown = append(newlyDown, name)
			}
		}
		for name := range w.down {
			if !slices.Contains(down, name) {
				delete(w.down, name)
			}
		}
		groups := make([]*quorumGroup, 0, len(w.groups))
		for g := range w.groups {
			groups = append(groups, g)
		}
		w.mu.Unlock()
		for _, name := range newlyDown {
			n.log.Warn("cluster: member taken for dead; its quorum queue checkouts are taken back", "node", name, "queues", len(groups))
		}
		live := make(map[*quorumGroup]bool, len(groups))
		for _, g := range groups {
			live[g] = true
			seen := told[g]
			if seen == nil {
				seen = map[string]bool{}
				told[g] = seen
			}
			for name := range seen {
				if !slices.Contains(down, name) {
					delete(seen, name) // back: its next death counts again
				}
			}
			for _, name := range down {
				if !seen[name] {
					seen[name] = true
					g.nodeDown(name)
				}
			}
		}
		for g := range told {
			if !live[g] {
				delete(told, g)
			}
		}
		n.reconcileQuorum()
	}
}

// quorumChangeTimeout bounds one membership change of a quorum queue's group; a change not
// done by then is tried again at a later tick.
const quorumChangeTimeout = 30 * time.Second

// reconcileQuorum makes the groups this node leads follow the metadata's members: one
// AddMember or RemoveMember at a time per group, on a goroutine of its own. Only the groups
// that may differ are looked at (opened since, or any member set changed since: the
// metadata's generation), so that an idle node with thousands of groups does nothing here.
// An added member is in the metadata first (quorum_member add): it opens the group as a
// joiner, and the group's leader, whichever node it is by then, adds it to the Raft
// configuration. A removed one is marked leaving (delete): the leader takes it out of the
// configuration, then any replica that applied that records it removed, and only then does
// the removed node delete its copy, so that the group keeps its majority throughout.
func (n *Node) reconcileQuorum() {
	w := n.quorum
	gen := n.meta.MembersGen()
	w.mu.Lock()
	if gen != w.gen {
		w.gen = gen
		for g := range w.groups {
			if g.placed {
				w.unsettled[g] = true
			}
		}
	}
	groups := make([]*quorumGroup, 0, len(w.unsettled))
	for g := range w.unsettled {
		groups = append(groups, g)
	}
	w.mu.Unlock()
	for _, g := range groups {
		p, ok := n.meta.QuorumPlacement(g.vhost, g.name)
		if !ok || p.Epoch != g.epoch || p.Members == nil {
			w.settle(g) // deleted: the broker closes it
			continue
		}
		want := slices.DeleteFunc(slices.Clone(p.Members), func(m string) bool { return slices.Contains(p.Leaving, m) })
		cur := g.Members()
		if len(cur) == 0 {
			continue // joining: no configuration yet
		}
		var gone []string // leaving and out of the configuration: their copies may go
		for _, m := range p.Leaving {
			if !slices.Contains(cur, m) {
				gone = append(gone, m)
			}
		}
		// Joining and in the configuration this replica applied (committed entries only):
		// recorded joined, by a replica other than the joiner, whose own configuration may
		// list itself before any commit (a creator re-added bootstraps with the voters).
		var joined []string
		for _, m := range p.Joining {
			if m != n.cfg.NodeName && slices.Contains(cur, m) {
				joined = append(joined, m)
			}
		}
		if slices.Equal(cur, want) && len(p.Leaving) == len(gone) && len(gone) == 0 && len(p.Joining) == 0 {
			w.settle(g)
			continue
		}
		if !g.changing.CompareAndSwap(false, true) {
			continue
		}
		if len(joined) > 0 {
			n.recordMembers(g, joined, memberJoined)
			continue
		}
		if len(gone) > 0 {
			// Any replica that applied the removal says so (the removed node itself may
			// never learn that the entry removing it committed).
			n.recordMembers(g, gone, memberRemoved)
			continue
		}
		if l, ok := g.Leader(); !ok || l != n.cfg.NodeName {
			g.changing.Store(false)
			continue // the leader does it; this node looks again while they differ
		}
		var node string
		add := true
		for _, m := range want {
			if !slices.Contains(cur, m) {
				node = m
				break
			}
		}
		if node == "" {
			add = false
			for _, m := range cur {
				if !slices.Contains(want, m) {
					node = m
					break
				}
			}
		}
		if node == "" {
			g.changing.Store(false)
			continue
		}
		go func() {
			defer g.changing.Store(false)
			ctx, cancel := context.WithTimeout(context.Background(), quorumChangeTimeout)
			defer cancel()
			var err error
			if add {
				err = g.AddMember(ctx, node)
			} else {
				err = g.RemoveMember(ctx, node)
			}
			if err != nil && !errors.Is(err, multiraft.ErrClosed) {
				n.log.Warn("cluster: changing a quorum queue's replicas", "vhost", g.vhost, "queue", g.name, "node", node, "add", add, "err", err)
				return
			}
			n.log.Info("cluster: quorum queue replicas changed", "vhost", g.vhost, "queue", g.name, "node", node, "add", add)
		}()
	}
}

// settle takes g off the groups reconcileQuorum looks at.
func (w *quorumWatch) settle(g *quorumGroup) {
	w.mu.Lock()
	delete(w.unsettled, g)
	w.mu.Unlock()
}

// members is the current cluster.nodes.
func (n *Node) members() map[string]string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.nodes
}
