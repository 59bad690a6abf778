package queue

import (
	"math/rand"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"
)

// pushPrio pushes one message per priority in prios (Message.ID = its index) and returns the
// entries.
func pushPrio(t *testing.T, q *Queue, prios []uint8) []*Entry {
	t.Helper()
	es := make([]*Entry, len(prios))
	for i, p := range prios {
		m := &Message{ID: uint64(i), Priority: p, Body: []byte("x")}
		es[i] = q.NewEntry(q.NextSeqFor(m), m)
		if res := q.Push(es[i]); res != Enqueued {
			t.Fatalf("push %d: %v", i, res)
		}
	}
	return es
}

// ids returns the Message.IDs of es.
func ids(es []*Entry) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.Msg.ID
	}
	return out
}

// drainGet takes every ready entry with basic.get (no-ack) and returns their IDs.
func drainGet(q *Queue) []uint64 {
	var out []uint64
	for {
		e, _, ok := q.Get(true)
		if !ok {
			return out
		}
		out = append(out, e.Msg.ID)
	}
}

func TestPriorityOrder(t *testing.T) {
	tests := []struct {
		name  string
		max   int
		prios []uint8
		want  []uint64 // IDs in delivery order
	}{
		{"higher first, FIFO within a priority", 10, []uint8{0, 5, 10, 5, 0, 10}, []uint64{2, 5, 1, 3, 0, 4}},
		{"absent is 0, above the maximum is the maximum", 3, []uint8{0, 7, 3, 1, 9}, []uint64{1, 2, 4, 3, 0}},
		{"maximum 255", 255, []uint8{0, 255, 128, 1}, []uint64{1, 2, 3, 0}},
		{"maximum 1", 1, []uint8{0, 1, 0, 200}, []uint64{1, 3, 0, 2}},
		{"not a priority queue keeps publication order", 0, []uint8{5, 0, 9}, []uint64{0, 1, 2}},
	}
	for _, tc := range tests {
		for _, mode := range []string{"get", "consumer"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				opts := NoLimits()
				opts.MaxPriority = tc.max
				q, _, _ := newTestQueue(opts)
				pushPrio(t, q, tc.prios)
				checkStats(t, q, Stats{Ready: len(tc.prios), Bytes: int64(len(tc.prios))})
				var got []uint64
				if mode == "get" {
					got = drainGet(q)
				} else {
					c := newConsumer("c", -1)
					q.AddConsumer(c)
					got = ids(c.entries())
				}
				if !slices.Equal(got, tc.want) {
					t.Fatalf("delivered %v, want %v", got, tc.want)
				}
				checkStats(t, q, Stats{Unacked: map[string]int{"get": 0, "consumer": len(tc.prios)}[mode],
					Consumers: map[string]int{"get": 0, "consumer": 1}[mode]})
			})
		}
	}
}

// A requeued entry returns to its original place within its priority, before newer entries
// of the same priority, after entries of higher priorities.
func TestPriorityRequeue(t *testing.T) {
	tests := []struct {
		name    string
		requeue []uint64 // IDs taken by the consumer, then requeued
		want    []uint64
	}{
		{"requeue both", []uint64{1, 4}, []uint64{1, 5, 4, 0, 2, 6}},
		{"requeue one, reverse order given", []uint64{4}, []uint64{5, 4, 0, 2, 6}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := NoLimits()
			opts.MaxPriority = 5
			q, _, _ := newTestQueue(opts)
			es := pushPrio(t, q, []uint8{1, 5, 1, 5, 3})
			c := newConsumer("c", 1)
			q.AddConsumer(c)
			c.grant(1) // takes IDs 1 and (after the next Kick) 3
			q.Kick()
			q.RemoveConsumer(c)
			if got := ids(c.entries()); !slices.Equal(got, []uint64{1, 3}) {
				t.Fatalf("consumer took %v", got)
			}
			// ID 3 stays unacked. ID 4 (priority 3) is next; take it with basic.get.
			if e, _, _ := q.Get(false); e.Msg.ID != 4 {
				t.Fatalf("get returned %d, want 4", e.Msg.ID)
			}
			m5 := &Message{ID: 5, Priority: 5}
			q.Push(q.NewEntry(q.NextSeqFor(m5), m5))
			m6 := &Message{ID: 6, Priority: 1}
			q.Push(q.NewEntry(q.NextSeqFor(m6), m6))
			var back []*Entry
			for i := len(tc.requeue) - 1; i >= 0; i-- {
				back = append(back, es[tc.requeue[i]])
			}
			q.Requeue(back)
			if got := drainGet(q); !slices.Equal(got, tc.want) {
				t.Fatalf("after requeue %v, want %v", got, tc.want)
			}
			for _, id := range tc.requeue {
				if !es[id].Redelivered() {
					t.Fatalf("ID %d not marked redelivered", id)
				}
			}
		})
	}
}

