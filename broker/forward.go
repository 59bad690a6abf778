package broker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

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
		names := []string{remote[i].name}
		rest := remote[i+1:]
		k := 0
		for _, qs := range rest {
			if qs.home == home {
				names = append(names, qs.name)
			} else {
				rest[k] = qs
				k++
			}
		}
		remote = append(remote[:i+1], rest[:k]...)
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

// Forwarded is a message another node forwarded to queues of this node (see EncodeForward).
type Forwarded struct {
	Queues     []string
	Exchange   string
	RoutingKey string
	Header     []byte // the publisher's content header, verbatim
	Body       []byte
}

// forwardMagic starts every forwarded envelope; its second byte is the format's version.
var forwardMagic = [2]byte{'W', 1}

// EncodeForward is the body a link publishes to ForwardExchange: the target queues, the
// original exchange and routing key, the publisher's raw content header and its body. Carrying
// the header verbatim keeps every property exactly as the publisher sent it, and naming the
// queues delivers to exactly them: the home node routes nothing again (no CC/BCC, alternate
// exchange or binding changed meanwhile can add or remove a target).
func EncodeForward(dst []byte, queues []string, exchange, routingKey string, header, body []byte) []byte {
	dst = append(dst, forwardMagic[:]...)
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

// DecodeForward reads an EncodeForward envelope. Header and Body alias b.
func DecodeForward(b []byte) (Forwarded, error) {
	var f Forwarded
	if len(b) < 2 || b[0] != forwardMagic[0] || b[1] != forwardMagic[1] {
		return f, errors.New("forwarded message: bad envelope")
	}
	b = b[2:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > 65535 || n > uint64(len(b)) {
		return f, errors.New("forwarded message: bad queue count")
	}
	b = b[k:]
	f.Queues = make([]string, 0, n)
	field := func(what string) ([]byte, error) {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return nil, fmt.Errorf("forwarded message: bad %s", what)
		}
		out := b[k : k+int(l)]
		b = b[k+int(l):]
		return out, nil
	}
	for range n {
		q, err := field("queue name")
		if err != nil {
			return f, err
		}
		f.Queues = append(f.Queues, string(q))
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
	f.Exchange, f.RoutingKey, f.Header, f.Body = string(ex), string(rk), h, b
	return f, nil
}

// DeliverForwarded enqueues a message another node forwarded to queues of this node: exactly
// the named queues, with nothing routed again. A queue that is gone (deleted meanwhile) is
// skipped, as a publish routed after the delete would have; a queue that is not this node's
// refuses it. done runs as for Publish when the result says OnDisk; scratch is the caller's
// reusable entry buffer. The queues it reached are returned for flow control (Publisher.Flow).
func (v *VHost) DeliverForwarded(f Forwarded, done func(error), scratch *[]*queue.Entry) (PublishResult, []*Queue, *amqp.Error) {
	sum, err := amqp.ScanContentHeader(f.Header)
	if err != nil {
		return PublishResult{}, nil, amqp.Errorf(amqp.SyntaxError, "forwarded message: %v", err)
	}
	msg := &queue.Message{
		ID: v.b.NextMessageID(), Exchange: f.Exchange, RoutingKey: f.RoutingKey,
		Header: f.Header, Body: f.Body, Persistent: sum.DeliveryMode == 2, Priority: sum.Priority,
	}
	if sum.Expiration != "" {
		var ms int64
		if _, err := fmt.Sscan(sum.Expiration, &ms); err == nil && ms >= 0 {
			msg.ExpiresAt = expiresAfter(ms)
		}
	}
	var targets []*Queue
	refused := false
	v.mu.RLock()
	for _, name := range f.Queues {
		qs := v.queues[name]
		switch {
		case qs == nil:
		case qs.home != "":
			refused = true
		default:
			targets = append(targets, qs)
		}
	}
	v.mu.RUnlock()
	if len(targets) == 0 {
		return PublishResult{Refused: refused}, nil, nil
	}
	r, onDisk := v.enqueue(msg, targets, done, scratch)
	return PublishResult{Routed: true, Refused: refused || r, OnDisk: onDisk}, targets, nil
}
