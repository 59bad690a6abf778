package server

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/queue"
)

// delivery is one unacknowledged message on a channel.
type delivery struct {
	tag  uint64
	qs   *broker.Queue
	e    *queue.Entry
	cons *consumer // nil for basic.get
	// rem is the link channel of a delivery proxied from a queue of another node (e is nil),
	// rtag its delivery tag there (proxy.go).
	rem  broker.ProxyChannel
	rtag uint64
}

type txPublish struct {
	ex        *broker.Exchange
	msg       *queue.Message
	mandatory bool
}

type txSettle struct {
	kind broker.Settlement
	ds   []delivery
}

// txState collects a transaction's work until tx.commit.
type txState struct {
	publishes []txPublish
	settles   []txSettle
}

// channel is one AMQP channel. Fields above mu belong to the connection's reader goroutine;
// fields below it are shared with the goroutines that deliver messages to this channel's consumers.
type channel struct {
	c   *conn
	id  uint16
	v   *broker.VHost
	pub *broker.Publisher

	closing bool // we sent channel.close and wait for close-ok

	// Content assembly for basic.publish.
	pubMethod   amqp.BasicPublish  // reused by every publish (see scannedPublish)
	pubM        *amqp.BasicPublish // the publish whose content is being assembled
	pubSummary  amqp.HeaderSummary
	pubHeader   []byte
	pubBody     []byte
	pubSize     uint64
	pubGot      uint64
	pubOverflow bool

	settleBuf  []delivery     // settle's reusable delivery buffer
	fwdEntries []*queue.Entry // a link connection's reusable entry buffer (finishForwarded)
	entryBuf   []*queue.Entry // apply's reusable buffer for acked entries

	fwdDec broker.ForwardDecoder // a link connection's envelope decoder (finishForwarded)
	fwdHdr []byte                // a link connection's reusable envelope content header (contentHeader)

	confirm    bool
	publishSeq uint64
	// confirmMode and txMode mirror confirm and tx != nil for readers off the reader goroutine.
	confirmMode, txMode atomic.Bool
	confirms            confirmTracker
	tx                  *txState

	mu               sync.Mutex
	closed           bool
	nextTag          uint64
	unacked          []delivery // ascending tags; values, so a delivery allocates nothing
	inflight         int        // delivered and not yet settled (including acks waiting for tx.commit)
	prefetch         int        // basic.qos global=true: limit for the whole channel
	consumerPrefetch int        // basic.qos global=false: limit for consumers created afterwards
	consumers        map[string]*consumer
	reply            *replyConsumer // the direct reply-to consumer, nil without one
	remote           *remoteLinks   // link channels to other nodes' queues (proxy.go), nil without
	ackMarks         []tagMark      // for the consumer timeout (see consumerTimedOut)

	// starved: a delivery was refused for want of prefetch credit since the last settle, so
	// the next settle must kick the channel's queues. Without it an ack returns credit nobody
	// waits for, and the kick (every consumer's queue locked and dispatched) is wasted.
	starved bool

	// closeSent: a channel.close went out (the reader's fail, or the consumer timeout). Only
	// one may. timedOut: the consumer timeout closed the channel off the reader goroutine; the
	// reader finishes the close at its next frame for the channel.
	closeSent, timedOut atomic.Bool
	// noTimeout: a link connection's consumer on the channel asked to be exempt from the
	// consumer timeout (broker.LinkNoTimeoutArg).
	noTimeout atomic.Bool
}

func newChannel(c *conn, id uint16) *channel {
	return &channel{c: c, id: id, v: c.vhost, pub: c.vhost.NewPublisher(), consumers: map[string]*consumer{}}
}

// handleFrame processes one frame for this channel. A returned error is a connection exception;
// channel exceptions are handled here by closing the channel.
func (ch *channel) handleFrame(f amqp.Frame) error {
	if !ch.closing && ch.timedOut.Load() {
		// The consumer timeout sent channel.close: from now on, as after fail.
		ch.closing = true
		ch.pubM, ch.pubHeader, ch.pubBody = nil, nil, nil
		ch.shutdown()
	}
	var aerr *amqp.Error
	switch {
	case ch.pubM != nil && ch.pubHeader == nil:
		// Content framing is enforced even on a closing channel, as in RabbitMQ.
		if f.Type != amqp.FrameHeader {
			return contentFrameError("expected content header for class 60, got non content header frame instead")
		}
		aerr = ch.contentHeader(f.Payload)
	case ch.pubM != nil:
		if f.Type != amqp.FrameBody {
			return contentFrameError("expected content body, got non content body frame instead")
		}
		aerr = ch.contentBody(f.Payload)
	case f.Type != amqp.FrameMethod:
		if ch.closing {
			return nil
		}
		return amqp.Errorf(amqp.UnexpectedFrame, "expected method frame, got non method frame instead")
	default:
		var m amqp.Method
		if ps, ok := amqp.ScanBasicPublish(f.Payload); ok {
			m = ch.scannedPublish(&ps)
		} else {
			var err error
			if m, err = amqp.DecodeMethod(f.Payload); err != nil {
				return err
			}
		}
		if ch.closing {
			ch.closingMethod(m)
			return nil
		}
		aerr = ch.handleMethod(m)
	}
	if aerr == nil || ch.closing {
		return nil
	}
	if aerr.Hard() {
		return aerr
	}
	ch.fail(aerr)
	return nil
}

// separateBodyMin is the body size from which a message's body gets its own allocation.
const separateBodyMin = 512

// bodyGrowth sizes a multi-frame body's first buffer: this many frames' worth (append grows it
// from there), so a large body is copied a few times at most while memory still follows the
// bytes actually received.
const bodyGrowth = 8

// scannedPublish turns a basic.publish read in place into the channel's reusable BasicPublish
// (it is done with before the next publish starts). The exchange and routing key strings are
// kept from the previous publish when they repeat, as they do for most publishers, so the common
// case allocates nothing.
func (ch *channel) scannedPublish(ps *amqp.PublishScan) *amqp.BasicPublish {
	m := &ch.pubMethod
	if string(ps.Exchange) != m.Exchange {
		m.Exchange = string(ps.Exchange)
	}
	if string(ps.RoutingKey) != m.RoutingKey {
		m.RoutingKey = string(ps.RoutingKey)
	}
	m.Mandatory, m.Immediate = ps.Mandatory, ps.Immediate
	return m
}

// contentFrameError is the 505 for a frame out of place inside a basic.publish's content.
func contentFrameError(text string) *amqp.Error {
	e := amqp.Errorf(amqp.UnexpectedFrame, "%s", text)
	e.ClassID, e.MethodID = amqp.ClassBasic, 40
	return e
}

