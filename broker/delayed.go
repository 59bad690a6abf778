package broker

import (
	"bytes"
	"container/heap"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/exchange"
	"github.com/warrenmq/warren/persistence"
	"github.com/warrenmq/warren/queue"
)

// The x-delayed-message exchange, with the semantics of RabbitMQ's delayed-message-exchange
// plugin: declared with an x-delayed-type argument (direct, fanout, topic or headers) that
// routes; a message published with a positive x-delay header (milliseconds, at most
// 4294967295 as the plugin's Erlang timer) is held and routed when due, through the bindings
// as they are then; the routed copy carries x-delay negated (so it is never delayed again, and
// consumers can tell). Other messages route at once.
//
// Unlike the plugin, held messages go through the store's journal like persistent messages (a
// confirm means synced), they are indexed on disk by due time (persistence/delayed.go), and
// only a window of them - those due within delayWindow, at most delayMaxMem - is in memory.
// One timer for the whole broker routes them (delayer.fire). Without a store (no data
// directory) they are all kept in memory.
//
// Locking: delayer.mu sits below VHost.mu (an exchange is registered and dropped under
// VHost.mu) and above the store's journal queue (writes are submitted under it; the journal's
// done callbacks take it, see committed). Routing a due message takes VHost.mu and the queues'
// locks with delayer.mu released; a read ahead reads the store with no lock held.

const (
	delayedType    = "x-delayed-message"
	delayedTypeArg = "x-delayed-type"
	delayHeader    = "x-delay"
	// maxDelay is the plugin's bound (Erlang's timer limit): a larger x-delay routes at once.
	maxDelay = 4294967295
	// delayWindow is how far ahead held messages are read into memory.
	delayWindow = 2 * time.Second
	// delayMaxMem and delayMaxMemBytes bound the held messages kept in memory.
	delayMaxMem      = 20000
	delayMaxMemBytes = 32 << 20
)

// DelayedExchangeType is the exchange type of the delayed-message plugin's exchanges.
const DelayedExchangeType = delayedType

// delayedExchange is what an x-delayed-message exchange has beside its x-delayed-type router.
type delayedExchange struct {
	v *VHost
	// inc is this life of the exchange: its held messages are stored under it.
	inc uint64
	// home, when set, is the cluster node that holds the exchange's messages (the node that
	// declared it, recorded in the replicated metadata): this node forwards its delayed
	// publishes there (forwardHeld) and holds none itself. Unset: this node holds them (a
	// single node, or the home). Atomic: a node that restored the exchange from its store
	// learns from the log that it lives elsewhere while publishers may read it.
	home atomic.Pointer[string]
}

// remoteHome is the node holding the exchange's messages when it is not this one, else "".
func (de *delayedExchange) remoteHome() string {
	if h := de.home.Load(); h != nil {
		return *h
	}
	return ""
}

// typeName is the exchange's type as declared.
func (ex *Exchange) typeName() string {
	if ex.delayed != nil {
		return delayedType
	}
	return ex.kind.String()
}

// parseDelayedType validates an x-delayed-message declare's arguments as the plugin does and
// returns the routing kind.
func parseDelayedType(args amqp.Table) (exchange.Kind, *amqp.Error) {
	var t string
	switch x := args[delayedTypeArg].(type) {
	case string:
		t = x
	case []byte:
		t = string(x)
	default:
		return 0, amqp.Errorf(amqp.PreconditionFailed, "Invalid argument, 'x-delayed-type' must be an existing exchange type")
	}
	kind, ok := exchange.ParseKind(t)
	if !ok {
		// rabbit_exchange:check_type's error; x-delayed-message itself would make the plugin
		// recurse, Warren refuses it the same way.
		return 0, amqp.Errorf(amqp.CommandInvalid, "unknown exchange type '%s'", t)
	}
	return kind, nil
}

// delayOf reads a message's x-delay as the plugin does: integers, strings holding an integer
// and floats (truncated). ok is false when the message routes at once (absent, not a number,
// zero, negative or beyond maxDelay).
func delayOf(h amqp.Table) (ms int64, ok bool) {
	switch x := h[delayHeader].(type) {
	case int8:
		ms = int64(x)
	case uint8:
		ms = int64(x)
	case int16:
		ms = int64(x)
	case uint16:
		ms = int64(x)
	case int32:
		ms = int64(x)
	case uint32:
		ms = int64(x)
	case int64:
		ms = x
	case string:
		n, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			return 0, false
		}
		ms = n
	case float32:
		ms = truncMillis(float64(x))
	case float64:
		ms = truncMillis(x)
	case amqp.Decimal:
		ms = truncMillis(float64(x.Value) / math.Pow10(int(x.Scale)))
	default:
		return 0, false
	}
	return ms, ms > 0 && ms <= maxDelay
}

