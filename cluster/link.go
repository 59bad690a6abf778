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

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/queue"
)

// The data link: messages and deliveries between nodes, apart from Raft. Each node opens AMQP
// 0-9-1 connections (lean clients on Warren's amqp codec: linkpub.go, linkcons.go) to the AMQP
// listeners of the other nodes, two per (node, vhost), logged in with broker.LinkMechanism. Over them it forwards the publishes of its
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
		p.drop()
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
	syncCh     *linkChan // the proxy connection's channel for syncAcks (sender only)

	mu       sync.Mutex
	proxy    *proxyConn // the proxy connection (linkcons.go)
	pub      *pubConn   // the forwarding connection (sender goroutine's)
	failedAt time.Time
	lastErr  error
}

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

// connect returns the peer's proxy connection, dialling it when there is none (bounded by the
// timeout; a peer that failed is not dialled again for redialAfter).
func (p *peer) connect() (*proxyConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.proxy; c != nil && !c.isDead() && !c.closing.Load() {
		return c, nil
	}
	p.proxy = nil
	if time.Since(p.failedAt) < redialAfter {
		return nil, p.lastErr
	}
	addr := p.l.cfg.Addr(p.node)
	if addr == "" {
		p.failedAt, p.lastErr = time.Now(), fmt.Errorf("cluster link: AMQP address of node %s not known yet", p.node)
		return nil, p.lastErr
	}
	c, err := dialProxy(addr, p.vhost, "warren-link "+p.l.cfg.Node+" -> "+p.node, p.l.auth.login(p.node),
		p.l.cfg.TLS, p.l.cfg.Heartbeat, p.l.cfg.Timeout, p.node)
	if err != nil {
		p.failedAt, p.lastErr = time.Now(), fmt.Errorf("cluster link to node %s (%s): %w", p.node, addr, err)
		p.l.log.Warn("cluster: link connection failed", "node", p.node, "vhost", p.vhost, "err", err)
		return nil, p.lastErr
	}
	p.proxy = c
	return c, nil
}