// closingMethod handles a method on a channel that waits for close-ok: everything but the close
// handshake is dropped, as the spec says, though a publish's content is still framed.
func (ch *channel) closingMethod(m amqp.Method) {
	switch m.(type) {
	case *amqp.ChannelCloseOk:
		ch.c.removeChannel(ch.id)
	case *amqp.ChannelClose:
		// The client's close crossed ours: it is answered, and the channel stays until the
		// close-ok for ours, which the client sends as well (RabbitMQ's behaviour); removing it
		// here made that close-ok a 504 connection error.
		ch.c.writeMethod(ch.id, &amqp.ChannelCloseOk{})
	case *amqp.BasicPublish:
		ch.pubM = m.(*amqp.BasicPublish)
	}
}

// fail closes the channel with a channel exception: resources go at once, close-ok is awaited.
func (ch *channel) fail(e *amqp.Error) {
	ch.c.log.Debug("channel error", "channel", ch.id, "code", e.Code, "text", e.Text)
	ch.closing = true
	ch.pubM, ch.pubHeader, ch.pubBody = nil, nil, nil
	ch.shutdown()
	if ch.closeSent.CompareAndSwap(false, true) { // else the consumer timeout closed it first
		ch.c.writeMethod(ch.id, &amqp.ChannelClose{ReplyCode: e.Code, ReplyText: e.Text, ClassId: e.ClassID, MethodId: e.MethodID})
	}
}

func (ch *channel) contentHeader(p []byte) *amqp.Error {
	// The header of a message that will be kept is copied before the scan, so that the summary
	// (HeadersRaw) aliases the copy and the header is scanned once. A small body shares that
	// allocation; a larger one is allocated by contentBody as a copy of its frame, which spares
	// zeroing it first.
	maxSize := uint64(ch.c.srv.maxMessageSize())
	forward := ch.c.link && ch.pubM != nil && ch.pubM.Exchange == broker.ForwardExchange
	if forward {
		// Another node's envelope: its body is a message the sending node held to its limit,
		// wrapped with the queue names and the content header (broker.ForwardEnvelopeSlack).
		maxSize += broker.ForwardEnvelopeSlack
	}
	hdr, buf := p, []byte(nil)
	if !ch.closing && len(p) >= 12 {
		if size := binary.BigEndian.Uint64(p[4:12]); size < separateBodyMin {
			buf = make([]byte, len(p)+int(size))
			copy(buf, p)
			hdr = buf[:len(p):len(p)]
		} else if forward && size <= maxSize {
			// An envelope's own header is not kept (finishForwarded uses the one inside the
			// envelope): it goes into the channel's reusable buffer, not a new one per message.
			ch.fwdHdr = append(ch.fwdHdr[:0], p...)
			hdr = ch.fwdHdr
		} else if size <= maxSize {
			hdr = make([]byte, len(p))
			copy(hdr, p)
		}
	}
	sum, err := amqp.ScanContentHeader(hdr)
	if err != nil {
		return amqp.AsError(err)
	}
	if sum.ClassID != amqp.ClassBasic {
		return contentFrameError(fmt.Sprintf("expected content header for class 60, got class %d", sum.ClassID))
	}
	ch.pubSize, ch.pubGot, ch.pubOverflow = sum.BodySize, 0, false
	if ch.closing {
		// Framed but discarded: count the body without keeping it.
		ch.pubHeader = []byte{}
		return ch.maybeFinish()
	}
	if sum.BodySize > maxSize {
		// fail drops the publish; its body frames then arrive on a closing channel and are ignored.
		e := amqp.Errorf(amqp.PreconditionFailed, "message size %d is larger than configured max size %d", sum.BodySize, maxSize)
		e.ClassID, e.MethodID = amqp.ClassBasic, 40
		ch.fail(e)
		return nil
	}
	ch.pubHeader = hdr
	ch.pubBody = nil
	if buf != nil {
		ch.pubBody = buf[len(p):len(p)]
	}
	ch.pubSummary = sum
	if sum.HasUserID && sum.UserID != ch.c.user { // an empty user-id is refused too, as RabbitMQ does
		e := amqp.Errorf(amqp.PreconditionFailed, "user_id property set to '%s' but authenticated user was '%s'", sum.UserID, ch.c.user)
		e.ClassID, e.MethodID = amqp.ClassBasic, 40
		ch.fail(e)
		return nil
	}
	return ch.maybeFinish()
}

// contentBody collects a body frame. Bytes beyond the announced size are dropped and the content
// never completes, so the next method frame is a 505, which is what RabbitMQ does.
func (ch *channel) contentBody(p []byte) *amqp.Error {
	if ch.pubOverflow || ch.pubGot+uint64(len(p)) > ch.pubSize {
		ch.pubOverflow = true
		return nil
	}
	switch {
	case ch.closing:
	case ch.pubBody != nil:
		// A small body in the header's allocation (sized by contentHeader, < 512 B), or the
		// next frame of a large one.
		ch.pubBody = append(ch.pubBody, p...)
	case uint64(len(p)) == ch.pubSize:
		// The whole body in one frame, the common case. make+copy into a local compiles to
		// makeslicecopy, which zeroes nothing; into the field it would zero the body first.
		b := make([]byte, len(p))
		copy(b, p)
		ch.pubBody = b
	default:
		// The buffer grows with the bytes received, never from the size the header declares:
		// a header announcing 128 MiB followed by one byte must cost one byte, not 128 MiB.
		b := make([]byte, len(p), min(ch.pubSize, uint64(len(p))*bodyGrowth))
		copy(b, p)
		ch.pubBody = b
	}
	ch.pubGot += uint64(len(p))
	return ch.maybeFinish()
}

func (ch *channel) maybeFinish() *amqp.Error {
	if ch.pubGot < ch.pubSize {
		return nil
	}
	if ch.closing {
		ch.pubM, ch.pubHeader, ch.pubBody = nil, nil, nil
		return nil
	}
	return ch.finishPublish()
}

func (ch *channel) handleMethod(m amqp.Method) *amqp.Error {
	err := ch.dispatch(m)
	if err != nil && err.ClassID == 0 {
		err.ClassID, err.MethodID = m.ClassID(), m.MethodID()
	}
	return err
}

