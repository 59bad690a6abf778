// Package coalesce batches a net.Conn's writes into fewer system calls, for AMQP clients
// that flush after every frame: amqp091-go writes one write(2) per publish or ack, which on a
// small host costs more CPU than the broker spends on the message. Used by the benchmark's
// load generator and by the cluster's proxy connections between nodes.
package coalesce

import (
	"net"
	"sync"
	"time"
)

// MaxPending bounds the bytes a Conn buffers: beyond it writers block, so the peer's TCP
// back-pressure (how a broker's flow control reaches a publisher) still reaches the writer.
const MaxPending = 1 << 20

// Conn is a net.Conn whose Write only appends to a bounded buffer; a flusher goroutine
// writes whatever accumulated while its previous write was in flight: an idle connection
// sends at once (one goroutine hand-off of latency), a busy one sends large batches. Byte
// order is preserved, so the stream is the same as without it.
type Conn struct {
	net.Conn
	mu      sync.Mutex
	space   *sync.Cond // signalled when buf drains or the conn fails
	buf     []byte
	spare   []byte
	err     error
	closed  bool
	wake    chan struct{}
	flushed chan struct{}
}

// New wraps c and starts its flusher; Close stops it.
func New(c net.Conn) *Conn {
	cc := &Conn{
		Conn:    c,
		buf:     make([]byte, 0, 64<<10),
		spare:   make([]byte, 0, 64<<10),
		wake:    make(chan struct{}, 1),
		flushed: make(chan struct{}),
	}
	cc.space = sync.NewCond(&cc.mu)
	go cc.flusher()
	return cc
}

// Write queues p; an error means an earlier flush failed or the conn closed.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for len(c.buf) >= MaxPending && c.err == nil && !c.closed {
		c.space.Wait()
	}
	if c.err != nil || c.closed {
		err := c.err
		c.mu.Unlock()
		if err == nil {
			err = net.ErrClosed
		}
		return 0, err
	}
	c.buf = append(c.buf, p...)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default: // a wake-up is already pending; the flusher will see p
	}
	return len(p), nil
}

func (c *Conn) flusher() {
	defer close(c.flushed)
	for range c.wake {
		for {
			c.mu.Lock()
			if len(c.buf) == 0 || c.err != nil {
				done := c.closed || c.err != nil
				c.space.Broadcast()
				c.mu.Unlock()
				if done {
					return
				}
				break
			}
			out := c.buf
			c.buf = c.spare[:0]
			c.mu.Unlock()
			_, err := c.Conn.Write(out)
			c.mu.Lock()
			c.spare = out[:0]
			if err != nil {
				c.err = err
			}
			c.space.Broadcast()
			c.mu.Unlock()
		}
	}
}

// Close sends what is still queued (bounded by a short deadline so a stuck
// peer cannot hang shutdown) and closes the socket.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return net.ErrClosed
	}
	c.closed = true
	c.space.Broadcast()
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	_ = c.Conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	select {
	case <-c.flushed:
	case <-time.After(3 * time.Second):
	}
	return c.Conn.Close()
}
