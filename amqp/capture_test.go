package amqp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"reflect"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// captureFrameMax is the frame_max the scripted server offers; small so
// that the published body is split into several body frames.
const captureFrameMax = 4096

// typeCases are field table values as an amqp091-go client sends them (one
// exchange.declare per case, argument "v") and what they decode to here.
var typeCases = []struct {
	name string
	in   any
	want any
}{
	{"bool", true, true},
	{"byte", byte(200), uint8(200)},
	{"int8", int8(-5), int8(-5)},
	{"int16", int16(-300), int16(-300)},
	{"int", int(-70000), int32(-70000)}, // amqp091-go writes int as 'I'
	{"int32", int32(-2), int32(-2)},
	{"int64", int64(-1 << 40), int64(-1 << 40)},
	{"uint16", uint16(65000), uint16(65000)},
	{"uint32", uint32(4000000000), uint32(4000000000)},
	{"float32", float32(1.5), float32(1.5)},
	{"float64", float64(-2.25), float64(-2.25)},
	{"string", "str\x00ing", "str\x00ing"},
	{"bytes", []byte{0, 1, 2, 0xff}, []byte{0, 1, 2, 0xff}},
	{"decimal", amqp091.Decimal{Scale: 2, Value: -12345}, Decimal{Scale: 2, Value: -12345}},
	{"timestamp", time.Unix(1700000000, 0), time.Unix(1700000000, 0)},
	{"void", nil, nil},
	{"array", []any{int32(1), "a", []any{}, amqp091.Table{"k": int64(2)}}, []any{int32(1), "a", []any{}, Table{"k": int64(2)}}},
	{"table", amqp091.Table{"k": "v"}, Table{"k": "v"}},
	{"nested", amqp091.Table{"n": amqp091.Table{"a": []any{amqp091.Table{"d": amqp091.Decimal{Scale: 1, Value: 7}}, []any{true, byte(1)}}}},
		Table{"n": Table{"a": []any{Table{"d": Decimal{Scale: 1, Value: 7}}, []any{true, uint8(1)}}}}},
}

// capturePublishing carries all 14 properties (cluster-id is not settable
// in amqp091-go; its encoding is covered by the property tests) and a
// nested headers table with one key per level, so the encoding order of
// the map cannot differ between the client and us.
var capturePublishing = amqp091.Publishing{
	Headers:         amqp091.Table{"outer": amqp091.Table{"inner": []any{int64(1), "two", amqp091.Decimal{Scale: 3, Value: -4}, amqp091.Table{"deep": true}}}},
	ContentType:     "application/json",
	ContentEncoding: "gzip",
	DeliveryMode:    2,
	Priority:        7,
	CorrelationId:   "corr-1",
	ReplyTo:         "reply.q",
	Expiration:      "60000",
	MessageId:       "msg-1",
	Timestamp:       time.Unix(1700000001, 0),
	Type:            "order.created",
	UserId:          "guest",
	AppId:           "warren-test",
	Body:            bytes.Repeat([]byte("0123456789abcdef"), 700), // 11200 bytes: 3 body frames
}

// serverDeliverProps is what the scripted server delivers to the client's
// consumer, encoded with AppendContentHeader.
var serverDeliverProps = Properties{
	ContentType: "text/plain", ContentEncoding: "utf-8",
	Headers:      Table{"x-death": []any{Table{"count": int64(3), "queue": "q", "reason": "expired"}}, "n": int32(1)},
	DeliveryMode: 1, Priority: 3, CorrelationID: "c", ReplyTo: "r", Expiration: "100", MessageID: "m",
	Timestamp: time.Unix(1700000002, 0), Type: "t", UserID: "u", AppID: "a",
}

