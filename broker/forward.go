package broker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
)

// Forwarder sends the messages this node routes to queues homed on other nodes to those nodes
// (the cluster's data link implements it). Without one (a single node, or a cluster member
// whose link is not running) such messages are refused, as by a full reject-publish queue.
type Forwarder interface {
	// Forward hands msg to node home for the named queues of vhost, which all live there. It
	// must not block for long (a bounded wait for room, never for the peer): it runs on a
	// publisher's reader goroutine. done, when not nil, runs exactly once (possibly before
	// Forward returns) with nil once home accepted the message (and synced it where its own
	// confirm would wait for that), or with an error when it refused it or could not be
	// reached. Forwards to one home keep the order of the calls.
	Forward(home, vhost string, queues []string, msg *queue.Message, done func(error))
}

// clusterHooks are what a cluster member plugs into its broker besides the replicator: the
// data link (forwarding and proxying) and the internal login the link uses.
type clusterHooks struct {
	forwarder Forwarder
	proxy     Proxy
	linkAuth  LinkAuth
	amqpAddr  atomic.Pointer[string]
	topo      topoProgress
	bg        bgForwards
	liveness  NodeLiveness // nil: no node is ever taken for dead (a single node)
}

// bgForwards holds the forwards of callers that must never wait for room on the link: a
// queue's TTL timer or the store's reader dead-lettering. Nobody confirms these (at most
// once, as RabbitMQ's classic dead-lettering), so when bgForwardMax are waiting one more is
// dropped and counted instead of stalling the timer or the reader. One goroutine, started when the first arrives and ending once they are all
// handed to the Forwarder, passes them on in order (it may wait there for room).
type bgForwards struct {
	mu      sync.Mutex
	q       []bgForward
	running bool
	dropped atomic.Uint64
}

type bgForward struct {
	home, vhost string
	queues      []string
	msg         *queue.Message
}

// bgForwardMax bounds the forwards waiting in bgForwards.
const bgForwardMax = 4096

// ForwardsDropped is the number of unconfirmed forwards (dead-lettered messages for queues of
// other nodes) dropped because too many were waiting for the link.
func (b *Broker) ForwardsDropped() uint64 { return b.cluster.bg.dropped.Load() }

// forwardNoWait forwards msg to home for queues without a confirm and without waiting: queued
// for the bgForwards goroutine, or dropped (and counted) when that queue is full.
func (b *Broker) forwardNoWait(home, vhost string, queues []string, msg *queue.Message) {
	g := &b.cluster.bg
	g.mu.Lock()
	if len(g.q) >= bgForwardMax {
		g.mu.Unlock()
		if n := g.dropped.Add(1); n&(n-1) == 0 { // the 1st, 2nd, 4th, ... drop: say it, not flood
			b.log.Warn("cluster: unconfirmed forward dropped, too many waiting for the link",
				"home", home, "vhost", vhost, "dropped_total", n)
		}
		return
	}
	g.q = append(g.q, bgForward{home: home, vhost: vhost, queues: queues, msg: msg})
	start := !g.running
	g.running = true
	g.mu.Unlock()
	if start {
		go b.runBgForwards()
	}
}

func (b *Broker) runBgForwards() {
	g := &b.cluster.bg
	for {
		g.mu.Lock()
		if len(g.q) == 0 {
			g.running = false
			g.q = nil // let a burst's backing array go
			g.mu.Unlock()
			return
		}
		f := g.q[0]
		g.q[0] = bgForward{}
		g.q = g.q[1:]
		g.mu.Unlock()
		b.cluster.forwarder.Forward(f.home, f.vhost, f.queues, f.msg, nil)
	}
}

// topoProgress is how far this broker has applied the cluster's metadata log: the index of the
// last log entry whose topology change (if any) the broker has made. A forwarded message
// carries the sender's (EncodeForwardMessage): the sender routed it to queues it knew at that
// index, so a home node that has applied as much and still lacks a queue knows it was deleted.
type topoProgress struct {
	mu    sync.Mutex
	index uint64
	moved chan struct{} // closed and replaced whenever index advances
}

