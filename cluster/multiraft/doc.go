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
// thousands of quorum queues would cost thousands of goroutine sets and connections; it also
// has no multi-group batching of fsyncs. Measured here with etcd raft (TestManyGroupsIdleCost,
// 2 shared cores, 100 ms tick): 1,000 groups on 3 in-process hosts elect leaders in 2-6 s;
// idle, they quiesce (below) and cost 2.2% of one core for the three hosts together (1.9%
// with one group: badger and the loops), no Raft message, 60 node heartbeats/s and 83-100 MB
// RSS; before quiescing they idled at 21-25% and 103-115 MB with 35,000-37,000 heartbeat
// messages/s. A killed leader is replaced and a proposal applied within 0.8-1.4 s, quiesced
// or not (TestLeaderFailover, TestQuiescedLeaderFailover). Nothing in this package decides
// elections or membership: it drives raft.RawNode.
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
// A quorum queue lives on some nodes only: Host.GroupWith bootstraps a group with the
// voters GroupOptions names; the other nodes never start it, and its leader sends them
// nothing. Its members change one at a time through Group.AddMember and RemoveMember
// (conf changes proposed from any member, forwarded to the leader like proposals, proposed
// again until applied), never through SetPeers. A replica being added starts the group with
// GroupOptions.Join and waits for the leader, which sends it a snapshot and the log's tail
// when the log it would need is compacted.
//
// # Wiped nodes
//
// A node back with an empty data directory (Config.Join) keeps its Raft ID but lost its log
// and votes: its groups grant no vote until a leader has given the log back, and a leader
// sends such a follower a snapshot, since raft never resends below its old match index
// (lostlog.go has the details).
//
// # Deletion
//
// Host.DeleteGroup detaches a group from the loop (between two rounds, so no Ready of it is
// in flight; proposals waiting get ErrClosed), writes a synced tombstone, and then deletes
// its entries, hard state and snapshot in transactions of at most 1,024 keys from the
// caller's goroutine: the loop goes on meanwhile. Groups are created only by Group and
// GroupWith, never by a message, so a late message from a peer still running the group is
// dropped like any message for a group this node does not run. The tombstone makes the
// deletion survive a crash (the host drops the tombstoned groups' keys at start, one after
// the other in one goroutine); it is cleared once the keys are dropped, and creating the id
// again waits for the drop. A host whose log write failed (its loop stopped) answers
// DeleteGroup with ErrStopped.
//
// # Quiescing
//
// An idle group still costs its leader a heartbeat to every follower per heartbeat tick and
// every replica a tick: 1,000 idle groups on 3 nodes made 35,000-40,000 messages/s. So, as
// CockroachDB does, a group whose leader has everything committed and applied and whose
// followers on live nodes all have its last entry stops ticking: the leader sends them a
// quiesce heartbeat (a MsgHeartbeat whose frame has quiesceFlag set in the group field,
// carrying the commit index) and no longer ticks; a follower steps it like a heartbeat and
// stops ticking if it then follows that leader, in that term, at that commit index. A
// proposal, a conf change, or any message other than a heartbeat's answer wakes a group.
// Liveness is per node pair, not per group: a connection silent for a tick carries an empty
// frame, and a peer is live while connected and heard from within ElectionTicks/2 ticks. When
// a peer dies, comes back or reconnects, quiesced leaders with a member there wake (and with
// CheckQuorum step down if they lost their majority: a leader cut off sees every peer die),
// and quiesced followers whose leader is there wake, send the leader a wake-up call and
// campaign after the usual election timeout if no heartbeat comes. PreVote keeps a follower
// that woke for nothing (a late node heartbeat on a busy machine) from disrupting: the
// others are in their leader's lease. They stay in it because a quiesced follower woken by a
// message from another node than its leader (a pre-vote from a node cut off from the leader
// alone) also sends the leader a wake-up call, whose heartbeats then resume; otherwise that
// follower would fall out of the lease and vote the cut-off node in beside the quiesced old
// leader. quiesce.go has the details.
//
// # Log compaction
//
// A group snapshots its state machine after SnapshotEvery entries or SnapshotBytes of
// commands (Config, or per group in GroupOptions) and compacts its log up to the previous
// snapshot, keeping one interval for followers slightly behind: a queue's log holds at most
// two intervals plus its state, whatever its history. The Raft log's values above 1 KiB live
// in badger's value log, which persistence.RaftLog collects every minute (RunGC).
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
