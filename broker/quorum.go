package broker

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
	"github.com/warrenmq/warren/quorum"
)

// Quorum queues in a cluster (x-queue-type: quorum). The queue's messages live in a Raft group
// of their own (package quorum is its state machine, the cluster runs the group); every node
// has the queue, none is its home. On each node:
//
//   - a publish is an Enqueue proposal; its confirm (or tx.commit-ok) waits until the entry is
//     committed and applied here, so a majority has it on disk;
//   - the node's consumers hold a checkout (credit quorumNodeCredit) while there is at least
//     one; the messages the log assigns to the node are pushed into the Queue's local
//     queue.Queue, which dispatches them to the local consumers as for a classic queue
//     (prefetch, priorities), and acks, rejects and requeues become Settle, Discard and Return
//     proposals;
//   - two goroutines per queue: the proposer (one proposal in flight, everything submitted
//     meanwhile batched into the next) and the deliverer (pushes assignments, off the Raft
//     loop, which must stay quick).
//
// Without a cluster (or in tests whose log is not a Raft host) a quorum queue is a durable
// classic queue, as before: a group of one whose confirms mean "on this node's disk".

// QuorumGroup is a quorum queue's Raft group on this node, implemented by the cluster.
type QuorumGroup interface {
	// Propose replicates cmd and returns, once applied here, the state machine's result.
	Propose(ctx context.Context, cmd []byte) (any, error)
	// Leader is the group's current leader, if known.
	Leader() (string, bool)
	// Done is closed when the node stops.
	Done() <-chan struct{}
	// Close tells the cluster the queue is gone on this node.
	Close()
}

// QuorumGroups is implemented by a cluster replicator that runs quorum queues' groups.
type QuorumGroups interface {
	// OpenQuorum starts (or rejoins after a restart) the group of the queue declared at epoch,
	// with sm as its state machine. nodeDown is called when another node stops reporting.
	// ErrQuorumUnavailable: no group can run here (the queue stays a classic one).
	OpenQuorum(vhost, name string, epoch uint64, sm *quorum.Machine, nodeDown func(node string)) (QuorumGroup, error)
}

// ErrQuorumUnavailable is returned by QuorumGroups.OpenQuorum when the cluster has no Raft host
// to run a queue's group on.
var ErrQuorumUnavailable = errors.New("quorum queues need a Raft host")

// quorumNodeCredit is how many messages a node with consumers may hold undelivered, beyond
// those its consumers hold unacked (quorumCredit). It is a window, not a consumer's
// prefetch: large enough to keep a fast consumer busy across the Raft round trip of its acks,
// small enough that a node does not hoard a backlog that another node's idle consumer could
// take.
const quorumNodeCredit = 256

// quorumCredit is the credit a node with consumers asks for when they hold unacked deliveries
// and it has credit now: a window of quorumNodeCredit undelivered messages on top of the
// unacked ones, in steps of quorumNodeCredit (so that not every delivery proposes a
// checkout), lowered only when it is two steps too high. A consumer with unlimited prefetch
// thus gets the whole backlog, a window at a time, while consumers with a prefetch keep the
// node's share bounded by their prefetch plus the window.
func quorumCredit(unacked int, credit uint32) uint32 {
	target := (uint64(unacked)/quorumNodeCredit + 2) * quorumNodeCredit
	if unacked%quorumNodeCredit == 0 {
		target -= quorumNodeCredit
	}
	target = min(target, uint64(creditUnknown-quorumNodeCredit))
	switch {
	case credit == creditUnknown || credit == 0 || uint64(credit) < target:
		return uint32(target)
	case uint64(credit) > target+quorumNodeCredit:
		return uint32(target)
	}
	return credit
}

// creditUnknown is quorumQueue.credit when a proposal failed: no credit the consumers want
// equals it, so the next batch proposes one.
const creditUnknown = ^uint32(0)

// quorumMaxPending bounds the publishes waiting for the proposer on one node: a publisher
// beyond it waits (as flow control would), so memory stays bounded when Raft is slower than
// the publishers.
const quorumMaxPending = 8192

// quorumMaxBatch bounds one proposal's size (bytes of bodies): raft's MaxSizePerMsg is 1 MiB
// and a larger entry is sent alone, so larger batches only add latency.
const quorumMaxBatch = 1 << 20

// quorumOpTimeout bounds how long basic.get and queue.purge wait for the queue's log (no
// majority): the client gets RabbitMQ's 541 instead of a channel that hangs, as for a
// metadata change (cluster.DefaultProposeTimeout).
const quorumOpTimeout = 10 * time.Second

// quorumPromoteWait bounds how long a node waits for a due redelivery's promotion (or the
// first consumer's checkout) to be applied before it lets its consumers take more
// (promoteDue, consumerAdded): one Raft round normally; without a majority the caller goes
// on after it, unordered.
const quorumPromoteWait = 2 * time.Second

// quorumOpenTimeout bounds awaitQuorumOpen as a whole: quorumOpTimeout (shorter in tests).
var quorumOpenTimeout = quorumOpTimeout

// quorumProposeTimeout bounds how long the proposer waits for one proposal's result. The log
// may never give one (an entry applied here through a snapshot, not one by one): past it, the
// outcome is unknown. Publishes are nacked (a retry could enqueue twice); settlements,
// returns, checkouts and node-downs are proposed again (applying them twice changes nothing
// that matters), so that nothing stays held for ever. A proposer that waited without a
// bound stalled everything behind it.
const quorumProposeTimeout = 30 * time.Second

// errQuorumRefused is a publish refused by a full reject-publish quorum queue: its confirm is
// a nack.
var errQuorumRefused = errors.New("quorum queue full (reject-publish)")

var errQuorumGone = errors.New("quorum queue deleted")

type quorumOp struct {
	cmd  quorum.Command
	done func(quorum.Result, error) // nil: nothing to do with the result
	size int
	// at is this node's clock (unix ms) when a return of deliveries was decided, on a queue
	// with a redelivery delay: its age when the batch is built goes as a KindAt before it,
	// so that the delay counts from the requeue, not from the round that carries it, with
	// no skew between this node's clock and the queue's (submitReturn).
	at int64
	// clock: the batch carries this node's clock for the op (a follower's KindClock; a
	// leader's batch carries it anyway), which promotes the redeliveries due by it.
	clock bool
}

type quorumEvent struct {
	msgs    []quorum.Msg
	revoked bool
	rev     uint64 // the Revoked's number (quorum.Result.Revocation)
	// restored: a snapshot replaced the state (the Restored hook); nothing is handed on
	// until a NodeDown of this node applied after it.
	restored bool
	// flushed, when not nil, is closed by the deliverer when it reaches the event: every
	// assignment applied before it has been handed on (or given back).
	flushed chan struct{}
}

