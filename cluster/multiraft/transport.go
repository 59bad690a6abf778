package multiraft

import (
	"bufio"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Wire protocol between two hosts (one TCP connection per pair of nodes, dialled by the node
// whose name sorts first, carrying the messages of every group in both directions):
//
//	acceptor -> dialer   "WRNRAFT1" nonceA(32)
//	dialer   -> acceptor len(1) dialerName nonceD(32) HMAC-SHA256(secret, "dial" nonceA nonceD dialerName 0 acceptorName)
//	acceptor -> dialer   HMAC-SHA256(secret, "accept" nonceD nonceA acceptorName 0 dialerName)
//	then, both ways:     frames: len(4 BE) uvarint(count) { uvarint(group) uvarint(len) raftpb.Message }*
//
// A frame with no message (count 0) is the node pair's heartbeat: each side writes one when
// it wrote nothing for a heartbeat interval (the host's tick), so a peer's liveness is known
// from one heartbeat per node pair, however many groups are idle (quiesce.go). A group field
// with quiesceFlag set carries a leader's quiesce heartbeat for the group.
//
// Both sides prove they hold the cluster secret without sending it; the fresh nonces make a
// recorded handshake useless. Confidentiality and integrity of the frames need the optional
// mutual TLS underneath.
const (
	wireMagic        = "WRNRAFT1"
	nonceLen         = 32
	handshakeTimeout = 5 * time.Second
	writeTimeout     = 10 * time.Second
	maxFrame         = 512 << 20
	// maxQueued bounds the messages waiting for one peer; beyond it new ones are dropped
	// (Raft retransmits) and the group is told the peer is unreachable.
	maxQueued = 16384
	// silentBeats is how many node heartbeat intervals a connection may stay without a byte
	// arriving before it is closed (and the dialer dials again): 20, 2 s at the default
	// 100 ms tick. A peer machine that vanished without closing TCP (power lost, cable
	// pulled) otherwise leaves the connection open, writes succeeding into the send buffer,
	// so the dialer never redials and the peer, back, waits to be dialled. The host counts a
	// silent peer dead much sooner (livenessTimeout: 4 ticks by default) and the groups act
	// on that; closing the connection only matters for reconnecting, so the bound is 5 times
	// the liveness timeout: a loaded machine that delays a few heartbeats, or a GC pause,
	// does not churn connections (each new one is a new epoch, which wakes quiesced groups).
	silentBeats = 20
	// minSilentLimit floors that bound for fast ticks (tests tick every 10-20 ms): a 2-core
	// machine under load stalls goroutines for hundreds of milliseconds, which must not
	// cost a connection.
	minSilentLimit = time.Second
)

// silentLimitFor is how long a connection with heartbeats every hbEvery may stay silent
// before it is closed: silentBeats intervals, at least minSilentLimit; 0 (never) without
// heartbeats, as then silence proves nothing.
func silentLimitFor(hbEvery time.Duration) time.Duration {
	if hbEvery <= 0 {
		return 0
	}
	return max(silentBeats*hbEvery, minSilentLimit)
}

var errAuth = errors.New("cluster peer authentication failed")

// outMsg is one message to send: its group and the message.
type outMsg struct {
	group uint64
	msg   *pb.Message
}

// transportHooks is what the transport calls back into the host.
type transportHooks interface {
	// deliver hands over a message received from peer (From already checked).
	deliver(group uint64, m *pb.Message)
	// unreachable reports that messages of group to node id were dropped; snap says whether
	// a snapshot was among them.
	unreachable(group, id uint64, snap bool)
	// snapshotSent reports that a snapshot message of group to id was written to the wire.
	snapshotSent(group, id uint64)
}

// transport owns the listener and one peer (connection manager) per other node.
type transport struct {
	self   string
	secret []byte
	tls    *tls.Config
	log    *slog.Logger
	hooks  transportHooks
	ln     net.Listener

	mu     sync.Mutex
	peers  map[string]*peer
	closed bool

	stop chan struct{}
	wg   sync.WaitGroup
	// hbEvery is how long a connection may stay silent before a heartbeat frame is written
	// (0: never, tests of the wire alone).
	hbEvery time.Duration
	// silentLimit is how long a connection may receive nothing before it is closed
	// (silentLimitFor(hbEvery); 0 with no heartbeats: never).
	silentLimit time.Duration

	sent, received, frames, heartbeats atomic.Uint64
}

func newTransport(self, listen string, secret []byte, tlsCfg *tls.Config, log *slog.Logger, hooks transportHooks, hbEvery time.Duration) (*transport, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("multiraft: listen on %s: %w", listen, err)
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	t := &transport{self: self, secret: secret, tls: tlsCfg, log: log, hooks: hooks, ln: ln,
		peers: make(map[string]*peer), stop: make(chan struct{}), hbEvery: hbEvery,
		silentLimit: silentLimitFor(hbEvery)}
	t.wg.Add(1)
	go t.acceptLoop()
	return t, nil
}

// addr is the listener's address (useful with port 0).
func (t *transport) addr() string { return t.ln.Addr().String() }

// setPeers makes the set of peers (name -> address, self excluded) the given one: new peers
// start connecting, gone ones are closed, changed addresses apply at the next dial.
func (t *transport) setPeers(peers map[string]string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	for name, p := range t.peers {
		if _, ok := peers[name]; !ok {
			close(p.stop)
			delete(t.peers, name)
		}
	}
	for name, addr := range peers {
		if name == t.self {
			continue
		}
		if p, ok := t.peers[name]; ok {
			p.mu.Lock()
			p.addr = addr
			p.mu.Unlock()
			continue
		}
		p := &peer{t: t, name: name, id: NodeID(name), addr: addr, dialer: t.self < name,
			wake: make(chan struct{}, 1), accepted: make(chan net.Conn, 1), stop: make(chan struct{})}
		t.peers[name] = p
		t.wg.Add(1)
		go p.run()
	}
}

// send queues messages for their destinations; to is the destination's node name.
func (t *transport) send(to string, ms []outMsg) {
	t.mu.Lock()
	p := t.peers[to]
	t.mu.Unlock()
	if p == nil {
		for _, m := range ms {
			t.hooks.unreachable(m.group, m.msg.GetTo(), m.msg.GetType() == pb.MessageType_MsgSnap)
		}
		return
	}
	p.enqueue(ms)
}

func (t *transport) close() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	close(t.stop)
	for _, p := range t.peers {
		close(p.stop)
	}
	t.mu.Unlock()
	_ = t.ln.Close()
	t.wg.Wait()
}

func (t *transport) acceptLoop() {
	defer t.wg.Done()
	for {
		c, err := t.ln.Accept()
		if err != nil {
			select {
			case <-t.stop:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			t.log.Warn("cluster accept failed", "err", err)
			select {
			case <-t.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			p, err := t.acceptHandshake(c)
			if err != nil {
				t.log.Warn("cluster connection refused", "remote", c.RemoteAddr().String(), "err", err)
				_ = c.Close()
				return
			}
			p.handOver(c)
		}()
	}
}

func (t *transport) mac(label string, n1, n2 []byte, a, b string) []byte {
	m := hmac.New(sha256.New, t.secret)
	m.Write([]byte(label))
	m.Write(n1)
	m.Write(n2)
	m.Write([]byte(a))
	m.Write([]byte{0})
	m.Write([]byte(b))
	return m.Sum(nil)
}

func (t *transport) acceptHandshake(c net.Conn) (*peer, error) {
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	nonceA := make([]byte, nonceLen)
	_, _ = rand.Read(nonceA)
	if _, err := c.Write(append([]byte(wireMagic), nonceA...)); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	var n [1]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	rest := make([]byte, int(n[0])+nonceLen+sha256.Size)
	if _, err := io.ReadFull(c, rest); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	name := string(rest[:n[0]])
	nonceD := rest[n[0] : int(n[0])+nonceLen]
	got := rest[int(n[0])+nonceLen:]
	if !hmac.Equal(got, t.mac("dial", nonceA, nonceD, name, t.self)) {
		return nil, fmt.Errorf("node %q: %w (is cluster.secret the same on both nodes?)", name, errAuth)
	}
	t.mu.Lock()
	p := t.peers[name]
	t.mu.Unlock()
	if p == nil {
		return nil, fmt.Errorf("node %q is not a configured peer", name)
	}
	if p.dialer {
		return nil, fmt.Errorf("node %q dialled, but %q dials it (the name that sorts first dials)", name, t.self)
	}
	if _, err := c.Write(t.mac("accept", nonceD, nonceA, t.self, name)); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	return p, nil
}

func (t *transport) dialHandshake(c net.Conn, peerName string) error {
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	hello := make([]byte, len(wireMagic)+nonceLen)
	if _, err := io.ReadFull(c, hello); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	if string(hello[:len(wireMagic)]) != wireMagic {
		return fmt.Errorf("handshake: not a Warren cluster listener")
	}
	nonceA := hello[len(wireMagic):]
	nonceD := make([]byte, nonceLen)
	_, _ = rand.Read(nonceD)
	msg := append([]byte{byte(len(t.self))}, t.self...)
	msg = append(msg, nonceD...)
	msg = append(msg, t.mac("dial", nonceA, nonceD, t.self, peerName)...)
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	got := make([]byte, sha256.Size)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("handshake: %w (refused: secret or configuration mismatch?)", err)
	}
	if !hmac.Equal(got, t.mac("accept", nonceD, nonceA, peerName, t.self)) {
		return fmt.Errorf("node %q: %w", peerName, errAuth)
	}
	return nil
}

// peer manages the connection to one other node and the messages waiting for it.
type peer struct {
	t      *transport
	name   string
	id     uint64
	dialer bool // this node dials the connection (its name sorts first)

	mu    sync.Mutex
	addr  string
	queue []outMsg

	wake     chan struct{}
	accepted chan net.Conn
	stop     chan struct{}

	// Liveness: connected while a connection is served, epoch counts connections (a peer
	// that restarted comes back on a new one), lastHeard is when a frame last arrived
	// (unix nanoseconds).
	connected atomic.Bool
	epoch     atomic.Uint64
	lastHeard atomic.Int64
}

// peerLiveness is what the host sees of a peer: whether it is heard from, and on which
// connection.
type peerLiveness struct {
	alive bool
	epoch uint64
}

// liveness reports every peer's state: alive if connected and heard within timeout.
func (t *transport) liveness(timeout time.Duration) map[uint64]peerLiveness {
	now := time.Now().UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	m := make(map[uint64]peerLiveness, len(t.peers))
	for _, p := range t.peers {
		m[p.id] = peerLiveness{
			alive: p.connected.Load() && now-p.lastHeard.Load() < int64(timeout),
			epoch: p.epoch.Load(),
		}
	}
	return m
}

func (p *peer) enqueue(ms []outMsg) {
	p.mu.Lock()
	var dropped []outMsg
	for _, m := range ms {
		if len(p.queue) >= maxQueued {
			dropped = append(dropped, m)
			continue
		}
		p.queue = append(p.queue, m)
	}
	p.mu.Unlock()
	for _, m := range dropped {
		p.t.hooks.unreachable(m.group, p.id, m.msg.GetType() == pb.MessageType_MsgSnap)
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// handOver gives an accepted, authenticated connection to the peer; it replaces the current one.
//
// A stopped peer (its transport closing, or the node removed) must close the connection, not
// keep it in p.accepted: nobody would read or write it, yet the dialer, handshake done,
// counts it connected and writes into it, and never dials again, while the peer's node,
// restarted, waits to be dialled. That happened when a node was closed just as its peer
// redialled (the old connection closed first): the select below, with p.accepted free and
// p.stop closed, may take either case, and run, returning, left the connection there.
func (p *peer) handOver(c net.Conn) {
	for {
		select {
		case <-p.stop:
			_ = c.Close()
			return
		default:
		}
		select {
		case p.accepted <- c:
			select {
			case <-p.stop: // stopped meanwhile: run may be gone
				p.closeAccepted()
			default:
			}
			return
		case old := <-p.accepted:
			_ = old.Close()
		case <-p.stop:
			_ = c.Close()
			return
		}
	}
}

// closeAccepted closes a connection handed over and not taken (the peer stopped).
func (p *peer) closeAccepted() {
	select {
	case c := <-p.accepted:
		_ = c.Close()
	default:
	}
}

func (p *peer) run() {
	defer p.t.wg.Done()
	// One handed over before the stop and not taken (serve's select saw both).
	defer p.closeAccepted()
	for {
		c := p.connect()
		if c == nil {
			return
		}
		p.t.log.Debug("cluster peer connected", "peer", p.name)
		if !p.serve(c) {
			return
		}
		p.t.log.Debug("cluster peer disconnected", "peer", p.name)
	}
}

// connect returns the next connection: dialled (with backoff) or accepted. nil: stopped.
func (p *peer) connect() net.Conn {
	if !p.dialer {
		select {
		case c := <-p.accepted:
			return c
		case <-p.stop:
			return nil
		}
	}
	backoff := 20 * time.Millisecond
	for {
		p.mu.Lock()
		addr := p.addr
		p.mu.Unlock()
		c, err := p.dial(addr)
		if err == nil {
			return c
		}
		p.t.log.Debug("cluster dial failed", "peer", p.name, "addr", addr, "err", err)
		if errors.Is(err, errAuth) {
			p.t.log.Warn("cluster peer refused authentication", "peer", p.name, "addr", addr)
		}
		p.dropQueued()
		select {
		case <-p.stop:
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

func (p *peer) dial(addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: handshakeTimeout}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if p.t.tls != nil {
		cfg := p.t.tls.Clone()
		if cfg.ServerName == "" {
			host, _, _ := net.SplitHostPort(addr)
			cfg.ServerName = host
		}
		c = tls.Client(c, cfg)
	}
	if err := p.t.dialHandshake(c, p.name); err != nil {
		_ = c.Close()
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return c, nil
}

// dropQueued discards what waits for a peer that cannot be reached, telling the groups.
func (p *peer) dropQueued() {
	p.mu.Lock()
	q := p.queue
	p.queue = nil
	p.mu.Unlock()
	for _, m := range q {
		p.t.hooks.unreachable(m.group, p.id, m.msg.GetType() == pb.MessageType_MsgSnap)
	}
}

// serve runs the connection until it fails (true: connect again) or the peer stops (false).
func (p *peer) serve(c net.Conn) bool {
	p.lastHeard.Store(time.Now().UnixNano())
	p.epoch.Add(1)
	p.connected.Store(true)
	defer p.connected.Store(false)
	var hb <-chan time.Time
	if p.t.hbEvery > 0 {
		tk := time.NewTicker(p.t.hbEvery)
		defer tk.Stop()
		hb = tk.C
	}
	lastWrite := time.Now()
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		p.readLoop(c)
	}()
	defer func() {
		_ = c.Close()
		<-readDone
	}()
	w := bufio.NewWriterSize(c, 64<<10)
	var buf []byte
	for {
		select {
		case <-p.stop:
			return false
		case <-readDone:
			return true
		case nc := <-p.accepted:
			// The dialer reconnected (it saw the old connection fail first): switch.
			_ = c.Close()
			<-readDone
			c = nc
			readDone = make(chan struct{})
			go func() {
				defer close(readDone)
				p.readLoop(c)
			}()
			w.Reset(c)
			p.epoch.Add(1)
			continue
		case <-p.wake:
		case <-hb:
		}
		p.mu.Lock()
		batch := p.queue
		p.queue = nil
		p.mu.Unlock()
		if len(batch) == 0 && (hb == nil || time.Since(lastWrite) < p.t.hbEvery*9/10) {
			continue
		}
		lastWrite = time.Now()
		var err error
		buf, err = encodeFrame(buf[:0], batch)
		if err == nil {
			_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
			if _, err = w.Write(buf); err == nil {
				err = w.Flush()
			}
		}
		if err != nil {
			p.t.log.Debug("cluster write failed", "peer", p.name, "err", err)
			for _, m := range batch {
				p.t.hooks.unreachable(m.group, p.id, m.msg.GetType() == pb.MessageType_MsgSnap)
			}
			return true
		}
		p.t.frames.Add(1)
		if len(batch) == 0 {
			p.t.heartbeats.Add(1)
		}
		p.t.sent.Add(uint64(len(batch)))
		for _, m := range batch {
			if m.msg.GetType() == pb.MessageType_MsgSnap {
				p.t.hooks.snapshotSent(m.group, p.id)
			}
		}
	}
}

func encodeFrame(buf []byte, batch []outMsg) ([]byte, error) {
	buf = append(buf, 0, 0, 0, 0)
	buf = binary.AppendUvarint(buf, uint64(len(batch)))
	opts := proto.MarshalOptions{}
	for _, m := range batch {
		buf = binary.AppendUvarint(buf, m.group)
		buf = binary.AppendUvarint(buf, uint64(opts.Size(m.msg)))
		var err error
		buf, err = opts.MarshalAppend(buf, m.msg)
		if err != nil {
			return buf, fmt.Errorf("encode raft message: %w", err)
		}
	}
	if len(buf)-4 > maxFrame {
		return buf, fmt.Errorf("frame of %d bytes exceeds %d", len(buf)-4, maxFrame)
	}
	binary.BigEndian.PutUint32(buf, uint32(len(buf)-4))
	return buf, nil
}

// decodeFrame calls fn for each message of a frame's payload.
func decodeFrame(payload []byte, fn func(group uint64, m *pb.Message)) error {
	count, k := binary.Uvarint(payload)
	if k <= 0 {
		return errors.New("bad frame: count")
	}
	payload = payload[k:]
	for i := uint64(0); i < count; i++ {
		group, k := binary.Uvarint(payload)
		if k <= 0 {
			return errors.New("bad frame: group")
		}
		payload = payload[k:]
		n, k := binary.Uvarint(payload)
		if k <= 0 || n > uint64(len(payload)-k) {
			return errors.New("bad frame: message length")
		}
		m := &pb.Message{}
		if err := proto.Unmarshal(payload[k:k+int(n)], m); err != nil {
			return fmt.Errorf("bad frame: %w", err)
		}
		payload = payload[k+int(n):]
		fn(group, m)
	}
	if len(payload) != 0 {
		return errors.New("bad frame: trailing bytes")
	}
	return nil
}

// silenceReader reads a connection with a deadline of limit from each read: a connection
// that brings no byte for limit fails with a timeout. Bytes, not frames, count, so a large
// frame still arriving slowly keeps the connection; time spent delivering is not counted
// (the deadline is set when the next read starts).
type silenceReader struct {
	c     net.Conn
	limit time.Duration
}

func (r silenceReader) Read(b []byte) (int, error) {
	if err := r.c.SetReadDeadline(time.Now().Add(r.limit)); err != nil {
		return 0, err
	}
	return r.c.Read(b)
}

// readLoop delivers the frames of c until it fails, is closed, or stays silent for the
// transport's silentLimit (then serve closes it and the dialer dials again).
func (p *peer) readLoop(c net.Conn) {
	var src io.Reader = c
	if p.t.silentLimit > 0 {
		src = silenceReader{c: c, limit: p.t.silentLimit}
	}
	r := bufio.NewReaderSize(src, 64<<10)
	var hdr [4]byte
	var payload []byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			p.readFailed(err)
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n > maxFrame {
			p.t.log.Warn("cluster frame too large", "peer", p.name, "bytes", n)
			return
		}
		if cap(payload) < int(n) {
			payload = make([]byte, n)
		}
		payload = payload[:n]
		if _, err := io.ReadFull(r, payload); err != nil {
			p.readFailed(err)
			return
		}
		p.lastHeard.Store(time.Now().UnixNano())
		err := decodeFrame(payload, func(group uint64, m *pb.Message) {
			// A peer speaks only for itself.
			if m.GetFrom() != p.id {
				return
			}
			p.t.received.Add(1)
			p.t.hooks.deliver(group, m)
		})
		if err != nil {
			p.t.log.Warn("cluster frame rejected", "peer", p.name, "err", err)
			return
		}
	}
}

// readFailed logs why a connection's reading ended when it is the silence bound: a peer
// gone without closing TCP is worth a line; a closed connection is the usual case.
func (p *peer) readFailed(err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		p.t.log.Info("cluster peer silent, closing its connection", "peer", p.name,
			"silent_for", p.t.silentLimit, "dialer", p.dialer)
	}
}

// quiesceFlag marks, in a frame's group field, a leader's quiesce heartbeat (see quiesce.go);
// group ids stay below it.
const quiesceFlag uint64 = 1 << 63