func (ch *channel) dispatch(m amqp.Method) *amqp.Error {
	c := ch.c
	switch m := m.(type) {
	case *amqp.BasicPublish:
		if m.Immediate {
			return amqp.Errorf(amqp.NotImplemented, "immediate=true")
		}
		// Authorized at the method frame, before any of the content is buffered: a client
		// without write permission cannot make the broker hold its bodies.
		if err := ch.authorizePublish(m.Exchange); err != nil {
			return err
		}
		ch.pubM = m
		ch.c.publisher.Store(true)
		return nil
	case *amqp.BasicAck:
		return ch.settle(m.DeliveryTag, m.Multiple, broker.Ack)
	case *amqp.BasicNack:
		kind := broker.Reject
		if m.Requeue {
			kind = broker.Requeue
		}
		return ch.settle(m.DeliveryTag, m.Multiple, kind)
	case *amqp.BasicReject:
		kind := broker.Reject
		if m.Requeue {
			kind = broker.Requeue
		}
		return ch.settle(m.DeliveryTag, false, kind)
	case *amqp.BasicConsume:
		return ch.consume(m)
	case *amqp.BasicCancel:
		ch.cancel(m.ConsumerTag)
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.BasicCancelOk{ConsumerTag: m.ConsumerTag})
		}
		return nil
	case *amqp.BasicGet:
		return ch.get(m)
	case *amqp.BasicQos:
		return ch.qos(m)
	case *amqp.BasicRecover:
		if !m.Requeue {
			return amqp.Errorf(amqp.NotImplemented, "requeue=false")
		}
		ch.recover()
		c.writeMethod(ch.id, &amqp.BasicRecoverOk{})
		return nil
	case *amqp.BasicRecoverAsync:
		if !m.Requeue {
			return amqp.Errorf(amqp.NotImplemented, "requeue=false")
		}
		ch.recover()
		return nil

	case *amqp.ChannelClose:
		ch.shutdown()
		c.writeMethod(ch.id, &amqp.ChannelCloseOk{})
		c.removeChannel(ch.id)
		return nil
	case *amqp.ChannelCloseOk:
		return nil
	case *amqp.ChannelFlow:
		if !m.Active {
			return amqp.Errorf(amqp.NotImplemented, "active=false")
		}
		c.writeMethod(ch.id, &amqp.ChannelFlowOk{Active: true})
		return nil
	case *amqp.ChannelFlowOk:
		return nil
	case *amqp.ChannelOpen:
		return amqp.Errorf(amqp.ChannelError, "second 'channel.open' seen")

	case *amqp.ExchangeDeclare:
		spec := broker.ExchangeSpec{Name: m.Exchange, Type: m.Type, Passive: m.Passive, Durable: m.Durable,
			AutoDelete: m.AutoDelete, Internal: m.Internal, Args: m.Arguments}
		if err := ch.v.DeclareExchange(c.actor, spec); err != nil {
			return err
		}
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.ExchangeDeclareOk{})
		}
		return nil
	case *amqp.ExchangeDelete:
		if err := ch.v.DeleteExchange(c.actor, m.Exchange, m.IfUnused); err != nil {
			return err
		}
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.ExchangeDeleteOk{})
		}
		return nil
	case *amqp.ExchangeBind:
		b := broker.BindingSpec{Source: m.Source, Destination: m.Destination, ToExchange: true, Key: m.RoutingKey, Args: m.Arguments}
		if err := ch.v.Bind(c.actor, b); err != nil {
			return err
		}
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.ExchangeBindOk{})
		}
		return nil
	case *amqp.ExchangeUnbind:
		b := broker.BindingSpec{Source: m.Source, Destination: m.Destination, ToExchange: true, Key: m.RoutingKey, Args: m.Arguments}
		if err := ch.v.Unbind(c.actor, b); err != nil {
			return err
		}
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.ExchangeUnbindOk{})
		}
		return nil

	case *amqp.QueueDeclare:
		if m.Queue == broker.ReplyToQueue || (m.Passive && broker.IsReplyName(m.Queue)) {
			return ch.declareReplyTo(m)
		}
		spec := broker.QueueSpec{Name: m.Queue, Passive: m.Passive, Durable: m.Durable, Exclusive: m.Exclusive,
			AutoDelete: m.AutoDelete, Args: m.Arguments}
		qs, err := ch.v.DeclareQueue(c.actor, spec)
		if err != nil {
			return err
		}
		if !m.NoWait {
			ready, consumers := qs.DeclareCounts()
			if qs.Home() != "" {
				if ready, consumers, err = ch.remoteCountsAfterDeclare(qs, m.Passive); err != nil {
					return err
				}
			}
			c.writeMethod(ch.id, &amqp.QueueDeclareOk{Queue: qs.Name(), MessageCount: uint32(ready), ConsumerCount: uint32(consumers)})
		}
		return nil
	case *amqp.QueueBind:
		b := broker.BindingSpec{Source: m.Exchange, Destination: m.Queue, Key: m.RoutingKey, Args: m.Arguments}
		if err := ch.v.Bind(c.actor, b); err != nil {
			return err
		}
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.QueueBindOk{})
		}
		return nil
	case *amqp.QueueUnbind:
		b := broker.BindingSpec{Source: m.Exchange, Destination: m.Queue, Key: m.RoutingKey, Args: m.Arguments}
		if err := ch.v.Unbind(c.actor, b); err != nil {
			return err
		}
		c.writeMethod(ch.id, &amqp.QueueUnbindOk{})
		return nil
	case *amqp.QueuePurge:
		n, err := ch.purge(m.Queue)
		if err != nil {
			return err
		}
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.QueuePurgeOk{MessageCount: uint32(n)})
		}
		return nil
	case *amqp.QueueDelete:
		n, err := ch.deleteQueue(m.Queue, m.IfUnused, m.IfEmpty)
		if err != nil {
			return err
		}
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.QueueDeleteOk{MessageCount: uint32(n)})
		}
		return nil

	case *amqp.TxSelect:
		if ch.confirm {
			return amqp.Errorf(amqp.PreconditionFailed, "cannot switch from confirm to tx mode")
		}
		if ch.tx == nil {
			ch.tx = &txState{}
			ch.txMode.Store(true)
		}
		c.writeMethod(ch.id, &amqp.TxSelectOk{})
		return nil
	case *amqp.TxCommit:
		if ch.tx == nil {
			return amqp.Errorf(amqp.PreconditionFailed, "channel is not transactional")
		}
		return ch.commit()
	case *amqp.TxRollback:
		if ch.tx == nil {
			return amqp.Errorf(amqp.PreconditionFailed, "channel is not transactional")
		}
		ch.rollback()
		c.writeMethod(ch.id, &amqp.TxRollbackOk{})
		return nil

	case *amqp.ConfirmSelect:
		if ch.tx != nil {
			return amqp.Errorf(amqp.PreconditionFailed, "cannot switch from tx to confirm mode")
		}
		ch.confirm = true
		ch.confirmMode.Store(true)
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.ConfirmSelectOk{})
		}
		return nil
	}
	return amqp.Errorf(amqp.CommandInvalid, "unexpected method %s from client", m.Name())
}

// --- publish

