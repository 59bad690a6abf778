// Package persistence is Warren's durable store: durable exchanges, queues and bindings,
// and persistent messages with one index entry per durable queue holding them, in a
// single badger database. It is the only package that imports badger.
//
// # Key layout
//
// Strings inside keys are written as uvarint(len) followed by the bytes, which makes
// composite keys prefix-free: the prefix of queue "a" never matches queue "ab".
//
//	0x00 'f'                                  -> format version (uint32 BE)
//	0x00 'h'                                  -> message-id high-water mark (uint64 BE)
//	'x' str(vhost) str(name)                  -> str(kind) flags(1) bytes(args)
//	'q' str(vhost) str(name)                  -> flags(1) bytes(args)
//	'b' str(vhost) str(source) str(dest) toExchange(1) str(key) bytes(args) -> empty
//	'm' id(8 BE)                              -> version(1) str(exchange) str(routing key) bytes(header) body
//	'i' str(vhost) str(queue) seq(8 BE)       -> msgID(8 BE) deliveries(4 BE)
//	'p' str(vhost) str(queue)                 -> empty: purge in progress
//
// A binding's whole identity is its key, so Args must be encoded deterministically.
// Index keys sort by queue and then sequence number, so RecoverQueue is one prefix scan.
// A message is stored once however many queues hold it; an in-memory reference count
// (message id -> number of index entries), rebuilt from the index at Open, decides when
// a message goes: exactly when its last entry is removed, purged or deleted with its queue.
// Messages up to 4 KiB live in the LSM tree; bigger ones in badger's value log, which is
// garbage-collected periodically and after large purges.
//
// # Group commit
//
// Every write - message batches and topology changes alike - goes through one journal
// goroutine. Submit appends to a pending list; the journal takes everything pending,
// applies it to one badger transaction, commits it with a sync (SyncWrites), and then
// calls each done callback in submission order. While a commit and its fsync are in
// progress, new batches accumulate, so the group size grows with load and the sync cost
// is shared: throughput comes from batch size, not from skipping the sync. Because one
// goroutine writes, the reference counts need no locks, and each transaction's reads
// (is this entry still there?) see all earlier commits.
//
// A Batch is atomic. If adding a Batch makes the transaction too big, the transaction is
// rebuilt without it and committed, and that Batch starts the next one; a single Batch
// that is too big on its own fails alone. Reference-count changes are staged per
// transaction and applied only after the commit succeeds. If a commit fails, the store
// turns read-only (every later write fails) since memory and disk may then disagree;
// reopening recovers from disk.
//
// Purging a queue (PurgeQueues, DeleteQueue) writes a purge marker atomically with the
// rest of its transaction, ends the group there, and the journal then deletes the queue's
// entries in bounded transactions before doing anything else; done is called after that.
// Open completes a purge interrupted by a crash before anything can read the queue.
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
package persistence
