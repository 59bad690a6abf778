package multiraft

import (
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/warrenmq/warren/persistence"
)

// MetadataGroup is the group of the cluster's replicated metadata.
const MetadataGroup uint64 = 1

// Defaults of Config.
const (
	DefaultTickInterval   = 100 * time.Millisecond
	DefaultElectionTicks  = 8
	DefaultHeartbeatTicks = 1
	DefaultSnapshotEvery  = 10000
	DefaultSnapshotBytes  = 16 << 20
)

// ErrClosed is returned by calls on a closed Host or its groups.
var ErrClosed = errors.New("multiraft: host closed")

// ErrSnapshotLater is what a StateMachine's Snapshot returns when it cannot snapshot now
// without waiting (work of its own still in flight): the group tries again on a later round,
// without logging an error, and keeps its log until then.
var ErrSnapshotLater = errors.New("multiraft: snapshot later")

// StateMachine is the replicated state of one group (cluster metadata now, a quorum queue
// later). Its methods are called from the host's Ready loop, one at a time.
type StateMachine interface {
	// Apply applies a committed command. It is called with committed entries in log order,
	// on every member; the result goes to the proposer (Propose's return value).
	Apply(index uint64, cmd []byte) any
	// Snapshot returns the state as of the last applied index (for log compaction), or
	// ErrSnapshotLater to be asked again after a later round of applies.
	Snapshot() ([]byte, error)
	// Restore replaces the state (a member catching up, or a restart).
	Restore(snapshot []byte) error
}

// Config configures a Host.
type Config struct {
	// NodeName is this node's name; it must be a key of Peers.
	NodeName string
	// ListenAddr is the inter-node listener ("host:port"; port 0 picks one, see Host.Addr).
	ListenAddr string
	// Peers maps every member's name to its inter-node address, this node included.
	Peers map[string]string
	// Secret authenticates nodes to each other (HMAC challenge at connect). Required; never logged.
	Secret []byte
	// TLS, when set, wraps inter-node connections in TLS; it must serve both as server and
	// client configuration (certificate, ClientCAs with RequireAndVerifyClientCert, RootCAs)
	// for mutual TLS.
	TLS *tls.Config
	// DataDir holds the Raft log of every group of this node.
	DataDir string
	// Logger receives diagnostics; nil means slog.Default().
	Logger *slog.Logger
	// TickInterval is Raft's logical clock (default 100ms). ElectionTicks (default 8) and
	// HeartbeatTicks (default 1) count in ticks: a leader is suspected after 8 to 16 ticks
	// (raft randomizes), which keeps failover under 2 s at the default tick.
	TickInterval                  time.Duration
	ElectionTicks, HeartbeatTicks int
	// SnapshotEvery is the number of applied entries after which a group snapshots its state
	// machine and compacts its log (default 10000); SnapshotBytes the size of the commands
	// applied (default 16 MiB), whichever comes first. The log is compacted up to the
	// previous snapshot: the entries since it are kept for followers that are slightly
	// behind, so a group's log holds at most two such intervals whatever its history.
	// GroupOptions override both per group.
	SnapshotEvery uint64
	SnapshotBytes uint64
	// Join says this node joins an existing cluster: groups with no local state wait for the
	// leader to send them the log (or a snapshot) instead of bootstrapping with Peers. Set it
	// for a node added to a running cluster, or restarted with an empty data directory after
	// the cluster's membership has changed since it was formed.
	Join bool
	// NoSync skips fsync of the Raft log (tests and benchmarks only: unsafe on power loss).
	NoSync bool
}

// NodeID is the Raft ID of a node name: the first 8 bytes (big-endian) of
// SHA-256("warren-node:" + name), with 0 (Raft's "none") mapped to 1. Every node computes
// the same ID from the same name, so IDs never need to be agreed on or stored; NewHost and
// SetPeers refuse a set of names with colliding IDs.
func NodeID(name string) uint64 {
	sum := sha256.Sum256([]byte("warren-node:" + name))
	id := binary.BigEndian.Uint64(sum[:8])
	if id == 0 {
		id = 1
	}
	return id
}

// Host runs every Raft group of one node over one transport, one log store and one loop.
type Host struct {
	cfg  Config
	id   uint64
	log  *slog.Logger
	rlog *persistence.RaftLog
	tr   *transport
	// incarnation tells this process's proposals from those of an earlier run of this node,
	// whose entries may still be replayed.
	incarnation uint64

	mu     sync.Mutex
	groups map[uint64]*Group
	peers  map[string]string
	names  map[uint64]string // raft ID -> node name
	dirty  map[uint64]*Group
	closed bool
	// deleted holds the groups with a tombstone: deleted on this node, their keys being
	// dropped until the channel is closed.
	deleted map[uint64]chan struct{}
	bg      sync.WaitGroup // drops of deleted groups (Close waits for them)

	detachCh chan detachReq  // DeleteGroup -> loop
	snapDone chan snapResult // snapshots encoded off the loop -> loop (snapasync.go)

	lastLive map[uint64]peerLiveness // peers' liveness at the last tick (loop goroutine)

	saves atomic.Uint64 // Raft log writes (each one sync), for Stats

	wake      chan struct{}
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error

	// dead is closed when the loop stopped serving on its own (the log could not be
	// written); the host still waits for Close.
	dead chan struct{}

	// lostState: this host joined (Config.Join) with an empty Raft log, so the groups it
	// opens with no local state are ones whose log and votes it lost (a wiped data
	// directory), until NewGroupsFromNow (lostlog.go); kept on disk across restarts
	// (lostHostMarker).
	lostState atomic.Bool
}

