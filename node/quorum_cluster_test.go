package node

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/cluster"
	"github.com/warrenmq/warren/ctl"
	"github.com/warrenmq/warren/server"
)

// clusterMember is one in-process cluster node with its management API and metrics.
type clusterMember struct {
	name, amqp, api, metrics string
}

// startCluster starts names as a cluster of in-process nodes (Raft over loopback TCP, fast
// ticks, no fsync), each serving the management API and the metrics on free ports.
func startCluster(t *testing.T, names ...string) map[string]*clusterMember {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	peers := map[string]string{}
	for _, n := range names {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		peers[n] = l.Addr().String()
		l.Close()
	}
	out := map[string]*clusterMember{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, len(names))
	for _, name := range names {
		nc := cluster.NodeConfig{Name: "mgmt-test", NodeName: name, Listen: peers[name], Nodes: peers,
			Secret: "quorum-mgmt-test-secret-0123456789", DataDir: t.TempDir(), Logger: quiet,
			TickInterval: 20 * time.Millisecond, ElectionTicks: 10, NoSync: true}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var cn *cluster.Node
			cfg := server.DefaultConfig()
			cfg.Listen, cfg.DataDir, cfg.Logger = "127.0.0.1:0", nc.DataDir, quiet
			cfg.Users[0].Tags = []string{"administrator"}
			cfg.Attach = func(b *broker.Broker) error {
				var err error
				cn, err = cluster.StartNode(nc, b)
				return err
			}
			s, err := server.New(cfg)
			if err == nil {
				err = s.Start()
			}
			if err != nil {
				errs <- fmt.Errorf("node %s: %w", name, err)
				return
			}
			h, err := ServeHTTP(s, HTTPOptions{ManagementListen: "127.0.0.1:0", PrometheusListen: "127.0.0.1:0", Logger: quiet,
				Cluster: cn.Status, Quorum: cn})
			if err != nil {
				errs <- err
				return
			}
			t.Cleanup(func() { _ = h.Close(); _ = s.Close(); _ = cn.Close() })
			mu.Lock()
			out[name] = &clusterMember{name: name, amqp: "amqp://guest:guest@" + s.Addr().String() + "/",
				api: "http://" + h.ManagementAddr().String(), metrics: "http://" + h.PrometheusAddr().String()}
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return out
}

// eventually retries cond every 20 ms for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// runCtl runs warren ctl against a node's management API.
func runCtl(t *testing.T, m *clusterMember, args ...string) (int, string, string) {
	t.Helper()
	var out, errs bytes.Buffer
	code := ctl.Run(append([]string{"-url", m.api}, args...), &out, &errs)
	return code, out.String(), errs.String()
}

// queueRow is the row of queue name in a node's /api/queues.
func queueRow(t *testing.T, m *clusterMember, name string) map[string]any {
	t.Helper()
	var qs []map[string]any
	getJSON(t, m.api+"/api/queues", &qs)
	for _, q := range qs {
		if q["name"] == name {
			return q
		}
	}
	return nil
}

func strs(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// TestQuorumQueueManagementCluster: on a 3-node cluster, a quorum queue of two replicas
// shows RabbitMQ 3.10's fields on every node's /api/queues (members, online, leader, and
// node = leader on its replicas), per-queue rabbitmq_raft_* metrics on its replicas only,
// and warren ctl quorum_status lists its members with their Raft state; warren ctl
// add_member asked on the third node returns with that node in the group's configuration,
// and delete_member with it gone from the members.
func TestQuorumQueueManagementCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	nodes := startCluster(t, "n1", "n2", "n3")
	var ch *amqp091.Channel
	eventually(t, "a quorum queue declared on n1 (placement needs every node known)", func() bool {
		c, err := amqp091.Dial(nodes["n1"].amqp)
		if err != nil {
			return false
		}
		t.Cleanup(func() { c.Close() })
		if ch, err = c.Channel(); err != nil {
			return false
		}
		// Declared again until the placement sees three nodes: a declare before set_nodes
		// is applied puts the queue on every node.
		_, err = ch.QueueDeclare("qq", true, false, false, false, amqp091.Table{"x-queue-type": "quorum", "x-quorum-initial-group-size": int32(2)})
		if err != nil {
			return false
		}
		if row := queueRow(t, nodes["n1"], "qq"); len(strs(row["members"])) != 2 {
			_, _ = ch.QueueDelete("qq", false, false, false)
			return false
		}
		return true
	})
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		conf, err := ch.PublishWithDeferredConfirm("", "qq", false, false, amqp091.Publishing{DeliveryMode: 2, Body: []byte(fmt.Sprint("m", i))})
		if err != nil || !conf.Wait() {
			t.Fatalf("publish %d: %v", i, err)
		}
	}

	members := strs(queueRow(t, nodes["n1"], "qq")["members"])
	var outside string // the node that runs no replica
	for _, n := range []string{"n1", "n2", "n3"} {
		if !slices.Contains(members, n) {
			outside = n
		}
	}
	if !slices.Contains(members, "n1") || outside == "" {
		t.Fatalf("qq's members %v: want n1 (client-local) and one more", members)
	}
	var leader string
	eventually(t, "every node's /api/queues showing qq's members, online and leader", func() bool {
		for name, m := range nodes {
			q := queueRow(t, m, "qq")
			if q["type"] != "quorum" || !slices.Equal(strs(q["members"]), members) || !slices.Equal(strs(q["online"]), members) {
				return false
			}
			l, _ := q["leader"].(string)
			if name == outside {
				// No replica here: the leader is unknown to this node, which shows the queue's
				// home instead (a string, as RabbitMQ always gives one).
				if !slices.Contains(members, l) || q["node"] != l {
					t.Fatalf("qq on %s (no replica): leader %v, node %v", name, q["leader"], q["node"])
				}
				continue
			}
			if l == "" || q["node"] != l || (leader != "" && l != leader) {
				return false
			}
			leader = l
		}
		return leader != ""
	})

	// The single queue, compared with RabbitMQ 3.10.8's quorum queue: its fields, not the
	// classic queue's paging and exclusive-consumer fields.
	var q map[string]any
	getJSON(t, nodes[leader].api+"/api/queues/%2F/qq", &q)
	for _, k := range []string{"leader", "members", "online", "node", "single_active_consumer_ctag", "messages", "consumers"} {
		if _, ok := q[k]; !ok {
			t.Errorf("GET /api/queues/%%2F/qq has no %q", k)
		}
	}
	for _, k := range []string{"messages_paged_out", "messages_ready_ram", "exclusive_consumer_tag", "idle_since", "single_active_consumer_tag"} {
		if _, ok := q[k]; ok {
			t.Errorf("GET /api/queues/%%2F/qq has %q, which a RabbitMQ quorum queue has not", k)
		}
	}
	if q["messages"] != float64(5) || q["node"] != leader {
		t.Errorf("qq: messages %v, node %v (leader %s)", q["messages"], q["node"], leader)
	}
	// Without stats, as RabbitMQ: members, online and leader, no node.
	var light []map[string]any
	getJSON(t, nodes[leader].api+"/api/queues?disable_stats=true", &light)
	for _, r := range light {
		if r["name"] == "qq" {
			if _, ok := r["node"]; ok || r["leader"] != leader || len(strs(r["members"])) != 2 {
				t.Errorf("qq without stats: %v", r)
			}
		}
	}

	// Metrics: each replica reports its replica's Raft indices; the outside node none.
	for name, m := range nodes {
		code, body := call(t, "GET", m.metrics+"/metrics/per-object", "")
		if code != 200 {
			t.Fatalf("per-object metrics of %s: %d", name, code)
		}
		has := strings.Contains(string(body), `rabbitmq_raft_log_commit_index{vhost="/",queue="qq"}`) &&
			strings.Contains(string(body), `rabbitmq_raft_term_total{vhost="/",queue="qq"}`)
		if has != (name != outside) {
			t.Errorf("%s's /metrics/per-object has qq's raft metrics: %v (outside node %s)", name, has, outside)
		}
	}
	code, body := call(t, "GET", nodes[leader].metrics+"/metrics", "")
	if code != 200 || !strings.Contains(string(body), "# TYPE rabbitmq_raft_term_total counter") {
		t.Errorf("aggregated /metrics of the leader: %d, no rabbitmq_raft_term_total counter", code)
	}

	// quorum_status on the leader: its own row in full, the follower as the leader sees it.
	eventually(t, "quorum_status on the leader showing the follower active", func() bool {
		code, out, errs := runCtl(t, nodes[leader], "quorum_status", "qq")
		if code != 0 {
			t.Fatalf("quorum_status: %d %s", code, errs)
		}
		var self, follower bool
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) == 10 && f[0] == leader && f[1] == "leader" && f[2] == "true" && f[9] == "self":
				self = true
			case len(f) == 5 && slices.Contains(members, f[0]) && f[0] != leader && f[1] == "follower" && f[4] == "leader":
				follower = true
			}
		}
		if strings.Contains(out, "(leader: "+leader+")") && self && follower {
			t.Logf("warren ctl quorum_status qq on the leader:\n%s", out)
			return true
		}
		return false
	})
	if code, out, errs := runCtl(t, nodes["n1"], "quorum_status", "nosuch"); code != 1 || !strings.Contains(errs, "not found") {
		t.Fatalf("quorum_status of a missing queue: %d %s %s", code, out, errs)
	}

	// add_member on the node added: when ctl returns, that node's replica has applied the
	// configuration with it (quorum_status's voters), with no waiting here.
	start := time.Now()
	code, out, errs := runCtl(t, nodes[outside], "add_member", "qq", outside)
	if code != 0 {
		t.Fatalf("add_member %s: %d %s %s", outside, code, out, errs)
	}
	t.Logf("warren ctl add_member returned committed after %v", time.Since(start))
	var st map[string]any
	getJSON(t, nodes[outside].api+"/api/queues/%2F/qq/quorum_status", &st)
	if voters := strs(st["voters"]); !slices.Contains(voters, outside) || len(voters) != 3 {
		t.Fatalf("quorum_status on %s right after add_member: voters %v", outside, st["voters"])
	}
	// delete_member asked anywhere: when ctl returns, the members no longer have it.
	start = time.Now()
	if code, out, errs := runCtl(t, nodes[leader], "delete_member", "qq", outside); code != 0 {
		t.Fatalf("delete_member %s: %d %s %s", outside, code, out, errs)
	}
	t.Logf("warren ctl delete_member returned committed after %v", time.Since(start))
	if got := strs(queueRow(t, nodes[leader], "qq")["members"]); !slices.Equal(got, members) {
		t.Fatalf("qq's members right after delete_member %s: %v, want %v", outside, got, members)
	}
}

