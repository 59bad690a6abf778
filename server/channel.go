package server

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"

	"warren/amqp"
	"warren/persistence"
	"warren/queue"
)

// delivery is one unacknowledged message on a channel.
type delivery struct {
	tag  uint64
	qs   *queueState
	e    *queue.Entry
	cons *consumer // nil for basic.get
}

// settleKind is what an ack-like method does with its deliveries.
type settleKind uint8

const (
	settleAck settleKind = iota
	settleReject
	settleRequeue
)

type txPublish struct {
	ex        *exchangeState
	msg       *queue.Message
	mandatory bool
}

type txSettle struct {
	kind settleKind
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
	c  *conn
	id uint16
	v  *vhost

	closing bool // we sent channel.close and wait for close-ok

	// Content assembly for basic.publish.
	pubMethod   amqp.BasicPublish // reused by every publish (see scannedPublish)
	pub         *amqp.BasicPublish
	pubSummary  amqp.HeaderSummary
	pubHeader   []byte
	pubBody     []byte
	pubSize     uint64
	pubGot      uint64
	pubOverflow bool

	rb         routeBuf
	entryBuf   []*queue.Entry // enqueue's reusable entry buffer
	settleBuf  []delivery     // settle's reusable delivery buffer
	pubCount   uint64         // publishes, for flowCheck
	confirm    bool
	publishSeq uint64
	confirms   confirmTracker
	tx         *txState

	mu               sync.Mutex
	closed           bool
	nextTag          uint64
	unacked          []delivery // ascending tags; values, so a delivery allocates nothing
	inflight         int        // delivered and not yet settled (including acks waiting for tx.commit)
	prefetch         int        // basic.qos global=true: limit for the whole channel
	consumerPrefetch int        // basic.qos global=false: limit for consumers created afterwards
	consumers        map[string]*consumer
}

func newChannel(c *conn, id uint16) *channel {
	return &channel{c: c, id: id, v: c.vhost, consumers: map[string]*consumer{}}
}

// handleFrame processes one frame for this channel. A returned error is a connection exception;
// channel exceptions are handled here by closing the channel.
func (ch *channel) handleFrame(f amqp.Frame) error {
	var aerr *amqp.Error
	switch {
	case ch.pub != nil && ch.pubHeader == nil:
		// Content framing is enforced even on a closing channel, as in RabbitMQ.
		if f.Type != amqp.FrameHeader {
			return contentFrameError("expected content header for class 60, got non content header frame instead")
		}
		aerr = ch.contentHeader(f.Payload)
	case ch.pub != nil:
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
		ch.c.writeMethod(ch.id, &amqp.ChannelCloseOk{})
		ch.c.removeChannel(ch.id)
	case *amqp.BasicPublish:
		ch.pub = m.(*amqp.BasicPublish)
	}
}

// fail closes the channel with a channel exception: resources go at once, close-ok is awaited.
func (ch *channel) fail(e *amqp.Error) {
	ch.c.log.Debug("channel error", "channel", ch.id, "code", e.Code, "text", e.Text)
	ch.closing = true
	ch.pub, ch.pubHeader, ch.pubBody = nil, nil, nil
	ch.shutdown()
	text := e.Text
	if len(text) > 255 {
		text = text[:255]
	}
	ch.c.writeMethod(ch.id, &amqp.ChannelClose{ReplyCode: e.Code, ReplyText: text, ClassId: e.ClassID, MethodId: e.MethodID})
}

