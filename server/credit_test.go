package server

import (
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// An ack kicks the channel's queues only when a delivery was refused for want of prefetch
// credit (channel.starved). Every way a consumer can run out of credit must still be woken by
// the ack that returns it: a per-consumer limit, a channel-wide limit shared by consumers of
// two queues (an ack of queue A's delivery frees queue B's consumer), and basic.get deliveries
// counted against the channel's limit.
func TestAckReturnsCreditToStarvedConsumers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		global   bool
		queues   int
		getFirst bool
	}{
		{name: "per-consumer prefetch 1", queues: 1},
		{name: "channel prefetch 1, two queues", global: true, queues: 2},
		{name: "channel prefetch 1 taken by basic.get", global: true, queues: 1, getFirst: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startTestServer(t, nil)
			ch := dialT(t, s)
			pub := dialT(t, s)
			const perQueue = 50
			names := make([]string, tc.queues)
			for i := range names {
				q, err := ch.QueueDeclare(fmt.Sprintf("credit-%d", i), false, true, false, false, nil)
				if err != nil {
					t.Fatal(err)
				}
				names[i] = q.Name
			}
			if err := ch.Qos(1, 0, tc.global); err != nil {
				t.Fatal(err)
			}
			var held *amqp091.Delivery
			if tc.getFirst {
				if err := pub.Publish("", names[0], false, false, amqp091.Publishing{Body: []byte("get")}); err != nil {
					t.Fatal(err)
				}
				waitFor(t, "the message for basic.get", func() bool {
					d, ok, err := ch.Get(names[0], false)
					if err != nil {
						t.Fatal(err)
					}
					if ok {
						held = &d
					}
					return ok
				})
			}
			deliveries := make(chan amqp091.Delivery, 16)
			for _, name := range names {
				ds, err := ch.Consume(name, "", false, false, false, false, nil)
				if err != nil {
					t.Fatal(err)
				}
				go func() {
					for d := range ds {
						deliveries <- d
					}
				}()
			}
			for _, name := range names {
				for i := 0; i < perQueue; i++ {
					if err := pub.Publish("", name, false, false, amqp091.Publishing{Body: []byte("m")}); err != nil {
						t.Fatal(err)
					}
				}
			}
			if held != nil {
				// The channel's only credit is the basic.get delivery: nothing may arrive
				// until it is acked.
				select {
				case d := <-deliveries:
					t.Fatalf("delivery %d beyond the channel's prefetch", d.DeliveryTag)
				case <-time.After(100 * time.Millisecond):
				}
				if err := held.Ack(false); err != nil {
					t.Fatal(err)
				}
			}
			for got := 0; got < perQueue*tc.queues; got++ {
				select {
				case d := <-deliveries:
					if err := d.Ack(false); err != nil {
						t.Fatal(err)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("stalled after %d of %d deliveries: an ack did not return credit", got, perQueue*tc.queues)
				}
			}
		})
	}
}
