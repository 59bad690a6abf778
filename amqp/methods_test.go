package amqp

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestMethodRoundTrip(t *testing.T) {
	samples := sampleMethods()
	seen := map[string]bool{}
	for _, m := range samples {
		seen[m.Name()] = true
		t.Run(m.Name(), func(t *testing.T) {
			payload := m.Append(nil)
			if got := uint16(payload[0])<<8 | uint16(payload[1]); got != m.ClassID() {
				t.Fatalf("class id on the wire = %d, want %d", got, m.ClassID())
			}
			if got := uint16(payload[2])<<8 | uint16(payload[3]); got != m.MethodID() {
				t.Fatalf("method id on the wire = %d, want %d", got, m.MethodID())
			}
			got, err := DecodeMethod(payload)
			if err != nil {
				t.Fatalf("DecodeMethod: %v", err)
			}
			if !reflect.DeepEqual(got, m) {
				t.Fatalf("round trip mismatch:\n got %#v\nwant %#v", got, m)
			}
			// Re-encoding the decoded value gives the same bytes.
			if again := got.Append(nil); !bytes.Equal(again, payload) {
				t.Fatalf("re-encode differs:\n got % x\nwant % x", again, payload)
			}
			// The per-struct Decode into a fresh value of the same type.
			fresh := reflect.New(reflect.TypeOf(m).Elem()).Interface().(interface {
				Method
				Decode([]byte) error
			})
			if err := fresh.Decode(payload); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(Method(fresh), m) {
				t.Fatalf("Decode mismatch:\n got %#v\nwant %#v", fresh, m)
			}
			// Inside a frame.
			frame := AppendMethodFrame(nil, 7, m)
			fr := NewFrameReader(bytes.NewReader(frame), 4096)
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("ReadFrame: %v", err)
			}
			if f.Type != FrameMethod || f.Channel != 7 || !bytes.Equal(f.Payload, payload) {
				t.Fatalf("frame = %d/%d/% x", f.Type, f.Channel, f.Payload)
			}
		})
	}
	// Every method of 0-9-1 and RabbitMQ's extensions is covered.
	want := []string{
		"connection.start", "connection.start-ok", "connection.secure", "connection.secure-ok",
		"connection.tune", "connection.tune-ok", "connection.open", "connection.open-ok",
		"connection.close", "connection.close-ok", "connection.blocked", "connection.unblocked",
		"connection.update-secret", "connection.update-secret-ok",
		"channel.open", "channel.open-ok", "channel.flow", "channel.flow-ok", "channel.close", "channel.close-ok",
		"exchange.declare", "exchange.declare-ok", "exchange.delete", "exchange.delete-ok",
		"exchange.bind", "exchange.bind-ok", "exchange.unbind", "exchange.unbind-ok",
		"queue.declare", "queue.declare-ok", "queue.bind", "queue.bind-ok", "queue.unbind", "queue.unbind-ok",
		"queue.purge", "queue.purge-ok", "queue.delete", "queue.delete-ok",
		"basic.qos", "basic.qos-ok", "basic.consume", "basic.consume-ok", "basic.cancel", "basic.cancel-ok",
		"basic.publish", "basic.return", "basic.deliver", "basic.get", "basic.get-ok", "basic.get-empty",
		"basic.ack", "basic.reject", "basic.recover-async", "basic.recover", "basic.recover-ok", "basic.nack",
		"tx.select", "tx.select-ok", "tx.commit", "tx.commit-ok", "tx.rollback", "tx.rollback-ok",
		"confirm.select", "confirm.select-ok",
	}
	for _, n := range want {
		if !seen[n] {
			t.Errorf("no sample for %s", n)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("%d methods generated, want %d", len(seen), len(want))
	}
}

func TestMethodMetadata(t *testing.T) {
	tests := []struct {
		m       Method
		class   uint16
		method  uint16
		name    string
		content bool
	}{
		{&ConnectionStart{}, ClassConnection, 10, "connection.start", false},
		{&ConnectionUpdateSecretOk{}, ClassConnection, 71, "connection.update-secret-ok", false},
		{&ChannelOpen{}, ClassChannel, 10, "channel.open", false},
		{&ExchangeUnbindOk{}, ClassExchange, 51, "exchange.unbind-ok", false},
		{&QueueDeclare{}, ClassQueue, 10, "queue.declare", false},
		{&BasicPublish{}, ClassBasic, 40, "basic.publish", true},
		{&BasicReturn{}, ClassBasic, 50, "basic.return", true},
		{&BasicDeliver{}, ClassBasic, 60, "basic.deliver", true},
		{&BasicGetOk{}, ClassBasic, 71, "basic.get-ok", true},
		{&BasicGetEmpty{}, ClassBasic, 72, "basic.get-empty", false},
		{&BasicNack{}, ClassBasic, 120, "basic.nack", false},
		{&ConfirmSelect{}, ClassConfirm, 10, "confirm.select", false},
		{&TxRollbackOk{}, ClassTx, 31, "tx.rollback-ok", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.m.ClassID() != tt.class || tt.m.MethodID() != tt.method || tt.m.Name() != tt.name || tt.m.HasContent() != tt.content {
				t.Fatalf("got %d.%d %q content=%v", tt.m.ClassID(), tt.m.MethodID(), tt.m.Name(), tt.m.HasContent())
			}
		})
	}
}

