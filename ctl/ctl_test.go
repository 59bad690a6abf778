package ctl

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/mgmt"
)

// broker is a small mgmt.Broker behind the real management handler; methods ctl never reaches
// are left to the embedded nil interface (a call would panic and fail the test).
type broker struct {
	mgmt.Broker
	mu      sync.Mutex
	queues  []mgmt.QueueInfo
	closed  map[string]string
	cluster *mgmt.ClusterInfo // nil: a single node
}

func newBroker() *broker {
	return &broker{
		queues: []mgmt.QueueInfo{
			{VHost: "/", Name: "orders", Messages: 12, MessagesReady: 10, MessagesUnacked: 2, Consumers: 1, Durable: true,
				Stats: mgmt.Counters{Publish: 40}},
			{VHost: "/", Name: "a much longer queue name", Messages: 0},
			{VHost: "other", Name: "elsewhere", Messages: 3},
		},
		closed: map[string]string{},
	}
}

func (b *broker) Overview() mgmt.Overview {
	return mgmt.Overview{ClusterName: "warren@h", Node: "warren@h", Version: "0.9", StartedAt: time.Now().Add(-90 * time.Second),
		Listeners: []mgmt.Listener{{Protocol: "amqp", IP: "::", Port: 5672}}, Queues: 3, Connections: 1,
		MemUsed: 3 << 20, MemLimit: 1 << 30, DiskFree: 5 << 30, DiskFreeLimit: 50 << 20, MemAlarm: true, Cluster: b.cluster}
}
func (b *broker) VHosts() []mgmt.VHostInfo { return []mgmt.VHostInfo{{Name: "/"}, {Name: "other"}} }
func (b *broker) Queues(vhost string) []mgmt.QueueInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []mgmt.QueueInfo
	for _, q := range b.queues {
		if vhost == "" || q.VHost == vhost {
			out = append(out, q)
		}
	}
	return out
}
func (b *broker) Queue(vhost, name string) (mgmt.QueueInfo, bool) {
	for _, q := range b.Queues(vhost) {
		if q.Name == name {
			return q, true
		}
	}
	return mgmt.QueueInfo{}, false
}
func (b *broker) Exchanges(vhost string) []mgmt.ExchangeInfo {
	return []mgmt.ExchangeInfo{{VHost: "/", Name: "", Type: "direct", Durable: true}, {VHost: "/", Name: "amq.topic", Type: "topic", Durable: true}}
}
func (b *broker) Bindings(vhost string) []mgmt.BindingInfo {
	return []mgmt.BindingInfo{{VHost: "/", Source: "amq.topic", Destination: "orders", DestinationType: "queue", RoutingKey: "o.#"}}
}
func (b *broker) Connections() []mgmt.ConnectionInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.closed["10.0.0.1:5000 -> 10.0.0.2:5672"]; ok {
		return nil
	}
	return []mgmt.ConnectionInfo{{Name: "10.0.0.1:5000 -> 10.0.0.2:5672", User: "guest", VHost: "/", PeerHost: "10.0.0.1", PeerPort: 5000, State: "running"}}
}
func (b *broker) Channels() []mgmt.ChannelInfo {
	return []mgmt.ChannelInfo{{Connection: "10.0.0.1:5000 -> 10.0.0.2:5672", Number: 1, User: "guest", VHost: "/", Consumers: 1, Unacked: 2}}
}
func (b *broker) Consumers() []mgmt.ConsumerInfo {
	return []mgmt.ConsumerInfo{{VHost: "/", Queue: "orders", Tag: "c1", Connection: "10.0.0.1:5000 -> 10.0.0.2:5672", Channel: 1, AckRequired: true, Active: true, PrefetchCount: 5}}
}
func (b *broker) Users() []mgmt.UserInfo {
	return []mgmt.UserInfo{{Name: "guest", Tags: []string{"administrator"}}, {Name: "viewer", Tags: []string{"management"}}}
}
func (b *broker) Permissions() []mgmt.PermissionInfo {
	return []mgmt.PermissionInfo{{User: "guest", VHost: "/", Configure: ".*", Write: ".*", Read: ".*"}, {User: "viewer", VHost: "/", Read: ".*"}}
}
func (b *broker) Policies() []mgmt.PolicyInfo { return nil }
func (b *broker) Authenticate(user, pass string, _ netip.Addr) ([]string, bool) {
	switch {
	case user == "guest" && pass == "guest":
		return []string{"administrator"}, true
	case user == "viewer" && pass == "viewer":
		return []string{"management"}, true
	}
	return nil, false
}
func (b *broker) PurgeQueue(vhost, name string) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range b.queues {
		if b.queues[i].VHost == vhost && b.queues[i].Name == name {
			n := b.queues[i].MessagesReady
			b.queues[i].Messages -= n
			b.queues[i].MessagesReady = 0
			return int(n), nil
		}
	}
	return 0, mgmt.NotFound("")
}
func (b *broker) DeleteQueue(vhost, name string, ifUnused, ifEmpty bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := slices.IndexFunc(b.queues, func(q mgmt.QueueInfo) bool { return q.VHost == vhost && q.Name == name })
	if ifEmpty && b.queues[i].Messages > 0 {
		return mgmt.PreconditionFailed("queue '%s' in vhost '%s' not empty", name, vhost)
	}
	b.queues = slices.Delete(b.queues, i, i+1)
	return nil
}
func (b *broker) CloseConnection(name, reason string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed[name] = reason
	return nil
}

