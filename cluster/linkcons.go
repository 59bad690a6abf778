package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// The proxy connection of a peer, on Warren's own amqp codec instead of amqp091-go: proxied
// consumers, basic.get, queue counts and purges. amqp091-go's reader decoded every delivery into
// a struct, handed it through three goroutines and capped a proxied consumer at about 97k msgs/s
// while spending a third of the client node's CPU. Here one read loop decodes basic.deliver in
// place (its strings are reused while they repeat), assembles header and body into one
// allocation, and hands the delivery straight to the client's channel (broker.ProxySink).
// Settlements are appended to a coalescing writer (linkWriter): under load many go out in
// one write(2), and a multiple ack stays one frame.
//
// Each link channel carries one synchronous request at a time (call); the read loop answers it
// from the channel's reply slot. A request that times out drops the whole proxy connection, as
// before: the home requeues what was delivered on it, and the next use dials again.

// proxyFrameMax is the frame size the proxy connection asks for (the home may lower it).
const proxyFrameMax = 128 << 10

// linkBodyPrealloc is the most a content header makes the read loop allocate before body
// frames arrive (bodies larger grow as they come; none may exceed broker.MaxMessageSize).
const linkBodyPrealloc = 1 << 20

// A no-ack proxied consumer takes the home's messages with acknowledgements and a window of
// noAckWindow (basic.qos on its link channel), and this node acks them once they are handed to
// the client (broker.ProxyChannel.Written): a client whose socket is congested holds at most
// the window here. The acks go as one multiple ack per noAckAckBatch, and whatever is pending
// when the link has nothing more to read (or the channel closes).
const (
	noAckWindow   = 512
	noAckAckBatch = 64
	// ackFlushFrames bounds the frames the read loop reads between two flushes of the pending
	// acks (flushAcks).
	ackFlushFrames = 64
)

// proxyConn is a peer's proxy connection.
type proxyConn struct {
	node     string
	nc       net.Conn
	w        *linkWriter // nc's writes, batched
	fr       *amqp.FrameReader
	frameMax uint32
	hb       time.Duration
	chMax    uint16

	wmu     sync.Mutex
	scratch []byte // the frames being written (under wmu)

	mu     sync.Mutex
	chans  map[uint16]*linkChan
	nextID uint16
	dead   error // set when the connection ended

	dirtyMu sync.Mutex
	dirty   []*linkChan // no-ack consumers with acks pending (flushAcks)

	closing atomic.Bool
	done    chan struct{} // closed when the read loop ends
}

// errLinkHelloOrder is a method out of the handshake's order from the node linkHello talks to.
var errLinkHelloOrder = errors.New("out of order")

// linkTune is what the connection-level handshake of a link connection negotiated.
type linkTune struct {
	frameMax   uint32
	heartbeat  time.Duration
	channelMax uint16
}