func truncMillis(f float64) int64 {
	if math.IsNaN(f) || f > maxDelay+1 || f < 0 {
		return 0
	}
	return int64(f)
}

// withDelayHeader returns the content header with x-delay set to -ms, as the plugin delivers
// it.
func withDelayHeader(header []byte, ms int64) ([]byte, error) {
	full, err := amqp.DecodeContentHeader(header)
	if err != nil {
		return nil, err
	}
	h := make(amqp.Table, len(full.Props.Headers))
	for k, v := range full.Props.Headers {
		h[k] = v
	}
	if ms <= math.MaxInt32 {
		h[delayHeader] = int32(-ms)
	} else {
		h[delayHeader] = -ms
	}
	full.Props.Headers = h
	return amqp.AppendContentHeader(nil, full.ClassID, full.BodySize, &full.Props), nil
}

// delayClock is the time source of the scheduler; tests inject a manual one.
type delayClock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) delayTimer
}

type delayTimer interface{ Stop() bool }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) delayTimer {
	return time.AfterFunc(d, f)
}

// heldMsg is a held message in memory.
type heldMsg struct {
	// fwd, when set, is the exchange homed on another node whose home is to hold this message
	// (forwardHeld); header is then the publisher's, x-delay intact.
	fwd        *Exchange
	key        persistence.DelayedKey
	inMem      bool // in the heap (or routed): a late commit must not add it again
	synced     bool // its write has committed (read from disk, or committed called)
	routingKey string
	header     []byte // as delivered (x-delay negated)
	body       []byte
}

func (h *heldMsg) size() int64 { return int64(len(h.header)+len(h.body)+len(h.routingKey)) + 96 }

type heldHeap []*heldMsg

func (h heldHeap) Len() int           { return len(h) }
func (h heldHeap) Less(i, j int) bool { return h[i].key.Less(h[j].key) }
func (h heldHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *heldHeap) Push(x any)        { *h = append(*h, x.(*heldMsg)) }
func (h *heldHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return x
}

// dkey is a held message's identity without its incarnation.
type dkey struct {
	due int64
	seq uint64
}

func dk(k persistence.DelayedKey) dkey { return dkey{k.Due, k.Seq} }

// delayer holds the delayed exchanges' messages of a broker until they are due.
//
// The invariant that makes the on-disk index safe to read ahead: every held message with a key
// up to frontier is in the heap (or already routed); every one beyond it is only on disk (or on
// its way there), with a key up to maxDisk. A read ahead reads a snapshot of the store on a
// goroutine of its own, so a slow journal (a disk sync, a compaction stall) never delays it;
// the snapshot may miss messages whose write had not committed when it was taken. So a message
// held beyond the frontier stays in memory (unsynced) until its write has committed, and one
// that commits while a read is in flight is kept aside (arrived): when the read returns, those
// up to its end join the heap with what it read, once each.
type delayer struct {
	b           *Broker
	store       *persistence.Store // nil: everything in memory
	clock       delayClock
	window      time.Duration
	maxMem      int
	maxMemBytes int64

	mu       sync.Mutex
	live     map[uint64]*Exchange // incarnation -> its exchange
	heap     heldHeap
	memBytes int64
	frontier persistence.DelayedKey
	maxDisk  persistence.DelayedKey
	reading  bool
	arrived  []*heldMsg        // committed while a read was in flight
	unsynced map[*heldMsg]bool // held beyond the frontier, write not yet committed
	pending  map[dkey]struct{} // a transaction's, being written: placed by commitTx, not by a read
	recent   map[dkey]struct{} // routed, removal not yet committed
	timer    delayTimer
	timerAt  int64 // unix ms the timer is set for; 0: none
	seq      uint64
	lastInc  uint64
	closed   bool
	started  bool // the timer may be armed (start, Broker.StartDelayed)
	readErrs int
	state    *persistence.DelayedState // loaded at restore, nil after start

	held    atomic.Int64 // messages held, in memory or on disk
	routed  atomic.Uint64
	dropped atomic.Uint64 // held messages whose exchange was deleted

	deliverMu sync.Mutex    // one delivery round at a time, in due order
	remoteOut []bgForward   // the forwards of the message being routed (collectRemote), under deliverMu
	stop      chan struct{} // closed by close: forwardDue gives up waiting
	pubs      map[*VHost]*Publisher
	drops     sync.WaitGroup // background drops and the read ahead in flight

	// dueOut holds the routed due messages whose copies for other nodes forwardDue has not
	// taken yet, in due order; forwarding is set while its one goroutine runs. Under mu.
	dueOut     []dueForward
	forwarding bool
}

