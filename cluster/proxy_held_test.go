package cluster

import (
	"bytes"
	"fmt"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// A delivery held for the channel's global prefetch keeps its body: the link hands a
// delivery over from its read buffer, which later frames overwrite, so a held one is a copy
// (server's remoteSink.Deliver). k1 and k2 are homed on n1 and consumed on n2 with a global
// prefetch of 1: k2's delivery waits while k1's is unacked, and meanwhile k3's deliveries
// (another channel, no prefetch) go through the link's read buffer.
func TestProxyHeldDeliveriesKeepBodies(t *testing.T) {
	lc := startLinked(t, 2)
	_, ch1 := dial(t, lc.urls[0])
	_, ch2 := dial(t, lc.urls[1])
	_, ch3 := dial(t, lc.urls[1])
	body := func(q string, i int) []byte { return bytes.Repeat(fmt.Appendf(nil, "%s-%d.", q, i), 500) }
	publish := func(q string, n int) {
		for i := range n {
			if err := ch1.Publish("", q, false, false, amqp091.Publishing{Body: body(q, i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, q := range []string{"k1", "k2", "k3"} {
		if _, err := ch1.QueueDeclare(q, false, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	publish("k1", 1)
	publish("k2", 1)
	ready(t, ch1, "k2", 1)
	if err := ch2.Qos(1, 0, true); err != nil {
		t.Fatal(err)
	}
	ds1, err := ch2.Consume("k1", "c1", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := next(t, ds1)
	ds2, err := ch2.Consume("k2", "c2", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	none(t, ds2, "global prefetch 1 reached")
	ready(t, ch1, "k2", 0) // delivered by the home, held on n2
	ds3, err := ch3.Consume("k3", "c3", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	publish("k3", 200)
	for i := range 200 {
		if d3 := next(t, ds3); !bytes.Equal(d3.Body, body("k3", i)) {
			t.Fatalf("k3 delivery %d: %.20q...", i, d3.Body)
		}
	}
	if err := ch2.Ack(d.DeliveryTag, false); err != nil {
		t.Fatal(err)
	}
	if d2 := next(t, ds2); !bytes.Equal(d2.Body, body("k2", 0)) {
		t.Errorf("held delivery: body %.20q..., want %.20q...", d2.Body, body("k2", 0))
	}
}
