package queue

import (
	"fmt"
	"math"
	"math/rand"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeConsumer is a credit-limited consumer that records what it was offered and took.
type fakeConsumer struct {
	name  string
	noAck bool

	mu        sync.Mutex
	credit    int // < 0: unlimited
	got       []*Entry
	seqs      []uint64
	redeliver []bool
	offered   int
	notify    chan struct{}
}

func newConsumer(name string, credit int) *fakeConsumer {
	return &fakeConsumer{name: name, credit: credit, notify: make(chan struct{}, 1)}
}

func (c *fakeConsumer) Deliver(_ *Queue, e *Entry) Outcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offered++
	if c.credit == 0 {
		return Busy
	}
	if c.credit > 0 {
		c.credit--
	}
	c.got = append(c.got, e)
	c.seqs = append(c.seqs, e.Seq)
	c.redeliver = append(c.redeliver, e.Redelivered())
	select {
	case c.notify <- struct{}{}:
	default:
	}
	if c.noAck {
		return AcceptedNoAck
	}
	return Accepted
}

func (c *fakeConsumer) grant(n int) {
	c.mu.Lock()
	c.credit += n
	c.mu.Unlock()
}

func (c *fakeConsumer) delivered() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.seqs)
}

func (c *fakeConsumer) entries() []*Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.got)
}

// waitDelivered waits until the consumer took n entries in total.
func (c *fakeConsumer) waitDelivered(t *testing.T, n int, timeout time.Duration) []uint64 {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if got := c.delivered(); len(got) >= n {
			return got
		}
		select {
		case <-c.notify:
		case <-deadline:
			t.Fatalf("%s: timed out waiting for %d deliveries, got %v", c.name, n, c.delivered())
		}
	}
}

type dropEvent struct {
	why  Reason
	seqs []uint64
}

// recorder collects Hooks.Dropped calls.
type recorder struct {
	mu     sync.Mutex
	events []dropEvent
	notify chan struct{}
}

func newRecorder() *recorder { return &recorder{notify: make(chan struct{}, 1)} }

func (r *recorder) hooks() Hooks {
	return Hooks{Dropped: func(_ *Queue, es []*Entry, why Reason) {
		ev := dropEvent{why: why}
		for _, e := range es {
			ev.seqs = append(ev.seqs, e.Seq)
		}
		r.mu.Lock()
		r.events = append(r.events, ev)
		r.mu.Unlock()
		select {
		case r.notify <- struct{}{}:
		default:
		}
	}}
}

// dropped returns the seqs dropped for why, in drop order.
func (r *recorder) dropped(why Reason) []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []uint64
	for _, ev := range r.events {
		if ev.why == why {
			out = append(out, ev.seqs...)
		}
	}
	return out
}

func (r *recorder) all() []dropEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func (r *recorder) waitDropped(t *testing.T, why Reason, n int, timeout time.Duration) []uint64 {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if got := r.dropped(why); len(got) >= n {
			return got
		}
		select {
		case <-r.notify:
		case <-deadline:
			t.Fatalf("timed out waiting for %d %v drops, have %v", n, why, r.all())
		}
	}
}

// clock is a manual clock for the queue's now func; timers still run on real time, so tests that
// use it pick durations far longer than the test.
type clock struct{ ns atomic.Int64 }

func (c *clock) now() int64              { return c.ns.Load() }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func newTestQueue(opts Options) (*Queue, *recorder, *clock) {
	r := newRecorder()
	q := New("q", opts, r.hooks())
	clk := &clock{}
	clk.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	q.now = clk.now
	return q, r, clk
}

func pushN(t *testing.T, q *Queue, n, size int) []*Entry {
	t.Helper()
	es := make([]*Entry, n)
	for i := range es {
		es[i] = q.NewEntry(q.NextSeq(), &Message{Body: make([]byte, size)})
		if res := q.Push(es[i]); res != Enqueued {
			t.Fatalf("push %d: %v, want Enqueued", i, res)
		}
	}
	return es
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

// checkStats compares Counts; without paging every ready message is in memory.
func checkStats(t *testing.T, q *Queue, want Stats) {
	t.Helper()
	if q.pager == nil {
		want.InMemory = want.Ready
	}
	if got := q.Counts(); got != want {
		t.Fatalf("Counts = %+v, want %+v", got, want)
	}
}

func TestPublicationOrder(t *testing.T) {
	tests := []struct {
		name          string
		consumerFirst bool
	}{
		{"backlog then consumer", false},
		{"consumer then publishes", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, _, _ := newTestQueue(NoLimits())
			c := newConsumer("c", -1)
			if tc.consumerFirst {
				q.AddConsumer(c)
			}
			pushN(t, q, 100, 1)
			if !tc.consumerFirst {
				checkStats(t, q, Stats{Ready: 100, Bytes: 100})
				q.AddConsumer(c)
			}
			if got := c.delivered(); !slices.Equal(got, seqRange(1, 100)) {
				t.Fatalf("delivered %v", got)
			}
			checkStats(t, q, Stats{Unacked: 100, Consumers: 1})
		})
	}
}

func TestRoundRobin(t *testing.T) {
	tests := []struct {
		name    string
		credits []int // per consumer; 0 = always busy
		n       int
		want    [][]uint64
	}{
		{"three ready", []int{-1, -1, -1}, 9, [][]uint64{{1, 4, 7}, {2, 5, 8}, {3, 6, 9}}},
		{"middle busy", []int{-1, 0, -1}, 6, [][]uint64{{1, 3, 5}, nil, {2, 4, 6}}},
		{"first runs out", []int{1, -1, -1}, 5, [][]uint64{{1}, {2, 4}, {3, 5}}},
		{"all busy", []int{0, 0, 0}, 3, [][]uint64{nil, nil, nil}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, _, _ := newTestQueue(NoLimits())
			cs := make([]*fakeConsumer, len(tc.credits))
			for i, cr := range tc.credits {
				cs[i] = newConsumer(fmt.Sprint("c", i), cr)
				q.AddConsumer(cs[i])
			}
			pushN(t, q, tc.n, 0)
			total := 0
			for i, c := range cs {
				got := c.delivered()
				total += len(got)
				if !slices.Equal(got, tc.want[i]) {
					t.Errorf("consumer %d got %v, want %v", i, got, tc.want[i])
				}
			}
			checkStats(t, q, Stats{Ready: tc.n - total, Unacked: total, Consumers: len(cs)})
			for i, c := range cs {
				if c.credit == 0 && c.offered == len(c.seqs) {
					t.Errorf("consumer %d has no credit but was never offered an entry it refused", i)
				}
			}
		})
	}
}

