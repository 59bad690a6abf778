package cluster

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/cluster/multiraft"
)

// Membership changes of quorum queues, as rabbitmq-queues' add_member, delete_member, grow
// and shrink. Each change is one quorum_member command of the metadata log (any node may
// propose it); the nodes then follow it: an added node opens the queue's group as a joiner,
// a removed one deletes its copy, and the group's leader changes the Raft configuration
// (reconcileQuorum).

// AddQuorumMember adds node to the replicas of quorum queue name in vhost and returns once
// the group's Raft configuration has node as a voter, committed (as RabbitMQ's add_member
// returns once the member joined): the new replica catches up from the group's leader (a
// snapshot and the log's tail) meanwhile. Any node may run it: a replica other than node
// records in the metadata that node joined (quorum_member "joined") once it applied a
// configuration with it. Past MemberChangeTimeout (or ctx's end) the call fails; the member
// stays in the metadata and the group's leader keeps adding it.
func (n *Node) AddQuorumMember(ctx context.Context, vhost, name, node string) error {
	mc := []MemberChange{{VHost: vhost, Name: name}}
	n.changeMembers(ctx, mc, node, true)
	return mc[0].Err
}

// DeleteQuorumMember removes node from the replicas of quorum queue name in vhost and returns
// once the group's committed Raft configuration no longer has it (the metadata records it
// removed only then); that node deletes its copy of the queue's log. Removing the last
// replica is refused (406). Past MemberChangeTimeout (or ctx's end) the call fails; the
// node stays marked leaving and the group's leader keeps removing it.
func (n *Node) DeleteQuorumMember(ctx context.Context, vhost, name, node string) error {
	mc := []MemberChange{{VHost: vhost, Name: name}}
	n.changeMembers(ctx, mc, node, false)
	return mc[0].Err
}

// MemberChangeTimeout bounds AddQuorumMember and DeleteQuorumMember as a whole (the metadata
// change and the Raft configuration change): below warren ctl's default HTTP timeout (30 s),
// so that the operator gets this error rather than a client timeout.
var MemberChangeTimeout = 25 * time.Second

// memberPoll is how often a membership change's caller looks whether it is committed.
const memberPoll = 20 * time.Millisecond

func memberChangeContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, MemberChangeTimeout)
}

// awaitMember waits until the change of node's membership of the queue incarnation epoch is
// committed in its Raft group, as the metadata shows it from any node: a replica other than
// node records an added node joined (quorum_member "joined") only after it applied a
// configuration with it (a replica applies only committed entries), and a removed one
// removed (quorum_member "removed") only after it applied the configuration without it
// (reconcileQuorum).
func (n *Node) awaitMember(ctx context.Context, vhost, name, node string, epoch uint64, add bool) error {
	what := "join"
	if !add {
		what = "leave"
	}
	t := time.NewTicker(memberPoll)
	defer t.Stop()
	for {
		p, ok := n.meta.QuorumPlacement(vhost, name)
		if !ok || p.Epoch != epoch {
			return amqp.Errorf(amqp.NotFound, "no queue '%s' in vhost '%s' (deleted while node '%s' was to %s its Raft group)", name, vhost, node, what)
		}
		if add {
			if slices.Contains(p.Members, node) && !slices.Contains(p.Joining, node) {
				return nil
			}
		} else if !slices.Contains(p.Members, node) {
			return nil
		}
		select {
		case <-ctx.Done():
			return amqp.Errorf(amqp.InternalError, "timed out waiting for node '%s' to %s the Raft group of quorum queue '%s' in vhost '%s' (%v): the change is in the cluster metadata and the group's leader keeps trying", node, what, name, vhost, ctx.Err())
		case <-n.stop:
			return amqp.Errorf(amqp.InternalError, "node stopping while node '%s' was to %s the Raft group of quorum queue '%s' in vhost '%s'", node, what, name, vhost)
		case <-t.C:
		}
	}
}

