package queue

import (
	"math"
	"reflect"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"
)

// fakePager is an in-memory Pager: "disk" is a map. Page-ins run on their own goroutine,
// like the store's reader; hold, when set, delays them until closed.
type fakePager struct {
	mu       sync.Mutex
	disk     map[uint64]*Entry
	pageIns  int
	discards []Span
	lose     map[uint64]bool // PageOut of these seqs "fails": never stored
	hold     chan struct{}
}

func newFakePager() *fakePager {
	return &fakePager{disk: map[uint64]*Entry{}, lose: map[uint64]bool{}}
}

// store puts an entry on disk, as the server does for durable entries before Push.
func (p *fakePager) store(e *Entry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cp := *e
	p.disk[e.Seq] = &cp
}

func (p *fakePager) PageOut(e *Entry) {
	p.mu.Lock()
	lost := p.lose[e.Seq]
	p.mu.Unlock()
	if !e.Durable && !lost {
		p.store(e)
	}
}

func (p *fakePager) PageIn(from uint64, max int, maxBytes int64, done func([]*Entry, error)) {
	p.mu.Lock()
	p.pageIns++
	hold := p.hold
	p.mu.Unlock()
	go func() {
		if hold != nil {
			<-hold
		}
		p.mu.Lock()
		var seqs []uint64
		for s := range p.disk {
			if s >= from {
				seqs = append(seqs, s)
			}
		}
		sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
		var out []*Entry
		var bytes int64
		for _, s := range seqs {
			if len(out) == max || (bytes >= maxBytes && len(out) > 0) {
				break
			}
			cp := *p.disk[s]
			if !cp.Durable {
				delete(p.disk, s) // pages are handed over, durable entries stay until acked
			}
			out = append(out, &cp)
			bytes += int64(len(cp.Msg.Body))
		}
		p.mu.Unlock()
		done(out, nil)
	}()
}

func (p *fakePager) Discard(spans []Span) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.discards = append(p.discards, spans...)
	for s := range p.disk {
		for _, sp := range spans {
			if s >= sp.From && s <= sp.To {
				delete(p.disk, s)
			}
		}
	}
}

func (p *fakePager) onDisk() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.disk)
}

func (p *fakePager) setHold(ch chan struct{}) {
	p.mu.Lock()
	p.hold = ch
	p.mu.Unlock()
}

// windowConsumer is a consumer that acks at once and records the largest in-memory window
// it saw (it runs under the queue's lock, so it may look).
type windowConsumer struct {
	*fakeConsumer
	maxReady int
}

func (c *windowConsumer) Deliver(q *Queue, e *Entry) Outcome {
	if n := q.ready.len(); n > c.maxReady {
		c.maxReady = n
	}
	return c.fakeConsumer.Deliver(q, e)
}

func newPagedQueue(opts Options, window int) (*Queue, *fakePager, *recorder, *clock) {
	q, r, clk := newTestQueue(opts)
	p := newFakePager()
	q.SetPaging(Paging{Pager: p, Window: window})
	return q, p, r, clk
}

func TestPagingDrainsDeepQueueInOrder(t *testing.T) {
	for _, durable := range []bool{false, true} {
		t.Run(map[bool]string{false: "transient", true: "durable"}[durable], func(t *testing.T) {
			const n, window = 5000, 64
			q, p, _, _ := newPagedQueue(NoLimits(), window)
			for i := 0; i < n; i++ {
				e := q.NewEntry(q.NextSeq(), &Message{Body: []byte("x")})
				e.Durable = durable
				if durable {
					p.store(e)
				}
				q.Push(e)
			}
			st := q.Counts()
			if st.Ready != n || st.InMemory != window || st.Bytes != n {
				t.Fatalf("after %d pushes: %+v, want %d ready, %d in memory", n, st, n, window)
			}
			c := &windowConsumer{fakeConsumer: newConsumer("c", -1)}
			c.noAck = true
			q.AddConsumer(c)
			got := c.waitDelivered(t, n, 10*time.Second)
			if !slices.Equal(got, seqRange(1, n)) {
				t.Fatalf("delivered %d entries out of order", len(got))
			}
			if c.maxReady > window {
				t.Errorf("window grew to %d entries, limit %d", c.maxReady, window)
			}
			checkStats(t, q, Stats{Consumers: 1})
			if p.pageIns < (n-window)/window {
				t.Errorf("%d page-ins for %d paged entries with a window of %d", p.pageIns, n-window, window)
			}
			if !durable && p.onDisk() != 0 {
				t.Errorf("%d pages left on disk", p.onDisk())
			}
		})
	}
}

