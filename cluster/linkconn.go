package cluster

import (
	"crypto/tls"
	"net"
	"time"
)

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
