package broker

import (
	"context"
	"math/rand/v2"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/exchange"
	"github.com/warrenmq/warren/persistence"
	"github.com/warrenmq/warren/queue"
)

// TopologyReplicator makes a node one member of a cluster's shared topology. When the broker has
// one (SetReplicator), declare, delete, bind and unbind (and the drop of a closing connection's
// exclusive queues) are not applied directly: the front end's call checks what only this node
// can check (permissions, arguments, limits), then proposes the change through the replicator and
// waits until the replicated log has applied it here. The log applies every change on every node
// in the same order through ApplyTopology, which updates the local registry; whether a change is
// refused (404, 405, 406) is decided by the log's state machine, the same way on every node.
//
// Replicate is called with no lock of the broker held: consensus is never waited for under a
// lock that routing needs.
type TopologyReplicator interface {
	// LocalNode is this node's name in the cluster.
	LocalNode() string
	// Replicate proposes op and returns once this node has applied it, with the state
	// machine's verdict (nil: applied).
	Replicate(ctx context.Context, op TopologyOp) (TopologyResult, *amqp.Error)
}

// TopologyKind is what a TopologyOp does.
type TopologyKind uint8

// The kinds of topology change.
const (
	OpDeclareExchange TopologyKind = iota + 1
	OpDeleteExchange
	OpDeclareQueue
	OpDeleteQueue
	OpBind
	OpUnbind
	// OpDropOwner deletes the exclusive queues of a closed connection (Owner on OwnerNode).
	OpDropOwner
	// OpQuorumMembers changes a quorum queue's replicas to Members (the log applies it; a
	// front end never proposes it): a node added opens the queue's group, a node removed
	// closes it and drops its copy, and reaches the queue through Home like the others.
	OpQuorumMembers
)

// TopologyOp is one change of a vhost's topology: what a front end asked for (Replicate), and
// what the log decided to apply (ApplyTopology, with Home and OwnerNode filled in).
type TopologyOp struct {
	Kind  TopologyKind
	VHost string
	// Exchange is the exchange declared (OpDeclareExchange) or deleted (its Name).
	Exchange ExchangeSpec
	// Queue is the queue declared (OpDeclareQueue, its Name never empty) or deleted (its Name).
	Queue QueueSpec
	// Binding is the binding added or removed (OpBind, OpUnbind).
	Binding BindingSpec
	// IfUnused and IfEmpty are exchange.delete's and queue.delete's flags.
	IfUnused, IfEmpty bool
	// Owner is the acting connection on its node (OwnerNode): the owner of an exclusive queue
	// declared, the one allowed to use one.
	Owner     OwnerID
	OwnerNode string
	// Home is the node a declared queue lives on (decided by the log from x-queue-leader-locator),
	// or the node that holds a declared x-delayed-message exchange's messages (its declaring
	// node).
	Home string
	// Members are a quorum queue's replicas (OpDeclareQueue, OpQuorumMembers): the nodes that
	// run its group; nil: every node. The others reach the queue through Home, a member.
	Members []string
	// Epoch identifies one incarnation of a queue (the log index of its declare): a delete
	// proposed after a local removal (auto-delete, x-expires) names the incarnation it removed,
	// so it never deletes a queue declared again under the name since. 0 matches any.
	Epoch uint64
}

// TopologyResult is what applying a change produced on this node.
type TopologyResult struct {
	// Messages is the number of messages a deleted queue held (queue.delete-ok).
	Messages int
	// Epoch is the incarnation of the queue declared or found.
	Epoch uint64
}

// remoteOwner owns, on this node, the exclusive queues of another node's connections: no local
// connection has this id, so none may use them (405), as in RabbitMQ.
const remoteOwner = ^OwnerID(0)

// incarnationMask is the part of an owner proposed to the cluster that names the process
// (incarnation) of its node; the rest is the connection's id on it (connection ids restart at 1
// with every process and stay below 2^32).
const incarnationMask = OwnerID(0xffffffff) << 32

