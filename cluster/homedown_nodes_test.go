package cluster

import (
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/server"
)

// serverNodes are in-process cluster members as main.go runs them: an AMQP server whose broker
// joins the cluster (real Raft over loopback, the data link, node_down after the node timeout)
// in server.New, each on its own data directory, restartable on it.
type serverNodes struct {
	t       *testing.T
	addrs   map[string]string // Raft listeners
	dirs    map[string]string
	mu      sync.Mutex
	servers map[string]*server.Server
	nodes   map[string]*Node
}

func newServerNodes(t *testing.T, names ...string) *serverNodes {
	sn := &serverNodes{t: t, addrs: map[string]string{}, dirs: map[string]string{}, servers: map[string]*server.Server{}, nodes: map[string]*Node{}}
	for _, n := range names {
		sn.addrs[n], sn.dirs[n] = freeAddr(t), t.TempDir()
	}
	t.Cleanup(func() {
		for _, n := range names {
			sn.stop(n)
		}
	})
	return sn
}

// start starts the named members at once (each waits in StartNode for a majority).
func (sn *serverNodes) start(names ...string) {
	sn.t.Helper()
	errs := make(chan error, len(names))
	for _, name := range names {
		go func() {
			cfg := server.DefaultConfig()
			cfg.Listen = "127.0.0.1:0"
			cfg.DataDir = sn.dirs[name]
			cfg.Logger = quietLog()
			var node *Node
			cfg.Attach = func(b *broker.Broker) error {
				var err error
				node, err = StartNode(NodeConfig{Name: "test", NodeName: name, Listen: sn.addrs[name], Nodes: sn.addrs,
					Secret: "a-test-secret-of-enough-length", DataDir: sn.dirs[name], Logger: quietLog(),
					TickInterval: 20 * time.Millisecond, ElectionTicks: 10, NoSync: true, NodeTimeout: 2 * time.Second,
					CatchUpTimeout: 30 * time.Second}, b)
				return err
			}
			s, err := server.New(cfg)
			if err == nil {
				if err = s.Start(); err != nil {
					_ = s.Close()
					_ = node.Close()
				}
			}
			if err == nil {
				sn.mu.Lock()
				sn.servers[name], sn.nodes[name] = s, node
				sn.mu.Unlock()
			}
			errs <- err
		}()
	}
	for range names {
		if err := <-errs; err != nil {
			sn.t.Fatal(err)
		}
	}
}

// stop stops a member as main.go does: the AMQP server, then the Raft node.
func (sn *serverNodes) stop(name string) {
	sn.mu.Lock()
	s, n := sn.servers[name], sn.nodes[name]
	delete(sn.servers, name)
	delete(sn.nodes, name)
	sn.mu.Unlock()
	if s != nil {
		_ = s.Close()
		_ = n.Close()
	}
}

func (sn *serverNodes) url(name string) string {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	return "amqp://guest:guest@" + sn.servers[name].Addr().String() + "/"
}

func (sn *serverNodes) node(name string) *Node {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	return sn.nodes[name]
}