// linkHello runs the connection-level handshake of a link connection on nc (protocol header,
// start-ok and the two secure rounds of the mutual link login, tune-ok, open), bounded by nc's
// deadline, which the caller set. A node that does not prove the cluster's secret is refused
// (errLinkUnproven) before it is sent anything but the login.
// A close from the home comes back as an *amqp.Error with its code.
func linkHello(nc net.Conn, fr *amqp.FrameReader, vhost, name string, login linkLogin, caps amqp.Table, heartbeat time.Duration, frameMax uint32) (linkTune, error) {
	var t linkTune
	var out []byte
	write := func() error {
		_, err := nc.Write(out)
		out = out[:0]
		return err
	}
	expect := func(want string) (amqp.Method, error) {
		f, err := fr.ReadNonHeartbeat()
		if err != nil {
			return nil, fmt.Errorf("awaiting %s: %w", want, err)
		}
		if f.Type != amqp.FrameMethod {
			return nil, fmt.Errorf("awaiting %s: unexpected frame type %d", want, f.Type)
		}
		m, err := amqp.DecodeMethod(f.Payload)
		if err != nil {
			return nil, fmt.Errorf("awaiting %s: %w", want, err)
		}
		if cl, ok := m.(*amqp.ConnectionClose); ok {
			out = amqp.AppendMethodFrame(out, 0, &amqp.ConnectionCloseOk{})
			_ = write()
			return nil, amqp.Errorf(cl.ReplyCode, "%s", cl.ReplyText)
		}
		if m.Name() != want {
			return nil, fmt.Errorf("awaiting %s: got %s: %w", want, m.Name(), errLinkHelloOrder)
		}
		return m, nil
	}
	if _, err := nc.Write(amqp.ProtocolHeader); err != nil {
		return t, err
	}
	m, err := expect("connection.start")
	if err != nil {
		return t, err
	}
	if !strings.Contains(" "+m.(*amqp.ConnectionStart).Mechanisms+" ", " "+broker.LinkMechanism+" ") {
		return t, fmt.Errorf("the node does not offer the %s login (not a member of this cluster?)", broker.LinkMechanism)
	}
	out = amqp.AppendMethodFrame(out, 0, &amqp.ConnectionStartOk{
		ClientProperties: amqp.Table{"product": "warren-link", "connection_name": name, "capabilities": caps},
		Mechanism:        broker.LinkMechanism, Response: login.Response(), Locale: "en_US"})
	if err := write(); err != nil {
		return t, err
	}
	if m, err = expect("connection.secure"); err != nil {
		return t, err
	}
	challenge := m.(*amqp.ConnectionSecure).Challenge
	out = amqp.AppendMethodFrame(out, 0, &amqp.ConnectionSecureOk{Response: login.answer(challenge)})
	if err := write(); err != nil {
		return t, err
	}
	// The mutual half of the login: the node proves the secret in a second secure round
	// before this node sends it anything else (a node that skips it is refused too).
	if m, err = expect("connection.secure"); err != nil {
		if errors.Is(err, errLinkHelloOrder) {
			return t, fmt.Errorf("%w: %w", errLinkUnproven, err)
		}
		return t, err
	}
	if err := login.verifyServer(challenge, m.(*amqp.ConnectionSecure).Challenge); err != nil {
		return t, err
	}
	out = amqp.AppendMethodFrame(out, 0, &amqp.ConnectionSecureOk{})
	if err := write(); err != nil {
		return t, err
	}
	if m, err = expect("connection.tune"); err != nil {
		return t, err
	}
	tune := m.(*amqp.ConnectionTune)
	t.frameMax = frameMax
	if tune.FrameMax != 0 && tune.FrameMax < t.frameMax {
		t.frameMax = tune.FrameMax
	}
	fr.SetMaxFrameSize(t.frameMax)
	// amqp091-go's rule, which the link used before: the smaller of both offers, either when
	// the other has none.
	hb := uint16((heartbeat + time.Second - 1) / time.Second)
	if hb == 0 || (tune.Heartbeat != 0 && tune.Heartbeat < hb) {
		hb = tune.Heartbeat
	}
	t.heartbeat = time.Duration(hb) * time.Second
	t.channelMax = tune.ChannelMax
	if t.channelMax == 0 {
		t.channelMax = 2047
	}
	out = amqp.AppendMethodFrame(out, 0, &amqp.ConnectionTuneOk{ChannelMax: t.channelMax, FrameMax: t.frameMax, Heartbeat: hb})
	out = amqp.AppendMethodFrame(out, 0, &amqp.ConnectionOpen{VirtualHost: vhost})
	if err := write(); err != nil {
		return t, err
	}
	_, err = expect("connection.open-ok")
	return t, err
}

// dialProxy connects to addr and opens a proxy connection, bounded by timeout.
func dialProxy(addr, vhost, name string, login linkLogin, tlsCfg *tls.Config, heartbeat, timeout time.Duration, node string) (*proxyConn, error) {
	nc, err := dialLink(addr, tlsCfg, timeout)
	if err != nil {
		return nil, err
	}
	_ = nc.SetDeadline(time.Now().Add(timeout))
	fr := amqp.NewFrameReader(nc, 64<<10)
	t, err := linkHello(nc, fr, vhost, name, login,
		amqp.Table{"consumer_cancel_notify": true, "basic.nack": true}, heartbeat, proxyFrameMax)
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	c := &proxyConn{node: node, nc: nc, w: newLinkWriter(nc), fr: fr, frameMax: t.frameMax, hb: t.heartbeat,
		chMax: t.channelMax, chans: map[uint16]*linkChan{}, done: make(chan struct{})}
	go c.readLoop()
	if c.hb > 0 {
		go watchReads(c.nc, c.fr, c.hb, c.done)
		go c.heartbeats()
	}
	return c, nil
}

// isDead reports whether the connection ended.
func (c *proxyConn) isDead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead != nil
}

// channels is the number of link channels open (or closing) on the connection.
func (c *proxyConn) channels() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.chans)
}

// write sends one method frame (coalesced with the others).
func (c *proxyConn) write(channel uint16, m amqp.Method) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.scratch = amqp.AppendMethodFrame(c.scratch[:0], channel, m)
	_, err := c.w.Write(c.scratch)
	return err
}

