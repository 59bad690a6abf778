//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/warrenmq/warren/cluster/faultproxy"
)

// secret is the chaos cluster's cluster.secret (loopback only, a throwaway cluster).
const secret = "chaos-cluster-secret-0123456789"

// node is one Warren process of the chaos cluster. Its ports stay the same across restarts,
// so clients reconnect to the same address.
type node struct {
	name                       string
	dir, dataDir, cfg, logPath string
	amqp, mgmt, cluster        string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// fleet is the cluster: its nodes, and a faultproxy for each ordered pair of nodes that every
// inter-node connection goes through (node from dials proxies[{from, to}] to reach to).
type fleet struct {
	bin         string
	nodeTimeout time.Duration
	nodes       []*node
	proxies     map[[2]string]*faultproxy.Proxy
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func newFleet(dir, bin string, names []string, nodeTimeout time.Duration) (*fleet, error) {
	f := &fleet{bin: bin, nodeTimeout: nodeTimeout, proxies: map[[2]string]*faultproxy.Proxy{}}
	for _, name := range names {
		n := &node{name: name, dir: filepath.Join(dir, name)}
		n.dataDir, n.cfg, n.logPath = filepath.Join(n.dir, "data"), filepath.Join(n.dir, "warren.yaml"), filepath.Join(n.dir, "warren.log")
		if err := os.MkdirAll(n.dir, 0o755); err != nil {
			return nil, err
		}
		for _, p := range []*string{&n.amqp, &n.mgmt, &n.cluster} {
			a, err := freeAddr()
			if err != nil {
				return nil, err
			}
			*p = a
		}
		f.nodes = append(f.nodes, n)
	}
	for _, from := range f.nodes {
		for _, to := range f.nodes {
			if from != to {
				p, err := faultproxy.New(to.cluster)
				if err != nil {
					f.close()
					return nil, err
				}
				f.proxies[[2]string{from.name, to.name}] = p
			}
		}
	}
	return f, nil
}

func (f *fleet) node(name string) *node {
	for _, n := range f.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// writeConfig writes n's configuration: its peers through the proxies, join for a node that
// restarts with an empty data directory.
func (f *fleet) writeConfig(n *node, join bool) error {
	var list strings.Builder
	for _, m := range f.nodes {
		addr := m.cluster
		if m != n {
			addr = f.proxies[[2]string{n.name, m.name}].Addr()
		}
		fmt.Fprintf(&list, "    - {name: %s, address: %q}\n", m.name, addr)
	}
	cfg := fmt.Sprintf(`# written by conformance/chaos
amqp: {listen: %q}
management: {listen: %q}
prometheus: {listen: ""}
storage: {dir: %q}
log: {level: info}
cluster:
  name: chaos
  node_name: %s
  listen: %q
  secret: %q
  join: %v
  node_timeout: %s
  nodes:
%s`, n.amqp, n.mgmt, n.dataDir, n.name, n.cluster, secret, join, f.nodeTimeout, list.String())
	return os.WriteFile(n.cfg, []byte(cfg), 0o600)
}

// start runs n (the previous process must be gone) and returns once its AMQP port answers.
func (f *fleet) start(ctx context.Context, n *node, join bool) error {
	if err := f.writeConfig(n, join); err != nil {
		return err
	}
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "\n==== chaos: start %s (join=%v) at %s ====\n", n.name, join, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(f.bin, "-config", n.cfg)
	cmd.Dir = n.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WARREN_") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	// Killed with the chaos tool even when the tool itself is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", n.name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
	}()
	n.mu.Lock()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if c, err := net.DialTimeout("tcp", n.amqp, time.Second); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited during start-up:\n%s", n.name, tail(n.logPath, 20))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not serving AMQP within 60 s:\n%s", n.name, tail(n.logPath, 20))
}

// kill sends SIGKILL to n and waits for it to die.
func (n *node) kill() {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// stop sends SIGTERM and waits (SIGKILL after 20 s).
func (n *node) stop() {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		n.kill()
	}
}

func (n *node) running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.exited == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// isolate cuts node name off from every other node (cut) or heals it.
func (f *fleet) isolate(name string, cut bool) {
	for k, p := range f.proxies {
		if k[0] == name || k[1] == name {
			if cut {
				p.Partition()
			} else {
				p.Heal()
			}
		}
	}
}

func (f *fleet) close() {
	for _, n := range f.nodes {
		n.kill()
	}
	for _, p := range f.proxies {
		_ = p.Close()
	}
}

// api GETs path from n's management API into v.
func (n *node) api(path string, v any) error {
	req, _ := http.NewRequest("GET", "http://"+n.mgmt+path, nil)
	req.SetBasicAuth("guest", "guest")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s on %s: %s", path, n.name, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// member is the part of an /api/nodes entry the tool reads.
type member struct {
	Name    string `json:"name"`
	Leader  string `json:"raft_leader"`
	Commit  uint64 `json:"raft_commit_index"`
	Applied uint64 `json:"raft_applied_index"`
}

// self is n's own entry of its /api/nodes.
func (n *node) self() (member, error) {
	var ms []member
	if err := n.api("/api/nodes", &ms); err != nil {
		return member{}, err
	}
	for _, m := range ms {
		if m.Name == n.name {
			return m, nil
		}
	}
	return member{}, fmt.Errorf("%s: not in its own /api/nodes", n.name)
}

// leader is the metadata leader as the running nodes report it ("" while none agree).
func (f *fleet) leader() string {
	for _, n := range f.nodes {
		if !n.running() {
			continue
		}
		if m, err := n.self(); err == nil && m.Leader != "" {
			return m.Leader
		}
	}
	return ""
}

// settle waits until every node runs, all report the same leader, and each has applied the
// leader's commit index of the moment the wait began: the cluster has recovered from a fault.
func (f *fleet) settle(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	var target uint64
	var last error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		last = f.settled(&target)
		if last == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	if last == nil {
		last = ctx.Err()
	}
	return fmt.Errorf("not recovered within %v: %w", within, last)
}

func (f *fleet) settled(target *uint64) error {
	leaders := map[string]bool{}
	selfs := map[string]member{}
	for _, n := range f.nodes {
		if !n.running() {
			return fmt.Errorf("%s is not running", n.name)
		}
		m, err := n.self()
		if err != nil {
			return err
		}
		leaders[m.Leader] = true
		selfs[n.name] = m
	}
	if len(leaders) != 1 || leaders[""] {
		return fmt.Errorf("nodes disagree on the leader: %v", mapsKeys(leaders))
	}
	for l := range leaders {
		if *target == 0 {
			*target = selfs[l].Commit
		}
	}
	for name, m := range selfs {
		if m.Applied < *target {
			return fmt.Errorf("%s applied %d of %d", name, m.Applied, *target)
		}
	}
	return nil
}

func mapsKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// topology is n's exchanges, queues and bindings as sorted lines, and its queue names.
func (n *node) topology() (string, map[string]bool, error) {
	var xs, qs, bs []map[string]any
	for _, l := range []struct {
		path string
		v    *[]map[string]any
	}{{"/api/exchanges", &xs}, {"/api/queues", &qs}, {"/api/bindings", &bs}} {
		if err := n.api(l.path, l.v); err != nil {
			return "", nil, err
		}
	}
	names := map[string]bool{}
	var lines []string
	for _, x := range xs {
		lines = append(lines, fmt.Sprintf("exchange %v %v %v", x["vhost"], x["name"], x["type"]))
	}
	for _, q := range qs {
		names[fmt.Sprint(q["name"])] = true
		lines = append(lines, fmt.Sprintf("queue %v %v durable=%v args=%v", q["vhost"], q["name"], q["durable"], q["arguments"]))
	}
	for _, b := range bs {
		lines = append(lines, fmt.Sprintf("binding %v %v->%v(%v) %v", b["vhost"], b["source"], b["destination"], b["destination_type"], b["routing_key"]))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n"), names, nil
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
