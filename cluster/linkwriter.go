package cluster

import (
	"net"
	"sync"
	"time"
)

// linkWriter batches the proxy connection's writes into few system calls, as coalesce.Conn does,
// but never makes a writer wait: the proxy's read loop acks no-ack deliveries as it relays them,
// and the home stops reading while its writes to this node are backed up, so a bounded buffer
// could have the read loop wait for the home and the home for the read loop. What it holds is
// bounded anyway: settlements (21 bytes each) of deliveries the home's windows let out, channel
// requests one at a time per channel, and heartbeats.
type linkWriter struct {
	nc    net.Conn
	mu    sync.Mutex
	buf   []byte
	spare []byte
	err   error
	busy  bool // the flusher is writing
	wake  chan struct{}
	done  chan struct{} // closed when the flusher ends
}

func newLinkWriter(nc net.Conn) *linkWriter {
	w := &linkWriter{nc: nc, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go w.flusher()
	return w
}

// Write queues p (the caller may reuse it); an error means an earlier write failed or the
// writer closed.
func (w *linkWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return 0, err
	}
	w.buf = append(w.buf, p...)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (w *linkWriter) flusher() {
	defer close(w.done)
	for range w.wake {
		for {
			w.mu.Lock()
			if len(w.buf) == 0 || w.err != nil {
				stop := w.err != nil
				w.mu.Unlock()
				if stop {
					return
				}
				break
			}
			out := w.buf
			w.buf = w.spare[:0]
			w.busy = true
			w.mu.Unlock()
			_, err := w.nc.Write(out)
			w.mu.Lock()
			w.busy = false
			w.spare = out[:0]
			if err != nil {
				w.err = err
			}
			w.mu.Unlock()
		}
	}
}

// Close sends what is queued, bounded by a second, and closes the socket (also after a write
// error, which leaves the socket open).
func (w *linkWriter) Close() error {
	w.mu.Lock()
	if w.err != nil {
		w.mu.Unlock()
		_ = w.nc.Close()
		return net.ErrClosed
	}
	w.mu.Unlock()
	_ = w.nc.SetWriteDeadline(time.Now().Add(time.Second))
	// The flusher writes what is queued, then finds the error set below and stops.
	w.mu.Lock()
	pending := len(w.buf) > 0 || w.busy
	w.mu.Unlock()
	if pending {
		select {
		case w.wake <- struct{}{}:
		default:
		}
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			w.mu.Lock()
			empty := (len(w.buf) == 0 && !w.busy) || w.err != nil
			w.mu.Unlock()
			if empty {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	w.mu.Lock()
	if w.err == nil {
		w.err = net.ErrClosed
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return w.nc.Close()
}
