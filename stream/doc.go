// Package stream is the storage of x-queue-type: stream queues: an append-only log of
// records, numbered by consecutive offsets from 0, kept as segment files that are written
// once, read sequentially and deleted whole by retention. Its records are AMQP 1.0 messages
// (amqp10.go converts them from and to AMQP 0-9-1 content headers, on bytes); the broker maps
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
// Warren writes osiris simple entries: a u32 whose top bit is 0 (simple, not a sub-batch)
// and whose low 31 bits are the record's length, then the record; one record per entry. It
// also reads sub-batch entries, which stream-protocol publishers send to batch records and
// osiris stores as they come: a byte 0x80 | compression << 4, the number of records (u16),
// the uncompressed and the stored length (u32 each), then the records, each a u32 length and
// its bytes. As in osiris, an offset numbers records, not entries (a chunk header counts both),
// so a reader can start inside a batch. Uncompressed batches (compression 0) are read;
// compressed ones (gzip, snappy, lz4, zstd) are kept whole by recovery and readers pass over
// them: their records keep their offsets but are never returned (Stream.CompressedSkipped
// counts them, the first is logged), as stopping there would stop every reader before them
// for good. The 4-byte trailer is Warren's: a
// CRC32C (Castagnoli) over header and data, so a torn or damaged header is caught as well as
// damaged data; the header's CRC32 covers the data only, as osiris and its clients expect.
//
// # Records: AMQP 1.0 messages (format v3)
//
// A record (the bytes of an entry) is an AMQP 1.0 message, as RabbitMQ 3.10 stores a message
// published over AMQP 0-9-1 into a stream (rabbit_stream_queue, rabbit_msg_record): AMQP 1.0
// sections (described types with smallulong descriptors) back to back, in this order, each only
// when it has something to say. AppendAMQP10Head writes them from the 0-9-1 content header's
// bytes; DecodeAMQP091 converts back for 0-9-1 consumers; neither uses maps or reflection.
//
//	header (0x70)          list: durable = delivery-mode 2 true / 1 false / else null,
//	                       priority (ubyte). RabbitMQ 3.10 puts these two in annotations;
//	                       3.13+ in this section, which is the AMQP 1.0 place for them
//	message-annotations    map, symbol keys: x-exchange, x-routing-key (both left out for the
//	(0x72)                 default exchange with the stream's name as key, what RabbitMQ's
//	                       reader assumes when absent), x-basic-type, x-basic-app-id,
//	                       x-basic-expiration (RabbitMQ's keys, utf8 values),
//	                       x-basic-delivery-mode (ubyte, only for a mode other than 1 or 2),
//	                       x-basic-cluster-id and x-basic-timestamp (Warren's: cluster-id, and
//	                       a timestamp too large for milliseconds, as a ulong of seconds)
//	properties (0x73)      list: message-id (utf8), user-id (binary), to, subject (null),
//	                       reply-to, correlation-id (utf8), content-type, content-encoding
//	                       (symbol), absolute-expiry-time (null), creation-time (timestamp
//	                       = the 0-9-1 timestamp x 1000); trailing nulls left out
//	application-properties the 0-9-1 headers, in their order, utf8 keys. Values: t boolean,
//	(0x74)                 b byte, B ubyte, s short, u ushort, I int, i uint, l and L long,
//	                       f float, d double, S utf8, x binary, T timestamp (ms), V null,
//	                       D decimal64 (exact: scale and int32 value fit), F map (utf8 keys),
//	                       A list
//	data (0x75)            the body, binary; its bytes are the publisher's, appended after the
//	                       head without a copy (a record ends with the body)
//
// RabbitMQ 3.10 leaves headers whose value is a table or an array out of the stream (and fails
// on a decimal); Warren keeps them, as maps and lists, so that a 0-9-1 consumer gets every
// header it was sent (AMQP 1.0 restricts application-properties to simple values; RabbitMQ's
// own decoder and the stream clients' codecs read maps and lists there). The only other
// liberty: type, app-id and cluster-id are annotations rather than application-properties
// (RabbitMQ 3.10 puts type and app-id there), so a header named x-basic-type stays a header.
// A 0-9-1 long string (S) is written as utf8 whether or not its bytes are valid UTF-8, as
// RabbitMQ 3.10's rabbit_msg_record does (from_091(longstr, V) -> {utf8, V}), so it comes back
// to a 0-9-1 consumer as the S it was. Later RabbitMQs (mc_amqpl) check and write invalid
// UTF-8 as binary, which a 0-9-1 reader then gets as x: Warren does not, as it would cost a
// UTF-8 check of every header string on publish and lose the S on the way back. Both
// liberties (maps and lists, str with invalid UTF-8) are for a port 5552 front end to
// handle: strict AMQP 1.0 decoders may refuse them.
// A 16-byte persistent message published to the stream's own name is a 28-byte record (v2:
// 22 bytes).
//
// Decoding for a 0-9-1 consumer rebuilds the content header (class 60, weight 0, the body's
// size) with the properties above, adds the x-stream-offset header (a long, replacing one the
// publisher set), and accepts what other AMQP 1.0 writers produce, as RabbitMQ's
// to_amqp091 does: symbolic descriptors, 8- and 32-bit forms, x-basic-delivery-mode and
// x-basic-priority annotations (RabbitMQ 3.10), header ttl as expiration, group-id as app-id,
// ulong and uuid message ids; a body that is not exactly one data section is delivered as its
// encoded sections with type amqp-1.0. Header values 0-9-1 has no type for (char, uuid,
// decimal32/128, described values) are left out; a message without a body section, or with
// a malformed one, is an error (the consumer skips the record and logs it).
//
// Records written before v3 start with their version byte, 1 or 2 (an AMQP 1.0 message starts
// with 0, a described type), and are still read (broker/stream.go), so one stream may hold
// all three formats; the broker still writes v2 when a content header cannot be converted
// (malformed, or class, weight or body size other than the usual), which its front end does
// not let through.
//
// # Serving chunks on the stream protocol (port 5552)
//
// The stream protocol's Deliver frame (PROTOCOL.adoc in rabbitmq-server's rabbitmq_stream) is
//
//	Size u32, Key u16 = 8, Version u16 (1 or 2), SubscriptionId u8,
//	[CommittedChunkId u64, version 2 only], then the OsirisChunk:
//	MagicVersion, ChunkType, NumEntries, NumRecords, Timestamp, Epoch, ChunkFirstOffset,
//	ChunkCrc, DataLength, TrailerLength, Reserved (together the 48-byte header above), then
//	DataLength bytes of entries
//
// rabbitmq-stream-go-client reads exactly that: the 48 header bytes, then DataLength bytes,
// which it checks against ChunkCrc and splits into entries, each an AMQP 1.0 message it
// decodes with its amqp codec; it skips the entries before the offset it asked for. Every
// record being an AMQP 1.0 message (v3), a front end serves a chunk at file position pos
// (from the index) like this, with no re-encoding:
//
//   - the server writes the frame head: Size (= 2+2+1 [+8] + 48 + DataLength), Key, Version,
//     SubscriptionId [, CommittedChunkId], from its own state;
//   - then the chunk header, bytes [pos, pos+48) of the segment file, with bytes 40-43
//     (TrailerLength) set to 0, because the trailer is not sent (osiris does not send its
//     trailer either; the Go client reads the field and ignores it);
//   - then the data, bytes [pos+48, pos+48+DataLength), with sendfile(2): unchanged.
//
// Conditions for the broker to keep: a chunk must hold only v3 records (the broker writes
// only v3 since format v3; a segment written earlier, or a chunk with a v2 record, needs a
// conversion - the first record byte of each entry tells); delivery starts on a chunk
// boundary; and the server must not send a chunk before it is synced (readers already see
// only synced chunks).
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
