package server

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// addUser adds a user with a password and permissions on vhost "/" to cfg.
func addUser(cfg *Config, name string, perms ...string) {
	cfg.Users = append(cfg.Users, User{Name: name, Password: "pw"})
	if len(perms) == 3 {
		cfg.Permissions = append(cfg.Permissions, Permission{User: name, VHost: "/", Configure: perms[0], Write: perms[1], Read: perms[2]})
	}
}

func dialAs(t *testing.T, s *Server, user, vhost string) *amqp091.Connection {
	t.Helper()
	c, err := dialUser(s, user, vhost)
	if err != nil {
		t.Fatalf("dial %s@%s: %v", user, vhost, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func dialUser(s *Server, user, vhost string) (*amqp091.Connection, error) {
	pass := "pw"
	if user == "guest" {
		pass = "guest"
	}
	return amqp091.DialConfig(fmt.Sprintf("amqp://%s:%s@%s/", user, pass, s.Addr()), amqp091.Config{Vhost: vhost})
}

func mustChannel(t *testing.T, c *amqp091.Connection) *amqp091.Channel {
	t.Helper()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// checkAMQPError checks err against a reply code and text ("" accepts any text); code 0 means success.
func checkAMQPError(t *testing.T, what string, err error, code int, text string) {
	t.Helper()
	if code == 0 {
		if err != nil {
			t.Errorf("%s: %v, want success", what, err)
		}
		return
	}
	var ae *amqp091.Error
	if !errors.As(err, &ae) {
		t.Errorf("%s: error %v, want %d %q", what, err, code, text)
		return
	}
	if ae.Code != code || (text != "" && ae.Reason != text) {
		t.Errorf("%s: got %d %q, want %d %q", what, ae.Code, ae.Reason, code, text)
	}
}

// Every operation RabbitMQ checks, against a user with configure ^(cfg|amq.gen), write ^w,
// read ^r on "/": the texts and the order of checks are RabbitMQ 3.10's (observed on the reference
// broker with the same permissions).
func TestPermissions(t *testing.T) {
	s := startTestServer(t, func(c *Config) {
		addUser(c, "app", `^(cfg.*|amq\.gen.*)$`, `^w.*`, `^r.*`)
	})
	admin := mustChannel(t, dialAs(t, s, "guest", "/"))
	for _, x := range []string{"wx", "cfgx", "rx"} {
		if err := admin.ExchangeDeclare(x, "direct", false, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{"rq", "cfgq", "wq"} {
		if _, err := admin.QueueDeclare(q, false, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	app := dialAs(t, s, "app", "/")
	refused := func(kind, name string) string {
		return fmt.Sprintf("ACCESS_REFUSED - access to %s '%s' in vhost '/' refused for user 'app'", kind, name)
	}
	tests := []struct {
		name string
		op   func(ch *amqp091.Channel) error
		code int
		text string
	}{
		{"declare without configure", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclare("nope", false, true, false, false, nil)
			return err
		}, 403, refused("queue", "nope")},
		{"declare existing without configure", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclare("rq", false, false, false, false, nil)
			return err
		}, 403, refused("queue", "rq")},
		{"configure checked before arguments", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclare("nope", false, true, false, false, amqp091.Table{"x-max-length": "a"})
			return err
		}, 403, refused("queue", "nope")},
		{"passive declare needs nothing", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclarePassive("wq", false, false, false, false, nil)
			return err
		}, 0, ""},
		{"declare with configure", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclare("cfgq", false, false, false, false, nil)
			return err
		}, 0, ""},
		{"server-named queue", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclare("", false, true, true, false, nil)
			return err
		}, 0, ""},
		{"amq. prefix before permission", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclare("amq.x", false, true, false, false, nil)
			return err
		}, 403, "ACCESS_REFUSED - queue name 'amq.x' contains reserved prefix 'amq.*'"},
		{"dead-letter exchange needs read on the queue", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclare("cfgdl", false, true, false, false, amqp091.Table{"x-dead-letter-exchange": "wx"})
			return err
		}, 403, refused("queue", "cfgdl")},
		{"publish without write", func(ch *amqp091.Channel) error { return publishSync(ch, "rx") }, 403, refused("exchange", "rx")},
		{"publish to the default exchange", func(ch *amqp091.Channel) error { return publishSync(ch, "") }, 403, refused("exchange", "amq.default")},
		{"publish to a missing exchange with write", func(ch *amqp091.Channel) error { return publishSync(ch, "wmissing") }, 404, "NOT_FOUND - no exchange 'wmissing' in vhost '/'"},
		{"publish to a missing exchange without write", func(ch *amqp091.Channel) error { return publishSync(ch, "zz") }, 403, refused("exchange", "zz")},
		{"publish with write", func(ch *amqp091.Channel) error { return publishSync(ch, "wx") }, 0, ""},
		{"consume without read", func(ch *amqp091.Channel) error {
			_, err := ch.Consume("wq", "", false, false, false, false, nil)
			return err
		}, 403, refused("queue", "wq")},
		{"consume with read", func(ch *amqp091.Channel) error {
			_, err := ch.Consume("rq", "", false, false, false, false, nil)
			return err
		}, 0, ""},
		{"consume missing queue with read", func(ch *amqp091.Channel) error {
			_, err := ch.Consume("rmissing", "", false, false, false, false, nil)
			return err
		}, 404, "NOT_FOUND - no queue 'rmissing' in vhost '/'"},
		{"get without read", func(ch *amqp091.Channel) error { _, _, err := ch.Get("wq", false); return err }, 403, refused("queue", "wq")},
		{"get with read", func(ch *amqp091.Channel) error { _, _, err := ch.Get("rq", false); return err }, 0, ""},
		{"purge without read", func(ch *amqp091.Channel) error { _, err := ch.QueuePurge("wq", false); return err }, 403, refused("queue", "wq")},
		{"bind needs write on the queue", func(ch *amqp091.Channel) error { return ch.QueueBind("cfgq", "k", "rx", false, nil) }, 403, refused("queue", "cfgq")},
		{"bind needs read on the exchange", func(ch *amqp091.Channel) error { return ch.QueueBind("wq", "k", "wx", false, nil) }, 403, refused("exchange", "wx")},
		{"bind allowed", func(ch *amqp091.Channel) error { return ch.QueueBind("wq", "k", "rx", false, nil) }, 0, ""},
		{"bind to the default exchange", func(ch *amqp091.Channel) error { return ch.QueueBind("wq", "k", "", false, nil) }, 403, "ACCESS_REFUSED - operation not permitted on the default exchange"},
		{"unbind needs read on the exchange", func(ch *amqp091.Channel) error { return ch.QueueUnbind("wq", "k", "wx", nil) }, 403, refused("exchange", "wx")},
		{"exchange.bind allowed", func(ch *amqp091.Channel) error { return ch.ExchangeBind("wx", "k", "rx", false, nil) }, 0, ""},
		{"exchange.bind needs write on the destination", func(ch *amqp091.Channel) error { return ch.ExchangeBind("rx", "k", "wx", false, nil) }, 403, refused("exchange", "rx")},
		{"delete queue without configure", func(ch *amqp091.Channel) error { _, err := ch.QueueDelete("wq", false, false, false); return err }, 403, refused("queue", "wq")},
		{"delete missing queue without configure", func(ch *amqp091.Channel) error { _, err := ch.QueueDelete("zz", false, false, false); return err }, 403, refused("queue", "zz")},
		{"delete exchange without configure", func(ch *amqp091.Channel) error { return ch.ExchangeDelete("wx", false, false) }, 403, refused("exchange", "wx")},
		{"declare exchange without configure", func(ch *amqp091.Channel) error {
			return ch.ExchangeDeclare("wx", "direct", false, false, false, false, nil)
		}, 403, refused("exchange", "wx")},
		{"passive exchange declare needs nothing", func(ch *amqp091.Channel) error {
			return ch.ExchangeDeclarePassive("wx", "direct", false, false, false, false, nil)
		}, 0, ""},
		{"alternate exchange needs read on the exchange", func(ch *amqp091.Channel) error {
			return ch.ExchangeDeclare("cfgae", "direct", false, true, false, false, amqp091.Table{"alternate-exchange": "rx"})
		}, 403, refused("exchange", "cfgae")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ch := mustChannel(t, app)
			defer ch.Close()
			checkAMQPError(t, tc.name, channelResult(ch, tc.op), tc.code, tc.text)
		})
	}
}

