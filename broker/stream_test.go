package broker

import (
	"bytes"
	"encoding/binary"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
	"github.com/warrenmq/warren/stream"
)

// streamSink is a StreamSink with a credit of one: it takes an entry only when the previous one
// was acked.
type streamSink struct {
	mu      sync.Mutex
	got     []*queue.Entry
	busy    bool
	gone    bool
	deleted chan struct{}
}

func newStreamSink() *streamSink { return &streamSink{deleted: make(chan struct{})} }

func (s *streamSink) Deliver(_ *queue.Queue, e *queue.Entry) queue.Outcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy || s.gone {
		return queue.Busy
	}
	s.busy = true
	s.got = append(s.got, e)
	return queue.Accepted
}
func (s *streamSink) QueueDeleted() { close(s.deleted) }
func (s *streamSink) Gone() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gone
}

// await waits until the streamSink holds n entries.
func (s *streamSink) await(t *testing.T, n int) []*queue.Entry {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		if len(s.got) >= n {
			got := append([]*queue.Entry(nil), s.got...)
			s.mu.Unlock()
			return got
		}
		s.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("streamSink did not get %d entries", n)
	return nil
}

// ack returns the streamSink's credit through the queue, as a channel's basic.ack does.
func (s *streamSink) ack(qs *Queue) {
	s.mu.Lock()
	e := s.got[len(s.got)-1]
	s.busy = false
	s.mu.Unlock()
	qs.Settle(Ack, []*queue.Entry{e}, nil)
}

// The core without AMQP: a stream queue gets confirmed publishes, a consumer reads it with
// credit from its offset, leaves when its front end removes it, and a delete tells the others.
func TestStreamQueueCore(t *testing.T) {
	b := newTestBroker(t, "") // in memory: the log goes to a temporary directory
	v := b.VHost("/")
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "s", Durable: true, Args: amqp.Table{"x-queue-type": "stream"}}); err != nil {
		t.Fatal(err)
	}
	p := v.NewPublisher()
	for _, body := range []string{"a", "b", "c"} {
		if res := publish(t, v, p, "", "s", body); !res.Routed || !res.OnDisk {
			t.Fatalf("publish to a stream: %+v, want routed and confirmed after the sync", res)
		}
	}
	if _, _, _, _, err := v.Get(System, "s", false); err == nil || err.Code != amqp.NotImplemented {
		t.Fatalf("basic.get on a stream: %v", err)
	}
	s1 := newStreamSink()
	qs, err := v.ConsumeStream(System, "s", s1, StreamConsume{Prefetch: 1, Args: amqp.Table{"x-stream-offset": int64(1)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := s1.await(t, 1)
	if string(got[0].Msg.Body) != "b" || got[0].Seq != 1 {
		t.Fatalf("first delivery %q at %d", got[0].Msg.Body, got[0].Seq)
	}
	time.Sleep(20 * time.Millisecond)
	if n := len(s1.await(t, 1)); n != 1 {
		t.Fatalf("%d deliveries with a credit of one", n)
	}
	s1.ack(qs)
	got = s1.await(t, 2)
	if string(got[1].Msg.Body) != "c" {
		t.Fatalf("after the ack: %q", got[1].Msg.Body)
	}
	h, herr := amqp.DecodeContentHeader(qs.DeliveryHeader(got[1]))
	if herr != nil || h.Props.Headers["x-stream-offset"] != int64(2) || h.Props.DeliveryMode != 2 {
		t.Fatalf("delivery header %+v, %v", h.Props, herr)
	}
	// The front end removes s1: its reader stops.
	s1.mu.Lock()
	s1.gone = true
	s1.mu.Unlock()
	v.ConsumerRemoved(qs, false)
	qs.sq.mu.Lock()
	left := len(qs.sq.consumers)
	qs.sq.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d stream consumers left after removal", left)
	}
	// Deleting the queue ends the other consumers and removes the log.
	s2 := newStreamSink()
	if _, err := v.ConsumeStream(System, "s", s2, StreamConsume{Prefetch: 1}, nil); err != nil {
		t.Fatal(err)
	}
	dir := qs.sq.dir
	if _, err := v.DeleteQueue(System, "s", false, false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s2.deleted:
	case <-time.After(5 * time.Second):
		t.Fatal("consumer not told of the delete")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("log directory left after delete: %v", err)
	}
}

func TestStreamOffsetArgument(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	qs := &Queue{name: "s", v: &VHost{name: "/"}}
	for _, tc := range []struct {
		v    any
		want stream.Spec
		bad  bool
	}{
		{nil, stream.Next(), false},
		{"first", stream.First(), false},
		{"last", stream.Last(), false},
		{"next", stream.Next(), false},
		{int64(7), stream.AtOffset(7), false},
		{int8(7), stream.AtOffset(7), false},
		{int64(-3), stream.AtOffset(0), false},
		{"2h", stream.AtTime(now.Add(-2 * time.Hour)), false},
		{now.Add(-time.Minute), stream.AtTime(now.Add(-time.Minute)), false},
		{"1x", stream.Spec{}, true},
		{"", stream.Spec{}, true},
		{3.5, stream.Spec{}, true},
		{true, stream.Spec{}, true},
	} {
		args := amqp.Table{}
		if tc.v != nil {
			args["x-stream-offset"] = tc.v
		}
		got, err := streamOffset(qs, args, now)
		if tc.bad {
			if err == nil || err.Code != amqp.PreconditionFailed {
				t.Errorf("%v: %v, want 406", tc.v, err)
			}
			continue
		}
		if err != nil || got.Kind != tc.want.Kind || got.Offset != tc.want.Offset || !got.Time.Equal(tc.want.Time) {
			t.Errorf("%v: %+v %v, want %+v", tc.v, got, err, tc.want)
		}
	}
}

// v1Record is a record as Warren wrote streams before format v2.
func v1Record(msg *queue.Message) []byte {
	b := []byte{streamRecordV1, byte(len(msg.Exchange))}
	b = append(b, msg.Exchange...)
	b = append(b, byte(len(msg.RoutingKey)))
	b = append(b, msg.RoutingKey...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(msg.Header)))
	b = append(b, msg.Header...)
	return append(b, msg.Body...)
}

