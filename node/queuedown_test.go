package node

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"

	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/cluster"
)

// sharedLog is a metadata log in one process: every entry is applied to every member's state
// machine, in order, before Propose returns the proposer's result.
type sharedLog struct {
	mu       sync.Mutex
	index    uint64
	machines []*cluster.Metadata
}

type sharedMember struct {
	l *sharedLog
	i int
}

func (m sharedMember) Propose(_ context.Context, cmd []byte) (any, error) {
	m.l.mu.Lock()
	defer m.l.mu.Unlock()
	m.l.index++
	var out any
	for i, sm := range m.l.machines {
		if r := sm.Apply(m.l.index, cmd); i == m.i {
			out = r
		}
	}
	return out, nil
}

// A durable queue whose home node is taken for dead shows state "down" in /api/queues (list
// and single queue) on another node, as RabbitMQ shows it, and "running" again once the node
// is back.
func TestQueueStateDown(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	log := &sharedLog{}
	var brokers []*broker.Broker
	var api string
	for i, name := range []string{"n1", "n2"} {
		s, h := startNode(t, "")
		b := s.Broker()
		meta := cluster.NewMetadata(b, quiet)
		log.machines = append(log.machines, meta)
		b.SetReplicator(cluster.NewReplicator(name, sharedMember{l: log, i: i}))
		b.SetNodeLiveness(meta)
		brokers = append(brokers, b)
		api = "http://" + h.ManagementAddr().String() // n2's
	}
	if _, err := brokers[0].VHost("/").DeclareQueue(broker.System, broker.QueueSpec{Name: "dq", Durable: true}); err != nil {
		t.Fatal(err)
	}
	state := func() (list, one string) {
		var qs []map[string]any
		getJSON(t, api+"/api/queues", &qs)
		for _, q := range qs {
			if q["name"] == "dq" {
				list, _ = q["state"].(string)
			}
		}
		var q map[string]any
		getJSON(t, api+"/api/queues/%2F/dq", &q)
		one, _ = q["state"].(string)
		return list, one
	}
	if list, one := state(); list != "running" || one != "running" {
		t.Fatalf("dq with its home up: state %q (list), %q (queue), want running", list, one)
	}
	propose := func(c cluster.Command) {
		if _, err := (sharedMember{l: log}).Propose(t.Context(), c.Encode()); err != nil {
			t.Fatal(err)
		}
	}
	propose(cluster.Command{Op: cluster.OpNodeDown, Node: "n1"})
	if list, one := state(); list != "down" || one != "down" {
		t.Fatalf("dq with its home down: state %q (list), %q (queue), want down", list, one)
	}
	propose(cluster.Command{Op: cluster.OpNodeUp, Node: "n1"})
	if list, one := state(); list != "running" || one != "running" {
		t.Fatalf("dq with its home back: state %q (list), %q (queue), want running", list, one)
	}
}
