package cluster

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/queue"
)

// The data link: messages and deliveries between nodes, apart from Raft. Each node opens AMQP
// 0-9-1 connections (amqp091-go as the client) to the AMQP listeners of the other nodes, one per
// (node, vhost), logged in with broker.LinkMechanism. Over them it forwards the publishes of its
// clients to the home nodes of their queues (Forward), and proxies its clients' consumers and
// basic.get of queues homed elsewhere (Consume, Getter): the home node's queue does everything,
// this node relays.

// LinkConfig is what a Link needs.
type LinkConfig struct {
	// Cluster and Node are cluster.name and this node's cluster.node_name; Secret is
	// cluster.secret. The link login proves knowledge of the secret (see LinkAuth).
	Cluster, Node, Secret string
	// TLS is the cluster's mutual TLS (cluster.tls, LoadTLS), nil for none: link connections
	// then go over TLS with it, and the link login is taken only over it.
	TLS *tls.Config
	// Addr returns the AMQP address of a node ("" while unknown).
	Addr func(node string) string
	// Logger receives the link's diagnostics; nil means slog.Default().
	Logger *slog.Logger
	// Timeout bounds every wait of a client's goroutine on the link: room in a forward queue,
	// connecting, a proxied consume, get or cancel. 0 means DefaultLinkTimeout.
	Timeout time.Duration
	// Heartbeat of the link connections: a peer that stops answering is found dead after about
	// three of them. 0 means DefaultLinkHeartbeat.
	Heartbeat time.Duration
}

// DefaultLinkTimeout is LinkConfig.Timeout's default.
const DefaultLinkTimeout = 5 * time.Second

// DefaultLinkHeartbeat is LinkConfig.Heartbeat's default.
const DefaultLinkHeartbeat = 2 * time.Second

// forwardQueueLen bounds the messages waiting to be forwarded to one (node, vhost). A publisher
// finding it full waits (back-pressure, as flow control on one node) up to forwardWaitMax,
// then gets a nack. A dead peer frees the queue long before: its connection's loss (at most
// about three heartbeats) fails what waits.
const forwardQueueLen = 4096

// forwardWaitMax bounds a publisher's wait for room in a forward queue.
const forwardWaitMax = 30 * time.Second

// redialAfter is how long a peer that could not be reached is not dialled again: meanwhile
// forwards to it fail at once (a nack) instead of each waiting for a connect timeout.
const redialAfter = time.Second

// Link is this node's data link to the other nodes; it implements broker.Forwarder,
// broker.Proxy and (LinkAuth) the check of the other nodes' logins.
type Link struct {
	cfg  LinkConfig
	log  *slog.Logger
	auth *LinkAuth
	stop chan struct{}
	b    *broker.Broker // set by Install: its TopologyIndex goes with each forward

	mu     sync.Mutex
	peers  map[peerKey]*peer
	closed bool
}

type peerKey struct{ node, vhost string }

// NewLink returns the link of node cfg.Node. It connects lazily, on first use of each peer.
func NewLink(cfg LinkConfig) *Link {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultLinkTimeout
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = DefaultLinkHeartbeat
	}
	return &Link{cfg: cfg, log: cfg.Logger, auth: NewLinkAuth(cfg.Cluster, cfg.Node, cfg.Secret, cfg.TLS), stop: make(chan struct{}),
		peers: map[peerKey]*peer{}}
}

// Auth is the check of the other nodes' link logins, for broker.SetLinkAuth.
func (l *Link) Auth() *LinkAuth { return l.auth }

// Install makes b use the link: forwarding, proxying and the link login.
func (l *Link) Install(b *broker.Broker) {
	l.b = b
	b.SetForwarder(l)
	b.SetProxy(l)
	b.SetLinkAuth(l.auth)
}

// Close closes every link connection; forwards waiting are failed.
func (l *Link) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	close(l.stop)
	peers := l.peers
	l.peers = map[peerKey]*peer{}
	l.mu.Unlock()
	for _, p := range peers {
		p.drop(nil)
	}
}

var (
	errLinkClosed  = errors.New("cluster link closed")
	errLinkTimeout = errors.New("cluster link: timed out")
)