// Expiry happens at the head of the priority order, as in RabbitMQ: an expired lower-priority
// message waits (and is counted) behind live higher-priority ones; an expired head is dropped.
func TestPriorityExpiry(t *testing.T) {
	type msg struct {
		prio uint8
		ttl  time.Duration // 0: none
	}
	tests := []struct {
		name      string
		msgs      []msg
		readyThen int      // Stats().Ready after the clock passed every TTL
		expired   []uint64 // seqs' IDs dropped as Expired after draining
		got       []uint64 // delivered IDs
	}{
		{"expired low behind live high", []msg{{0, time.Second}, {5, 0}}, 2, []uint64{0}, []uint64{1}},
		{"expired high at the head", []msg{{5, time.Second}, {0, 0}}, 1, []uint64{0}, []uint64{1}},
		{"expired in both, live in the middle", []msg{{9, time.Second}, {5, 0}, {0, time.Second}}, 2, []uint64{0, 2}, []uint64{1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := NoLimits()
			opts.MaxPriority = 9
			q, r, clk := newTestQueue(opts)
			bySeq := map[uint64]uint64{}
			for i, m := range tc.msgs {
				msg := &Message{ID: uint64(i), Priority: m.prio}
				if m.ttl > 0 {
					msg.ExpiresAt = clk.now() + int64(m.ttl)
				}
				e := q.NewEntry(q.NextSeqFor(msg), msg)
				bySeq[e.Seq] = msg.ID
				q.Push(e)
			}
			clk.advance(time.Hour)
			if got := q.Stats().Ready; got != tc.readyThen {
				t.Fatalf("Ready = %d, want %d", got, tc.readyThen)
			}
			if got := drainGet(q); !slices.Equal(got, tc.got) {
				t.Fatalf("delivered %v, want %v", got, tc.got)
			}
			var expired []uint64
			for _, s := range r.dropped(Expired) {
				expired = append(expired, bySeq[s])
			}
			if !slices.Equal(expired, tc.expired) {
				t.Fatalf("expired %v, want %v", expired, tc.expired)
			}
		})
	}
}

