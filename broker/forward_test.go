package broker

import (
	"bytes"
	"context"
	"errors"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
)

func TestForwardEnvelope(t *testing.T) {
	for _, tc := range []struct {
		name          string
		queues        []string
		exchange, key string
		header, body  []byte
	}{
		{"one queue", []string{"q"}, "ex", "rk", []byte{0, 60, 0, 0}, []byte("body")},
		{"several, empty names", []string{"a", "", "long-" + string(bytes.Repeat([]byte("x"), 300))}, "", "", []byte{1}, nil},
		{"no queues", nil, "e", "k", nil, []byte{0}},
	} {
		b := EncodeForward(nil, tc.queues, tc.exchange, tc.key, tc.header, tc.body)
		f, err := DecodeForward(b)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !slices.Equal(f.Queues, tc.queues) && !(len(f.Queues) == 0 && len(tc.queues) == 0) || f.Exchange != tc.exchange ||
			f.RoutingKey != tc.key || !bytes.Equal(f.Header, tc.header) || !bytes.Equal(f.Body, tc.body) {
			t.Fatalf("%s: got %+v", tc.name, f)
		}
	}
	for _, bad := range [][]byte{nil, {'W'}, {'W', 3, 0}, {'X', 1, 0}, {'W', 1, 5}, {'W', 1, 1, 9, 'a'}, {'W', 1, 0, 0, 0}} {
		if _, err := DecodeForward(bad); err == nil {
			t.Errorf("%q decoded", bad)
		}
	}
}

