package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren/server"
)

func TestParseFlags(t *testing.T) {
	defaults := Config{
		URL: "amqp://guest:guest@localhost:5672/", Mode: "throughput", Producers: 1, Consumers: 1, Queues: 1,
		Size: 16, AutoAck: true, MultiAck: 1, Duration: 10 * time.Second, QueuePrefix: "bench", Conns: 100, Count: 1000, Coalesce: true, Client: "lean",
		RampCounts: "100,200,400,600,800,1000,1200,1600,2000", RampP99: 100 * time.Millisecond, RampBehind: 0.05,
		StreamOffset: "next",
	}
	tests := []struct {
		name    string
		args    []string
		want    func(c *Config)
		wantErr string
	}{
		{name: "defaults", args: nil, want: func(*Config) {}},
		{
			name: "all throughput flags",
			args: []string{"-url", "amqp://u:p@h:1/v", "-producers", "4", "-consumers", "3", "-queues", "2",
				"-size", "1024", "-persistent", "-confirm", "256", "-autoack=false", "-prefetch", "100",
				"-multi-ack", "10", "-fanout", "5", "-rate", "500", "-duration", "2s", "-pmessages", "7",
				"-json", "-queue-prefix", "p", "-exchange", "x", "-keep", "-quiet", "-coalesce=false", "-client", "amqp091", "-broker-pid", "42", "-cpuprofile", "cpu.out"},
			want: func(c *Config) {
				c.URL, c.Producers, c.Consumers, c.Queues, c.Size = "amqp://u:p@h:1/v", 4, 3, 2, 1024
				c.Persistent, c.Confirm, c.AutoAck, c.Prefetch, c.MultiAck = true, 256, false, 100, 10
				c.Fanout, c.Rate, c.Duration, c.DurationSet, c.PMessages = 5, 500, 2*time.Second, true, 7
				c.JSON, c.QueuePrefix, c.Exchange, c.Keep, c.Quiet, c.Coalesce = true, "p", "x", true, true, false
				c.Client, c.BrokerPID, c.CPUProfile = "amqp091", 42, "cpu.out"
			},
		},
		{name: "drain", args: []string{"-drain", "-queues", "3"}, want: func(c *Config) { c.Drain, c.Queues = true, 3 }},
		{name: "churn", args: []string{"-mode", "churn", "-producers", "2"}, want: func(c *Config) { c.Mode, c.Producers = "churn", 2 }},
		{name: "idle", args: []string{"-mode", "idle-conns", "-conns", "5000"}, want: func(c *Config) { c.Mode, c.Conns = "idle-conns", 5000 }},
		{name: "queues", args: []string{"-mode", "queues", "-count", "10"}, want: func(c *Config) { c.Mode, c.Count = "queues", 10 }},
		{name: "many defaults: issue 22's load", args: []string{"-mode", "many"}, want: func(c *Config) {
			c.Mode, c.Producers, c.Consumers, c.Queues, c.Rate, c.Size, c.AutoAck, c.Prefetch = "many", 400, 400, 400, 25, 1024, false, 10
		}},
		{name: "many: consumers and queues follow producers", args: []string{"-mode", "many", "-producers", "7", "-rate", "5"}, want: func(c *Config) {
			c.Mode, c.Producers, c.Consumers, c.Queues, c.Rate, c.Size, c.AutoAck, c.Prefetch = "many", 7, 7, 7, 5, 1024, false, 10
		}},
		{name: "many: explicit flags win", args: []string{"-mode", "many", "-queues", "2", "-autoack", "-prefetch", "0", "-size", "16"}, want: func(c *Config) {
			c.Mode, c.Producers, c.Consumers, c.Queues, c.Rate, c.Size, c.AutoAck, c.Prefetch = "many", 400, 400, 2, 25, 16, true, 0
		}},
		{name: "throughput keeps its own defaults", args: []string{"-rate", "5"}, want: func(c *Config) { c.Rate = 5 }},
		{name: "ramp", args: []string{"-mode", "ramp", "-ramp-counts", "10, 20", "-ramp-p99", "50ms", "-ramp-behind", "0.2", "-floor-addr", "h:1"}, want: func(c *Config) {
			c.Mode, c.Producers, c.Consumers, c.Queues, c.Rate, c.Size, c.AutoAck, c.Prefetch = "ramp", 400, 400, 400, 25, 1024, false, 10
			c.RampCounts, c.RampP99, c.RampBehind, c.FloorAddr = "10, 20", 50*time.Millisecond, 0.2, "h:1"
		}},
		{name: "ramp-behind is a share", args: []string{"-ramp-behind", "1"}, wantErr: "-ramp-behind"},
		{name: "ramp counts must ascend", args: []string{"-ramp-counts", "10,10"}, wantErr: "must ascend"},
		{name: "ramp counts are counts", args: []string{"-ramp-counts", "10,x"}, wantErr: "not a positive count"},
		{name: "bad mode", args: []string{"-mode", "nope"}, wantErr: "unknown -mode"},
		{name: "negative broker pid", args: []string{"-broker-pid", "-1"}, wantErr: "-broker-pid"},
		{name: "bad client", args: []string{"-client", "nope"}, wantErr: "unknown -client"},
		{name: "prefetch too large", args: []string{"-prefetch", "70000"}, wantErr: "at most 65535"},
		{name: "multi-ack above prefetch", args: []string{"-autoack=false", "-prefetch", "5", "-multi-ack", "10"}, wantErr: "exceeds -prefetch"},
		{name: "multi-ack above prefetch fine with autoack", args: []string{"-prefetch", "5", "-multi-ack", "10"},
			want: func(c *Config) { c.Prefetch, c.MultiAck = 5, 10 }},
		{name: "zero queues", args: []string{"-queues", "0"}, wantErr: "-queues"},
		{name: "negative confirm", args: []string{"-confirm", "-1"}, wantErr: "must be >= 0"},
		{name: "zero multi-ack", args: []string{"-multi-ack", "0"}, wantErr: "-multi-ack"},
		{name: "zero duration", args: []string{"-duration", "0s"}, wantErr: "-duration"},
		{name: "churn without workers", args: []string{"-mode", "churn", "-producers", "0"}, wantErr: "churn"},
		{name: "bad url", args: []string{"-url", "http://x"}, wantErr: "bad -url"},
		{name: "quorum implies persistent", args: []string{"-quorum"}, want: func(c *Config) { c.Quorum, c.Persistent = true, true }},
		{name: "quorum and stream exclusive", args: []string{"-quorum", "-stream", "-autoack=false", "-prefetch", "10"}, wantErr: "exclusive"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected arguments"},
		{name: "unknown flag", args: []string{"-nope"}, wantErr: "not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseFlags(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			want := defaults
			tt.want(&want)
			if got != want {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestRunHelpAndErrors(t *testing.T) {
	var out bytes.Buffer
	if err := Run([]string{"-h"}, &out); err != nil {
		t.Fatalf("-h: %v", err)
	}
	if !strings.Contains(out.String(), "-pmessages") {
		t.Errorf("usage does not list flags: %q", out.String())
	}
	if err := Run([]string{"-mode", "bogus"}, io.Discard); err == nil {
		t.Fatal("bogus mode accepted")
	}
}

func TestBucketBounds(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	values := []uint64{0, 1, 63, 64, 65, 127, 128, 1000, 1 << 20, 1<<63 - 1, 1 << 63, ^uint64(0)}
	for i := 0; i < 10000; i++ {
		values = append(values, r.Uint64()>>r.UintN(64))
	}
	for _, v := range values {
		i := bucketOf(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("bucketOf(%d) = %d out of range", v, i)
		}
		lo, hi := bucketBounds(i)
		if v < lo || v > hi {
			t.Fatalf("value %d in bucket %d with bounds [%d,%d]", v, i, lo, hi)
		}
		if lo >= linearLimit && float64(hi-lo+1)/float64(lo) > 1.0/subCount+1e-12 {
			t.Fatalf("bucket %d [%d,%d] wider than 1/%d", i, lo, hi, subCount)
		}
	}
}

func TestHistogramQuantiles(t *testing.T) {
	tests := []struct {
		name    string
		samples func(r *rand.Rand) []int64
	}{
		{"uniform 1us-10ms", func(r *rand.Rand) []int64 {
			s := make([]int64, 100000)
			for i := range s {
				s[i] = 1000 + r.Int64N(10_000_000)
			}
			return s
		}},
		{"exponential tail", func(r *rand.Rand) []int64 {
			s := make([]int64, 50000)
			for i := range s {
				s[i] = int64(r.ExpFloat64() * 500_000)
			}
			return s
		}},
		{"small exact values", func(r *rand.Rand) []int64 {
			s := make([]int64, 1000)
			for i := range s {
				s[i] = int64(i % 50)
			}
			return s
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			samples := tt.samples(rand.New(rand.NewPCG(3, 4)))
			var h Histogram
			var sum int64
			for _, v := range samples {
				h.Record(v)
				sum += v
			}
			s := &Snapshot{}
			h.AddTo(s)
			sorted := slices.Clone(samples)
			slices.Sort(sorted)
			if s.Count != uint64(len(samples)) || s.Max != uint64(sorted[len(sorted)-1]) || s.Sum != uint64(sum) {
				t.Fatalf("count/max/sum = %d/%d/%d, want %d/%d/%d", s.Count, s.Max, s.Sum, len(samples), sorted[len(sorted)-1], sum)
			}
			for _, q := range []float64{0.5, 0.95, 0.99, 0.999, 1} {
				rank := int(float64(len(sorted))*q+0.999999) - 1
				exact := float64(sorted[rank])
				got := float64(s.Quantile(q))
				if diff := got - exact; diff < -exact/subCount-1 || diff > exact/subCount+1 {
					t.Errorf("q%.3f = %.0f, exact %.0f (beyond 1/%d relative error)", q, got, exact, subCount)
				}
			}
		})
	}
}

func TestSnapshotSub(t *testing.T) {
	var h Histogram
	for i := 0; i < 100; i++ {
		h.Record(1000)
	}
	first := &Snapshot{}
	h.AddTo(first)
	for i := 0; i < 100; i++ {
		h.Record(1_000_000)
	}
	second := &Snapshot{}
	h.AddTo(second)
	iv := second.Sub(first)
	if iv.Count != 100 {
		t.Fatalf("interval count = %d, want 100", iv.Count)
	}
	if p := iv.Quantile(0.01); p < 1_000_000*(1-1.0/subCount) {
		t.Errorf("interval p1 = %d, want about 1ms: earlier samples leaked in", p)
	}
	if empty := (&Snapshot{}); empty.Quantile(0.99) != 0 || empty.Mean() != 0 {
		t.Error("empty snapshot must report zeros")
	}
	h.Record(-5) // negative clamps to zero, never panics
}

// testBrokerURL is BENCH_TEST_URL when set (to measure another broker, e.g. RabbitMQ), otherwise
// the URL of a Warren started in-process for the test.
func testBrokerURL(t *testing.T) string {
	t.Helper()
	if url := os.Getenv("BENCH_TEST_URL"); url != "" {
		return url
	}
	cfg := server.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return "amqp://guest:guest@" + srv.Addr().String() + "/"
}

// TestRunEndToEnd drives Run against a live broker for one second per case.
func TestRunEndToEnd(t *testing.T) {
	url := testBrokerURL(t)
	prefix := "bench-test-" + time.Now().Format("150405.000")
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, r *Result)
	}{
		{"autoack without coalescing", []string{"-rate", "2000", "-client", "amqp091", "-coalesce=false"}, func(t *testing.T, r *Result) {
			if r.Published == 0 || r.Received == 0 || r.Latency == nil || r.Latency.Count == 0 {
				t.Errorf("nothing measured: %+v", r)
			}
		}},
		{"confirms manual ack fanout", []string{"-confirm", "16", "-autoack=false", "-prefetch", "20", "-multi-ack", "5", "-fanout", "3", "-size", "256"},
			func(t *testing.T, r *Result) {
				if r.Confirmed == 0 || r.ConfirmLatency == nil || r.ConfirmLatency.P50Ms <= 0 {
					t.Errorf("no confirms measured: %+v", r)
				}
				if r.Consumers != 3 || r.Received < r.Confirmed {
					t.Errorf("fanout: consumers %d received %d < confirmed %d", r.Consumers, r.Received, r.Confirmed)
				}
			}},
		{"pmessages", []string{"-pmessages", "500", "-producers", "2", "-queues", "2", "-consumers", "2", "-confirm", "50"},
			func(t *testing.T, r *Result) {
				if r.Published != 1000 || r.Received != 1000 || r.Confirmed != 1000 {
					t.Errorf("published/received/confirmed = %d/%d/%d, want 1000 each", r.Published, r.Received, r.Confirmed)
				}
			}},
		{"bodies split over frames", []string{"-size", "300000", "-rate", "200", "-autoack=false", "-prefetch", "4", "-multi-ack", "2"},
			func(t *testing.T, r *Result) {
				if r.Received == 0 || r.Latency == nil || r.Latency.Count != uint64(r.Received) {
					t.Errorf("large bodies not received and stamped: %+v", r)
				}
			}},
		{"churn", []string{"-mode", "churn"}, func(t *testing.T, r *Result) {
			if r.Connections == 0 || r.Failed != 0 {
				t.Errorf("churn: %d connections, %d failed", r.Connections, r.Failed)
			}
		}},
		{"idle-conns", []string{"-mode", "idle-conns", "-conns", "20"}, func(t *testing.T, r *Result) {
			if r.Connections != 20 || r.Alive != 20 {
				t.Errorf("idle: opened %d alive %d, want 20", r.Connections, r.Alive)
			}
		}},
		{"queues", []string{"-mode", "queues", "-count", "50", "-broker-pid", strconv.Itoa(os.Getpid())}, func(t *testing.T, r *Result) {
			if r.Declared != 50 {
				t.Errorf("declared %d, want 50", r.Declared)
			}
			// The in-process broker's PID is ours; any process's RSS is a fine check of the sampling.
			if r.RSS <= 0 || r.RSSBefore <= 0 || r.Server == "" {
				t.Errorf("rss before/at point %d/%d, server %q", r.RSSBefore, r.RSS, r.Server)
			}
		}},
	}
	n := 0
	for _, client := range []string{"lean", "amqp091"} {
		for _, tt := range tests {
			if client == "lean" && slices.Contains(tt.args, "-client") {
				continue // the case picks its client itself: run it once
			}
			n++
			t.Run(client+"/"+tt.name, func(t *testing.T) {
				args := append([]string{"-url", url, "-duration", "1s", "-json", "-client", client,
					"-queue-prefix", fmt.Sprintf("%s-%d", prefix, n)}, tt.args...)
				if slices.Contains(tt.args, "-pmessages") {
					args = append(args, "-duration", "20s") // a timeout only
				}
				var out bytes.Buffer
				if err := Run(args, &out); err != nil {
					t.Fatalf("Run: %v\n%s", err, out.String())
				}
				var r Result
				if err := json.Unmarshal(out.Bytes(), &r); err != nil {
					t.Fatalf("output is not one JSON object: %v\n%s", err, out.String())
				}
				if len(r.Errors) > 0 {
					t.Errorf("errors: %v", r.Errors)
				}
				tt.check(t, &r)
			})
		}
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ in, want string }{
		{"amqp://guest:guest@localhost:5672/", "amqp://guest:xxx@localhost:5672/"},
		{"amqp://localhost:5672/vh", "amqp://localhost:5672/vh"},
		{"amqp://user@host/", "amqp://user@host/"},
	}
	for _, tt := range tests {
		if got := redact(tt.in); got != tt.want {
			t.Errorf("redact(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestStamp(t *testing.T) {
	tests := []struct {
		size int
		ok   bool
	}{{0, false}, {7, false}, {8, true}, {1024, true}}
	for _, tt := range tests {
		body := make([]byte, tt.size)
		putStamp(body, 123456789)
		ts, ok := readStamp(body)
		if ok != tt.ok || (ok && ts != 123456789) {
			t.Errorf("size %d: readStamp = %d, %v", tt.size, ts, ok)
		}
	}
}

// TestRunBacklogDrain fills queues with -pmessages (confirmed, so the broker
// holds every message before the drain starts) and drains them with -drain.
func TestRunBacklogDrain(t *testing.T) {
	url := testBrokerURL(t)
	prefix := "bench-drain-" + time.Now().Format("150405.000")
	run := func(args ...string) *Result {
		t.Helper()
		var out bytes.Buffer
		args = append([]string{"-url", url, "-json", "-queue-prefix", prefix, "-queues", "3", "-duration", "30s"}, args...)
		if err := Run(args, &out); err != nil {
			t.Fatalf("Run %v: %v\n%s", args, err, out.String())
		}
		var r Result
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("bad JSON: %v\n%s", err, out.String())
		}
		return &r
	}
	fill := run("-producers", "3", "-consumers", "0", "-pmessages", "1000", "-confirm", "100", "-keep")
	if fill.Published != 3000 || fill.Confirmed != 3000 || fill.Received != 0 {
		t.Fatalf("fill: published/confirmed/received = %d/%d/%d", fill.Published, fill.Confirmed, fill.Received)
	}
	drain := run("-drain", "-consumers", "1", "-autoack=false", "-prefetch", "50", "-multi-ack", "10")
	if drain.Backlog != 3000 || drain.Received != 3000 || drain.Consumers != 3 || drain.Latency != nil {
		t.Fatalf("drain: backlog %d received %d consumers %d latency %v", drain.Backlog, drain.Received, drain.Consumers, drain.Latency)
	}
}

func TestConfirmWindow(t *testing.T) {
	type settle struct {
		tag      uint64
		multiple bool
	}
	tests := []struct {
		name    string
		size    int
		sent    int
		settles []settle
		want    []uint64 // tags settled, in order
		wantLow uint64
	}{
		{"in order singles", 4, 3, []settle{{1, false}, {2, false}, {3, false}}, []uint64{1, 2, 3}, 4},
		{"multiple covers older", 8, 5, []settle{{4, true}}, []uint64{1, 2, 3, 4}, 5},
		{"out of order", 4, 3, []settle{{2, false}, {1, false}}, []uint64{2, 1}, 3},
		{"gap holds low", 4, 3, []settle{{3, false}}, []uint64{3}, 1},
		{"duplicate and unknown ignored", 4, 2, []settle{{1, false}, {1, false}, {9, false}, {2, true}}, []uint64{1, 2}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newConfirmWindow(tt.size)
			for i := 0; i < tt.sent; i++ {
				if tag, ok := w.reserve(nil); !ok || tag != uint64(i+1) {
					t.Fatalf("reserve = %d, %v", tag, ok)
				}
			}
			var got []uint64
			for _, s := range tt.settles {
				w.settle(s.tag, s.multiple, func(tag uint64) { got = append(got, tag) })
			}
			if !slices.Equal(got, tt.want) || w.low != tt.wantLow {
				t.Errorf("settled %v low %d, want %v low %d", got, w.low, tt.want, tt.wantLow)
			}
		})
	}
	t.Run("full window waits, abort releases", func(t *testing.T) {
		w := newConfirmWindow(2)
		w.reserve(nil)
		w.reserve(nil)
		flushed := make(chan struct{})
		res := make(chan bool)
		go func() {
			_, ok := w.reserve(func() { close(flushed) })
			res <- ok
		}()
		<-flushed // the producer flushes before it sleeps
		w.settle(1, false, func(uint64) {})
		if ok := <-res; !ok {
			t.Fatal("reserve failed after a settle made room")
		}
		go func() { res <- w.drained() }()
		w.abort()
		if <-res {
			t.Fatal("drained reported success after abort")
		}
	})
}
