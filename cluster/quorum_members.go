package cluster

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/warrenmq/warren/amqp"
)

// Membership changes of quorum queues, as rabbitmq-queues' add_member, delete_member, grow
// and shrink. Each change is one quorum_member command of the metadata log (any node may
// propose it); the nodes then follow it: an added node opens the queue's group as a joiner,
// a removed one deletes its copy, and the group's leader changes the Raft configuration
// (reconcileQuorum).

// AddQuorumMember adds node to the replicas of quorum queue name in vhost. The new replica
// catches up from the group's leader (a snapshot and the log's tail) after this returns.
func (n *Node) AddQuorumMember(ctx context.Context, vhost, name, node string) error {
	return n.quorumMember(ctx, vhost, name, node, memberAdd)
}

// DeleteQuorumMember removes node from the replicas of quorum queue name in vhost; that node
// deletes its copy of the queue's log. Removing the last replica is refused (406).
func (n *Node) DeleteQuorumMember(ctx context.Context, vhost, name, node string) error {
	return n.quorumMember(ctx, vhost, name, node, memberDelete)
}

func (n *Node) quorumMember(ctx context.Context, vhost, name, node, change string) error {
	c := Command{Op: OpQuorumMember, VHost: vhost, Name: name, Node: node, Type: change}
	ctx, cancel := context.WithTimeout(ctx, DefaultProposeTimeout)
	defer cancel()
	out, err := n.mg.Propose(ctx, c.Encode())
	if err != nil {
		return amqp.Errorf(amqp.InternalError, "cluster metadata unavailable: %s %s of queue '%s' in vhost '%s': %v", change, node, name, vhost, err)
	}
	var res Result
	switch v := out.(type) {
	case Result:
		res = v
	case *Applying:
		if res, err = v.Wait(ctx); err != nil {
			return amqp.Errorf(amqp.InternalError, "cluster: %s %s of queue '%s' in vhost '%s' is decided but not yet applied on this node: %v", change, node, name, vhost, err)
		}
	default:
		return amqp.Errorf(amqp.InternalError, "cluster: the log returned %T for a metadata command", out)
	}
	if e := res.Err(); e != nil {
		return e
	}
	return nil
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
// have one there (rabbitmq-queues grow), in vhost and name order.
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
		mc := MemberChange{VHost: k[0], Name: k[1], Size: len(p.Members)}
		if mc.Err = n.AddQuorumMember(ctx, k[0], k[1], node); mc.Err == nil {
			mc.Size++
		}
		out = append(out, mc)
	}
	return out, nil
}

// ShrinkQuorum removes node from the replicas of every quorum queue that has one there
// (rabbitmq-queues shrink); a queue whose only replica it is keeps it and reports the 406.
func (n *Node) ShrinkQuorum(ctx context.Context, node string) []MemberChange {
	var out []MemberChange
	for _, k := range sortedQueues(n.meta.QuorumQueues("")) {
		p, _ := n.meta.QuorumPlacement(k[0], k[1])
		if !slices.Contains(p.Members, node) {
			continue
		}
		mc := MemberChange{VHost: k[0], Name: k[1], Size: len(p.Members)}
		if mc.Err = n.DeleteQuorumMember(ctx, k[0], k[1], node); mc.Err == nil {
			mc.Size--
		}
		out = append(out, mc)
	}
	return out
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