// forwardTopologyWait bounds how long a forward naming a queue this node does not know yet
// waits for this node to apply the metadata log as far as the sender had (a variable for
// tests). It runs on the forwarding link connection's reader, so forwards behind it wait too
// (they would need the same entries), and that reader reads nothing meanwhile: the home's
// heartbeat monitor closes a connection it has read nothing from for two heartbeat intervals
// (the link's are 2 s), so the wait stays well below 4 s.
var forwardTopologyWait = 3 * time.Second

// TopologyApplied records that this broker has applied the cluster's metadata log up to index
// (every entry up to it, whether or not it changed the topology). The cluster calls it after
// each entry's ApplyTopology calls have returned; a smaller index than the last is ignored.
func (b *Broker) TopologyApplied(index uint64) {
	t := &b.cluster.topo
	t.mu.Lock()
	if index > t.index {
		t.index = index
		if t.moved != nil {
			close(t.moved)
			t.moved = nil
		}
	}
	t.mu.Unlock()
}

// TopologyIndex is the last metadata log index TopologyApplied recorded (0: none, or no
// cluster). A nil broker has 0, so that a link built without one still encodes forwards.
func (b *Broker) TopologyIndex() uint64 {
	if b == nil {
		return 0
	}
	t := &b.cluster.topo
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.index
}

// awaitTopology waits until TopologyIndex reaches index, at most d; it reports whether it did.
func (b *Broker) awaitTopology(index uint64, d time.Duration) bool {
	t := &b.cluster.topo
	var timer *time.Timer
	for {
		t.mu.Lock()
		if t.index >= index {
			t.mu.Unlock()
			return true
		}
		if t.moved == nil {
			t.moved = make(chan struct{})
		}
		moved := t.moved
		t.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(d)
			defer timer.Stop()
		}
		select {
		case <-moved:
		case <-timer.C:
			return b.TopologyIndex() >= index
		}
	}
}

// SetForwarder installs the cluster's forwarder (see Forwarder). Call it before front ends serve.
func (b *Broker) SetForwarder(f Forwarder) { b.cluster.forwarder = f }

// ForwardExchange is the name a link connection publishes forwarded messages to. It is no
// exchange: the AMQP front end recognises it only on a connection that logged in with the
// cluster's link mechanism, and hands the message to DeliverForwarded. Any other connection
// gets the 404 of a missing exchange.
const ForwardExchange = "amq.warren.forward"

// errForwardRefused is the error a forward's done reports when a target refused the message.
var errForwardRefused = errors.New("refused by a target queue")

// hasRemote reports whether any target lives on another node.
func hasRemote(targets []*Queue) bool {
	for _, qs := range targets {
		if qs.home != "" {
			return true
		}
	}
	return false
}

// fanIn joins the outcomes of one publish's parts (the local queues' sync, one forward per home
// node) into the publisher's single done: nil when every part succeeded, an error otherwise.
type fanIn struct {
	n      atomic.Int32
	failed atomic.Bool
	done   func(error)
}

func (f *fanIn) finish(err error) {
	if err != nil {
		f.failed.Store(true)
	}
	if f.n.Add(-1) == 0 {
		if f.failed.Load() {
			f.done(errForwardRefused)
		} else {
			f.done(nil)
		}
	}
}

