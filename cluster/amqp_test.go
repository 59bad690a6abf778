package cluster

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/server"
)

// startServers starts n AMQP servers on free loopback ports whose brokers share one in-memory
// metadata log, and returns their amqp:// URLs.
func startServers(t *testing.T, n int) []string {
	t.Helper()
	log := &memLog{down: map[int]bool{}}
	var urls, nodes []string
	for i := range n {
		cfg := server.DefaultConfig()
		cfg.Listen = "127.0.0.1:0"
		cfg.DataDir = ""
		cfg.Logger = quietLog()
		s, err := server.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("n%d", i+1)
		nodes = append(nodes, name)
		s.Broker().SetReplicator(NewReplicator(name, log.join(NewMetadata(s.Broker(), quietLog()))))
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		urls = append(urls, "amqp://guest:guest@"+s.Addr().String()+"/")
	}
	if _, err := log.join(NewMetadata(nil, quietLog())).Propose(t.Context(), (&Command{Op: OpSetNodes, Nodes: nodes}).Encode()); err != nil {
		t.Fatal(err)
	}
	return urls
}

func dial(t *testing.T, url string) (*amqp091.Connection, *amqp091.Channel) {
	t.Helper()
	c, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return c, ch
}

func amqpCode(err error) int {
	var ae *amqp091.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return 0
}

// Real clients on three nodes: a declare on one is seen by the others, a conflicting redeclare
// is a 406 channel error on any node, a publish with confirms to a queue of another node is
// nacked while the same publish on the queue's node is acked and consumed, and an exclusive
// queue is locked to its connection on every node and goes when that connection closes.
func TestClusterAMQPClients(t *testing.T) {
	urls := startServers(t, 3)
	_, ch1 := dial(t, urls[0])
	_, ch2 := dial(t, urls[1])
	_, ch3 := dial(t, urls[2])

	if err := ch1.ExchangeDeclare("orders", "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch1.QueueDeclare("eu", true, false, false, false, amqp091.Table{"x-message-ttl": int32(60000)}); err != nil {
		t.Fatal(err)
	}
	if err := ch2.QueueBind("eu", "eu.#", "orders", false, nil); err != nil {
		t.Fatal(err)
	}
	// Node 3 sees the queue (passive) and the exchange.
	if _, err := ch3.QueueDeclarePassive("eu", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch3.ExchangeDeclarePassive("orders", "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	// A conflicting redeclare on node 3: 406 with RabbitMQ's text.
	_, err := ch3.QueueDeclare("eu", true, false, false, false, amqp091.Table{"x-message-ttl": int32(1)})
	if amqpCode(err) != 406 || !strings.Contains(err.Error(), "inequivalent arg 'x-message-ttl' for queue 'eu' in vhost '/'") {
		t.Fatalf("conflicting redeclare on node 3: %v", err)
	}

	// Publish with confirms through orders on node 2 (eu lives on node 1): nacked.
	_, ch2 = dial(t, urls[1])
	if err := ch2.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch2.NotifyPublish(make(chan amqp091.Confirmation, 1))
	if err := ch2.Publish("orders", "eu.de", false, false, amqp091.Publishing{Body: []byte("far")}); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-confirms:
		if c.Ack {
			t.Error("a publish to a queue of another node was acked (the node keeps nothing for it)")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no confirm")
	}
	// The same publish on node 1 is acked and consumed there.
	_, ch1c := dial(t, urls[0])
	if err := ch1c.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms1 := ch1c.NotifyPublish(make(chan amqp091.Confirmation, 1))
	if err := ch1c.Publish("orders", "eu.de", false, false, amqp091.Publishing{Body: []byte("near")}); err != nil {
		t.Fatal(err)
	}
	if c := <-confirms1; !c.Ack {
		t.Error("a publish on the queue's home was nacked")
	}
	msg, ok, err := ch1.Get("eu", true)
	if err != nil || !ok || string(msg.Body) != "near" {
		t.Fatalf("get on the home: %q %v %v", msg.Body, ok, err)
	}

	// Exclusive: declared by a connection of node 1, locked on node 2, gone when it closes.
	c1x, ch1x := dial(t, urls[0])
	if _, err := ch1x.QueueDeclare("mine", false, false, true, false, nil); err != nil {
		t.Fatal(err)
	}
	_, ch2 = dial(t, urls[1])
	if _, err := ch2.QueueDeclare("mine", false, false, true, false, nil); amqpCode(err) != 405 {
		t.Fatalf("exclusive queue of node 1 declared on node 2: %v", err)
	}
	if err := c1x.Close(); err != nil {
		t.Fatal(err)
	}
	_, ch2 = dial(t, urls[1])
	if _, err := ch2.QueueDeclarePassive("mine", false, false, true, false, nil); amqpCode(err) != 404 {
		t.Fatalf("the exclusive queue of a closed connection, on node 2: %v", err)
	}
	// Deleting on node 3 deletes on node 1.
	_, ch3 = dial(t, urls[2])
	if _, err := ch3.QueueDelete("eu", false, false, false); err != nil {
		t.Fatal(err)
	}
	_, ch1 = dial(t, urls[0])
	if _, err := ch1.QueueDeclarePassive("eu", true, false, false, false, nil); amqpCode(err) != 404 {
		t.Fatalf("eu after its delete on node 3, on node 1: %v", err)
	}
}