// quorumQueue is one quorum queue on this node.
type quorumQueue struct {
	qs     *Queue
	node   string
	m      *quorum.Machine
	g      QuorumGroup
	ctx    context.Context
	cancel context.CancelFunc
	stop   chan struct{}
	once   sync.Once

	// rearm tells the proposer the head's expiry changed (Applied hook).
	rearm     chan struct{}
	headArmed atomic.Int64

	mu      sync.Mutex
	cond    *sync.Cond // publishers waiting for room (quorumMaxPending)
	pending []quorumOp
	wake    chan struct{}
	// marks are deliveries made (Delivered commands), noAck no-ack deliveries (settled),
	// both proposed ahead of the next batch.
	marks, noAck []uint64
	// counted and counts are the delivery counts of redeliveries the local queue made after
	// requeueing them itself (localRequeue; a Count command), proposed with the marks.
	counted []uint64
	counts  []uint32
	// gone is set when the proposer has stopped (failPending): what is submitted after is
	// answered with errQuorumGone at once, or its confirm would never come.
	gone bool
	// credit is this node's credit in the log as last proposed (0 after a revoke);
	// creditCheck asks the proposer to compare it with what the consumers want. The proposer
	// alone decides the credit, from consumers, when it builds a batch: callers racing to
	// propose checkouts left a node with consumers at credit 0.
	credit      uint32
	creditCheck bool

	// dmu orders the deliverer's pushes against the last consumer leaving (consumerRemoved
	// empties the local queue under it): no message is pushed into a local queue after its
	// last consumer went, where it would stay. Taken above queue.Queue.mu.
	dmu sync.Mutex

	emu    sync.Mutex
	events []quorumEvent
	ewake  chan struct{}
	// ready is set by the deliverer at the Revoked of the NodeDown this process proposed at
	// open (its Revocation is readyAt, known once opened is closed; the deliverer waits for
	// it): assignments before it, replayed from the log, belonged to an earlier process of
	// the node (or, on a node restarted with a wiped data directory, to the node's whole
	// history), and that NodeDown took them back. Not at the first Revoked of this node: the
	// log replays every earlier one, and the assignments after those would reach this
	// process's consumers a second time, not flagged redelivered.
	ready     bool
	readyAt   uint64
	opened    chan struct{}
	openOnce  sync.Once
	propMu    sync.Mutex
	propAbort context.CancelFunc // ends the proposal in flight (restored)
	// revocations counts the Revoked hook's calls, as the machine counts its NodeDowns (Raft
	// loop only).
	revocations uint64

	consumers atomic.Int32
	// expiring is set while an x-expires delete of the queue is under way (expireQuorum).
	expiring atomic.Bool
	// members are the queue's replicas as this node last applied them (nil: every node);
	// v.mu guards it (applyQuorumMembers).
	members []string

	// proposeTimeout is quorumProposeTimeout (shorter in tests).
	proposeTimeout time.Duration

	// localRequeue: the local queue requeues a closing channel's deliveries itself, in their
	// place among the node's undelivered ones (by ID), instead of handing them back to the log
	// (a single-active-consumer queue without a redelivery delay). The next active consumer
	// of the node gets them first, as RabbitMQ's does: with the log's requeue it got the
	// node's undelivered window first, dispatched before the returns reached the log. The
	// local queue counts the requeue (Entry.Returns), enforces x-delivery-limit with the
	// log's limit, and the node reports the counts to the log (Count commands): with the
	// redelivery's mark, or before handing the message back (consumerRemoved, localDropped).
	localRequeue bool
	// dlx is the at-least-once dead-letter worker (nil: at-most-once; quorum_dlx.go).
	dlx *quorumDLX
	// minRedelivery is the shortest redelivery delay of the queue (ms; 0: none): a return
	// of deliveries waits at least that long in the log (quorum.Limits.RedeliveryDelay).
	minRedelivery int64
	// returnsDue are the clocks (at) of the returns of deliveries submitted and not yet
	// answered, oldest first (qq.mu): one that may be due already is not in the log's
	// delayed list yet (promoteDue).
	returnsDue []int64
	// promoting, when not nil, is closed once the promotion under way (promoteDue) has been
	// applied and handed on (qq.mu).
	promoting chan struct{}
	// promoteOp, when not nil, is closed once the clock op of the last promotion has been
	// answered (qq.mu): while it is not, and that promotion timed out (promoting nil),
	// promoteDue neither waits nor proposes again, as the log is not applying (no
	// majority), and each ack would wait the whole quorumPromoteWait on the connection's
	// reader.
	promoteOp chan struct{}
}

// openQuorum creates a quorum queue's local Queue and opens its group; handled is false when
// the cluster cannot run quorum groups (the caller declares a classic queue). Call without
// v.mu.
func (v *VHost) openQuorum(op TopologyOp, spec queueSpec) (qs *Queue, handled bool, err *amqp.Error) {
	qgs, ok := v.b.replicator.(QuorumGroups)
	if !ok {
		return nil, false, nil
	}
	if !quorumMember(op.Members, v.b.replicator.LocalNode()) {
		// Not a replica: the caller makes a remote entry homed on op.Home, a member, and the
		// data link's proxy reaches the queue there as for a classic queue homed elsewhere
		// (docs/quorum.md, Placement).
		return nil, false, nil
	}
	m := op.Queue
	qs = &Queue{v: v, name: m.Name, declDur: m.Durable, autoDelete: m.AutoDelete, args: m.Args, spec: spec}
	qs.epoch.Store(op.Epoch)
	qq := &quorumQueue{qs: qs, node: v.b.replicator.LocalNode(), stop: make(chan struct{}),
		wake: make(chan struct{}, 1), ewake: make(chan struct{}, 1), rearm: make(chan struct{}, 1), opened: make(chan struct{}),
		proposeTimeout: quorumProposeTimeout, members: slices.Clone(op.Members)}
	// The local queue only dispatches. A delivery limit of 0 makes every local requeue (a
	// channel closing with unacked deliveries, basic.recover) a drop, which localDropped
	// hands back to the log: requeueing, and the delivery count, are the log's.
	opts := queue.NoLimits()
	opts.DeliveryLimit = 0
	opts.SingleActiveConsumer = spec.opts.SingleActiveConsumer
	if spec.opts.SingleActiveConsumer && spec.opts.RedeliveryDelay <= 0 {
		// A requeue stays in the local queue, in order, for the node's next active
		// consumer (localRequeue); past the queue's delivery limit (Entry.Returns is the
		// log's count plus the local requeues) it is dropped, handed to the log, which
		// counts that return and dead-letters it. With a redelivery delay the log keeps the
		// message waiting: the requeue goes there.
		opts.DeliveryLimit = spec.opts.DeliveryLimit
		qq.localRequeue = true
	}
	qs.q = queue.New(m.Name, opts, queue.Hooks{Dropped: qq.localDropped})
	qq.cond = sync.NewCond(&qq.mu)
	qq.ctx, qq.cancel = context.WithCancel(context.Background())
	limits := quorum.Limits{MaxLength: spec.opts.MaxLength, MaxBytes: spec.opts.MaxLengthBytes, DeliveryLimit: spec.opts.DeliveryLimit,
		SingleActive: spec.opts.SingleActiveConsumer}
	limits.Overflow = quorumOverflow(spec.opts.Overflow)
	limits.RedeliveryDelay = spec.opts.RedeliveryDelay.Milliseconds()
	limits.RedeliveryMaxDelay = spec.opts.RedeliveryMaxDelay.Milliseconds()
	limits.RedeliveryBackoff = spec.opts.RedeliveryBackoff
	if limits.RedeliveryDelay > 0 {
		// The first delay is the shortest: a backoff only lengthens later ones.
		qq.minRedelivery = limits.RedeliveryDelay
		if limits.RedeliveryMaxDelay > 0 {
			qq.minRedelivery = min(qq.minRedelivery, limits.RedeliveryMaxDelay)
		}
	}
	if spec.expires > 0 {
		limits.Expires = max(spec.expires.Milliseconds(), 1)
	}
	if spec.opts.Overflow == queue.RejectPublishDLX {
		v.b.log.Warn("invalid overflow strategy reject-publish-dlx for a quorum queue: drop-head", "queue", m.Name, "vhost", v.name)
	}
	if limits.AtLeastOnce = v.quorumAtLeastOnce(m.Name, spec, limits.Overflow); limits.AtLeastOnce {
		qq.dlx = newQuorumDLX(qq) // before the machine: its DeadLettered hook reads qq.dlx
	}
	qq.m = quorum.New(limits, quorum.Hooks{Assigned: qq.assigned, Revoked: qq.revoked, Applied: qq.applied, Restored: qq.restored,
		DeadLettered: qq.dlxSignal})
	g, gerr := qgs.OpenQuorum(v.name, m.Name, op.Epoch, qq.m, qq.nodeDown)
	if errors.Is(gerr, ErrQuorumUnavailable) {
		return nil, false, nil
	}
	if gerr != nil {
		return nil, true, amqp.Errorf(amqp.InternalError, "%v", gerr)
	}
	qq.g = g
	qs.qq = qq
	// The previous process of this node (if any) held messages; they go back first, before
	// anything this process proposes.
	qq.downSelf()
	go qq.proposeLoop()
	go qq.deliverLoop()
	if qq.dlx != nil {
		go qq.dlx.run()
	}
	return qs, true, nil
}