func (b *broker) closedReason(name string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed[name]
}

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCommands(t *testing.T) {
	b := newBroker()
	srv := httptest.NewServer(mgmt.NewHandler(b, mgmt.Options{}))
	defer srv.Close()
	u := "-url=" + srv.URL

	code, out, errs := run(t, u, "list_queues")
	if code != 0 {
		t.Fatalf("list_queues: %d %s", code, errs)
	}
	want := "name                      messages\n" +
		"a much longer queue name  0\n" +
		"orders                    12\n"
	if out != want {
		t.Errorf("list_queues table:\n%q\nwant\n%q", out, want)
	}

	code, out, _ = run(t, "list_queues", "name", "messages_ready", "message_stats.publish", u, "--formatter", "json")
	var rows []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &rows) != nil || len(rows) != 2 {
		t.Fatalf("list_queues json: %d %q", code, out)
	}
	if rows[1]["name"] != "orders" || rows[1]["messages_ready"] != float64(10) || rows[1]["message_stats.publish"] != float64(40) {
		t.Errorf("json row %v", rows[1])
	}

	code, out, _ = run(t, u, "list_queues", "--vhost", "other")
	if code != 0 || !strings.Contains(out, "elsewhere") || strings.Contains(out, "orders") {
		t.Errorf("--vhost other: %d %q", code, out)
	}

	for _, tc := range []struct {
		cmd  string
		want []string
	}{
		{"list_exchanges", []string{"name", "type", "amq.topic", "topic"}},
		{"list_bindings", []string{"source", "amq.topic", "orders", "queue", "o.#"}},
		{"list_connections", []string{"peer_host", "10.0.0.1:5000 -> 10.0.0.2:5672", "guest", "running"}},
		{"list_channels", []string{"consumer_count", "10.0.0.1:5000 -> 10.0.0.2:5672 (1)"}},
		{"list_consumers", []string{"consumer_tag", "orders", "c1", "true", "5"}},
		{"list_vhosts", []string{"name", "other"}},
		{"list_users", []string{"viewer", "[management]"}},
		{"list_permissions", []string{"configure", "viewer", ".*"}},
		{"list_policies", []string{"pattern"}},
		{"status", []string{"Node", "warren@h", "Uptime", "1m30s", "Alarms", "memory", "amqp :::5672", "Total queues"}},
		{"cluster_status", []string{"Cluster name", "warren@h", "Running nodes"}},
	} {
		code, out, errs := run(t, u, tc.cmd)
		if code != 0 {
			t.Errorf("%s: %d %s", tc.cmd, code, errs)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s output lacks %q:\n%s", tc.cmd, w, out)
			}
		}
	}

	if code, out, errs := run(t, u, "purge_queue", "orders"); code != 0 || !strings.Contains(out, "Purged") {
		t.Errorf("purge_queue: %d %s %s", code, out, errs)
	}
	if q := b.Queues("/"); q[0].MessagesReady != 0 {
		t.Errorf("not purged: %+v", q[0])
	}
	if code, _, errs := run(t, u, "delete_queue", "orders", "--if-empty"); code != 1 || !strings.Contains(errs, "not empty") {
		t.Errorf("delete_queue --if-empty of a queue with unacked messages: %d %s", code, errs)
	}
	if code, _, errs := run(t, u, "delete_queue", "a much longer queue name"); code != 0 || len(b.Queues("/")) != 1 {
		t.Errorf("delete_queue: %d %s", code, errs)
	}
	if code, _, errs := run(t, u, "delete_queue", "nope"); code != 1 || !strings.Contains(errs, "not found") {
		t.Errorf("delete_queue of a missing queue: %d %s", code, errs)
	}
	if code, _, errs := run(t, u, "close_connection", "10.0.0.1:5000 -> 10.0.0.2:5672", "maintenance"); code != 0 || b.closedReason("10.0.0.1:5000 -> 10.0.0.2:5672") != "maintenance" {
		t.Errorf("close_connection: %d %s", code, errs)
	}

	file := filepath.Join(t.TempDir(), "defs.json")
	if code, _, errs := run(t, u, "export_definitions", file); code != 0 {
		t.Fatalf("export_definitions: %d %s", code, errs)
	}
	raw, err := os.ReadFile(file)
	var defs map[string]any
	if err != nil || json.Unmarshal(raw, &defs) != nil || defs["queues"] == nil || defs["users"] == nil {
		t.Errorf("definitions file: %v %s", err, raw)
	}
}

