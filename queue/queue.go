package queue

import (
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Message is one published message. It is immutable once built and shared by every queue it was
// routed to, so fan-out never copies the body.
type Message struct {
	ID         uint64
	Exchange   string
	RoutingKey string
	// Header is the raw content-header frame payload, written back verbatim on delivery.
	Header     []byte
	Body       []byte
	Persistent bool
	// ExpiresAt is the absolute expiry from the per-message expiration property (unix nanoseconds);
	// 0 means none.
	ExpiresAt int64
	// Priority is the priority property (0 when absent). Only a priority queue looks at it, in
	// NextSeqFor, capped at its MaxPriority.
	Priority uint8
}

// Entry is one queue's reference to a message.
type Entry struct {
	Seq uint64
	Msg *Message
	// Deliveries counts how often the entry was handed to a consumer or basic.get.
	Deliveries uint32
	// Returns counts requeues (RabbitMQ quorum queues' delivery-count), which x-delivery-limit bounds.
	Returns uint32
	// ExpiresAt is the earlier of the queue TTL and the message expiration (unix nanoseconds); 0 = never.
	ExpiresAt int64
	// Durable is set by the owner when the entry has a copy on disk that must be removed with it.
	Durable bool
	// SharedOnDisk is set by the owner when that copy may be referenced by other queues' entries.
	SharedOnDisk bool
	// MaybeDelivered is set by the owner on an entry read back from a store that stopped
	// uncleanly: its one delivery (Deliveries 1) is assumed, not real, and the owner derives it
	// again whenever it reads the stored copy back, so the entry may be paged out like a never
	// delivered one as long as Deliveries is still 1.
	MaybeDelivered bool
	readyAt        int64
}

// Redelivered reports whether the entry was delivered before.
func (e *Entry) Redelivered() bool { return e.Deliveries > 0 }

// Outcome is a consumer's answer to an offered entry.
type Outcome uint8

const (
	// Busy means the consumer has no credit now; the queue tries the next consumer.
	Busy Outcome = iota
	// Accepted means the entry was delivered and awaits an ack.
	Accepted
	// AcceptedNoAck means the entry was delivered and is done (no-ack consumer).
	AcceptedNoAck
)

// Consumer receives entries from a queue.
type Consumer interface {
	// Deliver is called with the queue's lock held: it must not call back into the queue.
	Deliver(q *Queue, e *Entry) Outcome
}

// Reason says why entries left a queue without being acked.
type Reason uint8

const (
	// Rejected: basic.reject / basic.nack with requeue=false.
	Rejected Reason = iota + 1
	// Expired: the message TTL or expiration passed.
	Expired
	// MaxLen: dropped from the head by the drop-head overflow policy.
	MaxLen
	// DeliveryLimit: requeued more often than x-delivery-limit allows.
	DeliveryLimit
	// Purged: queue.purge or queue deletion; never dead-lettered.
	Purged
)

// String returns RabbitMQ's x-death reason name.
func (r Reason) String() string {
	switch r {
	case Rejected:
		return "rejected"
	case Expired:
		return "expired"
	case MaxLen:
		return "maxlen"
	case DeliveryLimit:
		return "delivery_limit"
	case Purged:
		return "purged"
	}
	return "unknown"
}

// Overflow is the x-overflow policy applied when a length limit is reached.
type Overflow uint8

const (
	// DropHead drops (and dead-letters) the oldest messages.
	DropHead Overflow = iota
	// RejectPublish refuses new messages (publisher confirms get a nack).
	RejectPublish
	// RejectPublishDLX refuses new messages and dead-letters them.
	RejectPublishDLX
)

// Options are a queue's limits and timing, from its x- arguments. Negative values mean "no limit".
type Options struct {
	MessageTTL     time.Duration
	MaxLength      int64
	MaxLengthBytes int64
	Overflow       Overflow
	DeliveryLimit  int64
	// RedeliveryDelay holds a requeued entry back this long before it can be delivered again
	// (Warren extension x-redelivery-delay); each further requeue multiplies it by RedeliveryBackoff,
	// capped at RedeliveryMaxDelay.
	RedeliveryDelay    time.Duration
	RedeliveryBackoff  float64
	RedeliveryMaxDelay time.Duration
	// MaxPriority makes a priority queue (x-max-priority, 1..MaxPriorityLimit; 0 = not one):
	// entries are delivered highest priority first, FIFO within a priority (see NextSeqFor). It is
	// fixed when the queue is created: SetOptions keeps the value New was given.
	MaxPriority int
	// SingleActiveConsumer (x-single-active-consumer): only the earliest registered consumer
	// still present receives; the others wait their turn. Fixed at New like MaxPriority.
	SingleActiveConsumer bool
}

// NoLimits returns Options with every limit off.
func NoLimits() Options {
	return Options{MessageTTL: -1, MaxLength: -1, MaxLengthBytes: -1, DeliveryLimit: -1}
}

// Hooks tell the owner about entries that leave the queue without an ack.
type Hooks struct {
	// Dropped is called without the queue's lock held, in the goroutine that caused the drop.
	Dropped func(q *Queue, es []*Entry, why Reason)
	// ActiveChanged is called, for a single-active-consumer queue, when the active consumer
	// changes: c is the new one, nil when the last consumer left (not when the queue is
	// closed). Like Dropped it runs without the lock, in order with the queue's other hook calls,
	// possibly after c received its first entries.
	ActiveChanged func(q *Queue, c Consumer)
}

// PushResult says what happened to a pushed entry.
type PushResult uint8

const (
	// Enqueued: the entry is in the queue (or already delivered).
	Enqueued PushResult = iota
	// Refused: the queue is full with overflow reject-publish, or deleted.
	Refused
	// RefusedDeadLetter: the queue is full with overflow reject-publish-dlx: dead-letter the message.
	RefusedDeadLetter
)

// drop is a hook call collected under mu: entries that left (es, why) or, with activeChanged,
// a new active consumer.
type drop struct {
	es            []*Entry
	why           Reason
	activeChanged bool
	active        Consumer
}

// Queue is one queue's in-memory state. All methods are safe for concurrent use.
type Queue struct {
	Name  string
	opts  Options // guarded by mu
	hooks Hooks
	// cur is opts for readers outside mu (Options, NewEntry on the publish path); SetOptions
	// replaces both.
	cur atomic.Pointer[Options]

	mu    sync.Mutex
	ready deque
	// prio holds a priority queue's ready entries instead of ready (Options.MaxPriority > 0;
	// maxPrio is that maximum). See priority.go. Kept next to ready: every push reads them.
	prio      *prioReady
	maxPrio   int
	delayed   []*Entry // waiting out x-redelivery-delay, ordered by readyAt
	bytes     int64    // body bytes of ready and delayed entries (in memory)
	unacked   int
	consumers []Consumer // in registration order
	// groups are the consumers offered entries, by consumer priority, highest first; with a
	// single active consumer (sac) only consumers[0], in one group.
	groups   []consumerGroup
	sac      bool
	closed   bool
	emitting bool   // a goroutine is emitting drops
	drops    []drop // collected under mu, emitted by unlockEmit
	timer    *time.Timer
	timerAt  int64

	seq       uint64 // last reserved sequence number; guarded by mu
	delivered uint64 // entries consumers accepted, ever; guarded by mu
	now       func() int64
	// timed is set once anything in the queue can expire or wait (a TTL, a redelivery delay, an
	// entry with an expiry); until then clock skips reading the time. Guarded by mu.
	timed bool

	// Paging (SetPaging): ready entries beyond the window are paged out and count in the
	// queue's length without holding memory.
	pager    Pager
	window   int
	budget   *Budget
	reserved int64 // bytes reserved in budget for q.bytes
	paged    pageSet
	pageWait chan struct{} // a page-in is in flight; closed when it completes
	pageErr  error         // of the last page-in
	// overflowing: over a drop-head limit with the head paged out (AwaitLimits).
	overflowing atomic.Bool

	// prioSeq[p] is the last counter reserved for priority p in a priority queue.
	prioSeq []uint64
}

// New creates an empty queue.
func New(name string, opts Options, hooks Hooks) *Queue {
	q := &Queue{Name: name, opts: opts, hooks: hooks, now: func() int64 { return time.Now().UnixNano() }}
	if opts.MaxPriority > 0 {
		q.maxPrio = min(opts.MaxPriority, MaxPriorityLimit)
		q.opts.MaxPriority = q.maxPrio
		q.prio = newPrioReady(q.maxPrio)
		q.prioSeq = make([]uint64, q.maxPrio+1)
	}
	q.sac = opts.SingleActiveConsumer
	opts = q.opts
	q.cur.Store(&opts)
	q.timed = opts.MessageTTL >= 0 || opts.RedeliveryDelay > 0
	return q
}

// SetPaging bounds the queue's memory with p; call it before the queue is used. Without it
// every ready message stays in memory.
func (q *Queue) SetPaging(p Paging) {
	q.mu.Lock()
	q.pager, q.window, q.budget = p.Pager, max(p.Window, 1), p.Budget
	q.mu.Unlock()
}

// clock returns the time for expiry and delay decisions, or 0 while nothing in the queue can
// expire or wait, where every such decision holds for any time: reading the clock costs more
// than the rest of a push. Call with mu held.
func (q *Queue) clock() int64 {
	if q.timed {
		return q.now()
	}
	return 0
}

// Options returns the queue's options.
func (q *Queue) Options() Options { return *q.cur.Load() }

// SetOptions changes a live queue's options (a policy was set or changed). New limits apply at
// once: with drop-head, messages over a lowered length limit are dropped from the head (and
// dead-lettered by the owner); under reject-publish the queue only refuses new messages until it
// is below the limit. A new message TTL applies to messages enqueued from now on, as RabbitMQ's
// classic queues do; messages already queued keep their expiry.
func (q *Queue) SetOptions(opts Options) {
	q.mu.Lock()
	opts.MaxPriority, opts.SingleActiveConsumer = q.opts.MaxPriority, q.opts.SingleActiveConsumer
	q.opts = opts
	q.cur.Store(&opts)
	q.timed = q.timed || opts.MessageTTL >= 0 || opts.RedeliveryDelay > 0
	if q.closed {
		q.mu.Unlock()
		return
	}
	if opts.Overflow == DropHead {
		q.dropOverflow()
	}
	now := q.now()
	q.dispatch(now)
	q.settle(now)
	q.unlockEmit()
}

// NextSeq reserves the next sequence number; entries are kept in Seq order. In a priority queue
// it is priority 0's: use NextSeqFor there.
func (q *Queue) NextSeq() uint64 {
	if q.maxPrio > 0 {
		return q.NextSeqFor(&Message{})
	}
	q.mu.Lock()
	q.seq++
	s := q.seq
	q.mu.Unlock()
	return s
}

// Restore appends a recovered entry (from disk) without dispatching; Seq order must be ascending.
func (q *Queue) Restore(e *Entry) {
	q.mu.Lock()
	q.noteSeq(e.Seq)
	q.readyInsert(e)
	q.bytes += int64(len(e.Msg.Body))
	q.timed = q.timed || e.ExpiresAt != 0
	q.syncBudget()
	q.mu.Unlock()
}

// RestorePaged adds a recovered backlog left on disk: the n entries (of bytes body bytes)
// stored with Seq from..to, above every entry restored so far. They are read back through
// the pager (SetPaging first) as the window drains.
func (q *Queue) RestorePaged(from, to uint64, n, bytes int64) {
	if n <= 0 {
		return
	}
	q.mu.Lock()
	q.noteSeq(to)
	q.paged.addDisk(from, to, n, bytes)
	q.mu.Unlock()
}

// NewEntry builds an entry for msg with the queue's TTL applied.
func (q *Queue) NewEntry(seq uint64, msg *Message) *Entry {
	e := &Entry{Seq: seq, Msg: msg, ExpiresAt: msg.ExpiresAt}
	if ttl := q.cur.Load().MessageTTL; ttl >= 0 {
		now := q.now()
		exp := now + int64(ttl)
		if exp < now { // saturate instead of wrapping into the past
			exp = math.MaxInt64
		}
		if e.ExpiresAt == 0 || exp < e.ExpiresAt {
			e.ExpiresAt = exp
		}
	}
	return e
}

// Push adds an entry and delivers what it can.
func (q *Queue) Push(e *Entry) PushResult {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return Refused
	}
	q.timed = q.timed || e.ExpiresAt != 0
	now := q.clock()
	q.expireHead(now)
	if q.opts.Overflow != DropHead && q.full(len(e.Msg.Body)) {
		q.mu.Unlock()
		if q.opts.Overflow == RejectPublishDLX {
			return RefusedDeadLetter
		}
		return Refused
	}
	if e.ExpiresAt != 0 && e.ExpiresAt <= now && q.readyLen() == 0 && len(q.delayed) == 0 && q.paged.count == 0 {
		// Already expired (TTL 0 or past expiration): deliverable only to a consumer ready right now.
		if !q.offer(e) {
			q.drops = append(q.drops, drop{es: []*Entry{e}, why: Expired})
		}
	} else if q.pager != nil && q.pageOut(e) {
		// Behind the window: on disk only, read back when its turn comes.
		q.pageOutEntry(e)
		if q.opts.Overflow == DropHead {
			q.dropOverflow()
		}
	} else {
		if q.prio == nil { // the hot path branches itself: a wrapper would cost a call per push
			q.ready.insertBySeq(e)
		} else {
			q.readyInsert(e)
		}
		q.bytes += int64(len(e.Msg.Body))
		// Deliver before applying drop-head, as RabbitMQ does: a message a ready consumer can take
		// never counts against the limit (max-length 0 must not starve consumers).
		q.dispatch(now)
		if q.opts.Overflow == DropHead {
			q.dropOverflow()
		}
	}
	q.settle(now)
	q.unlockEmit()
	return Enqueued
}

