package cluster

import (
	"fmt"
	"testing"

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
