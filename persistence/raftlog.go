package persistence

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The Raft log lives in its own badger database (RaftLog), not in the broker's Store: its
// writes are small and frequent, come from one Ready loop rather than the journal, and must
// be synced before Raft messages leave the node. One database holds every group of a node
// (multi-Raft), so a Ready round of many groups costs one sync.
//
// Raft log key layout (all integers big-endian, so a group's entries sort by index):
//
//	'e' group(8) index(8) -> raftpb.Entry
//	'h' group(8)          -> raftpb.HardState
//	's' group(8)          -> raftpb.Snapshot (metadata and state machine data), or a chunked
//	                         snapshot's header (see snapHeader)
//	'c' group(8) index(8) chunk(4) -> one chunk of the data of the snapshot at index
//	't' group(8)          -> truncated index(8) term(8): entries up to it are compacted
//	'x' group(8)          -> (empty) tombstone: the group was deleted on this node
const (
	rlEntry     = 'e'
	rlHardState = 'h'
	rlSnapshot  = 's'
	rlChunk     = 'c'
	rlTrunc     = 't'
	rlTombstone = 'x'
)

// rlKinds are the key kinds stored per group.
var rlKinds = []byte{rlEntry, rlHardState, rlSnapshot, rlChunk, rlTrunc}

// A snapshot's data may be larger than badger takes in one value (a value-log file: a
// quorum queue's backlog of more than 16 MiB), so data above chunkSize is stored in chunks
// under 'c' keys of the snapshot's index, written first, and the 's' key then holds a
// header that names them: until the header is committed the chunks are invisible, so a
// crash part way leaves the previous snapshot whole; chunks of other indices (the previous
// snapshot, or one a crash left without header) are deleted after the header is committed.
// A header starts with snapChunked, which no marshalled raftpb.Snapshot starts with (field
// number 0 does not exist), so snapshots stored whole (small ones, and those of older
// versions) are read as before.
//
//	snapChunked(1) index(8) chunks(4) dataLen(8) raftpb.Snapshot (metadata, no data)
const (
	snapChunked   = 0x00
	snapHeaderLen = 1 + 8 + 4 + 8
	// maxSnapChunk is the largest chunk: a quarter of a default value-log file, so a chunk
	// never makes badger rotate a file much past its size.
	maxSnapChunk = 4 << 20
)

func rlChunkKey(group, index uint64, n uint32) []byte {
	k := binary.BigEndian.AppendUint64(rlKey(rlChunk, group), index)
	return binary.BigEndian.AppendUint32(k, n)
}

// DefaultRaftValueLogFileSize is RaftLogOptions.ValueLogFileSize's default. A value-log GC
// rewrite holds every Save of the node (every group's) for the time it takes to rewrite one
// file's live values; a quarter of badger's 64 MiB keeps that pause short.
const DefaultRaftValueLogFileSize = 16 << 20

// RaftLogOptions configures OpenRaftLog.
type RaftLogOptions struct {
	// Logger receives badger diagnostics; nil means slog.Default().
	Logger *slog.Logger
	// InMemory keeps everything in memory (tests): nothing survives Close.
	InMemory bool
	// NoSync skips the fsync after each Save (tests and benchmarks only: a crash may lose
	// entries this node acknowledged, which Raft's safety argument does not allow).
	NoSync bool
	// GCInterval is how often the value log is collected (default 1 minute; negative: never,
	// RunGC only).
	GCInterval time.Duration
	// ValueLogFileSize is the size of a value-log file (default 16 MiB; tests use less). GC
	// rewrites one file at a time while every Save waits (wmu), so the size bounds that wait.
	ValueLogFileSize int64
}

// RaftLog is the durable Raft state of every Raft group of one node: entries, hard state,
// snapshot and compaction point per group, in one badger database. Storage returns the
// raft.Storage of one group; Save persists the output of a Ready round of many groups at once.
type RaftLog struct {
	db     *badger.DB
	log    *slog.Logger
	noSync bool

	// wmu: writes hold it shared, value-log GC exclusive. Badger's rewrite of a value-log
	// file reads the memtables' version counters without the lock their writers hold (see
	// Store.runGC), so no write may run meanwhile; a rewrite is one file, so a Save waits
	// at most that long: with 16 MiB files (43% live) the longest Save during GC took 49-148
	// ms on a loaded 2-core machine, against 175-391 ms with 64 MiB (TestRaftLogGCSavePause).
	// RunGC logs each round's longest pause.
	wmu    sync.RWMutex
	gcStop chan struct{}
	gcDone chan struct{}

	closeOnce sync.Once
	closeErr  error

	// chunkSize is the largest snapshot stored in one value and the size of the chunks of
	// larger ones: maxSnapChunk, or half a value-log file when files are smaller (tests).
	chunkSize int

	mu     sync.Mutex
	groups map[uint64]*RaftStorage

	testHooks *rlTestHooks // Save's writes (tests only)
}

