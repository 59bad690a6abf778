package bench

import (
	"net"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/internal/coalesce"
)

// coalescingDial is an amqp.Config.Dial that wraps amqp091-go's default dialer in a
// coalesce.Conn (see package coalesce: one write(2) per publish otherwise).
func coalescingDial(network, addr string) (net.Conn, error) {
	conn, err := amqp.DefaultDial(30*time.Second)(network, addr)
	if err != nil {
		return nil, err
	}
	return coalesce.New(conn), nil
}
