package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
)

// rawHeader builds a basic content header with flags and raw property bytes, for what
// amqp.AppendContentHeader cannot express (a zero delivery mode, present empty strings).
func rawHeader(bodySize int, flags uint16, props ...[]byte) []byte {
	h := binary.BigEndian.AppendUint16(nil, amqp.ClassBasic)
	h = append(h, 0, 0)
	h = binary.BigEndian.AppendUint64(h, uint64(bodySize))
	h = binary.BigEndian.AppendUint16(h, flags)
	for _, p := range props {
		h = append(h, p...)
	}
	return h
}

func shortstr(s string) []byte { return append([]byte{byte(len(s))}, s...) }

// toV3 is the record a publish through exchange and routing key makes.
func toV3(t testing.TB, header, body []byte, annotate bool, exchange, rk string) []byte {
	rec, err := AppendAMQP10Head(nil, header, len(body), annotate, exchange, rk)
	if err != nil {
		t.Fatalf("AppendAMQP10Head: %v", err)
	}
	return append(rec, body...)
}

// want091 is what a 0-9-1 consumer must receive for a published header: the same properties,
// plus x-stream-offset among the headers.
func want091(t testing.TB, header []byte, offset int64) amqp.ContentHeader {
	h, err := amqp.DecodeContentHeader(header)
	if err != nil {
		t.Fatalf("test header: %v", err)
	}
	hs := amqp.Table{StreamOffsetHeader: offset}
	for k, v := range h.Props.Headers {
		if k != StreamOffsetHeader {
			hs[k] = v
		}
	}
	h.Props.Headers = hs
	h.Flags |= amqp.FlagHeaders
	return h
}

// sameHeader compares content headers by their encoding (sorted keys, floats by their bits:
// a NaN header equals itself).
func sameHeader(a, b amqp.ContentHeader) bool {
	return a.ClassID == b.ClassID && a.BodySize == b.BodySize && a.Flags == b.Flags &&
		bytes.Equal(amqp.AppendContentHeader(nil, a.ClassID, a.BodySize, &a.Props), amqp.AppendContentHeader(nil, b.ClassID, b.BodySize, &b.Props))
}

