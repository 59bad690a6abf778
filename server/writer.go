package server

import (
	"net"
	"sync"
	"sync/atomic"
)

// Writer flow control: a consumer stops receiving deliveries while its connection has more than
// highWater bytes waiting, and the connection's queues are kicked again once it drains below lowWater.
// This bounds memory per slow consumer without a per-delivery goroutine hop.
const (
	highWater = 4 << 20
	lowWater  = 1 << 20
	// spareCap is the largest buffer kept for reuse after a flush.
	spareCap = 8 << 20
	// idleCap is the largest buffer an idle writer keeps through a trim (see Server.trimLoop):
	// a connection that went quiet must not hold the buffers of its busiest moment.
	idleCap = 16 << 10
)

// writer is a connection's outbound frame queue. Any goroutine appends encoded frames under mu; a
// flusher goroutine swaps the buffer out and writes it with a single syscall, so under load many
// frames share one write and nothing is flushed while more is already queued. The flusher runs
// only while there is something to write: it is started by the append that finds it stopped and
// exits once the buffer is empty, so an idle connection has no writer goroutine (and no stack).
type writer struct {
	nc      net.Conn
	mu      sync.Mutex
	buf     []byte
	spare   []byte // the buffer of the previous flush, reused for appends
	running bool   // a flusher goroutine is active
	// closing: write what is queued, then close the socket.
	closing   bool
	dead      bool
	throttled bool
	onDrain   func()
	done      chan struct{} // closed when the writer is dead (socket closed)
	// full is set while more than highWater bytes wait (any kind of output: replies, get-ok,
	// returns, deliveries): the connection's reader then stops reading (awaitRoom), so what a
	// client that does not read can make the broker hold is bounded. room is signalled by the
	// flusher (and kill) for awaitRoom.
	full atomic.Bool
	room *sync.Cond
	// sentOct counts bytes written to the socket, for the management API.
	sentOct atomic.Uint64
	// fullWrites counts socket writes completed while the writer was full: behind megabytes of
	// queued output, a completed write means the client is reading (see conn.activity). Writes
	// of an unclogged writer prove nothing: the kernel takes them whether the client reads or not.
	fullWrites atomic.Int64
}

func newWriter(nc net.Conn, onDrain func()) *writer {
	// The buffer is allocated by the first append and grows with the traffic.
	w := &writer{nc: nc, done: make(chan struct{}), onDrain: onDrain}
	w.room = sync.NewCond(&w.mu)
	return w
}

// awaitRoom blocks while more than lowWater bytes wait to be written; it returns at once when the
// writer is dead. The connection's reader calls it when full is set, before reading on.
func (w *writer) awaitRoom() {
	w.mu.Lock()
	for len(w.buf) > lowWater && !w.dead {
		w.room.Wait()
	}
	w.mu.Unlock()
}

// lock returns the buffer to append to; unlock must follow.
func (w *writer) lock() []byte {
	w.mu.Lock()
	return w.buf
}

// unlock stores the appended buffer and starts the flusher if it is not running.
func (w *writer) unlock(b []byte) {
	if w.dead {
		b = b[:0]
	}
	w.buf = b
	if len(b) > highWater {
		w.full.Store(true)
	}
	start := w.startLocked()
	w.mu.Unlock()
	if start {
		go w.run()
	}
}

// startLocked reports whether the caller must start a flusher, marking it running.
func (w *writer) startLocked() bool {
	if w.running || w.dead || (len(w.buf) == 0 && !w.closing) {
		return false
	}
	w.running = true
	return true
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
	start := w.startLocked()
	w.mu.Unlock()
	if start {
		go w.run()
	}
}

// run is the flusher: it writes until the buffer is empty, then exits (or, when closing, closes
// the socket).
func (w *writer) run() {
	for {
		w.mu.Lock()
		b := w.buf
		if len(b) == 0 {
			closing := w.closing
			w.running = false
			w.mu.Unlock()
			if closing {
				w.kill()
			}
			return
		}
		w.buf = w.spare[:0]
		w.spare = nil
		w.mu.Unlock()
		if _, err := w.nc.Write(b); err != nil {
			w.mu.Lock()
			w.running = false
			w.mu.Unlock()
			w.kill()
			return
		}
		w.sentOct.Add(uint64(len(b)))
		if w.full.Load() {
			w.fullWrites.Add(1)
		}
		w.mu.Lock()
		if cap(b) <= spareCap {
			w.spare = b[:0]
		}
		drained := w.throttled && len(w.buf) < lowWater
		if drained {
			w.throttled = false
		}
		if w.full.Load() && len(w.buf) <= lowWater {
			w.full.Store(false)
			w.room.Broadcast()
		}
		w.mu.Unlock()
		if drained && w.onDrain != nil {
			w.onDrain()
		}
	}
}

// trim drops buffers larger than idleCap while the writer has nothing to write; they are
// reallocated (and regrown) if traffic resumes.
func (w *writer) trim() {
	w.mu.Lock()
	if !w.running && len(w.buf) == 0 {
		if cap(w.buf) > idleCap {
			w.buf = nil
		}
		if cap(w.spare) > idleCap {
			w.spare = nil
		}
	}
	w.mu.Unlock()
}

// kill stops the writer and closes the socket; later appends are dropped.
func (w *writer) kill() {
	w.mu.Lock()
	first := !w.dead
	w.dead = true
	w.buf, w.spare = nil, nil
	w.full.Store(false)
	w.room.Broadcast()
	w.mu.Unlock()
	_ = w.nc.Close()
	if first {
		close(w.done)
	}
}
