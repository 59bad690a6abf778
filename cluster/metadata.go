package cluster

import (
	"cmp"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/cluster/multiraft"
)

// Applier is the local broker: it makes its registry follow the changes the log accepted.
// *broker.Broker implements it.
type Applier interface {
	ApplyTopology(op broker.TopologyOp) (broker.TopologyResult, *amqp.Error)
}

// Result is what Apply returns for a command: the verdict (Code 0: applied or already so) and
// what applying it produced on this node. Every node computes the same Code and Text.
type Result struct {
	Code uint16
	Text string
	// Messages is the number of messages a deleted queue held on this node (its home).
	Messages int
	// Epoch is the incarnation (log index of the declare) of the queue declared or found.
	Epoch uint64
	// Home is the home node of the queue declared or found, or of the x-delayed-message
	// exchange declared.
	Home string
}

// Err is the verdict as RabbitMQ's error, nil when the command was applied.
func (r Result) Err() *amqp.Error {
	if r.Code == 0 {
		return nil
	}
	return &amqp.Error{Code: r.Code, Text: r.Text}
}

func resultOf(err *amqp.Error) Result {
	if err == nil {
		return Result{}
	}
	return Result{Code: err.Code, Text: err.Text}
}

// Metadata is the replicated state machine of the cluster's topology: it implements the
// StateMachine of cluster/multiraft (Apply, Snapshot, Restore). Apply depends only on the
// state and the command, so every node decides every command alike; the local broker is then
// told of accepted changes through the Applier.
//
// Lock order: Metadata.mu is taken by the Raft host's loop (Apply, Snapshot, Restore) and by
// readers (IsDown, AppliedIndex). Without the worker it is held while the Applier runs, so it
// sits above every lock of the broker; with the worker (a Node's case) the Applier runs on the
// worker goroutine without it, and the worker's own mutex is never held across the Applier
// either. The broker calls into Metadata only through NodeDown (broker.NodeLiveness), which
// takes no lock.
type Metadata struct {
	log     *slog.Logger
	applier Applier // nil: the state alone (tests of the state machine)

	mu sync.Mutex
	st state
	// ops are the broker changes the command being applied queued (apply, then flush).
	ops []broker.TopologyOp
	// worker runs the broker's part off the Raft loop; nil: inside Apply.
	worker *applyWorker
	// membersGen counts the changes of quorum queues' members (MembersGen).
	membersGen uint64
	// testApplyDelay, when set (by tests, before the worker starts), runs on the worker before
	// each job: a node that lags behind the log.
	testApplyDelay func()
	// unreachable is the set of nodes taken for dead or gone (st.Down and st.Gone), replaced
	// whenever either changes, for NodeDown: read without m.mu by the broker's client
	// goroutines, which may hold broker locks that the Applier takes under m.mu.
	unreachable atomic.Pointer[map[string]bool]
}

// NodeDown implements broker.NodeLiveness: node is taken for dead (node_down) or has left the
// cluster (node_gone), as of the last command applied. Its durable classic queues then answer
// RabbitMQ's 404 "home node ... is down or inaccessible".
func (m *Metadata) NodeDown(node string) bool {
	p := m.unreachable.Load()
	return p != nil && (*p)[node]
}

// publishUnreachable refreshes the set NodeDown reads (m.mu held), after st.Down or st.Gone
// changed.
func (m *Metadata) publishUnreachable() {
	set := make(map[string]bool, len(m.st.Down)+len(m.st.Gone))
	for _, n := range m.st.Down {
		set[n] = true
	}
	for _, n := range m.st.Gone {
		set[n] = true
	}
	m.unreachable.Store(&set)
}

// topologyProgress is implemented by an Applier that wants to know how far the log is applied
// (*broker.Broker: a forwarded message waits for the queues the sender knew).
type topologyProgress interface {
	TopologyApplied(index uint64)
}

// reportApplied tells the applier that every entry up to index has been applied (0: nothing).
func (m *Metadata) reportApplied(index uint64) {
	if p, ok := m.applier.(topologyProgress); ok && index > 0 {
		p.TopologyApplied(index)
	}
}

// stateVersion is the version of the snapshot encoding.
const stateVersion = 1

// state is the whole replicated topology.
type state struct {
	V     int    `json:"v"`
	Index uint64 `json:"index"` // last applied log index
	// Nodes are the members balanced queues are spread over (set_nodes), sorted.
	Nodes []string `json:"nodes,omitempty"`
	// Down are the nodes taken for dead (node_down, until node_up or node_restarted), sorted.
	Down []string `json:"down,omitempty"`
	// Gone are the nodes removed from the cluster (node_gone, until a set_nodes lists them or
	// they propose node_restarted), sorted.
	Gone   []string               `json:"gone,omitempty"`
	VHosts map[string]*vhostState `json:"vhosts"`
}

type vhostState struct {
	Exchanges map[string]*exchangeRec `json:"exchanges"`
	Queues    map[string]*queueRec    `json:"queues"`
	// bindings is kept as a set; the snapshot carries Bindings, sorted.
	bindings map[bindingKey]struct{}
	Bindings []bindingKey `json:"bindings"`
}