func newDelayer(b *Broker, clock delayClock) *delayer {
	return &delayer{
		b: b, store: b.store, clock: clock, window: delayWindow, maxMem: delayMaxMem, maxMemBytes: delayMaxMemBytes,
		live: map[uint64]*Exchange{}, recent: map[dkey]struct{}{}, pubs: map[*VHost]*Publisher{}, unsynced: map[*heldMsg]bool{},
		pending: map[dkey]struct{}{}, stop: make(chan struct{}),
	}
}

// DelayedStats counts the delayed exchanges' messages.
type DelayedStats struct {
	Held     int64  // waiting, in memory or on disk
	InMemory int    // of which in memory
	Routed   uint64 // routed when due since start
	Dropped  uint64 // dropped with their exchange since start
}

// DelayedStats returns the delayed exchanges' counters.
func (b *Broker) DelayedStats() DelayedStats {
	d := b.delayed
	d.mu.Lock()
	n := len(d.heap)
	d.mu.Unlock()
	return DelayedStats{Held: d.held.Load(), InMemory: n, Routed: d.routed.Load(), Dropped: d.dropped.Load()}
}

// newIncarnation names a new life of a delayed exchange: unique across restarts as long as
// the clock does not go back past the last one.
func (d *delayer) newIncarnation() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lastInc = max(d.lastInc+1, uint64(time.Now().UnixNano()))
	return d.lastInc
}

// register makes ex's held messages routable (declare, restore). Called under VHost.mu.
func (d *delayer) register(ex *Exchange) {
	d.mu.Lock()
	d.live[ex.delayed.inc] = ex
	d.lastInc = max(d.lastInc, ex.delayed.inc)
	d.mu.Unlock()
}

// unregister drops ex's held messages: at once from memory, in the background from disk.
// Called under VHost.mu with the exchange's store deletion (sw) submitted. An exchange homed
// on another node holds nothing here.
func (d *delayer) unregister(ex *Exchange, sw *storeWaits) {
	if ex.delayed.remoteHome() != "" {
		return
	}
	inc := ex.delayed.inc
	d.mu.Lock()
	delete(d.live, inc)
	kept := d.heap[:0]
	dropped := int64(0)
	for _, h := range d.heap {
		if h.key.Incarnation == inc {
			h.inMem = false // dropped: a failed write no longer leaves it held (committed)
			d.memBytes -= h.size()
			dropped++
			continue
		}
		kept = append(kept, h)
	}
	clear(d.heap[len(kept):])
	d.heap = kept
	heap.Init(&d.heap)
	// Those on their way to disk are dropped there (and counted) by startDrop.
	for h := range d.unsynced {
		if h.key.Incarnation == inc {
			delete(d.unsynced, h)
		}
	}
	d.arrived = slices.DeleteFunc(d.arrived, func(h *heldMsg) bool { return h.key.Incarnation == inc })
	if d.store == nil {
		d.held.Add(-dropped)
		d.dropped.Add(uint64(dropped))
	} else {
		if ex.durable {
			d.store.DeleteDelayedExchangeAsync(ex.delayed.v.name, ex.name, sw.add(d.b, "deleting delayed exchange"))
		}
		d.startDrop(inc)
	}
	d.mu.Unlock()
}

// startDrop deletes an incarnation's stored messages on a goroutine of its own (there may be
// millions; nobody waits for them: the scheduler skips messages of unknown incarnations).
// Called with d.mu held.
func (d *delayer) startDrop(inc uint64) {
	if d.closed {
		return
	}
	d.drops.Add(1)
	go func() {
		defer d.drops.Done()
		var from persistence.DelayedKey
		for {
			d.mu.Lock()
			closed := d.closed
			d.mu.Unlock()
			if closed {
				return
			}
			n, next, done, err := d.store.DropDelayedChunk(inc, from)
			if err != nil {
				d.b.log.Error("dropping delayed messages of a deleted exchange", "err", err)
				return
			}
			d.held.Add(-int64(n))
			d.dropped.Add(uint64(n))
			if done {
				return
			}
			from = next
		}
	}()
}

// start resumes after restore: incarnations on disk that no restored exchange owns (transient
// exchanges, or deletes interrupted by a crash) are dropped, and the timer is armed when arm is
// set (else by Broker.StartDelayed).
func (d *delayer) start(st persistence.DelayedState, arm bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.held.Store(st.Count)
	d.maxDisk = st.Last
	d.seq = st.Last.Seq
	for _, inc := range st.Incarnations {
		if d.live[inc] == nil {
			d.startDrop(inc)
		}
	}
	if arm {
		d.started = true
		d.arm(d.clock.Now())
	}
}

// close stops the timer and waits for a delivery round and the background drops in progress.
func (d *delayer) close() {
	d.mu.Lock()
	if !d.closed {
		close(d.stop)
	}
	d.closed = true
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	d.mu.Unlock()
	d.deliverMu.Lock()
	//lint:ignore SA2001 waiting for the round in progress
	d.deliverMu.Unlock()
	d.drops.Wait()
}

