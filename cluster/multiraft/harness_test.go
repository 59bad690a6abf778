package multiraft

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/cluster/faultproxy"
)

// logSM is a test state machine: the list of applied commands.
type logSM struct {
	mu       sync.Mutex
	cmds     []string
	restores int
}

func (s *logSM) Apply(index uint64, cmd []byte) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cmds = append(s.cmds, string(cmd))
	return len(s.cmds)
}

func (s *logSM) Snapshot() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.Marshal(s.cmds)
}

func (s *logSM) Restore(b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.restores++
	s.cmds = nil
	if len(b) == 0 {
		return nil
	}
	return json.Unmarshal(b, &s.cmds)
}

func (s *logSM) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.cmds)
}

func (s *logSM) restoreCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restores
}

func testLogger() *slog.Logger {
	if os.Getenv("MULTIRAFT_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testCluster is n hosts in one process. All inter-node traffic goes through one fault proxy
// per pair of nodes (the pair's single connection is dialled by the name that sorts first).
type testCluster struct {
	t       testing.TB
	names   []string
	dirs    map[string]string
	hosts   map[string]*Host
	proxies map[[2]string]*faultproxy.Proxy // key: sorted pair
	secret  []byte
	tweak   func(*Config)
}

func pairKey(a, b string) [2]string {
	if a > b {
		a, b = b, a
	}
	return [2]string{a, b}
}

func newTestCluster(t testing.TB, n int, tweak func(*Config)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, dirs: map[string]string{}, hosts: map[string]*Host{},
		proxies: map[[2]string]*faultproxy.Proxy{}, secret: []byte("s3cret-cookie"), tweak: tweak}
	for i := 1; i <= n; i++ {
		c.names = append(c.names, fmt.Sprintf("n%d", i))
	}
	for _, a := range c.names {
		c.dirs[a] = t.TempDir()
		for _, b := range c.names {
			if a < b {
				p, err := faultproxy.New("127.0.0.1:1") // target set when b starts
				if err != nil {
					t.Fatal(err)
				}
				c.proxies[pairKey(a, b)] = p
			}
		}
	}
	t.Cleanup(func() {
		for _, h := range c.hosts {
			_ = h.Close()
		}
		for _, p := range c.proxies {
			_ = p.Close()
		}
	})
	for _, name := range c.names {
		c.start(name)
	}
	return c
}

// peersFor is the peer map of node self: every other node through its pair's proxy.
func (c *testCluster) peersFor(self string, names []string) map[string]string {
	m := map[string]string{self: "127.0.0.1:0"}
	for _, o := range names {
		if o != self {
			m[o] = c.proxies[pairKey(self, o)].Addr()
		}
	}
	return m
}

func (c *testCluster) config(name string) Config {
	cfg := Config{
		NodeName: name, ListenAddr: "127.0.0.1:0", Peers: c.peersFor(name, c.names),
		Secret: c.secret, DataDir: c.dirs[name], Logger: testLogger().With("test", c.t.Name()),
		TickInterval: 20 * time.Millisecond, ElectionTicks: 10, HeartbeatTicks: 1, NoSync: true,
	}
	if c.tweak != nil {
		c.tweak(&cfg)
	}
	return cfg
}

func (c *testCluster) startWith(name string, cfg Config) *Host {
	c.t.Helper()
	h, err := NewHost(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	c.hosts[name] = h
	// Connections to name come from nodes that sort before it.
	for _, o := range c.names {
		if o < name {
			c.proxies[pairKey(o, name)].SetTarget(h.Addr())
		}
	}
	return h
}

func (c *testCluster) start(name string) *Host { return c.startWith(name, c.config(name)) }

func (c *testCluster) stop(name string) {
	c.t.Helper()
	if err := c.hosts[name].Close(); err != nil {
		c.t.Fatal(err)
	}
	delete(c.hosts, name)
}

// groups starts group id with a fresh logSM on every running host.
func (c *testCluster) groups(id uint64) (map[string]*Group, map[string]*logSM) {
	c.t.Helper()
	gs, sms := map[string]*Group{}, map[string]*logSM{}
	for name, h := range c.hosts {
		sm := &logSM{}
		g, err := h.Group(id, sm)
		if err != nil {
			c.t.Fatal(err)
		}
		gs[name], sms[name] = g, sm
	}
	return gs, sms
}

// waitLeader waits until every given group agrees on one leader among them, and returns it.
func waitLeader(t testing.TB, gs map[string]*Group, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var lead string
		agree := true
		for _, g := range gs {
			l, ok := g.Leader()
			if !ok || (lead != "" && l != lead) {
				agree = false
				break
			}
			lead = l
		}
		if _, member := gs[lead]; agree && member {
			return lead
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no agreed leader within %v", timeout)
	return ""
}

// waitApplied waits until every state machine holds want commands.
func waitApplied(t *testing.T, sms map[string]*logSM, want int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done := true
		var state []string
		for name, sm := range sms {
			n := len(sm.list())
			state = append(state, fmt.Sprintf("%s=%d", name, n))
			if n < want {
				done = false
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not all applied %d within %v: %s", want, timeout, strings.Join(state, " "))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sameLogs fails unless every state machine applied the same commands in the same order.
func sameLogs(t *testing.T, sms map[string]*logSM) []string {
	t.Helper()
	var ref []string
	var refName string
	for name, sm := range sms {
		l := sm.list()
		if ref == nil {
			ref, refName = l, name
			continue
		}
		if !slices.Equal(ref, l) {
			t.Fatalf("logs differ: %s has %d commands, %s has %d", refName, len(ref), name, len(l))
		}
	}
	return ref
}

func propose(t *testing.T, g *Group, cmd string) any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := g.Propose(ctx, []byte(cmd))
	if err != nil {
		t.Fatalf("propose %q: %v", cmd, err)
	}
	return res
}

// checkGoroutines fails if goroutines started by the test are still running shortly after
// everything was closed.
func checkGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("goroutines: %d after close, %d before\n%s", runtime.NumGoroutine(), before, buf[:n])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// newBenchCluster is a 3-host cluster at production timing with fsync.
func newBenchCluster(b *testing.B) *testCluster {
	return newTestCluster(b, 3, func(cfg *Config) {
		cfg.TickInterval = DefaultTickInterval
		cfg.ElectionTicks = DefaultElectionTicks
		cfg.NoSync = false
	})
}

func waitLeaderB(b *testing.B, gs map[string]*Group) string { return waitLeader(b, gs, 20*time.Second) }