func (ch *channel) contentHeader(p []byte) *amqp.Error {
	// The header of a message that will be kept is copied before the scan, so that the summary
	// (HeadersRaw) aliases the copy and the header is scanned once. A small body shares that
	// allocation; a larger one is allocated by contentBody as a copy of its frame, which spares
	// zeroing it first.
	maxSize := uint64(ch.c.srv.maxMessageSize())
	hdr, buf := p, []byte(nil)
	if !ch.closing && len(p) >= 12 {
		if size := binary.BigEndian.Uint64(p[4:12]); size < separateBodyMin {
			buf = make([]byte, len(p)+int(size))
			copy(buf, p)
			hdr = buf[:len(p):len(p)]
		} else if size <= maxSize {
			hdr = make([]byte, len(p))
			copy(hdr, p)
		}
	}
	sum, err := amqp.ScanContentHeader(hdr)
	if err != nil {
		return asAMQP(err)
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
		ch.pubBody = buf[len(p):]
	}
	ch.pubSummary = sum
	if sum.UserID != "" && sum.UserID != ch.c.user {
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
		copy(ch.pubBody[ch.pubGot:], p)
	default:
		// make+copy into a local compiles to makeslicecopy, which zeroes only the part not
		// copied; into the field it would zero the whole body first.
		b := make([]byte, ch.pubSize)
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
		ch.pub, ch.pubHeader, ch.pubBody = nil, nil, nil
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
		ch.pub = m
		ch.c.publisher.Store(true)
		return nil
	case *amqp.BasicAck:
		return ch.settle(m.DeliveryTag, m.Multiple, settleAck)
	case *amqp.BasicNack:
		kind := settleReject
		if m.Requeue {
			kind = settleRequeue
		}
		return ch.settle(m.DeliveryTag, m.Multiple, kind)
	case *amqp.BasicReject:
		kind := settleReject
		if m.Requeue {
			kind = settleRequeue
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
		if err := ch.v.declareExchange(c, m); err != nil {
			return err
		}
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.ExchangeDeclareOk{})
		}
		return nil
	case *amqp.ExchangeDelete:
		if err := ch.v.deleteExchange(c, m.Exchange, m.IfUnused); err != nil {
			return err
		}
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.ExchangeDeleteOk{})
		}
		return nil
	case *amqp.ExchangeBind:
		if err := ch.v.bind(c, m.Source, m.Destination, true, m.RoutingKey, m.Arguments); err != nil {
			return err
		}
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.ExchangeBindOk{})
		}
		return nil
	case *amqp.ExchangeUnbind:
		if err := ch.v.unbind(c, m.Source, m.Destination, true, m.RoutingKey, m.Arguments); err != nil {
			return err
		}
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.ExchangeUnbindOk{})
		}
		return nil

	case *amqp.QueueDeclare:
		qs, err := ch.v.declareQueue(c, m)
		if err != nil {
			return err
		}
		if !m.NoWait {
			st := qs.q.Stats()
			c.writeMethod(ch.id, &amqp.QueueDeclareOk{Queue: qs.name, MessageCount: uint32(st.Ready), ConsumerCount: uint32(st.Consumers)})
		}
		return nil
	case *amqp.QueueBind:
		if err := ch.v.bind(c, m.Exchange, m.Queue, false, m.RoutingKey, m.Arguments); err != nil {
			return err
		}
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.QueueBindOk{})
		}
		return nil
	case *amqp.QueueUnbind:
		if err := ch.v.unbind(c, m.Exchange, m.Queue, false, m.RoutingKey, m.Arguments); err != nil {
			return err
		}
		c.writeMethod(ch.id, &amqp.QueueUnbindOk{})
		return nil
	case *amqp.QueuePurge:
		if err := c.authorize(permRead, resQueue, m.Queue); err != nil {
			return err
		}
		ch.v.mu.RLock()
		qs, err := ch.v.lookupQueue(c, m.Queue)
		ch.v.mu.RUnlock()
		if err != nil {
			return err
		}
		n := qs.q.Purge()
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.QueuePurgeOk{MessageCount: uint32(n)})
		}
		return nil
	case *amqp.QueueDelete:
		n, err := ch.v.deleteQueue(c, m.Queue, m.IfUnused, m.IfEmpty)
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
		}
		c.writeMethod(ch.id, &amqp.TxSelectOk{})
		return nil
	case *amqp.TxCommit:
		if ch.tx == nil {
			return amqp.Errorf(amqp.PreconditionFailed, "channel is not transactional")
		}
		ch.commit()
		return nil
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
		if !m.NoWait {
			c.writeMethod(ch.id, &amqp.ConfirmSelectOk{})
		}
		return nil
	}
	return amqp.Errorf(amqp.CommandInvalid, "unexpected method %s from client", m.Name())
}

