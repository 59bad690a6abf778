package cluster

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/server"
)

// linkedCluster is n AMQP servers on free loopback ports sharing one in-memory metadata log,
// each with its data link to the others: the in-process cluster of the forwarding tests.
type linkedCluster struct {
	servers []*server.Server
	urls    []string
	links   []*Link
	log     *memLog // the shared metadata log (tests propose node_down on it)
	mu      sync.Mutex
	addrs   map[string]string
}

func startLinked(t *testing.T, n int) *linkedCluster {
	t.Helper()
	return startLinkedWith(t, n, nil, nil)
}

// startLinkedWith is startLinked with the members balanced queues may be homed on (nil: all)
// and each node's default queue leader locator (nil: client-local everywhere).
func startLinkedWith(t *testing.T, n int, members []string, locators []string) *linkedCluster {
	t.Helper()
	return startLinkedPrep(t, n, members, locators, nil, nil)
}

// startLinkedPrep is startLinkedWith with conf (when not nil) called on each node's server
// configuration, and prep (when not nil) on its metadata state machine before it joins the log.
func startLinkedPrep(t testing.TB, n int, members []string, locators []string, conf func(*server.Config), prep func(i int, m *Metadata)) *linkedCluster {
	t.Helper()
	log := &memLog{down: map[int]bool{}}
	lc := &linkedCluster{addrs: map[string]string{}, log: log}
	var nodes []string
	for i := range n {
		cfg := server.DefaultConfig()
		cfg.Listen = "127.0.0.1:0"
		cfg.DataDir = ""
		cfg.Logger = quietLog()
		if conf != nil {
			conf(&cfg)
		}
		s, err := server.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("n%d", i+1)
		nodes = append(nodes, name)
		b := s.Broker()
		meta := NewMetadata(b, quietLog())
		if prep != nil {
			prep(i, meta)
		}
		r := NewReplicator(name, log.join(meta))
		if i < len(locators) {
			r.SetLocator(locators[i])
		}
		b.SetReplicator(r)
		l := NewLink(LinkConfig{Cluster: "test", Node: name, Secret: "a-test-secret-of-some-length", Logger: quietLog(),
			Timeout: 2 * time.Second, Addr: lc.addr})
		l.Install(b)
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		lc.mu.Lock()
		lc.addrs[name] = s.Addr().String()
		lc.mu.Unlock()
		t.Cleanup(func() { _ = s.Close(); l.Close() })
		lc.servers = append(lc.servers, s)
		lc.links = append(lc.links, l)
		lc.urls = append(lc.urls, "amqp://guest:guest@"+s.Addr().String()+"/")
	}
	if members != nil {
		nodes = members
	}
	if _, err := log.join(NewMetadata(nil, quietLog())).Propose(t.Context(), (&Command{Op: OpSetNodes, Nodes: nodes}).Encode()); err != nil {
		t.Fatal(err)
	}
	return lc
}

func (lc *linkedCluster) addr(node string) string {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.addrs[node]
}

// confirmOne publishes one message with confirms and waits for its confirm (ack true).
func confirmOne(t *testing.T, ch *amqp091.Channel, confirms <-chan amqp091.Confirmation, ex, key string, p amqp091.Publishing) bool {
	t.Helper()
	if err := ch.Publish(ex, key, false, false, p); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-confirms:
		return c.Ack
	case <-time.After(10 * time.Second):
		t.Fatal("no confirm within 10 s")
	}
	return false
}

func getBody(t *testing.T, ch *amqp091.Channel, q string) (amqp091.Delivery, bool) {
	t.Helper()
	d, ok, err := ch.Get(q, true)
	if err != nil {
		t.Fatal(err)
	}
	return d, ok
}