func (l *Link) peer(node, vhost string) (*peer, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errLinkClosed
	}
	k := peerKey{node, vhost}
	p := l.peers[k]
	if p == nil {
		p = &peer{l: l, node: node, vhost: vhost, fwd: make(chan fwdItem, forwardQueueLen)}
		l.peers[k] = p
		go p.sendLoop()
	}
	return p, nil
}

// peer is the link to one node for one vhost: two connections (redialled after a loss), the
// forward queue and its sender goroutine. Forwards go on one connection, proxied consumers,
// gets and their acks on the other: the home reads each connection with one goroutine, and
// acks queued behind a backlog of forwarded messages would hold every proxied consumer to a
// crawl (RabbitMQ advises clients to separate publishing and consuming connections for the
// same reason). Order across the two is restored where a client can see it: a forward waits
// until the settlements made before its publish was received are processed (syncAcks), and a
// proxied get, consume or count waits until the forwards queued before it are confirmed
// (barrier). At most forwardWindow forwards are unconfirmed at a time.
type peer struct {
	l           *Link
	node, vhost string
	fwd         chan fwdItem

	// queued counts the forwards queued, completed those whose outcome is known (confirmed,
	// nacked or failed: in queue order), for barrier.
	queued, completed atomic.Uint64
	waitMu            sync.Mutex
	waiters           []barrierWaiter

	// acksSent counts the settlements sent on the proxy connection; acksSynced is the count
	// the last syncAcks covered (sender goroutine only).
	acksSent   atomic.Uint64
	acksSynced uint64
	syncCh     *amqp091.Channel // the proxy connection's channel for syncAcks (sender only)

	mu       sync.Mutex
	conns    [2]*amqp091.Connection // connProxy only: forwards use pub
	pub      *pubConn               // the forwarding connection (sender goroutine's)
	failedAt time.Time
	lastErr  error
}

// The two connections of a peer (see peer).
const (
	connPub   = 0
	connProxy = 1
)

// forwardWindow bounds the forwards published to a peer and not yet confirmed.
const forwardWindow = 512

type barrierWaiter struct {
	target uint64
	ch     chan struct{}
}