type exchangeRec struct {
	Type       string `json:"type"`
	Durable    bool   `json:"durable,omitempty"`
	AutoDelete bool   `json:"auto_delete,omitempty"`
	Internal   bool   `json:"internal,omitempty"`
	Args       []byte `json:"args,omitempty"`
	// Home is the node that holds an x-delayed-message exchange's messages until they are
	// due: the node that declared it (or the one it moved to when that node left the cluster,
	// node_gone). "" for the other types (they hold nothing).
	Home string `json:"home,omitempty"`
	// Epoch is the log index of the declare (or of the node_gone that moved its home): a
	// snapshot with another epoch (Restore) has a different exchange of the same name, which
	// the broker must delete and declare again. 0 in snapshots of earlier versions.
	Epoch uint64 `json:"epoch,omitempty"`
}

type queueRec struct {
	Durable    bool   `json:"durable,omitempty"`
	Exclusive  bool   `json:"exclusive,omitempty"`
	AutoDelete bool   `json:"auto_delete,omitempty"`
	Args       []byte `json:"args,omitempty"`
	Home       string `json:"home"`
	// OwnerNode and Owner are an exclusive queue's connection.
	OwnerNode string `json:"owner_node,omitempty"`
	Owner     uint64 `json:"owner,omitempty"`
	Epoch     uint64 `json:"epoch"`
	// Members are a quorum queue's replicas, sorted: the nodes that run its Raft group (Home,
	// the leader the locator chose, is one of them). nil: every cluster member (a quorum queue
	// declared before placement existed, or before any set_nodes was applied).
	Members []string `json:"members,omitempty"`
	// Voters are the members the group was created with: every one of them bootstraps it with
	// this list (multiraft needs identical bootstrap entries); a member added later joins
	// the running group instead.
	Voters []string `json:"voters,omitempty"`
	// Leaving are the members being removed (delete_member): still replicas until the
	// group's leader has taken them out of the Raft configuration, then removed from Members
	// by a quorum_member "removed" (a copy deleted before that could leave the group
	// without a majority).
	Leaving []string `json:"leaving,omitempty"`
	// Joining are the members added (add_member) whose group has not yet committed a Raft
	// configuration with them: a replica other than the joiner that applied one records it
	// (quorum_member "joined"), so that add_member can wait for it from any node.
	Joining []string `json:"joining,omitempty"`
}

// bindingKey is one binding; Args is the binding's argument table encoding.
type bindingKey struct {
	Source      string  `json:"source"`
	Destination string  `json:"destination"`
	ToExchange  bool    `json:"to_exchange,omitempty"`
	Key         string  `json:"key"`
	Args        rawArgs `json:"args,omitempty"`
}

// rawArgs is an argument table's encoding kept as a string (so that a bindingKey is comparable);
// in JSON it is base64, as []byte is: the table's bytes are not UTF-8 text.
type rawArgs string

// MarshalText implements encoding.TextMarshaler.
func (r rawArgs) MarshalText() ([]byte, error) {
	return []byte(base64.StdEncoding.EncodeToString([]byte(r))), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *rawArgs) UnmarshalText(b []byte) error {
	d, err := base64.StdEncoding.DecodeString(string(b))
	*r = rawArgs(d)
	return err
}

// NewMetadata returns an empty state machine that applies accepted changes to applier (nil for
// none).
func NewMetadata(applier Applier, log *slog.Logger) *Metadata {
	if log == nil {
		log = slog.Default()
	}
	return &Metadata{log: log, applier: applier, st: state{V: stateVersion, VHosts: map[string]*vhostState{}}}
}

// AppliedIndex is the index of the last command applied.
func (m *Metadata) AppliedIndex() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.Index
}

// Apply applies one log entry and returns its Result. A corrupt entry changes nothing and is
// refused with 541 (every node refuses it alike).
//
// With the worker started (StartWorker, as a Node does), Apply only decides: it updates the
// state and queues the broker's part (a queue delete may remove millions of stored messages)
// for the worker, which runs the queued parts one at a time in log order; Apply then returns an
// *Applying the proposer waits on. Without it (tests of the state machine) the broker's part
// runs inside Apply and Apply returns the Result.
func (m *Metadata) Apply(index uint64, cmd []byte) any {
	m.mu.Lock()
	defer m.mu.Unlock()
	res := m.decide(index, cmd)
	return m.flush(res)
}

// flush hands the broker the changes the last decision queued (m.mu held): at once without a
// worker, else to the worker, returning what the proposer waits on.
func (m *Metadata) flush(res Result) any {
	ops := m.ops
	m.ops = nil
	if m.worker == nil {
		for _, op := range ops {
			res.Messages += m.applyNow(op).Messages
		}
		m.reportApplied(m.st.Index)
		return res
	}
	a := &Applying{done: make(chan struct{}), res: res}
	m.worker.push(applyJob{ops: ops, done: a, index: m.st.Index})
	return a
}

