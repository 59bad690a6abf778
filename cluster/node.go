package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/cluster/multiraft"
)

// StatusInterval is how often a node proposes its NodeStatus. A node whose last status is older
// than three intervals is reported as not running.
const StatusInterval = 5 * time.Second

// DefaultNodeTimeout is NodeConfig.NodeTimeout's default: RabbitMQ's net_ticktime.
const DefaultNodeTimeout = 60 * time.Second

// DefaultCatchUpTimeout is NodeConfig.CatchUpTimeout's default: as long as a client's declare
// waits for the log.
const DefaultCatchUpTimeout = DefaultProposeTimeout

// NodeConfig is what a Node needs from the cluster section of config.yaml.
type NodeConfig struct {
	// Name is cluster.name. It is mixed into the secret, so that nodes of two clusters sharing a
	// secret still refuse each other.
	Name string
	// NodeName is cluster.node_name, Listen cluster.listen.
	NodeName, Listen string
	// Nodes is cluster.nodes: node name -> inter-node address, this node included.
	Nodes map[string]string
	// Secret is cluster.secret (never logged).
	Secret string
	// TLS is the mutual TLS of the inter-node connections (LoadTLS), nil for none.
	TLS *tls.Config
	// DataDir is the node's data directory; the Raft log goes in DataDir/raft.
	DataDir string
	// ConfigDigest is config.Settings.AccessDigest of the node's configuration.
	ConfigDigest string
	// Logger receives the cluster's diagnostics; nil means slog.Default().
	Logger *slog.Logger
	// QueueLeaderLocator is this node's default for declares without x-queue-leader-locator:
	// "client-local" (or "") or "balanced", RabbitMQ's queue_leader_locator (Replicator.SetLocator).
	QueueLeaderLocator string
	// Join starts a node added to a running cluster (cluster.join): with no Raft state it waits
	// for the leader's log instead of bootstrapping (multiraft.Config.Join).
	Join bool
	// NodeTimeout is cluster.node_timeout: a member silent for that long is taken for dead by
	// the leader (node_down); 0 means DefaultNodeTimeout. Status reports go out at least four
	// times per timeout.
	NodeTimeout time.Duration
	// CatchUpTimeout bounds how long StartNode waits for the metadata log to catch up before
	// the node serves clients; 0 means DefaultCatchUpTimeout.
	CatchUpTimeout time.Duration

	// Raft timing and durability, zero for multiraft's defaults (tests shorten them).
	TickInterval  time.Duration
	ElectionTicks int
	NoSync        bool
}

// Node is this process's membership of a cluster: the multiraft host, the metadata group
// applying the topology to the local broker, the status group and the configuration check.
type Node struct {
	cfg   NodeConfig
	log   *slog.Logger
	host  *multiraft.Host
	meta  *Metadata
	mg    *multiraft.Group
	sg    *multiraft.Group
	board *StatusBoard
	check *ConfigCheck
	// restart is this process's node_restarted command, proposed at start.
	restart Command
	// quorum watches the other nodes for the quorum queues' groups (quorum.go).
	quorum     *quorumWatch
	quorumDone chan struct{}
	// statusEvery is how often the node reports its status and the leader looks for dead
	// members: StatusInterval, or a quarter of the node timeout when that is shorter.
	statusEvery time.Duration
	// restartSent: the node_restarted command committed (StartNode's catch-up).
	restartSent bool
	// watch is the leader's view of when each member was last heard from, and watchDown
	// whether it was taken for dead at the last look (statusLoop only).
	watch     map[string]time.Time
	watchDown map[string]bool
	// link is the data link to the other nodes (link_node.go), on broker.
	link   *Link
	broker *broker.Broker

	mu     sync.Mutex
	digest string
	nodes  map[string]string
	kick   chan struct{} // asks the status loop to report now
	stop   chan struct{}
	done   chan struct{}
	closed bool
}

