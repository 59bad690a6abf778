// Package cluster makes several Warren nodes one broker: it replicates the runtime topology of
// every vhost (exchanges, queues with their home node, bindings, exclusive-queue ownership,
// auto-delete) through a Raft log, so that every node routes with the same tables.
//
// # Consensus
//
// The log is Raft from an existing library, never Warren's own: go.etcd.io/raft/v3, the engine
// under etcd, CockroachDB and Dgraph. It leaves storage and transport to the application and
// runs many groups over one transport and one log (multi-Raft), which the next step - quorum
// queues, one Raft group per queue - needs; hashicorp/raft runs one group per instance, with a
// transport and a store of its own. The engine lives in package cluster/multiraft. The
// metadata code depends only on the small Log interface, which a multiraft group satisfies:
// Propose waits until the command is applied locally and returns what the state machine's
// Apply returned. Node (StartNode) is the wiring: the multiraft host, the metadata group
// (multiraft.MetadataGroup) and the status group (StatusGroup, each node's NodeStatus for
// ConfigCheck and the status APIs), and the broker's replicator.
//
// # What is replicated, and what is not
//
// Metadata is the state machine of the metadata group. Every topology change is a Command
// (versioned JSON, DecodeCommand); Apply decides it from the replicated state alone - exists,
// equivalent or 406, exclusive to another connection (405), missing (404), which node is a
// new queue's home (x-queue-leader-locator: client-local, the default, or balanced) - so every
// node reaches the same verdict, then hands the accepted change to the local broker
// (Applier, implemented by *broker.Broker). Snapshot and Restore carry the whole state.
//
// Access control (users, vhosts, permissions) and policies are not replicated: each node reads
// them from its own config.yaml, and nodes compare a digest of those sections (ConfigDigest)
// to report a node whose file differs.
//
// Messages are not replicated here: a queue lives on its home node; other nodes route to it
// through a remote entry (see broker.Queue.Home).
//
// # The data link
//
// Any node serves any client: Link (link.go) connects this node to the AMQP listeners of the
// others (amqp091-go as the client, the WARREN-LINK login of LinkAuth), forwards to each home
// node the messages routed to its queues (broker.Forwarder) and proxies consumers, basic.get,
// acks and counts of queues homed elsewhere (broker.Proxy). Node starts it (link_node.go);
// each node's AMQP address reaches the others in its NodeStatus.
//
// # Security
//
// Every inter-node connection proves knowledge of cluster.secret without sending it, bound to
// cluster.name, and cluster.tls (mutual TLS, LoadTLS: one CA signs every node's certificate)
// wraps all of them when set. The Raft transport authenticates its own handshake (multiraft).
// The data link logs in with WARREN-LINK, a mutual challenge-response over AMQP's
// connection.secure (LinkAuth): start-ok names the node and carries its nonce, the server sends
// 32 fresh random bytes, secure-ok answers with an HMAC-SHA256 of (cluster, role, both nonces,
// client node, server node) keyed with the cluster name and secret, and only then does the
// server prove the same in a second connection.secure, which the client checks before it
// sends anything else: a node that does not know the secret gets neither a login nor a
// forwarded message. A captured login cannot be replayed: every connection has new nonces.
//
// With cluster.tls the link runs over mutual TLS with the same certificates as the Raft
// transport, on the AMQP listener itself: the server tells a TLS ClientHello (first byte 0x16,
// peeked with MSG_PEEK so plain clients keep the raw-socket path) from an AMQP client ("AMQP")
// and wraps the former with cluster.tls, which requires a client certificate of the cluster's
// CA; only a connection accepted that way is offered WARREN-LINK, so a link cannot be
// downgraded to plain TCP. Dialling the amqps listener instead would tie the link to the
// client-facing certificates, CA and peer-verification settings (tls.*), which may differ from
// the cluster's or be absent, and a port of its own would need another key and another address
// in NodeStatus; the AMQP listener is already the address every node publishes. A relay of a
// whole login by a man in the middle is what TLS rules out: without cluster.tls, run the
// cluster on a private network.
package cluster