// prepare returns the held message a publish to a delayed exchange becomes, or nil when the
// message routes at once.
func (d *delayer) prepare(ex *Exchange, routingKey string, header, headersRaw, body []byte) *heldMsg {
	if !bytes.Contains(headersRaw, []byte("\x07"+delayHeader)) {
		return nil
	}
	h, _, err := amqp.DecodeTable(headersRaw)
	if err != nil {
		return nil
	}
	ms, ok := delayOf(h)
	if !ok {
		return nil
	}
	if ex.delayed.remoteHome() != "" {
		// Held by the exchange's home: the delay counts from the message's arrival there.
		return &heldMsg{fwd: ex, routingKey: routingKey, header: header, body: body}
	}
	nh, err := withDelayHeader(header, ms)
	if err != nil {
		return nil
	}
	return &heldMsg{
		key:        persistence.DelayedKey{Due: ceilMilli(d.clock.Now()) + ms, Incarnation: ex.delayed.inc},
		routingKey: routingKey, header: nh, body: body,
	}
}

// add holds h: stored (done runs once it is synced) and, when due soon, kept in memory. It
// reports whether done waits for the store; false when the exchange is gone (h is dropped, as
// a publish to a deleted exchange) or there is no store.
func (d *delayer) add(h *heldMsg, done func(error)) (onDisk bool) {
	if h.fwd != nil {
		d.forwardHeld(h, done)
		return true
	}
	d.mu.Lock()
	if d.closed || d.live[h.key.Incarnation] == nil {
		d.mu.Unlock()
		return false
	}
	d.seq = max(d.seq+1, uint64(time.Now().UnixNano()))
	h.key.Seq = d.seq
	ex := d.live[h.key.Incarnation]
	now := d.clock.Now()
	d.place(h, now.UnixMilli())
	if d.store != nil {
		finish := func(err error) {
			d.committed(h, err)
			if done != nil {
				done(err)
			}
		}
		// Submitted under d.mu so that it is ordered before the drop of an exchange deleted
		// from now on (startDrop). The store calls done at once when it is closing, on this
		// goroutine, which holds d.mu: finish (which takes it) then runs on its own.
		var submitted atomic.Bool
		d.store.PutDelayedAsync([]persistence.Delayed{{
			Key: h.key, VHost: ex.delayed.v.name, Exchange: ex.name, RoutingKey: h.routingKey, Header: h.header, Body: h.body,
		}}, func(err error) {
			if !submitted.Load() {
				go finish(err)
				return
			}
			finish(err)
		})
		submitted.Store(true)
	}
	d.held.Add(1)
	d.arm(now)
	d.mu.Unlock()
	if d.store != nil && d.store.Queued() > journalRoom {
		d.b.stats.flowPauses.Add(1)
		d.store.AwaitRoom(journalRoom)
	}
	return d.store != nil
}

// forwardHeld hands a delayed publish to an exchange homed on another node to that home
// (Forwarder.Forward with no queues: DeliverForwarded holds it there). done, when not nil,
// runs once the home has stored it (synced, with a store) or with the error of a home that
// refused it or could not be reached: a confirm is then a nack, never an ack for a message
// held nowhere. Without a forwarder (the link not running) it is refused at once.
func (d *delayer) forwardHeld(h *heldMsg, done func(error)) {
	ex := h.fwd
	home := ex.delayed.remoteHome()
	fw := d.b.cluster.forwarder
	sum, err := amqp.ScanContentHeader(h.header)
	if fw == nil || err != nil {
		if done != nil {
			done(errForwardRefused)
		}
		return
	}
	// No ExpiresAt: the expiration property counts from when the home routes the message, as
	// for a message held here (route).
	msg := &queue.Message{ID: d.b.NextMessageID(), Exchange: ex.name, RoutingKey: h.routingKey, Header: h.header,
		Body: h.body, Persistent: sum.DeliveryMode == 2, Priority: sum.Priority}
	fw.Forward(home, ex.delayed.v.name, nil, msg, done)
}

// place puts a newly stored message in memory when its key is within the frontier. Called
// with d.mu held.
func (d *delayer) place(h *heldMsg, nowMs int64) {
	if d.store == nil {
		d.push(h)
		return
	}
	if !d.reading && !d.frontier.Less(d.maxDisk) {
		// Nothing stored beyond the frontier: it moves without a read.
		if t := (persistence.DelayedKey{Due: nowMs + d.window.Milliseconds(), Seq: math.MaxUint64}); d.frontier.Less(t) {
			d.frontier = t
		}
	}
	if !d.frontier.Less(h.key) {
		d.push(h)
		d.evict()
		return
	}
	if d.maxDisk.Less(h.key) {
		d.maxDisk = h.key
	}
	d.unsynced[h] = true
}

