package server

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// BenchmarkPublishDuringDeclareStorm measures what one connection's publishes pay while another
// connection declares, binds and deletes durable queues in a loop: each durable declare, bind and
// delete waits for a disk sync, and none may hold the vhost lock that routing needs meanwhile.
// It reports the p50, p99, p99.9 and maximum of the publish-to-confirm latency (transient messages to a
// non-durable queue: the confirm comes as soon as the message is routed and enqueued) and the
// storm's rate of durable declare+bind+delete cycles.
func BenchmarkPublishDuringDeclareStorm(b *testing.B) {
	for _, storm := range []bool{false, true} {
		b.Run(fmt.Sprintf("storm=%v", storm), func(b *testing.B) {
			s := startTestServer(b, func(c *Config) { c.DataDir = b.TempDir() })
			url := "amqp://guest:guest@" + s.Addr().String() + "/"
			pc, err := amqp091.Dial(url)
			if err != nil {
				b.Fatal(err)
			}
			defer pc.Close()
			pub, err := pc.Channel()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := pub.QueueDeclare("target", false, false, false, false, nil); err != nil {
				b.Fatal(err)
			}
			if err := pub.Confirm(false); err != nil {
				b.Fatal(err)
			}
			confirms := pub.NotifyPublish(make(chan amqp091.Confirmation, 1))

			stop := make(chan struct{})
			var wg sync.WaitGroup
			cycles := 0
			if storm {
				sc, err := amqp091.Dial(url)
				if err != nil {
					b.Fatal(err)
				}
				defer sc.Close()
				sch, err := sc.Channel()
				if err != nil {
					b.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						name := fmt.Sprintf("storm-%d", i%1000)
						if _, err := sch.QueueDeclare(name, true, false, false, false, nil); err != nil {
							b.Error(err)
							return
						}
						if err := sch.QueueBind(name, name, "amq.direct", false, nil); err != nil {
							b.Error(err)
							return
						}
						if _, err := sch.QueueDelete(name, false, false, false); err != nil {
							b.Error(err)
							return
						}
						cycles++
					}
				}()
				time.Sleep(50 * time.Millisecond) // the storm is under way
			}
			lat := make([]time.Duration, 0, b.N)
			start := time.Now()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if err := pub.Publish("", "target", false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
					b.Fatal(err)
				}
				if c := <-confirms; !c.Ack {
					b.Fatal("nack")
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			elapsed := time.Since(start)
			close(stop)
			wg.Wait()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
			b.ReportMetric(float64(lat[len(lat)*999/1000].Microseconds()), "p99.9-us")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-us")
			if storm {
				b.ReportMetric(float64(cycles)/elapsed.Seconds(), "storm-cycles/s")
			}
		})
	}
}
