package persistence

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/ristretto/v2/z"
)

// Options configures Open.
type Options struct {
	// Logger receives store and badger diagnostics; nil means slog.Default().
	Logger *slog.Logger
	// InMemory runs badger without any files (the dir argument of Open is ignored), for tests.
	InMemory bool
	// GCInterval is the value-log GC period; 0 means 5 minutes.
	GCInterval time.Duration
	// NoSync skips fsync after commits. Only for tests and benchmarks: a crash of the
	// machine (not just the process) may then lose confirmed batches.
	NoSync bool

	// The tuning knobs below default to the production settings when zero; tests lower them
	// to exercise file rotation, compaction or timing without large amounts of data.

	// LazyDelay is how long delivery marks and acks that nobody waits for may wait for
	// other requests before they are committed, so that an ack usually meets its message's
	// delivery mark in one group and the mark is never written (see the package doc); an
	// ack reaches the disk this much later at most (RabbitMQ does not sync acks at all).
	// 0 means 10 ms.
	LazyDelay time.Duration
	// MemTableSize is badger's memtable size; 0 means 16 MiB. A transaction may use 15% of
	// it, and flushing a memtable builds its table in memory at several times its size, so
	// this bounds the store's memory more than anything.
	MemTableSize int64
	// ValueLogFileSize is the size of one value-log file; 0 means 64 MiB. GC rewrites or
	// deletes whole files, so this is the granularity in which disk space comes back, and it
	// bounds the journal's pause while a file is collected.
	ValueLogFileSize int64
	// FlattenAfterDeletes is how many message deletions make a mostly empty store worth
	// compacting in full (see compactIfDrained); 0 means 100,000.
	FlattenAfterDeletes int64
}

// Production defaults of the Options tuning knobs.
const (
	defaultLazyDelay           = 10 * time.Millisecond
	defaultMemTableSize        = 16 << 20
	defaultValueLogFileSize    = 64 << 20
	defaultFlattenAfterDeletes = 100000
)

// withDefaults returns o with every zero tuning knob set to its production default.
func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.GCInterval <= 0 {
		o.GCInterval = 5 * time.Minute
	}
	if o.LazyDelay <= 0 {
		o.LazyDelay = defaultLazyDelay
	}
	if o.MemTableSize <= 0 {
		o.MemTableSize = defaultMemTableSize
	}
	if o.ValueLogFileSize <= 0 {
		o.ValueLogFileSize = defaultValueLogFileSize
	}
	if o.FlattenAfterDeletes <= 0 {
		o.FlattenAfterDeletes = defaultFlattenAfterDeletes
	}
	return o
}

// ErrClosed is returned (or passed to done) for operations on a closed Store.
var ErrClosed = errors.New("persistence: store closed")

// ErrNotFound is wrapped by read errors when an index entry points at a missing message.
var ErrNotFound = errors.New("persistence: not found")

// Store is Warren's durable storage: topology, messages and per-queue message indexes in
// one badger database, written by a single journal goroutine (see the package doc).
// All methods are safe for concurrent use.
type Store struct {
	db        *badger.DB
	dir       string
	mappedDir string // dir as /proc/self/maps shows it, for trimMapped; "" in memory
	log       *slog.Logger
	opened    time.Time

	opts Options // as given to Open with defaults applied; read-only

	// Journal queue: Submit appends under mu and signals cond; the journal swaps it out.
	mu      sync.Mutex
	cond    *sync.Cond
	pending []request
	spare   []request
	closing bool
	closed  bool
	// urgent: pending holds a request that must not wait for company (see lazy); lazySince
	// is when the first of pending was submitted, lazyTimer wakes the journal after Options.LazyDelay.
	urgent    bool
	lazySince time.Time
	lazyTimer *time.Timer
	// queued is the message bytes of the batches submitted and not yet committed; room is
	// broadcast (on mu) when the journal has taken some of them off (AwaitRoom).
	queued atomic.Int64 // written under mu
	room   *sync.Cond

	journalDone chan struct{}
	gcStop      chan struct{}
	gcKick      chan struct{}
	gcDone      chan struct{}
	trimDone    chan struct{}
	closeOnce   sync.Once
	closeErr    error

	// Owned by the journal goroutine (and by Open before it starts).
	removedSinceGC int64        // message deletions since value-log GC was last kicked
	deleted        atomic.Int64 // message deletions since Open, for the GC loop
	garbageAtOpen  bool         // the value log is much larger than the messages in it
	failed         error        // sticky: set when a commit fails, the in-memory state can no longer be trusted
	res            *reserver    // space reserved for badger's mapped writes; nil in memory

	writeErr atomic.Pointer[error] // see WriteError
	probing  atomic.Bool           // a probeSpace request is queued

	maxID      atomic.Uint64
	nstored    atomic.Int64  // messages stored, readable outside the journal
	pageSpaces atomic.Uint64 // last page space handed out by NewPageSpace

	// recovered: messages with ids up to it were stored when an Open found the previous run
	// stopped uncleanly (keyRecovered); set by Open, read-only after.
	recovered uint64
	unclean   bool        // this Open found keyRunning (UncleanStop)
	lost      atomic.Bool // a request failed or came after Close: Close leaves keyRunning set

	reads readQueue

	statsMu sync.Mutex
	stats   Stats
}

