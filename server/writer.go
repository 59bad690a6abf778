package server

import (
	"net"
	"sync"
)

// Writer flow control: a consumer stops receiving deliveries while its connection has more than
// highWater bytes waiting, and the connection's queues are kicked again once it drains below lowWater.
// This bounds memory per slow consumer without a per-delivery goroutine hop.
const (
	highWater = 4 << 20
	lowWater  = 1 << 20
	// spareCap is the largest buffer kept for reuse after a flush.
	spareCap = 8 << 20
)

// writer is a connection's outbound frame queue. Any goroutine appends encoded frames under mu; one
// goroutine swaps the buffer out and writes it with a single syscall, so under load many frames
// share one write and nothing is flushed while more is already queued.
type writer struct {
	nc   net.Conn
	mu   sync.Mutex
	buf  []byte
	wake chan struct{}
	// closing: write what is queued, then close the socket.
	closing   bool
	dead      bool
	throttled bool
	onDrain   func()
	done      chan struct{}
}

func newWriter(nc net.Conn, onDrain func()) *writer {
	return &writer{nc: nc, wake: make(chan struct{}, 1), done: make(chan struct{}), onDrain: onDrain, buf: make([]byte, 0, 64<<10)}
}

// lock returns the buffer to append to; unlock must follow.
func (w *writer) lock() []byte {
	w.mu.Lock()
	return w.buf
}

// unlock stores the appended buffer and wakes the writer goroutine.
func (w *writer) unlock(b []byte) {
	if w.dead {
		b = b[:0]
	}
	w.buf = b
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// congested reports whether deliveries should pause; call with mu held (inside lock/unlock) or not.
func (w *writer) congestedLocked() bool {
	if len(w.buf) > highWater {
		w.throttled = true
		return true
	}
	return w.dead
}

func (w *writer) congested() bool {
	w.mu.Lock()
	c := w.congestedLocked()
	w.mu.Unlock()
	return c
}

// closeAfterFlush makes the writer close the socket once everything queued so far is written.
func (w *writer) closeAfterFlush() {
	w.mu.Lock()
	w.closing = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// run is the writer goroutine.
func (w *writer) run() {
	defer close(w.done)
	var spare []byte
	for range w.wake {
		w.mu.Lock()
		b := w.buf
		w.buf = spare[:0]
		closing := w.closing
		w.mu.Unlock()
		if len(b) > 0 {
			if _, err := w.nc.Write(b); err != nil {
				w.kill()
				return
			}
		}
		if cap(b) <= spareCap {
			spare = b[:0]
		} else {
			spare = nil
		}
		w.mu.Lock()
		drained := w.throttled && len(w.buf) < lowWater
		if drained {
			w.throttled = false
		}
		more := len(w.buf) > 0
		w.mu.Unlock()
		if drained && w.onDrain != nil {
			w.onDrain()
		}
		if closing && !more {
			w.kill()
			return
		}
	}
}

// kill stops the writer and closes the socket; later appends are dropped.
func (w *writer) kill() {
	w.mu.Lock()
	w.dead = true
	w.buf = nil
	w.mu.Unlock()
	_ = w.nc.Close()
}