// pageOut reports whether a new entry e goes to a queue's pager (not nil): behind other paged entries (order), or
// when the window or the shared budget is full. In a priority queue e may come before paged
// entries (a higher priority): it stays in memory if there is room, or if room can be made by
// paging out the entry in memory that is delivered last instead.
func (q *Queue) pageOut(e *Entry) bool {
	full := q.readyLen() >= q.window || (q.budget != nil && q.budget.exhausted())
	if q.prio == nil {
		return q.paged.count > 0 || full
	}
	if q.paged.count > 0 && e.Seq > q.paged.min() {
		return true
	}
	return full && !q.evictBack(e.Seq)
}

// pageOutEntry hands e, which is not in memory (any more), to the pager.
func (q *Queue) pageOutEntry(e *Entry) {
	q.paged.add(e.Seq)
	q.paged.bytes += int64(len(e.Msg.Body))
	q.pager.PageOut(e)
}

// evictBack pages out the priority queue's in-memory entry that is delivered last among the
// never delivered ones (see prioReady.evictLast), if it comes after seq, and reports whether it
// did. A paged entry followed by entries in memory is fine: head() waits for it.
func (q *Queue) evictBack(seq uint64) bool {
	b := q.prio.evictLast(seq)
	if b == nil {
		return false
	}
	q.bytes -= int64(len(b.Msg.Body))
	q.pageOutEntry(b)
	return true
}