// basicError is err as a channel exception of basic.publish.
// remoteCountsAfterDeclare asks qs's home for declare-ok's counts. A home behind on the
// metadata log does not know a queue this node has just seen declared (the declare waits only
// for this node's apply) and answers 404: while qs is still this node's entry for the name, the
// question is asked again (whileHomeLags).
//
// A queue that is gone by the time the home is asked (an x-expires of 100 ms runs out on the
// home before the question arrives; another client deletes it) was declared all the same:
// this node has applied the declare, and then the delete. A declare (not a passive one, which
// asks whether the queue is there now) gets its declare-ok with zero counts, as on one node,
// where the queue expires after the declare-ok, rather than a 404 for a queue it created.
func (ch *channel) remoteCountsAfterDeclare(qs *broker.Queue, passive bool) (ready, consumers int, err *amqp.Error) {
	err = ch.whileHomeLags(qs, func() *amqp.Error {
		var err *amqp.Error
		ready, consumers, err = ch.remoteCounts(qs)
		return err
	})
	if err != nil && err.Code == amqp.NotFound && !passive {
		if cur, lerr := ch.v.Queue(broker.System, qs.Name()); lerr != nil || cur != qs {
			return 0, 0, nil
		}
	}
	return ready, consumers, err
}

func basicError(e *amqp.Error) *amqp.Error {
	e.ClassID, e.MethodID = amqp.ClassBasic, 40
	return e
}

func (ch *channel) finishPublish() *amqp.Error {
	m, header, body, sum := ch.pubM, ch.pubHeader, ch.pubBody, ch.pubSummary
	ch.pubM, ch.pubHeader, ch.pubBody = nil, nil, nil
	if ch.c.link && m.Exchange == broker.ForwardExchange {
		return ch.finishForwarded(body)
	}
	ex, err := ch.v.Exchange(m.Exchange)
	if err != nil {
		return basicError(err)
	}
	if ex.Internal() {
		return basicError(amqp.Errorf(amqp.AccessRefused, "cannot publish to internal exchange '%s' in vhost '%s'", ex.Name(), ch.v.Name()))
	}
	if header, err = ch.stampReplyTo(header); err != nil {
		return basicError(err)
	}
	msg, err := ch.c.srv.b.NewMessage(ex, m.RoutingKey, header, &sum, body)
	if err != nil {
		return basicError(err)
	}
	ch.c.pendPublished++ // added to c.stats.published by countFrame
	if ch.tx != nil {
		ch.tx.publishes = append(ch.tx.publishes, txPublish{ex: ex, msg: msg, mandatory: m.Mandatory})
		return nil
	}
	var seq uint64
	var done func(error)
	if ch.confirm {
		ch.publishSeq++
		seq = ch.publishSeq
		ch.confirms.add(seq)
		// done runs on the store's journal (or a stream log's writer) goroutine, which
		// completes the confirms of every connection: it must not write to sockets itself.
		done = func(err error) { ch.confirms.settle(seq, err != nil, ch.writeConfirmsAsync) }
	}
	res, targets := ch.pub.Publish(ex, msg, sum.HeadersRaw, done)
	if !res.Routed {
		if m.Mandatory {
			ch.c.stats.returned.Add(1)
			ch.basicReturn(msg, amqp.NoRoute, "NO_ROUTE")
		} else {
			ch.c.stats.dropped.Add(1)
		}
	}
	if seq != 0 && !res.OnDisk {
		ch.confirms.settle(seq, res.Refused, ch.writeConfirms)
	} else if seq != 0 && res.Refused {
		ch.confirms.settle(seq, true, ch.writeConfirms)
	}
	if res.Routed {
		ch.pub.Flow(targets)
	}
	return nil
}

func (ch *channel) basicReturn(msg *queue.Message, code uint16, text string) {
	ch.c.writeContent(ch.id, &amqp.BasicReturn{ReplyCode: code, ReplyText: text, Exchange: msg.Exchange, RoutingKey: msg.RoutingKey}, msg.Header, msg.Body)
}

// --- consumers and deliveries

// consumer is one basic.consume subscription; it implements broker.Consumer.
type consumer struct {
	args      amqp.Table // as given to basic.consume, for the management API
	tag       string
	ch        *channel
	qs        *broker.Queue
	noAck     bool
	exclusive bool
	prefetch  int
	unacked   int                 // guarded by ch.mu
	remote    broker.ProxyChannel // a consumer of a queue of another node: its link channel (proxy.go)
	// cancelled: a proxied consumer the client cancelled; its link channel closes once
	// unacked is 0 (guarded by ch.mu).
	cancelled bool
}

// Deliver is called by the queue with its lock held.
func (cs *consumer) Deliver(_ *queue.Queue, e *queue.Entry) queue.Outcome {
	ch := cs.ch
	ch.mu.Lock()
	if ch.closed || ch.consumers[cs.tag] != cs {
		ch.mu.Unlock()
		return queue.Busy
	}
	if !cs.noAck && ((cs.prefetch > 0 && cs.unacked >= cs.prefetch) || (ch.prefetch > 0 && ch.inflight >= ch.prefetch)) {
		ch.starved = true
		ch.mu.Unlock()
		return queue.Busy
	}
	w := ch.c.w
	b := w.lock()
	if w.congestedLocked() {
		w.unlock(b)
		ch.mu.Unlock()
		return queue.Busy
	}
	ch.nextTag++
	tag := ch.nextTag
	start := len(b)
	b = amqp.BeginMethodFrame(b, ch.id)
	d := amqp.BasicDeliver{
		ConsumerTag: cs.tag, DeliveryTag: tag, Redelivered: e.Redelivered(),
		Exchange: e.Msg.Exchange, RoutingKey: e.Msg.RoutingKey,
	}
	b = d.Append(b)
	b = amqp.EndMethodFrame(b, start)
	b = amqp.AppendContent(b, ch.id, cs.qs.DeliveryHeader(e), e.Msg.Body, ch.c.frameMax)
	w.unlock(b)
	if !cs.noAck {
		ch.unacked = append(ch.unacked, delivery{tag: tag, qs: cs.qs, e: e, cons: cs})
		cs.unacked++
		ch.inflight++
	}
	ch.mu.Unlock()
	// e.Deliveries is incremented by the queue after Deliver returns.
	cs.qs.Delivered(e, e.Deliveries, cs.noAck)
	if cs.noAck {
		return queue.AcceptedNoAck
	}
	return queue.Accepted
}

// QueueDeleted ends a consumer whose queue was deleted, telling clients that understand it.
func (cs *consumer) QueueDeleted() {
	ch := cs.ch
	ch.mu.Lock()
	if ch.consumers[cs.tag] != cs {
		ch.mu.Unlock()
		return
	}
	delete(ch.consumers, cs.tag)
	closed := ch.closed
	ch.mu.Unlock()
	if !closed && ch.c.cancelNotify {
		ch.c.writeMethod(ch.id, &amqp.BasicCancel{ConsumerTag: cs.tag, NoWait: true})
	}
}

