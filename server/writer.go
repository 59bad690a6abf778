package server

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
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
	// inlineIdle: an append to a writer that has written nothing for at least this long is
	// written at once by the appending goroutine (see unlock). A connection that receives a
	// trickle (hundreds of clients at tens of messages a second each) then costs no goroutine
	// start and exit per delivery, while one under load keeps batching in the flusher: after
	// an inline write the next append within inlineIdle goes to the flusher, so a busy
	// connection gets at most one unbatched write per inlineIdle.
	inlineIdle = 100 * time.Microsecond
	// inlineMax is the largest buffer written inline; more goes to the flusher.
	inlineMax = 64 << 10
)

// clockBase makes writer timestamps small monotonic durations (time.Since reads the monotonic
// clock).
var clockBase = time.Now()

func monoNow() int64 { return int64(time.Since(clockBase)) }

// writer is a connection's outbound frame queue. Any goroutine appends encoded frames under mu; a
// flusher goroutine swaps the buffer out and writes it with a single syscall, so under load many
// frames share one write and nothing is flushed while more is already queued. The flusher runs
// only while there is something to write: it is started by the append that finds it stopped and
// exits once the buffer is empty, so an idle connection has no writer goroutine (and no stack).
// An append to a connection that has been idle for inlineIdle is written by the appending
// goroutine itself with one non-blocking write (writeInline): a trickle of deliveries then
// costs no goroutine start and exit each, and the flusher takes over whatever that write leaves.
type writer struct {
	nc net.Conn
	// raw is the socket's file descriptor for inline writes (see unlock); nil when the
	// connection has none (TLS, in-memory pipes): then the flusher writes everything.
	raw     syscall.RawConn
	lastOut int64 // monoNow() when the last write ended (or began, for a flusher); under mu
	// inlined counts writes made by writeInline (under mu; for tests and debugging).
	inlined int64
	// The state of the inline write in progress, owned by the goroutine that set running for
	// it; writeFd is w.writeToFd, made once so that a write allocates no closure.
	inB     []byte
	inN     int
	inErr   error
	writeFd func(fd uintptr) bool
	// waitFd is w.writeAllToFd, the flusher's callback (see writeAll).
	waitFd  func(fd uintptr) bool
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
	if sc, ok := nc.(syscall.Conn); ok && canInline {
		if rc, err := sc.SyscallConn(); err == nil {
			w.raw = rc
			w.writeFd = w.writeToFd
			w.waitFd = w.writeAllToFd
		}
	}
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

// unlock stores the appended buffer and has it written: at once on the calling goroutine when
// the writer has been idle for inlineIdle (writeInline), otherwise by the flusher, started if it
// is not running.
func (w *writer) unlock(b []byte) {
	if w.dead {
		b = b[:0]
	}
	w.buf = b
	if len(b) > highWater {
		w.full.Store(true)
	}
	if w.raw != nil && !w.running && !w.dead && !w.closing && !w.throttled && len(b) > 0 && len(b) <= inlineMax {
		if now := monoNow(); now-w.lastOut >= int64(inlineIdle) {
			w.writeInline(now)
			return
		}
	}
	start := w.startLocked()
	w.mu.Unlock()
	if start {
		go w.run()
	}
}

// unlockAsync is unlock that never writes on the calling goroutine, for callers that must not
// spend a system call (the journal's goroutine completing confirms for every connection).
func (w *writer) unlockAsync(b []byte) {
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

// writeInline writes the buffer with one non-blocking write on the calling goroutine, with mu
// held on entry and released on return. The writer counts as running meanwhile, so appends made
// during the write queue behind it, in order. What the socket does not take (it is full), what
// was appended meanwhile, a close requested meanwhile and any error (the flusher's write meets
// it again and kills the writer, off the caller's locks) go to the flusher. Callers may hold
// queue and channel locks (Consumer.Deliver): the write never waits for the peer.
func (w *writer) writeInline(now int64) {
	b := w.buf
	w.running = true
	w.buf = w.spare[:0]
	w.spare = nil
	w.lastOut = now
	w.mu.Unlock()
	w.inB, w.inN, w.inErr = b, 0, nil
	err := w.raw.Write(w.writeFd)
	n, werr := w.inN, w.inErr
	w.inB, w.inErr = nil, nil
	if n > 0 {
		w.sentOct.Add(uint64(n))
	}
	w.mu.Lock()
	w.inlined++
	if w.dead {
		w.running = false
		w.mu.Unlock()
		return
	}
	if n == len(b) && err == nil && werr == nil {
		w.lastOut = monoNow()
		if len(w.buf) == 0 && !w.closing {
			if cap(b) <= spareCap {
				w.spare = b[:0]
			}
			w.running = false
			w.mu.Unlock()
			return
		}
	} else {
		// The rest of b goes first, then what was appended during the write.
		k := copy(b, b[n:])
		b = append(b[:k], w.buf...)
		w.spare, w.buf = w.buf[:0], b
		if len(b) > highWater {
			w.full.Store(true)
		}
	}
	w.mu.Unlock()
	go w.run() // running stays true: the flusher takes over
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
		if err := w.writeAll(b); err != nil {
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
		w.lastOut = monoNow()
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

// writeToFd writes w.inB from w.inN on with non-blocking writes until it is written or the
// socket is full (EAGAIN) or fails; it is the RawConn.Write callback of writeInline and always
// reports done: it never waits for the socket to become writable.
func (w *writer) writeToFd(fd uintptr) bool {
	for w.inN < len(w.inB) {
		m, err := rawWrite(fd, w.inB[w.inN:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			if err != syscall.EAGAIN {
				w.inErr = err
			}
			break
		}
		w.inN += m
		if m == 0 {
			break
		}
	}
	return true
}

// writeAll writes b in full for the flusher. With a raw descriptor it writes with raw
// write(2)s and waits in the netpoller while the socket is full, as net.Conn.Write does, but
// without entering a blocking-syscall section per write: that woke the runtime's sysmon thread
// with a futex whenever the broker had been idle (see rawWrite). Without one, nc.Write.
func (w *writer) writeAll(b []byte) error {
	if w.raw == nil {
		_, err := w.nc.Write(b)
		return err
	}
	w.inB, w.inN, w.inErr = b, 0, nil
	err := w.raw.Write(w.waitFd)
	werr := w.inErr
	w.inB, w.inErr = nil, nil
	if err != nil {
		return err
	}
	return werr
}

// writeAllToFd is the RawConn.Write callback of writeAll: it writes w.inB from w.inN on until
// it is written (true), fails (true, w.inErr set) or the socket is full (false: wait until it is
// writable, then call again).
func (w *writer) writeAllToFd(fd uintptr) bool {
	for w.inN < len(w.inB) {
		m, err := rawWrite(fd, w.inB[w.inN:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return false
		case err != nil:
			w.inErr = os.NewSyscallError("write", err)
			return true
		case m == 0:
			w.inErr = io.ErrShortWrite
			return true
		}
		w.inN += m
	}
	return true
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