// TestCaptureAmqp091 lets a real amqp091-go client talk to a scripted
// server built on this package, records every byte the client sends, and
// checks that decoding and re-encoding each frame reproduces the client's
// bytes exactly; it also checks that the client accepts what we encode.
func TestCaptureAmqp091(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	var captured bytes.Buffer
	serverDone := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			serverDone <- err
			return
		}
		defer c.Close()
		serverDone <- scriptedServer(c, &captured)
	}()

	var wg sync.WaitGroup
	wg.Add(1)
	clientErr := make(chan error, 1)
	go func() {
		defer wg.Done()
		clientErr <- runClient("amqp://guest:guest@" + ln.Addr().String() + "/")
	}()
	wg.Wait()
	if err := <-clientErr; err != nil {
		t.Fatalf("client: %v", err)
	}
	select {
	case err := <-serverDone:
		if err != nil {
			t.Fatalf("server: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server script did not finish")
	}

	stream := captured.Bytes()
	if !bytes.HasPrefix(stream, ProtocolHeader) {
		t.Fatalf("stream starts with % x", stream[:8])
	}
	stream = stream[len(ProtocolHeader):]
	checkCapturedFrames(t, stream)
}

func scriptedServer(c net.Conn, captured *bytes.Buffer) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tee := io.TeeReader(c, captured)
	hdr := make([]byte, 8)
	if _, err := io.ReadFull(tee, hdr); err != nil {
		return err
	}
	fr := NewFrameReader(tee, 1<<16)
	fr.SetMaxFrameSize(captureFrameMax)
	send := func(ch uint16, m Method) error {
		_, err := c.Write(AppendMethodFrame(nil, ch, m))
		return err
	}
	if err := send(0, &ConnectionStart{
		VersionMajor: 0, VersionMinor: 9,
		ServerProperties: Table{
			"product": "Warren", "version": "0.0.0",
			"capabilities": Table{"publisher_confirms": true, "basic.nack": true, "consumer_cancel_notify": true,
				"exchange_exchange_bindings": true, "connection.blocked": true},
		},
		Mechanisms: "PLAIN AMQPLAIN", Locales: "en_US",
	}); err != nil {
		return err
	}
	published := 0
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		if f.Type != FrameMethod {
			continue
		}
		m, err := DecodeMethod(f.Payload)
		if err != nil {
			return err
		}
		var reply Method
		switch m := m.(type) {
		case *ConnectionStartOk:
			if m.Mechanism != "PLAIN" || m.Response != "\x00guest\x00guest" {
				return errors.New("unexpected start-ok " + m.Mechanism)
			}
			reply = &ConnectionTune{ChannelMax: 2047, FrameMax: captureFrameMax, Heartbeat: 0}
		case *ConnectionTuneOk:
		case *ConnectionOpen:
			reply = &ConnectionOpenOk{}
		case *ConnectionClose:
			return send(0, &ConnectionCloseOk{})
		case *ChannelOpen:
			reply = &ChannelOpenOk{}
		case *ChannelFlow:
			reply = &ChannelFlowOk{Active: m.Active}
		case *ChannelClose:
			reply = &ChannelCloseOk{}
		case *ExchangeDeclare:
			reply = &ExchangeDeclareOk{}
		case *ExchangeDelete:
			reply = &ExchangeDeleteOk{}
		case *ExchangeBind:
			reply = &ExchangeBindOk{}
		case *ExchangeUnbind:
			reply = &ExchangeUnbindOk{}
		case *QueueDeclare:
			reply = &QueueDeclareOk{Queue: m.Queue, MessageCount: 0, ConsumerCount: 0}
		case *QueueBind:
			reply = &QueueBindOk{}
		case *QueueUnbind:
			reply = &QueueUnbindOk{}
		case *QueuePurge:
			reply = &QueuePurgeOk{MessageCount: 3}
		case *QueueDelete:
			reply = &QueueDeleteOk{MessageCount: 0}
		case *BasicQos:
			reply = &BasicQosOk{}
		case *ConfirmSelect:
			reply = &ConfirmSelectOk{}
		case *BasicPublish:
			published++
			// Confirm it once the content has arrived: read header + bodies.
			if err := readContent(fr); err != nil {
				return err
			}
			if err := send(f.Channel, &BasicAck{DeliveryTag: uint64(published)}); err != nil {
				return err
			}
		case *BasicConsume:
			if err := send(f.Channel, &BasicConsumeOk{ConsumerTag: m.ConsumerTag}); err != nil {
				return err
			}
			out := AppendMethodFrame(nil, f.Channel, &BasicDeliver{ConsumerTag: m.ConsumerTag, DeliveryTag: 1, Redelivered: true, Exchange: "ex", RoutingKey: "rk"})
			body := bytes.Repeat([]byte("z"), 5000)
			out = AppendContent(out, f.Channel, AppendContentHeader(nil, ClassBasic, uint64(len(body)), &serverDeliverProps), body, captureFrameMax)
			if _, err := c.Write(out); err != nil {
				return err
			}
		case *BasicCancel:
			reply = &BasicCancelOk{ConsumerTag: m.ConsumerTag}
		case *BasicGet:
			reply = &BasicGetEmpty{}
		case *BasicRecover:
			reply = &BasicRecoverOk{}
		case *TxSelect:
			reply = &TxSelectOk{}
		case *TxCommit:
			reply = &TxCommitOk{}
		case *TxRollback:
			reply = &TxRollbackOk{}
		}
		if reply != nil {
			if err := send(f.Channel, reply); err != nil {
				return err
			}
		}
	}
}

