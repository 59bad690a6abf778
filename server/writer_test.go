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

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, srv net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv = <-accepted
	if srv == nil {
		t.Fatal("accept failed")
	}
	return client, srv
}

func (w *writer) inlineCount() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.inlined
}

// forgetLastWrite makes the next append find the writer idle for long enough to write inline.
func (w *writer) forgetLastWrite() {
	w.mu.Lock()
	w.lastOut = monoNow() - int64(inlineIdle)
	w.mu.Unlock()
}

// An append to a writer idle for inlineIdle is written by the appending goroutine, with no
// flusher; a TLS-like connection without a file descriptor always uses the flusher.
func TestWriterInlineWhenIdle(t *testing.T) {
	client, srv := tcpPair(t)
	defer client.Close()
	w := newWriter(srv, nil)
	defer w.kill()
	if w.raw == nil {
		t.Fatal("TCP connection without a raw fd")
	}
	for i := 0; i < 3; i++ {
		w.forgetLastWrite()
		b := w.lock()
		w.unlock(append(b, 'a'+byte(i)))
		if w.isRunning() {
			t.Fatalf("append %d: a flusher is running after an inline write", i)
		}
		if got := w.inlineCount(); got != int64(i+1) {
			t.Fatalf("append %d: %d inline writes, want %d", i, got, i+1)
		}
		var one [1]byte
		_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(client, one[:]); err != nil || one[0] != 'a'+byte(i) {
			t.Fatalf("append %d: read %q, %v", i, one[:], err)
		}
	}
	if got := w.sentOct.Load(); got != 3 {
		t.Fatalf("sent octets %d, want 3", got)
	}
	go io.Copy(io.Discard, client)
	allocs := testing.AllocsPerRun(100, func() {
		w.forgetLastWrite()
		b := w.lock()
		w.unlock(append(b, "0123456789abcdef"...))
	})
	if allocs != 0 {
		t.Fatalf("an inline write allocates %v times, want 0", allocs)
	}

	pc, ps := net.Pipe()
	defer pc.Close()
	wp := newWriter(ps, nil)
	defer wp.kill()
	go io.Copy(io.Discard, pc)
	b := wp.lock()
	wp.unlock(append(b, 'x'))
	if wp.raw != nil || wp.inlineCount() != 0 {
		t.Fatal("a connection without a file descriptor was written inline")
	}
}

// A socket that takes only part of an inline write (the peer does not read) leaves the rest to
// the flusher, ahead of whatever was appended meanwhile; concurrent appenders keep their order
// and nothing is lost or duplicated.
func TestWriterInlinePartialAndOrder(t *testing.T) {
	client, srv := tcpPair(t)
	defer client.Close()
	_ = srv.(*net.TCPConn).SetWriteBuffer(16 << 10)
	_ = client.(*net.TCPConn).SetReadBuffer(16 << 10)
	w := newWriter(srv, nil)
	// Fill the socket while the client reads nothing: inline writes come back short or with
	// EAGAIN, and the flusher takes over.
	const chunk = 8 << 10
	var want []byte
	for i := 0; i < 40; i++ {
		w.forgetLastWrite()
		b := w.lock()
		start := len(b)
		for j := 0; j < chunk; j++ {
			b = append(b, byte(i))
		}
		want = append(want, b[start:]...)
		w.unlock(b)
	}
	if w.inlineCount() == 0 {
		t.Fatal("no inline write attempted")
	}
	// Concurrent appenders, some of them finding the writer idle.
	const writers, frames = 4, 300
	var wg sync.WaitGroup
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < frames; j++ {
				if j%50 == 0 {
					w.forgetLastWrite()
				}
				b := w.lock()
				b = append(b, 0xf0|byte(i), byte(j>>8), byte(j))
				w.unlock(b)
			}
		}()
	}
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(client)
		got <- b
	}()
	wg.Wait()
	w.closeAfterFlush()
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		t.Fatal("writer not done after closeAfterFlush")
	}
	out := <-got
	if len(out) != len(want)+writers*frames*3 {
		t.Fatalf("got %d bytes, want %d", len(out), len(want)+writers*frames*3)
	}
	if !bytes.Equal(out[:len(want)], want) {
		t.Fatal("the bytes of the partial inline writes came out of order")
	}
	next := make([]int, writers)
	for k := len(want); k+3 <= len(out); k += 3 {
		i, j := int(out[k]&0x0f), int(out[k+1])<<8|int(out[k+2])
		if out[k]&0xf0 != 0xf0 || j != next[i] {
			t.Fatalf("writer %d: frame %d arrived when %d was due", i, j, next[i])
		}
		next[i]++
	}
	if got := w.sentOct.Load(); got != uint64(len(out)) {
		t.Fatalf("sent octets %d, want %d", got, len(out))
	}
}

// The flusher waits in the netpoller while the socket is full (raw writes, writeAll); a kill
// meanwhile ends the wait and the flusher, and a write error reaches it as net.Conn.Write's would.
func TestWriterFlusherWaitsAndDies(t *testing.T) {
	client, srv := tcpPair(t)
	defer client.Close()
	_ = srv.(*net.TCPConn).SetWriteBuffer(16 << 10)
	_ = client.(*net.TCPConn).SetReadBuffer(16 << 10)
	w := newWriter(srv, nil)
	if w.raw == nil && canInline {
		t.Fatal("TCP connection without a raw fd")
	}
	b := w.lock()
	w.unlock(append(b, make([]byte, 1<<20)...)) // more than the socket holds: the flusher waits
	deadline := time.Now().Add(5 * time.Second)
	// The flusher has taken the buffer (running, nothing left to append to) and, after a
	// moment, is parked in the netpoller on the full socket.
	for {
		w.mu.Lock()
		taken := w.running && len(w.buf) == 0
		w.mu.Unlock()
		if taken && w.sentOct.Load() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("flusher not waiting on the full socket (sent %d)", w.sentOct.Load())
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	w.kill()
	select {
	case <-w.done:
	case <-time.After(5 * time.Second):
		t.Fatal("writer not dead after kill")
	}
	for w.isRunning() {
		if time.Now().After(deadline) {
			t.Fatal("flusher still running after kill")
		}
		time.Sleep(time.Millisecond)
	}

	// A peer that is gone: the flusher's write fails and kills the writer.
	c2, s2 := tcpPair(t)
	w2 := newWriter(s2, nil)
	_ = c2.(*net.TCPConn).SetLinger(0)
	c2.Close() // RST
	for i := 0; i < 100; i++ {
		b := w2.lock()
		w2.unlock(append(b, make([]byte, 64<<10)...))
		select {
		case <-w2.done:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatal("writer to a reset connection never died")
}