// OpenRaftLog opens (creating if needed) the Raft log database in dir.
func OpenRaftLog(dir string, opts RaftLogOptions) (*RaftLog, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	vlogFile := cmp.Or(opts.ValueLogFileSize, DefaultRaftValueLogFileSize)
	bo := badger.DefaultOptions(dir).
		WithInMemory(opts.InMemory).
		// Syncs are explicit (Save's sync argument): a round that only moves commit indices
		// needs no fsync. Every synced write is followed by db.Sync before the next write, so
		// it is in the active memtable's WAL when that is synced.
		WithSyncWrites(false).
		WithLogger(badgerLogger{log}).
		WithLoggingLevel(badger.WARNING).
		WithDetectConflicts(false).
		WithMetricsEnabled(false).
		WithNumVersionsToKeep(1).
		// The log is small (it is compacted behind snapshots): small memtables and caches keep
		// an idle node's footprint low.
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithValueThreshold(1 << 10).
		WithCompression(options.None).
		WithValueLogFileSize(vlogFile).
		WithBlockCacheSize(4 << 20).
		WithIndexCacheSize(2 << 20).
		WithNumCompactors(2)
	if opts.InMemory {
		bo = bo.WithDir("").WithValueDir("")
	}
	db, err := badger.Open(bo)
	if err != nil {
		return nil, fmt.Errorf("persistence: open raft log %s: %w", dirName(dir), err)
	}
	l := &RaftLog{db: db, log: log, noSync: opts.NoSync, groups: make(map[uint64]*RaftStorage),
		gcStop: make(chan struct{}), gcDone: make(chan struct{}), chunkSize: int(min(maxSnapChunk, vlogFile/2))}
	if every := cmp.Or(opts.GCInterval, time.Minute); every > 0 && !opts.InMemory {
		go l.gcLoop(every)
	} else {
		close(l.gcDone)
	}
	return l, nil
}

// update runs a write transaction (shared with other writes, exclusive of value-log GC).
func (l *RaftLog) update(f func(*badger.Txn) error) error {
	l.wmu.RLock()
	defer l.wmu.RUnlock()
	return oneLine(l.db.Update(f))
}

// The Raft log's values above 1 KiB (a quorum queue's messages) live in the value log, whose
// files badger reclaims only through RunValueLogGC: without it the log's disk use would
// follow its history, however often the groups compact. gcLoop collects every interval.
func (l *RaftLog) gcLoop(every time.Duration) {
	defer close(l.gcDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.gcStop:
			return
		case <-t.C:
			if _, err := l.RunGC(); err != nil {
				l.log.Warn("raft log value-log GC failed", "err", err)
			}
		}
	}
}

// RunGC rewrites value-log files that are at least half garbage (entries compacted or
// dropped), one at a time, up to 16 of them, and returns how many it rewrote.
// Each attempt holds wmu, so every Save of the node waits meanwhile; the round's longest
// hold is logged (Info when a file was rewritten, Debug otherwise) to show that pause.
func (l *RaftLog) RunGC() (int, error) {
	n := 0
	var longest, total time.Duration
	defer func() {
		level := slog.LevelDebug
		if n > 0 {
			level = slog.LevelInfo
		}
		l.log.Log(context.Background(), level, "raft log value-log GC round", "rewritten", n,
			"longest_write_pause", longest, "total_write_pause", total)
	}()
	for ; n < 16; n++ {
		select {
		case <-l.gcStop:
			return n, nil
		default:
		}
		start := time.Now()
		l.wmu.Lock()
		err := l.db.RunValueLogGC(0.5)
		l.wmu.Unlock()
		held := time.Since(start)
		longest, total = max(longest, held), total+held
		if errors.Is(err, badger.ErrNoRewrite) || errors.Is(err, badger.ErrRejected) {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("persistence: raft log value-log GC: %w", err)
		}
	}
	return n, nil
}

// Close syncs and closes the database. Storages of the log must not be used afterwards.
// Calls after the first return its result.
func (l *RaftLog) Close() error {
	l.closeOnce.Do(func() {
		close(l.gcStop)
		<-l.gcDone
		if err := l.sync(); err != nil {
			_ = l.db.Close()
			l.closeErr = fmt.Errorf("persistence: close raft log: %w", err)
			return
		}
		if err := l.db.Close(); err != nil {
			l.closeErr = fmt.Errorf("persistence: close raft log: %w", err)
		}
	})
	return l.closeErr
}

func rlKey(kind byte, group uint64) []byte {
	k := make([]byte, 9, 17)
	k[0] = kind
	binary.BigEndian.PutUint64(k[1:], group)
	return k
}

func rlEntryKey(group, index uint64) []byte {
	return binary.BigEndian.AppendUint64(rlKey(rlEntry, group), index)
}