// --- publish

func (ch *channel) finishPublish() *amqp.Error {
	m, header, body, sum := ch.pub, ch.pubHeader, ch.pubBody, ch.pubSummary
	ch.pub, ch.pubHeader, ch.pubBody = nil, nil, nil
	if err := ch.authorizePublish(m.Exchange); err != nil {
		return err
	}
	v := ch.v
	v.mu.RLock()
	ex := v.exchanges[m.Exchange]
	v.mu.RUnlock()
	if ex == nil {
		e := v.errNoExchange(m.Exchange)
		e.ClassID, e.MethodID = amqp.ClassBasic, 40
		return e
	}
	if ex.internal {
		e := amqp.Errorf(amqp.AccessRefused, "cannot publish to internal exchange '%s' in vhost '%s'", ex.name, v.name)
		e.ClassID, e.MethodID = amqp.ClassBasic, 40
		return e
	}
	msg := &queue.Message{
		ID:         ch.c.srv.nextMessageID(),
		Exchange:   m.Exchange,
		RoutingKey: m.RoutingKey,
		Header:     header,
		Body:       body,
		Persistent: sum.DeliveryMode == 2,
	}
	if sum.Expiration != "" {
		ms, err := strconv.ParseInt(sum.Expiration, 10, 64)
		if err != nil || ms < 0 {
			detail := "no_integer"
			if err == nil {
				detail = fmt.Sprintf("{value_negative,%d}", ms)
			}
			e := amqp.Errorf(amqp.PreconditionFailed, "invalid expiration '%s': %s", sum.Expiration, detail)
			e.ClassID, e.MethodID = amqp.ClassBasic, 40
			return e
		}
		msg.ExpiresAt = expiresAfter(ms)
	}
	if ch.tx != nil {
		ch.tx.publishes = append(ch.tx.publishes, txPublish{ex: ex, msg: msg, mandatory: m.Mandatory})
		return nil
	}
	var seq uint64
	if ch.confirm {
		ch.publishSeq++
		seq = ch.publishSeq
		ch.confirms.add(seq)
	}
	targets := v.route(ex, m.RoutingKey, sum.HeadersRaw, &ch.rb)
	if mayHaveSenderKeys(sum.HeadersRaw) {
		targets = ch.senderSelected(ex, msg, sum.HeadersRaw)
	}
	if len(targets) == 0 {
		if m.Mandatory {
			ch.basicReturn(msg, amqp.NoRoute, "NO_ROUTE")
		}
		if seq != 0 {
			ch.confirms.settle(seq, false, ch.writeConfirms)
		}
		return nil
	}
	var done func(error)
	if seq != 0 {
		done = func(err error) { ch.confirms.settle(seq, err != nil, ch.writeConfirms) }
	}
	refused, onDisk := v.enqueue(msg, targets, done, &ch.entryBuf)
	if seq != 0 && (refused || !onDisk) {
		ch.confirms.settle(seq, refused, ch.writeConfirms)
	}
	ch.flowCheck(targets)
	return nil
}

// senderSelected routes a message by its routing key plus its CC and BCC keys, and strips BCC
// from the message, as RabbitMQ does.
func (ch *channel) senderSelected(ex *exchangeState, msg *queue.Message, headersRaw []byte) []*queueState {
	h, _, err := amqp.DecodeTable(headersRaw)
	if err != nil {
		return ch.v.route(ex, msg.RoutingKey, headersRaw, &ch.rb)
	}
	cc, bcc := senderKeys(h)
	keys := append(append([]string{msg.RoutingKey}, cc...), bcc...)
	targets := ch.v.routeKeys(ex, keys, headersRaw, &ch.rb)
	if _, ok := h["BCC"]; ok {
		if full, err := amqp.DecodeContentHeader(msg.Header); err == nil {
			delete(full.Props.Headers, "BCC")
			msg.Header = amqp.AppendContentHeader(nil, full.ClassID, full.BodySize, &full.Props)
		}
	}
	return targets
}

