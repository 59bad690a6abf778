package node

import (
	"context"
	"errors"
	"slices"
	"strings"
	"unicode"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/cluster"
	"github.com/warrenmq/warren/cluster/multiraft"
	"github.com/warrenmq/warren/mgmt"
)

// Quorum queue membership changes (mgmt.QuorumMembership), through the cluster node.

func quorumError(err error) error {
	var e *amqp.Error
	if errors.As(err, &e) {
		return apiError(e)
	}
	return err
}

// AddQuorumMember implements mgmt.QuorumMembership.
func (m *Management) AddQuorumMember(ctx context.Context, vhost, name, node string) error {
	if m.quorum == nil {
		return mgmt.ErrNotCluster()
	}
	return quorumError(m.quorum.AddQuorumMember(ctx, vhost, name, node))
}

// DeleteQuorumMember implements mgmt.QuorumMembership.
func (m *Management) DeleteQuorumMember(ctx context.Context, vhost, name, node string) error {
	if m.quorum == nil {
		return mgmt.ErrNotCluster()
	}
	return quorumError(m.quorum.DeleteQuorumMember(ctx, vhost, name, node))
}

// GrowQuorum implements mgmt.QuorumMembership.
func (m *Management) GrowQuorum(ctx context.Context, node string, even bool, vhostPattern, queuePattern string) ([]mgmt.MemberChange, error) {
	if m.quorum == nil {
		return nil, mgmt.ErrNotCluster()
	}
	res, err := m.quorum.GrowQuorum(ctx, node, cluster.GrowSelection{Even: even, VHostPattern: vhostPattern, QueuePattern: queuePattern})
	return changes(res), err
}

// ShrinkQuorum implements mgmt.QuorumMembership.
func (m *Management) ShrinkQuorum(ctx context.Context, node string) []mgmt.MemberChange {
	if m.quorum == nil {
		return nil
	}
	return changes(m.quorum.ShrinkQuorum(ctx, node))
}

func changes(res []cluster.MemberChange) []mgmt.MemberChange {
	out := make([]mgmt.MemberChange, 0, len(res))
	for _, c := range res {
		mc := mgmt.MemberChange{VHost: c.VHost, Name: c.Name, Size: c.Size}
		if c.Err != nil {
			mc.Error = c.Err.Error()
		}
		out = append(out, mc)
	}
	return out
}

// Quorum queues' replicas in the management API: /api/queues' leader, members and online,
// the rabbitmq_raft_* metrics, and quorum_status (mgmt.QuorumStatuser).

// quorumViews are the cluster's views of vhost's quorum queues (nil on a single node).
func (m *Management) quorumViews(vhost string) map[[2]string]cluster.QuorumView {
	if m.quorum == nil {
		return nil
	}
	return m.quorum.QuorumViews(vhost)
}

// quorumView is quorumViews for one queue.
func (m *Management) quorumView(vhost, name string) map[[2]string]cluster.QuorumView {
	if m.quorum == nil {
		return nil
	}
	v, ok := m.quorum.QuorumView(vhost, name)
	if !ok {
		return nil
	}
	return map[[2]string]cluster.QuorumView{{vhost, name}: v}
}

// addQuorum fills in a quorum queue's replicas from views. On a single node a quorum queue is
// a group of one, this node, which leads it (RabbitMQ shows the same for a one-node cluster).
func (m *Management) addQuorum(info *mgmt.QueueInfo, views map[[2]string]cluster.QuorumView) {
	if m.quorum == nil {
		info.Members, info.Online, info.Leader = []string{m.node}, []string{m.node}, m.node
		return
	}
	v, ok := views[[2]string{info.VHost, info.Name}]
	if !ok {
		return // declared or deleted between the two reads
	}
	info.Members, info.Online, info.Leader = v.Members, v.Online, shownLeader(v)
	if r := v.Local; r != nil {
		info.Raft = &mgmt.RaftInfo{Term: r.Term, CommitIndex: r.Commit, LastIndex: r.LastIndex, AppliedIndex: r.Applied, Snapshot: r.SnapshotIndex}
	}
}