func readContent(fr *FrameReader) error {
	f, err := fr.ReadFrame()
	if err != nil {
		return err
	}
	h, err := DecodeContentHeader(f.Payload)
	if err != nil {
		return err
	}
	for got := uint64(0); got < h.BodySize; {
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		got += uint64(len(f.Payload))
	}
	return nil
}

func runClient(url string) error {
	conn, err := amqp091.DialConfig(url, amqp091.Config{Heartbeat: 0, Locale: "en_US"})
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	steps := []func() error{
		func() error {
			return ch.ExchangeDeclare("ex", "topic", true, false, false, false, amqp091.Table{"alternate-exchange": "ae"})
		},
		func() error {
			for _, tc := range typeCases {
				if err := ch.ExchangeDeclare("t-"+tc.name, "direct", false, true, true, false, amqp091.Table{"v": tc.in}); err != nil {
					return err
				}
			}
			return nil
		},
		func() error {
			_, err := ch.QueueDeclare("q", true, false, true, false, amqp091.Table{"x-message-ttl": int32(60000)})
			return err
		},
		func() error { return ch.QueueBind("q", "rk.#", "ex", false, amqp091.Table{"x-match": "all"}) },
		func() error { return ch.ExchangeBind("dst", "k", "ex", false, nil) },
		func() error { return ch.ExchangeUnbind("dst", "k", "ex", false, nil) },
		func() error { return ch.Qos(10, 0, true) },
		func() error { return ch.Flow(true) },
		func() error { return ch.Confirm(false) },
		func() error {
			confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := ch.PublishWithContext(ctx, "ex", "rk.a", true, false, capturePublishing); err != nil {
				return err
			}
			select {
			case c := <-confirms:
				if !c.Ack || c.DeliveryTag != 1 {
					return errors.New("bad confirm")
				}
			case <-ctx.Done():
				return errors.New("no confirm")
			}
			return nil
		},
		func() error {
			deliveries, err := ch.Consume("q", "ctag", false, true, false, false, amqp091.Table{"x-priority": int32(5)})
			if err != nil {
				return err
			}
			select {
			case d := <-deliveries:
				return checkDelivery(d)
			case <-time.After(5 * time.Second):
				return errors.New("no delivery")
			}
		},
		func() error { return ch.Ack(42, true) },
		func() error { return ch.Nack(43, false, true) },
		func() error { return ch.Reject(44, false) },
		func() error { return ch.Cancel("ctag", false) },
		func() error { _, _, err := ch.Get("q", true); return err },
		func() error { return ch.Recover(true) },
		func() error { _, err := ch.QueuePurge("q", false); return err },
		func() error { return ch.QueueUnbind("q", "rk.#", "ex", amqp091.Table{"x-match": "any"}) },
		func() error { _, err := ch.QueueDelete("q", true, true, false); return err },
		func() error { return ch.ExchangeDelete("ex", true, false) },
		func() error {
			tx, err := conn.Channel()
			if err != nil {
				return err
			}
			if err := tx.Tx(); err != nil {
				return err
			}
			if err := tx.TxCommit(); err != nil {
				return err
			}
			if err := tx.TxRollback(); err != nil {
				return err
			}
			return tx.Close()
		},
		func() error { return ch.Close() },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			return errors.Join(errors.New("step "+itoa(uint16(i))), err)
		}
	}
	return conn.Close()
}

