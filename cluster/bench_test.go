package cluster

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren/bench"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/server"
)

// BenchmarkDeclareBind measures declare + bind + delete of a queue on a single node and through
// the replicated path on 3 nodes sharing the in-memory log (no network, no Raft: the cost of
// the state machine and of applying on every node, the floor under the Raft wiring).
func BenchmarkDeclareBind(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			var v *broker.VHost
			if n == 1 {
				br, err := broker.New(broker.Options{Logger: quietLog(), VHosts: []broker.VHostSettings{{Name: "/", MaxQueues: -1}}})
				if err != nil {
					b.Fatal(err)
				}
				defer br.Close()
				v = br.VHost("/")
			} else {
				tc := newTestClusterTB(b, n)
				v = tc.vhost(0)
			}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				name := fmt.Sprintf("q%d", i)
				if _, err := v.DeclareQueue(broker.System, broker.QueueSpec{Name: name}); err != nil {
					b.Fatal(err)
				}
				if err := v.Bind(broker.System, broker.BindingSpec{Source: "amq.topic", Destination: name, Key: "a.#"}); err != nil {
					b.Fatal(err)
				}
				if _, err := v.DeleteQueue(broker.System, name, false, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPointB is bench/compare.sh's point b (transient 1 KiB, 1 producer, 1 consumer,
// manual ack, prefetch 100, multi-ack 10; warren bench's lean client) run interleaved on a
// single node and across nodes: a 2-node in-process cluster, the queue homed on n1, producer
// and consumer on n2, so every message is forwarded and every delivery and ack proxied. Each
// iteration runs both for -pointb.duration and reports their rates and the ratio. Everything
// (load generator, both nodes) shares this process: compare the ratio, not the rates, with
// compare.sh's. Run with -benchtime=Nx for N interleaved pairs.
func BenchmarkPointB(b *testing.B) {
	benchPoint(b, "pointb", false, "-size", "1024", "-autoack=false", "-prefetch", "100", "-multi-ack", "10")
}

// BenchmarkPointC is bench/compare.sh's point c (persistent 1 KiB to a durable queue, confirm
// window 256, manual ack, prefetch 100) measured as BenchmarkPointB, each node with a data
// directory: a confirm across nodes means the home synced the message.
func BenchmarkPointC(b *testing.B) {
	benchPoint(b, "pointc", true, "-size", "1024", "-persistent", "-confirm", "256", "-autoack=false", "-prefetch", "100")
}

// benchPoint runs warren bench with args (plus -pointb.args) on a single node and cross-node,
// interleaved, b.N pairs; prefix names the queue, declared on n1 (durable when persistent, and
// the nodes then get data directories).
func benchPoint(b *testing.B, prefix string, persistent bool, args ...string) {
	var conf func(*server.Config)
	if persistent {
		conf = func(c *server.Config) { c.DataDir = b.TempDir() }
	}
	single := startLinkedPrep(b, 1, nil, nil, conf, nil)
	lc := startLinkedPrep(b, 2, nil, nil, conf, nil)
	_, ch1 := dialTB(b, lc.urls[0])
	if _, err := ch1.QueueDeclare(prefix+"-1", persistent, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	args = append(args, strings.Fields(*pointBArgs)...)
	// run returns the consume rate and the process's CPU time per message consumed (load
	// generator and nodes together), which a loaded machine disturbs less than the rate; it
	// logs the heap allocations per message too, which the load does not disturb at all.
	run := func(url string) (float64, float64) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		mallocs := ms.Mallocs
		cpu0 := processCPU()
		var out bytes.Buffer
		err := bench.Run(append([]string{"-url", url, "-duration", pointBDuration.String(), "-queue-prefix", prefix,
			"-keep", "-json", "-quiet"}, args...), &out)
		if err != nil {
			b.Fatalf("bench: %v\n%s", err, out.String())
		}
		var res bench.Result
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			b.Fatalf("bench output: %v\n%s", err, out.String())
		}
		us := float64((processCPU() - cpu0).Microseconds()) / float64(max(res.Received, 1))
		runtime.ReadMemStats(&ms)
		allocs := float64(ms.Mallocs-mallocs) / float64(max(res.Received, 1))
		if testing.Verbose() {
			var p50 float64
			if res.Latency != nil {
				p50 = res.Latency.P50Ms
			}
			b.Logf("%s: published %.0f msgs/s, consumed %.0f msgs/s, e2e p50 %.1f ms, %.2f CPU-us/msg, %.1f allocs/msg",
				url, res.PublishRate, res.ConsumeRate, p50, us, allocs)
		}
		return res.ConsumeRate, us
	}
	var s, c []float64
	if *pointBOnly == "cross" {
		// For a CPU profile of the cross-node path alone.
		for b.Loop() {
			r, us := run(lc.urls[1])
			b.Logf("cross-node %.0f msgs/s, %.2f CPU-us/msg", r, us)
		}
		return
	}
	var su, cu []float64
	for b.Loop() {
		r, us := run(single.urls[0])
		s, su = append(s, r), append(su, us)
		r, us = run(lc.urls[1])
		c, cu = append(c, r), append(cu, us)
		b.Logf("single %.0f msgs/s %.2f CPU-us/msg, cross-node %.0f msgs/s %.2f CPU-us/msg, ratio %.2f",
			s[len(s)-1], su[len(su)-1], c[len(c)-1], cu[len(cu)-1], c[len(c)-1]/s[len(s)-1])
	}
	med := func(xs []float64) float64 { slices.Sort(xs); return xs[len(xs)/2] }
	ms, mc := med(s), med(c)
	b.ReportMetric(ms, "single-msgs/s")
	b.ReportMetric(mc, "cross-msgs/s")
	b.ReportMetric(mc/ms, "cross/single")
	b.ReportMetric(med(su), "single-CPU-us/msg")
	b.ReportMetric(med(cu), "cross-CPU-us/msg")
}

var pointBOnly = flag.String("pointb.only", "", "BenchmarkPointB, BenchmarkPointC: \"cross\" runs the cross-node runs only")

var pointBDuration = flag.Duration("pointb.duration", 5*time.Second, "BenchmarkPointB, BenchmarkPointC: duration of each run")

var pointBArgs = flag.String("pointb.args", "", "BenchmarkPointB, BenchmarkPointC: more warren bench arguments (space-separated; later ones win)")