// StartNode starts the node's Raft host, opens the metadata group on b (restoring its
// snapshot and replaying its log into b) and the status group, and sets b's replicator: from
// now on b's declares, deletes and binds go through the cluster. Call it before b serves
// clients and before the configuration's topology is declared (server.Config.Attach).
func StartNode(cfg NodeConfig, b *broker.Broker) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Secret == "" {
		return nil, errors.New("cluster: cluster.secret is required")
	}
	log := cfg.Logger
	h, err := multiraft.NewHost(multiraft.Config{NodeName: cfg.NodeName, ListenAddr: cfg.Listen, Peers: maps.Clone(cfg.Nodes),
		Secret: []byte(cfg.Name + "\x00" + cfg.Secret), TLS: cfg.TLS, DataDir: cfg.DataDir, Logger: log,
		TickInterval: cfg.TickInterval, ElectionTicks: cfg.ElectionTicks, NoSync: cfg.NoSync, Join: cfg.Join})
	if err != nil {
		return nil, fmt.Errorf("cluster: starting node %s: %w", cfg.NodeName, err)
	}
	n := &Node{cfg: cfg, log: log, host: h, digest: cfg.ConfigDigest, nodes: maps.Clone(cfg.Nodes),
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		quorum: newQuorumWatch(), quorumDone: make(chan struct{})}
	n.check = NewConfigCheck(cfg.NodeName, cfg.ConfigDigest, log)
	n.meta = NewMetadata(b, log)
	// Queues of nodes the log takes for dead answer RabbitMQ's 404 on this node's clients.
	b.SetNodeLiveness(n.meta)
	// The replicator is set before the group opens: replaying the log applies queue declares,
	// which ask the broker's replicator which node is local. Nothing proposes through it before
	// StartNode returns (no client is served yet), when n.mg is set.
	r := NewReplicator(cfg.NodeName, nodeLog{n})
	r.SetLocator(cfg.QueueLeaderLocator)
	b.SetReplicator(r)
	n.restart = RestartCommand(cfg.NodeName, b.Incarnation())
	if n.cfg.NodeTimeout <= 0 {
		n.cfg.NodeTimeout = DefaultNodeTimeout
	}
	if n.cfg.CatchUpTimeout <= 0 {
		n.cfg.CatchUpTimeout = DefaultCatchUpTimeout
	}
	n.statusEvery = min(StatusInterval, n.cfg.NodeTimeout/4)
	// The broker's part of each command runs off the Raft loop (see Metadata.Apply).
	n.meta.StartWorker()
	if n.mg, err = h.Group(multiraft.MetadataGroup, n.meta); err != nil {
		_ = h.Close()
		n.meta.StopWorker()
		return nil, fmt.Errorf("cluster: opening the metadata group: %w", err)
	}
	n.board = NewStatusBoard(n.check)
	if n.sg, err = h.Group(StatusGroup, n.board); err != nil {
		_ = h.Close()
		n.meta.StopWorker()
		return nil, fmt.Errorf("cluster: opening the status group: %w", err)
	}
	n.catchUp()
	if n.restartSent {
		// The groups of the queues declared before this node started are open now; any
		// group it opens later is new, never one whose log it lost with a wiped data
		// directory. After a catch-up that timed out, statusLoop says so once the restart
		// command applied: until then a late metadata snapshot may still open old groups.
		h.NewGroupsFromNow()
	}
	n.startLink(b)
	// Only now, with the topology caught up and the forwarder installed, may a message that
	// came due while this node was down be routed (to queues of other nodes too).
	b.StartDelayed()
	go n.statusLoop()
	go func() {
		defer close(n.quorumDone)
		n.quorumWatchLoop()
	}()
	log.Info("cluster node started", "cluster", cfg.Name, "node", cfg.NodeName, "listen", h.Addr(), "nodes", len(cfg.Nodes), "join", cfg.Join)
	return n, nil
}

