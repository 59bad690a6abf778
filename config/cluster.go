package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"
)

// ClusterSettings are the cluster section: which cluster this node belongs to, its name, the
// inter-node listener, the members and the shared secret. The zero value (no cluster section)
// is a single-node broker, exactly as without clustering.
type ClusterSettings struct {
	// Name is cluster.name: nodes refuse peers that give another cluster name.
	Name string
	// NodeName is cluster.node_name, this node's name; it must be one of Nodes.
	NodeName string
	// Listen is cluster.listen, the inter-node (Raft and forwarding) listener, host:port.
	Listen string
	// Nodes is cluster.nodes, every member including this node.
	Nodes []ClusterNode
	// Secret is cluster.secret, the shared secret peers authenticate with (RabbitMQ's Erlang
	// cookie). Its String and LogValue never show it.
	Secret Secret
	// TLS is cluster.tls: mutual TLS between nodes when CertFile is set.
	TLS ClusterTLS
	// Join is cluster.join: a node with no Raft state waits for the cluster's leader to add it
	// and send it the log, instead of bootstrapping a cluster from Nodes. Set it on a node added
	// to a running cluster (and on a node restarted with an empty data directory after the
	// membership changed). It is read at start only.
	Join bool
	// NodeTimeout is cluster.node_timeout: how long a member may stay silent before the leader
	// takes it for dead (RabbitMQ's net_ticktime, 60 s): its connections' exclusive queues and
	// its non-durable queues are deleted, its durable queues answer 404 until it returns.
	// 0 means DefaultNodeTimeout.
	NodeTimeout time.Duration
	// QueueLeaderLocator is cluster.queue_leader_locator: where a queue declared without an
	// x-queue-leader-locator argument is homed, RabbitMQ's queue_leader_locator: "client-local"
	// (the default, the node the client is connected to) or "balanced" (the node with the fewest
	// queues). It is read at start only.
	QueueLeaderLocator string
}

// Queue leader locators accepted by cluster.queue_leader_locator (RabbitMQ's names).
const (
	LocatorClientLocal = "client-local"
	LocatorBalanced    = "balanced"
)

// DefaultNodeTimeout is cluster.node_timeout's default, RabbitMQ's net_ticktime.
const DefaultNodeTimeout = 60 * time.Second

// ClusterNode is one entry of cluster.nodes.
type ClusterNode struct {
	Name    string `json:"name"`
	Address string `json:"address"`
}

// ClusterTLS is cluster.tls: this node's certificate and key, and the CA bundle that signs every
// node's certificate (both sides verify the other: mutual TLS).
type ClusterTLS struct {
	CertFile, KeyFile, CAFile string
}

// Secret is a value that must never reach a log, an error or an API answer.
type Secret string

// String hides the secret (fmt's %v and %s).
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "********"
}

// GoString hides the secret from %#v as well.
func (s Secret) GoString() string { return `config.Secret("********")` }

// LogValue hides the secret from log/slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText hides the secret from encoders (JSON, YAML) that dump settings.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Reveal is the secret itself, for the code that authenticates peers.
func (s Secret) Reveal() string { return string(s) }

// Enabled reports whether the node is part of a cluster (a cluster section is present).
func (c *ClusterSettings) Enabled() bool {
	return c.Name != "" || c.NodeName != "" || c.Listen != "" || len(c.Nodes) > 0 || c.Secret != "" || c.TLS != (ClusterTLS{})
}

// LogValue describes the cluster settings for a log line, without the secret.
func (c ClusterSettings) LogValue() slog.Value {
	if !c.Enabled() {
		return slog.StringValue("off")
	}
	names := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		names[i] = n.Name + "=" + n.Address
	}
	return slog.GroupValue(slog.String("name", c.Name), slog.String("node", c.NodeName),
		slog.String("listen", c.Listen), slog.Any("nodes", names), slog.Bool("tls", c.TLS.CertFile != ""))
}

// minSecretLen is the shortest secret accepted: a guessable secret lets anyone join the cluster
// and so read every message.
const minSecretLen = 16

