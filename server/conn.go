package server

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// Version is Warren's version, reported in server-properties.
const Version = "0.1.0"

// conn is one client connection. The reader goroutine (serve) owns the handshake state, the
// channel table and every publish; other goroutines only append frames through w.
type conn struct {
	srv *Server
	nc  net.Conn
	id  uint64
	log *slog.Logger
	w   *writer

	fr         *amqp.FrameReader
	frameMax   uint32
	channelMax uint16
	heartbeat  uint16
	vhost      *broker.VHost
	actor      broker.Actor // this connection acting in the core: owner of its exclusive queues
	user       string
	peerCN     string // TLS client certificate's common name, for EXTERNAL; "" without one

	// Permission cache (see authorize); reader goroutine only.
	permGen   uint64
	perm      *permission
	permCache map[permCacheKey]bool
	pubEx     string // last exchange this connection was allowed to publish to
	pubOK     bool
	counted   bool // counted against the connection limits; guarded by srv.mu

	cancelNotify  bool        // client understands server-sent basic.cancel
	link          bool        // another cluster node's data link (logged in with broker.LinkMechanism)
	linkTLS       bool        // arrived over the cluster's mutual TLS (acceptLinkTLS, before the conn is registered)
	blockedNotify bool        // client understands connection.blocked
	publisher     atomic.Bool // has published: subject to resource alarms
	blocked       atomic.Bool // held by an alarm: heartbeats are not expected meanwhile

	chMu     sync.Mutex // guards channels for onDrain and shutdown, which run off the reader
	channels map[uint16]*channel
	lastCh   *channel // the channel of the previous frame: a publish is three frames on one channel

	hb       *heartbeats  // nil when heartbeats are off; set and stopped by the reader goroutine
	closing  atomic.Bool  // connection.close sent by us; waiting for close-ok
	framesIn atomic.Int64 // frames read, for the management API (recv_cnt); see countFrame
	recvOct  atomic.Uint64
	stats    connStats // message counters, for the management API

	// Counts owned by the reader goroutine and added to framesIn and stats.published in
	// batches (countFrame): an atomic add per frame and per publish was four locked
	// instructions per message at a million messages a second.
	pendFrames    int64
	pendPublished uint64

	// closedConfirms keeps the confirm counts of the connection's closed channels.
	closedConfirms atomic.Uint64
	// Set once by the handshake, before the connection is listed (openConns), then read-only.
	clientProps amqp.Table
	mechanism   string
	connectedAt time.Time
	closeOnce   sync.Once
	releaseOnce sync.Once
	done        chan struct{}
}

func (s *Server) newConn(nc net.Conn, id uint64) *conn {
	c := &conn{
		srv:      s,
		nc:       nc,
		id:       id,
		log:      s.log.With("conn", id, "remote", nc.RemoteAddr().String()),
		frameMax: amqp.FrameMinSize,
		channels: make(map[uint16]*channel),
		done:     make(chan struct{}),

		connectedAt: time.Now(),
	}
	c.w = newWriter(nc, c.onDrain)
	return c
}

// serve runs the connection until it closes: the handshake here, then the read loop on a fresh
// goroutine. The handshake (TLS, authentication, decoding the client's tables) can grow a stack
// to 8 KiB and more, which an idle connection would otherwise keep until a GC shrinks it; at
// 10,000 idle connections that was 40 MB.
func (c *conn) serve() {
	if !c.open() {
		c.teardown()
		return
	}
	c.srv.serving.Add(1)
	go func() {
		defer c.srv.serving.Done()
		c.readLoop()
	}()
}

// recoverPanic, deferred, turns a panic into a logged 541 close: a bug must cost one
// connection, never the broker.
func (c *conn) recoverPanic() {
	if r := recover(); r != nil {
		c.log.Error("internal error, closing connection", "panic", r, "stack", string(debug.Stack()))
		c.sendClose(amqp.Errorf(amqp.InternalError, "internal error"))
	}
}