// SetReplicator makes the broker a cluster member (see TopologyReplicator). Call it before any
// front end serves; nil (the default) is a single node. It draws this process's incarnation.
func (b *Broker) SetReplicator(r TopologyReplicator) {
	b.replicator = r
	// 1..2^31: never 0 (an untagged owner) nor remoteOwner's all-ones.
	b.incarnation = OwnerID(rand.Uint32N(1<<31)+1) << 32
}

// Incarnation identifies this process among the starts of its cluster node: the high 32 bits of
// every owner it proposes (TopologyOp.Owner). An exclusive queue whose owner has another
// incarnation of this node belonged to a connection of an earlier process, gone with it.
func (b *Broker) Incarnation() uint64 { return uint64(b.incarnation) }

// IncarnationOf is the incarnation part of an owner proposed to the cluster.
func IncarnationOf(owner uint64) uint64 { return owner & uint64(incarnationMask) }

// clusterOwner is a local owner as proposed to the cluster: tagged with this incarnation.
func (b *Broker) clusterOwner(o OwnerID) OwnerID { return o&^incarnationMask | b.incarnation }

// Home is the node the queue lives on; "" for a queue of this node (always so on a single node).
// A queue homed elsewhere takes part in routing, but this node holds none of its messages.
func (qs *Queue) Home() string { return qs.home }

// CheckExchangeEquivalent is exchange.declare's equivalence check of a redeclare m of an exchange
// declared as cur, with RabbitMQ's 406: the check a cluster's state machine makes, so that every
// node decides alike.
func CheckExchangeEquivalent(vhost string, cur, m ExchangeSpec) *amqp.Error {
	ex := &Exchange{name: cur.Name, durable: cur.Durable, autoDelete: cur.AutoDelete, internal: cur.Internal, args: cur.Args}
	if cur.Type == delayedType {
		// x-delayed-type must name a type the node can build (the cluster's log checks a new
		// exchange as cur too, so that no node applies one it cannot build).
		if _, err := parseDelayedType(cur.Args); err != nil {
			return err
		}
		ex.delayed = &delayedExchange{} // only its type name takes part in the check
	} else {
		kind, ok := exchange.ParseKind(cur.Type)
		if !ok {
			return amqp.Errorf(amqp.CommandInvalid, "unknown exchange type '%s'", cur.Type)
		}
		ex.kind = kind
	}
	if _, ok := exchange.ParseKind(m.Type); !ok && m.Type != delayedType {
		return amqp.Errorf(amqp.CommandInvalid, "unknown exchange type '%s'", m.Type)
	}
	v := &VHost{name: vhost}
	return v.checkExchangeEquivalent(ex, m)
}

// CheckQueueEquivalent is queue.declare's equivalence check of a redeclare m of a queue declared
// as cur, with RabbitMQ's 406 (see CheckExchangeEquivalent).
func CheckQueueEquivalent(vhost string, cur, m QueueSpec) *amqp.Error {
	v := &VHost{name: vhost}
	qs := &Queue{name: cur.Name, declDur: cur.Durable, autoDelete: cur.AutoDelete, exclusive: cur.Exclusive, args: cur.Args}
	return v.checkQueueEquivalent(qs, m)
}

// DefaultExchanges are the exchanges every vhost has from the start, by name, with their
// types ("" is the default exchange).
func DefaultExchanges() map[string]string {
	out := map[string]string{"": exchange.Direct.String()}
	for _, d := range defaultExchanges {
		out[d.name] = d.kind.String()
	}
	return out
}

// replicate proposes op for a; the front-end half of every replicated change.
func (v *VHost) replicate(a Actor, op TopologyOp) (TopologyResult, *amqp.Error) {
	op.VHost = v.name
	op.Owner = v.b.clusterOwner(a.Owner)
	op.OwnerNode = v.b.replicator.LocalNode()
	return v.b.replicator.Replicate(context.Background(), op)
}