// Bits are packed LSB first into one octet per run of consecutive bits.
func TestMethodBitPacking(t *testing.T) {
	tests := []struct {
		name string
		m    Method
		want []byte
	}{
		{"nack multiple+requeue", &BasicNack{DeliveryTag: 5, Multiple: true, Requeue: true},
			[]byte{0, 60, 0, 120, 0, 0, 0, 0, 0, 0, 0, 5, 3}},
		{"nack requeue only", &BasicNack{DeliveryTag: 5, Requeue: true},
			[]byte{0, 60, 0, 120, 0, 0, 0, 0, 0, 0, 0, 5, 2}},
		{"queue.declare durable+no-wait", &QueueDeclare{Queue: "q", Durable: true, NoWait: true, Arguments: Table{}},
			[]byte{0, 50, 0, 10, 0, 0, 1, 'q', 0x02 | 0x10, 0, 0, 0, 0}},
		{"exchange.declare internal", &ExchangeDeclare{Exchange: "x", Type: "topic", Internal: true, Arguments: Table{}},
			[]byte{0, 40, 0, 10, 0, 0, 1, 'x', 5, 't', 'o', 'p', 'i', 'c', 0x08, 0, 0, 0, 0}},
		{"basic.deliver redelivered", &BasicDeliver{ConsumerTag: "c", DeliveryTag: 1, Redelivered: true, Exchange: "", RoutingKey: "k"},
			[]byte{0, 60, 0, 60, 1, 'c', 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 'k'}},
		{"confirm.select nowait", &ConfirmSelect{NoWait: true}, []byte{0, 85, 0, 10, 1}},
		{"channel.close", &ChannelClose{ReplyCode: 404, ReplyText: "NF", ClassId: 50, MethodId: 10},
			[]byte{0, 20, 0, 40, 1, 0x94, 2, 'N', 'F', 0, 50, 0, 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.m.Append(nil); !bytes.Equal(got, tt.want) {
				t.Fatalf("Append = % x, want % x", got, tt.want)
			}
			got, err := DecodeMethod(tt.want)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.m) {
				t.Fatalf("decoded %#v, want %#v", got, tt.m)
			}
		})
	}
}

func TestDecodeMethodErrors(t *testing.T) {
	tests := []struct {
		name     string
		payload  []byte
		code     uint16
		class    uint16
		method   uint16
		textPart string
	}{
		{"empty", nil, FrameError, 0, 0, "unknown_frame"},
		{"short ids", []byte{0, 60}, FrameError, 0, 0, "all octets = <<0,60>>"},
		{"unknown class", []byte{0, 99, 0, 1}, NotImplemented, 99, 1, "unknown method id 99.1"},
		{"unknown method", []byte{0, 60, 3, 0xe7}, NotImplemented, 60, 999, "unknown method id 60.999"},
		{"truncated publish", []byte{0, 60, 0, 40, 0}, FrameError, 60, 40, "FRAME_ERROR - cannot decode <<0>>"},
		{"truncated queue.declare", []byte{0, 50, 0, 10, 0, 0, 5, 'a'}, FrameError, 50, 10, "cannot decode <<0,0,5,97>>"},
		{"trailing bytes qos", []byte{0, 60, 0, 10, 0, 0, 0, 0, 0, 1, 0, 99, 99}, FrameError, 60, 10, "cannot decode <<0,0,0,0,0,1,0,99,99>>"},
		{"trailing byte on empty method", []byte{0, 90, 0, 10, 1}, FrameError, 90, 10, "cannot decode <<1>>"},
		{"table length past end", []byte{0, 40, 0, 10, 0, 0, 1, 'x', 6, 'd', 'i', 'r', 'e', 'c', 't', 0, 0, 0, 0, 9}, FrameError, 40, 10, "cannot decode"},
		{"table bad value type", []byte{0, 40, 0, 10, 0, 0, 1, 'x', 6, 'd', 'i', 'r', 'e', 'c', 't', 0, 0, 0, 0, 3, 1, 'k', 'Z'}, FrameError, 40, 10, "cannot decode"},
		{"2^31 longstr", []byte{0, 10, 0, 20, 0x80, 0, 0, 0}, FrameError, 10, 20, "cannot decode"},
		{"max longstr", []byte{0, 10, 0, 20, 0xff, 0xff, 0xff, 0xff, 1}, FrameError, 10, 20, "cannot decode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := DecodeMethod(tt.payload)
			if m != nil {
				t.Fatalf("got method %#v with error %v", m, err)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not *Error", err)
			}
			if e.Code != tt.code || e.ClassID != tt.class || e.MethodID != tt.method || !strings.Contains(e.Text, tt.textPart) {
				t.Fatalf("got %d %q %d.%d, want %d %q %d.%d", e.Code, e.Text, e.ClassID, e.MethodID, tt.code, tt.textPart, tt.class, tt.method)
			}
			if !e.Hard() {
				t.Fatalf("decode errors must be connection exceptions")
			}
		})
	}
}

