package server

import (
	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// This file is the home-node half of a cluster's data link: the login of another node's link
// connection, and the messages it forwards to queues of this node.

// authenticateLink checks a login with broker.LinkMechanism, offered only by a cluster member.
// The user is the connecting node, which may use every vhost (it checked its own client).
func (s *Server) authenticateLink(response string, refused *amqp.Error) (string, error) {
	la := s.b.LinkAuth()
	if la == nil {
		return "", refused
	}
	node, ok := la.VerifyLink(response)
	if !ok {
		s.log.Warn("cluster: refused a link login that does not carry this cluster's secret")
		return "", refused
	}
	return "cluster-link:" + node, nil
}

// finishForwarded completes a publish to broker.ForwardExchange on a link connection: the body
// is another node's envelope, delivered to exactly the queues it names. The confirm (the link
// always uses confirms) follows the same rules as a client's: after the sync of a persistent
// message to a durable queue, a nack when a queue refused it.
func (ch *channel) finishForwarded(body []byte) *amqp.Error {
	f, err := broker.DecodeForward(body)
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