// replicatedDeclareQueue is DeclareQueue through the log, once the actor's checks passed.
func (v *VHost) replicatedDeclareQueue(a Actor, name string, m QueueSpec) (*Queue, *amqp.Error) {
	v.mu.RLock()
	_, exists := v.queues[name]
	var err *amqp.Error
	if !exists {
		var spec queueSpec
		spec, err = v.checkNewQueue(a, name, m)
		if err == nil && spec.stream {
			// The stream's own checks (its arguments, durable, not exclusive), made here so
			// that a declare the home node would refuse never reaches the log.
			_, err = checkStreamDeclare(name, v.name, m)
		}
	}
	v.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	m.Name = name
	if _, err := v.replicate(a, TopologyOp{Kind: OpDeclareQueue, Queue: m}); err != nil {
		return nil, err
	}
	v.awaitQuorumOpen(name)
	v.mu.Lock()
	defer v.mu.Unlock()
	qs := v.queues[name]
	if qs == nil {
		// Deleted by a change applied between ours and this lookup (another node's delete).
		return nil, v.errNoQueue(name)
	}
	v.touchLocked(qs)
	return qs, nil
}

// replicatedDeleteQueue is DeleteQueue through the log. if-unused and if-empty are checked
// here, on the queue's home node; a queue homed on another node is deleted without them (its
// consumers and messages are there: forwarding the check is the cluster's next step).
func (v *VHost) replicatedDeleteQueue(a Actor, name string, ifUnused, ifEmpty bool) (int, *amqp.Error) {
	v.mu.RLock()
	qs := v.queues[name]
	var err *amqp.Error
	if qs != nil && qs.home == "" && (!qs.exclusive || qs.owner == a.Owner) {
		st := qs.infoCounts() // a quorum queue's log counts
		switch {
		case ifUnused && st.Consumers > 0:
			err = amqp.Errorf(amqp.PreconditionFailed, "queue '%s' in vhost '%s' in use", name, v.name)
		case ifEmpty && st.Ready > 0:
			err = amqp.Errorf(amqp.PreconditionFailed, "queue '%s' in vhost '%s' is not empty", name, v.name)
		}
	}
	v.mu.RUnlock()
	if err != nil {
		return 0, err
	}
	res, err := v.replicate(a, TopologyOp{Kind: OpDeleteQueue, Queue: QueueSpec{Name: name}, IfUnused: ifUnused, IfEmpty: ifEmpty})
	return res.Messages, err
}

// replicatedBind is Bind and Unbind through the log. A binding the source's router would refuse
// (bad headers arguments) is refused here, before it reaches the log, so that applying it
// cannot fail on any node.
func (v *VHost) replicatedBind(a Actor, kind TopologyKind, b BindingSpec) *amqp.Error {
	if kind == OpBind {
		v.mu.RLock()
		src := v.exchanges[b.Source]
		v.mu.RUnlock()
		if src != nil {
			if _, err := exchange.NewRouter(src.kind).Bind(exchange.Binding{Destination: b.Destination, ToExchange: b.ToExchange, Key: b.Key, Args: b.Args}); err != nil {
				return amqp.AsError(err)
			}
		}
	}
	_, err := v.replicate(a, TopologyOp{Kind: kind, Binding: b})
	return err
}

// replicatedDropExclusive is DropExclusive through the log. An exclusive queue always lives on
// its connection's node, so this node knows whether the connection owns any: most connections
// own none, and their close writes nothing to the log.
func (v *VHost) replicatedDropExclusive(owner OwnerID) {
	v.mu.RLock()
	owns := false
	for _, qs := range v.queues {
		if qs.exclusive && qs.owner == owner && qs.home == "" {
			owns = true
			break
		}
	}
	v.mu.RUnlock()
	if !owns {
		return
	}
	if _, err := v.replicate(Actor{Owner: owner}, TopologyOp{Kind: OpDropOwner}); err != nil {
		v.b.log.Error("cluster: dropping a closed connection's exclusive queues", "vhost", v.name, "err", err)
	}
}

// ownerFor is the local owner of an exclusive queue the log says is owned by op's connection:
// that connection if it is one of this process, else remoteOwner. A connection of an earlier
// process of this node (replayed after a restart) is gone: its id may be reused by a new
// connection, which must not take the queue over.
func (b *Broker) ownerFor(op TopologyOp) OwnerID {
	if !op.Queue.Exclusive {
		return 0
	}
	if op.OwnerNode == b.replicator.LocalNode() && op.Owner&incarnationMask == b.incarnation {
		return op.Owner &^ incarnationMask
	}
	return remoteOwner
}