func (ch *channel) consume(m *amqp.BasicConsume) *amqp.Error {
	if _, ok := m.Arguments[broker.LinkNoTimeoutArg]; ok && ch.c.link {
		args := make(amqp.Table, len(m.Arguments))
		for k, v := range m.Arguments {
			if k != broker.LinkNoTimeoutArg {
				args[k] = v
			}
		}
		m.Arguments = args
		ch.noTimeout.Store(true)
	}
	tag := m.ConsumerTag
	if tag == "" {
		tag = broker.RandomName("amq.ctag-")
	}
	ch.mu.Lock()
	if _, dup := ch.consumers[tag]; dup {
		ch.mu.Unlock()
		return amqp.Errorf(amqp.NotAllowed, "attempt to reuse consumer tag '%s'", tag)
	}
	if m.Queue == broker.ReplyToQueue {
		defer ch.mu.Unlock()
		return ch.consumeRepliesLocked(tag, m)
	}
	ch.mu.Unlock()
	cs := &consumer{tag: tag, ch: ch, noAck: m.NoAck, exclusive: m.Exclusive, args: m.Arguments}
	if handled, err := ch.consumeStream(m, cs); handled {
		return err
	}
	if handled, err := ch.consumeRemote(m, cs); handled {
		return err
	}
	o := broker.ConsumeOptions{Exclusive: m.Exclusive, Args: m.Arguments}
	_, err := ch.v.ConsumeWith(ch.c.actor, m.Queue, cs, o, func(qs *broker.Queue) {
		cs.qs = qs
		ch.mu.Lock()
		cs.prefetch = ch.consumerPrefetch
		ch.consumers[tag] = cs
		ch.mu.Unlock()
		// consume-ok goes out before any delivery: both share the connection's ordered writer.
		if !m.NoWait {
			ch.c.writeMethod(ch.id, &amqp.BasicConsumeOk{ConsumerTag: tag})
		}
	})
	return err
}

// cancel ends a consumer at the client's request; its unacked messages stay unacked.
func (ch *channel) cancel(tag string) {
	ch.mu.Lock()
	if rc := ch.reply; rc != nil && rc.tag == tag {
		ch.reply = nil
		ch.mu.Unlock()
		ch.c.srv.b.UnregisterReplyTo(rc.name)
		return
	}
	cs := ch.consumers[tag]
	if cs != nil && cs.remote != nil {
		// On its home first: what the home delivered before its cancel-ok still reaches the
		// client. The link channel stays open for the acks of what it delivered, then closes
		// (closeDrained).
		rcs := cs
		ch.mu.Unlock()
		cs.remote.Cancel()
		ch.mu.Lock()
		if ch.consumers[tag] == rcs {
			delete(ch.consumers, tag)
		}
		// What it delivered over the channel's global prefetch, still held here, was never
		// seen by the client: back to the home queue.
		held := ch.takeHeldLocked(rcs)
		rcs.cancelled = true
		ch.mu.Unlock()
		for _, h := range held {
			h.rs.pc.Settle(broker.Requeue, h.d.Tag, false)
		}
		ch.closeDrained([]delivery{{cons: rcs}})
		return
	}
	delete(ch.consumers, tag)
	ch.mu.Unlock()
	if cs == nil {
		return
	}
	ch.v.Cancel(cs.qs, cs, cs.exclusive)
}

func (ch *channel) get(m *amqp.BasicGet) *amqp.Error {
	if handled, err := ch.getRemote(m); handled {
		return err
	}
	qs, e, remaining, ok, err := ch.v.Get(ch.c.actor, m.Queue, m.NoAck)
	if err != nil {
		return err
	}
	if !ok {
		ch.c.writeMethod(ch.id, &amqp.BasicGetEmpty{})
		return nil
	}
	ch.mu.Lock()
	ch.nextTag++
	tag := ch.nextTag
	w := ch.c.w
	b := w.lock()
	b = amqp.AppendMethodFrame(b, ch.id, &amqp.BasicGetOk{
		DeliveryTag: tag, Redelivered: e.Deliveries > 1, Exchange: e.Msg.Exchange,
		RoutingKey: e.Msg.RoutingKey, MessageCount: uint32(remaining),
	})
	b = amqp.AppendContent(b, ch.id, qs.DeliveryHeader(e), e.Msg.Body, ch.c.frameMax)
	w.unlock(b)
	if !m.NoAck {
		ch.unacked = append(ch.unacked, delivery{tag: tag, qs: qs, e: e})
		ch.inflight++
	}
	ch.mu.Unlock()
	return nil
}

func (ch *channel) qos(m *amqp.BasicQos) *amqp.Error {
	if m.PrefetchSize != 0 {
		return amqp.Errorf(amqp.NotImplemented, "prefetch_size!=0 (%d)", m.PrefetchSize)
	}
	ch.mu.Lock()
	if m.Global {
		ch.prefetch = int(m.PrefetchCount)
	} else {
		ch.consumerPrefetch = int(m.PrefetchCount)
	}
	ch.mu.Unlock()
	ch.c.writeMethod(ch.id, &amqp.BasicQosOk{})
	ch.kickConsumers()
	return nil
}

// kickConsumers retries delivery on every queue this channel consumes from.
func (ch *channel) kickConsumers() {
	// Proxied deliveries waiting for the global prefetch first (proxy.go).
	ch.sendHeld()
	var buf [4]*broker.Queue // the usual handful of consumers stays on the stack
	qs := buf[:0]
	ch.mu.Lock()
	for _, cs := range ch.consumers {
		qs = append(qs, cs.qs)
	}
	ch.mu.Unlock()
	for _, q := range qs {
		q.Kick()
	}
}

// --- acknowledgements

// takeUnacked removes the deliveries an ack-like method names. tag 0 with multiple means all.
// They are returned in scratch's backing array when it has room (settle's reusable buffer).
func (ch *channel) takeUnacked(tag uint64, multiple bool, scratch []delivery) ([]delivery, *amqp.Error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	i := sort.Search(len(ch.unacked), func(i int) bool { return ch.unacked[i].tag >= tag })
	var ds []delivery
	switch {
	case multiple && tag == 0:
		ds = ch.unacked
		ch.unacked = nil
	case i < len(ch.unacked) && ch.unacked[i].tag == tag:
		from := i
		if multiple {
			from = 0
		}
		ds = append(scratch[:0], ch.unacked[from:i+1]...)
		// Close the gap in place and clear the vacated tail, which would keep entries alive.
		n := from + copy(ch.unacked[from:], ch.unacked[i+1:])
		clear(ch.unacked[n:])
		ch.unacked = ch.unacked[:n]
	default:
		return nil, amqp.Errorf(amqp.PreconditionFailed, "unknown delivery tag %d", tag)
	}
	return ds, nil
}

// maxKeptSettleBuf bounds the delivery buffer a channel keeps between acks: one ack of a
// huge multiple run must not pin its array for the channel's lifetime.
const maxKeptSettleBuf = 1024