// head returns the entry to deliver next, or nil when none is in memory: the queue is empty,
// or (in a priority queue) a paged-out entry comes first - its read-ahead must bring it in.
// The hottest callers (dispatch, expireHead, arm) spell it out as q.ready.front() plus
// prioHead: head itself is just over the inliner's budget.
func (q *Queue) head() *Entry {
	if q.prio != nil {
		return q.prioHead()
	}
	return q.ready.front()
}

// prioHead is head for a priority queue (a separate function so that head can be inlined).
func (q *Queue) prioHead() *Entry {
	e := q.prio.front()
	if e != nil && q.paged.count > 0 && e.Seq > q.paged.min() {
		return nil
	}
	return e
}

// headPaged reports whether the next entry to deliver is paged out.
func (q *Queue) headPaged() bool { return q.paged.count > 0 && q.head() == nil }

// length is the number of ready messages, in memory or paged out.
func (q *Queue) length() int64 { return int64(q.readyLen()+len(q.delayed)) + q.paged.count }

// full reports whether adding size more bytes would break a limit (for reject-publish).
func (q *Queue) full(size int) bool {
	if q.opts.MaxLength >= 0 && q.length() >= q.opts.MaxLength {
		return true
	}
	return q.opts.MaxLengthBytes >= 0 && q.bytes+q.paged.bytes+int64(size) > q.opts.MaxLengthBytes
}