// ApplyTopology makes this node's registry follow one change decided by the cluster's log: the
// log's state machine calls it on every node, in log order, for changes it accepted (refusals
// change nothing). It checks nothing the state machine decided; a change already in place (a
// replay after a restart) changes nothing. A vhost this node does not have is skipped (its
// configuration differs: the cluster's config digest reports it).
func (b *Broker) ApplyTopology(op TopologyOp) (TopologyResult, *amqp.Error) {
	v := b.VHost(op.VHost)
	if v == nil {
		b.log.Warn("cluster: topology change for a vhost this node does not have", "vhost", op.VHost, "kind", op.Kind)
		return TopologyResult{}, nil
	}
	switch op.Kind {
	case OpDeclareExchange:
		return TopologyResult{}, v.applyDeclareExchange(op.Exchange, op.Home)
	case OpDeleteExchange:
		var sw storeWaits
		v.mu.Lock()
		if ex := v.exchanges[op.Exchange.Name]; ex != nil {
			v.removeExchangeLocked(ex, &sw)
		}
		v.mu.Unlock()
		sw.wait(b, "deleting durable exchange")
	case OpDeclareQueue:
		err := v.applyDeclareQueue(op)
		v.setUnapplied(op.Queue.Name, err != nil && op.Home == b.replicator.LocalNode())
		return TopologyResult{Epoch: op.Epoch}, err
	case OpDeleteQueue:
		v.setUnapplied(op.Queue.Name, false)
		v.mu.Lock()
		qs := v.queues[op.Queue.Name]
		if qs == nil || (op.Epoch != 0 && qs.epoch.Load() != 0 && qs.epoch.Load() != op.Epoch) {
			v.mu.Unlock()
			return TopologyResult{}, nil
		}
		qs.removedByLog = true
		v.removeQueueLocked(qs)
		v.mu.Unlock()
		return TopologyResult{Messages: v.finishQueueRemoval(qs)}, nil
	case OpBind:
		return TopologyResult{}, v.applyBind(op.Binding)
	case OpUnbind:
		v.applyUnbind(op.Binding)
	case OpQuorumMembers:
		v.applyQuorumMembers(op)
	}
	return TopologyResult{}, nil
}

// applyDeclareExchange creates an exchange the log declared. An x-delayed-message exchange
// holds its messages on its home node (delayed.go): there it is a delayed exchange of this
// node's delayer; elsewhere its delayed publishes are forwarded to the home.
func (v *VHost) applyDeclareExchange(m ExchangeSpec, home string) *amqp.Error {
	kind, ok := exchange.ParseKind(m.Type)
	var delayed *delayedExchange
	remote := ""
	if m.Type == delayedType {
		k, err := parseDelayedType(m.Args) // checked by the proposing node: cannot fail
		if err != nil {
			return err
		}
		kind, ok = k, true
		delayed = &delayedExchange{v: v}
		if home != "" && home != v.b.replicator.LocalNode() {
			remote = home
			delayed.home.Store(&remote)
		}
	}
	if !ok {
		return amqp.Errorf(amqp.CommandInvalid, "unknown exchange type '%s'", m.Type)
	}
	v.mu.Lock()
	if ex := v.exchanges[m.Name]; ex != nil {
		var sw storeWaits
		if ex.delayed != nil && remote != "" && ex.delayed.remoteHome() == "" {
			// Restored from this node's store as one of its own (the store does not know
			// homes) before the log said where it lives: its held messages are the home's.
			v.b.delayed.unregister(ex, &sw)
			ex.delayed.home.Store(&remote)
		}
		v.mu.Unlock()
		sw.wait(v.b, "deleting delayed exchange")
		return nil
	}
	if delayed != nil && remote == "" {
		delayed.inc = v.b.delayed.newIncarnation()
	}
	ex := &Exchange{name: m.Name, kind: kind, durable: m.Durable, autoDelete: m.AutoDelete, internal: m.Internal,
		args: m.Args, router: exchange.NewRouter(kind), delayed: delayed}
	var synced chan error
	var sw storeWaits
	if ex.durable && v.b.store != nil {
		args, aerr := encodeArgs(ex.args)
		if aerr != nil {
			v.mu.Unlock()
			return aerr
		}
		var done func(error)
		done, synced = submitted()
		v.b.store.PutExchangeAsync(persistence.ExchangeRecord{VHost: v.name, Name: ex.name, Kind: ex.typeName(), Durable: true,
			AutoDelete: ex.autoDelete, Internal: ex.internal, Args: args}, done)
		if delayed != nil && remote == "" {
			v.b.store.PutDelayedExchangeAsync(v.name, ex.name, delayed.inc, sw.add(v.b, "storing delayed exchange"))
		}
	}
	if delayed != nil && remote == "" {
		v.b.delayed.register(ex)
	}
	ex.alternate = v.alternateLocked(ex)
	v.exchanges[ex.name] = ex
	v.mu.Unlock()
	sw.wait(v.b, "storing delayed exchange")
	return wait(synced, "storing exchange")
}

