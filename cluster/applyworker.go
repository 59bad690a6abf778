package cluster

import (
	"context"
	"sync"

	"github.com/warrenmq/warren/broker"
)

// Applying is what Metadata.Apply returns when the broker's part of a command runs on the
// worker: the verdict is known, the local broker has not necessarily applied it yet.
type Applying struct {
	done chan struct{}
	res  Result
}

// Wait returns the command's Result once the local broker has applied it (and everything the
// log decided before it), or ctx's error.
func (a *Applying) Wait(ctx context.Context) (Result, error) {
	select {
	case <-a.done:
		return a.res, nil
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
}

// applyJob is the broker's part of one command (or of a snapshot's restore).
type applyJob struct {
	ops  []broker.TopologyOp
	done *Applying // nil: nobody waits
	// index is the log index the job completes (0: a Drain mark), reported to the broker
	// (broker.Broker.TopologyApplied) once its ops are applied.
	index uint64
}

// applyWorker runs the broker's part of the metadata log off the Raft host's loop, one job at a
// time in log order: a slow one (deleting a queue of millions of stored messages) delays only
// the topology changes after it, never the Raft traffic of every group. Its queue is unbounded
// (topology changes are small, and the loop must never block on it).
type applyWorker struct {
	m *Metadata

	mu     sync.Mutex
	cond   *sync.Cond
	q      []applyJob
	busy   bool // a job is running
	closed bool
	exited chan struct{}
}

// StartWorker moves the broker's part of every command from Apply to a worker goroutine (see
// Apply). Call it before the log applies anything; StopWorker ends it.
func (m *Metadata) StartWorker() {
	w := &applyWorker{m: m, exited: make(chan struct{})}
	w.cond = sync.NewCond(&w.mu)
	m.mu.Lock()
	m.worker = w
	m.mu.Unlock()
	go w.run()
}

// StopWorker runs what the worker still holds, then stops it.
func (m *Metadata) StopWorker() {
	m.mu.Lock()
	w := m.worker
	m.mu.Unlock()
	if w == nil {
		return
	}
	w.mu.Lock()
	w.closed = true
	w.cond.Broadcast()
	w.mu.Unlock()
	<-w.exited
}

// Drain waits until the broker has applied every change decided so far (no-op without the
// worker, or once it stopped), or until ctx ends (its error then).
func (m *Metadata) Drain(ctx context.Context) error {
	m.mu.Lock()
	w := m.worker
	m.mu.Unlock()
	if w == nil {
		return nil
	}
	// A job with no ops: the worker runs jobs in order, so it is done once all before it are.
	mark := &Applying{done: make(chan struct{})}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.q = append(w.q, applyJob{done: mark})
	w.cond.Broadcast()
	w.mu.Unlock()
	_, err := mark.Wait(ctx)
	return err
}

func (w *applyWorker) push(j applyJob) {
	w.mu.Lock()
	w.q = append(w.q, j)
	w.cond.Broadcast()
	w.mu.Unlock()
}

// idle reports whether the worker has nothing queued or running.
func (w *applyWorker) idle() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.q) == 0 && !w.busy
}

func (w *applyWorker) run() {
	defer close(w.exited)
	for {
		w.mu.Lock()
		for len(w.q) == 0 && !w.closed {
			w.cond.Wait()
		}
		if len(w.q) == 0 {
			w.mu.Unlock()
			return
		}
		j := w.q[0]
		w.q[0] = applyJob{}
		w.q = w.q[1:]
		w.busy = true
		w.mu.Unlock()
		if d := w.m.testApplyDelay; d != nil {
			d()
		}
		msgs := 0
		for _, op := range j.ops {
			msgs += w.m.applyNow(op).Messages
		}
		w.m.reportApplied(j.index)
		if j.done != nil {
			j.done.res.Messages += msgs
			close(j.done.done)
		}
		w.mu.Lock()
		w.busy = false
		w.cond.Broadcast()
		w.mu.Unlock()
	}
}
