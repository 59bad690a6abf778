package conformance

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestChannelOpenCloseMany(t *testing.T) {
	t.Parallel()
	c := dial(t)
	var chs []*amqp.Channel
	for i := 0; i < 100; i++ {
		chs = append(chs, openCh(t, c))
	}
	for i, ch := range chs {
		if i%2 == 0 {
			if err := ch.Close(); err != nil {
				t.Fatalf("close channel %d: %v", i, err)
			}
		}
	}
	// Closed channel ids are reusable and the surviving channels still work.
	for i := 0; i < 50; i++ {
		openCh(t, c)
	}
	q := declareQueue(t, chs[1], nil)
	publish(t, chs[3], "", q, "hello")
	waitCount(t, q, 1) // published on another channel: wait until it is enqueued
	if m := getOne(t, chs[99], q, true); string(m.Body) != "hello" {
		t.Fatalf("body %q", m.Body)
	}
}

func TestChannelFlowActive(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	if err := ch.Flow(true); err != nil {
		t.Fatalf("channel.flow(active=true): %v", err)
	}
	q := declareQueue(t, ch, nil)
	publish(t, ch, "", q, "after-flow")
	getOne(t, ch, q, true)
}

func TestChannelErrorClosesOnlyThatChannel(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	other := openCh(t, c)
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	_, err := ch.QueueDeclarePassive(uname(t, "missing"), false, false, false, false, nil)
	expectChannelClosed(t, c, err, amqp.NotFound)
	if e := <-closes; e == nil || e.Code != amqp.NotFound || e.Server != true {
		t.Fatalf("channel close notification = %+v, want server-initiated 404", e)
	}
	// Every further operation on the closed channel fails; the sibling channel is unaffected.
	if _, err := ch.QueueDeclare(uname(t, "q"), false, true, false, false, nil); err != amqp.ErrClosed {
		t.Fatalf("declare on closed channel: %v, want ErrClosed", err)
	}
	q := declareQueue(t, other, nil)
	publish(t, other, "", q, "x")
	getOne(t, other, q, true)
}

func TestChannelErrorCodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		op   func(t *testing.T, ch *amqp.Channel) error
		code int
	}{
		{"passive-missing-queue", func(t *testing.T, ch *amqp.Channel) error {
			_, err := ch.QueueDeclarePassive(uname(t, "nq"), false, false, false, false, nil)
			return err
		}, amqp.NotFound},
		{"bind-missing-exchange", func(t *testing.T, ch *amqp.Channel) error {
			q := declareQueue(t, ch, nil)
			return ch.QueueBind(q, "k", uname(t, "nx"), false, nil)
		}, amqp.NotFound},
		{"ack-unknown-tag", func(t *testing.T, ch *amqp.Channel) error {
			return awaitClose(t, ch, func() { ch.Ack(42, false) })
		}, amqp.PreconditionFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, ch := setup(t)
			err := tc.op(t, ch)
			ae := expectChannelClosed(t, c, err, tc.code)
			if ae.Recover != true && tc.code < 500 {
				t.Errorf("soft error %d reported as not recoverable", tc.code)
			}
		})
	}
}

// RabbitMQ treats the unsupported variants of basic.qos and basic.recover as 540 NOT_IMPLEMENTED,
// a connection-level error.
func TestChannelNotImplementedIsHard(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		op   func(ch *amqp.Channel) error
	}{
		{"qos-prefetch-size", func(ch *amqp.Channel) error { return ch.Qos(0, 1000, false) }},
		{"recover-no-requeue", func(ch *amqp.Channel) error { return ch.Recover(false) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, ch := setup(t)
			closes := closeNotify(c)
			expectConnectionClosed(t, c, closes, tc.op(ch), amqp.NotImplemented)
		})
	}
}