// Stats reports journal activity, mainly for benchmarks.
type Stats struct {
	// Commits is the number of badger transactions the journal committed (each one sync).
	Commits uint64
	// CommitSeconds is the distribution of those commits' durations, sync included.
	CommitSeconds Histogram
	// Batches is the number of submitted requests (Batches and topology changes) committed.
	Batches uint64
	// Publishes is the number of messages written by committed batches.
	Publishes uint64
	// AvgBatchesPerCommit is Batches/Commits: the group-commit factor.
	AvgBatchesPerCommit float64
	// MaxBatchesPerCommit is the largest number of requests committed in one transaction.
	MaxBatchesPerCommit int
	// AvgPublishesPerCommit is Publishes divided by Commits.
	AvgPublishesPerCommit float64
	// MaxPublishesPerCommit is the largest number of messages written in one transaction.
	MaxPublishesPerCommit int
	// IndexReads is the number of index entries the journal read to apply batches (delivery
	// marks, removals without Entry.SoleRef, publishes without Publish.NewEntries).
	IndexReads uint64
	// MessagesStored is the number of messages currently stored (referenced by some queue).
	MessagesStored int
	// ReadAheads is the number of ReadAhead calls served, ReadEntries the entries they returned.
	ReadAheads, ReadEntries uint64
}