// proposeMember proposes one quorum_member command and returns once it is applied here, with
// its result (the queue's epoch).
func (n *Node) proposeMember(ctx context.Context, vhost, name, node, change string) (Result, error) {
	c := Command{Op: OpQuorumMember, VHost: vhost, Name: name, Node: node, Type: change}
	ctx, cancel := context.WithTimeout(ctx, DefaultProposeTimeout)
	defer cancel()
	out, err := n.mg.Propose(ctx, c.Encode())
	if err != nil {
		return Result{}, amqp.Errorf(amqp.InternalError, "cluster metadata unavailable: %s %s of queue '%s' in vhost '%s': %v", change, node, name, vhost, err)
	}
	var res Result
	switch v := out.(type) {
	case Result:
		res = v
	case *Applying:
		if res, err = v.Wait(ctx); err != nil {
			return res, amqp.Errorf(amqp.InternalError, "cluster: %s %s of queue '%s' in vhost '%s' is decided but not yet applied on this node: %v", change, node, name, vhost, err)
		}
	default:
		return res, amqp.Errorf(amqp.InternalError, "cluster: the log returned %T for a metadata command", out)
	}
	if e := res.Err(); e != nil {
		return res, e
	}
	return res, nil
}

// MemberChange is one queue's outcome of Grow or Shrink.
type MemberChange struct {
	VHost, Name string
	// Size is the number of replicas after the change (before it when Err is set).
	Size int
	Err  error
}

// GrowSelection is which queues Grow adds a replica to, as rabbitmq-queues grow's arguments.
type GrowSelection struct {
	// Even: only the queues with an even number of replicas (rabbitmq-queues' "even"),
	// else every matching queue ("all").
	Even bool
	// VHostPattern and QueuePattern are regular expressions the vhost and queue names must
	// match, as rabbitmq-queues' --vhost-pattern and --queue-pattern; "" matches all.
	VHostPattern, QueuePattern string
}

// GrowQuorum adds node as a replica of every quorum queue the selection picks that does not
// have one there (rabbitmq-queues grow), in vhost and name order. Every change is proposed
// first and then waited for (each as AddQuorumMember: committed in the queue's group), so
// that the groups' leaders add the replicas in parallel; MemberChangeTimeout (or ctx) bounds
// the whole.
func (n *Node) GrowQuorum(ctx context.Context, node string, sel GrowSelection) ([]MemberChange, error) {
	vre, err := compilePattern(sel.VHostPattern)
	if err != nil {
		return nil, err
	}
	qre, err := compilePattern(sel.QueuePattern)
	if err != nil {
		return nil, err
	}
	var out []MemberChange
	for _, k := range sortedQueues(n.meta.QuorumQueues("")) {
		p, _ := n.meta.QuorumPlacement(k[0], k[1])
		if p.Members == nil || slices.Contains(p.Members, node) || !vre.MatchString(k[0]) || !qre.MatchString(k[1]) {
			continue
		}
		if sel.Even && len(p.Members)%2 != 0 {
			continue
		}
		out = append(out, MemberChange{VHost: k[0], Name: k[1], Size: len(p.Members)})
	}
	n.changeMembers(ctx, out, node, true)
	return out, nil
}

// ShrinkQuorum removes node from the replicas of every quorum queue that has one there
// (rabbitmq-queues shrink), each as DeleteQuorumMember (committed in the queue's group); a
// queue whose only replica it is keeps it and reports the 406. As GrowQuorum, every change is
// proposed first and then waited for.
func (n *Node) ShrinkQuorum(ctx context.Context, node string) []MemberChange {
	var out []MemberChange
	for _, k := range sortedQueues(n.meta.QuorumQueues("")) {
		p, _ := n.meta.QuorumPlacement(k[0], k[1])
		if !slices.Contains(p.Members, node) {
			continue
		}
		out = append(out, MemberChange{VHost: k[0], Name: k[1], Size: len(p.Members)})
	}
	n.changeMembers(ctx, out, node, false)
	return out
}

// changeMembers adds node to (or removes it from) every queue of changes, setting each one's
// Size (after the change) or Err: all proposals first, then the waits, under one deadline.
func (n *Node) changeMembers(ctx context.Context, changes []MemberChange, node string, add bool) {
	ctx, cancel := memberChangeContext(ctx)
	defer cancel()
	epochs := make([]uint64, len(changes))
	for i := range changes {
		mc := &changes[i]
		change := memberDelete
		if add {
			change = memberAdd
		}
		res, err := n.proposeMember(ctx, mc.VHost, mc.Name, node, change)
		mc.Err, epochs[i] = err, res.Epoch
	}
	for i := range changes {
		mc := &changes[i]
		if mc.Err != nil {
			continue
		}
		if mc.Err = n.awaitMember(ctx, mc.VHost, mc.Name, node, epochs[i], add); mc.Err == nil {
			if add {
				mc.Size++
			} else {
				mc.Size--
			}
		}
	}
}

