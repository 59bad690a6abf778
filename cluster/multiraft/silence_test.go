package multiraft

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/cluster/faultproxy"
)

// The silence bound follows the heartbeat interval, floored for fast test ticks, and is off
// without heartbeats.
func TestSilentLimitFor(t *testing.T) {
	tests := []struct {
		hbEvery, want time.Duration
	}{
		{0, 0},
		{10 * time.Millisecond, time.Second},
		{20 * time.Millisecond, time.Second},
		{DefaultTickInterval, 2 * time.Second},
		{time.Second, 20 * time.Second},
	}
	for _, tt := range tests {
		if got := silentLimitFor(tt.hbEvery); got != tt.want {
			t.Errorf("silentLimitFor(%v) = %v, want %v", tt.hbEvery, got, tt.want)
		}
	}
}

// blackHole accepts connections, passes the handshake as node b (a dials b), then never
// writes again and never closes: a peer machine that lost power with the connection up.
// Each accepted connection is reported with the time its handshake ended, and its closing
// by the other side on closed.
type blackHole struct {
	ln       net.Listener
	accepted chan time.Time
	closed   chan time.Time
	mu       sync.Mutex
	conns    []net.Conn
}

func newBlackHole(t *testing.T) *blackHole {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackHole{ln: ln, accepted: make(chan time.Time, 16), closed: make(chan time.Time, 16)}
	side := handshakeSide("b", "s", "a")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
			go func() {
				if _, err := side.acceptHandshake(c); err != nil {
					return
				}
				b.accepted <- time.Now()
				// Swallow the dialer's heartbeats until it closes the connection.
				_, _ = io.Copy(io.Discard, c)
				b.closed <- time.Now()
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, c := range b.conns {
			_ = c.Close()
		}
	})
	return b
}

func waitTime(t *testing.T, ch <-chan time.Time, d time.Duration, what string) time.Time {
	t.Helper()
	select {
	case at := <-ch:
		return at
	case <-time.After(d):
		t.Fatalf("no %s within %v", what, d)
		return time.Time{}
	}
}

