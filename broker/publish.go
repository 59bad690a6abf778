package broker

import (
	"fmt"
	"strconv"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/persistence"
	"github.com/warrenmq/warren/queue"
)

// Publisher is one front-end publisher's state in the core: its routing scratch space and its
// reusable entry buffer. One goroutine uses it at a time (an AMQP connection's reader).
type Publisher struct {
	v        *VHost
	rb       RouteBuf
	entryBuf []*queue.Entry
	count    uint64 // publishes, for Flow
	// localBuf and remoteBuf are publishSplit's reusable target buffers (forward.go).
	localBuf, remoteBuf []*Queue
	// lastRemote is publishSplit's last single-queue list of a forward, reused (never written
	// to) while the next publishes forward to the same queue.
	lastRemote []string
	// collect, when set, takes the forwards to other nodes of publishes without a confirm
	// (done nil) instead of the link: the delayer's publishers (delayer.collectRemote), which
	// confirms them off its timer goroutine.
	collect func(home, vhost string, queues []string, msg *queue.Message)

	// Exchange counters are gathered here and added to the exchange every exchangeStatsBatch
	// publishes (or when the exchange changes, or at Flush): an atomic add per publish on the
	// default exchange would be one cache line every publisher of the node writes.
	statsEx           *Exchange
	statsIn, statsOut uint64
}

// exchangeStatsBatch is how many publishes a Publisher counts before adding them to the
// exchange's counters.
const exchangeStatsBatch = 64

func (p *Publisher) countExchange(ex *Exchange, routed bool) {
	if ex != p.statsEx {
		p.Flush()
		p.statsEx = ex
	}
	p.statsIn++
	if routed {
		p.statsOut++
	}
	if p.statsIn >= exchangeStatsBatch {
		p.Flush()
	}
}

// Flush adds the publishes counted so far to their exchange's counters; the front end calls it
// when the publisher goes (a channel closes).
func (p *Publisher) Flush() {
	if p.statsEx != nil && p.statsIn > 0 {
		p.statsEx.publishIn.Add(p.statsIn)
		p.statsEx.publishOut.Add(p.statsOut)
	}
	p.statsIn, p.statsOut = 0, 0
}

// NewPublisher returns a publisher into v.
func (v *VHost) NewPublisher() *Publisher { return &Publisher{v: v} }

// NewMessage builds a message to publish through ex: the header is the content header's raw
// bytes (kept and sent verbatim), sum its scan. An invalid expiration property is RabbitMQ's 406.
func (b *Broker) NewMessage(ex *Exchange, routingKey string, header []byte, sum *amqp.HeaderSummary, body []byte) (*queue.Message, *amqp.Error) {
	msg := &queue.Message{
		ID:         b.NextMessageID(),
		Exchange:   ex.name,
		RoutingKey: routingKey,
		Header:     header,
		Body:       body,
		Persistent: sum.DeliveryMode == 2,
		Priority:   sum.Priority,
	}
	if sum.Expiration != "" {
		ms, err := strconv.ParseInt(sum.Expiration, 10, 64)
		if err != nil || ms < 0 {
			detail := "no_integer"
			if err == nil {
				detail = fmt.Sprintf("{value_negative,%d}", ms)
			}
			return nil, amqp.Errorf(amqp.PreconditionFailed, "invalid expiration '%s': %s", sum.Expiration, detail)
		}
		msg.ExpiresAt = expiresAfter(ms)
	}
	return msg, nil
}

// PublishResult says what became of a publish.
type PublishResult struct {
	Routed  bool // reached at least one queue
	Refused bool // a queue refused it (reject-publish overflow): a confirm is a nack
	// OnDisk: its durable copy is being written, or it was forwarded to other nodes (the
	// cluster's Forwarder); done runs once it is synced and accepted (or failed).
	OnDisk bool
}

// Publish routes msg from ex (headersRaw: the raw headers table of the content header, for
// headers exchanges and sender-selected distribution) and enqueues it. done, when not nil, runs
// once the durable copy is synced, only when the result says OnDisk.
func (p *Publisher) Publish(ex *Exchange, msg *queue.Message, headersRaw []byte, done func(error)) (PublishResult, []*Queue) {
	v := p.v
	if ex.name == "" && IsReplyName(msg.RoutingKey) {
		v.b.deliverReply(msg)
		return PublishResult{}, nil
	}
	if ex.delayed != nil {
		if h := v.b.delayed.prepare(ex, msg.RoutingKey, msg.Header, headersRaw, msg.Body); h != nil {
			// Held, not routed: like the plugin, a mandatory publish is returned (312
			// NO_ROUTE) although the message is routed when due (see delayed.go).
			p.countExchange(ex, false)
			return PublishResult{OnDisk: v.b.delayed.add(h, done)}, nil
		}
	}
	targets := v.route(ex, msg.RoutingKey, headersRaw, &p.rb)
	if mayHaveSenderKeys(headersRaw) {
		targets = v.senderSelected(ex, msg, headersRaw, &p.rb)
	}
	p.countExchange(ex, len(targets) > 0)
	if len(targets) == 0 {
		return PublishResult{}, nil
	}
	if v.b.cluster.forwarder != nil && hasRemote(targets) {
		return p.publishSplit(msg, targets, done), targets
	}
	refused, onDisk := v.enqueue(msg, targets, done, &p.entryBuf)
	return PublishResult{Routed: true, Refused: refused, OnDisk: onDisk}, targets
}

