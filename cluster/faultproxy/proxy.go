// Package faultproxy is a TCP proxy that tests put between two nodes to inject network
// faults: drop traffic (a black hole: connections stay open, bytes vanish), delay it, cut
// the current connections, or refuse new ones (a partition). It listens on loopback only.
package faultproxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Proxy forwards connections accepted on Addr to a target address, with faults.
type Proxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	drop    bool
	delay   time.Duration
	blocked bool
	conns   map[net.Conn]struct{}
	closed  bool

	wg sync.WaitGroup
}

// New starts a proxy on a free loopback port forwarding to target.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's listening address, to give to the client side instead of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetTarget changes where new connections go (a restarted node on a new port).
func (p *Proxy) SetTarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// SetDrop makes the proxy discard (true) or forward (false) all bytes, both ways, on current
// and new connections. Connections stay open: the peers see silence, not an error.
func (p *Proxy) SetDrop(drop bool) {
	p.mu.Lock()
	p.drop = drop
	p.mu.Unlock()
}

// SetDelay delays every chunk of bytes by d, both ways (order is kept).
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// Cut closes every current connection; new ones are accepted (unless blocked).
func (p *Proxy) Cut() {
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
}

// Partition cuts current connections and refuses new ones until Heal.
func (p *Proxy) Partition() {
	p.mu.Lock()
	p.blocked = true
	p.mu.Unlock()
	p.Cut()
}

// Heal ends a partition and any drop or delay.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.blocked, p.drop, p.delay = false, false, 0
	p.mu.Unlock()
}

// Close stops the proxy and closes every connection, and waits for its goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.Cut()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		p.mu.Lock()
		blocked, target := p.blocked, p.target
		p.mu.Unlock()
		if blocked {
			_ = c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", target, 2*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		if !p.track(c) || !p.track(up) {
			p.untrack(c)
			p.untrack(up)
			continue
		}
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst through a queue, so that delayed chunks keep their order without
// stalling the reader; either side failing closes both.
func (p *Proxy) pipe(src, dst net.Conn) {
	defer p.wg.Done()
	q := make(chan chunk, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ch := range q {
			if d := time.Until(ch.due); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(ch.b); err != nil {
				p.untrack(src)
				p.untrack(dst)
				for range q {
				}
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			drop, delay := p.drop, p.delay
			p.mu.Unlock()
			if !drop {
				q <- chunk{b: append([]byte(nil), buf[:n]...), due: time.Now().Add(delay)}
			}
		}
		if err != nil {
			break
		}
	}
	close(q)
	<-done
	p.untrack(src)
	p.untrack(dst)
}