// expireQuorum deletes the queue through the metadata log once the log found it unused for
// its x-expires (quorum.Machine.Expired): the node whose proposal applied it does, once.
// The delete runs on a goroutine of its own: it waits for the metadata log, which closes
// this queue (and so waits for this proposer). It names the queue's epoch, as
// proposeLocalRemoval does: a delete that reaches the log after the queue was deleted and
// declared again must not remove the new queue (epoch 0 matches any incarnation).
func (qq *quorumQueue) expireQuorum() {
	if !qq.expiring.CompareAndSwap(false, true) {
		return
	}
	v := qq.qs.v
	op := v.localRemovalOp(qq.qs)
	go func() {
		if _, err := v.b.replicator.Replicate(context.Background(), op); err != nil {
			qq.qs.v.b.log.Warn("quorum queue: deleting an expired queue", "queue", qq.qs.name, "vhost", qq.qs.v.name, "err", err)
			qq.expiring.Store(false) // the next proposal that finds it expired tries again
		}
	}()
}

// awaitQuorumOpen waits, when name is a quorum queue, until its group has committed this
// process's first entry (the NodeDown of openQuorum), at most quorumOpTimeout. As RabbitMQ's
// declare of a quorum queue returns once its Raft cluster has a leader: a publish right after
// declare-ok is then committed in one round, not after the new group's first election (which
// took longer than a 100 ms x-message-ttl under load, expiring the message before a
// basic.get). Call without v.mu.
func (v *VHost) awaitQuorumOpen(name string) {
	v.mu.RLock()
	qs := v.queues[name]
	v.mu.RUnlock()
	if qs == nil || qs.qq == nil {
		return
	}
	qq := qs.qq
	// One deadline for both waits: a timer's channel fires once, and a second wait on it
	// after the first ended on it never ended.
	ctx, cancel := context.WithTimeout(context.Background(), quorumOpenTimeout)
	defer cancel()
	select {
	case <-qq.opened:
	case <-ctx.Done():
	case <-qq.stop:
	case <-qq.g.Done():
	}
	if qs.spec.expires > 0 {
		// A declare renews an x-expires queue's lease (the log's use), counted from the
		// declare-ok, not from before the new group's election. Applied before the reply:
		// the client's next command may come later than x-expires after the last use the
		// log knew of.
		select {
		case <-qq.barrierWith(quorum.Command{Kind: quorum.KindTouch}):
		case <-ctx.Done():
		case <-qq.stop:
		case <-qq.g.Done():
		}
	}
}

// quorumMember reports whether node runs the group of a quorum queue with replicas members
// (nil: every node).
func quorumMember(members []string, node string) bool {
	return members == nil || slices.Contains(members, node)
}

// applyQuorumMembers follows a change of a quorum queue's replicas (OpQuorumMembers). A node
// added opens the queue's group as a joining member (the group's leader adds it and sends it
// a snapshot and the log's tail) in place of its remote entry; consumers proxied through the
// old entry keep their link channels to the home node. A node removed closes its copy of the
// group, which deletes its log and snapshot, cancels its local consumers (basic.cancel: the
// client consumes again and is proxied to a replica) and becomes a remote entry homed on
// op.Home. A node that is not a replica follows a new home (the old one went down). Anything
// else (the node's role unchanged, another incarnation) changes nothing.
func (v *VHost) applyQuorumMembers(op TopologyOp) {
	member := quorumMember(op.Members, v.b.replicator.LocalNode())
	name := op.Queue.Name
	v.mu.Lock()
	qs := v.queues[name]
	if qs == nil || (op.Epoch != 0 && qs.epoch.Load() != op.Epoch) {
		v.mu.Unlock()
		return
	}
	spec := QueueSpec{Name: name, Durable: qs.declDur, AutoDelete: qs.autoDelete, Args: qs.args}
	switch {
	case member && qs.qq == nil && qs.home != "":
		v.mu.Unlock()
		nq, handled, err := v.openQuorum(TopologyOp{Kind: OpDeclareQueue, VHost: v.name, Queue: spec, Epoch: qs.epoch.Load(), Members: op.Members}, qs.spec)
		if !handled || err != nil {
			v.b.log.Error("cluster: opening a quorum queue's group on a new member", "vhost", v.name, "queue", name, "err", err)
			return
		}
		v.mu.Lock()
		if v.queues[name] != qs {
			v.mu.Unlock()
			nq.qq.close() // deleted meanwhile
			return
		}
		e := v.effectiveLocked(nq.name, nq.spec, nq.args)
		nq.dl.Store(e.dl)
		nq.consumerTimeout.Store(int64(e.consumerTimeout))
		nq.policy = e.policy
		v.queues[name] = nq
		v.mu.Unlock()
		v.b.log.Info("cluster: this node became a replica of a quorum queue", "vhost", v.name, "queue", name)
	case !member && qs.qq != nil:
		rq := v.newRemoteQueue(spec, op.Home, qs.owner)
		rq.epoch.Store(qs.epoch.Load())
		v.queues[name] = rq
		v.mu.Unlock()
		consumers, _ := qs.q.Close()
		qs.qq.close()
		for _, c := range consumers {
			if cs, ok := c.(Consumer); ok {
				cs.QueueDeleted()
			}
		}
		v.b.log.Info("cluster: this node is no longer a replica of a quorum queue; its copy is deleted", "vhost", v.name, "queue", name, "home", op.Home)
	case !member && qs.qq == nil && qs.home != "" && op.Home != "" && qs.home != op.Home:
		// The home went down: a new entry, so that nothing reads a home that changes.
		rq := v.newRemoteQueue(spec, op.Home, qs.owner)
		rq.epoch.Store(qs.epoch.Load())
		v.queues[name] = rq
		v.mu.Unlock()
	case member && qs.qq != nil && qs.qq.members != nil && op.Members != nil:
		// Members removed are out of the group's configuration (the metadata records them
		// removed only then) and their copies close: what they held (a checkout's credit,
		// deliveries unacked) would stay theirs in the log for ever, and the log would keep
		// assigning them messages. Every remaining replica proposes their NodeDown (it is
		// idempotent). It names the removed node alone: the consumers that reach the queue
		// through the proxy are checked out in the name of the replica they reach.
		var removed []string
		for _, m := range qs.qq.members {
			if !slices.Contains(op.Members, m) {
				removed = append(removed, m)
			}
		}
		qs.qq.members = slices.Clone(op.Members)
		qq := qs.qq
		v.mu.Unlock()
		for _, node := range removed {
			qq.removedDown(node)
		}
	default:
		v.mu.Unlock()
	}
}

// removedDown proposes NodeDown for node, a replica removed from the group, again until it
// is applied (or the queue closes here): nothing else would take back what it held.
func (qq *quorumQueue) removedDown(node string) { qq.downUntilApplied(node, nil) }

// downUntilApplied proposes NodeDown for node, again until it is applied (or the queue
// closes here), dead-letters what it drops, and calls applied (if not nil) with its result.
func (qq *quorumQueue) downUntilApplied(node string, applied func(quorum.Result)) {
	qq.submit(quorum.Command{Kind: quorum.KindNodeDown, Node: node}, func(r quorum.Result, err error) {
		qq.dropped(r, err)
		if err != nil {
			if !qq.stopped() {
				qq.downUntilApplied(node, applied)
			}
			return
		}
		if applied != nil {
			applied(r)
		}
	})
}

// quorumOverflow is a quorum queue's overflow for x-overflow: reject-publish-dlx is a classic
// queue's only, and RabbitMQ's quorum queue falls back to its default, drop-head (with a
// warning), as here.
func quorumOverflow(o queue.Overflow) quorum.Overflow {
	if o == queue.RejectPublish {
		return quorum.RejectPublish
	}
	return quorum.DropHead
}

// registerQuorumLocked makes an opened quorum queue visible; call with v.mu held.
func (v *VHost) registerQuorumLocked(qs *Queue) {
	e := v.effectiveLocked(qs.name, qs.spec, qs.args)
	qs.dl.Store(e.dl)
	qs.consumerTimeout.Store(int64(e.consumerTimeout))
	// No x-expires timer here: each node sees only its own consumers and gets, so one node's
	// timer would delete a queue used on another. The log decides (quorum.Limits.Expires,
	// from the declare's x-expires; policies are per node and do not apply), and its
	// leader deletes the queue (expireQuorum).
	qs.policy = e.policy
	v.queues[qs.name] = qs
	v.b.stats.queuesCreated.Add(1)
}