// needsDisk reports whether a publish writes to the store (then its confirm waits for the sync).
func needsDisk(msg *queue.Message, targets []*queueState) bool {
	if !msg.Persistent {
		return false
	}
	for _, qs := range targets {
		if qs.durable {
			return true
		}
	}
	return false
}

func (ch *channel) basicReturn(msg *queue.Message, code uint16, text string) {
	ch.c.writeContent(ch.id, &amqp.BasicReturn{ReplyCode: code, ReplyText: text, Exchange: msg.Exchange, RoutingKey: msg.RoutingKey}, msg.Header, msg.Body)
}

// prepared is a message with its entries built for each target queue, not yet visible.
type prepared struct {
	msg     *queue.Message
	targets []*queueState
	entries []*queue.Entry
}

// prepare builds entries for msg in targets and adds the persistent copy for durable queues to
// batch. Entries become visible only in push, after the batch was submitted, so a consumer's ack
// can never reach the journal before the publish it removes. The entries go into scratch's
// backing array when it is large enough (the caller's reusable buffer), else a new one.
func (v *vhost) prepare(msg *queue.Message, targets []*queueState, batch *persistence.Batch, scratch []*queue.Entry) prepared {
	if cap(scratch) < len(targets) {
		scratch = make([]*queue.Entry, len(targets))
	}
	p := prepared{msg: msg, targets: targets, entries: scratch[:len(targets)]}
	// Sequence numbers are never reused: a queue's restart continues after the stored ones,
	// and a queue declared again after a delete waits until the store has dropped the old
	// entries (vhost.deleting).
	pub := persistence.Publish{NewEntries: true}
	for i, qs := range targets {
		e := qs.q.NewEntry(qs.q.NextSeq(), msg)
		if msg.Persistent && qs.durable {
			e.Durable = true
			pub.Entries = append(pub.Entries, persistence.Entry{Queue: qs.ref(), Seq: e.Seq, MsgID: msg.ID, ExpiresAt: e.ExpiresAt})
		}
		p.entries[i] = e
	}
	if len(pub.Entries) > 1 {
		for _, e := range p.entries {
			e.SharedOnDisk = e.Durable
		}
	}
	if len(pub.Entries) > 0 {
		pub.Msg = storedMessage(msg)
		batch.Publishes = append(batch.Publishes, pub)
	}
	return p
}

// push makes prepared entries visible and reports whether any queue refused the message
// (a full queue with a reject-publish overflow policy). A publisher (not dead-lettering,
// which may run on the store's reader) waits while a capped queue drops its paged-out head.
func (v *vhost) push(p prepared, publisher bool) bool {
	refused := false
	for i, qs := range p.targets {
		switch qs.q.Push(p.entries[i]) {
		case queue.Enqueued:
			if publisher {
				qs.q.AwaitLimits()
			}
			continue
		case queue.RefusedDeadLetter:
			v.dropped(qs, p.entries[i:i+1], queue.MaxLen)
		default:
			v.removeDurable(qs, p.entries[i:i+1], nil)
		}
		refused = true
	}
	return refused
}

// enqueue delivers msg to targets; done (may be nil) runs once its durable copy is synced,
// which onDisk reports is needed. scratch is a buffer for the entries, reused across calls by
// one goroutine.
func (v *vhost) enqueue(msg *queue.Message, targets []*queueState, done func(error), scratch *[]*queue.Entry) (refused, onDisk bool) {
	var batch *persistence.Batch // only persistent messages for durable queues need one
	if onDisk = needsDisk(msg, targets); onDisk {
		batch = &persistence.Batch{}
	}
	p := v.prepare(msg, targets, batch, *scratch)
	if onDisk {
		v.srv.store.Submit(batch, done)
	}
	refused = v.push(p, true)
	clear(p.entries) // the queues own the entries now; drop our references
	*scratch = p.entries[:0]
	return refused, onDisk
}

// --- consumers and deliveries

