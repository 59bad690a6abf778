package broker

import (
	"fmt"
	"math"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/persistence"
	"github.com/warrenmq/warren/queue"
)

// Consumer is a subscription's delivery sink, implemented by a front end (an AMQP channel's
// consumer). Deliver is called by the queue with its lock held (see queue.Consumer).
type Consumer interface {
	queue.Consumer
	// QueueDeleted tells the consumer its queue is gone; it is already removed from the queue.
	// Called without broker locks.
	QueueDeleted()
}

// Consume registers c on the named queue for a, checking atomically that the queue exists, that
// a may use it, and that no exclusive consumer holds it (or, for an exclusive consumer, that it
// has no consumer). started runs once the registration is decided and before c can receive
// anything (the front end sends consume-ok there). If the queue is deleted in between, c is told
// with QueueDeleted.
func (v *VHost) Consume(a Actor, name string, c Consumer, exclusive bool, started func(*Queue)) (*Queue, *amqp.Error) {
	return v.ConsumeWith(a, name, c, ConsumeOptions{Exclusive: exclusive}, started)
}

// ConsumeOptions are a basic.consume's flags and arguments.
type ConsumeOptions struct {
	Exclusive bool
	// Args are basic.consume's arguments: x-priority (consumer priority) is used; the
	// others are checked as in RabbitMQ (see parseConsumeArgs).
	Args amqp.Table
}

// ConsumeWith is Consume with basic.consume's arguments. An invalid argument is RabbitMQ's 406,
// checked once the queue is found (its text names the queue).
func (v *VHost) ConsumeWith(a Actor, name string, c Consumer, o ConsumeOptions, started func(*Queue)) (*Queue, *amqp.Error) {
	exclusive := o.Exclusive
	if err := a.authorize(PermRead, ResQueue, name); err != nil {
		return nil, err
	}
	v.mu.Lock()
	qs, err := v.lookupQueue(a, name)
	if err != nil {
		v.mu.Unlock()
		return nil, err
	}
	copts, aerr := parseConsumeArgs(o.Args, qs.spec.quorum)
	if aerr != nil {
		v.mu.Unlock()
		aerr.Text = fillQueueName(aerr.Text, qs.name, v.name)
		return nil, aerr
	}
	// RabbitMQ 3.10.8 (measured) refuses an exclusive consumer on a single-active-consumer
	// queue with the same error as on a queue in exclusive use.
	sac := qs.q.Options().SingleActiveConsumer
	if qs.exclusiveConsumer || (exclusive && (qs.consumers > 0 || sac)) {
		v.mu.Unlock()
		return nil, amqp.Errorf(amqp.AccessRefused, "queue '%s' in vhost '%s' in exclusive use", qs.name, v.name)
	}
	qs.consumers++
	qs.hadConsumer = true
	if exclusive {
		qs.exclusiveConsumer = true
	}
	if qs.expiryTimer != nil {
		qs.expiryTimer.Stop()
	}
	v.mu.Unlock()
	if qs.qq != nil {
		qs.qq.consumerAdded()
	}
	if started != nil {
		started(qs)
	}
	if !qs.q.AddConsumerWith(c, copts) {
		// Deleted since the check: the consumer never existed for the queue.
		v.ConsumerRemoved(qs, exclusive)
		c.QueueDeleted()
	}
	return qs, nil
}

// Cancel removes a consumer from its queue and releases what it held of the queue (exclusive
// use, the auto-delete and x-expires counts).
func (v *VHost) Cancel(qs *Queue, c Consumer, exclusive bool) {
	qs.q.RemoveConsumer(c)
	v.ConsumerRemoved(qs, exclusive)
}

// ConsumerRemoved releases a consumer's hold on the queue after the front end removed it from
// qs.Q() itself (channel shutdown removes every consumer first, then requeues, then releases):
// an auto-delete queue whose last consumer went is deleted.
func (v *VHost) ConsumerRemoved(qs *Queue, exclusive bool) {
	if qs.sq != nil {
		qs.streamConsumerGone()
	}
	if qs.qq != nil {
		qs.qq.consumerRemoved()
	}
	v.mu.Lock()
	qs.consumers--
	if exclusive {
		qs.exclusiveConsumer = false
	}
	if qs.deleted.Load() {
		v.mu.Unlock()
		return
	}
	if qs.consumers == 0 && qs.autoDelete && qs.hadConsumer {
		v.removeQueueLocked(qs)
		v.mu.Unlock()
		v.finishQueueRemoval(qs)
		return
	}
	v.touchLocked(qs)
	v.mu.Unlock()
}

// Get implements basic.get for a: the queue's head, or ok false when it has none.
func (v *VHost) Get(a Actor, name string, noAck bool) (qs *Queue, e *queue.Entry, remaining int, ok bool, err *amqp.Error) {
	if err := a.authorize(PermRead, ResQueue, name); err != nil {
		return nil, nil, 0, false, err
	}
	qs, err = v.Queue(a, name)
	if err != nil {
		return nil, nil, 0, false, err
	}
	if qs.sq != nil {
		return nil, nil, 0, false, amqp.Errorf(amqp.NotImplemented, "basic.get not supported by stream queues %s", qs.rs())
	}
	if qs.qq == nil {
		b := v.b
		b.closeMu.RLock()
		defer b.closeMu.RUnlock()
		if b.closing {
			return nil, nil, 0, false, amqp.Errorf(amqp.ConnectionForced, "broker forced connection closure with reason 'shutdown'")
		}
	}
	v.touch(qs)
	if qs.qq != nil {
		e, remaining, ok, err = qs.qq.get(noAck)
		if err != nil {
			return nil, nil, 0, false, err
		}
	} else {
		e, remaining, ok = qs.q.Get(noAck)
	}
	c := &qs.counters
	switch {
	case !ok:
		c.getEmpty.n.Add(1)
		return qs, nil, 0, false, nil
	case noAck:
		c.getNoAck.n.Add(1)
	default:
		c.get.n.Add(1)
	}
	if e.Deliveries > 1 {
		c.redeliver.n.Add(1)
	}
	qs.journal(e, e.Deliveries-1, noAck) // Get already counted this delivery
	return qs, e, remaining, true, nil
}