func TestAMQP10RoundTrip(t *testing.T) {
	ts := time.Unix(1700000000, 0)
	nested := amqp.Table{
		"str": "v", "int": int32(-7), "arr": []any{int64(1), "two", amqp.Table{"deep": []any{}}},
		"tbl": amqp.Table{"a": true, "b": nil},
	}
	allTypes := amqp.Table{
		"bool-t": true, "bool-f": false, "int8": int8(-8), "uint8": uint8(200), "int16": int16(-300),
		"uint16": uint16(60000), "int32": int32(math.MinInt32), "uint32": uint32(math.MaxUint32),
		"int64": int64(math.MinInt64), "float32": float32(1.5), "float64": math.Inf(-1),
		"decimal": amqp.Decimal{Scale: 2, Value: -12345}, "decimal-max": amqp.Decimal{Scale: 255, Value: math.MinInt32},
		"longstr": "hello, wörld", "long-longstr": strings.Repeat("x", 300), "empty": "",
		"bytes": []byte{0, 1, 2, 255}, "big-bytes": bytes.Repeat([]byte{7}, 70000), "no-bytes": []byte{},
		"time": ts, "void": nil, "array": []any{}, "table": amqp.Table{}, "nested": nested,
		"": "empty key", strings.Repeat("k", 255): "longest key",
	}
	body := []byte("0123456789abcdef")
	big := bytes.Repeat([]byte("b"), 100000)
	hdr := func(b []byte, p amqp.Properties) []byte {
		return amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(b)), &p)
	}
	tests := []struct {
		name     string
		header   []byte
		body     []byte
		exchange string
		rk       string
		annotate bool
		maxLen   int // largest record, 0 = unchecked
	}{
		{"16 B persistent, own stream", hdr(body, amqp.Properties{DeliveryMode: 2}), body, "", "s", false, 28},
		{"no properties", hdr(body, amqp.Properties{}), body, "", "s", false, 21},
		{"empty body", hdr(nil, amqp.Properties{DeliveryMode: 1}), []byte{}, "", "s", false, 0},
		{"100 kB body", hdr(big, amqp.Properties{DeliveryMode: 2}), big, "", "s", false, 0},
		{"named exchange and key", hdr(body, amqp.Properties{DeliveryMode: 2}), body, "orders", "eu.de", true, 0},
		{"every property", hdr(body, amqp.Properties{
			ContentType: "application/json", ContentEncoding: "gzip", Headers: amqp.Table{"k": "v"},
			DeliveryMode: 2, Priority: 9, CorrelationID: "corr", ReplyTo: "amq.rabbitmq.reply-to",
			Expiration: "60000", MessageID: "id-1", Timestamp: ts, Type: "order.created",
			UserID: "guest", AppID: "shop", ClusterID: "c1"}), body, "x", "k", true, 0},
		{"each property alone: content-type", hdr(body, amqp.Properties{ContentType: "text/plain"}), body, "", "s", false, 0},
		{"each property alone: priority", hdr(body, amqp.Properties{Priority: 3}), body, "", "s", false, 0},
		{"each property alone: expiration", hdr(body, amqp.Properties{Expiration: "5"}), body, "", "s", false, 0},
		{"each property alone: timestamp", hdr(body, amqp.Properties{Timestamp: ts}), body, "", "s", false, 0},
		{"each property alone: user-id", hdr(body, amqp.Properties{UserID: "u"}), body, "", "s", false, 0},
		{"each property alone: cluster-id", hdr(body, amqp.Properties{ClusterID: "c"}), body, "", "s", false, 0},
		{"every header value type", hdr(body, amqp.Properties{Headers: allTypes}), body, "", "s", false, 0},
		{"x-stream-offset from the publisher is replaced", hdr(body, amqp.Properties{Headers: amqp.Table{StreamOffsetHeader: "mine"}}), body, "", "s", false, 0},
		{"delivery mode 0 and 7, present empty strings", rawHeader(len(body),
			amqp.FlagContentType|amqp.FlagDeliveryMode|amqp.FlagMessageID|amqp.FlagAppID,
			shortstr(""), []byte{0}, shortstr(""), shortstr("")), body, "", "s", false, 0},
		{"delivery mode 7 with a priority", rawHeader(len(body), amqp.FlagDeliveryMode|amqp.FlagPriority, []byte{7}, []byte{0}), body, "", "s", false, 0},
		{"timestamp beyond the millisecond range", rawHeader(len(body), amqp.FlagTimestamp,
			binary.BigEndian.AppendUint64(nil, math.MaxUint64)), body, "", "s", false, 0},
		{"header timestamp beyond the millisecond range", rawHeader(len(body), amqp.FlagHeaders,
			binary.BigEndian.AppendUint32(nil, 11), append(shortstr("t"), binary.BigEndian.AppendUint64([]byte{'T'}, math.MaxUint64)...)),
			body, "", "s", false, 0},
		{"'L' header (py-amqp) reads as 'l'", rawHeader(len(body), amqp.FlagHeaders,
			binary.BigEndian.AppendUint32(nil, 11), append(shortstr("n"), binary.BigEndian.AppendUint64([]byte{'L'}, 1<<40)...)),
			body, "", "s", false, 0},
		{"empty headers table", rawHeader(len(body), amqp.FlagHeaders, []byte{0, 0, 0, 0}), body, "", "s", false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := toV3(t, tt.header, tt.body, tt.annotate, tt.exchange, tt.rk)
			if tt.maxLen > 0 && len(rec) > tt.maxLen {
				t.Errorf("record is %d bytes, want at most %d", len(rec), tt.maxLen)
			}
			if !IsAMQP10(rec) {
				t.Fatal("not recognised as AMQP 1.0")
			}
			m, err := DecodeAMQP091(rec, 42, true)
			if err != nil {
				t.Fatal(err)
			}
			if m.HasExchange != tt.annotate || m.HasRoutingKey != tt.annotate ||
				(tt.annotate && (m.Exchange != tt.exchange || m.RoutingKey != tt.rk)) {
				t.Errorf("routing %q %v / %q %v", m.Exchange, m.HasExchange, m.RoutingKey, m.HasRoutingKey)
			}
			if !bytes.Equal(m.Body, tt.body) {
				t.Errorf("body %d bytes, want %d", len(m.Body), len(tt.body))
			}
			got, err := amqp.DecodeContentHeader(m.Header)
			if err != nil {
				t.Fatalf("delivered header: %v", err)
			}
			want := want091(t, tt.header, 42)
			want.BodySize = uint64(len(tt.body))
			if !sameHeader(got, want) {
				t.Errorf("delivered\n%+v\nwant\n%+v", got, want)
			}
			rec[len(rec)-1] ^= 0xff // decoding copied: the reader's buffer may change
			if len(tt.body) > 0 && !bytes.Equal(m.Body, tt.body) {
				t.Error("decoded message aliases the record")
			}
			rec[len(rec)-1] ^= 0xff
			// Cut anywhere before the end: an error, never a panic or a wrong message.
			for n := 0; n < len(rec)-len(tt.body); n++ {
				if _, err := DecodeAMQP091(rec[:n], 0, true); err == nil && n > 0 {
					t.Fatalf("a record cut at %d of %d bytes decoded", n, len(rec))
				}
			}
		})
	}
}

