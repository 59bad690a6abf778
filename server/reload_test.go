package server

import (
	"slices"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/amqp"
)

func reloadOrFail(t *testing.T, s *Server, mutate func(*Config)) {
	t.Helper()
	cfg := s.cfg
	cfg.Users = append([]User(nil), cfg.Users...)
	cfg.Permissions = append([]Permission(nil), cfg.Permissions...)
	cfg.VHosts = append([]VHost(nil), cfg.VHosts...)
	mutate(&cfg)
	if err := s.Reload(cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
}

// A permission removed by a reload is refused on the next operation of a live channel; a user
// removed from the configuration has its connections closed, as RabbitMQ closes a deleted user's.
func TestReloadPermissionsAndUsers(t *testing.T) {
	s := startTestServer(t, func(c *Config) {
		addUser(c, "app", ".*", ".*", ".*")
		addUser(c, "gone", ".*", ".*", ".*")
	})
	app := dialAs(t, s, "app", "/")
	ch := mustChannel(t, app)
	if _, err := ch.QueueDeclare("work", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := publishTo(ch, "", "work"); err != nil {
		t.Fatalf("publish before reload: %v", err)
	}
	gone := dialAs(t, s, "gone", "/")
	goneClosed := gone.NotifyClose(make(chan *amqp091.Error, 1))

	reloadOrFail(t, s, func(c *Config) {
		c.Users = c.Users[:2] // guest, app
		c.Permissions = []Permission{c.Permissions[0], {User: "app", VHost: "/", Configure: ".*", Write: "^$", Read: ".*"}}
	})
	err := channelResult(ch, func(ch *amqp091.Channel) error { return publishTo(ch, "", "work") })
	checkAMQPError(t, "publish after write was revoked", err, 403, "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'app'")
	ch2 := mustChannel(t, app)
	if _, _, err := ch2.Get("work", true); err != nil {
		t.Fatalf("read is still allowed: %v", err)
	}
	select {
	case e := <-goneClosed:
		checkAMQPError(t, "deleted user's connection", e, 320, "CONNECTION_FORCED - user 'gone' is deleted")
	case <-time.After(5 * time.Second):
		t.Fatal("deleted user's connection stayed open")
	}
	_, err = dialUser(s, "gone", "/")
	checkAMQPError(t, "deleted user logs in", err, 403, "")

	// Permissions cleared entirely: the connection stays (as in RabbitMQ) but everything that
	// needs a permission is refused.
	reloadOrFail(t, s, func(c *Config) {
		c.Users = c.Users[:2]
		c.Permissions = c.Permissions[:1]
	})
	if app.IsClosed() {
		t.Fatal("connection closed when its permissions were cleared")
	}
	ch3 := mustChannel(t, app)
	err = channelResult(ch3, func(ch *amqp091.Channel) error { _, _, err := ch.Get("work", true); return err })
	checkAMQPError(t, "get without permissions", err, 403, "ACCESS_REFUSED - access to queue 'work' in vhost '/' refused for user 'app'")
	_, err = dialUser(s, "app", "/")
	checkAMQPError(t, "new connection without permissions", err, 530, "NOT_ALLOWED - access to vhost '/' refused for user 'app'")
}

func publishTo(ch *amqp091.Channel, exchange, key string) error {
	if err := ch.Publish(exchange, key, false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
		return err
	}
	_, err := ch.QueueDeclarePassive("work", false, false, false, false, nil)
	return err
}

// Vhosts added by a reload accept connections; a removed vhost's connections are closed and its
// queues come back with it.
func TestReloadVHosts(t *testing.T) {
	s := startTestServer(t, nil)
	reloadOrFail(t, s, func(c *Config) {
		c.VHosts = append(c.VHosts, VHost{Name: "new"})
		c.Permissions = append(c.Permissions, Permission{User: "guest", VHost: "new", Configure: ".*", Write: ".*", Read: ".*"})
	})
	conn := dialAs(t, s, "guest", "new")
	ch := mustChannel(t, conn)
	if _, err := ch.QueueDeclare("kept", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Publish("", "kept", false, false, amqp091.Publishing{Body: []byte("m")}); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclarePassive("kept", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
	reloadOrFail(t, s, func(c *Config) {})
	select {
	case e := <-closed:
		checkAMQPError(t, "removed vhost's connection", e, 320, "CONNECTION_FORCED - vhost 'new' is deleted")
	case <-time.After(5 * time.Second):
		t.Fatal("connection to a removed vhost stayed open")
	}
	_, err := dialUser(s, "guest", "new")
	checkAMQPError(t, "open removed vhost", err, 530, "NOT_ALLOWED - vhost new not found")
	reloadOrFail(t, s, func(c *Config) {
		c.VHosts = append(c.VHosts, VHost{Name: "new"})
		c.Permissions = append(c.Permissions, Permission{User: "guest", VHost: "new", Configure: ".*", Write: ".*", Read: ".*"})
	})
	ch = mustChannel(t, dialAs(t, s, "guest", "new"))
	q, err := ch.QueueDeclarePassive("kept", false, false, false, false, nil)
	if err != nil || q.Messages != 1 {
		t.Fatalf("queue after the vhost came back: %+v %v, want 1 message", q, err)
	}
}

// An invalid configuration is refused by Reload and the running one stays in force.
func TestReloadInvalidKeepsConfig(t *testing.T) {
	s := startTestServer(t, func(c *Config) { addUser(c, "app", ".*", ".*", ".*") })
	bad := []func(*Config){
		func(c *Config) { c.Permissions[1].Write = "([" },
		func(c *Config) {
			c.Policies = []Policy{{Name: "p", VHost: "/", Pattern: ".*", Definition: map[string]any{"max-length": "lots"}}}
		},
		func(c *Config) { c.Users[1].PasswordHash = "not-a-hash" },
		func(c *Config) {
			c.Queues = []QueueDef{{Name: "q", VHost: "/", Arguments: amqp.Table{"x-max-length": int64(-1)}}}
		},
		func(c *Config) { c.TLS.CertFile = "/nonexistent/cert.pem"; c.TLS.KeyFile = "/nonexistent/key.pem" },
	}
	wantKeys := []string{"permissions[1].write", "policies[0].definition.max-length", "users[1].password_hash", "queues[0].arguments", "tls.cert_file"}
	for i, mutate := range bad {
		cfg := s.cfg
		cfg.Permissions = append([]Permission(nil), cfg.Permissions...)
		cfg.Users = append([]User(nil), cfg.Users...)
		mutate(&cfg)
		err := s.Reload(cfg)
		if err == nil || !strings.HasPrefix(err.Error(), wantKeys[i]+":") {
			t.Errorf("case %d: Reload error %v, want one starting with %s", i, err, wantKeys[i])
		}
	}
	ch := mustChannel(t, dialAs(t, s, "app", "/"))
	if _, err := ch.QueueDeclare("still-allowed", false, true, false, false, nil); err != nil {
		t.Fatalf("old permissions lost after rejected reloads: %v", err)
	}
}

// Limits changed by a reload apply to the next connection.
func TestReloadLimits(t *testing.T) {
	s := startTestServer(t, nil)
	dialAs(t, s, "guest", "/")
	reloadOrFail(t, s, func(c *Config) { c.VHosts[0].MaxConnections = LimitOf(1) })
	_, err := dialUser(s, "guest", "/")
	checkAMQPError(t, "over the new limit", err, 530, "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (1) is reached")
	reloadOrFail(t, s, func(c *Config) { c.MaxMessageSize = 10 })
	ch := mustChannel(t, dialAs(t, s, "guest", "/")) // limit gone again
	err = channelResult(ch, func(ch *amqp091.Channel) error {
		return ch.Publish("", "x", false, false, amqp091.Publishing{Body: make([]byte, 11)})
	})
	checkAMQPError(t, "message over the new max size", err, 406, "PRECONDITION_FAILED - message size 11 is larger than configured max size 10")
}

// Settings read only at start-up are named when a reload changes them.
func TestRestartKeys(t *testing.T) {
	s := &Server{cfg: DefaultConfig()}
	for _, tc := range []struct {
		change func(*Config)
		want   []string
	}{
		{func(*Config) {}, nil},
		{func(c *Config) { c.MaxRAMMessages = 10 }, []string{"queue.max_ram_messages"}},
		{func(c *Config) { c.DiskFreeLimit = 1; c.Listen = "127.0.0.1:1" }, []string{"amqp.listen", "disk.free_limit"}},
	} {
		cfg := DefaultConfig()
		tc.change(&cfg)
		if got := s.restartKeys(&cfg); !slices.Equal(got, tc.want) {
			t.Errorf("restartKeys = %v, want %v", got, tc.want)
		}
	}
}
