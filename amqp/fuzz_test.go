package amqp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"
)

// seedTables are valid encodings of tables with every type code.
func seedTables() [][]byte {
	tables := []Table{
		{},
		{"k": "v"},
		allProps.Headers,
		{"t": true, "b": int8(-1), "B": uint8(1), "s": int16(-2), "u": uint16(2), "I": int32(-3), "i": uint32(3),
			"l": int64(-4), "f": float32(1.5), "d": float64(2.5), "D": Decimal{Scale: 2, Value: -5}, "S": "str",
			"x": []byte{1, 2}, "A": []any{int32(1), []any{nil}, Table{"n": "m"}}, "T": time.Unix(1700000000, 0),
			"F": Table{"F": Table{}}, "V": nil},
		{"x-death": []any{Table{"count": int64(1), "reason": "expired", "queue": "q", "time": time.Unix(1, 0),
			"exchange": "", "routing-keys": []any{"rk"}}}},
	}
	var out [][]byte
	for _, tb := range tables {
		b, err := AppendTable(nil, tb)
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	return out
}

func seedHeaders() [][]byte {
	return [][]byte{
		AppendContentHeader(nil, ClassBasic, 0, nil),
		AppendContentHeader(nil, ClassBasic, 1<<40, &allProps),
		AppendContentHeader(nil, ClassBasic, 5, &Properties{DeliveryMode: 2, Expiration: "100"}),
		AppendContentHeader(nil, ClassBasic, 5, &Properties{Headers: Table{}}),
	}
}

func FuzzReadFrame(f *testing.F) {
	var stream []byte
	stream = AppendMethodFrame(stream, 1, &BasicPublish{Exchange: "x", RoutingKey: "k", Mandatory: true})
	stream = AppendContent(stream, 1, seedHeaders()[1], bytes.Repeat([]byte("b"), 300), FrameMinSize)
	stream = AppendHeartbeat(stream)
	f.Add(stream, uint32(0), uint8(16))
	f.Add(stream, uint32(FrameMinSize), uint8(255))
	f.Add(AppendFrame(nil, FrameBody, 7, make([]byte, 5000)), uint32(0), uint8(64))
	f.Add(AppendHeartbeat(nil), uint32(0), uint8(0))
	f.Add([]byte{FrameBody, 0, 1, 0xff, 0xff, 0xff, 0xff, 0}, uint32(0), uint8(16))
	f.Fuzz(func(t *testing.T, data []byte, max uint32, bufSize uint8) {
		fr := NewFrameReader(bytes.NewReader(data), int(bufSize))
		fr.SetMaxFrameSize(max)
		off := 0
		for {
			fm, err := fr.ReadFrame()
			if err != nil {
				var e *Error
				if !errors.As(err, &e) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				if errors.Is(err, io.EOF) && off != len(data) {
					t.Fatalf("EOF at %d of %d bytes", off, len(data))
				}
				return
			}
			n := len(fm.Payload) + FrameOverhead
			if max != 0 && n > int(max) {
				t.Fatalf("frame of %d bytes passed max %d", n, max)
			}
			// Re-encoding reproduces the bytes consumed.
			if re := AppendFrame(nil, fm.Type, fm.Channel, fm.Payload); !bytes.Equal(re, data[off:off+n]) {
				t.Fatalf("frame at %d re-encodes differently", off)
			}
			off += n
		}
	})
}

func FuzzDecodeMethod(f *testing.F) {
	for _, m := range sampleMethods() {
		f.Add(m.Append(nil))
	}
	f.Add([]byte{0, 60, 0, 40, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 99, 0, 1})
	f.Fuzz(func(t *testing.T, payload []byte) {
		m, err := DecodeMethod(payload)
		if err != nil {
			var e *Error
			if m != nil || !errors.As(err, &e) || !e.Hard() {
				t.Fatalf("bad failure: %v %v", m, err)
			}
			return
		}
		// Decoding consumed everything, so the encoding cannot be longer
		// than the input except by table canonicalisation (never longer).
		re := m.Append(nil)
		if len(re) > len(payload) {
			t.Fatalf("re-encoded %d bytes from %d", len(re), len(payload))
		}
		m2, err := DecodeMethod(re)
		if err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if re2 := m2.Append(nil); !bytes.Equal(re2, re) {
			t.Fatalf("encoding is not stable:\n% x\n% x", re, re2)
		}
		if m2.Name() != m.Name() {
			t.Fatalf("method changed: %s -> %s", m.Name(), m2.Name())
		}
	})
}

func FuzzDecodeTable(f *testing.F) {
	for _, b := range seedTables() {
		f.Add(b)
	}
	f.Add([]byte{0x80, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		tb, n, err := DecodeTable(b)
		vn, verr := validateTable(b, 0)
		if (err == nil) != (verr == nil) || (err == nil && n != vn) {
			t.Fatalf("DecodeTable (%d, %v) and validateTable (%d, %v) disagree", n, err, vn, verr)
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code != FrameError {
				t.Fatalf("error %v is not a FrameError", err)
			}
			return
		}
		if n < 4 || n > len(b) || int(binary.BigEndian.Uint32(b))+4 != n {
			t.Fatalf("consumed %d of %d", n, len(b))
		}
		re, err := AppendTable(nil, tb)
		if err != nil {
			t.Fatalf("decoded table does not encode: %v", err)
		}
		if len(re) > n {
			t.Fatalf("re-encoded %d bytes from %d", len(re), n)
		}
		tb2, n2, err := DecodeTable(re)
		if err != nil || n2 != len(re) {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if !tb2.Equal(tb) {
			t.Fatalf("round trip changed the table:\n%#v\n%#v", tb, tb2)
		}
		if re2, _ := AppendTable(nil, tb2); !bytes.Equal(re2, re) {
			t.Fatal("encoding is not stable")
		}
	})
}

func FuzzDecodeContentHeader(f *testing.F) {
	for _, h := range seedHeaders() {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		h, err := DecodeContentHeader(payload)
		s, serr := ScanContentHeader(payload)
		if (err == nil) != (serr == nil) {
			t.Fatalf("DecodeContentHeader (%v) and ScanContentHeader (%v) disagree", err, serr)
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code != FrameError || !errors.As(serr, &e) || e.Code != FrameError {
				t.Fatalf("errors are not FrameErrors: %v / %v", err, serr)
			}
			return
		}
		if s.ClassID != h.ClassID || s.BodySize != h.BodySize || s.DeliveryMode != h.Props.DeliveryMode ||
			s.Priority != h.Props.Priority || s.Expiration != h.Props.Expiration || s.UserID != h.Props.UserID ||
			(s.HeadersRaw != nil) != (h.Flags&FlagHeaders != 0) {
			t.Fatalf("summary %+v disagrees with %+v", s, h)
		}
		if s.HeadersRaw != nil {
			tb, n, err := DecodeTable(s.HeadersRaw)
			if err != nil || n != len(s.HeadersRaw) || !tb.Equal(h.Props.Headers) {
				t.Fatal("HeadersRaw is not the headers table")
			}
		}
		re := AppendContentHeader(nil, h.ClassID, h.BodySize, &h.Props)
		h2, err := DecodeContentHeader(re)
		if err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if !h2.Props.Headers.Equal(h.Props.Headers) || h2.BodySize != h.BodySize || h2.ClassID != h.ClassID {
			t.Fatal("round trip changed the header")
		}
		p1, p2 := h.Props, h2.Props
		p1.Headers, p2.Headers = nil, nil
		if p1.Timestamp.IsZero() { // the zero time is "absent" on encode
			p1.Timestamp = time.Time{}
		}
		if !propsEqual(p1, p2) {
			t.Fatalf("round trip changed the properties:\n%+v\n%+v", p1, p2)
		}
		if re2 := AppendContentHeader(nil, h2.ClassID, h2.BodySize, &h2.Props); !bytes.Equal(re2, re) {
			t.Fatal("encoding is not stable")
		}
	})
}
