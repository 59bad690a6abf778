package broker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/queue"
	"github.com/warrenmq/warren/quorum"
)

// fakeQuorumGroup is a group of one: a proposal applies at once to the machine.
type fakeQuorumGroup struct {
	m    *quorum.Machine
	done chan struct{}
	mu   sync.Mutex
	idx  uint64
	// hold, when set, makes proposals wait for their context (a result that never comes).
	hold bool
	// leader is the group's leader ("" : n1); nows the Now of each batch proposed.
	leader string
	nows   []int64
}

func (g *fakeQuorumGroup) Propose(ctx context.Context, cmd []byte) (any, error) {
	g.mu.Lock()
	hold := g.hold
	g.mu.Unlock()
	if hold {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, err := quorum.DecodeCommand(cmd); err == nil && c.Kind == quorum.KindBatch {
		g.nows = append(g.nows, c.Now)
	}
	g.idx++
	return g.m.Apply(g.idx, cmd), nil
}

func (g *fakeQuorumGroup) Leader() (string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.leader == "" {
		return "n1", true
	}
	return g.leader, true
}
func (g *fakeQuorumGroup) Done() <-chan struct{} { return g.done }
func (g *fakeQuorumGroup) Close()                {}

// newTestQuorum is a quorum queue on node n1 without a vhost (nothing it drops may be
// dead-lettered), its group a fakeQuorumGroup. exited is closed when its proposer returns.
func newTestQuorum(t *testing.T, limits quorum.Limits) (qq *quorumQueue, g *fakeQuorumGroup, exited chan struct{}) {
	t.Helper()
	spec := queueSpec{opts: queue.NoLimits()}
	qs := &Queue{name: "q", spec: spec, v: &VHost{name: "/", b: &Broker{log: slog.New(slog.NewTextHandler(io.Discard, nil))}}}
	qq = &quorumQueue{qs: qs, node: "n1", stop: make(chan struct{}),
		wake: make(chan struct{}, 1), ewake: make(chan struct{}, 1), rearm: make(chan struct{}, 1), opened: make(chan struct{})}
	opts := queue.NoLimits()
	opts.DeliveryLimit = 0
	qs.q = queue.New("q", opts, queue.Hooks{Dropped: qq.localDropped})
	qq.cond = sync.NewCond(&qq.mu)
	qq.ctx, qq.cancel = context.WithCancel(context.Background())
	qq.m = quorum.New(limits, quorum.Hooks{Assigned: qq.assigned, Revoked: qq.revoked, Applied: qq.applied,
		Restored: qq.restored})
	qq.proposeTimeout = quorumProposeTimeout
	g = &fakeQuorumGroup{m: qq.m, done: make(chan struct{})}
	qq.g = g
	qs.qq = qq
	qq.downSelf() // as openQuorum: nothing is handed on before this process's NodeDown
	exited = make(chan struct{})
	go func() { qq.proposeLoop(); close(exited) }()
	go qq.deliverLoop()
	t.Cleanup(func() { qq.close(); <-exited })
	return qq, g, exited
}

// propose submits cmd and waits for its result.
func propose(t *testing.T, qq *quorumQueue, cmd quorum.Command) (quorum.Result, error) {
	t.Helper()
	type res struct {
		r   quorum.Result
		err error
	}
	ch := make(chan res, 1)
	qq.submit(cmd, func(r quorum.Result, err error) { ch <- res{r, err} })
	select {
	case x := <-ch:
		return x.r, x.err
	case <-time.After(10 * time.Second):
		t.Fatalf("%v: no answer", cmd.Kind)
		return quorum.Result{}, nil
	}
}

// TestQuorumSubmitAfterStop: a command submitted after the proposer stopped (the queue
// deleted, the node stopping) is answered with an error, not left waiting forever.
func TestQuorumSubmitAfterStop(t *testing.T) {
	qq, _, exited := newTestQuorum(t, quorum.NoLimits())
	qq.close()
	<-exited
	errs := make(chan error, 2)
	qq.submit(quorum.Command{Kind: quorum.KindPurge}, func(_ quorum.Result, err error) { errs <- err })
	qq.publish(&queue.Message{Body: []byte("x")}, func(_ quorum.Result, err error) { errs <- err }, true)
	for range 2 {
		select {
		case err := <-errs:
			if err != errQuorumGone {
				t.Fatalf("err = %v, want errQuorumGone", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a command submitted after the stop was never answered")
		}
	}
}

// TestQuorumConsumerRemovedReturnsUndelivered: when the last local consumer goes, the
// messages the node holds undelivered go back uncounted, a redelivered one (x-delivery-count
// 1 from another node) included: counting it again would dead-letter it unseen at the
// delivery limit.
func TestQuorumConsumerRemovedReturnsUndelivered(t *testing.T) {
	qq, _, _ := newTestQuorum(t, quorum.NoLimits())
	if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindEnqueue, Msgs: []*quorum.Msg{{Body: []byte("m")}}}); err != nil {
		t.Fatal(err)
	}
	// Delivered on n2 (a basic.get), which then went down: back with a count of 1.
	if r, err := propose(t, qq, quorum.Command{Kind: quorum.KindGet, Node: "n2"}); err != nil || r.Msg == nil {
		t.Fatalf("get: %+v %v", r, err)
	}
	if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindNodeDown, Node: "n2"}); err != nil {
		t.Fatal(err)
	}
	qq.consumerAdded()
	deadline := time.Now().Add(10 * time.Second)
	for qq.qs.q.Counts().Ready != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the message never reached the local queue")
		}
		time.Sleep(time.Millisecond)
	}
	qq.consumerRemoved()
	r, err := propose(t, qq, quorum.Command{Kind: quorum.KindGet, Node: "n3", NoAck: true})
	if err != nil || r.Msg == nil {
		t.Fatalf("get: %+v %v", r, err)
	}
	if r.Msg.Count != 1 {
		t.Fatalf("delivery count %d after a return of an undelivered message, want 1", r.Msg.Count)
	}
}

