package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"

	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/cluster"
)

// recordingLog is a one-node metadata log: it applies every command at once and records it.
type recordingLog struct {
	mu  sync.Mutex
	m   *cluster.Metadata
	n   uint64
	ops []string
}

func (l *recordingLog) Propose(_ context.Context, cmd []byte) (any, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, err := cluster.DecodeCommand(cmd)
	if err != nil {
		return nil, err
	}
	l.n++
	l.ops = append(l.ops, c.Op+" "+c.Name+c.Source)
	return l.m.Apply(l.n, cmd), nil
}

// Config.Attach runs before the configuration's topology is declared, so a cluster node's
// configured exchanges, queues and bindings go through its metadata log; an Attach error fails
// New.
func TestAttachBeforeConfiguredTopology(t *testing.T) {
	log := &recordingLog{}
	s := startTestServer(t, func(c *Config) {
		c.Exchanges = []ExchangeDef{{Name: "events", VHost: "/", Type: "topic", Durable: true}}
		c.Queues = []QueueDef{{Name: "orders", VHost: "/", Durable: true}}
		c.Bindings = []BindingDef{{VHost: "/", Source: "events", Destination: "orders", DestinationType: "queue", RoutingKey: "#"}}
		c.Attach = func(b *broker.Broker) error {
			log.m = cluster.NewMetadata(b, nil)
			b.SetReplicator(cluster.NewReplicator("n1", log))
			return nil
		}
	})
	log.mu.Lock()
	ops := slices.Clone(log.ops)
	log.mu.Unlock()
	for _, want := range []string{"declare_exchange events", "declare_queue orders", "bind events"} {
		if !slices.Contains(ops, want) {
			t.Errorf("the log got %q, missing %q", ops, want)
		}
	}
	if qs, aerr := s.Broker().VHost("/").Queue(broker.System, "orders"); aerr != nil || qs.Home() != "" {
		t.Errorf("orders is not a queue of its declaring node: %v %v", qs, aerr)
	}

	cfg := DefaultConfig()
	cfg.Listen, cfg.DataDir = "127.0.0.1:0", ""
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	boom := errors.New("no cluster")
	cfg.Attach = func(*broker.Broker) error { return boom }
	if srv, err := New(cfg); !errors.Is(err, boom) {
		if srv != nil {
			_ = srv.Close()
		}
		t.Fatalf("New with a failing Attach: %v, want %v", err, boom)
	}
}