// dropOverflow drops from the head while a limit is exceeded. A paged-out head must be read
// back first (its body is dead-lettered): the page-in completes the job.
func (q *Queue) dropOverflow() {
	var dropped []*Entry
	for (q.opts.MaxLength >= 0 && q.length() > q.opts.MaxLength) ||
		(q.opts.MaxLengthBytes >= 0 && q.bytes+q.paged.bytes > q.opts.MaxLengthBytes) {
		if q.head() == nil {
			break
		}
		e := q.readyPop()
		q.bytes -= int64(len(e.Msg.Body))
		dropped = append(dropped, e)
	}
	if len(dropped) > 0 {
		q.drops = append(q.drops, drop{es: dropped, why: MaxLen})
	}
}

// dispatch hands ready entries to consumers until one side runs out.
func (q *Queue) dispatch(now int64) {
	q.promoteDelayed(now)
	for len(q.consumers) > 0 {
		q.expireHead(now)
		e := q.ready.front()
		if q.prio != nil {
			e = q.prioHead()
		}
		if e == nil || !q.offer(e) {
			return
		}
		if q.prio == nil {
			q.ready.popFront()
		} else {
			q.prio.popFront()
		}
		q.bytes -= int64(len(e.Msg.Body))
	}
}

// expireHead drops expired entries at the head: like RabbitMQ, expiry is only checked there.
func (q *Queue) expireHead(now int64) {
	var expired []*Entry
	for {
		e := q.ready.front()
		if q.prio != nil {
			e = q.prioHead()
		}
		if e == nil || e.ExpiresAt == 0 || e.ExpiresAt > now {
			break
		}
		q.readyPop()
		q.bytes -= int64(len(e.Msg.Body))
		expired = append(expired, e)
	}
	if len(expired) > 0 {
		q.drops = append(q.drops, drop{es: expired, why: Expired})
	}
}