// applyDeclareQueue creates a queue the log declared: a real one on its home node, a remote
// entry for routing elsewhere.
func (v *VHost) applyDeclareQueue(op TopologyOp) *amqp.Error {
	m := op.Queue
	local := op.Home == v.b.replicator.LocalNode()
	v.mu.Lock()
	for done, ok := v.deleting[m.Name]; ok && local; done, ok = v.deleting[m.Name] {
		v.mu.Unlock()
		<-done
		v.mu.Lock()
	}
	if qs := v.queues[m.Name]; qs != nil {
		// Restored from this node's store before the log replayed: its stored epoch names its
		// incarnation, so a replayed delete of an earlier queue of the name does not match it.
		// A record stored before epochs were (0) adopts the first declare replayed; a replayed
		// delete of an earlier incarnation can then still remove it (docs/cluster.md).
		qs.epoch.CompareAndSwap(0, op.Epoch)
		v.mu.Unlock()
		return nil
	}
	if spec, _ := parseQueueArgs(m.Args); spec.quorum {
		// Every node has a quorum queue: its messages are in the queue's Raft group.
		v.mu.Unlock()
		qs, handled, err := v.openQuorum(op, spec)
		if handled {
			if err == nil {
				v.mu.Lock()
				v.registerQuorumLocked(qs)
				v.mu.Unlock()
			}
			return err
		}
		v.mu.Lock()
	}
	owner := v.b.ownerFor(op)
	if !local {
		qs := v.newRemoteQueue(m, op.Home, owner)
		qs.epoch.Store(op.Epoch)
		v.queues[m.Name] = qs
		v.mu.Unlock()
		return nil
	}
	qs, synced, err := v.newQueue(Actor{Owner: owner}, m.Name, m, op.Epoch)
	if err != nil {
		v.mu.Unlock()
		v.b.log.Error("cluster: applying a queue declare", "vhost", v.name, "queue", m.Name, "err", err)
		return err
	}
	v.mu.Unlock()
	if qs.spec.stream {
		// A stream homed here: newQueue reserved its name, its log is created (files synced)
		// without v.mu, as DeclareQueue does on a single node. The other nodes have a remote
		// entry: publishes are forwarded here, their consumers proxied (stream.go).
		if synced, err = v.openReservedStream(qs, m); err != nil {
			v.b.log.Error("cluster: opening a declared stream", "vhost", v.name, "queue", m.Name, "err", err)
			return err
		}
	}
	if err := wait(synced, "storing queue"); err != nil {
		v.b.log.Error("cluster: storing a declared queue", "vhost", v.name, "queue", m.Name, "err", err)
		return err
	}
	return nil
}

// newRemoteQueue is the entry of a queue homed on another node: it routes like the queue, holds
// no messages and takes no consumers. With a Forwarder (the cluster's data link) a message
// routed to it goes to the home node (publishSplit), and with a Proxy its consumers and gets
// are the home's (RemoteQueue); without them, its closed queue refuses a message as a full
// reject-publish queue does (a confirm is a basic.nack) instead of keeping it here, where no
// consumer of the queue would ever see it. Call with v.mu held.
func (v *VHost) newRemoteQueue(m QueueSpec, home string, owner OwnerID) *Queue {
	spec, _ := parseQueueArgs(m.Args) // valid: checked by the node that proposed the declare
	// Auto-deletion and expiry are the home node's (its consumers are there): a remote entry
	// has no expiry timer, and removeQueueLocked leaves it alone unless the log removes it.
	qs := &Queue{v: v, name: m.Name, declDur: m.Durable, exclusive: m.Exclusive, autoDelete: m.AutoDelete,
		owner: owner, args: m.Args, spec: spec, home: home}
	qs.q = queue.New(m.Name, queue.NoLimits(), queue.Hooks{})
	qs.q.Close()
	return qs
}

