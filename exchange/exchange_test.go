package exchange

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/warrenmq/warren/amqp"
)

func TestKind(t *testing.T) {
	tests := []struct {
		s  string
		k  Kind
		ok bool
	}{
		{"direct", Direct, true},
		{"fanout", Fanout, true},
		{"topic", Topic, true},
		{"headers", Headers, true},
		{"x-consistent-hash", 0, false},
		{"Direct", 0, false},
		{"", 0, false},
	}
	for _, tc := range tests {
		k, ok := ParseKind(tc.s)
		if k != tc.k || ok != tc.ok {
			t.Errorf("ParseKind(%q) = %v, %v; want %v, %v", tc.s, k, ok, tc.k, tc.ok)
		}
		if ok && k.String() != tc.s {
			t.Errorf("%v.String() = %q", k, k.String())
		}
		if ok && NewRouter(k).Kind() != k {
			t.Errorf("NewRouter(%v).Kind() mismatch", k)
		}
	}
	if Kind(9).String() != "unknown" {
		t.Errorf("Kind(9).String() = %q", Kind(9).String())
	}
}

func TestDirect(t *testing.T) {
	r := NewRouter(Direct)
	for _, b := range []Binding{
		{Destination: "q1", Key: "k"},
		{Destination: "q2", Key: "k"},
		{Destination: "q1", Key: "k", Args: amqp.Table{"x": "y"}}, // same dest, other args: routed once
		{Destination: "e1", Key: "k", ToExchange: true},
		{Destination: "q3", Key: ""},
		{Destination: "q4", Key: "a.b"},
	} {
		if ok, err := r.Bind(b); !ok || err != nil {
			t.Fatalf("Bind(%+v) = %v, %v", b, ok, err)
		}
	}
	tests := []struct {
		key  string
		want []string
	}{
		{"k", []string{"q1", "q2", "x:e1"}},
		{"", []string{"q3"}},
		{"a.b", []string{"q4"}},
		{"a.*", nil},
		{"K", nil},
	}
	for _, tc := range tests {
		if got := names(r.Route(tc.key, nil, nil)); !slices.Equal(got, append([]string{}, tc.want...)) {
			t.Errorf("Route(%q) = %v, want %v", tc.key, got, tc.want)
		}
	}
	r.Unbind(Binding{Destination: "q1", Key: "k"})
	if got := names(r.Route("k", nil, nil)); !slices.Equal(got, []string{"q1", "q2", "x:e1"}) {
		t.Errorf("q1 still has an args binding on k: got %v", got)
	}
	r.Unbind(Binding{Destination: "q1", Key: "k", Args: amqp.Table{"x": "y"}})
	if got := names(r.Route("k", nil, nil)); !slices.Equal(got, []string{"q2", "x:e1"}) {
		t.Errorf("after both unbinds: got %v", got)
	}
}

func TestFanout(t *testing.T) {
	r := NewRouter(Fanout)
	r.Bind(Binding{Destination: "q1"})
	r.Bind(Binding{Destination: "q1", Key: "other"})
	r.Bind(Binding{Destination: "q2", Key: "ignored"})
	r.Bind(Binding{Destination: "q2", ToExchange: true})
	for _, key := range []string{"", "anything", "a.b.c"} {
		if got := names(r.Route(key, nil, nil)); !slices.Equal(got, []string{"q1", "q2", "x:q2"}) {
			t.Errorf("Route(%q) = %v", key, got)
		}
	}
	out := make([]Dest, 1, 8)
	out[0] = Dest{Name: "pre"}
	if got := r.Route("", nil, out); len(got) != 4 || got[0].Name != "pre" {
		t.Errorf("Route must append to out: %v", got)
	}
}

