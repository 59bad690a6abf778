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
	readyAt      int64
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
}

// NoLimits returns Options with every limit off.
func NoLimits() Options {
	return Options{MessageTTL: -1, MaxLength: -1, MaxLengthBytes: -1, DeliveryLimit: -1}
}

// Hooks tell the owner about entries that leave the queue without an ack.
type Hooks struct {
	// Dropped is called without the queue's lock held, in the goroutine that caused the drop.
	Dropped func(q *Queue, es []*Entry, why Reason)
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

type drop struct {
	es  []*Entry
	why Reason
}

// Queue is one queue's in-memory state. All methods are safe for concurrent use.
type Queue struct {
	Name  string
	opts  Options // guarded by mu
	hooks Hooks
	// cur is opts for readers outside mu (Options, NewEntry on the publish path); SetOptions
	// replaces both.
	cur atomic.Pointer[Options]

	mu        sync.Mutex
	ready     deque
	delayed   []*Entry // waiting out x-redelivery-delay, ordered by readyAt
	bytes     int64    // body bytes of ready and delayed entries (in memory)
	unacked   int
	consumers []Consumer
	rr        int
	closed    bool
	drops     []drop // collected under mu, emitted by unlockEmit
	emitting  bool   // a goroutine is emitting drops
	timer     *time.Timer
	timerAt   int64

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
}

// New creates an empty queue.
func New(name string, opts Options, hooks Hooks) *Queue {
	q := &Queue{Name: name, opts: opts, hooks: hooks, now: func() int64 { return time.Now().UnixNano() }}
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

// NextSeq reserves the next sequence number; entries are kept in Seq order.
func (q *Queue) NextSeq() uint64 {
	q.mu.Lock()
	q.seq++
	s := q.seq
	q.mu.Unlock()
	return s
}

// Restore appends a recovered entry (from disk) without dispatching; Seq order must be ascending.
func (q *Queue) Restore(e *Entry) {
	q.mu.Lock()
	if e.Seq > q.seq {
		q.seq = e.Seq
	}
	q.ready.pushBack(e)
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
	q.seq = max(q.seq, to)
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
	if e.ExpiresAt != 0 && e.ExpiresAt <= now && q.ready.len() == 0 && len(q.delayed) == 0 && q.paged.count == 0 {
		// Already expired (TTL 0 or past expiration): deliverable only to a consumer ready right now.
		if !q.offer(e) {
			q.drops = append(q.drops, drop{[]*Entry{e}, Expired})
		}
	} else if q.pageOut() {
		// Behind the window: on disk only, read back when its turn comes.
		q.paged.add(e.Seq)
		q.paged.bytes += int64(len(e.Msg.Body))
		q.pager.PageOut(e)
		if q.opts.Overflow == DropHead {
			q.dropOverflow()
		}
	} else {
		q.ready.insertBySeq(e)
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

// pageOut reports whether a new entry goes to disk: behind other paged entries (order), or
// when the window or the shared budget is full.
func (q *Queue) pageOut() bool {
	if q.pager == nil {
		return false
	}
	return q.paged.count > 0 || q.ready.len() >= q.window || (q.budget != nil && q.budget.exhausted())
}

// length is the number of ready messages, in memory or paged out.
func (q *Queue) length() int64 { return int64(q.ready.len()+len(q.delayed)) + q.paged.count }

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
	for q.ready.len() > 0 {
		if !(q.opts.MaxLength >= 0 && q.length() > q.opts.MaxLength) &&
			!(q.opts.MaxLengthBytes >= 0 && q.bytes+q.paged.bytes > q.opts.MaxLengthBytes) {
			break
		}
		e := q.ready.popFront()
		q.bytes -= int64(len(e.Msg.Body))
		dropped = append(dropped, e)
	}
	if len(dropped) > 0 {
		q.drops = append(q.drops, drop{dropped, MaxLen})
	}
}

// offer tries each consumer once, starting after the last one served.
func (q *Queue) offer(e *Entry) bool {
	n := len(q.consumers)
	for i := 0; i < n; i++ {
		idx := (q.rr + i) % n
		switch q.consumers[idx].Deliver(q, e) {
		case Accepted:
			q.unacked++
			e.Deliveries++
		case AcceptedNoAck:
			e.Deliveries++
		default:
			continue
		}
		q.delivered++
		q.rr = (idx + 1) % n
		return true
	}
	return false
}

// dispatch hands ready entries to consumers until one side runs out.
func (q *Queue) dispatch(now int64) {
	q.promoteDelayed(now)
	for len(q.consumers) > 0 {
		q.expireHead(now)
		e := q.ready.front()
		if e == nil || !q.offer(e) {
			return
		}
		q.ready.popFront()
		q.bytes -= int64(len(e.Msg.Body))
	}
}

// expireHead drops expired entries at the head: like RabbitMQ, expiry is only checked there.
func (q *Queue) expireHead(now int64) {
	var expired []*Entry
	for {
		e := q.ready.front()
		if e == nil || e.ExpiresAt == 0 || e.ExpiresAt > now {
			break
		}
		q.ready.popFront()
		q.bytes -= int64(len(e.Msg.Body))
		expired = append(expired, e)
	}
	if len(expired) > 0 {
		q.drops = append(q.drops, drop{expired, Expired})
	}
}

func (q *Queue) promoteDelayed(now int64) {
	i := 0
	for ; i < len(q.delayed) && q.delayed[i].readyAt <= now; i++ {
		q.delayed[i].readyAt = 0
		q.ready.insertBySeq(q.delayed[i])
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
		q.refill()
		q.syncBudget()
		q.overflowing.Store(q.overflowingLocked())
	}
}

// arm schedules the timer for the next head expiry or delayed entry becoming due.
func (q *Queue) arm(now int64) {
	var next int64
	if e := q.ready.front(); e != nil && e.ExpiresAt != 0 {
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
	if q.hooks.Dropped == nil {
		return
	}
	for _, d := range ds {
		q.hooks.Dropped(q, d.es, d.why)
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

// AddConsumer registers c and delivers to it what is ready. A closed queue refuses it (false):
// Close has already handed its consumers back, so c would never receive anything.
func (q *Queue) AddConsumer(c Consumer) bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	q.consumers = append(q.consumers, c)
	q.mu.Unlock()
	q.Kick()
	return true
}

// RemoveConsumer unregisters c and returns how many consumers remain.
func (q *Queue) RemoveConsumer(c Consumer) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, x := range q.consumers {
		if x == c {
			q.consumers = append(q.consumers[:i], q.consumers[i+1:]...)
			if q.rr > i {
				q.rr--
			}
			if len(q.consumers) > 0 {
				q.rr %= len(q.consumers)
			} else {
				q.rr = 0
			}
			break
		}
	}
	return len(q.consumers)
}

// Get removes the first deliverable entry for basic.get. ok is false when the queue is empty.
// remaining is the number of ready messages left. With noAck the entry is done at once.
func (q *Queue) Get(noAck bool) (e *Entry, remaining int, ok bool) {
	q.mu.Lock()
	now := q.now()
	for {
		q.promoteDelayed(now)
		q.expireHead(now)
		if q.ready.len() > 0 || q.paged.count == 0 || q.closed {
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
	e = q.ready.popFront()
	if e != nil {
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
	q.emit([]drop{{es, Rejected}})
}

// Requeue returns delivered entries to their original positions. Entries over the delivery limit
// are dropped with reason DeliveryLimit; with a redelivery delay they wait before being deliverable.
func (q *Queue) Requeue(es []*Entry) {
	if len(es) == 0 {
		return
	}
	q.mu.Lock()
	q.unacked -= len(es)
	if q.closed {
		q.mu.Unlock()
		q.emit([]drop{{es, Purged}})
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
		q.ready.insertBySeq(e)
	}
	if len(over) > 0 {
		q.drops = append(q.drops, drop{over, DeliveryLimit})
	}
	// As RabbitMQ's requeue_and_run: enforce drop-head and drop an expired head before delivering,
	// even without consumers (a requeue must not leave the queue over its limit).
	if q.opts.Overflow == DropHead {
		q.dropOverflow()
	}
	q.expireHead(now)
	q.dispatch(now)
	q.settle(now)
	q.unlockEmit()
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
	es := q.ready.drain()
	es = append(es, q.delayed...)
	q.delayed = nil
	q.bytes = 0
	n := len(es) + q.discardPaged()
	q.syncBudget()
	q.mu.Unlock()
	if len(es) > 0 {
		q.emit([]drop{{es, Purged}})
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
	q.consumers = nil
	es := q.ready.drain()
	es = append(es, q.delayed...)
	q.delayed = nil
	q.bytes = 0
	n := len(es) + q.discardPaged()
	q.syncBudget()
	q.mu.Unlock()
	if len(es) > 0 {
		q.emit([]drop{{es, Purged}})
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
	inMem := q.ready.len() + len(q.delayed)
	return Stats{
		Ready: int(q.length()), Unacked: q.unacked, Consumers: len(q.consumers),
		Bytes: q.bytes + q.paged.bytes, InMemory: inMem,
	}
}

// refill starts a read-ahead when the window has drained to half and entries are paged
// out. Over the shared budget only an empty window is refilled, and only with a little.
func (q *Queue) refill() {
	if q.pager == nil || q.pageWait != nil || q.paged.count == 0 || q.closed || q.ready.len() > q.window/2 {
		return
	}
	maxBytes := int64(math.MaxInt64)
	if q.budget != nil {
		maxBytes = q.budget.limit - q.budget.used.Load()
		if maxBytes < minPageInBytes {
			if q.ready.len() > 0 {
				return
			}
			maxBytes = minPageInBytes
		}
	}
	n := q.window - q.ready.len()
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
		q.ready.insertBySeq(e)
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
	return q.opts.Overflow == DropHead && q.ready.len() == 0 && q.paged.count > 0 && !q.closed &&
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