// Open opens (creating if needed) the store in dir. An existing store is verified before
// use: a truncated or garbled MANIFEST, table or value log, missing metadata, or an
// index entry pointing at a missing message makes Open fail with an error naming dir,
// because starting empty or partial would silently lose confirmed messages.
// A non-empty dir that is not a Warren store is refused as well.
func Open(dir string, opts Options) (*Store, error) {
	opts = opts.withDefaults()
	log := opts.Logger.With("component", "persistence")

	fresh := true
	if !opts.InMemory {
		if dir == "" {
			return nil, errors.New("persistence: open: empty directory name")
		}
		var err error
		if fresh, err = preflight(dir); err != nil {
			return nil, err
		}
		if err := removeReservedLogs(dir); err != nil {
			return nil, fmt.Errorf("persistence: open %s: %w", dir, err)
		}
		if free, err := freeBytes(dir); err == nil && free < minFreeToOpen {
			return nil, fmt.Errorf("persistence: open %s: %w: %d bytes free, %d needed to start: %w",
				dir, ErrDiskFull, free, minFreeToOpen, syscall.ENOSPC)
		}
	} else {
		dir = ""
	}

	bo := badger.DefaultOptions(dir).
		WithInMemory(opts.InMemory).
		WithSyncWrites(!opts.NoSync).
		WithLogger(badgerLogger{log}).
		WithLoggingLevel(badger.WARNING).
		WithDetectConflicts(false).
		WithMetricsEnabled(false).
		WithNumVersionsToKeep(1).
		WithMemTableSize(opts.MemTableSize).
		WithNumMemtables(3).
		WithNumLevelZeroTables(5).
		WithNumLevelZeroTablesStall(15).
		// Small messages live in the LSM tree; bodies from valueThreshold up go to the value
		// log, so the LSM tree (memtables, flushes, compactions: all in memory while they run)
		// moves only keys, pointers and index entries.
		WithValueThreshold(valueThreshold).
		// Block compression buffers every compressed block of a table being built in memory
		// (hundreds of MB at 30k msgs/s); bodies in the value log are not compressed anyway.
		WithCompression(options.None).
		WithValueLogFileSize(opts.ValueLogFileSize).
		WithBlockCacheSize(32 << 20).
		WithIndexCacheSize(16 << 20).
		WithNumCompactors(2).
		// Tables are verified whole by preflight; blocks are verified again as they are read.
		WithChecksumVerificationMode(options.OnBlockRead).
		WithVerifyValueChecksum(true)
	if opts.InMemory {
		bo = bo.WithDir("").WithValueDir("")
	}
	db, err := badger.Open(bo)
	if err != nil {
		return nil, fmt.Errorf("persistence: open %s: %w", dirName(dir), err)
	}
	s := &Store{
		db:          db,
		dir:         dir,
		opts:        opts,
		log:         log,
		opened:      time.Now(),
		journalDone: make(chan struct{}),
		gcStop:      make(chan struct{}),
		gcKick:      make(chan struct{}, 1),
		gcDone:      make(chan struct{}),
		trimDone:    make(chan struct{}),
	}
	s.cond = sync.NewCond(&s.mu)
	s.room = sync.NewCond(&s.mu)
	s.lazyTimer = time.AfterFunc(time.Hour, func() {
		s.mu.Lock()
		s.cond.Signal()
		s.mu.Unlock()
	})
	s.lazyTimer.Stop()
	if !opts.InMemory {
		s.res = &reserver{dir: dir, walSize: 2 * opts.MemTableSize, vlogSize: opts.ValueLogFileSize,
			flushKeep: flushReserve(opts.MemTableSize)}
		if err := s.res.init(); err != nil {
			if !errors.Is(err, ErrDiskFull) {
				_ = db.Close()
				return nil, fmt.Errorf("persistence: open %s: %w", dir, err)
			}
			// Reads work on a full disk; commits retry the reservation.
			s.setWriteError(err)
		}
		if s.res.disabled {
			log.Warn("the file system cannot reserve space (no fallocate): a full disk may crash the store", "dir", dir)
		}
		// /proc/self/maps shows absolute, resolved paths.
		if abs, err := filepath.Abs(dir); err == nil {
			if real, err := filepath.EvalSymlinks(abs); err == nil {
				abs = real
			}
			s.mappedDir = abs + string(filepath.Separator)
		}
	}
	if err := s.load(fresh); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("persistence: open %s: %w", dirName(dir), err)
	}
	s.reads.init()
	go s.journal()
	go s.reader()
	go s.gcLoop(opts.GCInterval, opts.InMemory)
	go s.trimLoop()
	log.Info("store opened", "dir", dirName(dir), "messages", s.nstored.Load(), "took", time.Since(s.opened).Round(time.Millisecond))
	return s, nil
}

func dirName(dir string) string {
	if dir == "" {
		return "(in-memory)"
	}
	return dir
}

