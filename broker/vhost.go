package broker

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/exchange"
	"github.com/warrenmq/warren/persistence"
	"github.com/warrenmq/warren/queue"
)

// Exchange is one exchange of a vhost. Its fields are fixed at declare except alternate
// (policies), which is guarded by the vhost's mu.
type Exchange struct {
	name       string
	kind       exchange.Kind
	durable    bool
	autoDelete bool
	internal   bool
	args       amqp.Table
	alternate  string // alternate-exchange argument or policy
	router     exchange.Router
	delayed    *delayedExchange // x-delayed-message: kind and router are its x-delayed-type's
	// publishIn counts messages published to the exchange, publishOut those it routed to at
	// least one queue (RabbitMQ's publish_in / publish_out); added in batches by Publishers.
	publishIn, publishOut atomic.Uint64
}

// Name is the exchange's name ("" for the default exchange).
func (ex *Exchange) Name() string { return ex.name }

// Internal reports whether clients may not publish to the exchange.
func (ex *Exchange) Internal() bool { return ex.internal }

// Queue is one queue of a vhost: the queue package's queue with the AMQP-level facts it does not
// know (ownership, durability, arguments, policy).
type Queue struct {
	v          *VHost
	name       string
	q          *queue.Queue
	durable    bool // stored on disk (durable and not exclusive)
	declDur    bool // durable flag as declared, for redeclare comparison
	exclusive  bool
	autoDelete bool
	owner      OwnerID
	args       amqp.Table
	spec       queueSpec // from args; policies combine with it
	// sq is the log of an x-queue-type: stream queue; nil for other queues.
	sq *streamQueue
	// qq is a cluster's quorum queue (its Raft group, quorum.go); nil for other queues.
	qq *quorumQueue
	// home is the node a queue homed on another cluster node lives on ("" for a queue of this
	// node), set before the queue is visible. epoch is the cluster log index of its declare (0
	// on a single node; set late for a queue restored from the store before the log replayed,
	// hence atomic: removals read it without v.mu). See replicate.go.
	home  string
	epoch atomic.Uint64
	// removedByLog is set (under v.mu) when the cluster's log removed the queue, so that its
	// removal is not proposed again.
	removedByLog bool
	// dl is the effective dead-letter target (argument or policy), read without v.mu by the
	// dead-letter path and replaced when policies change.
	dl atomic.Pointer[dlConfig]
	// consumerTimeout is the effective consumer timeout in nanoseconds (see ConsumerTimeout),
	// replaced when policies change.
	consumerTimeout atomic.Int64

	// Guarded by v.mu.
	consumers         int
	exclusiveConsumer bool
	hadConsumer       bool
	deleted           atomic.Bool // read without v.mu by the dead-letter path
	expires           time.Duration
	policy            string // name of the policy applied, "" for none
	expiryTimer       *time.Timer

	counters QueueCounters
}

// Name is the queue's name.
func (qs *Queue) Name() string { return qs.name }

// Q is the queue's data structure: consumers are added to it, counts read from it.
func (qs *Queue) Q() *queue.Queue { return qs.q }

// Deleted reports whether the queue has been deleted.
func (qs *Queue) Deleted() bool { return qs.deleted.Load() }

func (qs *Queue) ref() persistence.QueueRef {
	return persistence.QueueRef{VHost: qs.v.name, Queue: qs.name}
}

// diskEntry names a durable entry's disk copy for the store's Removes and delivery marks.
func (qs *Queue) diskEntry(e *queue.Entry) persistence.Entry {
	return persistence.Entry{Queue: qs.ref(), Seq: e.Seq, MsgID: e.Msg.ID, SoleRef: !e.SharedOnDisk}
}

// VHost is an isolated namespace of exchanges, queues and bindings.
type VHost struct {
	b    *Broker
	name string
	// maxQueues is the vhost's max-queues limit, negative for none (replaced by SetVHosts).
	maxQueues atomic.Int64

	// defaultEx is the default exchange (""), also in exchanges: set at creation and never
	// replaced (it cannot be declared, redeclared by the cluster's log, deleted or restored),
	// so Exchange returns it without the read lock - most publishes go to it.
	defaultEx *Exchange

	mu        sync.RWMutex
	exchanges map[string]*Exchange
	queues    map[string]*Queue
	policies  []*Policy // highest priority first
	// deleting holds the durable queues removed from queues whose store.DeleteQueue has not
	// returned yet, closed when it has: a queue declared again under the name waits, or the
	// old queue's purge would delete the new one's first messages (same sequence numbers).
	deleting map[string]chan struct{}
	// opening holds the names of new stream queues whose log is being created without mu
	// (stream.go), closed once the queue is in queues or its open failed: a declare of the
	// name waits, and the queue limit counts them.
	opening map[string]chan struct{}
	// unapplied holds the queues the cluster's log homed here whose declare this node failed
	// to apply (a stream's log that would not open): forwards for them are refused, not
	// skipped as for a deleted queue and confirmed. A later declare or delete of the name
	// applied clears it (setUnapplied).
	unapplied map[string]bool
}