// Drop-head drops from the head of the priority order - the oldest message of the highest
// priority - as RabbitMQ's rabbit_priority_queue:drop/2 does; reject-publish refuses whatever
// the priority.
func TestPriorityMaxLength(t *testing.T) {
	tests := []struct {
		name     string
		overflow Overflow
		maxLen   int64
		prios    []uint8
		dropped  []uint64 // IDs dropped as MaxLen
		refused  []uint64 // IDs refused
		left     []uint64
	}{
		{"drop-head drops the highest priority's oldest", DropHead, 3, []uint8{0, 0, 5, 5}, []uint64{2}, nil, []uint64{3, 0, 1}},
		{"drop-head with the newest at the top", DropHead, 2, []uint8{5, 0, 0}, []uint64{0}, nil, []uint64{1, 2}},
		{"drop-head keeps dropping from the top", DropHead, 1, []uint8{0, 9, 5}, []uint64{1, 2}, nil, []uint64{0}},
		{"reject-publish refuses a high priority too", RejectPublish, 2, []uint8{0, 5, 9}, nil, []uint64{2}, []uint64{1, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := NoLimits()
			opts.MaxPriority, opts.MaxLength, opts.Overflow = 9, tc.maxLen, tc.overflow
			q, r, _ := newTestQueue(opts)
			bySeq := map[uint64]uint64{}
			var refused []uint64
			for i, p := range tc.prios {
				m := &Message{ID: uint64(i), Priority: p}
				e := q.NewEntry(q.NextSeqFor(m), m)
				bySeq[e.Seq] = m.ID
				if q.Push(e) != Enqueued {
					refused = append(refused, m.ID)
				}
			}
			var dropped []uint64
			for _, s := range r.dropped(MaxLen) {
				dropped = append(dropped, bySeq[s])
			}
			if !slices.Equal(dropped, tc.dropped) || !slices.Equal(refused, tc.refused) {
				t.Fatalf("dropped %v refused %v, want %v %v", dropped, refused, tc.dropped, tc.refused)
			}
			if got := drainGet(q); !slices.Equal(got, tc.left) {
				t.Fatalf("left %v, want %v", got, tc.left)
			}
		})
	}
}

// prioModel is the reference: ready messages ordered by priority (desc), then ID (asc, IDs are
// publication order).
type prioModel struct {
	max   int
	ready []*Entry
}

func (m *prioModel) add(e *Entry) { m.ready = append(m.ready, e) }

func (m *prioModel) pop() *Entry {
	if len(m.ready) == 0 {
		return nil
	}
	sort.SliceStable(m.ready, func(i, j int) bool {
		pi, pj := min(int(m.ready[i].Msg.Priority), m.max), min(int(m.ready[j].Msg.Priority), m.max)
		if pi != pj {
			return pi > pj
		}
		return m.ready[i].Msg.ID < m.ready[j].Msg.ID
	})
	e := m.ready[0]
	m.ready = m.ready[1:]
	return e
}

// Random pushes, gets and requeues against the model, in memory and with a small paging
// window (transient and durable entries), so that high priorities keep arriving while lower
// ones are paged out and requeued entries land among paged ones.
func TestPriorityRandomAgainstModel(t *testing.T) {
	for _, window := range []int{0, 1, 4, 16} {
		for _, durable := range []bool{false, true} {
			if window == 0 && durable {
				continue
			}
			name := map[bool]string{false: "transient", true: "durable"}[durable]
			t.Run(name+"/window"+string(rune('0'+window/10))+string(rune('0'+window%10)), func(t *testing.T) {
				rng := rand.New(rand.NewSource(int64(window)*7 + 1))
				opts := NoLimits()
				opts.MaxPriority = 9
				q, _, _ := newTestQueue(opts)
				var p *fakePager
				if window > 0 {
					p = newFakePager()
					q.SetPaging(Paging{Pager: p, Window: window})
				}
				model := &prioModel{max: 9}
				var held []*Entry // unacked, from Get
				id := uint64(0)
				for step := 0; step < 2000; step++ {
					switch op := rng.Intn(10); {
					case op < 5:
						m := &Message{ID: id, Priority: uint8(rng.Intn(12)), Body: []byte("x")}
						id++
						e := q.NewEntry(q.NextSeqFor(m), m)
						if durable {
							e.Durable = true
							p.store(e)
						}
						q.Push(e)
						model.add(e)
					case op < 8:
						want := model.pop()
						e, _, ok := q.Get(false)
						if want == nil {
							if ok {
								t.Fatalf("step %d: got %d from an empty queue", step, e.Msg.ID)
							}
							continue
						}
						if !ok || e.Msg.ID != want.Msg.ID {
							t.Fatalf("step %d: got %v (ok %v), want ID %d (priority %d)", step, e, ok, want.Msg.ID, want.Msg.Priority)
						}
						held = append(held, e) // may be a paged-in copy of want: requeue the one we got
					default:
						if len(held) == 0 {
							continue
						}
						k := rng.Intn(len(held)) + 1
						back := held[:k]
						if rng.Intn(2) == 0 {
							q.Requeue(back)
							for _, e := range back {
								model.add(e)
							}
						} else {
							q.Ack(len(back))
							if durable {
								for _, e := range back {
									p.mu.Lock()
									delete(p.disk, e.Seq)
									p.mu.Unlock()
								}
							}
						}
						held = held[k:]
					}
					if window > 0 {
						// Requeued entries always return to memory; the rest stays in the window.
						redelivered := 0
						for _, e := range model.ready {
							if e.Redelivered() {
								redelivered++
							}
						}
						if n := q.Counts().InMemory; n > window+redelivered {
							t.Fatalf("step %d: %d entries in memory, window %d + %d requeued", step, n, window, redelivered)
						}
					}
				}
				for {
					want := model.pop()
					e, _, ok := q.Get(true)
					if want == nil {
						if ok {
							t.Fatalf("drain: got %d from an empty queue", e.Msg.ID)
						}
						break
					}
					if !ok || e.Msg.ID != want.Msg.ID {
						t.Fatalf("drain: got %v, want ID %d", e, want.Msg.ID)
					}
				}
			})
		}
	}
}