// Storage returns the raft.Storage of group, loading its state on first use. Every call for
// the same group returns the same value.
func (l *RaftLog) Storage(group uint64) (*RaftStorage, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s, ok := l.groups[group]; ok {
		return s, nil
	}
	s := &RaftStorage{log: l, group: group, hs: &pb.HardState{}, snapMeta: &pb.SnapshotMetadata{ConfState: &pb.ConfState{}}}
	err := l.db.View(func(txn *badger.Txn) error {
		if err := getProto(txn, rlKey(rlHardState, group), s.hs); err != nil {
			return err
		}
		snap, err := readSnapshot(txn, group, false)
		if err != nil {
			return err
		}
		if snap.Metadata != nil {
			s.snapMeta = pb.EnsureSnapshotMetadata(snap.Metadata)
		}
		item, err := txn.Get(rlKey(rlTrunc, group))
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if len(v) != 16 {
				return fmt.Errorf("truncation record of group %d: %w", group, errCorrupt)
			}
			s.truncIndex, s.truncTerm = binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:])
		}
		s.lastIndex, s.lastTerm = s.truncIndex, s.truncTerm
		// The last entry: seek backwards from the largest possible key of the group.
		opt := badger.DefaultIteratorOptions
		opt.Reverse = true
		opt.Prefix = rlKey(rlEntry, group)
		it := txn.NewIterator(opt)
		defer it.Close()
		it.Seek(rlEntryKey(group, ^uint64(0)))
		if it.ValidForPrefix(opt.Prefix) {
			var e pb.Entry
			if err := it.Item().Value(func(v []byte) error { return proto.Unmarshal(v, &e) }); err != nil {
				return err
			}
			if e.GetIndex() > s.lastIndex {
				s.lastIndex, s.lastTerm = e.GetIndex(), e.GetTerm()
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("persistence: load raft group %d: %w", group, err)
	}
	l.groups[group] = s
	return s, nil
}

// DropGroup deletes everything stored for group (a group this node no longer serves), in
// transactions of at most DropBatch keys, so that a long log neither builds one huge
// transaction nor holds up the Saves of other groups for long (badger's DropPrefix would
// block every write to the database while it runs). The caller makes sure nothing else
// writes the group meanwhile; a crash part way leaves some of its keys, which a tombstone
// (MarkDeleted) lets the caller find and drop again.
func (l *RaftLog) DropGroup(group uint64) error {
	l.mu.Lock()
	delete(l.groups, group)
	l.mu.Unlock()
	for _, kind := range rlKinds {
		prefix := rlKey(kind, group)
		for {
			var keys [][]byte
			err := l.db.View(func(txn *badger.Txn) error {
				opt := badger.DefaultIteratorOptions
				opt.Prefix = prefix
				opt.PrefetchValues = false
				it := txn.NewIterator(opt)
				defer it.Close()
				for it.Rewind(); it.Valid() && len(keys) < DropBatch; it.Next() {
					keys = append(keys, it.Item().KeyCopy(nil))
				}
				return nil
			})
			if err == nil && len(keys) > 0 {
				err = l.update(func(txn *badger.Txn) error {
					for _, k := range keys {
						if err := txn.Delete(k); err != nil {
							return err
						}
					}
					return nil
				})
			}
			if err != nil {
				return fmt.Errorf("persistence: drop raft group %d: %w", group, err)
			}
			if len(keys) < DropBatch {
				break
			}
		}
	}
	return nil
}

// DropBatch is the most keys DropGroup deletes in one transaction.
const DropBatch = 1024

// MarkDeleted records (synced) that group is deleted on this node, before its keys are
// dropped: after a crash, Tombstones says which groups to drop again.
func (l *RaftLog) MarkDeleted(group uint64) error {
	err := l.update(func(txn *badger.Txn) error { return txn.Set(rlKey(rlTombstone, group), nil) })
	if err == nil {
		err = l.sync()
	}
	if err != nil {
		return fmt.Errorf("persistence: raft group %d: write tombstone: %w", group, err)
	}
	return nil
}

// ClearTombstone removes group's tombstone (the group is created again).
func (l *RaftLog) ClearTombstone(group uint64) error {
	if err := l.update(func(txn *badger.Txn) error { return txn.Delete(rlKey(rlTombstone, group)) }); err != nil {
		return fmt.Errorf("persistence: raft group %d: clear tombstone: %w", group, err)
	}
	return nil
}

// Tombstones lists the groups marked deleted.
func (l *RaftLog) Tombstones() ([]uint64, error) {
	var ids []uint64
	err := l.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte{rlTombstone}
		opt.PrefetchValues = false
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if k := it.Item().Key(); len(k) == 9 {
				ids = append(ids, binary.BigEndian.Uint64(k[1:]))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("persistence: raft log tombstones: %w", err)
	}
	return ids, nil
}

