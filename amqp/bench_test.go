package amqp

import (
	"strconv"
	"testing"
)

func benchPublishStream(bodySize int) (stream []byte, header []byte, body []byte) {
	body = make([]byte, bodySize)
	header = AppendContentHeader(nil, ClassBasic, uint64(len(body)), &Properties{
		ContentType: "application/octet-stream", DeliveryMode: 2, Priority: 1, MessageID: "m-1",
		Headers: Table{"x-trace": "abc", "retries": int32(1)},
	})
	stream = AppendMethodFrame(nil, 1, &BasicPublish{Exchange: "amq.direct", RoutingKey: "orders.created"})
	stream = AppendContent(stream, 1, header, body, 131072)
	return stream, header, body
}

// BenchmarkReadFrame reads a publish: method + header + body frames.
func BenchmarkReadFrame(b *testing.B) {
	for _, size := range []int{16, 1024, 200000} {
		b.Run(strconv.Itoa(size)+"B", func(b *testing.B) {
			stream, _, _ := benchPublishStream(size)
			fr := NewFrameReader(&loopReader{data: stream}, 1<<17)
			frames := 0
			for s := stream; len(s) > 0; frames++ {
				n := int(s[3])<<24 | int(s[4])<<16 | int(s[5])<<8 | int(s[6])
				s = s[n+FrameOverhead:]
			}
			b.SetBytes(int64(len(stream)))
			b.ReportAllocs()
			for b.Loop() {
				for i := 0; i < frames; i++ {
					if _, err := fr.ReadFrame(); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

func BenchmarkDecodeMethodBasicPublish(b *testing.B) {
	payload := (&BasicPublish{Exchange: "amq.direct", RoutingKey: "orders.created"}).Append(nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeMethod(payload); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeBasicPublishReuse is the hot-path alternative: decode into
// a reused struct.
func BenchmarkDecodeBasicPublishReuse(b *testing.B) {
	payload := (&BasicPublish{Exchange: "amq.direct", RoutingKey: "orders.created"}).Append(nil)
	var m BasicPublish
	b.ReportAllocs()
	for b.Loop() {
		if err := m.Decode(payload); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendMethodFrameBasicDeliver(b *testing.B) {
	m := &BasicDeliver{ConsumerTag: "amq.ctag-abcdefghijklmnop", DeliveryTag: 123456, Exchange: "amq.direct", RoutingKey: "orders.created"}
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendMethodFrame(buf[:0], 1, m)
	}
}

func BenchmarkAppendContent(b *testing.B) {
	for _, size := range []int{16, 1024, 200000} {
		b.Run(strconv.Itoa(size)+"B", func(b *testing.B) {
			_, header, body := benchPublishStream(size)
			buf := make([]byte, 0, size+4096)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				buf = AppendContent(buf[:0], 1, header, body, 131072)
			}
		})
	}
}

func BenchmarkScanContentHeader(b *testing.B) {
	_, header, _ := benchPublishStream(10)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ScanContentHeader(header); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeContentHeader(b *testing.B) {
	_, header, _ := benchPublishStream(10)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeContentHeader(header); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeTable(b *testing.B) {
	enc, err := AppendTable(nil, Table{
		"x-message-ttl": int32(60000), "x-dead-letter-exchange": "dlx", "x-max-length": int64(1000),
		"x-queue-type": "classic", "nested": Table{"a": []any{int32(1), "b", true}},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := DecodeTable(enc); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendTable(b *testing.B) {
	t := Table{
		"x-message-ttl": int32(60000), "x-dead-letter-exchange": "dlx", "x-max-length": int64(1000),
		"x-queue-type": "classic", "nested": Table{"a": []any{int32(1), "b", true}},
	}
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = AppendTable(buf[:0], t); err != nil {
			b.Fatal(err)
		}
	}
}