func (ch *channel) settle(tag uint64, multiple bool, kind broker.Settlement) *amqp.Error {
	ds, err := ch.takeUnacked(tag, multiple, ch.settleBuf)
	if err != nil {
		return err
	}
	if ch.tx != nil {
		ch.tx.settles = append(ch.tx.settles, txSettle{kind: kind, ds: slices.Clone(ds)})
	} else {
		local, remote := splitRemote(ds)
		ch.applyRemote(kind, remote, multiple)
		ch.apply(kind, local)
	}
	clear(ds)
	if cap(ds) <= maxKeptSettleBuf {
		ch.settleBuf = ds[:0]
	}
	return nil
}

// released gives back the prefetch credit of settled deliveries and reports whether a
// delivery was refused for want of it since the last call (see starved).
func (ch *channel) released(ds []delivery) (starved bool) {
	ch.mu.Lock()
	for _, d := range ds {
		if d.cons != nil {
			d.cons.unacked--
		}
	}
	ch.inflight -= len(ds)
	starved, ch.starved = ch.starved, false
	ch.mu.Unlock()
	return starved
}

// forEachQueue calls fn with each run of deliveries of one queue (ds grouped by queue), as the
// entries of that run.
func forEachQueue(ds []delivery, scratch []*queue.Entry, fn func(qs *broker.Queue, es []*queue.Entry)) {
	for start := 0; start < len(ds); {
		qs := ds[start].qs
		end := start + 1
		for end < len(ds) && ds[end].qs == qs {
			end++
		}
		es := scratch[:0]
		for _, d := range ds[start:end] {
			es = append(es, d.e)
		}
		fn(qs, es)
		start = end
	}
}

// apply settles deliveries for good: credit is returned, queues are told, durable copies go.
func (ch *channel) apply(kind broker.Settlement, ds []delivery) {
	if len(ds) == 0 {
		return
	}
	starved := ch.released(ds)
	var scratch []*queue.Entry
	if kind == broker.Ack {
		// Acked entries are not kept by the queue: the buffer is reused. Rejected and requeued
		// ones are, so they get a slice of their own.
		scratch = ch.entryBuf
	}
	forEachQueue(ds, scratch, func(qs *broker.Queue, es []*queue.Entry) {
		qs.Settle(kind, es, nil)
		if kind == broker.Ack {
			scratch = es
		}
	})
	if kind == broker.Ack && cap(scratch) <= maxKeptSettleBuf {
		clear(scratch[:cap(scratch)])
		ch.entryBuf = scratch[:0]
	}
	// Credit returned by an ack matters only to a consumer that was refused for want of it
	// (a refusal for a congested writer is retried by onDrain, one for a closed channel never).
	// Rejects and requeues kick always: they change the queues, not only the credit.
	if starved || kind != broker.Ack {
		ch.kickConsumers()
	}
}

// recover requeues everything unacked on the channel (basic.recover requeue=true).
func (ch *channel) recover() {
	// Acks waiting for tx.commit are not unacked any more, so, as in RabbitMQ, they stay out.
	ds, _ := ch.takeUnacked(0, true, nil)
	sort.Slice(ds, func(i, j int) bool { return ds[i].tag < ds[j].tag })
	local, remote := splitRemote(ds)
	// One requeue up to the highest link tag covers exactly these, unless acks wait in a
	// transaction: the home still counts those deliveries as unacked.
	ch.applyRemote(broker.Requeue, remote, ch.tx == nil)
	ch.apply(broker.Requeue, groupByQueue(local))
}

// groupByQueue orders deliveries so that each queue's run is contiguous, keeping tag order
// within a queue (requeue positions come from the entries' sequence numbers anyway).
func groupByQueue(ds []delivery) []delivery {
	sort.SliceStable(ds, func(i, j int) bool { return ds[i].qs.Name() < ds[j].qs.Name() })
	return ds
}

// --- direct reply-to (RabbitMQ's amq.rabbitmq.reply-to; texts measured on RabbitMQ 3.10.8)

// replyConsumer is a channel's consumer of the direct reply-to pseudo-queue; it implements
// broker.ReplySink.
type replyConsumer struct {
	ch   *channel
	tag  string
	name string // the reply name stamped on the channel's requests
}

// consumeRepliesLocked starts the channel's reply consumer; call with ch.mu held.
func (ch *channel) consumeRepliesLocked(tag string, m *amqp.BasicConsume) *amqp.Error {
	switch {
	case ch.reply != nil:
		return amqp.Errorf(amqp.PreconditionFailed, "reply consumer already set")
	case !m.NoAck:
		return amqp.Errorf(amqp.PreconditionFailed, "reply consumer cannot acknowledge")
	}
	rc := &replyConsumer{ch: ch, tag: tag}
	rc.name = ch.c.srv.b.RegisterReplyTo(rc)
	ch.reply = rc
	// No reply can arrive before consume-ok: the name is only known once a request carries it.
	if !m.NoWait {
		ch.c.writeMethod(ch.id, &amqp.BasicConsumeOk{ConsumerTag: tag})
	}
	return nil
}

// DeliverReply sends a reply to the client as a no-ack delivery of the reply consumer. A reply
// that finds the channel closed, or its connection's output over the high-water mark, is dropped:
// no queue holds replies, and a client that does not read must not grow the broker's buffers.
func (rc *replyConsumer) DeliverReply(msg *queue.Message) {
	ch := rc.ch
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.closed || ch.reply != rc {
		return
	}
	w := ch.c.w
	b := w.lock()
	if w.congestedLocked() {
		w.unlock(b)
		return
	}
	// As RabbitMQ 3.10.8 (measured): a reply carries the tag the channel's next delivery will
	// get, without taking it; no-ack deliveries cannot be acked, so the tag only has to keep
	// the channel's acked deliveries numbered as RabbitMQ numbers them.
	start := len(b)
	b = amqp.BeginMethodFrame(b, ch.id)
	d := amqp.BasicDeliver{ConsumerTag: rc.tag, DeliveryTag: ch.nextTag + 1, Exchange: msg.Exchange, RoutingKey: msg.RoutingKey}
	b = d.Append(b)
	b = amqp.EndMethodFrame(b, start)
	b = amqp.AppendContent(b, ch.id, msg.Header, msg.Body, ch.c.frameMax)
	w.unlock(b)
}

// replyToBytes finds candidate headers cheaply, before a full decode.
var replyToBytes = []byte(broker.ReplyToQueue)

// stampReplyTo replaces a reply_to of amq.rabbitmq.reply-to with the channel's reply name; a
// channel without a reply consumer gets RabbitMQ's 406.
func (ch *channel) stampReplyTo(header []byte) ([]byte, *amqp.Error) {
	// The property flags follow class id, weight and body size (2+2+8 bytes): most publishes
	// have no reply_to, and skip the search.
	if len(header) < 14 || binary.BigEndian.Uint16(header[12:14])&amqp.FlagReplyTo == 0 ||
		!bytes.Contains(header, replyToBytes) {
		return header, nil
	}
	h, err := amqp.DecodeContentHeader(header)
	if err != nil || h.Props.ReplyTo != broker.ReplyToQueue {
		return header, nil
	}
	ch.mu.Lock()
	rc := ch.reply
	ch.mu.Unlock()
	if rc == nil {
		return nil, amqp.Errorf(amqp.PreconditionFailed, "fast reply consumer does not exist")
	}
	h.Props.ReplyTo = rc.name
	return amqp.AppendContentHeader(nil, h.ClassID, h.BodySize, &h.Props), nil
}