// decide applies command cmd at index to the state (m.mu held) and queues in m.ops what the
// broker must do.
func (m *Metadata) decide(index uint64, cmd []byte) Result {
	c, err := DecodeCommand(cmd)
	if index > m.st.Index {
		m.st.Index = index
	}
	if err != nil {
		m.log.Error("cluster: refusing a metadata log entry", "index", index, "err", err)
		return Result{Code: amqp.InternalError, Text: amqp.ReplyName(amqp.InternalError) + " - " + err.Error()}
	}
	switch c.Op {
	case OpSetNodes, OpNodeGone, OpDropOwner, OpNodeRestarted, OpNodeDown, OpNodeUp:
		defer m.publishUnreachable()
	}
	switch c.Op {
	case OpSetNodes:
		nodes := slices.Clone(c.Nodes)
		slices.Sort(nodes)
		m.st.Nodes = slices.Compact(nodes)
		for _, n := range m.st.Nodes {
			m.st.Gone = setIn(m.st.Gone, n, false) // added again
		}
		return Result{}
	case OpNodeGone:
		// The node left the cluster: it is no longer down but gone. What went with its
		// connections and its memory goes (as node_down); its durable queues stay, answer 404,
		// and can be deleted (deleteQueue).
		m.setDown(c.Node, false)
		m.st.Gone = setIn(m.st.Gone, c.Node, true)
		m.nodeDown(c.Node)
		m.rehomeExchanges(c.Node, index)
		return Result{}
	case OpDropOwner, OpNodeRestarted:
		if c.Op == OpNodeRestarted {
			m.setDown(c.Node, false)
			m.st.Gone = setIn(m.st.Gone, c.Node, false) // it runs
		}
		m.dropOwners(c)
		return Result{}
	case OpNodeDown:
		if !slices.Contains(m.st.Down, c.Node) {
			m.setDown(c.Node, true)
			m.nodeDown(c.Node)
		}
		return Result{}
	case OpNodeUp:
		m.setDown(c.Node, false)
		return Result{}
	}
	vs := m.vhost(c.VHost)
	args, _ := decodeArgs(c.Args) // checked by DecodeCommand
	switch c.Op {
	case OpDeclareExchange:
		return m.declareExchange(vs, c, args, index)
	case OpDeleteExchange:
		return m.deleteExchange(vs, c)
	case OpDeclareQueue:
		return m.declareQueue(vs, c, args, index)
	case OpDeleteQueue:
		return m.deleteQueue(vs, c)
	case OpBind:
		return m.bind(vs, c, args)
	case OpQuorumMember:
		return m.quorumMember(vs, c)
	default: // OpUnbind
		return m.unbind(vs, c, args)
	}
}

// setDown adds node to (or removes it from) the nodes taken for dead.
func (m *Metadata) setDown(node string, down bool) {
	m.st.Down = setIn(m.st.Down, node, down)
}

// setIn adds name to (in) or removes it from sorted set, which it returns (nil when empty).
func setIn(set []string, name string, in bool) []string {
	i, found := slices.BinarySearch(set, name)
	switch {
	case in && !found:
		set = slices.Insert(set, i, name)
	case !in && found:
		set = slices.Delete(set, i, i+1)
		if len(set) == 0 {
			set = nil
		}
	}
	return set
}

// IsDown reports whether node is taken for dead by the replicated state (node_down applied,
// no node_up or node_restarted since).
func (m *Metadata) IsDown(node string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, found := slices.BinarySearch(m.st.Down, node)
	return found
}

// nodeDown deletes what RabbitMQ deletes when a node goes down: the exclusive queues of its
// connections (they are gone) and the non-durable queues homed on it (their messages are gone),
// in vhost and name order.
func (m *Metadata) nodeDown(node string) {
	for _, vn := range sortedKeys(m.st.VHosts) {
		vs := m.st.VHosts[vn]
		var names []string
		for name, q := range vs.Queues {
			if (q.Exclusive && q.OwnerNode == node) || (!q.Durable && q.Home == node) {
				names = append(names, name)
			}
		}
		slices.Sort(names)
		for _, name := range names {
			m.removeQueue(vs, vn, name, vs.Queues[name])
		}
	}
	m.rehomeQuorum(node)
}

// errHomeDown is RabbitMQ's answer for a durable queue whose home node is down
// (rabbit_amqqueue:absent with nodedown).
func errHomeDown(vhost, name, home string) *amqp.Error {
	return broker.ErrHomeDown(vhost, name, home)
}

// homeDown reports whether q's home node is taken for dead. A quorum queue has no home that
// matters (every member holds it; Home is only the node that declared it), so it never is.
func (m *Metadata) homeDown(q *queueRec) bool {
	_, found := slices.BinarySearch(m.st.Down, q.Home)
	return found && !q.quorum()
}

// homeGone reports whether q's home node left the cluster (node_gone): its messages are out of
// reach for good. Never for a quorum queue (see homeDown).
func (m *Metadata) homeGone(q *queueRec) bool {
	_, found := slices.BinarySearch(m.st.Gone, q.Home)
	return found && !q.quorum()
}

