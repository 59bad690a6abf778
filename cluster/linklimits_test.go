package cluster

import (
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/server"
)

// Link connections are the cluster's own traffic, as RabbitMQ's inter-node distribution: the
// home node's connection limits (node, vhost) do not count them, and its connection and channel
// listings (/api/connections, /api/channels, /api/consumers) do not show them.
func TestLinkNotCountedNorListed(t *testing.T) {
	lc := startLinkedPrep(t, 2, nil, nil, func(c *server.Config) {
		c.MaxConnections = server.LimitOf(1)
		c.VHosts = []server.VHost{{Name: "/", MaxConnections: server.LimitOf(1)}}
	}, nil)
	// The one client connection n1 takes; q1 homed there.
	_, ch1 := dial(t, lc.urls[0])
	if _, err := ch1.QueueDeclare("q1", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	// A publish on n2 is forwarded, and a consumer on n2 proxied, over link connections to
	// n1, whose limits are reached.
	_, ch2 := dial(t, lc.urls[1])
	if err := ch2.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch2.NotifyPublish(make(chan amqp091.Confirmation, 1))
	if !confirmOne(t, ch2, confirms, "", "q1", amqp091.Publishing{Body: []byte("m")}) {
		t.Fatal("forward to a node at its connection limit nacked")
	}
	msgs, err := ch2.Consume("q1", "proxied", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-msgs:
		_ = d.Ack(false)
	case <-time.After(10 * time.Second):
		t.Fatal("no proxied delivery from a node at its connection limit")
	}

	s1 := lc.servers[0]
	conns := s1.Connections()
	if len(conns) != 1 || strings.HasPrefix(conns[0].User, "cluster-link") {
		t.Fatalf("n1 lists %d connections (%+v), want the one client", len(conns), conns)
	}
	chans, cons := s1.Channels()
	for _, c := range chans {
		if c.Connection.Mechanism != "PLAIN" {
			t.Errorf("n1 lists a link channel: %+v", c)
		}
	}
	for _, c := range cons {
		if c.Connection.Mechanism != "PLAIN" {
			t.Errorf("n1 lists a link consumer: %+v", c)
		}
	}
	// The limit is the clients' still: a second client is refused.
	if c, err := amqp091.Dial(lc.urls[0]); err == nil {
		_ = c.Close()
		t.Fatal("second client accepted past max_connections 1")
	} else if !strings.Contains(err.Error(), "connection limit") {
		t.Fatalf("second client: %v, want the connection limit", err)
	}
}
