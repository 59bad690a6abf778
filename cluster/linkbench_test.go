package cluster

import (
	"crypto/tls"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// BenchmarkLinkLogin is one forwarding connection's dial, challenge-response login and
// confirm.select, then close, over plain TCP and over the cluster's mutual TLS.
func BenchmarkLinkLogin(b *testing.B) {
	for _, mode := range []string{"plain", "tls"} {
		b.Run(mode, func(b *testing.B) {
			var cfg *tls.Config
			if mode == "tls" {
				cfg = testCA(b, "cluster")
			}
			lc := startLinkedTLS(b, 2, cfg)
			addr, login := lc.addr("n1"), lc.links[1].auth.login("n1")
			for b.Loop() {
				pc, err := dialPub(addr, "/", "bench", login, cfg, 0, 5*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				pc.close()
			}
		})
	}
}

// BenchmarkLinkForward is publish-with-confirms on n2 to a queue homed on n1 (1 KiB bodies, a
// consumer on n1 draining it), over a plain and a TLS link: the cost of the link's TLS.
func BenchmarkLinkForward(b *testing.B) {
	for _, mode := range []string{"plain", "tls"} {
		b.Run(mode, func(b *testing.B) {
			var cfg *tls.Config
			if mode == "tls" {
				cfg = testCA(b, "cluster")
			}
			lc := startLinkedTLS(b, 2, cfg)
			c1, err := amqp091.Dial(lc.urls[0])
			if err != nil {
				b.Fatal(err)
			}
			defer c1.Close()
			ch1, _ := c1.Channel()
			if _, err := ch1.QueueDeclare("q1", false, false, false, false, nil); err != nil {
				b.Fatal(err)
			}
			if _, err := ch1.Consume("q1", "", true, false, false, false, nil); err != nil {
				b.Fatal(err)
			}
			c2, err := amqp091.Dial(lc.urls[1])
			if err != nil {
				b.Fatal(err)
			}
			defer c2.Close()
			ch2, _ := c2.Channel()
			if err := ch2.Confirm(false); err != nil {
				b.Fatal(err)
			}
			confirms := ch2.NotifyPublish(make(chan amqp091.Confirmation, 4096))
			body := make([]byte, 1024)
			const window = 1000
			b.SetBytes(int64(len(body)))
			sent, acked := 0, 0
			for b.Loop() {
				for sent-acked >= window {
					if c := <-confirms; !c.Ack {
						b.Fatal("nack")
					}
					acked++
				}
				if err := ch2.Publish("", "q1", false, false, amqp091.Publishing{Body: body}); err != nil {
					b.Fatal(err)
				}
				sent++
			}
			for acked < sent {
				if c := <-confirms; !c.Ack {
					b.Fatal("nack")
				}
				acked++
			}
		})
	}
}