func TestErrors(t *testing.T) {
	srv := httptest.NewServer(mgmt.NewHandler(newBroker(), mgmt.Options{}))
	defer srv.Close()
	// A port nobody listens on: listen, note the port, close.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()

	for _, tc := range []struct {
		name string
		args []string
		code int
		has  string
	}{
		{"API off", []string{"-url", dead, "status"}, 69, "cannot reach the management API"},
		{"wrong password", []string{"-url", srv.URL, "-p", "bad", "list_queues"}, 77, `authentication failed for user "guest"`},
		{"no permission", []string{"-url", srv.URL, "-u", "viewer", "-p", "viewer", "export_definitions"}, 77, "not allowed"},
		{"unknown command", []string{"-url", srv.URL, "frobnicate"}, 64, "unknown command"},
		{"no command", []string{"-url", srv.URL}, 64, "no command"},
		{"unknown flag", []string{"--nope", "status"}, 64, "unknown flag"},
		{"bad formatter", []string{"--formatter", "xml", "status"}, 64, "table or json"},
		{"missing argument", []string{"-url", srv.URL, "purge_queue"}, 64, "exactly one queue"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := run(t, tc.args...)
			if code != tc.code || !strings.Contains(errs, tc.has) {
				t.Errorf("exit %d (want %d), stderr %q lacks %q", code, tc.code, errs, tc.has)
			}
		})
	}
}

func TestEnvironment(t *testing.T) {
	srv := httptest.NewServer(mgmt.NewHandler(newBroker(), mgmt.Options{}))
	defer srv.Close()
	t.Setenv(envURL, srv.URL)
	t.Setenv(envUser, "viewer")
	t.Setenv(envPassword, "viewer")
	code, out, errs := run(t, "list_queues")
	if code != 0 || !strings.Contains(out, "orders") {
		t.Errorf("env credentials: %d %s %s", code, out, errs)
	}
	t.Setenv(envURL, "")
	t.Setenv(envListen, "0.0.0.0:15999")
	if got := defaultURL(); got != "http://127.0.0.1:15999" {
		t.Errorf("URL from %s: %s", envListen, got)
	}
	if code, out, _ := run(t, "--help"); code != 0 || !strings.Contains(out, "list_queues") {
		t.Errorf("--help: %d", code)
	}
}

// TestClusterStatus: on a cluster node, /api/nodes lists every member with its Raft fields, and
// cluster_status and status show them (status with this node's resources, not the first
// member's).
func TestClusterStatus(t *testing.T) {
	b := newBroker()
	b.cluster = &mgmt.ClusterInfo{Leader: "n1", State: "StateFollower", Term: 4, CommitIndex: 57, AppliedIndex: 57, ConfigDigest: "abc",
		Members: []mgmt.ClusterMember{
			{Name: "n1", Address: "10.0.0.1:25672", Running: true, Voter: true, ConfigDigest: "abc", ConfigMatch: true, AppliedIndex: 57},
			{Name: "n2", Address: "10.0.0.2:25672", Running: false, Voter: true, ConfigDigest: "def", AppliedIndex: 40},
			{Name: "warren@h", Address: "10.0.0.3:25672", Running: true, Voter: true, ConfigDigest: "abc", ConfigMatch: true, AppliedIndex: 57},
		}}
	srv := httptest.NewServer(mgmt.NewHandler(b, mgmt.Options{}))
	defer srv.Close()
	u := "-url=" + srv.URL
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"cluster_status"}, []string{"Disk nodes", "n1, n2, warren@h", "Running nodes", "n1, warren@h", "Raft leader", "n1",
			"4 / 57", "applied_index", "n2        false    true   false   40", "10.0.0.3:25672"}},
		{[]string{"status"}, []string{"Memory used / limit", "3.0 MiB / 1.0 GiB"}},
	} {
		code, out, errs := run(t, append([]string{u}, tc.args...)...)
		if code != 0 {
			t.Fatalf("%v: %d %s", tc.args, code, errs)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v output lacks %q:\n%s", tc.args, w, out)
			}
		}
	}
	code, out, _ := run(t, u, "cluster_status", "--formatter", "json")
	var st struct {
		Nodes []map[string]any `json:"nodes"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Nodes) != 3 {
		t.Fatalf("cluster_status json: %d %q", code, out)
	}
	if n := st.Nodes[1]; n["name"] != "n2" || n["running"] != false || n["config_digest_match"] != false || n["raft_is_leader"] != false {
		t.Errorf("n2 in json: %v", n)
	}
	if n := st.Nodes[0]; n["raft_is_leader"] != true || n["cluster_address"] != "10.0.0.1:25672" {
		t.Errorf("n1 in json: %v", n)
	}
}
