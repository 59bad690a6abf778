package server

import (
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/broker"
)

// consumerTimeoutSetup connects to s, declares queue q with args, publishes n messages and
// consumes them on a second channel with manual acks.
func consumerTimeoutSetup(t *testing.T, s *Server, q string, args amqp091.Table, n int) (*amqp091.Channel, *amqp091.Channel, <-chan amqp091.Delivery, chan *amqp091.Error) {
	t.Helper()
	c, err := amqp091.Dial("amqp://guest:guest@" + s.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, false, false, false, false, args); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := ch.Publish("", q, false, false, amqp091.Publishing{Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	cch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	closes := cch.NotifyClose(make(chan *amqp091.Error, 1))
	d, err := cch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ch, cch, d, closes
}

// The server's consumer_timeout closes a channel whose delivery stays unacked, with RabbitMQ's
// 406 and text (measured on RabbitMQ 3.10.8 with consumer_timeout 1500), and requeues.
func TestConsumerTimeoutSetting(t *testing.T) {
	s := startTestServer(t, func(c *Config) { c.ConsumerTimeout = 300 * time.Millisecond })
	ch, _, d, closes := consumerTimeoutSetup(t, s, "ct", nil, 2)
	start := time.Now()
	<-d
	select {
	case e := <-closes:
		took := time.Since(start)
		want := "PRECONDITION_FAILED - delivery acknowledgement on channel 2 timed out. Timeout value used: 300 ms. " +
			"This timeout value can be configured, see consumers doc guide to learn more"
		if e == nil || e.Code != 406 || e.Reason != want {
			t.Fatalf("channel closed with %v, want 406 %q", e, want)
		}
		if took < 300*time.Millisecond || took > 300*time.Millisecond+3*consumerTimeoutInterval {
			t.Errorf("closed after %v, want 300 ms plus at most %v", took, 3*consumerTimeoutInterval)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed by the consumer timeout")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := ch.QueueDeclarePassive("ct", false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st.Messages == 2 && st.Consumers == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the timeout: %+v, want both messages requeued and no consumer", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Acking in time keeps the channel; 0 turns the check off; the queue's argument replaces the
// server's setting.
func TestConsumerTimeoutAckedAndOff(t *testing.T) {
	s := startTestServer(t, func(c *Config) { c.ConsumerTimeout = 300 * time.Millisecond })
	_, cch, d, closes := consumerTimeoutSetup(t, s, "acked", nil, 3)
	for range 3 {
		m := <-d
		time.Sleep(150 * time.Millisecond)
		if err := m.Ack(false); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case e := <-closes:
		t.Fatalf("channel closed although every delivery was acked in time: %v", e)
	case <-time.After(4 * consumerTimeoutInterval):
	}
	if cch.IsClosed() {
		t.Fatal("channel closed")
	}
	_, _, d2, closes2 := consumerTimeoutSetup(t, s, "off", amqp091.Table{"x-consumer-timeout": int32(0)}, 1)
	<-d2
	select {
	case e := <-closes2:
		t.Fatalf("x-consumer-timeout 0 still timed out: %v", e)
	case <-time.After(600*time.Millisecond + 2*consumerTimeoutInterval):
	}

	off := startTestServer(t, func(c *Config) { c.ConsumerTimeout = 0 })
	_, _, d3, closes3 := consumerTimeoutSetup(t, off, "off", nil, 1)
	<-d3
	select {
	case e := <-closes3:
		t.Fatalf("consumer_timeout 0 still timed out: %v", e)
	case <-time.After(600 * time.Millisecond):
	}
}

// consumer_timeout is applied by a reload, without a restart.
func TestConsumerTimeoutReload(t *testing.T) {
	s := startTestServer(t, func(c *Config) { c.ConsumerTimeout = 0 })
	_, _, d, closes := consumerTimeoutSetup(t, s, "reload", nil, 1)
	<-d
	cfg := s.cfg
	cfg.ConsumerTimeout = 200 * time.Millisecond
	if err := s.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-closes:
		if e == nil || e.Code != 406 {
			t.Fatalf("closed with %v, want 406", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a reloaded consumer_timeout did not apply")
	}
}

// The link consumers' exemption (broker.LinkNoTimeoutArg) is honoured only on a cluster link
// connection: a client that passes the argument is timed out as any other.
func TestConsumerTimeoutLinkArgIgnoredFromClients(t *testing.T) {
	s := startTestServer(t, func(c *Config) { c.ConsumerTimeout = 300 * time.Millisecond })
	c, err := amqp091.Dial("amqp://guest:guest@" + s.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("ct", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Publish("", "ct", false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	closes := ch.NotifyClose(make(chan *amqp091.Error, 1))
	d, err := ch.Consume("ct", "", false, false, false, false, amqp091.Table{broker.LinkNoTimeoutArg: true})
	if err != nil {
		t.Fatal(err)
	}
	<-d
	select {
	case e := <-closes:
		if e == nil || e.Code != 406 {
			t.Fatalf("channel closed with %v, want the 406 of the timeout", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a client's consumer escaped the consumer timeout with the link argument")
	}
}