// senderSelected routes a message by its routing key plus its CC and BCC keys, and strips BCC
// from the message, as RabbitMQ does.
func (v *VHost) senderSelected(ex *Exchange, msg *queue.Message, headersRaw []byte, rb *RouteBuf) []*Queue {
	h, _, err := amqp.DecodeTable(headersRaw)
	if err != nil {
		return v.route(ex, msg.RoutingKey, headersRaw, rb)
	}
	cc, bcc := senderKeys(h)
	keys := append(append([]string{msg.RoutingKey}, cc...), bcc...)
	targets := v.routeKeys(ex, keys, headersRaw, rb)
	if _, ok := h["BCC"]; ok {
		if full, err := amqp.DecodeContentHeader(msg.Header); err == nil {
			delete(full.Props.Headers, "BCC")
			msg.Header = amqp.AppendContentHeader(nil, full.ClassID, full.BodySize, &full.Props)
		}
	}
	return targets
}

// needsDisk reports whether a publish writes to the store (then its confirm waits for the sync).
func needsDisk(msg *queue.Message, targets []*Queue) bool {
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

// prepared is a message with its entries built for each target queue, not yet visible.
type prepared struct {
	msg     *queue.Message
	targets []*Queue
	entries []*queue.Entry
}

// prepare builds entries for msg in targets and adds the persistent copy for durable queues to
// batch. Entries become visible only in push, after the batch was submitted, so a consumer's ack
// can never reach the journal before the publish it removes. The entries go into scratch's
// backing array when it is large enough (the caller's reusable buffer), else a new one.
func (v *VHost) prepare(msg *queue.Message, targets []*Queue, batch *persistence.Batch, scratch []*queue.Entry) prepared {
	if cap(scratch) < len(targets) {
		scratch = make([]*queue.Entry, len(targets))
	}
	p := prepared{msg: msg, targets: targets, entries: scratch[:len(targets)]}
	// Sequence numbers are never reused: a queue's restart continues after the stored ones,
	// and a queue declared again after a delete waits until the store has dropped the old
	// entries (VHost.deleting).
	pub := persistence.Publish{NewEntries: true}
	for i, qs := range targets {
		if qs.sq != nil || qs.qq != nil {
			p.entries[i] = nil // appended to its log by push; scratch may hold an old entry
			continue
		}
		// NextSeqFor: in a priority queue the seq encodes msg's priority (delivery order).
		e := qs.q.NewEntry(qs.q.NextSeqFor(msg), msg)
		if msg.Persistent && qs.durable {
			e.Durable = true
			pub.Entries = append(pub.Entries, persistence.Entry{Queue: qs.ref(), Seq: e.Seq, MsgID: msg.ID, ExpiresAt: e.ExpiresAt})
		}
		p.entries[i] = e
	}
	if len(pub.Entries) > 1 {
		for _, e := range p.entries {
			if e != nil { // nil: a stream target
				e.SharedOnDisk = e.Durable
			}
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
func (v *VHost) push(p prepared, publisher bool) bool {
	refused := false
	for i, qs := range p.targets {
		if qs.sq != nil {
			qs.sq.log.Append(encodeStreamRecord(p.msg), func(uint64, error) {})
			continue
		}
		if qs.qq != nil {
			refused = qs.qq.publishQuorum(p.msg, publisher) || refused
			continue
		}
		switch qs.q.Push(p.entries[i]) {
		case queue.Enqueued:
			qs.counters.publish.n.Add(1)
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
func (v *VHost) enqueue(msg *queue.Message, targets []*Queue, done func(error), scratch *[]*queue.Entry) (refused, onDisk bool) {
	// Quorum queues get a proposal, stream queues the message in their log; a confirm waits
	// for their commit and sync too. quorumRest is the part of a quorum join that is the rest.
	targets, done, quorumRest := v.appendToQuorums(msg, targets, done)
	targets, done, streamed := appendToStreams(msg, targets, done)
	var batch *persistence.Batch // only persistent messages for durable queues need one
	if onDisk = needsDisk(msg, targets); onDisk {
		batch = &persistence.Batch{}
	}
	p := v.prepare(msg, targets, batch, *scratch)
	if onDisk {
		v.b.store.Submit(batch, done)
	}
	refused = v.push(p, true)
	clear(p.entries) // the queues own the entries now; drop our references
	*scratch = p.entries[:0]
	if quorumRest != nil {
		if !onDisk && !streamed {
			quorumRest(nil) // the rest needed nothing asynchronous
		}
		return refused, true
	}
	return refused, onDisk || streamed
}

// Txn collects a transaction's publishes and settlements; Commit applies them atomically.
type Txn struct {
	v         *VHost
	publishes []txPublish
	settles   []txSettle
}

type txPublish struct {
	ex        *Exchange
	msg       *queue.Message
	mandatory bool
}

type txSettle struct {
	kind Settlement
	qs   *Queue
	es   []*queue.Entry
}

// NewTxn starts a transaction on v.
func (v *VHost) NewTxn() *Txn { return &Txn{v: v} }

// Publish adds a publish to the transaction; it is routed at commit.
func (t *Txn) Publish(ex *Exchange, msg *queue.Message, mandatory bool) {
	t.publishes = append(t.publishes, txPublish{ex: ex, msg: msg, mandatory: mandatory})
}

// Settle adds a settlement of deliveries of qs to the transaction (es is kept).
func (t *Txn) Settle(kind Settlement, qs *Queue, es []*queue.Entry) {
	t.settles = append(t.settles, txSettle{kind: kind, qs: qs, es: es})
}

// Commit routes the publishes, writes them and the acks' removals as one atomic store batch and
// waits for it to be synced; only then does anything become visible: messages enter their queues
// and the settlements reach their queues. unroutable is called (before anything is visible) for
// each mandatory publish that reached no queue. On a store failure nothing is applied and the error is
// returned: the front end must not acknowledge the commit (RabbitMQ's 541), and the deliveries it
// settled are still its unacked ones. Either way the transaction is empty afterwards.
func (t *Txn) Commit(unroutable func(*queue.Message)) error {
	v := t.v
	var batch persistence.Batch
	var pubs []prepared
	var rb RouteBuf
	var replies []*queue.Message
	var holds []*heldMsg
	var forwards []txForward
	for _, p := range t.publishes {
		if p.ex.delayed != nil {
			if h := v.b.delayed.prepare(p.ex, p.msg.RoutingKey, p.msg.Header, scanHeaders(p.msg.Header), p.msg.Body); h != nil {
				// Held at the commit, in the batch's transaction; returned if mandatory, as outside one.
				holds = append(holds, h)
				p.ex.publishIn.Add(1)
				if p.mandatory && unroutable != nil {
					unroutable(p.msg)
				}
				continue
			}
		}
		if p.ex.name == "" && IsReplyName(p.msg.RoutingKey) {
			// Delivered with the commit's other effects, after the store write; counts as
			// unroutable, as outside a transaction.
			replies = append(replies, p.msg)
			if p.mandatory && unroutable != nil {
				unroutable(p.msg)
			}
			continue
		}
		targets := v.route(p.ex, p.msg.RoutingKey, scanHeaders(p.msg.Header), &rb)
		p.ex.publishIn.Add(1) // transactions are rare enough for a direct add
		if len(targets) > 0 {
			p.ex.publishOut.Add(1)
		}
		if len(targets) == 0 {
			if p.mandatory && unroutable != nil {
				unroutable(p.msg)
			}
			continue
		}
		local, remote := v.splitRemote(targets)
		for home, queues := range remote {
			forwards = append(forwards, txForward{home: home, queues: queues, msg: p.msg})
		}
		if len(local) > 0 {
			pubs = append(pubs, v.prepare(p.msg, append([]*Queue(nil), local...), &batch, nil))
		}
	}
	for _, s := range t.settles {
		if s.kind == Ack {
			s.qs.removeAcked(s.es, &batch)
		}
	}
	settles := t.settles
	t.publishes, t.settles = nil, nil
	// Messages for queues of other nodes go first, and commit-ok waits until their homes
	// accepted them: a home that refuses one (or cannot be reached) fails the commit before
	// anything is applied here, so the client's 541 means nothing of it took effect locally.
	// The homes that did accept keep their copies: a retried transaction duplicates those,
	// which is better than a commit-ok for a message kept nowhere.
	if err := v.forwardAll(forwards); err != nil {
		return fmt.Errorf("tx.commit: a message for a queue of another node was not accepted: %w", err)
	}
	// The held messages are written in the batch's transaction: on a failure nothing is
	// durable, so nothing is applied.
	if err := v.b.delayed.commitTx(&batch, holds); err != nil {
		return fmt.Errorf("tx.commit: store write failed: %w", err)
	}
	for _, p := range pubs {
		v.push(p, true)
	}
	for _, m := range replies {
		v.b.deliverReply(m)
	}
	for _, x := range settles {
		if x.qs.sq != nil {
			x.qs.kickStream() // a stream's acks only return credit
			continue
		}
		if x.qs.qq != nil {
			x.qs.qq.settle(x.kind, x.es)
			continue
		}
		switch x.kind {
		case Ack:
			x.qs.q.Ack(len(x.es))
			x.qs.counters.ack.n.Add(uint64(len(x.es)))
		case Reject:
			x.qs.q.Reject(x.es)
		default:
			x.qs.q.Requeue(x.es)
		}
	}
	return nil
}

// Rollback discards the transaction's publishes and settlements.
func (t *Txn) Rollback() { t.publishes, t.settles = nil, nil }

func scanHeaders(header []byte) []byte {
	sum, err := amqp.ScanContentHeader(header)
	if err != nil {
		return nil
	}
	return sum.HeadersRaw
}