// writeAck sends basic.ack or basic.nack without a method value (the hot settlement path).
func (c *proxyConn) writeAck(channel uint16, nack bool, tag uint64, multiple, requeue bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := c.scratch[:0]
	size := 13 // class, method, tag, bits
	method := byte(80)
	if nack {
		method = 120
	}
	b = append(b, amqp.FrameMethod, byte(channel>>8), byte(channel), 0, 0, 0, byte(size), 0, 60, 0, method,
		byte(tag>>56), byte(tag>>48), byte(tag>>40), byte(tag>>32), byte(tag>>24), byte(tag>>16), byte(tag>>8), byte(tag))
	var bits byte
	if multiple {
		bits |= 1
	}
	if requeue && nack {
		bits |= 2
	}
	b = append(b, bits, amqp.FrameEnd)
	c.scratch = b
	_, err := c.w.Write(b)
	return err
}

// heartbeats sends a heartbeat every half interval until the connection ends (the home's
// silence is watched apart: watchReads).
func (c *proxyConn) heartbeats() {
	t := time.NewTicker(c.hb / 2)
	defer t.Stop()
	hb := amqp.AppendHeartbeat(nil)
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		if _, err := c.w.Write(hb); err != nil {
			return
		}
	}
}

// watchReads ends the reader's wait on nc when nothing was read through fr for three heartbeat
// intervals (readWatch), checking every half interval until done closes. It runs on its own
// goroutine and takes no lock: a writer blocked on a home that stopped reading (a partition, a
// frozen VM: the socket neither reads nor closes) holds the connection's write lock for as
// long as TCP retries, and a check behind that lock never ran, so the reader never ended and
// nothing closed the socket under the writer.
func watchReads(nc net.Conn, fr *amqp.FrameReader, hb time.Duration, done <-chan struct{}) {
	t := time.NewTicker(hb / 2)
	defer t.Stop()
	watch := newReadWatch(nc, fr, 3*hb)
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			watch.check(now)
		}
	}
}

// readWatch finds a link's home gone when nothing at all was read from it for a while
// (RabbitMQ's rule: any byte is a sign of life, not only heartbeat frames). It replaces a read
// deadline refreshed between frames: the reader's buffer of a busy link nearly always holds
// part of a frame, so such a deadline was seldom refreshed and a steady burst of deliveries
// timed the connection out three heartbeats in.
type readWatch struct {
	nc      net.Conn
	fr      *amqp.FrameReader
	timeout time.Duration
	bytes   uint64    // fr's count at the last move
	moved   time.Time // when it last moved
}

func newReadWatch(nc net.Conn, fr *amqp.FrameReader, timeout time.Duration) *readWatch {
	return &readWatch{nc: nc, fr: fr, timeout: timeout, bytes: fr.BytesRead(), moved: time.Now()}
}

