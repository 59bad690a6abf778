package conformance

import (
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The x-delayed-message exchange, as RabbitMQ's delayed-message-exchange plugin behaves (see
// docs/queues.md, "Delayed messages"). RabbitMQ's Debian package does not ship the plugin, so
// these tests run against Warren only.

func delayedOnly(t *testing.T) {
	t.Helper()
	if !isWarren() {
		t.Skipf("x-delayed-message is a plugin (rabbitmq_delayed_message_exchange) that the Debian package of the broker under test (%q) lacks", brokerProduct)
	}
}

func declareDelayed(t *testing.T, ch *amqp.Channel, typ string, args amqp.Table) string {
	t.Helper()
	a := amqp.Table{"x-delayed-type": typ}
	for k, v := range args {
		a[k] = v
	}
	return declareExchange(t, ch, "x-delayed-message", a)
}

func delayedMsg(body string, ms int32) amqp.Publishing {
	return amqp.Publishing{Body: []byte(body), Headers: amqp.Table{"x-delay": ms}}
}

func TestDelayedDeclareErrors(t *testing.T) {
	delayedOnly(t)
	c, ch := setup(t)
	for _, x := range []struct {
		args amqp.Table
		code int
		text string
	}{
		{nil, amqp.PreconditionFailed, "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type"},
		{amqp.Table{"x-delayed-type": int32(1)}, amqp.PreconditionFailed, "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type"},
		{amqp.Table{"x-delayed-type": "x-nope"}, amqp.CommandInvalid, "COMMAND_INVALID - unknown exchange type 'x-nope'"},
	} {
		name := uname(t, "x")
		err := ch.ExchangeDeclare(name, "x-delayed-message", false, false, false, false, x.args)
		var ae *amqp.Error
		if x.code == amqp.CommandInvalid {
			ae = expectCode(t, err, x.code) // a connection error, as for an unknown type
			c, ch = setup(t)
		} else {
			ae = expectChannelClosed(t, c, err, x.code)
			ch = openCh(t, c)
		}
		if ae.Reason != x.text {
			t.Errorf("args %v: %q, want %q", x.args, ae.Reason, x.text)
		}
	}
	name := declareDelayed(t, ch, "topic", nil)
	// As the plugin: a redeclare compares type and flags, not x-delayed-type.
	if err := ch.ExchangeDeclare(name, "x-delayed-message", false, false, false, false, amqp.Table{"x-delayed-type": "fanout"}); err != nil {
		t.Fatalf("redeclare: %v", err)
	}
	err := ch.ExchangeDeclare(name, "topic", false, false, false, false, nil)
	ae := expectChannelClosed(t, c, err, amqp.PreconditionFailed)
	if !strings.Contains(ae.Reason, "inequivalent arg 'type'") {
		t.Errorf("redeclare as topic: %q", ae.Reason)
	}
}

// Messages are held for x-delay ms and routed through the x-delayed-type routing in due order;
// the delivered copy carries x-delay negated; without a positive x-delay they route at once.
func TestDelayedDelivery(t *testing.T) {
	delayedOnly(t)
	_, ch := setup(t)
	x := declareDelayed(t, ch, "topic", nil)
	q := declareQueue(t, ch, nil)
	bind(t, ch, q, "a.*", x, nil)
	d := consume(t, ch, q, true)
	start := time.Now()
	publishMsg(t, ch, x, "a.b", delayedMsg("late", 600))
	publishMsg(t, ch, x, "a.b", delayedMsg("soon", 300))
	publishMsg(t, ch, x, "a.b", delayedMsg("zero", 0))
	publishMsg(t, ch, x, "a.b", delayedMsg("negative", -100))
	publishMsg(t, ch, x, "a.b", amqp.Publishing{Body: []byte("plain")})
	publishMsg(t, ch, x, "b.b", delayedMsg("unbound", 100))
	now := collect(t, d, 3)
	assertBodies(t, now, "zero", "negative", "plain")
	if got := now[0].Headers["x-delay"]; got != int32(0) {
		t.Errorf("routed at once: x-delay %#v, want it untouched", got)
	}
	if el := time.Since(start); el > 250*time.Millisecond {
		t.Errorf("undelayed messages took %v", el)
	}
	held := collect(t, d, 2)
	el := time.Since(start)
	assertBodies(t, held, "soon", "late")
	if el < 600*time.Millisecond {
		t.Errorf("the 600 ms message arrived after %v", el)
	}
	for i, want := range []int32{-300, -600} {
		if got := held[i].Headers["x-delay"]; got != want {
			t.Errorf("%s: x-delay %#v, want %d", held[i].Body, got, want)
		}
	}
	expectNoDelivery(t, d)
}

// Bindings count as of the due time, and the headers kind routes on the headers.
func TestDelayedBindingsAtDueTime(t *testing.T) {
	delayedOnly(t)
	_, ch := setup(t)
	x := declareDelayed(t, ch, "headers", nil)
	q := declareQueue(t, ch, nil)
	publishMsg(t, ch, x, "", amqp.Publishing{Body: []byte("m"), Headers: amqp.Table{"x-delay": int32(300), "color": "red"}})
	bind(t, ch, q, "", x, amqp.Table{"color": "red"})
	d := consume(t, ch, q, true)
	assertBodies(t, collect(t, d, 1), "m")
}

// As the plugin: a held message routes to no queue at publish, so a mandatory one is returned
// (312 NO_ROUTE) - and still routed when due. Confirms arrive when it is stored.
func TestDelayedMandatoryAndConfirm(t *testing.T) {
	delayedOnly(t)
	_, ch := setup(t)
	x := declareDelayed(t, ch, "direct", nil)
	q := declareQueue(t, ch, nil)
	bind(t, ch, q, "k", x, nil)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 4))
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 4))
	d := consume(t, ch, q, true)
	start := time.Now()
	if err := ch.Publish(x, "k", true, false, delayedMsg("held", 400)); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-returns:
		if r.ReplyCode != amqp.NoRoute || r.ReplyText != "NO_ROUTE" || string(r.Body) != "held" {
			t.Errorf("return %d %q %q", r.ReplyCode, r.ReplyText, r.Body)
		}
	case <-time.After(wait):
		t.Fatal("no basic.return for a held mandatory message")
	}
	select {
	case cf := <-confirms:
		if !cf.Ack {
			t.Fatal("held message nacked")
		}
		if el := time.Since(start); el > 300*time.Millisecond {
			t.Errorf("confirm of a held message after %v: waits for the store, not the delay", el)
		}
	case <-time.After(wait):
		t.Fatal("no confirm")
	}
	assertBodies(t, collect(t, d, 1), "held")
	// Not held: mandatory as on any exchange.
	if err := ch.Publish(x, "k", true, false, delayedMsg("now", 0)); err != nil {
		t.Fatal(err)
	}
	assertBodies(t, collect(t, d, 1), "now")
	select {
	case r := <-returns:
		t.Errorf("routed message returned: %q", r.Body)
	case <-time.After(quiet):
	}
}