// On a single node a quorum queue is a group of one: /api/queues shows this node as its only
// member, online and leader (as a one-node RabbitMQ does), and quorum_status answers 400
// (there is no Raft group to report).
func TestQuorumQueueManagementSingleNode(t *testing.T) {
	s, h := startNode(t, t.TempDir())
	api := "http://" + h.ManagementAddr().String()
	c, err := amqp091.Dial("amqp://guest:guest@" + s.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("q1", true, false, false, false, amqp091.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}
	var q map[string]any
	getJSON(t, api+"/api/queues/%2F/q1", &q)
	var ov map[string]any
	getJSON(t, api+"/api/overview", &ov)
	node := ov["node"]
	if q["type"] != "quorum" || q["leader"] != node || q["node"] != node ||
		!slices.Equal(strs(q["members"]), []string{node.(string)}) || !slices.Equal(strs(q["online"]), []string{node.(string)}) {
		t.Fatalf("q1 on a single node: %v", q)
	}
	code, body := call(t, "GET", api+"/api/queues/%2F/q1/quorum_status", "")
	if code != 400 || !strings.Contains(string(body), "needs a cluster") {
		t.Fatalf("quorum_status on a single node: %d %s", code, body)
	}
	if _, err := ch.QueueDeclare("c1", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	code, body = call(t, "GET", api+"/api/queues/%2F/c1/quorum_status", "")
	if code != 400 || !strings.Contains(string(body), "not a quorum queue") {
		t.Fatalf("quorum_status of a classic queue: %d %s", code, body)
	}
	var cq map[string]any
	getJSON(t, api+"/api/queues/%2F/c1", &cq)
	if _, ok := cq["members"]; ok || cq["type"] != "classic" {
		t.Fatalf("classic queue c1: %v", cq)
	}
}