// Delivered records a delivery to a consumer: counted, and for a durable entry written to disk
// (so that it comes back redelivered after a restart) or, for a no-ack delivery, removed from
// it. deliveries is the entry's count of deliveries before this one. Front ends call it after
// handing the entry to their client.
func (qs *Queue) Delivered(e *queue.Entry, deliveries uint32, noAck bool) {
	if noAck {
		qs.counters.deliverNoAck.n.Add(1)
	} else {
		qs.counters.deliver.n.Add(1)
	}
	if deliveries > 0 {
		qs.counters.redeliver.n.Add(1)
	}
	if qs.qq != nil {
		qs.qq.delivered(e, noAck)
		return
	}
	qs.journal(e, deliveries, noAck)
}

// journal writes a delivery of a durable entry (see Delivered).
func (qs *Queue) journal(e *queue.Entry, deliveries uint32, noAck bool) {
	if !e.Durable {
		return
	}
	store := qs.v.b.store
	ent := qs.diskEntry(e)
	if noAck {
		store.Submit(&persistence.Batch{Removes: []persistence.Entry{ent}}, nil)
		return
	}
	if deliveries == 0 || qs.q.Options().DeliveryLimit >= 0 {
		// The mark counts real deliveries, Returns+1 (each delivery after the first follows
		// a return). That is deliveries+1, except for an entry flagged redelivered only
		// because it was stored before an unclean stop (storedEntry): its assumed delivery
		// must not count towards x-delivery-limit after the next restart.
		store.Submit(&persistence.Batch{Deliveries: []persistence.DeliveryMark{{Entry: ent, Count: e.Returns + 1}}}, nil)
	}
}

// DeliveryHeader is the content header to send: the publisher's bytes verbatim, except that
// quorum-style queues add x-delivery-count to redeliveries, as RabbitMQ does.
func (qs *Queue) DeliveryHeader(e *queue.Entry) []byte {
	if qs.sq != nil {
		return streamHeader(e)
	}
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

// Settlement is what an ack-like method does with deliveries.
type Settlement uint8

// The three ways to settle a delivery.
const (
	Ack     Settlement = iota // basic.ack: gone for good
	Reject                    // reject/nack without requeue: dead-lettered or dropped
	Requeue                   // reject/nack with requeue, recover, channel close
)

// Settle settles es, deliveries of qs: the queue is told (returning credit, requeueing or
// dead-lettering) and the durable copies of acked entries are removed - added to batch when it
// is not nil (a transaction, whose caller submits it), else submitted now.
func (qs *Queue) Settle(kind Settlement, es []*queue.Entry, batch *persistence.Batch) {
	if qs.sq != nil {
		qs.kickStream() // a stream's acks only return credit
		return
	}
	if qs.qq != nil {
		qs.qq.settle(kind, es)
		return
	}
	switch kind {
	case Ack:
		qs.q.Ack(len(es))
		qs.counters.ack.n.Add(uint64(len(es)))
		qs.removeAcked(es, batch)
	case Reject:
		qs.q.Reject(es)
	default:
		qs.q.Requeue(es)
	}
}

// removeAcked removes the durable copies of acked entries (see Settle).
func (qs *Queue) removeAcked(es []*queue.Entry, batch *persistence.Batch) {
	if qs.deleted.Load() || qs.v.b.store == nil { // a deleted queue's entries went with store.DeleteQueue
		return
	}
	var removes []persistence.Entry
	for _, e := range es {
		if e.Durable {
			removes = append(removes, qs.diskEntry(e))
		}
	}
	if len(removes) == 0 {
		return
	}
	if batch != nil {
		batch.Removes = append(batch.Removes, removes...)
		return
	}
	qs.v.b.store.Submit(&persistence.Batch{Removes: removes}, nil)
}

// parseConsumeArgs reads basic.consume's arguments as RabbitMQ 3.10 checks them
// (rabbit_amqqueue:check_consume_arguments, measured): ConsumeArguments says which the queue's
// type takes, x-priority must be an integer ("expected integer, got longstr" otherwise) and
// x-cancel-on-ha-failover a boolean.
func parseConsumeArgs(args amqp.Table, quorum bool) (queue.ConsumerOptions, *amqp.Error) {
	var o queue.ConsumerOptions
	if err := checkKnownArgs(ConsumeArguments, args, quorum); err != nil {
		return o, err
	}
	if v, ok := args["x-cancel-on-ha-failover"]; ok {
		if _, isBool := v.(bool); !isBool {
			return o, argError("x-cancel-on-ha-failover", "unacceptable_type", typeName(v))
		}
	}
	if v, ok := args["x-priority"]; ok {
		n, isInt := IntArg(v)
		if !isInt {
			return o, argTextError("x-priority", fmt.Sprintf("\"expected integer, got %s\"", typeName(v)))
		}
		o.Priority = int(max(min(n, math.MaxInt32), math.MinInt32))
	}
	return o, nil
}
