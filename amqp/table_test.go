package amqp

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"runtime"
	"testing"
	"time"
)

// tbl wraps encoded entries in a table length prefix.
func tbl(entries ...[]byte) []byte {
	body := bytes.Join(entries, nil)
	return append(appendU32(nil, uint32(len(body))), body...)
}

func entry(key string, value ...byte) []byte {
	return append(appendShortstr(nil, key), value...)
}

func TestDecodeTableTypeCodes(t *testing.T) {
	tests := []struct {
		name string
		enc  []byte // the value bytes, type code first
		want any
	}{
		{"t true", []byte{'t', 1}, true},
		{"t false", []byte{'t', 0}, false},
		{"b int8", []byte{'b', 0xfe}, int8(-2)},
		{"B uint8", []byte{'B', 0xfe}, uint8(254)},
		{"s int16 (RabbitMQ, not shortstr)", []byte{'s', 0xff, 0xfe}, int16(-2)},
		{"u uint16", []byte{'u', 0xff, 0xfe}, uint16(65534)},
		{"I int32", []byte{'I', 0xff, 0xff, 0xff, 0xfe}, int32(-2)},
		{"i uint32", []byte{'i', 0xff, 0xff, 0xff, 0xfe}, uint32(math.MaxUint32 - 1)},
		{"l int64 (RabbitMQ)", []byte{'l', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe}, int64(-2)},
		{"f float32", append([]byte{'f'}, appendU32(nil, math.Float32bits(1.25))...), float32(1.25)},
		{"d float64", append([]byte{'d'}, appendU64(nil, math.Float64bits(-0.5))...), float64(-0.5)},
		{"D decimal signed", []byte{'D', 2, 0xff, 0xff, 0xff, 0xfe}, Decimal{Scale: 2, Value: -2}},
		{"S longstr", []byte{'S', 0, 0, 0, 3, 'a', 'b', 'c'}, "abc"},
		{"S empty", []byte{'S', 0, 0, 0, 0}, ""},
		{"x bytes", []byte{'x', 0, 0, 0, 2, 0, 0xff}, []byte{0, 0xff}},
		{"x empty", []byte{'x', 0, 0, 0, 0}, []byte{}},
		{"T timestamp", []byte{'T', 0, 0, 0, 0, 0x65, 0x53, 0xf1, 0x00}, time.Unix(0x6553f100, 0)},
		{"V void", []byte{'V'}, nil},
		{"A empty", []byte{'A', 0, 0, 0, 0}, []any{}},
		// The array length counts bytes (5+2 here), not elements (2).
		{"A two elements", []byte{'A', 0, 0, 0, 7, 'I', 0, 0, 0, 1, 't', 1}, []any{int32(1), true}},
		{"A nested", []byte{'A', 0, 0, 0, 6, 'A', 0, 0, 0, 1, 'V'}, []any{[]any{nil}}},
		{"F table", append([]byte{'F'}, tbl(entry("k", 'B', 9))...), Table{"k": uint8(9)}},
		{"F in A in F", append([]byte{'F'}, tbl(entry("a", 'A', 0, 0, 0, 8, 'F', 0, 0, 0, 3, 1, 'z', 'V'))...),
			Table{"a": []any{Table{"z": nil}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enc := tbl(entry("key", tt.enc...))
			got, n, err := DecodeTable(append(enc, 0xAA)) // a following byte is not consumed
			if err != nil {
				t.Fatal(err)
			}
			if n != len(enc) {
				t.Fatalf("consumed %d bytes, want %d", n, len(enc))
			}
			v, ok := got["key"]
			if !ok || !reflect.DeepEqual(normTime(v), normTime(tt.want)) {
				t.Fatalf("got %#v (%T), want %#v (%T)", v, v, tt.want, tt.want)
			}
			// Re-encoding gives the same bytes (single key, canonical values).
			re, err := AppendTable(nil, got)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(re, enc) {
				t.Fatalf("re-encoded % x, want % x", re, enc)
			}
		})
	}
}

func TestAppendTableGoTypes(t *testing.T) {
	tests := []struct {
		name string
		in   any
		enc  []byte
	}{
		{"int as l", int(-2), []byte{'l', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe}},
		{"int64", int64(1), []byte{'l', 0, 0, 0, 0, 0, 0, 0, 1}},
		{"int32", int32(1), []byte{'I', 0, 0, 0, 1}},
		{"uint32", uint32(1), []byte{'i', 0, 0, 0, 1}},
		{"int16", int16(1), []byte{'s', 0, 1}},
		{"uint16", uint16(1), []byte{'u', 0, 1}},
		{"byte", byte(1), []byte{'B', 1}},
		{"int8", int8(1), []byte{'b', 1}},
		{"map[string]any as F", map[string]any{"a": true}, append([]byte{'F'}, tbl(entry("a", 't', 1))...)},
		{"nil", nil, []byte{'V'}},
		{"decimal", Decimal{Scale: 1, Value: -1}, []byte{'D', 1, 0xff, 0xff, 0xff, 0xff}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AppendTable(nil, Table{"k": tt.in})
			if err != nil {
				t.Fatal(err)
			}
			if want := tbl(entry("k", tt.enc...)); !bytes.Equal(got, want) {
				t.Fatalf("got % x, want % x", got, want)
			}
		})
	}
}