// catchUp waits, at most CatchUpTimeout, until this node's broker has the topology the cluster
// had when it started, so that its first client never sees an older one (a declare-ok on
// another node, then 404 here). First the node's own log up to the commit index it had stored
// (no network needed), then a round trip through the leader: its node_restarted command
// (which it must propose anyway) commits after everything committed before it, and applies
// here after all of it. Without a majority the node serves what it has after the timeout, and
// says so.
func (n *Node) catchUp() {
	start := time.Now()
	deadline := start.Add(n.cfg.CatchUpTimeout)
	// One status report now, alongside: the leader may still hold this node's last status
	// from before a crash, and the regular reports start only after the catch-up, which can
	// take longer than what is left of the node timeout.
	statusCtx, cancelStatus := context.WithDeadline(context.Background(), deadline)
	statusDone := make(chan struct{})
	go func() {
		defer close(statusDone)
		if err := n.proposeStatus(statusCtx); err != nil {
			n.log.Debug("cluster: first status not reported during the catch-up", "err", err)
		}
	}()
	defer func() {
		<-statusDone // bounded by the deadline
		cancelStatus()
	}()
	stored := n.mg.Status().Commit
	for n.mg.Status().Applied < stored && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	// The broker's part of those entries runs on the apply worker: it too, within the deadline
	// (a delete of a queue of millions of stored messages can take long).
	if err := n.meta.Drain(ctx); err != nil {
		n.log.Warn("cluster: the broker had not applied the node's own log when the catch-up timed out", "err", err)
	}
	out, err := n.mg.Propose(ctx, n.restart.Encode())
	if a, ok := out.(*Applying); ok && err == nil {
		_, err = a.Wait(ctx)
	}
	st := n.mg.Status()
	if err != nil {
		n.log.Warn("cluster: serving clients before the metadata caught up with the cluster (no majority reachable?); the topology may be behind until it does",
			"waited", time.Since(start).Round(time.Millisecond), "stored_commit_index", stored, "applied_index", st.Applied, "err", err)
		return
	}
	n.restartSent = true
	n.log.Info("cluster: metadata caught up", "took", time.Since(start).Round(time.Millisecond), "stored_commit_index", stored, "applied_index", st.Applied, "commit_index", st.Commit)
}

