package broker

import (
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/queue"
)

// creditConsumer takes messages only while it has credit, like a consumer with a prefetch
// window that acks at its own pace.
type creditConsumer struct {
	mu     sync.Mutex
	credit int
}

func (c *creditConsumer) Deliver(*queue.Queue, *queue.Entry) queue.Outcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.credit == 0 {
		return queue.Busy
	}
	c.credit--
	return queue.AcceptedNoAck
}

func (c *creditConsumer) grant(n int) {
	c.mu.Lock()
	c.credit += n
	c.mu.Unlock()
}

func backloggedQueue(t *testing.T, n int) *Queue {
	t.Helper()
	q := queue.New("q", queue.NoLimits(), queue.Hooks{})
	for i := 0; i < n; i++ {
		q.Push(q.NewEntry(q.NextSeq(), &queue.Message{}))
	}
	return &Queue{name: "q", q: q}
}

// returnsSoon runs f and fails if it has not returned within a minute (it would hang otherwise).
func returnsSoon(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { f(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("%s: awaitDrain did not return", what)
	}
}

func TestAwaitDrain(t *testing.T) {
	const forever = time.Hour // maxWait: only the drain conditions may end the wait

	t.Run("small backlog does not wait", func(t *testing.T) {
		qs := backloggedQueue(t, flowHigh)
		qs.q.AddConsumer(&creditConsumer{})
		returnsSoon(t, "at flowHigh", func() { qs.awaitDrain(flowHigh, time.Millisecond, forever) })
	})
	t.Run("no consumers does not wait", func(t *testing.T) {
		qs := backloggedQueue(t, flowHigh+1000)
		returnsSoon(t, "no consumers", func() { qs.awaitDrain(flowHigh, time.Millisecond, forever) })
	})
	t.Run("stalled consumers do not hold the publisher", func(t *testing.T) {
		qs := backloggedQueue(t, flowHigh+1000)
		qs.q.AddConsumer(&creditConsumer{}) // never has credit
		returnsSoon(t, "stalled consumer", func() { qs.awaitDrain(flowHigh, time.Millisecond, forever) })
		if got := qs.q.Counts().Ready; got != flowHigh+1000 {
			t.Fatalf("ready %d: nothing should have been delivered", got)
		}
	})
	t.Run("draining consumers hold the publisher until the backlog is low", func(t *testing.T) {
		qs := backloggedQueue(t, flowHigh+1000)
		c := &creditConsumer{}
		qs.q.AddConsumer(c)
		stop := make(chan struct{})
		go func() { // a steady trickle, many deliveries within every step
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Microsecond):
				}
				c.grant(100)
				qs.q.Kick()
			}
		}()
		defer close(stop)
		// A step long enough that a loaded test machine never pauses the trickle for a whole one.
		returnsSoon(t, "draining consumer", func() { qs.awaitDrain(flowHigh, 50*time.Millisecond, forever) })
		if got := qs.q.Counts().Ready; got > flowHigh/2 {
			t.Fatalf("returned with %d ready, want at most half of flowHigh %d", got, flowHigh)
		}
	})
}

func TestFlowHighFor(t *testing.T) {
	for _, tc := range []struct {
		window int
		paging bool
		want   int
	}{
		{4096, true, 2048}, // held at half the window, before the backlog pages out
		{1, true, 0},       // every queue paging: held whenever consumers are behind
		{1_000_000, true, 50_000},
		{4096, false, flowHigh}, // no store: no window to stay in
	} {
		if got := flowHighFor(tc.window, tc.paging); got != tc.want {
			t.Errorf("window %d paging %v: %d, want %d", tc.window, tc.paging, got, tc.want)
		}
	}
}
