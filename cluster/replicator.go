package cluster

import (
	"context"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// Log is the replicated log the metadata goes through: a Raft group of cluster/multiraft.
// Propose returns once cmd is committed and applied on this node, with what the state
// machine's Apply returned for it.
type Log interface {
	Propose(ctx context.Context, cmd []byte) (any, error)
}

// DefaultProposeTimeout bounds how long a declare, bind or delete waits for the log: without a
// majority of the nodes, a change cannot commit, and the client gets an error instead of a
// channel that hangs.
const DefaultProposeTimeout = 10 * time.Second

// Replicator is the broker's TopologyReplicator on one node: it turns the broker's changes into
// commands of the metadata log.
type Replicator struct {
	node    string
	log     Log
	timeout time.Duration
}

// NewReplicator returns the replicator of node (its cluster.node_name) proposing to log.
func NewReplicator(node string, log Log) *Replicator {
	return &Replicator{node: node, log: log, timeout: DefaultProposeTimeout}
}

// LocalNode implements broker.TopologyReplicator.
func (r *Replicator) LocalNode() string { return r.node }

// Replicate implements broker.TopologyReplicator. When the log cannot take the change (no
// majority, this node cut off, the timeout), the answer is RabbitMQ's 541 INTERNAL_ERROR, as
// RabbitMQ answers when its metadata store cannot commit: the change may or may not be applied
// later, as with any timed-out Raft proposal, so the client must not assume either.
func (r *Replicator) Replicate(ctx context.Context, op broker.TopologyOp) (broker.TopologyResult, *amqp.Error) {
	c, err := r.command(op)
	if err != nil {
		return broker.TopologyResult{}, amqp.Errorf(amqp.InternalError, "cluster: %v", err)
	}
	for _, s := range [...]string{c.Name, c.Source, c.Destination, c.Key} {
		if !utf8.ValidString(s) {
			// The log's JSON would turn the invalid bytes into U+FFFD: every node would apply
			// another name than the client gave. Refused rather than changed.
			return broker.TopologyResult{}, amqp.Errorf(amqp.PreconditionFailed, "name or routing key %q is not valid UTF-8, which a cluster does not support", s)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	out, err := r.log.Propose(ctx, c.Encode())
	if err != nil {
		return broker.TopologyResult{}, amqp.Errorf(amqp.InternalError, "cluster metadata unavailable: %s %s in vhost '%s': %v", c.Op, c.Name, c.VHost, err)
	}
	var res Result
	switch v := out.(type) {
	case Result:
		res = v
	case *Applying:
		// Decided by the log; wait until this node's broker has applied it, so that the
		// client's next command sees it here.
		if res, err = v.Wait(ctx); err != nil {
			return broker.TopologyResult{}, amqp.Errorf(amqp.InternalError, "cluster: %s %s in vhost '%s' is decided but not yet applied on this node: %v", c.Op, c.Name, c.VHost, err)
		}
	default:
		return broker.TopologyResult{}, amqp.Errorf(amqp.InternalError, "cluster: the log returned %T for a metadata command", out)
	}
	return broker.TopologyResult{Messages: res.Messages, Epoch: res.Epoch}, res.Err()
}

// command is op as a log command proposed by this node.
func (r *Replicator) command(op broker.TopologyOp) (Command, error) {
	c := Command{VHost: op.VHost, Node: r.node, Conn: uint64(op.Owner), Epoch: op.Epoch,
		IfUnused: op.IfUnused, IfEmpty: op.IfEmpty}
	var err error
	switch op.Kind {
	case broker.OpDeclareExchange:
		x := op.Exchange
		c.Op, c.Name, c.Type, c.Durable, c.AutoDelete, c.Internal = OpDeclareExchange, x.Name, x.Type, x.Durable, x.AutoDelete, x.Internal
		c.Args, err = encodeArgs(x.Args)
	case broker.OpDeleteExchange:
		c.Op, c.Name = OpDeleteExchange, op.Exchange.Name
	case broker.OpDeclareQueue:
		q := op.Queue
		c.Op, c.Name, c.Durable, c.Exclusive, c.AutoDelete = OpDeclareQueue, q.Name, q.Durable, q.Exclusive, q.AutoDelete
		c.Args, err = encodeArgs(q.Args)
	case broker.OpDeleteQueue:
		c.Op, c.Name = OpDeleteQueue, op.Queue.Name
	case broker.OpBind, broker.OpUnbind:
		c.Op = OpBind
		if op.Kind == broker.OpUnbind {
			c.Op = OpUnbind
		}
		b := op.Binding
		c.Source, c.Destination, c.ToExchange, c.Key = b.Source, b.Destination, b.ToExchange, b.Key
		c.Args, err = encodeArgs(b.Args)
	case broker.OpDropOwner:
		c.Op = OpDropOwner
	default:
		return Command{}, fmt.Errorf("unknown topology change %d", op.Kind)
	}
	if err != nil {
		return Command{}, fmt.Errorf("encoding arguments: %w", err)
	}
	return c, nil
}
