package cluster

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/queue"
)

// testCluster is n brokers in one process sharing one in-memory metadata log.
type testCluster struct {
	log     *memLog
	brokers []*broker.Broker
	meta    []*Metadata
}

func newTestCluster(t *testing.T, n int, dataDirs bool) *testCluster {
	t.Helper()
	return newCluster(t, n, dataDirs)
}

func newTestClusterTB(b *testing.B, n int) *testCluster { return newCluster(b, n, false) }

func newCluster(t testing.TB, n int, dataDirs bool) *testCluster {
	t.Helper()
	tc := &testCluster{log: &memLog{down: map[int]bool{}}}
	var nodes []string
	for i := range n {
		dir := ""
		if dataDirs {
			dir = t.TempDir()
		}
		b, err := broker.New(broker.Options{DataDir: dir, MaxRAMMessages: 4096, Logger: quietLog(),
			VHosts: []broker.VHostSettings{{Name: "/", MaxQueues: -1}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		name := fmt.Sprintf("n%d", i+1)
		nodes = append(nodes, name)
		m := NewMetadata(b, quietLog())
		b.SetReplicator(NewReplicator(name, tc.log.join(m)))
		tc.brokers = append(tc.brokers, b)
		tc.meta = append(tc.meta, m)
	}
	if _, err := tc.log.join(NewMetadata(nil, quietLog())).Propose(t.Context(), (&Command{Op: OpSetNodes, Nodes: nodes}).Encode()); err != nil {
		t.Fatal(err)
	}
	return tc
}

func (tc *testCluster) vhost(i int) *broker.VHost { return tc.brokers[i].VHost("/") }

// topology is a broker's registry as text: exchanges, queues (with home) and bindings, sorted.
func topology(v *broker.VHost) string {
	var lines []string
	for _, x := range v.Exchanges() {
		lines = append(lines, fmt.Sprintf("exchange %q %s durable=%v auto_delete=%v internal=%v args=%v", x.Name, x.Type, x.Durable, x.AutoDelete, x.Internal, x.Args))
	}
	for _, q := range v.Queues() {
		lines = append(lines, fmt.Sprintf("queue %q durable=%v auto_delete=%v exclusive=%v args=%v", q.Name, q.Durable, q.AutoDelete, q.Exclusive, q.Args))
	}
	for _, b := range v.Bindings() {
		lines = append(lines, fmt.Sprintf("binding %q -> %q exchange=%v key=%q args=%v", b.Source, b.Destination, b.ToExchange, b.Key, b.Args))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// sameTopology fails unless every broker has the registry of the first.
func (tc *testCluster) sameTopology(t *testing.T) string {
	t.Helper()
	want := topology(tc.vhost(0))
	for i := 1; i < len(tc.brokers); i++ {
		if got := topology(tc.vhost(i)); got != want {
			t.Fatalf("broker %d differs from broker 0:\n%s\n--- broker 0:\n%s", i, got, want)
		}
	}
	return want
}

// route publishes a transient message through exName on broker i and returns the queues it
// reached as name@home (home "" for a queue of broker i), sorted, and the publish result.
func (tc *testCluster) route(t *testing.T, i int, exName, key string) ([]string, broker.PublishResult) {
	t.Helper()
	return tc.publish(t, i, exName, key, 1)
}

// publish is route with a delivery mode (2: persistent, waiting for the store's sync).
func (tc *testCluster) publish(t *testing.T, i int, exName, key string, mode uint8) ([]string, broker.PublishResult) {
	t.Helper()
	v := tc.vhost(i)
	ex, err := v.Exchange(exName)
	if err != nil {
		t.Fatal(err)
	}
	props := amqp.Properties{DeliveryMode: mode}
	header := amqp.AppendContentHeader(nil, amqp.ClassBasic, 1, &props)
	sum, serr := amqp.ScanContentHeader(header)
	if serr != nil {
		t.Fatal(serr)
	}
	msg, aerr := tc.brokers[i].NewMessage(ex, key, header, &sum, []byte("x"))
	if aerr != nil {
		t.Fatal(aerr)
	}
	synced := make(chan error, 1)
	res, targets := v.NewPublisher().Publish(ex, msg, sum.HeadersRaw, func(err error) { synced <- err })
	if res.OnDisk {
		if err := <-synced; err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	for _, qs := range targets {
		names = append(names, qs.Name()+"@"+qs.Home())
	}
	slices.Sort(names)
	return names, res
}

// The brief's test: a declare and bind on broker 1 routes identically on brokers 2 and 3; a
// conflicting redeclare is refused everywhere; messages to a queue of another node are refused
// (a nack), never kept where no consumer of the queue would see them.
func TestThreeBrokersShareTopology(t *testing.T) {
	tc := newTestCluster(t, 3, false)
	v1 := tc.vhost(0)
	must := func(err *amqp.Error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(v1.DeclareExchange(broker.System, broker.ExchangeSpec{Name: "orders", Type: "topic", Durable: true}))
	_, err := v1.DeclareQueue(broker.System, broker.QueueSpec{Name: "eu", Durable: true, Args: amqp.Table{"x-message-ttl": int32(60000)}})
	must(err)
	must(v1.Bind(broker.System, broker.BindingSpec{Source: "orders", Destination: "eu", Key: "eu.#"}))
	// A queue declared on broker 2 and bound from broker 3; an exchange-to-exchange binding.
	_, err = tc.vhost(1).DeclareQueue(broker.System, broker.QueueSpec{Name: "all"})
	must(err)
	must(tc.vhost(2).Bind(broker.System, broker.BindingSpec{Source: "orders", Destination: "all", Key: "#"}))
	must(tc.vhost(2).DeclareExchange(broker.System, broker.ExchangeSpec{Name: "in", Type: "fanout"}))
	must(tc.vhost(0).Bind(broker.System, broker.BindingSpec{Source: "in", Destination: "orders", ToExchange: true}))
	tc.sameTopology(t)

	for i, want := range [][]string{{"all@n2", "eu@"}, {"all@", "eu@n1"}, {"all@n2", "eu@n1"}} {
		for _, src := range []string{"orders", "in"} {
			got, res := tc.route(t, i, src, "eu.de")
			if !slices.Equal(got, want) {
				t.Errorf("broker %d, %s eu.de routes to %v, want %v", i+1, src, got, want)
			}
			// Every broker has a queue of another node among the targets: refused (a nack).
			if !res.Routed || !res.Refused {
				t.Errorf("broker %d: publish result %+v, want routed and refused", i+1, res)
			}
		}
		if got, _ := tc.route(t, i, "orders", "us.ny"); !slices.Equal(got, []string{"all@" + map[bool]string{true: "", false: "n2"}[i == 1]}) {
			t.Errorf("broker %d: us.ny routes to %v", i+1, got)
		}
		if got, _ := tc.route(t, i, "", "eu"); len(got) != 1 || !strings.HasPrefix(got[0], "eu@") {
			t.Errorf("broker %d: the default exchange routes eu to %v", i+1, got)
		}
	}
	// The home node keeps what was published on it; the other nodes kept nothing.
	if n := v1.Queues(); len(n) != 2 {
		t.Fatalf("broker 1 lists %d queues", len(n))
	}
	for i := range 3 {
		for _, q := range tc.vhost(i).Queues() {
			if q.Name == "eu" && i != 0 && q.Counts.Ready != 0 {
				t.Errorf("broker %d holds %d messages of eu, homed on n1", i+1, q.Counts.Ready)
			}
			if q.Name == "eu" && i == 0 && q.Counts.Ready != 3 {
				t.Errorf("eu on its home holds %d messages, want 3 (through orders, in and the default exchange)", q.Counts.Ready)
			}
		}
	}

	// A conflicting redeclare is refused on every broker, with RabbitMQ's text.
	for i := range 3 {
		_, err := tc.vhost(i).DeclareQueue(broker.System, broker.QueueSpec{Name: "eu", Durable: true, Args: amqp.Table{"x-message-ttl": int32(1)}})
		if err == nil || err.Code != amqp.PreconditionFailed || !strings.Contains(err.Text, "inequivalent arg 'x-message-ttl' for queue 'eu' in vhost '/'") {
			t.Errorf("broker %d: conflicting redeclare: %v", i+1, err)
		}
		err = tc.vhost(i).DeclareExchange(broker.System, broker.ExchangeSpec{Name: "orders", Type: "direct", Durable: true})
		if err == nil || err.Code != amqp.PreconditionFailed {
			t.Errorf("broker %d: conflicting exchange redeclare: %v", i+1, err)
		}
		// An equivalent redeclare is fine everywhere and returns the queue.
		qs, err := tc.vhost(i).DeclareQueue(broker.System, broker.QueueSpec{Name: "eu", Durable: true, Args: amqp.Table{"x-message-ttl": int32(60000)}})
		if err != nil || qs.Name() != "eu" {
			t.Errorf("broker %d: equivalent redeclare: %v", i+1, err)
		}
	}
	tc.sameTopology(t)

	// Deleting on a node that is not the home deletes everywhere, bindings included.
	n, err := tc.vhost(2).DeleteQueue(broker.System, "eu", false, false)
	must(err)
	if n != 0 {
		t.Errorf("delete on a non-home node reported %d messages (they are on the home)", n)
	}
	must(tc.vhost(1).DeleteExchange(broker.System, "in", false))
	topo := tc.sameTopology(t)
	if strings.Contains(topo, `"eu"`) || strings.Contains(topo, `"in"`) {
		t.Errorf("eu or in still there:\n%s", topo)
	}
	// Deleting on the home reports its messages.
	_, res := tc.route(t, 1, "", "all")
	if res.Refused {
		t.Fatal("a publish on the home node was refused")
	}
	if n, err := tc.vhost(1).DeleteQueue(broker.System, "all", false, false); err != nil || n != 4 {
		t.Errorf("delete on the home: %d messages, %v; want 4 (3 routed by the loop above, 1 direct)", n, err)
	}
	tc.sameTopology(t)
}

// actor is a client connection: an owner of exclusive queues.
func actor(conn uint64) broker.Actor { return broker.Actor{Owner: broker.OwnerID(conn)} }

func TestClusterExclusiveQueues(t *testing.T) {
	tc := newTestCluster(t, 3, false)
	if _, err := tc.vhost(0).DeclareQueue(actor(7), broker.QueueSpec{Name: "mine", Exclusive: true}); err != nil {
		t.Fatal(err)
	}
	// Connection 7 of node 2 is another connection: 405 there, and for connection 8 of node 1.
	for _, c := range []struct {
		node int
		conn uint64
	}{{1, 7}, {0, 8}, {2, 7}} {
		v := tc.vhost(c.node)
		if _, err := v.DeclareQueue(actor(c.conn), broker.QueueSpec{Name: "mine", Exclusive: true}); err == nil || err.Code != amqp.ResourceLocked {
			t.Errorf("node %d conn %d: declare of another's exclusive queue: %v", c.node+1, c.conn, err)
		}
		if _, err := v.Queue(actor(c.conn), "mine"); err == nil || err.Code != amqp.ResourceLocked {
			t.Errorf("node %d conn %d: lookup of another's exclusive queue: %v", c.node+1, c.conn, err)
		}
		if err := v.Bind(actor(c.conn), broker.BindingSpec{Source: "amq.direct", Destination: "mine", Key: "k"}); err == nil || err.Code != amqp.ResourceLocked {
			t.Errorf("node %d conn %d: bind to another's exclusive queue: %v", c.node+1, c.conn, err)
		}
	}
	if err := tc.vhost(0).Bind(actor(7), broker.BindingSpec{Source: "amq.direct", Destination: "mine", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	tc.sameTopology(t)
	// A connection owning no exclusive queue closes: nothing goes through the log.
	entries := len(tc.log.entries)
	tc.vhost(0).DropExclusive(99)
	tc.vhost(1).DropExclusive(7) // connection 7 of node 2 owns nothing either
	if len(tc.log.entries) != entries {
		t.Errorf("closing connections without exclusive queues wrote %d log entries", len(tc.log.entries)-entries)
	}
	// The owner's connection closes: the queue goes on every node.
	tc.vhost(0).DropExclusive(7)
	for i := range 3 {
		if names := tc.vhost(i).QueueNames(); len(names) != 0 {
			t.Errorf("node %d still has %v", i+1, names)
		}
	}
	tc.sameTopology(t)
	// The node of the owner goes: its exclusive queues go everywhere.
	if _, err := tc.vhost(1).DeclareQueue(actor(3), broker.QueueSpec{Name: "x2", Exclusive: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.log.join(NewMetadata(nil, quietLog())).Propose(t.Context(), (&Command{Op: OpNodeGone, Node: "n2"}).Encode()); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if names := tc.vhost(i).QueueNames(); len(names) != 0 {
			t.Errorf("after n2 went, node %d still has %v", i+1, names)
		}
	}
}

// A queue that goes on its home by itself (x-expires, auto-delete) goes on every node, and a
// stale removal never deletes a queue declared again since.
func TestClusterLocalRemovalReplicates(t *testing.T) {
	tc := newTestCluster(t, 3, false)
	if _, err := tc.vhost(0).DeclareQueue(broker.System, broker.QueueSpec{Name: "brief", Args: amqp.Table{"x-expires": int32(50)}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := 0
		for i := range 3 {
			left += len(tc.vhost(i).QueueNames())
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the expired queue is still on %d nodes", left)
		}
		time.Sleep(10 * time.Millisecond)
	}
	tc.sameTopology(t)
}

// Without a majority the log takes nothing: the declare fails with 541 and changes nothing.
func TestClusterNoQuorum(t *testing.T) {
	tc := newTestCluster(t, 3, false)
	tc.log.mu.Lock()
	tc.log.down[2] = true
	tc.log.mu.Unlock()
	_, err := tc.vhost(2).DeclareQueue(broker.System, broker.QueueSpec{Name: "q"})
	if err == nil || err.Code != amqp.InternalError || !strings.Contains(err.Text, "cluster metadata unavailable") {
		t.Fatalf("declare without quorum: %v", err)
	}
	for i := range 3 {
		if names := tc.vhost(i).QueueNames(); len(names) != 0 {
			t.Errorf("node %d has %v", i+1, names)
		}
	}
}

// Concurrent conflicting declares from every node: each name ends with one definition, the
// same on every node, and every declare got either declare-ok or 406.
func TestClusterConcurrentDeclares(t *testing.T) {
	tc := newTestCluster(t, 3, true)
	var wg sync.WaitGroup
	errs := make(chan string, 300)
	for i := range 3 {
		wg.Go(func() {
			v := tc.vhost(i)
			for j := range 30 {
				name := fmt.Sprintf("q%d", j%10)
				_, err := v.DeclareQueue(broker.System, broker.QueueSpec{Name: name, Durable: true, Args: amqp.Table{"x-max-length": int32(i)}})
				if err != nil && err.Code != amqp.PreconditionFailed {
					errs <- err.Error()
				}
				if err := v.Bind(broker.System, broker.BindingSpec{Source: "amq.topic", Destination: name, Key: fmt.Sprint(i)}); err != nil {
					errs <- err.Error()
				}
				if j%7 == 0 {
					if _, err := v.DeleteQueue(broker.System, name, false, false); err != nil {
						errs <- err.Error()
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		if !strings.Contains(e, "NOT_FOUND") { // a bind racing a delete
			t.Error(e)
		}
	}
	tc.sameTopology(t)
	s0, _ := tc.meta[0].Snapshot()
	for i := 1; i < 3; i++ {
		if s, _ := tc.meta[i].Snapshot(); string(s) != string(s0) {
			t.Errorf("state machine %d differs", i)
		}
	}
}

// cancelled is a consumer that records being cancelled and takes nothing.
type cancelled struct{ gone chan struct{} }

func (c *cancelled) Deliver(*queue.Queue, *queue.Entry) queue.Outcome { return queue.Busy }
func (c *cancelled) QueueDeleted()                                    { close(c.gone) }

// A consumer on a remote entry is cancelled at once, and the entry - of an auto-delete queue -
// stays: only its home decides auto-deletion.
func TestClusterConsumeRemoteQueue(t *testing.T) {
	tc := newTestCluster(t, 3, false)
	if _, err := tc.vhost(0).DeclareQueue(broker.System, broker.QueueSpec{Name: "ad", AutoDelete: true}); err != nil {
		t.Fatal(err)
	}
	c := &cancelled{gone: make(chan struct{})}
	if _, err := tc.vhost(1).Consume(broker.System, "ad", c, false, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the consumer of a remote queue was not cancelled")
	}
	if _, _, _, ok, err := tc.vhost(1).Get(broker.System, "ad", true); ok || err != nil {
		t.Errorf("basic.get on a remote queue: ok %v, %v", ok, err)
	}
	time.Sleep(50 * time.Millisecond) // a wrongly proposed removal would run on its own goroutine
	for i := range 3 {
		if names := tc.vhost(i).QueueNames(); !slices.Equal(names, []string{"ad"}) {
			t.Errorf("node %d has %v, want [ad]", i+1, names)
		}
	}
	tc.sameTopology(t)
}

// A node that restarts (same data directory) restores its durable queues from its store, then
// replays the log: the replay changes nothing that is already there, adds what the node missed,
// and the node ends with the others' topology and its messages.
func TestClusterNodeRestartReplays(t *testing.T) {
	dir := t.TempDir()
	open := func() *broker.Broker {
		b, err := broker.New(broker.Options{DataDir: dir, MaxRAMMessages: 4096, Logger: quietLog(),
			VHosts: []broker.VHostSettings{{Name: "/", MaxQueues: -1}}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tc := newTestCluster(t, 2, false)
	b3 := open()
	m3 := NewMetadata(b3, quietLog())
	b3.SetReplicator(NewReplicator("n3", tc.log.join(m3)))
	tc.brokers, tc.meta = append(tc.brokers, b3), append(tc.meta, m3)

	v3 := b3.VHost("/")
	if err := v3.DeclareExchange(broker.System, broker.ExchangeSpec{Name: "d", Type: "direct", Durable: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := v3.DeclareQueue(broker.System, broker.QueueSpec{Name: "kept", Durable: true}); err != nil {
		t.Fatal(err)
	}
	if err := tc.vhost(0).Bind(broker.System, broker.BindingSpec{Source: "d", Destination: "kept", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	if got, res := tc.publish(t, 2, "d", "k", 2); !slices.Equal(got, []string{"kept@"}) || res.Refused || !res.OnDisk {
		t.Fatalf("publish on the home: %v %+v", got, res)
	}
	before := tc.sameTopology(t)

	// Node 3 stops; node 1 declares a queue meanwhile (node 3 will learn it from the log).
	tc.log.mu.Lock()
	tc.log.machines[2] = NewMetadata(nil, quietLog()) // the stopped node applies nothing
	tc.log.mu.Unlock()
	if err := b3.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.vhost(0).DeclareQueue(broker.System, broker.QueueSpec{Name: "while-away", Durable: true}); err != nil {
		t.Fatal(err)
	}

	b3 = open()
	t.Cleanup(func() { _ = b3.Close() })
	m3 = NewMetadata(b3, quietLog())
	b3.SetReplicator(NewReplicator("n3", memMember{l: tc.log, i: 2}))
	tc.log.mu.Lock()
	for i, e := range tc.log.entries {
		if r := m3.Apply(uint64(i+1), e).(Result); r.Code != 0 && !strings.Contains(r.Text, "inequivalent") {
			t.Errorf("replaying entry %d: %s", i+1, r.Text)
		}
	}
	tc.log.machines[2] = m3
	tc.log.mu.Unlock()
	tc.brokers[2], tc.meta[2] = b3, m3

	after := tc.sameTopology(t)
	if !strings.Contains(after, `queue "while-away"`) || after == before {
		t.Errorf("the restarted node did not learn what it missed:\n%s", after)
	}
	for _, q := range b3.VHost("/").Queues() {
		if q.Name == "kept" && q.Counts.Ready != 1 {
			t.Errorf("kept holds %d messages after the restart, want 1", q.Counts.Ready)
		}
	}
	// The queue restored from the store is the replicated queue: deleting it through another
	// node deletes it here, with its message.
	if _, err := tc.vhost(0).DeleteQueue(broker.System, "kept", false, false); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(b3.VHost("/").QueueNames(), "kept") {
		t.Error("kept survived its replicated delete on its home")
	}
	tc.sameTopology(t)
}

// Names the log's JSON cannot carry faithfully are refused, never changed.
func TestClusterRefusesNonUTF8Names(t *testing.T) {
	tc := newTestCluster(t, 2, false)
	_, err := tc.vhost(0).DeclareQueue(broker.System, broker.QueueSpec{Name: "q\xff"})
	if err == nil || err.Code != amqp.PreconditionFailed || !strings.Contains(err.Text, "not valid UTF-8") {
		t.Fatalf("declare of a non-UTF-8 name: %v", err)
	}
	if _, err := tc.vhost(0).DeclareQueue(broker.System, broker.QueueSpec{Name: "q"}); err != nil {
		t.Fatal(err)
	}
	err = tc.vhost(1).Bind(broker.System, broker.BindingSpec{Source: "amq.direct", Destination: "q", Key: "\xfe"})
	if err == nil || err.Code != amqp.PreconditionFailed {
		t.Fatalf("bind with a non-UTF-8 key: %v", err)
	}
	if len(tc.log.entries) != 2 { // set_nodes and the declare of q
		t.Errorf("%d log entries, want 2", len(tc.log.entries))
	}
}

// A restart replays a delete of an earlier queue of a name: it must not delete the queue of that
// name restored from the store (a later incarnation) with its confirmed messages. The queue's
// stored epoch tells the incarnations apart.
func TestClusterRestartKeepsRedeclaredQueue(t *testing.T) {
	dir := t.TempDir()
	open := func() *broker.Broker {
		b, err := broker.New(broker.Options{DataDir: dir, MaxRAMMessages: 4096, Logger: quietLog(),
			VHosts: []broker.VHostSettings{{Name: "/", MaxQueues: -1}}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tc := newTestCluster(t, 2, false)
	b3 := open()
	m3 := NewMetadata(b3, quietLog())
	b3.SetReplicator(NewReplicator("n3", tc.log.join(m3)))
	tc.brokers, tc.meta = append(tc.brokers, b3), append(tc.meta, m3)

	v3 := b3.VHost("/")
	if _, err := v3.DeclareQueue(broker.System, broker.QueueSpec{Name: "q", Durable: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := v3.DeleteQueue(broker.System, "q", false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := v3.DeclareQueue(broker.System, broker.QueueSpec{Name: "q", Durable: true}); err != nil {
		t.Fatal(err)
	}
	if err := v3.Bind(broker.System, broker.BindingSpec{Source: "amq.direct", Destination: "q", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	if got, res := tc.publish(t, 2, "amq.direct", "k", 2); !slices.Equal(got, []string{"q@"}) || res.Refused || !res.OnDisk {
		t.Fatalf("publish on the home: %v %+v", got, res)
	}

	tc.log.mu.Lock()
	tc.log.machines[2] = NewMetadata(nil, quietLog())
	tc.log.mu.Unlock()
	if err := b3.Close(); err != nil {
		t.Fatal(err)
	}
	b3 = open()
	t.Cleanup(func() { _ = b3.Close() })
	m3 = NewMetadata(b3, quietLog())
	b3.SetReplicator(NewReplicator("n3", memMember{l: tc.log, i: 2}))
	tc.log.mu.Lock()
	for i, e := range tc.log.entries {
		if r := m3.Apply(uint64(i+1), e).(Result); r.Code != 0 {
			t.Errorf("replaying entry %d: %s", i+1, r.Text)
		}
	}
	tc.log.machines[2] = m3
	tc.log.mu.Unlock()
	tc.brokers[2], tc.meta[2] = b3, m3

	found := false
	for _, q := range b3.VHost("/").Queues() {
		if q.Name == "q" {
			found = true
			if q.Counts.Ready != 1 {
				t.Errorf("q holds %d messages after the restart, want 1", q.Counts.Ready)
			}
		}
	}
	if !found {
		t.Error("q is gone after the restart")
	}
	tc.sameTopology(t)
}

// A node that crashed with exclusive queues does not hand them to a new connection after its
// restart (connection ids restart at 1): the replayed owner belongs to an earlier process, and
// the restarted node's node_restarted command drops those queues on every node.
func TestClusterRestartDropsEarlierExclusiveQueues(t *testing.T) {
	tc := newTestCluster(t, 2, false)
	b3, err := broker.New(broker.Options{MaxRAMMessages: 4096, Logger: quietLog(), VHosts: []broker.VHostSettings{{Name: "/", MaxQueues: -1}}})
	if err != nil {
		t.Fatal(err)
	}
	m3 := NewMetadata(b3, quietLog())
	b3.SetReplicator(NewReplicator("n3", tc.log.join(m3)))
	if _, err := b3.VHost("/").DeclareQueue(actor(1), broker.QueueSpec{Name: "mine", Exclusive: true}); err != nil {
		t.Fatal(err)
	}
	// A queue of this node's live process survives node_restarted of another process of n3.
	if _, err := tc.vhost(0).DeclareQueue(actor(1), broker.QueueSpec{Name: "n1s", Exclusive: true}); err != nil {
		t.Fatal(err)
	}

	// n3 crashes (no drop_owner) and starts again as a new process.
	tc.log.mu.Lock()
	tc.log.machines[2] = NewMetadata(nil, quietLog())
	tc.log.mu.Unlock()
	_ = b3.Close()
	b3, err = broker.New(broker.Options{MaxRAMMessages: 4096, Logger: quietLog(), VHosts: []broker.VHostSettings{{Name: "/", MaxQueues: -1}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b3.Close() })
	m3 = NewMetadata(b3, quietLog())
	member := memMember{l: tc.log, i: 2}
	b3.SetReplicator(NewReplicator("n3", member))
	tc.log.mu.Lock()
	for i, e := range tc.log.entries {
		m3.Apply(uint64(i+1), e)
	}
	tc.log.machines[2] = m3
	tc.log.mu.Unlock()
	tc.brokers, tc.meta = append(tc.brokers, b3), append(tc.meta, m3)

	// Connection 1 of the new process is not the owner of the earlier process's queue.
	if _, err := b3.VHost("/").DeclareQueue(actor(1), broker.QueueSpec{Name: "mine", Exclusive: true}); err == nil || err.Code != amqp.ResourceLocked {
		t.Fatalf("a new connection redeclaring the crashed process's exclusive queue: %v, want 405", err)
	}
	if _, err := b3.VHost("/").DeleteQueue(actor(1), "mine", false, false); err == nil || err.Code != amqp.ResourceLocked {
		t.Fatalf("a new connection deleting the crashed process's exclusive queue: %v, want 405", err)
	}

	restart := RestartCommand("n3", b3.Incarnation())
	if _, err := member.Propose(t.Context(), restart.Encode()); err != nil {
		t.Fatal(err)
	}
	for i := range tc.brokers {
		names := tc.vhost(i).QueueNames()
		if slices.Contains(names, "mine") || !slices.Contains(names, "n1s") {
			t.Errorf("node %d after node_restarted: %v, want n1s without mine", i+1, names)
		}
	}
	// The name is free for the new process's connections.
	if _, err := b3.VHost("/").DeclareQueue(actor(1), broker.QueueSpec{Name: "mine", Exclusive: true}); err != nil {
		t.Fatal(err)
	}
	tc.sameTopology(t)
}