func TestAppendTableSortedKeys(t *testing.T) {
	in := Table{}
	for _, k := range []string{"z", "a", "m", "b", "y", "c", "x", "d", "w", "e", "v", "f", "u", "g", "t", "h", "s", "i"} {
		in[k] = k
	}
	first, err := AppendTable(nil, in)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		again, _ := AppendTable(nil, in)
		if !bytes.Equal(again, first) {
			t.Fatal("encoding is not deterministic")
		}
	}
	r := reader{b: first, off: 4}
	prev := ""
	for r.off < len(first) {
		k := r.shortstr()
		if k < prev {
			t.Fatalf("key %q after %q", k, prev)
		}
		prev = k
		if _, err := decodeField(&r, 0); err != nil {
			t.Fatal(err)
		}
	}
}

func TestAppendTableErrors(t *testing.T) {
	tests := []struct {
		name string
		in   Table
	}{
		{"unsupported type", Table{"k": struct{}{}}},
		{"unsupported uint64", Table{"k": uint64(1)}},
		{"unsupported in array", Table{"k": []any{1, complex(1, 2)}}},
		{"unsupported nested", Table{"k": Table{"n": []string{"a"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte{1, 2, 3}
			got, err := AppendTable(prefix, tt.in)
			if err == nil {
				t.Fatal("no error")
			}
			if !bytes.Equal(got, prefix) {
				t.Fatalf("dst modified on error: % x", got)
			}
			// The method encoders write such values as void instead.
			m := &QueueDeclare{Arguments: tt.in}
			if _, err := DecodeMethod(m.Append(nil)); err != nil {
				t.Fatalf("lax encoding did not decode: %v", err)
			}
		})
	}
	deep := Table{}
	cur := deep
	for i := 0; i < maxTableDepth+2; i++ {
		next := Table{}
		cur["n"] = next
		cur = next
	}
	if _, err := AppendTable(nil, deep); err == nil {
		t.Fatal("over-deep table encoded without error")
	}
}

func TestDecodeTableErrors(t *testing.T) {
	deep := []byte{'V'}
	for i := 0; i < maxTableDepth+2; i++ {
		deep = append(append([]byte{'A'}, appendU32(nil, uint32(len(deep)))...), deep...)
	}
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short prefix", []byte{0, 0, 0}},
		{"length past end", []byte{0, 0, 0, 5, 1, 'k', 'V'}},
		{"2^31 length", []byte{0x80, 0, 0, 0}},
		{"max length", []byte{0xff, 0xff, 0xff, 0xff, 0}},
		{"key past table end", tbl([]byte{5, 'a'})},
		{"missing value", tbl(entry("k"))},
		{"unknown type", tbl(entry("k", 'Z'))},
		{"truncated int", tbl(entry("k", 'I', 0, 0))},
		{"truncated decimal", tbl(entry("k", 'D', 1, 0))},
		{"string past end", tbl(entry("k", 'S', 0, 0, 0, 9, 'a'))},
		{"2^31 string", tbl(entry("k", 'S', 0x80, 0, 0, 0))},
		{"2^31 bytes", tbl(entry("k", 'x', 0x80, 0, 0, 0))},
		{"2^31 array", tbl(entry("k", 'A', 0x80, 0, 0, 0))},
		{"array element past array end", tbl(entry("k", 'A', 0, 0, 0, 2, 'I', 0, 0, 0, 0))},
		{"nested table past end", tbl(entry("k", 'F', 0, 0, 0, 9))},
		{"too deep", tbl(entry("k", deep...))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := DecodeTable(tt.b)
			var e *Error
			if !errors.As(err, &e) || e.Code != FrameError {
				t.Fatalf("got %v, want a FrameError", err)
			}
			if _, err := validateTable(tt.b, 0); err == nil {
				t.Fatal("validateTable accepted it")
			}
		})
	}
}