// preflight creates a missing dir and refuses directories that are not (intact) badger
// stores. It reports whether the store is new.
func preflight(dir string) (fresh bool, err error) {
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return false, fmt.Errorf("persistence: create %s: %w", dir, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("persistence: open %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return false, fmt.Errorf("persistence: open %s: not a directory", dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false, fmt.Errorf("persistence: open %s: %w", dir, err)
	}
	if len(ents) == 0 {
		return true, nil
	}
	manifest := filepath.Join(dir, badger.ManifestFilename)
	f, err := os.Open(manifest)
	if errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("persistence: open %s: directory is not empty and has no %s: not a Warren store (or its MANIFEST was lost)", dir, badger.ManifestFilename)
	}
	if err != nil {
		return false, fmt.Errorf("persistence: open %s: %w", dir, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("persistence: open %s: %w", dir, err)
	}
	// badger itself silently truncates a MANIFEST at the first incomplete record and then
	// deletes the tables it no longer references; we refuse instead. badger syncs each
	// MANIFEST record, so only damage (not a process crash) leaves a partial record.
	m, end, err := badger.ReplayManifestFile(f, 0, badger.DefaultOptions(dir))
	if err != nil {
		return false, fmt.Errorf("persistence: open %s: MANIFEST is corrupted: %w", dir, err)
	}
	if end != st.Size() {
		return false, fmt.Errorf("persistence: open %s: MANIFEST is truncated or corrupted (valid up to byte %d of %d)", dir, end, st.Size())
	}
	for id, tm := range m.Tables {
		p := filepath.Join(dir, fmt.Sprintf("%06d.sst", id))
		ti, err := os.Stat(p)
		if err != nil {
			return false, fmt.Errorf("persistence: open %s: table %s listed in MANIFEST: %w", dir, filepath.Base(p), err)
		}
		if ti.Size() == 0 {
			return false, fmt.Errorf("persistence: open %s: table %s is empty", dir, filepath.Base(p))
		}
		if err := verifyTable(p, tm.Compression); err != nil {
			return false, fmt.Errorf("persistence: open %s: %w", dir, err)
		}
	}
	return false, nil
}

// verifyTable checks every block checksum of one table. badger can do this itself
// (OnTableRead) but dereferences nil on some damaged blocks and crashes the process in a
// goroutine we cannot recover, so we run the same check here where a panic is catchable.
func verifyTable(path string, compression options.CompressionType) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("table %s is corrupted: %v", filepath.Base(path), r)
		}
	}()
	mf, err := z.OpenMmapFile(path, os.O_RDONLY, 0)
	if err != nil && !errors.Is(err, z.NewFile) {
		return fmt.Errorf("table %s: %w", filepath.Base(path), err)
	}
	def := badger.DefaultOptions("")
	t, err := table.OpenTable(mf, table.Options{
		ReadOnly:           true,
		ChkMode:            options.OnTableRead,
		Compression:        compression, // as the table was written (stores made before v2 used snappy)
		BlockSize:          def.BlockSize,
		BloomFalsePositive: def.BloomFalsePositive,
	})
	if err != nil { // OpenTable closed mf
		return fmt.Errorf("table %s is corrupted: %w", filepath.Base(path), err)
	}
	return t.MmapFile.Close(-1)
}

// load verifies the metadata, migrates a format 1 store, finishes interrupted purges,
// wipes the transient pages and checks that stored messages, refcounts and index entries
// agree - streaming, without holding anything per message.
func (s *Store) load(fresh bool) error {
	if fresh {
		err := s.db.Update(func(txn *badger.Txn) error {
			if _, err := txn.Get(keyFormat); err == nil {
				return nil
			}
			return txn.Set(keyFormat, binary.BigEndian.AppendUint32(nil, formatVersion))
		})
		if err != nil {
			return fmt.Errorf("write metadata: %w", err)
		}
	}
	version, err := s.readMeta()
	if err != nil {
		return err
	}
	if err := s.wipePages(); err != nil {
		return err
	}
	if version == formatVersionV1 {
		// Format 1 kept refcounts in memory only; rebuild them on disk first, since
		// completing a purge needs them.
		s.log.Warn("migrating store from format 1 (reads every index entry once)", "dir", s.dir)
		if err := s.repair(); err != nil {
			return fmt.Errorf("migrate from format 1: %w", err)
		}
	}

	// Purges interrupted by a crash are completed before anything can see their queues.
	type marker struct {
		k     []byte
		spans []Span
	}
	var markers []marker
	err = s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte{pfxPurge}
		iter := txn.NewIterator(opt)
		defer iter.Close()
		for iter.Rewind(); iter.Valid(); iter.Next() {
			item := iter.Item()
			m := marker{k: item.KeyCopy(nil)}
			err := item.Value(func(v []byte) error {
				var err error
				m.spans, err = decodeSpans(v)
				return err
			})
			if err != nil {
				return fmt.Errorf("purge marker %x: %w", m.k, err)
			}
			markers = append(markers, m)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, m := range markers {
		vhost, name, rest, err := decodeQueueKey(m.k)
		if err != nil || len(rest) != 0 {
			return fmt.Errorf("purge marker %x: %w", m.k, errCorrupt)
		}
		s.log.Info("completing interrupted purge", "vhost", vhost, "queue", name)
		q := QueueRef{VHost: vhost, Queue: name}
		if err := s.drain(drainJob{prefix: indexPrefix(q), spans: m.spans, index: true, marker: m.k}); err != nil {
			return err
		}
	}

	c, err := s.check()
	if err != nil {
		return err
	}
	if !c.consistent() {
		s.log.Warn("index, refcounts and messages disagree: repairing (reads every index entry once)",
			"dir", s.dir, "messages", c.messages, "references", c.refs, "index_entries", c.entries, "stray_refcounts", c.strayRefs)
		if err := s.repair(); err != nil {
			return err
		}
		if c, err = s.check(); err != nil {
			return err
		}
		if !c.consistent() {
			return fmt.Errorf("still inconsistent after repair: %d messages with %d references, %d index entries", c.messages, c.refs, c.entries)
		}
	}
	s.nstored.Store(c.messages)
	s.markRunning()
	// Garbage left in the value log by a backlog drained before the restart: reclaim it too.
	if s.dir != "" && valueLogBytes(s.dir) > 2*c.bytes+s.opts.ValueLogFileSize {
		s.garbageAtOpen = true
	}
	return nil
}

// valueLogBytes is the size of the value-log files in dir.
func valueLogBytes(dir string) int64 {
	var n int64
	files, _ := filepath.Glob(filepath.Join(dir, "*.vlog"))
	for _, p := range files {
		if fi, err := os.Stat(p); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// readMeta checks the format version (returned) and loads the message-id high-water mark.
func (s *Store) readMeta() (uint32, error) {
	var version uint32
	err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(keyFormat)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return errors.New("store metadata is missing: directory is not a Warren store or was truncated")
		}
		if err != nil {
			return fmt.Errorf("read metadata: %w", err)
		}
		v, err := it.ValueCopy(nil)
		if err != nil {
			return fmt.Errorf("read metadata: %w", err)
		}
		if len(v) == 4 {
			version = binary.BigEndian.Uint32(v)
		}
		if version != formatVersion && version != formatVersionV1 {
			return fmt.Errorf("unsupported store format %x", v)
		}
		if it, err := txn.Get(keyMaxID); err == nil {
			v, err := it.ValueCopy(nil)
			if err != nil || len(v) != 8 {
				return fmt.Errorf("read message-id high-water mark: %w", errors.Join(err, errCorrupt))
			}
			s.maxID.Store(binary.BigEndian.Uint64(v))
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("read message-id high-water mark: %w", err)
		}
		return nil
	})
	return version, err
}

