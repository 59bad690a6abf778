package broker

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
)

// A stream the log homes here whose log cannot be opened is not this node's queue: a forward
// for it is refused (a nack for the publisher), not skipped as for a deleted queue and
// confirmed. Once the log deletes it, forwards naming it are skipped as usual.
func TestForwardToUnappliedStreamRefused(t *testing.T) {
	dir := t.TempDir()
	b := newTestBroker(t, dir)
	// A file where the streams' directory would go: no stream log can be created.
	if err := os.WriteFile(filepath.Join(dir, "streams"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b.SetReplicator(testReplicator{b})
	v := b.VHost("/")
	if _, err := b.ApplyTopology(TopologyOp{Kind: OpDeclareQueue, VHost: "/", Queue: QueueSpec{Name: "s", Durable: true,
		Args: amqp.Table{"x-queue-type": "stream"}}, Home: "A", Epoch: 5}); err == nil {
		t.Fatal("declaring a stream whose log cannot be created: no error")
	}
	b.TopologyApplied(5)
	var scratch []*queue.Entry
	res, _, aerr := v.DeliverForwarded(forwardEnvelope(t, 5, 0, "s"), nil, &scratch)
	if aerr != nil || !res.Refused || res.Routed {
		t.Fatalf("forward to the stream that failed to open: %+v %v, want refused", res, aerr)
	}
	if _, err := b.ApplyTopology(TopologyOp{Kind: OpDeleteQueue, VHost: "/", Queue: QueueSpec{Name: "s"}, Epoch: 5}); err != nil {
		t.Fatal(err)
	}
	b.TopologyApplied(6)
	res, _, aerr = v.DeliverForwarded(forwardEnvelope(t, 6, 0, "s"), nil, &scratch)
	if aerr != nil || res.Refused || res.Routed {
		t.Fatalf("forward to the deleted stream: %+v %v, want skipped", res, aerr)
	}
}
