package server

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// TestStreamRecordRoundTrip publishes messages with every property and every header value type
// through a stream (stored as AMQP 1.0 records) and checks that a consumer gets exactly what
// was published, plus x-stream-offset, and each message's exchange and routing key.
func TestStreamRecordRoundTrip(t *testing.T) {
	s := startTestServer(t, nil)
	_, ch := dialStreamT(t, s)
	if _, err := ch.QueueDeclare("rt", true, false, false, false, streamArgs); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind("rt", "", "amq.fanout", false, nil); err != nil {
		t.Fatal(err)
	}
	ts := time.Unix(1700000000, 0)
	headers := amqp091.Table{
		"bool": true, "int8": int8(-8), "uint8": byte(200), "int16": int16(-300), "uint16": uint16(60000),
		"int32": int32(-70000), "uint32": uint32(4000000000), "int64": int64(-1 << 40), "float32": float32(0.25),
		"float64": 1e300, "decimal": amqp091.Decimal{Scale: 3, Value: -123456}, "string": "wörld",
		"bytes": []byte{0, 1, 2}, "time": ts, "void": nil,
		"array":   []interface{}{int32(1), "two", []interface{}{}, amqp091.Table{"x": int64(3)}},
		"table":   amqp091.Table{"nested": amqp091.Table{"deep": "yes"}, "list": []interface{}{true}},
		"x-death": []interface{}{amqp091.Table{"queue": "q", "count": int64(1), "reason": "expired"}},
	}
	msgs := []struct {
		exchange, key string
		p             amqp091.Publishing
	}{
		{"", "rt", amqp091.Publishing{Body: []byte("plain")}},
		{"", "rt", amqp091.Publishing{DeliveryMode: 2, Body: []byte("persistent")}},
		{"amq.fanout", "any.key", amqp091.Publishing{
			Headers: headers, ContentType: "application/json", ContentEncoding: "gzip", DeliveryMode: 2,
			Priority: 7, CorrelationId: "corr-1", ReplyTo: "replies", Expiration: "600000",
			MessageId: "msg-1", Timestamp: ts, Type: "order.created", UserId: "guest", AppId: "shop",
			Body: make([]byte, 70000)}},
		{"", "rt", amqp091.Publishing{DeliveryMode: 1, Priority: 0, Headers: amqp091.Table{"x-stream-offset": "mine"}, Body: []byte{}}},
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		dc, err := ch.PublishWithDeferredConfirm(m.exchange, m.key, false, false, m.p)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(t.Context()); err != nil || !ok {
			t.Fatalf("publish %d not confirmed: %v %v", i, ok, err)
		}
	}
	if err := ch.Qos(10, 0, false); err != nil {
		t.Fatal(err)
	}
	ds, err := ch.Consume("rt", "", false, false, false, false, amqp091.Table{"x-stream-offset": "first"})
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		var d amqp091.Delivery
		select {
		case d = <-ds:
		case <-time.After(5 * time.Second):
			t.Fatalf("delivery %d did not come", i)
		}
		want := amqp091.Table{}
		for k, v := range m.p.Headers {
			want[k] = v
		}
		want["x-stream-offset"] = int64(i)
		if len(d.Headers) != len(want) {
			t.Errorf("message %d: %d headers, want %d: %v", i, len(d.Headers), len(want), d.Headers)
		}
		for k, w := range want {
			if !sameValue(d.Headers[k], w) {
				t.Errorf("message %d: header %q = %#v, want %#v", i, k, d.Headers[k], w)
			}
		}
		p := m.p
		got := amqp091.Publishing{ContentType: d.ContentType, ContentEncoding: d.ContentEncoding,
			DeliveryMode: d.DeliveryMode, Priority: d.Priority, CorrelationId: d.CorrelationId, ReplyTo: d.ReplyTo,
			Expiration: d.Expiration, MessageId: d.MessageId, Type: d.Type, UserId: d.UserId, AppId: d.AppId}
		if !d.Timestamp.Equal(p.Timestamp) {
			t.Errorf("message %d: timestamp %v, want %v", i, d.Timestamp, p.Timestamp)
		}
		if !bytes.Equal(d.Body, p.Body) {
			t.Errorf("message %d: body of %d bytes, want %d", i, len(d.Body), len(p.Body))
		}
		p.Headers, p.Timestamp, p.Body = nil, time.Time{}, nil
		if !reflect.DeepEqual(got, p) {
			t.Errorf("message %d:\n got %+v\nwant %+v", i, got, p)
		}
		if d.Exchange != m.exchange || d.RoutingKey != m.key {
			t.Errorf("message %d: exchange %q key %q, want %q %q", i, d.Exchange, d.RoutingKey, m.exchange, m.key)
		}
		if err := d.Ack(false); err != nil {
			t.Fatal(err)
		}
	}
}

// sameValue compares header values as amqp091 decodes them (timestamps by instant, tables and
// arrays element by element).
func sameValue(got, want any) bool {
	switch w := want.(type) {
	case time.Time:
		g, ok := got.(time.Time)
		return ok && g.Equal(w)
	case amqp091.Table:
		g, ok := got.(amqp091.Table)
		if !ok || len(g) != len(w) {
			return false
		}
		for k := range w {
			if !sameValue(g[k], w[k]) {
				return false
			}
		}
		return true
	case []interface{}:
		g, ok := got.([]interface{})
		if !ok || len(g) != len(w) {
			return false
		}
		for i := range w {
			if !sameValue(g[i], w[i]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(got, want)
}
