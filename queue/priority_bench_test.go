package queue

import "testing"

// prioMessages returns n messages whose priorities cycle through 0..levels-1 in a scrambled
// order, so consecutive pushes rarely share a priority.
func prioMessages(n, levels int) []*Message {
	ms := make([]*Message, n)
	for i := range ms {
		ms[i] = &Message{Body: make([]byte, 64), Priority: uint8((i * 7) % levels)}
	}
	return ms
}

// BenchmarkPriorityPushGet: a 10-priority queue, push one message then basic.get one (no-ack),
// on an empty queue and on a 10k backlog spread over the priorities.
func BenchmarkPriorityPushGet(b *testing.B) {
	for _, depth := range []int{0, 10_000} {
		b.Run(map[int]string{0: "empty", 10_000: "backlog10k"}[depth], func(b *testing.B) {
			opts := NoLimits()
			opts.MaxPriority = 9
			q := New("bench", opts, Hooks{})
			ms := prioMessages(1024, 10)
			for i := 0; i < depth; i++ {
				m := ms[i%len(ms)]
				q.Push(q.NewEntry(q.NextSeqFor(m), m))
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				m := ms[i%len(ms)]
				i++
				q.Push(q.NewEntry(q.NextSeqFor(m), m))
				if _, _, ok := q.Get(true); !ok {
					b.Fatal("empty")
				}
			}
		})
	}
}

// BenchmarkPriorityPushDeliver: a 10-priority queue with an always-ready consumer.
func BenchmarkPriorityPushDeliver(b *testing.B) {
	opts := NoLimits()
	opts.MaxPriority = 9
	q := New("bench", opts, Hooks{})
	c := &readyConsumer{}
	q.AddConsumer(c)
	ms := prioMessages(1024, 10)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m := ms[i%len(ms)]
		i++
		q.Push(q.NewEntry(q.NextSeqFor(m), m))
	}
	if c.n != b.N {
		b.Fatalf("delivered %d of %d", c.n, b.N)
	}
}

// busyConsumer never has credit.
type busyConsumer struct{}

func (busyConsumer) Deliver(*Queue, *Entry) Outcome { return Busy }

// BenchmarkConsumerPriorityDeliver: each push is offered to a busy higher-priority consumer
// first, then taken by one of two equal lower-priority consumers (round-robin).
func BenchmarkConsumerPriorityDeliver(b *testing.B) {
	q := New("bench", NoLimits(), Hooks{})
	q.AddConsumerWith(busyConsumer{}, ConsumerOptions{Priority: 10})
	c1, c2 := &readyConsumer{}, &readyConsumer{}
	q.AddConsumerWith(c1, ConsumerOptions{Priority: 1})
	q.AddConsumerWith(c2, ConsumerOptions{Priority: 1})
	m := &Message{Body: make([]byte, 64)}
	b.ReportAllocs()
	for b.Loop() {
		q.Push(q.NewEntry(q.NextSeq(), m))
	}
	if c1.n+c2.n != b.N || c1.n-c2.n > 1 || c2.n-c1.n > 1 {
		b.Fatalf("delivered %d + %d of %d", c1.n, c2.n, b.N)
	}
}

// BenchmarkPriorityPaged: a 10-priority queue with a 1,000-entry window and a 100k backlog of
// priority 0 (99k of it paged out), pushing messages of priorities 1-9 and getting them back:
// they stay in memory ahead of the paged backlog (the first by paging out the window's tail).
func BenchmarkPriorityPaged(b *testing.B) {
	opts := NoLimits()
	opts.MaxPriority = 9
	q := New("bench", opts, Hooks{})
	q.SetPaging(Paging{Pager: nopPager{}, Window: 1000})
	low := &Message{Body: make([]byte, 64)}
	for i := 0; i < 100_000; i++ {
		q.Push(q.NewEntry(q.NextSeqFor(low), low))
	}
	ms := prioMessages(1024, 10)
	for i := range ms {
		ms[i].Priority = ms[i].Priority%9 + 1 // 1..9: always ahead of the backlog
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m := ms[i%len(ms)]
		i++
		q.Push(q.NewEntry(q.NextSeqFor(m), m))
		if e, _, ok := q.Get(true); !ok || e.Msg.Priority == 0 {
			b.Fatal("backlog served first")
		}
	}
}

// nopPager drops what is paged out; PageIn is never reached while the head is in memory.
type nopPager struct{}

func (nopPager) PageOut(*Entry) {}
func (nopPager) PageIn(_ uint64, _ int, _ int64, done func([]*Entry, error)) {
	go done(nil, nil)
}
func (nopPager) Discard([]Span) {}