// consumer is one basic.consume subscription; it implements queue.Consumer.
type consumer struct {
	tag       string
	ch        *channel
	qs        *queueState
	noAck     bool
	exclusive bool
	prefetch  int
	unacked   int // guarded by ch.mu
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
	b = amqp.AppendContent(b, ch.id, cs.qs.deliveryHeader(e), e.Msg.Body, ch.c.frameMax)
	w.unlock(b)
	if !cs.noAck {
		ch.unacked = append(ch.unacked, delivery{tag: tag, qs: cs.qs, e: e, cons: cs})
		cs.unacked++
		ch.inflight++
	}
	ch.mu.Unlock()
	if e.Durable {
		cs.qs.journalDelivery(e, cs.noAck)
	}
	if cs.noAck {
		return queue.AcceptedNoAck
	}
	return queue.Accepted
}

// deliveryHeader is the content header to send: the publisher's bytes verbatim, except that
// quorum-style queues add x-delivery-count to redeliveries, as RabbitMQ does.
func (qs *queueState) deliveryHeader(e *queue.Entry) []byte {
	if e.Returns == 0 || (!qs.spec.quorum && qs.q.Options().DeliveryLimit < 0) {
		return e.Msg.Header
	}
	h, err := amqp.DecodeContentHeader(e.Msg.Header)
	if err != nil {
		return e.Msg.Header
	}
	headers := make(amqp.Table, len(h.Props.Headers)+1)
	for k, v := range h.Props.Headers {
		headers[k] = v
	}
	headers["x-delivery-count"] = int64(e.Returns)
	h.Props.Headers = headers
	return amqp.AppendContentHeader(nil, h.ClassID, h.BodySize, &h.Props)
}

// journalDelivery records on disk that a durable entry was delivered (so it comes back
// redelivered after a restart) or, for no-ack deliveries, that it is gone.
func (qs *queueState) journalDelivery(e *queue.Entry, noAck bool) {
	store := qs.v.srv.store
	ent := qs.diskEntry(e)
	if noAck {
		store.Submit(&persistence.Batch{Removes: []persistence.Entry{ent}}, nil)
		return
	}
	// e.Deliveries is incremented by the queue after Deliver returns.
	if e.Deliveries == 0 || qs.q.Options().DeliveryLimit >= 0 {
		store.Submit(&persistence.Batch{Deliveries: []persistence.DeliveryMark{{Entry: ent, Count: e.Deliveries + 1}}}, nil)
	}
}

func (ch *channel) consume(m *amqp.BasicConsume) *amqp.Error {
	if err := ch.c.authorize(permRead, resQueue, m.Queue); err != nil {
		return err
	}
	v := ch.v
	v.mu.RLock()
	qs, err := v.lookupQueue(ch.c, m.Queue)
	v.mu.RUnlock()
	if err != nil {
		return err
	}
	tag := m.ConsumerTag
	if tag == "" {
		tag = randomName("amq.ctag-")
	}
	ch.mu.Lock()
	if _, dup := ch.consumers[tag]; dup {
		ch.mu.Unlock()
		return amqp.Errorf(amqp.NotAllowed, "attempt to reuse consumer tag '%s'", tag)
	}
	ch.mu.Unlock()
	v.mu.Lock()
	if qs.deleted.Load() {
		v.mu.Unlock()
		return v.errNoQueue(m.Queue)
	}
	if qs.exclusiveConsumer || (m.Exclusive && qs.consumers > 0) {
		v.mu.Unlock()
		return amqp.Errorf(amqp.AccessRefused, "queue '%s' in vhost '%s' in exclusive use", qs.name, v.name)
	}
	v.mu.Unlock()
	cs := &consumer{tag: tag, ch: ch, qs: qs, noAck: m.NoAck, exclusive: m.Exclusive}
	ch.mu.Lock()
	cs.prefetch = ch.consumerPrefetch
	ch.consumers[tag] = cs
	ch.mu.Unlock()
	v.consumerAdded(qs, m.Exclusive)
	// consume-ok goes out before any delivery: both share the connection's ordered writer.
	if !m.NoWait {
		ch.c.writeMethod(ch.id, &amqp.BasicConsumeOk{ConsumerTag: tag})
	}
	qs.q.AddConsumer(cs)
	return nil
}

