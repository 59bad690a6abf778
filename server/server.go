// Package server runs Warren's AMQP 0-9-1 listener: connections and channels as state machines,
// authentication, heartbeats, and the per-vhost registry of exchanges, queues and bindings. It turns
// decoded methods into calls on package exchange (routing) and package queue (delivery), and on
// package persistence for durable state.
package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"warren/amqp"
	"warren/persistence"
)

// Server is one running broker.
type Server struct {
	cfg         Config
	log         *slog.Logger
	users       map[string]User
	vhosts      map[string]*vhost
	store       *persistence.Store
	clusterName string

	msgID  atomic.Uint64
	connID atomic.Uint64

	alarms alarms
	quit   chan struct{} // closed by Close

	ln      net.Listener
	mu      sync.Mutex
	conns   map[*conn]struct{}
	closed  bool
	serving sync.WaitGroup
}

// New validates cfg, opens the store and restores durable state. The listener opens in Start.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		cfg:         cfg,
		log:         log,
		users:       make(map[string]User, len(cfg.Users)),
		vhosts:      make(map[string]*vhost, len(cfg.VHosts)),
		conns:       make(map[*conn]struct{}),
		quit:        make(chan struct{}),
		clusterName: "warren",
	}
	for _, u := range cfg.Users {
		s.users[u.Name] = u
	}
	if cfg.DataDir != "" {
		start := time.Now()
		st, err := persistence.Open(cfg.DataDir, persistence.Options{Logger: log})
		if err != nil {
			return nil, fmt.Errorf("opening storage: %w", err)
		}
		s.store = st
		s.msgID.Store(st.MaxMessageID())
		defer func() {
			log.Info("storage opened", "dir", cfg.DataDir, "took", time.Since(start).Round(time.Millisecond))
		}()
	}
	for _, name := range cfg.VHosts {
		s.vhosts[name] = newVHost(s, name)
	}
	if s.store != nil {
		if err := s.restore(); err != nil {
			_ = s.store.Close()
			return nil, fmt.Errorf("restoring durable state from %s: %w", cfg.DataDir, err)
		}
	}
	return s, nil
}

// Start opens the listener and accepts connections in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", s.cfg.Listen, err)
	}
	s.ln = ln
	s.initAlarms()
	s.serving.Add(3)
	go s.acceptLoop()
	go func() {
		defer s.serving.Done()
		s.alarmLoop()
	}()
	go func() {
		defer s.serving.Done()
		s.trimLoop(trimInterval)
	}()
	return nil
}

// trimInterval is how often idle connections give back their large write buffers.
const trimInterval = 30 * time.Second

// trimLoop periodically trims the write buffers of connections with nothing to write, so that
// memory grown by a burst of traffic returns once the connection is quiet.
func (s *Server) trimLoop(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		s.mu.Lock()
		conns := make([]*conn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			c.w.trim()
		}
	}
}

// Addr is the address the listener is bound to.
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

func (s *Server) acceptLoop() {
	defer s.serving.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("accept failed", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if tc, ok := nc.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		c := s.newConn(nc, s.connID.Add(1))
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = nc.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.serving.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.serving.Done()
			c.serve()
		}()
	}
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) vhost(name string) *vhost { return s.vhosts[name] }

// nextMessageID numbers messages uniquely across restarts (ids continue from the store's maximum).
func (s *Server) nextMessageID() uint64 { return s.msgID.Add(1) }

// Close stops accepting, sends connection.close 320 CONNECTION_FORCED to every client, waits for
// the connections to finish (a few seconds at most), then flushes and closes the store.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.quit)
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	if s.ln != nil {
		_ = s.ln.Close()
	}
	for _, c := range conns {
		c.sendClose(amqp.Errorf(amqp.ConnectionForced, "broker forced connection closure with reason 'shutdown'"))
		// The reader goroutine is blocked in a read; a deadline makes it finish soon even if the
		// client never answers close-ok.
		_ = c.nc.SetReadDeadline(time.Now().Add(time.Second))
	}
	waited := make(chan struct{})
	go func() { s.serving.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		s.log.Warn("connections still open at shutdown; closing sockets")
		for _, c := range conns {
			_ = c.nc.Close()
		}
		<-waited
	}
	for _, v := range s.vhosts {
		v.stopTimers()
	}
	if s.store != nil {
		if err := s.store.Close(); err != nil {
			return fmt.Errorf("closing storage: %w", err)
		}
	}
	return nil
}