func TestBusyConsumerGetsLaterEntriesAfterKick(t *testing.T) {
	q, _, _ := newTestQueue(NoLimits())
	c := newConsumer("c", 0)
	q.AddConsumer(c)
	pushN(t, q, 3, 0)
	if got := c.delivered(); len(got) != 0 {
		t.Fatalf("busy consumer got %v", got)
	}
	c.grant(2)
	q.Kick()
	if got := c.delivered(); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("after grant(2): %v", got)
	}
	checkStats(t, q, Stats{Ready: 1, Unacked: 2, Consumers: 1})
}

func TestRequeueOriginalPosition(t *testing.T) {
	tests := []struct {
		name    string
		requeue []int // indexes into the three delivered entries (seqs 1,2,3)
		want    []uint64
	}{
		{"middle", []int{1}, []uint64{2, 4, 5, 6}},
		{"out of order", []int{2, 0}, []uint64{1, 3, 4, 5}},
		{"all", []int{0, 1, 2}, []uint64{1, 2, 3, 4}},
		{"none", nil, []uint64{4, 5, 6, 7}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, _, _ := newTestQueue(NoLimits())
			pushN(t, q, 10, 1)
			c := newConsumer("c", 3)
			q.AddConsumer(c)
			first := c.entries()
			if got := c.delivered(); !slices.Equal(got, []uint64{1, 2, 3}) {
				t.Fatalf("prefetch 3 took %v", got)
			}
			var rq []*Entry
			for _, i := range tc.requeue {
				rq = append(rq, first[i])
			}
			q.Requeue(rq)
			checkStats(t, q, Stats{Ready: 7 + len(rq), Unacked: 3 - len(rq), Consumers: 1, Bytes: int64(7 + len(rq))})
			c.grant(4)
			q.Kick()
			got := c.delivered()[3:]
			if !slices.Equal(got, tc.want) {
				t.Fatalf("after requeue delivered %v, want %v", got, tc.want)
			}
			requeued := map[uint64]bool{}
			for _, e := range rq {
				requeued[e.Seq] = true
			}
			c.mu.Lock()
			for i, s := range c.seqs {
				wantRedeliver := i >= 3 && requeued[s]
				if c.redeliver[i] != wantRedeliver {
					t.Errorf("delivery %d (seq %d): Redelivered() = %v, want %v", i, s, c.redeliver[i], wantRedeliver)
				}
			}
			c.mu.Unlock()
			for _, e := range rq {
				if e.Deliveries != 2 || e.Returns != 1 {
					t.Errorf("seq %d: Deliveries %d Returns %d, want 2 and 1", e.Seq, e.Deliveries, e.Returns)
				}
			}
		})
	}
}

func TestGet(t *testing.T) {
	for _, noAck := range []bool{false, true} {
		t.Run(fmt.Sprint("noAck=", noAck), func(t *testing.T) {
			q, _, _ := newTestQueue(NoLimits())
			pushN(t, q, 3, 2)
			unacked := 0
			for i := 1; i <= 3; i++ {
				e, remaining, ok := q.Get(noAck)
				if !ok || e.Seq != uint64(i) || remaining != 3-i {
					t.Fatalf("Get %d = (%v, %d, %v), want seq %d remaining %d", i, e, remaining, ok, i, 3-i)
				}
				if e.Deliveries != 1 {
					t.Fatalf("Deliveries = %d after Get", e.Deliveries)
				}
				if !noAck {
					unacked++
				}
				checkStats(t, q, Stats{Ready: 3 - i, Unacked: unacked, Bytes: int64(2 * (3 - i))})
			}
			if e, remaining, ok := q.Get(noAck); ok || e != nil || remaining != 0 {
				t.Fatalf("Get on empty = (%v, %d, %v)", e, remaining, ok)
			}
		})
	}
}

func TestGetAfterRequeue(t *testing.T) {
	q, _, _ := newTestQueue(NoLimits())
	pushN(t, q, 3, 0)
	e1, _, _ := q.Get(false)
	e2, _, _ := q.Get(false)
	q.Requeue([]*Entry{e2})
	e, remaining, ok := q.Get(false)
	if !ok || e != e2 || remaining != 1 || e.Deliveries != 2 {
		t.Fatalf("Get after requeue = (%v, %d, %v), want seq 2 (2 deliveries), remaining 1", e, remaining, ok)
	}
	q.Ack(1)
	q.Requeue([]*Entry{e1})
	if e, _, _ := q.Get(true); e != e1 {
		t.Fatalf("want seq 1 back first, got %v", e)
	}
	checkStats(t, q, Stats{Ready: 1})
}

func TestReject(t *testing.T) {
	q, r, _ := newTestQueue(NoLimits())
	c := newConsumer("c", -1)
	q.AddConsumer(c)
	pushN(t, q, 3, 0)
	es := c.entries()
	q.Reject(es[:2])
	q.Reject(nil)
	if got := r.dropped(Rejected); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("rejected %v", got)
	}
	checkStats(t, q, Stats{Unacked: 1, Consumers: 1})
	q.Ack(1)
	checkStats(t, q, Stats{Consumers: 1})
}

func TestTTLExpiresAt(t *testing.T) {
	const base = int64(1_000_000_000_000)
	tests := []struct {
		name   string
		ttl    time.Duration
		msgExp int64
		want   int64
	}{
		{"no ttl", -1, 0, 0},
		{"queue ttl only", time.Second, 0, base + int64(time.Second)},
		{"message only", -1, base + 5, base + 5},
		{"message earlier", time.Second, base + 5, base + 5},
		{"queue earlier", time.Second, base + int64(time.Hour), base + int64(time.Second)},
		{"ttl zero", 0, 0, base},
		{"huge ttl saturates", time.Duration(math.MaxInt64), 0, math.MaxInt64},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := NoLimits()
			opts.MessageTTL = tc.ttl
			q, _, clk := newTestQueue(opts)
			clk.ns.Store(base)
			e := q.NewEntry(1, &Message{ExpiresAt: tc.msgExp})
			if e.ExpiresAt != tc.want {
				t.Fatalf("ExpiresAt = %d, want %d", e.ExpiresAt, tc.want)
			}
		})
	}
}