// A high-priority message published while lower ones are paged out is delivered before them
// without waiting for the backlog, and the window stays bounded.
func TestPriorityPagingOvertakes(t *testing.T) {
	const window = 4
	opts := NoLimits()
	opts.MaxPriority = 9
	q, p, _, _ := newPagedQueue(opts, window)
	prios := make([]uint8, 20)
	prios = append(prios, 9, 9, 5)
	pushPrio(t, q, prios)
	st := q.Counts()
	if st.Ready != 23 || st.InMemory != window {
		t.Fatalf("counts %+v, want 23 ready, %d in memory", st, window)
	}
	want := []uint64{20, 21, 22}
	for i := uint64(0); i < 20; i++ {
		want = append(want, i)
	}
	c := &prioWindowConsumer{fakeConsumer: newConsumer("c", -1)}
	q.AddConsumer(c)
	c.waitDelivered(t, 23, 5*time.Second)
	if ids := ids(c.entries()); !slices.Equal(ids, want) {
		t.Fatalf("delivered %v, want %v", ids, want)
	}
	if c.maxReady > window {
		t.Fatalf("%d entries in memory, window %d", c.maxReady, window)
	}
	if n := p.onDisk(); n != 0 {
		t.Fatalf("%d pages left on disk", n)
	}
}

// prioWindowConsumer records the largest in-memory ready count it saw (it runs under the lock).
type prioWindowConsumer struct {
	*fakeConsumer
	maxReady int
}

func (c *prioWindowConsumer) Deliver(q *Queue, e *Entry) Outcome {
	c.maxReady = max(c.maxReady, q.readyLen())
	return c.fakeConsumer.Deliver(q, e)
}

