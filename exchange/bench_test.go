package exchange

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/warrenmq/warren/amqp"
)

func BenchmarkDirectRoute(b *testing.B) {
	r := NewRouter(Direct)
	for i := range 1000 {
		r.Bind(Binding{Destination: fmt.Sprint("q", i), Key: fmt.Sprint("key.", i)})
	}
	out := make([]Dest, 0, 16)
	b.ReportAllocs()
	for b.Loop() {
		out = r.Route("key.500", nil, out[:0])
	}
	if len(out) != 1 {
		b.Fatal(out)
	}
}

func BenchmarkFanoutRoute10(b *testing.B) {
	r := NewRouter(Fanout)
	for i := range 10 {
		r.Bind(Binding{Destination: fmt.Sprint("q", i)})
	}
	out := make([]Dest, 0, 16)
	b.ReportAllocs()
	for b.Loop() {
		out = r.Route("", nil, out[:0])
	}
	if len(out) != 10 {
		b.Fatal(out)
	}
}

var topicVocab = []string{"stock", "usd", "eur", "nyse", "nasdaq", "trade", "quote", "error", "info", "warn",
	"eu", "us", "asia", "cpu", "mem", "disk", "net", "app", "db", "cache"}

// topicBenchRouter builds n pseudo-random patterns of 1-6 words, roughly
// 70% literal, 20% "*" and 10% "#", over a 20-word vocabulary.
func topicBenchRouter(n int) Router {
	rng := rand.New(rand.NewPCG(1, 2))
	r := NewRouter(Topic)
	for i := range n {
		words := make([]string, 1+rng.IntN(6))
		for j := range words {
			switch p := rng.IntN(10); {
			case p < 7:
				words[j] = topicVocab[rng.IntN(len(topicVocab))]
			case p < 9:
				words[j] = "*"
			default:
				words[j] = "#"
			}
		}
		r.Bind(Binding{Destination: fmt.Sprint("q", i%2000), Key: strings.Join(words, ".")})
	}
	return r
}

func BenchmarkTopicRoute10k(b *testing.B) {
	r := topicBenchRouter(10000)
	out := make([]Dest, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		out = r.Route("stock.usd.nyse.trade.eu", nil, out[:0])
	}
	b.ReportMetric(float64(len(out)), "dests")
}

func BenchmarkTopicRoute10kParallel(b *testing.B) {
	r := topicBenchRouter(10000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		out := make([]Dest, 0, 4096)
		for pb.Next() {
			out = r.Route("stock.usd.nyse.trade.eu", nil, out[:0])
		}
	})
}

// BenchmarkTopicBind100k shows Bind stays O(key) per call: loading 100k
// bindings one at a time is linear in total, not quadratic.
func BenchmarkTopicBind100k(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		r := NewRouter(Topic)
		for i := range 100000 {
			r.Bind(Binding{Destination: fmt.Sprint("q", i%1000), Key: fmt.Sprintf("a.%d.*.#", i)})
		}
	}
}

func BenchmarkHeadersRoute100(b *testing.B) {
	r := NewRouter(Headers)
	for i := range 100 {
		r.Bind(Binding{Destination: fmt.Sprint("q", i), Args: amqp.Table{
			"x-match": []string{"all", "any"}[i%2],
			"region":  []string{"eu", "us", "asia"}[i%3],
			"level":   int32(i % 5),
			"app":     fmt.Sprint("app", i%7),
		}})
	}
	h := amqp.Table{"region": "eu", "level": int32(3), "app": "app3", "host": "h1", "x-trace": "t"}
	out := make([]Dest, 0, 128)
	b.ReportAllocs()
	for b.Loop() {
		out = r.Route("", h, out[:0])
	}
	b.ReportMetric(float64(len(out)), "dests")
}
