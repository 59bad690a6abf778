package server

import (
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/warrenmq/warren/amqp"
)

func startTestServer(t testing.TB, mutate func(*Config)) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = ""
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// A client that never completes the handshake is dropped after the configured timeout, at every
// stage, while a well-behaved client on the same broker is unaffected.
func TestHandshakeTimeout(t *testing.T) {
	s := startTestServer(t, func(c *Config) { c.HandshakeTimeout = 200 * time.Millisecond })
	stages := []struct {
		name string
		send []byte
	}{
		{"nothing sent", nil},
		{"header only", amqp.ProtocolHeader},
		{"half a header", []byte("AMQP")},
	}
	for _, st := range stages {
		t.Run(st.name, func(t *testing.T) {
			nc, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			if len(st.send) > 0 {
				if _, err := nc.Write(st.send); err != nil {
					t.Fatal(err)
				}
			}
			start := time.Now()
			_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.Copy(io.Discard, nc); err != nil {
				t.Fatalf("connection not closed by the broker: %v", err)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("dropped after %s, want about 200ms", took)
			}
		})
	}
	c, err := amqp091.Dial("amqp://guest:guest@" + s.Addr().String() + "/")
	if err != nil {
		t.Fatalf("a normal client cannot connect: %v", err)
	}
	_ = c.Close()
}

// Shutdown sends connection.close 320 CONNECTION_FORCED to connected clients.
func TestCloseForcesClients(t *testing.T) {
	s := startTestServer(t, nil)
	c, err := amqp091.Dial("amqp://guest:guest@" + s.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	closed := c.NotifyClose(make(chan *amqp091.Error, 1))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-closed:
		if e == nil || e.Code != amqp.ConnectionForced {
			t.Fatalf("close = %v, want 320 CONNECTION_FORCED", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("client not told about the shutdown")
	}
}

// A memory alarm blocks publishing connections (connection.blocked, frames not read) while
// consumers keep working; when it clears, publishers get connection.unblocked and continue.
func TestMemoryAlarmBlocksPublishers(t *testing.T) {
	s := startTestServer(t, nil)
	url := "amqp://guest:guest@" + s.Addr().String() + "/"
	pub, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	blocked := pub.NotifyBlocked(make(chan amqp091.Blocking, 4))
	pch, err := pub.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := pch.QueueDeclare("", false, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	publish := func(body string) {
		if err := pch.Publish("", q.Name, false, false, amqp091.Publishing{Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	publish("before")
	// A synchronous method on the same channel: the broker has taken "before" once it answers.
	if st, err := pch.QueueDeclarePassive(q.Name, false, true, false, false, nil); err != nil || st.Messages != 1 {
		t.Fatalf("queue before the alarm: %+v %v, want 1 message", st, err)
	}

	s.alarms.memLimit.Store(1) // any process is over one byte
	// A blocked connection is not read, so its Close would wait forever if the test failed
	// with the alarm still on: clear it first (deferred calls run last-in first-out).
	defer func() { s.alarms.memLimit.Store(0); s.checkAlarms() }()
	s.checkAlarms()
	publish("during") // read by the broker only after the alarm clears
	select {
	case b := <-blocked:
		if !b.Active || b.Reason != "low on memory" {
			t.Fatalf("blocking = %+v, want active, low on memory", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("publisher not sent connection.blocked")
	}
	con, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close()
	cch, err := con.Channel()
	if err != nil {
		t.Fatal(err)
	}
	m, ok, err := cch.Get(q.Name, true)
	if err != nil || !ok || string(m.Body) != "before" {
		t.Fatalf("consumer during alarm: %q %v %v, want before", m.Body, ok, err)
	}
	if _, ok, _ := cch.Get(q.Name, true); ok {
		t.Fatal("a publish from a blocked connection was accepted")
	}

	s.alarms.memLimit.Store(0)
	s.checkAlarms()
	select {
	case b := <-blocked:
		if b.Active {
			t.Fatalf("blocking = %+v, want unblocked", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("publisher not sent connection.unblocked")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, ok, err := cch.Get(q.Name, true)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if string(m.Body) != "during" {
				t.Fatalf("got %q, want during", m.Body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("publish held during the alarm never arrived")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