// checkDelivery verifies that amqp091-go decoded our basic.deliver and
// content frames into what we encoded.
func checkDelivery(d amqp091.Delivery) error {
	p := serverDeliverProps
	if d.ConsumerTag != "ctag" || d.DeliveryTag != 1 || !d.Redelivered || d.Exchange != "ex" || d.RoutingKey != "rk" {
		return errors.New("delivery method fields differ")
	}
	if !bytes.Equal(d.Body, bytes.Repeat([]byte("z"), 5000)) {
		return errors.New("delivery body differs")
	}
	if d.ContentType != p.ContentType || d.ContentEncoding != p.ContentEncoding || d.DeliveryMode != p.DeliveryMode ||
		d.Priority != p.Priority || d.CorrelationId != p.CorrelationID || d.ReplyTo != p.ReplyTo ||
		d.Expiration != p.Expiration || d.MessageId != p.MessageID || !d.Timestamp.Equal(p.Timestamp) ||
		d.Type != p.Type || d.UserId != p.UserID || d.AppId != p.AppID {
		return errors.New("delivery properties differ")
	}
	death, ok := d.Headers["x-death"].([]any)
	if !ok || len(death) != 1 {
		return errors.New("x-death header missing")
	}
	entry, ok := death[0].(amqp091.Table)
	if !ok || entry["count"] != int64(3) || entry["queue"] != "q" || entry["reason"] != "expired" || d.Headers["n"] != int32(1) {
		return errors.New("headers differ")
	}
	return nil
}

type capturedFrame struct {
	typ     byte
	channel uint16
	payload []byte
	raw     []byte
}

func splitFrames(t *testing.T, stream []byte) []capturedFrame {
	t.Helper()
	var out []capturedFrame
	for len(stream) > 0 {
		if len(stream) < 8 {
			t.Fatalf("trailing %d bytes", len(stream))
		}
		size := int(binary.BigEndian.Uint32(stream[3:]))
		raw := stream[:7+size+1]
		out = append(out, capturedFrame{raw[0], binary.BigEndian.Uint16(raw[1:]), raw[7 : 7+size], raw})
		stream = stream[len(raw):]
	}
	return out
}

func checkCapturedFrames(t *testing.T, stream []byte) {
	frames := splitFrames(t, stream)
	// Our FrameReader splits the stream the same way.
	fr := NewFrameReader(bytes.NewReader(stream), 4096)
	for i, want := range frames {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("ReadFrame %d: %v", i, err)
		}
		if f.Type != want.typ || f.Channel != want.channel || !bytes.Equal(f.Payload, want.payload) {
			t.Fatalf("frame %d differs", i)
		}
	}
	if _, err := fr.ReadFrame(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last frame: %v, want EOF", err)
	}

	seen := map[string]int{}
	declared := map[string]Table{}
	for i := 0; i < len(frames); i++ {
		f := frames[i]
		if f.typ != FrameMethod {
			t.Fatalf("frame %d: unexpected type %d outside content", i, f.typ)
		}
		m, err := DecodeMethod(f.payload)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		seen[m.Name()]++
		re := AppendMethodFrame(nil, f.channel, m)
		if _, ok := m.(*ConnectionStartOk); ok {
			// client-properties has several keys in Go map order; we
			// write sorted keys, so compare length and decoded value.
			if len(re) != len(f.raw) {
				t.Errorf("start-ok re-encoded to %d bytes, captured %d", len(re), len(f.raw))
			}
			m2, err := DecodeMethod(re[7 : len(re)-1])
			if err != nil || !reflect.DeepEqual(m, m2) {
				t.Errorf("start-ok does not round trip: %v", err)
			}
		} else if !bytes.Equal(re, f.raw) {
			t.Errorf("frame %d (%s) re-encoded differs:\n got % x\nwant % x", i, m.Name(), re, f.raw)
		}
		if d, ok := m.(*ExchangeDeclare); ok {
			declared[d.Exchange] = d.Arguments
		}
		if !m.HasContent() {
			continue
		}
		// Content: header frame, then body frames up to the body size.
		i++
		hf := frames[i]
		h, err := DecodeContentHeader(hf.payload)
		if err != nil {
			t.Fatalf("content header: %v", err)
		}
		checkCapturedHeader(t, h, hf)
		var body []byte
		start := hf.raw
		n := len(hf.raw)
		for uint64(len(body)) < h.BodySize {
			i++
			if frames[i].typ != FrameBody {
				t.Fatalf("frame %d: type %d inside content", i, frames[i].typ)
			}
			body = append(body, frames[i].payload...)
			n += len(frames[i].raw)
		}
		if !bytes.Equal(body, capturePublishing.Body) {
			t.Errorf("body differs")
		}
		// The header frame and the body frames are contiguous in the
		// stream; AppendContent must produce the same bytes.
		contiguous := start[:n:n]
		if got := AppendContent(nil, hf.channel, hf.payload, body, captureFrameMax); !bytes.Equal(got, contiguous) {
			t.Errorf("AppendContent differs from the client's content frames (%d vs %d bytes)", len(got), len(contiguous))
		}
	}

	t.Logf("compared %d captured frames, %d distinct methods", len(frames), len(seen))
	for _, name := range []string{"connection.start-ok", "connection.tune-ok", "connection.open", "channel.open",
		"exchange.declare", "queue.declare", "queue.bind", "exchange.bind", "exchange.unbind", "basic.qos",
		"channel.flow", "confirm.select", "basic.publish", "basic.consume", "basic.ack", "basic.nack",
		"basic.reject", "basic.cancel", "basic.get", "basic.recover", "queue.purge", "queue.unbind",
		"queue.delete", "exchange.delete", "tx.select", "tx.commit", "tx.rollback", "channel.close",
		"connection.close"} {
		if seen[name] == 0 {
			t.Errorf("the client never sent %s", name)
		}
	}

	for _, tc := range typeCases {
		t.Run("type/"+tc.name, func(t *testing.T) {
			args, ok := declared["t-"+tc.name]
			if !ok {
				t.Fatal("not captured")
			}
			got, ok := args["v"]
			if !ok || !reflect.DeepEqual(normTime(got), normTime(tc.want)) {
				t.Fatalf("decoded %#v (%T), want %#v (%T)", got, got, tc.want, tc.want)
			}
		})
	}
}

