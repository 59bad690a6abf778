package broker

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
	"github.com/warrenmq/warren/quorum"
)

func TestParseDeadLetterStrategy(t *testing.T) {
	for _, tc := range []struct {
		strategy any
		want     bool
	}{{nil, false}, {"at-most-once", false}, {"at-least-once", true}} {
		args := amqp.Table{"x-queue-type": "quorum"}
		if tc.strategy != nil {
			args["x-dead-letter-strategy"] = tc.strategy
		}
		spec, err := parseQueueArgs(args)
		if err != nil || spec.atLeastOnce != tc.want {
			t.Errorf("%v: atLeastOnce %v, %v; want %v", tc.strategy, spec.atLeastOnce, err, tc.want)
		}
	}
}

// TestQuorumAtLeastOnceFallback: RabbitMQ's rules (rabbit_quorum_queue:dlh): at-least-once
// needs a dead-letter exchange and reject-publish, else at-most-once (or none).
func TestQuorumAtLeastOnceFallback(t *testing.T) {
	v := &VHost{name: "/", b: &Broker{log: quietLog()}}
	for _, tc := range []struct {
		alo, dlx bool
		overflow quorum.Overflow
		want     bool
	}{
		{true, true, quorum.RejectPublish, true},
		{true, true, quorum.DropHead, false},
		{true, false, quorum.RejectPublish, false},
		{false, true, quorum.RejectPublish, false},
	} {
		spec := queueSpec{atLeastOnce: tc.alo, hasDLX: tc.dlx}
		if got := v.quorumAtLeastOnce("q", spec, tc.overflow); got != tc.want {
			t.Errorf("%+v: %v, want %v", tc, got, tc.want)
		}
	}
}

// newDLXQuorum is a quorum queue "src" on node n1 of v, at-least-once dead-lettering to the
// default exchange with routing key dlrk, its group a fakeQuorumGroup.
func newDLXQuorum(t *testing.T, v *VHost, dlrk string) (*quorumQueue, *fakeQuorumGroup) {
	t.Helper()
	limits := quorum.NoLimits()
	limits.Overflow, limits.AtLeastOnce = quorum.RejectPublish, true
	return newDLXQuorumLimits(t, v, dlrk, limits)
}

// newDLXQuorumLimits is newDLXQuorum with limits (at-most-once unless limits.AtLeastOnce).
func newDLXQuorumLimits(t *testing.T, v *VHost, dlrk string, limits quorum.Limits) (*quorumQueue, *fakeQuorumGroup) {
	t.Helper()
	qs := &Queue{name: "src", spec: queueSpec{opts: queue.NoLimits()}, v: v}
	qs.dl.Store(&dlConfig{exchange: "", routingKey: &dlrk})
	qq := &quorumQueue{qs: qs, node: "n1", stop: make(chan struct{}), proposeTimeout: quorumProposeTimeout,
		wake: make(chan struct{}, 1), ewake: make(chan struct{}, 1), rearm: make(chan struct{}, 1), opened: make(chan struct{})}
	opts := queue.NoLimits()
	opts.DeliveryLimit = 0
	qs.q = queue.New("src", opts, queue.Hooks{Dropped: qq.localDropped})
	qq.cond = sync.NewCond(&qq.mu)
	qq.ctx, qq.cancel = context.WithCancel(context.Background())
	if limits.AtLeastOnce {
		qq.dlx = newQuorumDLX(qq)
	}
	qq.m = quorum.New(limits, quorum.Hooks{Assigned: qq.assigned, Revoked: qq.revoked, Applied: qq.applied,
		Restored: qq.restored, DeadLettered: qq.dlxSignal})
	g := &fakeQuorumGroup{m: qq.m, done: make(chan struct{})}
	qq.g = g
	qs.qq = qq
	qq.downSelf()
	exited := make(chan struct{})
	go func() { qq.proposeLoop(); close(exited) }()
	go qq.deliverLoop()
	if qq.dlx != nil {
		go qq.dlx.run()
	}
	t.Cleanup(func() { qq.close(); <-exited })
	return qq, g
}