func (q *Queue) promoteDelayed(now int64) {
	i := 0
	for ; i < len(q.delayed) && q.delayed[i].readyAt <= now; i++ {
		q.delayed[i].readyAt = 0
		q.readyInsert(q.delayed[i])
	}
	if i > 0 {
		// Clear the vacated tail: stale pointers there would keep promoted (and later acked)
		// entries and their bodies reachable.
		n := copy(q.delayed, q.delayed[i:])
		clear(q.delayed[n:])
		q.delayed = q.delayed[:n]
	}
}

// settle ends every operation that may have changed the queue: timer, read-ahead, budget.
func (q *Queue) settle(now int64) {
	q.arm(now)
	if q.pager != nil {
		if q.prio != nil {
			// Entries that came before paged ones (a higher priority, a read-ahead past the
			// head) may have pushed the window over: page out its tail (never the head) again.
			for q.readyLen() > q.window && q.evictBack(0) {
			}
		}
		q.refill()
		q.syncBudget()
		q.overflowing.Store(q.overflowingLocked())
	}
}

// arm schedules the timer for the next head expiry or delayed entry becoming due.
func (q *Queue) arm(now int64) {
	var next int64
	e := q.ready.front()
	if q.prio != nil {
		e = q.prioHead()
	}
	if e != nil && e.ExpiresAt != 0 {
		next = e.ExpiresAt
	}
	if len(q.delayed) > 0 && (next == 0 || q.delayed[0].readyAt < next) {
		next = q.delayed[0].readyAt
	}
	if next == 0 || q.closed || (q.timerAt != 0 && q.timerAt <= next) {
		return
	}
	q.timerAt = next
	d := time.Duration(next - now)
	if d < 0 {
		d = 0
	}
	if q.timer == nil {
		q.timer = time.AfterFunc(d, q.onTimer)
	} else {
		q.timer.Reset(d)
	}
}

func (q *Queue) onTimer() {
	q.mu.Lock()
	q.timerAt = 0
	q.mu.Unlock()
	q.Kick()
}

