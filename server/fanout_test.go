package server

import (
	"fmt"
	"runtime"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// fanoutBroker starts a broker with a fanout exchange bound to n queues and returns a channel
// on a client connection to it.
func fanoutBroker(tb testing.TB, n int) *amqp091.Channel {
	tb.Helper()
	s := startTestServer(tb, nil)
	conn, err := amqp091.Dial("amqp://guest:guest@" + s.Addr().String() + "/")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		tb.Fatal(err)
	}
	if err := ch.ExchangeDeclare("fan", "fanout", false, false, false, false, nil); err != nil {
		tb.Fatal(err)
	}
	for i := 0; i < n; i++ {
		q := fmt.Sprintf("fan.%d", i)
		if _, err := ch.QueueDeclare(q, false, false, false, false, nil); err != nil {
			tb.Fatal(err)
		}
		if err := ch.QueueBind(q, "", "fan", false, nil); err != nil {
			tb.Fatal(err)
		}
	}
	return ch
}

// publishFanout publishes body to the fanout exchange and waits until the broker has taken it
// (a synchronous method on the same channel is answered after the publish is routed).
func publishFanout(tb testing.TB, ch *amqp091.Channel, body []byte) {
	tb.Helper()
	if err := ch.Publish("fan", "", false, false, amqp091.Publishing{Body: body}); err != nil {
		tb.Fatal(err)
	}
	if _, err := ch.QueueDeclarePassive("fan.0", false, false, false, false, nil); err != nil {
		tb.Fatal(err)
	}
}

// A message fanned out to 1,000 queues is stored once: per message the heap grows by about one
// body, not a thousand (each queue holds only a small entry pointing at the shared message).
func TestFanoutStoresBodyOnce(t *testing.T) {
	const queues, size, messages = 1000, 1 << 20, 8
	ch := fanoutBroker(t, queues)
	body := make([]byte, size)
	publishFanout(t, ch, body) // warm up: buffers, route caches
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < messages; i++ {
		publishFanout(t, ch, body)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perMessage := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / messages
	t.Logf("heap grew %d bytes per %d-byte message fanned out to %d queues", perMessage, size, queues)
	// The queued messages are live, so each must add at least its body (this checks the
	// measurement); a copy per queue would add 1,000 bodies.
	if perMessage < size/2 || perMessage > 2*size {
		t.Fatalf("heap grew %d bytes per message, want about one body (%d)", perMessage, size)
	}
}

// BenchmarkFanout1000Queues publishes 1 KiB messages through a fanout exchange to 1,000 queues
// over a real connection; B/op is what the whole process (client included) allocates per publish.
func BenchmarkFanout1000Queues(b *testing.B) {
	ch := fanoutBroker(b, 1000)
	body := make([]byte, 1024)
	b.ReportAllocs()
	for b.Loop() {
		publishFanout(b, ch, body)
	}
}
