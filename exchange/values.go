package exchange

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/warrenmq/warren/amqp"
)

// num is a decoded numeric field value. RabbitMQ compares header values with
// Erlang's ==, under which every integer width and every float compare by
// value, and a timestamp is just an integer count of seconds.
type num struct {
	kind uint8 // 0: fits int64 (i), 1: uint64 above MaxInt64 (u), 2: float (f)
	i    int64
	u    uint64
	f    float64
}

func toNum(v any) (num, bool) {
	switch x := v.(type) {
	case int8:
		return num{i: int64(x)}, true
	case int16:
		return num{i: int64(x)}, true
	case int32:
		return num{i: int64(x)}, true
	case int64:
		return num{i: x}, true
	case int:
		return num{i: int64(x)}, true
	case uint8:
		return num{i: int64(x)}, true
	case uint16:
		return num{i: int64(x)}, true
	case uint32:
		return num{i: int64(x)}, true
	case uint64:
		if x > math.MaxInt64 {
			return num{kind: 1, u: x}, true
		}
		return num{i: int64(x)}, true
	case uint:
		return toNum(uint64(x))
	case float32:
		return num{kind: 2, f: float64(x)}, true
	case float64:
		return num{kind: 2, f: x}, true
	case time.Time:
		return num{i: x.Unix()}, true
	}
	return num{}, false
}

func (a num) float() float64 {
	switch a.kind {
	case 0:
		return float64(a.i)
	case 1:
		return float64(a.u)
	}
	return a.f
}

func (a num) eq(b num) bool {
	if a.kind == 2 || b.kind == 2 {
		return a.float() == b.float()
	}
	if a.kind != b.kind {
		return false
	}
	return a.i == b.i && a.u == b.u
}

// valueEqual is Erlang's == on two decoded top-level header values: numbers
// by value, long strings and byte arrays by bytes (both are Erlang
// binaries), everything else only against the same type.
func valueEqual(p, d any) bool {
	if pn, ok := toNum(p); ok {
		dn, ok := toNum(d)
		return ok && pn.eq(dn)
	}
	switch pv := p.(type) {
	case string:
		switch dv := d.(type) {
		case string:
			return pv == dv
		case []byte:
			return string(dv) == pv
		}
		return false
	case []byte:
		switch dv := d.(type) {
		case string:
			return string(pv) == dv
		case []byte:
			return string(pv) == string(dv)
		}
		return false
	case bool:
		dv, ok := d.(bool)
		return ok && pv == dv
	case amqp.Decimal:
		dv, ok := d.(amqp.Decimal)
		return ok && pv == dv
	case nil:
		return d == nil
	}
	return strictEqual(p, d)
}

// strictEqual compares values nested in tables and arrays. There RabbitMQ
// keeps each value as a {Type, Value} tuple, so the type tags must agree too.
func strictEqual(a, b any) bool {
	ta, tb := typeTag(a), typeTag(b)
	if ta != tb || ta == 0 {
		return false
	}
	switch ta {
	case 'F':
		x, y := asTable(a), asTable(b)
		if len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !strictEqual(v, w) {
				return false
			}
		}
		return true
	case 'A':
		x, y := a.([]any), b.([]any)
		return slices.EqualFunc(x, y, strictEqual)
	case 'V':
		return true
	}
	return valueEqual(a, b)
}

func asTable(v any) map[string]any {
	switch t := v.(type) {
	case amqp.Table:
		return t
	case map[string]any:
		return t
	}
	return nil
}

// typeTag returns the AMQP field type octet a value is encoded with (Go int
// as 'l', like Warren's encoder), or 0 for a type tables cannot hold.
func typeTag(v any) byte {
	switch v.(type) {
	case nil:
		return 'V'
	case bool:
		return 't'
	case int8:
		return 'b'
	case uint8:
		return 'B'
	case int16:
		return 's'
	case uint16:
		return 'u'
	case int32:
		return 'I'
	case uint32:
		return 'i'
	case int64, int:
		return 'l'
	case float32:
		return 'f'
	case float64:
		return 'd'
	case amqp.Decimal:
		return 'D'
	case string:
		return 'S'
	case []byte:
		return 'x'
	case []any:
		return 'A'
	case time.Time:
		return 'T'
	case amqp.Table, map[string]any:
		return 'F'
	}
	return 0
}

// canonArgs encodes an arguments table so that equal tables (same keys,
// same types, same values) give the same string whatever the map order;
// it is the args part of a binding's identity. Nil and empty are equal,
// as RabbitMQ makes no difference between absent and empty arguments.
func canonArgs(t amqp.Table) string {
	if len(t) == 0 {
		return ""
	}
	return string(appendCanonTable(nil, t))
}

func appendCanonTable(dst []byte, t map[string]any) []byte {
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = binary.AppendUvarint(dst, uint64(len(keys)))
	for _, k := range keys {
		dst = binary.AppendUvarint(dst, uint64(len(k)))
		dst = append(dst, k...)
		dst = appendCanon(dst, t[k])
	}
	return dst
}