// GroupDiskUsage counts the keys stored for group and their size (keys and values as
// badger reports them): a group's disk use, which follows its snapshot plus the entries
// after it, not its history.
func (l *RaftLog) GroupDiskUsage(group uint64) (keys int, bytes int64, err error) {
	err = l.db.View(func(txn *badger.Txn) error {
		for _, kind := range rlKinds {
			opt := badger.DefaultIteratorOptions
			opt.Prefix = rlKey(kind, group)
			opt.PrefetchValues = false
			it := txn.NewIterator(opt)
			for it.Rewind(); it.Valid(); it.Next() {
				keys++
				bytes += it.Item().EstimatedSize()
			}
			it.Close()
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("persistence: raft group %d: disk usage: %w", group, err)
	}
	return keys, bytes, nil
}

func getProto(txn *badger.Txn, key []byte, m proto.Message) error {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return item.Value(func(v []byte) error { return proto.Unmarshal(v, m) })
}

// readSnapshot reads group's stored snapshot in txn (an empty one when there is none); with
// data false the data is left out (a chunked snapshot's chunks are not read).
func readSnapshot(txn *badger.Txn, group uint64, data bool) (*pb.Snapshot, error) {
	snap := &pb.Snapshot{}
	item, err := txn.Get(rlKey(rlSnapshot, group))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return snap, nil
	}
	if err != nil {
		return nil, err
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return nil, err
	}
	if len(v) == 0 || v[0] != snapChunked {
		// Stored whole.
		if err := proto.Unmarshal(v, snap); err != nil {
			return nil, err
		}
		if !data {
			snap.Data = nil
		}
		return snap, nil
	}
	if len(v) < snapHeaderLen {
		return nil, fmt.Errorf("snapshot header of group %d: %w", group, errCorrupt)
	}
	index, n, size := binary.BigEndian.Uint64(v[1:]), binary.BigEndian.Uint32(v[9:]), binary.BigEndian.Uint64(v[13:])
	if err := proto.Unmarshal(v[snapHeaderLen:], snap); err != nil {
		return nil, err
	}
	// A value is below 4 GiB (badger's limit on a value-log file), so a size beyond n of
	// them is a corrupt header, not an allocation to attempt.
	if snap.GetMetadata().GetIndex() != index || size > uint64(n)<<32 {
		return nil, fmt.Errorf("snapshot header of group %d: %w", group, errCorrupt)
	}
	if !data {
		return snap, nil
	}
	buf := make([]byte, 0, size)
	for k := uint32(0); k < n; k++ {
		item, err := txn.Get(rlChunkKey(group, index, k))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil, fmt.Errorf("snapshot %d of group %d: chunk %d of %d missing: %w", index, group, k, n, errCorrupt)
		}
		if err != nil {
			return nil, err
		}
		if err := item.Value(func(v []byte) error { buf = append(buf, v...); return nil }); err != nil {
			return nil, err
		}
	}
	if uint64(len(buf)) != size {
		return nil, fmt.Errorf("snapshot %d of group %d: %d bytes in chunks, header says %d: %w", index, group, len(buf), size, errCorrupt)
	}
	snap.Data = buf
	return snap, nil
}

// writeSnapshot writes the chunks of snap's data (none when it fits in one value) through
// w, in as many transactions as they take, and returns the write of the 's' key that makes
// the snapshot the group's (a header naming the chunks, or the whole snapshot), which the
// caller commits after them, and the number of chunks.
func (l *RaftLog) writeSnapshot(w *rlWriter, group uint64, snap *pb.Snapshot) (func(*badger.Txn) error, uint32, error) {
	md := pb.EnsureSnapshotMetadata(snap.Metadata)
	data := snap.GetData()
	if len(data) <= l.chunkSize {
		b, err := proto.Marshal(snap)
		if err != nil {
			return nil, 0, fmt.Errorf("encode snapshot: %w", err)
		}
		return func(t *badger.Txn) error { return t.Set(rlKey(rlSnapshot, group), b) }, 0, nil
	}
	index := md.GetIndex()
	var n uint32
	for off := 0; off < len(data); off += l.chunkSize {
		chunk := data[off:min(off+l.chunkSize, len(data))]
		if err := w.set(rlChunkKey(group, index, n), chunk); err != nil {
			return nil, 0, fmt.Errorf("write snapshot chunk %d: %w", n, err)
		}
		n++
	}
	mb, err := proto.Marshal(&pb.Snapshot{Metadata: md})
	if err != nil {
		return nil, 0, fmt.Errorf("encode snapshot: %w", err)
	}
	head := make([]byte, snapHeaderLen, snapHeaderLen+len(mb))
	head[0] = snapChunked
	binary.BigEndian.PutUint64(head[1:], index)
	binary.BigEndian.PutUint32(head[9:], n)
	binary.BigEndian.PutUint64(head[13:], uint64(len(data)))
	head = append(head, mb...)
	return func(t *badger.Txn) error { return t.Set(rlKey(rlSnapshot, group), head) }, n, nil
}