// NewHost opens the data directory, starts the listener and the loop.
func NewHost(cfg Config) (*Host, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("multiraft: NodeName is required")
	}
	if len(cfg.Secret) == 0 {
		return nil, errors.New("multiraft: a cluster secret is required")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("multiraft: DataDir is required")
	}
	names, err := checkPeers(cfg.NodeName, cfg.Peers)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TickInterval <= 0 {
		cfg.TickInterval = DefaultTickInterval
	}
	if cfg.ElectionTicks <= 0 {
		cfg.ElectionTicks = DefaultElectionTicks
	}
	if cfg.HeartbeatTicks <= 0 {
		cfg.HeartbeatTicks = DefaultHeartbeatTicks
	}
	if cfg.HeartbeatTicks >= cfg.ElectionTicks {
		return nil, fmt.Errorf("multiraft: HeartbeatTicks (%d) must be less than ElectionTicks (%d)", cfg.HeartbeatTicks, cfg.ElectionTicks)
	}
	if cfg.SnapshotEvery == 0 {
		cfg.SnapshotEvery = DefaultSnapshotEvery
	}
	if cfg.SnapshotBytes == 0 {
		cfg.SnapshotBytes = DefaultSnapshotBytes
	}
	log := cfg.Logger.With("node", cfg.NodeName)
	dir := filepath.Join(cfg.DataDir, "raft")
	// An empty or missing log directory: a new node, or one whose data directory was wiped.
	entries, _ := os.ReadDir(dir)
	fresh := len(entries) == 0
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("multiraft: %w", err)
	}
	// The host's lost state goes on disk before the log is created (lostlog.go): a crash in
	// between leaves the log directory empty, and the next start fresh again.
	lostHost := &Host{cfg: cfg, log: log}
	if fresh && cfg.Join {
		if err := lostHost.markLost(lostHostMarker); err != nil {
			return nil, err
		}
	}
	lostState := lostHost.lostMarked(lostHostMarker)
	rlog, err := persistence.OpenRaftLog(dir, persistence.RaftLogOptions{Logger: log, NoSync: cfg.NoSync})
	if err != nil {
		return nil, fmt.Errorf("multiraft: %w", err)
	}
	var inc [8]byte
	_, _ = rand.Read(inc[:])
	h := &Host{
		cfg: cfg, id: NodeID(cfg.NodeName), log: log, rlog: rlog,
		incarnation: binary.BigEndian.Uint64(inc[:]),
		groups:      make(map[uint64]*Group), peers: maps(cfg.Peers), names: names,
		dirty: make(map[uint64]*Group), deleted: make(map[uint64]chan struct{}), detachCh: make(chan detachReq),
		snapDone: make(chan snapResult),
		wake:     make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}), dead: make(chan struct{}),
	}
	// Deletions a crash interrupted are finished in the background; a group created again
	// meanwhile waits for its drop (group0).
	tombs, err := rlog.Tombstones()
	if err != nil {
		_ = rlog.Close()
		return nil, fmt.Errorf("multiraft: %w", err)
	}
	if len(tombs) > 0 {
		// One goroutine drops them one after the other: a node with many deletions pending
		// does not start as many concurrent drops.
		chs := make([]chan struct{}, len(tombs))
		for i, id := range tombs {
			chs[i] = make(chan struct{})
			h.deleted[id] = chs[i]
		}
		h.bg.Add(1)
		go func() {
			defer h.bg.Done()
			for i, id := range tombs {
				h.finishDrop(id, chs[i], rlog.DropGroup(id))
			}
		}()
	}
	h.tr, err = newTransport(cfg.NodeName, cfg.ListenAddr, cfg.Secret, cfg.TLS, log, h, cfg.TickInterval)
	if err != nil {
		h.bg.Wait() // the drops use rlog
		_ = rlog.Close()
		return nil, err
	}
	h.lostState.Store(lostState)
	h.tr.setPeers(cfg.Peers)
	go h.run()
	return h, nil
}

