package broker

import (
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
)

// BenchmarkStreamRecord measures a record's cost per message on the publish side (encode the
// record head, as a publish to one stream does) and on the consume side (decode a record into
// a delivery with x-stream-offset), for v2 (the format before) and v3 (AMQP 1.0). For v2 the
// delivery is decodeStreamRecord plus the header rebuild streamHeader did before v3.
func BenchmarkStreamRecord(b *testing.B) {
	body16 := []byte("0123456789abcdef")
	body1k := make([]byte, 1024)
	msgs := []struct {
		name string
		msg  *queue.Message
	}{
		{"16B-persistent", &queue.Message{RoutingKey: "s", Body: body16,
			Header: amqp.AppendContentHeader(nil, amqp.ClassBasic, 16, &amqp.Properties{DeliveryMode: 2})}},
		{"1KiB-persistent", &queue.Message{RoutingKey: "s", Body: body1k,
			Header: amqp.AppendContentHeader(nil, amqp.ClassBasic, 1024, &amqp.Properties{DeliveryMode: 2})}},
		{"16B-rich", &queue.Message{RoutingKey: "s", Body: body16,
			Header: amqp.AppendContentHeader(nil, amqp.ClassBasic, 16, &amqp.Properties{
				ContentType: "application/json", DeliveryMode: 2, MessageID: "5b2d7c1e-0d7e-4a51", Timestamp: time.Unix(1.7e9, 0),
				Headers: amqp.Table{"tenant": "acme", "attempt": int32(1), "trace": amqp.Table{"span": int64(7)}}})}},
	}
	for _, m := range msgs {
		for _, f := range []struct {
			name string
			head func(*queue.Message, bool, int) []byte
		}{{"v2", recordHeadV2}, {"v3", recordHead}} {
			b.Run(m.name+"/"+f.name+"/encode", func(b *testing.B) {
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					_ = f.head(m.msg, true, 0)
				}
			})
			rec := append(f.head(m.msg, true, 0), m.msg.Body...)
			b.Run(m.name+"/"+f.name+"/deliver", func(b *testing.B) {
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					if _, err := decodeStreamDelivery(rec, "s", uint64(i)); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