// committed runs on the journal goroutine once h's write has committed (or failed: then the
// message is not on disk, and a read ahead never finds it; it stays held in memory only if it
// already was).
func (d *delayer) committed(h *heldMsg, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil && !h.inMem {
		// Neither on disk nor in memory (nor routed): it is no longer held. One in memory
		// stays held until routed; one of a deleted exchange is not on disk for its drop to
		// count.
		d.held.Add(-1)
		delete(d.unsynced, h)
		return
	}
	d.markSynced(h)
}

// markSynced records that h's write has committed. Called with d.mu held.
func (d *delayer) markSynced(h *heldMsg) {
	h.synced = true
	if !d.unsynced[h] {
		return
	}
	delete(d.unsynced, h)
	if d.reading && !h.inMem {
		d.arrived = append(d.arrived, h) // the read's snapshot may predate the commit
	}
}

func (d *delayer) push(h *heldMsg) {
	h.inMem = true
	heap.Push(&d.heap, h)
	d.memBytes += h.size()
}

// evict keeps memory bounded when many messages are due soon: the latest quarter goes back
// to disk only (those whose write has not committed yet stay in unsynced until it has) and
// the frontier moves back before them. Not while a read is in flight: its result assumes the
// frontier it started from. Called with d.mu held.
func (d *delayer) evict() {
	if d.store == nil || d.reading || (len(d.heap) <= d.maxMem && d.memBytes <= d.maxMemBytes) {
		return
	}
	all := []*heldMsg(d.heap)
	slices.SortFunc(all, func(a, b *heldMsg) int {
		if a.key.Less(b.key) {
			return -1
		}
		if b.key.Less(a.key) {
			return 1
		}
		return 0
	})
	keep := len(all) * 3 / 4
	var bytes int64
	for i, h := range all {
		if bytes+h.size() > d.maxMemBytes*3/4 && i > 0 {
			keep = min(keep, i)
			break
		}
		bytes += h.size()
	}
	keep = max(keep, 1)
	last := all[len(all)-1].key
	if d.maxDisk.Less(last) {
		d.maxDisk = last
	}
	d.frontier = all[keep-1].key
	for _, h := range all[keep:] {
		d.memBytes -= h.size()
		h.inMem = false
		if !h.synced {
			d.unsynced[h] = true // a read's snapshot may not have it yet
		}
	}
	clear(all[keep:])
	d.heap = heldHeap(all[:keep]) // sorted, so a valid heap
}

// arm starts a read ahead if one is due and sets the timer for the next due message or read.
// Called with d.mu held.
func (d *delayer) arm(now time.Time) {
	if d.closed || !d.started {
		return
	}
	nowMs := now.UnixMilli()
	next := int64(math.MaxInt64)
	if len(d.heap) > 0 {
		next = d.heap[0].key.Due
	}
	if d.store != nil && !d.reading && d.frontier.Less(d.maxDisk) {
		readAt := d.frontier.Due - d.window.Milliseconds()/2
		if readAt <= nowMs {
			d.startRead(nowMs)
		} else if readAt < next {
			next = readAt
		}
	}
	if next == math.MaxInt64 {
		return
	}
	if d.timer != nil && d.timerAt <= next {
		return // it fires first and arms again
	}
	if d.timer != nil {
		d.timer.Stop()
	}
	d.timerAt = next
	d.timer = d.clock.AfterFunc(time.UnixMilli(next).Sub(now), d.fire)
}

// startRead reads the stored messages due within the window into memory, if there is room,
// on a goroutine of its own. Called with d.mu held.
func (d *delayer) startRead(nowMs int64) {
	room := d.maxMem - len(d.heap)
	if room < d.maxMem/4 || d.memBytes > d.maxMemBytes/2 {
		return // routing the messages in memory makes room; fire arms again
	}
	from := d.frontier
	to := persistence.DelayedKey{Due: max(nowMs, from.Due) + d.window.Milliseconds(), Seq: math.MaxUint64}
	d.reading = true
	d.drops.Add(1)
	go func() {
		defer d.drops.Done()
		ds, capped, err := d.store.ReadDelayed(from, to.Due, room)
		d.readDone(from, to, ds, capped, err)
	}()
}