// dropStaleChunks deletes, through w, group's snapshot chunks other than the n chunks of
// the snapshot at index (the committed one): those of the snapshot it replaced, and any a
// crash left without their header.
func (l *RaftLog) dropStaleChunks(w *rlWriter, group, index uint64, n uint32) error {
	var stale [][]byte
	err := l.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = rlKey(rlChunk, group)
		opt.PrefetchValues = false
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) != 9+8+4 || binary.BigEndian.Uint64(k[9:]) != index || binary.BigEndian.Uint32(k[17:]) >= n {
				stale = append(stale, it.Item().KeyCopy(nil))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list snapshot chunks: %w", err)
	}
	for _, k := range stale {
		if err := w.del(k); err != nil {
			return fmt.Errorf("drop snapshot chunk: %w", err)
		}
	}
	return nil
}

// badgerErr keeps only the first line of a badger error: badger appends a hex dump of the
// value to some (a value over its size limit), and a Raft log value holds message bodies,
// which must not reach the logs. errors.Is and As still see the original.
type badgerErr struct{ err error }

func (e badgerErr) Error() string {
	msg := e.err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		return strings.TrimRight(msg[:i], " :.") + " (value dump omitted)"
	}
	return msg
}

func (e badgerErr) Unwrap() error { return e.err }

// oneLine wraps a badger error in badgerErr (nil stays nil).
func oneLine(err error) error {
	if err == nil {
		return nil
	}
	return badgerErr{err}
}

// RaftUpdate is what one group's Ready asks to persist: a snapshot received from the leader
// (applied first), new entries (replacing any conflicting suffix), and the hard state.
type RaftUpdate struct {
	Group     uint64
	Snapshot  *pb.Snapshot // nil or empty: none
	Entries   []*pb.Entry
	HardState *pb.HardState // nil or empty: unchanged
}

// rlWriter applies a sequence of writes in as few transactions as badger allows, in order:
// when a transaction is full it is committed and a new one started, so a crash can leave a
// prefix of the writes but never a later write without an earlier one.
type rlWriter struct {
	db  *badger.DB
	txn *badger.Txn
	n   int
	t   *rlTestHooks // nil outside tests
}

// rlTestHooks let tests split a write sequence into small transactions and stop it after
// some of them (a crash between two commits).
type rlTestHooks struct {
	txnOps   int          // ops per transaction (0: as many as badger takes)
	commit   func() error // called before every commit; an error stops the sequence there
	inTxnOps int
}

func (w *rlWriter) op(f func(*badger.Txn) error) error {
	if w.txn == nil {
		w.txn = w.db.NewTransaction(true)
	}
	var err error
	if w.t != nil && w.t.txnOps > 0 && w.t.inTxnOps >= w.t.txnOps {
		err = badger.ErrTxnTooBig
	} else {
		err = f(w.txn)
	}
	if errors.Is(err, badger.ErrTxnTooBig) {
		if err := w.commitTxn(); err != nil {
			return err
		}
		w.txn = w.db.NewTransaction(true)
		err = f(w.txn)
	}
	if w.t != nil {
		w.t.inTxnOps++
	}
	w.n++
	return oneLine(err)
}

// atomically applies ops in one transaction of their own: what was written before is
// committed first, and the ops must fit in one transaction.
func (w *rlWriter) atomically(ops ...func(*badger.Txn) error) error {
	if err := w.commit(); err != nil {
		return err
	}
	w.txn = w.db.NewTransaction(true)
	for _, f := range ops {
		if err := f(w.txn); err != nil {
			return oneLine(err)
		}
		w.n++
	}
	return w.commit()
}

func (w *rlWriter) commitTxn() error {
	if w.t != nil {
		w.t.inTxnOps = 0
		if w.t.commit != nil {
			if err := w.t.commit(); err != nil {
				return err
			}
		}
	}
	return w.txn.Commit()
}

func (w *rlWriter) set(k, v []byte) error {
	return w.op(func(t *badger.Txn) error { return t.Set(k, v) })
}

func (w *rlWriter) del(k []byte) error {
	return w.op(func(t *badger.Txn) error { return t.Delete(k) })
}

func (w *rlWriter) commit() error {
	if w.txn == nil {
		return nil
	}
	err := w.commitTxn()
	if err != nil {
		w.txn.Discard()
	}
	w.txn = nil
	return oneLine(err)
}

func (w *rlWriter) discard() {
	if w.txn != nil {
		w.txn.Discard()
	}
}

func (l *RaftLog) sync() error {
	if l.noSync {
		return nil
	}
	return l.db.Sync()
}

