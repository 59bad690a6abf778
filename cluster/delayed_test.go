package cluster

import (
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// An x-delayed-message declare is checked (x-delayed-type) before the log, so that applying it
// cannot fail on any node; an accepted one is homed on its declaring node: only that node's
// delayer holds its messages, every node routes through it.
func TestClusterDelayedDeclare(t *testing.T) {
	tc := newTestCluster(t, 3, true)
	entries := len(tc.log.entries)
	for _, c := range []struct {
		args amqp.Table
		code uint16
	}{
		{nil, amqp.PreconditionFailed},
		{amqp.Table{"x-delayed-type": "nope"}, amqp.CommandInvalid},
		{amqp.Table{"x-delayed-type": "x-delayed-message"}, amqp.CommandInvalid},
	} {
		err := tc.vhost(1).DeclareExchange(broker.System, broker.ExchangeSpec{Name: "dx", Type: "x-delayed-message", Durable: true, Args: c.args})
		if err == nil || err.Code != c.code {
			t.Fatalf("declare with %v: %v, want %d", c.args, err, c.code)
		}
	}
	if len(tc.log.entries) != entries {
		t.Errorf("refused declares reached the log: %d entries, want %d", len(tc.log.entries), entries)
	}
	if err := tc.vhost(1).DeclareExchange(broker.System, broker.ExchangeSpec{Name: "dx", Type: "x-delayed-message", Durable: true,
		Args: amqp.Table{"x-delayed-type": "direct"}}); err != nil {
		t.Fatal(err)
	}
	// A redeclare from another node is equivalent (as the plugin, x-delayed-type is not compared).
	if err := tc.vhost(2).DeclareExchange(broker.System, broker.ExchangeSpec{Name: "dx", Type: "x-delayed-message", Durable: true,
		Args: amqp.Table{"x-delayed-type": "topic"}}); err != nil {
		t.Fatalf("redeclare on n3: %v", err)
	}
	for i := range 3 {
		typ := ""
		for _, x := range tc.vhost(i).Exchanges() {
			if x.Name == "dx" {
				typ = x.Type
			}
		}
		if typ != "x-delayed-message" {
			t.Errorf("n%d: dx is a %q exchange", i+1, typ)
		}
	}
	tc.sameTopology(t)
}

// delayedPublish publishes body to exchange ex with x-delay ms (and confirms on ch) and reports
// whether it was acked.
func delayedPublish(t *testing.T, ch *amqp091.Channel, ex, key, body string, ms int32) bool {
	t.Helper()
	dc, err := ch.PublishWithDeferredConfirm(ex, key, false, false, amqp091.Publishing{DeliveryMode: amqp091.Persistent,
		Body: []byte(body), Headers: amqp091.Table{"x-delay": ms}})
	if err != nil {
		t.Fatal(err)
	}
	ok, err := dc.WaitContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// awaitGet polls basic.get of q on ch until a message comes (at most within d).
func awaitGet(t *testing.T, ch *amqp091.Channel, q string, d time.Duration) (amqp091.Delivery, bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		m, ok, err := ch.Get(q, true)
		if err != nil {
			t.Fatal(err)
		}
		if ok || time.Now().After(deadline) {
			return m, ok
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A delayed exchange declared on n1 holds its messages there: a delayed publish on n2 is
// forwarded to n1 and confirmed once n1 holds it; when due, n1 routes it through the
// exchange's bindings to a queue homed on n3. Undelayed publishes route at once on the node
// they arrive at; a transaction's delayed publish is held on n1 at the commit. With n1 down, a
// delayed publish on n2 is nacked, never acked for a message held nowhere.
func TestClusterDelayedAcrossNodes(t *testing.T) {
	lc := startLinked(t, 3)
	_, ch1 := dial(t, lc.urls[0])
	_, ch2 := dial(t, lc.urls[1])
	_, ch3 := dial(t, lc.urls[2])
	if err := ch1.ExchangeDeclare("dx", "x-delayed-message", true, false, false, false, amqp091.Table{"x-delayed-type": "direct"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ch3.QueueDeclare("dq", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch2.QueueBind("dq", "k", "dx", false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch2.Confirm(false); err != nil {
		t.Fatal(err)
	}
	b1, b2 := lc.servers[0].Broker(), lc.servers[1].Broker()
	if !delayedPublish(t, ch2, "dx", "k", "later", 400) {
		t.Fatal("delayed publish on n2 nacked")
	}
	published := time.Now()
	if h1, h2 := b1.DelayedStats().Held, b2.DelayedStats().Held; h1 != 1 || h2 != 0 {
		t.Fatalf("held on n1 %d, on n2 %d; want 1 and 0", h1, h2)
	}
	if _, ok := getBody(t, ch3, "dq"); ok {
		t.Fatal("delayed message routed before it was due")
	}
	d, ok := awaitGet(t, ch3, "dq", 5*time.Second)
	if !ok || string(d.Body) != "later" || d.Headers["x-delay"] != int32(-400) || d.Exchange != "dx" || d.RoutingKey != "k" {
		t.Fatalf("due message on n3: %v %q %v %q %q", ok, d.Body, d.Headers, d.Exchange, d.RoutingKey)
	}
	if waited := time.Since(published); waited < 350*time.Millisecond {
		t.Fatalf("delayed message routed after %v, want about 400ms", waited)
	}

	// No x-delay: routed at once by the node it reached.
	if !confirmOne(t, ch2, ch2.NotifyPublish(make(chan amqp091.Confirmation, 1)), "dx", "k", amqp091.Publishing{Body: []byte("now")}) {
		t.Fatal("undelayed publish nacked")
	}
	if d, ok := awaitGet(t, ch3, "dq", 5*time.Second); !ok || string(d.Body) != "now" {
		t.Fatalf("undelayed message: %v %q", ok, d.Body)
	}

	// A transaction on n3: committed once n1 holds the message.
	_, tx := dial(t, lc.urls[2])
	if err := tx.Tx(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Publish("dx", "k", false, false, amqp091.Publishing{Body: []byte("tx"), Headers: amqp091.Table{"x-delay": int32(200)}}); err != nil {
		t.Fatal(err)
	}
	if err := tx.TxCommit(); err != nil {
		t.Fatalf("tx.commit with a delayed publish for n1: %v", err)
	}
	if h := b1.DelayedStats().Held; h != 1 {
		t.Fatalf("held on n1 after the commit: %d, want 1", h)
	}
	if d, ok := awaitGet(t, ch3, "dq", 5*time.Second); !ok || string(d.Body) != "tx" {
		t.Fatalf("transaction's delayed message: %v %q", ok, d.Body)
	}

	// The home stops: a delayed publish is nacked, in bounded time.
	_ = lc.servers[0].Close()
	start := time.Now()
	if delayedPublish(t, ch2, "dx", "k", "lost?", 100) {
		t.Fatal("delayed publish acked while the exchange's home is down")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("nack took %v", d)
	}
}

// The home's pending delayed messages survive its restart (they are in its store), and a
// non-home node restarted from its own store (which has the exchange as a delayed exchange of
// its own) learns from the log that n1 holds them: it forwards its delayed publishes there.
func TestClusterDelayedSurvivesRestarts(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := amqp091.Dial(nodes["n1"].url)
		if err == nil {
			var ch *amqp091.Channel
			if ch, err = c.Channel(); err == nil {
				err = ch.ExchangeDeclare("dx", "x-delayed-message", true, false, false, false, amqp091.Table{"x-delayed-type": "fanout"})
			}
			_ = c.Close()
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("declaring the delayed exchange on n1: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // the metadata log's first election
	}
	_, ch2 := dial(t, nodes["n2"].url)
	if _, err := ch2.QueueDeclare("dq", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch2.QueueBind("dq", "", "dx", false, nil); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		waitQueue(t, n.url, "dq")
	}
	_, ch3 := dial(t, nodes["n3"].url)
	if err := ch3.Confirm(false); err != nil {
		t.Fatal(err)
	}
	if !delayedPublish(t, ch3, "dx", "", "survivor", 2500) {
		t.Fatal("delayed publish on n3 nacked")
	}
	if h := nodes["n1"].srv.Broker().DelayedStats().Held; h != 1 {
		t.Fatalf("held on n1: %d, want 1", h)
	}
	nodes["n1"].crash()
	nodes["n1"].start()
	if h := nodes["n1"].srv.Broker().DelayedStats().Held; h != 1 {
		t.Fatalf("held on n1 after its restart: %d, want 1", h)
	}
	_, ch2 = dial(t, nodes["n2"].url)
	d, ok := awaitGet(t, ch2, "dq", 15*time.Second)
	if !ok || string(d.Body) != "survivor" {
		t.Fatalf("pending delayed message after n1's restart: %v %q", ok, d.Body)
	}

	nodes["n3"].crash()
	nodes["n3"].start()
	_, ch3 = dial(t, nodes["n3"].url)
	if err := ch3.Confirm(false); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(15 * time.Second)
	for !delayedPublish(t, ch3, "dx", "", "via-restarted", 100) { // the link to n1 reconnects
		if time.Now().After(deadline) {
			t.Fatal("delayed publishes on the restarted n3 still nacked after 15 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if h := nodes["n3"].srv.Broker().DelayedStats().Held; h != 0 {
		t.Errorf("the restarted n3 holds %d delayed messages itself, want 0 (n1 holds them)", h)
	}
	if d, ok := awaitGet(t, ch2, "dq", 15*time.Second); !ok || string(d.Body) != "via-restarted" {
		t.Fatalf("delayed message published on the restarted n3: %v %q", ok, d.Body)
	}
}

// The state machine records a delayed exchange's home (its declaring node; none for other
// types), keeps it on a redeclare from another node, and carries it through a snapshot: a node
// restoring one declares the exchange with the same home.
func TestMetadataDelayedExchangeHome(t *testing.T) {
	rec := &recorder{}
	m := NewMetadata(rec, quietLog())
	var i uint64
	apply := func(c Command) Result {
		i++
		return m.Apply(i, c.Encode()).(Result)
	}
	delayedArgs := args(t, amqp.Table{"x-delayed-type": "direct"})
	if r := apply(Command{Op: OpDeclareExchange, VHost: "/", Name: "dx", Type: "x-delayed-message", Durable: true,
		Args: delayedArgs, Node: "n2"}); r.Err() != nil || r.Home != "n2" {
		t.Fatalf("declare on n2: %+v", r)
	}
	if r := apply(Command{Op: OpDeclareExchange, VHost: "/", Name: "dx", Type: "x-delayed-message", Durable: true,
		Args: delayedArgs, Node: "n3"}); r.Err() != nil {
		t.Fatalf("redeclare on n3: %+v", r)
	}
	if r := apply(Command{Op: OpDeclareExchange, VHost: "/", Name: "plain", Type: "direct", Node: "n3"}); r.Err() != nil || r.Home != "" {
		t.Fatalf("direct exchange: %+v", r)
	}
	homes := map[string]string{}
	for _, op := range rec.ops {
		if op.Kind == broker.OpDeclareExchange {
			homes[op.Exchange.Name] = op.Home
		}
	}
	if len(rec.ops) != 2 || homes["dx"] != "n2" || homes["plain"] != "" {
		t.Fatalf("broker told %d changes, homes %v; want 2, dx on n2, plain none", len(rec.ops), homes)
	}
	snap, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	fresh := &recorder{}
	if err := NewMetadata(fresh, quietLog()).Restore(snap); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, op := range fresh.ops {
		if op.Kind == broker.OpDeclareExchange && op.Exchange.Name == "dx" {
			found = true
			if op.Home != "n2" || op.Exchange.Type != "x-delayed-message" {
				t.Errorf("restored dx: home %q type %q, want n2 x-delayed-message", op.Home, op.Exchange.Type)
			}
		}
	}
	if !found {
		t.Error("restoring the snapshot declared no dx")
	}
}