// declareReplyTo answers queue.declare of the pseudo-queue (always declare-ok, with one
// consumer) and a passive one of a reply name (declare-ok while its consumer exists, so that an
// RPC server can check that the client is still there; 404 otherwise).
func (ch *channel) declareReplyTo(m *amqp.QueueDeclare) *amqp.Error {
	if m.Queue != broker.ReplyToQueue && !ch.c.srv.b.ReplyToExists(m.Queue) {
		return amqp.Errorf(amqp.NotFound, "no queue '%s' in vhost '%s'", m.Queue, ch.v.Name())
	}
	if !m.NoWait {
		ch.c.writeMethod(ch.id, &amqp.QueueDeclareOk{Queue: m.Queue, ConsumerCount: 1})
	}
	return nil
}

// --- transactions

// commit commits the channel's transaction in the core. A store failure is never acknowledged:
// the channel closes with 541 and, as nothing of the transaction was applied, its acked
// deliveries are requeued by the close like any unacked ones.
func (ch *channel) commit() *amqp.Error {
	tx := ch.tx
	ch.tx = &txState{}
	t := ch.v.NewTxn()
	for _, p := range tx.publishes {
		t.Publish(p.ex, p.msg, p.mandatory)
	}
	var remote []txSettle // settlements of proxied deliveries, sent once the commit succeeded
	for _, s := range tx.settles {
		local, rem := splitRemote(slices.Clone(s.ds))
		if len(rem) > 0 {
			remote = append(remote, txSettle{kind: s.kind, ds: rem})
		}
		forEachQueue(local, nil, func(qs *broker.Queue, es []*queue.Entry) { t.Settle(s.kind, qs, es) })
	}
	err := t.Commit(func(msg *queue.Message) { ch.basicReturn(msg, amqp.NoRoute, "NO_ROUTE") })
	if err != nil {
		ch.c.log.Error("tx.commit failed", "err", err)
		var back []delivery
		for _, s := range tx.settles {
			back = append(back, s.ds...)
		}
		ch.restoreUnacked(back)
		return amqp.Errorf(amqp.InternalError, "tx.commit failed: %v", err)
	}
	for _, s := range remote {
		ch.settleRemote(s.kind, s.ds, false)
	}
	for _, s := range tx.settles {
		ch.released(s.ds)
	}
	for _, s := range remote {
		ch.closeDrained(s.ds)
	}
	if len(tx.settles) > 0 {
		ch.kickConsumers()
	}
	ch.c.writeMethod(ch.id, &amqp.TxCommitOk{})
	return nil
}

// restoreUnacked puts deliveries back among the unacked ones, in tag order.
func (ch *channel) restoreUnacked(back []delivery) {
	if len(back) == 0 {
		return
	}
	ch.mu.Lock()
	ch.unacked = append(ch.unacked, back...)
	sort.Slice(ch.unacked, func(i, j int) bool { return ch.unacked[i].tag < ch.unacked[j].tag })
	ch.mu.Unlock()
}

// rollback discards the transaction's publishes and forgets its acks: those deliveries are
// unacked again.
func (ch *channel) rollback() {
	tx := ch.tx
	ch.tx = &txState{}
	var back []delivery
	for _, s := range tx.settles {
		back = append(back, s.ds...)
	}
	ch.restoreUnacked(back)
}

// leaving is what a closing channel takes out of one queue: its consumers and its unacked
// entries (in delivery order).
type leaving struct {
	cs []queue.Consumer
	es []*queue.Entry
}

// shutdown releases the channel: consumers are cancelled and unacked messages requeued, those
// acked in an uncommitted transaction included. It runs on the reader goroutine (or once the
// reader is gone), and may run again: what an earlier call (or the consumer timeout's detach)
// took is not there any more.
func (ch *channel) shutdown() {
	ch.pub.Flush()
	consumers, ds := ch.detach()
	if ch.tx != nil {
		for _, s := range ch.tx.settles {
			ds = append(ds, s.ds...)
		}
		ch.tx = nil
	}
	ch.releaseHeld(consumers, ds)
}

// detach marks the channel closed (no more deliveries) and takes its consumers, unacked
// deliveries and reply consumer; safe on any goroutine. Whatever the reader adds after it
// (a consume or basic.get under way) is taken by the reader's shutdown.
func (ch *channel) detach() ([]*consumer, []delivery) {
	ch.mu.Lock()
	ch.closed = true
	consumers := make([]*consumer, 0, len(ch.consumers))
	for _, cs := range ch.consumers {
		consumers = append(consumers, cs)
	}
	ch.consumers = map[string]*consumer{}
	ds := ch.unacked
	ch.unacked = nil
	if rc := ch.reply; rc != nil {
		ch.reply = nil
		ch.c.srv.b.UnregisterReplyTo(rc.name) // later replies to it are dropped
	}
	ch.ackMarks = nil
	ch.mu.Unlock()
	return consumers, ds
}

// releaseHeld removes consumers from their queues and requeues deliveries; safe on any
// goroutine.
func (ch *channel) releaseHeld(consumers []*consumer, ds []delivery) {
	ch.closeRemote() // the home nodes requeue the proxied deliveries
	if len(consumers) == 0 && len(ds) == 0 {
		return
	}
	// Per queue, the consumers leave and the unacked messages are requeued in one step
	// (RemoveConsumers), so that requeued messages go to other consumers, and the next single
	// active consumer gets them before anything newer. The queues' consumer counts drop after
	// it (an auto-delete queue must not be deleted with the messages still out).
	ch.released(ds)
	byQueue := map[*broker.Queue]*leaving{}
	var order []*broker.Queue
	at := func(qs *broker.Queue) *leaving {
		l := byQueue[qs]
		if l == nil {
			l = &leaving{}
			byQueue[qs] = l
			order = append(order, qs)
		}
		return l
	}
	for _, cs := range consumers {
		if cs.remote != nil {
			continue
		}
		l := at(cs.qs)
		l.cs = append(l.cs, cs)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].tag < ds[j].tag })
	for _, d := range ds {
		if d.rem != nil {
			continue
		}
		l := at(d.qs)
		l.es = append(l.es, d.e)
	}
	for _, qs := range order {
		l := byQueue[qs]
		qs.Q().RemoveConsumers(l.cs, l.es)
	}
	for _, cs := range consumers {
		if cs.remote == nil {
			ch.v.ConsumerRemoved(cs.qs, cs.exclusive)
		}
	}
}

