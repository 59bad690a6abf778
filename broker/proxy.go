package broker

import (
	"crypto/tls"

	"github.com/warrenmq/warren/amqp"
)

// Proxy reaches queues homed on other nodes for this node's consumers and basic.get (the
// cluster's data link implements it). The home node's queue does everything a queue does
// (prefetch, redelivery, requeue position, single active consumer); this node relays.
type Proxy interface {
	// Consume subscribes to queue (of vhost, homed on home) with basic.consume's tag, flags,
	// arguments and a prefetch limit (0: none), and waits (bounded) for the home's consume-ok.
	// Nothing reaches sink until Start is called on the returned channel. An error carries the
	// home node's reply code and text (404, 403 exclusive use, 406 arguments) or, when the home
	// cannot be reached, 541 INTERNAL_ERROR.
	Consume(home, vhost, queue string, o ProxyConsume, sink ProxySink) (ProxyChannel, *amqp.Error)
	// Getter opens a channel to home for basic.get on vhost's queues of that node.
	Getter(home, vhost string) (ProxyGetter, *amqp.Error)
	// Counts are the queue's ready messages and consumers on its home (queue.declare-ok).
	Counts(home, vhost, queue string) (messages, consumers int, err *amqp.Error)
	// Purge purges the queue on its home and returns the number of messages purged.
	Purge(home, vhost, queue string) (int, *amqp.Error)
}

// ProxyConsume are a proxied basic.consume's parameters.
type ProxyConsume struct {
	Tag       string
	NoAck     bool
	Exclusive bool
	Args      amqp.Table
	// Prefetch is the consumer's limit (basic.qos global=false), ChannelPrefetch the limit of
	// the client's channel (global=true), applied to the link channel; 0 is none.
	Prefetch, ChannelPrefetch int
}

// ProxyDelivery is a message the home node delivered over the link.
type ProxyDelivery struct {
	// Tag is the home node's delivery tag on the link channel (settled with it).
	Tag         uint64
	Redelivered bool
	Exchange    string
	RoutingKey  string
	Header      []byte // content header to send to the client
	Body        []byte
	// MessageCount is basic.get-ok's count of messages left.
	MessageCount uint32
}

// ProxySink receives a proxied consumer's deliveries, on the link's relay goroutine (one per
// proxied consumer; never under a broker lock).
type ProxySink interface {
	// Deliver hands a delivery to the client; false when the consumer is gone (cancelled, the
	// channel closed): the link then requeues it on the home node. d.Header and d.Body are
	// valid only during the call (they may alias the link's read buffer, so a delivery written
	// to the client at once is copied only there): a sink that keeps the delivery copies them.
	Deliver(d ProxyDelivery) bool
	// Ended tells that the home node cancelled the consumer (its queue was deleted) or that the
	// link to it was lost (err nil), or that the home closed the consumer's channel with a
	// channel error (err, e.g. its consumer timeout's 406). It is not called after Cancel or
	// Close.
	Ended(err *amqp.Error)
}

// ProxyChannel is one link channel to a home node: a proxied consumer's, or a getter's.
type ProxyChannel interface {
	// Start begins relaying deliveries to the sink (after the client got its consume-ok).
	Start()
	// Settle acks, rejects or requeues the delivery tag (with multiple, every unsettled one up
	// to it) on the home node. A channel that is gone ignores it: its deliveries went back to
	// their queue when it closed.
	Settle(kind Settlement, tag uint64, multiple bool)
	// Written tells that a delivery of a NoAck consumer has been handed to the client (its
	// connection's writer). Such a consumer takes the home's messages with acknowledgements
	// and a window of the link's own, and the link acks what was written: a client whose
	// socket is congested stops the home's deliveries once the window is out, instead of
	// letting them pile up on this node.
	Written(tag uint64)
	// Cancel stops the consumer on the home node; its unsettled deliveries stay unsettled.
	Cancel()
	// Close closes the link channel: the home node requeues what is unsettled on it.
	Close()
}