// quorum reports whether q is a quorum queue (x-queue-type quorum).
func (q *queueRec) quorum() bool {
	args, _ := decodeArgs(q.Args)
	t, _ := args["x-queue-type"].(string)
	return t == "quorum"
}

// absent is RabbitMQ's error for a binding or unbinding of queue dest whose home node is down
// or gone (rabbit_binding's absent errors, answered before anything else about the binding),
// nil otherwise.
func (m *Metadata) absent(vs *vhostState, c Command) *amqp.Error {
	if c.ToExchange {
		return nil
	}
	if q := vs.Queues[c.Destination]; q != nil && (m.homeDown(q) || m.homeGone(q)) {
		return errHomeDown(c.VHost, c.Destination, q.Home)
	}
	return nil
}

// vhost is the state of a vhost, created with its default exchanges on first use.
func (m *Metadata) vhost(name string) *vhostState {
	vs := m.st.VHosts[name]
	if vs == nil {
		vs = &vhostState{Exchanges: map[string]*exchangeRec{}, Queues: map[string]*queueRec{}, bindings: map[bindingKey]struct{}{}}
		for n, kind := range broker.DefaultExchanges() {
			vs.Exchanges[n] = &exchangeRec{Type: kind, Durable: true}
		}
		m.st.VHosts[name] = vs
	}
	return vs
}

// apply queues an accepted change for the local broker (m.mu held); flush hands it over.
func (m *Metadata) apply(op broker.TopologyOp) {
	if m.applier != nil {
		m.ops = append(m.ops, op)
	}
}

// applyNow makes the local broker apply one accepted change; a failure there (a store write) is
// logged: the log has decided, and this node's registry is behind until it restarts.
func (m *Metadata) applyNow(op broker.TopologyOp) broker.TopologyResult {
	res, err := m.applier.ApplyTopology(op)
	if err != nil {
		m.log.Error("cluster: applying a topology change locally", "vhost", op.VHost, "kind", op.Kind, "err", err)
	}
	return res
}

func exchangeSpec(name string, x *exchangeRec) broker.ExchangeSpec {
	args, _ := decodeArgs(x.Args)
	return broker.ExchangeSpec{Name: name, Type: x.Type, Durable: x.Durable, AutoDelete: x.AutoDelete, Internal: x.Internal, Args: args}
}

func queueSpec(name string, q *queueRec) broker.QueueSpec {
	args, _ := decodeArgs(q.Args)
	return broker.QueueSpec{Name: name, Durable: q.Durable, Exclusive: q.Exclusive, AutoDelete: q.AutoDelete, Args: args}
}

func (m *Metadata) declareExchange(vs *vhostState, c Command, args amqp.Table, index uint64) Result {
	got := broker.ExchangeSpec{Name: c.Name, Type: c.Type, Durable: c.Durable, AutoDelete: c.AutoDelete, Internal: c.Internal, Args: args}
	if x := vs.Exchanges[c.Name]; x != nil {
		return resultOf(broker.CheckExchangeEquivalent(c.VHost, exchangeSpec(c.Name, x), got))
	}
	// An unknown type, or an x-delayed-type no node can build: checked by the proposing node
	// too (VHost.DeclareExchange); one that did not (an older version, a stale one) must not
	// put it in the log.
	if err := broker.CheckExchangeEquivalent(c.VHost, got, got); err != nil {
		return resultOf(err)
	}
	x := &exchangeRec{Type: c.Type, Durable: c.Durable, AutoDelete: c.AutoDelete, Internal: c.Internal, Args: c.Args, Epoch: index}
	if c.Type == broker.DelayedExchangeType {
		// Its held messages live on one node, as a classic queue's: the declaring one.
		x.Home = c.Node
	}
	vs.Exchanges[c.Name] = x
	m.apply(broker.TopologyOp{Kind: broker.OpDeclareExchange, VHost: c.VHost, Exchange: got, Home: x.Home})
	return Result{Home: x.Home}
}

func (m *Metadata) deleteExchange(vs *vhostState, c Command) Result {
	if vs.Exchanges[c.Name] == nil {
		return Result{}
	}
	if c.IfUnused && vs.hasBindingsFrom(c.Name) {
		return resultOf(amqp.Errorf(amqp.PreconditionFailed, "exchange '%s' in vhost '%s' in use", c.Name, c.VHost))
	}
	vs.removeExchange(c.Name)
	m.apply(broker.TopologyOp{Kind: broker.OpDeleteExchange, VHost: c.VHost, Exchange: broker.ExchangeSpec{Name: c.Name}})
	return Result{}
}

// owns reports whether c's connection owns exclusive queue q.
func owns(q *queueRec, c Command) bool {
	return q.OwnerNode == c.Node && q.Owner == c.Conn
}

