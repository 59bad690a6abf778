package cluster

import (
	"net"
	"time"

	"github.com/warrenmq/warren/internal/coalesce"
)

// The link's proxy connections run amqp091-go, which flushes after every frame it sends (one
// write(2) per ack): coalesce.Conn batches them (the forwarding connection, pubConn, batches
// its own writes).

// coalescingDial dials with timeout and wraps the connection (amqp091.Config.Dial).
func coalescingDial(timeout time.Duration) func(network, addr string) (net.Conn, error) {
	return func(network, addr string) (net.Conn, error) {
		conn, err := net.DialTimeout(network, addr, timeout)
		if err != nil {
			return nil, err
		}
		// Bounds the handshake; amqp091-go clears the deadline once the connection is open.
		if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
			_ = conn.Close()
			return nil, err
		}
		return coalesce.New(conn), nil
	}
}