// shownLeader is the leader /api/queues shows for a quorum queue: the Raft leader this node's
// replica knows, or else the queue's home (through which the nodes outside the group reach it),
// or else its first member. RabbitMQ always gives a node name there, never null, and clients
// decode it as a string.
func shownLeader(v cluster.QuorumView) string {
	switch {
	case v.Leader != "":
		return v.Leader
	case v.Home != "":
		return v.Home
	case len(v.Members) > 0:
		return v.Members[0]
	}
	return ""
}

// raftName is a raft state's name as rabbitmq-queues prints it: StateLeader -> leader,
// StatePreCandidate -> pre_candidate, StateReplicate -> replicate.
func raftName(s string) string {
	s = strings.TrimPrefix(s, "State")
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// QuorumStatus implements mgmt.QuorumStatuser: the queue's members, each with what this node
// knows of its Raft state (its own replica's in full; every member's log progress when it
// leads the group).
func (m *Management) QuorumStatus(vhost, name string) (mgmt.QuorumStatus, error) {
	v := m.b.VHost(vhost)
	if v == nil {
		return mgmt.QuorumStatus{}, mgmt.NotFound("no vhost '%s'", vhost)
	}
	q, ok := v.QueueInfo(name)
	if !ok {
		return mgmt.QuorumStatus{}, mgmt.NotFound("no queue '%s' in vhost '%s'", name, vhost)
	}
	if !q.Quorum {
		return mgmt.QuorumStatus{}, mgmt.BadRequest("queue '%s' in vhost '%s' is not a quorum queue (classic_queue_not_supported)", name, vhost)
	}
	if m.quorum == nil {
		return mgmt.QuorumStatus{}, mgmt.BadRequest("quorum queue '%s' in vhost '%s' runs no Raft group on a single node (it is a durable queue of this node alone): quorum_status needs a cluster", name, vhost)
	}
	view, ok := m.quorum.QuorumView(vhost, name)
	if !ok {
		return mgmt.QuorumStatus{}, mgmt.NotFound("no queue '%s' in vhost '%s'", name, vhost)
	}
	st := mgmt.QuorumStatus{Node: m.node, Leader: view.Leader, Members: view.Members, Online: view.Online}
	progress := map[string]multiraft.PeerProgress{}
	if r := view.Local; r != nil {
		st.Voters = r.Members
		if st.Voters == nil {
			st.Voters = []string{} // joining: no configuration yet
		}
		for _, p := range r.Peers {
			progress[p.Node] = p
		}
	}
	// The members, and the voters that are not (yet or any more) members.
	nodes := slices.Clone(view.Members)
	for _, n := range st.Voters {
		if !slices.Contains(nodes, n) {
			nodes = append(nodes, n)
		}
	}
	slices.Sort(nodes)
	for _, n := range nodes {
		rs := mgmt.ReplicaStatus{Node: n, Online: slices.Contains(view.Online, n)}
		if r := view.Local; r != nil && n == m.node {
			rs.ReportedBy, rs.RaftState = "self", raftName(r.State)
			rs.Term, rs.Commit, rs.Applied, rs.LastIndex, rs.Snapshot = r.Term, r.Commit, r.Applied, r.LastIndex, r.SnapshotIndex
		}
		if p, ok := progress[n]; ok {
			rs.HasProgress, rs.Match, rs.Replication, rs.RecentActive = true, p.Match, raftName(p.State), p.RecentActive
			if rs.ReportedBy == "" {
				rs.ReportedBy = "leader"
				if p.RecentActive {
					// It answered this leader within an election timeout, in its term:
					// it follows it.
					rs.RaftState = "follower"
				}
			}
		}
		st.Replicas = append(st.Replicas, rs)
	}
	return st, nil
}
