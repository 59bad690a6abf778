package main

// Multi-process cluster tests: three warren processes (this test binary run as the broker, see
// TestMain) on loopback ports, each with its own config.yaml and data directory, talking Raft
// to each other; clients use amqp091-go and the management API over real sockets.

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/cluster/faultproxy"
	"github.com/warrenmq/warren/ctl"
)

var mgmtReady = regexp.MustCompile(`msg="management API and UI ready" addr=(\S+)`)

// testCluster is three (or more) node configurations on fixed loopback ports, so that a node
// restarts with the same address.
type testCluster struct {
	t     *testing.T
	names []string
	cfgs  map[string]string // node -> config file
	dirs  map[string]string // node -> data dir
	nodes map[string]*clusterChild
	addrs map[string]string // node -> its inter-node listener
	// members are the nodes each config lists (names unless changed: a node added later).
	members []string
	// peer, when set, is the address node from dials to reach node to (a faultproxy).
	peer func(from, to string) string
	// env are extra environment variables of every node (WARREN_...=...).
	env []string
}

// clusterChild is one running node with its management API address.
type clusterChild struct {
	*childBroker
	name string
	mgmt string
}

// freePorts returns n distinct loopback addresses that were free a moment ago, for the
// nodes' inter-node listeners: fixed ports, since a node restarts with its address.
//
// Every listener is held until all n are picked: picked one after the other, each closed at
// once, the kernel handed the same port out twice now and then (7 times in 20,000 picks of
// three here), and the configs listed an address twice. The ports come from below the
// kernel's ephemeral range where it is known (Linux): a port from port 0 is free again
// between the pick and the node's listen, and while a killed node is down, and any bind to
// port 0 on the machine (the nodes' own AMQP and management listeners, other tests) may
// take it then; below the range only an explicit bind to that port can.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	lo, ok := ephemeralLow()
	for tries := 0; ok && len(lns) < n && tries < 1000; tries++ {
		// The 10,000 ports below the range: above the well-known and registered ports a
		// machine's services tend to use (5672, 15672, ...), mostly.
		port := lo - 1 - rand.IntN(min(10000, lo-1025))
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			lns = append(lns, ln)
		}
	}
	for len(lns) < n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
	}
	addrs := make([]string, n)
	for i, ln := range lns {
		addrs[i] = ln.Addr().String()
	}
	return addrs
}

// The cluster tests' ports are distinct, and outside the ephemeral range where it is known.
func TestFreePorts(t *testing.T) {
	addrs := freePorts(t, 50)
	lo, known := ephemeralLow()
	seen := map[string]bool{}
	for _, a := range addrs {
		if seen[a] {
			t.Fatalf("%s picked twice: %v", a, addrs)
		}
		seen[a] = true
		_, p, err := net.SplitHostPort(a)
		if err != nil {
			t.Fatal(err)
		}
		if port, _ := strconv.Atoi(p); known && port >= lo {
			t.Errorf("port %d is in the ephemeral range (from %d)", port, lo)
		}
	}
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux), if known and high
// enough to leave ports below it.
func ephemeralLow() (int, bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, false
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil || lo < 2048 {
		return 0, false
	}
	return lo, true
}

func newTestCluster(t *testing.T, names ...string) *testCluster {
	tc := &testCluster{t: t, names: names, cfgs: map[string]string{}, dirs: map[string]string{}, nodes: map[string]*clusterChild{},
		addrs: map[string]string{}, members: names}
	root := t.TempDir()
	ports := freePorts(t, len(names))
	for i, n := range names {
		tc.addrs[n] = ports[i]
		dir := filepath.Join(root, n)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		tc.cfgs[n] = filepath.Join(dir, "config.yaml")
		tc.dirs[n] = filepath.Join(dir, "data")
	}
	tc.writeConfigs()
	return tc
}