// check ends the reader's wait (a deadline in the past: its read fails with a timeout) when
// nothing was read since timeout before now.
func (w *readWatch) check(now time.Time) {
	if n := w.fr.BytesRead(); n != w.bytes {
		w.bytes, w.moved = n, now
		return
	}
	if now.Sub(w.moved) >= w.timeout {
		_ = w.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

// open opens a link channel.
func (c *proxyConn) open(timeout time.Duration) (*linkChan, error) {
	c.mu.Lock()
	if c.dead != nil {
		c.mu.Unlock()
		return nil, c.dead
	}
	if len(c.chans) >= int(c.chMax) {
		c.mu.Unlock()
		return nil, fmt.Errorf("cluster link to node %s: no free channel", c.node)
	}
	// Ids cycle rather than being reused at once, so that a late frame of a closed channel
	// does not land on a new one.
	for {
		c.nextID++
		if c.nextID == 0 || c.nextID > c.chMax {
			c.nextID = 1
		}
		if c.chans[c.nextID] == nil {
			break
		}
	}
	lc := &linkChan{c: c, id: c.nextID, reply: make(chan amqp.Method, 1), gone: make(chan struct{}), timeout: timeout}
	c.chans[lc.id] = lc
	c.mu.Unlock()
	if _, err := lc.call(&amqp.ChannelOpen{}, "channel.open-ok"); err != nil {
		return nil, err
	}
	return lc, nil
}

// readLoop reads the home's frames until the connection ends, then ends every channel.
func (c *proxyConn) readLoop() {
	err := c.read()
	if c.closing.Load() {
		err = errLinkClosed
	}
	err = fmt.Errorf("cluster link to node %s lost: %w", c.node, err)
	c.mu.Lock()
	c.dead = err
	chans := c.chans
	c.chans = map[uint16]*linkChan{}
	c.mu.Unlock()
	close(c.done)
	_ = c.w.Close()
	for _, lc := range chans {
		lc.end(err, nil)
	}
}

func (c *proxyConn) channel(id uint16) *linkChan {
	c.mu.Lock()
	lc := c.chans[id]
	c.mu.Unlock()
	return lc
}

func (c *proxyConn) read() error {
	var last *linkChan // the channel of the previous frame: most frames continue a delivery
	// Pending no-ack acks go before a read that may wait, and every ackFlushFrames frames
	// besides: a busy link's buffer may never run empty.
	frames := 0
	for {
		if frames++; frames >= ackFlushFrames || c.fr.Buffered() == 0 {
			frames = 0
			c.flushAcks()
		}
		f, err := c.fr.ReadFrame()
		if err != nil {
			return err
		}
		if f.Type == amqp.FrameHeartbeat {
			continue
		}
		if f.Channel == 0 {
			if f.Type != amqp.FrameMethod {
				return fmt.Errorf("unexpected frame type %d on channel 0", f.Type)
			}
			m, err := amqp.DecodeMethod(f.Payload)
			if err != nil {
				return err
			}
			switch m := m.(type) {
			case *amqp.ConnectionClose:
				_ = c.write(0, &amqp.ConnectionCloseOk{})
				return amqp.Errorf(m.ReplyCode, "%s", m.ReplyText)
			case *amqp.ConnectionCloseOk:
				return errLinkClosed
			}
			continue // connection.blocked and unblocked: the writes wait on TCP anyway
		}
		// A dropped channel's id may belong to a new channel by now.
		if last == nil || last.id != f.Channel || last.dropped.Load() {
			if last = c.channel(f.Channel); last == nil {
				continue // a late frame of a channel closed here
			}
		}
		if err := last.frame(f); err != nil {
			return err
		}
	}
}

// flushAcks sends the acks pending on no-ack consumers' channels (see noAckWindow).
func (c *proxyConn) flushAcks() {
	c.dirtyMu.Lock()
	dirty := c.dirty
	c.dirty = nil
	c.dirtyMu.Unlock()
	for _, lc := range dirty {
		lc.mu.Lock()
		lc.dirty = false
		lc.flushAckLocked()
		lc.mu.Unlock()
	}
}

// close ends the connection with the close handshake, not waited for beyond a second.
func (c *proxyConn) close() {
	if !c.closing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		_ = c.write(0, &amqp.ConnectionClose{ReplyCode: amqp.ReplySuccess, ReplyText: "link closed"})
		select {
		case <-c.done:
		case <-time.After(time.Second):
		}
		_ = c.w.Close() // sends what is queued (bounded), then closes the socket
	}()
}

// homeError is a channel error of the home node (its channel.close): the client gets its code
// and text.
type homeError struct {
	code uint16
	text string
}

func (e *homeError) Error() string {
	return fmt.Sprintf("home closed the link channel: %d %s", e.code, e.text)
}

// linkChan is one channel of a proxy connection: a proxied consumer's, a getter's, or a
// one-off for counts, purges and syncAcks.
type linkChan struct {
	c       *proxyConn
	id      uint16
	timeout time.Duration

	callMu sync.Mutex       // one synchronous request at a time
	reply  chan amqp.Method // its answer, from the read loop
	gone   chan struct{}    // closed when the channel ended (closed by either side, or the connection)
	// dropped: the channel left the connection's table (drop); the read loop then looks its
	// id up again.
	dropped atomic.Bool

	// mu orders settlements before the channel.close: a frame on a channel the home has
	// closed is a connection error there, which would end every other use of the link.
	mu      sync.Mutex
	closing bool  // channel.close sent (or the channel ended)
	err     error // why it ended

	// A no-ack consumer's acks of what was written (see noAckWindow), under mu.
	credit     bool // the consumer is a no-ack one consumed with acks (Written)
	ackTag     uint64
	ackPending int
	dirty      bool        // in c.dirty
	relaying   atomic.Bool // the read loop is in sink.Deliver: it flushes the acks when idle

	// The consumer (nil for a getter): its sink, flags and state; read loop only, except
	// started and stopped.
	sink    broker.ProxySink
	pending broker.ProxySink // the sink until consume-ok (under mu): see method
	tag     string
	started chan struct{} // closed by Start (or Close): deliveries wait for it
	startMu sync.Once
	stopped atomic.Bool // Cancel or Close was called: the end of the consumer is not news

	// The delivery being assembled (read loop only). The content header waits in hdr, reused,
	// until the body comes: a body in one frame then costs one allocation, header and body
	// copied in with nothing zeroed first; a longer one grows buf frame by frame.
	inMsg      bool
	get        bool
	d          broker.ProxyDelivery
	hdr        []byte // the content header received (valid while hasHdr)
	hasHdr     bool
	buf        []byte // header then the body so far, once body frames came (nil before)
	bodySize   int    // the body's size, from the content header
	lastEx     string
	lastKey    string
	getResults chan getResult
}

type getResult struct {
	d  broker.ProxyDelivery
	ok bool
}

// call sends m and waits (bounded) for the reply named want. A timeout drops the connection
// (which ends every wait on it); the home's channel.close is a *homeError.
func (lc *linkChan) call(m amqp.Method, want string) (amqp.Method, error) {
	lc.callMu.Lock()
	defer lc.callMu.Unlock()
	lc.mu.Lock()
	if lc.closing {
		err := lc.err
		lc.mu.Unlock()
		if err == nil {
			err = errLinkClosed
		}
		return nil, err
	}
	err := lc.c.write(lc.id, m)
	lc.mu.Unlock()
	if err != nil {
		return nil, err
	}
	t := time.NewTimer(lc.timeout)
	defer t.Stop()
	select {
	case r := <-lc.reply:
		if r.Name() != want {
			return nil, fmt.Errorf("cluster link: awaiting %s, got %s", want, r.Name())
		}
		return r, nil
	case <-lc.gone:
		lc.mu.Lock()
		err := lc.err
		lc.mu.Unlock()
		return nil, err
	case <-t.C:
		lc.c.close()
		return nil, errLinkTimeout
	}
}

// end records that the channel is gone (err: why) and tells a consumer's sink, unless it was
// stopped here. ended is the home's channel error for the sink, nil for a lost link.
func (lc *linkChan) end(err error, ended *amqp.Error) {
	lc.mu.Lock()
	if lc.err != nil || (lc.closing && err == nil) {
		lc.mu.Unlock()
		return
	}
	lc.closing, lc.err = true, err
	close(lc.gone)
	lc.mu.Unlock()
	lc.release()
	if !lc.stopped.Load() && lc.sink != nil {
		go lc.sink.Ended(ended) // off the read loop: see proxyChannel.Close
	}
}

// release lets the consumer's waits for Start go (the channel is gone).
func (lc *linkChan) release() {
	if lc.started != nil {
		lc.startMu.Do(func() { close(lc.started) })
	}
}

// drop removes the channel from the connection (after its close handshake or the home's close).
func (lc *linkChan) drop() {
	lc.c.mu.Lock()
	if lc.c.chans[lc.id] == lc {
		delete(lc.c.chans, lc.id)
	}
	lc.dropped.Store(true)
	lc.c.mu.Unlock()
}

// frame handles one frame of the channel, on the read loop.
func (lc *linkChan) frame(f amqp.Frame) error {
	switch f.Type {
	case amqp.FrameMethod:
		if lc.inMsg {
			return fmt.Errorf("channel %d: method frame inside a message", lc.id)
		}
		if d, ok := lc.scanDeliver(f.Payload); ok {
			lc.d = d
			lc.inMsg, lc.get = true, false
			return nil
		}
		m, err := amqp.DecodeMethod(f.Payload)
		if err != nil {
			return err
		}
		return lc.method(m)
	case amqp.FrameHeader:
		if !lc.inMsg || lc.hasHdr {
			return fmt.Errorf("channel %d: unexpected content header", lc.id)
		}
		if len(f.Payload) < 14 {
			return fmt.Errorf("channel %d: short content header", lc.id)
		}
		p := f.Payload
		size := uint64(p[4])<<56 | uint64(p[5])<<48 | uint64(p[6])<<40 | uint64(p[7])<<32 |
			uint64(p[8])<<24 | uint64(p[9])<<16 | uint64(p[10])<<8 | uint64(p[11])
		if size > broker.MaxMessageSize {
			return fmt.Errorf("channel %d: body of %d bytes", lc.id, size)
		}
		lc.hdr, lc.hasHdr, lc.bodySize = append(lc.hdr[:0], p...), true, int(size)
		if size == 0 {
			return lc.complete(nil)
		}
		return nil
	case amqp.FrameBody:
		n := len(lc.hdr)
		got := 0
		if lc.buf != nil {
			got = len(lc.buf) - n
		}
		if !lc.inMsg || !lc.hasHdr || got+len(f.Payload) > lc.bodySize {
			return fmt.Errorf("channel %d: unexpected body frame", lc.id)
		}
		switch {
		case lc.buf != nil:
			lc.buf = append(lc.buf, f.Payload...)
		case len(f.Payload) == lc.bodySize:
			// The whole body in one frame, the common case: handed on from the read buffer,
			// not copied (complete).
			return lc.complete(f.Payload)
		default:
			// The size is the home's claim: the buffer grows with the frames that arrive from
			// a first allocation of at most linkBodyPrealloc.
			lc.buf = make([]byte, n, n+min(lc.bodySize, linkBodyPrealloc))
			copy(lc.buf, lc.hdr)
			lc.buf = append(lc.buf, f.Payload...)
		}
		if len(lc.buf)-n == lc.bodySize {
			return lc.complete(lc.buf[n:])
		}
		return nil
	}
	return nil
}

// complete hands the message (lc.hdr and body) on: to the sink (a consumer's) or to the
// waiting Get. body may alias the read buffer (a body in one frame): the sink gets it as it is
// (broker.ProxySink.Deliver copies what it keeps; a delivery it writes to the client at once,
// the usual case, is copied only into the client's socket buffer), a Get a copy.
func (lc *linkChan) complete(body []byte) error {
	d := lc.d
	n := len(lc.hdr)
	d.Header, d.Body = lc.hdr[:n:n], body
	// lc.d is left as it is (the next basic.deliver or get-ok replaces all of it): it holds
	// only the tag, flags and the exchange and key strings kept in lastEx and lastKey anyway.
	lc.buf, lc.hasHdr, lc.inMsg = nil, false, false
	if lc.get {
		// The waiting Get keeps it: one allocation for header and body.
		buf := slices.Concat(lc.hdr, body)
		d.Header, d.Body = buf[:n:n], buf[n:]
		return lc.getResult(getResult{d: d, ok: true}, "basic.get-ok")
	}
	if lc.sink == nil {
		return nil
	}
	<-lc.started
	lc.mu.Lock()
	closing := lc.closing
	lc.mu.Unlock()
	if closing {
		return nil // the home requeues it when the channel.close arrives
	}
	lc.relaying.Store(true)
	taken := lc.sink.Deliver(d)
	lc.relaying.Store(false)
	if !taken {
		// The consumer is gone on this node: the message goes back to its place.
		lc.settle(broker.Requeue, d.Tag, false)
	}
	return nil
}

// getResult hands a basic.get's answer to the waiting Get without waiting: an answer nobody
// asked for (a consumer's channel has no getResults, a getter's holds at most the one
// asked) is the home's protocol error, which drops the connection rather than hang the read
// loop.
func (lc *linkChan) getResult(r getResult, name string) error {
	select {
	case lc.getResults <- r:
		return nil
	default:
		return fmt.Errorf("channel %d: unexpected %s", lc.id, name)
	}
}

// scanDeliver decodes basic.deliver in place; the exchange and routing key strings are those
// of the previous delivery while they repeat (no allocation).
func (lc *linkChan) scanDeliver(p []byte) (broker.ProxyDelivery, bool) {
	if len(p) < 5 || p[0] != 0 || p[1] != 60 || p[2] != 0 || p[3] != 60 {
		return broker.ProxyDelivery{}, false
	}
	i := 4
	n := int(p[i])
	i += 1 + n // consumer tag: this channel's own
	if i+9 > len(p) {
		return broker.ProxyDelivery{}, false
	}
	var d broker.ProxyDelivery
	for k := range 8 {
		d.Tag = d.Tag<<8 | uint64(p[i+k])
	}
	i += 8
	d.Redelivered = p[i]&1 != 0
	i++
	if i >= len(p) {
		return broker.ProxyDelivery{}, false
	}
	n = int(p[i])
	i++
	if i+n >= len(p) {
		return broker.ProxyDelivery{}, false
	}
	ex := p[i : i+n]
	i += n
	n = int(p[i])
	i++
	if i+n > len(p) {
		return broker.ProxyDelivery{}, false
	}
	key := p[i : i+n]
	if string(ex) != lc.lastEx {
		lc.lastEx = string(ex)
	}
	if string(key) != lc.lastKey {
		lc.lastKey = string(key)
	}
	d.Exchange, d.RoutingKey = lc.lastEx, lc.lastKey
	return d, true
}

// method handles a method of the home other than basic.deliver, on the read loop.
func (lc *linkChan) method(m amqp.Method) error {
	switch m := m.(type) {
	case *amqp.BasicGetOk:
		if lc.getResults == nil {
			return fmt.Errorf("channel %d: unexpected %s", lc.id, m.Name())
		}
		lc.d = broker.ProxyDelivery{Tag: m.DeliveryTag, Redelivered: m.Redelivered, Exchange: m.Exchange,
			RoutingKey: m.RoutingKey, MessageCount: m.MessageCount}
		lc.inMsg, lc.get = true, true
	case *amqp.BasicGetEmpty:
		return lc.getResult(getResult{}, m.Name())
	case *amqp.BasicCancel:
		// The home cancelled the consumer (its queue was deleted). What it delivered can still
		// be settled, so the channel stays until the client's channel lets it go.
		if lc.sink != nil && !lc.stopped.Swap(true) {
			go lc.sink.Ended(nil) // off the read loop: see proxyChannel.Close
		}
	case *amqp.ChannelClose:
		// closing is set with the close-ok written, under mu: no settlement, call or get goes
		// after it on a channel the home has ended. A close of ours that crossed the home's is
		// answered too (the spec, and the home's channel waits for the close-ok of its own close);
		// the home's close-ok for ours then arrives on a dropped channel and is ignored.
		lc.mu.Lock()
		lc.closing = true
		_ = lc.c.write(lc.id, &amqp.ChannelCloseOk{})
		lc.mu.Unlock()
		lc.drop()
		text := m.ReplyText
		if name, rest, ok := strings.Cut(text, " - "); ok && name == strings.ToUpper(name) && !strings.Contains(name, " ") {
			text = rest // the name is added again when the client's error is sent
		}
		lc.end(&homeError{code: m.ReplyCode, text: text}, amqp.Errorf(m.ReplyCode, "%s", text))
	case *amqp.ChannelCloseOk:
		lc.drop()
		lc.end(errLinkClosed, nil)
	default:
		if _, ok := m.(*amqp.BasicConsumeOk); ok {
			// The consumer exists from here: its deliveries follow, and a channel.close of the
			// home now ends it (Ended). One before it (a 404 of a queue the home does not know
			// yet) is the consume's error only: the client's node may ask again
			// (server's whileHomeLags) on a channel it has not closed.
			lc.mu.Lock()
			if lc.pending != nil {
				lc.sink, lc.pending = lc.pending, nil
			}
			lc.mu.Unlock()
		}
		select {
		case lc.reply <- m:
		default:
			return fmt.Errorf("channel %d: unexpected %s", lc.id, m.Name())
		}
	}
	return nil
}

// settle writes an ack, reject or requeue unless the channel is closing.
func (lc *linkChan) settle(kind broker.Settlement, tag uint64, multiple bool) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.closing {
		return
	}
	switch kind {
	case broker.Ack:
		_ = lc.c.writeAck(lc.id, false, tag, multiple, false)
	case broker.Reject:
		_ = lc.c.writeAck(lc.id, true, tag, multiple, false)
	default:
		_ = lc.c.writeAck(lc.id, true, tag, multiple, true)
	}
}

