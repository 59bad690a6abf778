package exchange

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
)

// Bindings and messages below were run through RabbitMQ 3.10.8 (headers
// exchange, one queue per binding, amqp091-go client); want lists are the
// queues RabbitMQ delivered each message to.
var headersBindings = map[string]amqp.Table{
	"hA":        {"x-match": "all", "a": int32(1), "b": "x"},
	"hAny":      {"x-match": "any", "a": int32(1), "b": "x"},
	"hDef":      {"a": int32(1)},
	"hVoid":     {"a": nil},
	"hVoidAny":  {"x-match": "any", "a": nil, "zz": "q"},
	"hXall":     {"x-match": "all", "x-foo": "bar"},
	"hXwith":    {"x-match": "all-with-x", "x-foo": "bar"},
	"hAnyWithX": {"x-match": "any-with-x", "x-foo": "bar", "c": "z"},
	"hAnyX":     {"x-match": "any", "x-foo": "bar", "c": "z"},
	"hEmptyAny": {"x-match": "any"},
	"hEmptyAll": {"x-match": "all"},
	"hNone":     nil,
	"hInt64":    {"n": int64(5)},
	"hFloat":    {"n": float64(5)},
	"hStr5":     {"n": "5"},
	"hBytes":    {"s": []byte("abc")},
	"hStr":      {"s": "abc"},
	"hBool":     {"t": true},
	"hTs":       {"n": time.Unix(5, 0)},
	"hNested":   {"tb": amqp.Table{"k": int32(1)}},
	"hArr":      {"arr": []any{int32(1)}},
	"hDec":      {"d": amqp.Decimal{Scale: 1, Value: 50}},
	"hU8":       {"n": uint8(5)},
}

var headersCases = []struct {
	name string
	h    amqp.Table
	want []string
}{
	{"no headers", nil, []string{"hEmptyAll", "hNone", "hXall"}},
	{"all match", amqp.Table{"a": int32(1), "b": "x"}, []string{"hA", "hAny", "hDef", "hEmptyAll", "hNone", "hVoid", "hVoidAny", "hXall"}},
	{"int64 equals int32", amqp.Table{"a": int64(1)}, []string{"hAny", "hDef", "hEmptyAll", "hNone", "hVoid", "hVoidAny", "hXall"}},
	{"float equals int", amqp.Table{"a": float64(1.0), "b": "y"}, []string{"hAny", "hDef", "hEmptyAll", "hNone", "hVoid", "hVoidAny", "hXall"}},
	{"string is not int", amqp.Table{"a": "1"}, []string{"hEmptyAll", "hNone", "hVoid", "hVoidAny", "hXall"}},
	{"void header", amqp.Table{"a": nil}, []string{"hEmptyAll", "hNone", "hVoid", "hVoidAny", "hXall"}},
	{"x- header only", amqp.Table{"x-foo": "bar"}, []string{"hAnyWithX", "hEmptyAll", "hNone", "hXall", "hXwith"}},
	{"x- and plain", amqp.Table{"x-foo": "bar", "a": int32(1), "b": "x"}, []string{"hA", "hAny", "hAnyWithX", "hDef", "hEmptyAll", "hNone", "hVoid", "hVoidAny", "hXall", "hXwith"}},
	{"any plain", amqp.Table{"c": "z"}, []string{"hAnyWithX", "hAnyX", "hEmptyAll", "hNone", "hXall"}},
	{"numbers and string", amqp.Table{"n": int32(5), "s": "abc"}, []string{"hBytes", "hEmptyAll", "hFloat", "hInt64", "hNone", "hStr", "hTs", "hU8", "hXall"}},
	{"float32 and bytes", amqp.Table{"n": float32(5), "s": []byte("abc")}, []string{"hBytes", "hEmptyAll", "hFloat", "hInt64", "hNone", "hStr", "hTs", "hU8", "hXall"}},
	{"timestamp is seconds", amqp.Table{"n": time.Unix(5, 0)}, []string{"hEmptyAll", "hFloat", "hInt64", "hNone", "hTs", "hU8", "hXall"}},
	{"bool", amqp.Table{"t": true}, []string{"hBool", "hEmptyAll", "hNone", "hXall"}},
	{"int is not bool", amqp.Table{"t": int32(1)}, []string{"hEmptyAll", "hNone", "hXall"}},
	{"nested table type-strict", amqp.Table{"tb": amqp.Table{"k": int64(1)}}, []string{"hEmptyAll", "hNone", "hXall"}},
	{"nested table equal", amqp.Table{"tb": amqp.Table{"k": int32(1)}}, []string{"hEmptyAll", "hNested", "hNone", "hXall"}},
	{"array type-strict", amqp.Table{"arr": []any{int64(1)}}, []string{"hEmptyAll", "hNone", "hXall"}},
	{"array equal", amqp.Table{"arr": []any{int32(1)}}, []string{"hArr", "hEmptyAll", "hNone", "hXall"}},
	{"decimal", amqp.Table{"d": amqp.Decimal{Scale: 1, Value: 50}}, []string{"hDec", "hEmptyAll", "hNone", "hXall"}},
	{"float is not decimal", amqp.Table{"d": float64(5)}, []string{"hEmptyAll", "hNone", "hXall"}},
	{"5.5 is not 5", amqp.Table{"n": float64(5.5)}, []string{"hEmptyAll", "hNone", "hXall"}},
	{"int16", amqp.Table{"n": int16(5)}, []string{"hEmptyAll", "hFloat", "hInt64", "hNone", "hTs", "hU8", "hXall"}},
	{"void any other key", amqp.Table{"zz": "q"}, []string{"hEmptyAll", "hNone", "hVoidAny", "hXall"}},
	{"extra headers ignored", amqp.Table{"a": int32(1), "b": "x", "other": "y"}, []string{"hA", "hAny", "hDef", "hEmptyAll", "hNone", "hVoid", "hVoidAny", "hXall"}},
}