func TestTTLExpiry(t *testing.T) {
	tests := []struct {
		name    string
		ttl     time.Duration
		msgTTL  []time.Duration // per message expiration relative to publish; 0 = none
		advance time.Duration
		expired []uint64
		deliver []uint64
	}{
		{"queue ttl all expired", time.Hour, []time.Duration{0, 0, 0}, 2 * time.Hour, []uint64{1, 2, 3}, nil},
		{"queue ttl not yet", time.Hour, []time.Duration{0, 0, 0}, time.Hour - 1, nil, []uint64{1, 2, 3}},
		{"message expiration earlier than queue ttl", 3 * time.Hour, []time.Duration{time.Hour, 5 * time.Hour, 0}, 2 * time.Hour, []uint64{1}, []uint64{2, 3}},
		{"queue ttl earlier than message expiration", time.Hour, []time.Duration{5 * time.Hour, 0}, 2 * time.Hour, []uint64{1, 2}, nil},
		// An expired message behind a live one is dropped when it reaches the head.
		{"expired in the middle", -1, []time.Duration{0, time.Hour, 0}, 2 * time.Hour, []uint64{2}, []uint64{1, 3}},
		{"expired behind expired head", -1, []time.Duration{time.Hour, time.Hour, 0}, 2 * time.Hour, []uint64{1, 2}, []uint64{3}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := NoLimits()
			opts.MessageTTL = tc.ttl
			q, r, clk := newTestQueue(opts)
			for _, d := range tc.msgTTL {
				m := &Message{Body: []byte("x")}
				if d > 0 {
					m.ExpiresAt = clk.now() + int64(d)
				}
				q.Push(q.NewEntry(q.NextSeq(), m))
			}
			clk.advance(tc.advance)
			c := newConsumer("c", -1)
			q.AddConsumer(c)
			if got := r.dropped(Expired); !slices.Equal(got, tc.expired) {
				t.Errorf("expired %v, want %v", got, tc.expired)
			}
			if got := c.delivered(); !slices.Equal(got, tc.deliver) {
				t.Errorf("delivered %v, want %v", got, tc.deliver)
			}
			checkStats(t, q, Stats{Unacked: len(tc.deliver), Consumers: 1})
		})
	}
}

// TestTTLOnlyAtHead: like RabbitMQ, expiry is only checked at the head, so an expired message
// behind a live one still counts until it gets there.
func TestTTLOnlyAtHead(t *testing.T) {
	q, r, clk := newTestQueue(NoLimits())
	q.Push(q.NewEntry(q.NextSeq(), &Message{}))
	q.Push(q.NewEntry(q.NextSeq(), &Message{ExpiresAt: clk.now() + int64(time.Hour)}))
	clk.advance(2 * time.Hour)
	if s := q.Stats(); s.Ready != 2 {
		t.Fatalf("Stats %+v: expired entry behind a live head was removed", s)
	}
	if e, remaining, _ := q.Get(true); e.Seq != 1 || remaining != 0 {
		t.Fatalf("Get = %v remaining %d, want seq 1 and the expired seq 2 gone", e, remaining)
	}
	if got := r.dropped(Expired); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("expired %v", got)
	}
}

func TestTTLStatsAndGetExpireHead(t *testing.T) {
	opts := NoLimits()
	opts.MessageTTL = time.Hour
	q, r, clk := newTestQueue(opts)
	pushN(t, q, 2, 1)
	clk.advance(30 * time.Minute)
	pushN(t, q, 1, 1)
	clk.advance(45 * time.Minute)
	if s := q.Stats(); s.Ready != 1 || s.Bytes != 1 {
		t.Fatalf("Stats after first two expired: %+v", s)
	}
	if got := r.dropped(Expired); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("expired %v", got)
	}
	clk.advance(time.Hour)
	if e, remaining, ok := q.Get(false); ok || remaining != 0 {
		t.Fatalf("Get returned expired entry %v (remaining %d)", e, remaining)
	}
	if got := r.dropped(Expired); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("expired %v", got)
	}
}

func TestTTLZero(t *testing.T) {
	tests := []struct {
		name     string
		credit   int // -2: no consumer
		expired  []uint64
		delivers []uint64
	}{
		{"ready consumer gets it", -1, nil, []uint64{1, 2}},
		{"busy consumer", 0, []uint64{1, 2}, nil},
		{"no consumer", -2, []uint64{1, 2}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := NoLimits()
			opts.MessageTTL = 0
			q, r, _ := newTestQueue(opts)
			c := newConsumer("c", tc.credit)
			if tc.credit != -2 {
				q.AddConsumer(c)
			}
			pushN(t, q, 2, 1)
			if got := r.dropped(Expired); !slices.Equal(got, tc.expired) {
				t.Errorf("expired %v, want %v", got, tc.expired)
			}
			if got := c.delivered(); !slices.Equal(got, tc.delivers) {
				t.Errorf("delivered %v, want %v", got, tc.delivers)
			}
			if s := q.Counts(); s.Ready != 0 || s.Bytes != 0 {
				t.Errorf("Counts %+v: TTL 0 message kept", s)
			}
		})
	}
}

// TestTTLTimer checks that expired messages leave without any consumer or other queue activity.
func TestTTLTimer(t *testing.T) {
	tests := []struct {
		name   string
		ttl    time.Duration
		msgTTL time.Duration
	}{
		{"queue ttl", 20 * time.Millisecond, 0},
		{"message expiration", -1, 20 * time.Millisecond},
		{"message earlier than queue", time.Hour, 20 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := NoLimits()
			opts.MessageTTL = tc.ttl
			r := newRecorder()
			q := New("q", opts, r.hooks())
			defer q.Close()
			start := time.Now()
			for i := 0; i < 5; i++ {
				m := &Message{Body: []byte("abc")}
				if tc.msgTTL > 0 {
					m.ExpiresAt = time.Now().Add(tc.msgTTL).UnixNano()
				}
				q.Push(q.NewEntry(q.NextSeq(), m))
				if i == 2 {
					// A later batch makes the timer re-arm for a later head.
					time.Sleep(10 * time.Millisecond)
				}
			}
			got := r.waitDropped(t, Expired, 5, 5*time.Second)
			if !slices.Equal(got, seqRange(1, 5)) {
				t.Fatalf("expired %v", got)
			}
			if el := time.Since(start); el < 20*time.Millisecond {
				t.Fatalf("expired after %v, before the TTL", el)
			}
			if s := q.Counts(); s.Ready != 0 || s.Bytes != 0 {
				t.Fatalf("Counts after expiry: %+v", s)
			}
		})
	}
}

