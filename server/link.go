package server

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"time"
	"unicode"

	"github.com/warrenmq/warren/amqp"
)

// This file is the home-node half of a cluster's data link: the login of another node's link
// connection, and the messages it forwards to queues of this node.

// authenticateLink checks a login with broker.LinkMechanism, offered only by a cluster member:
// start-ok's response names the connecting node and carries its nonce, secure sends it a
// fresh challenge and returns its answer, which must prove the cluster's secret
// (broker.LinkAuth); then a second secure round proves this node's knowledge of the secret to
// the connecting node, which refuses this node otherwise. The user is the connecting node,
// which may use every vhost (it checked its own client). Nothing of the login is logged but
// the node name and why it was refused.
func (s *Server) authenticateLink(response string, refused *amqp.Error, secure func(challenge string) (string, error), remote net.Addr) (string, error) {
	la := s.b.LinkAuth()
	if la == nil {
		return "", refused
	}
	challenge := la.LinkChallenge()
	answer, err := secure(challenge)
	if err != nil {
		return "", err
	}
	node, verr := la.VerifyLink(response, challenge, answer)
	if !validLinkNode(node) {
		s.log.Warn("cluster: refused a link login without a valid node name", "remote", remote.String())
		return "", refused
	}
	if verr != nil {
		s.log.Warn("cluster: refused a link login", "node", node, "remote", remote.String(), "reason", verr.Error())
		return "", refused
	}
	// The client checks this before it sends anything else; its secure-ok carries nothing.
	if _, err := secure(la.LinkProof(response, challenge)); err != nil {
		return "", err
	}
	return "cluster-link:" + node, nil
}

// validLinkNode reports whether a link login's node name is one a log line can carry: short,
// printable, no spaces.
func validLinkNode(node string) bool {
	if node == "" || len(node) > 255 {
		return false
	}
	for _, r := range node {
		if r <= ' ' || r == 0x7f || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// secure is the connection.secure step of the handshake: it sends challenge and returns the
// response of the client's connection.secure-ok.
func (c *conn) secure(challenge string) (string, error) {
	c.writeMethod(0, &amqp.ConnectionSecure{Challenge: challenge})
	m, err := c.readMethod()
	if err != nil {
		return "", err
	}
	ok, isOk := m.(*amqp.ConnectionSecureOk)
	if !isOk {
		return "", commandInvalid(m, "expected connection.secure-ok")
	}
	return ok.Response, nil
}

// tlsHandshakeRecord is the first byte of a TLS connection (a handshake record holding the
// ClientHello); an AMQP client's first byte is the 'A' of its protocol header.
const tlsHandshakeRecord = 0x16

// acceptLinkTLS wraps nc in the cluster's mutual TLS when this node's links use TLS
// (cluster.tls) and the client opens with a TLS handshake; it returns the conn to serve and
// whether it is the cluster's TLS. The other nodes' link connections come to the AMQP
// listener, the address every node publishes in its status, so its first byte tells a peer's
// TLS ClientHello from an AMQP client, which is served as before. The TLS configuration
// requires a client certificate signed by the cluster's CA; a connection accepted this way
// (linkTLS) is the only kind offered the link login.
//
// It runs before the connection is registered (Server.accept), so the goroutines that go
// through the registered connections (Close, trimLoop, the alarms) never see its net.Conn or
// writer change. The wait for the first byte ends at deadline (the handshake's) or when the
// server closes: Close does not know this connection yet.
func (s *Server) acceptLinkTLS(nc net.Conn, deadline time.Time) (net.Conn, bool, error) {
	la := s.b.LinkAuth()
	if la == nil || la.LinkTLS() == nil {
		return nc, false, nil
	}
	if _, ok := nc.(*tls.Conn); ok {
		return nc, false, nil // from the amqps listener: a client's TLS, not the cluster's
	}
	_ = nc.SetReadDeadline(deadline)
	peeked := make(chan struct{})
	defer close(peeked)
	go func() {
		select {
		case <-s.quit:
			_ = nc.SetReadDeadline(time.Now())
		case <-peeked:
		}
	}()
	first, pnc, err := peekByte(nc)
	if err != nil {
		return nc, false, fmt.Errorf("reading the first byte: %w", err)
	}
	if first == tlsHandshakeRecord {
		return tls.Server(pnc, la.LinkTLS()), true, nil
	}
	return pnc, false, nil
}

// offersLink reports whether the connection is offered the link login: on a cluster member,
// and when the cluster's links use TLS, only over it.
func (c *conn) offersLink() bool {
	la := c.srv.b.LinkAuth()
	return la != nil && (la.LinkTLS() == nil || c.linkTLS)
}

// prefixConn is a conn whose first bytes were read already: Read returns them first.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// peekWrapped reads the first byte of nc and returns a conn that reads it again.
func peekWrapped(nc net.Conn) (byte, net.Conn, error) {
	var b [1]byte
	if _, err := io.ReadFull(nc, b[:]); err != nil {
		return 0, nc, err
	}
	return b[0], &prefixConn{Conn: nc, prefix: b[:]}, nil
}

// finishForwarded completes a publish to broker.ForwardExchange on a link connection: the body
// is another node's envelope, delivered to exactly the queues it names. The confirm (the link
// always uses confirms) follows the same rules as a client's: after the sync of a persistent
// message to a durable queue, a nack when a queue refused it.
func (ch *channel) finishForwarded(body []byte) *amqp.Error {
	f, err := ch.fwdDec.Decode(body)
	if err != nil {
		return basicError(amqp.Errorf(amqp.SyntaxError, "%v", err))
	}
	var seq uint64
	var done func(error)
	if ch.confirm {
		ch.publishSeq++
		seq = ch.publishSeq
		ch.confirms.add(seq)
		done = func(err error) { ch.confirms.settle(seq, err != nil, ch.writeConfirmsAsync) }
	}
	res, targets, aerr := ch.v.DeliverForwarded(f, done, &ch.fwdEntries)
	if aerr != nil {
		return basicError(aerr)
	}
	if seq != 0 && (!res.OnDisk || res.Refused) {
		ch.confirms.settle(seq, res.Refused, ch.writeConfirms)
	}
	if res.Routed {
		// Flow control as for a local publisher: the link's forwarding connection waits while
		// a queue being drained is far behind (its consumers' acks use another connection).
		ch.pub.Flow(targets)
	}
	return nil
}
