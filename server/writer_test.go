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