func (m *Metadata) declareQueue(vs *vhostState, c Command, args amqp.Table, index uint64) Result {
	got := broker.QueueSpec{Name: c.Name, Durable: c.Durable, Exclusive: c.Exclusive, AutoDelete: c.AutoDelete, Args: args}
	if q := vs.Queues[c.Name]; q != nil {
		if m.homeDown(q) || m.homeGone(q) {
			// As RabbitMQ: an existing queue whose node is down is absent, before any check.
			return resultOf(errHomeDown(c.VHost, c.Name, q.Home))
		}
		if q.Exclusive && !owns(q, c) {
			return resultOf(broker.ErrLocked(c.VHost, c.Name))
		}
		if err := broker.CheckQueueEquivalent(c.VHost, queueSpec(c.Name, q), got); err != nil {
			return resultOf(err)
		}
		return Result{Epoch: q.Epoch, Home: q.Home}
	}
	q := &queueRec{Durable: c.Durable, Exclusive: c.Exclusive, AutoDelete: c.AutoDelete, Args: c.Args,
		Home: m.home(c, args), Epoch: index}
	if isQuorum(args) {
		q.Home, q.Members = m.placeQuorum(c, args)
		q.Voters = q.Members
	}
	if c.Exclusive {
		q.OwnerNode, q.Owner = c.Node, c.Conn
	}
	vs.Queues[c.Name] = q
	m.apply(broker.TopologyOp{Kind: broker.OpDeclareQueue, VHost: c.VHost, Queue: got, Home: q.Home,
		OwnerNode: q.OwnerNode, Owner: broker.OwnerID(q.Owner), Epoch: q.Epoch, Members: q.Members})
	return Result{Epoch: q.Epoch, Home: q.Home}
}

// home decides a new queue's home node, as RabbitMQ's queue_leader_locator: client-local (the
// default, and always for an exclusive queue) is the node the client declared it on; balanced
// is the member not taken for dead with the fewest queues (the first in name order on a tie),
// or the client's node when every member is taken for dead.
func (m *Metadata) home(c Command, args amqp.Table) string {
	loc, _ := args["x-queue-leader-locator"].(string)
	if _, set := args["x-queue-leader-locator"]; !set {
		loc = c.Locator
	}
	if c.Exclusive || loc != "balanced" || len(m.st.Nodes) == 0 {
		return c.Node
	}
	count := make(map[string]int, len(m.st.Nodes))
	for _, vs := range m.st.VHosts {
		for _, q := range vs.Queues {
			count[q.Home]++
		}
	}
	best := ""
	for _, n := range m.st.Nodes {
		if _, down := slices.BinarySearch(m.st.Down, n); down {
			continue
		}
		if best == "" || count[n] < count[best] {
			best = n
		}
	}
	if best == "" {
		return c.Node
	}
	return best
}

func (m *Metadata) deleteQueue(vs *vhostState, c Command) Result {
	q := vs.Queues[c.Name]
	if q == nil {
		return Result{}
	}
	if c.Epoch != 0 {
		// A removal the home node made by itself (auto-delete, x-expires): only of the
		// incarnation it removed, whoever owned it.
		if q.Epoch != c.Epoch {
			return Result{}
		}
	} else if m.homeDown(q) && !m.homeGone(q) {
		// A queue whose home left the cluster can be deleted (it never comes back), as
		// RabbitMQ's forget_cluster_node deletes them; one whose home is down may.
		return resultOf(errHomeDown(c.VHost, c.Name, q.Home))
	} else if q.Exclusive && !owns(q, c) {
		return resultOf(broker.ErrLocked(c.VHost, c.Name))
	}
	m.removeQueue(vs, c.VHost, c.Name, q)
	return Result{} // Messages: counted by flush from the broker's delete
}

// removeQueue deletes a queue and its bindings (and the auto-delete exchanges left without
// bindings), then tells the broker.
func (m *Metadata) removeQueue(vs *vhostState, vhost, name string, q *queueRec) {
	delete(vs.Queues, name)
	var sources []string
	for b := range vs.bindings {
		if !b.ToExchange && b.Destination == name {
			delete(vs.bindings, b)
			sources = append(sources, b.Source)
		}
	}
	for _, s := range sources {
		vs.maybeAutoDelete(s)
	}
	m.apply(broker.TopologyOp{Kind: broker.OpDeleteQueue, VHost: vhost, Queue: broker.QueueSpec{Name: name}, Epoch: q.Epoch})
}

// dropOwners deletes the exclusive queues of a connection (drop_owner), of every connection of
// a node (node_gone) or of its earlier processes (node_restarted), in name order.
func (m *Metadata) dropOwners(c Command) {
	vhosts := make([]string, 0, len(m.st.VHosts))
	for name := range m.st.VHosts {
		if c.Op != OpDropOwner || name == c.VHost || c.VHost == "" {
			vhosts = append(vhosts, name)
		}
	}
	slices.Sort(vhosts)
	for _, vn := range vhosts {
		vs := m.st.VHosts[vn]
		var names []string
		for name, q := range vs.Queues {
			if q.Exclusive && q.OwnerNode == c.Node && ownerGone(q, c) {
				names = append(names, name)
			}
		}
		slices.Sort(names)
		for _, name := range names {
			m.removeQueue(vs, vn, name, vs.Queues[name])
		}
	}
}