// close stops the queue's goroutines; waiting publishers get an error (their confirms are
// nacks).
func (qq *quorumQueue) close() {
	qq.once.Do(func() {
		close(qq.stop)
		qq.cancel()
		qq.g.Close()
		qq.mu.Lock()
		qq.cond.Broadcast()
		qq.mu.Unlock()
	})
}

func (qq *quorumQueue) stopped() bool {
	select {
	case <-qq.stop:
		return true
	case <-qq.g.Done():
		return true
	default:
		return false
	}
}

// submit queues a command for the next proposal.
func (qq *quorumQueue) submit(cmd quorum.Command, done func(quorum.Result, error)) {
	qq.submitOp(quorumOp{cmd: cmd, done: done, size: cmdSize(&cmd)})
}

// submitOp queues op for the next proposal. An op with a clock (at) is a return of
// deliveries that may become due before it is applied: recorded in returnsDue until its
// answer.
func (qq *quorumQueue) submitOp(op quorumOp) {
	qq.mu.Lock()
	if op.at > 0 {
		qq.returnsDue = append(qq.returnsDue, op.at)
		done := op.done
		op.done = func(r quorum.Result, err error) {
			qq.mu.Lock()
			if len(qq.returnsDue) > 0 {
				qq.returnsDue = qq.returnsDue[1:]
			}
			if len(qq.returnsDue) == 0 {
				qq.returnsDue = nil
			}
			qq.mu.Unlock()
			if done != nil {
				done(r, err)
			}
		}
	}
	if qq.gone {
		qq.mu.Unlock()
		if op.done != nil {
			op.done(quorum.Result{}, errQuorumGone)
		}
		return
	}
	qq.pending = append(qq.pending, op)
	qq.mu.Unlock()
	select {
	case qq.wake <- struct{}{}:
	default:
	}
}

// submitReturn submits the return of ids, held by this node (delivered: they reached a
// client, and count a delivery). On a queue with a redelivery delay, a return of
// deliveries carries this node's clock now: the delay counts from the requeue, as a classic
// queue's does, not from the proposal that carries it one round or more later (with a 300
// ms delay and an ack 350 ms after the nack, a late proposal made the message due after the
// ack, and a later message went first).
func (qq *quorumQueue) submitReturn(ids []uint64, delivered bool, done func(quorum.Result, error)) {
	cmd := quorum.Command{Kind: quorum.KindReturn, Node: qq.node, IDs: ids, Delivered: delivered}
	op := quorumOp{cmd: cmd, done: done, size: cmdSize(&cmd)}
	if delivered && qq.minRedelivery > 0 {
		op.at = time.Now().UnixMilli()
	}
	qq.submitOp(op)
}

// promoteDue is called before this node's consumers may take more messages (an ack or a
// requeue returned credit, a basic.get, another consumer): when a delayed redelivery is due
// by this node's clock (quorum.Machine.NextRedelivery, or a return of deliveries not applied
// yet whose shortest delay has passed), it proposes this node's clock and waits until that
// is applied and what it assigned here is in the local queue, at most quorumPromoteWait. So
// the due message goes ahead of the later ones of the node's window, as on a classic queue,
// whose dispatch promotes what is due first; before, it waited for the leader's timer, and
// when that round came after the ack, a later message went first. Every replica applies the
// same clock command: the state stays the same everywhere. A due promotion already under way
// is waited for, not proposed again.
//
// It runs on the connection's reader (settle): it does not wait while the group has no
// leader (an election, the minority side of a partition), nor again after a promotion that
// timed out, until that one's clock op is answered (promoteOp); the leader's timer then
// promotes the message when the log applies again.
func (qq *quorumQueue) promoteDue() {
	if qq.minRedelivery <= 0 {
		return
	}
	if _, ok := qq.g.Leader(); !ok {
		return
	}
	timer := time.NewTimer(quorumPromoteWait)
	defer timer.Stop()
	for range 2 { // a promotion under way may have taken its clock before this one's due time
		now := time.Now().UnixMilli()
		qq.mu.Lock()
		due := len(qq.returnsDue) > 0 && qq.returnsDue[0]+qq.minRedelivery <= now
		if at := qq.m.NextRedelivery(); at > 0 && at <= now {
			due = true
		}
		if !due || qq.gone {
			qq.mu.Unlock()
			return
		}
		wait := qq.promoting
		if wait == nil && qq.promoteOp != nil {
			select {
			case <-qq.promoteOp:
				qq.promoteOp = nil
			default: // the last promotion timed out, its clock op not answered yet
				qq.mu.Unlock()
				return
			}
		}
		if wait == nil {
			wait = make(chan struct{})
			qq.promoting = wait
			qq.mu.Unlock()
			go qq.promote(wait)
		} else {
			qq.mu.Unlock()
		}
		select {
		case <-wait:
		case <-timer.C:
			return
		case <-qq.stop:
			return
		case <-qq.g.Done():
			return
		}
	}
}

// promote proposes this node's clock (behind everything submitted before: the returns
// included), waits until it is applied here and the deliverer has handed on what was
// assigned up to then, and closes wait.
func (qq *quorumQueue) promote(wait chan struct{}) {
	defer func() {
		qq.mu.Lock()
		qq.promoting = nil
		qq.mu.Unlock()
		close(wait)
	}()
	applied := make(chan struct{})
	qq.mu.Lock()
	qq.promoteOp = applied
	qq.mu.Unlock()
	qq.submitClock(applied)
	timer := time.NewTimer(quorumPromoteWait)
	defer timer.Stop()
	select {
	case <-applied:
	case <-timer.C:
		return
	case <-qq.stop:
		return
	}
	flushed := make(chan struct{})
	qq.event(quorumEvent{flushed: flushed})
	select {
	case <-flushed:
	case <-timer.C:
	case <-qq.stop:
	}
}

// publish submits a publish; a publisher (block) waits while too many are pending. The
// dead-letter path does not: it may run on this queue's own proposer.
func (qq *quorumQueue) publish(msg *queue.Message, done func(quorum.Result, error), block bool) {
	cmd := quorum.Command{Kind: quorum.KindEnqueue, Msgs: []*quorum.Msg{{Exchange: msg.Exchange, RoutingKey: msg.RoutingKey,
		Header: msg.Header, Body: msg.Body, Expires: qq.expires(msg)}}}
	qq.mu.Lock()
	for block && len(qq.pending) >= quorumMaxPending && !qq.stopped() {
		qq.cond.Wait()
	}
	if qq.gone {
		qq.mu.Unlock()
		done(quorum.Result{}, errQuorumGone)
		return
	}
	qq.pending = append(qq.pending, quorumOp{cmd: cmd, done: done, size: len(msg.Body) + len(msg.Header)})
	qq.mu.Unlock()
	select {
	case qq.wake <- struct{}{}:
	default:
	}
}

// expires is a new message's expiry (unix ms, 0 never) by this node's clock: its expiration
// property or the queue's x-message-ttl, the earlier. (Policies are per node and are not
// applied to quorum queues.)
func (qq *quorumQueue) expires(msg *queue.Message) int64 {
	var at int64
	if msg.ExpiresAt != 0 {
		at = (msg.ExpiresAt + 999_999) / 1_000_000
	}
	if ttl := qq.qs.spec.opts.MessageTTL; ttl >= 0 {
		if t := time.Now().UnixMilli() + ttl.Milliseconds(); at == 0 || t < at {
			at = t
		}
	}
	return at
}

func cmdSize(c *quorum.Command) int {
	n := 16 + 8*len(c.IDs)
	for _, m := range c.Msgs {
		n += len(m.Body) + len(m.Header)
	}
	return n
}

