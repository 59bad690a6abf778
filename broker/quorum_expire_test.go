package broker

import (
	"context"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
)

// recordingReplicator is testReplicator that also hands every op it replicates to ops.
type recordingReplicator struct {
	testReplicator
	ops chan TopologyOp
}

func (r recordingReplicator) Replicate(ctx context.Context, op TopologyOp) (TopologyResult, *amqp.Error) {
	r.ops <- op
	return r.testReplicator.Replicate(ctx, op)
}

// TestExpireQuorumNamesEpoch: the x-expires delete of a quorum queue names the incarnation
// that expired (its epoch), so that a delete arriving after the queue was deleted and
// declared again does not remove the new queue (the metadata matches epoch 0 with any).
func TestExpireQuorumNamesEpoch(t *testing.T) {
	b := newTestBroker(t, "")
	rr := recordingReplicator{testReplicator{b}, make(chan TopologyOp, 4)}
	b.SetReplicator(rr)
	if _, err := b.ApplyTopology(TopologyOp{Kind: OpDeclareQueue, VHost: "/", Queue: QueueSpec{Name: "qe", Durable: true}, Home: "A", Epoch: 7}); err != nil {
		t.Fatal(err)
	}
	v := b.VHost("/")
	v.mu.RLock()
	qs := v.queues["qe"]
	v.mu.RUnlock()
	if qs == nil || qs.epoch.Load() != 7 {
		t.Fatalf("queue %+v", qs)
	}
	qq := &quorumQueue{qs: qs}
	qq.expireQuorum()
	select {
	case op := <-rr.ops:
		if op.Kind != OpDeleteQueue || op.Queue.Name != "qe" || op.Epoch != 7 {
			t.Fatalf("expiry proposed %+v, want the delete of qe at epoch 7", op)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no delete proposed")
	}
}
