package queue

import (
	"runtime"
	"testing"
)

// readyConsumer takes everything, like a no-ack consumer with unlimited prefetch.
type readyConsumer struct{ n int }

func (c *readyConsumer) Deliver(*Queue, *Entry) Outcome {
	c.n++
	return AcceptedNoAck
}

// BenchmarkPushDeliver: one entry pushed and handed straight to an always-ready consumer per op.
func BenchmarkPushDeliver(b *testing.B) {
	q := New("bench", NoLimits(), Hooks{})
	c := &readyConsumer{}
	q.AddConsumer(c)
	m := &Message{Body: make([]byte, 64)}
	b.ReportAllocs()
	for b.Loop() {
		q.Push(q.NewEntry(q.NextSeq(), m))
	}
	if c.n != b.N {
		b.Fatalf("delivered %d of %d", c.n, b.N)
	}
}

// BenchmarkPushGet: push with no consumer, then basic.get it back (no-ack).
func BenchmarkPushGet(b *testing.B) {
	for _, depth := range []int{0, 10_000} {
		b.Run(map[int]string{0: "empty", 10_000: "backlog10k"}[depth], func(b *testing.B) {
			q := New("bench", NoLimits(), Hooks{})
			m := &Message{Body: make([]byte, 64)}
			for i := 0; i < depth; i++ {
				q.Push(q.NewEntry(q.NextSeq(), m))
			}
			b.ReportAllocs()
			for b.Loop() {
				q.Push(q.NewEntry(q.NextSeq(), m))
				if _, _, ok := q.Get(true); !ok {
					b.Fatal("empty")
				}
			}
		})
	}
}

// BenchmarkRequeueDeep: an entry is taken from the head of a 100k-deep queue and requeued, so
// each op inserts by Seq at the front of a deep ring (the common requeue case).
func BenchmarkRequeueDeep(b *testing.B) {
	const depth = 100_000
	q := New("bench", NoLimits(), Hooks{})
	m := &Message{Body: make([]byte, 64)}
	for i := 0; i < depth; i++ {
		q.Push(q.NewEntry(q.NextSeq(), m))
	}
	e, _, _ := q.Get(false)
	one := []*Entry{e}
	b.ReportAllocs()
	for b.Loop() {
		q.Requeue(one)
		one[0], _, _ = q.Get(false)
	}
	if s := q.Counts(); s.Ready != depth-1 || s.Unacked != 1 {
		b.Fatalf("counts %+v", s)
	}
}

// BenchmarkRequeueMiddle: the worst case for comparison: requeue into the middle of a 100k ring
// (half the ring shifts). Setup restores 100k entries with a gap at Seq 50,000.
func BenchmarkRequeueMiddle(b *testing.B) {
	const depth = 100_000
	q := New("bench", NoLimits(), Hooks{})
	m := &Message{Body: make([]byte, 64)}
	var gap *Entry
	for i := uint64(1); i <= depth; i++ {
		e := &Entry{Seq: i, Msg: m}
		if i == depth/2 {
			gap = e
			continue
		}
		q.Restore(e)
	}
	b.ReportAllocs()
	for b.Loop() {
		q.Requeue([]*Entry{gap})
		// Take it back out through the same middle path: purge-free removal is not an API, so
		// drain it via the unexported deque to keep the benchmark about insertion cost.
		b.StopTimer()
		q.mu.Lock()
		removeSeq(&q.ready, gap.Seq)
		q.bytes -= int64(len(m.Body))
		q.unacked++
		q.mu.Unlock()
		b.StartTimer()
	}
}

func removeSeq(d *deque, seq uint64) {
	for i := 0; i < d.n; i++ {
		if d.at(i).Seq == seq {
			for j := i; j < d.n-1; j++ {
				d.set(j, d.at(j+1))
			}
			d.set(d.n-1, nil)
			d.n--
			return
		}
	}
}

// BenchmarkFanout: one shared *Message pushed into 1,000 queues per op (a fanout exchange with
// 1,000 bound queues, each with a ready consumer). Only an Entry is allocated per queue.
func BenchmarkFanout(b *testing.B) {
	const queues = 1000
	qs := make([]*Queue, queues)
	for i := range qs {
		qs[i] = New("bench", NoLimits(), Hooks{})
		qs[i].AddConsumer(&readyConsumer{})
	}
	m := &Message{Body: make([]byte, 1024)}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ReportAllocs()
	for b.Loop() {
		for _, q := range qs {
			q.Push(q.NewEntry(q.NextSeq(), m))
		}
	}
	runtime.ReadMemStats(&after)
	n := float64(b.N) * queues
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/n, "allocs/queue")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/n, "B/queue")
}