// proposeLoop proposes what was submitted, one batch at a time, in submission order.
func (qq *quorumQueue) proposeLoop() {
	expiry := time.NewTimer(time.Hour)
	expiry.Stop()
	defer expiry.Stop()
	tick := false
	var resAt []int // ops[i]'s result is rs[resAt[i]] (reused from batch to batch)
	for {
		select {
		case <-qq.wake:
		case <-qq.rearm:
			if at := qq.m.NextDue(); at > 0 {
				expiry.Reset(time.Until(time.UnixMilli(at + 1)))
			}
			continue
		case <-expiry.C:
			// The head's time has come: the leader proposes an empty batch (its clock moves
			// the queue's time). Every node looks again a second later while the head is
			// still there (a leader change, another node's clock).
			at := qq.m.NextDue()
			if at == 0 {
				// The head went (to a consumer, say) before its time: the next head, which
				// may be the same message returned, arms the timer again (applied).
				qq.headArmed.Store(0)
				continue
			}
			if wait := time.Until(time.UnixMilli(at + 1)); wait > 0 {
				expiry.Reset(wait)
				continue
			}
			expiry.Reset(time.Second)
			if l, ok := qq.g.Leader(); !ok || l != qq.node {
				continue
			}
			tick = true
		case <-qq.stop:
			qq.failPending(errQuorumGone)
			return
		case <-qq.g.Done():
			qq.failPending(errQuorumGone)
			return
		}
		for {
			// The unacked deliveries size the credit (quorumCredit): read before qq.mu, a leaf.
			unacked := 0
			if qq.consumers.Load() > 0 {
				unacked = qq.qs.q.Counts().Unacked
			}
			qq.mu.Lock()
			// A credit given goes last in its batch: a checkout before the returns of the same
			// batch would assign the ready messages behind them first (a requeued message must
			// come back ahead of those). A credit taken away goes first.
			var prefix, checkout []quorum.Command
			if qq.creditCheck {
				qq.creditCheck = false
				want := uint32(0)
				if qq.consumers.Load() > 0 {
					want = quorumCredit(unacked, qq.credit)
				}
				if want != qq.credit {
					qq.credit = want
					c := quorum.Command{Kind: quorum.KindCheckout, Node: qq.node, Credit: want}
					if want == 0 {
						// Down to nothing: first, or the returns of the same batch (the
						// last consumer's) would be assigned straight back to this node.
						prefix = append(prefix, c)
					} else {
						checkout = append(checkout, c)
					}
				}
			}
			if len(qq.counted) > 0 {
				prefix = append(prefix, quorum.Command{Kind: quorum.KindCount, Node: qq.node, IDs: qq.counted, Counts: qq.counts})
				qq.counted, qq.counts = nil, nil
			}
			if len(qq.marks) > 0 {
				prefix = append(prefix, quorum.Command{Kind: quorum.KindDelivered, Node: qq.node, IDs: qq.marks})
				qq.marks = nil
			}
			if len(qq.noAck) > 0 {
				prefix = append(prefix, quorum.Command{Kind: quorum.KindSettle, Node: qq.node, IDs: qq.noAck})
				qq.noAck = nil
			}
			n, size := 0, 0
			for n < len(qq.pending) && (n == 0 || size+qq.pending[n].size <= quorumMaxBatch) {
				size += qq.pending[n].size
				n++
			}
			ops := qq.pending[:n:n]
			qq.pending = qq.pending[n:]
			if len(qq.pending) == 0 {
				qq.pending = nil
			}
			qq.cond.Broadcast()
			qq.mu.Unlock()
			if len(ops) == 0 && len(prefix) == 0 && len(checkout) == 0 && !tick {
				break
			}
			tick = false
			// The queue's time comes from the leader's clock only: as the highest Now applied,
			// one node whose clock runs ahead would expire every message early.
			var now int64
			if l, ok := qq.g.Leader(); ok && l == qq.node {
				now = time.Now().UnixMilli()
			}
			batch := quorum.Command{Kind: quorum.KindBatch, Batch: prefix, Now: now}
			resAt = slices.Grow(resAt[:0], len(ops))[:len(ops)]
			clocked := now != 0
			for i := range ops {
				if k := ops[i].cmd.Kind; !clocked && (ops[i].clock || k == quorum.KindGet || k == quorum.KindReturn || k == quorum.KindTouch) {
					// A follower's basic.get or return: its clock, for this batch only, so
					// that it does not take a head that expired since the leader's last
					// proposal, and due redeliveries are promoted by it.
					batch.Batch = append(batch.Batch, quorum.Command{Kind: quorum.KindClock, Now: time.Now().UnixMilli()})
					clocked = true
				}
				if ops[i].at > 0 {
					// Its age, both ends on this node's clock (KindAt).
					age := max(time.Now().UnixMilli()-ops[i].at, 0)
					batch.Batch = append(batch.Batch, quorum.Command{Kind: quorum.KindAt, Now: age})
				}
				resAt[i] = len(batch.Batch)
				batch.Batch = append(batch.Batch, ops[i].cmd)
			}
			batch.Batch = append(batch.Batch, checkout...)
			// Bounded (a result lost to a snapshot or a dropped copy must not hold the queue
			// forever), and abortable by restored.
			pctx, abort := context.WithTimeout(qq.ctx, qq.proposeTimeout)
			qq.propMu.Lock()
			qq.propAbort = abort
			qq.propMu.Unlock()
			out, err := qq.g.Propose(pctx, batch.Encoded())
			qq.propMu.Lock()
			qq.propAbort = nil
			qq.propMu.Unlock()
			abort()
			rs, _ := out.([]quorum.Result)
			if err == nil && rs == nil {
				err, _ = out.(error)
				if err == nil {
					err = errors.New("quorum: unexpected result")
				}
			}
			if err != nil && errors.Is(err, context.DeadlineExceeded) && !qq.stopped() {
				ops = qq.retryUnknown(prefix, ops)
			}
			if err != nil {
				// A checkout in the batch may be lost: the credit is unknown, proposed again.
				qq.mu.Lock()
				qq.credit, qq.creditCheck = creditUnknown, true
				qq.mu.Unlock()
			}
			if err == nil {
				// A late Delivered mark may drop a message past the delivery limit
				// (quorum's lateMark): the prefix's proposer dead-letters it.
				for j := 0; j < len(prefix) && j < len(rs); j++ {
					qq.dropped(rs[j], nil)
				}
			}
			for i, op := range ops {
				if op.done == nil {
					continue
				}
				var r quorum.Result
				if j := resAt[i]; j < len(rs) {
					r = rs[j]
				}
				op.done(r, err)
			}
			if err == nil && len(rs) > len(batch.Batch) {
				qq.dropped(rs[len(rs)-1], nil) // messages that expired at the head
			}
			if err == nil && qq.m.Expired() {
				qq.expireQuorum()
			}
			if err != nil && qq.stopped() {
				qq.failPending(errQuorumGone)
				return
			}
			if err != nil && len(prefix) > 0 {
				// The marks and no-ack settlements go again with the next batch (both are
				// idempotent): a Delivered mark lost here would let a return or a NodeDown
				// give the message back uncounted, redelivered without the redelivered flag.
				qq.mu.Lock()
				for _, c := range prefix {
					if c.Kind == quorum.KindDelivered {
						qq.marks = append(slices.Clone(c.IDs), qq.marks...)
					} else if c.Kind == quorum.KindCount {
						qq.counted = append(slices.Clone(c.IDs), qq.counted...)
						qq.counts = append(slices.Clone(c.Counts), qq.counts...)
					} else if c.Kind == quorum.KindSettle {
						qq.noAck = append(slices.Clone(c.IDs), qq.noAck...)
					}
				}
				qq.mu.Unlock()
				// Not at once: an error that lasts (a failed group) would spin.
				select {
				case <-qq.stop:
				case <-time.After(100 * time.Millisecond):
				}
			}
			if err != nil {
				qq.qs.v.b.log.Error("quorum queue: proposal failed", "queue", qq.qs.name, "vhost", qq.qs.v.name, "err", err)
				if !errors.Is(err, context.DeadlineExceeded) {
					// At once again (the credit): not faster than this.
					select {
					case <-time.After(100 * time.Millisecond):
					case <-qq.stop:
					}
				}
			}
		}
	}
}

// retryUnknown puts the commands of a batch whose outcome is unknown (quorumProposeTimeout)
// that may be applied twice back in front of the pending ones, in order, and returns the
// others (enqueues, gets, purges), which fail.
func (qq *quorumQueue) retryUnknown(prefix []quorum.Command, ops []quorumOp) (failed []quorumOp) {
	var again []quorumOp
	for _, c := range prefix {
		// done: what a late Delivered mark drops is dead-lettered, as in the prefix.
		again = append(again, quorumOp{cmd: c, size: cmdSize(&c), done: qq.dropped})
	}
	for _, op := range ops {
		switch op.cmd.Kind {
		case quorum.KindEnqueue, quorum.KindGet, quorum.KindPurge:
			failed = append(failed, op)
		default:
			again = append(again, op)
		}
	}
	qq.mu.Lock()
	qq.pending = append(again, qq.pending...)
	qq.mu.Unlock()
	select {
	case qq.wake <- struct{}{}:
	default:
	}
	return failed
}