func TestTableEqual(t *testing.T) {
	ts := time.Unix(100, 0)
	tests := []struct {
		name string
		a, b Table
		want bool
	}{
		{"nil and empty", nil, Table{}, true},
		{"same scalars", Table{"a": int32(1), "b": "x"}, Table{"b": "x", "a": int32(1)}, true},
		{"int equals int64", Table{"a": 5}, Table{"a": int64(5)}, true},
		{"int32 is not int64", Table{"a": int32(5)}, Table{"a": int64(5)}, false},
		{"different value", Table{"a": "x"}, Table{"a": "y"}, false},
		{"different key", Table{"a": "x"}, Table{"b": "x"}, false},
		{"extra key", Table{"a": "x"}, Table{"a": "x", "b": nil}, false},
		{"bytes", Table{"a": []byte{1}}, Table{"a": []byte{1}}, true},
		{"bytes differ", Table{"a": []byte{1}}, Table{"a": []byte{2}}, false},
		{"nested", Table{"a": Table{"b": []any{int8(1), Decimal{1, 2}}}}, Table{"a": Table{"b": []any{int8(1), Decimal{1, 2}}}}, true},
		{"nested map type", Table{"a": map[string]any{"b": true}}, Table{"a": Table{"b": true}}, true},
		{"nested differ", Table{"a": Table{"b": []any{int8(1)}}}, Table{"a": Table{"b": []any{int8(2)}}}, false},
		{"array length", Table{"a": []any{1}}, Table{"a": []any{1, 2}}, false},
		{"time", Table{"a": ts}, Table{"a": ts.UTC()}, true},
		{"NaN bits", Table{"a": math.NaN()}, Table{"a": math.NaN()}, true},
		{"float types", Table{"a": float32(1)}, Table{"a": float64(1)}, false},
		{"void", Table{"a": nil}, Table{"a": nil}, true},
		{"void vs false", Table{"a": nil}, Table{"a": false}, false},
		{"array vs table", Table{"a": []any{}}, Table{"a": Table{}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.Equal(tt.b); got != tt.want {
				t.Fatalf("a.Equal(b) = %v", got)
			}
			if got := tt.b.Equal(tt.a); got != tt.want {
				t.Fatalf("b.Equal(a) = %v", got)
			}
		})
	}
}

// Decoded values must not alias the input (frame buffers are reused).
func TestDecodeCopiesInput(t *testing.T) {
	enc := tbl(entry("k", 'x', 0, 0, 0, 2, 7, 8), entry("s", 'S', 0, 0, 0, 2, 'h', 'i'),
		entry("n", 'F', 0, 0, 0, 7, 1, 'm', 'S', 0, 0, 0, 0))
	got, _, err := DecodeTable(enc)
	if err != nil {
		t.Fatal(err)
	}
	m := &QueueBind{Queue: "queue", Exchange: "exchange", RoutingKey: "key", Arguments: Table{"a": "b"}}
	payload := m.Append(nil)
	dm, err := DecodeMethod(payload)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{enc, payload} {
		for i := range b {
			b[i] = 'Z'
		}
	}
	want := Table{"k": []byte{7, 8}, "s": "hi", "n": Table{"m": ""}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("table changed with its input: %#v", got)
	}
	if !reflect.DeepEqual(dm, Method(m)) {
		t.Fatalf("method changed with its input: %#v", dm)
	}
}

// Length prefixes claiming up to 4 GiB must fail before any allocation of
// that size: decoding such inputs allocates only small error values.
func TestHostileLengthsDoNotAllocate(t *testing.T) {
	inputs := []struct {
		name   string
		decode func() error
	}{
		{"table 2^31", func() error { _, _, err := DecodeTable([]byte{0x80, 0, 0, 0, 0}); return err }},
		{"array 2^31", func() error { _, _, err := DecodeTable(tbl(entry("k", 'A', 0x80, 0, 0, 0))); return err }},
		{"longstr 2^32-1", func() error { _, _, err := DecodeTable(tbl(entry("k", 'S', 0xff, 0xff, 0xff, 0xff))); return err }},
		{"bytes 2^31", func() error { _, _, err := DecodeTable(tbl(entry("k", 'x', 0x80, 0, 0, 0))); return err }},
		{"method longstr 2^31", func() error { _, err := DecodeMethod([]byte{0, 10, 0, 20, 0x80, 0, 0, 0, 1}); return err }},
		{"method table 2^31", func() error {
			_, err := DecodeMethod([]byte{0, 50, 0, 10, 0, 0, 1, 'q', 0, 0x80, 0, 0, 0})
			return err
		}},
		{"header table 2^31", func() error {
			_, err := DecodeContentHeader([]byte{0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0x80, 0, 0, 0})
			return err
		}},
	}
	for _, in := range inputs {
		t.Run(in.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for i := 0; i < 100; i++ {
				if in.decode() == nil {
					t.Fatal("decoded without error")
				}
			}
			runtime.ReadMemStats(&after)
			if per := (after.TotalAlloc - before.TotalAlloc) / 100; per > 4096 {
				t.Fatalf("%d bytes allocated per decode", per)
			}
		})
	}
}

// py-amqp writes integers outside the int32 range as 'L'; they decode as int64.
func TestDecodePyAMQPLongLong(t *testing.T) {
	b := tbl(entry("k", 'L', 0, 0, 1, 0, 0, 0, 0, 0))
	got, n, err := DecodeTable(b)
	if err != nil || n != len(b) {
		t.Fatalf("DecodeTable: %v (consumed %d of %d)", err, n, len(b))
	}
	if got["k"] != int64(1<<40) {
		t.Fatalf("k = %#v, want int64(1<<40)", got["k"])
	}
	if _, err := validateTable(b, 0); err != nil {
		t.Fatalf("validateTable rejects 'L': %v", err)
	}
}