// open performs the TLS and AMQP handshakes; false means the connection is done.
func (c *conn) open() (ok bool) {
	defer c.recoverPanic()
	// From the accept: the wait for a link peer's first byte (Server.accept) counts too.
	deadline := c.connectedAt.Add(c.srv.handshakeTimeout())
	_ = c.nc.SetReadDeadline(deadline)
	c.fr = amqp.NewFrameReader(newSocketReader(c.nc), 128<<10)
	c.fr.SetMaxFrameSize(amqp.FrameMinSize)
	if tc, ok := c.nc.(*tls.Conn); ok {
		if err := c.tlsHandshake(tc, deadline); err != nil {
			c.log.Info("TLS handshake failed", "err", err)
			return false
		}
	}
	if err := c.handshake(); err != nil {
		c.fail(err)
		return false
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	if c.heartbeat > 0 {
		c.startHeartbeats(time.Duration(c.heartbeat) * time.Second)
	}
	return true
}

// readLoop reads and handles frames until the connection ends, then tears it down.
func (c *conn) readLoop() {
	defer c.teardown()
	defer c.recoverPanic()
	defer c.flushCounts() // before teardown adds the connection's counts to the node's
	for {
		if c.srv.alarms.active.Load() && c.publisher.Load() {
			c.waitWhileBlocked()
		}
		if c.w.full.Load() {
			// The client is not reading what it asked for: read nothing more from it until
			// it does (a missed heartbeat ends a client that never will).
			c.w.awaitRoom()
		}
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.fail(err)
			return
		}
		err = c.handleFrame(f)
		c.countFrame()
		if err != nil {
			if errors.Is(err, errClosed) {
				return
			}
			c.fail(err)
			return
		}
	}
}

// countBatch is how many frames the reader counts before adding them to the shared counters
// when its input does not run dry first.
const countBatch = 64

// countFrame counts a frame read. The counts reach the shared counters when the reader has
// read everything it was sent (before it waits for more) or every countBatch frames, so a
// listing lags a busy connection by at most that many.
func (c *conn) countFrame() {
	c.pendFrames++
	if c.pendFrames >= countBatch || c.fr.Buffered() == 0 {
		c.flushCounts()
	}
}

// flushCounts adds the reader's pending counts to the shared counters; reader goroutine only.
func (c *conn) flushCounts() {
	c.framesIn.Add(c.pendFrames)
	if c.pendPublished > 0 {
		c.stats.published.Add(c.pendPublished)
	}
	c.pendFrames, c.pendPublished = 0, 0
}

// errClosed ends the read loop after a clean connection.close handshake.
var errClosed = errors.New("connection closed")

// fail reports a read-loop error: AMQP exceptions close the connection with their code; I/O
// errors just end it.
func (c *conn) fail(err error) {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		c.log.Info("connection error", "code", ae.Code, "text", ae.Text)
		c.sendClose(ae)
		c.awaitCloseOk()
		return
	}
	if c.closing.Load() || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return
	}
	c.log.Info("connection lost", "err", err)
}

// sendClose sends connection.close once; the connection then only waits for close-ok.
func (c *conn) sendClose(ae *amqp.Error) {
	if !c.closing.CompareAndSwap(false, true) {
		return
	}
	c.writeMethod(0, &amqp.ConnectionClose{ReplyCode: ae.Code, ReplyText: ae.Text, ClassId: ae.ClassID, MethodId: ae.MethodID})
}

// awaitCloseOk reads (and drops) frames until close-ok, a read error, or a short timeout.
func (c *conn) awaitCloseOk() {
	if c.fr == nil {
		return
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return
		}
		if f.Type == amqp.FrameMethod && f.Channel == 0 {
			if m, err := amqp.DecodeMethod(f.Payload); err == nil {
				switch m.(type) {
				case *amqp.ConnectionCloseOk:
					return
				case *amqp.ConnectionClose:
					c.writeMethod(0, &amqp.ConnectionCloseOk{})
					return
				}
			}
		}
	}
}