// unlockEmit releases q.mu and passes the drops collected so far to the Dropped hook, in the
// order they happened: if another goroutine is already emitting this queue's drops, it takes
// these too, so dead letters of one queue are never reordered (expiries found by a timer and
// by a read-ahead, say).
func (q *Queue) unlockEmit() {
	if q.emitting {
		q.mu.Unlock()
		return
	}
	q.emitting = true
	for len(q.drops) > 0 {
		d := q.drops
		q.drops = nil
		q.mu.Unlock()
		q.emit(d)
		q.mu.Lock()
	}
	q.emitting = false
	q.mu.Unlock()
}

func (q *Queue) emit(ds []drop) {
	for _, d := range ds {
		switch {
		case d.activeChanged:
			if q.hooks.ActiveChanged != nil {
				q.hooks.ActiveChanged(q, d.active)
			}
		case q.hooks.Dropped != nil:
			q.hooks.Dropped(q, d.es, d.why)
		}
	}
}

// Kick retries delivery: call it when a consumer regains credit.
func (q *Queue) Kick() {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	now := q.clock()
	q.dispatch(now)
	q.expireHead(now)
	q.settle(now)
	q.unlockEmit()
}

// Get removes the first deliverable entry for basic.get. ok is false when the queue is empty.
// remaining is the number of ready messages left. With noAck the entry is done at once.
func (q *Queue) Get(noAck bool) (e *Entry, remaining int, ok bool) {
	q.mu.Lock()
	now := q.now()
	for {
		q.promoteDelayed(now)
		q.expireHead(now)
		if !q.headPaged() || q.closed {
			break
		}
		// The head is on disk: wait for the read-ahead to bring it in.
		q.refill()
		wait := q.pageWait
		q.unlockEmit()
		<-wait
		q.mu.Lock()
		now = q.now()
		if q.pageErr != nil {
			break
		}
	}
	if e = q.head(); e != nil {
		if q.prio == nil {
			q.ready.popFront()
		} else {
			q.prio.popFront()
		}
		q.bytes -= int64(len(e.Msg.Body))
		e.Deliveries++
		if !noAck {
			q.unacked++
		}
		q.expireHead(now)
	}
	remaining = int(q.length())
	q.settle(now)
	q.unlockEmit()
	return e, remaining, e != nil
}

// Ack marks delivered entries as done.
func (q *Queue) Ack(n int) {
	q.mu.Lock()
	q.unacked -= n
	q.mu.Unlock()
}

// Reject settles delivered entries for good; they are dropped with reason Rejected (dead-lettered
// by the owner if the queue has a dead-letter exchange).
func (q *Queue) Reject(es []*Entry) {
	if len(es) == 0 {
		return
	}
	q.mu.Lock()
	q.unacked -= len(es)
	q.mu.Unlock()
	q.emit([]drop{{es: es, why: Rejected}})
}

// Requeue returns delivered entries to their original positions. Entries over the delivery limit
// are dropped with reason DeliveryLimit; with a redelivery delay they wait before being deliverable.
func (q *Queue) Requeue(es []*Entry) {
	if len(es) == 0 {
		return
	}
	q.mu.Lock()
	q.requeue(es)
	q.unlockEmit()
}

// requeue is Requeue with mu held; the caller emits with unlockEmit.
func (q *Queue) requeue(es []*Entry) {
	q.unacked -= len(es)
	if q.closed {
		q.drops = append(q.drops, drop{es: es, why: Purged})
		return
	}
	now := q.now()
	var over []*Entry
	for _, e := range es {
		e.Returns++
		if q.opts.DeliveryLimit >= 0 && int64(e.Returns) > q.opts.DeliveryLimit {
			over = append(over, e)
			continue
		}
		q.bytes += int64(len(e.Msg.Body))
		if delay := q.redeliveryDelay(e.Returns); delay > 0 {
			e.readyAt = now + int64(delay)
			if e.readyAt < now { // saturate: a huge delay must not wrap into the past
				e.readyAt = math.MaxInt64
			}
			i := sort.Search(len(q.delayed), func(i int) bool { return q.delayed[i].readyAt > e.readyAt })
			q.delayed = append(q.delayed, nil)
			copy(q.delayed[i+1:], q.delayed[i:])
			q.delayed[i] = e
			continue
		}
		q.readyInsert(e)
	}
	if len(over) > 0 {
		q.drops = append(q.drops, drop{es: over, why: DeliveryLimit})
	}
	// As RabbitMQ's requeue_and_run: enforce drop-head and drop an expired head before delivering,
	// even without consumers (a requeue must not leave the queue over its limit).
	if q.opts.Overflow == DropHead {
		q.dropOverflow()
	}
	q.expireHead(now)
	q.dispatch(now)
	q.settle(now)
}