func TestMaxLength(t *testing.T) {
	tests := []struct {
		name     string
		maxLen   int64
		maxBytes int64
		overflow Overflow
		sizes    []int
		results  []PushResult
		dropped  []uint64
		ready    []uint64
	}{
		{"drop-head length", 3, -1, DropHead, []int{1, 1, 1, 1, 1},
			[]PushResult{Enqueued, Enqueued, Enqueued, Enqueued, Enqueued}, []uint64{1, 2}, []uint64{3, 4, 5}},
		{"reject-publish length", 3, -1, RejectPublish, []int{1, 1, 1, 1, 1},
			[]PushResult{Enqueued, Enqueued, Enqueued, Refused, Refused}, nil, []uint64{1, 2, 3}},
		{"reject-publish-dlx length", 3, -1, RejectPublishDLX, []int{1, 1, 1, 1},
			[]PushResult{Enqueued, Enqueued, Enqueued, RefusedDeadLetter}, nil, []uint64{1, 2, 3}},
		{"drop-head bytes", -1, 10, DropHead, []int{4, 4, 4, 4},
			[]PushResult{Enqueued, Enqueued, Enqueued, Enqueued}, []uint64{1, 2}, []uint64{3, 4}},
		{"drop-head bytes big message drops itself", -1, 10, DropHead, []int{4, 11},
			[]PushResult{Enqueued, Enqueued}, []uint64{1, 2}, nil},
		{"reject-publish bytes", -1, 10, RejectPublish, []int{4, 4, 4, 2},
			[]PushResult{Enqueued, Enqueued, Refused, Enqueued}, nil, []uint64{1, 2, 4}},
		{"reject-publish-dlx bytes", -1, 10, RejectPublishDLX, []int{4, 7},
			[]PushResult{Enqueued, RefusedDeadLetter}, nil, []uint64{1}},
		{"both limits, bytes bind", 10, 8, DropHead, []int{4, 4, 4},
			[]PushResult{Enqueued, Enqueued, Enqueued}, []uint64{1}, []uint64{2, 3}},
		{"max-length 0 drop-head", 0, -1, DropHead, []int{1, 1},
			[]PushResult{Enqueued, Enqueued}, []uint64{1, 2}, nil},
		{"max-length 0 reject-publish", 0, -1, RejectPublish, []int{1},
			[]PushResult{Refused}, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := NoLimits()
			opts.MaxLength, opts.MaxLengthBytes, opts.Overflow = tc.maxLen, tc.maxBytes, tc.overflow
			q, r, _ := newTestQueue(opts)
			for i, size := range tc.sizes {
				res := q.Push(q.NewEntry(q.NextSeq(), &Message{Body: make([]byte, size)}))
				if res != tc.results[i] {
					t.Errorf("push %d: %v, want %v", i+1, res, tc.results[i])
				}
			}
			if got := r.dropped(MaxLen); !slices.Equal(got, tc.dropped) {
				t.Errorf("dropped %v, want %v", got, tc.dropped)
			}
			for _, ev := range r.all() {
				if ev.why != MaxLen {
					t.Errorf("unexpected drop %v", ev)
				}
			}
			var ready []uint64
			var bytes int64
			for {
				e, _, ok := q.Get(true)
				if !ok {
					break
				}
				ready = append(ready, e.Seq)
				bytes += int64(len(e.Msg.Body))
			}
			if !slices.Equal(ready, tc.ready) {
				t.Errorf("ready %v, want %v", ready, tc.ready)
			}
			if s := q.Counts(); s.Bytes != 0 || s.Ready != 0 {
				t.Errorf("byte accounting off after draining: %+v", s)
			}
		})
	}
}

// TestMaxLengthCountsReadyOnly: unacked messages do not count towards the limit (as in RabbitMQ).
func TestMaxLengthCountsReadyOnly(t *testing.T) {
	opts := NoLimits()
	opts.MaxLength, opts.Overflow = 2, RejectPublish
	q, _, _ := newTestQueue(opts)
	c := newConsumer("c", 2)
	q.AddConsumer(c)
	pushN(t, q, 4, 1) // 2 delivered, 2 ready
	if res := q.Push(q.NewEntry(q.NextSeq(), &Message{})); res != Refused {
		t.Fatalf("push over limit: %v", res)
	}
	q.Requeue(c.entries()[:1]) // requeue may exceed the limit: it is not a publish
	checkStats(t, q, Stats{Ready: 3, Unacked: 1, Consumers: 1, Bytes: 3})
}

// TestRequeueAppliesLimitsAndExpiry: like RabbitMQ's requeue_and_run, a requeue enforces drop-head
// and drops an expired head at once, consumers or not.
func TestRequeueAppliesLimitsAndExpiry(t *testing.T) {
	t.Run("drop-head", func(t *testing.T) {
		opts := NoLimits()
		opts.MaxLength = 2
		q, r, _ := newTestQueue(opts)
		c := newConsumer("c", 1)
		q.AddConsumer(c)
		pushN(t, q, 3, 1) // 1 delivered; 2, 3 ready
		q.Requeue(c.entries())
		if got := r.dropped(MaxLen); !slices.Equal(got, []uint64{1}) {
			t.Fatalf("dropped %v, want the requeued head [1]", got)
		}
		checkStats(t, q, Stats{Ready: 2, Consumers: 1, Bytes: 2})
	})
	t.Run("reject-publish keeps requeued", func(t *testing.T) {
		opts := NoLimits()
		opts.MaxLength, opts.Overflow = 2, RejectPublish
		q, r, _ := newTestQueue(opts)
		pushN(t, q, 2, 1)
		e, _, _ := q.Get(false)
		pushN(t, q, 1, 1)
		q.Requeue([]*Entry{e})
		if len(r.all()) != 0 {
			t.Fatalf("drops %v", r.all())
		}
		checkStats(t, q, Stats{Ready: 3, Bytes: 3})
	})
	t.Run("expired", func(t *testing.T) {
		opts := NoLimits()
		opts.MessageTTL = time.Hour
		q, r, clk := newTestQueue(opts)
		defer q.Close()
		pushN(t, q, 2, 1)
		e, _, _ := q.Get(false)
		clk.advance(2 * time.Hour)
		q.Requeue([]*Entry{e})
		if got := r.dropped(Expired); !slices.Equal(got, []uint64{1, 2}) {
			t.Fatalf("expired %v, want [1 2] synchronously", got)
		}
		checkStats(t, q, Stats{})
	})
}