func appendCanon(dst []byte, v any) []byte {
	tag := typeTag(v)
	dst = append(dst, tag)
	switch x := v.(type) {
	case bool:
		if x {
			return append(dst, 1)
		}
		return append(dst, 0)
	case float32:
		return binary.BigEndian.AppendUint32(dst, math.Float32bits(x))
	case float64:
		return binary.BigEndian.AppendUint64(dst, math.Float64bits(x))
	case amqp.Decimal:
		dst = append(dst, x.Scale)
		return binary.BigEndian.AppendUint32(dst, uint32(x.Value))
	case string:
		dst = binary.AppendUvarint(dst, uint64(len(x)))
		return append(dst, x...)
	case []byte:
		dst = binary.AppendUvarint(dst, uint64(len(x)))
		return append(dst, x...)
	case []any:
		dst = binary.AppendUvarint(dst, uint64(len(x)))
		for _, e := range x {
			dst = appendCanon(dst, e)
		}
		return dst
	case amqp.Table:
		return appendCanonTable(dst, x)
	case map[string]any:
		return appendCanonTable(dst, x)
	case nil:
		return dst
	case uint64:
		return binary.BigEndian.AppendUint64(dst, x)
	}
	if n, ok := toNum(v); ok && tag != 0 {
		return binary.BigEndian.AppendUint64(dst, uint64(n.i))
	}
	// Not an AMQP field type: still give it a stable identity.
	s := fmt.Sprintf("%T:%#v", v, v)
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// erlType names a value's field type as RabbitMQ's binary parser does, for
// error texts that match RabbitMQ's byte for byte.
func erlType(v any) string {
	switch typeTag(v) {
	case 'V':
		return "void"
	case 't':
		return "bool"
	case 'b':
		return "byte"
	case 'B':
		return "unsignedbyte"
	case 's':
		return "short"
	case 'u':
		return "unsignedshort"
	case 'I':
		return "signedint"
	case 'i':
		return "unsignedint"
	case 'l':
		return "long"
	case 'f':
		return "float"
	case 'd':
		return "double"
	case 'D':
		return "decimal"
	case 'S':
		return "longstr"
	case 'x':
		return "binary"
	case 'A':
		return "array"
	case 'T':
		return "timestamp"
	case 'F':
		return "table"
	}
	return fmt.Sprintf("%T", v)
}

// erlTerm renders a decoded field value the way Erlang's ~tp prints
// RabbitMQ's representation of it.
func erlTerm(v any) string {
	switch x := v.(type) {
	case nil:
		return "undefined"
	case bool:
		return strconv.FormatBool(x)
	case string:
		return erlBinary(x)
	case []byte:
		return erlBinary(string(x))
	case float32:
		return erlFloat(float64(x))
	case float64:
		return erlFloat(x)
	case amqp.Decimal:
		return fmt.Sprintf("{%d,%d}", x.Scale, x.Value)
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = "{" + erlType(e) + "," + erlTerm(e) + "}"
		}
		return "[" + strings.Join(parts, ",") + "]"
	case amqp.Table, map[string]any:
		t := asTable(x)
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = "{" + erlBinary(k) + "," + erlType(t[k]) + "," + erlTerm(t[k]) + "}"
		}
		return "[" + strings.Join(parts, ",") + "]"
	case uint64:
		return strconv.FormatUint(x, 10)
	case uint:
		return strconv.FormatUint(uint64(x), 10)
	}
	if n, ok := toNum(v); ok {
		return strconv.FormatInt(n.i, 10)
	}
	return fmt.Sprint(v)
}

// erlFloat mimics Erlang's shortest float printing: always a fraction part
// ("1.0") and an exponent without "+" ("1.0e20").
func erlFloat(f float64) string {
	s := strconv.FormatFloat(f, 'g', -1, 64)
	mant, exp, hasExp := strings.Cut(s, "e")
	if !strings.ContainsAny(mant, ".NI") {
		mant += ".0"
	}
	if !hasExp {
		return mant
	}
	exp = strings.TrimPrefix(exp, "+")
	if strings.HasPrefix(exp, "-0") {
		exp = "-" + strings.TrimLeft(exp[1:], "0")
	} else {
		exp = strings.TrimLeft(exp, "0")
	}
	return mant + "e" + exp
}

// erlBinary prints a binary as RabbitMQ 3.10's error texts do: <<"abc">>
// when printable (UTF-8 included, verified: <<"é">>), else the byte values.
func erlBinary(s string) string {
	if s == "" {
		return "<<>>"
	}
	printable := utf8.ValidString(s)
	for _, r := range s {
		if !unicode.IsPrint(r) && !strings.ContainsRune("\n\r\t\v\b\f\x1b", r) {
			printable = false
		}
	}
	if !printable {
		parts := make([]string, len(s))
		for i := 0; i < len(s); i++ {
			parts[i] = strconv.Itoa(int(s[i]))
		}
		return "<<" + strings.Join(parts, ",") + ">>"
	}
	var b strings.Builder
	b.WriteString(`<<"`)
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\v':
			b.WriteString(`\v`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\x1b':
			b.WriteString(`\e`)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteString(`">>`)
	return b.String()
}