// release frees what the connection holds: channels (requeueing their unacked messages) and
// exclusive queues. It runs before connection.close-ok goes out, so a client that saw close-ok
// can rely on it, and again (as a no-op) at teardown.
func (c *conn) release() {
	c.releaseOnce.Do(func() {
		c.chMu.Lock()
		chs := make([]*channel, 0, len(c.channels))
		for _, ch := range c.channels {
			chs = append(chs, ch)
		}
		c.channels = map[uint16]*channel{}
		c.lastCh = nil
		for _, ch := range chs {
			c.closedConfirms.Add(ch.confirms.acked.Load())
		}
		c.chMu.Unlock()
		c.channelsClosed(len(chs))
		for _, ch := range chs {
			ch.shutdown()
		}
		if c.vhost != nil {
			c.vhost.DropExclusive(c.actor.Owner)
		}
	})
}

// teardown releases everything and closes the socket once queued frames are written.
func (c *conn) teardown() {
	c.closeOnce.Do(func() {
		close(c.done)
		if c.hb != nil {
			c.hb.stop()
		}
		c.release()
		c.w.closeAfterFlush()
		select {
		case <-c.w.done:
		case <-time.After(5 * time.Second):
			c.w.kill()
		}
		c.srv.forget(c)
	})
}

// awaitClientHangup gives a client that got close-ok a moment to close the socket itself, as the
// spec has the closing peer do; closing first would make some clients report a lost connection.
func (c *conn) awaitClientHangup() {
	_ = c.nc.SetReadDeadline(time.Now().Add(time.Second))
	var buf [512]byte
	for {
		if _, err := c.nc.Read(buf[:]); err != nil {
			return
		}
	}
}

// heartbeats sends a heartbeat frame every interval and closes the connection once the client
// has sent nothing for two intervals. It runs on a timer rather than a goroutine, so an idle
// connection costs no stack for it.
type heartbeats struct {
	c        *conn
	interval time.Duration
	mu       sync.Mutex
	t        *time.Timer
	last     int64 // c.activity() at the previous tick
	missed   int
}

func (c *conn) startHeartbeats(interval time.Duration) {
	h := &heartbeats{c: c, interval: interval, last: c.activity()}
	h.mu.Lock()
	h.t = time.AfterFunc(interval, h.tick)
	h.mu.Unlock()
	c.hb = h
}

// stop ends the ticks; a closed connection must not stay reachable from a pending timer.
func (h *heartbeats) stop() {
	h.mu.Lock()
	h.t.Stop()
	h.mu.Unlock()
}

func (h *heartbeats) tick() {
	c := h.c
	select {
	case <-c.done:
		return
	default:
	}
	b := c.w.lock()
	b = amqp.AppendHeartbeat(b)
	c.w.unlock(b)
	h.mu.Lock()
	defer h.mu.Unlock()
	n := c.activity()
	if n != h.last || c.blocked.Load() {
		h.last, h.missed = n, 0
	} else if h.missed++; h.missed >= 2 {
		c.log.Info("missed heartbeats from client, closing", "timeout", 2*h.interval)
		_ = c.nc.Close()
		return
	}
	h.t.Reset(h.interval)
}

// activity counts signs of life from the client: bytes read (as RabbitMQ's heartbeat monitor
// watches the socket's recv_oct), and output it took from a full writer (a reader that stopped
// reading because the client reads slowly must not take the client for dead).
func (c *conn) activity() int64 { return int64(c.recvOctets()) + c.w.fullWrites.Load() }

// writeMethod encodes one method frame.
func (c *conn) writeMethod(ch uint16, m amqp.Method) {
	b := c.w.lock()
	b = amqp.AppendMethodFrame(b, ch, m)
	c.w.unlock(b)
}

