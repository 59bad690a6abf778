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
