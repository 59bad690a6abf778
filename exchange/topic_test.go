package exchange

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// rabbitTopicPatterns are RabbitMQ's own topic test bindings (t1..t26,
// from rabbit's unit tests) plus tutorial patterns and empty-word edge
// cases (t27..t39). Binding tN routes to queue "tN".
var rabbitTopicPatterns = []string{
	"a.b.c", "a.*.c", "a.#.b", "a.b.b.c", "#", "#.#", "#.b", "*.*", "a.*", "*.b.c", "a.#", "a.#.#", "b.b.c",
	"a.b.b", "a.b", "b.c", "", "*.*.*", "vodka.martini", "a.b.c", "*.#", "#.*.#", "*.#.#", "#.#.#", "*", "#.b.#",
	"*.orange.*", "*.*.rabbit", "lazy.#", "#.a", "a..b", "a.*.b", ".", "a.", ".a", "*.", "#.", "#.#.#.#", "a.#.#.b",
}

// rabbitTopicExpected was recorded from RabbitMQ 3.10.8 on 127.0.0.1:5672
// by binding one queue per pattern above and publishing each key.
var rabbitTopicExpected = []struct {
	key  string
	want []string
}{
	{"a.b.c", []string{"t1", "t10", "t11", "t12", "t18", "t2", "t20", "t21", "t22", "t23", "t24", "t26", "t38", "t5", "t6"}},
	{"a.b", []string{"t11", "t12", "t15", "t21", "t22", "t23", "t24", "t26", "t3", "t38", "t39", "t5", "t6", "t7", "t8", "t9"}},
	{"a.b.b", []string{"t11", "t12", "t14", "t18", "t21", "t22", "t23", "t24", "t26", "t3", "t32", "t38", "t39", "t5", "t6", "t7"}},
	{"", []string{"t17", "t24", "t38", "t5", "t6"}},
	{"b.c.c", []string{"t18", "t21", "t22", "t23", "t24", "t26", "t38", "t5", "t6"}},
	{"a.a.a.a.a", []string{"t11", "t12", "t21", "t22", "t23", "t24", "t30", "t38", "t5", "t6"}},
	{"vodka.gin", []string{"t21", "t22", "t23", "t24", "t38", "t5", "t6", "t8"}},
	{"vodka.martini", []string{"t19", "t21", "t22", "t23", "t24", "t38", "t5", "t6", "t8"}},
	{"b.b.c", []string{"t10", "t13", "t18", "t21", "t22", "t23", "t24", "t26", "t38", "t5", "t6"}},
	{"nothing.here.at.all", []string{"t21", "t22", "t23", "t24", "t38", "t5", "t6"}},
	{"oneword", []string{"t21", "t22", "t23", "t24", "t25", "t38", "t5", "t6"}},
	{"quick.orange.rabbit", []string{"t18", "t21", "t22", "t23", "t24", "t27", "t28", "t38", "t5", "t6"}},
	{"lazy.orange.elephant", []string{"t18", "t21", "t22", "t23", "t24", "t27", "t29", "t38", "t5", "t6"}},
	{"quick.orange.fox", []string{"t18", "t21", "t22", "t23", "t24", "t27", "t38", "t5", "t6"}},
	{"lazy.brown.fox", []string{"t18", "t21", "t22", "t23", "t24", "t29", "t38", "t5", "t6"}},
	{"lazy.pink.rabbit", []string{"t18", "t21", "t22", "t23", "t24", "t28", "t29", "t38", "t5", "t6"}},
	{"quick.brown.fox", []string{"t18", "t21", "t22", "t23", "t24", "t38", "t5", "t6"}},
	{"orange", []string{"t21", "t22", "t23", "t24", "t25", "t38", "t5", "t6"}},
	{"quick.orange.male.rabbit", []string{"t21", "t22", "t23", "t24", "t38", "t5", "t6"}},
	{"lazy.orange.male.rabbit", []string{"t21", "t22", "t23", "t24", "t29", "t38", "t5", "t6"}},
	{"lazy", []string{"t21", "t22", "t23", "t24", "t25", "t29", "t38", "t5", "t6"}},
	{"a..b", []string{"t11", "t12", "t18", "t21", "t22", "t23", "t24", "t26", "t3", "t31", "t32", "t38", "t39", "t5", "t6", "t7"}},
	{".", []string{"t21", "t22", "t23", "t24", "t33", "t36", "t37", "t38", "t5", "t6", "t8"}},
	{"a.", []string{"t11", "t12", "t21", "t22", "t23", "t24", "t34", "t36", "t37", "t38", "t5", "t6", "t8", "t9"}},
	{".a", []string{"t21", "t22", "t23", "t24", "t30", "t35", "t38", "t5", "t6", "t8"}},
	{"..", []string{"t18", "t21", "t22", "t23", "t24", "t37", "t38", "t5", "t6"}},
	{"a", []string{"t11", "t12", "t21", "t22", "t23", "t24", "t25", "t30", "t38", "t5", "t6"}},
	{"b.a", []string{"t21", "t22", "t23", "t24", "t26", "t30", "t38", "t5", "t6", "t8"}},
	{"a.x.y.b", []string{"t11", "t12", "t21", "t22", "t23", "t24", "t26", "t3", "t38", "t39", "t5", "t6", "t7"}},
	{"a.b.a", []string{"t11", "t12", "t18", "t21", "t22", "t23", "t24", "t26", "t30", "t38", "t5", "t6"}},
}

