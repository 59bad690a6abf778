package coalesce

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

func TestCoalescingConnPreservesStream(t *testing.T) {
	tests := []struct {
		name   string
		chunks int
		size   int
	}{
		{"many small writes", 20000, 37},
		{"writes beyond MaxPending", 40, MaxPending / 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			cc := New(client)
			var want bytes.Buffer
			got := make(chan []byte)
			go func() {
				b, _ := io.ReadAll(server)
				got <- b
			}()
			chunk := make([]byte, tt.size)
			for i := 0; i < tt.chunks; i++ {
				for j := range chunk {
					chunk[j] = byte(i + j)
				}
				want.Write(chunk)
				// Write must not retain chunk: it is overwritten on the next round.
				if n, err := cc.Write(chunk); err != nil || n != len(chunk) {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if err := cc.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if b := <-got; !bytes.Equal(b, want.Bytes()) {
				t.Fatalf("stream differs: got %d bytes, want %d", len(b), want.Len())
			}
			if _, err := cc.Write([]byte("x")); err == nil {
				t.Fatal("Write after Close succeeded")
			}
		})
	}
}

func TestCoalescingConnWriteError(t *testing.T) {
	client, server := net.Pipe()
	server.Close()
	cc := New(client)
	defer cc.Close()
	var err error
	// The first writes are only queued; the flusher's failure must surface.
	for i := 0; i < 1000 && err == nil; i++ {
		_, err = cc.Write(make([]byte, 1024))
		time.Sleep(time.Millisecond)
	}
	if err == nil {
		t.Fatal("writes to a closed peer never failed")
	}
}
