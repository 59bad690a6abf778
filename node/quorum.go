package node

import (
	"context"
	"errors"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/cluster"
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