func maps(m map[string]string) map[string]string {
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// checkPeers validates a peer set and returns its ID -> name map.
func checkPeers(self string, peers map[string]string) (map[uint64]string, error) {
	if _, ok := peers[self]; !ok {
		return nil, fmt.Errorf("multiraft: peers must include this node %q", self)
	}
	names := make(map[uint64]string, len(peers))
	for name := range peers {
		if name == "" || len(name) > 255 {
			return nil, fmt.Errorf("multiraft: bad node name %q (1 to 255 bytes)", name)
		}
		id := NodeID(name)
		if other, ok := names[id]; ok {
			return nil, fmt.Errorf("multiraft: node names %q and %q map to the same Raft ID", name, other)
		}
		names[id] = name
	}
	return names, nil
}

// Addr is the address the inter-node listener is bound to.
func (h *Host) Addr() string { return h.tr.addr() }

// Stats are a host's counters since it started.
type Stats struct {
	Groups           int
	MessagesSent     uint64 // Raft messages written to peers
	MessagesReceived uint64
	Frames           uint64 // writes to peer connections (each carries a batch of messages)
	NodeHeartbeats   uint64 // frames with no message: one per idle node pair and tick
	LogSaves         uint64 // Raft log writes, each one sync for every group with work
	Quiesced         int    // groups not ticked now (idle and caught up)
}

// Stats returns the host's counters.
func (h *Host) Stats() Stats {
	h.mu.Lock()
	gs := make([]*Group, 0, len(h.groups))
	for _, g := range h.groups {
		gs = append(gs, g)
	}
	h.mu.Unlock()
	q := 0
	for _, g := range gs {
		g.mu.Lock()
		if g.quiesced {
			q++
		}
		g.mu.Unlock()
	}
	return Stats{Groups: len(gs), MessagesSent: h.tr.sent.Load(), MessagesReceived: h.tr.received.Load(),
		Frames: h.tr.frames.Load(), NodeHeartbeats: h.tr.heartbeats.Load(), LogSaves: h.saves.Load(), Quiesced: q}
}

// ID is this node's Raft ID (NodeID of its name).
func (h *Host) ID() uint64 { return h.id }

// Close stops every group and the transport and closes the log. Proposals waiting get
// ErrClosed. It does not hand leadership over: to the other nodes it looks like a crash.
func (h *Host) Close() error {
	h.closeOnce.Do(func() {
		h.mu.Lock()
		h.closed = true
		h.mu.Unlock()
		close(h.stop)
		<-h.done
		h.tr.close()
		h.bg.Wait()
		h.closeErr = h.rlog.Close()
	})
	return h.closeErr
}

// SetPeers replaces the member set (a reload of cluster.nodes): the transport connects to
// new nodes and drops removed ones, and every group this node leads changes its Raft
// configuration towards the new set through conf changes, one node at a time (additions
// first), which the other groups' leaders do on their nodes when they get the same set.
func (h *Host) SetPeers(peers map[string]string) error {
	names, err := checkPeers(h.cfg.NodeName, peers)
	if err != nil {
		return err
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return ErrClosed
	}
	// Removed nodes stay resolvable: messages to them still flow until the conf change.
	for id, n := range h.names {
		if _, ok := names[id]; !ok {
			names[id] = n
		}
	}
	h.peers, h.names = maps(peers), names
	h.mu.Unlock()
	h.tr.setPeers(peers)
	h.log.Info("cluster peers changed", "peers", len(peers))
	return nil
}

// Group starts (or, after a restart, rejoins) group id with sm as its state machine. All
// members call it with the same id. A group with no local state bootstraps with the current
// peers as members (unless Config.Join); a group with state restores sm from its snapshot and
// replays the log after it. Its members follow the host's peers (SetPeers); GroupWith places
// a group on some of the nodes only.
func (h *Host) Group(id uint64, sm StateMachine) (*Group, error) {
	return h.group0(id, sm, GroupOptions{Join: h.cfg.Join}, true)
}

// GroupOptions configure a group started with GroupWith.
type GroupOptions struct {
	// Voters are the node names of the group's members when it bootstraps (no local state
	// and not Join): a quorum queue of three replicas in a five-node cluster lives on three
	// of them. Every member must pass the same list; this node must be in it. After that the
	// members change only through AddMember and RemoveMember (SetPeers leaves the group
	// alone), and a group with local state takes its members from its log.
	Voters []string
	// Join says the group has no local state here and is being added to a running group:
	// it waits for the leader to send it the log or a snapshot (call AddMember for this node
	// on a member). Voters is then not used.
	Join bool
	// SnapshotEvery and SnapshotBytes override the host's (Config) for this group: a quorum
	// queue's log is compacted after its state machine's snapshot so that its disk use
	// follows its backlog, not its history. 0: the host's.
	SnapshotEvery, SnapshotBytes uint64
}

// GroupWith starts (or, after a restart, rejoins) group id on the members opts names: the
// other nodes never start it and never receive its messages.
func (h *Host) GroupWith(id uint64, sm StateMachine, opts GroupOptions) (*Group, error) {
	if !opts.Join {
		if len(opts.Voters) == 0 {
			return nil, fmt.Errorf("multiraft: group %d: GroupOptions needs Voters or Join", id)
		}
		if !slices.Contains(opts.Voters, h.cfg.NodeName) {
			return nil, fmt.Errorf("multiraft: group %d: this node %q is not one of its voters %v (start it with Join to add it)", id, h.cfg.NodeName, opts.Voters)
		}
	}
	return h.group0(id, sm, opts, false)
}

func (h *Host) group0(id uint64, sm StateMachine, opts GroupOptions, followPeers bool) (*Group, error) {
	if id == 0 || id >= quiesceFlag {
		return nil, fmt.Errorf("multiraft: group id %d out of range (1 to 2^63-1)", id)
	}
	if err := h.undelete(id); err != nil {
		return nil, err
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, ErrClosed
	}
	if _, ok := h.groups[id]; ok {
		h.mu.Unlock()
		return nil, fmt.Errorf("multiraft: group %d already started", id)
	}
	var peers []raft.Peer
	if followPeers {
		for name := range h.peers {
			peers = append(peers, raft.Peer{ID: NodeID(name)})
		}
	} else {
		for _, name := range opts.Voters {
			if _, ok := h.peers[name]; !ok && !opts.Join {
				h.mu.Unlock()
				return nil, fmt.Errorf("multiraft: group %d: voter %q is not a cluster peer", id, name)
			}
			id := NodeID(name)
			if !slices.ContainsFunc(peers, func(p raft.Peer) bool { return p.ID == id }) {
				peers = append(peers, raft.Peer{ID: id})
			}
		}
	}
	h.mu.Unlock()
	// Bootstrap entries must be identical on every member: sorted by ID.
	sort.Slice(peers, func(i, j int) bool { return peers[i].ID < peers[j].ID })

	st, err := h.rlog.Storage(id)
	if err != nil {
		return nil, fmt.Errorf("multiraft: group %d: %w", id, err)
	}
	g := &Group{h: h, id: id, sm: sm, storage: st, followPeers: followPeers, done: make(chan struct{}),
		snapEvery: cmp.Or(opts.SnapshotEvery, h.cfg.SnapshotEvery), snapBytes: cmp.Or(opts.SnapshotBytes, h.cfg.SnapshotBytes), pending: make(map[uint64]*pendingProp), placedAt: make(map[uint64]uint64), dedupe: make(dedupeTable),
		log: h.log.With("group", id)}
	hs, cs, _ := st.InitialState()
	g.confState = cs
	if si := st.SnapshotIndex(); si > 0 {
		snap, err := st.Snapshot()
		if err != nil {
			return nil, fmt.Errorf("multiraft: group %d: %w", id, err)
		}
		if err := g.restore(snap.GetData()); err != nil {
			return nil, fmt.Errorf("multiraft: group %d: restore snapshot at %d: %w", id, si, err)
		}
		g.applied, g.snapIndex = si, si
	}
	rn, err := raft.NewRawNode(&raft.Config{
		ID:                        h.id,
		ElectionTick:              h.cfg.ElectionTicks,
		HeartbeatTick:             h.cfg.HeartbeatTicks,
		Storage:                   st,
		Applied:                   g.applied,
		MaxSizePerMsg:             1 << 20,
		MaxInflightMsgs:           256,
		MaxUncommittedEntriesSize: 64 << 20,
		CheckQuorum:               true,
		PreVote:                   true,
		StepDownOnRemoval:         true,
		Logger:                    raftLogger{g.log},
	})
	if err != nil {
		return nil, fmt.Errorf("multiraft: group %d: %w", id, err)
	}
	last, _ := st.LastIndex()
	noState := last == 0 && raft.IsEmptyHardState(hs)
	// A host that lost its state takes every group it opens with no local state for one
	// whose log it lost, whatever opts.Join says: a quorum queue's original voter opens its
	// group with Join false, and bootstrapping would give it a configuration, hence a vote
	// and an election timer, with an empty log. It waits for the leader instead.
	marked := h.lostMarked(groupMarker(id))
	lost := noState && h.lostState.Load() || marked
	if noState && !opts.Join && !lost {
		if err := rn.Bootstrap(peers); err != nil {
			return nil, fmt.Errorf("multiraft: group %d: bootstrap: %w", id, err)
		}
	}
	if lost {
		if !marked {
			if err := h.markLost(groupMarker(id)); err != nil {
				return nil, fmt.Errorf("multiraft: group %d: %w", id, err)
			}
		}
		g.lostLog.Store(true)
		g.log.Info("group opened without the Raft log this node had (wiped data directory?): it votes again once a leader has sent it the log")
	}
	g.rn = rn
	h.mu.Lock()
	if _, ok := h.groups[id]; ok || h.closed {
		h.mu.Unlock()
		return nil, fmt.Errorf("multiraft: group %d already started (or host closed)", id)
	}
	h.groups[id] = g
	h.dirty[id] = g
	h.mu.Unlock()
	h.kick()
	return g, nil
}

func (h *Host) kick() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

func (h *Host) markDirty(g *Group) {
	if g.deleted.Load() {
		return // detached: never saved again
	}
	h.mu.Lock()
	h.dirty[g.id] = g
	h.mu.Unlock()
	h.kick()
}

func (h *Host) nameOf(id uint64) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n, ok := h.names[id]
	return n, ok
}