// Save persists the updates of several groups, in one badger transaction when they fit, and
// then syncs if sync is set (raft's Ready.MustSync of any of them: new entries, term or vote;
// a round that only advances commit indices may skip it, since a lost commit index is
// learnt again from the leader). When Save returns, raft may be told the entries are stable
// and messages may be sent.
func (l *RaftLog) Save(updates []RaftUpdate, sync bool) error {
	type after struct {
		s                    *RaftStorage
		snap                 *pb.SnapshotMetadata
		hs                   *pb.HardState
		lastIndex, lastTerm  uint64
		truncIndex, truncTrm uint64
	}
	l.wmu.RLock()
	defer l.wmu.RUnlock()
	w := &rlWriter{db: l.db, t: l.testHooks}
	defer w.discard()
	results := make([]*after, 0, len(updates))
	pending := make(map[uint64]*after, len(updates)) // a group may appear more than once
	for _, u := range updates {
		a := pending[u.Group]
		if a == nil {
			s, err := l.Storage(u.Group)
			if err != nil {
				return err
			}
			s.mu.Lock()
			a = &after{s: s, lastIndex: s.lastIndex, lastTerm: s.lastTerm, truncIndex: s.truncIndex, truncTrm: s.truncTerm}
			s.mu.Unlock()
			pending[u.Group] = a
			results = append(results, a)
		}
		first := a.truncIndex + 1
		hsDone := false
		if u.Snapshot != nil && !raft.IsEmptySnap(u.Snapshot) {
			// Raft's ApplySnapshot: the snapshot replaces the whole log. Snapshot, truncation
			// record and hard state (whose commit index is the snapshot's) go in one
			// transaction of their own: any two of them alone make a state raft panics on.
			// Only then the old entries go: those at or below the snapshot are not read any
			// more; those above it (a suffix that conflicted with the snapshot, never
			// committed) go from the highest down, so that what is left is always a log.
			// A large snapshot's chunks go before all of them (see writeSnapshot).
			md := pb.EnsureSnapshotMetadata(u.Snapshot.Metadata)
			setSnap, chunks, err := l.writeSnapshot(w, u.Group, u.Snapshot)
			if err != nil {
				return fmt.Errorf("persistence: raft group %d: %w", u.Group, err)
			}
			ops := []func(*badger.Txn) error{
				setSnap,
				func(t *badger.Txn) error {
					return t.Set(rlKey(rlTrunc, u.Group), truncValue(md.GetIndex(), md.GetTerm()))
				},
			}
			if u.HardState != nil && !raft.IsEmptyHardState(u.HardState) {
				hb, err := proto.Marshal(u.HardState)
				if err != nil {
					return fmt.Errorf("persistence: raft group %d: encode hard state: %w", u.Group, err)
				}
				ops = append(ops, func(t *badger.Txn) error { return t.Set(rlKey(rlHardState, u.Group), hb) })
				a.hs = proto.Clone(u.HardState).(*pb.HardState)
				hsDone = true
			}
			if err := w.atomically(ops...); err != nil {
				return fmt.Errorf("persistence: raft group %d: install snapshot: %w", u.Group, err)
			}
			if err := l.dropStaleChunks(w, u.Group, md.GetIndex(), chunks); err != nil {
				return fmt.Errorf("persistence: raft group %d: %w", u.Group, err)
			}
			for i := a.lastIndex; i >= first && i > 0; i-- {
				if err := w.del(rlEntryKey(u.Group, i)); err != nil {
					return fmt.Errorf("persistence: raft group %d: %w", u.Group, err)
				}
			}
			a.truncIndex, a.truncTrm = md.GetIndex(), md.GetTerm()
			a.lastIndex, a.lastTerm = a.truncIndex, a.truncTrm
			a.snap = md
			first = a.truncIndex + 1
		}
		if n := len(u.Entries); n > 0 {
			lo := u.Entries[0].GetIndex()
			if lo < first {
				return fmt.Errorf("persistence: raft group %d: append at %d below first index %d", u.Group, lo, first)
			}
			if lo > a.lastIndex+1 {
				return fmt.Errorf("persistence: raft group %d: append at %d leaves a gap after %d", u.Group, lo, a.lastIndex)
			}
			// A new suffix replaces a conflicting one (raft hands over entries at stored
			// indices only from the first conflict on: none of them is committed). The old
			// suffix goes first, from the highest index down, then the new entries in order:
			// after any of the commits this may take, the stored log is a prefix of the old
			// one or of the new one, never a mix.
			for i := a.lastIndex; i >= lo; i-- {
				if err := w.del(rlEntryKey(u.Group, i)); err != nil {
					return fmt.Errorf("persistence: raft group %d: %w", u.Group, err)
				}
			}
			for _, e := range u.Entries {
				b, err := proto.Marshal(e)
				if err != nil {
					return fmt.Errorf("persistence: raft group %d: encode entry: %w", u.Group, err)
				}
				if err := w.set(rlEntryKey(u.Group, e.GetIndex()), b); err != nil {
					return fmt.Errorf("persistence: raft group %d: %w", u.Group, err)
				}
			}
			last := u.Entries[n-1]
			a.lastIndex, a.lastTerm = last.GetIndex(), last.GetTerm()
		}
		if !hsDone && u.HardState != nil && !raft.IsEmptyHardState(u.HardState) {
			b, err := proto.Marshal(u.HardState)
			if err != nil {
				return fmt.Errorf("persistence: raft group %d: encode hard state: %w", u.Group, err)
			}
			if err := w.set(rlKey(rlHardState, u.Group), b); err != nil {
				return fmt.Errorf("persistence: raft group %d: %w", u.Group, err)
			}
			a.hs = proto.Clone(u.HardState).(*pb.HardState)
		}
	}
	if err := w.commit(); err != nil {
		return fmt.Errorf("persistence: save raft state: %w", err)
	}
	if sync {
		if err := l.sync(); err != nil {
			return fmt.Errorf("persistence: sync raft log: %w", err)
		}
	}
	for _, a := range results {
		s := a.s
		s.mu.Lock()
		if a.snap != nil {
			s.snapMeta = a.snap
		}
		if a.hs != nil {
			s.hs = a.hs
		}
		s.lastIndex, s.lastTerm = a.lastIndex, a.lastTerm
		s.truncIndex, s.truncTerm = a.truncIndex, a.truncTrm
		s.mu.Unlock()
	}
	return nil
}

