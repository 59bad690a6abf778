package server

import (
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/amqp"
)

// Exchanges, queues and bindings in the configuration exist at start, route, and are declared
// again by a reload when a client deleted them; a conflicting declaration fails New.
func TestDeclaredTopology(t *testing.T) {
	topo := func(c *Config) {
		c.Exchanges = []ExchangeDef{
			{Name: "events", VHost: "/", Type: "topic", Durable: true},
			{Name: "audit", VHost: "/", Type: "fanout", Durable: true},
		}
		c.Queues = []QueueDef{
			{Name: "orders", VHost: "/", Durable: true, Arguments: amqp.Table{"x-max-length": int64(3)}},
			{Name: "audit-log", VHost: "/", Durable: true},
		}
		c.Bindings = []BindingDef{
			{VHost: "/", Source: "events", Destination: "orders", DestinationType: "queue", RoutingKey: "order.#"},
			{VHost: "/", Source: "events", Destination: "audit", DestinationType: "exchange", RoutingKey: "#"},
			{VHost: "/", Source: "audit", Destination: "audit-log", DestinationType: "queue"},
		}
	}
	s := startTestServer(t, topo)
	ch := mustChannel(t, dialAs(t, s, "guest", "/"))
	for i := 0; i < 5; i++ {
		if err := ch.Publish("events", "order.created", false, false, amqp091.Publishing{Body: []byte("o")}); err != nil {
			t.Fatal(err)
		}
	}
	if got := queueDepth(t, ch, "orders"); got != 3 {
		t.Errorf("orders (x-max-length 3) has %d messages", got)
	}
	if got := queueDepth(t, ch, "audit-log"); got != 5 {
		t.Errorf("audit-log has %d messages, want 5 through the exchange-to-exchange binding", got)
	}
	// A client's declaration must match the configured one.
	_, err := ch.QueueDeclare("orders", true, false, false, false, nil)
	checkAMQPError(t, "inequivalent redeclare", err, 406, "")

	ch = mustChannel(t, dialAs(t, s, "guest", "/"))
	if _, err := ch.QueueDelete("audit-log", false, false, false); err != nil {
		t.Fatal(err)
	}
	reloadOrFail(t, s, topo)
	if err := ch.Publish("audit", "", false, false, amqp091.Publishing{Body: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	if got := queueDepth(t, ch, "audit-log"); got != 1 {
		t.Errorf("re-declared audit-log has %d messages, want 1 (queue and binding back)", got)
	}

	// A conflicting declaration in a reload is reported but does not stop the rest.
	cfg := s.cfg
	topo(&cfg)
	cfg.Queues = append(cfg.Queues, QueueDef{Name: "fresh", VHost: "/"})
	cfg.Queues[0].Arguments = amqp.Table{"x-max-length": int64(7)}
	if err := s.Reload(cfg); err != nil {
		t.Fatalf("reload with a conflicting queue: %v", err)
	}
	if _, err := ch.QueueDeclarePassive("fresh", false, false, false, false, nil); err != nil {
		t.Errorf("queue after a conflicting one was not declared: %v", err)
	}

	bad := DefaultConfig()
	bad.Listen, bad.DataDir = "127.0.0.1:0", ""
	bad.Exchanges = []ExchangeDef{{Name: "x", VHost: "/", Type: "direct"}}
	bad.Bindings = []BindingDef{{VHost: "/", Source: "x", Destination: "missing", DestinationType: "queue"}}
	if _, err := New(bad); err == nil || !strings.Contains(err.Error(), "bindings[0]: binding 'x' -> 'missing' in vhost '/': NOT_FOUND - no queue 'missing' in vhost '/'") {
		t.Errorf("New with a binding to a missing queue: %v", err)
	}
}