func (h *Host) group(id uint64) *Group {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.groups[id]
}

// deliver implements transportHooks: a message from a peer steps its group.
func (h *Host) deliver(group uint64, m *pb.Message) {
	quiesce := group&quiesceFlag != 0
	group &^= quiesceFlag
	g := h.group(group)
	if g == nil {
		return // not (yet) a member here; Raft retransmits
	}
	if g.failed.Load() != nil {
		return // stopped on this node (see Group.fail)
	}
	commit := m.GetCommit()
	if g.lostLog.Load() && (m.GetType() == pb.MessageType_MsgVote || m.GetType() == pb.MessageType_MsgPreVote) {
		return // no vote before the log is back (lostlog.go); the candidate times out
	}
	if m.GetType() == pb.MessageType_MsgHeartbeat {
		// A heartbeat's commit index is at most what the leader believes this node has
		// stored. A node restarted with an empty data directory has less, which raft treats
		// as a corrupted log (it panics). Clamping lets the leader's next append be rejected
		// and the node catch up from a snapshot; the entries it still has are the bootstrap
		// entries, identical on every member, or none.
		if last, _ := g.storage.LastIndex(); m.GetCommit() > last {
			m.Commit = &last
		}
	}
	g.mu.Lock()
	if m.GetType() == pb.MessageType_MsgAppResp && m.GetReject() {
		g.noteLostLogLocked(m)
	}
	var wakeLeader []outMsg
	switch {
	case quiesce && m.GetType() == pb.MessageType_MsgHeartbeat:
		// A leader's quiesce heartbeat: stepped, then quiesceFollowerLocked.
	case m.GetType() == pb.MessageType_MsgHeartbeatResp && !quiesce:
		// An answer to a heartbeat (a quiesced leader gets them for its quiesce heartbeats).
	default:
		// Anything else is activity, a follower's wake-up call (a flagged heartbeat
		// answer, see wakeOnPeerEventLocked) included.
		if g.quiesced {
			wakeLeader = g.wakeLeaderLocked(m.GetFrom())
		}
		g.quiesced = false
		quiesce = false
	}
	err := g.rn.Step(m)
	if quiesce {
		g.quiesceFollowerLocked(m, commit)
	}
	var lostLogReply []outMsg
	if g.lostLog.Load() {
		lostLogReply = g.lostLogStepLocked(m, commit)
	}
	g.mu.Unlock()
	if len(wakeLeader) > 0 {
		if name, ok := h.nameOf(wakeLeader[0].msg.GetTo()); ok {
			h.tr.send(name, wakeLeader)
		}
	}
	if len(lostLogReply) > 0 {
		if name, ok := h.nameOf(lostLogReply[0].msg.GetTo()); ok {
			h.tr.send(name, lostLogReply)
		}
	}
	if err != nil && !errors.Is(err, raft.ErrStepPeerNotFound) {
		g.log.Debug("raft step", "type", m.GetType().String(), "err", err)
	}
	h.markDirty(g)
}