// wipePages deletes the transient pages of the previous run.
func (s *Store) wipePages() error {
	found := false
	err := s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte{pfxPage}
		opt.PrefetchValues = false
		iter := txn.NewIterator(opt)
		defer iter.Close()
		iter.Rewind()
		found = iter.Valid()
		return nil
	})
	if err != nil || !found {
		return err
	}
	if err := s.db.DropPrefix([]byte{pfxPage}); err != nil {
		return fmt.Errorf("wipe transient pages: %w", err)
	}
	return nil
}

// checkResult is what check counted.
type checkResult struct {
	messages  int64 // message records
	bytes     int64 // their encoded size
	refs      int64 // references they claim: their refcount, or 1 without a refcount record
	entries   int64 // index entries
	strayRefs int64 // refcount records without a message
	legacy    bool  // a format 1 index value was seen
}

func (c checkResult) consistent() bool {
	return c.refs == c.entries && c.strayRefs == 0 && !c.legacy
}

// check verifies every message (readable - value-log checksums - and decodable) and
// counts messages, their claimed references and the index entries in three streaming
// scans. Each index entry is one reference, so the counts agree unless an entry points at
// a missing message, a message has no entry, or a refcount is wrong.
func (s *Store) check() (checkResult, error) {
	var c checkResult
	err := s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.PrefetchValues = false
		opt.Prefix = []byte{pfxMessage}
		msgs := txn.NewIterator(opt)
		defer msgs.Close()
		opt.Prefix = []byte{pfxRef}
		refs := txn.NewIterator(opt)
		defer refs.Close()
		refs.Rewind()
		refID := func() (uint64, error) {
			k := refs.Item().Key()
			if len(k) != 9 {
				return 0, fmt.Errorf("refcount key %x: %w", k, errCorrupt)
			}
			return beUint64(k[1:]), nil
		}
		for msgs.Rewind(); msgs.Valid(); msgs.Next() {
			item := msgs.Item()
			k := item.Key()
			if len(k) != 9 {
				return fmt.Errorf("message key %x: %w", k, errCorrupt)
			}
			id := beUint64(k[1:])
			err := item.Value(func(v []byte) error {
				_, err := decodeMessage(id, v)
				c.bytes += int64(len(v))
				return err
			})
			if c.messages%checkTrimEvery == 0 {
				// Reading every message maps the whole value log in; keep the resident set down.
				trimMapped(s.mappedDir, mappedLimit)
			}
			if err != nil {
				return fmt.Errorf("read message %d: %w", id, err)
			}
			if id > s.maxID.Load() {
				s.maxID.Store(id)
			}
			c.messages++
			n := int64(1)
			for refs.Valid() {
				rid, err := refID()
				if err != nil {
					return err
				}
				if rid > id {
					break
				}
				if rid == id {
					err := refs.Item().Value(func(v []byte) error {
						r, err := decodeRef(v)
						n = int64(r)
						return err
					})
					if err != nil {
						return fmt.Errorf("refcount of message %d: %w", id, err)
					}
				} else {
					c.strayRefs++
				}
				refs.Next()
			}
			c.refs += n
		}
		for ; refs.Valid(); refs.Next() {
			c.strayRefs++
		}
		opt.Prefix = []byte{pfxIndex}
		opt.PrefetchValues = true
		idx := txn.NewIterator(opt)
		defer idx.Close()
		for idx.Rewind(); idx.Valid(); idx.Next() {
			item := idx.Item()
			err := item.Value(func(v []byte) error {
				_, legacy, err := decodeIndexValue(v)
				c.legacy = c.legacy || legacy
				return err
			})
			if err != nil {
				return fmt.Errorf("index entry %x: %w", item.Key(), err)
			}
			c.entries++
		}
		return nil
	})
	return c, err
}

