package conformance

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestZZProbe(t *testing.T) {
	try := func(name string, f func(ch *amqp.Channel) error) {
		c, ch := setup(t)
		err := f(ch)
		t.Logf("%s: err=%v connClosed=%v", name, err, c.IsClosed())
	}
	try("declare-default-ex", func(ch *amqp.Channel) error { return ch.ExchangeDeclare("", "direct", true, false, false, false, nil) })
	try("declare-amq-direct-same", func(ch *amqp.Channel) error { return ch.ExchangeDeclare("amq.direct", "direct", true, false, false, false, nil) })
	try("delete-amq-direct", func(ch *amqp.Channel) error { return ch.ExchangeDelete("amq.direct", false, false) })
	try("delete-if-unused", func(ch *amqp.Channel) error {
		x := declareExchange(t, ch, "direct", nil)
		q := declareQueue(t, ch, nil)
		bind(t, ch, q, "k", x, nil)
		return ch.ExchangeDelete(x, true, false)
	})
}
