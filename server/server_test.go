package server

import (
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"warren/amqp"
)

func startTestServer(t *testing.T, mutate func(*Config)) *Server {
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
