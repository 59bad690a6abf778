package broker

import (
	"bytes"
	"slices"
	"testing"
)

func TestForwardEnvelope(t *testing.T) {
	for _, tc := range []struct {
		name          string
		queues        []string
		exchange, key string
		header, body  []byte
	}{
		{"one queue", []string{"q"}, "ex", "rk", []byte{0, 60, 0, 0}, []byte("body")},
		{"several, empty names", []string{"a", "", "long-" + string(bytes.Repeat([]byte("x"), 300))}, "", "", []byte{1}, nil},
		{"no queues", nil, "e", "k", nil, []byte{0}},
	} {
		b := EncodeForward(nil, tc.queues, tc.exchange, tc.key, tc.header, tc.body)
		f, err := DecodeForward(b)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !slices.Equal(f.Queues, tc.queues) && !(len(f.Queues) == 0 && len(tc.queues) == 0) || f.Exchange != tc.exchange ||
			f.RoutingKey != tc.key || !bytes.Equal(f.Header, tc.header) || !bytes.Equal(f.Body, tc.body) {
			t.Fatalf("%s: got %+v", tc.name, f)
		}
	}
	for _, bad := range [][]byte{nil, {'W'}, {'W', 2, 0}, {'X', 1, 0}, {'W', 1, 5}, {'W', 1, 1, 9, 'a'}, {'W', 1, 0, 0, 0}} {
		if _, err := DecodeForward(bad); err == nil {
			t.Errorf("%q decoded", bad)
		}
	}
}

func FuzzDecodeForward(f *testing.F) {
	f.Add(EncodeForward(nil, []string{"q1", "q2"}, "ex", "rk", []byte{0, 60}, []byte("body")))
	f.Add([]byte{'W', 1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		fw, err := DecodeForward(b)
		if err != nil {
			return
		}
		again := EncodeForward(nil, fw.Queues, fw.Exchange, fw.RoutingKey, fw.Header, fw.Body)
		if _, err := DecodeForward(again); err != nil {
			t.Fatalf("re-encoded envelope does not decode: %v", err)
		}
	})
}