// complete records the outcome of one forward and wakes the barriers it satisfies.
func (p *peer) complete() {
	n := p.completed.Add(1)
	p.waitMu.Lock()
	kept := p.waiters[:0]
	for _, w := range p.waiters {
		if w.target <= n {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	p.waiters = kept
	p.waitMu.Unlock()
}

// connect returns the peer's connection, dialling it when there is none (bounded by the
// timeout; a peer that failed is not dialled again for redialAfter). The socket batches
// writes (coalescingConn).
func (p *peer) connect(kind int) (*amqp091.Connection, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.conns[kind]; c != nil && !c.IsClosed() {
		return c, nil
	}
	p.conns[kind] = nil
	if time.Since(p.failedAt) < redialAfter {
		return nil, p.lastErr
	}
	addr := p.l.cfg.Addr(p.node)
	if addr == "" {
		p.failedAt, p.lastErr = time.Now(), fmt.Errorf("cluster link: AMQP address of node %s not known yet", p.node)
		return nil, p.lastErr
	}
	login := p.l.auth.login(p.node)
	cfg := amqp091.Config{
		SASL:      []amqp091.Authentication{login},
		Vhost:     p.vhost,
		Heartbeat: p.l.cfg.Heartbeat,
		Locale:    "en_US",
		Dial:      proxyDial(p.l.cfg.TLS, p.l.cfg.Timeout, login),
		Properties: amqp091.Table{"connection_name": "warren-link " + p.l.cfg.Node + " -> " + p.node,
			"capabilities": amqp091.Table{"consumer_cancel_notify": true, "publisher_confirms": true}},
	}
	c, err := amqp091.DialConfig("amqp://"+addr+"/", cfg)
	if err != nil {
		p.failedAt, p.lastErr = time.Now(), fmt.Errorf("cluster link to node %s (%s): %w", p.node, addr, err)
		p.l.log.Warn("cluster: link connection failed", "node", p.node, "vhost", p.vhost, "err", err)
		return nil, p.lastErr
	}
	p.conns[kind] = c
	return c, nil
}

// drop closes c (the peer's connections when nil), e.g. after a wait on it timed out.
func (p *peer) drop(c *amqp091.Connection) {
	var gone []*amqp091.Connection
	p.mu.Lock()
	for i, pc := range p.conns {
		if pc != nil && (c == nil || c == pc) {
			gone = append(gone, pc)
			p.conns[i] = nil
		}
	}
	var pub *pubConn
	if c == nil {
		pub, p.pub = p.pub, nil
	}
	p.mu.Unlock()
	for _, c := range gone {
		go func() { _ = c.Close() }()
	}
	if pub != nil {
		pub.close()
	}
}

// syncAcks waits (bounded) until the home has processed every settlement sent on the proxy
// connection before count acks: a basic.qos round trip on that connection, which the home
// answers after the frames before it. Sender goroutine only.
func (p *peer) syncAcks(acks uint64) {
	if acks <= p.acksSynced {
		return
	}
	target := p.acksSent.Load()
	c, err := p.connect(connProxy)
	if err == nil {
		err = p.within(c, func() error {
			if p.syncCh == nil || p.syncCh.IsClosed() {
				ch, err := c.Channel()
				if err != nil {
					return err
				}
				p.syncCh = ch
			}
			return p.syncCh.Qos(0, 0, false)
		})
	}
	if err != nil {
		// The proxy connection is gone, and the home requeued what it had: nothing to order.
		p.syncCh = nil
	}
	p.acksSynced = target
}

// within runs f, a call that waits for the peer, giving up after the timeout: then the
// connection is dropped, which ends f (and every other wait on that connection) with an error.
func (p *peer) within(c *amqp091.Connection, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	t := time.NewTimer(p.l.cfg.Timeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		p.l.log.Warn("cluster: link peer not answering, reconnecting", "node", p.node, "vhost", p.vhost)
		p.drop(c)
		return errLinkTimeout
	}
}

// --- forwarding

type fwdItem struct {
	acks       uint64 // the peer's acksSent when the publish was received (syncAcks)
	queues     []string
	msg        *queue.Message
	done       func(error)
	persistent bool
}

func (it fwdItem) finish(err error) {
	if it.done != nil {
		it.done(err)
	}
}

// Forward implements broker.Forwarder: msg joins the bounded queue of (home, vhost), whose
// sender goroutine publishes it on the link with confirms.
func (l *Link) Forward(home, vhost string, queues []string, msg *queue.Message, done func(error)) {
	p, err := l.peer(home, vhost)
	if err != nil {
		if done != nil {
			done(err)
		}
		return
	}
	p.queued.Add(1)
	it := fwdItem{acks: p.acksSent.Load(), queues: queues, msg: msg, persistent: msg.Persistent, done: func(err error) {
		if done != nil {
			done(err)
		}
		p.complete()
	}}
	select {
	case p.fwd <- it:
		return
	default:
	}
	t := time.NewTimer(forwardWaitMax)
	defer t.Stop()
	select {
	case p.fwd <- it:
	case <-t.C:
		it.finish(fmt.Errorf("cluster link to node %s: forward queue full: %w", home, errLinkTimeout))
	case <-l.stop:
		it.finish(errLinkClosed)
	}
}

// barrier waits (bounded) until every forward queued to the peer so far has its outcome: the
// home node has them in their queues, so a proxied get, consume or count sent afterwards sees
// them, as a client's get after its publish does on one node (and on RabbitMQ).
func (p *peer) barrier() {
	target := p.queued.Load()
	if p.completed.Load() >= target {
		return
	}
	w := barrierWaiter{target: target, ch: make(chan struct{})}
	p.waitMu.Lock()
	if p.completed.Load() >= target {
		p.waitMu.Unlock()
		return
	}
	p.waiters = append(p.waiters, w)
	p.waitMu.Unlock()
	t := time.NewTimer(p.l.cfg.Timeout)
	defer t.Stop()
	select {
	case <-w.ch:
	case <-t.C:
	}
}

// sendLoop publishes the peer's forwards in order, on its forwarding connection (dialled
// again after a loss), one goroutine per peer.
func (p *peer) sendLoop() {
	var pc *pubConn
	for {
		select {
		case it := <-p.fwd:
			pc = p.send(pc, it)
		case <-p.l.stop:
			if pc != nil {
				pc.close()
			}
			p.failQueued(errLinkClosed)
			return
		}
	}
}

// send publishes one forward on pc (dialled first when there is none) and returns the
// connection to use for the next one (nil once it broke).
func (p *peer) send(pc *pubConn, it fwdItem) *pubConn {
	if pc == nil || pc.dead() {
		var err error
		if pc, err = p.dialPublisher(); err != nil {
			it.finish(err)
			p.failQueued(err) // a peer down: every waiting forward is nacked now
			return nil
		}
	}
	p.syncAcks(it.acks)
	if queued, err := pc.publish(it, p.l.topologyIndex(), len(p.fwd) > 0); err != nil {
		// The connection is broken: what is unconfirmed on it (this one too) fails.
		if !errors.Is(err, errLinkClosed) {
			err = fmt.Errorf("cluster link to node %s: %w", p.node, err)
		}
		if !queued {
			it.finish(err)
		}
		pc.confirms.kill(err)
		pc.close()
		return nil
	}
	return pc
}

// failQueued fails the forwards waiting in the queue now (not those arriving later).
func (p *peer) failQueued(err error) {
	for {
		select {
		case it := <-p.fwd:
			it.finish(err)
		default:
			return
		}
	}
}

// dialPublisher dials the peer's forwarding connection (pubConn); a peer that failed is not
// dialled again for redialAfter.
func (p *peer) dialPublisher() (*pubConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pub != nil {
		p.pub.close()
		p.pub = nil
	}
	if time.Since(p.failedAt) < redialAfter {
		return nil, p.lastErr
	}
	addr := p.l.cfg.Addr(p.node)
	if addr == "" {
		p.failedAt, p.lastErr = time.Now(), fmt.Errorf("cluster link: AMQP address of node %s not known yet", p.node)
		return nil, p.lastErr
	}
	pc, err := dialPub(addr, p.vhost, "warren-link "+p.l.cfg.Node+" -> "+p.node, p.l.auth.login(p.node),
		p.l.cfg.TLS, p.l.cfg.Heartbeat, p.l.cfg.Timeout)
	if err != nil {
		p.failedAt, p.lastErr = time.Now(), fmt.Errorf("cluster link to node %s (%s): %w", p.node, addr, err)
		p.l.log.Warn("cluster: link connection failed", "node", p.node, "vhost", p.vhost, "err", err)
		return nil, p.lastErr
	}
	p.pub = pc
	return pc, nil
}

// --- proxied consumers and basic.get

// linkError turns an error of the link into the client's: the home node's channel error
// (its code and text) as it is, anything else (unreachable, timed out) RabbitMQ's 541.
func linkError(node string, err error) *amqp.Error {
	var ae *amqp091.Error
	if errors.As(err, &ae) && ae.Server && ae.Recover {
		// The reason arrives as the home wrote it, "NAME - text"; the client's error gets
		// the text, to which the name is added again when it is sent.
		text := ae.Reason
		if name, rest, ok := strings.Cut(text, " - "); ok && name == strings.ToUpper(name) && !strings.Contains(name, " ") {
			text = rest
		}
		return amqp.Errorf(uint16(ae.Code), "%s", text)
	}
	return amqp.Errorf(amqp.InternalError, "cluster: queue's node %s not reachable: %v", node, err)
}

// Consume implements broker.Proxy.
func (l *Link) Consume(home, vhost, queueName string, o broker.ProxyConsume, sink broker.ProxySink) (broker.ProxyChannel, *amqp.Error) {
	p, err := l.peer(home, vhost)
	if err != nil {
		return nil, linkError(home, err)
	}
	p.barrier()
	c, err := p.connect(connProxy)
	if err != nil {
		return nil, linkError(home, err)
	}
	var ch *amqp091.Channel
	var deliveries <-chan amqp091.Delivery
	err = p.within(c, func() error {
		var err error
		if ch, err = c.Channel(); err != nil {
			return err
		}
		if o.ChannelPrefetch > 0 {
			if err := ch.Qos(o.ChannelPrefetch, 0, true); err != nil {
				return err
			}
		}
		if o.Prefetch > 0 {
			if err := ch.Qos(o.Prefetch, 0, false); err != nil {
				return err
			}
		}
		deliveries, err = ch.Consume(queueName, o.Tag, o.NoAck, o.Exclusive, false, false, toTable091(o.Args))
		return err
	})
	if err != nil {
		return nil, linkError(home, err)
	}
	return &proxyChannel{p: p, c: c, ch: ch, tag: o.Tag, noAck: o.NoAck, deliveries: deliveries, sink: sink,
		closes: ch.NotifyClose(make(chan *amqp091.Error, 1))}, nil
}

// Getter implements broker.Proxy.
func (l *Link) Getter(home, vhost string) (broker.ProxyGetter, *amqp.Error) {
	p, err := l.peer(home, vhost)
	if err != nil {
		return nil, linkError(home, err)
	}
	c, err := p.connect(connProxy)
	if err != nil {
		return nil, linkError(home, err)
	}
	var ch *amqp091.Channel
	err = p.within(c, func() error {
		var err error
		ch, err = c.Channel()
		return err
	})
	if err != nil {
		return nil, linkError(home, err)
	}
	return &proxyChannel{p: p, c: c, ch: ch}, nil
}

// proxyChannel is one link channel of a proxied consumer or getter.
type proxyChannel struct {
	p *peer
	// c is the proxy connection ch is on: a wait on ch that times out drops only c, not the
	// peer's forwarding connection (its in-flight forwards would be nacked for nothing).
	c          *amqp091.Connection
	ch         *amqp091.Channel
	tag        string
	noAck      bool
	deliveries <-chan amqp091.Delivery
	closes     chan *amqp091.Error
	sink       broker.ProxySink
	relayDone  chan struct{} // closed when the relay goroutine ends (Start)
	// stopped: Cancel or Close was called, so the end of the deliveries is not news.
	stopped atomic.Bool
	// mu orders settlements before the channel.close: a frame on a channel the home has
	// closed is a connection error there, which would end every other use of the link.
	mu     sync.Mutex
	closed bool
}

// send runs f, which writes a frame on the channel, unless the channel is closing.
func (pc *proxyChannel) send(f func() error) error {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.closed {
		return amqp091.ErrClosed
	}
	return f()
}

// Start implements broker.ProxyChannel: the relay goroutine of the consumer.
func (pc *proxyChannel) Start() {
	if pc.deliveries == nil {
		return
	}
	pc.relayDone = make(chan struct{})
	go func() {
		defer close(pc.relayDone)
		for d := range pc.deliveries {
			if !pc.sink.Deliver(fromDelivery(d)) && !pc.noAck {
				// The consumer is gone on this node: the message goes back to its place.
				_ = pc.send(func() error { return pc.ch.Nack(d.DeliveryTag, false, true) })
			}
		}
		if pc.stopped.Load() {
			return
		}
		var err *amqp.Error
		select {
		case e := <-pc.closes: // sent before the deliveries end
			if e != nil && e.Server && e.Recover {
				err = linkError(pc.p.node, e)
			}
		default:
		}
		pc.sink.Ended(err)
	}()
}

// Settle implements broker.ProxyChannel.
func (pc *proxyChannel) Settle(kind broker.Settlement, tag uint64, multiple bool) {
	// Counted once written: a forward that syncAcks covers comes after it (see peer).
	defer pc.p.acksSent.Add(1)
	err := pc.send(func() error {
		switch kind {
		case broker.Ack:
			return pc.ch.Ack(tag, multiple)
		case broker.Reject:
			return pc.ch.Nack(tag, multiple, false)
		default:
			return pc.ch.Nack(tag, multiple, true)
		}
	})
	if err != nil && !errors.Is(err, amqp091.ErrClosed) {
		pc.p.l.log.Debug("cluster: settling a proxied delivery", "node", pc.p.node, "err", err)
	}
}

// Cancel implements broker.ProxyChannel. It waits (bounded) for the home's cancel-ok and for
// the relay to pass on what the home delivered before it, so that the client gets those
// before its own cancel-ok, as from a local queue, and nothing is delivered after it.
func (pc *proxyChannel) Cancel() {
	pc.stopped.Store(true)
	_ = pc.p.within(pc.c, func() error { return pc.send(func() error { return pc.ch.Cancel(pc.tag, false) }) })
	if pc.relayDone == nil {
		return
	}
	t := time.NewTimer(pc.p.l.cfg.Timeout)
	defer t.Stop()
	select {
	case <-pc.relayDone:
	case <-t.C:
	}
}

// Close implements broker.ProxyChannel. Not waited for either: the home requeues what is
// unsettled when the channel.close arrives (or the connection goes).
func (pc *proxyChannel) Close() {
	pc.stopped.Store(true)
	pc.mu.Lock()
	pc.closed = true
	pc.mu.Unlock()
	go func() { _ = pc.ch.Close() }()
}

// Get implements broker.ProxyGetter.
func (pc *proxyChannel) Get(queueName string, noAck bool) (broker.ProxyDelivery, bool, *amqp.Error) {
	var d amqp091.Delivery
	var ok bool
	pc.p.barrier()
	err := pc.p.within(pc.c, func() error {
		var err error
		d, ok, err = pc.ch.Get(queueName, noAck)
		return err
	})
	if err != nil {
		pc.Close()
		return broker.ProxyDelivery{}, false, linkError(pc.p.node, err)
	}
	if !ok {
		return broker.ProxyDelivery{}, false, nil
	}
	return fromDelivery(d), true, nil
}

// fromDelivery is a delivery of the home node as this node relays it: the content header is
// encoded again from the properties amqp091-go decoded.
func fromDelivery(d amqp091.Delivery) broker.ProxyDelivery {
	props := amqp.Properties{ContentType: d.ContentType, ContentEncoding: d.ContentEncoding, Headers: fromTable091(d.Headers),
		DeliveryMode: d.DeliveryMode, Priority: d.Priority, CorrelationID: d.CorrelationId, ReplyTo: d.ReplyTo,
		Expiration: d.Expiration, MessageID: d.MessageId, Timestamp: d.Timestamp, Type: d.Type, UserID: d.UserId, AppID: d.AppId}
	return broker.ProxyDelivery{Tag: d.DeliveryTag, Redelivered: d.Redelivered, Exchange: d.Exchange, RoutingKey: d.RoutingKey,
		Header: amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(d.Body)), &props), Body: d.Body, MessageCount: d.MessageCount}
}

