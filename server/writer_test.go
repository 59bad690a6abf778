package server

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

func (w *writer) isRunning() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.running
}

// The flusher starts on demand, keeps every writer's bytes in order, stops once the buffer is
// empty, and on closeAfterFlush writes what is queued before closing the socket.
func TestWriterFlushesOnDemand(t *testing.T) {
	client, srv := net.Pipe()
	w := newWriter(srv, nil)
	if w.isRunning() {
		t.Fatal("flusher running before anything was written")
	}
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(client)
		got <- b
	}()
	const writers, frames = 4, 500
	var wg sync.WaitGroup
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < frames; j++ {
				b := w.lock()
				b = append(b, byte(i), byte(j>>8), byte(j))
				w.unlock(b)
			}
		}()
	}
	wg.Wait()
	waitFor(t, "the flusher to stop once idle", func() bool { return !w.isRunning() })
	b := w.lock()
	w.unlock(append(b, 0xff)) // starts a new flusher
	w.closeAfterFlush()
	select {
	case <-w.done:
	case <-time.After(2 * time.Second):
		t.Fatal("writer not done after closeAfterFlush")
	}
	out := <-got
	if len(out) != writers*frames*3+1 || out[len(out)-1] != 0xff {
		t.Fatalf("got %d bytes, want %d ending in 0xff", len(out), writers*frames*3+1)
	}
	next := make([]int, writers)
	for k := 0; k+3 <= len(out)-1; k += 3 {
		i, j := int(out[k]), int(out[k+1])<<8|int(out[k+2])
		if j != next[i] {
			t.Fatalf("writer %d: frame %d arrived when %d was due", i, j, next[i])
		}
		next[i]++
	}
	w.unlock(w.lock()) // appends after death are dropped and start nothing
	if w.isRunning() {
		t.Fatal("flusher started on a dead writer")
	}
}

// trim gives back large buffers of an idle writer and keeps small ones.
func TestWriterTrim(t *testing.T) {
	client, srv := net.Pipe()
	defer client.Close()
	go io.Copy(io.Discard, client)
	w := newWriter(srv, nil)
	defer w.kill()
	for _, size := range []int{64, 1 << 20} {
		b := w.lock()
		w.unlock(append(b, bytes.Repeat([]byte{1}, size)...))
		waitFor(t, "the flush", func() bool { return !w.isRunning() })
		w.trim()
		w.mu.Lock()
		kept := max(cap(w.buf), cap(w.spare))
		w.mu.Unlock()
		if kept > idleCap {
			t.Fatalf("after a %d-byte flush, trim kept a %d-byte buffer", size, kept)
		}
		if size <= idleCap && kept == 0 {
			t.Fatalf("trim dropped a small buffer")
		}
	}
}

// Output for a client that does not read is bounded: past highWater the writer is full and the
// reader waits in awaitRoom until the client has read it down to lowWater (or the writer dies).
func TestWriterFullHoldsReader(t *testing.T) {
	client, srv := net.Pipe()
	defer client.Close()
	w := newWriter(srv, nil)
	chunk := make([]byte, 1<<20)
	// 12 MiB, nobody reading: the flusher holds one buffer in its blocked write, the rest
	// (at least 6 MiB) waits in the writer.
	for i := 0; i < 12; i++ {
		b := w.lock()
		w.unlock(append(b, chunk...))
	}
	if !w.full.Load() {
		t.Fatal("writer not full with 12 MiB written to a client that reads nothing")
	}
	waited := make(chan struct{})
	go func() { w.awaitRoom(); close(waited) }()
	select {
	case <-waited:
		t.Fatal("awaitRoom returned while nothing was read")
	case <-time.After(50 * time.Millisecond):
	}
	go func() { _, _ = io.Copy(io.Discard, client) }() // the client reads at last
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("awaitRoom still waiting after the client read everything")
	}
	if w.full.Load() {
		t.Fatal("writer still full after draining")
	}

	// A writer that dies (the socket closed) releases a waiting reader too.
	client2, srv2 := net.Pipe()
	w2 := newWriter(srv2, nil)
	for i := 0; i < 12; i++ {
		b := w2.lock()
		w2.unlock(append(b, chunk...))
	}
	done := make(chan struct{})
	go func() { w2.awaitRoom(); close(done) }()
	_ = client2.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("awaitRoom still waiting after the socket closed")
	}
}