// ProxyGetter is a link channel for basic.get.
type ProxyGetter interface {
	ProxyChannel
	// Get is basic.get of queue on the home node; ok false when it is empty.
	Get(queue string, noAck bool) (d ProxyDelivery, ok bool, err *amqp.Error)
}

// SetProxy installs the cluster's proxy (see Proxy), with the stream refusals made on this
// node (streamChecks, stream.go). Call it before front ends serve.
func (b *Broker) SetProxy(p Proxy) { b.cluster.proxy = withStreamChecks(b, p) }

// Proxy is the cluster's proxy, nil on a single node.
func (b *Broker) Proxy() Proxy { return b.cluster.proxy }

// LinkMechanism is the SASL mechanism of the cluster's link connections, offered only by a
// cluster member (one with a LinkAuth).
const LinkMechanism = "WARREN-LINK"

// MaxMessageSize is the largest message body any node accepts: RabbitMQ's cap on
// max_message_size (512 MiB), and so the largest a home may announce on a link.
const MaxMessageSize = 512 << 20

// LinkNoTimeoutArg is the consume argument with which a link connection's consumer is exempt
// from the consumer timeout on the queue's home: a no-ack proxied consumer, whose link acks
// follow the deliveries' writes to the client and are no client's to be late with. Other
// connections' consumes keep the argument as they gave it (it means nothing to the broker).
const LinkNoTimeoutArg = "x-warren-link-no-timeout"

// LinkAuth checks the login of another node's link connection (mechanism LinkMechanism), a
// mutual challenge-response, so that a captured login cannot be replayed and a node never
// talks to one that cannot prove the cluster's secret: start-ok's response (start) names the
// connecting node and carries its nonce, the server sends a fresh LinkChallenge in
// connection.secure, VerifyLink checks the answer in secure-ok, and only then the server
// sends its LinkProof in a second connection.secure, which the connecting node checks.
type LinkAuth interface {
	// LinkChallenge returns a fresh random challenge, never used before.
	LinkChallenge() string
	// VerifyLink checks that response answers challenge for the node that sent start. It
	// returns that node's name as start gives it (to check and log; "" or garbage when start
	// is malformed) and, for a refusal, why (never anything secret).
	VerifyLink(start, challenge, response string) (node string, err error)
	// LinkProof is this node's proof of the secret for the login of start and challenge,
	// sent once VerifyLink accepted it.
	LinkProof(start, challenge string) string
	// LinkTLS is the mutual TLS link connections must arrive over, nil when links are plain
	// TCP (no cluster.tls).
	LinkTLS() *tls.Config
}

// SetLinkAuth installs the check of link logins. Call it before front ends serve.
func (b *Broker) SetLinkAuth(a LinkAuth) { b.cluster.linkAuth = a }

// LinkAuth is the check of link logins, nil when this node takes none.
func (b *Broker) LinkAuth() LinkAuth { return b.cluster.linkAuth }

// SetAMQPAddr records the address the AMQP front end listens on, for a cluster to tell the
// other nodes where this node's link connections go.
func (b *Broker) SetAMQPAddr(addr string) { b.cluster.amqpAddr.Store(&addr) }

// AMQPAddr is the address SetAMQPAddr recorded, "" before.
func (b *Broker) AMQPAddr() string {
	if p := b.cluster.amqpAddr.Load(); p != nil {
		return *p
	}
	return ""
}

// NodeLiveness tells which nodes the cluster takes for dead: silent for its node timeout
// (RabbitMQ's nodedown) or removed from it. The cluster's metadata implements it from the
// replicated state, without a lock (the broker asks it on client goroutines, which may hold
// broker locks, and the metadata holds its own lock while it applies changes to the broker).
type NodeLiveness interface {
	// NodeDown reports whether node is taken for dead or has left the cluster.
	NodeDown(node string) bool
}

// SetNodeLiveness installs the cluster's view of dead nodes (see NodeLiveness). Call it
// before front ends serve.
func (b *Broker) SetNodeLiveness(l NodeLiveness) { b.cluster.liveness = l }