// QuorumMembers is the placement of quorum queue name in vhost as the metadata has it.
func (n *Node) QuorumMembers(vhost, name string) (QuorumPlacement, bool) {
	return n.meta.QuorumPlacement(vhost, name)
}

func sortedQueues(m map[[2]string]QuorumPlacement) [][2]string {
	keys := make([][2]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [2]string) int {
		if c := strings.Compare(a[0], b[0]); c != 0 {
			return c
		}
		return strings.Compare(a[1], b[1])
	})
	return keys
}

// compilePattern compiles a rabbitmq-queues pattern ("" matches everything).
func compilePattern(p string) (*regexp.Regexp, error) {
	if p == "" {
		p = ".*"
	}
	re, err := regexp.Compile(p)
	if err != nil {
		return nil, fmt.Errorf("cluster: pattern %q: %w", p, err)
	}
	return re, nil
}

// QuorumView is a quorum queue as this node sees it: what the management API shows of it
// (RabbitMQ's leader, members and online) and, when this node runs a replica, that replica's
// Raft state.
type QuorumView struct {
	// Members are the queue's replicas (the metadata's placement: every cluster member for a
	// queue declared before placement), sorted; those being removed are still members.
	Members []string
	// Online are the members the metadata takes for running (neither down nor gone).
	Online []string
	// Leader is the group's Raft leader as this node's replica knows it; "" when this node
	// runs no replica or no leader is known.
	Leader string
	// Home is the member that the nodes outside the group reach the queue through.
	Home string
	// Local is this node's replica; nil when the node runs none.
	Local *QuorumReplica
}

// QuorumReplica is the Raft state of this node's replica of a quorum queue's group.
type QuorumReplica struct {
	multiraft.GroupStatus
	multiraft.LogStatus
}

// QuorumViews are the quorum queues of vhost ("" every vhost), keyed by {vhost, name}, as
// QuorumView describes them. One pass over this node's groups: the management API lists
// thousands of queues through it.
func (n *Node) QuorumViews(vhost string) map[[2]string]QuorumView {
	placed := n.meta.QuorumQueues(vhost)
	local := map[[2]string]*quorumGroup{}
	n.quorum.mu.Lock()
	for g := range n.quorum.groups {
		if p, ok := placed[[2]string{g.vhost, g.name}]; ok && p.Epoch == g.epoch {
			local[[2]string{g.vhost, g.name}] = g
		}
	}
	n.quorum.mu.Unlock()
	vb := viewBuilder{n: n, running: map[string]bool{}}
	out := make(map[[2]string]QuorumView, len(placed))
	for k, p := range placed {
		out[k] = vb.view(p, local[k])
	}
	return out
}

// QuorumView is the view of quorum queue name in vhost; ok is false when there is no such
// quorum queue.
func (n *Node) QuorumView(vhost, name string) (QuorumView, bool) {
	p, ok := n.meta.QuorumPlacement(vhost, name)
	if !ok {
		return QuorumView{}, false
	}
	vb := viewBuilder{n: n, running: map[string]bool{}}
	return vb.view(p, n.localGroup(p, vhost, name)), true
}

// viewBuilder builds QuorumViews, asking the metadata once per node whether it runs.
type viewBuilder struct {
	n       *Node
	every   []string
	running map[string]bool
}

func (vb *viewBuilder) view(p QuorumPlacement, g *quorumGroup) QuorumView {
	v := QuorumView{Members: p.Members, Home: p.Home}
	if v.Members == nil {
		if vb.every == nil {
			vb.every = slices.Sorted(maps.Keys(vb.n.members()))
		}
		v.Members = vb.every
	}
	for _, m := range v.Members {
		up, seen := vb.running[m]
		if !seen {
			up = vb.n.meta.Running(m)
			vb.running[m] = up
		}
		if up {
			v.Online = append(v.Online, m)
		}
	}
	if g != nil {
		r := &QuorumReplica{GroupStatus: g.Status(), LogStatus: g.LogStatus()}
		v.Local, v.Leader = r, r.Leader
	}
	return v
}