func (h *Host) unreachable(group, id uint64, snap bool) {
	g := h.group(group)
	if g == nil {
		return
	}
	g.mu.Lock()
	g.rn.ReportUnreachable(id)
	if snap {
		g.rn.ReportSnapshot(id, raft.SnapshotFailure)
	}
	g.mu.Unlock()
}

func (h *Host) snapshotSent(group, id uint64) {
	if g := h.group(group); g != nil {
		g.mu.Lock()
		g.rn.ReportSnapshot(id, raft.SnapshotFinish)
		g.mu.Unlock()
	}
}

// run is the loop of every group: one ticker, and one Ready round over all groups with work,
// persisted with one sync.
func (h *Host) run() {
	defer close(h.done)
	ticker := time.NewTicker(h.cfg.TickInterval)
	defer ticker.Stop()
	var ticks uint64
	for {
		select {
		case <-h.stop:
			h.failPending()
			return
		case <-ticker.C:
			ticks++
			h.tickAll(ticks%uint64(h.cfg.ElectionTicks) == 0)
		case <-h.wake:
		case r := <-h.detachCh:
			h.detach(r.g)
			close(r.done)
		case r := <-h.snapDone:
			h.finishSnapshot(r)
		}
		if err := h.ready(); err != nil {
			// The log cannot be written: Raft's promises no longer hold on this node. Stop
			// taking part rather than acknowledge what is not on disk.
			h.log.Error("raft log write failed; this node stops serving its groups", "err", err)
			h.failPending()
			close(h.dead)
			// The peers must see this node go, as if it had crashed: while the transport
			// writes node heartbeats they count it live, and the groups it leads, quiesced,
			// would never elect another leader.
			h.tr.close()
			<-h.stop
			return
		}
	}
}

func (h *Host) failPending() {
	h.mu.Lock()
	gs := make([]*Group, 0, len(h.groups))
	for _, g := range h.groups {
		gs = append(gs, g)
	}
	h.mu.Unlock()
	for _, g := range gs {
		g.pmu.Lock()
		g.stopped = true
		g.pmu.Unlock()
	}
}

func (h *Host) tickAll(reconcile bool) {
	live, changed := h.peerEvents()
	h.mu.Lock()
	gs := make([]*Group, 0, len(h.groups))
	for _, g := range h.groups {
		gs = append(gs, g)
	}
	var desired []uint64
	if reconcile {
		for name := range h.peers {
			desired = append(desired, NodeID(name))
		}
	}
	others := make([]uint64, 0, len(h.peers))
	for name := range h.peers {
		if id := NodeID(name); id != h.id {
			others = append(others, id)
		}
	}
	h.mu.Unlock()
	q := quiesceRound{live: live, out: make(map[uint64][]outMsg)}
	var dirty []*Group
	for _, g := range gs {
		if g.failed.Load() != nil {
			continue
		}
		g.mu.Lock()
		if g.quiesced && len(changed) > 0 {
			g.wakeOnPeerEventLocked(changed, &q)
		}
		if reconcile && g.followPeers {
			g.reconcile(desired)
		}
		if g.lostLog.Load() {
			g.callLeaderIfLostLocked(others, &q)
		}
		if !g.quiesced {
			// Before the tick: a leader's tick makes heartbeats (a Ready).
			g.maybeQuiesceLocked(&q)
		}
		if !g.quiesced {
			g.rn.Tick()
			dirty = append(dirty, g)
		}
		g.mu.Unlock()
	}
	h.mu.Lock()
	for _, g := range dirty {
		h.dirty[g.id] = g
	}
	h.mu.Unlock()
	for to, ms := range q.out {
		if name, ok := h.nameOf(to); ok {
			h.tr.send(name, ms)
		}
	}
}

