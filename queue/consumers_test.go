package queue

import (
	"slices"
	"sync"
	"testing"
)

// Consumer priorities: the highest-priority consumers that can take an entry get it,
// round-robin among equals; lower ones only while every higher one is busy.
func TestConsumerPriority(t *testing.T) {
	type spec struct {
		name   string
		prio   int
		credit int
	}
	tests := []struct {
		name      string
		consumers []spec // registered in this order, before the pushes
		push      int
		remove    string // removed after the pushes, then as many more are pushed
		want      map[string][]uint64
	}{
		{"higher takes all while it can", []spec{{"low", 0, -1}, {"high", 10, -1}}, 4, "",
			map[string][]uint64{"high": {1, 2, 3, 4}}},
		{"lower gets what a busy higher cannot take", []spec{{"high", 10, 2}, {"low", 0, -1}}, 5, "",
			map[string][]uint64{"high": {1, 2}, "low": {3, 4, 5}}},
		{"equal priorities round-robin", []spec{{"a", 5, -1}, {"b", 5, -1}, {"c", 0, -1}}, 4, "",
			map[string][]uint64{"a": {1, 3}, "b": {2, 4}}},
		{"three levels, upper two busy", []spec{{"mid", 1, 1}, {"top", 2, 1}, {"neg", -3, -1}}, 4, "",
			map[string][]uint64{"top": {1}, "mid": {2}, "neg": {3, 4}}},
		{"default 0 beats negative", []spec{{"neg", -1, -1}, {"zero", 0, -1}}, 2, "",
			map[string][]uint64{"zero": {1, 2}}},
		{"removing the higher one hands over", []spec{{"high", 10, -1}, {"low", 0, -1}}, 2, "high",
			map[string][]uint64{"high": {1, 2}, "low": {3, 4}}},
		{"removing one of a round-robin pair", []spec{{"a", 0, -1}, {"b", 0, -1}, {"c", 0, -1}}, 3, "b",
			map[string][]uint64{"a": {1, 4, 6}, "b": {2}, "c": {3, 5}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, _, _ := newTestQueue(NoLimits())
			cs := map[string]*fakeConsumer{}
			for _, s := range tc.consumers {
				cs[s.name] = newConsumer(s.name, s.credit)
				q.AddConsumerWith(cs[s.name], ConsumerOptions{Priority: s.prio})
			}
			pushN(t, q, tc.push, 1)
			if tc.remove != "" {
				if n := q.RemoveConsumer(cs[tc.remove]); n != len(tc.consumers)-1 {
					t.Fatalf("RemoveConsumer left %d", n)
				}
				pushN(t, q, tc.push, 1)
			}
			for name, c := range cs {
				if got := c.delivered(); !slices.Equal(got, tc.want[name]) {
					t.Errorf("%s got %v, want %v", name, got, tc.want[name])
				}
			}
		})
	}
}

// A higher-priority consumer that regains credit gets the backlog before a lower one does.
func TestConsumerPriorityKick(t *testing.T) {
	q, _, _ := newTestQueue(NoLimits())
	high, low := newConsumer("high", 0), newConsumer("low", 0)
	q.AddConsumerWith(low, ConsumerOptions{Priority: 1})
	q.AddConsumerWith(high, ConsumerOptions{Priority: 2})
	pushN(t, q, 3, 1)
	high.grant(2)
	low.grant(5)
	q.Kick()
	if got := high.delivered(); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("high got %v", got)
	}
	if got := low.delivered(); !slices.Equal(got, []uint64{3}) {
		t.Fatalf("low got %v", got)
	}
}

// activeLog records Hooks.ActiveChanged calls; the hook also reads the queue, which would
// deadlock if it were called with the lock held.
type activeLog struct {
	mu      sync.Mutex
	changes []string
}

func (l *activeLog) hooks(r *recorder) Hooks {
	h := r.hooks()
	h.ActiveChanged = func(q *Queue, c Consumer) {
		q.Counts()
		name := "<none>"
		if c != nil {
			name = c.(*fakeConsumer).name
		}
		l.mu.Lock()
		l.changes = append(l.changes, name)
		l.mu.Unlock()
	}
	return h
}

func (l *activeLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.changes)
}

func newSACQueue() (*Queue, *activeLog) {
	opts := NoLimits()
	opts.SingleActiveConsumer = true
	q, r, _ := newTestQueue(opts)
	log := &activeLog{}
	q.hooks = log.hooks(r)
	return q, log
}