// TestQuorumDLXWorker: the worker on the leader publishes a discard to its dead-letter target
// and settles it once confirmed; while the target refuses it (full, reject-publish) or this
// node does not lead, the discard stays in the queue's state.
func TestQuorumDLXWorker(t *testing.T) {
	defer func(r, tick time.Duration) { quorumDLXRetry, quorumDLXTick = r, tick }(quorumDLXRetry, quorumDLXTick)
	quorumDLXRetry, quorumDLXTick = 50*time.Millisecond, 10*time.Millisecond
	b := newTestBroker(t, t.TempDir())
	v := b.VHost("/")
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "dlt", Durable: true,
		Args: amqp.Table{"x-max-length": int32(1), "x-overflow": "reject-publish"}}); err != nil {
		t.Fatal(err)
	}
	publish(t, v, v.NewPublisher(), "", "dlt", "filler") // the target is full
	qq, g := newDLXQuorum(t, v, "dlt")

	if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindEnqueue, Msgs: []*quorum.Msg{{RoutingKey: "src",
		Header: amqp.AppendContentHeader(nil, 60, 1, &amqp.Properties{DeliveryMode: 2}), Body: []byte("m")}}}); err != nil {
		t.Fatal(err)
	}
	r, err := propose(t, qq, quorum.Command{Kind: quorum.KindGet, Node: "n1"})
	if err != nil || r.Msg == nil {
		t.Fatalf("get: %+v %v", r, err)
	}
	if r, err := propose(t, qq, quorum.Command{Kind: quorum.KindDiscard, Node: "n1", IDs: []uint64{r.Msg.ID}}); err != nil || len(r.Dropped) != 0 {
		t.Fatalf("discard: %+v %v (at least once: nothing for the proposer)", r, err)
	}
	dlt, _ := v.Queue(System, "dlt")
	discards := func() int { n, _ := qq.m.DiscardCounts(); return n }
	time.Sleep(300 * time.Millisecond) // several refused tries
	if n := dlt.Q().Counts().Ready; n != 1 || discards() != 1 {
		t.Fatalf("while the target refuses: target %d, discards %d; want 1, 1", n, discards())
	}

	// Not the leader: the worker sends nothing, even with room in the target.
	g.mu.Lock()
	g.leader = "n2"
	g.mu.Unlock()
	time.Sleep(100 * time.Millisecond) // a send in flight may still land
	if _, e, _, ok, err := v.Get(System, "dlt", true); err != nil || !ok || string(e.Msg.Body) != "filler" {
		t.Fatalf("filler: %v %v", ok, err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := dlt.Q().Counts().Ready; n != 0 || discards() != 1 {
		t.Fatalf("on a follower: target %d, discards %d; want 0, 1", n, discards())
	}

	g.mu.Lock()
	g.leader = "n1"
	g.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for discards() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the discard was never settled")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, e, _, ok, aerr := v.Get(System, "dlt", true)
	if aerr != nil || !ok || string(e.Msg.Body) != "m" {
		t.Fatalf("dead-lettered: %v %v", ok, aerr)
	}
	h, herr := amqp.DecodeContentHeader(e.Msg.Header)
	if herr != nil {
		t.Fatal(herr)
	}
	death, _ := h.Props.Headers["x-death"].([]any)
	if len(death) != 1 || death[0].(amqp.Table)["reason"] != "rejected" || death[0].(amqp.Table)["queue"] != "src" {
		t.Fatalf("x-death %v", h.Props.Headers["x-death"])
	}
	if !e.Msg.Persistent {
		t.Fatal("the dead-lettered copy lost its delivery mode")
	}
}

// TestQuorumDLXWorkerWindow: more discards than the worker's window all reach the target, and
// the window moves as they are settled.
func TestQuorumDLXWorkerWindow(t *testing.T) {
	b := newTestBroker(t, t.TempDir())
	v := b.VHost("/")
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "dlt", Durable: true}); err != nil {
		t.Fatal(err)
	}
	qq, _ := newDLXQuorum(t, v, "dlt")
	const n = 2*quorumDLXPrefetch + 50
	enqueue := quorum.Command{Kind: quorum.KindEnqueue}
	ids := make([]uint64, n)
	for i := range n {
		enqueue.Msgs = append(enqueue.Msgs, &quorum.Msg{RoutingKey: "src",
			Header: amqp.AppendContentHeader(nil, 60, 1, &amqp.Properties{}), Body: []byte("m")})
		ids[i] = uint64(i + 1)
	}
	if _, err := propose(t, qq, enqueue); err != nil {
		t.Fatal(err)
	}
	// Held by another node, which rejects them all.
	if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindCheckout, Node: "n2", Credit: n}); err != nil {
		t.Fatal(err)
	}
	if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindDiscard, Node: "n2", IDs: ids}); err != nil {
		t.Fatal(err)
	}
	dlt, _ := v.Queue(System, "dlt")
	deadline := time.Now().Add(20 * time.Second)
	for {
		left, _ := qq.m.DiscardCounts()
		if got := dlt.Q().Counts().Ready; left == 0 && got == n {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("discards left %d, target has %d; want 0, %d", left, got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestQuorumLateMarkDeadLettered: at most once, a message a late Delivered mark (this node's,
// applied after a NodeDown took the message back) puts past x-delivery-limit is dead-lettered
// by the proposer of the mark, though the mark rides in the batch's prefix, not as an op.
func TestQuorumLateMarkDeadLettered(t *testing.T) {
	b := newTestBroker(t, t.TempDir())
	v := b.VHost("/")
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "dlt", Durable: true}); err != nil {
		t.Fatal(err)
	}
	limits := quorum.NoLimits()
	limits.DeliveryLimit = 0
	qq, _ := newDLXQuorumLimits(t, v, "dlt", limits)
	if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindEnqueue, Msgs: []*quorum.Msg{{RoutingKey: "src",
		Header: amqp.AppendContentHeader(nil, 60, 1, &amqp.Properties{}), Body: []byte("m")}}}); err != nil {
		t.Fatal(err)
	}
	// n1 takes m, then is taken for dead before its mark is applied: m goes back uncounted.
	if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindCheckout, Node: "n1", Credit: 1}); err != nil {
		t.Fatal(err)
	}
	if _, h := qq.m.Counts(); h != 1 {
		t.Fatalf("held %d, want 1", h)
	}
	if r, err := propose(t, qq, quorum.Command{Kind: quorum.KindNodeDown, Node: "n1"}); err != nil || len(r.Dropped) != 0 {
		t.Fatalf("node down: %+v %v", r, err)
	}
	// n1's mark, as delivered() queues it: the proposer's prefix.
	qq.mu.Lock()
	qq.marks = append(qq.marks, 1)
	qq.mu.Unlock()
	select {
	case qq.wake <- struct{}{}:
	default:
	}
	dlt, _ := v.Queue(System, "dlt")
	deadline := time.Now().Add(10 * time.Second)
	for dlt.Q().Counts().Ready != 1 {
		if time.Now().After(deadline) {
			ready, held := qq.m.Counts()
			t.Fatalf("never dead-lettered (source ready %d, held %d)", ready, held)
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, e, _, ok, err := v.Get(System, "dlt", true)
	if err != nil || !ok || string(e.Msg.Body) != "m" {
		t.Fatalf("dead-lettered: %v %v", ok, err)
	}
	h, herr := amqp.DecodeContentHeader(e.Msg.Header)
	if herr != nil {
		t.Fatal(herr)
	}
	death, _ := h.Props.Headers["x-death"].([]any)
	if len(death) != 1 || death[0].(amqp.Table)["reason"] != "delivery_limit" {
		t.Fatalf("x-death %v", h.Props.Headers["x-death"])
	}
}