func toTable091(t amqp.Table) amqp091.Table {
	if t == nil {
		return nil
	}
	out := make(amqp091.Table, len(t))
	for k, v := range t {
		out[k] = toValue091(v)
	}
	return out
}

func toValue091(v any) any {
	switch v := v.(type) {
	case amqp.Table:
		return toTable091(v)
	case map[string]any:
		return toTable091(amqp.Table(v))
	case amqp.Decimal:
		return amqp091.Decimal{Scale: v.Scale, Value: v.Value}
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = toValue091(x)
		}
		return out
	case int:
		return int64(v)
	}
	return v
}

func fromTable091(t amqp091.Table) amqp.Table {
	if t == nil {
		return nil
	}
	out := make(amqp.Table, len(t))
	for k, v := range t {
		out[k] = fromValue091(v)
	}
	return out
}

func fromValue091(v any) any {
	switch v := v.(type) {
	case amqp091.Table:
		return fromTable091(v)
	case amqp091.Decimal:
		return amqp.Decimal{Scale: v.Scale, Value: v.Value}
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = fromValue091(x)
		}
		return out
	}
	return v
}

// --- the link login

// LinkAuth is the login of link connections (broker.LinkMechanism), a challenge-response:
// start-ok's response is the connecting node's name, the server sends a fresh random
// challenge in connection.secure, and the client answers in secure-ok with an HMAC-SHA256,
// keyed with the cluster's name and secret, of (cluster name, challenge, client node, server
// node). The secret never crosses the wire; a captured login is worthless, since the next
// login gets another challenge; an answer for one server node is refused by the others, and
// a cluster of another name refuses it even with the same secret. (A man in the middle can
// still relay a whole login: cluster.tls, which wraps the links in mutual TLS, rules that out.)
type LinkAuth struct {
	cluster, node string
	key           []byte
	tls           *tls.Config
}