// --- consumer timeout (RabbitMQ's consumer_timeout, x-consumer-timeout, consumer-timeout)

// tagMark records that every delivery up to tag had been made by at.
type tagMark struct {
	tag uint64
	at  time.Time
}

// maxAckMarks bounds a channel's marks; beyond it the second oldest is dropped, which only
// delays (never advances) the timeout of the deliveries it covered.
const maxAckMarks = 64

// consumerTimedOut is called periodically (Server.consumerTimeoutLoop) and reports RabbitMQ's
// 406 when the channel's oldest unacked delivery has been out longer than its queue's consumer
// timeout (def: the server's). Like RabbitMQ, only the oldest delivery is checked. No clock is
// read per delivery: each check marks the delivery tag reached, and a delivery's age is at least
// the age of the first mark at or above its tag, so a timeout can come up to two check
// intervals late, never early.
func (ch *channel) consumerTimedOut(now time.Time, def time.Duration) *amqp.Error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.closed || len(ch.unacked) == 0 || ch.noTimeout.Load() {
		ch.ackMarks = ch.ackMarks[:0]
		return nil
	}
	oldest := ch.unacked[0]
	marks := ch.ackMarks
	i := 0
	for i < len(marks) && marks[i].tag < oldest.tag {
		i++
	}
	marks = append(marks[:0], marks[i:]...)
	if n := len(marks); n == 0 || marks[n-1].tag != ch.nextTag {
		if n >= maxAckMarks {
			marks = append(marks[:1], marks[2:]...)
		}
		marks = append(marks, tagMark{tag: ch.nextTag, at: now})
	}
	ch.ackMarks = marks
	timeout := oldest.qs.ConsumerTimeout(def)
	if timeout <= 0 || now.Sub(marks[0].at) <= timeout {
		return nil
	}
	return amqp.Errorf(amqp.PreconditionFailed, "delivery acknowledgement on channel %d timed out. Timeout value used: %d ms. "+
		"This timeout value can be configured, see consumers doc guide to learn more", ch.id, timeout.Milliseconds())
}

// timeOut closes the channel for a consumer timeout, off the reader goroutine: consumers and
// unacked deliveries are released at once (the messages requeued), channel.close goes out, and
// the reader treats the channel as closing from its next frame on.
func (ch *channel) timeOut(e *amqp.Error) {
	if ch.closeDetached(e) {
		ch.c.log.Warn("consumer timeout: delivery not acknowledged in time, closing channel", "channel", ch.id, "text", e.Text)
	}
}

// closeDetached closes the channel with e from outside its reader (false: the reader is
// closing it already): consumers and unacked deliveries are released (the messages
// requeued) and channel.close goes out, and the reader treats the channel as closing from its
// next frame on. The release runs off the caller, a loop shared by many channels (the
// server's consumer timeouts, the data link's read loop): a quorum queue's requeue waits for
// its log (up to its operation timeout, without a majority), and the others would wait
// behind it.
func (ch *channel) closeDetached(e *amqp.Error) bool {
	if !ch.closeSent.CompareAndSwap(false, true) {
		return false
	}
	ch.timedOut.Store(true)
	consumers, ds := ch.detach()
	go func() {
		ch.releaseHeld(consumers, ds)
		ch.c.writeMethod(ch.id, &amqp.ChannelClose{ReplyCode: e.Code, ReplyText: e.Text})
	}()
	return true
}

// --- publisher confirms

const (
	confirmPending uint8 = iota
	confirmAck
	confirmNack
)

// confirmTracker turns out-of-order completions (memory-only publishes finish at once,
// persistent ones when their batch is synced) into in-order basic.ack/nack frames, folding runs
// of acks into one multiple=true ack.
type confirmTracker struct {
	mu     sync.Mutex
	base   uint64
	states []uint8
	ops    []confirmOp
	acked  atomic.Uint64 // publishes confirmed with basic.ack, for the management API
}

func (t *confirmTracker) add(seq uint64) {
	t.mu.Lock()
	if len(t.states) == 0 {
		t.base = seq
	}
	t.states = append(t.states, confirmPending)
	t.mu.Unlock()
}

// confirmOp is one basic.ack or basic.nack to send.
type confirmOp struct {
	tag      uint64
	multiple bool
	nack     bool
}

// settle records the outcome of publish seq and passes the confirms that became sendable, in
// order, to emit (called with the tracker locked, so frames from concurrent settles never reorder).
func (t *confirmTracker) settle(seq uint64, nack bool, emit func([]confirmOp)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if seq < t.base || seq >= t.base+uint64(len(t.states)) {
		return
	}
	i := seq - t.base
	if t.states[i] != confirmPending {
		return
	}
	t.states[i] = confirmAck
	if nack {
		t.states[i] = confirmNack
	}
	n := 0
	for n < len(t.states) && t.states[n] != confirmPending {
		n++
	}
	if n == 0 {
		return
	}
	acked := 0
	for _, st := range t.states[:n] {
		if st == confirmAck {
			acked++
		}
	}
	t.acked.Add(uint64(acked))
	t.ops = t.ops[:0]
	for j := 0; j < n; {
		if t.states[j] == confirmNack {
			t.ops = append(t.ops, confirmOp{tag: t.base + uint64(j), nack: true})
			j++
			continue
		}
		k := j
		for k+1 < n && t.states[k+1] == confirmAck {
			k++
		}
		t.ops = append(t.ops, confirmOp{tag: t.base + uint64(k), multiple: k > j})
		j = k + 1
	}
	emit(t.ops)
	t.states = t.states[n:]
	t.base += uint64(n)
}

// writeConfirms sends confirm frames (written inline when the connection is idle; see
// writer.unlock).
func (ch *channel) writeConfirms(ops []confirmOp) {
	w := ch.c.w
	w.unlock(appendConfirmFrames(w.lock(), ch.id, ops))
}

// writeConfirmsAsync sends confirm frames through the connection's flusher.
func (ch *channel) writeConfirmsAsync(ops []confirmOp) {
	w := ch.c.w
	w.unlockAsync(appendConfirmFrames(w.lock(), ch.id, ops))
}

// appendConfirmFrames appends the basic.ack and basic.nack frames of ops on channel, encoded
// from method values on the stack (amqp.AppendMethodFrame's interface argument allocates one
// per confirm).
func appendConfirmFrames(b []byte, channel uint16, ops []confirmOp) []byte {
	for _, op := range ops {
		start := len(b)
		b = amqp.BeginMethodFrame(b, channel)
		if op.nack {
			m := amqp.BasicNack{DeliveryTag: op.tag, Multiple: op.multiple}
			b = m.Append(b)
		} else {
			m := amqp.BasicAck{DeliveryTag: op.tag, Multiple: op.multiple}
			b = m.Append(b)
		}
		b = amqp.EndMethodFrame(b, start)
	}
	return b
}