// TestBindingLifecycle runs the bookkeeping API against every kind, since
// it is shared code with per-kind hooks.
func TestBindingLifecycle(t *testing.T) {
	for _, k := range []Kind{Direct, Fanout, Topic, Headers} {
		t.Run(k.String(), func(t *testing.T) {
			r := NewRouter(k)
			bs := []Binding{
				{Destination: "q1", Key: "a"},
				{Destination: "q1", Key: "b"},
				{Destination: "q1", Key: "a", Args: amqp.Table{"n": int32(1)}},
				{Destination: "q1", Key: "a", Args: amqp.Table{"n": int64(1)}}, // typed: a distinct binding
				{Destination: "q1", Key: "a", ToExchange: true},
				{Destination: "q2", Key: "a", Args: amqp.Table{"m": amqp.Table{"x": []any{"y", nil}}, "p": 1.5}},
			}
			for _, b := range bs {
				if ok, err := r.Bind(b); !ok || err != nil {
					t.Fatalf("Bind(%+v) = %v, %v", b, ok, err)
				}
			}
			dups := []Binding{
				{Destination: "q1", Key: "a"},
				{Destination: "q1", Key: "a", Args: amqp.Table{}}, // empty args equal nil args
				{Destination: "q2", Key: "a", Args: amqp.Table{"p": 1.5, "m": amqp.Table{"x": []any{"y", nil}}}},
			}
			for _, b := range dups {
				if ok, err := r.Bind(b); ok || err != nil {
					t.Errorf("duplicate Bind(%+v) = %v, %v; want false, nil", b, ok, err)
				}
			}
			if r.Len() != len(bs) {
				t.Fatalf("Len = %d, want %d", r.Len(), len(bs))
			}
			got := r.Bindings()
			if len(got) != len(bs) {
				t.Fatalf("Bindings() has %d, want %d", len(got), len(bs))
			}
			if !slices.IsSortedFunc(got, func(a, b Binding) int {
				if a.Destination != b.Destination {
					return map[bool]int{true: -1, false: 1}[a.Destination < b.Destination]
				}
				return 0
			}) {
				t.Errorf("Bindings() not sorted by destination: %+v", got)
			}
			if r.Unbind(Binding{Destination: "q9", Key: "a"}) {
				t.Error("Unbind of an absent binding returned true")
			}
			if !r.Unbind(Binding{Destination: "q1", Key: "b"}) || r.Unbind(Binding{Destination: "q1", Key: "b"}) {
				t.Error("Unbind must succeed once then report absence")
			}
			if n := r.UnbindDestination("q1", false); n != 3 {
				t.Errorf("UnbindDestination(q1, queue) = %d, want 3", n)
			}
			if n := r.UnbindDestination("q1", false); n != 0 {
				t.Errorf("second UnbindDestination = %d, want 0", n)
			}
			if r.Len() != 2 {
				t.Errorf("Len = %d, want 2 (exchange q1 and queue q2 remain)", r.Len())
			}
			if n := r.UnbindDestination("q1", true); n != 1 {
				t.Errorf("UnbindDestination(q1, exchange) = %d, want 1", n)
			}
			r.UnbindDestination("q2", false)
			if r.Len() != 0 || len(r.Bindings()) != 0 {
				t.Errorf("table not empty: %d", r.Len())
			}
			if got := r.Route("a", amqp.Table{}, nil); len(got) != 0 {
				t.Errorf("empty table routed to %v", got)
			}
		})
	}
}

func TestBindCopiesArgs(t *testing.T) {
	r := NewRouter(Headers)
	args := amqp.Table{"a": "1"}
	r.Bind(Binding{Destination: "q", Args: args})
	args["a"] = "2"
	if got := r.Route("", amqp.Table{"a": "1"}, nil); len(got) != 1 {
		t.Errorf("mutating the caller's table changed the binding: %v", got)
	}
	bs := r.Bindings()
	bs[0].Args["a"] = "3"
	if !r.Unbind(Binding{Destination: "q", Args: amqp.Table{"a": "1"}}) {
		t.Error("mutating Bindings() output changed the stored binding")
	}
}

// TestRouteNoAllocs pins the hot-path promise: with capacity in out, Route
// does not allocate for any kind.
func TestRouteNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops objects at random under -race; run without -race to check allocations")
	}
	h := amqp.Table{"a": int32(1), "b": "x"}
	for _, k := range []Kind{Direct, Fanout, Topic, Headers} {
		r := NewRouter(k)
		for i := range 50 {
			r.Bind(Binding{Destination: fmt.Sprint("q", i), Key: []string{"a.b.c", "a.*.c", "#.c", "a.#"}[i%4],
				Args: amqp.Table{"x-match": []string{"all", "any"}[i%2], "a": int32(i % 3), "b": "x"}})
		}
		out := make([]Dest, 0, 64)
		allocs := testing.AllocsPerRun(200, func() { out = r.Route("a.b.c", h, out[:0]) })
		if allocs != 0 {
			t.Errorf("%v: %v allocs per Route", k, allocs)
		}
		if len(out) == 0 {
			t.Errorf("%v: nothing routed", k)
		}
	}
}