// TestAMQP10Sections checks the bytes RabbitMQ's readers depend on: the sections, their
// order and their types.
func TestAMQP10Sections(t *testing.T) {
	h := amqp.AppendContentHeader(nil, amqp.ClassBasic, 2, &amqp.Properties{
		ContentType: "text/plain", DeliveryMode: 2, Headers: amqp.Table{"k": int32(1)}, Type: "t"})
	rec := toV3(t, h, []byte("hi"), true, "ex", "rk")
	want := []byte{
		0x00, 0x53, 0x70, 0xc0, 0x02, 0x01, 0x41, // header [durable=true]
		0x00, 0x53, 0x72, 0xc1, 0x35, 0x06, // message-annotations, 3 pairs
		0xa3, 10, 'x', '-', 'e', 'x', 'c', 'h', 'a', 'n', 'g', 'e', 0xa1, 2, 'e', 'x',
		0xa3, 13, 'x', '-', 'r', 'o', 'u', 't', 'i', 'n', 'g', '-', 'k', 'e', 'y', 0xa1, 2, 'r', 'k',
		0xa3, 12, 'x', '-', 'b', 'a', 's', 'i', 'c', '-', 't', 'y', 'p', 'e', 0xa1, 1, 't',
		0x00, 0x53, 0x73, 0xc0, 0x13, 0x07, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, // properties: 6 nulls,
		0xa3, 10, 't', 'e', 'x', 't', '/', 'p', 'l', 'a', 'i', 'n', // content-type symbol
		0x00, 0x53, 0x74, 0xc1, 0x09, 0x02, 0xa1, 1, 'k', 0x71, 0, 0, 0, 1, // application-properties
		0x00, 0x53, 0x75, 0xa0, 2, 'h', 'i', // data
	}
	if !bytes.Equal(rec, want) {
		t.Fatalf("record\n% x\nwant\n% x", rec, want)
	}
}