// clusterKeys are the cluster section's keys (appended to keys in init).
var clusterKeys = []key{
	{name: "cluster.name", set: func(s *Settings, raw any) (err error) { s.Cluster.Name, err = toString(raw); return }},
	{name: "cluster.node_name", set: func(s *Settings, raw any) (err error) { s.Cluster.NodeName, err = toString(raw); return }},
	addrKey("cluster.listen", true, func(s *Settings) *string { return &s.Cluster.Listen }),
	{name: "cluster.nodes", set: func(s *Settings, raw any) error {
		list, err := sectionList[ClusterNode](raw, "a YAML list of nodes ({name, address})", nil)
		if err != nil {
			return err
		}
		seenName := map[string]int{}
		seenAddr := map[string]int{}
		for i, n := range list {
			field := func(f string, err error) error { return &fieldError{fmt.Sprintf("[%d].%s", i, f), err} }
			if n.Name == "" {
				return field("name", errors.New("must not be empty"))
			}
			if _, _, err := net.SplitHostPort(n.Address); err != nil {
				return field("address", fmt.Errorf("%q is not host:port", n.Address))
			}
			if j, dup := seenName[n.Name]; dup {
				return field("name", fmt.Errorf("node %q is listed twice (first at [%d])", n.Name, j))
			}
			if j, dup := seenAddr[n.Address]; dup {
				return field("address", fmt.Errorf("address %s is listed twice (first at [%d])", n.Address, j))
			}
			seenName[n.Name], seenAddr[n.Address] = i, i
		}
		if len(list) == 0 {
			list = nil // "nodes: []" is the default: no cluster
		}
		s.Cluster.Nodes = list
		return nil
	}},
	{name: "cluster.secret", set: func(s *Settings, raw any) error {
		v, err := toString(raw)
		// The error never quotes the value: it is the secret, or close to it.
		if err != nil {
			return errors.New("expected a string")
		}
		s.Cluster.Secret = Secret(v)
		return nil
	}},
	{name: "cluster.tls.cert_file", set: func(s *Settings, raw any) (err error) { s.Cluster.TLS.CertFile, err = toString(raw); return }},
	{name: "cluster.tls.key_file", set: func(s *Settings, raw any) (err error) { s.Cluster.TLS.KeyFile, err = toString(raw); return }},
	{name: "cluster.join", set: func(s *Settings, raw any) (err error) { s.Cluster.Join, err = toBool(raw); return }},
	{name: "cluster.node_timeout", set: func(s *Settings, raw any) error {
		v, err := toString(raw)
		if err != nil {
			return err
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration (examples: 60s, 2m)", v)
		}
		if d < time.Second {
			return fmt.Errorf("%s is under 1s: a node would be taken for dead between two of its status reports", d)
		}
		s.Cluster.NodeTimeout = d
		return nil
	}},
	{name: "cluster.queue_leader_locator", set: func(s *Settings, raw any) error {
		v, err := toString(raw)
		if err != nil {
			return err
		}
		switch v {
		case LocatorClientLocal, LocatorBalanced:
		case "":
			v = LocatorClientLocal
		default:
			return fmt.Errorf("%q is not a queue leader locator (client-local or balanced)", v)
		}
		s.Cluster.QueueLeaderLocator = v
		return nil
	}},
	{name: "cluster.tls.ca_file", set: func(s *Settings, raw any) (err error) { s.Cluster.TLS.CAFile, err = toString(raw); return }},
}

func init() { keys = append(keys, clusterKeys...) }

// clusterError is a cross-field error of the cluster section, naming the key it is about so
// that Load can add the file and line.
type clusterError struct {
	key string
	err error
}

func (e *clusterError) Error() string { return e.key + ": " + e.err.Error() }

// validate checks the cluster section as a whole; a node without one passes unchanged.
func (c *ClusterSettings) validate() *clusterError {
	if !c.Enabled() {
		return nil
	}
	fail := func(key, format string, args ...any) *clusterError {
		return &clusterError{key, fmt.Errorf(format, args...)}
	}
	switch {
	case c.Name == "":
		return fail("cluster.name", "must be set in a cluster (the cluster section is present)")
	case c.NodeName == "":
		return fail("cluster.node_name", "must be set in a cluster (this node's name in cluster.nodes)")
	case c.Listen == "":
		return fail("cluster.listen", "must be set in a cluster (the inter-node listener, host:port)")
	case len(c.Nodes) == 0:
		return fail("cluster.nodes", "must list the cluster's nodes ({name, address}), this one included")
	case len(c.Secret) < minSecretLen:
		return fail("cluster.secret", "must be at least %d characters (it is all that keeps strangers out of the cluster)", minSecretLen)
	}
	if !slices.ContainsFunc(c.Nodes, func(n ClusterNode) bool { return n.Name == c.NodeName }) {
		return fail("cluster.node_name", "%q is not in cluster.nodes", c.NodeName)
	}
	t := c.TLS
	if t != (ClusterTLS{}) && (t.CertFile == "" || t.KeyFile == "" || t.CAFile == "") {
		missing := "cluster.tls.cert_file"
		switch {
		case t.CertFile == "":
		case t.KeyFile == "":
			missing = "cluster.tls.key_file"
		default:
			missing = "cluster.tls.ca_file"
		}
		return fail(missing, "must be set: mutual TLS between nodes needs cert_file, key_file and ca_file")
	}
	return nil
}

// CheckClusterReload refuses a reload that changes what a running node cannot change in place:
// its cluster, its name, its listener, the secret and the TLS files, and joining or leaving
// clustering altogether (all need a restart). cluster.nodes may change: that is a membership
// change, applied by the cluster (a node is added to or removed from the Raft configuration);
// removing this node itself from the list is refused (stop it instead).
func CheckClusterReload(running, next *ClusterSettings) error {
	if running.Enabled() != next.Enabled() {
		return errors.New("config: turning clustering on or off needs a restart")
	}
	if !running.Enabled() {
		return nil
	}
	changed := ""
	switch {
	case running.Name != next.Name:
		changed = "cluster.name"
	case running.NodeName != next.NodeName:
		changed = "cluster.node_name"
	case running.Listen != next.Listen:
		changed = "cluster.listen"
	case running.Secret != next.Secret:
		changed = "cluster.secret"
	case running.TLS != next.TLS:
		changed = "cluster.tls"
	}
	if changed != "" {
		return fmt.Errorf("config: %s cannot change on a reload; restart the node", changed)
	}
	return nil
}

// ClusterStartOnlyKeys names the cluster keys that differ between running and next but are
// read only at start (a reload keeps the running values): the caller warns about them, since
// a reload that silently ignores an edit looks like one that applied it.
func ClusterStartOnlyKeys(running, next *ClusterSettings) []string {
	var keys []string
	if running.Join != next.Join {
		keys = append(keys, "cluster.join")
	}
	if running.NodeTimeout != next.NodeTimeout {
		keys = append(keys, "cluster.node_timeout")
	}
	if running.QueueLeaderLocator != next.QueueLeaderLocator {
		keys = append(keys, "cluster.queue_leader_locator")
	}
	return keys
}
