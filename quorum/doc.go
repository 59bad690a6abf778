// Package quorum is the replicated state machine of a quorum queue: the queue's messages and
// who holds which of them, applied identically on every replica of the queue's Raft group
// (one multiraft group per queue, package cluster/multiraft).
//
// # Design
//
// It follows Ra's rabbit_fifo, the engine of RabbitMQ's own quorum queues, with one change
// of grain: a checkout belongs to a cluster node, not to a consumer. Every command is a log
// entry, decided from the replicated state alone:
//
//   - Enqueue appends messages (their raw content header and body); x-max-length and
//     x-max-length-bytes refuse (reject-publish) or drop from the head (drop-head).
//   - Checkout sets how many messages a node may hold unsettled (its credit). Apply assigns
//     ready messages to nodes with free credit, round-robin in a deterministic order, and
//     records the assignment; the node that holds a message delivers it to its own
//     consumers from its own replica's copy, through an ordinary local queue.Queue. So
//     consumers on any node need no proxy, and publishes on any node are just proposals.
//   - Settle removes settled messages (ack). Return puts messages back at the head, counting
//     a delivery (x-delivery-count) when the message had reached a client; a message returned
//     more than x-delivery-limit times is dropped (and, by the broker, dead-lettered).
//     Discard removes rejected messages, returned to the proposer for dead-lettering.
//   - Get takes the head for basic.get; NodeDown returns everything a node held and zeroes
//     its credit; only the messages that reached a client (Delivered marks them) count a
//     delivery. The leader proposes it for a node that stopped reporting, a restarted node
//     for its previous process, and a node whose state was restored from a snapshot for
//     itself (its view of what it holds is stale).
//   - Delivered marks messages a node handed to a client. A mark applied after a NodeDown
//     took the message back uncounted counts that delivery then (as rabbit_fifo counts every
//     message a down node's consumers had checked out).
//   - Count raises the delivery count of messages a node requeued in its own local queue (a
//     single-active-consumer queue keeps a closing channel's deliveries there, in order, for
//     the node's next consumer).
//   - Purge drops the ready messages.
//
// The grain is the node rather than the consumer because the broker's front ends already
// dispatch among consumers of a local queue (prefetch, priorities, single active consumer,
// requeue on channel close): a node's checkout feeds that local queue, which needs no change.
// The price: a node's credit is a window (broker/quorum.go), so messages assigned to a node
// wait there while another node's consumer may be idle, and a message a client had from a
// node that dies counts one delivery even if the client processed it.
//
// # Determinism
//
// Apply reads nothing but the state and the command: no clock, no randomness, no map
// iteration order (nodes are kept sorted). Its results (refused publishes, dropped messages
// to dead-letter, a basic.get's message) go to the proposer, which acts on them once: a
// dead-lettering is at most once.
//
// # Goroutines
//
// Apply, Snapshot and Restore run on the multiraft host's loop goroutine, one at a time. The
// hooks (Assigned, Revoked, Applied, Restored) are called there too and must only hand work
// to another goroutine. Counts is safe from any goroutine (atomics).
package quorum