// Single active consumer: only the earliest registered consumer still present receives; the
// next takes over when it leaves, with what it left unacked first and in order.
func TestSingleActiveConsumer(t *testing.T) {
	tests := []struct {
		name    string
		run     func(t *testing.T, q *Queue, a, b, c *fakeConsumer)
		want    map[string][]uint64
		changes []string
		active  string
	}{
		{"only the first receives", func(t *testing.T, q *Queue, a, b, c *fakeConsumer) {
			pushN(t, q, 3, 1)
		}, map[string][]uint64{"a": {1, 2, 3}}, []string{"a"}, "a"},
		{"a busy active consumer holds the queue", func(t *testing.T, q *Queue, a, b, c *fakeConsumer) {
			a.grant(-a.credit) // no credit left
			pushN(t, q, 3, 1)
			if st := q.Counts(); st.Ready != 3 {
				t.Fatalf("Ready = %d, want 3", st.Ready)
			}
		}, map[string][]uint64{}, []string{"a"}, "a"},
		{"cancel hands over in registration order", func(t *testing.T, q *Queue, a, b, c *fakeConsumer) {
			pushN(t, q, 2, 1)
			q.RemoveConsumer(a)
			pushN(t, q, 1, 1)
			q.RemoveConsumer(b)
			pushN(t, q, 1, 1)
			q.RemoveConsumer(c)
		}, map[string][]uint64{"a": {1, 2}, "b": {3}, "c": {4}}, []string{"a", "b", "c", "<none>"}, ""},
		{"removing a waiting consumer changes nothing", func(t *testing.T, q *Queue, a, b, c *fakeConsumer) {
			q.RemoveConsumer(b)
			pushN(t, q, 2, 1)
			q.RemoveConsumer(a)
			pushN(t, q, 1, 1)
		}, map[string][]uint64{"a": {1, 2}, "c": {3}}, []string{"a", "c"}, "c"},
		{"the next consumer gets the ready backlog at once", func(t *testing.T, q *Queue, a, b, c *fakeConsumer) {
			a.grant(-a.credit + 1)
			pushN(t, q, 3, 1)
			q.RemoveConsumer(a)
		}, map[string][]uint64{"a": {1}, "b": {2, 3}}, []string{"a", "b"}, "b"},
		{"unacked entries go to the next consumer first, in order", func(t *testing.T, q *Queue, a, b, c *fakeConsumer) {
			a.grant(-a.credit + 2)
			pushN(t, q, 5, 1)
			es := a.entries()
			q.RemoveConsumers([]Consumer{a}, []*Entry{es[1], es[0]})
		}, map[string][]uint64{"a": {1, 2}, "b": {1, 2, 3, 4, 5}}, []string{"a", "b"}, "b"},
		{"a channel with two of the consumers closes", func(t *testing.T, q *Queue, a, b, c *fakeConsumer) {
			a.grant(-a.credit + 1)
			pushN(t, q, 2, 1)
			q.RemoveConsumers([]Consumer{a, b}, a.entries())
		}, map[string][]uint64{"a": {1}, "c": {1, 2}}, []string{"a", "c"}, "c"},
		{"consumer priority does not pick the active one", func(t *testing.T, q *Queue, a, b, c *fakeConsumer) {
			high := newConsumer("high", -1)
			q.AddConsumerWith(high, ConsumerOptions{Priority: 100})
			pushN(t, q, 1, 1)
		}, map[string][]uint64{"a": {1}}, []string{"a"}, "a"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, log := newSACQueue()
			a, b, c := newConsumer("a", 100), newConsumer("b", 100), newConsumer("c", 100)
			for _, x := range []*fakeConsumer{a, b, c} {
				q.AddConsumer(x)
			}
			tc.run(t, q, a, b, c)
			for _, x := range []*fakeConsumer{a, b, c} {
				if got := x.delivered(); !slices.Equal(got, tc.want[x.name]) {
					t.Errorf("%s got %v, want %v", x.name, got, tc.want[x.name])
				}
			}
			if got := log.get(); !slices.Equal(got, tc.changes) {
				t.Errorf("active changes %v, want %v", got, tc.changes)
			}
			active := ""
			if x := q.ActiveConsumer(); x != nil {
				active = x.(*fakeConsumer).name
			}
			if active != tc.active {
				t.Errorf("ActiveConsumer = %q, want %q", active, tc.active)
			}
		})
	}
}

// Requeued entries reach the new active consumer marked redelivered.
func TestSingleActiveConsumerRedelivered(t *testing.T) {
	q, _ := newSACQueue()
	a, b := newConsumer("a", 1), newConsumer("b", -1)
	q.AddConsumer(a)
	q.AddConsumer(b)
	pushN(t, q, 2, 1)
	q.RemoveConsumers([]Consumer{a}, a.entries())
	b.mu.Lock()
	defer b.mu.Unlock()
	if !slices.Equal(b.seqs, []uint64{1, 2}) || !slices.Equal(b.redeliver, []bool{true, false}) {
		t.Fatalf("b got %v redelivered %v", b.seqs, b.redeliver)
	}
}

// A queue that is not single-active-consumer has no active consumer and calls no hook.
func TestActiveConsumerOffByDefault(t *testing.T) {
	q, _, _ := newTestQueue(NoLimits())
	called := false
	q.hooks.ActiveChanged = func(*Queue, Consumer) { called = true }
	a, b := newConsumer("a", -1), newConsumer("b", -1)
	q.AddConsumer(a)
	q.AddConsumer(b)
	pushN(t, q, 2, 1)
	q.RemoveConsumer(a)
	if q.ActiveConsumer() != nil || called {
		t.Fatalf("active %v, hook called %v", q.ActiveConsumer(), called)
	}
	if !slices.Equal(a.delivered(), []uint64{1}) || !slices.Equal(b.delivered(), []uint64{2}) {
		t.Fatalf("a %v b %v", a.delivered(), b.delivered())
	}
}
