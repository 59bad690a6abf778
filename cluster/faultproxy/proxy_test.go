package faultproxy

import (
	"bufio"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// echoServer echoes lines back until the listener closes.
func echoServer(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln
}

// roundTrip sends a line through c and waits up to wait for it to come back.
func roundTrip(c net.Conn, r *bufio.Reader, wait time.Duration) (time.Duration, error) {
	start := time.Now()
	_ = c.SetDeadline(time.Now().Add(wait))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return 0, err
	}
	if _, err := r.ReadString('\n'); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func TestFaults(t *testing.T) {
	before := runtime.NumGoroutine()
	tests := []struct {
		name string
		// fault is applied to a proxy with an established connection; then a round trip is
		// tried on the old connection and on a new one.
		fault       func(*Proxy)
		oldWorks    bool
		newWorks    bool
		minDuration time.Duration
	}{
		{"none", func(*Proxy) {}, true, true, 0},
		{"delay", func(p *Proxy) { p.SetDelay(100 * time.Millisecond) }, true, true, 200 * time.Millisecond},
		{"drop", func(p *Proxy) { p.SetDrop(true) }, false, false, 0},
		{"cut", func(p *Proxy) { p.Cut() }, false, true, 0},
		{"partition", func(p *Proxy) { p.Partition() }, false, false, 0},
		{"partition then heal", func(p *Proxy) { p.Partition(); p.Heal() }, false, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln := echoServer(t)
			p, err := New(ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			old, err := net.Dial("tcp", p.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer old.Close()
			oldR := bufio.NewReader(old)
			if _, err := roundTrip(old, oldR, 2*time.Second); err != nil {
				t.Fatalf("before the fault: %v", err)
			}
			tt.fault(p)
			d, err := roundTrip(old, oldR, 500*time.Millisecond)
			if (err == nil) != tt.oldWorks {
				t.Errorf("old connection: err = %v, want working=%v", err, tt.oldWorks)
			}
			if err == nil && d < tt.minDuration {
				t.Errorf("round trip took %v, want at least %v", d, tt.minDuration)
			}
			nc, err := net.Dial("tcp", p.Addr())
			if err == nil {
				defer nc.Close()
				_, err = roundTrip(nc, bufio.NewReader(nc), 500*time.Millisecond)
			}
			if (err == nil) != tt.newWorks {
				t.Errorf("new connection: err = %v, want working=%v", err, tt.newWorks)
			}
		})
	}
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before+1 { // +1: an echo server accept loop may still be ending
		if time.Now().After(deadline) {
			t.Fatalf("goroutines leaked: %d, before %d", runtime.NumGoroutine(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
