package broker

import (
	"testing"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
)

// benchConsumer takes every delivery as a front end does: it reads the header to send and
// records the delivery (Queue.DeliveryHeader, Queue.Delivered); with ack it keeps the entries
// for the benchmark to settle.
type benchConsumer struct {
	qs    *Queue
	ack   bool
	held  []*queue.Entry
	bytes int
}

func (c *benchConsumer) Deliver(_ *queue.Queue, e *queue.Entry) queue.Outcome {
	c.bytes += len(c.qs.DeliveryHeader(e)) + len(e.Msg.Body)
	c.qs.Delivered(e, e.Deliveries, !c.ack)
	if !c.ack {
		return queue.AcceptedNoAck
	}
	c.held = append(c.held, e)
	return queue.Accepted
}

func (c *benchConsumer) QueueDeleted() {}

// BenchmarkPublishDeliver is the core's share of point a (transient 16 B through the default
// exchange to one queue with a no-ack consumer) and of the many-clients load (manual ack, one
// ack per delivery): the exchange lookup, NewMessage, Publish, Flow, the delivery and the ack,
// without the network.
func BenchmarkPublishDeliver(b *testing.B) {
	for _, tc := range []struct {
		name string
		ack  bool
	}{{"autoack", false}, {"ack", true}} {
		b.Run(tc.name, func(b *testing.B) {
			br := newTestBroker(b, "")
			v := br.VHost("/")
			if _, err := v.DeclareQueue(System, QueueSpec{Name: "q"}); err != nil {
				b.Fatal(err)
			}
			c := &benchConsumer{ack: tc.ack}
			qs, err := v.Consume(System, "q", c, false, func(qs *Queue) { c.qs = qs })
			if err != nil {
				b.Fatal(err)
			}
			ex, err := v.Exchange("")
			if err != nil {
				b.Fatal(err)
			}
			body := make([]byte, 16)
			props := amqp.Properties{}
			header := amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(body)), &props)
			sum, serr := amqp.ScanContentHeader(header)
			if serr != nil {
				b.Fatal(serr)
			}
			p := v.NewPublisher()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				// The front end looks the exchange up for every publish (channel.finishPublish).
				if ex, err = v.Exchange(""); err != nil {
					b.Fatal(err)
				}
				msg, aerr := br.NewMessage(ex, "q", header, &sum, body)
				if aerr != nil {
					b.Fatal(aerr)
				}
				res, targets := p.Publish(ex, msg, sum.HeadersRaw, nil)
				if !res.Routed {
					b.Fatal("not routed")
				}
				p.Flow(targets)
				if tc.ack {
					qs.Settle(Ack, c.held, nil)
					clear(c.held)
					c.held = c.held[:0]
				}
			}
			b.StopTimer()
			if st := qs.Q().Counts(); st.Ready != 0 {
				b.Fatalf("%d messages left ready", st.Ready)
			}
		})
	}
}
