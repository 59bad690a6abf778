package server

import (
	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// Gone reports that the channel no longer has this consumer (cancelled, channel closed): the
// reader of a stream queue feeding it then stops. It makes consumer a broker.StreamSink.
func (cs *consumer) Gone() bool {
	ch := cs.ch
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.closed || ch.consumers[cs.tag] != cs
}

// consumeStream runs basic.consume on a stream queue: the broker checks the prefetch, no-ack
// and x-stream-offset as RabbitMQ does and starts a reader that delivers to cs. handled is
// false when the queue is not a stream; consume then goes on as usual.
func (ch *channel) consumeStream(m *amqp.BasicConsume, cs *consumer) (handled bool, err *amqp.Error) {
	if !ch.v.IsStreamQueue(m.Queue) {
		return false, nil
	}
	ch.mu.Lock()
	prefetch := ch.consumerPrefetch
	ch.mu.Unlock()
	opts := broker.StreamConsume{Exclusive: m.Exclusive, NoAck: m.NoAck, Prefetch: prefetch, Args: m.Arguments}
	_, err = ch.v.ConsumeStream(ch.c.actor, m.Queue, cs, opts, func(qs *broker.Queue) {
		cs.qs = qs
		ch.mu.Lock()
		cs.prefetch = ch.consumerPrefetch
		ch.consumers[cs.tag] = cs
		ch.mu.Unlock()
		// consume-ok goes out before any delivery: both share the connection's ordered writer.
		if !m.NoWait {
			ch.c.writeMethod(ch.id, &amqp.BasicConsumeOk{ConsumerTag: cs.tag})
		}
	})
	return true, err
}
