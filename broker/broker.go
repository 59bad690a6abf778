package broker

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/persistence"
	"github.com/warrenmq/warren/queue"
)

// Options configure a Broker.
type Options struct {
	// DataDir is the Badger directory; "" keeps everything in memory.
	DataDir string
	// MaxRAMMessages is the number of ready messages a queue keeps in memory when there is a
	// store; the rest of its backlog is paged out and read back ahead of the consumers.
	MaxRAMMessages int
	// MemoryBudget bounds the bodies of ready messages all queues keep in memory; 0: no bound.
	MemoryBudget int64
	// VHosts are created before durable state is restored (stored objects of other vhosts are
	// ignored, and kept on disk).
	VHosts []VHostSettings
	Logger *slog.Logger
	// DeferDelayed leaves the delayed exchanges' timer unarmed until StartDelayed: a cluster
	// member must not route a message that came due while it was down before it has replayed
	// the metadata log (bindings to queues of other nodes) and installed its forwarder.
	DeferDelayed bool
}

// VHostSettings are what the configuration says of one vhost.
type VHostSettings struct {
	Name string
	// MaxQueues is RabbitMQ's max-queues vhost limit; negative: none. It applies to declares
	// by authorized actors (clients, the management API), not to the configuration's own.
	MaxQueues int64
	Policies  []*Policy // highest priority first (see SortPolicies)
}

// Broker is the core of one node: its vhosts with their exchanges, queues and bindings, the
// publish pipeline and the store. Front ends (the AMQP server, the management API) drive it
// through VHost.
type Broker struct {
	log   *slog.Logger
	store *persistence.Store // nil: in memory only
	// dataDir is the data directory; stream queues' logs live in dataDir/streams.
	dataDir string

	vhMu    sync.RWMutex
	vhosts  map[string]*VHost
	retired map[string]*VHost // removed from the configuration; their stored data is kept

	msgID atomic.Uint64
	// budget bounds the bodies of ready messages all queues keep in memory (paging).
	budget         *queue.Budget
	maxRAMMessages int
	// flowHigh is the ready backlog over which a queue being drained holds its publishers.
	flowHigh int
	stats    brokerStats
	// replies maps the direct reply-to names in use to their ReplySink (see replyto.go).
	replies sync.Map
	// testPages, set by tests only, replaces the store for queues' page writes and reads.
	testPages pageStore
	// replicator, when set, makes topology changes go through the cluster (replicate.go).
	replicator TopologyReplicator
	// cluster holds the data link's hooks: forwarding, proxying, the link login (forward.go).
	cluster clusterHooks
	// incarnation tags the owners this process proposes to the cluster (SetReplicator).
	incarnation OwnerID
	// delayed holds the messages of x-delayed-message exchanges until they are due.
	delayed *delayer
	// closeMu and closing make a basic.get of a classic queue that starts once Close has begun
	// refuse instead of taking a message whose journal write the closing store would refuse
	// (after the clean-stop marker was decided, so its loss would go unnoticed). Get holds the
	// read lock from the check to its journal write; Close takes the write lock to set closing.
	closeMu sync.RWMutex
	closing bool
}

// brokerStats count events off the message path (churn) and flow-control pauses.
type brokerStats struct {
	queuesCreated, queuesDeleted, flowPauses atomic.Uint64
}

// Stats are the broker's event counters since start.
type Stats struct {
	QueuesCreated, QueuesDeleted uint64
	// FlowPauses counts the times a publisher was held by flow control (journal room or a
	// queue being drained).
	FlowPauses uint64
}

// Stats returns the broker's event counters.
func (b *Broker) Stats() Stats {
	return Stats{QueuesCreated: b.stats.queuesCreated.Load(), QueuesDeleted: b.stats.queuesDeleted.Load(),
		FlowPauses: b.stats.flowPauses.Load()}
}

