package amqp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"time"
	"unsafe"
)

// Table is an AMQP field table. Decoded values have these Go types, by the
// type codes RabbitMQ and amqp091-go use (which differ from the 0-9-1 spec
// text for 's', 'l' and 'x'):
//
//	't' bool      'b' int8     'B' uint8    's' int16    'u' uint16
//	'I' int32     'i' uint32   'l' int64    'f' float32  'd' float64
//	'D' Decimal   'S' string   'x' []byte   'A' []any    'T' time.Time
//	'F' Table     'V' nil
//
// Encoding accepts the same types plus int (written as 'l', so no value is
// truncated; amqp091-go writes int as a truncated 'I') and map[string]any
// (written as 'F').
type Table map[string]any

// Decimal is the AMQP decimal value: Value / 10^Scale. Value is signed, as
// RabbitMQ reads it.
type Decimal struct {
	Scale uint8
	Value int32
}

// maxTableDepth bounds the nesting of tables and arrays, so that recursion
// on hostile input stays within a few megabytes of stack. RabbitMQ accepts
// headers nested 5000 deep (the hostile-client catalogue checks it), and so
// must Warren; amqp091-go reads only 32 levels, other clients more.
const maxTableDepth = 8192

func tableError(format string, args ...any) *Error {
	return Errorf(FrameError, format, args...)
}

// DecodeTable decodes a field table. b starts at the table's 4-byte length
// prefix; the result n is the number of bytes consumed (prefix included).
// Malformed input yields an *Error with Code FrameError; decoding never
// panics and allocates nothing before the length it is about to use has
// been checked against len(b).
func DecodeTable(b []byte) (t Table, n int, err error) {
	return decodeTableCopy(b)
}

// decodeTableCopy decodes a table from a buffer that may be reused (a
// frame payload): it copies the table's bytes once into a string and lets
// every key and string value alias that copy, rather than allocating each.
func decodeTableCopy(b []byte) (Table, int, error) {
	if len(b) < 4 {
		return nil, 0, tableError("truncated field table length")
	}
	size := binary.BigEndian.Uint32(b)
	if uint64(size) > uint64(len(b)-4) {
		return nil, 0, tableError("field table length %d exceeds the %d bytes available", size, len(b)-4)
	}
	if size == 0 {
		return Table{}, 4, nil
	}
	end := 4 + int(size)
	s := string(b[:end])
	return decodeTable(unsafe.Slice(unsafe.StringData(s), end), 0, true)
}

func decodeTable(b []byte, depth int, owned bool) (Table, int, error) {
	if depth > maxTableDepth {
		return nil, 0, tableError("field table nested deeper than %d", maxTableDepth)
	}
	if len(b) < 4 {
		return nil, 0, tableError("truncated field table length")
	}
	size := binary.BigEndian.Uint32(b)
	if uint64(size) > uint64(len(b)-4) {
		return nil, 0, tableError("field table length %d exceeds the %d bytes available", size, len(b)-4)
	}
	end := 4 + int(size)
	r := reader{b: b[:end], off: 4, owned: owned}
	t := make(Table)
	for r.off < end {
		key := r.shortstr()
		if r.bad {
			return nil, 0, tableError("truncated field table key")
		}
		v, err := decodeField(&r, depth)
		if err != nil {
			return nil, 0, err
		}
		t[key] = v
	}
	return t, end, nil
}