// TestQuorumResyncAfterRestore: after a snapshot replaces the state (a lagging replica), the
// node delivers what the restored state says it holds, not what it was told before.
func TestQuorumResyncAfterRestore(t *testing.T) {
	qq, g, _ := newTestQuorum(t, quorum.NoLimits())
	if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindEnqueue, Msgs: []*quorum.Msg{{Body: []byte("a")}}}); err != nil {
		t.Fatal(err)
	}
	qq.consumerAdded()
	deadline := time.Now().Add(10 * time.Second)
	for qq.qs.q.Counts().Ready != 1 {
		if time.Now().After(deadline) {
			t.Fatal("a never reached the local queue")
		}
		time.Sleep(time.Millisecond)
	}
	// The group's state as the others have it: n2 took a, n1 holds b.
	other := quorum.New(quorum.NoLimits(), quorum.Hooks{})
	for i, c := range []quorum.Command{
		{Kind: quorum.KindEnqueue, Msgs: []*quorum.Msg{{Body: []byte("a")}, {Body: []byte("b")}}},
		{Kind: quorum.KindCheckout, Node: "n2", Credit: 1},
		{Kind: quorum.KindCheckout, Node: "n1", Credit: quorumNodeCredit},
	} {
		other.Apply(uint64(i+1), c.Encoded())
	}
	snap, err := other.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	g.mu.Lock() // as the loop goroutine: no Apply meanwhile
	err = qq.m.Restore(snap)
	g.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if e, _, ok := qq.qs.q.Get(true); ok && string(e.Msg.Body) == "b" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("b, held by this node after the restore, never reached the local queue")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestQuorumProposalTimeout: a proposal whose result never comes does not stall the queue:
// past the deadline a publish is nacked, and a checkout is proposed again.
func TestQuorumProposalTimeout(t *testing.T) {
	qq, g, _ := newTestQuorum(t, quorum.NoLimits())
	if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindCheckout, Node: "n0", Credit: 0}); err != nil {
		t.Fatal(err) // the NodeDown of the start is applied
	}
	qq.mu.Lock()
	qq.proposeTimeout = 50 * time.Millisecond
	qq.mu.Unlock()
	g.mu.Lock()
	g.hold = true
	g.mu.Unlock()
	nack := make(chan error, 1)
	qq.publish(&queue.Message{Body: []byte("x")}, func(_ quorum.Result, err error) { nack <- err }, true)
	qq.consumerAdded() // its checkout is lost in the first proposal, proposed again
	select {
	case err := <-nack:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("publish: %v, want a deadline error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a publish whose proposal never completes was never answered")
	}
	g.mu.Lock()
	g.hold = false
	g.mu.Unlock()
	if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindEnqueue, Msgs: []*quorum.Msg{{Body: []byte("a")}}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for qq.qs.q.Counts().Ready != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the checkout was lost with its proposal: nothing assigned to this node")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestQuorumOverflow: x-overflow for a quorum queue, as RabbitMQ's (rabbit_quorum_queue