func (v *VHost) applyBind(b BindingSpec) *amqp.Error {
	args, aerr := encodeArgs(b.Args)
	if aerr != nil {
		return aerr
	}
	v.mu.Lock()
	durable, err := v.bindingEnds(Actor{Owner: remoteOwner}, b.Source, b.Destination, b.ToExchange)
	if err != nil && err.Code != amqp.ResourceLocked {
		v.mu.Unlock()
		return err
	}
	if err != nil { // locked: exclusivity was the state machine's to decide
		durable = v.exchanges[b.Source] != nil && v.exchanges[b.Source].durable && v.queues[b.Destination].durable
	}
	synced, err := v.addBindingLocked(b, args, durable)
	v.mu.Unlock()
	if err != nil {
		return err
	}
	return wait(synced, "storing binding")
}

func (v *VHost) applyUnbind(b BindingSpec) {
	args, aerr := encodeArgs(b.Args)
	if aerr != nil {
		return
	}
	eb := exchange.Binding{Destination: b.Destination, ToExchange: b.ToExchange, Key: b.Key, Args: b.Args}
	var sw storeWaits
	v.mu.Lock()
	src := v.exchanges[b.Source]
	if src != nil && src.router.Unbind(eb) {
		durable := src.durable
		if b.ToExchange {
			durable = durable && v.exchanges[b.Destination] != nil && v.exchanges[b.Destination].durable
		} else {
			durable = durable && v.queues[b.Destination] != nil && v.queues[b.Destination].durable
		}
		if durable && v.b.store != nil {
			v.b.store.DeleteBindingAsync(b.record(v.name, args), sw.add(v.b, "deleting durable binding"))
		}
		v.maybeAutoDeleteExchangeLocked(src, &sw)
	}
	v.mu.Unlock()
	sw.wait(v.b, "deleting durable binding")
}

// proposeLocalRemoval tells the cluster that a queue went on this node by itself (auto-delete
// after its last consumer, x-expires, its exclusive owner closing on a single code path): the
// other nodes drop their entry for it. It runs on its own goroutine: the removal is done here
// already, and its caller may hold no promise of waiting for consensus.
func (v *VHost) proposeLocalRemoval(qs *Queue) {
	r := v.b.replicator
	if r == nil || qs.removedByLog || qs.home != "" {
		return
	}
	op := v.localRemovalOp(qs)
	go func() {
		if _, err := r.Replicate(context.Background(), op); err != nil {
			v.b.log.Error("cluster: replicating the removal of a queue", "vhost", v.name, "queue", qs.name, "err", err)
		}
	}()
}

// localRemovalOp is the log's removal of qs, this incarnation of it, decided by this node
// (an auto-delete, an exclusive owner gone, an expiry).
func (v *VHost) localRemovalOp(qs *Queue) TopologyOp {
	return TopologyOp{Kind: OpDeleteQueue, VHost: v.name, Queue: QueueSpec{Name: qs.name}, Epoch: qs.epoch.Load(),
		Owner: v.b.clusterOwner(qs.owner), OwnerNode: v.b.replicator.LocalNode()}
}

// ErrNoQueue is RabbitMQ's 404 for a missing queue, as the core words it.
func ErrNoQueue(vhost, name string) *amqp.Error { return (&VHost{name: vhost}).errNoQueue(name) }

// ErrNoExchange is RabbitMQ's 404 for a missing exchange, as the core words it.
func ErrNoExchange(vhost, name string) *amqp.Error { return (&VHost{name: vhost}).errNoExchange(name) }

// ErrLocked is RabbitMQ's 405 for an exclusive queue of another connection, as the core words it.
func ErrLocked(vhost, name string) *amqp.Error { return (&VHost{name: vhost}).errLocked(name) }