// LoadTLS builds the mutual TLS configuration of the inter-node connections from cluster.tls:
// this node's certificate, and the CA that signs every node's certificate, checked both ways.
func LoadTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("cluster.tls: %w", err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("cluster.tls.ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("cluster.tls.ca_file %s: no PEM certificate", caFile)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}, nil
}

// nodeLog is the metadata group as the replicator's Log, read once the group is open.
type nodeLog struct{ n *Node }

// Propose implements Log.
func (l nodeLog) Propose(ctx context.Context, cmd []byte) (any, error) {
	return l.n.mg.Propose(ctx, cmd)
}

// Addr is the inter-node listener's address.
func (n *Node) Addr() string { return n.host.Addr() }

// statusLoop proposes this node's status now, when kicked (a reload) and every statusEvery
// (the leader then also looks for dead members, watchMembers), the member list (set_nodes)
// once at start and after every change of it, and node_restarted once at start unless the
// catch-up committed it (the exclusive queues of the previous process's connections go).
func (n *Node) statusLoop() {
	defer close(n.done)
	t := time.NewTicker(n.statusEvery)
	defer t.Stop()
	membersSent, restartSent := false, n.restartSent
	var restarting *Applying // node_restarted committed, the broker not yet through it
	for {
		ctx, cancel := context.WithTimeout(context.Background(), n.statusEvery)
		if !restartSent {
			out, err := n.mg.Propose(ctx, n.restart.Encode())
			restartSent = err == nil
			if a, ok := out.(*Applying); ok && err == nil {
				restarting = a
			} else if err == nil {
				n.host.NewGroupsFromNow()
			}
		}
		if restarting != nil {
			// Everything the log decided before this node's restart is applied here once
			// its node_restarted is: groups opened from now on are new (StartNode). Checked,
			// not waited for: a wait would spend ctx, and the status this loop reports
			// must not stop while the broker catches up (the leader would take the node
			// for dead).
			select {
			case <-restarting.done:
				n.host.NewGroupsFromNow()
				restarting = nil
			default:
			}
		}
		n.watchMembers(ctx)
		if !membersSent {
			membersSent = n.proposeMembers(ctx) == nil
		}
		if err := n.proposeStatus(ctx); err != nil && !n.isClosed() {
			n.log.Debug("cluster: status not reported yet", "err", err)
		}
		cancel()
		select {
		case <-n.stop:
			return
		case <-n.kick:
			membersSent = false
		case <-t.C:
		}
	}
}

// watchMembers (leader only) proposes node_down for a member not heard from (no status
// arrived, by this node's clock) for NodeTimeout, and node_up for a member taken for dead whose
// statuses came back. A node that just became leader gives every live member a full timeout
// from then, but not a member already taken for dead: only a status arriving brings that one
// back (else every election would bring a dead node up, and one timeout later down again). A
// member that comes back otherwise (node_restarted, from the restarted node itself) gets a
// full timeout from when this leader sees it back: its last status may be from before it died.
// Only the leader decides, so one view of the clock decides, and the leader has a majority
// behind it (CheckQuorum): a node cut off from the majority never declares the others dead.
func (n *Node) watchMembers(ctx context.Context) {
	if n.mg.Status().State != "StateLeader" {
		n.watch, n.watchDown = nil, nil
		return
	}
	now := time.Now()
	if n.watch == nil {
		n.watch, n.watchDown = map[string]time.Time{}, map[string]bool{}
	}
	n.mu.Lock()
	nodes := slices.Sorted(maps.Keys(n.nodes))
	n.mu.Unlock()
	for _, name := range nodes {
		if name == n.cfg.NodeName {
			continue
		}
		down := n.meta.IsDown(name)
		seen, ok := n.watch[name]
		switch {
		case !ok && down:
			seen = time.Time{} // only a status that arrives counts
		case !ok, n.watchDown[name] && !down:
			seen = now
		}
		if at, ok := n.check.Arrived(name); ok && at.After(seen) {
			seen = at
		}
		n.watch[name] = seen
		n.watchDown[name] = down
		silent := now.Sub(seen)
		var c Command
		switch {
		case !down && silent > n.cfg.NodeTimeout:
			c = Command{Op: OpNodeDown, Node: name}
		case down && silent < 2*n.statusEvery:
			c = Command{Op: OpNodeUp, Node: name}
		default:
			continue
		}
		if _, err := n.mg.Propose(ctx, c.Encode()); err != nil {
			n.log.Warn("cluster: could not record a member's state", "node", name, "op", c.Op, "err", err)
			continue
		}
		n.watchDown[name] = c.Op == OpNodeDown
		if c.Op == OpNodeDown {
			n.log.Warn("cluster: member taken for dead: its exclusive and non-durable queues are deleted, its durable queues are unavailable until it returns",
				"node", name, "silent", silent.Round(time.Millisecond), "node_timeout", n.cfg.NodeTimeout)
		} else {
			n.log.Info("cluster: member back", "node", name)
		}
	}
}

func (n *Node) isClosed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closed
}

func (n *Node) proposeStatus(ctx context.Context) error {
	n.mu.Lock()
	st := NodeStatus{Node: n.cfg.NodeName, ConfigDigest: n.digest, AppliedIndex: n.mg.Status().Applied, At: time.Now().UTC(),
		AMQPAddr: n.localAMQPAddr()}
	n.mu.Unlock()
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	_, err = n.sg.Propose(ctx, b)
	return err
}

// proposeMembers tells the metadata the members a balanced queue may be homed on. Every node
// proposes it (at start, after a reload): the command is idempotent.
func (n *Node) proposeMembers(ctx context.Context) error {
	n.mu.Lock()
	c := Command{Op: OpSetNodes, Nodes: slices.Sorted(maps.Keys(n.nodes))}
	n.mu.Unlock()
	_, err := n.mg.Propose(ctx, c.Encode())
	return err
}

