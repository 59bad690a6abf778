package cluster

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// The link writer never makes a writer wait for the peer, and what it was given reaches the
// peer in order, also what is still queued at Close.
func TestLinkWriterDoesNotBlockAndKeepsOrder(t *testing.T) {
	a, b := net.Pipe() // synchronous: a write waits until the peer reads
	w := newLinkWriter(a)
	var want bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 10000 {
			p := []byte{byte(i >> 8), byte(i)}
			want.Write(p)
			if _, err := w.Write(p); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	select {
	case <-done: // nobody reads b yet: the writes were queued, not waited for
	case <-time.After(5 * time.Second):
		t.Fatal("writes waited for the peer")
	}
	got := make(chan []byte, 1)
	go func() {
		data, _ := io.ReadAll(b)
		got <- data
	}()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if data := <-got; !bytes.Equal(data, want.Bytes()) {
		t.Fatalf("peer read %d bytes, want %d in order", len(data), want.Len())
	}
	if _, err := w.Write([]byte{1}); err == nil {
		t.Fatal("write after close succeeded")
	}
}

// errConn fails every write and records its Close.
type errConn struct {
	net.Conn
	closed chan struct{}
}

func (c *errConn) Write([]byte) (int, error)        { return 0, io.ErrClosedPipe }
func (c *errConn) SetWriteDeadline(time.Time) error { return nil }
func (c *errConn) Close() error                     { close(c.closed); return nil }

// Close closes the socket also after a write failed (the socket would stay open otherwise).
func TestLinkWriterClosesAfterWriteError(t *testing.T) {
	nc := &errConn{closed: make(chan struct{})}
	w := newLinkWriter(nc)
	_, _ = w.Write([]byte{1})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, err := w.Write([]byte{1}); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("write error not reported")
		}
	}
	_ = w.Close()
	select {
	case <-nc.closed:
	default:
		t.Fatal("socket not closed")
	}
}
