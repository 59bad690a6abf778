package broker

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/persistence"
	"github.com/warrenmq/warren/queue"
)

// RandomName is prefix followed by 22 random URL-safe characters, as RabbitMQ names generated
// queues (amq.gen-) and consumer tags (amq.ctag-).
func RandomName(prefix string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return prefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// QueueSpec is a queue.declare.
type QueueSpec struct {
	Name                           string // "" generates an amq.gen- name
	Passive                        bool   // only check that it exists (and may be used)
	Durable, Exclusive, AutoDelete bool
	Args                           amqp.Table
}

// DeclareQueue implements queue.declare. Read the counts from the returned queue after the call:
// counting may expire messages, and dead-lettering them takes the vhost's lock.
func (v *VHost) DeclareQueue(a Actor, m QueueSpec) (*Queue, *amqp.Error) {
	name := m.Name
	if m.Passive {
		// RabbitMQ checks no permission for a passive declare.
		v.mu.Lock()
		defer v.mu.Unlock()
		if name == "" {
			return nil, v.errNoQueue(name)
		}
		if err := v.HomeDown(v.queues[name]); err != nil {
			return nil, err // RabbitMQ: absent (its node is down) before any other check
		}
		qs, err := v.lookupQueue(a, name)
		if err != nil {
			return nil, err
		}
		v.touchLocked(qs)
		return qs, nil
	}
	if name == "" {
		name = RandomName("amq.gen-")
	} else if strings.HasPrefix(name, "amq.") {
		return nil, amqp.Errorf(amqp.AccessRefused, "queue name '%s' contains reserved prefix 'amq.*'", name)
	}
	if err := a.authorize(PermConfigure, ResQueue, name); err != nil {
		return nil, err
	}
	if v.b.replicator != nil {
		return v.replicatedDeclareQueue(a, name, m)
	}
	v.mu.Lock()
	// Wait while the name is being deleted (the store drops the old entries) or a stream of
	// that name is being opened (then it exists, or its open failed and this declare tries).
	for {
		done, ok := v.deleting[name]
		if !ok {
			done, ok = v.opening[name]
		}
		if !ok {
			break
		}
		v.mu.Unlock()
		<-done
		v.mu.Lock()
	}
	if qs := v.queues[name]; qs != nil {
		defer v.mu.Unlock()
		if qs.exclusive && qs.owner != a.Owner {
			return nil, v.errLocked(name)
		}
		if err := v.checkQueueEquivalent(qs, m); err != nil {
			return nil, err
		}
		v.touchLocked(qs)
		return qs, nil
	}
	qs, synced, err := v.newQueue(a, name, m, 0)
	v.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if qs.spec.stream {
		// newQueue reserved the name; the log is created without v.mu (stream.go).
		if synced, err = v.openReservedStream(qs, m); err != nil {
			return nil, err
		}
	}
	if err := wait(synced, "storing queue"); err != nil {
		v.mu.Lock()
		v.removeQueueLocked(qs)
		v.mu.Unlock()
		v.finishQueueRemoval(qs)
		return nil, err
	}
	return qs, nil
}

// newQueue makes the checks of a new queue and creates it; call with v.mu held. The returned
// channel reports the queue's store write, to wait for after v.mu is released. A stream queue
// is only reserved (v.opening): DeclareQueue opens and registers it after releasing v.mu.
// epoch is the cluster's incarnation of the queue (0 on a single node), stored with it.
func (v *VHost) newQueue(a Actor, name string, m QueueSpec, epoch uint64) (*Queue, chan error, *amqp.Error) {
	spec, err := v.checkNewQueue(a, name, m)
	if err != nil {
		return nil, nil, err
	}
	qs := &Queue{
		v: v, name: name, declDur: m.Durable, durable: m.Durable && !m.Exclusive && v.b.store != nil,
		exclusive: m.Exclusive, autoDelete: m.AutoDelete, args: m.Args, spec: spec,
	}
	if m.Exclusive {
		qs.owner = a.Owner
	}
	qs.epoch.Store(epoch)
	var args []byte
	if qs.durable {
		var err *amqp.Error
		if args, err = encodeArgs(m.Args); err != nil {
			return nil, nil, err
		}
	}
	if spec.stream {
		if err := v.reserveStreamLocked(qs, m); err != nil {
			return nil, nil, err
		}
		return qs, nil, nil
	}
	return qs, v.registerQueueLocked(qs, args), nil
}

// registerQueueLocked submits a new queue's store write (when durable; args are its encoded
// arguments) and makes it visible; call with v.mu held. The returned channel reports the
// write.
func (v *VHost) registerQueueLocked(qs *Queue, args []byte) chan error {
	var synced chan error
	if qs.durable {
		var done func(error)
		done, synced = submitted()
		v.b.store.PutQueueAsync(persistence.QueueRecord{VHost: v.name, Name: qs.name, AutoDelete: qs.autoDelete, Args: args,
			Epoch: qs.epoch.Load()}, done)
	}
	v.newQueueLocked(qs)
	v.queues[qs.name] = qs
	v.b.stats.queuesCreated.Add(1)
	v.touchLocked(qs)
	return synced
}

// checkNewQueue makes a new queue's checks for a (limits, permissions its arguments need, the
// arguments themselves) and returns its parsed arguments; call with v.mu held (read is enough).
func (v *VHost) checkNewQueue(a Actor, name string, m QueueSpec) (queueSpec, *amqp.Error) {
	if err := v.queueLimitError(a, name); err != nil {
		return queueSpec{}, err
	}
	if dlx, ok := m.Args["x-dead-letter-exchange"].(string); ok {
		// As RabbitMQ: a dead-letter exchange needs read on the queue and write on the exchange.
		if err := a.authorize(PermRead, ResQueue, name); err != nil {
			return queueSpec{}, err
		}
		if err := a.authorize(PermWrite, ResExchange, dlx); err != nil {
			return queueSpec{}, err
		}
	}
	spec, aerr := parseQueueArgs(m.Args)
	if aerr != nil {
		aerr.Text = fillQueueName(aerr.Text, name, v.name)
		return queueSpec{}, aerr
	}
	// RabbitMQ 3.10 (rabbit_quorum_queue:declare) checks auto-delete, then exclusive, then
	// durable.
	if spec.quorum && m.AutoDelete {
		return queueSpec{}, amqp.Errorf(amqp.PreconditionFailed, "invalid property 'auto-delete' for queue '%s' in vhost '%s'", name, v.name)
	}
	if spec.quorum && m.Exclusive {
		return queueSpec{}, amqp.Errorf(amqp.PreconditionFailed, "invalid property 'exclusive-owner' for queue '%s' in vhost '%s'", name, v.name)
	}
	if spec.quorum && !m.Durable {
		return queueSpec{}, amqp.Errorf(amqp.PreconditionFailed, "invalid property 'non-durable' for queue '%s' in vhost '%s'", name, v.name)
	}
	return spec, nil
}

// queueLimitError is RabbitMQ's 406 when the vhost's max-queues limit is reached; checked before a
// queue is created (call with v.mu held).
func (v *VHost) queueLimitError(a Actor, name string) *amqp.Error {
	if a.Authz == nil {
		return nil // declared by the configuration: the operator's own queues
	}
	n := v.maxQueues.Load()
	if n < 0 || int64(len(v.queues)+len(v.opening)) < n { // streams being opened count
		return nil
	}
	return amqp.Errorf(amqp.PreconditionFailed, "cannot declare queue '%s': queue limit in vhost '%s' (%d) is reached", name, v.name, n)
}

// newQueueLocked builds qs's queue with its arguments combined with the matching policy; call
// with v.mu held.
func (v *VHost) newQueueLocked(qs *Queue) {
	e := v.effectiveLocked(qs.name, qs.spec, qs.args)
	qs.dl.Store(e.dl)
	qs.consumerTimeout.Store(int64(e.consumerTimeout))
	qs.expires, qs.policy = e.expires, e.policy
	qs.q = queue.New(qs.name, e.opts, queue.Hooks{Dropped: v.onDropped(qs)})
	v.b.enablePaging(qs, e.window)
	v.warnClassicAtLeastOnce(qs)
}

func (v *VHost) checkQueueEquivalent(qs *Queue, m QueueSpec) *amqp.Error {
	ineq := func(arg string, got, cur any) *amqp.Error {
		return amqp.Errorf(amqp.PreconditionFailed, "inequivalent arg '%s' for queue '%s' in vhost '%s': received '%v' but current is '%v'", arg, qs.name, v.name, got, cur)
	}
	switch {
	case m.Durable != qs.declDur:
		return ineq("durable", m.Durable, qs.declDur)
	case m.AutoDelete != qs.autoDelete:
		return ineq("auto_delete", m.AutoDelete, qs.autoDelete)
	case m.Exclusive != qs.exclusive:
		return ineq("exclusive", m.Exclusive, qs.exclusive)
	}
	return compareArgs("queue", qs.name, v.name, m.Args, qs.args, equivalenceArgs)
}

// equivalenceArgs are the queue arguments compared on redeclare (RabbitMQ ignores the others).
var equivalenceArgs = []string{
	"x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key",
	"x-max-length", "x-max-length-bytes", "x-max-priority", "x-overflow", "x-queue-mode",
	"x-single-active-consumer", "x-queue-type", "x-delivery-limit",
	"x-redelivery-delay", "x-redelivery-backoff", "x-redelivery-max-delay",
}

// DeleteQueue implements queue.delete; a missing queue counts as deleted with 0 messages.
func (v *VHost) DeleteQueue(a Actor, name string, ifUnused, ifEmpty bool) (int, *amqp.Error) {
	if err := a.authorize(PermConfigure, ResQueue, name); err != nil {
		return 0, err
	}
	if v.b.replicator != nil {
		return v.replicatedDeleteQueue(a, name, ifUnused, ifEmpty)
	}
	v.mu.Lock()
	qs := v.queues[name]
	if qs == nil {
		v.mu.Unlock()
		return 0, nil
	}
	if qs.exclusive && qs.owner != a.Owner {
		v.mu.Unlock()
		return 0, v.errLocked(name)
	}
	st := qs.infoCounts() // a quorum queue's log counts
	if ifUnused && st.Consumers > 0 {
		v.mu.Unlock()
		return 0, amqp.Errorf(amqp.PreconditionFailed, "queue '%s' in vhost '%s' in use", name, v.name)
	}
	if ifEmpty && st.Ready > 0 {
		v.mu.Unlock()
		return 0, amqp.Errorf(amqp.PreconditionFailed, "queue '%s' in vhost '%s' is not empty", name, v.name)
	}
	v.removeQueueLocked(qs)
	v.mu.Unlock()
	n := v.finishQueueRemoval(qs)
	return n, nil
}

// PurgeQueue implements queue.purge: the ready messages go, unacked ones stay.
func (v *VHost) PurgeQueue(a Actor, name string) (int, *amqp.Error) {
	if err := a.authorize(PermRead, ResQueue, name); err != nil {
		return 0, err
	}
	qs, err := v.Queue(a, name)
	if err != nil {
		return 0, err
	}
	if qs.sq != nil {
		return 0, amqp.Errorf(amqp.NotImplemented, "queue.purge not supported by stream queues %s", qs.rs())
	}
	if qs.qq != nil {
		return qs.qq.purge()
	}
	return qs.q.Purge(), nil
}

// removeQueueLocked unlinks qs from the registry and its bindings; finishQueueRemoval (called
// without v.mu) then closes it and cancels its consumers.
func (v *VHost) removeQueueLocked(qs *Queue) {
	if v.queues[qs.name] != qs || (qs.home != "" && !qs.removedByLog) {
		return // a remote entry goes only when the cluster's log removes its queue
	}
	delete(v.queues, qs.name)
	qs.deleted.Store(true)
	v.b.stats.queuesDeleted.Add(1)
	if qs.durable {
		if v.deleting == nil {
			v.deleting = make(map[string]chan struct{})
		}
		v.deleting[qs.name] = make(chan struct{})
	}
	if qs.expiryTimer != nil {
		qs.expiryTimer.Stop()
	}
	for _, ex := range v.exchanges {
		if ex.router.UnbindDestination(qs.name, false) > 0 {
			v.maybeAutoDeleteExchangeLocked(ex, nil)
		}
	}
}

// finishQueueRemoval closes a removed queue, cancels its consumers and deletes its stored
// state; it returns the number of messages the queue held.
func (v *VHost) finishQueueRemoval(qs *Queue) int {
	v.proposeLocalRemoval(qs)
	consumers, n := qs.q.Close()
	qs.closeStream(true)
	if qs.qq != nil {
		n, _ = qs.qq.m.Counts() // the log's ready messages, not this node's share
		qs.qq.close()
	}
	for _, c := range consumers {
		if cs, ok := c.(Consumer); ok {
			cs.QueueDeleted()
		}
	}
	if qs.durable {
		if err := v.b.store.DeleteQueue(v.name, qs.name); err != nil {
			v.b.log.Error("deleting durable queue", "queue", qs.name, "err", err)
		}
		v.mu.Lock()
		// A queue of that name cannot be declared (and deleted) again before this returns.
		if done, ok := v.deleting[qs.name]; ok {
			delete(v.deleting, qs.name)
			close(done)
		}
		v.mu.Unlock()
	}
	return n
}

// DropExclusive deletes the exclusive queues owned by a closing connection.
func (v *VHost) DropExclusive(owner OwnerID) {
	if v.b.replicator != nil {
		v.replicatedDropExclusive(owner)
		return
	}
	v.mu.Lock()
	var gone []*Queue
	for _, qs := range v.queues {
		if qs.exclusive && qs.owner == owner {
			v.removeQueueLocked(qs)
			gone = append(gone, qs)
		}
	}
	v.mu.Unlock()
	for _, qs := range gone {
		v.finishQueueRemoval(qs)
	}
}

// touchLocked restarts a queue's x-expires countdown; call with v.mu held for writing.
func (v *VHost) touchLocked(qs *Queue) {
	if qs.expires <= 0 {
		return
	}
	if qs.expiryTimer != nil {
		qs.expiryTimer.Stop()
	}
	if qs.consumers > 0 {
		return
	}
	qs.expiryTimer = time.AfterFunc(qs.expires, func() { v.expireQueue(qs) })
}

func (v *VHost) expireQueue(qs *Queue) {
	v.mu.Lock()
	if qs.deleted.Load() || qs.consumers > 0 || v.queues[qs.name] != qs {
		v.mu.Unlock()
		return
	}
	v.removeQueueLocked(qs)
	v.mu.Unlock()
	v.finishQueueRemoval(qs)
}

// touch restarts the x-expires countdown (basic.get counts as use).
func (v *VHost) touch(qs *Queue) {
	if qs.expires <= 0 {
		return
	}
	v.mu.Lock()
	if !qs.deleted.Load() {
		v.touchLocked(qs)
	}
	v.mu.Unlock()
}