// Restart: stored entries come back in Seq order (which is priority order) and new sequence
// numbers continue after the stored ones of each priority (RestoreSeq), so FIFO within a
// priority survives the restart.
func TestPriorityRestore(t *testing.T) {
	opts := NoLimits()
	opts.MaxPriority = 5
	old, _, _ := newTestQueue(opts)
	stored := pushPrio(t, old, []uint8{0, 5, 3, 5, 0, 3})
	slices.SortFunc(stored, func(a, b *Entry) int {
		switch {
		case a.Seq < b.Seq:
			return -1
		case a.Seq > b.Seq:
			return 1
		}
		return 0
	})
	if got := ids(stored); !slices.Equal(got, []uint64{1, 3, 2, 5, 0, 4}) {
		t.Fatalf("seq order %v is not delivery order", got)
	}

	q, p, _, _ := newPagedQueue(opts, 2)
	// The first two are loaded, the rest is left on disk as one span, as the server does.
	for _, e := range stored {
		cp := *e
		cp.Durable = true
		p.store(&cp)
	}
	q.Restore(&Entry{Seq: stored[0].Seq, Msg: stored[0].Msg, Durable: true})
	q.Restore(&Entry{Seq: stored[1].Seq, Msg: stored[1].Msg, Durable: true})
	q.RestorePaged(stored[2].Seq, stored[5].Seq, 4, 4)
	for prio := 0; prio <= 5; prio++ {
		r := q.SeqRange(prio)
		var last uint64
		for _, e := range stored {
			if e.Seq >= r.From && e.Seq <= r.To {
				last = e.Seq
			}
		}
		if last != 0 {
			q.RestoreSeq(last)
		}
	}
	pushPrio(t, q, []uint8{3, 5}) // IDs 0 and 1 again: tell them apart by pointer below
	var got []uint64
	var fresh []bool
	for {
		e, _, ok := q.Get(true)
		if !ok {
			break
		}
		got = append(got, e.Msg.ID)
		fresh = append(fresh, !slices.ContainsFunc(stored, func(s *Entry) bool { return s.Msg == e.Msg }))
	}
	wantIDs := []uint64{1, 3, 1, 2, 5, 0, 0, 4}
	wantFresh := []bool{false, false, true, false, false, true, false, false}
	if !slices.Equal(got, wantIDs) || !slices.Equal(fresh, wantFresh) {
		t.Fatalf("after restart %v (new %v), want %v (new %v)", got, fresh, wantIDs, wantFresh)
	}
}

// Drop-head on a paged priority queue drops what RabbitMQ would: after each publish, the head
// of the priority order while over the limit - even the message just published, when it has the
// highest priority - including heads that must be read back first (AwaitLimits).
func TestPriorityDropHeadPaged(t *testing.T) {
	for _, window := range []int{0, 2, 8} {
		t.Run("window"+string(rune('0'+window)), func(t *testing.T) {
			const maxLen = 5
			rng := rand.New(rand.NewSource(int64(window) + 3))
			opts := NoLimits()
			opts.MaxPriority, opts.MaxLength = 4, maxLen
			q, r, _ := newTestQueue(opts)
			if window > 0 {
				q.SetPaging(Paging{Pager: newFakePager(), Window: window})
			}
			model := &prioModel{max: 4}
			bySeq := map[uint64]uint64{}
			var wantDropped []uint64
			for i := 0; i < 300; i++ {
				m := &Message{ID: uint64(i), Priority: uint8(rng.Intn(6)), Body: []byte("x")}
				e := q.NewEntry(q.NextSeqFor(m), m)
				bySeq[e.Seq] = m.ID
				q.Push(e)
				q.AwaitLimits()
				model.add(e)
				for len(model.ready) > maxLen {
					wantDropped = append(wantDropped, model.pop().Msg.ID)
				}
			}
			var dropped []uint64
			for _, s := range r.dropped(MaxLen) {
				dropped = append(dropped, bySeq[s])
			}
			if !slices.Equal(dropped, wantDropped) {
				t.Fatalf("dropped %v\nwant    %v", dropped, wantDropped)
			}
			var want []uint64
			for e := model.pop(); e != nil; e = model.pop() {
				want = append(want, e.Msg.ID)
			}
			if got := drainGet(q); !slices.Equal(got, want) {
				t.Fatalf("left %v, want %v", got, want)
			}
		})
	}
}

