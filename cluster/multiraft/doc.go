// Package multiraft hosts many Raft groups on one node: the consensus foundation of Warren's
// cluster (group 1: the replicated metadata) and, later, of quorum queues (one group per
// queue).
//
// # Why etcd raft
//
// The engine is go.etcd.io/raft/v3 (v3.7.0), the library under etcd, CockroachDB and Dgraph.
// It implements elections, log replication, snapshots and membership changes (joint
// consensus included) as a pure state machine, and leaves storage, transport and the clock to
// the application. That is what multi-Raft needs: one node here runs one transport (one TCP
// connection per pair of nodes carrying every group's messages), one log store (one badger
// database, one fsync per round of all groups' writes) and one ticker for all its groups.
// github.com/hashicorp/raft, the other candidate, owns its transport, log store and timers:
// each group runs its own run, FSM and snapshot goroutines plus a replicate and a heartbeat
// goroutine per follower (its replication.go), and its own transport connections, so
// thousands of quorum queues would cost thousands of goroutine sets and connections; it also has no multi-group batching of fsyncs. Measured
// here with etcd raft (TestManyGroupsIdleCost, 2 shared cores, 100 ms tick): 1,000 groups on
// 3 in-process hosts elect leaders in 2-3 s and then idle at 21-26% of one core and
// about 100 MB RSS for the three hosts together (40,000 heartbeat messages/s, carried in one frame
// per peer pair and round, no fsync); a killed leader is replaced and a proposal applied
// within 0.9-1.5 s (TestLeaderFailover). NOTES-raft.md in the repository root has the rest.
// Nothing in this package decides elections or membership: it drives raft.RawNode.
//
// # Goroutines
//
// Host.run is the only goroutine that calls Ready, Advance, Tick, and the state machines
// (Apply, Snapshot, Restore), so a StateMachine needs no locking against itself. Each round
// it collects the Ready of every group with work, saves all their entries and hard states
// with one persistence.RaftLog.Save (one sync), then sends their messages (never before
// they are on disk), applies committed entries and advances. Transport readers Step groups
// and callers Propose from their own goroutines, under the group's mutex, which guards only
// the RawNode. A slow Apply delays every group of the node: state machines must be quick.
//
// # Node IDs
//
// A node's Raft ID is NodeID(name): the first 8 bytes of SHA-256 of its name. IDs are never
// stored or agreed on; colliding names are refused.
//
// # Membership
//
// Host.Group bootstraps a group with no local state with the current peers (sorted by ID, so
// that every member writes identical bootstrap entries) unless Config.Join is set. SetPeers
// changes the member set: every tick round (ElectionTicks ticks) each group's leader
// proposes one conf change towards it, additions before removals.
//
// # Proposals
//
// Propose prefixes the command with a header (proposer ID, process incarnation, request
// number, watermark); the entry is applied on every member, and on the proposer the state
// machine's result is handed to the waiting call. A follower's proposal is forwarded to the
// leader by raft itself (MsgProp). The proposer notes at which index its entries land
// (Ready.Entries). A proposal overwritten in a leader change (another entry written or
// applied at its index), or not in the local log when a new leader is elected (a MsgProp that
// died with its leader) or two election timeouts after it was sent (lost on the wire or
// dropped by a deposed leader), is sent again. Copies are
// harmless: every member keeps, per proposer incarnation, the requests applied at or above
// the proposer's watermark (its lowest request still waiting), built only from the log and
// carried in snapshots ahead of the state machine's data, and skips a request it has
// applied or that is below the watermark. So a command applies at most once, and once the
// proposer has moved past a request it has given up on, never.
package multiraft
