package server

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// A TCP socket is read raw (where the platform has raw reads) and behaves as net.Conn.Read
// does: data in order, short reads, io.EOF on the peer's close, the read deadline, a Close from
// another goroutine waking a blocked read; anything else is read through the net.Conn.
func TestSocketReader(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, r io.Reader, peer, own net.Conn)
	}{
		{"data in order, then EOF", func(t *testing.T, r io.Reader, peer, _ net.Conn) {
			want := bytes.Repeat([]byte("0123456789"), 50_000) // larger than a socket buffer
			go func() {
				_, _ = peer.Write(want)
				peer.Close()
			}()
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read %d bytes (%v), want %d", len(got), err, len(want))
			}
		}},
		{"waits for input", func(t *testing.T, r io.Reader, peer, _ net.Conn) {
			go func() {
				time.Sleep(20 * time.Millisecond)
				_, _ = peer.Write([]byte("late"))
			}()
			buf := make([]byte, 64)
			n, err := r.Read(buf)
			if err != nil || string(buf[:n]) != "late" {
				t.Fatalf("read %q, %v", buf[:n], err)
			}
		}},
		{"empty buffer", func(t *testing.T, r io.Reader, _, _ net.Conn) {
			if n, err := r.Read(nil); n != 0 || err != nil {
				t.Fatalf("read into nothing: %d, %v", n, err)
			}
		}},
		{"read deadline", func(t *testing.T, r io.Reader, _, own net.Conn) {
			_ = own.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			_, err := r.Read(make([]byte, 8))
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read past the deadline: %v", err)
			}
		}},
		{"close wakes a waiting read", func(t *testing.T, r io.Reader, _, own net.Conn) {
			go func() {
				time.Sleep(20 * time.Millisecond)
				own.Close()
			}()
			_, err := r.Read(make([]byte, 8))
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("read of a closed socket: %v", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			peer, own := tcpPair(t)
			defer peer.Close()
			defer own.Close()
			r := newSocketReader(own)
			if _, raw := r.(*rawReader); raw != canInline {
				t.Fatalf("TCP socket read raw: %v, want %v", raw, canInline)
			}
			tt.run(t, r, peer, own)
		})
	}

	pc, ps := net.Pipe()
	defer pc.Close()
	defer ps.Close()
	if _, raw := newSocketReader(ps).(*rawReader); raw {
		t.Fatal("a connection without a file descriptor is read raw")
	}
}

// A raw read allocates nothing.
func TestSocketReaderAllocs(t *testing.T) {
	peer, own := tcpPair(t)
	defer peer.Close()
	defer own.Close()
	r := newSocketReader(own)
	buf, x := make([]byte, 16), []byte("x")
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := peer.Write(x); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(r, buf[:1]); err != nil {
			t.Fatal(err)
		}
	})
	if _, raw := r.(*rawReader); raw && allocs != 0 {
		t.Fatalf("a raw read allocates %v times, want 0", allocs)
	}
}
