package cluster

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/warrenmq/warren/bench"
	"github.com/warrenmq/warren/broker"
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
	single := startLinkedPrep(b, 1, nil, nil, nil, nil)
	lc := startLinkedPrep(b, 2, nil, nil, nil, nil)
	_, ch1 := dialTB(b, lc.urls[0])
	if _, err := ch1.QueueDeclare("pointb-1", false, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	run := func(url string) float64 {
		var out bytes.Buffer
		err := bench.Run([]string{"-url", url, "-size", "1024", "-autoack=false", "-prefetch", "100", "-multi-ack", "10",
			"-duration", pointBDuration.String(), "-queue-prefix", "pointb", "-keep", "-json", "-quiet"}, &out)
		if err != nil {
			b.Fatalf("bench: %v\n%s", err, out.String())
		}
		var res bench.Result
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			b.Fatalf("bench output: %v\n%s", err, out.String())
		}
		return res.ConsumeRate
	}
	var s, c []float64
	if *pointBOnly == "cross" {
		// For a CPU profile of the cross-node path alone.
		for b.Loop() {
			b.Logf("cross-node %.0f msgs/s", run(lc.urls[1]))
		}
		return
	}
	for b.Loop() {
		s = append(s, run(single.urls[0]))
		c = append(c, run(lc.urls[1]))
		b.Logf("single %.0f msgs/s, cross-node %.0f msgs/s, ratio %.2f", s[len(s)-1], c[len(c)-1], c[len(c)-1]/s[len(s)-1])
	}
	med := func(xs []float64) float64 { slices.Sort(xs); return xs[len(xs)/2] }
	ms, mc := med(s), med(c)
	b.ReportMetric(ms, "single-msgs/s")
	b.ReportMetric(mc, "cross-msgs/s")
	b.ReportMetric(mc/ms, "cross/single")
}

var pointBOnly = flag.String("pointb.only", "", "BenchmarkPointB: \"cross\" runs the cross-node runs only")

var pointBDuration = flag.Duration("pointb.duration", 5*time.Second, "BenchmarkPointB: duration of each run")