func TestPagingRequeueOriginalPosition(t *testing.T) {
	q, _, _, _ := newPagedQueue(NoLimits(), 4)
	pushN(t, q, 20, 1)
	c := newConsumer("c", 6)
	q.AddConsumer(c)
	got := c.waitDelivered(t, 6, time.Second)
	if !slices.Equal(got, seqRange(1, 6)) {
		t.Fatalf("first deliveries %v", got)
	}
	es := c.entries()
	q.Requeue([]*Entry{es[4], es[1]}) // seqs 5 and 2
	c.grant(100)
	q.Kick()
	got = c.waitDelivered(t, 22, time.Second)
	want := append(seqRange(1, 6), 2, 5)
	want = append(want, seqRange(7, 20)...)
	if !slices.Equal(got, want) {
		t.Fatalf("deliveries %v\nwant       %v", got, want)
	}
	if r := c.redeliver[6:8]; !slices.Equal(r, []bool{true, true}) {
		t.Errorf("requeued entries redelivered flags %v", r)
	}
}

func TestPagingGet(t *testing.T) {
	q, _, _, _ := newPagedQueue(NoLimits(), 3)
	pushN(t, q, 10, 2)
	for i := 1; i <= 10; i++ {
		e, remaining, ok := q.Get(true)
		if !ok || e.Seq != uint64(i) || remaining != 10-i {
			t.Fatalf("get %d: ok=%v seq=%v remaining=%d", i, ok, e, remaining)
		}
	}
	if _, _, ok := q.Get(true); ok {
		t.Fatal("get on an empty queue succeeded")
	}
}

