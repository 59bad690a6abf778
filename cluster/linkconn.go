package cluster

import (
	"crypto/tls"
	"net"
	"time"

	"github.com/warrenmq/warren/internal/coalesce"
)

// The link's proxy connections run amqp091-go, which flushes after every frame it sends (one
// write(2) per ack): coalesce.Conn batches them (the forwarding connection, pubConn, batches
// its own writes).

// dialLink connects to a node's AMQP listener: TCP, then the cluster's mutual TLS when tlsCfg
// is set (the same certificates as the Raft transport; the server name is addr's host). The
// handshake is bounded by timeout.
func dialLink(addr string, tlsCfg *tls.Config, timeout time.Duration) (net.Conn, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	if tlsCfg == nil {
		return conn, nil
	}
	cfg := tlsCfg.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(addr)
	}
	tc := tls.Client(conn, cfg)
	_ = tc.SetDeadline(time.Now().Add(timeout))
	if err := tc.Handshake(); err != nil {
		_ = conn.Close()
		return nil, err
	}
	_ = tc.SetDeadline(time.Time{})
	return tc, nil
}

// proxyDial is the amqp091.Config.Dial of the proxy connections to one node: dialLink, the
// writes coalesced, and login's challenge answered (loginConn).
func proxyDial(tlsCfg *tls.Config, timeout time.Duration, login linkLogin) func(network, addr string) (net.Conn, error) {
	return func(_, addr string) (net.Conn, error) {
		conn, err := dialLink(addr, tlsCfg, timeout)
		if err != nil {
			return nil, err
		}
		// Bounds the handshake; amqp091-go clears the deadline once the connection is open.
		if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
			_ = conn.Close()
			return nil, err
		}
		return &loginConn{Conn: coalesce.New(conn), answer: login.answer}, nil
	}
}