// linkLoginVersion starts every MAC input, so that no other use of the key can produce one.
const linkLoginVersion = "warren-link-v2"

// NewLinkAuth returns the link login of node in cluster, with the cluster's secret. tlsCfg is
// the cluster's mutual TLS (cluster.tls, LoadTLS) that link connections use, nil for none.
func NewLinkAuth(cluster, node, secret string, tlsCfg *tls.Config) *LinkAuth {
	return &LinkAuth{cluster: cluster, node: node, key: []byte(cluster + "\x00" + secret), tls: tlsCfg}
}

// answer is client's answer to challenge from server: each field length-prefixed, so that no
// two different logins give the same MAC input.
func (a *LinkAuth) answer(challenge, client, server string) string {
	m := hmac.New(sha256.New, a.key)
	var n [4]byte
	for _, f := range []string{linkLoginVersion, a.cluster, challenge, client, server} {
		binary.BigEndian.PutUint32(n[:], uint32(len(f)))
		m.Write(n[:])
		m.Write([]byte(f))
	}
	return hex.EncodeToString(m.Sum(nil))
}

// linkChallengeLen is the challenge's random bytes: 256 bits never repeat.
const linkChallengeLen = 32

// LinkChallenge implements broker.LinkAuth: 32 random bytes, hex-encoded.
func (a *LinkAuth) LinkChallenge() string {
	var b [linkChallengeLen]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24 and later)
	return hex.EncodeToString(b[:])
}