// writeConfigs writes every node's config.yaml listing tc.members (as reached through tc.peer).
func (tc *testCluster) writeConfigs() {
	for _, n := range tc.names {
		var list strings.Builder
		for _, m := range tc.members {
			addr := tc.addrs[m]
			if tc.peer != nil && m != n {
				addr = tc.peer(n, m)
			}
			fmt.Fprintf(&list, "    - {name: %s, address: %q}\n", m, addr)
		}
		cfg := fmt.Sprintf("cluster:\n  name: test\n  node_name: %s\n  listen: %q\n  secret: \"a-test-secret-of-enough-length\"\n  nodes:\n%s", n, tc.addrs[n], list.String())
		if err := os.WriteFile(tc.cfgs[n], []byte(cfg), 0o600); err != nil {
			tc.t.Fatal(err)
		}
	}
}

// spawn starts node n without waiting for it.
func (tc *testCluster) spawn(n string, extraEnv ...string) *clusterChild {
	t := tc.t
	cmd := exec.Command(os.Args[0], "-config", tc.cfgs[n], "-listen", "127.0.0.1:0", "-data-dir", tc.dirs[n])
	cmd.Dir = filepath.Dir(tc.cfgs[n])
	env := []string{asMainEnv + "=1", "GORACE=" + strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"),
		envPrefix + "MANAGEMENT_LISTEN=127.0.0.1:0", envPrefix + "PROMETHEUS_LISTEN="}
	env = append(append(env, tc.env...), extraEnv...)
	if lvl := os.Getenv("CLUSTER_TEST_LOG_LEVEL"); lvl != "" { // e.g. debug, to see Raft's messages
		env = append(env, envPrefix+"LOG_LEVEL="+lvl)
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) && !strings.HasPrefix(kv, "GORACE=") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	b := &childBroker{t: t, dataDir: tc.dirs[n], cmd: cmd, log: &lockedBuffer{}, done: make(chan struct{})}
	b.out = &readyWriter{log: b.log, ready: make(chan string, 1)}
	cmd.Stderr, cmd.Stdout = b.out, b.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", n, err)
	}
	go func() {
		b.waitErr = cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		select {
		case <-b.done:
		default:
			_ = cmd.Process.Kill()
			<-b.done
		}
		if strings.Contains(b.log.String(), "WARNING: DATA RACE") {
			t.Errorf("node %s (pid %d) reported a data race", n, cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("node %s pid %d log:\n%s", n, cmd.Process.Pid, b.log.String())
		}
	})
	c := &clusterChild{childBroker: b, name: n}
	tc.nodes[n] = c
	return c
}

// wait waits for c's ready line.
func (c *clusterChild) wait() *clusterChild {
	t := c.t
	t.Helper()
	select {
	case c.addr = <-c.out.ready:
	case <-c.done:
		t.Fatalf("node %s exited before ready (%v):\n%s", c.name, c.waitErr, c.log.String())
	case <-time.After(startTimeout):
		t.Fatalf("node %s not ready within %v:\n%s", c.name, startTimeout, c.log.String())
	}
	m := mgmtReady.FindStringSubmatch(c.log.String())
	if m == nil {
		t.Fatalf("node %s: no management ready line:\n%s", c.name, c.log.String())
	}
	c.mgmt = m[1]
	return c
}

// start starts every named node and waits until they are all ready.
func (tc *testCluster) start(names ...string) {
	for _, n := range names {
		tc.spawn(n)
	}
	for _, n := range names {
		tc.nodes[n].wait()
	}
}