// New opens the store (when opts.DataDir is set) and restores durable state.
func New(opts Options) (*Broker, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	b := &Broker{
		log:            log,
		vhosts:         make(map[string]*VHost, len(opts.VHosts)),
		retired:        map[string]*VHost{},
		maxRAMMessages: opts.MaxRAMMessages,
		dataDir:        opts.DataDir,
	}
	if opts.MemoryBudget > 0 {
		b.budget = queue.NewBudget(opts.MemoryBudget)
	}
	if opts.DataDir != "" {
		start := time.Now()
		st, err := persistence.Open(opts.DataDir, persistence.Options{Logger: log})
		if err != nil {
			return nil, fmt.Errorf("opening storage: %w", err)
		}
		b.store = st
		b.msgID.Store(st.MaxMessageID())
		defer func() {
			log.Info("storage opened", "dir", opts.DataDir, "took", time.Since(start).Round(time.Millisecond))
		}()
	}
	b.flowHigh = flowHighFor(opts.MaxRAMMessages, b.store != nil)
	b.delayed = newDelayer(b, realClock{})
	for _, vs := range opts.VHosts {
		b.vhosts[vs.Name] = newVHost(b, vs)
	}
	if b.store != nil {
		if err := b.restore(); err != nil {
			_ = b.store.Close()
			return nil, fmt.Errorf("restoring durable state from %s: %w", opts.DataDir, err)
		}
	}
	if err := b.startDelayed(!opts.DeferDelayed); err != nil {
		if b.store != nil {
			_ = b.store.Close()
		}
		return nil, fmt.Errorf("restoring delayed messages from %s: %w", opts.DataDir, err)
	}
	return b, nil
}

// Store is the broker's store, nil when it keeps everything in memory. Front ends read its
// statistics and wait for room in its journal (flow control); they never write to it.
func (b *Broker) Store() *persistence.Store { return b.store }

// VHost returns the named vhost, nil if it is not configured.
func (b *Broker) VHost(name string) *VHost {
	b.vhMu.RLock()
	defer b.vhMu.RUnlock()
	return b.vhosts[name]
}

// VHosts returns the configured vhosts.
func (b *Broker) VHosts() []*VHost {
	b.vhMu.RLock()
	defer b.vhMu.RUnlock()
	out := make([]*VHost, 0, len(b.vhosts))
	for _, v := range b.vhosts {
		out = append(out, v)
	}
	return out
}

// SetVHosts makes the configured vhosts exactly vs: new ones are created (or brought back with
// their state when they were removed before), missing ones are retired (their stored data is
// kept), and every vhost gets its settings (policies are re-applied to its queues and
// exchanges). It returns the names of the retired vhosts.
func (b *Broker) SetVHosts(vs []VHostSettings) (retired []string) {
	want := make(map[string]VHostSettings, len(vs))
	for _, s := range vs {
		want[s.Name] = s
	}
	b.vhMu.Lock()
	for name, v := range b.vhosts {
		if _, ok := want[name]; !ok {
			delete(b.vhosts, name)
			b.retired[name] = v
			retired = append(retired, name)
		}
	}
	for name, s := range want {
		if b.vhosts[name] != nil {
			continue
		}
		if v := b.retired[name]; v != nil {
			delete(b.retired, name)
			b.vhosts[name] = v
		} else {
			b.vhosts[name] = newVHost(b, VHostSettings{Name: name, MaxQueues: s.MaxQueues})
		}
	}
	live := make([]*VHost, 0, len(b.vhosts))
	for _, v := range b.vhosts {
		live = append(live, v)
	}
	b.vhMu.Unlock()
	for _, v := range live {
		s := want[v.name]
		v.maxQueues.Store(s.MaxQueues)
		v.setPolicies(s.Policies)
	}
	return retired
}

// NextMessageID numbers messages uniquely across restarts (ids continue from the store's
// maximum).
func (b *Broker) NextMessageID() uint64 { return b.msgID.Add(1) }

// Close stops the queues' timers and closes the store. Front ends must be closed first.
func (b *Broker) Close() error {
	b.closeMu.Lock()
	b.closing = true
	b.closeMu.Unlock()
	b.vhMu.RLock()
	for _, v := range b.vhosts {
		v.stopTimers()
	}
	for _, v := range b.retired {
		v.stopTimers()
	}
	b.vhMu.RUnlock()
	b.delayed.close()
	b.closeStreams()
	if b.store != nil {
		if err := b.store.Close(); err != nil {
			return fmt.Errorf("closing storage: %w", err)
		}
	}
	return nil
}