// Close stops accepting work, commits everything already submitted, stops value-log GC
// and closes badger. Submit after Close reports ErrClosed. Close must not be called from
// a done callback (it waits for the journal goroutine that runs them).
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		s.cond.Broadcast()
		s.room.Broadcast()
		s.mu.Unlock()
		<-s.journalDone
		s.lazyTimer.Stop()
		s.reads.close()
		close(s.gcStop)
		<-s.gcDone
		<-s.trimDone
		s.clearRunning()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("persistence: close %s: %w", dirName(s.dir), err)
			return
		}
		if s.res != nil {
			// The next memtable's log, created ahead of badger: badger refuses empty ones.
			if err := removeReservedLogs(s.dir); err != nil {
				s.closeErr = fmt.Errorf("persistence: close %s: %w", s.dir, err)
				return
			}
		}
		st := s.Stats()
		s.log.Info("store closed", "dir", dirName(s.dir), "messages", st.MessagesStored, "commits", st.Commits,
			"batches_per_commit", round2(st.AvgBatchesPerCommit), "publishes_per_commit", round2(st.AvgPublishesPerCommit),
			"max_batches_per_commit", st.MaxBatchesPerCommit)
	})
	return s.closeErr
}

// markRunning records, synced, that the store is open (keyRunning). If the key is already
// there the previous run ended without Close - a crash, kill -9, power loss - and delivery
// marks it submitted without waiting (Queue deliveries, see Batch) may be missing: the
// messages stored now are then recorded as possibly delivered (keyRecovered), for good,
// since a later clean stop does not bring their lost marks back. Runs in Open, before the
// journal starts. A failure to write (a full disk) does not fail Open: a bookkeeping key must
// not keep the broker down. What was read still applies to this run (all stored messages
// are flagged if not even that was read), and Close then leaves any running key in place.
func (s *Store) markRunning() {
	if s.opts.InMemory {
		return
	}
	read := false // keyRunning and keyRecovered were read
	err := s.db.Update(func(txn *badger.Txn) error {
		_, err := txn.Get(keyRunning)
		switch {
		case err == nil:
			s.unclean = true
		case !errors.Is(err, badger.ErrKeyNotFound):
			return err
		}
		if it, err := txn.Get(keyRecovered); err == nil {
			v, err := it.ValueCopy(nil)
			if err != nil || len(v) != 8 {
				return fmt.Errorf("recovered-message mark: %w", errors.Join(err, errCorrupt))
			}
			s.recovered = binary.BigEndian.Uint64(v)
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		read = true
		if s.unclean && s.maxID.Load() > s.recovered {
			s.recovered = s.maxID.Load()
			if err := txn.Set(keyRecovered, binary.BigEndian.AppendUint64(nil, s.recovered)); err != nil {
				return err
			}
		}
		return txn.Set(keyRunning, nil)
	})
	if err != nil {
		s.lost.Store(true)
		s.log.Error("writing the running mark failed: a crash of this run may go unnoticed by the next start (its messages would not be flagged redelivered)", "dir", s.dir, "err", err)
		if !read && s.recovered < s.maxID.Load() {
			s.recovered = s.maxID.Load() // the previous stop cannot be told clean
		}
	}
	if s.unclean {
		s.log.Warn("the previous run stopped without closing the store: its stored messages may have been delivered and are flagged redelivered",
			"dir", s.dir, "up_to_message_id", s.recovered)
	}
}

// clearRunning deletes keyRunning at Close, after the journal committed everything: the
// next Open then trusts the delivery marks. Not when a write was lost (a failed commit, a
// full disk, a Submit after Close): a delivery mark may be among them.
func (s *Store) clearRunning() {
	if s.opts.InMemory {
		return
	}
	if s.lost.Load() || s.failed != nil {
		s.log.Warn("some writes were not committed: the next start treats this stop as unclean", "dir", s.dir)
		return
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(keyRunning) }); err != nil {
		s.log.Warn("clearing the running mark failed: the next start treats this stop as unclean", "dir", s.dir, "err", err)
	}
}