func TestTopicMatchesRabbitMQ(t *testing.T) {
	r := NewRouter(Topic)
	for i, p := range rabbitTopicPatterns {
		if ok, err := r.Bind(Binding{Destination: fmt.Sprintf("t%d", i+1), Key: p}); !ok || err != nil {
			t.Fatalf("Bind(%q) = %v, %v", p, ok, err)
		}
	}
	for _, tc := range rabbitTopicExpected {
		t.Run(tc.key, func(t *testing.T) {
			got := names(r.Route(tc.key, nil, nil))
			want := slices.Sorted(slices.Values(tc.want))
			if !slices.Equal(got, want) {
				t.Errorf("Route(%q)\n got %v\nwant %v", tc.key, got, want)
			}
		})
	}
}

func TestTopicSmall(t *testing.T) {
	tests := []struct {
		pattern string
		match   []string
		nomatch []string
	}{
		{"*.orange.*", []string{"quick.orange.rabbit", ".orange."}, []string{"orange", "quick.orange", "a.b.orange.c"}},
		{"*.*.rabbit", []string{"lazy.pink.rabbit", "..rabbit"}, []string{"quick.orange.male.rabbit", "rabbit"}},
		{"lazy.#", []string{"lazy", "lazy.", "lazy.a.b.c"}, []string{"lazyx", "a.lazy", ""}},
		{"#", []string{"", ".", "a", "a.b.c"}, nil},
		{"#.a", []string{"a", "x.a", "x.y.a", ".a"}, []string{"", "a.x", "b"}},
		{"a.#.b", []string{"a.b", "a.x.b", "a.x.y.b", "a..b"}, []string{"a", "b", "a.b.c", "x.a.b"}},
		{"", []string{""}, []string{".", "a"}},
		{"*", []string{"a", "x"}, []string{"", ".", "a.b"}},
		{"a..b", []string{"a..b"}, []string{"a.b", "a...b"}},
		{"#.#.#.#.#.#.#.#.#.#.z", []string{"z", "a.z", strings.Repeat("a.", 200) + "z"}, []string{strings.Repeat("a.", 200) + "y"}},
	}
	for _, tc := range tests {
		r := NewRouter(Topic)
		r.Bind(Binding{Destination: "q", Key: tc.pattern})
		for _, k := range tc.match {
			if got := r.Route(k, nil, nil); len(got) != 1 {
				t.Errorf("pattern %q key %q: got %v, want match", tc.pattern, k, got)
			}
		}
		for _, k := range tc.nomatch {
			if got := r.Route(k, nil, nil); len(got) != 0 {
				t.Errorf("pattern %q key %q: got %v, want no match", tc.pattern, k, got)
			}
		}
	}
}

// TestTopicLongKeys guards against exponential backtracking: 300-word keys
// against stacked "#" patterns must stay fast.
func TestTopicLongKeys(t *testing.T) {
	r := NewRouter(Topic)
	pats := []string{"#.#.#.#", "#.*.#.*.#", "#.x.#.y.#.z", strings.Repeat("#.", 50) + "end", strings.Repeat("*.", 299) + "*"}
	for i, p := range pats {
		r.Bind(Binding{Destination: fmt.Sprint(i), Key: p})
	}
	key := strings.TrimSuffix(strings.Repeat("w.", 300), ".")
	start := time.Now()
	got := names(r.Route(key, nil, nil))
	if d := time.Since(start); d > time.Second {
		t.Fatalf("routing a 300-word key took %v", d)
	}
	if want := []string{"0", "1", "4"}; !slices.Equal(got, want) {
		t.Errorf("300 words: got %v, want %v", got, want)
	}
	key2 := "x." + key + ".y.z"
	if got, want := names(r.Route(key2, nil, nil)), []string{"0", "1", "2"}; !slices.Equal(got, want) {
		t.Errorf("303 words: got %v, want %v", got, want)
	}
}

func TestTopicDedupAndPrune(t *testing.T) {
	r := NewRouter(Topic)
	keys := []string{"a.b", "a.*", "#", "*.b", "a.#"}
	for _, k := range keys {
		r.Bind(Binding{Destination: "q", Key: k})
	}
	r.Bind(Binding{Destination: "q", Key: "a.b", ToExchange: true})
	got := r.Route("a.b", nil, nil)
	if len(got) != 2 {
		t.Fatalf("want q once as queue and once as exchange, got %v", got)
	}
	for _, k := range keys {
		if !r.Unbind(Binding{Destination: "q", Key: k}) {
			t.Fatalf("Unbind(%q) = false", k)
		}
	}
	r.Unbind(Binding{Destination: "q", Key: "a.b", ToExchange: true})
	tt := r.(*router).tab.(*topicTable)
	if !tt.root.leaf() {
		t.Errorf("trie not pruned: %+v", tt.root)
	}
	if got := r.Route("a.b", nil, nil); len(got) != 0 {
		t.Errorf("after unbind: %v", got)
	}
}