// sameContent compares content headers as a consumer sees them: decoded, then encoded with
// sorted keys (raw bytes that do not decode are compared as they are).
func sameContent(a, b []byte) bool {
	ha, erra := amqp.DecodeContentHeader(a)
	hb, errb := amqp.DecodeContentHeader(b)
	if erra != nil || errb != nil {
		return erra != nil && errb != nil && bytes.Equal(a, b)
	}
	return ha.ClassID == hb.ClassID && ha.BodySize == hb.BodySize &&
		bytes.Equal(amqp.AppendContentHeader(nil, ha.ClassID, ha.BodySize, &ha.Props), amqp.AppendContentHeader(nil, hb.ClassID, hb.BodySize, &hb.Props))
}

func TestStreamRecordFormat(t *testing.T) {
	body := []byte("0123456789abcdef")
	persistent := amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(body)), &amqp.Properties{DeliveryMode: 2})
	rich := amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(body)), &amqp.Properties{
		ContentType: "text/plain", DeliveryMode: 2, Headers: amqp.Table{"k": "v", "n": amqp.Table{"a": []any{int32(1)}}},
		Priority: 4, MessageID: "m", Timestamp: time.Unix(1e9, 0), Type: "t", AppID: "a", ClusterID: "c"})
	const stream = "events"
	own := func(m *queue.Message) []byte { return encodeRecord(m, true) }
	ownV2 := func(m *queue.Message) []byte { return encodeRecordV2(m, true) }
	namedV2 := func(m *queue.Message) []byte { return encodeRecordV2(m, false) }
	tests := []struct {
		name    string
		msg     *queue.Message
		rec     func(*queue.Message) []byte
		version byte // first byte of the record: 0 for v3 (AMQP 1.0)
		maxSize int  // record size limit, 0 = unchecked
		exact   bool // the header comes back byte for byte (v1, v2)
	}{
		{"v3 own stream, 16 B persistent: 28 bytes", &queue.Message{RoutingKey: stream, Header: persistent, Body: body}, own, 0, 28, false},
		{"v3 own stream, properties and headers", &queue.Message{RoutingKey: stream, Header: rich, Body: body}, own, 0, 0, false},
		{"v3 named exchange", &queue.Message{Exchange: "orders", RoutingKey: "eu.de", Header: rich, Body: body}, encodeStreamRecord, 0, 0, false},
		{"v3 empty body", &queue.Message{RoutingKey: stream, Header: amqp.AppendContentHeader(nil, amqp.ClassBasic, 0, &amqp.Properties{}), Body: []byte{}}, own, 0, 0, false},
		{"v2 for a header v3 cannot convert", &queue.Message{Exchange: "orders", RoutingKey: "eu.de", Header: []byte{1, 2, 3}, Body: []byte("body")}, encodeStreamRecord, 2, 0, true},
		{"v2 own stream, 16 B persistent: 22 bytes", &queue.Message{RoutingKey: stream, Header: persistent, Body: body}, ownV2, 2, 22, true},
		{"v2 own stream, properties and headers", &queue.Message{RoutingKey: stream, Header: rich, Body: body}, ownV2, 2, 0, true},
		{"v2 named exchange", &queue.Message{Exchange: "orders", RoutingKey: "eu.de", Header: persistent, Body: body}, namedV2, 2, 0, true},
		{"v2 header that is not rebuilt (body size differs)", &queue.Message{Exchange: "x", RoutingKey: "k", Header: persistent, Body: []byte("short")}, namedV2, 2, 0, true},
		{"v2 empty body", &queue.Message{RoutingKey: stream, Header: amqp.AppendContentHeader(nil, amqp.ClassBasic, 0, &amqp.Properties{}), Body: []byte{}}, ownV2, 2, 0, true},
		{"v1 record", &queue.Message{Exchange: "orders", RoutingKey: "eu.de", Header: persistent, Body: body}, v1Record, 1, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := tt.rec(tt.msg)
			if rec[0] != tt.version {
				t.Fatalf("record starts with %#x, want %#x", rec[0], tt.version)
			}
			if tt.maxSize > 0 && len(rec) > tt.maxSize {
				t.Errorf("record is %d bytes, want at most %d", len(rec), tt.maxSize)
			}
			back, err := decodeStreamRecord(rec, stream)
			if err != nil || back.Exchange != tt.msg.Exchange || back.RoutingKey != tt.msg.RoutingKey ||
				!bytes.Equal(back.Body, tt.msg.Body) {
				t.Fatalf("round trip: %+v %v", back, err)
			}
			if tt.exact && !bytes.Equal(back.Header, tt.msg.Header) || !sameContent(back.Header, tt.msg.Header) {
				t.Fatalf("header\n% x\nwant\n% x", back.Header, tt.msg.Header)
			}
			// A delivery's header: the same, plus x-stream-offset.
			d, err := decodeStreamDelivery(rec, stream, 9)
			if err != nil || !bytes.Equal(d.Body, tt.msg.Body) {
				t.Fatalf("delivery: %+v %v", d, err)
			}
			if h, err := amqp.DecodeContentHeader(d.Header); err == nil {
				if h.Props.Headers["x-stream-offset"] != int64(9) {
					t.Errorf("delivery headers %v", h.Props.Headers)
				}
				delete(h.Props.Headers, "x-stream-offset")
				if w, _ := amqp.DecodeContentHeader(tt.msg.Header); len(h.Props.Headers) == 0 && w.Props.Headers == nil {
					h.Props.Headers = nil
				}
				if !sameContent(amqp.AppendContentHeader(nil, h.ClassID, h.BodySize, &h.Props), tt.msg.Header) {
					t.Errorf("delivery header %+v", h.Props)
				}
			} else if !bytes.Equal(d.Header, tt.msg.Header) {
				t.Errorf("undecodable header changed: % x", d.Header)
			}
			if len(back.Body) > 0 {
				want := string(back.Body)
				rec[len(rec)-1] ^= 0xff // decoding copied: the reader's buffer may change
				if string(back.Body) != want {
					t.Fatal("decoded message aliases the record")
				}
			}
			// Cut before the body: never a message (chunk checksums catch a cut body).
			for n := 0; n < len(rec)-len(tt.msg.Body); n++ {
				if m, err := decodeStreamRecord(rec[:n], stream); err == nil {
					t.Fatalf("a record cut at %d bytes decoded: %+v", n, m)
				}
			}
		})
	}
	if _, err := decodeStreamRecord([]byte{streamRecordV2, 0x80, 0}, stream); err == nil {
		t.Error("unknown flags decoded")
	}
	if _, err := decodeStreamRecord([]byte{0x03}, stream); err == nil {
		t.Error("unknown version decoded")
	}
}