type readyWork struct {
	g  *Group
	rd raft.Ready
}

func (h *Host) ready() error {
	h.mu.Lock()
	if len(h.dirty) == 0 {
		h.mu.Unlock()
		return nil
	}
	dirty := h.dirty
	h.dirty = make(map[uint64]*Group, len(dirty))
	h.mu.Unlock()

	var work []readyWork
	var updates []persistence.RaftUpdate
	mustSync := false
	for _, g := range dirty {
		if g.failed.Load() != nil || g.deleted.Load() {
			continue // stopped: takes no further part
		}
		g.mu.Lock()
		if g.rn.HasReady() {
			rd := g.rn.Ready()
			work = append(work, readyWork{g, rd})
			if !raft.IsEmptySnap(rd.Snapshot) || len(rd.Entries) > 0 || !raft.IsEmptyHardState(rd.HardState) {
				updates = append(updates, persistence.RaftUpdate{Group: g.id, Snapshot: rd.Snapshot, Entries: rd.Entries, HardState: rd.HardState})
				mustSync = mustSync || rd.MustSync || !raft.IsEmptySnap(rd.Snapshot)
			}
		}
		g.mu.Unlock()
	}
	if len(work) == 0 {
		for _, g := range dirty {
			g.sendLostLogSnapshots()
		}
		return nil
	}
	if len(updates) > 0 {
		if err := h.rlog.Save(updates, mustSync); err != nil {
			return err
		}
		h.saves.Add(1)
	}
	// Messages leave only once what they acknowledge is on disk.
	out := make(map[uint64][]outMsg)
	for _, w := range work {
		lost := w.g.lostLog.Load()
		for _, m := range w.rd.Messages {
			if lost && (m.GetType() == pb.MessageType_MsgVote || m.GetType() == pb.MessageType_MsgPreVote) {
				continue // a replica that lost its log does not campaign (lostlog.go)
			}
			out[m.GetTo()] = append(out[m.GetTo()], outMsg{group: w.g.id, msg: m})
		}
	}
	for to, ms := range out {
		name, ok := h.nameOf(to)
		if !ok {
			for _, m := range ms {
				h.unreachable(m.group, to, m.msg.GetType() == pb.MessageType_MsgSnap)
			}
			continue
		}
		h.tr.send(name, ms)
	}
	for _, w := range work {
		w.g.notePlaced(w.rd.Entries)
		w.g.apply(w.rd)
		w.g.mu.Lock()
		w.g.rn.Advance(w.rd)
		more := w.g.rn.HasReady()
		w.g.mu.Unlock()
		if more {
			h.markDirty(w.g)
		}
	}
	for _, g := range dirty {
		g.sendLostLogSnapshots()
	}
	return nil
}

// Group is one Raft group on this host.
type Group struct {
	h       *Host
	id      uint64
	sm      StateMachine
	storage *persistence.RaftStorage
	log     *slog.Logger
	// followPeers: the members are the host's peers, reconciled after SetPeers (Host.Group);
	// false: they change only through AddMember and RemoveMember (GroupWith).
	followPeers bool

	mu sync.Mutex // guards rn and lostFollowers
	rn *raft.RawNode
	// lostFollowers (leader, g.mu): the followers that lost their log (a rejection below
	// what they had acknowledged) and the index a snapshot sent to them must reach;
	// lostSent (loop goroutine) when one was last sent to each (lostlog.go).
	lostFollowers map[uint64]uint64
	lostSent      map[uint64]time.Time
	// lostLog: this replica lost its log and votes (opened with no local state on a host
	// that lost its state) and has not yet got it back from a leader (lostlog.go).
	lostLog atomic.Bool
	// lostTicks counts the ticks of a replica that lost its log (loop goroutine, g.mu).
	lostTicks int
	// lastLead is the last leader this node knew (loop goroutine): when another one is
	// elected, proposals not yet in this node's log are sent again (resendUnplaced).
	lastLead uint64

	// Owned by the loop goroutine (and Group before it starts).
	confState          *pb.ConfState
	snapIndex          uint64
	snapRunning        bool   // a snapshot is being encoded off the loop (snapasync.go)
	snapEvery          uint64 // entries between snapshots
	snapBytes          uint64 // command bytes between snapshots
	bytesSinceSnap     uint64 // command bytes applied since the last snapshot (0 at start)
	lastConfChange     time.Time
	lastConfChangeFrom *pb.ConfState

	appliedIndex atomic.Uint64
	applied      uint64

	// placedAt maps log indices to this incarnation's proposals seen at them in Ready.Entries
	// (loop goroutine only): when another entry is applied at such an index, the proposal was
	// overwritten in a leader change and can never apply.
	placedAt map[uint64]uint64

	// dedupe holds, per proposer incarnation, which in-flight requests were applied, so that
	// a proposal sent twice applies once (loop goroutine only; carried in snapshots).
	dedupe dedupeTable

	pmu     sync.Mutex // guards pending, stopped
	pending map[uint64]*pendingProp
	stopped bool

	// failed is why the group stopped on its own (a snapshot its state machine could not
	// restore); nil while it runs. Once set, the loop no longer ticks, steps or applies it.
	failed  atomic.Pointer[error]
	nextReq atomic.Uint64

	// quiesced (g.mu): the group is idle and caught up everywhere, so it is not ticked:
	// no heartbeats from its leader, no election timer on its followers (quiesce.go).
	quiesced bool

	// deleted is set (and done closed) when DeleteGroup detached the group from the loop.
	deleted atomic.Bool
	done    chan struct{}
}