// ErrHomeDown is RabbitMQ's answer (rabbit_misc:absent with nodedown) for a durable classic
// queue whose home node is down: 404 NOT_FOUND, for a declare (passive or not), a delete, a
// bind or unbind, a purge, a consume or a get of it.
func ErrHomeDown(vhost, name, home string) *amqp.Error {
	return amqp.Errorf(amqp.NotFound, "home node '%s' of durable queue '%s' in vhost '%s' is down or inaccessible", home, name, vhost)
}

// HomeDown returns ErrHomeDown when qs lives on another node that the cluster takes for dead,
// else nil (this node's queue, a live home, a single node). Only durable queues are left to
// answer it: the cluster deletes the others of a dead node.
func (v *VHost) HomeDown(qs *Queue) *amqp.Error {
	if qs == nil || !v.homeIsDown(qs) {
		return nil
	}
	return ErrHomeDown(v.name, qs.name, qs.home)
}

// homeIsDown reports whether qs lives on another node that the cluster takes for dead (see
// HomeDown). Routing asks it for every queue it reaches, so a queue of this node answers on
// its first test, and NodeLiveness takes no lock.
func (v *VHost) homeIsDown(qs *Queue) bool {
	if qs.home == "" {
		return false
	}
	l := v.b.cluster.liveness
	// A quorum queue is never home-down (the metadata says so too): its other members serve it.
	return l != nil && !qs.spec.quorum && l.NodeDown(qs.home)
}

// HomeUnreachable is ErrHomeDown for a durable queue of another node that the data link could
// not reach (err, its 541), before the cluster takes the node for dead: RabbitMQ's answer once
// its call to the queue's node fails, a 404 that closes the channel rather than the
// connection. Anything else (another error, a non-durable queue, which RabbitMQ deletes once
// the node is known down but which Warren cannot yet call absent, a quorum queue, which other
// members serve) is err unchanged.
func (v *VHost) HomeUnreachable(qs *Queue, err *amqp.Error) *amqp.Error {
	if err == nil || err.Code != amqp.InternalError || qs == nil || qs.home == "" || !qs.declDur || qs.exclusive || qs.spec.quorum {
		return err
	}
	return ErrHomeDown(v.name, qs.name, qs.home)
}

// QueueHomeDown reports whether the named queue lives on another node that the cluster takes
// for dead (the management API's state "down", as RabbitMQ shows such a queue).
func (v *VHost) QueueHomeDown(name string) bool {
	v.mu.RLock()
	qs := v.queues[name]
	v.mu.RUnlock()
	return v.HomeDown(qs) != nil
}

// RemoteQueue makes basic.consume's and basic.get's checks for a (read permission, the queue
// exists, it is not another connection's exclusive queue, its home node is not down) and
// returns the queue when it lives on another node and a proxy can reach it; nil (and no error)
// when the queue is this node's or there is no proxy, for the local path to handle. The order
// is RabbitMQ's: the permission, then the queue's presence (404, the home-down 404 included),
// then its exclusivity.
func (v *VHost) RemoteQueue(a Actor, name string) (*Queue, *amqp.Error) {
	if v.b.cluster.proxy == nil {
		return nil, nil
	}
	v.mu.RLock()
	qs := v.queues[name]
	v.mu.RUnlock()
	if qs == nil || qs.home == "" {
		return nil, nil
	}
	if err := a.authorize(PermRead, ResQueue, name); err != nil {
		return nil, err
	}
	v.mu.Lock()
	if qs = v.queues[name]; qs != nil && qs.home != "" {
		if err := v.HomeDown(qs); err != nil {
			v.mu.Unlock()
			return nil, err
		}
	}
	qs, err := v.lookupQueue(a, name)
	v.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if qs.home == "" {
		return nil, nil
	}
	return qs, nil
}

// QueueHome is the home node of the named queue when it lives on another node and a proxy can
// reach it, else "" (a queue of this node, a missing one, a single node). No check is made.
func (v *VHost) QueueHome(name string) string {
	if v.b.cluster.proxy == nil {
		return ""
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	if qs := v.queues[name]; qs != nil {
		return qs.home
	}
	return ""
}