// api GETs path from c's management API into v.
func (c *clusterChild) api(path string, v any) error {
	req, _ := http.NewRequest("GET", "http://"+c.mgmt+path, nil)
	req.SetBasicAuth("guest", "guest")
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// apiNode is the part of an /api/nodes entry the tests read.
type apiNode struct {
	Name         string `json:"name"`
	Running      bool   `json:"running"`
	Leader       string `json:"raft_leader"`
	IsLeader     bool   `json:"raft_is_leader"`
	Term         uint64 `json:"raft_term"`
	Applied      uint64 `json:"raft_applied_index"`
	Voter        bool   `json:"raft_voter"`
	DigestMatch  bool   `json:"config_digest_match"`
	ConfigDigest string `json:"config_digest"`
}

// leader waits until c knows a Raft leader and returns it.
func (c *clusterChild) leader(within time.Duration) string {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		var nodes []apiNode
		err := c.api("/api/nodes", &nodes)
		if err == nil && len(nodes) > 0 && nodes[0].Leader != "" {
			return nodes[0].Leader
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("node %s: no Raft leader within %v (last error %v)", c.name, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// topology is a node's exchanges, queues and bindings as its management API lists them.
func (c *clusterChild) topology() (string, error) {
	var xs, qs, bs []map[string]any
	if err := c.api("/api/exchanges", &xs); err != nil {
		return "", err
	}
	if err := c.api("/api/queues", &qs); err != nil {
		return "", err
	}
	if err := c.api("/api/bindings", &bs); err != nil {
		return "", err
	}
	var lines []string
	for _, x := range xs {
		lines = append(lines, fmt.Sprintf("exchange %v %v %v", x["vhost"], x["name"], x["type"]))
	}
	for _, q := range qs {
		lines = append(lines, fmt.Sprintf("queue %v %v durable=%v args=%v", q["vhost"], q["name"], q["durable"], q["arguments"]))
	}
	for _, b := range bs {
		lines = append(lines, fmt.Sprintf("binding %v %v->%v(%v) %v", b["vhost"], b["source"], b["destination"], b["destination_type"], b["routing_key"]))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n"), nil
}

// running lists the nodes whose process runs.
func (tc *testCluster) running() []string {
	var out []string
	for _, n := range tc.names {
		if c := tc.nodes[n]; c != nil {
			select {
			case <-c.done:
			default:
				out = append(out, n)
			}
		}
	}
	return out
}

// queueNames is the set of queue names c's management API lists.
func (c *clusterChild) queueNames() (map[string]bool, error) {
	var qs []map[string]any
	if err := c.api("/api/queues", &qs); err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, q := range qs {
		out[fmt.Sprint(q["name"])] = true
	}
	return out, nil
}

// passiveUntil waits until a passive declare of queue name on c succeeds.
func passiveUntil(t *testing.T, c *clusterChild, name string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ch := channelOn(t, c)
		_, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not know queue %s after %v: %v", c.name, name, within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// channelOn opens a channel on a new connection to c.
func channelOn(t *testing.T, c *clusterChild) *amqp091.Channel {
	t.Helper()
	conn, err := amqp091.Dial("amqp://guest:guest@" + c.addr + "/")
	if err != nil {
		t.Fatalf("dial %s: %v", c.name, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel on %s: %v", c.name, err)
	}
	return ch
}

// declareUntil declares queue name on c until it succeeds (each failure costs the channel:
// a 541 closes it), and returns how long that took.
func declareUntil(t *testing.T, c *clusterChild, name string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	conn, err := amqp091.Dial("amqp://guest:guest@" + c.addr + "/")
	if err != nil {
		t.Fatalf("dial %s: %v", c.name, err)
	}
	defer conn.Close()
	for {
		ch, err := conn.Channel()
		if err == nil {
			_, err = ch.QueueDeclare(name, true, false, false, false, nil)
			if err == nil {
				_ = ch.Close()
				return time.Since(start)
			}
		}
		if time.Since(start) > within {
			t.Fatalf("declare of %s on %s still failing after %v: %v", name, c.name, within, err)
		}
		if conn.IsClosed() {
			if conn, err = amqp091.Dial("amqp://guest:guest@" + c.addr + "/"); err != nil {
				t.Fatalf("dial %s: %v", c.name, err)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// amqpCode is the reply code of a channel or connection error.
func amqpCode(err error) int {
	var ae *amqp091.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return 0
}

// sameTopology waits (a follower applies a moment after the leader) until every running node
// lists the same topology, and returns it.
func (tc *testCluster) sameTopology(within time.Duration) string {
	t := tc.t
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var first, firstNode string
		differ := ""
		for _, n := range tc.running() {
			c := tc.nodes[n]
			top, err := c.topology()
			if err != nil {
				differ = fmt.Sprintf("%s: %v", n, err)
				break
			}
			if firstNode == "" {
				first, firstNode = top, n
			} else if top != first {
				differ = fmt.Sprintf("%s:\n%s\n--- %s:\n%s", firstNode, first, n, top)
				break
			}
		}
		if differ == "" {
			return first
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes' topologies differ after %v:\n%s", within, differ)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestClusterThreeProcesses runs three nodes as separate processes: a topology declared on one
// is seen, with RabbitMQ's answers, on the others; the Raft leader killed with SIGKILL is
// replaced and declares go on within the failover target; the killed node restarts and
// catches up; a node restarted with an empty data directory rejoins with the whole topology.
func TestClusterThreeProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three broker processes")
	}
	tc := newTestCluster(t, "n1", "n2", "n3")
	tc.start("n1", "n2", "n3")
	n1, n2, n3 := tc.nodes["n1"], tc.nodes["n2"], tc.nodes["n3"]
	n1.leader(15 * time.Second)

	// Declares on n1 (the first one waits for the cluster to have a leader).
	declareUntil(t, n1, "q1", 15*time.Second)
	ch1 := channelOn(t, n1)
	if err := ch1.ExchangeDeclare("x1", "direct", true, false, false, false, nil); err != nil {
		t.Fatalf("exchange.declare on n1: %v", err)
	}
	if err := ch1.QueueBind("q1", "k1", "x1", false, nil); err != nil {
		t.Fatalf("queue.bind on n1: %v", err)
	}

	for _, c := range []*clusterChild{n2, n3} {
		// A passive declare finds what n1 declared; the binding routes there too.
		ch := channelOn(t, c)
		deadline := time.Now().Add(5 * time.Second)
		for {
			if _, err := ch.QueueDeclarePassive("q1", true, false, false, false, nil); err == nil {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("passive declare of q1 on %s: %v", c.name, err)
			}
			ch = channelOn(t, c)
			time.Sleep(50 * time.Millisecond)
		}
		if err := ch.ExchangeDeclarePassive("x1", "direct", true, false, false, false, nil); err != nil {
			t.Fatalf("passive exchange.declare of x1 on %s: %v", c.name, err)
		}
		// A redeclare with other arguments is 406 on every node, as on q1's home.
		_, err := ch.QueueDeclare("q1", true, false, false, false, amqp091.Table{"x-max-length": int32(5)})
		if amqpCode(err) != amqp091.PreconditionFailed {
			t.Fatalf("redeclare of q1 with other args on %s: %v, want 406", c.name, err)
		}
		ch = channelOn(t, c)
		err = ch.ExchangeDeclare("x1", "fanout", true, false, false, false, nil)
		if amqpCode(err) != amqp091.PreconditionFailed {
			t.Fatalf("redeclare of x1 as fanout on %s: %v, want 406", c.name, err)
		}
	}

	// A publish on n2 routed to q1, homed on n1, is forwarded to n1 and acked once n1 has it
	// (docs/cluster.md, Forwarding and proxying); on q1's home it is an ack too.
	for _, tcase := range []struct {
		node *clusterChild
		ack  bool
	}{{n2, true}, {n1, true}} {
		ch := channelOn(t, tcase.node)
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1))
		if err := ch.Publish("x1", "k1", false, false, amqp091.Publishing{Body: []byte("m")}); err != nil {
			t.Fatal(err)
		}
		select {
		case c := <-confirms:
			if c.Ack != tcase.ack {
				t.Fatalf("publish on %s to q1 (home n1): ack=%v, want %v", tcase.node.name, c.Ack, tcase.ack)
			}
		case <-time.After(opTimeout):
			t.Fatalf("no confirm on %s", tcase.node.name)
		}
	}
	tc.sameTopology(10 * time.Second)

	// Kill -9 the leader; declares on the two others go on.
	leader := n2.leader(5 * time.Second)
	victim := tc.nodes[leader]
	var survivors []*clusterChild
	for _, n := range tc.names {
		if n != leader {
			survivors = append(survivors, tc.nodes[n])
		}
	}
	victim.kill()
	killed := time.Now()
	elected := make(chan time.Duration, 1)
	go func() { // when a survivor first reports another leader (the API answers in parallel)
		for time.Since(killed) < 10*time.Second {
			var nodes []apiNode
			if survivors[1].api("/api/nodes", &nodes) == nil && len(nodes) > 0 && nodes[0].Leader != "" && nodes[0].Leader != leader {
				elected <- time.Since(killed)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		elected <- -1
	}()
	recovered := declareUntil(t, survivors[0], "after-kill-1", 10*time.Second)
	t.Logf("leader %s killed: new leader known on %s after %v; first declare-ok on %s after %v", leader,
		survivors[1].name, (<-elected).Round(time.Millisecond), survivors[0].name, recovered.Round(time.Millisecond))
	if recovered > 2*time.Second {
		t.Errorf("declares resumed %v after the leader was killed, target 2s", recovered)
	}
	declareUntil(t, survivors[1], "after-kill-2", 5*time.Second)
	if l := survivors[1].leader(5 * time.Second); l == leader {
		t.Fatalf("the killed node %s is still the leader", leader)
	}
	ch := channelOn(t, survivors[0])
	if err := ch.QueueBind("after-kill-2", "k2", "x1", false, nil); err != nil {
		t.Fatalf("bind after the kill: %v", err)
	}

	// The killed node restarts from its data directory and catches up.
	tc.spawn(leader).wait()
	chv := channelOn(t, tc.nodes[leader])
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := chv.QueueDeclarePassive("after-kill-2", true, false, false, false, nil); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("restarted %s does not know after-kill-2: %v", leader, err)
		}
		chv = channelOn(t, tc.nodes[leader])
		time.Sleep(100 * time.Millisecond)
	}
	tc.sameTopology(10 * time.Second)

	// A follower restarted with an EMPTY data directory rejoins and gets the whole topology.
	var empty string
	for _, n := range tc.names {
		if n != survivors[0].leader(5*time.Second) {
			empty = n
			break
		}
	}
	tc.nodes[empty].stop()
	if err := os.RemoveAll(tc.dirs[empty]); err != nil {
		t.Fatal(err)
	}
	tc.spawn(empty).wait()
	declareUntil(t, tc.nodes[empty], "after-empty", 10*time.Second)
	top := tc.sameTopology(15 * time.Second)
	for _, want := range []string{"queue / q1 ", "queue / after-kill-1 ", "queue / after-kill-2 ", "queue / after-empty ",
		"exchange / x1 direct", "binding / x1->q1(queue) k1", "binding / x1->after-kill-2(queue) k2"} {
		if !strings.Contains(top, want) {
			t.Errorf("final topology lacks %q:\n%s", want, top)
		}
	}

	// /api/nodes on every node: three running voters, one leader, digests agree.
	for _, n := range tc.names {
		var nodes []apiNode
		deadline := time.Now().Add(15 * time.Second)
		for {
			nodes = nil
			err := tc.nodes[n].api("/api/nodes", &nodes)
			ok := err == nil && len(nodes) == 3
			leaders := 0
			for _, m := range nodes {
				ok = ok && m.Running && m.Voter && m.DigestMatch && m.ConfigDigest != ""
				if m.IsLeader {
					leaders++
				}
			}
			if ok && leaders == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("/api/nodes on %s: %+v (err %v), want 3 running voters with matching digests and one leader", n, nodes, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// warren ctl cluster_status against a node shows the members and the Raft leader.
	var out, errOut strings.Builder
	if code := ctl.Run([]string{"-url=http://" + tc.nodes["n2"].mgmt, "cluster_status"}, &out, &errOut); code != 0 {
		t.Fatalf("ctl cluster_status: %d %s", code, errOut.String())
	}
	for _, want := range []string{"Cluster name", "test", "Running nodes", "n1, n2, n3", "Raft leader", "config_digest_match"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("cluster_status lacks %q:\n%s", want, out.String())
		}
	}
	// A reload of n3 with another user: its digest changes and n1 reports n3 as differing.
	f, err := os.OpenFile(tc.cfgs["n3"], os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString("users:\n  - {name: guest, password: guest, tags: [administrator]}\n  - {name: extra, password: extra}\n")
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := tc.nodes["n3"].cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		var nodes []apiNode
		err := tc.nodes["n1"].api("/api/nodes/n3", new(apiNode))
		if err == nil {
			err = tc.nodes["n1"].api("/api/nodes", &nodes)
		}
		if err == nil && len(nodes) == 3 && nodes[2].Name == "n3" && !nodes[2].DigestMatch && nodes[0].DigestMatch {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n1 does not report n3's changed configuration: %+v (err %v)", nodes, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(tc.nodes["n1"].log.String(), "differ from this node's configuration") {
		t.Errorf("n1 logged no warning about n3's configuration")
	}

	measureDeclares(t, tc)
	for _, n := range tc.names {
		tc.nodes[n].stop()
	}
}

// measureDeclares logs the queue.declare rate of the running cluster: one channel declaring in
// sequence (each declare waits for its Raft commit), then 4 channels on each of the 3 nodes.
func measureDeclares(t *testing.T, tc *testCluster) {
	t.Helper()
	const seq = 200
	ch := channelOn(t, tc.nodes["n1"])
	start := time.Now()
	for i := 0; i < seq; i++ {
		if _, err := ch.QueueDeclare(fmt.Sprintf("rate-seq-%d", i), true, false, false, false, nil); err != nil {
			t.Fatalf("declare %d: %v", i, err)
		}
	}
	one := time.Since(start)
	const per = 50
	errs := make(chan error, 12)
	start = time.Now()
	for _, n := range tc.names {
		for c := 0; c < 4; c++ {
			ch := channelOn(t, tc.nodes[n])
			go func() {
				for i := 0; i < per; i++ {
					if _, err := ch.QueueDeclare(fmt.Sprintf("rate-par-%s-%d-%d", n, c, i), true, false, false, false, nil); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
		}
	}
	for i := 0; i < 12; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("parallel declare: %v", err)
		}
	}
	all := time.Since(start)
	t.Logf("declare rate, 3 nodes: 1 channel in sequence %.0f/s (%v each); 12 channels on 3 nodes %.0f/s",
		seq/one.Seconds(), (one / seq).Round(10*time.Microsecond), 12*per/all.Seconds())
}

// TestClusterJoinAndDeadNode: a fourth node joins a running 3-node cluster (the running nodes
// reload their lists, the new node starts with cluster.join) and gets the topology; a node
// killed with SIGKILL and silent for cluster.node_timeout is taken for dead: its exclusive and
// non-durable queues go, its durable queue answers RabbitMQ's 404; restarted, it serves its
// durable queue with the confirmed message; a joiner wiped of its data directory rejoins.
func TestClusterJoinAndDeadNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts four broker processes")
	}
	tc := newTestCluster(t, "n1", "n2", "n3", "n4")
	tc.env = []string{envPrefix + "CLUSTER_NODE_TIMEOUT=3s"}
	tc.members = []string{"n1", "n2", "n3"}
	tc.writeConfigs()
	tc.start("n1", "n2", "n3")
	n1, n3 := tc.nodes["n1"], tc.nodes["n3"]
	n1.leader(15 * time.Second)
	declareUntil(t, n1, "q-before-join", 15*time.Second)

	// n4 joins: the running nodes first, then n4 as a joiner.
	tc.members = tc.names
	tc.writeConfigs()
	for _, n := range []string{"n1", "n2", "n3"} {
		if err := tc.nodes[n].cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	n4 := tc.spawn("n4", envPrefix+"CLUSTER_JOIN=true").wait()
	passiveUntil(t, n4, "q-before-join", 15*time.Second)
	declareUntil(t, n4, "q-on-n4", 10*time.Second)
	tc.sameTopology(10 * time.Second)
	deadline := time.Now().Add(15 * time.Second)
	for {
		var nodes []apiNode
		err := n1.api("/api/nodes", &nodes)
		voters := 0
		for _, m := range nodes {
			if m.Voter {
				voters++
			}
		}
		if err == nil && voters == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n4 not a voter: %+v %v", nodes, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// On n3: a durable queue with a confirmed persistent message, a transient queue, an
	// exclusive queue of a connection that stays open until n3 dies.
	ch3 := channelOn(t, n3)
	for _, q := range []struct {
		name               string
		durable, exclusive bool
	}{{"d3", true, false}, {"t3", false, false}, {"e3", false, true}} {
		if _, err := ch3.QueueDeclare(q.name, q.durable, false, q.exclusive, false, nil); err != nil {
			t.Fatalf("declare %s on n3: %v", q.name, err)
		}
	}
	if err := ch3.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch3.NotifyPublish(make(chan amqp091.Confirmation, 1))
	if err := ch3.Publish("", "d3", false, false, amqp091.Publishing{DeliveryMode: amqp091.Persistent, Body: []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	if c := <-confirms; !c.Ack {
		t.Fatal("publish to d3 on its home n3 nacked")
	}
	tc.sameTopology(10 * time.Second)

	n3.kill()
	killed := time.Now()
	deadline = time.Now().Add(20 * time.Second)
	for {
		qs, err := n1.queueNames()
		if err == nil && !qs["t3"] && !qs["e3"] && qs["d3"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n1 still lists n3's transient or exclusive queues %v after n3 died (%v)", qs, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("n3 killed: its exclusive and transient queues gone after %v (node_timeout 3s)", time.Since(killed).Round(time.Millisecond))
	_, err := channelOn(t, n1).QueueDeclare("d3", true, false, false, false, nil)
	if want := "home node 'n3' of durable queue 'd3' in vhost '/' is down or inaccessible"; amqpCode(err) != amqp091.NotFound || !strings.Contains(err.Error(), want) {
		t.Fatalf("declare of d3 (home n3 dead) on n1: %v, want 404 %q", err, want)
	}

	// n3 comes back with its durable queue and message.
	n3 = tc.spawn("n3").wait()
	msg, ok, err := channelOn(t, n3).Get("d3", true)
	if err != nil || !ok || string(msg.Body) != "kept" {
		t.Fatalf("basic.get d3 on the restarted n3: %q %v %v", msg.Body, ok, err)
	}
	declareUntil(t, n1, "d3", 10*time.Second)

	// n4, wiped, rejoins as a joiner and gets the whole topology.
	n4.stop()
	if err := os.RemoveAll(tc.dirs["n4"]); err != nil {
		t.Fatal(err)
	}
	n4 = tc.spawn("n4", envPrefix+"CLUSTER_JOIN=true").wait()
	passiveUntil(t, n4, "d3", 15*time.Second)
	top := tc.sameTopology(15 * time.Second)
	for _, want := range []string{"queue / q-before-join ", "queue / q-on-n4 ", "queue / d3 "} {
		if !strings.Contains(top, want) {
			t.Errorf("final topology lacks %q:\n%s", want, top)
		}
	}
	for _, n := range tc.running() {
		tc.nodes[n].stop()
	}
}

// declareOnce declares durable queue name on a new connection to c and returns the error (nil:
// declare-ok) and how long the answer took; a declare still unanswered after within counts as
// hanging (an error).
func declareOnce(c *clusterChild, name string, within time.Duration) (error, time.Duration) {
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		conn, err := amqp091.DialConfig("amqp://guest:guest@"+c.addr+"/", amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err == nil {
			_, err = ch.QueueDeclare(name, true, false, false, false, nil)
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err, time.Since(start)
	case <-time.After(within):
		return fmt.Errorf("declare of %s on %s unanswered after %v", name, c.name, within), time.Since(start)
	}
}

// TestClusterPartition: every inter-node connection goes through a faultproxy; one node is
// cut off from the two others (the Raft leader, then a follower). The majority keeps serving
// declares; the cut-off node answers its declares with an error in bounded time (541, never a
// hang); after healing, every node has the same topology and every declare that returned
// declare-ok is in it.
func TestClusterPartition(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three broker processes")
	}
	tc := newTestCluster(t, "n1", "n2", "n3")
	proxies := map[[2]string]*faultproxy.Proxy{}
	for _, from := range tc.names {
		for _, to := range tc.names {
			if from != to {
				p, err := faultproxy.New(tc.addrs[to])
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = p.Close() })
				proxies[[2]string{from, to}] = p
			}
		}
	}
	tc.peer = func(from, to string) string { return proxies[[2]string{from, to}].Addr() }
	tc.writeConfigs()
	tc.start(tc.names...)
	n1 := tc.nodes["n1"]
	n1.leader(15 * time.Second)
	declareUntil(t, n1, "before-partition", 15*time.Second)
	var acked []string // every queue that got declare-ok
	acked = append(acked, "before-partition")

	isolate := func(node string, cut bool) {
		for k, p := range proxies {
			if k[0] == node || k[1] == node {
				if cut {
					p.Partition()
				} else {
					p.Heal()
				}
			}
		}
	}
	for round, which := range []string{"leader", "follower"} {
		leader := n1.leader(10 * time.Second)
		victim := leader
		if which == "follower" {
			for _, n := range tc.names {
				if n != leader {
					victim = n
					break
				}
			}
		}
		isolate(victim, true)
		cut := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		majorityOK := map[string]int{}
		var minorityErrs []string
		for _, n := range tc.names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; time.Since(cut) < 12*time.Second; i++ {
					name := fmt.Sprintf("r%d-%s-%d", round, n, i)
					err, took := declareOnce(tc.nodes[n], name, 15*time.Second)
					mu.Lock()
					if err == nil {
						acked = append(acked, name)
						if n != victim {
							majorityOK[n]++
						}
					} else if n == victim {
						minorityErrs = append(minorityErrs, fmt.Sprintf("%s after %v: %v", name, took.Round(time.Millisecond), err))
					}
					mu.Unlock()
					time.Sleep(50 * time.Millisecond) // a steady trickle, not a benchmark
				}
			}()
		}
		wg.Wait()
		isolate(victim, false)
		t.Logf("%s %s cut off for 12s: declare-ok on the majority %v; on %s: %d errors (%v)", which, victim, majorityOK, victim, len(minorityErrs), minorityErrs)
		for _, n := range tc.names {
			if n != victim && majorityOK[n] == 0 {
				t.Errorf("majority node %s served no declare while %s was cut off", n, victim)
			}
		}
		if len(minorityErrs) == 0 {
			t.Errorf("the cut-off %s answered no declare with an error", victim)
		}
		for _, e := range minorityErrs {
			if strings.Contains(e, "unanswered") {
				t.Errorf("a declare on the cut-off node hung: %s", e)
			} else if !strings.Contains(e, "541") && !strings.Contains(e, "cluster metadata unavailable") {
				t.Errorf("a declare on the cut-off node failed otherwise than with 541: %s", e)
			}
		}
		top := tc.sameTopology(20 * time.Second)
		for _, q := range acked {
			if !strings.Contains(top, "queue / "+q+" ") {
				t.Errorf("after healing, queue %s (declare-ok) is missing", q)
			}
		}
	}
	for _, n := range tc.names {
		tc.nodes[n].stop()
	}
}

// TestSingleNodeHasNoCluster: without a cluster section nothing of the cluster starts (no Raft
// log in the data directory, no cluster log line) and the broker serves as before.
func TestSingleNodeHasNoCluster(t *testing.T) {
	dir := t.TempDir()
	b := startBroker(t, dir)
	ch := b.channel()
	if _, err := ch.QueueDeclare("single", true, false, false, false, nil); err != nil {
		t.Fatalf("declare: %v", err)
	}
	b.stop()
	if _, err := os.Stat(filepath.Join(dir, "raft")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a single node created %s (err %v)", filepath.Join(dir, "raft"), err)
	}
	if strings.Contains(b.log.String(), "cluster") {
		t.Errorf("a single node logged about a cluster:\n%s", b.log.String())
	}
}
