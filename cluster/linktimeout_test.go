package cluster

import (
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/server"
)

// A link consumer that asks for it (a no-ack proxied consumer) is exempt from the home's
// consumer timeout: its deliveries are acked once written to the client, so one still unacked
// on the home is in flight, not a client late to ack, and closing its link channel cancelled
// the client's consumer. Without the argument the timeout applies, as to any consumer.
func TestLinkConsumerExemptFromHomeTimeout(t *testing.T) {
	lc := startLinkedPrep(t, 2, nil, nil, func(c *server.Config) { c.ConsumerTimeout = 300 * time.Millisecond }, nil)
	_, ch1 := dial(t, lc.urls[0])
	if _, err := ch1.QueueDeclare("ct", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	publishN(t, ch1, "ct", 0, 2)
	ready(t, ch1, "ct", 2)
	p, err := lc.links[1].peer("n1", "/")
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.connect()
	if err != nil {
		t.Fatal(err)
	}
	consume := func(args amqp.Table) *linkChan {
		t.Helper()
		l, err := c.open(2 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.call(&amqp.BasicQos{PrefetchCount: 1}, "basic.qos-ok"); err != nil {
			t.Fatal(err)
		}
		// No sink: the delivery stays unacked on the home.
		if _, err := l.call(&amqp.BasicConsume{Queue: "ct", Arguments: args}, "basic.consume-ok"); err != nil {
			t.Fatal(err)
		}
		return l
	}
	exempt := consume(amqp.Table{broker.LinkNoTimeoutArg: true})
	plain := consume(nil)
	select {
	case <-plain.gone:
	case <-time.After(5 * time.Second):
		t.Fatal("consumer timeout did not close the plain link consumer's channel")
	}
	plain.mu.Lock()
	perr := plain.err
	plain.mu.Unlock()
	if he, ok := perr.(*homeError); !ok || he.code != amqp.PreconditionFailed {
		t.Fatalf("plain consumer's channel ended with %v, want the 406 of the timeout", perr)
	}
	select {
	case <-exempt.gone:
		t.Fatal("exempt link consumer's channel closed")
	case <-time.After(time.Second):
	}
}