// FuzzStreamRecord checks that decoding never panics, and that what decodes re-encodes (as v3,
// or v2 when the header does not convert) to a record that decodes to the same message.
func FuzzStreamRecord(f *testing.F) {
	body := []byte("0123456789abcdef")
	h := amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(body)), &amqp.Properties{DeliveryMode: 2, Headers: amqp.Table{"k": int8(1)}})
	f.Add(encodeRecord(&queue.Message{RoutingKey: "s", Header: h, Body: body}, true))
	f.Add(encodeStreamRecord(&queue.Message{Exchange: "x", RoutingKey: "k", Header: h, Body: body}))
	f.Add(encodeRecordV2(&queue.Message{RoutingKey: "s", Header: h, Body: body}, true))
	f.Add(encodeRecordV2(&queue.Message{Exchange: "x", RoutingKey: "k", Header: h, Body: body}, false))
	f.Add(v1Record(&queue.Message{Exchange: "x", RoutingKey: "k", Header: []byte{1}, Body: body}))
	f.Fuzz(func(t *testing.T, rec []byte) {
		m, err := decodeStreamRecord(rec, "s")
		if err != nil {
			return
		}
		again, err := decodeStreamRecord(encodeRecord(m, m.Exchange == "" && m.RoutingKey == "s"), "s")
		if err != nil || again.Exchange != m.Exchange || again.RoutingKey != m.RoutingKey ||
			!sameContent(again.Header, m.Header) || !bytes.Equal(again.Body, m.Body) {
			t.Fatalf("re-encoded %+v decodes to %+v, %v", m, again, err)
		}
		if _, err := decodeStreamDelivery(rec, "s", 1); err != nil {
			t.Fatalf("record decodes but not as a delivery: %v", err)
		}
	})
}