// UncleanStop reports whether the run before this Open ended without a clean Close (see
// Stored.MaybeDelivered).
func (s *Store) UncleanStop() bool { return s.unclean }

// MaxMessageID returns the highest message id ever committed (a persisted high-water mark,
// so it does not go back when messages are deleted); new ids must be above it.
func (s *Store) MaxMessageID() uint64 { return s.maxID.Load() }

// Stats returns a snapshot of journal counters.
func (s *Store) Stats() Stats {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	st := s.stats
	st.MessagesStored = int(s.nstored.Load())
	st.ReadAheads, st.ReadEntries = s.reads.served.Load(), s.reads.entries.Load()
	if st.Commits > 0 {
		st.AvgBatchesPerCommit = float64(st.Batches) / float64(st.Commits)
		st.AvgPublishesPerCommit = float64(st.Publishes) / float64(st.Commits)
	}
	return st
}

// CommitBuckets are the upper bounds, in seconds, of Histogram's buckets.
var CommitBuckets = [...]float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

// Histogram counts observations in CommitBuckets: Counts[i] is the number at or below
// CommitBuckets[i] (cumulative, as Prometheus wants them); Count and Sum cover all of them.
type Histogram struct {
	Counts [len(CommitBuckets)]uint64
	Count  uint64
	Sum    float64
}

func (h *Histogram) observe(v float64) {
	h.Count++
	h.Sum += v
	for i, b := range CommitBuckets {
		if v <= b {
			h.Counts[i]++
		}
	}
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }

// gcLoop runs value-log GC every interval and when kicked after large deletions.
func (s *Store) gcLoop(interval time.Duration, inMemory bool) {
	defer close(s.gcDone)
	if inMemory {
		<-s.gcStop
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	m := maintenance{pending: s.garbageAtOpen}
	for {
		select {
		case <-s.gcStop:
			return
		case <-t.C:
			m.compactIfDrained(s)
		case <-s.gcKick:
		}
		s.runGC()
	}
}

// maintenance is the GC loop's memory of its last full compaction.
type maintenance struct {
	flattenedAt int64 // s.deleted then
	pending     bool  // compact at the next tick whatever the deletions
}

// compactIfDrained compacts the whole LSM tree once many messages were deleted and few are
// left - a drained backlog. The value log learns which of its records are garbage only when
// compaction drops the keys deleted above them, and an idle tree does not compact, so
// without this a drained backlog would keep its disk space.
func (m *maintenance) compactIfDrained(s *Store) {
	deleted := s.deleted.Load() - m.flattenedAt
	if !m.pending && (deleted < s.opts.FlattenAfterDeletes || s.nstored.Load()*4 > deleted) {
		return
	}
	m.pending = false
	m.flattenedAt += deleted
	start := time.Now()
	// The latest deletions are still in the memtables, which Flatten leaves alone. DropPrefix
	// flushes them first; no key has this prefix. It makes concurrent writes fail rather than
	// wait, so it runs on the journal goroutine, between groups.
	if err := s.exclusive(func() error { return s.db.DropPrefix([]byte{pfxUnused}) }); err != nil {
		s.log.Warn("flushing memtables after a drained backlog failed", "err", err)
		return
	}
	if err := s.db.Flatten(2); err != nil {
		s.log.Warn("compaction after a drained backlog failed", "err", err)
		return
	}
	s.log.Info("compacted after a drained backlog", "deleted_messages", deleted, "messages", s.nstored.Load(), "took", time.Since(start).Round(time.Millisecond))
}

// checkTrimEvery is how many messages Open's check reads between trims of mapped pages.
const checkTrimEvery = 16384

// trimInterval is how often trimLoop looks at the memory held by mapped files, and
// mappedLimit the file-backed resident memory above which it reclaims the store's mappings.
const (
	trimInterval = time.Second
	mappedLimit  = 64 << 20
)

// trimLoop keeps the pages of badger's memory-mapped files from piling up in the resident
// set, and looks again for disk space while commits are refused for lack of it.
func (s *Store) trimLoop() {
	defer close(s.trimDone)
	dir := s.mappedDir
	if dir == "" && s.res == nil {
		<-s.gcStop
		return
	}
	t := time.NewTicker(trimInterval)
	defer t.Stop()
	for {
		select {
		case <-s.gcStop:
			return
		case <-t.C:
			trimMapped(dir, mappedLimit)
			s.probeSpace()
		}
	}
}

// runGC collects value-log files, one per journal request: badger's rewrite of a file reads
// the memtables' version counters without the lock their writers hold, so it must not run
// while the journal commits (the race detector caught it); one file at a time keeps the
// journal's pause short (a file is Options.ValueLogFileSize).
func (s *Store) runGC() {
	for i := 0; i < 16; i++ { // bounded so Close is never held up for long
		select {
		case <-s.gcStop:
			return
		default:
		}
		err := s.exclusive(func() error {
			if s.res != nil {
				// A rewrite moves the live half (at most) of a file into the value log, which
				// may start the next file on the way, and the memtable, which may be flushed.
				// It must be able to run when space is short, since it is what gives space
				// back after acks: it needs less than the groups adding messages.
				if err := s.res.ensure(s.opts.ValueLogFileSize / 2); err != nil {
					return err
				}
				if err := s.res.room(s.opts.ValueLogFileSize/2 + s.opts.MemTableSize); err != nil {
					return err
				}
			}
			return s.db.RunValueLogGC(0.5)
		})
		if err != nil {
			if errors.Is(err, ErrDiskFull) {
				s.log.Debug("value-log GC postponed", "err", err)
			} else if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				s.log.Warn("value-log GC failed", "err", err)
			}
			return
		}
	}
}

func (s *Store) kickGC() {
	select {
	case s.gcKick <- struct{}{}:
	default:
	}
}

// badgerLogger routes badger's logging to slog; info/debug chatter is dropped.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Log(context.Background(), slog.LevelError, "badger: "+trimNL(fmt.Sprintf(f, a...)))
}

func (b badgerLogger) Warningf(f string, a ...any) {
	msg := trimNL(fmt.Sprintf(f, a...))
	level := slog.LevelWarn
	for _, noise := range badgerNoise {
		if strings.Contains(msg, noise) {
			level = slog.LevelDebug
			break
		}
	}
	b.l.Log(context.Background(), level, "badger: "+msg)
}

// badgerNoise are badger warnings that say nothing is wrong: the block cache's hit rate after
// Open read every message once (repeated every minute), and two workers of a full
// compaction competing for the same tables.
var badgerNoise = []string{"Block cache might be too small", "Cache life expectancy", "Unable to fill tables"}

func (b badgerLogger) Infof(string, ...any)  {}
func (b badgerLogger) Debugf(string, ...any) {}

func trimNL(s string) string {
	for len(s) > 0 && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	return s
}

// valueThreshold: values of at least this size go to the value log. Measured with a backlog of
// 200k persistent 1 KiB messages: 4 KiB (bodies in the LSM tree) peaked at 750 MB of anonymous
// memory, 256 bytes at 105 MB, with faster publishing and draining; the cost is a second sync
// per commit (value log and WAL), about +0.1 ms on a window-1 confirm (p50 0.6 -> 0.75 ms).
const valueThreshold = 256