func (q *Queue) redeliveryDelay(returns uint32) time.Duration {
	base := q.opts.RedeliveryDelay
	if base <= 0 {
		return 0
	}
	f := q.opts.RedeliveryBackoff
	if f <= 1 || returns <= 1 {
		return q.capDelay(base)
	}
	d := float64(base) * math.Pow(f, float64(returns-1))
	if d > float64(math.MaxInt64/2) {
		d = float64(math.MaxInt64 / 2)
	}
	return q.capDelay(time.Duration(d))
}

func (q *Queue) capDelay(d time.Duration) time.Duration {
	if q.opts.RedeliveryMaxDelay > 0 && d > q.opts.RedeliveryMaxDelay {
		return q.opts.RedeliveryMaxDelay
	}
	return d
}

// Purge drops every ready message (not the unacked ones) and returns how many. Paged-out
// messages are discarded on disk without being read.
func (q *Queue) Purge() int {
	q.mu.Lock()
	es := q.readyDrain()
	es = append(es, q.delayed...)
	q.delayed = nil
	q.bytes = 0
	n := len(es) + q.discardPaged()
	q.syncBudget()
	q.mu.Unlock()
	if len(es) > 0 {
		q.emit([]drop{{es: es, why: Purged}})
	}
	return n
}

// discardPaged drops every paged-out entry and returns how many there were.
func (q *Queue) discardPaged() int {
	n := int(q.paged.count)
	if spans := q.paged.clear(); len(spans) > 0 {
		q.pager.Discard(spans)
	}
	return n
}

// Close marks the queue deleted and returns its consumers (to be cancelled) and the number of
// ready messages it held; those are dropped with reason Purged.
func (q *Queue) Close() (consumers []Consumer, messages int) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil, 0
	}
	q.closed = true
	if q.timer != nil {
		q.timer.Stop()
	}
	consumers = q.consumers
	q.consumers, q.groups = nil, nil
	es := q.readyDrain()
	es = append(es, q.delayed...)
	q.delayed = nil
	q.bytes = 0
	n := len(es) + q.discardPaged()
	q.syncBudget()
	q.mu.Unlock()
	if len(es) > 0 {
		q.emit([]drop{{es: es, why: Purged}})
	}
	return consumers, n
}

// Stats is a snapshot of a queue's counters.
type Stats struct {
	// Ready counts the messages waiting, in memory or paged out; Bytes their body bytes.
	Ready     int
	Unacked   int
	Consumers int
	Bytes     int64
	// InMemory counts the ready messages held in memory (the rest are paged out).
	InMemory int
}

// Stats returns the queue's counters; expired head messages are removed first, as RabbitMQ does
// before reporting a message count.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	now := q.now()
	q.promoteDelayed(now)
	q.expireHead(now)
	s := q.counts()
	q.refill()
	q.syncBudget()
	q.unlockEmit()
	return s
}

// Delivered returns how many entries consumers have accepted since the queue was created: a
// number that moves while the queue is being drained (flow control watches it), and whether
// a read-ahead of paged-out entries is in flight, during which consumers may wait for the
// disk without the number moving.
func (q *Queue) Delivered() (n uint64, pagingIn bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.delivered, q.pageWait != nil
}

// Counts returns the queue's counters without expiring anything, for callers that must not
// trigger dead-lettering (they hold locks the dead-letter path needs).
func (q *Queue) Counts() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.counts()
}

func (q *Queue) counts() Stats {
	inMem := q.readyLen() + len(q.delayed)
	return Stats{
		Ready: int(q.length()), Unacked: q.unacked, Consumers: len(q.consumers),
		Bytes: q.bytes + q.paged.bytes, InMemory: inMem,
	}
}