// writeContent encodes a method with content (deliver, get-ok, return).
func (c *conn) writeContent(ch uint16, m amqp.Method, header, body []byte) {
	b := c.w.lock()
	b = amqp.AppendMethodFrame(b, ch, m)
	b = amqp.AppendContent(b, ch, header, body, c.frameMax)
	c.w.unlock(b)
}

// onDrain runs on the writer goroutine when a congested connection catches up: deliveries
// paused for it resume.
func (c *conn) onDrain() {
	c.chMu.Lock()
	chs := make([]*channel, 0, len(c.channels))
	for _, ch := range c.channels {
		chs = append(chs, ch)
	}
	c.chMu.Unlock()
	for _, ch := range chs {
		ch.kickConsumers()
	}
}

func (c *conn) serverProperties() amqp.Table {
	return amqp.Table{
		"product":      "Warren",
		"version":      Version,
		"platform":     "Go " + runtime.Version(),
		"copyright":    "Warren authors",
		"information":  "AMQP 0-9-1 broker, RabbitMQ compatible",
		"cluster_name": c.srv.clusterName,
		"capabilities": amqp.Table{
			"publisher_confirms":           true,
			"exchange_exchange_bindings":   true,
			"basic.nack":                   true,
			"consumer_cancel_notify":       true,
			"connection.blocked":           true,
			"authentication_failure_close": true,
			"per_consumer_qos":             true,
		},
	}
}

// readMethod reads the next frame during the handshake, which must be a method on channel 0.
func (c *conn) readMethod() (amqp.Method, error) {
	f, err := c.fr.ReadNonHeartbeat()
	if err != nil {
		return nil, err
	}
	if f.Type != amqp.FrameMethod || f.Channel != 0 {
		return nil, amqp.Errorf(amqp.UnexpectedFrame, "expected method frame on channel 0 during handshake, got type %d on channel %d", f.Type, f.Channel)
	}
	return amqp.DecodeMethod(f.Payload)
}

func (c *conn) handshake() error {
	var hdr [8]byte
	if n, err := io.ReadFull(c.nc, hdr[:]); err != nil {
		if n > 0 {
			// A short header still learns which protocol we speak.
			_, _ = c.nc.Write(amqp.ProtocolHeader)
		}
		return fmt.Errorf("reading protocol header: %w", err)
	}
	if !bytes.Equal(hdr[:], amqp.ProtocolHeader) {
		_, _ = c.nc.Write(amqp.ProtocolHeader)
		c.log.Info("bad protocol header, closing", "header", fmt.Sprintf("%q", hdr[:]))
		return errBadHeader
	}
	mechanisms := "PLAIN AMQPLAIN"
	if c.peerCN != "" {
		// As RabbitMQ's rabbitmq_auth_mechanism_ssl: offered only to clients with a certificate.
		mechanisms += " EXTERNAL"
	}
	if c.offersLink() {
		mechanisms += " " + broker.LinkMechanism // a cluster member takes its peers' links
	}
	c.writeMethod(0, &amqp.ConnectionStart{
		VersionMajor:     0,
		VersionMinor:     9,
		ServerProperties: c.serverProperties(),
		Mechanisms:       mechanisms,
		Locales:          "en_US",
	})
	m, err := c.readMethod()
	if err != nil {
		return err
	}
	so, ok := m.(*amqp.ConnectionStartOk)
	if !ok {
		return commandInvalid(m, "expected connection.start-ok")
	}
	c.clientProps, c.mechanism = so.ClientProperties, so.Mechanism
	if caps, ok := so.ClientProperties["capabilities"].(amqp.Table); ok {
		c.cancelNotify, _ = caps["consumer_cancel_notify"].(bool)
		c.blockedNotify, _ = caps["connection.blocked"].(bool)
	}
	if !strings.Contains(" "+mechanisms+" ", " "+so.Mechanism+" ") {
		// RabbitMQ drops the socket without a close for a mechanism it never offered.
		return fmt.Errorf("%w %q", errUnknownMechanism, so.Mechanism)
	}
	user, err := c.srv.authenticate(so.Mechanism, so.Response, c.peerCN, c.nc.RemoteAddr(), c.secure)
	if err != nil {
		delay := c.srv.logins.failed(c.nc.RemoteAddr(), time.Now())
		select {
		case <-time.After(delay):
		case <-c.srv.quit:
		}
		return err
	}
	c.user = user
	c.link = so.Mechanism == broker.LinkMechanism

	tune := &c.srv.rt.Load().cfg
	c.writeMethod(0, &amqp.ConnectionTune{
		ChannelMax: tune.ChannelMax,
		FrameMax:   tune.FrameMax,
		Heartbeat:  tune.Heartbeat,
	})
	m, err = c.readMethod()
	if err != nil {
		return err
	}
	to, ok := m.(*amqp.ConnectionTuneOk)
	if !ok {
		return commandInvalid(m, "expected connection.tune-ok")
	}
	if err := c.applyTune(tune, to); err != nil {
		return err
	}

	m, err = c.readMethod()
	if err != nil {
		return err
	}
	op, ok := m.(*amqp.ConnectionOpen)
	if !ok {
		return commandInvalid(m, "expected connection.open")
	}
	v, e := c.openVHost(op.VirtualHost)
	if e != nil {
		e.ClassID, e.MethodID = op.ClassID(), op.MethodID()
		return e
	}
	c.actor = broker.Actor{Owner: broker.OwnerID(c.id), Authz: c}
	c.writeMethod(0, &amqp.ConnectionOpenOk{})
	c.log.Debug("connection open", "user", c.user, "vhost", v.Name())
	return nil
}