// written records that the delivery tag of a no-ack consumer reached the client: acked now
// when a batch is complete or the read loop is not relaying (it will not flush), else when it
// is idle.
func (lc *linkChan) written(tag uint64) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.closing || !lc.credit {
		return
	}
	// Deliveries are written in the order they arrived (the sink keeps each consumer's order),
	// so one multiple ack covers every earlier one.
	lc.ackTag = max(lc.ackTag, tag)
	lc.ackPending++
	if lc.ackPending >= noAckAckBatch || !lc.relaying.Load() {
		lc.flushAckLocked()
		return
	}
	if !lc.dirty {
		lc.dirty = true
		lc.c.dirtyMu.Lock()
		lc.c.dirty = append(lc.c.dirty, lc)
		lc.c.dirtyMu.Unlock()
	}
}

// flushAckLocked sends the pending acks of a no-ack consumer; call with mu held.
func (lc *linkChan) flushAckLocked() {
	if lc.ackPending == 0 || lc.closing {
		return
	}
	_ = lc.c.writeAck(lc.id, false, lc.ackTag, true, false)
	lc.ackPending = 0
}

// closeAsync sends channel.close (once); the read loop drops the channel at the close-ok.
func (lc *linkChan) closeAsync() {
	lc.mu.Lock()
	if lc.closing {
		lc.mu.Unlock()
		return
	}
	// What the client got is acked first, or the close would requeue it for a second delivery.
	lc.flushAckLocked()
	lc.closing = true
	err := lc.c.write(lc.id, &amqp.ChannelClose{ReplyCode: amqp.ReplySuccess, ReplyText: "closed"})
	lc.mu.Unlock()
	lc.release()
	if err != nil {
		lc.drop()
		lc.end(err, nil) // no close-ok will come: Close does not wait for one
	}
}