// readDone puts what a read ahead found, and the messages committed meanwhile or still
// uncommitted that it covers, in the heap.
func (d *delayer) readDone(from, to persistence.DelayedKey, ds []persistence.Delayed, capped bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reading = false
	arrived := d.arrived
	d.arrived = nil
	if err != nil {
		// The frontier stays; the messages stay on disk and the read is tried again.
		d.readErrs++
		if d.readErrs == 1 || d.readErrs%100 == 0 {
			d.b.log.Error("reading delayed messages ahead", "err", err, "failures", d.readErrs)
		}
		if !d.closed {
			if d.timer != nil {
				d.timer.Stop()
			}
			d.timerAt = d.clock.Now().Add(100 * time.Millisecond).UnixMilli()
			d.timer = d.clock.AfterFunc(100*time.Millisecond, d.fire)
		}
		return
	}
	d.readErrs = 0
	newF := to
	if capped && len(ds) > 0 {
		newF = ds[len(ds)-1].Key
	}
	covered := func(k persistence.DelayedKey) bool { return from.Less(k) && !newF.Less(k) }
	seen := make(map[dkey]bool, len(ds))
	for i := range ds {
		s := &ds[i]
		seen[dk(s.Key)] = true
		if _, ok := d.recent[dk(s.Key)]; ok {
			continue
		}
		if _, ok := d.pending[dk(s.Key)]; ok {
			continue // commitTx places it once its commit returns
		}
		if d.live[s.Key.Incarnation] == nil {
			continue // its exchange is gone: startDrop deletes and counts it
		}
		d.push(&heldMsg{key: s.Key, routingKey: s.RoutingKey, header: s.Header, body: s.Body, synced: true})
	}
	for _, h := range arrived {
		if covered(h.key) && !h.inMem && !seen[dk(h.key)] {
			seen[dk(h.key)] = true
			d.push(h)
		}
	}
	for h := range d.unsynced {
		if covered(h.key) && !seen[dk(h.key)] {
			seen[dk(h.key)] = true
			delete(d.unsynced, h)
			d.push(h)
		}
	}
	d.frontier = newF
	d.evict()
	d.arm(d.clock.Now())
}

// fire routes the messages that are due. It runs on the timer's goroutine.
func (d *delayer) fire() {
	d.deliverMu.Lock()
	defer d.deliverMu.Unlock()
	now := d.clock.Now()
	nowMs := now.UnixMilli()
	type due struct {
		h  *heldMsg
		ex *Exchange
	}
	var batch []due
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.timer, d.timerAt = nil, 0
	for len(d.heap) > 0 && d.heap[0].key.Due <= nowMs {
		h := heap.Pop(&d.heap).(*heldMsg)
		d.memBytes -= h.size()
		if d.store != nil {
			d.recent[dk(h.key)] = struct{}{}
		}
		batch = append(batch, due{h, d.live[h.key.Incarnation]})
	}
	d.mu.Unlock()

	var keys []persistence.DelayedKey
	var remote []dueForward
	for _, x := range batch {
		d.held.Add(-1)
		if x.ex == nil {
			keys = append(keys, x.h.key)
			d.dropped.Add(1)
			continue
		}
		d.remoteOut = d.remoteOut[:0]
		d.route(x.ex, x.h)
		if len(d.remoteOut) == 0 {
			keys = append(keys, x.h.key)
			continue
		}
		// Copies for queues of other nodes: the stored message stays until every home
		// confirmed its copy (forwardDue).
		remote = append(remote, dueForward{key: x.h.key, fwds: slices.Clone(d.remoteOut)})
	}
	clear(d.remoteOut)
	d.remoteOut = d.remoteOut[:0]
	for _, p := range d.pubs {
		p.Flush()
	}
	if len(remote) > 0 {
		d.mu.Lock()
		if !d.closed {
			d.dueOut = append(d.dueOut, remote...)
			if !d.forwarding {
				d.forwarding = true
				d.drops.Add(1)
				go d.forwardDue()
			}
		}
		d.mu.Unlock()
	}
	// Submitted after the routed copies' publish batches: removed with or after them.
	d.removeRouted(keys)
	d.mu.Lock()
	d.arm(d.clock.Now())
	d.mu.Unlock()
}

// dueForward is a routed due message's copies for queues of other nodes, not all confirmed yet.
type dueForward struct {
	key  persistence.DelayedKey
	fwds []bgForward // those not confirmed yet
}

// delayedRetryMax bounds the back-off between forwards of a due message that a home refused or
// that could not reach it.
const delayedRetryMax = time.Second

// collectRemote takes a forward of the message being routed (route) to queues of another
// node: fire sends it confirmed, off the timer goroutine (forwardDue). Called by publishSplit on
// the delayer's publisher, under deliverMu. It makes one forward per queue: the home refuses a
// forward when any one of its queues does (a full reject-publish queue) after the others have
// queued their copy, so a retry of the forward as a whole would put another copy in those.
func (d *delayer) collectRemote(home, vhost string, queues []string, msg *queue.Message) {
	for _, q := range queues {
		d.remoteOut = append(d.remoteOut, bgForward{home: home, vhost: vhost, queues: []string{q}, msg: msg})
	}
}

