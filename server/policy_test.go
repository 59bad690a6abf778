package server

import (
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

func queueDepth(t *testing.T, ch *amqp091.Channel, name string) int {
	t.Helper()
	q, err := ch.QueueDeclarePassive(name, false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}

func publishN(t *testing.T, ch *amqp091.Channel, key string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if err := ch.Publish("", key, false, false, amqp091.Publishing{Body: []byte{byte('0' + i)}}); err != nil {
			t.Fatal(err)
		}
	}
}

// Policies apply by pattern, apply-to and priority, with RabbitMQ's precedence against queue
// arguments: the lower max-length wins, the argument's dead-letter exchange wins.
func TestPolicies(t *testing.T) {
	s := startTestServer(t, func(c *Config) {
		c.Policies = []Policy{
			{Name: "cap", VHost: "/", Pattern: "^capped\\.", ApplyTo: "queues", Priority: 1,
				Definition: map[string]any{"max-length": 2, "dead-letter-exchange": "policy-dlx"}},
			{Name: "low", VHost: "/", Pattern: "^capped\\.", ApplyTo: "queues", Priority: 0, Definition: map[string]any{"max-length": 100}},
			{Name: "exchanges-only", VHost: "/", Pattern: "^other$", ApplyTo: "exchanges", Definition: map[string]any{"alternate-exchange": "ae"}},
		}
	})
	ch := mustChannel(t, dialAs(t, s, "guest", "/"))
	for _, x := range []struct{ name, kind string }{{"policy-dlx", "fanout"}, {"arg-dlx", "fanout"}, {"ae", "fanout"}, {"other", "direct"}} {
		if err := ch.ExchangeDeclare(x.name, x.kind, false, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	declare := func(name string, args amqp091.Table) {
		if _, err := ch.QueueDeclare(name, false, false, false, false, args); err != nil {
			t.Fatal(err)
		}
	}
	declare("policy-dead", nil)
	declare("arg-dead", nil)
	declare("ae-q", nil)
	for _, b := range [][2]string{{"policy-dead", "policy-dlx"}, {"arg-dead", "arg-dlx"}, {"ae-q", "ae"}} {
		if err := ch.QueueBind(b[0], "", b[1], false, nil); err != nil {
			t.Fatal(err)
		}
	}
	declare("capped.plain", nil)
	declare("capped.arg-higher", amqp091.Table{"x-max-length": int32(5)})
	declare("capped.arg-lower", amqp091.Table{"x-max-length": int32(1), "x-dead-letter-exchange": "arg-dlx"})
	declare("uncapped", nil)
	for _, q := range []string{"capped.plain", "capped.arg-higher", "capped.arg-lower", "uncapped"} {
		publishN(t, ch, q, 4)
	}
	want := map[string]int{"capped.plain": 2, "capped.arg-higher": 2, "capped.arg-lower": 1, "uncapped": 4,
		// 2 + 2 dropped through the policy's dead-letter exchange; 3 through the argument's.
		"policy-dead": 4, "arg-dead": 3}
	for q, n := range want {
		if got := queueDepth(t, ch, q); got != n {
			t.Errorf("%s has %d messages, want %d", q, got, n)
		}
	}
	// apply-to exchanges: the alternate exchange catches unroutable messages of "other".
	if err := ch.Publish("other", "nowhere", false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if got := queueDepth(t, ch, "ae-q"); got != 1 {
		t.Errorf("alternate exchange from policy: ae-q has %d messages, want 1", got)
	}
}

// A reload that adds or changes a policy applies it to existing queues: a lower max-length drops
// from the head at once, a message-ttl applies to what is published next, and removing the
// policy lifts the limit.
func TestPolicyReloadAppliesToExistingQueues(t *testing.T) {
	s := startTestServer(t, nil)
	ch := mustChannel(t, dialAs(t, s, "guest", "/"))
	if _, err := ch.QueueDeclare("live", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	publishN(t, ch, "live", 5)
	if got := queueDepth(t, ch, "live"); got != 5 {
		t.Fatalf("before policy: %d", got)
	}
	reloadOrFail(t, s, func(c *Config) {
		c.Policies = []Policy{{Name: "p", VHost: "/", Pattern: "^live$", Definition: map[string]any{"max-length": 2, "message-ttl": 50}}}
	})
	if got := queueDepth(t, ch, "live"); got != 2 {
		t.Fatalf("after max-length policy: %d messages, want 2", got)
	}
	m, ok, err := ch.Get("live", true)
	if err != nil || !ok || string(m.Body) != "3" {
		t.Fatalf("head after drop-head: %q %v %v, want the 4th message", m.Body, ok, err)
	}
	if _, err := ch.QueuePurge("live", false); err != nil {
		t.Fatal(err)
	}
	publishN(t, ch, "live", 1)
	time.Sleep(100 * time.Millisecond)
	if got := queueDepth(t, ch, "live"); got != 0 {
		t.Fatalf("message-ttl from policy: %d messages left after the TTL, want 0", got)
	}
	reloadOrFail(t, s, func(c *Config) { c.Policies = nil })
	publishN(t, ch, "live", 4)
	if got := queueDepth(t, ch, "live"); got != 4 {
		t.Fatalf("after the policy was removed: %d messages, want 4", got)
	}
}