// TestDecodeAMQP10FromOthers decodes AMQP 1.0 encodings Warren does not write but other
// writers (RabbitMQ 3.10, stream-protocol clients) do: symbolic descriptors, x-basic-*
// annotations instead of the header, 32-bit forms, several data sections, an amqp-value body.
func TestDecodeAMQP10FromOthers(t *testing.T) {
	sym := func(s string) []byte { return append([]byte{0xa3, byte(len(s))}, s...) }
	str := func(s string) []byte { return append([]byte{0xa1, byte(len(s))}, s...) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	// compound8 and compound32 make a list or map (code) of count elements.
	compound8 := func(code byte, count int, elems ...[]byte) []byte {
		e := cat(elems...)
		return append([]byte{code, byte(len(e) + 1), byte(count)}, e...)
	}
	compound32 := func(code byte, count int, elems ...[]byte) []byte {
		e := cat(elems...)
		b := binary.BigEndian.AppendUint32([]byte{code}, uint32(len(e)+4))
		return append(binary.BigEndian.AppendUint32(b, uint32(count)), e...)
	}
	section := func(code byte, v []byte) []byte { return append([]byte{0x00, 0x53, code}, v...) }
	nulls := func(n int) []byte { return bytes.Repeat([]byte{0x40}, n) }
	tests := []struct {
		name  string
		rec   []byte
		check func(t *testing.T, h amqp.ContentHeader, body []byte)
	}{
		{"RabbitMQ 3.10: x-basic annotations, symbolic data descriptor", cat(
			section(0x72, compound8(0xc1, 4, sym("x-basic-delivery-mode"), []byte{0x50, 2}, sym("x-basic-priority"), []byte{0x50, 5})),
			[]byte{0x00}, sym("amqp:data:binary"), []byte{0xa0, 1, 'b'}),
			func(t *testing.T, h amqp.ContentHeader, body []byte) {
				if h.Props.DeliveryMode != 2 || h.Props.Priority != 5 || string(body) != "b" {
					t.Errorf("%+v %q", h.Props, body)
				}
			}},
		{"32-bit list and map, ulong message-id, uuid correlation-id, ttl", cat(
			section(0x70, compound32(0xd0, 3, []byte{0x42, 0x40, 0x70, 0, 0, 0x03, 0xe8})),
			section(0x73, compound32(0xd0, 6, []byte{0x53, 7}, nulls(4), []byte{0x98, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})),
			section(0x74, compound32(0xd1, 2, str("a"), []byte{0x55, 0xff})),
			section(0x75, []byte{0xb0, 0, 0, 0, 1, 'x'})),
			func(t *testing.T, h amqp.ContentHeader, body []byte) {
				p := h.Props
				if p.DeliveryMode != 1 || p.Expiration != "1000" || p.MessageID != "7" ||
					p.CorrelationID != "urn:uuid:01020304-0506-0708-090a-0b0c0d0e0f10" || p.Headers["a"] != int64(-1) || string(body) != "x" {
					t.Errorf("%+v %q", p, body)
				}
			}},
		{"two data sections: the encoded sections, type amqp-1.0", cat(
			section(0x75, []byte{0xa0, 1, 'a'}), section(0x75, []byte{0xa0, 1, 'b'})),
			func(t *testing.T, h amqp.ContentHeader, body []byte) {
				if h.Props.Type != "amqp-1.0" || !bytes.Equal(body, []byte{0x00, 0x53, 0x75, 0xa0, 1, 'a', 0x00, 0x53, 0x75, 0xa0, 1, 'b'}) {
					t.Errorf("%+v % x", h.Props, body)
				}
			}},
		{"amqp-value body, group-id as app-id, char and decimal32 headers left out, array", cat(
			section(0x73, compound8(0xc0, 11, nulls(10), str("app"))),
			section(0x74, compound8(0xc1, 6, str("c"), []byte{0x73, 0, 0, 0, 'c'}, str("d"), []byte{0x74, 0, 0, 0, 1},
				str("arr"), []byte{0xe0, 0x04, 0x02, 0x54, 0x01, 0xff})),
			section(0x77, str("hi"))),
			func(t *testing.T, h amqp.ContentHeader, body []byte) {
				p := h.Props
				_, hasC := p.Headers["c"]
				_, hasD := p.Headers["d"]
				if p.AppID != "app" || p.Type != "amqp-1.0" || hasC || hasD ||
					!reflect.DeepEqual(p.Headers["arr"], []any{int32(1), int32(-1)}) || string(body) != "\x00\x53\x77\xa1\x02hi" {
					t.Errorf("%+v % x", p, body)
				}
			}},
		{"no body section", section(0x70, compound8(0xc0, 1, []byte{0x41})), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := DecodeAMQP091(tt.rec, 0, false)
			if tt.check == nil {
				if err == nil {
					t.Fatal("decoded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			h, err := amqp.DecodeContentHeader(m.Header)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, h, m.Body)
		})
	}
	for _, bad := range [][]byte{
		{0x01}, {0x00}, {0x00, 0x53}, {0x00, 0x53, 0x99, 0x40}, {0x00, 0x53, 0x75, 0xa1, 0},
		{0x00, 0x53, 0x74, 0xc0, 0x01, 0x00}, {0x00, 0x53, 0x72, 0xc1, 0x02, 0x01, 0x40},
		{0x00, 0x53, 0x75, 0xb0, 0xff, 0xff, 0xff, 0xff},
	} {
		if _, err := DecodeAMQP091(bad, 0, true); err == nil {
			t.Errorf("% x decoded", bad)
		}
	}
}

func TestAMQP10HeadRefusesMalformed(t *testing.T) {
	for _, h := range [][]byte{
		nil, {0, 60}, rawHeader(0, 1), // unknown flag bit
		rawHeader(0, amqp.FlagContentType, []byte{5, 'a'}),              // truncated
		rawHeader(0, amqp.FlagDeliveryMode, []byte{2, 2}),               // trailing bytes
		rawHeader(0, amqp.FlagHeaders, []byte{0, 0, 0, 3, 1, 'k', '?'}), // unknown field type
	} {
		if _, err := AppendAMQP10Head(nil, h, 0, false, "", ""); err == nil {
			t.Errorf("% x encoded", h)
		}
	}
}

// FuzzAMQP10Head feeds content headers to the encoder: what amqp decodes must come back to a
// 0-9-1 consumer as it was published; nothing panics.
func FuzzAMQP10Head(f *testing.F) {
	f.Add(amqp.AppendContentHeader(nil, amqp.ClassBasic, 3, &amqp.Properties{DeliveryMode: 2, Headers: amqp.Table{
		"a": []any{int8(1), amqp.Table{"b": amqp.Decimal{Scale: 1, Value: 5}}}, "t": time.Unix(5, 0)}}))
	f.Add(amqp.AppendContentHeader(nil, amqp.ClassBasic, 3, &amqp.Properties{ContentType: "c", MessageID: "m", Priority: 1, AppID: "a"}))
	f.Add(rawHeader(3, amqp.FlagDeliveryMode|amqp.FlagTimestamp, []byte{9}, bytes.Repeat([]byte{0xff}, 8)))
	f.Fuzz(func(t *testing.T, header []byte) {
		body := []byte("abc")
		rec, err := AppendAMQP10Head(nil, header, len(body), true, "e", "k")
		_, werr := amqp.DecodeContentHeader(header)
		if err != nil {
			if werr == nil && len(header) >= 2 && binary.BigEndian.Uint16(header) == amqp.ClassBasic {
				t.Fatalf("valid header refused: %v", err)
			}
			return
		}
		m, err := DecodeAMQP091(append(rec, body...), 7, true)
		if err != nil {
			t.Fatalf("own record refused: %v", err)
		}
		if werr != nil {
			return
		}
		got, err := amqp.DecodeContentHeader(m.Header)
		if err != nil {
			t.Fatalf("delivered header: %v", err)
		}
		w := want091(t, header, 7)
		w.ClassID, w.BodySize = amqp.ClassBasic, 3
		if !sameHeader(got, w) || m.Exchange != "e" || m.RoutingKey != "k" || string(m.Body) != "abc" {
			t.Fatalf("delivered\n%+v\nwant\n%+v", got, w)
		}
	})
}

// FuzzDecodeAMQP091 feeds arbitrary records to the decoder: never a panic, and a record it
// accepts gives a content header amqp can decode.
func FuzzDecodeAMQP091(f *testing.F) {
	h := amqp.AppendContentHeader(nil, amqp.ClassBasic, 2, &amqp.Properties{
		ContentType: "text/plain", DeliveryMode: 2, Priority: 1, Timestamp: time.Unix(9, 0), MessageID: "m",
		Headers: amqp.Table{"k": int32(1), "a": []any{"x", amqp.Table{"d": amqp.Decimal{Scale: 1, Value: 1}}}}})
	f.Add(toV3(f, h, []byte("hi"), true, "ex", "rk"))
	f.Add(toV3(f, h, []byte("hi"), false, "", ""))
	f.Add([]byte{0x00, 0x53, 0x74, 0xc1, 0x08, 0x02, 0xa1, 1, 'a', 0xe0, 0x03, 0x02, 0x40})
	f.Fuzz(func(t *testing.T, rec []byte) {
		m, err := DecodeAMQP091(rec, 1, true)
		if err != nil {
			return
		}
		if _, err := amqp.DecodeContentHeader(m.Header); err != nil {
			t.Fatalf("accepted record gives a bad content header: %v\n% x", err, m.Header)
		}
		if len(m.Header) > maxHeader091(len(rec)) {
			t.Fatalf("a %d-byte record gives a %d-byte content header", len(rec), len(m.Header))
		}
	})
}

// TestDecodeAMQP091ZeroWidthArrays: arrays of zero-width elements (no input bytes each) in a
// list must not expand without bound; a record whose header would pass the budget is refused,
// and a small legitimate array of them still converts.
func TestDecodeAMQP091ZeroWidthArrays(t *testing.T) {
	// app-properties {"a": [ array32 of 65536 ulong0 ] x n } in a list32, then a data section.
	rec := func(n, count int, ctor byte) []byte {
		el := []byte{0xf0}
		el = binary.BigEndian.AppendUint32(el, 5)
		el = binary.BigEndian.AppendUint32(el, uint32(count))
		el = append(el, ctor)
		var items []byte
		for range n {
			items = append(items, el...)
		}
		list := []byte{0xd0}
		list = binary.BigEndian.AppendUint32(list, uint32(4+len(items)))
		list = binary.BigEndian.AppendUint32(list, uint32(n))
		list = append(list, items...)
		entries := append([]byte{0xa1, 1, 'a'}, list...)
		m := []byte{0x00, 0x53, 0x74, 0xd1}
		m = binary.BigEndian.AppendUint32(m, uint32(4+len(entries)))
		m = binary.BigEndian.AppendUint32(m, 2)
		m = append(m, entries...)
		return append(m, 0x00, 0x53, 0x75, 0xa0, 2, 'h', 'i')
	}
	tests := []struct {
		name        string
		n, count    int
		ctor        byte
		wantErr     bool
		wantEntries int
	}{
		{"ulong0 bomb", 2400, 1 << 16, 0x44, true, 0},
		{"list0 bomb", 2400, 1 << 16, 0x45, true, 0},
		{"null bomb", 100, 1 << 16, 0x40, true, 0},
		{"small null arrays", 2, 100, 0x40, false, 100},
		{"small uint0 arrays", 3, 10, 0x43, false, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rec(tt.n, tt.count, tt.ctor)
			m, err := DecodeAMQP091(r, 1, false)
			if tt.wantErr {
				if !errors.Is(err, errBadMessage) {
					t.Fatalf("a %d-byte record: err %v, header %d bytes; want errBadMessage", len(r), err, len(m.Header))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			h, err := amqp.DecodeContentHeader(m.Header)
			if err != nil {
				t.Fatal(err)
			}
			l, ok := h.Props.Headers["a"].([]any)
			if !ok || len(l) != tt.n {
				t.Fatalf("headers %v", h.Props.Headers)
			}
			for _, e := range l {
				if a, ok := e.([]any); !ok || len(a) != tt.wantEntries {
					t.Fatalf("element %v, want an array of %d", e, tt.wantEntries)
				}
			}
			if string(m.Body) != "hi" {
				t.Fatalf("body %q", m.Body)
			}
		})
	}
}