var (
	errBadHeader        = errors.New("bad protocol header")
	errUnknownMechanism = errors.New("unknown authentication mechanism")
)

// applyTune checks the client's tune-ok against what we offered.
func (c *conn) applyTune(cfg *Config, to *amqp.ConnectionTuneOk) error {
	fm := to.FrameMax
	if fm == 0 {
		fm = cfg.FrameMax
	}
	if fm < amqp.FrameMinSize {
		return amqp.Errorf(amqp.NotAllowed, "frame_max=%d < %d min size", fm, amqp.FrameMinSize)
	}
	if fm > cfg.FrameMax {
		return amqp.Errorf(amqp.NotAllowed, "frame_max=%d > %d max size", fm, cfg.FrameMax)
	}
	cm := to.ChannelMax
	if cm == 0 {
		cm = cfg.ChannelMax
	}
	if cm > cfg.ChannelMax {
		return amqp.Errorf(amqp.NotAllowed, "channel_max=%d > %d max size", cm, cfg.ChannelMax)
	}
	c.frameMax, c.channelMax, c.heartbeat = fm, cm, to.Heartbeat
	c.fr.SetMaxFrameSize(fm)
	return nil
}

func commandInvalid(m amqp.Method, text string) *amqp.Error {
	e := amqp.Errorf(amqp.CommandInvalid, "%s, got %s", text, m.Name())
	e.ClassID, e.MethodID = m.ClassID(), m.MethodID()
	return e
}