func decodeArray(r *reader, depth int) ([]any, error) {
	if depth > maxTableDepth {
		return nil, tableError("field array nested deeper than %d", maxTableDepth)
	}
	size := r.u32()
	body := r.bytes(uint64(size))
	if r.bad {
		return nil, tableError("field array length exceeds the bytes available")
	}
	ar := reader{b: body, owned: r.owned}
	// Not pre-sized from the byte length: a hostile length must not turn
	// into a large allocation (elements are appended as they parse).
	var out []any
	for ar.off < len(body) {
		v, err := decodeField(&ar, depth)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if out == nil {
		out = []any{}
	}
	return out, nil
}

func decodeField(r *reader, depth int) (any, error) {
	typ := r.u8()
	if r.bad {
		return nil, tableError("truncated field value")
	}
	var v any
	switch typ {
	case 't':
		v = r.u8() != 0
	case 'b':
		v = int8(r.u8())
	case 'B':
		v = r.u8()
	case 's':
		v = int16(r.u16())
	case 'u':
		v = r.u16()
	case 'I':
		v = int32(r.u32())
	case 'i':
		v = r.u32()
	case 'l', 'L':
		// 'L' is not in RabbitMQ's table, but py-amqp (and so kombu and Celery) writes every
		// integer outside the int32 range with it, as a signed 64-bit value; RabbitMQ passes
		// such headers through untouched, so Warren must accept them too.
		v = int64(r.u64())
	case 'f':
		v = math.Float32frombits(r.u32())
	case 'd':
		v = math.Float64frombits(r.u64())
	case 'D':
		scale := r.u8()
		v = Decimal{Scale: scale, Value: int32(r.u32())}
	case 'S':
		v = r.longstr()
	case 'x':
		n := r.u32()
		raw := r.bytes(uint64(n))
		if !r.bad {
			// Copied even from an owned buffer: a []byte may be written
			// to, the memory behind strings must never be.
			v = bytes.Clone(raw)
			if v.([]byte) == nil {
				v = []byte{}
			}
		}
	case 'A':
		a, err := decodeArray(r, depth+1)
		if err != nil {
			return nil, err
		}
		v = a
	case 'T':
		v = r.timestamp()
	case 'F':
		if r.bad {
			break
		}
		t, n, err := decodeTable(r.b[r.off:], depth+1, r.owned)
		if err != nil {
			return nil, err
		}
		r.off += n
		v = t
	case 'V':
		v = nil
	default:
		return nil, tableError("unknown field value type %q", typ)
	}
	if r.bad {
		return nil, tableError("truncated field value of type %q", typ)
	}
	return v, nil
}

// AppendTable appends t as a field table, 4-byte length prefix included.
// Keys are written in sorted order so that equal tables always encode to
// equal bytes. A value of a type not listed on Table is an error (the
// table is then not appended).
func AppendTable(dst []byte, t Table) ([]byte, error) {
	return appendTable(dst, t, 0, false)
}

func appendTable(dst []byte, t Table, depth int, lax bool) ([]byte, error) {
	if depth > maxTableDepth {
		if lax {
			return appendU32(dst, 0), nil
		}
		return dst, fmt.Errorf("amqp: field table nested deeper than %d", maxTableDepth)
	}
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	var stack [16]string
	keys := stack[:0]
	for k := range t {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var err error
	for _, k := range keys {
		dst = appendShortstr(dst, k)
		if dst, err = appendField(dst, t[k], depth, lax); err != nil {
			return dst[:start], fmt.Errorf("amqp: table key %q: %w", k, err)
		}
	}
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst, nil
}

func appendField(dst []byte, v any, depth int, lax bool) ([]byte, error) {
	switch v := v.(type) {
	case bool:
		var b byte
		if v {
			b = 1
		}
		return append(dst, 't', b), nil
	case int8:
		return append(dst, 'b', byte(v)), nil
	case uint8:
		return append(dst, 'B', v), nil
	case int16:
		return appendU16(append(dst, 's'), uint16(v)), nil
	case uint16:
		return appendU16(append(dst, 'u'), v), nil
	case int32:
		return appendU32(append(dst, 'I'), uint32(v)), nil
	case uint32:
		return appendU32(append(dst, 'i'), v), nil
	case int64:
		return appendU64(append(dst, 'l'), uint64(v)), nil
	case int:
		return appendU64(append(dst, 'l'), uint64(v)), nil
	case float32:
		return appendU32(append(dst, 'f'), math.Float32bits(v)), nil
	case float64:
		return appendU64(append(dst, 'd'), math.Float64bits(v)), nil
	case Decimal:
		return appendU32(append(dst, 'D', v.Scale), uint32(v.Value)), nil
	case string:
		return appendLongstr(append(dst, 'S'), v), nil
	case []byte:
		dst = appendU32(append(dst, 'x'), uint32(len(v)))
		return append(dst, v...), nil
	case time.Time:
		return appendTimestamp(append(dst, 'T'), v), nil
	case Table:
		return appendTable(append(dst, 'F'), v, depth+1, lax)
	case map[string]any:
		return appendTable(append(dst, 'F'), Table(v), depth+1, lax)
	case []any:
		return appendArray(dst, v, depth+1, lax)
	case nil:
		return append(dst, 'V'), nil
	}
	if lax {
		return append(dst, 'V'), nil
	}
	return dst, fmt.Errorf("unsupported field value type %T", v)
}

func appendArray(dst []byte, a []any, depth int, lax bool) ([]byte, error) {
	if depth > maxTableDepth {
		if lax {
			return append(dst, 'A', 0, 0, 0, 0), nil
		}
		return dst, fmt.Errorf("field array nested deeper than %d", maxTableDepth)
	}
	dst = append(dst, 'A', 0, 0, 0, 0)
	start := len(dst)
	var err error
	for i, v := range a {
		if dst, err = appendField(dst, v, depth, lax); err != nil {
			return dst, fmt.Errorf("array element %d: %w", i, err)
		}
	}
	// The length prefix counts bytes, not elements (RabbitMQ, amqp091-go).
	binary.BigEndian.PutUint32(dst[start-4:], uint32(len(dst)-start))
	return dst, nil
}

// Equal reports whether t and o hold the same keys with equal values. It is
// the comparison used when an entity is redeclared with arguments, so it
// compares what would go on the wire: an int equals the int64 it encodes
// as, floats compare by bits, timestamps to the second, and a nil table
// equals an empty one.
func (t Table) Equal(o Table) bool {
	if len(t) != len(o) {
		return false
	}
	for k, v := range t {
		w, ok := o[k]
		if !ok || !valueEqual(v, w, 0) {
			return false
		}
	}
	return true
}

func valueEqual(a, b any, depth int) bool {
	if depth > maxTableDepth {
		return false
	}
	if ai, ok := a.(int); ok {
		a = int64(ai)
	}
	if bi, ok := b.(int); ok {
		b = int64(bi)
	}
	if am, ok := a.(map[string]any); ok {
		a = Table(am)
	}
	if bm, ok := b.(map[string]any); ok {
		b = Table(bm)
	}
	switch av := a.(type) {
	case float32:
		bv, ok := b.(float32)
		return ok && math.Float32bits(av) == math.Float32bits(bv)
	case float64:
		bv, ok := b.(float64)
		return ok && math.Float64bits(av) == math.Float64bits(bv)
	case []byte:
		bv, ok := b.([]byte)
		return ok && bytes.Equal(av, bv)
	case time.Time:
		bv, ok := b.(time.Time)
		return ok && av.Unix() == bv.Unix()
	case Table:
		bv, ok := b.(Table)
		if !ok || len(av) != len(bv) {
			return false
		}
		for k, x := range av {
			y, ok := bv[k]
			if !ok || !valueEqual(x, y, depth+1) {
				return false
			}
		}
		return true
	case []any:
		bv, ok := b.([]any)
		if !ok || len(av) != len(bv) {
			return false
		}
		for i := range av {
			if !valueEqual(av[i], bv[i], depth+1) {
				return false
			}
		}
		return true
	case bool, int8, uint8, int16, uint16, int32, uint32, int64, Decimal, string, nil:
		return a == b
	}
	return false
}