func TestHeadersMatchesRabbitMQ(t *testing.T) {
	r := NewRouter(Headers)
	for name, args := range headersBindings {
		if ok, err := r.Bind(Binding{Destination: name, Args: args}); !ok || err != nil {
			t.Fatalf("Bind(%s) = %v, %v", name, ok, err)
		}
	}
	for _, tc := range headersCases {
		t.Run(tc.name, func(t *testing.T) {
			if got := names(r.Route("ignored", tc.h, nil)); !slices.Equal(got, tc.want) {
				t.Errorf("headers %v\n got %v\nwant %v", tc.h, got, tc.want)
			}
		})
	}
}

// TestHeadersXMatchErrors checks texts recorded from RabbitMQ 3.10.8.
func TestHeadersXMatchErrors(t *testing.T) {
	tests := []struct {
		v    any
		text string
	}{
		{"foo", `PRECONDITION_FAILED - Invalid x-match field value <<"foo">>; expected all, any, all-with-x, or any-with-x`},
		{"ALL", `PRECONDITION_FAILED - Invalid x-match field value <<"ALL">>; expected all, any, all-with-x, or any-with-x`},
		{"", `PRECONDITION_FAILED - Invalid x-match field value <<>>; expected all, any, all-with-x, or any-with-x`},
		{"é", `PRECONDITION_FAILED - Invalid x-match field value <<"é">>; expected all, any, all-with-x, or any-with-x`},
		{`a"b`, `PRECONDITION_FAILED - Invalid x-match field value <<"a\"b">>; expected all, any, all-with-x, or any-with-x`},
		{int32(1), `PRECONDITION_FAILED - Invalid x-match field type signedint (value 1); expected longstr`},
		{int64(7), `PRECONDITION_FAILED - Invalid x-match field type long (value 7); expected longstr`},
		{true, `PRECONDITION_FAILED - Invalid x-match field type bool (value true); expected longstr`},
		{[]byte("all"), `PRECONDITION_FAILED - Invalid x-match field type binary (value <<"all">>); expected longstr`},
		{nil, `PRECONDITION_FAILED - Invalid x-match field type void (value undefined); expected longstr`},
		{1.5, `PRECONDITION_FAILED - Invalid x-match field type double (value 1.5); expected longstr`},
		{2.0, `PRECONDITION_FAILED - Invalid x-match field type double (value 2.0); expected longstr`},
		{amqp.Decimal{Scale: 2, Value: 150}, `PRECONDITION_FAILED - Invalid x-match field type decimal (value {2,150}); expected longstr`},
		{uint8(3), `PRECONDITION_FAILED - Invalid x-match field type unsignedbyte (value 3); expected longstr`},
		{int16(4), `PRECONDITION_FAILED - Invalid x-match field type short (value 4); expected longstr`},
		{[]any{"x", int32(1)}, `PRECONDITION_FAILED - Invalid x-match field type array (value [{longstr,<<"x">>},{signedint,1}]); expected longstr`},
		{amqp.Table{"k": "v"}, `PRECONDITION_FAILED - Invalid x-match field type table (value [{<<"k">>,longstr,<<"v">>}]); expected longstr`},
		{time.Unix(10, 0), `PRECONDITION_FAILED - Invalid x-match field type timestamp (value 10); expected longstr`},
	}
	for _, tc := range tests {
		r := NewRouter(Headers)
		ok, err := r.Bind(Binding{Destination: "q", Args: amqp.Table{"x-match": tc.v}})
		var ae *amqp.Error
		if ok || !errors.As(err, &ae) {
			t.Errorf("x-match %#v: Bind = %v, %v; want *amqp.Error", tc.v, ok, err)
			continue
		}
		if ae.Code != amqp.PreconditionFailed || ae.Text != tc.text {
			t.Errorf("x-match %#v:\n got %d %s\nwant 406 %s", tc.v, ae.Code, ae.Text, tc.text)
		}
		if r.Len() != 0 {
			t.Errorf("x-match %#v: rejected binding was stored", tc.v)
		}
	}
	for _, ok := range []string{"all", "any", "all-with-x", "any-with-x"} {
		if _, err := NewRouter(Headers).Bind(Binding{Destination: "q", Args: amqp.Table{"x-match": ok}}); err != nil {
			t.Errorf("x-match %q: %v", ok, err)
		}
	}
}

func TestHeadersDedupSameDest(t *testing.T) {
	r := NewRouter(Headers)
	r.Bind(Binding{Destination: "q", Args: amqp.Table{"a": "1"}})
	r.Bind(Binding{Destination: "q", Args: amqp.Table{"b": "2"}})
	r.Bind(Binding{Destination: "q", Key: "k", Args: amqp.Table{"a": "1"}})
	if got := r.Route("", amqp.Table{"a": "1", "b": "2"}, nil); len(got) != 1 {
		t.Errorf("got %v, want q once", got)
	}
}