// setUnapplied records whether the declare of queue name, homed here, failed to apply.
func (v *VHost) setUnapplied(name string, failed bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !failed {
		delete(v.unapplied, name)
		return
	}
	if v.unapplied == nil {
		v.unapplied = map[string]bool{}
	}
	v.unapplied[name] = true
}

var defaultExchanges = []struct {
	name string
	kind exchange.Kind
}{
	{"amq.direct", exchange.Direct},
	{"amq.fanout", exchange.Fanout},
	{"amq.topic", exchange.Topic},
	{"amq.headers", exchange.Headers},
	{"amq.match", exchange.Headers},
}

func newVHost(b *Broker, s VHostSettings) *VHost {
	v := &VHost{b: b, name: s.Name, exchanges: map[string]*Exchange{}, queues: map[string]*Queue{}, policies: s.Policies}
	v.maxQueues.Store(s.MaxQueues)
	v.defaultEx = &Exchange{name: "", kind: exchange.Direct, durable: true, router: defaultRouter{}}
	v.exchanges[""] = v.defaultEx
	for _, d := range defaultExchanges {
		v.exchanges[d.name] = &Exchange{name: d.name, kind: d.kind, durable: true, router: exchange.NewRouter(d.kind)}
	}
	return v
}

// Name is the vhost's name.
func (v *VHost) Name() string { return v.name }

func (v *VHost) stopTimers() {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, qs := range v.queues {
		if qs.expiryTimer != nil {
			qs.expiryTimer.Stop()
		}
	}
}

// errNoQueue and friends build RabbitMQ's exact error texts.
func (v *VHost) errNoQueue(name string) *amqp.Error {
	return amqp.Errorf(amqp.NotFound, "no queue '%s' in vhost '%s'", name, v.name)
}

func (v *VHost) errNoExchange(name string) *amqp.Error {
	return amqp.Errorf(amqp.NotFound, "no exchange '%s' in vhost '%s'", name, v.name)
}

func (v *VHost) errLocked(name string) *amqp.Error {
	return amqp.Errorf(amqp.ResourceLocked, "cannot obtain exclusive access to locked queue '%s' in vhost '%s'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.", name, v.name)
}

func errDefaultExchange() *amqp.Error {
	return amqp.Errorf(amqp.AccessRefused, "operation not permitted on the default exchange")
}

// Exchange returns the named exchange or RabbitMQ's 404.
func (v *VHost) Exchange(name string) (*Exchange, *amqp.Error) {
	if name == "" {
		// Two atomic adds on the vhost's shared lock word per publish were 3% of the broker's
		// CPU at a million messages a second.
		return v.defaultEx, nil
	}
	v.mu.RLock()
	ex := v.exchanges[name]
	v.mu.RUnlock()
	if ex == nil {
		return nil, v.errNoExchange(name)
	}
	return ex, nil
}

// Queue returns the named queue for a: 404 if missing, 405 if another connection owns it.
func (v *VHost) Queue(a Actor, name string) (*Queue, *amqp.Error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.lookupQueue(a, name)
}

// lookupQueue finds a queue usable by a: 404 if missing, 405 if another connection owns it.
// Exclusivity is checked first, as RabbitMQ does. Call with v.mu held (read or write).
func (v *VHost) lookupQueue(a Actor, name string) (*Queue, *amqp.Error) {
	qs := v.queues[name]
	if qs == nil {
		return nil, v.errNoQueue(name)
	}
	if qs.exclusive && qs.owner != a.Owner {
		return nil, v.errLocked(name)
	}
	return qs, nil
}

// wait waits for a store write submitted under v.mu, after v.mu was released. A failed write
// is RabbitMQ's 541.
func wait(ch <-chan error, what string) *amqp.Error {
	if ch == nil {
		return nil
	}
	if err := <-ch; err != nil {
		return amqp.Errorf(amqp.InternalError, "%s: %v", what, err)
	}
	return nil
}

// submitted returns a done callback and the channel it reports to, for wait.
func submitted() (func(error), chan error) {
	ch := make(chan error, 1)
	return func(err error) { ch <- err }, ch
}

// encodeArgs encodes a stored object's arguments. A table that does not encode is refused with
// 541: storing the object without its arguments would change it after a restart.
func encodeArgs(t amqp.Table) ([]byte, *amqp.Error) {
	if len(t) == 0 {
		return nil, nil
	}
	b, err := amqp.AppendTable(nil, t)
	if err != nil {
		return nil, amqp.Errorf(amqp.InternalError, "encoding arguments: %v", err)
	}
	return b, nil
}

// ConsumerTimeout is how long a delivery from this queue may stay unacknowledged before its
// channel is closed: the queue's x-consumer-timeout or consumer-timeout policy (the lower of
// the two), else def (the server's consumer_timeout). 0 means no limit.
func (qs *Queue) ConsumerTimeout(def time.Duration) time.Duration {
	if d := time.Duration(qs.consumerTimeout.Load()); d >= 0 {
		return d
	}
	return def
}