// TestMaxLengthZeroDropHeadDeliversToReadyConsumer: with a consumer ready, RabbitMQ delivers before
// applying drop-head, so max-length 0 does not starve consumers.
func TestMaxLengthZeroDropHeadDeliversToReadyConsumer(t *testing.T) {
	opts := NoLimits()
	opts.MaxLength = 0
	q, r, _ := newTestQueue(opts)
	c := newConsumer("c", 1)
	q.AddConsumer(c)
	pushN(t, q, 2, 1)
	if got := c.delivered(); !slices.Equal(got, []uint64{1}) {
		t.Fatalf("delivered %v, want [1]", got)
	}
	if got := r.dropped(MaxLen); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("dropped %v, want [2]", got)
	}
}

func TestDeliveryLimit(t *testing.T) {
	tests := []struct {
		limit      int64
		requeues   int
		deliveries int
		dropped    bool
	}{
		{0, 1, 1, true},
		{1, 2, 2, true},
		{2, 3, 3, true},
		{-1, 10, 11, false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint("limit=", tc.limit), func(t *testing.T) {
			opts := NoLimits()
			opts.DeliveryLimit = tc.limit
			q, r, _ := newTestQueue(opts)
			c := newConsumer("c", -1)
			q.AddConsumer(c)
			pushN(t, q, 1, 1)
			for i := 0; i < tc.requeues; i++ {
				es := c.entries()
				if len(es) != i+1 {
					t.Fatalf("after %d requeues delivered %d times", i, len(es))
				}
				q.Requeue(es[i:])
			}
			es := c.entries()
			if len(es) != tc.deliveries {
				t.Fatalf("delivered %d times, want %d", len(es), tc.deliveries)
			}
			if es[0].Returns != uint32(tc.requeues) || es[0].Deliveries != uint32(tc.deliveries) {
				t.Errorf("Returns %d Deliveries %d", es[0].Returns, es[0].Deliveries)
			}
			var want []uint64
			if tc.dropped {
				want = []uint64{1}
			}
			if got := r.dropped(DeliveryLimit); !slices.Equal(got, want) {
				t.Fatalf("delivery-limit drops %v, want %v", got, want)
			}
			unacked := 1
			if tc.dropped {
				unacked = 0
			}
			checkStats(t, q, Stats{Unacked: unacked, Consumers: 1})
		})
	}
}

func TestRedeliveryDelayValues(t *testing.T) {
	tests := []struct {
		name    string
		delay   time.Duration
		backoff float64
		max     time.Duration
		want    []time.Duration // for Returns 1, 2, 3, ...
	}{
		{"off", 0, 2, 0, []time.Duration{0, 0, 0}},
		{"constant", 100 * time.Millisecond, 0, 0, []time.Duration{100 * time.Millisecond, 100 * time.Millisecond}},
		{"backoff 1 is constant", 100 * time.Millisecond, 1, 0, []time.Duration{100 * time.Millisecond, 100 * time.Millisecond}},
		{"doubling", 100 * time.Millisecond, 2, 0, []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond}},
		{"capped", 100 * time.Millisecond, 2, 350 * time.Millisecond, []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 350 * time.Millisecond, 350 * time.Millisecond}},
		{"cap below base", time.Second, 2, 500 * time.Millisecond, []time.Duration{500 * time.Millisecond, 500 * time.Millisecond}},
		{"x1.5", time.Second, 1.5, 0, []time.Duration{time.Second, 1500 * time.Millisecond, 2250 * time.Millisecond}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := NoLimits()
			opts.RedeliveryDelay, opts.RedeliveryBackoff, opts.RedeliveryMaxDelay = tc.delay, tc.backoff, tc.max
			q, _, _ := newTestQueue(opts)
			for i, want := range tc.want {
				if got := q.redeliveryDelay(uint32(i + 1)); got != want {
					t.Errorf("returns %d: %v, want %v", i+1, got, want)
				}
			}
		})
	}
	// Huge return counts must not overflow into negative or tiny delays.
	opts := NoLimits()
	opts.RedeliveryDelay, opts.RedeliveryBackoff = time.Second, 10
	q, _, _ := newTestQueue(opts)
	if got := q.redeliveryDelay(1000); got < time.Hour {
		t.Fatalf("returns 1000 without cap: %v", got)
	}
	opts.RedeliveryMaxDelay = time.Minute
	q, _, _ = newTestQueue(opts)
	if got := q.redeliveryDelay(1000); got != time.Minute {
		t.Fatalf("returns 1000 capped: %v", got)
	}
}

