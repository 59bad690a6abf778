package broker

import (
	"bytes"
	"slices"
	"testing"

	"github.com/warrenmq/warren/queue"
)

// sameForwarded reports whether a and b decoded to the same envelope (the decoder's scratch
// pointer aside).
func sameForwarded(a, b Forwarded) bool {
	return a.MetaIndex == b.MetaIndex && a.TTL == b.TTL && a.v2 == b.v2 && slices.Equal(a.Queues, b.Queues) &&
		a.Exchange == b.Exchange && a.RoutingKey == b.RoutingKey &&
		bytes.Equal(a.Header, b.Header) && bytes.Equal(a.Body, b.Body)
}

// TestForwardDecoder decodes a stream of envelopes with one decoder: each must decode as
// DecodeForward decodes it, whether its queues and strings equal the previous envelope's
// (reused) or not, and a reused queue list must not change an earlier message's.
func TestForwardDecoder(t *testing.T) {
	env := func(queues []string, ex, rk string) []byte {
		return EncodeForwardMessage(nil, 7, queues, &queue.Message{Exchange: ex, RoutingKey: rk, Header: []byte{0, 60}, Body: []byte("body")})
	}
	steps := []struct {
		name string
		b    []byte
	}{
		{"first", env([]string{"q1"}, "", "q1")},
		{"same", env([]string{"q1"}, "", "q1")},
		{"other queue", env([]string{"q2"}, "", "q1")},
		{"other routing key", env([]string{"q2"}, "", "k")},
		{"more queues", env([]string{"q2", "q3"}, "ex", "k")},
		{"same two", env([]string{"q2", "q3"}, "ex", "k")},
		{"second differs", env([]string{"q2", "q4"}, "ex", "k")},
		{"none (delayed)", env(nil, "dx", "k")},
		{"v1", EncodeForward(nil, []string{"q2", "q4"}, "ex", "k", []byte{0, 60}, []byte("b"))},
		{"truncated in a reused name", env([]string{"q2", "q4"}, "ex", "k")[:8]},
		{"after an error", env([]string{"q2", "q4"}, "ex", "k")},
	}
	var d ForwardDecoder
	type decoded struct {
		name string
		b    []byte
		f    Forwarded
	}
	var kept []decoded
	for _, s := range steps {
		want, wantErr := DecodeForward(s.b)
		got, err := d.Decode(s.b)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("%s: error %v, DecodeForward's %v", s.name, err, wantErr)
		}
		if err == nil && !sameForwarded(got, want) {
			t.Fatalf("%s: decoded %+v, DecodeForward %+v", s.name, got, want)
		}
		if err == nil {
			kept = append(kept, decoded{s.name, s.b, got})
		}
	}
	for _, k := range kept {
		if want, _ := DecodeForward(k.b); !sameForwarded(k.f, want) {
			t.Errorf("%s: changed by later envelopes: %+v", k.name, k.f)
		}
	}
}

// TestForwardDecoderAllocs: a stream of envelopes to the same queue costs no allocation per
// envelope (DecodeForward's are the queue list, the queue name and the routing key).
func TestForwardDecoderAllocs(t *testing.T) {
	b := EncodeForwardMessage(nil, 7, []string{"q1"}, &queue.Message{RoutingKey: "q1", Header: []byte{0, 60}, Body: []byte("body")})
	var d ForwardDecoder
	if n := testing.AllocsPerRun(100, func() {
		if _, err := d.Decode(b); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("%v allocations per envelope, want 0", n)
	}
}

// FuzzForwardDecoder decodes pairs of envelopes with one decoder: each as DecodeForward does.
func FuzzForwardDecoder(f *testing.F) {
	a := EncodeForward(nil, []string{"q1", "q2"}, "ex", "rk", []byte{0, 60}, []byte("body"))
	f.Add(a, a)
	f.Add(a, EncodeForward(nil, []string{"q1", "q3"}, "ex", "rk", []byte{0, 60}, []byte("body")))
	f.Add(a, a[:9])
	f.Fuzz(func(t *testing.T, x, y []byte) {
		var d ForwardDecoder
		for _, b := range [][]byte{x, y, x} {
			want, wantErr := DecodeForward(b)
			got, err := d.Decode(b)
			if (err != nil) != (wantErr != nil) || err == nil && !sameForwarded(got, want) {
				t.Fatalf("decoded %+v (%v), DecodeForward %+v (%v)", got, err, want, wantErr)
			}
		}
	})
}
