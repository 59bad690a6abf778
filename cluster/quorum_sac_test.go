package cluster

import (
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// expectDeliveries receives len(want) deliveries from ds and checks their bodies, redelivered
// flags and x-delivery-counts (count 0: no header), in order.
func expectDeliveries(t *testing.T, who string, ds <-chan amqp091.Delivery, want []string, counts []int64) []amqp091.Delivery {
	t.Helper()
	var got []amqp091.Delivery
	for i, body := range want {
		d := recv(t, ds)
		if string(d.Body) != body || deliveryCount(d) != counts[i] || d.Redelivered != (counts[i] > 0) {
			t.Fatalf("%s delivery %d: %q redelivered=%v count=%d, want %s count %d", who, i, d.Body, d.Redelivered, deliveryCount(d), body, counts[i])
		}
		got = append(got, d)
	}
	return got
}

// TestQuorumQueueSingleActiveRequeueOrder: with x-single-active-consumer, when the active
// consumer's channel closes, the next consumer of the same node gets the closed channel's
// deliveries first, in order, counted (x-delivery-count 1), then the node's undelivered
// ones, as RabbitMQ's quorum queue does. The counts of those local requeues reach the log:
// when that node's last consumer goes too, the messages reach a consumer of another node
// counted once per delivery, and x-delivery-limit dead-letters those delivered twice.
func TestQuorumQueueSingleActiveRequeueOrder(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "sac-dlq", nil)
	declareQuorum(t, nodes, "n1", "sac", amqp091.Table{"x-single-active-consumer": true, "x-delivery-limit": int32(1),
		"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "sac-dlq"})
	conn, _ := dial(t, nodes["n1"].url)
	chA, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	chB, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := chA.Qos(2, 0, false); err != nil {
		t.Fatal(err)
	}
	ads, err := chA.Consume("sac", "a", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	bds, err := chB.Consume("sac", "b", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for i := range 5 {
		bodies = append(bodies, fmt.Sprint(i))
	}
	_, pch := dial(t, nodes["n2"].url)
	publishConfirmed(t, pch, "sac", bodies...)
	expectDeliveries(t, "a", ads, bodies[:2], []int64{0, 0})
	select {
	case d := <-bds:
		t.Fatalf("the waiting consumer got %q", d.Body)
	case <-time.After(200 * time.Millisecond):
	}
	// The marks of A's deliveries reach the log (a crash before would lose them; not
	// tested here).
	time.Sleep(300 * time.Millisecond)
	if err := chA.Close(); err != nil {
		t.Fatal(err)
	}
	expectDeliveries(t, "b", bds, bodies, []int64{1, 1, 0, 0, 0})

	// A consumer of n3 waits its turn; B's channel closes unacked: 0 and 1 were delivered
	// twice (over the limit of 1: dead-lettered), 2, 3 and 4 once.
	_, cch := dial(t, nodes["n3"].url)
	cds, err := cch.Consume("sac", "c", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-cds:
		t.Fatalf("the waiting consumer of n3 got %q", d.Body)
	case <-time.After(200 * time.Millisecond):
	}
	time.Sleep(300 * time.Millisecond) // B's marks and counts reach the log
	if err := chB.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range expectDeliveries(t, "c", cds, bodies[2:], []int64{1, 1, 1}) {
		_ = d.Ack(false)
	}
	_, gch := dial(t, nodes["n2"].url)
	for _, want := range bodies[:2] {
		deadline := time.Now().Add(10 * time.Second)
		for {
			d, ok, err := gch.Get("sac-dlq", true)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				death, _ := d.Headers["x-death"].([]any)
				if string(d.Body) != want || len(death) != 1 || death[0].(amqp091.Table)["reason"] != "delivery_limit" {
					t.Fatalf("dead-lettered %q x-death %v, want %s delivery_limit", d.Body, d.Headers["x-death"], want)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not dead-lettered", want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
