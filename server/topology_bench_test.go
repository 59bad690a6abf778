package server

import (
	"fmt"
	"io"
	"log/slog"
	"testing"
)

// BenchmarkStartWith10kDurableQueues is a start-up on a fresh data directory whose
// configuration declares 10,000 durable queues, each bound to amq.direct: every one is a disk
// sync, so this is what the configuration's topology costs at the first start.
func BenchmarkStartWith10kDurableQueues(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	for i := 0; i < 10_000; i++ {
		name := fmt.Sprintf("q%05d", i)
		cfg.Queues = append(cfg.Queues, QueueDef{Name: name, VHost: "/", Durable: true})
		cfg.Bindings = append(cfg.Bindings, BindingDef{VHost: "/", Source: "amq.direct", Destination: name, DestinationType: "queue", RoutingKey: name})
	}
	for b.Loop() {
		cfg.DataDir = b.TempDir()
		s, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