// A publish on n2 routed to queues homed on n1 and n3 reaches exactly those queues (once each,
// with the publisher's properties and the original exchange and routing key), and its confirm
// is an ack once both homes accepted it. With the home n1 stopped, the same publish is nacked
// (no hang), as by a full reject-publish queue.
func TestForwardPublishToHomes(t *testing.T) {
	lc := startLinked(t, 3)
	_, ch1 := dial(t, lc.urls[0])
	_, ch2 := dial(t, lc.urls[1])
	_, ch3 := dial(t, lc.urls[2])
	if err := ch2.ExchangeDeclare("fan", "fanout", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	// Homed where declared (client-local): q1 on n1, q3 on n3.
	if _, err := ch1.QueueDeclare("q1", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch3.QueueDeclare("q3", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"q1", "q3"} {
		if err := ch2.QueueBind(q, "", "fan", false, nil); err != nil {
			t.Fatal(err)
		}
	}
	// CC headers to the default exchange must not make copies on the home node.
	if err := ch2.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch2.NotifyPublish(make(chan amqp091.Confirmation, 16))
	pub := amqp091.Publishing{Body: []byte("hello"), DeliveryMode: amqp091.Persistent, ContentType: "text/plain",
		MessageId: "m1", Headers: amqp091.Table{"k": int32(7), "nested": amqp091.Table{"d": amqp091.Decimal{Scale: 2, Value: -5}}}}
	if !confirmOne(t, ch2, confirms, "fan", "rk", pub) {
		t.Fatal("publish forwarded to n1 and n3 was nacked")
	}
	cc := amqp091.Publishing{Body: []byte("cc"), Headers: amqp091.Table{"CC": []any{"q3"}}}
	if !confirmOne(t, ch2, confirms, "", "q1", cc) {
		t.Fatal("publish with CC to q1 and q3 was nacked")
	}
	for _, tc := range []struct {
		ch *amqp091.Channel
		q  string
	}{{ch1, "q1"}, {ch3, "q3"}} {
		d, ok := getBody(t, tc.ch, tc.q)
		if !ok || string(d.Body) != "hello" || d.Exchange != "fan" || d.RoutingKey != "rk" || d.ContentType != "text/plain" ||
			d.MessageId != "m1" || d.Headers["k"] != int32(7) || d.DeliveryMode != amqp091.Persistent {
			t.Fatalf("%s: got %v %+v", tc.q, ok, d)
		}
		if dec := d.Headers["nested"].(amqp091.Table)["d"]; dec != (amqp091.Decimal{Scale: 2, Value: -5}) {
			t.Fatalf("%s: nested decimal header %v", tc.q, dec)
		}
		d, ok = getBody(t, tc.ch, tc.q)
		if !ok || string(d.Body) != "cc" || d.Exchange != "" || d.RoutingKey != "q1" {
			t.Fatalf("%s: CC copy: got %v %+v", tc.q, ok, d)
		}
		if _, ok := getBody(t, tc.ch, tc.q); ok {
			t.Fatalf("%s: a second copy", tc.q)
		}
	}

	// Ordered per channel, without confirms too: 200 messages arrive in order on n1.
	_, plain := dial(t, lc.urls[1])
	for i := range 200 {
		if err := plain.Publish("", "q1", false, false, amqp091.Publishing{Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 200 {
		var d amqp091.Delivery
		var ok bool
		for deadline := time.Now().Add(5 * time.Second); !ok && time.Now().Before(deadline); {
			if d, ok = getBody(t, ch1, "q1"); !ok {
				time.Sleep(5 * time.Millisecond)
			}
		}
		if !ok || string(d.Body) != fmt.Sprint(i) {
			t.Fatalf("message %d: got %v %q", i, ok, d.Body)
		}
	}

	// The home of q1 stops: the forward is nacked, and nothing hangs.
	_ = lc.servers[0].Close()
	start := time.Now()
	if confirmOne(t, ch2, confirms, "fan", "rk", pub) {
		t.Fatal("publish to a queue whose home is down was acked")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("nack took %v", d)
	}
	// n3's part still arrived.
	if d, ok := getBody(t, ch3, "q3"); !ok || string(d.Body) != "hello" {
		t.Fatalf("q3 after n1 stopped: %v %q", ok, d.Body)
	}
}

func TestAMQPAddrFor(t *testing.T) {
	for _, tc := range []struct{ reported, cluster, want string }{
		{"127.0.0.1:5682", "127.0.0.1:25682", "127.0.0.1:5682"},
		{"0.0.0.0:5672", "10.0.0.2:25672", "10.0.0.2:5672"},
		{"[::]:5672", "[fd00::2]:25672", "[fd00::2]:5672"},
		{"bad", "10.0.0.2:25672", ""},
	} {
		if got := amqpAddrFor(tc.reported, tc.cluster); got != tc.want {
			t.Errorf("amqpAddrFor(%q, %q) = %q, want %q", tc.reported, tc.cluster, got, tc.want)
		}
	}
}

// A home node behind on the metadata log (its broker applies each entry 300 ms late) gets a
// forward for a queue another node just declared there: it waits until it has applied the
// declare, keeps the message and confirms it; before, the forward skipped the queue it did
// not know yet and the confirm was an ack for a message kept nowhere.
func TestForwardToLaggingHome(t *testing.T) {
	var lag atomic.Bool
	lc := startLinkedPrep(t, 2, []string{"n1"}, []string{"", "balanced"}, nil, func(i int, m *Metadata) {
		if i != 0 {
			return
		}
		m.testApplyDelay = func() {
			if lag.Load() {
				time.Sleep(300 * time.Millisecond)
			}
		}
		m.StartWorker()
		t.Cleanup(m.StopWorker)
	})
	_, ch1 := dial(t, lc.urls[0])
	_, ch2 := dial(t, lc.urls[1])
	if err := ch2.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch2.NotifyPublish(make(chan amqp091.Confirmation, 1))
	lag.Store(true)
	// Balanced over the members {n1}: homed on n1. no-wait: declare-ok's counts would ask n1.
	if _, err := ch2.QueueDeclare("lagging", false, false, false, true, nil); err != nil {
		t.Fatal(err)
	}
	if !confirmOne(t, ch2, confirms, "", "lagging", amqp091.Publishing{Body: []byte("kept")}) {
		t.Fatal("forward to a lagging home nacked")
	}
	lag.Store(false)
	d, ok := getBody(t, ch1, "lagging")
	if !ok || string(d.Body) != "kept" {
		t.Fatalf("home has %q (%v), want the confirmed message", d.Body, ok)
	}
}

// A message of exactly limits.max_message_size published on n2 to a queue homed on n1 grows
// past the limit in its envelope: n1 takes the envelope (the limit plus the envelope's slack)
// instead of closing the forwarding channel with 406, and the publish is confirmed.
func TestForwardMaxSizeMessage(t *testing.T) {
	const max = 4096
	lc := startLinkedPrep(t, 2, nil, nil, func(c *server.Config) { c.MaxMessageSize = max }, nil)
	_, ch1 := dial(t, lc.urls[0])
	_, ch2 := dial(t, lc.urls[1])
	if _, err := ch1.QueueDeclare("big", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch2.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch2.NotifyPublish(make(chan amqp091.Confirmation, 1))
	body := make([]byte, max)
	if !confirmOne(t, ch2, confirms, "", "big", amqp091.Publishing{Body: body, Headers: amqp091.Table{"h": "v"}}) {
		t.Fatal("a message of the maximum size forwarded to its home was nacked")
	}
	d, ok := getBody(t, ch1, "big")
	if !ok || len(d.Body) != max {
		t.Fatalf("home has %d bytes (%v), want %d", len(d.Body), ok, max)
	}
}

// A queue declared on n2 and homed on n1, which is behind on the metadata log: declare-ok's
// counts come from n1, which answers 404 until it has applied the declare; the declare (and a
// passive one) waits for it instead of failing the channel with 404.
func TestDeclareOnLaggingHome(t *testing.T) {
	var lag atomic.Bool
	lc := startLinkedPrep(t, 2, []string{"n1"}, []string{"", "balanced"}, nil, func(i int, m *Metadata) {
		if i != 0 {
			return
		}
		m.testApplyDelay = func() {
			if lag.Load() {
				time.Sleep(300 * time.Millisecond)
			}
		}
		m.StartWorker()
		t.Cleanup(m.StopWorker)
	})
	_, ch2 := dial(t, lc.urls[1])
	lag.Store(true)
	if _, err := ch2.QueueDeclare("lagging", false, false, false, false, nil); err != nil {
		t.Fatalf("declare of a queue homed on a lagging node: %v", err)
	}
	if _, err := ch2.QueueDeclarePassive("lagging", false, false, false, false, nil); err != nil {
		t.Fatalf("passive declare: %v", err)
	}
	lag.Store(false)
}
