package embedded_test

import (
	"context"
	"fmt"
	"log"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/embedded"
)

// Start a broker, publish a message with a publisher confirm and consume it. In a test,
// embedded.NewTestBroker(t) replaces Start and the deferred Close.
func Example() {
	b, err := embedded.Start(embedded.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()

	conn, err := amqp091.Dial(b.URL())
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		log.Fatal(err)
	}
	q, err := ch.QueueDeclare("greetings", false, false, false, false, nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	confirm, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q.Name, false, false,
		amqp091.Publishing{ContentType: "text/plain", Body: []byte("hello, broker")})
	if err != nil {
		log.Fatal(err)
	}
	acked, err := confirm.WaitContext(ctx)
	fmt.Println("confirmed:", acked, err)

	deliveries, err := ch.Consume(q.Name, "", true, false, false, false, nil)
	if err != nil {
		log.Fatal(err)
	}
	m := <-deliveries
	fmt.Println("received:", string(m.Body))
	// Output:
	// confirmed: true <nil>
	// received: hello, broker
}

// Declare the topology an application expects (here an exchange routing to a queue whose length a
// policy caps) and a user of its own, as typed values.
func ExampleStart() {
	b, err := embedded.Start(embedded.Options{
		Users:       []embedded.User{{Name: "shop", Password: "secret"}},
		VHosts:      []embedded.VHost{{Name: "shop"}},
		Permissions: []embedded.Permission{{User: "shop", VHost: "shop", Configure: ".*", Write: ".*", Read: ".*"}},
		Policies: []embedded.Policy{{Name: "bounded", VHost: "shop", Pattern: "^orders$",
			Definition: map[string]any{"max-length": 1000}}},
		Exchanges: []embedded.Exchange{{Name: "events", VHost: "shop", Type: "topic", Durable: true}},
		Queues:    []embedded.Queue{{Name: "orders", VHost: "shop", Durable: true}},
		Bindings:  []embedded.Binding{{VHost: "shop", Source: "events", Destination: "orders", RoutingKey: "order.*"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()

	conn, err := amqp091.Dial(b.URLFor("shop", "secret", "shop"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		log.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		log.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1))
	if err := ch.Publish("events", "order.created", false, false, amqp091.Publishing{Body: []byte("#1")}); err != nil {
		log.Fatal(err)
	}
	<-confirms
	q, err := ch.QueueDeclarePassive("orders", true, false, false, false, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("orders holds", q.Messages, "message")
	// Output: orders holds 1 message
}

// URLFor builds the URL of another user or vhost, escaped as AMQP clients expect.
func ExampleBroker_URLFor() {
	b, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0"})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	fmt.Println(b.URLFor("guest", "guest", "/") == b.URL())
	_, port, _ := strings.Cut(b.Addr(), ":")
	fmt.Println(strings.Replace(b.URLFor("app", "p@ss", "team/a"), port, "PORT", 1))
	// Output:
	// true
	// amqp://app:p%40ss@127.0.0.1:PORT/team%2Fa
}