// forwardDue forwards due messages to queues of other nodes with confirms, in order, and
// removes each stored message once every home accepted its copy; a refused or failed forward is
// sent again after a back-off (its stored message stays, so a restart meanwhile routes it
// again: at least once). A message whose exchange was deleted meanwhile is dropped. It runs on
// one goroutine of its own (a forward may wait for room on the link), started by fire when it
// queues the first in dueOut; each round it takes those fire queued since, behind the ones
// still refused, and it ends when none is left (deciding so under mu, where fire looks at
// forwarding: nothing queued is left without a goroutine).
func (d *delayer) forwardDue() {
	defer d.drops.Done()
	fw := d.b.cluster.forwarder
	const backoffMin = 20 * time.Millisecond
	backoff := backoffMin
	attempt := 0
	var list []dueForward
	for {
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return // the stored messages stay: routed again at the next start
		}
		list = append(list, d.dueOut...)
		clear(d.dueOut)
		d.dueOut = d.dueOut[:0]
		if len(list) == 0 {
			d.forwarding = false
			d.mu.Unlock()
			return
		}
		d.mu.Unlock()
		type result struct {
			i, j int
			err  error
		}
		n := 0
		for i := range list {
			n += len(list[i].fwds)
		}
		results := make(chan result, n)
		for i := range list {
			for j, f := range list[i].fwds {
				fw.Forward(f.home, f.vhost, f.queues, f.msg, func(err error) { results <- result{i, j, err} })
			}
		}
		failed := make([][]bool, len(list))
		for i := range list {
			failed[i] = make([]bool, len(list[i].fwds))
		}
		nfailed := 0
		var firstErr error
		for range n {
			var r result
			select {
			case r = <-results:
			case <-d.stop:
				return // closing: the stored messages stay, routed again at the next start
			}
			if r.err != nil {
				failed[r.i][r.j] = true
				nfailed++
				if firstErr == nil {
					firstErr = r.err
				}
			}
		}
		var done []persistence.DelayedKey
		kept := list[:0]
		d.mu.Lock()
		for i, x := range list {
			fwds := x.fwds[:0]
			for j, f := range x.fwds {
				if failed[i][j] {
					fwds = append(fwds, f)
				}
			}
			if len(fwds) == 0 || d.live[x.key.Incarnation] == nil {
				done = append(done, x.key)
				continue
			}
			kept = append(kept, dueForward{key: x.key, fwds: fwds})
		}
		d.mu.Unlock()
		clear(list[len(kept):])
		list = kept
		d.removeRouted(done)
		if len(list) == 0 {
			backoff, attempt = backoffMin, 0 // those queued meanwhile go at once
			continue
		}
		if attempt++; attempt&(attempt-1) == 0 { // the 1st, 2nd, 4th, ... failure: say it, not flood
			d.b.log.Warn("delayed messages for queues of other nodes not accepted, retrying",
				"messages", len(list), "forwards_failed", nfailed, "err", firstErr, "retry_in", backoff, "attempt", attempt)
		}
		select {
		case <-time.After(backoff):
		case <-d.stop:
			return
		}
		backoff = min(2*backoff, delayedRetryMax)
	}
}

// removeRouted removes routed messages from the store (without one, there is nothing to do).
func (d *delayer) removeRouted(keys []persistence.DelayedKey) {
	if d.store == nil || len(keys) == 0 {
		return
	}
	d.store.RemoveDelayedAsync(keys, func(err error) {
		if err != nil {
			d.b.log.Error("removing routed delayed messages", "err", err)
		}
		d.mu.Lock()
		for _, k := range keys {
			delete(d.recent, dk(k))
		}
		d.mu.Unlock()
	})
}

// route publishes a due message through its exchange's x-delayed-type routing, as a new
// message (its x-delay is negative: it is not held again).
func (d *delayer) route(ex *Exchange, h *heldMsg) {
	v := ex.delayed.v
	p := d.pubs[v]
	if p == nil {
		p = v.NewPublisher()
		p.collect = d.collectRemote // copies for other nodes: fire forwards them confirmed
		d.pubs[v] = p
	}
	sum, err := amqp.ScanContentHeader(h.header)
	if err != nil {
		d.b.log.Error("held message with a bad content header dropped", "exchange", ex.name, "err", err)
		return
	}
	msg, aerr := d.b.NewMessage(ex, h.routingKey, h.header, &sum, h.body)
	if aerr != nil {
		d.b.log.Error("held message dropped", "exchange", ex.name, "err", aerr)
		return
	}
	d.routed.Add(1)
	p.Publish(ex, msg, sum.HeadersRaw, nil)
}

// loadState reads the store's delayed state once (restore needs the incarnations, start the
// rest).
func (d *delayer) loadState() (*persistence.DelayedState, error) {
	if d.state != nil || d.store == nil {
		if d.state == nil {
			d.state = &persistence.DelayedState{}
		}
		return d.state, nil
	}
	st, err := d.store.LoadDelayed()
	if err != nil {
		return nil, err
	}
	d.state = &st
	return d.state, nil
}

