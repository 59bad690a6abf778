package cluster

import (
	"time"

	"github.com/warrenmq/warren/broker"
)

// startLink starts the node's data link (link.go) on b: forwarding, proxying, the link login.
// The other nodes learn where to connect from this node's status (NodeStatus.AMQPAddr), which
// is reported again as soon as the AMQP listener is up.
func (n *Node) startLink(b *broker.Broker) {
	n.broker = b
	n.link = NewLink(LinkConfig{Cluster: n.cfg.Name, Node: n.cfg.NodeName, Secret: n.cfg.Secret, TLS: n.cfg.TLS, Addr: n.peerAMQPAddr, Logger: n.log})
	n.link.Install(b)
	go func() {
		for b.AMQPAddr() == "" {
			select {
			case <-n.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		select {
		case n.kick <- struct{}{}:
		default:
		}
	}()
}

// peerAMQPAddr is where the link connects to reach node's AMQP listener ("" while unknown).
func (n *Node) peerAMQPAddr(node string) string {
	st, ok := n.board.Nodes()[node]
	if !ok || st.AMQPAddr == "" {
		return ""
	}
	n.mu.Lock()
	caddr := n.nodes[node]
	n.mu.Unlock()
	return amqpAddrFor(st.AMQPAddr, caddr)
}

// localAMQPAddr is this node's AMQP listener for its status ("" before it listens).
func (n *Node) localAMQPAddr() string {
	if n.broker == nil {
		return ""
	}
	return n.broker.AMQPAddr()
}