func TestPagingTTLExpiresPagedMessages(t *testing.T) {
	opts := NoLimits()
	opts.MessageTTL = time.Hour
	q, p, r, clk := newPagedQueue(opts, 5)
	pushN(t, q, 40, 1)
	clk.advance(30 * time.Minute)
	pushN(t, q, 10, 1) // 41..50 expire half an hour later
	clk.advance(31 * time.Minute)
	q.Kick() // as the expiry timer would; no consumer
	got := r.waitDropped(t, Expired, 40, 5*time.Second)
	if !slices.Equal(got, seqRange(1, 40)) {
		t.Fatalf("expired %v", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for q.Counts().InMemory < 5 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // the last read-ahead refills the window
	}
	checkStats(t, q, Stats{Ready: 10, Bytes: 10, InMemory: 5})
	c := newConsumer("c", -1)
	q.AddConsumer(c)
	if got := c.waitDelivered(t, 10, time.Second); !slices.Equal(got, seqRange(41, 50)) {
		t.Fatalf("delivered %v", got)
	}
	if p.onDisk() != 0 {
		t.Errorf("%d pages left", p.onDisk())
	}
}

func TestPagingPurgeAndClose(t *testing.T) {
	for _, closeIt := range []bool{false, true} {
		q, p, r, _ := newPagedQueue(NoLimits(), 10)
		pushN(t, q, 1000, 1)
		var n int
		if closeIt {
			_, n = q.Close()
		} else {
			n = q.Purge()
		}
		if n != 1000 {
			t.Errorf("close=%v: %d messages reported, want 1000", closeIt, n)
		}
		if got := r.dropped(Purged); !slices.Equal(got, seqRange(1, 10)) {
			t.Errorf("close=%v: in-memory entries dropped as purged: %v", closeIt, got)
		}
		if p.onDisk() != 0 || !reflect.DeepEqual(p.discards, []Span{{11, 1000}}) {
			t.Errorf("close=%v: %d left on disk, discards %v", closeIt, p.onDisk(), p.discards)
		}
		if closeIt {
			continue
		}
		checkStats(t, q, Stats{})
		// After a purge the queue is in memory again.
		pushN(t, q, 3, 1)
		checkStats(t, q, Stats{Ready: 3, Bytes: 3, InMemory: 3})
	}
}

func TestPagingMaxLength(t *testing.T) {
	t.Run("drop-head", func(t *testing.T) {
		opts := NoLimits()
		opts.MaxLength = 20
		q, _, r, _ := newPagedQueue(opts, 5)
		pushN(t, q, 50, 1)
		got := r.waitDropped(t, MaxLen, 30, 5*time.Second)
		if !slices.Equal(got, seqRange(1, 30)) {
			t.Fatalf("dropped %v", got)
		}
		c := newConsumer("c", -1)
		q.AddConsumer(c)
		if got := c.waitDelivered(t, 20, 5*time.Second); !slices.Equal(got, seqRange(31, 50)) {
			t.Fatalf("delivered %v", got)
		}
	})
	t.Run("publishers wait for the head to be dropped", func(t *testing.T) {
		opts := NoLimits()
		opts.MaxLength = 10
		q, p, r, _ := newPagedQueue(opts, 4)
		hold := make(chan struct{})
		p.setHold(hold)
		pushN(t, q, 30, 1) // the window drains by drop-head, the rest waits on disk
		if st := q.Counts(); st.Ready <= 10 || st.InMemory != 0 {
			t.Fatalf("with read-aheads held: %+v", st)
		}
		waited := make(chan struct{})
		go func() {
			q.AwaitLimits()
			close(waited)
		}()
		select {
		case <-waited:
			t.Fatal("AwaitLimits returned while the queue was over its limit")
		case <-time.After(20 * time.Millisecond):
		}
		close(hold)
		<-waited
		if st := q.Counts(); st.Ready != 10 {
			t.Errorf("after AwaitLimits: %+v, want 10 ready", st)
		}
		if got := r.dropped(MaxLen); !slices.Equal(got, seqRange(1, 20)) {
			t.Errorf("dropped %v", got)
		}
		q.AwaitLimits() // within limits: returns at once
	})
	t.Run("reject-publish", func(t *testing.T) {
		opts := NoLimits()
		opts.MaxLength = 20
		opts.MaxLengthBytes = 1000
		opts.Overflow = RejectPublish
		q, _, _, _ := newPagedQueue(opts, 5)
		refused := 0
		for i := 0; i < 30; i++ {
			if q.Push(q.NewEntry(q.NextSeq(), &Message{Body: []byte("x")})) == Refused {
				refused++
			}
		}
		if refused != 10 {
			t.Errorf("refused %d, want 10", refused)
		}
		checkStats(t, q, Stats{Ready: 20, Bytes: 20, InMemory: 5})
		// The byte limit counts paged bodies too.
		if q.Push(q.NewEntry(q.NextSeq(), &Message{Body: make([]byte, 981)})) != Refused {
			t.Error("a message over x-max-length-bytes (counting paged bytes) was accepted")
		}
	})
}

func TestPagingDeliveryLimitAndDelay(t *testing.T) {
	opts := NoLimits()
	opts.DeliveryLimit = 1
	opts.RedeliveryDelay = time.Hour
	q, _, r, clk := newPagedQueue(opts, 2)
	pushN(t, q, 6, 1)
	c := newConsumer("c", 2)
	q.AddConsumer(c)
	c.waitDelivered(t, 2, time.Second)
	es := c.entries()
	q.Requeue(es) // first return: delayed an hour
	if st := q.Counts(); st.Ready != 6 || st.Unacked != 0 {
		t.Fatalf("after requeue: %+v", st)
	}
	c.grant(4)
	q.Kick()
	if got := c.waitDelivered(t, 6, time.Second); !slices.Equal(got, seqRange(1, 6)) {
		t.Fatalf("delivered %v (the delayed entries must wait)", got)
	}
	clk.advance(2 * time.Hour)
	c.grant(2)
	q.Kick()
	got := c.waitDelivered(t, 8, time.Second)
	if !slices.Equal(got[6:], []uint64{1, 2}) {
		t.Fatalf("after the delay: %v", got)
	}
	q.Requeue(c.entries()[6:8]) // second return: over the limit of 1
	if got := r.dropped(DeliveryLimit); !slices.Equal(got, []uint64{1, 2}) {
		t.Errorf("dropped over the delivery limit: %v", got)
	}
}

func TestPagingRestoredBacklog(t *testing.T) {
	q, p, _, _ := newPagedQueue(NoLimits(), 4)
	// Disk holds 1..100 minus the multiples of 7 (acked before the restart), two of them
	// delivered before.
	var onDisk []uint64
	for s := uint64(1); s <= 100; s++ {
		if s%7 == 0 {
			continue
		}
		e := &Entry{Seq: s, Msg: &Message{Body: []byte("ab")}, Durable: true}
		if s == 2 || s == 50 {
			e.Deliveries, e.Returns = 1, 1
		}
		p.store(e)
		onDisk = append(onDisk, s)
	}
	for _, s := range onDisk[:4] {
		q.Restore(p.disk[s])
	}
	rest := int64(len(onDisk) - 4)
	q.RestorePaged(onDisk[4], 100, rest, 2*rest)
	checkStats(t, q, Stats{Ready: len(onDisk), Bytes: int64(2 * len(onDisk)), InMemory: 4})
	if s := q.NextSeq(); s != 101 {
		t.Fatalf("NextSeq after restore = %d", s)
	}
	pushN(t, q, 5, 2) // 102..106, behind the backlog
	c := newConsumer("c", -1)
	c.noAck = true
	q.AddConsumer(c)
	want := append(slices.Clone(onDisk), seqRange(102, 106)...)
	got := c.waitDelivered(t, len(want), 5*time.Second)
	if !slices.Equal(got, want) {
		t.Fatalf("delivered %v\nwant      %v", got, want)
	}
	for i, s := range got {
		if c.redeliver[i] != (s == 2 || s == 50) {
			t.Errorf("seq %d redelivered=%v", s, c.redeliver[i])
		}
	}
	checkStats(t, q, Stats{Consumers: 1})
}

// TestPagingRacingPublishers: sequence numbers are reserved before Push, and a durable
// entry is on disk before it is pushed, so a read-ahead can see entries the queue does not
// know yet, and pushes can arrive out of seq order. Every entry must be delivered once.
func TestPagingRacingPublishers(t *testing.T) {
	q, p, _, _ := newPagedQueue(NoLimits(), 2)
	c := newConsumer("c", 0)
	q.AddConsumer(c)
	seqs := make([]uint64, 30)
	es := make([]*Entry, len(seqs))
	for i := range seqs {
		seqs[i] = q.NextSeq()
		es[i] = q.NewEntry(seqs[i], &Message{Body: []byte("x")})
		es[i].Durable = true
		p.store(es[i]) // submitted to disk before Push, as the server does
	}
	hold := make(chan struct{})
	p.setHold(hold)
	// Push in a scrambled order while a read-ahead is held back.
	order := []int{3, 4, 5, 0, 6, 7, 1, 2}
	for i := 8; i < len(es); i++ {
		order = append(order, i)
	}
	for k, i := range order {
		q.Push(es[i])
		if k == 5 {
			close(hold) // let read-aheads run while pushes continue
		}
	}
	c.grant(1000)
	q.Kick()
	got := c.waitDelivered(t, len(es), 5*time.Second)
	sorted := slices.Clone(got)
	slices.Sort(sorted)
	if !slices.Equal(sorted, seqs) {
		t.Fatalf("delivered %v", got)
	}
	time.Sleep(20 * time.Millisecond)
	if n := len(c.delivered()); n != len(es) {
		t.Fatalf("%d deliveries, want %d", n, len(es))
	}
	checkStats(t, q, Stats{Unacked: len(es), Consumers: 1})
}

// TestPagingLostPage: a page whose write failed is not waited for forever.
func TestPagingLostPage(t *testing.T) {
	q, p, _, _ := newPagedQueue(NoLimits(), 2)
	p.lose[5] = true
	p.lose[9] = true
	pushN(t, q, 10, 1)
	c := newConsumer("c", -1)
	q.AddConsumer(c)
	got := c.waitDelivered(t, 8, 5*time.Second)
	if want := []uint64{1, 2, 3, 4, 6, 7, 8, 10}; !slices.Equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	deadline := time.Now().Add(5 * time.Second)
	for q.Counts().Ready != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	checkStats(t, q, Stats{Unacked: 8, Consumers: 1})
}

func TestPagingBudget(t *testing.T) {
	b := NewBudget(2 * budgetChunk)
	mk := func() (*Queue, *fakePager) {
		q, _, _ := newTestQueue(NoLimits())
		p := newFakePager()
		q.SetPaging(Paging{Pager: p, Window: 1000, Budget: b})
		return q, p
	}
	q1, _ := mk()
	q2, p2 := mk()
	const size = 64 << 10
	pushN(t, q1, 16, size) // 1 MiB: the budget (reserved in chunks) ends within q1's window
	if st := q1.Counts(); st.InMemory*size < 2*budgetChunk-budgetChunk || st.InMemory*size > 2*budgetChunk || st.Ready != 16 {
		t.Fatalf("q1 %+v, budget used %d of %d", st, b.Used(), 2*budgetChunk)
	}
	hold := make(chan struct{})
	p2.setHold(hold)
	pushN(t, q2, 3, size)
	if st := q2.Counts(); st.InMemory != 0 || st.Ready != 3 || p2.onDisk() != 3 {
		t.Fatalf("q2 under an exhausted budget: %+v, %d on disk", st, p2.onDisk())
	}
	close(hold)
	// q2's consumers still get its messages (an empty window is refilled).
	c := newConsumer("c", -1)
	q2.AddConsumer(c)
	if got := c.waitDelivered(t, 3, time.Second); !slices.Equal(got, seqRange(1, 3)) {
		t.Fatalf("q2 delivered %v", got)
	}
	q1.Purge()
	if b.Used() != 0 {
		t.Errorf("budget used %d after purging everything", b.Used())
	}
}

func TestPageSet(t *testing.T) {
	span := func(lo, hi uint64) pageSpan { return pageSpan{lo: lo, hi: hi, n: int64(hi - lo + 1)} }
	var p pageSet
	for _, s := range []uint64{5, 6, 7, 10, 9, 3, 8, 1} {
		p.add(s)
	}
	if want := []pageSpan{span(1, 1), span(3, 3), span(5, 10)}; !reflect.DeepEqual(p.spans, want) || p.count != 8 {
		t.Fatalf("after adds: %+v (count %d), want %+v", p.spans, p.count, want)
	}
	for _, s := range []uint64{7, 2, 1, 10} {
		if ok := p.take(s, 0); ok != (s != 2) {
			t.Errorf("take(%d) = %v", s, ok)
		}
	}
	if want := []pageSpan{span(3, 3), span(5, 6), span(8, 9)}; !reflect.DeepEqual(p.spans, want) || p.count != 5 {
		t.Fatalf("after takes: %+v (count %d), want %+v", p.spans, p.count, want)
	}
	p.addDisk(20, 100, 30, 300)
	if p.min() != 3 || p.count != 35 {
		t.Fatalf("min %d count %d", p.min(), p.count)
	}
	if n := p.dropBelow(6); n != 2 || p.min() != 6 || p.count != 33 {
		t.Fatalf("dropBelow(6) = %d, min %d, count %d", n, p.min(), p.count)
	}
	if n := p.dropBelow(50); n != 3 || p.min() != 20 || p.count != 30 {
		t.Fatalf("dropBelow(50) = %d (a disk span reaching past stays), min %d, count %d", n, p.min(), p.count)
	}
	p.take(20, 10)
	p.take(25, 10)
	if p.min() != 26 || p.count != 28 {
		t.Fatalf("disk span after takes: %+v, count %d", p.spans, p.count)
	}
	if p.bytes != 280 {
		t.Errorf("bytes %d, want 280", p.bytes)
	}
	if got := p.clear(); !reflect.DeepEqual(got, []Span{{26, 100}}) || p.count != 0 || p.bytes != 0 {
		t.Fatalf("clear = %v, count %d", got, p.count)
	}
	p.add(math.MaxUint64)
	p.add(math.MaxUint64 - 1)
	if want := []pageSpan{span(math.MaxUint64-1, math.MaxUint64)}; !reflect.DeepEqual(p.spans, want) {
		t.Fatalf("at the top: %+v", p.spans)
	}
}

// An entry added inside a disk span (a priority queue's new entry whose priority's backlog was
// found at start-up) is one more of the span's entries, not a span of its own: a read of the
// span takes it once, and the span's other entries are not counted as lost.
func TestPageSetAddInsideDiskSpan(t *testing.T) {
	var p pageSet
	p.addDisk(10, 40, 4, 4) // 10, 20, 30, 40 on disk
	p.add(25)               // pushed after the restart, on disk as well
	if p.count != 5 || len(p.spans) != 1 || p.min() != 10 {
		t.Fatalf("after add: count %d spans %+v, want one disk span of 5 from 10", p.count, p.spans)
	}
	for _, seq := range []uint64{10, 20, 25, 30, 40} {
		if !p.take(seq, 1) {
			t.Fatalf("take(%d) = false, want a member", seq)
		}
	}
	if p.take(25, 1) {
		t.Fatal("25 taken twice")
	}
	if p.count != 0 || len(p.spans) != 0 {
		t.Fatalf("after reading everything: count %d spans %+v", p.count, p.spans)
	}
}
