package broker

import (
	"strings"

	"github.com/warrenmq/warren/queue"
)

// Direct reply-to (RabbitMQ's amq.rabbitmq.reply-to pseudo-queue): an RPC client consumes
// ReplyToQueue in no-ack mode, and its requests published with that reply_to get a generated
// name, ReplyToQueue + "." + token. A reply published to that name on the default exchange goes
// straight to the requesting channel, without any queue; a reply to a name whose channel is
// gone is dropped. The front end keeps the per-channel state (one reply consumer per channel,
// RabbitMQ's errors); the core keeps the names and routes the replies.

// ReplyToQueue is the pseudo-queue's name.
const ReplyToQueue = "amq.rabbitmq.reply-to"

// replyToPrefix starts every generated reply name.
const replyToPrefix = ReplyToQueue + "."

// ReplySink receives the replies sent to a reply name: a channel's reply consumer.
type ReplySink interface {
	// DeliverReply hands msg, published to the sink's reply name (msg.RoutingKey), to the
	// consumer; it must not block (a sink that cannot take it drops it, as a reply to a gone
	// channel is dropped). Called on the publisher's goroutine without broker locks.
	DeliverReply(msg *queue.Message)
}

// IsReplyName reports whether name is a generated reply name (not the pseudo-queue itself).
func IsReplyName(name string) bool {
	return len(name) > len(replyToPrefix) && strings.HasPrefix(name, replyToPrefix)
}

// RegisterReplyTo makes a new reply name that delivers to s, until UnregisterReplyTo. The
// token is 128 random bits: a name cannot be guessed, so replies reach only whoever was given it.
func (b *Broker) RegisterReplyTo(s ReplySink) string {
	for {
		name := RandomName(replyToPrefix)
		if _, taken := b.replies.LoadOrStore(name, s); !taken {
			return name
		}
	}
}

// UnregisterReplyTo ends a reply name: later replies to it are dropped.
func (b *Broker) UnregisterReplyTo(name string) { b.replies.Delete(name) }

// ReplyToExists reports whether a reply name still has its consumer (RabbitMQ's passive
// queue.declare of a reply name answers declare-ok then, 404 otherwise).
func (b *Broker) ReplyToExists(name string) bool {
	_, ok := b.replies.Load(name)
	return ok
}

// deliverReply delivers a message published on the default exchange to a reply name; a name
// without a consumer drops it. As in RabbitMQ 3.10.8 (measured), the publish counts as routed
// to no queue either way: a mandatory reply comes back with basic.return 312 NO_ROUTE even when
// it was delivered, and a confirm is an ack.
func (b *Broker) deliverReply(msg *queue.Message) {
	if s, ok := b.replies.Load(msg.RoutingKey); ok {
		s.(ReplySink).DeliverReply(msg)
	}
}