// VerifyLink implements broker.LinkAuth: response must be node's answer to challenge for this
// node, compared in constant time.
func (a *LinkAuth) VerifyLink(node, challenge, response string) bool {
	if node == "" || len(challenge) != 2*linkChallengeLen {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(response), []byte(a.answer(challenge, node, a.node))) == 1
}

// LinkTLS implements broker.LinkAuth.
func (a *LinkAuth) LinkTLS() *tls.Config { return a.tls }

// login is this node's side of a link login to server.
func (a *LinkAuth) login(server string) linkLogin { return linkLogin{a: a, server: server} }

// linkLogin is one node's link login to one server node. As an amqp091.Authentication it gives
// start-ok's response; the challenge, which amqp091-go cannot answer, is answered by the
// connection it dials (loginConn).
type linkLogin struct {
	a      *LinkAuth
	server string
}

func (l linkLogin) Mechanism() string { return broker.LinkMechanism }
func (l linkLogin) Response() string  { return l.a.node }

// answer is secure-ok's response to the server's challenge.
func (l linkLogin) answer(challenge string) string { return l.a.answer(challenge, l.a.node, l.server) }

// amqpAddrFor is the address to dial for a node's AMQP listener: its reported listener address,
// with the host of its cluster address when it listens on every interface.
func amqpAddrFor(reported, clusterAddr string) string {
	host, port, err := net.SplitHostPort(reported)
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		chost, _, err := net.SplitHostPort(clusterAddr)
		if err != nil {
			return ""
		}
		host = chost
	}
	return net.JoinHostPort(host, port)
}

