package conformance

import (
	"fmt"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Arguments RabbitMQ knows but a queue type does not take are refused with the same 406 by both
// brokers (checked against RabbitMQ 3.10.8); names Warren does not implement are refused with a
// text that says so (Warren only: RabbitMQ accepts them).

func TestArgumentsWrongQueueType(t *testing.T) {
	t.Parallel()
	tests := []struct {
		key    string
		val    any
		quorum bool
	}{
		{"x-queue-leader-locator", "balanced", false},
		{"x-max-age", "1D", false},
		{"x-dead-letter-strategy", "at-most-once", false},
		{"x-max-in-memory-length", int32(5), false},
		{"x-stream-max-segment-size-bytes", int32(1000), false},
		{"x-max-priority", int32(5), true},
		{"x-queue-mode", "lazy", true},
		{"x-queue-master-locator", "client-local", true},
	}
	for _, tc := range tests {
		t.Run(tc.key, func(t *testing.T) {
			t.Parallel()
			c, ch := setup(t)
			q := uname(t, "q")
			cleanupQueue(t, q)
			args := amqp.Table{tc.key: tc.val}
			typ := "rabbit_classic_queue"
			if tc.quorum {
				args["x-queue-type"] = "quorum"
				typ = "rabbit_quorum_queue"
			}
			_, err := ch.QueueDeclare(q, true, false, false, false, args)
			ae := expectChannelClosed(t, c, err, amqp.PreconditionFailed)
			want := fmt.Sprintf("PRECONDITION_FAILED - invalid arg '%s' for queue '%s' in vhost '/' of queue type %s", tc.key, q, typ)
			if ae.Reason != want {
				t.Errorf("reply text = %q, want %q", ae.Reason, want)
			}
		})
	}
	t.Run("consume x-stream-offset", func(t *testing.T) {
		t.Parallel()
		c, ch := setup(t)
		q := declareQueue(t, ch, nil)
		_, err := ch.Consume(q, "", false, false, false, false, amqp.Table{"x-stream-offset": "first"})
		ae := expectChannelClosed(t, c, err, amqp.PreconditionFailed)
		typ := "rabbit_classic_queue"
		if quorumRun() {
			typ = "rabbit_quorum_queue"
		}
		want := fmt.Sprintf("PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue '%s' in vhost '/' of queue type %s", q, typ)
		if ae.Reason != want {
			t.Errorf("reply text = %q, want %q", ae.Reason, want)
		}
	})
}

func TestArgumentsStorageAccepted(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	for _, args := range []amqp.Table{
		{"x-queue-mode": "lazy"}, {"x-queue-mode": "default"}, {"x-queue-version": int32(2)},
		{"x-queue-master-locator": "client-local"},
		{"x-not-known-to-rabbitmq": true}, // unknown names are ignored, as RabbitMQ ignores them
	} {
		declareQueue(t, ch, args)
	}
	// A lazy queue delivers like any other.
	c, ch2 := setup(t)
	q := declareQueue(t, ch2, amqp.Table{"x-queue-mode": "lazy"})
	publishConfirmed(t, c, "", q, "a", "b", "c")
	assertBodies(t, collect(t, consume(t, ch2, q, true), 3), "a", "b", "c")
}

func TestArgumentsNotSupported(t *testing.T) {
	warrenOnly(t)
	t.Parallel()
	for _, args := range []amqp.Table{
		{"x-queue-type": "quorum", "x-max-in-memory-bytes": int32(1000)},
	} {
		c, ch := setup(t)
		q := uname(t, "q")
		cleanupQueue(t, q)
		_, err := ch.QueueDeclare(q, true, false, false, false, args)
		ae := expectChannelClosed(t, c, err, amqp.PreconditionFailed)
		if !strings.Contains(ae.Reason, "not supported by Warren") {
			t.Errorf("%v: reply text %q does not say Warren does not support it", args, ae.Reason)
		}
	}
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	_, err := ch.Consume(q, "", false, false, false, false, amqp.Table{"x-credit": amqp.Table{"credit": int32(1), "drain": false}})
	ae := expectChannelClosed(t, c, err, amqp.PreconditionFailed)
	if !strings.Contains(ae.Reason, "not supported by Warren") {
		t.Errorf("x-credit: reply text %q", ae.Reason)
	}
}
