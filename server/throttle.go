package server

import (
	"net"
	"sync"
	"time"
)

// loginThrottle slows down password guessing: each failed login from an address is answered
// after a delay that grows with that address's recent failures (RabbitMQ answers at once). Only
// the failing connection waits - on its own goroutine, holding no lock - so other clients,
// including other users on the same address that log in right, are not slowed down.
type loginThrottle struct {
	mu    sync.Mutex
	fails map[string]*loginFails
}

type loginFails struct {
	n    int
	last time.Time
}

const (
	loginDelayStep = 100 * time.Millisecond // per recent failure
	loginDelayMax  = 3 * time.Second
	loginForget    = time.Minute // failures older than this no longer count
	loginMaxAddrs  = 10_000      // addresses tracked; past it, stale ones are dropped first
)

// failed records a failed login from addr and returns how long to wait before answering it.
func (t *loginThrottle) failed(addr net.Addr, now time.Time) time.Duration {
	host := addrHost(addr)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fails == nil {
		t.fails = make(map[string]*loginFails)
	}
	f := t.fails[host]
	if f == nil || now.Sub(f.last) > loginForget {
		if len(t.fails) >= loginMaxAddrs {
			t.pruneLocked(now)
		}
		f = &loginFails{}
		t.fails[host] = f
	}
	f.n++
	f.last = now
	return min(time.Duration(f.n)*loginDelayStep, loginDelayMax)
}

// pruneLocked drops stale addresses, and every address if none is stale (a flood of sources):
// memory stays bounded, at worst the delays restart.
func (t *loginThrottle) pruneLocked(now time.Time) {
	for h, f := range t.fails {
		if now.Sub(f.last) > loginForget {
			delete(t.fails, h)
		}
	}
	if len(t.fails) >= loginMaxAddrs {
		clear(t.fails)
	}
}

func addrHost(a net.Addr) string {
	if a == nil {
		return ""
	}
	if host, _, err := net.SplitHostPort(a.String()); err == nil {
		return host
	}
	return a.String()
}