// TestConcurrentRouteAndBind exercises the locking under -race: routers
// must keep routing stable bindings correctly while others churn.
func TestConcurrentRouteAndBind(t *testing.T) {
	for _, k := range []Kind{Direct, Fanout, Topic, Headers} {
		t.Run(k.String(), func(t *testing.T) {
			r := NewRouter(k)
			stable := Binding{Destination: "stable", Key: "a.b", Args: amqp.Table{"h": "v"}}
			r.Bind(stable)
			h := amqp.Table{"h": "v"}
			var writers, readers sync.WaitGroup
			stop := make(chan struct{})
			for w := range 4 {
				writers.Add(1)
				go func() {
					defer writers.Done()
					keys := []string{"a.b", "a.*", "#", "a.#.b", "x.y"}
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						d := fmt.Sprintf("w%d-%d", w, i%50)
						b := Binding{Destination: d, Key: keys[i%len(keys)], Args: amqp.Table{"h": "v"}}
						r.Bind(b)
						if i%3 == 0 {
							r.UnbindDestination(d, false)
						} else {
							r.Unbind(b)
						}
					}
				}()
			}
			errs := make(chan string, 4)
			for range 4 {
				readers.Add(1)
				go func() {
					defer readers.Done()
					out := make([]Dest, 0, 64)
					for range 3000 {
						out = r.Route("a.b", h, out[:0])
						seen := map[Dest]bool{}
						for _, d := range out {
							if seen[d] {
								errs <- fmt.Sprintf("duplicate %v in %v", d, out)
								return
							}
							seen[d] = true
						}
						if !seen[Dest{Name: "stable"}] {
							errs <- fmt.Sprintf("stable binding missing from %v", out)
							return
						}
					}
				}()
			}
			readers.Wait()
			close(stop)
			writers.Wait()
			close(errs)
			for e := range errs {
				t.Error(e)
			}
			if r.Len() != 1 {
				t.Errorf("Len = %d after churn, want 1", r.Len())
			}
		})
	}
}

// TestBindingIdentityTyped mirrors RabbitMQ 3.10.8 (checked by binding with
// one table and unbinding with the other): argument types are part of a
// binding's identity, key order and nil-versus-empty are not.
func TestBindingIdentityTyped(t *testing.T) {
	tests := []struct {
		bind, unbind amqp.Table
		same         bool
	}{
		{amqp.Table{"n": int32(1)}, amqp.Table{"n": int64(1)}, false},
		{amqp.Table{"n": int32(1)}, amqp.Table{"n": int32(1)}, true},
		{nil, amqp.Table{}, true},
		{amqp.Table{"s": "a"}, amqp.Table{"s": []byte("a")}, false},
		{amqp.Table{"a": "1", "b": "2"}, amqp.Table{"b": "2", "a": "1"}, true},
		{amqp.Table{"f": float32(1.5)}, amqp.Table{"f": 1.5}, false},
		{amqp.Table{"t": amqp.Table{"x": nil}}, amqp.Table{"t": map[string]any{"x": nil}}, true},
	}
	for _, tc := range tests {
		r := NewRouter(Direct)
		r.Bind(Binding{Destination: "q", Key: "k", Args: tc.bind})
		if got := r.Unbind(Binding{Destination: "q", Key: "k", Args: tc.unbind}); got != tc.same {
			t.Errorf("bind %v, unbind %v: removed = %v, want %v", tc.bind, tc.unbind, got, tc.same)
		}
	}
}

// TestManyDestsOneKey crosses the destSet switch from linear scan to index
// map and back down, checking refcounts survive the swap-deletes.
func TestManyDestsOneKey(t *testing.T) {
	for _, k := range []Kind{Direct, Fanout, Topic} {
		r := NewRouter(k)
		for i := range 20 {
			r.Bind(Binding{Destination: fmt.Sprint("q", i), Key: "k"})
			r.Bind(Binding{Destination: fmt.Sprint("q", i), Key: "k", Args: amqp.Table{"i": int32(i)}})
		}
		for i := 0; i < 20; i += 2 {
			r.Unbind(Binding{Destination: fmt.Sprint("q", i), Key: "k"})
		}
		if got := r.Route("k", nil, nil); len(got) != 20 {
			t.Errorf("%v: %d dests after dropping one of two bindings each, want 20", k, len(got))
		}
		for i := 0; i < 20; i += 2 {
			r.Unbind(Binding{Destination: fmt.Sprint("q", i), Key: "k", Args: amqp.Table{"i": int32(i)}})
		}
		got := names(r.Route("k", nil, nil))
		var want []string
		for i := 1; i < 20; i += 2 {
			want = append(want, fmt.Sprint("q", i))
		}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%v: got %v, want %v", k, got, want)
		}
	}
}