// The home node of a durable queue stops (its process gone, found dead after the node timeout
// by the leader): a client on another node gets RabbitMQ's 404 "home node ... is down or
// inaccessible" for a consume, a get and a passive declare of it, and a plain 404 for the
// exclusive queue of a client connected to the dead node (deleted, as RabbitMQ deletes it).
// The node restarts on its data directory: the queue answers again on the other node, with
// its confirmed persistent message.
func TestHomeDownRealNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three cluster members and waits for a node timeout")
	}
	sn := newServerNodes(t, "n1", "n2", "n3")
	sn.start("n1", "n2", "n3")
	_, ch1 := dial(t, sn.url("n1"))
	if _, err := ch1.QueueDeclare("dq", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	_, ch1x := dial(t, sn.url("n1"))
	if _, err := ch1x.QueueDeclare("xq", false, false, true, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch1.Confirm(false); err != nil {
		t.Fatal(err)
	}
	if !confirmOne(t, ch1, ch1.NotifyPublish(make(chan amqp091.Confirmation, 1)), "", "dq",
		amqp091.Publishing{DeliveryMode: amqp091.Persistent, Body: []byte("kept")}) {
		t.Fatal("persistent publish to dq on its home nacked")
	}
	// n2 reaches dq through the link (its home's count) and knows xq.
	waitFor(t, 10*time.Second, "n2 sees dq's message and xq", func() bool {
		c, err := amqp091.Dial(sn.url("n2"))
		if err != nil {
			return false
		}
		defer c.Close()
		ch, err := c.Channel()
		if err != nil {
			return false
		}
		st, err := ch.QueueDeclarePassive("dq", true, false, false, false, nil)
		if err != nil || st.Messages != 1 {
			return false
		}
		_, err = ch.QueueDeclarePassive("xq", false, false, true, false, nil)
		return amqpCode(err) == 405 // another connection's exclusive queue: it exists
	})

	sn.stop("n1")
	stopped := time.Now()
	waitFor(t, 15*time.Second, "n1 taken for dead", func() bool { return sn.node("n2").meta.NodeDown("n1") })
	t.Logf("n1 taken for dead %v after it stopped (node_timeout 2s)", time.Since(stopped).Round(time.Millisecond))

	const down = "NOT_FOUND - home node 'n1' of durable queue 'dq' in vhost '/' is down or inaccessible"
	for _, tc := range []struct {
		name string
		call func(ch *amqp091.Channel) error
		want string
	}{
		{"consume", func(ch *amqp091.Channel) error {
			_, err := ch.Consume("dq", "", false, false, false, false, nil)
			return err
		}, down},
		{"get", func(ch *amqp091.Channel) error {
			_, _, err := ch.Get("dq", false)
			return err
		}, down},
		{"passive declare", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclarePassive("dq", true, false, false, false, nil)
			return err
		}, down},
		{"exclusive queue of a connection of n1", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclarePassive("xq", false, false, true, false, nil)
			return err
		}, "NOT_FOUND - no queue 'xq' in vhost '/'"},
	} {
		_, ch := dial(t, sn.url("n2"))
		if code, reason := amqpErr(tc.call(ch)); code != 404 || reason != tc.want {
			t.Errorf("n2 %s with n1 dead: %d %q, want 404 %q", tc.name, code, reason, tc.want)
		}
	}

	// A publish with confirms routed only to dq goes past it, as on RabbitMQ: no nack (the
	// link cannot reach n1), a 312 return when mandatory, then the ack.
	_, chp := dial(t, sn.url("n2"))
	if err := chp.Confirm(false); err != nil {
		t.Fatal(err)
	}
	returns := chp.NotifyReturn(make(chan amqp091.Return, 1))
	if !confirmOneMandatory(t, chp, chp.NotifyPublish(make(chan amqp091.Confirmation, 1)), "", "dq",
		amqp091.Publishing{DeliveryMode: amqp091.Persistent, Body: []byte("lost")}) {
		t.Error("publish to dq with n1 dead nacked, want RabbitMQ's ack")
	}
	select {
	case r := <-returns:
		if r.ReplyCode != 312 {
			t.Errorf("return %d %s, want 312", r.ReplyCode, r.ReplyText)
		}
	case <-time.After(5 * time.Second):
		t.Error("mandatory publish to dq with n1 dead not returned")
	}

	sn.start("n1")
	waitFor(t, 15*time.Second, "n1 back", func() bool { return !sn.node("n2").meta.NodeDown("n1") })
	// The link learns n1's new AMQP address from its first status: until then a get is the
	// link's 541 (a connection error), so each try uses a new connection.
	var body string
	waitFor(t, 15*time.Second, "dq's message through n2", func() bool {
		c, err := amqp091.Dial(sn.url("n2"))
		if err != nil {
			return false
		}
		defer c.Close()
		ch, err := c.Channel()
		if err != nil {
			return false
		}
		d, ok, err := ch.Get("dq", true)
		if err != nil || !ok {
			return false
		}
		body = string(d.Body)
		return true
	})
	if body != "kept" {
		t.Fatalf("dq after n1 came back: %q, want the confirmed message", body)
	}
}
