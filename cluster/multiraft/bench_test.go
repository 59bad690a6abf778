package multiraft

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkPropose measures replicated proposals (64-byte commands) on a 3-host group with
// fsync, from the leader and from a follower (forwarded), one at a time and with 64 in flight.
func BenchmarkPropose(b *testing.B) {
	for _, from := range []string{"leader", "follower"} {
		for _, inflight := range []int{1, 64} {
			b.Run(fmt.Sprintf("from=%s/inflight=%d", from, inflight), func(b *testing.B) {
				c := newBenchCluster(b)
				gs, _ := c.groups(MetadataGroup)
				lead := waitLeaderB(b, gs)
				g := gs[lead]
				if from == "follower" {
					for name, og := range gs {
						if name != lead {
							g = og
							break
						}
					}
				}
				cmd := make([]byte, 64)
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				start := time.Now()
				for w := 0; w < inflight; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for next.Add(1) <= int64(b.N) {
							ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
							_, err := g.Propose(ctx, cmd)
							cancel()
							if err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				el := time.Since(start)
				b.StopTimer()
				b.ReportMetric(float64(b.N)/el.Seconds(), "proposals/s")
			})
		}
	}
}