// A held message that finds no binding when due goes to the alternate exchange then.
func TestDelayedAlternateExchangeWhenDue(t *testing.T) {
	delayedOnly(t)
	_, ch := setup(t)
	ae := declareExchange(t, ch, "fanout", nil)
	aq := declareQueue(t, ch, nil)
	bind(t, ch, aq, "", ae, nil)
	x := declareDelayed(t, ch, "direct", amqp.Table{"alternate-exchange": ae})
	d := consume(t, ch, aq, true)
	publishMsg(t, ch, x, "nobody", delayedMsg("m", 700))
	expectNoDelivery(t, d)
	assertBodies(t, collect(t, d, 1), "m")
}

// Deleting the exchange drops what it holds.
func TestDelayedDeleteDropsHeld(t *testing.T) {
	delayedOnly(t)
	_, ch := setup(t)
	x := declareDelayed(t, ch, "fanout", nil)
	q := declareQueue(t, ch, nil)
	bind(t, ch, q, "", x, nil)
	d := consume(t, ch, q, true)
	publishMsg(t, ch, x, "", delayedMsg("dropped", 300))
	if err := ch.ExchangeDelete(x, false, false); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	expectNoDelivery(t, d)
}

// In a transaction a held message is stored at tx.commit and routed when due.
func TestDelayedInTransaction(t *testing.T) {
	delayedOnly(t)
	_, ch := setup(t)
	x := declareDelayed(t, ch, "direct", nil)
	q := declareQueue(t, ch, nil)
	bind(t, ch, q, "k", x, nil)
	d := consume(t, ch, q, true)
	if err := ch.Tx(); err != nil {
		t.Fatal(err)
	}
	publishMsg(t, ch, x, "k", delayedMsg("tx", 200))
	expectNoDelivery(t, d)
	// The delay counts from the commit's arrival, after start; timed from commit-ok instead,
	// a commit whose sync and reply took over 100 ms on a loaded machine seemed early.
	start := time.Now()
	if err := ch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	assertBodies(t, collect(t, d, 1), "tx")
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("delivered %v after the commit was sent, before it was due (200 ms)", el)
	}
}