// handleFrame routes one frame after the handshake.
func (c *conn) handleFrame(f amqp.Frame) error {
	if f.Type == amqp.FrameHeartbeat {
		if f.Channel != 0 {
			return amqp.Errorf(amqp.FrameError, "heartbeat frame on channel %d", f.Channel)
		}
		return nil
	}
	if f.Channel == 0 {
		return c.handleChannel0(f)
	}
	if c.closing.Load() {
		return nil // after we sent connection.close, only close-ok matters
	}
	ch := c.lastCh
	if ch == nil || ch.id != f.Channel {
		ch = c.channels[f.Channel]
		c.lastCh = ch
	}
	if ch == nil {
		if f.Type != amqp.FrameMethod {
			return amqp.Errorf(amqp.ChannelError, "frame type %d on channel %d which is not open", f.Type, f.Channel)
		}
		m, err := amqp.DecodeMethod(f.Payload)
		if err != nil {
			return err
		}
		if _, ok := m.(*amqp.ChannelOpen); !ok {
			e := amqp.Errorf(amqp.ChannelError, "expected 'channel.open' on channel %d, got '%s'", f.Channel, m.Name())
			e.ClassID, e.MethodID = m.ClassID(), m.MethodID()
			return e
		}
		// Like RabbitMQ, channel_max bounds how many channels are open, not their numbers.
		if len(c.channels) >= int(c.channelMax) {
			return amqp.Errorf(amqp.NotAllowed, "number of channels opened (%d) has reached the negotiated channel_max (%d)", len(c.channels), c.channelMax)
		}
		if err := c.openChannel(); err != nil {
			return err
		}
		ch = newChannel(c, f.Channel)
		c.chMu.Lock()
		c.channels[f.Channel] = ch
		c.chMu.Unlock()
		c.writeMethod(f.Channel, &amqp.ChannelOpenOk{})
		return nil
	}
	return ch.handleFrame(f)
}

func (c *conn) handleChannel0(f amqp.Frame) error {
	if f.Type != amqp.FrameMethod {
		return amqp.Errorf(amqp.UnexpectedFrame, "frame type %d on channel 0", f.Type)
	}
	m, err := amqp.DecodeMethod(f.Payload)
	if err != nil {
		return err
	}
	switch m := m.(type) {
	case *amqp.ConnectionClose:
		c.closing.Store(true)
		c.release()
		c.writeMethod(0, &amqp.ConnectionCloseOk{})
		c.awaitClientHangup()
		return errClosed
	case *amqp.ConnectionCloseOk:
		if c.closing.Load() {
			return errClosed
		}
		return amqp.Errorf(amqp.CommandInvalid, "unexpected connection.close-ok")
	case *amqp.ConnectionUpdateSecret:
		c.writeMethod(0, &amqp.ConnectionUpdateSecretOk{})
		return nil
	case *amqp.ConnectionBlocked, *amqp.ConnectionUnblocked:
		return nil
	default:
		if c.closing.Load() {
			return nil
		}
		e := amqp.Errorf(amqp.ChannelError, "unexpected method in connection state running")
		e.ClassID, e.MethodID = m.ClassID(), m.MethodID()
		return e
	}
}

// removeChannel forgets a channel after channel.close / close-ok.
func (c *conn) removeChannel(id uint16) {
	c.chMu.Lock()
	ch, ok := c.channels[id]
	if ok {
		c.closedConfirms.Add(ch.confirms.acked.Load())
	}
	delete(c.channels, id)
	if c.lastCh != nil && c.lastCh.id == id {
		c.lastCh = nil
	}
	c.chMu.Unlock()
	if ok {
		c.channelsClosed(1)
	}
}

// tlsHandshake completes the TLS handshake before any AMQP is read, so that EXTERNAL can be
// offered to a client that presented a verified certificate.
func (c *conn) tlsHandshake(tc *tls.Conn, deadline time.Time) error {
	_ = tc.SetWriteDeadline(deadline)
	defer func() { _ = tc.SetWriteDeadline(time.Time{}) }()
	if err := tc.Handshake(); err != nil {
		return err
	}
	st := tc.ConnectionState()
	if len(st.VerifiedChains) > 0 && len(st.PeerCertificates) > 0 && !c.linkTLS { // a node's certificate is no user's
		c.peerCN = st.PeerCertificates[0].Subject.CommonName
	}
	c.log = c.log.With("tls", tls.VersionName(st.Version))
	return nil
}