// publishSplit is the tail of Publish when some targets live on other nodes: the local ones
// are enqueued here, the others forwarded to their homes, one Forward per home. done (may be
// nil) runs once every part has finished; the result then says OnDisk, so that the front end
// waits for it.
func (p *Publisher) publishSplit(msg *queue.Message, targets []*Queue, done func(error)) PublishResult {
	v := p.v
	fw := v.b.cluster.forwarder
	var f *fanIn
	if done != nil {
		f = &fanIn{done: done}
		f.n.Store(1) // the publisher's own part, finished last: nothing completes early
	}
	local := p.localBuf[:0]
	remote := p.remoteBuf[:0]
	for _, qs := range targets {
		if qs.home == "" {
			local = append(local, qs)
		} else {
			remote = append(remote, qs)
		}
	}
	var localErr error
	if len(local) > 0 {
		var ldone func(error)
		if f != nil {
			f.n.Add(1)
			ldone = f.finish
		}
		refused, onDisk := v.enqueue(msg, local, ldone, &p.entryBuf)
		if refused {
			localErr = errForwardRefused
		}
		if f != nil && !onDisk {
			f.finish(nil)
		}
	}
	// Group the remote targets by home, keeping the first-seen order of homes.
	for i := 0; i < len(remote); {
		home := remote[i].home
		var names []string
		rest := remote[i+1:]
		k := 0
		for _, qs := range rest {
			if qs.home == home {
				if names == nil {
					names = []string{remote[i].name}
				}
				names = append(names, qs.name)
			} else {
				rest[k] = qs
				k++
			}
		}
		if names == nil {
			// One queue of this home, the usual case: the list of the previous such publish is
			// reused when it names the same queue (the forward keeps it until sent, read only).
			if len(p.lastRemote) != 1 || p.lastRemote[0] != remote[i].name {
				p.lastRemote = []string{remote[i].name}
			}
			names = p.lastRemote
		}
		remote = append(remote[:i+1], rest[:k]...)
		if f == nil && p.collect != nil {
			p.collect(home, v.name, names, msg)
			i++
			continue
		}
		var fdone func(error)
		if f != nil {
			f.n.Add(1)
			fdone = f.finish
		}
		fw.Forward(home, v.name, names, msg, fdone)
		i++
	}
	clear(local)
	clear(remote)
	p.localBuf, p.remoteBuf = local[:0], remote[:0]
	if f == nil {
		return PublishResult{Routed: true, Refused: localErr != nil}
	}
	f.finish(localErr)
	return PublishResult{Routed: true, OnDisk: true}
}

// splitRemote separates the targets homed on other nodes from the local ones (a transaction's
// commit forwards the former); without a forwarder every target stays (remote entries refuse).
func (v *VHost) splitRemote(targets []*Queue) (local []*Queue, remote map[string][]string) {
	if v.b.cluster.forwarder == nil || !hasRemote(targets) {
		return targets, nil
	}
	remote = map[string][]string{}
	for _, qs := range targets {
		if qs.home == "" {
			local = append(local, qs)
		} else {
			remote[qs.home] = append(remote[qs.home], qs.name)
		}
	}
	return local, remote
}

// txForward is one message of a committed transaction to forward to a home node.
type txForward struct {
	home   string
	queues []string
	msg    *queue.Message
}