// applied is the state machine's Applied hook (the Raft loop): when the head's expiry
// changed, the proposer re-arms its timer, on every node (whichever leads proposes).
func (qq *quorumQueue) applied() {
	at := qq.m.NextDue()
	if at == 0 || qq.headArmed.Swap(at) == at {
		return
	}
	select {
	case qq.rearm <- struct{}{}:
	default:
	}
}

// failPending answers what waits for the stopped proposer with err; anything submitted
// later is answered at once (gone).
func (qq *quorumQueue) failPending(err error) {
	qq.mu.Lock()
	qq.gone = true
	ops := qq.pending
	qq.pending = nil
	qq.cond.Broadcast()
	qq.mu.Unlock()
	for _, op := range ops {
		if op.done != nil {
			op.done(quorum.Result{}, err)
		}
	}
}

// assigned is the state machine's Assigned hook (the Raft loop): handed to the deliverer.
func (qq *quorumQueue) assigned(node string, msgs []quorum.Msg) {
	if node != qq.node {
		return
	}
	qq.event(quorumEvent{msgs: msgs})
}

// revoked is the state machine's Revoked hook (the Raft loop).
func (qq *quorumQueue) revoked(node string) {
	qq.revocations++
	if node != qq.node {
		return
	}
	qq.event(quorumEvent{revoked: true, rev: qq.revocations})
}

func (qq *quorumQueue) event(ev quorumEvent) {
	qq.emu.Lock()
	qq.events = append(qq.events, ev)
	qq.emu.Unlock()
	select {
	case qq.ewake <- struct{}{}:
	default:
	}
}

// submitClock proposes an empty command with this node's clock (due redeliveries are
// promoted by it) and closes applied once it is answered, applied or failed.
func (qq *quorumQueue) submitClock(applied chan struct{}) {
	cmd := quorum.Command{Kind: quorum.KindDelivered, Node: qq.node} // changes nothing
	qq.submitOp(quorumOp{cmd: cmd, size: cmdSize(&cmd), clock: true, done: func(quorum.Result, error) { close(applied) }})
}

// awaitOpened waits until this process's NodeDown is applied (qq.opened); false when the
// queue stopped or its group ended first.
func (qq *quorumQueue) awaitOpened() bool {
	select {
	case <-qq.opened:
		return true
	case <-qq.stop:
		return false
	case <-qq.g.Done():
		return false
	}
}

// deliverLoop pushes the messages assigned to this node into the local queue, in log order.
func (qq *quorumQueue) deliverLoop() {
	// Nothing is handed on before this process's NodeDown is applied (readyAt): the events
	// wait in qq.events, and ewake holds their signal.
	if !qq.awaitOpened() {
		return
	}
	for {
		select {
		case <-qq.ewake:
		case <-qq.stop:
			return
		case <-qq.g.Done():
			return
		}
		qq.emu.Lock()
		evs := qq.events
		qq.events = nil
		qq.emu.Unlock()
		for _, ev := range evs {
			if ev.flushed != nil {
				close(ev.flushed)
				continue
			}
			if ev.restored {
				// What the local copies stand for is unknown now (restored): they go, and
				// what comes next waits for the NodeDown that follows.
				qq.qs.q.Purge()
				qq.ready = false
				continue
			}
			if ev.revoked {
				// What this node held went back to the queue: the local copies not yet
				// delivered go (the deliveries still unacked settle nothing any more).
				qq.qs.q.Purge()
				if ev.rev >= qq.readyAt {
					// At or after this process's own NodeDown of the open. After a restore
					// (ready false again), any NodeDown of this node will do: the events
					// come in apply order, so it is one applied after the snapshot, and its
					// number is past readyAt.
					qq.ready = true
				}
				if qq.ready {
					qq.recheckCredit(true) // the NodeDown zeroed it
				}
				continue
			}
			if !qq.ready {
				continue
			}
			qq.dmu.Lock()
			if qq.consumers.Load() == 0 {
				qq.dmu.Unlock()
				// Assigned just before the last consumer left: back to the queue, uncounted.
				ids := make([]uint64, len(ev.msgs))
				for i := range ev.msgs {
					ids[i] = ev.msgs[i].ID
				}
				qq.submit(quorum.Command{Kind: quorum.KindReturn, Node: qq.node, IDs: ids}, qq.dropped)
				continue
			}
			for i := range ev.msgs {
				qq.qs.q.Push(quorumEntry(&ev.msgs[i]))
			}
			qq.dmu.Unlock()
		}
	}
}

// quorumEntry is the local queue's entry for a message of the log: its Seq is the message's
// ID in the log (so settlements name it), Returns its delivery count; it is delivered
// flagged redelivered once counted or once it may have reached a client (Msg.Redelivered).
func quorumEntry(m *quorum.Msg) *queue.Entry {
	msg := &queue.Message{ID: m.ID, Exchange: m.Exchange, RoutingKey: m.RoutingKey, Header: m.Header, Body: m.Body}
	if sum, err := amqp.ScanContentHeader(m.Header); err == nil {
		msg.Persistent = sum.DeliveryMode == 2
		msg.Priority = sum.Priority
	}
	e := &queue.Entry{Seq: m.ID, Msg: msg, Returns: m.Count}
	if m.Count > 0 || m.Redelivered {
		e.Deliveries = 1 // redelivered
	}
	return e
}

// dropped dead-letters (or drops) what a command of this node took out of the queue: the
// proposer does it, so it happens once.
func (qq *quorumQueue) dropped(r quorum.Result, err error) {
	if err != nil || len(r.Dropped) == 0 {
		return
	}
	byReason := map[queue.Reason][]*queue.Entry{}
	var order []queue.Reason
	for _, d := range r.Dropped {
		why := quorumDropReason(d.Reason)
		if _, ok := byReason[why]; !ok {
			order = append(order, why)
		}
		byReason[why] = append(byReason[why], quorumEntry(d.Msg))
	}
	for _, why := range order {
		qq.qs.v.dropped(qq.qs, byReason[why], why)
	}
}

// downSelf proposes NodeDown for this node, again until it is applied: what the node holds
// goes back to the queue. The first one applied opens the deliverer (readyAt).
func (qq *quorumQueue) downSelf() {
	qq.downUntilApplied(qq.node, func(r quorum.Result) {
		qq.openOnce.Do(func() {
			qq.readyAt = r.Revocation
			close(qq.opened)
		})
	})
}

// restored is the state machine's Restored hook (the Raft loop): a snapshot from the leader
// replaced the state (a node that was down long, or wiped). What the snapshot says this node
// holds came with no Assigned, so it would stay checked out here undelivered, and the
// proposal in flight may be inside the snapshot, where its result never comes: it is ended
// (its callers get an error: a publish is nacked, the NodeDown proposed again), and a
// NodeDown takes back what this node holds.
func (qq *quorumQueue) restored() {
	// The snapshot may say this node holds messages assigned in entries it never applied one
	// by one: no Assigned came for them. The entries after it assign later messages here,
	// which would reach the consumers first (first deliveries out of order). The deliverer
	// hands nothing on from here until a NodeDown of this node, applied after the restore,
	// took everything back (downSelf's, or another node's: either takes back all).
	qq.event(quorumEvent{restored: true})
	qq.propMu.Lock()
	if qq.propAbort != nil {
		qq.propAbort()
	}
	qq.propMu.Unlock()
	qq.downSelf()
}

// nodeDown takes back what a node that stopped reporting held.
func (qq *quorumQueue) nodeDown(node string) {
	qq.submit(quorum.Command{Kind: quorum.KindNodeDown, Node: node}, qq.dropped)
}