// TestRedeliveryDelay drives the queue with a manual clock: the requeued entry is held back for
// exactly the delay (growing with backoff), then goes out ahead of newer entries.
func TestRedeliveryDelay(t *testing.T) {
	const d = time.Hour // manual clock: far longer than the test, so the real timer never interferes
	opts := NoLimits()
	opts.RedeliveryDelay, opts.RedeliveryBackoff, opts.RedeliveryMaxDelay = d, 2, 3*d
	q, _, clk := newTestQueue(opts)
	defer q.Close()
	c := newConsumer("c", 1)
	q.AddConsumer(c)
	pushN(t, q, 20, 1)
	e1 := c.entries()[0]

	for round, wait := range []time.Duration{d, 2 * d, 3 * d, 3 * d} {
		q.Requeue([]*Entry{e1})
		checkStats(t, q, Stats{Ready: 20 - round, Unacked: round, Consumers: 1, Bytes: int64(20 - round)})
		q.Kick()
		clk.advance(wait - 1)
		// 1ns before it is due, a newer entry goes out instead.
		c.grant(1)
		q.Kick()
		got := c.delivered()
		if last := got[len(got)-1]; last != uint64(round+2) {
			t.Fatalf("round %d: 1ns before the %v delay delivered seq %d, want the newer seq %d", round, wait, last, round+2)
		}
		clk.advance(1)
		c.grant(1)
		q.Kick()
		got = c.delivered()
		if last := got[len(got)-1]; last != 1 {
			t.Fatalf("round %d: when due delivered seq %d, want seq 1 ahead of newer entries", round, last)
		}
	}
	if e1.Returns != 4 || e1.Deliveries != 5 {
		t.Fatalf("Returns %d Deliveries %d", e1.Returns, e1.Deliveries)
	}
	// Other entries flow while one is delayed.
	q.Requeue([]*Entry{e1})
	c.grant(2)
	q.Kick()
	if got := c.delivered(); !slices.Equal(got[len(got)-2:], []uint64{6, 7}) {
		t.Fatalf("while seq 1 is delayed got %v", got)
	}
	// Get also sees a delayed entry only once it is due, and ahead of newer ones.
	if e, remaining, ok := q.Get(true); !ok || e.Seq != 8 || remaining != 13 {
		t.Fatalf("Get = (%v, %d, %v), want seq 8 with 13 remaining (9..20 and the delayed 1)", e, remaining, ok)
	}
	clk.advance(3 * d)
	if e, _, ok := q.Get(true); !ok || e.Seq != 1 {
		t.Fatalf("Get after delay = %v, want seq 1", e)
	}
}

// TestRedeliveryDelayHuge: an enormous delay saturates instead of wrapping into the past.
func TestRedeliveryDelayHuge(t *testing.T) {
	opts := NoLimits()
	opts.RedeliveryDelay = time.Duration(math.MaxInt64)
	q, _, _ := newTestQueue(opts)
	defer q.Close()
	c := newConsumer("c", -1)
	q.AddConsumer(c)
	pushN(t, q, 1, 0)
	q.Requeue(c.entries())
	q.Kick()
	if got := c.delivered(); len(got) != 1 {
		t.Fatalf("redelivered at once: %v", got)
	}
	checkStats(t, q, Stats{Ready: 1, Consumers: 1})
}

// TestRedeliveryDelayTimer: a delayed entry comes back by itself, with no further queue activity.
func TestRedeliveryDelayTimer(t *testing.T) {
	opts := NoLimits()
	opts.RedeliveryDelay = 30 * time.Millisecond
	q := New("q", opts, Hooks{})
	defer q.Close()
	c := newConsumer("c", -1)
	q.AddConsumer(c)
	q.Push(q.NewEntry(q.NextSeq(), &Message{}))
	q.Push(q.NewEntry(q.NextSeq(), &Message{}))
	e := c.entries()[0]
	start := time.Now()
	q.Requeue([]*Entry{e})
	got := c.waitDelivered(t, 3, 5*time.Second)
	if el := time.Since(start); el < 30*time.Millisecond {
		t.Fatalf("redelivered after %v, before the 30ms delay", el)
	}
	if !slices.Equal(got, []uint64{1, 2, 1}) {
		t.Fatalf("delivered %v", got)
	}
}

// TestDelayedEntriesKeepSeqOrder: entries delayed with different due times still come back in
// Seq order relative to ready ones.
func TestDelayedEntriesKeepSeqOrder(t *testing.T) {
	opts := NoLimits()
	opts.RedeliveryDelay, opts.RedeliveryBackoff = time.Hour, 2
	q, _, clk := newTestQueue(opts)
	defer q.Close()
	pushN(t, q, 6, 0)
	var got []*Entry
	for i := 0; i < 3; i++ {
		e, _, _ := q.Get(false)
		got = append(got, e)
	}
	got[0].Returns = 1 // next requeue gives it a 2h delay, seq 3 gets 1h
	q.Requeue([]*Entry{got[0], got[2]})
	clk.advance(3 * time.Hour)
	var order []uint64
	for {
		e, _, ok := q.Get(true)
		if !ok {
			break
		}
		order = append(order, e.Seq)
	}
	if !slices.Equal(order, []uint64{1, 3, 4, 5, 6}) {
		t.Fatalf("order %v", order)
	}
}

// TestPromotedEntriesNotRetained: once delayed entries are promoted, the delayed slice's spare
// capacity must not keep them (and their bodies) reachable.
func TestPromotedEntriesNotRetained(t *testing.T) {
	opts := NoLimits()
	opts.RedeliveryDelay = time.Hour
	q, _, clk := newTestQueue(opts)
	defer q.Close()
	pushN(t, q, 4, 1)
	var es []*Entry
	for i := 0; i < 4; i++ {
		e, _, _ := q.Get(false)
		es = append(es, e)
	}
	q.Requeue(es[:3])
	clk.advance(30 * time.Minute)
	q.Requeue(es[3:]) // due 30 minutes after the first three
	clk.advance(45 * time.Minute)
	if e, _, _ := q.Get(true); e.Seq != 1 {
		t.Fatalf("Get = %v", e)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.delayed) != 1 {
		t.Fatalf("delayed %d, want 1", len(q.delayed))
	}
	for i, e := range q.delayed[len(q.delayed):cap(q.delayed)] {
		if e != nil {
			t.Fatalf("delayed spare capacity slot %d still holds seq %d", i, e.Seq)
		}
	}
}

func TestPurge(t *testing.T) {
	opts := NoLimits()
	opts.RedeliveryDelay = time.Hour
	q, r, _ := newTestQueue(opts)
	defer q.Close()
	c := newConsumer("c", 2)
	q.AddConsumer(c)
	pushN(t, q, 6, 3)
	q.Requeue(c.entries()[:1]) // seq 1 waits in the delayed list
	if n := q.Purge(); n != 5 {
		t.Fatalf("Purge = %d, want 5", n)
	}
	got := r.dropped(Purged)
	slices.Sort(got)
	if !slices.Equal(got, []uint64{1, 3, 4, 5, 6}) {
		t.Fatalf("purged %v", got)
	}
	checkStats(t, q, Stats{Unacked: 1, Consumers: 1})
	if n := q.Purge(); n != 0 {
		t.Fatalf("second Purge = %d", n)
	}
	if len(r.all()) != 1 {
		t.Fatalf("empty purge reported drops: %v", r.all())
	}
	// The queue keeps working.
	c.grant(1)
	pushN(t, q, 1, 1)
	if got := c.delivered(); got[len(got)-1] != 7 {
		t.Fatalf("after purge delivered %v", got)
	}
}