// Concurrent publishers and a consumer on a paged priority queue under a tight shared budget:
// every message is delivered exactly once, and each publisher's messages of one priority
// arrive in the order it published them.
func TestPriorityPagingConcurrent(t *testing.T) {
	const publishers, perPublisher = 4, 500
	opts := NoLimits()
	opts.MaxPriority = 9
	q, _, _ := newTestQueue(opts)
	q.SetPaging(Paging{Pager: newFakePager(), Window: 8, Budget: NewBudget(1)})
	c := newConsumer("c", -1)
	c.noAck = true
	var wg sync.WaitGroup
	for p := 0; p < publishers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(p)))
			for i := 0; i < perPublisher; i++ {
				m := &Message{ID: uint64(p*perPublisher + i), Priority: uint8(rng.Intn(10)), Body: []byte("x")}
				q.Push(q.NewEntry(q.NextSeqFor(m), m))
				if i == perPublisher/2 && p == 0 {
					q.AddConsumer(c)
				}
			}
		}(p)
	}
	wg.Wait()
	c.waitDelivered(t, publishers*perPublisher, 20*time.Second)
	seen := map[uint64]bool{}
	last := map[[2]uint64]uint64{} // (publisher, priority) -> last ID
	for _, e := range c.entries() {
		id := e.Msg.ID
		if seen[id] {
			t.Fatalf("ID %d delivered twice", id)
		}
		seen[id] = true
		k := [2]uint64{id / perPublisher, uint64(e.Msg.Priority)}
		if prev, ok := last[k]; ok && prev > id {
			t.Fatalf("publisher %d priority %d: %d after %d", k[0], k[1], id, prev)
		}
		last[k] = id
	}
	if st := q.Counts(); st.Ready != 0 || st.InMemory != 0 {
		t.Fatalf("counts %+v after draining", st)
	}
}

// A redelivery delay holds a requeued entry back, then it returns to its place in its
// priority; a policy change (SetOptions) cannot turn the priority queue into a plain one.
func TestPriorityDelayAndSetOptions(t *testing.T) {
	opts := NoLimits()
	opts.MaxPriority = 5
	opts.RedeliveryDelay = time.Hour
	q, _, clk := newTestQueue(opts)
	pushPrio(t, q, []uint8{5, 0, 5})
	e, _, _ := q.Get(false)
	if e.Msg.ID != 0 {
		t.Fatalf("got %d, want 0", e.Msg.ID)
	}
	q.Requeue([]*Entry{e})
	plain := NoLimits() // a policy that knows nothing of priorities
	plain.RedeliveryDelay = time.Hour
	q.SetOptions(plain)
	if got := q.Options(); got.MaxPriority != 5 {
		t.Fatalf("SetOptions changed MaxPriority to %d", got.MaxPriority)
	}
	if e, _, _ := q.Get(true); e.Msg.ID != 2 {
		t.Fatalf("while 0 waits: got %d, want 2", e.Msg.ID)
	}
	m := &Message{ID: 3, Priority: 5}
	q.Push(q.NewEntry(q.NextSeqFor(m), m))
	clk.advance(2 * time.Hour)
	if got := drainGet(q); !slices.Equal(got, []uint64{0, 3, 1}) {
		t.Fatalf("after the delay %v, want [0 3 1]", got)
	}
}

// evictLast pages out never delivered entries and entries only assumed delivered after an
// unclean stop (their flag is derived again from the stored copy), never really delivered ones.
func TestPriorityEvictLastMaybeDelivered(t *testing.T) {
	tests := []struct {
		name       string
		deliveries uint32
		maybe      bool
		evicted    bool
	}{
		{"never delivered", 0, false, true},
		{"assumed delivered after an unclean stop", 1, true, true},
		{"delivered and requeued", 1, false, false},
		{"assumed, then delivered and requeued", 2, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newPrioReady(0)
			r.insert(0, &Entry{Seq: 1, Msg: &Message{}})
			last := &Entry{Seq: 2, Msg: &Message{}, Deliveries: tt.deliveries, MaybeDelivered: tt.maybe}
			r.insert(0, last)
			got := r.evictLast(0)
			if (got == last) != tt.evicted {
				t.Fatalf("evictLast = %v, want evicted %v", got, tt.evicted)
			}
		})
	}
}