// TestStreamMixedRecordFormats reads a stream whose older segments hold v1 and v2 records
// (written with the encoders of those versions) and whose newer ones hold v3 records, across
// a restart: every delivery has its message, routing and x-stream-offset.
func TestStreamMixedRecordFormats(t *testing.T) {
	dir := t.TempDir()
	b := newTestBroker(t, dir)
	v := b.VHost("/")
	// Segments of ~100 bytes: each batch below starts a new one.
	args := amqp.Table{"x-queue-type": "stream", "x-stream-max-segment-size-bytes": int64(100)}
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "s", Durable: true, Args: args}); err != nil {
		t.Fatal(err)
	}
	v.mu.RLock()
	qs := v.queues["s"]
	v.mu.RUnlock()
	rich := amqp.AppendContentHeader(nil, amqp.ClassBasic, 2, &amqp.Properties{
		ContentType: "a/b", DeliveryMode: 2, Headers: amqp.Table{"h": int64(5)}, CorrelationID: "c"})
	old := []struct {
		rec      []byte
		exchange string
		rk       string
	}{
		{v1Record(&queue.Message{Exchange: "amq.fanout", RoutingKey: "x", Header: rich, Body: []byte("v1")}), "amq.fanout", "x"},
		{encodeRecordV2(&queue.Message{RoutingKey: "s", Header: rich, Body: []byte("v2")}, true), "", "s"},
		{encodeRecordV2(&queue.Message{Exchange: "e", RoutingKey: "k", Header: rich, Body: []byte("V2")}, false), "e", "k"},
	}
	for _, o := range old {
		done := make(chan error, 1)
		qs.sq.log.Append(o.rec, func(_ uint64, err error) { done <- err })
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	p := v.NewPublisher()
	publish(t, v, p, "", "s", "v3")
	publish(t, v, p, "", "s", "V3")
	if n := qs.sq.log.Info().Segments; n < 3 {
		t.Fatalf("%d segments, want the formats in several", n)
	}
	b.Close()

	b = newTestBroker(t, dir)
	v = b.VHost("/")
	sink := newStreamSink()
	qs, err := v.ConsumeStream(System, "s", sink, StreamConsume{Prefetch: 1, Args: amqp.Table{"x-stream-offset": "first"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ exchange, rk, body string }{
		{"amq.fanout", "x", "v1"}, {"", "s", "v2"}, {"e", "k", "V2"}, {"", "s", "v3"}, {"", "s", "V3"},
	}
	for i, w := range want {
		e := sink.await(t, i+1)[i]
		if e.Msg.Exchange != w.exchange || e.Msg.RoutingKey != w.rk || string(e.Msg.Body) != w.body || e.Seq != uint64(i) {
			t.Errorf("offset %d: %q %q %q at %d, want %v", i, e.Msg.Exchange, e.Msg.RoutingKey, e.Msg.Body, e.Seq, w)
		}
		h, err := amqp.DecodeContentHeader(qs.DeliveryHeader(e))
		if err != nil || h.Props.Headers["x-stream-offset"] != int64(i) || h.Props.DeliveryMode != 2 || h.BodySize != 2 {
			t.Fatalf("offset %d: header %+v %v", i, h, err)
		}
		if i < 3 && (h.Props.ContentType != "a/b" || h.Props.CorrelationID != "c" || h.Props.Headers["h"] != int64(5)) {
			t.Errorf("offset %d: properties %+v", i, h.Props)
		}
		sink.ack(qs)
	}
}

// TestStreamRecordsKeepRouting publishes to streams through the default exchange (records
// without exchange and routing key) and through a fanout to two streams (one shared record
// naming them), then reads each stream back: every delivery has its own exchange and key.
func TestStreamRecordsKeepRouting(t *testing.T) {
	b := newTestBroker(t, t.TempDir())
	v := b.VHost("/")
	for _, q := range []string{"s1", "s2"} {
		if _, err := v.DeclareQueue(System, QueueSpec{Name: q, Durable: true, Args: amqp.Table{"x-queue-type": "stream"}}); err != nil {
			t.Fatal(err)
		}
		if err := v.Bind(System, BindingSpec{Source: "amq.fanout", Destination: q}); err != nil {
			t.Fatal(err)
		}
	}
	p := v.NewPublisher()
	publish(t, v, p, "", "s1", "direct to s1")
	publish(t, v, p, "amq.fanout", "any.key", "fanned out")
	publish(t, v, p, "", "s2", "direct to s2")
	want := map[string][][3]string{
		"s1": {{"", "s1", "direct to s1"}, {"amq.fanout", "any.key", "fanned out"}},
		"s2": {{"amq.fanout", "any.key", "fanned out"}, {"", "s2", "direct to s2"}},
	}
	for q, msgs := range want {
		sink := newStreamSink()
		qs, err := v.ConsumeStream(System, q, sink, StreamConsume{Prefetch: 1, Args: amqp.Table{"x-stream-offset": "first"}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range msgs {
			e := sink.await(t, i+1)[i]
			if e.Msg.Exchange != m[0] || e.Msg.RoutingKey != m[1] || string(e.Msg.Body) != m[2] {
				t.Errorf("%s offset %d: exchange %q key %q body %q, want %q", q, i, e.Msg.Exchange, e.Msg.RoutingKey, e.Msg.Body, m)
			}
			h, herr := amqp.DecodeContentHeader(qs.DeliveryHeader(e))
			if herr != nil || h.BodySize != uint64(len(m[2])) || h.Props.DeliveryMode != 2 {
				t.Errorf("%s offset %d: delivery header %+v %v", q, i, h, herr)
			}
			sink.ack(qs)
		}
	}
}

// TestStreamRetentionOrder checks that a retention computed from older policies never replaces
// a newer one, whatever order they are applied in: a stream declare that read the policies
// before a reload applies its value after the reload's, or two reloads cross.
func TestStreamRetentionOrder(t *testing.T) {
	b := newTestBroker(t, "")
	v := b.VHost("/")
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "s", Durable: true, Args: amqp.Table{"x-queue-type": "stream"}}); err != nil {
		t.Fatal(err)
	}
	v.mu.RLock()
	sq := v.queues["s"].sq
	v.mu.RUnlock()
	base := streamPolicyGen.Load()
	sq.setRetention(stream.Options{MaxLengthBytes: 2000, MaxAge: time.Hour}, base+2)
	sq.setRetention(stream.Options{MaxLengthBytes: 1000}, base+1) // stale: ignored
	sq.mu.Lock()
	got, age := sq.maxLengthBytes, sq.maxAge
	sq.mu.Unlock()
	if got != 2000 || age != time.Hour {
		t.Fatalf("retention %d %v after a stale update, want 2000 1h", got, age)
	}
	// Many crossing updates: the newest generation is what stays.
	var wg sync.WaitGroup
	for i := 1; i <= 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sq.setRetention(stream.Options{MaxLengthBytes: int64(i) * 1000}, base+2+uint64(i))
		}(i)
	}
	wg.Wait()
	sq.mu.Lock()
	got = sq.maxLengthBytes
	sq.mu.Unlock()
	if got != 50000 {
		t.Fatalf("retention %d after crossing updates, want 50000 (the newest)", got)
	}
}

