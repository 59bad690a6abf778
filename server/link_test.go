package server

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// testLinkAuth is a cluster member's link login whose links use the mutual TLS of cfg; it
// refuses every answer (these tests stop at connection.start).
type testLinkAuth struct{ cfg *tls.Config }

func (testLinkAuth) LinkChallenge() string { return "challenge" }
func (testLinkAuth) VerifyLink(string, string, string) (string, error) {
	return "n2", errors.New("refused by the test")
}
func (testLinkAuth) LinkProof(string, string) string { return "" }
func (a testLinkAuth) LinkTLS() *tls.Config          { return a.cfg }

// startLinkTLSServer starts a server that takes link connections over the mutual TLS of a
// fresh test CA, and returns it with a client configuration that CA accepts.
func startLinkTLSServer(t *testing.T) (*Server, *tls.Config) {
	t.Helper()
	pki := newTestPKI(t, "cluster")
	_, _, serverPair := pki.issue(t, "n1", true)
	_, _, clientPair := pki.issue(t, "n2", false)
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = ""
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Broker().SetLinkAuth(testLinkAuth{&tls.Config{Certificates: []tls.Certificate{serverPair}, ClientCAs: pki.pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, &tls.Config{Certificates: []tls.Certificate{clientPair}, RootCAs: pki.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// mechanismsOffered sends the protocol header on c and returns connection.start's mechanisms.
func mechanismsOffered(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(amqp.ProtocolHeader); err != nil {
		t.Fatal(err)
	}
	f, err := amqp.NewFrameReader(c, 16<<10).ReadNonHeartbeat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := amqp.DecodeMethod(f.Payload)
	if err != nil {
		t.Fatal(err)
	}
	start, ok := m.(*amqp.ConnectionStart)
	if !ok {
		t.Fatalf("got %s, want connection.start", m.Name())
	}
	return start.Mechanisms
}

// A link connection's TLS is set up before the connection is registered with the server, so
// the server's other goroutines (the buffer trimmer, Close) never see its net.Conn and writer
// change under them: under -race, a trimmer tick and Close right after a peer's first TLS byte
// are clean. (The peer sends only that byte, so the server's handshake goroutine makes no
// write syscall after wrapping the connection, which the race detector would take for a
// synchronisation with every later read.) Link TLS connections are offered WARREN-LINK, plain
// clients on the same port are not, and a connection that has sent nothing yet does not hold
// up Close for the handshake timeout.
func TestLinkTLSAcceptedBeforeRegistered(t *testing.T) {
	s, clientCfg := startLinkTLSServer(t)
	raw, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, clientCfg)
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("link TLS handshake: %v", err)
	}
	if mech := mechanismsOffered(t, tc); !strings.Contains(" "+mech+" ", " "+broker.LinkMechanism+" ") {
		t.Fatalf("over the cluster's TLS: mechanisms %q, want %s", mech, broker.LinkMechanism)
	}
	plain, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if mech := mechanismsOffered(t, plain); strings.Contains(mech, broker.LinkMechanism) {
		t.Fatalf("plain client offered %q on a cluster with link TLS", mech)
	}
	_ = plain.Close()
	_ = tc.Close()

	for range 3 {
		s, _ := startLinkTLSServer(t)
		first, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := first.Write([]byte{tlsHandshakeRecord}); err != nil {
			t.Fatal(err)
		}
		silent, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // the server peeks the byte and wraps the connection
		trimOnce(s)
		start := time.Now()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Fatalf("Close took %v with connections in their handshake", took)
		}
		_ = first.Close()
		_ = silent.Close()
	}
}

// trimOnce is one tick of Server.trimLoop.
func trimOnce(s *Server) {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.w.trim()
	}
}
