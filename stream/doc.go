// Package stream is the storage of x-queue-type: stream queues: an append-only log of
// records, numbered by consecutive offsets from 0, kept as segment files that are written
// once, read sequentially and deleted whole by retention. It does no AMQP; the broker maps
// queue arguments and consumers onto it.
//
// # Files
//
// A stream is one directory. Each segment is a pair named after the offset of its first record:
//
//	00000000000000000000.segment   "WSEG" version(u32) then chunks, back to back
//	00000000000000000000.index     "WIDX" version(u32) then one 28-byte record per chunk:
//	                               first offset u64, timestamp ms i64, file position u64,
//	                               number of records u32 (big-endian)
//
// The index is sparse (one entry per chunk, not per record) and stays on disk: positioning a
// reader by offset or timestamp binary-searches the index file with pread. In memory a stream
// keeps one small summary per segment (500 MB of records by default), so its memory does not
// grow with its length.
//
// # Chunks: osiris's layout
//
// Every batch of appends becomes one chunk (several if it exceeds MaxChunkBytes or 65535
// records) laid out exactly as osiris, RabbitMQ's stream storage, lays out a chunk, all
// integers big-endian:
//
//	0  magic 5 << 4 | version 0 (1 byte)     24 first offset of the chunk (u64)
//	1  chunk type 0 = user (1)               32 CRC32 (IEEE) of the data section (u32)
//	2  number of entries (u16)               36 data length (u32)
//	4  number of records (u32)               40 trailer length (u32) = 4
//	8  timestamp, ms since 1970 (i64)        44 bloom filter size (u8) = 0, reserved (3 bytes)
//	16 epoch (u64) = 1                       48 data: entries; then the trailer
//
// Each entry is an osiris simple entry: a u32 whose top bit is 0 (simple, not a sub-batch)
// and whose low 31 bits are the record's length, then the record. One record is one entry,
// so an offset is an entry's position, as in osiris. The 4-byte trailer is Warren's: a
// CRC32C (Castagnoli) over header and data, so a torn or damaged header is caught as well as
// damaged data; the header's CRC32 covers the data only, as osiris and its clients expect.
//
// How the RabbitMQ stream protocol (port 5552) can serve these files without re-encoding:
// its Deliver frame is the frame header, key 8, version, subscription id (and, from version
// 2, the committed chunk id), followed by the chunk as osiris stores it minus the bloom filter
// and the trailer. With a bloom size of 0 those are the bytes [pos, pos+48+data length) of the
// segment file, where pos comes from the index, so a stream-protocol front end can write the
// frame header and then sendfile(2) that range, unchanged, to the client; clients check the
// data CRC32 in the header. Two conditions, for the broker to keep: records must be AMQP 1.0
// encoded messages, as RabbitMQ stores them (the stream protocol carries AMQP 1.0 messages);
// and delivery must start on a chunk boundary, with the client skipping the entries before
// the offset it asked for, as RabbitMQ's clients do. Sub-batch entries (compressed batches
// from stream-protocol publishers) are not written yet; a reader reports them as unsupported.
//
// # Writing: group commit
//
// Append queues a record and returns; one writer goroutine per stream takes everything queued
// while it was writing the previous batch, writes it as chunks with one write(2), writes the
// index entries, fdatasyncs the segment once, makes the records visible to readers and then
// calls the appends' done callbacks in offset order: a done callback (a publisher confirm)
// means the record is on disk. Throughput comes from batch size: the more publishers wait, the
// larger the next batch. AwaitRoom holds a publisher that does not wait for confirms while
// too many bytes wait for the writer. A segment is sealed (segment and index synced) when the next chunk
// would take it past MaxSegmentBytes; a new one is created and the directory synced.
//
// The active segment is preallocated with written, synced zeros a few MiB ahead of the
// writer (prealloc.go, by a helper goroutine): a batch's fdatasync then overwrites blocks
// already in the file instead of growing it, so it does not wait for a journal commit of the
// new size - about 1.5-2x the confirmed appends per second on ext4. Sealing and closing cut
// the zeros off; the writer never writes into a zeroing in progress.
//
// # Recovery
//
// Open trusts a sealed segment's index when it is consistent with the segment file (its last
// chunk ends at the end of the file) and rebuilds it otherwise. It scans the active (last)
// segment chunk by chunk, checking both checksums, offsets and timestamps, rewrites its index
// and truncates the file after the last whole chunk: a crash can leave a torn chunk at the
// tail, never one a done callback reported (it was synced first) and never a visible torn
// record. Preallocated zeros after the last chunk are cut the same way (a zero byte is not a
// chunk's magic), without a torn-tail warning. Damage inside a sealed segment is an error, not a truncation, since cutting it would
// renumber every later record.
//
// # Reading
//
// A Reader is positioned by a Spec (first, last chunk, next, numeric offset, timestamp) and
// reads with pread through a 256 KiB window borrowed from a pool (given back whenever it
// waits), verifying each chunk's checksums: the page cache is the cache, and a reader's
// memory is one window whatever the stream's length or the number of readers. Readers only
// see synced records. A reader that has caught up waits on a channel the writer closes at
// every commit (no polling). Retention that removes the segment a reader is in does not
// disturb it: its open file outlives the unlink; it finishes the segment and continues at the
// new start, as does any reader positioned before the start.
//
// # Retention
//
// MaxLengthBytes and MaxAge remove whole segments, oldest first, never the active one; a
// segment is too old when its newest chunk is. The writer applies retention whenever a
// segment fills; the owner calls EnforceRetention periodically so that max-age also applies to
// a stream nobody writes to. ParseMaxAge parses RabbitMQ's x-max-age strings. The clock is an
// option, for tests.
//
// # Goroutines and locks
//
// One writer goroutine per open stream. Stream.qmu guards the append queue (taken by
// publishers for an append, by the writer once per batch); Stream.mu guards the segment list
// and the committed extent (taken by the writer once per flush and by a reader once per
// chunk). Neither is held during file I/O or a sync, and neither is taken while holding the
// other. done callbacks run on the writer goroutine with no lock held.
package stream