// cancel ends a consumer at the client's request; its unacked messages stay unacked.
func (ch *channel) cancel(tag string) {
	ch.mu.Lock()
	cs := ch.consumers[tag]
	delete(ch.consumers, tag)
	ch.mu.Unlock()
	if cs == nil {
		return
	}
	cs.qs.q.RemoveConsumer(cs)
	ch.v.consumerRemoved(cs.qs, cs.exclusive)
}

// serverCancel ends a consumer whose queue was deleted, telling clients that understand it.
func (ch *channel) serverCancel(cs *consumer) {
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

func (ch *channel) get(m *amqp.BasicGet) *amqp.Error {
	if err := ch.c.authorize(permRead, resQueue, m.Queue); err != nil {
		return err
	}
	v := ch.v
	v.mu.RLock()
	qs, err := v.lookupQueue(ch.c, m.Queue)
	v.mu.RUnlock()
	if err != nil {
		return err
	}
	v.touch(qs)
	e, remaining, ok := qs.q.Get(m.NoAck)
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
	b = amqp.AppendContent(b, ch.id, qs.deliveryHeader(e), e.Msg.Body, ch.c.frameMax)
	w.unlock(b)
	if !m.NoAck {
		ch.unacked = append(ch.unacked, delivery{tag: tag, qs: qs, e: e})
		ch.inflight++
	}
	ch.mu.Unlock()
	if e.Durable {
		// Get already counted this delivery; journalDelivery expects the count before it.
		e.Deliveries--
		qs.journalDelivery(e, m.NoAck)
		e.Deliveries++
	}
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
	var buf [4]*queue.Queue // the usual handful of consumers stays on the stack
	qs := buf[:0]
	ch.mu.Lock()
	for _, cs := range ch.consumers {
		qs = append(qs, cs.qs.q)
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

func (ch *channel) settle(tag uint64, multiple bool, kind settleKind) *amqp.Error {
	ds, err := ch.takeUnacked(tag, multiple, ch.settleBuf)
	if err != nil {
		return err
	}
	if ch.tx != nil {
		ch.tx.settles = append(ch.tx.settles, txSettle{kind: kind, ds: slices.Clone(ds)})
	} else {
		ch.apply(kind, ds, nil)
	}
	clear(ds)
	if cap(ds) <= maxKeptSettleBuf {
		ch.settleBuf = ds[:0]
	}
	return nil
}

// apply settles deliveries for good: credit is returned, queues are told, durable copies go.
// With batch non-nil (tx.commit) the removals of acked messages join the transaction's batch.
func (ch *channel) apply(kind settleKind, ds []delivery, batch *persistence.Batch) {
	if len(ds) == 0 {
		return
	}
	ch.mu.Lock()
	for _, d := range ds {
		if d.cons != nil {
			d.cons.unacked--
		}
	}
	ch.inflight -= len(ds)
	ch.mu.Unlock()

	var removes []persistence.Entry
	for start := 0; start < len(ds); {
		qs := ds[start].qs
		end := start + 1
		for end < len(ds) && ds[end].qs == qs {
			end++
		}
		if kind == settleAck {
			qs.q.Ack(end - start)
			if !qs.deleted.Load() { // a deleted queue's entries went with store.DeleteQueue
				for _, d := range ds[start:end] {
					if d.e.Durable {
						removes = append(removes, qs.diskEntry(d.e))
					}
				}
			}
			start = end
			continue
		}
		es := make([]*queue.Entry, end-start)
		for i, d := range ds[start:end] {
			es[i] = d.e
		}
		if kind == settleReject {
			qs.q.Reject(es)
		} else {
			qs.q.Requeue(es)
		}
		start = end
	}
	if len(removes) > 0 {
		if batch != nil {
			batch.Removes = append(batch.Removes, removes...)
		} else {
			ch.c.srv.store.Submit(&persistence.Batch{Removes: removes}, nil)
		}
	}
	ch.kickConsumers()
}

// recover requeues everything unacked on the channel (basic.recover requeue=true).
func (ch *channel) recover() {
	// Acks waiting for tx.commit are not unacked any more, so, as in RabbitMQ, they stay out.
	ds, _ := ch.takeUnacked(0, true, nil)
	sort.Slice(ds, func(i, j int) bool { return ds[i].tag < ds[j].tag })
	ch.apply(settleRequeue, groupByQueue(ds), nil)
}

// groupByQueue orders deliveries so that each queue's run is contiguous, keeping tag order
// within a queue (requeue positions come from the entries' sequence numbers anyway).
func groupByQueue(ds []delivery) []delivery {
	sort.SliceStable(ds, func(i, j int) bool { return ds[i].qs.name < ds[j].qs.name })
	return ds
}

// --- transactions

func (ch *channel) commit() {
	tx := ch.tx
	ch.tx = &txState{}
	v := ch.v
	batch := &persistence.Batch{}
	var pubs []prepared
	for _, p := range tx.publishes {
		targets := v.route(p.ex, p.msg.RoutingKey, scanHeaders(p.msg.Header), &ch.rb)
		if len(targets) == 0 {
			if p.mandatory {
				ch.basicReturn(p.msg, amqp.NoRoute, "NO_ROUTE")
			}
			continue
		}
		pubs = append(pubs, v.prepare(p.msg, append([]*queueState(nil), targets...), batch, nil))
	}
	// The publishes and the acks are one atomic store batch, submitted before anything becomes
	// visible; commit-ok waits for its sync.
	for _, s := range tx.settles {
		ch.apply(s.kind, s.ds, batch)
	}
	var synced chan error
	if v.srv.store != nil && (len(batch.Publishes) > 0 || len(batch.Removes) > 0) {
		synced = make(chan error, 1)
		v.srv.store.Submit(batch, func(err error) { synced <- err })
	}
	for _, p := range pubs {
		v.push(p, true)
	}
	// commit-ok means on disk and visible; the client is waiting for it, so blocking here costs nothing.
	if synced != nil {
		if err := <-synced; err != nil {
			ch.c.log.Error("tx.commit: store write failed", "err", err)
		}
	}
	ch.c.writeMethod(ch.id, &amqp.TxCommitOk{})
}

func scanHeaders(header []byte) []byte {
	sum, err := amqp.ScanContentHeader(header)
	if err != nil {
		return nil
	}
	return sum.HeadersRaw
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
	if len(back) == 0 {
		return
	}
	ch.mu.Lock()
	ch.unacked = append(ch.unacked, back...)
	sort.Slice(ch.unacked, func(i, j int) bool { return ch.unacked[i].tag < ch.unacked[j].tag })
	ch.mu.Unlock()
}

// shutdown releases the channel: consumers are cancelled and unacked messages requeued.
func (ch *channel) shutdown() {
	ch.mu.Lock()
	if ch.closed {
		ch.mu.Unlock()
		return
	}
	ch.closed = true
	consumers := make([]*consumer, 0, len(ch.consumers))
	for _, cs := range ch.consumers {
		consumers = append(consumers, cs)
	}
	ch.consumers = map[string]*consumer{}
	ds := ch.unacked
	ch.unacked = nil
	ch.mu.Unlock()
	if ch.tx != nil {
		for _, s := range ch.tx.settles {
			ds = append(ds, s.ds...)
		}
		ch.tx = nil
	}
	for _, cs := range consumers {
		cs.qs.q.RemoveConsumer(cs)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].tag < ds[j].tag })
	ch.apply(settleRequeue, groupByQueue(ds), nil)
	for _, cs := range consumers {
		ch.v.consumerRemoved(cs.qs, cs.exclusive)
	}
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

// writeConfirms sends confirm frames.
func (ch *channel) writeConfirms(ops []confirmOp) {
	w := ch.c.w
	b := w.lock()
	for _, op := range ops {
		if op.nack {
			b = amqp.AppendMethodFrame(b, ch.id, &amqp.BasicNack{DeliveryTag: op.tag, Multiple: op.multiple})
		} else {
			b = amqp.AppendMethodFrame(b, ch.id, &amqp.BasicAck{DeliveryTag: op.tag, Multiple: op.multiple})
		}
	}
	w.unlock(b)
}