// restoreExchange gives a restored durable delayed exchange its incarnation and registers it.
func (d *delayer) restoreExchange(v *VHost, ex *Exchange) error {
	st, err := d.loadState()
	if err != nil {
		return err
	}
	inc, ok := st.Exchanges[[2]string{v.name, ex.name}]
	if !ok {
		// Its record was committed without the incarnation's (a crash between the two
		// writes): it never held a message.
		inc = d.newIncarnation()
		if err := persistenceWait(func(done func(error)) { d.store.PutDelayedExchangeAsync(v.name, ex.name, inc, done) }); err != nil {
			return err
		}
	}
	ex.delayed = &delayedExchange{v: v, inc: inc}
	d.register(ex)
	return nil
}

func persistenceWait(submit func(func(error))) error {
	ch := make(chan error, 1)
	submit(func(err error) { ch <- err })
	return <-ch
}

// startDelayed loads the held messages' state after restore, and starts routing them when arm
// is set (else StartDelayed does).
func (b *Broker) startDelayed(arm bool) error {
	st, err := b.delayed.loadState()
	if err != nil {
		return err
	}
	b.delayed.start(*st, arm)
	b.delayed.state = nil
	return nil
}

// StartDelayed starts routing the delayed exchanges' held messages when broker.New was told to
// defer it (Options.DeferDelayed): a cluster member calls it once it has caught up with the
// metadata log and installed its forwarder. Calling it again, or without a deferral, does
// nothing.
func (b *Broker) StartDelayed() {
	d := b.delayed
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.started {
		return
	}
	d.started = true
	d.arm(d.clock.Now())
}

// commitTx writes a transaction's batch and its held messages hs in one journal transaction
// and waits for it: both are durable or neither is, so a failure leaves nothing applied (the
// caller's promise to the front end). The held messages are placed only once committed. Without
// a store they are held in memory.
func (d *delayer) commitTx(batch *persistence.Batch, hs []*heldMsg) error {
	// Those for exchanges homed on other nodes go first, and the commit waits until their
	// homes stored them: a failure fails the commit before anything is applied here.
	if remote := slices.IndexFunc(hs, func(h *heldMsg) bool { return h.fwd != nil }); remote >= 0 {
		errs := make(chan error, len(hs))
		n := 0
		local := hs[:0:0]
		for _, h := range hs {
			if h.fwd == nil {
				local = append(local, h)
				continue
			}
			n++
			d.forwardHeld(h, func(err error) { errs <- err })
		}
		var first error
		for range n {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		if first != nil {
			return fmt.Errorf("a delayed message for the home node of its exchange was not accepted: %w", first)
		}
		hs = local
	}
	if d.store == nil {
		for _, h := range hs {
			d.add(h, nil)
		}
		return nil
	}
	d.mu.Lock()
	var kept []*heldMsg
	var ds []persistence.Delayed
	for _, h := range hs {
		ex := d.live[h.key.Incarnation]
		if d.closed || ex == nil {
			continue // dropped, as a publish to a deleted exchange
		}
		d.seq = max(d.seq+1, uint64(time.Now().UnixNano()))
		h.key.Seq = d.seq
		kept = append(kept, h)
		d.pending[dk(h.key)] = struct{}{}
		ds = append(ds, persistence.Delayed{
			Key: h.key, VHost: ex.delayed.v.name, Exchange: ex.name, RoutingKey: h.routingKey, Header: h.header, Body: h.body,
		})
	}
	if len(ds) == 0 && len(batch.Publishes) == 0 && len(batch.Removes) == 0 {
		d.mu.Unlock()
		return nil
	}
	d.held.Add(int64(len(kept)))
	// Submitted under d.mu so that it is ordered before the drop of an exchange deleted from
	// now on (startDrop); done does not take d.mu (it may run synchronously, store closing).
	ch := make(chan error, 1)
	d.store.SubmitWithDelayed(batch, ds, func(err error) { ch <- err })
	d.mu.Unlock()
	err := <-ch

	d.mu.Lock()
	defer d.mu.Unlock()
	for _, h := range kept {
		delete(d.pending, dk(h.key))
	}
	if err != nil {
		d.held.Add(-int64(len(kept)))
		return err
	}
	now := d.clock.Now()
	for _, h := range kept {
		if d.live[h.key.Incarnation] == nil {
			continue // deleted meanwhile: its drop deletes (and counts) it on disk
		}
		d.place(h, now.UnixMilli())
		d.markSynced(h)
	}
	d.arm(now)
	return nil
}

// ceilMilli is t in Unix milliseconds rounded up: a due time counted from the truncated
// millisecond would let a message out up to 1 ms before its x-delay has passed.
func ceilMilli(t time.Time) int64 {
	ms := t.UnixMilli()
	if t.Sub(time.UnixMilli(ms)) > 0 {
		ms++
	}
	return ms
}
