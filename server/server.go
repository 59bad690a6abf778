// Package server is Warren's AMQP 0-9-1 front end: listeners, TLS, the handshake and
// authentication, connections and channels as state machines, framing, heartbeats, flow control
// and resource alarms, access control and limits from the configuration. It turns decoded
// methods into calls on the broker core (package broker), which owns vhosts, queues, exchanges,
// routing and the store. See broker/doc.go for the goroutine model and the lock order.
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

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// Server is one running broker.
type Server struct {
	cfg         Config // as given to New; what can be reloaded is read from rt
	log         *slog.Logger
	b           *broker.Broker
	clusterName string

	// rt is the reloadable configuration (users, permissions, limits, policies, TLS), replaced
	// whole by Reload.
	rt       atomic.Pointer[runtimeConfig]
	reloadMu sync.Mutex // one Reload at a time

	connID atomic.Uint64

	alarms alarms
	logins loginThrottle
	quit   chan struct{} // closed by Close

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
	// closedCounters keeps the message counters of closed connections, guarded by mu.
	closedCounters Counters
	churn          churn
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
	if !peerCheckSupported {
		log.Warn("a client that goes while its connection is blocked by an alarm is noticed only when the alarm clears (the check needs Linux's TCP_INFO)")
	}
	s.alarms.memLimit.Store(memoryLimit(cfg))
	// With Attach (a cluster member) the delayed messages are routed only once it returned
	// (cluster.StartNode caught up and installed the forwarder).
	opts := broker.Options{DataDir: cfg.DataDir, MaxRAMMessages: cfg.MaxRAMMessages, VHosts: rt.vhostSettings(), Logger: log,
		DeferDelayed: cfg.Attach != nil}
	if limit := s.alarms.memLimit.Load(); limit > 0 {
		// As RabbitMQ's vm_memory_high_watermark_paging_ratio: queues page out message bodies
		// well before the memory alarm would block publishers.
		opts.MemoryBudget = limit / 2
	}
	b, err := broker.New(opts)
	if err != nil {
		return nil, err
	}
	s.b = b
	if cfg.Attach != nil {
		if err := cfg.Attach(b); err != nil {
			_ = b.Close()
			return nil, err
		}
		b.StartDelayed()
	}
	if errs := s.declareTopology(&cfg); len(errs) > 0 {
		_ = b.Close()
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
	s.b.SetAMQPAddr(ln.Addr().String()) // where a cluster's peers open their data links
	// The alarms are decided before the first connection is accepted: a broker that starts
	// over its memory limit must block the first publish, not one a check later.
	s.checkAlarms()
	s.serving.Add(4)
	go s.acceptLoop(ln)
	go func() {
		defer s.serving.Done()
		s.consumerTimeoutLoop(consumerTimeoutInterval)
	}()
	go func() {
		defer s.serving.Done()
		s.alarmLoop()
	}()
	go func() {
		defer s.serving.Done()
		s.trimLoop(trimInterval)
	}()
	if s.b.Store() != nil && s.log.Enabled(context.Background(), slog.LevelDebug) {
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

// consumerTimeoutInterval is how often unacked deliveries are checked against their consumer
// timeout; a channel is closed at most two intervals after its timeout (RabbitMQ checks once a
// minute).
const consumerTimeoutInterval = 250 * time.Millisecond

// consumerTimeoutLoop closes the channels whose oldest unacked delivery is older than its
// consumer timeout (see channel.consumerTimedOut). The server's consumer_timeout is read at each
// check, so a reload applies at once.
func (s *Server) consumerTimeoutLoop(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var conns []*conn
	var chs []*channel
	for {
		select {
		case <-s.quit:
			return
		case now := <-t.C:
			def := s.rt.Load().cfg.ConsumerTimeout
			s.mu.Lock()
			conns = conns[:0]
			for c := range s.conns {
				conns = append(conns, c)
			}
			s.mu.Unlock()
			for _, c := range conns {
				c.chMu.Lock()
				chs = chs[:0]
				for _, ch := range c.channels {
					chs = append(chs, ch)
				}
				c.chMu.Unlock()
				for _, ch := range chs {
					if e := ch.consumerTimedOut(now, def); e != nil {
						ch.timeOut(e)
					}
				}
			}
			clear(conns)
			clear(chs)
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
	store := s.b.Store()
	prev := store.Stats()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		st := store.Stats()
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
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = nc.Close()
			continue
		}
		s.serving.Add(1)
		s.mu.Unlock()
		go s.accept(nc)
	}
}

// accept sets up an accepted socket (the cluster's link TLS, acceptLinkTLS), registers its
// connection and serves it. The connection is registered only once its net.Conn is final: the
// goroutines that go through the registered connections read it and its writer unlocked.
func (s *Server) accept(nc net.Conn) {
	defer s.serving.Done()
	accepted := time.Now()
	nc, linkTLS, err := s.acceptLinkTLS(nc, accepted.Add(s.handshakeTimeout()))
	if err != nil {
		s.log.Info("connection closed before the handshake", "remote", nc.RemoteAddr().String(), "err", err)
		_ = nc.Close()
		return
	}
	c := s.newConn(nc, s.connID.Add(1))
	c.linkTLS, c.connectedAt = linkTLS, accepted
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	c.serve()
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	c.counters(&s.closedCounters)
	delete(s.conns, c)
	s.uncountLocked(c)
	s.mu.Unlock()
}

// Broker is the broker core the server fronts, for other front ends (the management API).
func (s *Server) Broker() *broker.Broker { return s.b }

// maxMessageSize is the current limits.max_message_size.
func (s *Server) maxMessageSize() int64 { return s.rt.Load().cfg.MaxMessageSize }

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
	return s.b.Close()
}