// recheckCredit asks the proposer to propose this node's credit again if the consumers
// want another one (revoked: the log's is 0 now).
func (qq *quorumQueue) recheckCredit(revoked bool) {
	qq.mu.Lock()
	if revoked {
		qq.credit = 0
	}
	qq.creditCheck = true
	qq.mu.Unlock()
	select {
	case qq.wake <- struct{}{}:
	default:
	}
}

// consumerAdded: the first local consumer checks the node out, and its basic.consume-ok
// waits until the checkout is applied (at most quorumPromoteWait), as RabbitMQ's checkout of
// a quorum queue is synchronous: the messages published after consume-ok are then assigned
// in their own round, not one round behind the checkout (a delivery two rounds after the
// publish took 266-406 ms at load 17-21 in conformance TestDelayedDelivery). A further
// consumer may take messages at once: a due redelivery goes first (promoteDue).
func (qq *quorumQueue) consumerAdded() {
	qq.dmu.Lock()
	first := qq.consumers.Add(1) == 1
	qq.dmu.Unlock()
	qq.recheckCredit(false)
	if !first {
		qq.promoteDue()
		return
	}
	// Behind the credit check (a batch that takes this op has the checkout in it, or an
	// earlier one had), with this node's clock: due redeliveries are promoted by it too.
	applied := make(chan struct{})
	qq.submitClock(applied)
	timer := time.NewTimer(quorumPromoteWait)
	defer timer.Stop()
	select {
	case <-applied:
	case <-timer.C:
	case <-qq.stop:
	case <-qq.g.Done():
	}
}

// consumerRemoved: when the last local consumer goes, the node stops taking messages and
// gives back what it holds undelivered (and what its consumers' channels requeued).
func (qq *quorumQueue) consumerRemoved() {
	qq.dmu.Lock()
	if qq.consumers.Add(-1) != 0 {
		qq.dmu.Unlock()
		return
	}
	// The credit goes to 0 in the batch before the returns (or an earlier one), so they are
	// not assigned here again.
	qq.recheckCredit(false)
	// Everything still in the local queue is undelivered here: a local requeue of a delivery
	// left it at once (localDropped). An entry's Deliveries only says it was delivered
	// elsewhere before (quorumEntry), which the log has counted already.
	var fresh []*queue.Entry
	for {
		e, _, ok := qq.qs.q.Get(true)
		if !ok {
			break
		}
		fresh = append(fresh, e)
	}
	qq.dmu.Unlock()
	if len(fresh) > 0 {
		// Entries requeued here (localRequeue) carry deliveries the log may not have
		// counted: their count first, then the return, which counts nothing more.
		qq.submitCounts(fresh, 0)
		qq.submit(quorum.Command{Kind: quorum.KindReturn, Node: qq.node, IDs: entryIDs(fresh)}, qq.dropped)
	}
	qq.awaitGivenBack()
}

// awaitGivenBack returns once what the node's last consumer left is back in the log, so
// that the channel.close-ok or basic.cancel-ok that follows (and a basic.get after it) finds
// the queue as a classic queue's would be: the credit's drop to 0 and the returns submitted
// before are applied (a barrier proposal behind them), then the deliverer has given back what
// was assigned here before that (a flush event behind the assignments), then its returns are
// applied (a second barrier). Bounded by quorumOpTimeout.
func (qq *quorumQueue) awaitGivenBack() {
	timer := time.NewTimer(quorumOpTimeout)
	defer timer.Stop()
	wait := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		case <-timer.C:
		case <-qq.stop:
		case <-qq.g.Done():
		}
		return false
	}
	if !wait(qq.barrier()) {
		return
	}
	flushed := make(chan struct{})
	qq.event(quorumEvent{flushed: flushed})
	if !wait(flushed) {
		return
	}
	wait(qq.barrier())
}

// barrier submits a command that changes nothing (an empty Delivered) and returns a channel
// closed once it is applied here, or failed: everything submitted before it is applied then.
func (qq *quorumQueue) barrier() <-chan struct{} {
	return qq.barrierWith(quorum.Command{Kind: quorum.KindDelivered, Node: qq.node})
}

// barrierWith submits cmd and returns a channel closed once it is applied here, or failed.
func (qq *quorumQueue) barrierWith(cmd quorum.Command) <-chan struct{} {
	done := make(chan struct{})
	qq.submit(cmd, func(quorum.Result, error) { close(done) })
	return done
}

// delivered records that an entry of the local queue reached a client: a no-ack delivery is
// settled, another is marked (so that a NodeDown counts it a delivery). Under load the
// proposer is busy and they ride with its next batch; idle, they make one proposal.
func (qq *quorumQueue) delivered(e *queue.Entry, noAck bool) {
	qq.mu.Lock()
	if noAck {
		qq.noAck = append(qq.noAck, e.Seq)
	} else {
		if qq.localRequeue && e.Returns > 0 {
			// A redelivery after a local requeue (or the first delivery of a counted
			// message: raising the count to what it is changes nothing).
			qq.counted = append(qq.counted, e.Seq)
			qq.counts = append(qq.counts, e.Returns)
		}
		qq.marks = append(qq.marks, e.Seq)
		qq.creditCheck = true // one more unacked: the credit may grow (quorumCredit)
	}
	qq.mu.Unlock()
	select {
	case qq.wake <- struct{}{}:
	default:
	}
}

// localDropped is the local queue's Dropped hook: a local requeue over the local delivery
// limit (0, or the queue's own with localRequeue) goes back to the log as a delivered return. Purged entries (a revoke, the queue
// closing) were the log's already. When the requeue is a channel closing with the node's
// last consumer, the messages may be assigned here again before consumerRemoved; it gives
// them back, uncounted.
//
// It returns once the return is applied here (or failed, or quorumOpTimeout passed): the
// local requeues are a closing channel's (RemoveConsumers, on the connection's reader, which
// sends channel.close-ok after it), and as for a classic queue, whose requeue is done before
// close-ok, a basic.get or a consumer that follows the close must find them back in the
// queue.
func (qq *quorumQueue) localDropped(_ *queue.Queue, es []*queue.Entry, why queue.Reason) {
	if why != queue.DeliveryLimit || len(es) == 0 {
		return
	}
	ids := entryIDs(es)
	// Over the local delivery limit (localRequeue): the local requeue that dropped it counted
	// one return the log has not seen (Returns-1 deliveries before it); the return counts it.
	qq.submitCounts(es, 1)
	applied := make(chan struct{})
	qq.submitReturn(ids, true, func(r quorum.Result, err error) {
		close(applied)
		qq.dropped(r, err)
	})
	timer := time.NewTimer(quorumOpTimeout)
	defer timer.Stop()
	select {
	case <-applied:
	case <-timer.C:
	case <-qq.stop:
	}
}

// entryIDs are the log IDs of es.
func entryIDs(es []*queue.Entry) []uint64 {
	ids := make([]uint64, len(es))
	for i, e := range es {
		ids[i] = e.Seq
	}
	return ids
}

// submitCounts submits a Count of es's local delivery counts less uncounted (localRequeue
// only; entries with nothing to count are left out).
func (qq *quorumQueue) submitCounts(es []*queue.Entry, uncounted uint32) {
	if !qq.localRequeue {
		return
	}
	c := quorum.Command{Kind: quorum.KindCount, Node: qq.node}
	for _, e := range es {
		if e.Returns > uncounted {
			c.IDs = append(c.IDs, e.Seq)
			c.Counts = append(c.Counts, e.Returns-uncounted)
		}
	}
	if len(c.IDs) > 0 {
		qq.submit(c, nil)
	}
}

// settle turns a settlement of deliveries into its command; nothing waits for it.
func (qq *quorumQueue) settle(kind Settlement, es []*queue.Entry) {
	ids := entryIDs(es)
	// The local queue only counts them out: requeue and dead-lettering are the log's.
	qq.qs.q.Ack(len(es))
	switch kind {
	case Ack:
		qq.qs.counters.ack.n.Add(uint64(len(es)))
		qq.submit(quorum.Command{Kind: quorum.KindSettle, Node: qq.node, IDs: ids}, nil)
	case Reject:
		qq.submit(quorum.Command{Kind: quorum.KindDiscard, Node: qq.node, IDs: ids}, qq.dropped)
	default:
		qq.submitReturn(ids, true, qq.dropped)
	}
	// The credit given back lets the node's consumers take more: a due redelivery first.
	qq.promoteDue()
}

