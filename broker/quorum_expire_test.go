package broker

import (
	"context"
	"sync"
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

// stuckGroup is a QuorumGroup whose log never answers.
type stuckGroup struct{ done chan struct{} }

func (g stuckGroup) Propose(ctx context.Context, _ []byte) (any, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (g stuckGroup) Leader() (string, bool) { return "", false }
func (g stuckGroup) Done() <-chan struct{}  { return g.done }
func (g stuckGroup) Close()                 {}

// TestAwaitQuorumOpenBounded: with a log that never commits (no majority), the declare of an
// x-expires quorum queue waits for the group's first entry and then for its KindTouch at
// most quorumOpenTimeout in all: once the first wait used the whole timeout, the second
// waited on a timer already fired, for ever.
func TestAwaitQuorumOpenBounded(t *testing.T) {
	old := quorumOpenTimeout
	quorumOpenTimeout = 100 * time.Millisecond
	defer func() { quorumOpenTimeout = old }()
	b := newTestBroker(t, "")
	v := b.VHost("/")
	qs := &Queue{v: v, name: "qo"}
	qs.spec.expires = time.Minute
	qq := &quorumQueue{qs: qs, stop: make(chan struct{}), wake: make(chan struct{}, 1), opened: make(chan struct{}),
		g: stuckGroup{done: make(chan struct{})}}
	qq.cond = sync.NewCond(&qq.mu)
	qs.qq = qq
	v.mu.Lock()
	v.queues["qo"] = qs
	v.mu.Unlock()
	defer func() {
		v.mu.Lock()
		delete(v.queues, "qo")
		v.mu.Unlock()
	}()
	returned := make(chan struct{})
	go func() {
		v.awaitQuorumOpen("qo")
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		close(qq.stop) // lets the goroutine end
		<-returned
		t.Fatal("awaitQuorumOpen did not return within its timeout")
	}
}