// ownerGone reports whether exclusive queue q of c's node goes with drop_owner, node_gone or
// node_restarted c.
func ownerGone(q *queueRec, c Command) bool {
	switch c.Op {
	case OpNodeGone:
		return true
	case OpNodeRestarted:
		return broker.IncarnationOf(q.Owner) != broker.IncarnationOf(c.Conn)
	}
	return q.Owner == c.Conn
}

// RestartCommand is the node_restarted command a node's process of incarnation inc
// (broker.Incarnation) proposes at start.
func RestartCommand(node string, inc uint64) Command {
	return Command{Op: OpNodeRestarted, Node: node, Conn: inc}
}

// bindingEnds checks a binding's ends as the broker does (destination first, then source).
func (vs *vhostState) bindingEnds(c Command) *amqp.Error {
	if c.ToExchange {
		if vs.Exchanges[c.Destination] == nil {
			return broker.ErrNoExchange(c.VHost, c.Destination)
		}
	} else {
		q := vs.Queues[c.Destination]
		if q == nil {
			return broker.ErrNoQueue(c.VHost, c.Destination)
		}
		if q.Exclusive && !owns(q, c) {
			return broker.ErrLocked(c.VHost, c.Destination)
		}
	}
	if vs.Exchanges[c.Source] == nil {
		return broker.ErrNoExchange(c.VHost, c.Source)
	}
	return nil
}

func keyOf(c Command) bindingKey {
	return bindingKey{Source: c.Source, Destination: c.Destination, ToExchange: c.ToExchange, Key: c.Key, Args: rawArgs(c.Args)}
}

func bindingSpec(c Command, args amqp.Table) broker.BindingSpec {
	return broker.BindingSpec{Source: c.Source, Destination: c.Destination, ToExchange: c.ToExchange, Key: c.Key, Args: args}
}

func (m *Metadata) bind(vs *vhostState, c Command, args amqp.Table) Result {
	if err := m.absent(vs, c); err != nil {
		return resultOf(err)
	}
	if err := vs.bindingEnds(c); err != nil {
		return resultOf(err)
	}
	k := keyOf(c)
	if _, ok := vs.bindings[k]; ok {
		return Result{}
	}
	vs.bindings[k] = struct{}{}
	m.apply(broker.TopologyOp{Kind: broker.OpBind, VHost: c.VHost, Binding: bindingSpec(c, args)})
	return Result{}
}

func (m *Metadata) unbind(vs *vhostState, c Command, args amqp.Table) Result {
	if err := m.absent(vs, c); err != nil {
		// RabbitMQ 3.10 (absent_errs_only): even when there is no such binding.
		return resultOf(err)
	}
	k := keyOf(c)
	_, exists := vs.bindings[k]
	if err := vs.bindingEnds(c); err != nil {
		// As the broker (RabbitMQ 3.10): unbinding what is gone succeeds.
		if err.Code == amqp.NotFound || !exists {
			return Result{}
		}
		return resultOf(err)
	}
	if !exists {
		return Result{}
	}
	delete(vs.bindings, k)
	vs.maybeAutoDelete(c.Source)
	m.apply(broker.TopologyOp{Kind: broker.OpUnbind, VHost: c.VHost, Binding: bindingSpec(c, args)})
	return Result{}
}

func (vs *vhostState) hasBindingsFrom(source string) bool {
	for b := range vs.bindings {
		if b.Source == source {
			return true
		}
	}
	return false
}

// removeExchange deletes an exchange with every binding from or to it, and the auto-delete
// exchanges that leaves without bindings (the broker's removeExchangeLocked, on the state).
func (vs *vhostState) removeExchange(name string) {
	delete(vs.Exchanges, name)
	var sources []string
	for b := range vs.bindings {
		switch {
		case b.Source == name:
			delete(vs.bindings, b)
		case b.ToExchange && b.Destination == name:
			delete(vs.bindings, b)
			sources = append(sources, b.Source)
		}
	}
	for _, s := range sources {
		vs.maybeAutoDelete(s)
	}
}

// maybeAutoDelete deletes an auto-delete exchange that has no bindings left.
func (vs *vhostState) maybeAutoDelete(name string) {
	if x := vs.Exchanges[name]; x != nil && x.AutoDelete && !vs.hasBindingsFrom(name) {
		vs.removeExchange(name)
	}
}

