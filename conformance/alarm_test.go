//go:build !conformance_external

package conformance

import (
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/server"
)

// connection.blocked: under a memory alarm (here a one-byte limit, so it is on from the start)
// a connection that publishes is sent connection.blocked and is not read any more, while other
// connections keep consuming. RabbitMQ's alarms cannot be set from a client, so this test runs
// against a Warren of its own.
func TestConnectionBlockedByMemoryAlarm(t *testing.T) {
	warrenOnly(t)
	url, stop, err := startWarrenWith(func(c *server.Config) { c.MemoryLimit = 1 })
	if err != nil {
		t.Fatal(err)
	}
	// Closing a blocked connection cannot complete (it is not read): stop drops it.
	defer stop()
	pub, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	blocked := pub.NotifyBlocked(make(chan amqp.Blocking, 1))
	pch, err := pub.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := pch.QueueDeclare("", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Declaring is not publishing: the connection is blocked at its first publish.
	if err := pch.Publish("", q.Name, false, false, amqp.Publishing{Body: []byte("held")}); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-blocked:
		if !b.Active || b.Reason != "low on memory" {
			t.Fatalf("blocking = %+v, want active with reason \"low on memory\"", b)
		}
	case <-time.After(wait):
		t.Fatal("no connection.blocked")
	}
	con, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close()
	cch, err := con.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if st, err := cch.QueueDeclarePassive(q.Name, false, false, false, false, nil); err != nil || st.Messages != 0 {
		t.Fatalf("queue %+v %v: the blocked publish must not be taken", st, err)
	}
}