// TestStreamConsumerCancelledOnReadError damages a committed chunk: the consumer reading it
// is cancelled as for a deleted queue (QueueDeleted, so the client gets basic.cancel) instead
// of its goroutine ending silently, and its hold on the queue is released (an exclusive
// consumer can then subscribe).
func TestStreamConsumerCancelledOnReadError(t *testing.T) {
	dir := t.TempDir()
	b := newTestBroker(t, dir)
	v := b.VHost("/")
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "s", Durable: true, Args: amqp.Table{"x-queue-type": "stream"}}); err != nil {
		t.Fatal(err)
	}
	p := v.NewPublisher()
	publish(t, v, p, "", "s", "ok")
	publish(t, v, p, "", "s", "damaged")
	var segs []string
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(path, ".segment") {
			segs = append(segs, path)
		}
		return nil
	})
	if len(segs) != 1 {
		t.Fatalf("segments %v", segs)
	}
	// The file may be preallocated past its chunks: damage the second record's body, so that
	// its chunk's CRCs no longer match.
	data, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(data, []byte("damaged"))
	if at < 0 {
		t.Fatal("record not found in the segment")
	}
	data[at] ^= 0xff
	if err := os.WriteFile(segs[0], data, 0o644); err != nil {
		t.Fatal(err)
	}

	sink := newStreamSink()
	qs, aerr := v.ConsumeStream(System, "s", sink, StreamConsume{Exclusive: true, Prefetch: 1, Args: amqp.Table{"x-stream-offset": "first"}}, nil)
	if aerr != nil {
		t.Fatal(aerr)
	}
	if got := sink.await(t, 1); string(got[0].Msg.Body) != "ok" {
		t.Fatalf("first delivery %q", got[0].Msg.Body)
	}
	sink.ack(qs)
	select {
	case <-sink.deleted:
	case <-time.After(5 * time.Second):
		t.Fatal("consumer of a damaged chunk not cancelled")
	}
	v.mu.RLock()
	n, excl := qs.consumers, qs.exclusiveConsumer
	v.mu.RUnlock()
	if n != 0 || excl {
		t.Fatalf("after the cancel: %d consumers, exclusive %v; want 0, false", n, excl)
	}
	if _, err := v.ConsumeStream(System, "s", newStreamSink(), StreamConsume{Exclusive: true, Prefetch: 1}, nil); err != nil {
		t.Fatalf("exclusive consume after the cancel: %v", err)
	}
}