func FuzzDecodeForward(f *testing.F) {
	f.Add(EncodeForward(nil, []string{"q1", "q2"}, "ex", "rk", []byte{0, 60}, []byte("body")))
	f.Add([]byte{'W', 1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add(EncodeForwardMessage(nil, 99, []string{"q"}, &queue.Message{Exchange: "x", Header: []byte{0, 60}, Body: []byte("b"), ExpiresAt: 1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		fw, err := DecodeForward(b)
		if err != nil {
			return
		}
		again := EncodeForward(nil, fw.Queues, fw.Exchange, fw.RoutingKey, fw.Header, fw.Body)
		if _, err := DecodeForward(again); err != nil {
			t.Fatalf("re-encoded envelope does not decode: %v", err)
		}
	})
}

// forwardEnvelope is a v2 envelope of body for queues, with the sender's metadata index idx.
func forwardEnvelope(t *testing.T, idx uint64, expiresAt int64, queues ...string) Forwarded {
	t.Helper()
	props := amqp.Properties{DeliveryMode: 1}
	body := []byte("payload")
	msg := &queue.Message{Exchange: "ex", RoutingKey: "rk", Body: body, ExpiresAt: expiresAt,
		Header: amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(body)), &props)}
	f, err := DecodeForward(EncodeForwardMessage(nil, idx, queues, msg))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestForwardEnvelopeV2(t *testing.T) {
	props := amqp.Properties{}
	hdr := amqp.AppendContentHeader(nil, amqp.ClassBasic, 4, &props)
	for _, tc := range []struct {
		name      string
		idx       uint64
		expiresAt int64
		ttlMin    uint64 // TTL decoded at least (0: exactly 0)
		ttlMax    uint64
	}{
		{"no expiry", 42, 0, 0, 0},
		{"an hour left", 1 << 40, time.Now().Add(time.Hour).UnixNano(), uint64(59 * time.Minute), uint64(time.Hour) + 1},
		{"already expired", 1, time.Now().Add(-time.Second).UnixNano(), 1, 1},
		{"saturated", 7, math.MaxInt64, math.MaxInt64, math.MaxInt64},
	} {
		msg := &queue.Message{Exchange: "e", RoutingKey: "k", Header: hdr, Body: []byte("body"), ExpiresAt: tc.expiresAt}
		f, err := DecodeForward(EncodeForwardMessage(nil, tc.idx, []string{"a", "b"}, msg))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if f.MetaIndex != tc.idx || f.TTL < tc.ttlMin || f.TTL > tc.ttlMax || !f.v2 ||
			!slices.Equal(f.Queues, []string{"a", "b"}) || f.Exchange != "e" || f.RoutingKey != "k" ||
			!bytes.Equal(f.Header, hdr) || string(f.Body) != "body" {
			t.Fatalf("%s: got %+v", tc.name, f)
		}
	}
	for _, bad := range [][]byte{{'W', 2}, {'W', 2, 1}, {'W', 2, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, {'W', 3, 0, 0}} {
		if _, err := DecodeForward(bad); err == nil {
			t.Errorf("%q decoded", bad)
		}
	}
}

// TestDeliverForwardedLaggingHome is a home node behind on the metadata log: a forward naming
// a queue it has not learnt of yet waits until it has applied as much as the sender had, and
// is refused (never confirmed) when it does not get there in time.
func TestDeliverForwardedLaggingHome(t *testing.T) {
	defer func(d time.Duration) { forwardTopologyWait = d }(forwardTopologyWait)
	forwardTopologyWait = 300 * time.Millisecond
	for _, tc := range []struct {
		name        string
		v1          bool          // a first-format envelope (no index)
		declareIn   time.Duration // when the queue appears (<0: never)
		appliedThen uint64        // the index reported with it
		wantRouted  bool
		wantRefused bool
	}{
		{"declared while waiting", false, 50 * time.Millisecond, 10, true, false},
		{"never declared, home caught up: deleted, skipped", false, -1, 10, false, false},
		{"never caught up: refused", false, -1, 0, false, true},
		{"first format, unknown queue: refused", true, -1, 10, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newTestBroker(t, "")
			v := b.VHost("/")
			b.TopologyApplied(5)
			f := forwardEnvelope(t, 10, 0, "late")
			if tc.v1 {
				var err error
				if f, err = DecodeForward(EncodeForward(nil, f.Queues, f.Exchange, f.RoutingKey, f.Header, f.Body)); err != nil {
					t.Fatal(err)
				}
			}
			if tc.appliedThen > 0 {
				go func() {
					if tc.declareIn >= 0 {
						time.Sleep(tc.declareIn)
						if _, err := v.DeclareQueue(System, QueueSpec{Name: "late"}); err != nil {
							t.Error(err)
						}
					} else {
						time.Sleep(50 * time.Millisecond)
					}
					b.TopologyApplied(tc.appliedThen)
				}()
			}
			var scratch []*queue.Entry
			res, _, aerr := v.DeliverForwarded(f, nil, &scratch)
			if aerr != nil {
				t.Fatal(aerr)
			}
			if res.Routed != tc.wantRouted || res.Refused != tc.wantRefused {
				t.Fatalf("got %+v, want routed %v refused %v", res, tc.wantRouted, tc.wantRefused)
			}
			if tc.wantRouted {
				if _, _, _, ok, err := v.Get(System, "late", true); !ok || err != nil {
					t.Fatalf("message not in the queue: %v %v", ok, err)
				}
			}
		})
	}
}

func TestDeliverForwardedChecks(t *testing.T) {
	b := newTestBroker(t, "")
	v := b.VHost("/")
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "q"}); err != nil {
		t.Fatal(err)
	}
	var scratch []*queue.Entry

	// The content header's body size must match the body carried.
	f := forwardEnvelope(t, 1, 0, "q")
	f.Body = f.Body[:3]
	if _, _, aerr := v.DeliverForwarded(f, nil, &scratch); aerr == nil || aerr.Code != amqp.SyntaxError {
		t.Fatalf("short body: %v", aerr)
	}

	// The remaining time to live carries over: an hour left stays about an hour, whatever
	// the header's expiration says (none here).
	exp := time.Now().Add(time.Hour).UnixNano()
	if res, _, aerr := v.DeliverForwarded(forwardEnvelope(t, 1, exp, "q"), nil, &scratch); aerr != nil || !res.Routed {
		t.Fatalf("%+v %v", res, aerr)
	}
	_, e, _, ok, err := v.Get(System, "q", true)
	if !ok || err != nil {
		t.Fatalf("get: %v %v", ok, err)
	}
	if d := e.Msg.ExpiresAt - exp; d < -int64(time.Second) || d > int64(time.Second) {
		t.Fatalf("expiry moved by %v", time.Duration(d))
	}

	// A time to live past the end of time saturates instead of wrapping into the past.
	f = forwardEnvelope(t, 1, 0, "q")
	f.TTL = math.MaxInt64 - 1
	if res, _, aerr := v.DeliverForwarded(f, nil, &scratch); aerr != nil || !res.Routed {
		t.Fatalf("%+v %v", res, aerr)
	}
	if _, e, _, ok, _ := v.Get(System, "q", true); !ok {
		t.Fatal("message not in the queue")
	} else if e.Msg.ExpiresAt != math.MaxInt64 {
		t.Fatalf("expiry %d, want saturated", e.Msg.ExpiresAt)
	}
}

// testReplicator makes a test broker cluster member "A" whose changes apply at once.
type testReplicator struct{ b *Broker }

func (r testReplicator) LocalNode() string { return "A" }

func (r testReplicator) Replicate(_ context.Context, op TopologyOp) (TopologyResult, *amqp.Error) {
	if op.Home == "" {
		op.Home = "A"
	}
	return r.b.ApplyTopology(op)
}

// testForwarder answers every forward with err, at once, and counts them.
type testForwarder struct {
	err error
	n   atomic.Int32
}