// overflow/3: reject-publish-dlx is invalid there and falls back to drop-head).
func TestQuorumOverflow(t *testing.T) {
	for _, tt := range []struct {
		in   queue.Overflow
		want quorum.Overflow
	}{
		{queue.DropHead, quorum.DropHead},
		{queue.RejectPublish, quorum.RejectPublish},
		{queue.RejectPublishDLX, quorum.DropHead},
	} {
		if got := quorumOverflow(tt.in); got != tt.want {
			t.Errorf("quorumOverflow(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestQuorumCreditFollowsConsumers: a local requeue while the local queue has no consumer
// registered yet (a consumer being added) must not leave the node at credit 0 with a
// consumer: the returned message comes back to this node.
func TestQuorumCreditFollowsConsumers(t *testing.T) {
	qq, _, _ := newTestQuorum(t, quorum.NoLimits())
	if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindEnqueue, Msgs: []*quorum.Msg{{Body: []byte("a")}}}); err != nil {
		t.Fatal(err)
	}
	qq.consumerAdded()
	waitReady := func(what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for qq.qs.q.Counts().Ready != 1 {
			if time.Now().After(deadline) {
				t.Fatal(what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitReady("a never reached the local queue")
	e, _, ok := qq.qs.q.Get(false) // delivered, unacked
	if !ok {
		t.Fatal("no entry")
	}
	qq.localDropped(qq.qs.q, []*queue.Entry{e}, queue.DeliveryLimit) // requeued locally
	waitReady("the requeued message never came back to the node with a consumer")
}

// TestQuorumTimeFromLeader: only the leader's batches carry its clock; a follower's would
// move the queue's time to the fastest clock of the cluster.
func TestQuorumTimeFromLeader(t *testing.T) {
	qq, g, _ := newTestQuorum(t, quorum.NoLimits())
	for _, leader := range []string{"n2", "n1"} {
		g.mu.Lock()
		g.leader, g.nows = leader, nil
		g.mu.Unlock()
		if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindEnqueue, Msgs: []*quorum.Msg{{Body: []byte("a")}}}); err != nil {
			t.Fatal(err)
		}
		g.mu.Lock()
		nows := g.nows
		g.mu.Unlock()
		if len(nows) == 0 {
			t.Fatal("no batch proposed")
		}
		last := nows[len(nows)-1]
		if leads := leader == qq.node; leads != (last > 0) {
			t.Errorf("leader %s: batch Now %d", leader, last)
		}
	}
}

// TestQuorumRestoreHoldsBackLaterAssignments: a snapshot that says this node holds a and b
// (assigned in entries it never applied one by one, so no Assigned came for them) must not
// let c, assigned to it by an entry applied after the restore, reach a consumer before them:
// nothing is handed on until a NodeDown of this node applied after the restore took all of
// them back (the chaos run's first deliveries out of order at start-up, 52 messages after
// #53). Then a, b, c come in order.
func TestQuorumRestoreHoldsBackLaterAssignments(t *testing.T) {
	qq, g, _ := newTestQuorum(t, quorum.NoLimits())
	qq.consumerAdded()
	if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindCheckout, Node: "n0", Credit: 0}); err != nil {
		t.Fatal(err) // the start's NodeDown and the checkout are applied
	}
	other := quorum.New(quorum.NoLimits(), quorum.Hooks{})
	for i, c := range []quorum.Command{
		{Kind: quorum.KindCheckout, Node: "n1", Credit: quorumNodeCredit},
		{Kind: quorum.KindEnqueue, Msgs: []*quorum.Msg{{Body: []byte("a")}, {Body: []byte("b")}}},
	} {
		other.Apply(uint64(i+1), c.Encoded())
	}
	snap, err := other.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	g.mu.Lock() // as the loop goroutine: the restore, then the entry after it, nothing between
	if err := qq.m.Restore(snap); err != nil {
		g.mu.Unlock()
		t.Fatal(err)
	}
	g.idx++
	qq.m.Apply(g.idx, quorum.Command{Kind: quorum.KindEnqueue, Msgs: []*quorum.Msg{{Body: []byte("c")}}}.Encoded())
	// c is assigned here now; the restore's NodeDown waits for g.mu.
	time.Sleep(300 * time.Millisecond)
	if e, _, ok := qq.qs.q.Get(true); ok {
		g.mu.Unlock()
		t.Fatalf("%s handed to a consumer before the NodeDown that follows the restore", e.Msg.Body)
	}
	g.mu.Unlock()
	var got []string
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("got %q, then nothing", got)
		}
		if e, _, ok := qq.qs.q.Get(true); ok {
			got = append(got, string(e.Msg.Body))
			continue
		}
		time.Sleep(time.Millisecond)
	}
	if !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("delivered %q, want a, b, c", got)
	}
}

