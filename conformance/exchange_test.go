package conformance

import (
	"fmt"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestExchangeDeclareKinds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		kind     string
		bindKey  string
		bindArgs amqp.Table
		pubKey   string
		headers  amqp.Table
		routed   bool
	}{
		{"direct", "k", nil, "k", nil, true},
		{"direct", "k", nil, "other", nil, false},
		{"fanout", "ignored", nil, "anything", nil, true},
		{"topic", "a.*.c", nil, "a.b.c", nil, true},
		{"topic", "a.#", nil, "a", nil, true},
		{"topic", "a.*", nil, "a.b.c", nil, false},
		{"topic", "#", nil, "", nil, true},
		{"topic", "#.b", nil, "b", nil, true},
		{"topic", "a.#.c", nil, "a.c", nil, true},
		{"topic", "a.#.c", nil, "a.x.y.c", nil, true},
		{"topic", "a.*.#", nil, "a", nil, false},
		{"topic", "a.*.#", nil, "a.b", nil, true},
		{"topic", "*", nil, "", nil, false},
		{"topic", "a.*", nil, "a.", nil, true},
		{"topic", "*.*", nil, "a..b", nil, false},
		{"topic", "a.b", nil, "A.B", nil, false},
		{"direct", "", nil, "", nil, true},
		{"headers", "", amqp.Table{"x-match": "all", "h1": "v1", "h2": "v2"}, "", amqp.Table{"h1": "v1", "h2": "v2", "h3": "x"}, true},
		{"headers", "", amqp.Table{"x-match": "all", "h1": "v1", "h2": "v2"}, "", amqp.Table{"h1": "v1"}, false},
		{"headers", "", amqp.Table{"x-match": "any", "h1": "v1", "h2": "v2"}, "", amqp.Table{"h2": "v2"}, true},
		{"headers", "", amqp.Table{"x-match": "any", "h1": "v1"}, "", amqp.Table{"h1": "nope"}, false},
		{"headers", "", amqp.Table{"h1": "v1", "h2": "v2"}, "", amqp.Table{"h1": "v1"}, false},
		{"headers", "", amqp.Table{}, "", nil, true},
		{"headers", "", amqp.Table{"x-match": "all", "n": int32(5)}, "", amqp.Table{"n": int32(5)}, true},
		{"headers", "", amqp.Table{"x-match": "all", "n": int32(5)}, "", amqp.Table{"n": "5"}, false},
		{"headers", "", amqp.Table{"x-match": "any", "x-custom": "v"}, "", amqp.Table{"x-custom": "v"}, false},
		{"headers", "", amqp.Table{"x-match": "any-with-x", "x-custom": "v"}, "", amqp.Table{"x-custom": "v"}, true},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s/%s->%s", tc.kind, tc.bindKey, tc.pubKey), func(t *testing.T) {
			t.Parallel()
			_, ch := setup(t)
			x := declareExchange(t, ch, tc.kind, nil)
			// Redeclaring with identical properties is a no-op.
			if err := ch.ExchangeDeclare(x, tc.kind, false, false, false, false, nil); err != nil {
				t.Fatalf("identical redeclare: %v", err)
			}
			if err := ch.ExchangeDeclarePassive(x, tc.kind, false, false, false, false, nil); err != nil {
				t.Fatalf("passive declare: %v", err)
			}
			q := declareQueue(t, ch, nil)
			bind(t, ch, q, tc.bindKey, x, tc.bindArgs)
			publishMsg(t, ch, x, tc.pubKey, amqp.Publishing{Headers: tc.headers, Body: []byte("m")})
			_, ok, err := ch.Get(q, true)
			if err != nil {
				t.Fatal(err)
			}
			if ok != tc.routed {
				t.Fatalf("routed = %v, want %v", ok, tc.routed)
			}
		})
	}
}

func TestExchangeDeclareErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		op   func(t *testing.T, ch *amqp.Channel) error
		code int
		text string
	}{
		{"passive-missing", func(t *testing.T, ch *amqp.Channel) error {
			return ch.ExchangeDeclarePassive("conf-missing-exchange", "direct", false, false, false, false, nil)
		}, amqp.NotFound, "NOT_FOUND - no exchange 'conf-missing-exchange' in vhost '/'"},
		{"redeclare-other-type", func(t *testing.T, ch *amqp.Channel) error {
			x := declareExchange(t, ch, "direct", nil)
			return ch.ExchangeDeclare(x, "fanout", false, false, false, false, nil)
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange"},
		{"redeclare-other-durable", func(t *testing.T, ch *amqp.Channel) error {
			x := declareExchange(t, ch, "direct", nil)
			return ch.ExchangeDeclare(x, "direct", true, false, false, false, nil)
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange"},
		{"redeclare-other-args", func(t *testing.T, ch *amqp.Channel) error {
			x := declareExchange(t, ch, "direct", nil)
			return ch.ExchangeDeclare(x, "direct", false, false, false, false, amqp.Table{"alternate-exchange": "ae"})
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange"},
		{"declare-amq-prefix", func(t *testing.T, ch *amqp.Channel) error {
			return ch.ExchangeDeclare("amq.conformance", "direct", false, false, false, false, nil)
		}, amqp.AccessRefused, "ACCESS_REFUSED - exchange name 'amq.conformance' contains reserved prefix 'amq.*'"},
		{"redeclare-amq-direct-other-type", func(t *testing.T, ch *amqp.Channel) error {
			// The equivalence check comes before the reserved-prefix check.
			return ch.ExchangeDeclare("amq.direct", "fanout", true, false, false, false, nil)
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'amq.direct' in vhost '/': received 'fanout' but current is 'direct'"},
		{"declare-default", func(t *testing.T, ch *amqp.Channel) error {
			return ch.ExchangeDeclare("", "direct", true, false, false, false, nil)
		}, amqp.AccessRefused, "ACCESS_REFUSED - operation not permitted on the default exchange"},
		{"delete-amq-direct", func(t *testing.T, ch *amqp.Channel) error {
			return ch.ExchangeDelete("amq.direct", false, false)
		}, amqp.AccessRefused, "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"},
		{"delete-default", func(t *testing.T, ch *amqp.Channel) error {
			return ch.ExchangeDelete("", false, false)
		}, amqp.AccessRefused, "ACCESS_REFUSED - operation not permitted on the default exchange"},
		{"bind-default", func(t *testing.T, ch *amqp.Channel) error {
			q := declareQueue(t, ch, nil)
			return ch.QueueBind(q, "k", "", false, nil)
		}, amqp.AccessRefused, "ACCESS_REFUSED - operation not permitted on the default exchange"},
		{"unbind-default", func(t *testing.T, ch *amqp.Channel) error {
			q := declareQueue(t, ch, nil)
			return ch.QueueUnbind(q, q, "", nil)
		}, amqp.AccessRefused, "ACCESS_REFUSED - operation not permitted on the default exchange"},
		{"e2e-bind-default-source", func(t *testing.T, ch *amqp.Channel) error {
			x := declareExchange(t, ch, "fanout", nil)
			return ch.ExchangeBind(x, "k", "", false, nil)
		}, amqp.AccessRefused, "ACCESS_REFUSED - operation not permitted on the default exchange"},
		{"delete-if-unused", func(t *testing.T, ch *amqp.Channel) error {
			x := declareExchange(t, ch, "direct", nil)
			q := declareQueue(t, ch, nil)
			bind(t, ch, q, "k", x, nil)
			return ch.ExchangeDelete(x, true, false)
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - exchange 'conf."},
		{"publish-internal", func(t *testing.T, ch *amqp.Channel) error {
			x := uname(t, "internal")
			if err := ch.ExchangeDeclare(x, "fanout", false, false, true, false, nil); err != nil {
				t.Fatal(err)
			}
			cleanupExchange(t, x)
			return awaitClose(t, ch, func() { publish(t, ch, x, "", "m") })
		}, amqp.AccessRefused, "ACCESS_REFUSED - cannot publish to internal exchange"},
		{"publish-missing", func(t *testing.T, ch *amqp.Channel) error {
			return awaitClose(t, ch, func() { publish(t, ch, "conf-missing-exchange", "", "m") })
		}, amqp.NotFound, "NOT_FOUND - no exchange 'conf-missing-exchange' in vhost '/'"},
		{"headers-bad-x-match", func(t *testing.T, ch *amqp.Channel) error {
			x := declareExchange(t, ch, "headers", nil)
			q := declareQueue(t, ch, nil)
			return ch.QueueBind(q, "", x, false, amqp.Table{"x-match": "nope"})
		}, amqp.PreconditionFailed, `PRECONDITION_FAILED - Invalid x-match field value <<"nope">>; expected all, any, all-with-x, or any-with-x`},
		{"headers-x-match-not-string", func(t *testing.T, ch *amqp.Channel) error {
			x := declareExchange(t, ch, "headers", nil)
			q := declareQueue(t, ch, nil)
			return ch.QueueBind(q, "", x, false, amqp.Table{"x-match": int32(1)})
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - Invalid x-match field type signedint (value 1); expected longstr"},
		{"e2e-bind-missing-source", func(t *testing.T, ch *amqp.Channel) error {
			x := declareExchange(t, ch, "fanout", nil)
			return ch.ExchangeBind(x, "k", "conf-missing-exchange", false, nil)
		}, amqp.NotFound, "NOT_FOUND - no exchange 'conf-missing-exchange' in vhost '/'"},
		{"e2e-bind-missing-destination", func(t *testing.T, ch *amqp.Channel) error {
			x := declareExchange(t, ch, "fanout", nil)
			return ch.ExchangeBind("conf-missing-exchange", "k", x, false, nil)
		}, amqp.NotFound, "NOT_FOUND - no exchange 'conf-missing-exchange' in vhost '/'"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, ch := setup(t)
			ae := expectChannelClosed(t, c, tc.op(t, ch), tc.code)
			if !strings.HasPrefix(ae.Reason, tc.text) {
				t.Errorf("reply text = %q, want prefix %q", ae.Reason, tc.text)
			}
		})
	}
}

func TestExchangeUnknownTypeIsConnectionError(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	closes := closeNotify(c)
	err := ch.ExchangeDeclare(uname(t, "x"), "no-such-type", false, false, false, false, nil)
	ae := expectConnectionClosed(t, c, closes, err, amqp.CommandInvalid)
	if !strings.HasPrefix(ae.Reason, "COMMAND_INVALID - unknown exchange type 'no-such-type'") {
		t.Errorf("reply text = %q", ae.Reason)
	}
}

func TestExchangeRedeclareSystemExchange(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	// An equivalent redeclare of a predeclared amq.* exchange is accepted.
	for _, k := range [][2]string{{"amq.direct", "direct"}, {"amq.fanout", "fanout"}, {"amq.topic", "topic"}, {"amq.headers", "headers"}, {"amq.match", "headers"}} {
		if err := ch.ExchangeDeclare(k[0], k[1], true, false, false, false, nil); err != nil {
			t.Fatalf("redeclare %s: %v", k[0], err)
		}
		if err := ch.ExchangeDeclarePassive(k[0], k[1], true, false, false, false, nil); err != nil {
			t.Fatalf("passive %s: %v", k[0], err)
		}
	}
}

func TestExchangeDeleteMissingSucceeds(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	if err := ch.ExchangeDelete(uname(t, "never"), false, false); err != nil {
		t.Fatalf("delete of a missing exchange: %v", err)
	}
	if err := ch.ExchangeDelete(uname(t, "never"), true, false); err != nil {
		t.Fatalf("delete if-unused of a missing exchange: %v", err)
	}
}

func TestExchangeDeleteRemovesBindings(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	x := declareExchange(t, ch, "fanout", nil)
	q := declareQueue(t, ch, nil)
	bind(t, ch, q, "", x, nil)
	if err := ch.ExchangeDelete(x, true, false); err == nil {
		t.Fatal("if-unused delete of a bound exchange succeeded")
	}
	ch = openCh(t, dial(t))
	if err := ch.ExchangeDelete(x, false, false); err != nil {
		t.Fatal(err)
	}
	if exchangeExists(t, x) {
		t.Fatal("exchange still exists")
	}
	// Redeclared exchange has no bindings left over.
	if err := ch.ExchangeDeclare(x, "fanout", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	publish(t, ch, x, "", "m")
	if _, ok, _ := ch.Get(q, true); ok {
		t.Fatal("binding survived exchange deletion")
	}
}

func TestExchangeToExchangeBinding(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	src := declareExchange(t, ch, "topic", nil)
	dst := declareExchange(t, ch, "direct", nil)
	q := declareQueue(t, ch, nil)
	bind(t, ch, q, "a.b", dst, nil)
	if err := ch.ExchangeBind(dst, "a.*", src, false, nil); err != nil {
		t.Fatalf("exchange.bind: %v", err)
	}
	publish(t, ch, src, "a.b", "routed")
	publish(t, ch, src, "a.c", "dropped-at-dst")
	publish(t, ch, src, "b.b", "dropped-at-src")
	if got := getAll(t, ch, q); strings.Join(got, ",") != "routed" {
		t.Fatalf("got %v, want [routed]", got)
	}
	if err := ch.ExchangeUnbind(dst, "a.*", src, false, nil); err != nil {
		t.Fatalf("exchange.unbind: %v", err)
	}
	publish(t, ch, src, "a.b", "after-unbind")
	if got := getAll(t, ch, q); len(got) != 0 {
		t.Fatalf("got %v after unbind", got)
	}
	// Unbinding what is not bound succeeds.
	if err := ch.ExchangeUnbind(dst, "a.*", src, false, nil); err != nil {
		t.Fatalf("second exchange.unbind: %v", err)
	}
}

func TestExchangeCycleDeliversOnce(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	a := declareExchange(t, ch, "fanout", nil)
	b := declareExchange(t, ch, "fanout", nil)
	c := declareExchange(t, ch, "fanout", nil)
	for _, e := range [][2]string{{b, a}, {c, b}, {a, c}} {
		if err := ch.ExchangeBind(e[0], "", e[1], false, nil); err != nil {
			t.Fatal(err)
		}
	}
	q := declareQueue(t, ch, nil)
	// Three paths reach q: directly from a, from b and from c.
	bind(t, ch, q, "", a, nil)
	bind(t, ch, q, "", b, nil)
	bind(t, ch, q, "", c, nil)
	publish(t, ch, a, "", "once")
	if got := getAll(t, ch, q); strings.Join(got, ",") != "once" {
		t.Fatalf("got %v, want exactly one copy", got)
	}
}

func TestExchangeAlternateExchange(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	ae := declareExchange(t, ch, "fanout", nil)
	x := declareExchange(t, ch, "direct", amqp.Table{"alternate-exchange": ae})
	qMain := declareQueue(t, ch, nil)
	qAlt := declareQueue(t, ch, nil)
	bind(t, ch, qMain, "known", x, nil)
	bind(t, ch, qAlt, "", ae, nil)
	returns := ch.NotifyReturn(make(chan amqp.Return, 2))
	for _, k := range []string{"known", "unknown"} {
		if err := ch.Publish(x, k, true, false, amqp.Publishing{Body: []byte(k)}); err != nil {
			t.Fatal(err)
		}
	}
	if got := getAll(t, ch, qMain); strings.Join(got, ",") != "known" {
		t.Fatalf("main queue got %v", got)
	}
	if got := getAll(t, ch, qAlt); strings.Join(got, ",") != "unknown" {
		t.Fatalf("alternate queue got %v", got)
	}
	select {
	case r := <-returns:
		t.Fatalf("mandatory message routed via the AE was returned: %+v", r.ReplyText)
	default:
	}
	// A missing alternate exchange simply drops the message (mandatory returns it).
	x2 := declareExchange(t, ch, "direct", amqp.Table{"alternate-exchange": uname(t, "missing-ae")})
	if err := ch.Publish(x2, "k", true, false, amqp.Publishing{Body: []byte("r")}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-returns:
		if r.ReplyCode != amqp.NoRoute || r.ReplyText != "NO_ROUTE" {
			t.Fatalf("return = %d %q", r.ReplyCode, r.ReplyText)
		}
	case <-timeAfterWait():
		t.Fatal("no basic.return")
	}
}

func TestExchangeAutoDelete(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	x := uname(t, "ad")
	if err := ch.ExchangeDeclare(x, "fanout", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	cleanupExchange(t, x)
	// Never bound: it stays.
	if !exchangeExists(t, x) {
		t.Fatal("auto-delete exchange vanished before its first binding")
	}
	q1 := declareQueue(t, ch, nil)
	q2 := declareQueue(t, ch, nil)
	bind(t, ch, q1, "", x, nil)
	bind(t, ch, q2, "", x, nil)
	if err := ch.QueueUnbind(q1, "", x, nil); err != nil {
		t.Fatal(err)
	}
	if !exchangeExists(t, x) {
		t.Fatal("auto-delete exchange deleted while a binding remains")
	}
	// Deleting the queue removes the last binding, which deletes the exchange.
	if _, err := ch.QueueDelete(q2, false, false, false); err != nil {
		t.Fatal(err)
	}
	eventually(t, "auto-delete exchange removal", func() bool { return !exchangeExists(t, x) })
}

func TestExchangeAutoDeleteAsE2ESource(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	x := uname(t, "ad")
	if err := ch.ExchangeDeclare(x, "fanout", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	cleanupExchange(t, x)
	dst := declareExchange(t, ch, "fanout", nil)
	if err := ch.ExchangeBind(dst, "", x, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeUnbind(dst, "", x, false, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "auto-delete exchange removal", func() bool { return !exchangeExists(t, x) })
	if !exchangeExists(t, dst) {
		t.Fatal("destination exchange deleted")
	}
}