// Reload applies a reload: the new cluster.nodes (a membership change: the transport and every
// group this node leads move to the new set) and the new configuration digest. A node no longer
// listed is told to the metadata (node_gone: its connections' exclusive queues go) once.
func (n *Node) Reload(nodes map[string]string, digest string) error {
	if err := n.host.SetPeers(maps.Clone(nodes)); err != nil {
		return fmt.Errorf("cluster: reload of cluster.nodes: %w", err)
	}
	n.check.SetLocal(digest)
	n.mu.Lock()
	var gone []string
	for name := range n.nodes {
		if _, ok := nodes[name]; !ok {
			gone = append(gone, name)
		}
	}
	n.nodes, n.digest = maps.Clone(nodes), digest
	n.mu.Unlock()
	for _, name := range gone {
		n.check.Forget(name)
		n.board.Forget(name)
		go func() {
			c := Command{Op: OpNodeGone, Node: name}
			ctx, cancel := context.WithTimeout(context.Background(), DefaultProposeTimeout)
			defer cancel()
			if _, err := n.mg.Propose(ctx, c.Encode()); err != nil {
				n.log.Warn("cluster: could not drop a removed node's exclusive queues", "node", name, "err", err)
			}
		}()
	}
	select {
	case n.kick <- struct{}{}:
	default:
	}
	return nil
}

// Close stops the status reports and the Raft host. Close the AMQP server first: a client's
// declare in flight still needs the log.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	close(n.stop)
	n.link.Close()
	err := n.host.Close()
	<-n.done
	<-n.quorumDone
	n.meta.StopWorker()
	return err
}

// MemberStatus is one member as this node sees it (warren ctl cluster_status, /api/nodes).
type MemberStatus struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	// Running: this node, or a node whose last status arrived recently (3 x StatusInterval,
	// by this node's clock).
	Running bool `json:"running"`
	// Voter: the node is in the metadata group's Raft configuration.
	Voter bool `json:"voter"`
	// ConfigDigest and AppliedIndex are from the node's last status ("" / 0 before one came).
	ConfigDigest string `json:"config_digest,omitempty"`
	AppliedIndex uint64 `json:"applied_index"`
	// ConfigMatch: its digest equals this node's.
	ConfigMatch bool `json:"config_match"`
	// LastSeen is when the node sent its last status (by its own clock).
	LastSeen time.Time `json:"last_seen,omitzero"`
}

// Status is the cluster as this node sees it.
type Status struct {
	Cluster string `json:"cluster_name"`
	Node    string `json:"node"`
	// Leader is the metadata group's leader ("" while none is known); State this node's Raft
	// state in it.
	Leader       string         `json:"raft_leader"`
	State        string         `json:"raft_state"`
	Term         uint64         `json:"raft_term"`
	CommitIndex  uint64         `json:"raft_commit_index"`
	AppliedIndex uint64         `json:"raft_applied_index"`
	ConfigDigest string         `json:"config_digest"`
	Mismatched   []string       `json:"config_mismatched_nodes"`
	Members      []MemberStatus `json:"members"`
}

// Status reports the metadata group's Raft state and every configured node's last status.
func (n *Node) Status() Status {
	gs := n.mg.Status()
	n.mu.Lock()
	digest := n.digest
	nodes := maps.Clone(n.nodes)
	n.mu.Unlock()
	st := Status{Cluster: n.cfg.Name, Node: n.cfg.NodeName, Leader: gs.Leader, State: gs.State, Term: gs.Term,
		CommitIndex: gs.Commit, AppliedIndex: gs.Applied, ConfigDigest: digest, Mismatched: members(n.check.Mismatched(), nodes)}
	seen := n.board.Nodes()
	now := time.Now()
	for _, name := range slices.Sorted(maps.Keys(nodes)) {
		m := MemberStatus{Name: name, Address: nodes[name], Voter: slices.Contains(gs.Members, name)}
		if s, ok := seen[name]; ok {
			m.ConfigDigest, m.AppliedIndex, m.LastSeen = s.ConfigDigest, s.AppliedIndex, s.At
		}
		if at, ok := n.check.Arrived(name); ok {
			m.Running = now.Sub(at) < 3*n.statusEvery
		}
		if name == n.cfg.NodeName {
			m.Running, m.ConfigDigest, m.AppliedIndex = true, digest, gs.Applied
		}
		m.ConfigMatch = m.ConfigDigest == digest
		st.Members = append(st.Members, m)
	}
	return st
}

// members returns the names that are configured nodes (never nil): a removed node's statuses
// stay in the status log and come back on a restart.
func members(names []string, nodes map[string]string) []string {
	out := []string{}
	for _, name := range names {
		if _, ok := nodes[name]; ok {
			out = append(out, name)
		}
	}
	return out
}
