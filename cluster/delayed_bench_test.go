package cluster

import (
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// BenchmarkDelayedPublish measures confirmed delayed publishes (persistent, 100-byte bodies,
// x-delay one hour, 64 unconfirmed at most) to an x-delayed-message exchange homed on n1 of a
// 3-node Raft cluster, published on n1 itself (local: held in n1's store) and on n2 (forwarded:
// the link carries each to n1, whose confirm waits for its store's sync). The messages are
// never due within the run; they are not routed.
func BenchmarkDelayedPublish(b *testing.B) {
	nodes := startRaftCluster(b, "n1", "n2", "n3")
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := amqp091.Dial(nodes["n1"].url)
		if err == nil {
			var ch *amqp091.Channel
			if ch, err = c.Channel(); err == nil {
				err = ch.ExchangeDeclare("bdx", "x-delayed-message", true, false, false, false, amqp091.Table{"x-delayed-type": "direct"})
			}
			_ = c.Close()
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitExchange := func(url string) {
		for end := time.Now().Add(10 * time.Second); ; {
			c, ch := dialTB(b, url)
			err := ch.ExchangeDeclarePassive("bdx", "x-delayed-message", true, false, false, false, nil)
			_ = c.Close()
			if err == nil {
				return
			}
			if time.Now().After(end) {
				b.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	body := make([]byte, 100)
	for _, tc := range []struct{ name, node string }{{"local", "n1"}, {"forwarded", "n2"}} {
		b.Run(tc.name, func(b *testing.B) {
			waitExchange(nodes[tc.node].url)
			_, ch := dialTB(b, nodes[tc.node].url)
			if err := ch.Confirm(false); err != nil {
				b.Fatal(err)
			}
			const window = 64
			var dcs []*amqp091.DeferredConfirmation
			wait := func(dc *amqp091.DeferredConfirmation) {
				if ok, err := dc.WaitContext(b.Context()); err != nil || !ok {
					b.Fatalf("confirm: %v %v", ok, err)
				}
			}
			p := amqp091.Publishing{DeliveryMode: amqp091.Persistent, Body: body, Headers: amqp091.Table{"x-delay": int32(3600_000)}}
			for b.Loop() {
				dc, err := ch.PublishWithDeferredConfirm("bdx", "k", false, false, p)
				if err != nil {
					b.Fatal(err)
				}
				dcs = append(dcs, dc)
				if len(dcs) == window {
					wait(dcs[0])
					dcs = dcs[1:]
				}
			}
			for _, dc := range dcs {
				wait(dc)
			}
		})
	}
}