// Every strict prefix of every valid method payload fails cleanly, and so
// does every payload with a byte appended.
func TestDecodeMethodTruncations(t *testing.T) {
	for _, m := range sampleMethods() {
		payload := m.Append(nil)
		for i := 4; i < len(payload); i++ {
			if _, err := DecodeMethod(payload[:i]); err == nil {
				t.Fatalf("%s: prefix of %d/%d bytes decoded without error", m.Name(), i, len(payload))
			}
		}
		if _, err := DecodeMethod(append(payload[:len(payload):len(payload)], 0)); err == nil {
			t.Fatalf("%s: trailing byte accepted", m.Name())
		}
	}
}

func TestStructDecodeWrongIDs(t *testing.T) {
	var p BasicPublish
	err := p.Decode((&BasicAck{DeliveryTag: 1}).Append(nil))
	var e *Error
	if !errors.As(err, &e) || e.Code != CommandInvalid || e.ClassID != 60 || e.MethodID != 80 {
		t.Fatalf("got %v", err)
	}
}

func TestShortstrTruncatedTo255(t *testing.T) {
	for _, tc := range []struct {
		name string
		text string
		want int // bytes kept
	}{
		{"ascii", strings.Repeat("x", 300), 255},
		// 254 ASCII bytes then 2-byte characters: the character at 254-255 does not fit whole.
		{"2-byte char across the cut", strings.Repeat("x", 254) + strings.Repeat("é", 10), 254},
		{"3-byte chars", strings.Repeat("€", 100), 255},                    // 85 whole characters
		{"4-byte char across the cut", "x" + strings.Repeat("😀", 80), 253}, // 1 + 63*4
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &ChannelClose{ReplyCode: 404, ReplyText: tc.text}
			got, err := DecodeMethod(m.Append(nil))
			if err != nil {
				t.Fatal(err)
			}
			txt := got.(*ChannelClose).ReplyText
			if len(txt) != tc.want || txt != tc.text[:tc.want] || !utf8.ValidString(txt) {
				t.Fatalf("reply text has %d bytes (valid UTF-8: %v), want %d", len(txt), utf8.ValidString(txt), tc.want)
			}
		})
	}
}

func TestErrorType(t *testing.T) {
	tests := []struct {
		code uint16
		name string
		hard bool
	}{
		{ReplySuccess, "REPLY_SUCCESS", false},
		{ContentTooLarge, "CONTENT_TOO_LARGE", false},
		{NoRoute, "NO_ROUTE", false},
		{NoConsumers, "NO_CONSUMERS", false},
		{ConnectionForced, "CONNECTION_FORCED", true},
		{InvalidPath, "INVALID_PATH", true},
		{AccessRefused, "ACCESS_REFUSED", false},
		{NotFound, "NOT_FOUND", false},
		{ResourceLocked, "RESOURCE_LOCKED", false},
		{PreconditionFailed, "PRECONDITION_FAILED", false},
		{FrameError, "FRAME_ERROR", true},
		{SyntaxError, "SYNTAX_ERROR", true},
		{CommandInvalid, "COMMAND_INVALID", true},
		{ChannelError, "CHANNEL_ERROR", true},
		{UnexpectedFrame, "UNEXPECTED_FRAME", true},
		{ResourceError, "RESOURCE_ERROR", true},
		{NotAllowed, "NOT_ALLOWED", true},
		{NotImplemented, "NOT_IMPLEMENTED", true},
		{InternalError, "INTERNAL_ERROR", true},
		{999, "UNKNOWN_999", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ReplyName(tt.code); got != tt.name {
				t.Fatalf("ReplyName(%d) = %q", tt.code, got)
			}
			e := Errorf(tt.code, "no queue '%s' in vhost '%s'", "q", "/")
			if e.Text != tt.name+" - no queue 'q' in vhost '/'" {
				t.Fatalf("Text = %q", e.Text)
			}
			if e.Hard() != tt.hard {
				t.Fatalf("Hard() = %v", e.Hard())
			}
			if !strings.Contains(e.Error(), e.Text) {
				t.Fatalf("Error() = %q", e.Error())
			}
		})
	}
}