func truncValue(index, term uint64) []byte {
	v := binary.BigEndian.AppendUint64(nil, index)
	return binary.BigEndian.AppendUint64(v, term)
}

// RaftStorage is the raft.Storage of one group in a RaftLog. Its methods are safe for
// concurrent use; writes go through RaftLog.Save, CreateSnapshot and Compact, which for one
// group must be called from one goroutine at a time (the Ready loop).
type RaftStorage struct {
	log   *RaftLog
	group uint64

	mu                    sync.Mutex
	hs                    *pb.HardState
	snapMeta              *pb.SnapshotMetadata // of the stored snapshot; index 0: none
	truncIndex, truncTerm uint64               // entries up to truncIndex are compacted
	lastIndex, lastTerm   uint64
}

var _ raft.Storage = (*RaftStorage)(nil)

// InitialState implements raft.Storage. The configuration is the snapshot's: entries after
// it (conf changes included) are applied again by the application at restart.
func (s *RaftStorage) InitialState() (*pb.HardState, *pb.ConfState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.Clone(s.hs).(*pb.HardState), proto.Clone(pb.EnsureConfState(s.snapMeta.ConfState)).(*pb.ConfState), nil
}

// Entries implements raft.Storage.
func (s *RaftStorage) Entries(lo, hi, maxSize uint64) ([]*pb.Entry, error) {
	s.mu.Lock()
	trunc, last := s.truncIndex, s.lastIndex
	s.mu.Unlock()
	if lo <= trunc {
		return nil, raft.ErrCompacted
	}
	if hi > last+1 {
		return nil, fmt.Errorf("persistence: raft group %d: entries [%d,%d) beyond last index %d: %w", s.group, lo, hi, last, raft.ErrUnavailable)
	}
	if lo >= hi {
		return nil, nil
	}
	var ents []*pb.Entry
	var size uint64
	err := s.log.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = rlKey(rlEntry, s.group)
		opt.PrefetchValues = false
		it := txn.NewIterator(opt)
		defer it.Close()
		next := lo
		for it.Seek(rlEntryKey(s.group, lo)); it.ValidForPrefix(opt.Prefix) && next < hi; it.Next() {
			e := &pb.Entry{}
			if err := it.Item().Value(func(v []byte) error { return proto.Unmarshal(v, e) }); err != nil {
				return err
			}
			if e.GetIndex() != next {
				return raft.ErrUnavailable
			}
			size += uint64(proto.Size(e))
			if len(ents) > 0 && size > maxSize {
				break
			}
			ents = append(ents, e)
			next++
		}
		if len(ents) == 0 {
			return raft.ErrUnavailable
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, raft.ErrUnavailable) {
			// Compacted meanwhile?
			s.mu.Lock()
			trunc = s.truncIndex
			s.mu.Unlock()
			if lo <= trunc {
				return nil, raft.ErrCompacted
			}
			return nil, raft.ErrUnavailable
		}
		return nil, fmt.Errorf("persistence: raft group %d: read entries: %w", s.group, err)
	}
	return ents, nil
}

// Term implements raft.Storage.
func (s *RaftStorage) Term(i uint64) (uint64, error) {
	s.mu.Lock()
	trunc, truncTerm, last, lastTerm := s.truncIndex, s.truncTerm, s.lastIndex, s.lastTerm
	s.mu.Unlock()
	switch {
	case i == trunc:
		return truncTerm, nil
	case i < trunc:
		return 0, raft.ErrCompacted
	case i > last:
		return 0, raft.ErrUnavailable
	case i == last:
		return lastTerm, nil
	}
	var e pb.Entry
	err := s.log.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(rlEntryKey(s.group, i))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { return proto.Unmarshal(v, &e) })
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if i <= s.truncIndex {
			return 0, raft.ErrCompacted
		}
		return 0, raft.ErrUnavailable
	}
	if err != nil {
		return 0, fmt.Errorf("persistence: raft group %d: read term %d: %w", s.group, i, err)
	}
	return e.GetTerm(), nil
}