// Snapshot is the whole state, encoded as versioned JSON (bindings sorted, map keys sorted by
// encoding/json): equal states have equal snapshots.
//
// With the worker, it snapshots only once the broker has applied every change decided so far,
// so that a snapshot never runs ahead of the node's own store (a restart from it would not
// replay a delete the broker had not yet made). While the worker is busy it returns
// multiraft.ErrSnapshotLater rather than wait: Snapshot runs on the host's loop, and waiting
// there for a slow delete would stall every group. Snapshot and Apply run on that loop alone,
// so nothing is queued between the check and the encoding.
func (m *Metadata) Snapshot() ([]byte, error) {
	if w := m.worker; w != nil && !w.idle() {
		return nil, multiraft.ErrSnapshotLater
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, vs := range m.st.VHosts {
		vs.Bindings = vs.sortedBindings()
	}
	b, err := json.Marshal(&m.st)
	for _, vs := range m.st.VHosts {
		vs.Bindings = nil
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: encoding the metadata snapshot: %w", err)
	}
	return b, nil
}

func (vs *vhostState) sortedBindings() []bindingKey {
	out := make([]bindingKey, 0, len(vs.bindings))
	for b := range vs.bindings {
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b bindingKey) int {
		return cmp.Or(cmp.Compare(a.Source, b.Source), cmp.Compare(a.Destination, b.Destination),
			cmp.Compare(boolInt(a.ToExchange), boolInt(b.ToExchange)), cmp.Compare(a.Key, b.Key), cmp.Compare(a.Args, b.Args))
	})
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// DecodeSnapshot reads a snapshot, refusing an unknown version and records no command could
// have produced.
func decodeSnapshot(b []byte) (state, error) {
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return state{}, fmt.Errorf("cluster: decoding a metadata snapshot: %w", err)
	}
	if st.V != stateVersion {
		return state{}, fmt.Errorf("cluster: metadata snapshot version %d, this node knows %d", st.V, stateVersion)
	}
	if st.VHosts == nil {
		st.VHosts = map[string]*vhostState{}
	}
	slices.Sort(st.Down) // searched with BinarySearch
	st.Down = slices.Compact(st.Down)
	slices.Sort(st.Gone)
	st.Gone = slices.Compact(st.Gone)
	for name, vs := range st.VHosts {
		if vs == nil {
			return state{}, fmt.Errorf("cluster: metadata snapshot: vhost %q has no state", name)
		}
		if vs.Exchanges == nil {
			vs.Exchanges = map[string]*exchangeRec{}
		}
		if vs.Queues == nil {
			vs.Queues = map[string]*queueRec{}
		}
		for xn, x := range vs.Exchanges {
			if x == nil {
				return state{}, fmt.Errorf("cluster: metadata snapshot: exchange %q has no state", xn)
			}
			if _, err := decodeArgs(x.Args); err != nil {
				return state{}, fmt.Errorf("cluster: metadata snapshot: exchange %q: %w", xn, err)
			}
		}
		for qn, q := range vs.Queues {
			if q == nil {
				return state{}, fmt.Errorf("cluster: metadata snapshot: queue %q has no state", qn)
			}
			if _, err := decodeArgs(q.Args); err != nil {
				return state{}, fmt.Errorf("cluster: metadata snapshot: queue %q: %w", qn, err)
			}
		}
		vs.bindings = make(map[bindingKey]struct{}, len(vs.Bindings))
		for _, b := range vs.Bindings {
			if _, err := decodeArgs([]byte(b.Args)); err != nil {
				return state{}, fmt.Errorf("cluster: metadata snapshot: binding of %q: %w", b.Source, err)
			}
			vs.bindings[b] = struct{}{}
		}
		vs.Bindings = nil
	}
	return st, nil
}

