// Package persistence is Warren's durable store: durable exchanges, queues and bindings,
// persistent messages with one index entry per durable queue holding them, and the
// transient pages of queues whose backlog does not fit their in-memory window, in a single
// badger database. It is the only package that imports badger.
//
// # Key layout
//
// Strings inside keys are written as uvarint(len) followed by the bytes, which makes
// composite keys prefix-free: the prefix of queue "a" never matches queue "ab".
//
//	0x00 'f'                                  -> format version (uint32 BE)
//	0x00 'h'                                  -> message-id high-water mark (uint64 BE)
//	0x00 'r'                                  -> empty: the store is open (deleted by a clean Close)
//	0x00 'u'                                  -> highest message id stored before an unclean stop (uint64 BE)
//	'x' str(vhost) str(name)                  -> str(kind) flags(1) bytes(args)
//	'q' str(vhost) str(name)                  -> flags(1) bytes(args)
//	'b' str(vhost) str(source) str(dest) toExchange(1) str(key) bytes(args) -> empty
//	'm' id(8 BE)                              -> version(1) str(exchange) str(routing key) bytes(header) body
//	'r' id(8 BE)                              -> refcount(4 BE), only for messages in several queues
//	'i' str(vhost) str(queue) seq(8 BE)       -> msgID(8) deliveries(4) expiresAt(8) bodySize(4) flags(1)
//	'p' str(vhost) str(queue)                 -> spans still to purge (empty: all)
//	't' space(8 BE) seq(8 BE)                 -> flags(1) expiresAt(8) msgID(8) message: a transient page
//	'w' due(8 BE) seq(8 BE) incarnation(8 BE) -> str(vhost) str(exchange) str(routing key) bytes(header)
//	                                             bytes(body), zero-padded to valueThreshold: a held message
//	'X' str(vhost) str(name)                  -> incarnation(8 BE): a durable delayed exchange
//
// A binding's whole identity is its key, so Args must be encoded deterministically.
// Index keys sort by queue and then sequence number, so reading a queue in order is one
// prefix scan, and its entries carry what a queue needs to count and expire them without
// reading the messages (size, expiry). Held messages of x-delayed-message exchanges sort by
// due time; see delayed.go.
//
// # Memory
//
// Nothing is held in memory per stored message, so a backlog is bounded by disk, not RAM.
// A message is stored once however many queues hold it. A message routed to one queue has
// no reference count: its index entry is its only reference, and removing the entry
// deletes it. A message routed to several queues gets a refcount record, and its entries
// the shared flag; removing such an entry decrements the record (the journal is the only
// writer, so the read-modify-write needs no lock) and the message goes with the last one.
// Open verifies the store in streaming scans: every message is read (value-log
// checksums) and decoded, and the references messages claim (refcount or 1) must add up to
// the number of index entries. Only when they do not - never after atomic commits, but
// possible after damage or a bug - or to migrate a format 1 store (which kept refcounts
// in memory) does Open rebuild the refcounts from a map over the whole index; an index
// entry pointing at a missing message then fails Open.
// Messages from 256 bytes up live in badger's value log, smaller ones in the LSM tree, so the
// tree - whose memtable flushes and compactions run in memory - moves only keys, pointers and
// index entries. badger reads through mmap; a trimmer reclaims the store's mapped pages
// (MADV_PAGEOUT) whenever they hold more than 64 MB of the resident set.
//
// # Paging
//
// A queue keeps only a window of its messages in memory (package queue decides which).
// Durable entries beyond the window are already on disk and are not written again; a
// transient message beyond it is written as a page into the queue's page space
// (NewPageSpace). Pages go through the journal like everything else (they are synced only
// because the transaction is), and are wiped when the store opens. ReadAhead reads a
// queue's next entries, index and pages merged in sequence order, on a reader goroutine,
// after a barrier through the journal so that it sees every write submitted before it;
// pages it returns are deleted.
//
// # Group commit
//
// Every write - message batches and topology changes alike - goes through one journal
// goroutine. Submit appends to a pending list; the journal takes everything pending,
// applies it to one badger transaction, commits it with a sync (SyncWrites), and then
// calls each done callback in submission order. While a commit and its fsync are in
// progress, new batches accumulate, so the group size grows with load and the sync cost
// is shared: throughput comes from batch size, not from skipping the sync. Because one
// goroutine writes, each transaction's reads (is this entry still there? what is this
// refcount?) see all earlier commits.
//
// The journal first decides which requests share a transaction, then applies them. Index
// entries that the group both publishes (or marks delivered) and removes - a consumer acking
// a message before its publish is committed, which is the common case when consumers keep
// up - are not written at all, and a message none of whose entries survives is never
// stored; the message-id high-water mark is written only with a stored message. Such a group
// commits nothing and needs no sync, yet its confirms are exact: the messages were consumed.
//
// Reading the index costs more than writing it (a lookup through every level of the tree),
// so the hot paths write blind: the server promises that published entries are new
// (Publish.NewEntries: sequence numbers are never reused) and that an acked entry is its
// message's only reference when the message went to one durable queue (Entry.SoleRef), and
// the store then deletes entry and message without reading them. Delivery marks and acks
// that nobody waits for (lazy requests) wait up to Options.LazyDelay (10 ms) for other requests
// before they are committed, so that a message's ack usually meets its delivery mark in one
// group and the mark is never written; any other request commits them at once, in order.
//
// A Batch is atomic. If adding a Batch makes the transaction too big, the transaction is
// rebuilt without it and committed, and that Batch starts the next one; a single Batch
// that is too big on its own fails alone. If a commit fails, the store turns read-only
// (every later write fails) since memory and disk may then disagree; reopening recovers
// from disk. A group refused for lack of disk space (below) is the exception: it is
// refused before anything is written, and later groups commit once space returns.
//
// Purging a queue (Batch.Purges, DeleteQueue) writes a purge marker with the spans to purge
// atomically with the rest of its transaction, ends the group there, and the journal then
// deletes the queue's entries in bounded transactions before doing anything else; done is
// called after that. Open completes a purge interrupted by a crash before anything can
// read the queue. Page drops are drained the same way, without a marker.
//
// # Disk space
//
// badger writes its memtable logs and value logs through writable maps of sparse files,
// and a write fault on a full file system is a SIGBUS that kills the process. Before each
// group the journal reserves (fallocate) what the group can write through a map - the value
// log up to ValueLogFileSize plus the group's bytes, the memtable log, and the next memtable
// log, created ahead of badger - and refuses groups that add messages while less than five
// memtables' worth is free (for badger's flushes and compactions, which it cannot reserve).
// A refused group fails with ErrDiskFull (and syscall.ENOSPC) and writes nothing; groups
// of acks and delivery marks still commit while their logs can be reserved, and value-log
// GC still runs while half a value-log file and a memtable fit. WriteError reports the refusal until a group commits again; DiskReserve is
// the space the store may still claim, which a disk alarm must keep free. See reserve.go.
//
// # Maintenance
//
// Value-log GC runs every GCInterval and after every 10,000 message deletions. It can only
// reclaim what compaction has found dead, and an idle tree does not compact, so after many
// deletions with few messages left (a drained backlog), or when Open finds the value log far
// larger than its messages, the GC timer also flushes the memtables (on the journal
// goroutine: badger fails writes that race with it) and compacts the whole tree; then GC
// deletes the dead value-log files. Close commits everything submitted, and badger's Close
// flushes the memtables.
//
// # Integrity
//
// Open refuses to start empty or partial on a damaged directory: a non-empty directory
// without MANIFEST, a MANIFEST with a partial or bad record (badger would silently
// truncate it and drop the tables it no longer lists), a missing table, table checksum
// failures, missing store metadata, unreadable messages, or index entries pointing at
// missing messages all fail Open with an error naming the directory. Unreferenced messages
// are deleted. Damage to the newest part of badger's write-ahead log (.mem) cannot be
// told apart from a torn write and is truncated by badger.
//
// # Unclean stops
//
// Delivery marks are submitted after the delivery and without waiting (a broker must not
// put a disk sync between a message and its consumer), so a process killed between the two
// loses the mark, and the message would come back as never delivered. Open therefore writes
// a running key (synced, like every commit) that a clean Close deletes after the journal
// has committed everything; Close keeps it when a write was refused or failed. An Open that
// finds the key records the message-id high-water mark as the recovered mark: every
// message with an id up to it may have been delivered, and its entries are read back with
// Stored.MaybeDelivered, now and after any later restart (a clean stop does not bring the
// lost marks back). New messages get larger ids, so after a clean stop the marks alone
// decide, as before. Qpid's broker (Red Hat MRG) flags every recovered persistent message
// redelivered after any restart; this is the same rule, narrowed to the restarts that can
// have lost marks. Nothing is rewritten at Open, whatever the backlog.
//
// # Raft log
//
// RaftLog, the separate database of a cluster node's Raft groups, stores a snapshot larger
// than 4 MiB (more than badger takes in one value) in chunks written before the key that
// names them, so a crash part way leaves the previous snapshot whole (see raftlog.go).
package persistence
