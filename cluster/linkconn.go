package cluster

import (
	"net"
	"sync"
	"time"
)

// This is bench/coalesce.go's coalescingConn (the bench's amqp091-go connections), for the
// link's proxy connection (the forwarding connection, pubConn, batches its own writes):
// amqp091-go flushes after every frame it sends, one write(2) per ack; here Write only appends to a bounded buffer and a flusher goroutine
// writes whatever accumulated while its previous write was in flight. An idle link sends at
// once, a busy one in large batches; the byte stream is unchanged.

// maxLinkPending bounds the bytes a coalescingConn buffers: beyond it writers block, so the
// home node's TCP back-pressure still reaches the forwarding goroutine.
const maxLinkPending = 1 << 20

type coalescingConn struct {
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

func newCoalescingConn(c net.Conn) *coalescingConn {
	cc := &coalescingConn{
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
func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for len(c.buf) >= maxLinkPending && c.err == nil && !c.closed {
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

func (c *coalescingConn) flusher() {
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
func (c *coalescingConn) Close() error {
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

// coalescingDial dials with timeout and wraps the connection (amqp091.Config.Dial).
func coalescingDial(timeout time.Duration) func(network, addr string) (net.Conn, error) {
	return func(network, addr string) (net.Conn, error) {
		conn, err := net.DialTimeout(network, addr, timeout)
		if err != nil {
			return nil, err
		}
		// Bounds the handshake; amqp091-go clears the deadline once the connection is open.
		if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
			_ = conn.Close()
			return nil, err
		}
		return newCoalescingConn(conn), nil
	}
}