// get is basic.get: a message this node holds undelivered, else the queue's head through the
// log. A message taken from the log for a get that will be acked goes through the local queue
// (pushed, then taken), so that its settlement, or its requeue when the channel closes, finds
// it counted there like any other; a local consumer may take it first, then the next is
// fetched (three tries).
func (qq *quorumQueue) get(noAck bool) (*queue.Entry, int, bool, *amqp.Error) {
	qq.promoteDue() // a due redelivery before the node's window
	for range 3 {
		ready, _ := qq.m.Counts()
		if e, remaining, ok := qq.qs.q.Get(noAck); ok {
			qq.delivered(e, noAck)
			return e, remaining + ready, true, nil
		}
		e, remaining, ok, err := qq.getFromLog(noAck)
		if err != nil || !ok || noAck {
			return e, remaining, ok, err
		}
		qq.qs.q.Push(e)
	}
	return nil, 0, false, nil
}

// getFromLog takes the queue's head for this node through the log.
func (qq *quorumQueue) getFromLog(noAck bool) (*queue.Entry, int, bool, *amqp.Error) {
	type got struct {
		r   quorum.Result
		err error
	}
	ch := make(chan got, 1)
	// decided: whichever of the answer and the timeout comes first wins; a late answer's
	// message goes back to the queue (or, taken with no-ack, is lost as RabbitMQ's would be).
	var decided atomic.Bool
	qq.submit(quorum.Command{Kind: quorum.KindGet, Node: qq.node, NoAck: noAck}, func(r quorum.Result, err error) {
		if decided.CompareAndSwap(false, true) {
			ch <- got{r, err}
			return
		}
		if err != nil || r.Msg == nil {
			return
		}
		if noAck {
			qq.qs.v.b.log.Warn("quorum queue: a message taken by a basic.get that timed out is lost", "queue", qq.qs.name, "vhost", qq.qs.v.name)
			return
		}
		qq.submit(quorum.Command{Kind: quorum.KindReturn, Node: qq.node, IDs: []uint64{r.Msg.ID}}, qq.dropped)
	})
	timer := time.NewTimer(quorumOpTimeout)
	defer timer.Stop()
	var res got
	select {
	case res = <-ch:
	case <-timer.C:
		if decided.CompareAndSwap(false, true) {
			return nil, 0, false, amqp.Errorf(amqp.InternalError, "quorum queue '%s' in vhost '%s' unavailable: no majority within %v", qq.qs.name, qq.qs.v.name, quorumOpTimeout)
		}
		res = <-ch
	}
	if res.err != nil {
		return nil, 0, false, amqp.Errorf(amqp.InternalError, "quorum queue '%s' in vhost '%s' unavailable: %v", qq.qs.name, qq.qs.v.name, res.err)
	}
	if res.r.Msg == nil {
		return nil, 0, false, nil
	}
	e := quorumEntry(res.r.Msg)
	if noAck {
		e.Deliveries++ // as queue.Get counts the delivery it makes
	}
	return e, res.r.Remaining, true, nil
}

// purge is queue.purge: the log's ready messages and those assigned to this node but not
// delivered (ready to a client, as RabbitMQ counts them: only unacked messages stay).
func (qq *quorumQueue) purge() (int, *amqp.Error) {
	var local []uint64
	for {
		e, _, ok := qq.qs.q.Get(true)
		if !ok {
			break
		}
		local = append(local, e.Seq)
	}
	if len(local) > 0 {
		qq.submit(quorum.Command{Kind: quorum.KindSettle, Node: qq.node, IDs: local}, nil)
	}
	ch := make(chan quorum.Result, 1)
	var perr error
	qq.submit(quorum.Command{Kind: quorum.KindPurge}, func(r quorum.Result, err error) { perr = err; r.Purged += len(local); ch <- r })
	var r quorum.Result
	select {
	case r = <-ch:
	case <-time.After(quorumOpTimeout):
		// The purge may still happen: as a metadata change that times out (RabbitMQ's 541).
		return 0, amqp.Errorf(amqp.InternalError, "quorum queue '%s' in vhost '%s' unavailable: no majority within %v", qq.qs.name, qq.qs.v.name, quorumOpTimeout)
	}
	if perr != nil {
		return 0, amqp.Errorf(amqp.InternalError, "quorum queue '%s' in vhost '%s' unavailable: %v", qq.qs.name, qq.qs.v.name, perr)
	}
	return r.Purged, nil
}

// appendToQuorums proposes msg to the quorum queues among targets and returns the other
// targets. When done is not nil, it is wrapped: it runs once every quorum queue has committed
// the message and the rest has been handled (rest is called by the caller once if the rest
// needed nothing asynchronous). A refusal by a reject-publish queue is an error (a nack).
func (v *VHost) appendToQuorums(msg *queue.Message, targets []*Queue, done func(error)) (out []*Queue, joined func(error), rest func(error)) {
	n := 0
	for _, qs := range targets {
		if qs.qq != nil {
			n++
		}
	}
	if n == 0 {
		return targets, done, nil
	}
	// In a function of its own, as appendToStreams: its closures must not weigh on every
	// publish to other queues.
	return v.appendToQuorumsSlow(msg, targets, done, n)
}

func (v *VHost) appendToQuorumsSlow(msg *queue.Message, targets []*Queue, done func(error), n int) (out []*Queue, joined func(error), rest func(error)) {
	out = make([]*Queue, 0, len(targets)-n)
	for _, qs := range targets {
		if qs.qq == nil {
			out = append(out, qs)
		}
	}
	if done == nil {
		for _, qs := range targets {
			if qs.qq != nil {
				qs.qq.publish(msg, qs.qq.enqueued(nil), true)
			}
		}
		return out, nil, nil
	}
	var mu sync.Mutex
	var firstErr error
	parts := n + 1 // the quorum queues and the rest
	joined = func(err error) {
		mu.Lock()
		if err != nil && firstErr == nil {
			firstErr = err
		}
		parts--
		last := parts == 0
		mu.Unlock()
		if last {
			done(firstErr)
		}
	}
	for _, qs := range targets {
		if qs.qq != nil {
			qs.qq.publish(msg, qs.qq.enqueued(joined), true)
		}
	}
	return out, joined, joined
}

// enqueued is an Enqueue's completion: counted, over-limit drops dead-lettered, done told.
func (qq *quorumQueue) enqueued(done func(error)) func(quorum.Result, error) {
	return func(r quorum.Result, err error) {
		if err == nil {
			if len(r.Refused) > 0 {
				err = errQuorumRefused
			} else {
				qq.qs.counters.publish.n.Add(1)
			}
			qq.dropped(r, nil)
		}
		if done != nil {
			done(err)
		}
	}
}

// publishQuorum proposes msg to a quorum queue for push: a transaction's commit (wait) waits
// until it is committed and reports a refusal; dead-lettering does not wait.
func (qq *quorumQueue) publishQuorum(msg *queue.Message, wait bool) (refused bool) {
	if !wait {
		qq.publish(msg, qq.enqueued(nil), false)
		return false
	}
	ch := make(chan error, 1)
	qq.publish(msg, qq.enqueued(func(err error) { ch <- err }), true)
	return <-ch != nil
}

// infoCounts are the counts the management API shows: for a quorum queue, the ready messages
// are the log's (the whole queue's backlog) plus those this node holds undelivered; unacked
// and consumers are this node's.
func (qs *Queue) infoCounts() queue.Stats {
	st := qs.q.Counts()
	if qs.qq != nil {
		ready, _ := qs.qq.m.Counts()
		st.Ready += ready
	}
	return st
}

// DeclareCounts are queue.declare-ok's message and consumer counts: the local queue's, and
// for a quorum queue the log's ready messages too (those not checked out to a node), as
// RabbitMQ counts a quorum queue's ready messages whichever node answers.
func (qs *Queue) DeclareCounts() (ready, consumers int) {
	st := qs.q.Stats() // Stats, not Counts: expired heads and due delayed messages first
	if qs.qq != nil {
		n, _ := qs.qq.m.Counts()
		st.Ready += n
	}
	return st.Ready, st.Consumers
}