// --- broker.ProxyChannel and broker.ProxyGetter

// proxyChannel is one link channel of a proxied consumer or getter.
type proxyChannel struct {
	p  *peer
	lc *linkChan
}

// Start implements broker.ProxyChannel.
func (pc *proxyChannel) Start() { pc.lc.release() }

// Settle implements broker.ProxyChannel.
func (pc *proxyChannel) Settle(kind broker.Settlement, tag uint64, multiple bool) {
	pc.lc.settle(kind, tag, multiple)
	// Counted once written: a forward that syncAcks covers comes after it (see peer).
	pc.p.acksSent.Add(1)
}

// Written implements broker.ProxyChannel.
func (pc *proxyChannel) Written(tag uint64) { pc.lc.written(tag) }

// Cancel implements broker.ProxyChannel. It waits (bounded) for the home's cancel-ok: the read
// loop has then passed on what the home delivered before it, so the client gets those before
// its own cancel-ok, as from a local queue, and nothing is delivered after it.
func (pc *proxyChannel) Cancel() {
	lc := pc.lc
	if lc.stopped.Swap(true) {
		// Cancelled by the home already: nothing to cancel there.
		return
	}
	_, _ = lc.call(&amqp.BasicCancel{ConsumerTag: lc.tag}, "basic.cancel-ok")
}

