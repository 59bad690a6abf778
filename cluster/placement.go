package cluster

import (
	"cmp"
	"slices"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// Quorum queue placement: which nodes run a quorum queue's Raft group. The metadata log
// decides it when it applies the declare (so every node agrees without talking), records it
// in the queue's record (Members, Voters), and changes it only through quorum_member
// commands (warren ctl add_member, delete_member, grow, shrink).

// defaultQuorumGroupSize is RabbitMQ's default for x-quorum-initial-group-size.
const defaultQuorumGroupSize = 3

// isQuorum reports whether a declare's arguments make a quorum queue.
func isQuorum(args amqp.Table) bool {
	s, _ := args["x-queue-type"].(string)
	return s == "quorum"
}

// quorumGroupSize is x-quorum-initial-group-size (validated by the declaring node: a
// positive integer), or the default.
func quorumGroupSize(args amqp.Table) int {
	n, ok := broker.IntArg(args["x-quorum-initial-group-size"])
	if !ok {
		return defaultQuorumGroupSize
	}
	if n < 1 {
		return defaultQuorumGroupSize
	}
	return int(min(n, 1<<16))
}

// placeQuorum chooses a new quorum queue's replicas and its leader (returned as its home), as
// RabbitMQ does: x-quorum-initial-group-size members (default 3) among the running members
// (set_nodes, neither down nor gone), capped at their number. The leader is the declaring
// node (client-local, the default) or, for balanced, the running member leading the fewest
// quorum queues; the other replicas are the running members holding the fewest quorum-queue
// replicas (name order on a tie). Before any set_nodes was applied the queue lives on every
// node (nil members), as quorum queues did before placement.
func (m *Metadata) placeQuorum(c Command, args amqp.Table) (home string, members []string) {
	if len(m.st.Nodes) == 0 {
		return c.Node, nil
	}
	var live []string
	for _, n := range m.st.Nodes {
		if !m.isDownOrGone(n) {
			live = append(live, n)
		}
	}
	if len(live) == 0 {
		return c.Node, []string{c.Node}
	}
	replicas, leaders := m.quorumLoad()
	loc, _ := args["x-queue-leader-locator"].(string)
	if _, set := args["x-queue-leader-locator"]; !set {
		loc = c.Locator
	}
	if loc != "balanced" && slices.Contains(live, c.Node) {
		home = c.Node
	} else {
		home = slices.MinFunc(live, func(a, b string) int {
			return cmp.Or(cmp.Compare(leaders[a], leaders[b]), cmp.Compare(replicas[a], replicas[b]), cmp.Compare(a, b))
		})
	}
	others := slices.DeleteFunc(slices.Clone(live), func(n string) bool { return n == home })
	slices.SortFunc(others, func(a, b string) int {
		return cmp.Or(cmp.Compare(replicas[a], replicas[b]), cmp.Compare(a, b))
	})
	size := min(quorumGroupSize(args), len(live))
	members = append([]string{home}, others[:size-1]...)
	slices.Sort(members)
	return home, members
}

// isDownOrGone reports whether node is taken for dead or left the cluster (m.mu held).
func (m *Metadata) isDownOrGone(node string) bool {
	_, down := slices.BinarySearch(m.st.Down, node)
	_, gone := slices.BinarySearch(m.st.Gone, node)
	return down || gone
}

// quorumLoad counts, per node, the quorum-queue replicas it runs and the quorum queues it
// was chosen to lead (m.mu held). A queue with nil members counts on every member.
func (m *Metadata) quorumLoad() (replicas, leaders map[string]int) {
	replicas, leaders = map[string]int{}, map[string]int{}
	for _, vs := range m.st.VHosts {
		for _, q := range vs.Queues {
			args, _ := decodeArgs(q.Args)
			if !isQuorum(args) {
				continue
			}
			leaders[q.Home]++
			members := q.Members
			if members == nil {
				members = m.st.Nodes
			}
			for _, n := range members {
				replicas[n]++
			}
		}
	}
	return replicas, leaders
}

// The changes a quorum_member command makes (Command.Type).
const (
	memberAdd    = "add"
	memberDelete = "delete"
	// memberRemoved completes a delete: the group's configuration no longer has the node.
	memberRemoved = "removed"
	// memberJoined completes an add: the group's committed configuration has the node.
	memberJoined = "joined"
)

// quorumMember applies quorum_member for node c.Node of quorum queue c.Name. add makes it a
// replica at once (it joins the group, whose leader adds it). delete marks it leaving: the
// group's leader takes it out of the Raft configuration first and then proposes removed,
// which takes it out of Members (its copy is deleted then). Adding a member already there
// and deleting one that is not (or is already leaving) are no-ops, so grow and shrink
// repeat them freely; the last member cannot be removed (406), as in RabbitMQ, and a member
// being removed cannot be added back until it is gone (406). A leaving home is replaced by
// the first remaining member: the nodes that are not replicas reach the queue through it.
func (m *Metadata) quorumMember(vs *vhostState, c Command) Result {
	q := vs.Queues[c.Name]
	if q == nil || (c.Epoch != 0 && q.Epoch != c.Epoch) {
		return resultOf(amqp.Errorf(amqp.NotFound, "no queue '%s' in vhost '%s'", c.Name, c.VHost))
	}
	args, _ := decodeArgs(q.Args)
	if !isQuorum(args) {
		return resultOf(amqp.Errorf(amqp.PreconditionFailed, "queue '%s' in vhost '%s' is not a quorum queue", c.Name, c.VHost))
	}
	if q.Members == nil {
		return resultOf(amqp.Errorf(amqp.PreconditionFailed, "quorum queue '%s' in vhost '%s' was declared before replica placement: it runs on every node and its members cannot change", c.Name, c.VHost))
	}
	has := slices.Contains(q.Members, c.Node)
	leaving := slices.Contains(q.Leaving, c.Node)
	ok := Result{Epoch: q.Epoch, Home: q.Home}
	switch c.Type {
	case memberAdd:
		if !slices.Contains(m.st.Nodes, c.Node) {
			return resultOf(amqp.Errorf(amqp.NotFound, "node '%s' is not a cluster member", c.Node))
		}
		if m.isDownOrGone(c.Node) {
			// As RabbitMQ's add_member ({error, node_not_running}): a replica on a node that
			// is down runs nothing, and a queue of one replica would wait for it.
			return resultOf(amqp.Errorf(amqp.PreconditionFailed, "node '%s' is not running (node_not_running); quorum queue '%s' in vhost '%s' keeps its members", c.Node, c.Name, c.VHost))
		}
		if leaving {
			return resultOf(amqp.Errorf(amqp.PreconditionFailed, "node '%s' is being removed from quorum queue '%s' in vhost '%s'; add it again once it is gone", c.Node, c.Name, c.VHost))
		}
		if has {
			return ok
		}
		q.Members = append(slices.Clone(q.Members), c.Node)
		slices.Sort(q.Members)
		q.Joining = append(slices.Clone(q.Joining), c.Node)
		slices.Sort(q.Joining)
	case memberJoined:
		if !slices.Contains(q.Joining, c.Node) {
			return ok
		}
		q.Joining = withoutNode(q.Joining, c.Node)
		m.membersGen++
		return ok // the replicas do not change
	case memberDelete:
		if !has || leaving {
			return ok
		}
		if len(q.Members)-len(q.Leaving) == 1 {
			return resultOf(amqp.Errorf(amqp.PreconditionFailed, "cannot remove node '%s', the last member of quorum queue '%s' in vhost '%s'", c.Node, c.Name, c.VHost))
		}
		q.Leaving = append(slices.Clone(q.Leaving), c.Node)
		slices.Sort(q.Leaving)
		m.membersGen++
		if q.Home != c.Node {
			return ok // the replicas' roles change once it is out of the group (removed)
		}
		q.Home = staying(q)[0]
	default: // memberRemoved
		if !leaving {
			return ok
		}
		q.Leaving = withoutNode(q.Leaving, c.Node)
		q.Joining = withoutNode(q.Joining, c.Node) // removed before it was recorded joined
		q.Members = slices.DeleteFunc(slices.Clone(q.Members), func(n string) bool { return n == c.Node })
	}
	m.membersGen++
	m.apply(broker.TopologyOp{Kind: broker.OpQuorumMembers, VHost: c.VHost, Queue: broker.QueueSpec{Name: c.Name}, Home: q.Home,
		Epoch: q.Epoch, Members: slices.Clone(q.Members)})
	return Result{Epoch: q.Epoch, Home: q.Home}
}

// withoutNode is list without node, nil when nothing is left (list is not modified).
func withoutNode(list []string, node string) []string {
	out := slices.DeleteFunc(slices.Clone(list), func(n string) bool { return n == node })
	if len(out) == 0 {
		return nil
	}
	return out
}

// staying are q's members that are not leaving.
func staying(q *queueRec) []string {
	return slices.DeleteFunc(slices.Clone(q.Members), func(n string) bool { return slices.Contains(q.Leaving, n) })
}

// rehomeQuorum moves the home of the quorum queues homed on node, which went down or left,
// to their first running member (m.mu held): the nodes that are not replicas reach a queue
// through its home, and a queue whose home is down would answer 404 to a declare. A queue
// with no running member keeps its home.
func (m *Metadata) rehomeQuorum(node string) {
	for _, vn := range sortedKeys(m.st.VHosts) {
		vs := m.st.VHosts[vn]
		for _, qn := range sortedKeys(vs.Queues) {
			q := vs.Queues[qn]
			if q.Home != node || q.Members == nil {
				continue
			}
			st := staying(q)
			i := slices.IndexFunc(st, func(n string) bool { return !m.isDownOrGone(n) })
			if i < 0 {
				continue
			}
			q.Home = st[i]
			m.apply(broker.TopologyOp{Kind: broker.OpQuorumMembers, VHost: vn, Queue: broker.QueueSpec{Name: qn}, Home: q.Home,
				Epoch: q.Epoch, Members: slices.Clone(q.Members)})
		}
	}
}

// QuorumPlacement is a quorum queue's placement as the metadata has it now.
type QuorumPlacement struct {
	// Members run the queue's group (nil: every node, a queue declared before placement);
	// Voters are the members it was created with; Leaving the members being removed;
	// Joining the members added whose group has not committed them yet; Home is the member
	// that nodes outside the group reach it through.
	Members, Voters, Leaving, Joining []string
	Home                              string
	Epoch                             uint64
}

// QuorumPlacement is the placement of quorum queue name in vhost; ok is false when no queue
// of that name is a quorum queue.
func (m *Metadata) QuorumPlacement(vhost, name string) (p QuorumPlacement, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	vs := m.st.VHosts[vhost]
	if vs == nil {
		return p, false
	}
	q := vs.Queues[name]
	if q == nil {
		return p, false
	}
	if args, _ := decodeArgs(q.Args); !isQuorum(args) {
		return p, false
	}
	return placementOf(q), true
}

// QuorumQueues are the quorum queues of vhost ("" every vhost) with their placement, keyed
// by {vhost, name}.
func (m *Metadata) QuorumQueues(vhost string) map[[2]string]QuorumPlacement {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[[2]string]QuorumPlacement{}
	for vn, vs := range m.st.VHosts {
		if vhost != "" && vn != vhost {
			continue
		}
		for qn, q := range vs.Queues {
			if args, _ := decodeArgs(q.Args); isQuorum(args) {
				out[[2]string{vn, qn}] = placementOf(q)
			}
		}
	}
	return out
}

// MembersGen changes whenever a quorum queue's members change (a quorum_member applied, a
// snapshot restored).
func (m *Metadata) MembersGen() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.membersGen
}

func placementOf(q *queueRec) QuorumPlacement {
	return QuorumPlacement{Members: slices.Clone(q.Members), Voters: slices.Clone(q.Voters), Leaving: slices.Clone(q.Leaving),
		Joining: slices.Clone(q.Joining), Home: q.Home, Epoch: q.Epoch}
}

// Running reports whether the metadata takes node for a running cluster member: neither
// down (node_down) nor gone (node_gone).
func (m *Metadata) Running(node string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.isDownOrGone(node)
}
