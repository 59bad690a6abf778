package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"
)

const clusterSecret = "s3cret-cookie-0123456789"

const clusterFile = `
cluster:
  name: prod
  node_name: n2
  listen: 127.0.0.1:25672
  secret: ` + clusterSecret + `
  nodes:
    - {name: n1, address: 10.0.0.1:25672}
    - {name: n2, address: 10.0.0.2:25672}
    - {name: n3, address: 10.0.0.3:25672}
`

func TestClusterConfig(t *testing.T) {
	t.Chdir(t.TempDir())
	s, err := Load([]string{"-config", writeConfig(t, clusterFile)}, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := ClusterSettings{Name: "prod", NodeName: "n2", Listen: "127.0.0.1:25672", Secret: clusterSecret,
		Nodes: []ClusterNode{{"n1", "10.0.0.1:25672"}, {"n2", "10.0.0.2:25672"}, {"n3", "10.0.0.3:25672"}}, NodeTimeout: DefaultNodeTimeout,
		QueueLeaderLocator: LocatorClientLocal}
	if !reflect.DeepEqual(s.Cluster, want) {
		t.Errorf("got %+v\nwant %+v", s.Cluster, want)
	}
	// cluster.join and cluster.node_timeout, from the file and the environment.
	s, err = Load([]string{"-config", writeConfig(t, clusterFile+"  join: true\n  node_timeout: 90s\n")}, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Cluster.Join || s.Cluster.NodeTimeout != 90*time.Second {
		t.Errorf("join/node_timeout from the file: %v %v", s.Cluster.Join, s.Cluster.NodeTimeout)
	}
	s, err = Load([]string{"-config", writeConfig(t, clusterFile)}, envMap(map[string]string{"WARREN_CLUSTER_JOIN": "true", "WARREN_CLUSTER_NODE_TIMEOUT": "3s"}))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Cluster.Join || s.Cluster.NodeTimeout != 3*time.Second {
		t.Errorf("join/node_timeout from the environment: %v %v", s.Cluster.Join, s.Cluster.NodeTimeout)
	}
	// cluster.queue_leader_locator, from the file and the environment.
	for _, tt := range []struct{ file, env, want string }{
		{"  queue_leader_locator: balanced\n", "", LocatorBalanced},
		{"  queue_leader_locator: client-local\n", "", LocatorClientLocal},
		{"  queue_leader_locator: \"\"\n", "", LocatorClientLocal},
		{"", "balanced", LocatorBalanced},
		{"  queue_leader_locator: balanced\n", "client-local", LocatorClientLocal},
	} {
		env := map[string]string{}
		if tt.env != "" {
			env["WARREN_CLUSTER_QUEUE_LEADER_LOCATOR"] = tt.env
		}
		s, err = Load([]string{"-config", writeConfig(t, clusterFile+tt.file)}, envMap(env))
		if err != nil {
			t.Fatalf("%q %q: %v", tt.file, tt.env, err)
		}
		if s.Cluster.QueueLeaderLocator != tt.want {
			t.Errorf("file %q env %q: queue_leader_locator %q, want %q", tt.file, tt.env, s.Cluster.QueueLeaderLocator, tt.want)
		}
	}
	// Without a cluster section: a single node, nothing set.
	s, err = Load([]string{"-config", writeConfig(t, "log: {level: info}\n")}, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if s.Cluster.Enabled() {
		t.Errorf("cluster enabled without a cluster section: %+v", s.Cluster)
	}
	// From the environment.
	s, err = Load(nil, envMap(map[string]string{
		"WARREN_CLUSTER_NAME": "c", "WARREN_CLUSTER_NODE_NAME": "a", "WARREN_CLUSTER_LISTEN": "127.0.0.1:1",
		"WARREN_CLUSTER_SECRET": clusterSecret, "WARREN_CLUSTER_NODES": "[{name: a, address: 127.0.0.1:1}]",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if s.Cluster.NodeName != "a" || len(s.Cluster.Nodes) != 1 {
		t.Errorf("from the environment: %+v", s.Cluster)
	}
}

func TestClusterConfigErrors(t *testing.T) {
	t.Chdir(t.TempDir())
	base := func(edit func(string) string) string { return edit(clusterFile) }
	tests := []struct {
		name, file string
		want       []string
	}{
		{"no name", base(func(f string) string { return strings.Replace(f, "  name: prod\n", "", 1) }),
			[]string{"config: cluster.name: must be set", "line 2)"}},
		{"node not listed", base(func(f string) string { return strings.Replace(f, "node_name: n2", "node_name: n9", 1) }),
			[]string{`config: cluster.node_name: "n9" is not in cluster.nodes`, "line 4)"}},
		{"no listen", base(func(f string) string { return strings.Replace(f, "  listen: 127.0.0.1:25672\n", "", 1) }),
			[]string{"config: cluster.listen: must be set", "line 2)"}},
		{"bad listen", base(func(f string) string { return strings.Replace(f, "listen: 127.0.0.1:25672", "listen: nowhere", 1) }),
			[]string{`config: cluster.listen: "nowhere" is not host:port`, "line 5)"}},
		{"short secret", base(func(f string) string { return strings.Replace(f, clusterSecret, "short", 1) }),
			[]string{"config: cluster.secret: must be at least 16 characters", "line 6)"}},
		{"no nodes", base(func(f string) string { return f[:strings.Index(f, "  nodes:")] }),
			[]string{"config: cluster.nodes: must list", "line 2)"}},
		{"bad address", base(func(f string) string { return strings.Replace(f, "10.0.0.3:25672", "10.0.0.3", 1) }),
			[]string{`config: cluster.nodes: [2].address: "10.0.0.3" is not host:port`, "line 10)"}},
		{"duplicate node", base(func(f string) string { return strings.Replace(f, "name: n3", "name: n1", 1) }),
			[]string{`config: cluster.nodes: [2].name: node "n1" is listed twice (first at [0])`, "line 10)"}},
		{"duplicate address", base(func(f string) string { return strings.Replace(f, "10.0.0.3:", "10.0.0.1:", 1) }),
			[]string{"config: cluster.nodes: [2].address: address 10.0.0.1:25672 is listed twice", "line 10)"}},
		{"unknown node field", base(func(f string) string { return strings.Replace(f, "address: 10.0.0.3:25672", "addr: x", 1) }),
			[]string{`config: cluster.nodes: [2]: unknown key "addr"`, "line 10)"}},
		{"half tls", clusterFile + "  tls:\n    cert_file: /c.pem\n    key_file: /k.pem\n",
			[]string{"config: cluster.tls.ca_file: must be set: mutual TLS", "line 11)"}},
		{"unknown key", clusterFile + "  cookie: x\n", []string{`config: unknown key "cluster.cookie"`, "line 11)"}},
		{"bad node_timeout", clusterFile + "  node_timeout: soon\n",
			[]string{`config: cluster.node_timeout: "soon" is not a duration`, "line 11)"}},
		{"node_timeout too short", clusterFile + "  node_timeout: 100ms\n",
			[]string{"config: cluster.node_timeout: 100ms is under 1s", "line 11)"}},
		{"bad queue_leader_locator", clusterFile + "  queue_leader_locator: random\n",
			[]string{`config: cluster.queue_leader_locator: "random" is not a queue leader locator (client-local or balanced)`, "line 11)"}},
		{"queue_leader_locator not a string", clusterFile + "  queue_leader_locator: [a]\n",
			[]string{"config: cluster.queue_leader_locator:", "line 11)"}},
		{"join not a bool", clusterFile + "  join: maybe\n",
			[]string{"config: cluster.join:", "line 11)"}},
		{"secret not a string", strings.Replace(clusterFile, clusterSecret, "[a, b]", 1),
			[]string{"config: cluster.secret: expected a string", "line 6)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load([]string{"-config", writeConfig(t, tt.file)}, envMap(nil))
			if err == nil {
				t.Fatal("loaded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), clusterSecret) {
				t.Errorf("error shows the secret: %q", err)
			}
		})
	}
}

// TestClusterSecretNeverShown logs and prints the settings every usual way: the secret must
// not appear in any of them.
func TestClusterSecretNeverShown(t *testing.T) {
	t.Chdir(t.TempDir())
	s, err := Load([]string{"-config", writeConfig(t, clusterFile)}, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if s.Cluster.Secret.Reveal() != clusterSecret {
		t.Fatalf("Reveal = %q", s.Cluster.Secret.Reveal())
	}
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewTextHandler(&buf, nil), slog.NewJSONHandler(&buf, nil)} {
		log := slog.New(h)
		log.Info("cluster", "cluster", s.Cluster, "secret", s.Cluster.Secret, "settings", s)
		log.Info("cluster", "cluster", &s.Cluster)
	}
	fmt.Fprintf(&buf, "%v %+v %#v %s\n", s.Cluster, s.Cluster, s.Cluster, s.Cluster.Secret)
	j, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	buf.Write(j)
	if strings.Contains(buf.String(), clusterSecret) {
		t.Errorf("the secret was shown:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), "node=n2") && !strings.Contains(buf.String(), `"node":"n2"`) {
		t.Errorf("the cluster settings were not logged at all:\n%s", buf.String())
	}
}

func TestClusterReload(t *testing.T) {
	run := ClusterSettings{Name: "c", NodeName: "a", Listen: "127.0.0.1:1", Secret: clusterSecret,
		Nodes: []ClusterNode{{"a", "127.0.0.1:1"}, {"b", "127.0.0.1:2"}}}
	tests := []struct {
		name string
		edit func(*ClusterSettings)
		want string // "" accepted
	}{
		{"unchanged", func(*ClusterSettings) {}, ""},
		{"node added", func(c *ClusterSettings) { c.Nodes = append(c.Nodes, ClusterNode{"c", "127.0.0.1:3"}) }, ""},
		{"node removed", func(c *ClusterSettings) { c.Nodes = c.Nodes[:1] }, ""},
		{"renamed", func(c *ClusterSettings) { c.NodeName = "b" }, "cluster.node_name cannot change"},
		{"new secret", func(c *ClusterSettings) { c.Secret += "x" }, "cluster.secret cannot change"},
		{"other cluster", func(c *ClusterSettings) { c.Name = "d" }, "cluster.name cannot change"},
		{"new listener", func(c *ClusterSettings) { c.Listen = "127.0.0.1:9" }, "cluster.listen cannot change"},
		{"tls on", func(c *ClusterSettings) { c.TLS.CertFile = "/c" }, "cluster.tls cannot change"},
		{"clustering off", func(c *ClusterSettings) { *c = ClusterSettings{} }, "turning clustering on or off"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := run
			next.Nodes = append([]ClusterNode(nil), run.Nodes...)
			tt.edit(&next)
			err := CheckClusterReload(&run, &next)
			if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("got %v, want %q", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), clusterSecret) {
				t.Errorf("error shows the secret: %v", err)
			}
		})
	}
}
