package broker

import (
	"strings"
	"testing"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
)

// publishPrio publishes a persistent message with a priority property to the default exchange.
func publishPrio(t *testing.T, v *VHost, p *Publisher, q, body string, prio uint8) {
	t.Helper()
	ex, aerr := v.Exchange("")
	if aerr != nil {
		t.Fatal(aerr)
	}
	props := amqp.Properties{DeliveryMode: 2, Priority: prio}
	header := amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(body)), &props)
	sum, err := amqp.ScanContentHeader(header)
	if err != nil {
		t.Fatal(err)
	}
	msg, aerr := v.b.NewMessage(ex, q, header, &sum, []byte(body))
	if aerr != nil {
		t.Fatal(aerr)
	}
	done := make(chan error, 1)
	if res, _ := p.Publish(ex, msg, sum.HeadersRaw, func(err error) { done <- err }); !res.OnDisk {
		t.Fatalf("publish %q: %+v, want stored", body, res)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// drain gets (and acks) everything ready in q.
func drain(t *testing.T, v *VHost, q string) string {
	t.Helper()
	var got []string
	for {
		qs, e, _, ok, err := v.Get(System, q, false)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return strings.Join(got, " ")
		}
		got = append(got, string(e.Msg.Body))
		qs.Settle(Ack, []*queue.Entry{e}, nil)
	}
}

// A priority queue's order survives a restart, including for priorities whose newest entries
// were paged out when the broker stopped: new messages of a priority come after its stored ones.
func TestPriorityQueueRestart(t *testing.T) {
	dir := t.TempDir()
	open := func() (*Broker, *VHost) {
		b, err := New(Options{DataDir: dir, MaxRAMMessages: 2, Logger: quietLog(),
			VHosts: []VHostSettings{{Name: "/", MaxQueues: -1}}})
		if err != nil {
			t.Fatal(err)
		}
		return b, b.VHost("/")
	}
	b, v := open()
	args := amqp.Table{"x-max-priority": int32(3)}
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "pq", Durable: true, Args: args}); err != nil {
		t.Fatal(err)
	}
	p := v.NewPublisher()
	for _, m := range []struct {
		body string
		prio uint8
	}{{"a1", 1}, {"b1", 1}, {"c1", 1}, {"d1", 1}, {"x0", 0}, {"y2", 2}} {
		publishPrio(t, v, p, "pq", m.body, m.prio)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b, v = open()
	defer b.Close()
	p = v.NewPublisher()
	publishPrio(t, v, p, "pq", "e1", 1)
	publishPrio(t, v, p, "pq", "z0", 0)
	publishPrio(t, v, p, "pq", "w3", 9) // above the maximum: the maximum
	if got, want := drain(t, v, "pq"), "w3 y2 a1 b1 c1 d1 e1 x0 z0"; got != want {
		t.Fatalf("after restart: %s, want %s", got, want)
	}
}