// normTime makes timestamps comparable with DeepEqual (location aside).
func normTime(v any) any {
	if tm, ok := v.(time.Time); ok {
		return tm.Unix()
	}
	return v
}

func checkCapturedHeader(t *testing.T, h ContentHeader, hf capturedFrame) {
	t.Helper()
	p := capturePublishing
	want := Properties{
		ContentType: p.ContentType, ContentEncoding: p.ContentEncoding,
		Headers:      Table{"outer": Table{"inner": []any{int64(1), "two", Decimal{Scale: 3, Value: -4}, Table{"deep": true}}}},
		DeliveryMode: p.DeliveryMode, Priority: p.Priority, CorrelationID: p.CorrelationId, ReplyTo: p.ReplyTo,
		Expiration: p.Expiration, MessageID: p.MessageId, Timestamp: p.Timestamp, Type: p.Type, UserID: p.UserId, AppID: p.AppId,
	}
	got := h.Props
	if !got.Timestamp.Equal(want.Timestamp) {
		t.Errorf("timestamp %v, want %v", got.Timestamp, want.Timestamp)
	}
	got.Timestamp, want.Timestamp = time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("properties:\n got %#v\nwant %#v", got, want)
	}
	if h.ClassID != ClassBasic || h.BodySize != uint64(len(p.Body)) {
		t.Errorf("class %d size %d", h.ClassID, h.BodySize)
	}
	if re := AppendFrame(nil, FrameHeader, hf.channel, AppendContentHeader(nil, h.ClassID, h.BodySize, &h.Props)); !bytes.Equal(re, hf.raw) {
		t.Errorf("content header re-encoded differs:\n got % x\nwant % x", re, hf.raw)
	}
	s, err := ScanContentHeader(hf.payload)
	if err != nil {
		t.Fatal(err)
	}
	headersRaw, _ := AppendTable(nil, want.Headers)
	if s.ClassID != ClassBasic || s.BodySize != h.BodySize || s.DeliveryMode != 2 || s.Priority != 7 ||
		s.Expiration != "60000" || s.UserID != "guest" || !bytes.Equal(s.HeadersRaw, headersRaw) {
		t.Errorf("ScanContentHeader = %+v", s)
	}
}
