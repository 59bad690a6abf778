// Package server runs Warren's AMQP 0-9-1 listener: connections and channels as state machines,
// authentication, heartbeats, and the per-vhost registry of exchanges, queues and bindings. It turns
// decoded methods into calls on package exchange (routing) and package queue (delivery), and on
// package persistence for durable state.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"warren/amqp"
	"warren/persistence"
	"warren/queue"
)

// Server is one running broker.
type Server struct {
	cfg         Config // as given to New; what can be reloaded is read from rt
	log         *slog.Logger
	store       *persistence.Store
	clusterName string

	// rt is the reloadable configuration (users, permissions, limits, policies, TLS), replaced
	// whole by Reload.
	rt       atomic.Pointer[runtimeConfig]
	reloadMu sync.Mutex // one Reload at a time

	vhMu    sync.RWMutex
	vhosts  map[string]*vhost
	retired map[string]*vhost // removed from the configuration; their stored data is kept

	msgID  atomic.Uint64
	connID atomic.Uint64

	alarms alarms
	// budget bounds the bodies of ready messages all queues keep in memory (paging).
	budget *queue.Budget
	// flowHigh is the ready backlog over which a queue being drained holds its publishers.
	flowHigh int
	quit     chan struct{} // closed by Close

	ln, tlsLn net.Listener
	mu        sync.Mutex
	conns     map[*conn]struct{}
	closed    bool
	serving   sync.WaitGroup
	// Connection and channel counts for the limits, guarded by mu. openConns are the connections
	// past connection.open.
	openConns    map[*conn]struct{}
	opened       int
	vhostConns   map[string]int
	userConns    map[string]int
	userChannels map[string]int
}

// New validates cfg, opens the store and restores durable state. The listener opens in Start.
func New(cfg Config) (*Server, error) {
	rt, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	rt.gen = 1
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		cfg:          cfg,
		log:          log,
		vhosts:       make(map[string]*vhost, len(cfg.VHosts)),
		retired:      map[string]*vhost{},
		conns:        make(map[*conn]struct{}),
		openConns:    make(map[*conn]struct{}),
		vhostConns:   map[string]int{},
		userConns:    map[string]int{},
		userChannels: map[string]int{},
		quit:         make(chan struct{}),
		clusterName:  "warren",
	}
	s.rt.Store(rt)
	for _, w := range rt.warnings {
		log.Warn("config: " + w)
	}
	s.alarms.memLimit.Store(memoryLimit(cfg))
	if limit := s.alarms.memLimit.Load(); limit > 0 {
		// As RabbitMQ's vm_memory_high_watermark_paging_ratio: queues page out message bodies
		// well before the memory alarm would block publishers.
		s.budget = queue.NewBudget(limit / 2)
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
	s.flowHigh = flowHighFor(cfg, s.store != nil)
	for _, v := range cfg.VHosts {
		s.vhosts[v.Name] = newVHost(s, v.Name, rt.policies[v.Name])
	}
	if s.store != nil {
		if err := s.restore(); err != nil {
			_ = s.store.Close()
			return nil, fmt.Errorf("restoring durable state from %s: %w", cfg.DataDir, err)
		}
	}
	if errs := s.declareTopology(&cfg); len(errs) > 0 {
		if s.store != nil {
			_ = s.store.Close()
		}
		return nil, errs[0]
	}
	return s, nil
}

// Start opens the listeners (AMQP, and amqps when TLS is configured) and accepts connections in
// the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", s.cfg.Listen, err)
	}
	if s.cfg.TLS.Enabled() {
		tln, err := net.Listen("tcp", s.cfg.TLS.Listen)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("listening for amqps on %s: %w", s.cfg.TLS.Listen, err)
		}
		// Each handshake takes the TLS settings of the current configuration, so a reload
		// replaces certificates without a restart.
		base := &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return s.rt.Load().tls, nil
		}}
		s.tlsLn = tls.NewListener(tln, base)
		s.serving.Add(1)
		go s.acceptLoop(s.tlsLn)
	}
	s.ln = ln
	s.serving.Add(3)
	go s.acceptLoop(ln)
	go func() {
		defer s.serving.Done()
		s.alarmLoop()
	}()
	go func() {
		defer s.serving.Done()
		s.trimLoop(trimInterval)
	}()
	if s.store != nil && s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.serving.Add(1)
		go func() {
			defer s.serving.Done()
			s.journalStatsLoop()
		}()
	}
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

// journalStatsInterval is how often the debug log reports the journal's group commits.
const journalStatsInterval = 10 * time.Second

// journalStatsLoop logs, at debug level, how the journal grouped the writes of the last
// interval: the batch sizes behind group commit's throughput.
func (s *Server) journalStatsLoop() {
	t := time.NewTicker(journalStatsInterval)
	defer t.Stop()
	prev := s.store.Stats()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		st := s.store.Stats()
		commits := st.Commits - prev.Commits
		if commits == 0 {
			continue
		}
		per := func(n uint64) float64 { return float64(n*100/commits) / 100 }
		s.log.Debug("journal", "commits", commits, "batches_per_commit", per(st.Batches-prev.Batches),
			"publishes_per_commit", per(st.Publishes-prev.Publishes), "max_batches_per_commit", st.MaxBatchesPerCommit,
			"read_aheads", st.ReadAheads-prev.ReadAheads, "read_entries", st.ReadEntries-prev.ReadEntries,
			"messages_stored", st.MessagesStored)
		prev = st
	}
}

// Addr is the address the listener is bound to.
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// TLSAddr is the address of the amqps listener, nil when TLS is off.
func (s *Server) TLSAddr() net.Addr {
	if s.tlsLn == nil {
		return nil
	}
	return s.tlsLn.Addr()
}

func (s *Server) acceptLoop(ln net.Listener) {
	defer s.serving.Done()
	for {
		nc, err := ln.Accept()
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
	s.uncountLocked(c)
	s.mu.Unlock()
}

func (s *Server) vhost(name string) *vhost {
	s.vhMu.RLock()
	defer s.vhMu.RUnlock()
	return s.vhosts[name]
}

// maxMessageSize is the current limits.max_message_size.
func (s *Server) maxMessageSize() int64 { return s.rt.Load().cfg.MaxMessageSize }

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
	if s.tlsLn != nil {
		_ = s.tlsLn.Close()
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
	s.vhMu.RLock()
	for _, v := range s.vhosts {
		v.stopTimers()
	}
	for _, v := range s.retired {
		v.stopTimers()
	}
	s.vhMu.RUnlock()
	if s.store != nil {
		if err := s.store.Close(); err != nil {
			return fmt.Errorf("closing storage: %w", err)
		}
	}
	return nil
}
