package conformance

import (
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// x-consumer-timeout (RabbitMQ 3.12+; 3.10.8 ignores it, hence Warren only): a delivery left
// unacked longer closes its channel with 406 and RabbitMQ's text, and the messages are requeued
// in order for the next consumer.
func TestConsumerTimeoutArgument(t *testing.T) {
	warrenOnly(t)
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, amqp.Table{"x-consumer-timeout": int32(400)})
	publishConfirmed(t, c, "", q, "a", "b", "c")
	cch := openCh(t, c)
	closes := cch.NotifyClose(make(chan *amqp.Error, 1))
	got := collect(t, consume(t, cch, q, false), 3)
	got[1].Ack(false)
	select {
	case e := <-closes:
		// The channel number is amqp091's; the rest is RabbitMQ's text.
		var n int
		if e == nil || e.Code != amqp.PreconditionFailed {
			t.Fatalf("channel closed with %v", e)
		}
		if _, err := fmt.Sscanf(e.Reason, "PRECONDITION_FAILED - delivery acknowledgement on channel %d timed out.", &n); err != nil || n < 1 ||
			!strings.HasSuffix(e.Reason, " timed out. Timeout value used: 400 ms. This timeout value can be configured, see consumers doc guide to learn more") {
			t.Fatalf("reply text %q (%v)", e.Reason, err)
		}
	case <-time.After(wait):
		t.Fatal("channel not closed by x-consumer-timeout")
	}
	again := collect(t, consume(t, ch, q, true), 2)
	assertBodies(t, again, "a", "c")
	assertRedelivered(t, again, true)
	if c.IsClosed() {
		t.Fatal("the consumer timeout closed the connection, not the channel")
	}
}

// Invalid values are refused as RabbitMQ refuses a bad millisecond argument.
func TestConsumerTimeoutArgumentInvalid(t *testing.T) {
	warrenOnly(t)
	t.Parallel()
	c, ch := setup(t)
	q := uname(t, "q")
	_, err := ch.QueueDeclare(q, false, false, false, false, amqp.Table{"x-consumer-timeout": int32(-1)})
	ae := expectChannelClosed(t, c, err, amqp.PreconditionFailed)
	if want := fmt.Sprintf("PRECONDITION_FAILED - invalid arg 'x-consumer-timeout' for queue '%s' in vhost '/': {value_negative,-1}", q); ae.Reason != want {
		t.Errorf("reply text = %q, want %q", ae.Reason, want)
	}
}