// channelResult runs op on ch and returns the error the broker closed the channel with, if any.
// Refusals of a publish arrive asynchronously, so a synchronous call follows op; the client may
// then report only "channel not open", so the reason is taken from the close notification.
func channelResult(ch *amqp091.Channel, op func(*amqp091.Channel) error) error {
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	err := op(ch)
	if err == nil {
		err = ch.ExchangeDeclarePassive("amq.direct", "direct", true, false, false, false, nil)
	}
	if errors.Is(err, amqp091.ErrClosed) {
		if e := <-closed; e != nil {
			return e
		}
	}
	return err
}

// publishSync publishes and waits for the broker to have processed it (a following synchronous
// method returns the channel's error, if any).
func publishSync(ch *amqp091.Channel, exchange string) error {
	if err := ch.Publish(exchange, "k", false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
		return err
	}
	_, err := ch.QueueDeclarePassive("rq", false, false, false, false, nil)
	return err
}

// The case: no write permission on an exchange means no publishing to it (403), while
// consuming from a readable queue works.
func TestPublishRefusedConsumeAllowed(t *testing.T) {
	s := startTestServer(t, func(c *Config) { addUser(c, "reader", "", "", "^events$") })
	admin := mustChannel(t, dialAs(t, s, "guest", "/"))
	if _, err := admin.QueueDeclare("events", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := admin.QueueBind("events", "e", "amq.direct", false, nil); err != nil {
		t.Fatal(err)
	}
	reader := dialAs(t, s, "reader", "/")
	ch := mustChannel(t, reader)
	deliveries, err := ch.Consume("events", "", true, false, false, false, nil)
	if err != nil {
		t.Fatalf("consume with read permission: %v", err)
	}
	if err := admin.Publish("amq.direct", "e", false, false, amqp091.Publishing{Body: []byte("hello")}); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-deliveries:
		if string(d.Body) != "hello" {
			t.Fatalf("got %q", d.Body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery")
	}
	pub := mustChannel(t, reader)
	closed := pub.NotifyClose(make(chan *amqp091.Error, 1))
	if err := pub.Publish("amq.direct", "e", false, false, amqp091.Publishing{Body: []byte("nope")}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-closed:
		if e == nil || e.Code != 403 || !strings.Contains(e.Reason, "access to exchange 'amq.direct' in vhost '/' refused for user 'reader'") {
			t.Fatalf("channel closed with %v, want 403 naming amq.direct", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("publish without write permission was not refused")
	}
	if _, ok, _ := ch.Get("events", true); ok {
		t.Fatal("the refused message was enqueued")
	}
}

func TestVHostAccess(t *testing.T) {
	s := startTestServer(t, func(c *Config) {
		c.VHosts = append(c.VHosts, VHost{Name: "other"})
		addUser(c, "app", ".*", ".*", ".*")
	})
	_, err := dialUser(s, "app", "other")
	checkAMQPError(t, "open without permissions", err, 530, "NOT_ALLOWED - access to vhost 'other' refused for user 'app'")
	_, err = dialUser(s, "app", "missing")
	checkAMQPError(t, "open unknown vhost", err, 530, "NOT_ALLOWED - vhost missing not found")
	c, err := dialUser(s, "app", "/")
	checkAMQPError(t, "open with permissions", err, 0, "")
	if c != nil {
		c.Close()
	}
}

// Vhosts are separate namespaces: a queue of the same name in two vhosts is two queues.
func TestVHostIsolation(t *testing.T) {
	s := startTestServer(t, func(c *Config) {
		c.VHosts = append(c.VHosts, VHost{Name: "b"})
		c.Permissions = append(c.Permissions, Permission{User: "guest", VHost: "b", Configure: ".*", Write: ".*", Read: ".*"})
	})
	cha := mustChannel(t, dialAs(t, s, "guest", "/"))
	chb := mustChannel(t, dialAs(t, s, "guest", "b"))
	for _, ch := range []*amqp091.Channel{cha, chb} {
		if _, err := ch.QueueDeclare("same", false, false, false, false, amqp091.Table{"x-max-length": int32(10)}); err != nil {
			t.Fatal(err)
		}
	}
	// Different arguments would be a 406 if the two declarations reached the same queue.
	if _, err := chb.QueueDeclare("only-b", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := cha.Publish("", "same", false, false, amqp091.Publishing{Body: []byte("a")}); err != nil {
			t.Fatal(err)
		}
	}
	if err := chb.Publish("", "same", false, false, amqp091.Publishing{Body: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	qa, err := cha.QueueDeclarePassive("same", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	qb, err := chb.QueueDeclarePassive("same", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if qa.Messages != 3 || qb.Messages != 1 {
		t.Fatalf("messages: / has %d (want 3), b has %d (want 1)", qa.Messages, qb.Messages)
	}
	m, ok, err := chb.Get("same", true)
	if err != nil || !ok || string(m.Body) != "b" {
		t.Fatalf("b got %q %v %v", m.Body, ok, err)
	}
	_, err = cha.QueueDeclarePassive("only-b", false, false, false, false, nil)
	checkAMQPError(t, "queue of another vhost", err, 404, "NOT_FOUND - no queue 'only-b' in vhost '/'")
}

// Permission patterns use RabbitMQ's regular expression dialect (PCRE): the lookahead that
// exported definitions use for "everything but amq.*" works, and a pattern neither engine takes
// is still a configuration error.
func TestPermissionPatternsPCRE(t *testing.T) {
	for _, tc := range []struct {
		expr    string
		name    string
		allowed bool
	}{
		{`^(?!amq\.).*`, "orders", true},
		{`^(?!amq\.).*`, "amq.gen-1", false},
		{`^(?!tmp-)orders\.(?=eu)`, "orders.eu", true},
		{`^(?!tmp-)orders\.(?=eu)`, "orders.us", false},
		{`^(?=(a+)+$)`, strings.Repeat("a", 40) + "!", false}, // catastrophic backtracking: times out, denied
		{`^orders\.`, "orders.eu", true},                      // plain patterns stay on Go's regexp
	} {
		m, err := newMatcher("permissions[0].write", tc.expr)
		if err != nil {
			t.Fatalf("%q: %v", tc.expr, err)
		}
		if got := m.match(tc.name); got != tc.allowed {
			t.Errorf("%q on %q: %v, want %v", tc.expr, tc.name, got, tc.allowed)
		}
	}
	if _, err := newMatcher("permissions[0].write", "(["); err == nil {
		t.Error("an invalid pattern was accepted")
	}
}