// onePrefetch is a consumer with a prefetch of 1: Busy while it holds a delivery.
type onePrefetch struct {
	mu   sync.Mutex
	held bool
	got  chan *queue.Entry
}

func (c *onePrefetch) Deliver(_ *queue.Queue, e *queue.Entry) queue.Outcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held {
		return queue.Busy
	}
	c.held = true
	c.got <- e
	return queue.Accepted
}

// settle gives the credit back, then settles e and retries delivery, as a channel does.
func (c *onePrefetch) settle(qq *quorumQueue, kind Settlement, e *queue.Entry) {
	c.mu.Lock()
	c.held = false
	c.mu.Unlock()
	qq.settle(kind, []*queue.Entry{e})
	qq.qs.q.Kick()
}

func (c *onePrefetch) next(t *testing.T, want string) *queue.Entry {
	t.Helper()
	select {
	case e := <-c.got:
		if string(e.Msg.Body) != want {
			t.Fatalf("delivered %q, want %q", e.Msg.Body, want)
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatalf("no delivery, want %q", want)
		return nil
	}
}

// TestQuorumDueRedeliveryBeforeWindow: a message requeued with x-redelivery-delay goes, once
// due by the node's clock, ahead of the later messages already in the node's window when an
// ack frees the consumer's prefetch (conformance TestExtRedeliveryDelay). The group's leader
// is another node, whose timer never promotes it here: the ack itself must.
func TestQuorumDueRedeliveryBeforeWindow(t *testing.T) {
	l := quorum.NoLimits()
	l.RedeliveryDelay = 100
	qq, g, _ := newTestQuorum(t, l)
	qq.minRedelivery = 100
	g.mu.Lock()
	g.leader = "n2"
	g.mu.Unlock()
	if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindEnqueue, Msgs: []*quorum.Msg{{Body: []byte("a")}, {Body: []byte("b")}, {Body: []byte("c")}}}); err != nil {
		t.Fatal(err)
	}
	c := &onePrefetch{got: make(chan *queue.Entry, 4)}
	qq.consumerAdded()
	qq.qs.q.AddConsumer(c)
	a := c.next(t, "a")
	c.settle(qq, Requeue, a)
	b := c.next(t, "b") // while a waits out its delay
	time.Sleep(150 * time.Millisecond)
	c.settle(qq, Ack, b)
	if e := c.next(t, "a"); !e.Redelivered() {
		t.Fatal("a not flagged redelivered")
	}
}

// TestQuorumFirstConsumerWaitsForCheckout: a node's first consumer returns (consume-ok) once
// its checkout is applied, as RabbitMQ's checkout: the ready message is assigned by then.
func TestQuorumFirstConsumerWaitsForCheckout(t *testing.T) {
	qq, _, _ := newTestQuorum(t, quorum.NoLimits())
	if _, err := propose(t, qq, quorum.Command{Kind: quorum.KindEnqueue, Msgs: []*quorum.Msg{{Body: []byte("a")}}}); err != nil {
		t.Fatal(err)
	}
	qq.consumerAdded()
	if ready, held := qq.m.Counts(); ready != 0 || held != 1 {
		t.Fatalf("after the first consumer: %d ready, %d held; want the message checked out", ready, held)
	}
}