// ID is the group's id.
func (g *Group) ID() uint64 { return g.id }

// reconcile (leader only, g.mu held) proposes one conf change towards the desired voters.
func (g *Group) reconcile(desired []uint64) {
	if g.rn.BasicStatus().RaftState != raft.StateLeader || len(desired) == 0 {
		return
	}
	cs := g.confState
	if len(cs.GetVotersOutgoing()) > 0 {
		return // joint configuration: raft leaves it by itself
	}
	// One change in flight: wait until it applied (confState changes) or 5 s passed.
	if g.lastConfChangeFrom != nil && proto.Equal(g.lastConfChangeFrom, cs) && time.Since(g.lastConfChange) < 5*time.Second {
		return
	}
	voters := cs.GetVoters()
	var cc *pb.ConfChange
	for _, id := range desired {
		if !slices.Contains(voters, id) {
			cc = &pb.ConfChange{Type: pb.ConfChangeType_ConfChangeAddNode.Enum(), NodeId: &id}
			break
		}
	}
	if cc == nil {
		for _, id := range voters {
			if !slices.Contains(desired, id) {
				cc = &pb.ConfChange{Type: pb.ConfChangeType_ConfChangeRemoveNode.Enum(), NodeId: &id}
				break
			}
		}
	}
	if cc == nil {
		return
	}
	g.quiesced = false
	if err := g.rn.ProposeConfChange(cc); err != nil {
		g.log.Debug("conf change not proposed", "change", cc.GetType().String(), "node", cc.GetNodeId(), "err", err)
		return
	}
	g.log.Info("raft membership change proposed", "change", cc.GetType().String(), "node", cc.GetNodeId())
	g.lastConfChange, g.lastConfChangeFrom = time.Now(), proto.Clone(cs).(*pb.ConfState)
}