func TestClose(t *testing.T) {
	q, r, _ := newTestQueue(NoLimits())
	a, b := newConsumer("a", 1), newConsumer("b", 0)
	q.AddConsumer(a)
	q.AddConsumer(b)
	pushN(t, q, 4, 1)
	cs, n := q.Close()
	if n != 3 || len(cs) != 2 || cs[0] != a || cs[1] != b {
		t.Fatalf("Close = (%v, %d)", cs, n)
	}
	if got := r.dropped(Purged); !slices.Equal(got, []uint64{2, 3, 4}) {
		t.Fatalf("purged on close %v", got)
	}
	if res := q.Push(q.NewEntry(q.NextSeq(), &Message{})); res != Refused {
		t.Fatalf("Push after Close = %v", res)
	}
	b.grant(10)
	q.Kick()
	if got := b.delivered(); len(got) != 0 {
		t.Fatalf("delivered after close: %v", got)
	}
	// An entry still out with a consumer is dropped as purged when requeued after close.
	q.Requeue(a.entries())
	if got := r.dropped(Purged); !slices.Equal(got, []uint64{2, 3, 4, 1}) {
		t.Fatalf("purged after requeue on closed queue %v", got)
	}
	checkStats(t, q, Stats{})
	if cs, n := q.Close(); cs != nil || n != 0 {
		t.Fatalf("second Close = (%v, %d)", cs, n)
	}
}

func TestRemoveConsumer(t *testing.T) {
	tests := []struct {
		name   string
		served int   // entries delivered before the removal (moves the round-robin index)
		remove []int // consumer indexes removed, in order
		want   []string
	}{
		{"remove after rr", 1, []int{2}, []string{"c1", "c0", "c1"}},
		{"remove before rr", 2, []int{0}, []string{"c2", "c1", "c2"}},
		{"remove at rr", 1, []int{1}, []string{"c2", "c0", "c2"}},
		{"remove last while rr points at it", 2, []int{2}, []string{"c0", "c1", "c0"}},
		{"remove all but one", 2, []int{2, 0}, []string{"c1", "c1"}},
		{"remove all", 1, []int{0, 1, 2}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, _, _ := newTestQueue(NoLimits())
			cs := []*fakeConsumer{newConsumer("c0", -1), newConsumer("c1", -1), newConsumer("c2", -1)}
			for _, c := range cs {
				q.AddConsumer(c)
			}
			pushN(t, q, tc.served, 0)
			left := len(cs)
			for _, i := range tc.remove {
				left--
				if n := q.RemoveConsumer(cs[i]); n != left {
					t.Fatalf("RemoveConsumer = %d, want %d", n, left)
				}
			}
			if n := q.RemoveConsumer(newConsumer("stranger", -1)); n != left {
				t.Fatalf("RemoveConsumer(unknown) = %d, want %d", n, left)
			}
			before := map[*fakeConsumer]int{}
			for _, c := range cs {
				before[c] = len(c.delivered())
			}
			var got []string
			for i := 0; i < len(tc.want); i++ {
				pushN(t, q, 1, 0)
				for _, c := range cs {
					if n := len(c.delivered()); n != before[c] {
						got = append(got, c.name)
						before[c] = n
					}
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("served %v, want %v", got, tc.want)
			}
			if len(tc.want) == 0 {
				pushN(t, q, 1, 0)
				checkStats(t, q, Stats{Ready: 1, Unacked: tc.served})
			}
		})
	}
}

func TestReasonString(t *testing.T) {
	for r, want := range map[Reason]string{Rejected: "rejected", Expired: "expired", MaxLen: "maxlen",
		DeliveryLimit: "delivery_limit", Purged: "purged", 0: "unknown"} {
		if got := r.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", r, got, want)
		}
	}
}

func TestRestore(t *testing.T) {
	q, _, _ := newTestQueue(NoLimits())
	for _, s := range []uint64{3, 7, 9} {
		q.Restore(&Entry{Seq: s, Msg: &Message{Body: []byte("ab")}})
	}
	checkStats(t, q, Stats{Ready: 3, Bytes: 6})
	if s := q.NextSeq(); s != 10 {
		t.Fatalf("NextSeq after restore = %d, want 10", s)
	}
	c := newConsumer("c", -1)
	q.AddConsumer(c)
	if got := c.delivered(); !slices.Equal(got, []uint64{3, 7, 9}) {
		t.Fatalf("delivered %v", got)
	}
}