// Restore replaces the state with a snapshot's, and brings the local broker to it: what the
// snapshot lacks is deleted (bindings, then queues, then exchanges), what it adds is declared
// (exchanges, queues, then bindings). The comparison is with the state this machine had, so a
// node that restarts empty and restores a snapshot declares everything.
func (m *Metadata) Restore(b []byte) error {
	st, err := decodeSnapshot(b)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.st
	m.st = st
	m.publishUnreachable()
	m.membersGen++
	names := func(mp map[string]*vhostState) []string {
		out := make([]string, 0, len(mp))
		for n := range mp {
			out = append(out, n)
		}
		slices.Sort(out)
		return out
	}
	empty := &vhostState{Exchanges: map[string]*exchangeRec{}, Queues: map[string]*queueRec{}, bindings: map[bindingKey]struct{}{}}
	for _, vn := range names(old.VHosts) {
		was, now := old.VHosts[vn], st.VHosts[vn]
		if now == nil {
			now = empty
		}
		for _, k := range was.sortedBindings() {
			if _, ok := now.bindings[k]; !ok {
				m.apply(bindingOp(broker.OpUnbind, vn, k))
			}
		}
		for _, qn := range sortedKeys(was.Queues) {
			if q := now.Queues[qn]; q == nil || q.Epoch != was.Queues[qn].Epoch {
				m.apply(broker.TopologyOp{Kind: broker.OpDeleteQueue, VHost: vn, Queue: broker.QueueSpec{Name: qn}})
			}
		}
		for _, xn := range sortedKeys(was.Exchanges) {
			if x := now.Exchanges[xn]; x == nil || exchangeRenewed(was.Exchanges[xn], x) {
				m.apply(broker.TopologyOp{Kind: broker.OpDeleteExchange, VHost: vn, Exchange: broker.ExchangeSpec{Name: xn}})
			}
		}
	}
	for _, vn := range names(st.VHosts) {
		now, was := st.VHosts[vn], old.VHosts[vn]
		if was == nil {
			was = empty
		}
		// Exchanges and queues deleted and declared again (another epoch): the broker lost
		// their bindings with the delete, so those the snapshot has are bound again.
		renewedX, renewedQ := map[string]bool{}, map[string]bool{} // declared again, not new
		for _, xn := range sortedKeys(now.Exchanges) {
			if w := was.Exchanges[xn]; w == nil || exchangeRenewed(w, now.Exchanges[xn]) {
				renewedX[xn] = w != nil
				m.apply(broker.TopologyOp{Kind: broker.OpDeclareExchange, VHost: vn, Exchange: exchangeSpec(xn, now.Exchanges[xn]),
					Home: now.Exchanges[xn].Home})
			}
		}
		for _, qn := range sortedKeys(now.Queues) {
			q := now.Queues[qn]
			if w := was.Queues[qn]; w == nil || w.Epoch != q.Epoch {
				renewedQ[qn] = w != nil
				m.apply(broker.TopologyOp{Kind: broker.OpDeclareQueue, VHost: vn, Queue: queueSpec(qn, q), Home: q.Home,
					OwnerNode: q.OwnerNode, Owner: broker.OwnerID(q.Owner), Epoch: q.Epoch, Members: q.Members})
			} else if !slices.Equal(w.Members, q.Members) || w.Home != q.Home {
				// A rehome (the home went down inside the gap) changes the home alone: the
				// nodes that are not replicas must follow it too.
				m.apply(broker.TopologyOp{Kind: broker.OpQuorumMembers, VHost: vn, Queue: broker.QueueSpec{Name: qn}, Home: q.Home,
					Epoch: q.Epoch, Members: q.Members})
			}
		}
		for _, k := range now.sortedBindings() {
			destRenewed := renewedQ[k.Destination]
			if k.ToExchange {
				destRenewed = renewedX[k.Destination]
			}
			if _, ok := was.bindings[k]; !ok || renewedX[k.Source] || destRenewed {
				m.apply(bindingOp(broker.OpBind, vn, k))
			}
		}
	}
	m.flush(Result{})
	return nil
}

// rehomeExchanges moves the delayed exchanges homed on node, which left the cluster, to the
// first member (in st.Nodes' order) neither down nor gone, the same on every node: without it
// their delayed publishes would be forwarded to a node that never comes back. The messages
// node held are lost with it. The broker deletes the exchange and declares it with its new
// home (at index, its new epoch), then binds it again. With no such member they stay.
func (m *Metadata) rehomeExchanges(node string, index uint64) {
	i := slices.IndexFunc(m.st.Nodes, func(n string) bool { return n != node && !m.isDownOrGone(n) })
	if i < 0 {
		return
	}
	home := m.st.Nodes[i]
	for _, vn := range sortedKeys(m.st.VHosts) {
		vs := m.st.VHosts[vn]
		for _, xn := range sortedKeys(vs.Exchanges) {
			x := vs.Exchanges[xn]
			if x.Home != node {
				continue
			}
			x.Home, x.Epoch = home, index
			m.log.Warn("cluster: delayed exchange moved to another node, its home left the cluster (messages it held are lost)",
				"vhost", vn, "exchange", xn, "old_home", node, "home", home)
			m.apply(broker.TopologyOp{Kind: broker.OpDeleteExchange, VHost: vn, Exchange: broker.ExchangeSpec{Name: xn}})
			m.apply(broker.TopologyOp{Kind: broker.OpDeclareExchange, VHost: vn, Exchange: exchangeSpec(xn, x), Home: home})
			for _, k := range vs.sortedBindings() {
				if k.Source == xn || (k.ToExchange && k.Destination == xn) {
					m.apply(bindingOp(broker.OpBind, vn, k))
				}
			}
		}
	}
}

// exchangeRenewed reports whether x, in a snapshot, is another exchange than w of the same
// name, which this node had: deleted and declared again meanwhile (another epoch; 0 is a
// snapshot of an earlier version, which did not record it), or moved to another home.
func exchangeRenewed(w, x *exchangeRec) bool {
	return w.Home != x.Home || w.Type != x.Type || (w.Epoch != 0 && x.Epoch != 0 && w.Epoch != x.Epoch)
}

func sortedKeys[V any](mp map[string]V) []string {
	out := make([]string, 0, len(mp))
	for k := range mp {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// bindingOp is the broker's bind or unbind (kind) of the binding k of vhost vn. k's
// arguments were encoded by the log, which refused undecodable ones.
func bindingOp(kind broker.TopologyKind, vn string, k bindingKey) broker.TopologyOp {
	args, _ := decodeArgs([]byte(k.Args))
	return broker.TopologyOp{Kind: kind, VHost: vn, Binding: broker.BindingSpec{Source: k.Source, Destination: k.Destination,
		ToExchange: k.ToExchange, Key: k.Key, Args: args}}
}