func (f *testForwarder) Forward(home, vhost string, queues []string, msg *queue.Message, done func(error)) {
	f.n.Add(1)
	if done != nil {
		done(f.err)
	}
}

// A transaction publishing to a queue of this node and one of node B: when B does not accept
// its copy, the commit fails (541 at the front end) and nothing is applied here; when it does,
// both have it.
func TestTxCommitForwardFails(t *testing.T) {
	for _, tc := range []struct {
		name    string
		err     error
		wantErr bool
		ready   int
	}{
		{"home accepts", nil, false, 1},
		{"home refuses", errors.New("nacked by B"), true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newTestBroker(t, "")
			b.SetReplicator(testReplicator{b})
			fw := &testForwarder{err: tc.err}
			b.SetForwarder(fw)
			v := b.VHost("/")
			for _, op := range []TopologyOp{
				{Kind: OpDeclareExchange, VHost: "/", Exchange: ExchangeSpec{Name: "fan", Type: "fanout"}},
				{Kind: OpDeclareQueue, VHost: "/", Queue: QueueSpec{Name: "here"}, Home: "A"},
				{Kind: OpDeclareQueue, VHost: "/", Queue: QueueSpec{Name: "there"}, Home: "B"},
				{Kind: OpBind, VHost: "/", Binding: BindingSpec{Source: "fan", Destination: "here"}},
				{Kind: OpBind, VHost: "/", Binding: BindingSpec{Source: "fan", Destination: "there"}},
			} {
				if _, err := b.ApplyTopology(op); err != nil {
					t.Fatal(err)
				}
			}
			ex, aerr := v.Exchange("fan")
			if aerr != nil {
				t.Fatal(aerr)
			}
			props := amqp.Properties{}
			header := amqp.AppendContentHeader(nil, amqp.ClassBasic, 1, &props)
			sum, _ := amqp.ScanContentHeader(header)
			msg, aerr := b.NewMessage(ex, "", header, &sum, []byte("x"))
			if aerr != nil {
				t.Fatal(aerr)
			}
			tx := v.NewTxn()
			tx.Publish(ex, msg, false)
			err := tx.Commit(nil)
			if (err != nil) != tc.wantErr {
				t.Fatalf("commit: %v", err)
			}
			qs, aerr := v.Queue(System, "here")
			if aerr != nil {
				t.Fatal(aerr)
			}
			if got := qs.Q().Stats().Ready; got != tc.ready || fw.n.Load() != 1 {
				t.Fatalf("local queue has %d, want %d; %d forwards", got, tc.ready, fw.n.Load())
			}
		})
	}
}

// blockingForwarder holds every Forward until release is closed, recording message IDs.
type blockingForwarder struct {
	release chan struct{}
	mu      sync.Mutex
	ids     []uint64
}

func (f *blockingForwarder) Forward(home, vhost string, queues []string, msg *queue.Message, done func(error)) {
	<-f.release
	f.mu.Lock()
	f.ids = append(f.ids, msg.ID)
	f.mu.Unlock()
}

// Forwards nobody confirms (dead-lettering, the delayed exchange's timer) never wait for a
// link that has no room: past bgForwardMax waiting they are dropped and counted, and the
// others still go, in order, once the link takes them.
func TestForwardNoWait(t *testing.T) {
	b := newTestBroker(t, "")
	fw := &blockingForwarder{release: make(chan struct{})}
	b.SetForwarder(fw)
	const n = bgForwardMax + 50
	start := time.Now()
	for i := range n {
		b.forwardNoWait("B", "/", []string{"q"}, &queue.Message{ID: uint64(i + 1)})
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("forwardNoWait waited %v", d)
	}
	dropped := b.ForwardsDropped()
	if dropped < 49 || dropped > 50 { // the goroutine may have taken the first one out already
		t.Fatalf("dropped %d, want 49 or 50", dropped)
	}
	close(fw.release)
	deadline := time.Now().Add(10 * time.Second)
	for {
		fw.mu.Lock()
		got := len(fw.ids)
		ordered := slices.IsSorted(fw.ids)
		fw.mu.Unlock()
		if !ordered {
			t.Fatal("forwards out of order")
		}
		if uint64(got)+dropped == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d forwarded + %d dropped, want %d", got, dropped, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.cluster.bg.mu.Lock()
	running := b.cluster.bg.running
	b.cluster.bg.mu.Unlock()
	for i := 0; running && i < 100; i++ { // it ends once the queue is empty
		time.Sleep(10 * time.Millisecond)
		b.cluster.bg.mu.Lock()
		running = b.cluster.bg.running
		b.cluster.bg.mu.Unlock()
	}
	if running {
		t.Fatal("forwarding goroutine still running with nothing queued")
	}
}