// TestConcurrent hammers one queue from many goroutines and checks that every pushed entry is
// settled (acked or dropped) exactly once, and that the counters come back to zero.
func TestConcurrent(t *testing.T) {
	tests := []struct {
		name string
		opts func(*Options)
	}{
		{"plain", func(*Options) {}},
		{"delivery limit", func(o *Options) { o.DeliveryLimit = 2 }},
		{"redelivery delay", func(o *Options) {
			o.RedeliveryDelay, o.RedeliveryBackoff, o.RedeliveryMaxDelay = 100*time.Microsecond, 2, time.Millisecond
		}},
		{"drop-head and ttl", func(o *Options) { o.MaxLength, o.MessageTTL = 50, 5*time.Millisecond }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := NoLimits()
			tc.opts(&opts)
			const producers, perProducer, consumers = 8, 500, 4
			total := producers * perProducer

			var mu sync.Mutex
			settled := map[uint64]int{}
			pushed := map[uint64]bool{}
			allDone := make(chan struct{})
			settle := func(seqs ...uint64) {
				mu.Lock()
				defer mu.Unlock()
				for _, s := range seqs {
					settled[s]++
				}
				if len(settled) == total && len(pushed) == total {
					select {
					case <-allDone:
					default:
						close(allDone)
					}
				}
			}
			q := New("q", opts, Hooks{Dropped: func(_ *Queue, es []*Entry, _ Reason) {
				seqs := make([]uint64, len(es))
				for i, e := range es {
					seqs[i] = e.Seq
				}
				settle(seqs...)
			}})

			deliveries := make(chan *Entry, total*8)
			var cs []*chanConsumer
			for i := 0; i < consumers; i++ {
				c := &chanConsumer{out: deliveries}
				c.credit.Store(10)
				cs = append(cs, c)
				q.AddConsumer(c)
			}

			var wg sync.WaitGroup
			stop := make(chan struct{})
			for w := 0; w < 6; w++ {
				wg.Add(1)
				go func(seed int64) {
					defer wg.Done()
					rng := rand.New(rand.NewSource(seed))
					for {
						select {
						case <-stop:
							return
						case e := <-deliveries:
							switch r := rng.Intn(10); {
							case r < 6:
								q.Ack(1)
								settle(e.Seq)
							case r < 7:
								q.Reject([]*Entry{e})
							default:
								q.Requeue([]*Entry{e})
							}
							cs[rng.Intn(len(cs))].credit.Add(1)
							q.Kick()
						}
					}
				}(int64(w))
			}
			// Periodic kicks in case credit landed on a consumer after its last offer.
			wg.Add(1)
			go func() {
				defer wg.Done()
				tk := time.NewTicker(time.Millisecond)
				defer tk.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tk.C:
						for _, c := range cs {
							if c.credit.Load() < 5 {
								c.credit.Add(5)
							}
						}
						q.Kick()
					}
				}
			}()
			// basic.get, stats and consumer churn alongside the consumers.
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewSource(99))
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					switch rng.Intn(4) {
					case 0:
						if e, _, ok := q.Get(true); ok {
							settle(e.Seq)
						}
					case 1:
						if e, _, ok := q.Get(false); ok {
							deliveries <- e
						}
					case 2:
						c := cs[rng.Intn(len(cs))]
						q.RemoveConsumer(c)
						q.AddConsumer(c)
					case 3:
						if s := q.Stats(); s.Ready < 0 || s.Unacked < 0 || s.Bytes < 0 {
							t.Errorf("negative counters %+v", s)
						}
					}
					if i%500 == 499 {
						q.Purge()
					}
					if i%50 == 0 {
						time.Sleep(100 * time.Microsecond)
					}
				}
			}()
			var pwg sync.WaitGroup
			for p := 0; p < producers; p++ {
				pwg.Add(1)
				go func() {
					defer pwg.Done()
					m := &Message{Body: []byte("hello")}
					for i := 0; i < perProducer; i++ {
						e := q.NewEntry(q.NextSeq(), m)
						mu.Lock()
						pushed[e.Seq] = true
						mu.Unlock()
						if res := q.Push(e); res != Enqueued {
							t.Errorf("push: %v", res)
						}
					}
				}()
			}
			pwg.Wait()
			settle() // re-check completion now that every push is recorded

			select {
			case <-allDone:
			case <-time.After(10 * time.Second):
				mu.Lock()
				n := len(settled)
				mu.Unlock()
				t.Fatalf("only %d of %d entries settled; queue %+v", n, total, q.Counts())
			}
			close(stop)
			wg.Wait()

			mu.Lock()
			defer mu.Unlock()
			for s := range pushed {
				if settled[s] != 1 {
					t.Errorf("seq %d settled %d times", s, settled[s])
				}
			}
			if len(settled) != total {
				t.Errorf("settled %d distinct seqs, want %d", len(settled), total)
			}
			if s := q.Counts(); s.Ready != 0 || s.Unacked != 0 || s.Bytes != 0 {
				t.Errorf("counters after settling everything: %+v", s)
			}
			q.Close()
		})
	}
}

// chanConsumer hands entries to worker goroutines through a buffered channel; Deliver must not
// block because it runs under the queue lock.
type chanConsumer struct {
	credit atomic.Int64
	out    chan *Entry
}

func (c *chanConsumer) Deliver(_ *Queue, e *Entry) Outcome {
	if c.credit.Add(-1) < 0 {
		c.credit.Add(1)
		return Busy
	}
	select {
	case c.out <- e:
		return Accepted
	default:
		c.credit.Add(1)
		return Busy
	}
}

// TestClockOnlyWhenSomethingCanExpire: pushes and kicks on a queue where nothing can expire or
// wait do not read the clock; a TTL, a redelivery delay or one message with an expiration turn
// it on for good.
func TestClockOnlyWhenSomethingCanExpire(t *testing.T) {
	ttl, delay := NoLimits(), NoLimits()
	ttl.MessageTTL = time.Hour
	delay.RedeliveryDelay = time.Second
	tests := []struct {
		name     string
		opts     Options
		policy   *Options // set with SetOptions after creation (a policy)
		expiring bool     // push one message with an expiration first
		wantRead bool
	}{
		{"no limits", NoLimits(), nil, false, false},
		{"queue ttl", ttl, nil, false, true},
		{"redelivery delay", delay, nil, false, true},
		{"ttl from a policy", NoLimits(), &ttl, false, true},
		{"one message expiration", NoLimits(), nil, true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, _, clk := newTestQueue(tc.opts)
			if tc.policy != nil {
				q.SetOptions(*tc.policy)
			}
			var reads atomic.Int64
			q.now = func() int64 { reads.Add(1); return clk.now() }
			if tc.expiring {
				q.Push(q.NewEntry(q.NextSeq(), &Message{ExpiresAt: clk.now() + int64(time.Hour)}))
			}
			reads.Store(0)
			c := newConsumer("c", -1)
			q.AddConsumer(c)
			pushN(t, q, 10, 1)
			q.Kick()
			if got := reads.Load() > 0; got != tc.wantRead {
				t.Errorf("clock read %d times, want reads: %v", reads.Load(), tc.wantRead)
			}
			if n := len(c.delivered()); n != 10+btoi(tc.expiring) {
				t.Errorf("delivered %d", n)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Delivered counts what consumers accepted, not what they refused or what basic.get took.
func TestDelivered(t *testing.T) {
	q, _, _ := newTestQueue(NoLimits())
	c := newConsumer("c", 3)
	q.AddConsumer(c)
	pushN(t, q, 5, 1)
	if _, _, ok := q.Get(true); !ok {
		t.Fatal("get found nothing")
	}
	if got, _ := q.Delivered(); got != 3 {
		t.Fatalf("Delivered = %d, want 3 (credit 3; the busy offers and the get do not count)", got)
	}
}