// forwardAll forwards a committed transaction's messages for other nodes and waits until every
// home answered (the link bounds the wait). The first failure is returned.
func (v *VHost) forwardAll(fs []txForward) error {
	if len(fs) == 0 {
		return nil
	}
	errs := make(chan error, len(fs))
	for _, f := range fs {
		v.b.cluster.forwarder.Forward(f.home, v.name, f.queues, f.msg, func(err error) { errs <- err })
	}
	var first error
	for range fs {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Forwarded is a message another node forwarded to queues of this node (see
// EncodeForwardMessage).
type Forwarded struct {
	// MetaIndex is the sender's TopologyIndex when it sent the message (0: not carried, an
	// EncodeForward envelope).
	MetaIndex uint64
	// TTL is the time the message had left to live when it was sent, plus one nanosecond
	// (0: no expiry, or not carried: then the header's expiration counts from the arrival).
	TTL        uint64
	Queues     []string
	Exchange   string
	RoutingKey string
	Header     []byte // the publisher's content header, verbatim
	Body       []byte
	// v2 is set for an EncodeForwardMessage envelope (MetaIndex and TTL carried).
	v2 bool
	// targets, when set (ForwardDecoder), is DeliverForwarded's reusable buffer of queues.
	targets *[]*Queue
}

// forwardMagic starts every forwarded envelope; its second byte is the format's version:
// forwardV1 (EncodeForward) or forwardV2 (EncodeForwardMessage, with the sender's metadata
// index and the message's remaining time to live).
var forwardMagic = [2]byte{'W', forwardV1}

const (
	forwardV1 = 1
	forwardV2 = 2
)

// ForwardEnvelopeSlack is how much larger than limits.max_message_size a forwarded envelope's
// body may be on a link connection: the envelope adds the queue names, the exchange, the
// routing key and the publisher's content header to a body the sending node has already held
// to its own limits.max_message_size; the home does not check the inner body again (so set the
// limit alike on every node: a larger one on the client's node is the one that counts).
const ForwardEnvelopeSlack = 4 << 20

// EncodeForwardMessage is the body a link publishes to ForwardExchange: the sender's metadata
// index (b.TopologyIndex(), which lets the home wait until it knows the queues), msg's remaining
// time to live, the target queues, msg's exchange and routing key, its raw content header and
// its body. Carrying the header verbatim keeps every property exactly as the publisher sent it,
// and naming the queues delivers to exactly them: the home node routes nothing again (no
// CC/BCC, alternate exchange or binding changed meanwhile can add or remove a target). An
// envelope naming no queue is a delayed publish to the x-delayed-message exchange it names,
// which the receiving node holds (delayer.forwardHeld): that node routes it when due. The
// time to live travels as a duration, not a time, so clocks that differ between nodes do not
// shift it.
func EncodeForwardMessage(dst []byte, metaIndex uint64, queues []string, msg *queue.Message) []byte {
	dst = append(dst, forwardMagic[0], forwardV2)
	dst = binary.AppendUvarint(dst, metaIndex)
	var ttl uint64
	if msg.ExpiresAt != 0 {
		if msg.ExpiresAt == math.MaxInt64 {
			ttl = math.MaxInt64
		} else if left := msg.ExpiresAt - time.Now().UnixNano(); left > 0 {
			ttl = uint64(left) + 1
		} else {
			ttl = 1 // expired on the way: dropped (or dead-lettered) on arrival
		}
	}
	dst = binary.AppendUvarint(dst, ttl)
	return appendForward(dst, queues, msg.Exchange, msg.RoutingKey, msg.Header, msg.Body)
}

// EncodeForward is the first envelope format, without the sender's metadata index or the
// remaining time to live: a home receiving it refuses a message for a queue it does not know
// (it cannot tell a queue deleted from one it has not learnt of yet), and a message's
// expiration counts again from its arrival. Prefer EncodeForwardMessage.
func EncodeForward(dst []byte, queues []string, exchange, routingKey string, header, body []byte) []byte {
	dst = append(dst, forwardMagic[:]...)
	return appendForward(dst, queues, exchange, routingKey, header, body)
}

func appendForward(dst []byte, queues []string, exchange, routingKey string, header, body []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(queues)))
	for _, q := range queues {
		dst = appendBytes(dst, q)
	}
	dst = appendBytes(dst, exchange)
	dst = appendBytes(dst, routingKey)
	dst = appendBytes(dst, string(header))
	return append(dst, body...)
}

func appendBytes(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// DecodeForward reads an envelope of either format. Header and Body alias b.
func DecodeForward(b []byte) (Forwarded, error) {
	return decodeForward(b, nil)
}

// ForwardDecoder decodes a stream of envelopes as DecodeForward does, for one goroutine (a
// link's forwarding channel). A link forwards mostly to the same queues with the same exchange
// and routing key, and those strings outlive the read buffer (every message keeps them), so
// the decoder reuses the previous envelope's queue list and strings when they are equal
// instead of allocating them per message. The reused queue list is shared by the messages'
// Forwarded values and never written to. The queues DeliverForwarded returns for a Forwarded
// from Decode live in the decoder's buffer: valid until the next Decode.
type ForwardDecoder struct {
	queues               []string
	exchange, routingKey string
	targets              []*Queue
}

// Decode reads an envelope of either format. Header and Body alias b.
func (d *ForwardDecoder) Decode(b []byte) (Forwarded, error) {
	return decodeForward(b, d)
}

// intern returns s as a string: *last when equal (no allocation), else a new one kept in *last.
func intern(last *string, s []byte) string {
	if string(s) != *last {
		*last = string(s)
	}
	return *last
}

func decodeForward(b []byte, d *ForwardDecoder) (Forwarded, error) {
	var f Forwarded
	if len(b) < 2 || b[0] != forwardMagic[0] || (b[1] != forwardV1 && b[1] != forwardV2) {
		return f, errors.New("forwarded message: bad envelope")
	}
	v2 := b[1] == forwardV2
	b = b[2:]
	if v2 {
		idx, k := binary.Uvarint(b)
		if k <= 0 {
			return f, errors.New("forwarded message: bad metadata index")
		}
		b = b[k:]
		ttl, k := binary.Uvarint(b)
		if k <= 0 || ttl > math.MaxInt64 {
			return f, errors.New("forwarded message: bad time to live")
		}
		b = b[k:]
		f.MetaIndex, f.TTL, f.v2 = idx, ttl, true
	}
	n, k := binary.Uvarint(b)
	if k <= 0 || n > 65535 || n > uint64(len(b)) {
		return f, errors.New("forwarded message: bad queue count")
	}
	b = b[k:]
	field := func(what string) ([]byte, error) {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return nil, fmt.Errorf("forwarded message: bad %s", what)
		}
		out := b[k : k+int(l)]
		b = b[k+int(l):]
		return out, nil
	}
	if d != nil && uint64(len(d.queues)) == n {
		// The same queues as the previous envelope? Then its list is reused.
		rest, same := b, true
		for _, name := range d.queues {
			q, err := field("queue name")
			if err != nil {
				return f, err
			}
			if string(q) != name {
				same = false
				break
			}
		}
		if same {
			f.Queues = d.queues
		} else {
			b = rest
		}
	}
	if f.Queues == nil {
		f.Queues = make([]string, 0, n)
		for range n {
			q, err := field("queue name")
			if err != nil {
				return f, err
			}
			f.Queues = append(f.Queues, string(q))
		}
		if d != nil {
			d.queues = f.Queues
		}
	}
	ex, err := field("exchange")
	if err != nil {
		return f, err
	}
	rk, err := field("routing key")
	if err != nil {
		return f, err
	}
	h, err := field("content header")
	if err != nil {
		return f, err
	}
	if d != nil {
		f.Exchange, f.RoutingKey = intern(&d.exchange, ex), intern(&d.routingKey, rk)
		f.targets = &d.targets
	} else {
		f.Exchange, f.RoutingKey = string(ex), string(rk)
	}
	f.Header, f.Body = h, b
	return f, nil
}

// DeliverForwarded enqueues a message another node forwarded to queues of this node: exactly
// the named queues, with nothing routed again. A queue this node does not know is waited for
// (up to forwardTopologyWait) while this node has applied less of the metadata log than the
// sender had (f.MetaIndex): the sender routed to it, so its declare is at most there. A queue
// still unknown once this node has applied as much was deleted meanwhile and is skipped, as a
// publish routed after the delete would have; one still unknown after the wait, or unknown
// with no index carried, refuses the message (a nack to the sender: never a confirm for a
// message kept nowhere); so does a queue that is not this node's. done runs as for Publish
// when the result says OnDisk; scratch is the caller's reusable entry buffer. The queues it
// reached are returned for flow control (Publisher.Flow).
func (v *VHost) DeliverForwarded(f Forwarded, done func(error), scratch *[]*queue.Entry) (PublishResult, []*Queue, *amqp.Error) {
	sum, err := amqp.ScanContentHeader(f.Header)
	if err != nil {
		return PublishResult{}, nil, amqp.Errorf(amqp.SyntaxError, "forwarded message: %v", err)
	}
	if sum.BodySize != uint64(len(f.Body)) {
		return PublishResult{}, nil, amqp.Errorf(amqp.SyntaxError, "forwarded message: content header says %d bytes, body has %d", sum.BodySize, len(f.Body))
	}
	msg := &queue.Message{
		ID: v.b.NextMessageID(), Exchange: f.Exchange, RoutingKey: f.RoutingKey,
		Header: f.Header, Body: f.Body, Persistent: sum.DeliveryMode == 2, Priority: sum.Priority,
	}
	switch {
	case f.TTL == math.MaxInt64:
		msg.ExpiresAt = math.MaxInt64
	case f.TTL > 0:
		now := time.Now().UnixNano()
		if left := int64(f.TTL - 1); left > math.MaxInt64-now {
			msg.ExpiresAt = math.MaxInt64 // saturated, as expiresAfter does
		} else {
			msg.ExpiresAt = now + left
		}
	case !f.v2 && sum.Expiration != "":
		// A first-format envelope: the expiration counts again from here.
		if ms, err := strconv.ParseInt(sum.Expiration, 10, 64); err == nil && ms >= 0 {
			msg.ExpiresAt = expiresAfter(ms)
		}
	}
	if len(f.Queues) == 0 {
		return v.deliverForwardedDelayed(f, msg, sum.HeadersRaw, done)
	}
	var scratch0 []*Queue
	if f.targets != nil {
		// The previous envelope's queues are dropped first: the buffer must not keep a
		// deleted queue reachable until a later envelope overwrites its slot.
		clear((*f.targets)[:cap(*f.targets)])
		scratch0 = (*f.targets)[:0]
	}
	targets, missing, refused := v.forwardTargets(f.Queues, scratch0)
	if missing {
		switch {
		case f.MetaIndex == 0:
			refused = true
		case v.b.TopologyIndex() < f.MetaIndex:
			caughtUp := v.b.awaitTopology(f.MetaIndex, forwardTopologyWait)
			targets, missing, refused = v.forwardTargets(f.Queues, targets[:0])
			if missing && !caughtUp {
				v.b.log.Warn("cluster: refusing a forwarded message for a queue this node does not know yet",
					"vhost", v.name, "sender_index", f.MetaIndex, "applied_index", v.b.TopologyIndex())
				refused = true
			}
		}
	}
	if f.targets != nil {
		*f.targets = targets[:0] // keep a grown buffer for the next envelope
	}
	if len(targets) == 0 {
		return PublishResult{Refused: refused}, nil, nil
	}
	r, onDisk := v.enqueue(msg, targets, done, scratch)
	return PublishResult{Routed: true, Refused: refused || r, OnDisk: onDisk}, targets, nil
}

// deliverForwardedDelayed holds a delayed publish another node forwarded to the
// x-delayed-message exchange f.Exchange, homed here (an envelope naming no queue, see
// delayer.forwardHeld): published through the exchange as on this node, so it is stored (done
// once synced) and routed when due. An exchange this node does not know is waited for as a
// queue is (DeliverForwarded); one still unknown, or not homed here, refuses the message.
func (v *VHost) deliverForwardedDelayed(f Forwarded, msg *queue.Message, headersRaw []byte, done func(error)) (PublishResult, []*Queue, *amqp.Error) {
	ex := v.heldHere(f.Exchange)
	if ex == nil && f.MetaIndex != 0 && v.b.TopologyIndex() < f.MetaIndex {
		v.b.awaitTopology(f.MetaIndex, forwardTopologyWait)
		ex = v.heldHere(f.Exchange)
	}
	if ex == nil {
		v.b.log.Warn("cluster: refusing a forwarded delayed message for an exchange not held on this node",
			"vhost", v.name, "exchange", f.Exchange)
		return PublishResult{Refused: true}, nil, nil
	}
	p := v.NewPublisher()
	res, targets := p.Publish(ex, msg, headersRaw, done)
	p.Flush()
	return res, targets, nil
}

// heldHere is the named x-delayed-message exchange when this node holds its messages, else nil.
func (v *VHost) heldHere(name string) *Exchange {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if ex := v.exchanges[name]; ex != nil && ex.delayed != nil && ex.delayed.remoteHome() == "" {
		return ex
	}
	return nil
}

// forwardTargets looks the named queues up (appending them to targets): missing reports a
// name this node does not know, refused one homed on another node.
func (v *VHost) forwardTargets(names []string, targets []*Queue) (_ []*Queue, missing, refused bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	for _, name := range names {
		qs := v.queues[name]
		switch {
		case qs == nil && v.unapplied[name]:
			refused = true // never written here: a confirm must be a nack
		case qs == nil:
			missing = true
		case qs.home != "":
			refused = true
		default:
			targets = append(targets, qs)
		}
	}
	return targets, missing, refused
}