// A dialled peer that goes silent without closing the connection: the dialer closes it
// once nothing arrived for the silence bound and dials again, not before, and not much
// later (the first redial waits 20 ms).
func TestSilentConnectionRedialled(t *testing.T) {
	hole := newBlackHole(t)
	tr, err := newTransport("a", "127.0.0.1:0", []byte("s"), nil, testLogger(), nopHooks{}, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.close()
	limit := tr.silentLimit
	tr.setPeers(map[string]string{"b": hole.ln.Addr().String()})

	first := waitTime(t, hole.accepted, 10*time.Second, "first connection")
	gaveUp := waitTime(t, hole.closed, limit+10*time.Second, "close of the silent connection")
	second := waitTime(t, hole.accepted, 10*time.Second, "second dial")
	if d := gaveUp.Sub(first); d < limit-50*time.Millisecond {
		t.Errorf("silent connection closed %v after the handshake, before the bound %v", d, limit)
	}
	redial := second.Sub(first)
	t.Logf("bound %v: closed after %v, dialled again after %v", limit, gaveUp.Sub(first), redial)
	// Loaded 2-core test machines: generous slack above the bound, still well below the
	// 10 s write timeout and TCP's own minutes.
	if redial > limit+4*time.Second {
		t.Errorf("dialled again %v after the first handshake, bound %v", redial, limit)
	}
	if tr.heartbeats.Load() == 0 {
		t.Error("dialer wrote no heartbeat: it never served the connection")
	}
}

// The acceptor, too, lets go of a dialled connection that stays silent (the dialer's
// machine gone); the dialer, back, dials a new one.
func TestSilentDialerClosedByAcceptor(t *testing.T) {
	tr, err := newTransport("b", "127.0.0.1:0", []byte("s"), nil, testLogger(), nopHooks{}, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.close()
	tr.setPeers(map[string]string{"a": "127.0.0.1:1"}) // b does not dial a
	c, err := net.Dial("tcp", tr.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := handshakeSide("a", "s", "b").dialHandshake(c, "b"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(tr.silentLimit + 10*time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("acceptor kept the silent connection: %v", err)
	}
	if d := time.Since(start); d < tr.silentLimit-50*time.Millisecond {
		t.Errorf("closed after %v, before the bound %v", d, tr.silentLimit)
	}
}

// Two transports through a fault proxy that stops forwarding without closing anything
// (the peer machine gone): the dialer gives the connection up within the bound, and once
// the proxy forwards again it is connected again, with no one cutting the old connection.
func TestBlackHoledPeerReconnects(t *testing.T) {
	b, err := newTransport("b", "127.0.0.1:0", []byte("s"), nil, testLogger(), nopHooks{}, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	proxy, err := faultproxy.New(b.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	a, err := newTransport("a", "127.0.0.1:0", []byte("s"), nil, testLogger(), nopHooks{}, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	b.setPeers(map[string]string{"a": a.addr()})
	a.setPeers(map[string]string{"b": proxy.Addr()})
	bID := NodeID("b")
	waitFor := func(what string, d time.Duration, ok func(peerLiveness) bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !ok(a.liveness(time.Second)[bID]) {
			if time.Since(start) > d {
				t.Fatalf("%s: not within %v (%+v)", what, d, a.liveness(time.Second)[bID])
			}
			time.Sleep(5 * time.Millisecond)
		}
		return time.Since(start)
	}
	waitFor("connected", 10*time.Second, func(l peerLiveness) bool { return l.alive })
	epoch := a.liveness(time.Second)[bID].epoch

	proxy.SetDrop(true)
	a.mu.Lock()
	p := a.peers["b"]
	a.mu.Unlock()
	gone := waitFor("connection given up", a.silentLimit+10*time.Second, func(peerLiveness) bool { return !p.connected.Load() })
	if gone < a.silentLimit-50*time.Millisecond {
		t.Errorf("connection given up after %v, before the bound %v", gone, a.silentLimit)
	}
	proxy.SetDrop(false)
	// A redial in progress lost the listener's greeting: it fails at the 5 s handshake
	// timeout, and the next one gets through.
	back := waitFor("reconnected", handshakeTimeout+10*time.Second, func(l peerLiveness) bool { return l.alive && l.epoch > epoch })
	t.Logf("bound %v: given up after %v, connected again %v after the proxy forwarded again", a.silentLimit, gone, back)
}

// BenchmarkReadLoop reads frames of 8 small messages over loopback TCP, without and with the
// silence deadline (renewed on every read of the 64 KiB buffer).
func BenchmarkReadLoop(b *testing.B) {
	var batch []outMsg
	for i := range 8 {
		batch = append(batch, outMsg{group: uint64(i + 1), msg: testMsg(NodeID("a"), 2, 7, string(make([]byte, 64)))})
	}
	frame, err := encodeFrame(nil, batch)
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		limit time.Duration
	}{{"deadline=off", 0}, {"deadline=on", time.Second}} {
		b.Run(tc.name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				const per = 64
				chunk := make([]byte, 0, per*len(frame))
				for range per {
					chunk = append(chunk, frame...)
				}
				for n := b.N; n > 0; n -= per {
					out := chunk
					if n < per {
						out = chunk[:n*len(frame)]
					}
					if _, err := c.Write(out); err != nil {
						return
					}
				}
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			p := &peer{t: &transport{hooks: nopHooks{}, log: testLogger(), silentLimit: tc.limit}, name: "a", id: NodeID("a")}
			b.SetBytes(int64(len(frame)))
			b.ResetTimer()
			p.readLoop(c)
			if got := p.t.received.Load(); got != uint64(8*b.N) {
				b.Fatalf("received %d messages, want %d", got, 8*b.N)
			}
		})
	}
}
