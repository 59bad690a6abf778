package broker

import (
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newTestBroker starts a core with vhost "/"; dir "" keeps it in memory.
func newTestBroker(t testing.TB, dir string) *Broker {
	t.Helper()
	b, err := New(Options{DataDir: dir, MaxRAMMessages: 4096, Logger: quietLog(),
		VHosts: []VHostSettings{{Name: "/", MaxQueues: -1}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// publish sends body to the exchange with the routing key as a persistent message.
func publish(t testing.TB, v *VHost, p *Publisher, exName, key, body string) PublishResult {
	t.Helper()
	ex, err := v.Exchange(exName)
	if err != nil {
		t.Fatal(err)
	}
	props := amqp.Properties{DeliveryMode: 2}
	header := amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(body)), &props)
	sum, serr := amqp.ScanContentHeader(header)
	if serr != nil {
		t.Fatal(serr)
	}
	msg, aerr := v.b.NewMessage(ex, key, header, &sum, []byte(body))
	if aerr != nil {
		t.Fatal(aerr)
	}
	done := make(chan error, 1)
	res, _ := p.Publish(ex, msg, sum.HeadersRaw, func(err error) { done <- err })
	if res.OnDisk {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	return res
}

// The whole life of a message without any AMQP connection: a second front end (the management
// API, a cluster peer) drives the core through the same calls a channel makes.
func TestCoreWithoutConnection(t *testing.T) {
	dir := t.TempDir()
	b := newTestBroker(t, dir)
	v := b.VHost("/")
	if err := v.DeclareExchange(System, ExchangeSpec{Name: "orders", Type: "topic", Durable: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "eu", Durable: true}); err != nil {
		t.Fatal(err)
	}
	if err := v.Bind(System, BindingSpec{Source: "orders", Destination: "eu", Key: "eu.#"}); err != nil {
		t.Fatal(err)
	}
	p := v.NewPublisher()
	if res := publish(t, v, p, "orders", "eu.de", "first"); !res.Routed || !res.OnDisk {
		t.Fatalf("publish result %+v, want routed to disk", res)
	}
	if res := publish(t, v, p, "orders", "us.ny", "lost"); res.Routed {
		t.Fatalf("unroutable publish routed: %+v", res)
	}
	if res := publish(t, v, p, "", "eu", "second"); !res.Routed {
		t.Fatalf("default exchange did not route to its queue: %+v", res)
	}
	qs, e, remaining, ok, err := v.Get(System, "eu", false)
	if err != nil || !ok || string(e.Msg.Body) != "first" || remaining != 1 {
		t.Fatalf("get: %v ok=%v remaining=%d", err, ok, remaining)
	}
	qs.Delivered(e, e.Deliveries-1, false)
	qs.Settle(Ack, []*queue.Entry{e}, nil)
	if n, err := v.PurgeQueue(System, "eu"); err != nil || n != 1 {
		t.Fatalf("purge: %d, %v", n, err)
	}
	if err := v.Bind(System, BindingSpec{Source: "", Destination: "eu", Key: "x"}); err == nil || err.Code != amqp.AccessRefused {
		t.Fatalf("binding the default exchange: %v, want 403", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	// Restart: the topology is back, the queue is empty (acked and purged).
	b2 := newTestBroker(t, dir)
	v2 := b2.VHost("/")
	qs2, err := v2.Queue(System, "eu")
	if err != nil {
		t.Fatal(err)
	}
	if n := qs2.Q().Counts().Ready; n != 0 {
		t.Fatalf("%d messages after restart, want 0", n)
	}
	if res := publish(t, v2, v2.NewPublisher(), "orders", "eu.fr", "third"); !res.Routed {
		t.Fatal("binding lost in the restart")
	}
}

// An argument table that cannot be encoded is refused with 541 for a durable queue: storing
// the queue without its arguments (as encodeArgs once did, silently) would change it after a
// restart.
func TestUnencodableArgumentsRefused(t *testing.T) {
	b := newTestBroker(t, t.TempDir())
	v := b.VHost("/")
	args := amqp.Table{"x-custom": struct{}{}}
	_, err := v.DeclareQueue(System, QueueSpec{Name: "q", Durable: true, Args: args})
	if err == nil || err.Code != amqp.InternalError {
		t.Fatalf("durable queue with unencodable arguments: %v, want 541", err)
	}
	if _, err := v.Queue(System, "q"); err == nil {
		t.Fatal("the refused queue exists")
	}
	if err := v.DeclareExchange(System, ExchangeSpec{Name: "x", Type: "direct", Durable: true, Args: args}); err == nil || err.Code != amqp.InternalError {
		t.Fatalf("durable exchange with unencodable arguments: %v, want 541", err)
	}
}

// A durable queue declared again while the store is still deleting the old one (whose purge
// would take the new queue's first messages, under the same sequence numbers) waits for the
// delete to finish.
func TestRedeclareWaitsForStoreDelete(t *testing.T) {
	b := newTestBroker(t, t.TempDir())
	v := b.VHost("/")
	declare := func() (*Queue, *amqp.Error) {
		return v.DeclareQueue(System, QueueSpec{Name: "redeclared", Durable: true})
	}
	qs, err := declare()
	if err != nil {
		t.Fatal(err)
	}
	v.mu.Lock()
	v.removeQueueLocked(qs) // the delete has begun: gone from the registry, not yet from the store
	v.mu.Unlock()

	declared := make(chan *Queue, 1)
	go func() {
		q, err := declare()
		if err != nil {
			t.Error(err)
		}
		declared <- q
	}()
	select {
	case <-declared:
		t.Fatal("declare returned while the old queue was still being deleted")
	case <-time.After(50 * time.Millisecond):
	}
	v.finishQueueRemoval(qs)
	select {
	case fresh := <-declared:
		if fresh == nil || fresh == qs {
			t.Fatalf("queue after the redeclare: %p (old %p)", fresh, qs)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("declare still waiting after the delete finished")
	}
}

// sink is a consumer that takes everything and records whether its queue went away.
type sink struct {
	mu      sync.Mutex
	got     int
	deleted bool
}

func (s *sink) Deliver(*queue.Queue, *queue.Entry) queue.Outcome {
	s.mu.Lock()
	s.got++
	s.mu.Unlock()
	return queue.AcceptedNoAck
}

func (s *sink) QueueDeleted() {
	s.mu.Lock()
	s.deleted = true
	s.mu.Unlock()
}

// Exclusive consumers racing on one queue: exactly one wins, whatever the interleaving (the
// check and the registration are one step).
func TestExclusiveConsumeRace(t *testing.T) {
	b := newTestBroker(t, "")
	v := b.VHost("/")
	for round := 0; round < 50; round++ {
		name := "q"
		if _, err := v.DeclareQueue(System, QueueSpec{Name: name}); err != nil {
			t.Fatal(err)
		}
		const n = 8
		var wg sync.WaitGroup
		var mu sync.Mutex
		won := 0
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(owner OwnerID) {
				defer wg.Done()
				_, err := v.Consume(Actor{Owner: owner}, name, &sink{}, true, nil)
				if err == nil {
					mu.Lock()
					won++
					mu.Unlock()
				} else if err.Code != amqp.AccessRefused {
					t.Errorf("losing exclusive consume: %v, want 403", err)
				}
			}(OwnerID(i + 1))
		}
		wg.Wait()
		if won != 1 {
			t.Fatalf("round %d: %d exclusive consumers registered, want 1", round, won)
		}
		if _, err := v.DeleteQueue(System, name, false, false); err != nil {
			t.Fatal(err)
		}
	}
}

// A consumer registered while its queue is being deleted is either refused (404) or told the
// queue is gone: never left registered on a dead queue.
func TestConsumeDeleteRace(t *testing.T) {
	b := newTestBroker(t, "")
	v := b.VHost("/")
	for round := 0; round < 200; round++ {
		if _, err := v.DeclareQueue(System, QueueSpec{Name: "q"}); err != nil {
			t.Fatal(err)
		}
		s := &sink{}
		var consumeErr *amqp.Error
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); _, consumeErr = v.Consume(System, "q", s, false, nil) }()
		go func() {
			defer wg.Done()
			if _, err := v.DeleteQueue(System, "q", false, false); err != nil {
				t.Error(err)
			}
		}()
		wg.Wait()
		s.mu.Lock()
		deleted := s.deleted
		s.mu.Unlock()
		if consumeErr == nil && !deleted {
			t.Fatalf("round %d: consumer registered on a deleted queue and never told", round)
		}
		if consumeErr != nil && consumeErr.Code != amqp.NotFound {
			t.Fatalf("round %d: %v, want 404", round, consumeErr)
		}
	}
}

// A transaction whose store write fails makes nothing visible and says so.
func TestTxnCommitStoreFailure(t *testing.T) {
	b := newTestBroker(t, t.TempDir())
	v := b.VHost("/")
	qs, err := v.DeclareQueue(System, QueueSpec{Name: "q", Durable: true})
	if err != nil {
		t.Fatal(err)
	}
	ex, _ := v.Exchange("")
	props := amqp.Properties{DeliveryMode: 2}
	header := amqp.AppendContentHeader(nil, amqp.ClassBasic, 1, &props)
	sum, _ := amqp.ScanContentHeader(header)
	msg, _ := b.NewMessage(ex, "q", header, &sum, []byte("x"))
	tx := v.NewTxn()
	tx.Publish(ex, msg, false)
	if err := b.store.Close(); err != nil { // the disk goes away
		t.Fatal(err)
	}
	if err := tx.Commit(nil); err == nil {
		t.Fatal("commit reported success with the store closed")
	}
	if n := qs.Q().Counts().Ready; n != 0 {
		t.Fatalf("%d messages visible after a failed commit", n)
	}
}

// Exchange counters (publish_in/out) are gathered per publisher and added in batches: on Flush,
// when the publisher moves to another exchange, and every exchangeStatsBatch publishes.
func TestExchangeCountersBatched(t *testing.T) {
	b := newTestBroker(t, "")
	v := b.VHost("/")
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "q"}); err != nil {
		t.Fatal(err)
	}
	stats := func(name string) (uint64, uint64) {
		for _, x := range v.Exchanges() {
			if x.Name == name {
				return x.PublishIn, x.PublishOut
			}
		}
		t.Fatalf("no exchange %q", name)
		return 0, 0
	}
	p := v.NewPublisher()
	publish(t, v, p, "", "q", "routed")
	publish(t, v, p, "", "nowhere", "dropped")
	if in, _ := stats(""); in != 0 {
		t.Fatalf("counted before a flush: %d", in)
	}
	publish(t, v, p, "amq.direct", "x", "other exchange") // moving on flushes the default exchange's
	if in, out := stats(""); in != 2 || out != 1 {
		t.Fatalf("default exchange after switching: in %d out %d, want 2 and 1", in, out)
	}
	for i := 0; i < exchangeStatsBatch; i++ {
		publish(t, v, p, "amq.direct", "x", "batch")
	}
	if in, _ := stats("amq.direct"); in != exchangeStatsBatch {
		t.Fatalf("amq.direct after a full batch: %d, want %d", in, exchangeStatsBatch)
	}
	p.Flush()
	if in, out := stats("amq.direct"); in != exchangeStatsBatch+1 || out != 0 {
		t.Fatalf("amq.direct after Flush: in %d out %d", in, out)
	}
}

// A basic.get that arrives once Close has begun (a management request still running) is refused:
// taking the message would journal a delivery the closing store refuses after it has recorded
// the stop as clean, so the message would come back unflagged after the restart.
func TestGetRefusedWhileClosing(t *testing.T) {
	dir := t.TempDir()
	b := newTestBroker(t, dir)
	v := b.VHost("/")
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "q", Durable: true}); err != nil {
		t.Fatal(err)
	}
	publish(t, v, v.NewPublisher(), "", "q", "m")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	_, e, _, ok, aerr := v.Get(System, "q", false)
	if aerr == nil || aerr.Code != amqp.ConnectionForced || ok || e != nil {
		t.Fatalf("Get after Close = %v, %v, %v; want refused with %d", e, ok, aerr, amqp.ConnectionForced)
	}
	b2 := newTestBroker(t, dir)
	_, e, _, ok, aerr = b2.VHost("/").Get(System, "q", false)
	if aerr != nil || !ok || string(e.Msg.Body) != "m" || e.Deliveries != 1 {
		t.Fatalf("after restart Get = %+v, %v, %v; want m delivered once (not redelivered)", e, ok, aerr)
	}
}