// Counts implements broker.Proxy: a passive queue.declare on the home, on a channel of its own
// (a missing queue closes it).
func (l *Link) Counts(home, vhost, queueName string) (int, int, *amqp.Error) {
	var st amqp091.Queue
	err := l.onChannel(home, vhost, func(ch *amqp091.Channel) error {
		var err error
		st, err = ch.QueueDeclarePassive(queueName, false, false, false, false, nil)
		return err
	})
	return st.Messages, st.Consumers, err
}

// Purge implements broker.Proxy.
func (l *Link) Purge(home, vhost, queueName string) (int, *amqp.Error) {
	var n int
	err := l.onChannel(home, vhost, func(ch *amqp091.Channel) error {
		var err error
		n, err = ch.QueuePurge(queueName, false)
		return err
	})
	return n, err
}

// onChannel runs f on a new link channel to home (after the forwards queued so far), bounded
// by the timeout, and closes the channel.
func (l *Link) onChannel(home, vhost string, f func(*amqp091.Channel) error) *amqp.Error {
	p, err := l.peer(home, vhost)
	if err != nil {
		return linkError(home, err)
	}
	p.barrier()
	c, err := p.connect(connProxy)
	if err != nil {
		return linkError(home, err)
	}
	err = p.within(c, func() error {
		ch, err := c.Channel()
		if err != nil {
			return err
		}
		defer func() { go func() { _ = ch.Close() }() }()
		return f(ch)
	})
	if err != nil {
		return linkError(home, err)
	}
	return nil
}

// topologyIndex is the metadata log index the link's broker has applied (0 before Install).
func (l *Link) topologyIndex() uint64 {
	if l.b == nil {
		return 0
	}
	return l.b.TopologyIndex()
}
