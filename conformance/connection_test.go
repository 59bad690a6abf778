package conformance

import (
	"errors"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestConnectionServerProperties(t *testing.T) {
	t.Parallel()
	c := dial(t)
	p := c.Properties
	for _, k := range []string{"product", "version", "platform"} {
		if s, ok := p[k].(string); !ok || s == "" {
			t.Errorf("server-properties[%q] = %#v, want a non-empty longstr", k, p[k])
		}
	}
	caps, ok := p["capabilities"].(amqp.Table)
	if !ok {
		t.Fatalf("server-properties capabilities = %#v, want a table", p["capabilities"])
	}
	for _, k := range []string{
		"publisher_confirms", "exchange_exchange_bindings", "basic.nack", "consumer_cancel_notify",
		"connection.blocked", "authentication_failure_close", "per_consumer_qos",
	} {
		if v, ok := caps[k].(bool); !ok || !v {
			t.Errorf("capabilities[%q] = %#v, want true", k, caps[k])
		}
	}
}

func TestConnectionWrongPassword(t *testing.T) {
	t.Parallel()
	c, err := amqp.Dial(credURL("guest", "not-the-password"))
	if err == nil {
		c.Close()
		t.Fatal("connected with a wrong password")
	}
	// amqp091-go does not advertise authentication_failure_close, so RabbitMQ drops the socket after
	// start-ok and the client reports ErrCredentials (403 ACCESS_REFUSED).
	if !errors.Is(err, amqp.ErrCredentials) && errCode(err) != amqp.AccessRefused {
		t.Fatalf("err = %v, want ErrCredentials or 403", err)
	}
	if errCode(err) != amqp.AccessRefused {
		t.Fatalf("err code = %d (%v), want 403", errCode(err), err)
	}
}

func TestConnectionUnknownUser(t *testing.T) {
	t.Parallel()
	_, err := amqp.Dial(credURL("no-such-user-conformance", "guest"))
	if errCode(err) != amqp.AccessRefused {
		t.Fatalf("err = %v, want 403 ACCESS_REFUSED", err)
	}
}

func TestConnectionUnknownVhost(t *testing.T) {
	t.Parallel()
	c, err := amqp.Dial(vhostURL("no-such-vhost-conformance"))
	if err == nil {
		c.Close()
		t.Fatal("opened an unknown vhost")
	}
	ae := expectCode(t, err, amqp.NotAllowed)
	if !strings.HasPrefix(ae.Reason, "NOT_ALLOWED - ") || !strings.Contains(ae.Reason, "no-such-vhost-conformance") {
		t.Errorf("reason = %q, want NOT_ALLOWED - ... naming the vhost", ae.Reason)
	}
}

func TestConnectionTuneDefaults(t *testing.T) {
	t.Parallel()
	// Asking for more than the server offers yields the server's values (the smaller wins).
	c := dialConfig(t, amqp.Config{Heartbeat: 600 * time.Second})
	if c.Config.FrameSize != 131072 {
		t.Errorf("frame_max = %d, want 131072 (server default)", c.Config.FrameSize)
	}
	if c.Config.ChannelMax != 2047 {
		t.Errorf("channel_max = %d, want 2047 (server default)", c.Config.ChannelMax)
	}
	if c.Config.Heartbeat != 60*time.Second {
		t.Errorf("heartbeat = %s, want 60s (server default)", c.Config.Heartbeat)
	}
}

func TestConnectionTuneNegotiated(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		cfg       amqp.Config
		frame     int
		chmax     uint16
		heartbeat time.Duration
	}{
		{"smaller", amqp.Config{FrameSize: 8192, ChannelMax: 10, Heartbeat: 5 * time.Second}, 8192, 10, 5 * time.Second},
		{"minimum-frame", amqp.Config{FrameSize: 4096, ChannelMax: 1, Heartbeat: time.Second}, 4096, 1, time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dialConfig(t, tc.cfg)
			if c.Config.FrameSize != tc.frame || c.Config.ChannelMax != tc.chmax || c.Config.Heartbeat != tc.heartbeat {
				t.Fatalf("negotiated frame=%d chmax=%d hb=%s, want %d %d %s",
					c.Config.FrameSize, c.Config.ChannelMax, c.Config.Heartbeat, tc.frame, tc.chmax, tc.heartbeat)
			}
			// The connection works with these limits: a message larger than one frame goes through.
			ch := openCh(t, c)
			q := declareQueue(t, ch, nil)
			body := strings.Repeat("x", 3*tc.frame)
			publish(t, ch, "", q, body)
			m := getOne(t, ch, q, true)
			if string(m.Body) != body {
				t.Fatalf("body of %d bytes came back as %d bytes", len(body), len(m.Body))
			}
		})
	}
}

func TestConnectionChannelMax(t *testing.T) {
	t.Parallel()
	c := dialConfig(t, amqp.Config{ChannelMax: 3})
	for i := 0; i < 3; i++ {
		openCh(t, c)
	}
	if _, err := c.Channel(); !errors.Is(err, amqp.ErrChannelMax) {
		t.Fatalf("4th channel: err = %v, want ErrChannelMax", err)
	}
}

func TestConnectionClientClose(t *testing.T) {
	t.Parallel()
	c, err := amqp.Dial(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	closes := closeNotify(c)
	ch := openCh(t, c)
	q := uname(t, "excl")
	if _, err := ch.QueueDeclare(q, false, false, true, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("connection.close: %v", err)
	}
	if !c.IsClosed() {
		t.Fatal("IsClosed false after Close")
	}
	select {
	case e, ok := <-closes:
		if ok && e != nil {
			t.Fatalf("clean close reported error %v", e)
		}
	case <-time.After(wait):
		t.Fatal("close notification not delivered")
	}
	// The exclusive queue went away with its connection.
	eventually(t, "exclusive queue deletion", func() bool { return !queueExists(t, q) })
	if _, err := ch.QueueDeclarePassive(q, false, false, false, false, nil); !errors.Is(err, amqp.ErrClosed) {
		t.Fatalf("use after close: err = %v, want ErrClosed", err)
	}
}

func TestConnectionManyConnections(t *testing.T) {
	t.Parallel()
	for i := 0; i < 20; i++ {
		c := dial(t)
		ch := openCh(t, c)
		if err := ch.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
