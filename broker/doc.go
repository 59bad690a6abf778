// Package broker is Warren's core: the vhosts with their exchanges, queues and bindings,
// routing, the publish pipeline, dead-lettering, policies, restoring durable state at start-up,
// paging queues through the store, and every promise the store relies on.
//
// Front ends drive it. The AMQP server (package server) is one; the management API is another,
// and a cluster peer will be a third. None of them needs a connection to do what a channel does:
// declare, bind, publish (Publisher, Txn), consume (Consume with a Consumer sink), get, ack
// (Queue.Settle), purge and delete all take an Actor - who acts, as an owner id for exclusive
// queues and an Authorizer for permissions - and answer with RabbitMQ's *amqp.Error.
//
// # Promises made to persistence
//
//   - Sequence numbers are fresh: a queue's restart continues after its stored entries, and a
//     durable queue declared again after a delete waits (VHost.deleting) until the store has
//     dropped the old entries, which share the new queue's first sequence numbers.
//     persistence.Publish.NewEntries relies on it.
//   - An entry's SoleRef flag (Entry.SharedOnDisk false) is right: set at publish when the
//     message went to one durable queue, read back from the index otherwise.
//   - A publish is submitted before its entries become visible (prepare, then push), so an ack
//     can never reach the journal before the publish it removes.
//   - Nothing is journalled for a deleted queue (its entries go with store.DeleteQueue): acks,
//     rejects and page drops of a deleted queue write nothing, or they would delete the entries
//     of a queue declared again under the name.
//
// # Goroutines
//
// The core starts goroutines only for stream and quorum queues (below). Otherwise its code runs on the
// goroutines of its callers and of the timers and store it uses:
//
//   - per AMQP connection (package server): one reader goroutine that runs the handshake, reads
//     frames and runs every method of every channel of the connection, publishes included; and
//     one writer goroutine while there is something to write. Output to a connection that has
//     been idle (a delivery to a consumer receiving a trickle) is written by the goroutine that
//     produced it, with one non-blocking write(2); the writer goroutine takes what that write
//     leaves. Heartbeats are a timer. Channels have no goroutine of their own.
//   - per queue: none. TTL expiry and delayed redelivery run on a time.AfterFunc timer of the
//     queue (package queue), x-expires on a timer of the vhost.
//   - delayed messages (delayed.go): one time.AfterFunc timer for the broker routes them when
//     due; a read ahead of the stored ones (at most one at a time) and the drop of a deleted
//     delayed exchange's stored messages each run on a goroutine of their own. The copies of
//     due messages for queues of other nodes are forwarded, confirmed and retried until
//     accepted, by one goroutine (delayer.forwardDue), started when the timer queues one and
//     ending when none is left.
//   - the store (package persistence): one journal goroutine that commits every write in
//     groups, one reader goroutine for read-aheads (a paged queue's pagedIn callback, and the
//     pushes and dead-letterings it causes, run there), value-log GC and trim loops.
//   - per quorum queue (quorum.go, package cluster's group): a proposer goroutine that
//     batches the node's commands into Raft proposals, a deliverer that pushes what the log
//     assigned to this node into its local queue, and with at-least-once dead-lettering the
//     leader's worker (quorum_dlx.go), which starts one goroutine per republished message that
//     waits for its confirms.
//   - per stream queue (stream.go): the log's writer goroutine (package stream; publishers'
//     confirms run there), a max-age timer, and one goroutine per consumer that reads the log
//     and calls Consumer.Deliver with no broker lock held, waiting for credit (Settle kicks it)
//     or for new records.
//   - a cluster member (package cluster, forward.go): the metadata log's apply worker, which
//     calls ApplyTopology and then TopologyApplied, one log entry at a time. The data link
//     (cluster/link.go) runs, per (peer node, vhost), one sender goroutine that publishes the
//     forwards in order and one goroutine reading that channel's confirms (a forward's done
//     runs there); per proxied consumer one relay goroutine that calls Consumer.Deliver with
//     no link lock held; per link connection amqp091-go's reader and heartbeater and the
//     coalescing writer's flusher. Forwards nobody confirms (dead-lettering) are handed to the
//     link by one goroutine of the broker (bgForwards), started when one is queued and ending
//     when none is left; the delayed exchange's, confirmed, by the delayer's (above). On the
//     home node, a forwarded message is enqueued on the link connection's reader
//     (DeliverForwarded), which may wait up to forwardTopologyWait for the metadata log (with
//     no lock held).
//
// Deliveries (Consumer.Deliver) run on whichever goroutine made messages deliverable: a
// publisher's reader, a consumer's reader acking (credit), a writer that drained (kick), a queue
// timer, the store's reader, a proxied consumer's relay.
//
// # Lock order
//
// A lock may be taken while holding only locks listed above it:
//
//	cluster.Metadata.mu held by the replicated log's apply goroutine while the broker applies
//	                   a topology change (ApplyTopology); the broker never calls into the
//	                   cluster under its own locks (Replicate runs with none held)
//	Broker.vhMu        the vhost table (read: VHost; write: SetVHosts)
//	Broker.closeMu     read-held by a classic queue's basic.get from its closing check to its
//	                   journal submit (consume.go); Close write-holds it alone, to set closing
//	VHost.mu           exchanges, queues, bindings, policies, queue ownership and consumer
//	                   counts, deleting, opening, unapplied
//	delayer.mu         the held messages of x-delayed-message exchanges in memory (delayed.go);
//	                   under it only store submissions
//	quorumQueue.dmu    a quorum queue's pushes to its local queue against its last consumer
//	                   leaving (quorum.go); taken with no broker lock held
//	queue.Queue.mu     one queue's messages and consumers (package queue)
//	channel.mu         a channel's consumers, unacked deliveries and prefetch (package server;
//	                   taken by Consumer.Deliver under queue.Queue.mu)
//	confirmTracker.mu  a channel's publisher confirms (package server)
//	writer.mu          a connection's output buffer (package server). Not held during a
//	                   write; a non-blocking write(2) of an idle connection may be made
//	                   under the locks above it (Consumer.Deliver), never one that waits.
//	persistence        the journal's queue (Store.Submit): a leaf, taken under any of the above
//	streamQueue.applyMu serialises setRetention (stream.go): taken before streamQueue.mu,
//	                   never under VHost.mu, held across the log's file removal
//	streamQueue.mu     a stream queue's consumer set (stream.go); never under VHost.mu; Gone
//	                   takes channel.mu under it. The log's own locks (package stream) are
//	                   leaves.
//	quorumQueue.mu     a quorum queue's pending proposals (quorum.go): a leaf, taken under
//	                   queue.Queue.mu and channel.mu (Queue.Delivered from Consumer.Deliver)
//	quorumQueue.emu    a quorum queue's events for its deliverer: a leaf, taken by the Raft
//	                   loop's hooks and the deliverer
//	quorumDLX.mu       a quorum queue's at-least-once dead-letter window (quorum_dlx.go): a
//	                   leaf, taken by its worker and by the confirm callbacks of its publishes
//	                   (journal, link reader, quorum proposer); nothing is submitted under it.
//	                   quorum's dlxState.mu (the discards' head) is a leaf of package quorum
//
// The AMQP front end's own tables sit beside this chain, never around a call into the core:
//
//	Server.mu          the connection table and the limits' counts (package server). A
//	                   cluster's link connections are in the table (a deleted vhost closes
//	                   them) but count against no limit and are not listed.
//	conn.chMu          one connection's channel table; under it, channel.mu (listings)
//
// The cluster's data link (package cluster) has its own locks, never held around a call into
// the core, and the core's are never held around a call into the link (Forwarder.Forward,
// the Proxy's calls and a proxied consumer's Deliver run with none of the list above held):
//
//	Link.mu              the peer table (cluster/link.go); a leaf
//	peer.mu              a peer's two connections; held while dialling one (bounded by the
//	                     link's timeout), so under it the new connection's own locks
//	linkChan.callMu      one request of a proxied channel at a time (cluster/linkcons.go); held
//	                     while its answer is awaited (bounded by the link's timeout), never by
//	                     the read loop
//	linkChan.mu          orders a proxied channel's settlements before its close; held while
//	                     writing a frame, so under it proxyConn.wmu and proxyConn.dirtyMu
//	proxyConn.mu         a proxy connection's channel table; a leaf
//	proxyConn.wmu        the frame being encoded; under it linkWriter.mu
//	pubConn.wmu          the forwarding connection's buffer (cluster/linkpub.go); held across
//	                     its socket write, which waits while the home does not read: a leaf,
//	                     taken by the link's own goroutines, never by a client's
//	linkWriter.mu        a link socket's output buffer (cluster/linkwriter.go); a leaf, never
//	                     held across a write that waits (a writer goroutine drains it)
//	proxyConn.dirtyMu    no-ack consumers with acks pending; a leaf
//	peer.waitMu          the barrier waiters of a peer; a leaf
//	pending.mu           the unconfirmed forwards of a link channel; a leaf
//
// Two of the core's are leaves used only by the cluster's paths: topoProgress.mu (the applied
// metadata index, forward.go) and bgForwards.mu (the forwards nobody waits for, forward.go).
//
// What may run under which lock:
//
//   - Under VHost.mu: map and router changes, queue.Queue calls that do not deliver (Counts,
//     Options, New), and store *submissions* (Submit, the *Async topology writes), which fix
//     the journal order. Never a wait for the store: a durable declare, bind, unbind or delete
//     submits under the lock and waits for the sync after releasing it, so one durable declare
//     never stalls the routing of every publisher of the vhost. Never a delivery: a consumer is
//     added to its queue (which delivers) after VHost.mu is released. Never a file created or
//     synced either: a new stream queue's name is reserved under the lock (VHost.opening), its
//     log's files are created and synced without it, and the queue is registered under it
//     again; a declare of the same name waits for the reservation, then finds the stream (or,
//     when the open failed, declares it itself). A policy change that shortens a stream's
//     retention removes its segments after VHost.mu is released too.
//   - Under queue.Queue.mu: the queue's own state and Consumer.Deliver; hooks (Dropped, and
//     so dead-lettering, which takes VHost.mu) are emitted after the lock is released.
//   - Waiting for the store (Txn.Commit, Store.Commit, DeleteQueue, AwaitRoom, flow control's
//     AwaitDrain) happens with no lock of this list held.
package broker