// apply applies a Ready's snapshot and committed entries (loop goroutine).
func (g *Group) apply(rd raft.Ready) {
	if ss := rd.SoftState; ss != nil && ss.Lead != raft.None && ss.Lead != g.lastLead {
		if g.lastLead != raft.None {
			g.resendUnplaced()
		}
		g.lastLead = ss.Lead
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		md := rd.Snapshot.GetMetadata()
		// Whatever was placed at or below the snapshot and not yet applied here is either in
		// the snapshot's state or was overwritten; the result cannot be told, so the callers
		// wait for their context.
		for idx := range g.placedAt {
			if idx <= md.GetIndex() {
				delete(g.placedAt, idx)
			}
		}
		if err := g.restore(rd.Snapshot.GetData()); err != nil {
			// The state machine cannot take the leader's state: nothing after it can be
			// applied, so the group stops here (its state is still the one before).
			g.log.Error("restore of a snapshot from the leader failed; the group stops", "index", md.GetIndex(), "err", err)
			g.fail(fmt.Errorf("restore snapshot at %d: %w", md.GetIndex(), err))
			return
		}
		g.confState = pb.EnsureConfState(md.GetConfState())
		g.applied, g.snapIndex = md.GetIndex(), md.GetIndex()
		g.bytesSinceSnap = 0
		g.appliedIndex.Store(g.applied)
	}
	snapNow := false // a member was added: snapshot whatever the intervals say
	for _, e := range rd.CommittedEntries {
		idx := e.GetIndex()
		if idx <= g.applied {
			continue
		}
		if req, ok := g.placedAt[idx]; ok {
			delete(g.placedAt, idx)
			ph, isProp := parseHeader(e.GetData())
			if e.GetType() != pb.EntryType_EntryNormal || !isProp || ph.proposer != g.h.id || ph.inc != g.h.incarnation || ph.req != req {
				g.finish(req, proposalResult{lost: true})
			}
		}
		switch e.GetType() {
		case pb.EntryType_EntryNormal:
			d := e.GetData()
			g.bytesSinceSnap += uint64(len(d))
			if len(d) == 0 {
				break // a new leader's empty entry
			}
			ph, ok := parseHeader(d)
			if !ok {
				g.log.Error("malformed raft entry skipped", "index", idx)
				break
			}
			if !g.dedupe.admit(ph, idx) {
				break // a second copy of a proposal already applied (or given up)
			}
			res := g.sm.Apply(idx, d[proposalHeader:])
			if ph.proposer == g.h.id && ph.inc == g.h.incarnation {
				g.finish(ph.req, proposalResult{v: res})
			}
		case pb.EntryType_EntryConfChange:
			var cc pb.ConfChange
			if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
				g.log.Error("malformed conf change", "index", idx, "err", err)
				break
			}
			g.mu.Lock()
			g.confState = g.rn.ApplyConfChange(&cc)
			g.mu.Unlock()
			if cc.GetType() == pb.ConfChangeType_ConfChangeAddNode && g.snapIndex > 0 {
				// A member added to a compacted log catches up from a snapshot, and raft
				// refuses one whose configuration lacks it: snapshot again, with it in.
				snapNow = true
			}
		case pb.EntryType_EntryConfChangeV2:
			var cc pb.ConfChangeV2
			if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
				g.log.Error("malformed conf change", "index", idx, "err", err)
				break
			}
			g.mu.Lock()
			g.confState = g.rn.ApplyConfChange(&cc)
			g.mu.Unlock()
		}
		g.applied = idx
		g.appliedIndex.Store(idx)
	}
	if since := g.applied - g.snapIndex; since > 0 && (snapNow || since >= g.snapEvery || g.bytesSinceSnap >= g.snapBytes) {
		// A member was added (snapNow): the snapshot must be of this index, whose
		// configuration has the new node, so it is taken here even while an off-loop one of
		// an earlier index is in flight (finishSnapshot drops that one as stale).
		if !snapNow && g.startSnapshot(since) {
			return // off the loop (snapasync.go)
		}
		data, err := g.snapshot()
		if errors.Is(err, ErrSnapshotLater) {
			return
		}
		if err != nil {
			g.log.Error("state machine snapshot failed", "index", g.applied, "err", err)
			return
		}
		// One interval of entries stays behind (a follower a little behind catches up from the
		// log, not a snapshot) - the configured interval, not this one: a round that applied
		// many entries at once would otherwise keep all of them.
		if err := g.storage.CreateSnapshot(g.applied, g.confState, data, g.keepAfterSnapshot(since)); err != nil {
			g.log.Error("raft snapshot failed", "index", g.applied, "err", err)
			return
		}
		g.snapIndex, g.bytesSinceSnap = g.applied, 0
	}
}

// keepAfterSnapshot is how many of the since entries applied after the last snapshot the log
// keeps behind a new one: at most SnapshotEvery, and at most the share of them that fits in
// SnapshotBytes when they overran it.
func (g *Group) keepAfterSnapshot(since uint64) uint64 {
	keep := min(since, g.snapEvery)
	if g.bytesSinceSnap > g.snapBytes && g.snapBytes > 0 {
		keep = min(keep, max(1, since*g.snapBytes/g.bytesSinceSnap))
	}
	return keep
}

// Leader is the current leader's node name, if one is known.
func (g *Group) Leader() (node string, ok bool) {
	g.mu.Lock()
	lead := g.rn.BasicStatus().Lead
	g.mu.Unlock()
	if lead == raft.None {
		return "", false
	}
	return g.h.nameOf(lead)
}

// GroupStatus is a group's Raft state as seen by this node.
type GroupStatus struct {
	Group   uint64
	Node    string // this node
	State   string // StateFollower, StateCandidate, StateLeader, StatePreCandidate
	Leader  string // "" when none is known
	Term    uint64
	Commit  uint64
	Applied uint64
	Members []string // voters, sorted (unknown IDs as hex)
	// Failed is why the group stopped on this node ("" while it runs): its state machine
	// could not restore a snapshot, so nothing more is applied here.
	Failed string
	// Quiesced: idle, not ticked (no heartbeats, no election timer) until activity.
	Quiesced bool
}

// Status reports the group's term, indices, leader and members.
func (g *Group) Status() GroupStatus {
	g.mu.Lock()
	bs := g.rn.BasicStatus()
	quiesced := g.quiesced
	var voters []uint64
	for id := range g.rn.Status().Config.Voters.IDs() {
		voters = append(voters, id)
	}
	g.mu.Unlock()
	st := GroupStatus{Group: g.id, Node: g.h.cfg.NodeName, State: bs.RaftState.String(),
		Term: bs.HardState.GetTerm(), Commit: bs.HardState.GetCommit(), Applied: g.appliedIndex.Load(), Quiesced: quiesced}
	if bs.Lead != raft.None {
		st.Leader, _ = g.h.nameOf(bs.Lead)
	}
	for _, id := range voters {
		n, ok := g.h.nameOf(id)
		if !ok {
			n = fmt.Sprintf("%016x", id)
		}
		st.Members = append(st.Members, n)
	}
	sort.Strings(st.Members)
	if err := g.failed.Load(); err != nil {
		st.Failed = (*err).Error()
	}
	return st
}

// fail stops the group on this node (loop goroutine): proposals are refused with ErrClosed
// and the loop leaves the group alone from the next round on.
func (g *Group) fail(err error) {
	g.failed.Store(&err)
	g.pmu.Lock()
	g.stopped = true
	g.pmu.Unlock()
}