// refill starts a read-ahead when the window has drained to half and entries are paged
// out. Over the shared budget only an empty window is refilled, and only with a little. A
// priority queue whose head is paged out (it came after the window filled) is refilled at once.
func (q *Queue) refill() {
	if q.pager == nil || q.pageWait != nil || q.paged.count == 0 || q.closed {
		return
	}
	blocked := q.prio != nil && q.headPaged()
	if q.readyLen() > q.window/2 && !blocked {
		return
	}
	maxBytes := int64(math.MaxInt64)
	if q.budget != nil {
		maxBytes = q.budget.limit - q.budget.used.Load()
		if maxBytes < minPageInBytes {
			if q.readyLen() > 0 && !blocked {
				return
			}
			maxBytes = minPageInBytes
		}
	}
	n := q.window - q.readyLen()
	if blocked {
		// The window is full of entries that come after the head: read a good batch anyway;
		// pagedIn pages out the window's tail again to stay within it.
		n = max(n, q.window/2, 1)
	}
	from, gen := q.paged.min(), q.paged.gen
	q.pageWait = make(chan struct{})
	q.pager.PageIn(from, n, maxBytes, func(es []*Entry, err error) { q.pagedIn(es, err, n, maxBytes, gen) })
}

// pagedIn takes a read-ahead's entries into the window. Entries that are not (or no longer)
// members are ignored: purged meanwhile, or written by a publisher that has not pushed
// them yet. When the set did not change since the request, members the read should have
// returned but did not are lost (their write failed): they are dropped from the count so
// the queue does not wait for them forever.
func (q *Queue) pagedIn(es []*Entry, err error, max int, maxBytes int64, gen uint64) {
	q.mu.Lock()
	wait := q.pageWait
	q.pageWait = nil
	q.pageErr = err
	if q.closed || err != nil {
		q.mu.Unlock()
		close(wait)
		return
	}
	var read int64
	for _, e := range es {
		size := int64(len(e.Msg.Body))
		read += size
		if !q.paged.take(e.Seq, size) {
			continue
		}
		q.readyInsert(e)
		q.bytes += size
		q.timed = q.timed || e.ExpiresAt != 0 // restored from disk without a Push
	}
	if q.paged.gen == gen && q.paged.count > 0 {
		if len(es) < max && read < maxBytes {
			q.paged.dropBelow(math.MaxUint64)
		} else if len(es) > 0 {
			q.paged.dropBelow(es[len(es)-1].Seq)
		}
	}
	// Expire and enforce limits before delivering: a consumer must not get a message that
	// was over the limit (or expired) before it could be read back.
	now := q.now()
	q.expireHead(now)
	if q.opts.Overflow == DropHead {
		q.dropOverflow()
	}
	q.dispatch(now)
	q.settle(now)
	q.unlockEmit()
	close(wait)
}

// AwaitLimits waits while the queue is over a drop-head length limit because its head is
// paged out, until read-aheads have brought the head in and dropped it. Publishers call it
// after Push so that a capped queue cannot outgrow its limit faster than it drops; it costs
// an atomic load otherwise. It must not be called from a Pager's PageIn callback (nor from
// Dropped hooks, which may run there).
func (q *Queue) AwaitLimits() {
	if !q.overflowing.Load() {
		return
	}
	q.mu.Lock()
	for q.overflowingLocked() && q.pageErr == nil {
		q.refill()
		wait := q.pageWait
		q.unlockEmit()
		<-wait
		q.mu.Lock()
	}
	q.unlockEmit()
}

func (q *Queue) overflowingLocked() bool {
	return q.opts.Overflow == DropHead && q.headPaged() && !q.closed &&
		((q.opts.MaxLength >= 0 && q.length() > q.opts.MaxLength) ||
			(q.opts.MaxLengthBytes >= 0 && q.bytes+q.paged.bytes > q.opts.MaxLengthBytes))
}

// syncBudget keeps the queue's reservation in the shared budget within a chunk of the
// bytes it holds (none when empty), touching the shared counter only at chunk boundaries.
func (q *Queue) syncBudget() {
	if q.budget == nil {
		return
	}
	target := (q.bytes + budgetChunk - 1) / budgetChunk * budgetChunk
	if q.reserved < q.bytes || q.reserved > target+budgetChunk || (q.bytes == 0 && q.reserved > 0) {
		q.budget.used.Add(target - q.reserved)
		q.reserved = target
	}
}