// Close implements broker.ProxyChannel. It waits (bounded, as call) for the home's close-ok:
// the home has then requeued what was unsettled on the link channel, so once the client has
// its own channel.close-ok those messages are back in their queue, as RabbitMQ promises, for
// a basic.get or consume that comes next on any connection of any node. (Not waiting let a
// client's get on another link channel, or through another node, reach the home first and
// find the queue empty.) The read loop never calls it: the sinks' Ended, which may close
// other link channels, runs on a goroutine of its own (end), and Deliver closes none.
func (pc *proxyChannel) Close() {
	lc := pc.lc
	lc.stopped.Store(true)
	lc.closeAsync()
	t := time.NewTimer(lc.timeout)
	defer t.Stop()
	select {
	case <-lc.gone: // the home's close-ok (or its own close, or the connection's end)
	case <-lc.c.done: // the connection ended: the home requeues everything of it
	case <-t.C:
		lc.c.close() // as a call's timeout: the home requeues when the connection goes
	}
}

// Get implements broker.ProxyGetter.
func (pc *proxyChannel) Get(queueName string, noAck bool) (broker.ProxyDelivery, bool, *amqp.Error) {
	pc.p.barrier()
	lc := pc.lc
	lc.callMu.Lock()
	defer lc.callMu.Unlock()
	lc.mu.Lock()
	err := lc.err
	if err == nil && lc.closing {
		err = errLinkClosed
	}
	if err == nil {
		err = lc.c.write(lc.id, &amqp.BasicGet{Queue: queueName, NoAck: noAck})
	}
	lc.mu.Unlock()
	if err == nil {
		t := time.NewTimer(lc.timeout)
		defer t.Stop()
		select {
		case r := <-lc.getResults:
			return r.d, r.ok, nil
		case <-lc.gone:
			lc.mu.Lock()
			err = lc.err
			lc.mu.Unlock()
		case <-t.C:
			lc.c.close()
			err = errLinkTimeout
		}
	}
	pc.Close()
	return broker.ProxyDelivery{}, false, linkError(pc.p.node, err)
}

// linkError turns an error of the link into the client's: the home node's channel error
// (its code and text) as it is, anything else (unreachable, timed out) RabbitMQ's 541.
func linkError(node string, err error) *amqp.Error {
	var he *homeError
	if errors.As(err, &he) {
		return amqp.Errorf(he.code, "%s", he.text)
	}
	return amqp.Errorf(amqp.InternalError, "cluster: queue's node %s not reachable: %v", node, err)
}

// isClosing reports whether the channel is closing or gone.
func (lc *linkChan) isClosing() bool {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.closing
}