// LastIndex implements raft.Storage.
func (s *RaftStorage) LastIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastIndex, nil
}

// FirstIndex implements raft.Storage.
func (s *RaftStorage) FirstIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.truncIndex + 1, nil
}

// Snapshot implements raft.Storage: the latest snapshot, read from disk (it may be large,
// so it is not kept in memory).
func (s *RaftStorage) Snapshot() (*pb.Snapshot, error) {
	var snap *pb.Snapshot
	err := s.log.db.View(func(txn *badger.Txn) error {
		var err error
		snap, err = readSnapshot(txn, s.group, true)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("persistence: raft group %d: read snapshot: %w", s.group, err)
	}
	return pb.EnsureSnapshot(snap), nil
}

// SnapshotIndex is the index of the stored snapshot (0: none).
func (s *RaftStorage) SnapshotIndex() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapMeta.GetIndex()
}

// CreateSnapshot stores a snapshot of the state machine as of applied index i, with the
// configuration cs in force at i, and then compacts the log up to i-keep (entries kept
// behind the snapshot let a follower that is a little behind catch up without it).
func (s *RaftStorage) CreateSnapshot(i uint64, cs *pb.ConfState, data []byte, keep uint64) error {
	term, err := s.Term(i)
	if err != nil {
		return fmt.Errorf("persistence: raft group %d: snapshot at %d: %w", s.group, i, err)
	}
	s.mu.Lock()
	old := s.snapMeta.GetIndex()
	s.mu.Unlock()
	if i <= old {
		return raft.ErrSnapOutOfDate
	}
	md := &pb.SnapshotMetadata{Index: &i, Term: &term, ConfState: proto.Clone(pb.EnsureConfState(cs)).(*pb.ConfState)}
	// The hard state goes with it: its commit index (at least i) may have been saved without
	// a sync, and a restart from this snapshot needs commit >= the snapshot's index.
	s.mu.Lock()
	hs, err := proto.Marshal(s.hs)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("persistence: raft group %d: encode hard state: %w", s.group, err)
	}
	if err := s.writeSnapshot(&pb.Snapshot{Metadata: md, Data: data}, hs); err != nil {
		return fmt.Errorf("persistence: raft group %d: write snapshot: %w", s.group, err)
	}
	if i > keep {
		return s.Compact(i - keep)
	}
	return nil
}

// writeSnapshot stores snap with the hard state hs: a large snapshot's chunks first, then
// its header (or the whole snapshot) with the hard state in one transaction, synced; then
// the chunks of the snapshot it replaces go.
func (s *RaftStorage) writeSnapshot(snap *pb.Snapshot, hs []byte) error {
	s.log.wmu.RLock()
	defer s.log.wmu.RUnlock()
	w := &rlWriter{db: s.log.db, t: s.log.testHooks}
	defer w.discard()
	setSnap, chunks, err := s.log.writeSnapshot(w, s.group, snap)
	if err != nil {
		return err
	}
	err = w.atomically(setSnap, func(t *badger.Txn) error { return t.Set(rlKey(rlHardState, s.group), hs) })
	if err == nil {
		err = s.log.sync()
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.snapMeta = snap.Metadata
	s.mu.Unlock()
	if err := s.log.dropStaleChunks(w, s.group, snap.Metadata.GetIndex(), chunks); err != nil {
		return err
	}
	return w.commit()
}

// Compact discards the entries up to and including index (never beyond the snapshot, whose
// state is what replaces them).
func (s *RaftStorage) Compact(index uint64) error {
	s.mu.Lock()
	trunc, snapIndex := s.truncIndex, s.snapMeta.GetIndex()
	s.mu.Unlock()
	if index > snapIndex {
		index = snapIndex
	}
	if index <= trunc {
		return nil
	}
	term, err := s.Term(index)
	if err != nil {
		return fmt.Errorf("persistence: raft group %d: compact to %d: %w", s.group, index, err)
	}
	s.log.wmu.RLock()
	defer s.log.wmu.RUnlock()
	w := &rlWriter{db: s.log.db}
	defer w.discard()
	// The truncation record first: a crash after it and before the deletions leaves entries
	// below the first index, which are never read.
	if err := w.set(rlKey(rlTrunc, s.group), truncValue(index, term)); err != nil {
		return fmt.Errorf("persistence: raft group %d: compact: %w", s.group, err)
	}
	for i := trunc + 1; i <= index; i++ {
		if err := w.del(rlEntryKey(s.group, i)); err != nil {
			return fmt.Errorf("persistence: raft group %d: compact: %w", s.group, err)
		}
	}
	if err := w.commit(); err != nil {
		return fmt.Errorf("persistence: raft group %d: compact: %w", s.group, err)
	}
	s.mu.Lock()
	if index > s.truncIndex {
		s.truncIndex, s.truncTerm = index, term
	}
	s.mu.Unlock()
	return nil
}