// drop closes the peer's connections.
func (p *peer) drop() {
	p.mu.Lock()
	proxy, pub := p.proxy, p.pub
	p.proxy, p.pub = nil, nil
	p.mu.Unlock()
	if proxy != nil {
		proxy.close()
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
	c, err := p.connect()
	if err == nil {
		if p.syncCh == nil || p.syncCh.c != c || p.syncCh.isClosing() {
			p.syncCh, err = c.open(p.l.cfg.Timeout)
		}
		if err == nil {
			_, err = p.syncCh.call(&amqp.BasicQos{}, "basic.qos-ok")
		}
	}
	if err != nil {
		// The proxy connection is gone, and the home requeued what it had: nothing to order.
		p.syncCh = nil
	}
	p.acksSynced = target
}

// --- forwarding

type fwdItem struct {
	acks       uint64 // the peer's acksSent when the publish was received (syncAcks)
	queues     []string
	msg        *queue.Message
	out        fwdOutcome
	persistent bool
}

func (it fwdItem) finish(err error) { it.out.report(err) }

// fwdOutcome is where a forward's outcome goes: the publisher's done (nil for none) and the
// peer's count of completed forwards (barrier; p nil for none). A value, not a closure
// wrapping done, so that a forward costs no allocation of its own.
type fwdOutcome struct {
	done func(error)
	p    *peer
}

func (o fwdOutcome) report(err error) {
	if o.done != nil {
		o.done(err)
	}
	if o.p != nil {
		o.p.complete()
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
	p.enqueue(fwdItem{acks: p.acksSent.Load(), queues: queues, msg: msg, persistent: msg.Persistent, out: fwdOutcome{done: done, p: p}})
}

// enqueue hands it to the peer's sender goroutine, or gives it its outcome when the queue
// stays full or the link is closed.
func (p *peer) enqueue(it fwdItem) {
	select {
	case p.fwd <- it:
		p.afterEnqueue()
		return
	default:
	}
	t := time.NewTimer(forwardWaitMax)
	defer t.Stop()
	select {
	case p.fwd <- it:
		p.afterEnqueue()
	case <-t.C:
		it.finish(fmt.Errorf("cluster link to node %s: forward queue full: %w", p.node, errLinkTimeout))
	case <-p.l.stop:
		it.finish(errLinkClosed)
	}
}

// afterEnqueue fails what is queued when the link closed meanwhile: the peer may have been
// taken before Close, and the sender goroutine may have drained its queue for the last time
// before the item went in (it exits only after it saw stop, so stop is seen here then).
func (p *peer) afterEnqueue() {
	select {
	case <-p.l.stop:
		p.failQueued(errLinkClosed)
	default:
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
		// A forward waiting is taken without the two-way select (cheaper, and under load the
		// queue is seldom empty); stop is seen when the queue runs dry.
		select {
		case it := <-p.fwd:
			pc = p.send(pc, it)
			continue
		default:
		}
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

// Consume implements broker.Proxy.
func (l *Link) Consume(home, vhost, queueName string, o broker.ProxyConsume, sink broker.ProxySink) (broker.ProxyChannel, *amqp.Error) {
	p, err := l.peer(home, vhost)
	if err != nil {
		return nil, linkError(home, err)
	}
	p.barrier()
	c, err := p.connect()
	if err != nil {
		return nil, linkError(home, err)
	}
	lc, err := c.open(l.cfg.Timeout)
	if err != nil {
		return nil, linkError(home, err)
	}
	lc.tag, lc.started = o.Tag, make(chan struct{})
	lc.mu.Lock()
	lc.pending = sink // the read loop installs it at consume-ok
	lc.mu.Unlock()
	if o.NoAck {
		// Consumed with acks and the link's window: see noAckWindow. The client's prefetch
		// limits do not apply to a no-ack consumer, on the home either.
		lc.credit = true
		o.NoAck, o.Prefetch, o.ChannelPrefetch = false, noAckWindow, 0
		// Nor does the home's consumer timeout: the acks follow the writes to the client.
		args := amqp.Table{broker.LinkNoTimeoutArg: true}
		for k, v := range o.Args {
			args[k] = v
		}
		o.Args = args
	}
	err = func() error {
		if o.ChannelPrefetch > 0 {
			if _, err := lc.call(&amqp.BasicQos{PrefetchCount: uint16(o.ChannelPrefetch), Global: true}, "basic.qos-ok"); err != nil {
				return err
			}
		}
		if o.Prefetch > 0 {
			if _, err := lc.call(&amqp.BasicQos{PrefetchCount: uint16(o.Prefetch)}, "basic.qos-ok"); err != nil {
				return err
			}
		}
		_, err := lc.call(&amqp.BasicConsume{Queue: queueName, ConsumerTag: o.Tag, NoAck: o.NoAck, Exclusive: o.Exclusive,
			Arguments: o.Args}, "basic.consume-ok")
		return err
	}()
	if err != nil {
		lc.stopped.Store(true)
		lc.closeAsync()
		return nil, linkError(home, err)
	}
	return &proxyChannel{p: p, lc: lc}, nil
}

// Getter implements broker.Proxy.
func (l *Link) Getter(home, vhost string) (broker.ProxyGetter, *amqp.Error) {
	p, err := l.peer(home, vhost)
	if err != nil {
		return nil, linkError(home, err)
	}
	c, err := p.connect()
	if err != nil {
		return nil, linkError(home, err)
	}
	lc, err := c.open(l.cfg.Timeout)
	if err != nil {
		return nil, linkError(home, err)
	}
	lc.getResults = make(chan getResult, 1)
	return &proxyChannel{p: p, lc: lc}, nil
}

// --- the link login

// LinkAuth is the login of link connections (broker.LinkMechanism), a mutual
// challenge-response in two connection.secure rounds, each side proving the cluster's secret
// over a fresh nonce of the other:
//
//  1. start-ok's response is the connecting node's name and a nonce of its own, 32 random
//     bytes in hex ("n2 <64 hex digits>");
//  2. the server sends 32 fresh random bytes (hex) in connection.secure, and the client
//     answers in secure-ok with its MAC ("client" role) over both nonces;
//  3. only once that answer is right, the server sends its own MAC ("server" role) over the
//     same nonces in a second connection.secure; the client checks it before anything else
//     and closes the connection when it is wrong (so a fake node, one that does not know the
//     secret, never gets a forward or a proxied request); its secure-ok is empty.
//
// Each MAC is an HMAC-SHA256, keyed with the cluster's name and secret, of (version, cluster
// name, role, client nonce, server challenge, client node, server node). The secret never
// crosses the wire; a captured login is worthless, since the next login has other nonces on
// both sides; an answer for one server node is refused by the others, and a cluster of another
// name refuses it even with the same secret; the roles and the order of the node names keep
// one side's MAC from passing for the other's. The client proves itself first, so a
// connection to the AMQP port gets no MAC of the server's without the secret (nothing to try
// guesses of a weak secret against offline). That protection is one-sided: a fake node at a
// peer's address gets the connecting node's MAC over a challenge it chose, so a weak secret
// can be guessed offline from that; a long random secret, or cluster.tls (the certificate is
// checked before any MAC is sent), rules it out. A man in the middle that can reach the real node
// can still relay a whole login and read the (plain TCP) traffic; cluster.tls, which wraps the
// links in mutual TLS, rules that out.
type LinkAuth struct {
	cluster, node string
	key           []byte
	tls           *tls.Config
}

// linkLoginVersion starts every MAC input, so that no other use of the key can produce one
// (v3: the mutual login; v2 had the client's proof only, over the server's challenge).
const linkLoginVersion = "warren-link-v3"

// The roles in a MAC input: the connecting node's proof, and the accepting node's.
const (
	linkRoleClient = "client"
	linkRoleServer = "server"
)

// NewLinkAuth returns the link login of node in cluster, with the cluster's secret. tlsCfg is
// the cluster's mutual TLS (cluster.tls, LoadTLS) that link connections use, nil for none.
func NewLinkAuth(cluster, node, secret string, tlsCfg *tls.Config) *LinkAuth {
	return &LinkAuth{cluster: cluster, node: node, key: []byte(cluster + "\x00" + secret), tls: tlsCfg}
}

// mac is role's proof for the login of client to server with the client's nonce and the
// server's challenge: each field length-prefixed, so that no two different logins give the
// same MAC input.
func (a *LinkAuth) mac(role, nonce, challenge, client, server string) string {
	m := hmac.New(sha256.New, a.key)
	var n [4]byte
	for _, f := range []string{linkLoginVersion, a.cluster, role, nonce, challenge, client, server} {
		binary.BigEndian.PutUint32(n[:], uint32(len(f)))
		m.Write(n[:])
		m.Write([]byte(f))
	}
	return hex.EncodeToString(m.Sum(nil))
}

// linkChallengeLen is the random bytes of a challenge and of a client's nonce: 256 bits never
// repeat.
const linkChallengeLen = 32

// randomHex is linkChallengeLen random bytes, hex-encoded.
func randomHex() string {
	var b [linkChallengeLen]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24 and later)
	return hex.EncodeToString(b[:])
}

// isNonce reports whether s has the shape of a challenge or nonce: 2*linkChallengeLen lower-case
// hex digits.
func isNonce(s string) bool {
	if len(s) != 2*linkChallengeLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// LinkChallenge implements broker.LinkAuth: 32 random bytes, hex-encoded.
func (a *LinkAuth) LinkChallenge() string { return randomHex() }

// splitLinkStart splits start-ok's response into the connecting node's name and its nonce.
func splitLinkStart(start string) (node, nonce string, ok bool) {
	node, nonce, ok = strings.Cut(start, " ")
	return node, nonce, ok && node != "" && isNonce(nonce)
}

// VerifyLink implements broker.LinkAuth: response must be the client's proof for this node
// over its nonce (in start) and challenge, compared in constant time.
func (a *LinkAuth) VerifyLink(start, challenge, response string) (string, error) {
	node, nonce, ok := splitLinkStart(start)
	if !ok {
		if node == start {
			return node, errors.New("no nonce of the connecting node (a node of an older version?)")
		}
		return node, errors.New("malformed start-ok response")
	}
	if !isNonce(challenge) || subtle.ConstantTimeCompare([]byte(response), []byte(a.mac(linkRoleClient, nonce, challenge, node, a.node))) != 1 {
		return node, errors.New("the answer does not prove this cluster's secret")
	}
	return node, nil
}

// LinkProof implements broker.LinkAuth: this node's proof, over the connecting node's nonce
// (in start) and challenge, for that node.
func (a *LinkAuth) LinkProof(start, challenge string) string {
	node, nonce, _ := splitLinkStart(start)
	return a.mac(linkRoleServer, nonce, challenge, node, a.node)
}

// LinkTLS implements broker.LinkAuth.
func (a *LinkAuth) LinkTLS() *tls.Config { return a.tls }

// login is this node's side of one link login to server, with a fresh nonce: take a new one
// for every connection.
func (a *LinkAuth) login(server string) linkLogin {
	return linkLogin{a: a, server: server, nonce: randomHex()}
}

// linkLogin is one node's link login to one server node: start-ok's response, secure-ok's
// answer to the server's challenge, then the check of the server's proof.
type linkLogin struct {
	a      *LinkAuth
	server string
	nonce  string // this login's own nonce, in start-ok
}

// Response is start-ok's response: this node's name and the login's nonce.
func (l linkLogin) Response() string { return l.a.node + " " + l.nonce }

// answer is secure-ok's response to the server's challenge.
func (l linkLogin) answer(challenge string) string {
	return l.a.mac(linkRoleClient, l.nonce, challenge, l.a.node, l.server)
}

// errLinkUnproven is the refusal of a node that did not prove the cluster's secret in its
// second connection.secure: something that is not the node (not of this cluster, another
// secret, an impostor at its address).
var errLinkUnproven = errors.New("the node did not prove the cluster's secret: refused (an impostor at its address, or another cluster or secret)")

// verifyServer checks the server's proof, sent in its second connection.secure after its
// challenge, in constant time.
func (l linkLogin) verifyServer(challenge, proof string) error {
	want := l.a.mac(linkRoleServer, l.nonce, challenge, l.a.node, l.server)
	if subtle.ConstantTimeCompare([]byte(proof), []byte(want)) != 1 {
		return errLinkUnproven
	}
	return nil
}

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
	var ok *amqp.QueueDeclareOk
	err := l.onChannel(home, vhost, func(lc *linkChan) error {
		m, err := lc.call(&amqp.QueueDeclare{Queue: queueName, Passive: true}, "queue.declare-ok")
		if err == nil {
			ok = m.(*amqp.QueueDeclareOk)
		}
		return err
	})
	if err != nil {
		return 0, 0, err
	}
	return int(ok.MessageCount), int(ok.ConsumerCount), nil
}

// Purge implements broker.Proxy.
func (l *Link) Purge(home, vhost, queueName string) (int, *amqp.Error) {
	var n int
	err := l.onChannel(home, vhost, func(lc *linkChan) error {
		m, err := lc.call(&amqp.QueuePurge{Queue: queueName}, "queue.purge-ok")
		if err == nil {
			n = int(m.(*amqp.QueuePurgeOk).MessageCount)
		}
		return err
	})
	return n, err
}

// onChannel runs f on a new link channel to home (after the forwards queued so far), and
// closes the channel; every wait is bounded by the timeout.
func (l *Link) onChannel(home, vhost string, f func(*linkChan) error) *amqp.Error {
	p, err := l.peer(home, vhost)
	if err != nil {
		return linkError(home, err)
	}
	p.barrier()
	c, err := p.connect()
	if err != nil {
		return linkError(home, err)
	}
	lc, err := c.open(l.cfg.Timeout)
	if err == nil {
		err = f(lc)
		lc.closeAsync()
	}
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
