package cluster

import (
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"
)

// NodeStatus is what a node tells the others about itself: sent with the cluster's heartbeats
// (the transport is cluster/multiraft's), shown by `warren ctl cluster_status` and /api/nodes.
type NodeStatus struct {
	Node string `json:"node"`
	// ConfigDigest is config.Settings.AccessDigest: the node's users, vhosts, permissions and
	// policies, which every node reads from its own file.
	ConfigDigest string `json:"config_digest"`
	// AppliedIndex is the last metadata log entry the node applied.
	AppliedIndex uint64 `json:"applied_index"`
	// At is when the node sent the status.
	At time.Time `json:"at"`
	// AMQPAddr is the node's AMQP listener, where the other nodes' data links connect.
	AMQPAddr string `json:"amqp_addr,omitempty"`
}

// ConfigCheck compares the configuration digest of every node with this node's and reports the
// nodes whose access control or policies differ: one warning when a node starts to differ, one
// info line when it agrees again, and Mismatched for the API and metrics.
type ConfigCheck struct {
	log   *slog.Logger
	local string // this node's name

	mu     sync.Mutex
	digest string            // this node's digest
	peers  map[string]string // the last digest each other node reported

	// arrived is when (this node's clock) each other node's last live status was applied:
	// Running is judged by it, not by the status's At, which is the sender's clock.
	arrived map[string]time.Time
	// started is when the check was made; live is set once this node applied a status of its
	// own sent since then. Statuses are applied in log order, so those applied before it are
	// a replay of the log (a restart) and say nothing about whether their node still runs.
	started time.Time
	live    bool
}

// NewConfigCheck returns the check of node local, whose configuration digest is digest.
func NewConfigCheck(local, digest string, log *slog.Logger) *ConfigCheck {
	if log == nil {
		log = slog.Default()
	}
	return &ConfigCheck{log: log, local: local, digest: digest, peers: map[string]string{},
		arrived: map[string]time.Time{}, started: time.Now()}
}

// SetLocal records this node's new digest after a reload, and reports the nodes that now
// differ (or agree again).
func (c *ConfigCheck) SetLocal(digest string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if digest == c.digest {
		return
	}
	old := c.digest
	c.digest = digest
	for _, node := range slices.Sorted(maps.Keys(c.peers)) {
		c.report(node, c.peers[node] != old, c.peers[node])
	}
}

// Observe records a status received from another node.
func (c *ConfigCheck) Observe(st NodeStatus) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.Node == c.local {
		if !st.At.Before(c.started) {
			c.live = true
		}
		return
	}
	if c.live {
		c.arrived[st.Node] = now
	}
	prev, known := c.peers[st.Node]
	c.peers[st.Node] = st.ConfigDigest
	if known && prev == st.ConfigDigest {
		return
	}
	c.report(st.Node, known && prev != c.digest, st.ConfigDigest)
}

// Forget drops a node that left the cluster.
func (c *ConfigCheck) Forget(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.peers, node)
	delete(c.arrived, node)
}

// Arrived is when (this node's clock) node's last status was applied here; false when none
// arrived since this node caught up with the status log.
func (c *ConfigCheck) Arrived(node string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.arrived[node]
	return t, ok
}

// report logs node's state when it changed; wasDiffering is what was last reported. Call with
// c.mu held.
func (c *ConfigCheck) report(node string, wasDiffering bool, digest string) {
	differs := digest != c.digest
	switch {
	case differs && !wasDiffering:
		c.log.Warn("cluster: a node's users, vhosts, permissions or policies differ from this node's configuration",
			"node", node, "its_digest", short(digest), "this_node", c.local, "this_digest", short(c.digest))
	case !differs && wasDiffering:
		c.log.Info("cluster: a node's configuration agrees with this node's again", "node", node)
	}
}

// Mismatched returns the nodes whose last reported digest differs from this node's, sorted.
func (c *ConfigCheck) Mismatched() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for node, d := range c.peers {
		if d != c.digest {
			out = append(out, node)
		}
	}
	slices.Sort(out)
	return out
}

func short(digest string) string {
	if len(digest) > 12 {
		return digest[:12]
	}
	return digest
}
