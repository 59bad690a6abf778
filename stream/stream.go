package stream

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults, RabbitMQ's where RabbitMQ has one.
const (
	// DefaultMaxSegmentBytes is RabbitMQ's default stream-max-segment-size-bytes.
	DefaultMaxSegmentBytes = 500_000_000
	// DefaultMaxChunkBytes bounds the data of one chunk (a batch larger than this is split):
	// it is the unit a reader holds in memory and the stream protocol sends in one frame.
	// A whole chunk of this size fits a reader's read window, so reading allocates nothing.
	DefaultMaxChunkBytes = windowSize - ChunkHeaderSize - trailerSize
)

var (
	// ErrClosed is returned by operations on a closed stream.
	ErrClosed = errors.New("stream: closed")
	// ErrTooLarge is passed to the done callback of a record larger than MaxRecordSize.
	ErrTooLarge = errors.New("stream: record too large")
)

// Options configure a stream. The zero value is valid: RabbitMQ's segment size, no retention
// limit, the system clock, fsync on.
type Options struct {
	// MaxSegmentBytes starts a new segment file when the current one would grow past it
	// (x-stream-max-segment-size-bytes). A single chunk larger than this gets a segment of its own.
	MaxSegmentBytes int64
	// MaxLengthBytes removes the oldest segments while the stream is larger (x-max-length-bytes);
	// 0 means no limit. The active segment is never removed.
	MaxLengthBytes int64
	// MaxAge removes a segment once its newest chunk is older (x-max-age); 0 means no limit.
	MaxAge time.Duration
	// MaxChunkBytes bounds the data of one chunk; 0 means DefaultMaxChunkBytes.
	MaxChunkBytes int
	// Now is the clock, for chunk timestamps and max-age; nil means time.Now. Tests inject one.
	Now func() time.Time
	// NoSync skips fdatasync: for tests and benchmarks that measure everything else. A stream
	// opened with NoSync confirms appends that a power failure can lose.
	NoSync bool
	// Logger gets recovery and retention events; nil means slog.Default().
	Logger *slog.Logger
}

// pending is one record waiting for the writer: head followed by data (AppendParts saves
// the caller a copy of a message body into a record).
type pending struct {
	head []byte
	data []byte
	done func(offset uint64, err error)
}

func (p *pending) size() int { return len(p.head) + len(p.data) }

// Stream is an append-only log of records stored as segment files in one directory. Records
// get consecutive offsets from 0. Append and NewReader may be called from any goroutine.
type Stream struct {
	dir  string
	opts Options
	log  *slog.Logger

	// qmu guards the append queue, shared by publishers and the writer goroutine.
	qmu    sync.Mutex
	queue  []pending
	spare  []pending
	qbytes int64      // bytes of the records in queue
	room   *sync.Cond // on qmu: broadcast when the writer takes the queue
	qerr   error      // set once: the stream is closed or failed, later appends get it
	wake   chan struct{}
	doneCh chan struct{} // closed when the writer goroutine has exited

	// mu guards the segment list and the committed state readers look at. It is never held
	// during file I/O or a sync.
	mu       sync.Mutex
	segs     []*segment    // oldest first; the last is the active one
	next     uint64        // offset the next committed record gets (readers see below it)
	total    int64         // committed bytes of all segments
	notify   chan struct{} // closed and replaced at every commit: readers wait on it
	closed   chan struct{} // closed by Close: waiting readers give up
	failed   error         // a write or sync failed: the stream accepts no more appends
	lastTsMs int64         // newest chunk timestamp, so timestamps never go backwards

	// Writer goroutine state.
	act    *segment
	actF   *os.File
	idxF   *os.File
	wsize  int64 // bytes written to actF (committed or not)
	wnext  uint64
	wbuf   []byte
	ibuf   []byte
	recs   []pending  // the records of the chunk being built
	retain sync.Mutex // one retention pass at a time

	// Zero-ahead preallocation of the active segment (prealloc.go), writer goroutine only.
	zeroTo  int64    // actF holds synced zeros from wsize up to here
	zeroing *zeroing // a zero-fill in progress, or nil
	zeroed  bool     // a zero-fill was started on actF: trim it before sealing or closing

	// Records of compressed sub-batch entries readers passed over (reader.go), and whether
	// that was logged: once per stream, not once per reader or record.
	compressedSkipped atomic.Uint64
	compressedLogged  atomic.Bool
}

// Open opens (or creates) the stream stored in dir. It verifies the active segment, cuts off
// a torn tail left by a crash, and applies retention. It starts the stream's writer goroutine.
func Open(dir string, opts Options) (*Stream, error) {
	if opts.MaxSegmentBytes <= 0 {
		opts.MaxSegmentBytes = DefaultMaxSegmentBytes
	}
	if opts.MaxChunkBytes <= 0 {
		opts.MaxChunkBytes = DefaultMaxChunkBytes
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("stream: create %s: %w", dir, err)
	}
	segs, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	s := &Stream{
		dir: dir, opts: opts, log: log.With("stream", dir),
		wake: make(chan struct{}, 1), doneCh: make(chan struct{}),
		notify: make(chan struct{}), closed: make(chan struct{}),
	}
	s.room = sync.NewCond(&s.qmu)
	for i, seg := range segs {
		last := i == len(segs)-1
		if !last && seg.loadFromIndex() {
			seg.sealed = true
		} else {
			dropped, err := seg.recover(last)
			if err != nil {
				return nil, err
			}
			if dropped > 0 {
				s.log.Warn("stream: cut a torn tail", "segment", seg.path, "bytes", dropped, "next_offset", seg.next)
			}
			seg.sealed = !last
		}
		if i > 0 && segs[i-1].next != seg.base {
			return nil, fmt.Errorf("stream: segment %s starts at offset %d, but the previous one ends at %d", seg.path, seg.base, segs[i-1].next)
		}
		s.total += seg.size
		if seg.chunks > 0 {
			s.lastTsMs = max(s.lastTsMs, seg.lastTs)
		}
	}
	if len(segs) == 0 {
		seg, err := createSegment(dir, 0)
		if err != nil {
			return nil, err
		}
		segs = []*segment{seg}
		s.total = seg.size
	}
	s.segs = segs
	s.act = segs[len(segs)-1]
	s.next, s.wnext, s.wsize = s.act.next, s.act.next, s.act.size
	if s.actF, err = os.OpenFile(s.act.path, os.O_WRONLY, 0); err != nil {
		return nil, fmt.Errorf("stream: open active segment: %w", err)
	}
	if s.idxF, err = os.OpenFile(s.act.idxPath, os.O_WRONLY|os.O_APPEND, 0); err != nil {
		s.actF.Close()
		return nil, fmt.Errorf("stream: open active index: %w", err)
	}
	s.EnforceRetention()
	go s.writer()
	return s, nil
}

// createSegment creates an empty segment and index with base offset base, durably.
func createSegment(dir string, base uint64) (*segment, error) {
	seg := newSegment(dir, base)
	for _, f := range []struct {
		path  string
		magic [4]byte
	}{{seg.idxPath, indexMagic}, {seg.path, segmentMagic}} {
		fh, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, fmt.Errorf("stream: create %s: %w", f.path, err)
		}
		_, err = fh.Write(fileHeader(f.magic))
		if err == nil {
			err = fh.Sync()
		}
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("stream: write %s: %w", f.path, err)
		}
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	return seg, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("stream: open dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("stream: sync dir: %w", err)
	}
	return nil
}

// Append queues rec for writing. done is called once, from the stream's writer goroutine, with
// the record's offset after the chunk holding it is synced to disk (a publisher confirm), or
// with an error; calls come in offset order. done must not block: the next batch waits for it.
// rec must not be modified until done is called. Concurrent appends are written as one chunk
// per batch and synced once per batch (group commit).
func (s *Stream) Append(rec []byte, done func(offset uint64, err error)) {
	s.AppendParts(nil, rec, done)
}

// AppendParts is Append for the record head followed by body, written without joining them
// first; neither may be modified until done is called.
func (s *Stream) AppendParts(head, body []byte, done func(offset uint64, err error)) {
	p := pending{head: head, data: body, done: done}
	if n := p.size(); n > MaxRecordSize {
		done(0, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, n, MaxRecordSize))
		return
	}
	s.qmu.Lock()
	if err := s.qerr; err != nil {
		s.qmu.Unlock()
		done(0, err)
		return
	}
	s.queue = append(s.queue, p)
	s.qbytes += int64(p.size())
	first := len(s.queue) == 1
	s.qmu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// AppendBatch queues recs to be written together, as one chunk when they fit in one
// (MaxChunkBytes, 65535 records), with consecutive offsets; done gets the first offset once
// all are synced. recs must not be modified until done is called.
func (s *Stream) AppendBatch(recs [][]byte, done func(first uint64, err error)) {
	if len(recs) == 0 {
		done(0, nil)
		return
	}
	for _, rec := range recs {
		if len(rec) > MaxRecordSize {
			done(0, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(rec), MaxRecordSize))
			return
		}
	}
	n := uint64(len(recs))
	last := func(off uint64, err error) {
		if err != nil {
			done(0, err)
		} else {
			done(off-(n-1), nil)
		}
	}
	s.qmu.Lock()
	if err := s.qerr; err != nil {
		s.qmu.Unlock()
		done(0, err)
		return
	}
	// Under one lock hold, so the writer takes them in one batch.
	for i, rec := range recs {
		p := pending{data: rec}
		if i == len(recs)-1 {
			p.done = last
		}
		s.queue = append(s.queue, p)
		s.qbytes += int64(len(rec))
	}
	first := len(s.queue) == len(recs)
	s.qmu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// AwaitRoom blocks while more than max bytes of records wait for the writer (they are in
// memory): a publisher that does not wait for confirms calls it to be held to the disk's pace.
func (s *Stream) AwaitRoom(max int64) {
	s.qmu.Lock()
	for s.qbytes > max && s.qerr == nil {
		s.room.Wait()
	}
	s.qmu.Unlock()
}

// AppendSync appends rec and waits until it is on disk.
func (s *Stream) AppendSync(rec []byte) (uint64, error) {
	type result struct {
		off uint64
		err error
	}
	ch := make(chan result, 1)
	s.Append(rec, func(off uint64, err error) { ch <- result{off, err} })
	r := <-ch
	return r.off, r.err
}

// writer is the stream's one writing goroutine: it takes whatever queued up while the last
// batch was being synced and writes it as the next batch.
func (s *Stream) writer() {
	defer close(s.doneCh)
	defer func() {
		// A clean close leaves the active segment ending at its last chunk.
		if err := s.trimZeros(); err != nil {
			s.log.Warn("stream: closing", "err", err)
		}
	}()
	var failed error
	for {
		<-s.wake
		for {
			s.qmu.Lock()
			batch := s.queue
			if len(batch) == 0 {
				stop := s.qerr != nil
				s.qmu.Unlock()
				if stop {
					return
				}
				break
			}
			// Double buffering: appends go to the spare slice while this batch is written.
			s.queue, s.spare = s.spare[:0], nil
			s.qbytes = 0
			s.room.Broadcast()
			s.qmu.Unlock()
			err := failed
			if err == nil {
				if err = s.writeBatch(batch); err != nil {
					failed = err
					s.fail(err)
				}
			}
			off := s.wnext - uint64(len(batch))
			for i, p := range batch {
				if p.done == nil {
					// Inside an AppendBatch: its last record reports.
				} else if err != nil {
					p.done(0, err)
				} else {
					p.done(off+uint64(i), nil)
				}
				batch[i] = pending{}
			}
			s.qmu.Lock()
			s.spare = batch[:0]
			s.qmu.Unlock()
		}
	}
}

// fail puts the stream in the failed state after a write error: what was written but not
// synced is in an unknown state, and the next Open verifies and truncates it.
func (s *Stream) fail(err error) {
	s.log.Error("stream: write failed; no more appends until reopened", "err", err)
	s.qmu.Lock()
	if s.qerr == nil {
		s.qerr = err
	}
	s.room.Broadcast()
	s.qmu.Unlock()
	s.mu.Lock()
	s.failed = err
	s.mu.Unlock()
}

// writeBatch writes batch as chunks of at most MaxChunkBytes, rolling segments as needed,
// syncs, and makes the records visible to readers. On error wnext is left as on entry
// plus len(batch), so the caller's offset arithmetic holds; the stream then fails.
func (s *Stream) writeBatch(batch []pending) (err error) {
	start := s.wnext
	defer func() {
		if err != nil {
			s.wnext = start + uint64(len(batch))
		}
	}()
	now := s.opts.Now().UnixMilli()
	s.mu.Lock()
	if now < s.lastTsMs {
		now = s.lastTsMs
	}
	s.mu.Unlock()
	s.wbuf, s.ibuf = s.wbuf[:0], s.ibuf[:0]
	var c commit
	for i := 0; i < len(batch); {
		s.recs = s.recs[:0]
		size := 0
		for ; i < len(batch) && len(s.recs) < maxEntries; i++ {
			if len(s.recs) > 0 && size+entryHeaderSize+batch[i].size() > s.opts.MaxChunkBytes {
				break
			}
			s.recs = append(s.recs, batch[i])
			size += entryHeaderSize + batch[i].size()
		}
		chunkLen := int64(ChunkHeaderSize + size + trailerSize)
		pos := s.wsize + int64(len(s.wbuf))
		if pos > fileHeaderSize && pos+chunkLen > s.opts.MaxSegmentBytes {
			if err := s.flush(&c); err != nil {
				return err
			}
			if err := s.roll(); err != nil {
				return err
			}
			pos = s.wsize
		}
		s.wbuf = appendChunkOf(s.wbuf, s.wnext, now, s.recs)
		s.ibuf = appendIdx(s.ibuf, idxRecord{offset: s.wnext, ts: now, pos: pos, n: uint32(len(s.recs))})
		c.add(s.wnext, now, pos, len(s.recs))
		s.wnext += uint64(len(s.recs))
	}
	clear(s.recs)
	return s.flush(&c)
}

// commit accumulates what a flush makes visible.
type commit struct {
	chunks    int
	firstTs   int64
	lastTs    int64
	lastChunk uint64
	lastPos   int64
	next      uint64
}

func (c *commit) add(off uint64, ts, pos int64, n int) {
	if c.chunks == 0 {
		c.firstTs = ts
	}
	c.chunks++
	c.lastTs, c.lastChunk, c.lastPos, c.next = ts, off, pos, off+uint64(n)
}

// flush writes the buffered chunks and their index records to the active segment, syncs the
// segment, and publishes the new records to readers.
func (s *Stream) flush(c *commit) error {
	if c.chunks == 0 {
		return nil
	}
	end := s.wsize + int64(len(s.wbuf))
	s.awaitZeroing(end)
	if _, err := s.actF.WriteAt(s.wbuf, s.wsize); err != nil {
		return fmt.Errorf("stream: write segment %s: %w", s.act.path, err)
	}
	// The index is not synced: Open rebuilds the active segment's index from the segment.
	if _, err := s.idxF.Write(s.ibuf); err != nil {
		return fmt.Errorf("stream: write index %s: %w", s.act.idxPath, err)
	}
	if !s.opts.NoSync {
		if err := datasync(s.actF); err != nil {
			return fmt.Errorf("stream: sync segment %s: %w", s.act.path, err)
		}
	}
	s.wsize = end
	s.wbuf, s.ibuf = s.wbuf[:0], s.ibuf[:0]
	s.startZeroing(end)
	s.mu.Lock()
	seg := s.act
	if seg.chunks == 0 {
		seg.firstTs = c.firstTs
	}
	seg.chunks += c.chunks
	seg.lastTs, seg.lastChunk, seg.lastPos, seg.next = c.lastTs, c.lastChunk, c.lastPos, c.next
	s.total += s.wsize - seg.size
	seg.size = s.wsize
	s.next = c.next
	s.lastTsMs = c.lastTs
	close(s.notify)
	s.notify = make(chan struct{})
	s.mu.Unlock()
	*c = commit{}
	return nil
}

// roll seals the active segment (its index synced, so Open can trust it) and starts a new
// one at the next offset, then applies retention.
func (s *Stream) roll() error {
	if err := s.trimZeros(); err != nil {
		return err
	}
	if err := s.idxF.Sync(); err != nil {
		return fmt.Errorf("stream: sync index %s: %w", s.act.idxPath, err)
	}
	if err := s.actF.Sync(); err != nil {
		return fmt.Errorf("stream: sync segment %s: %w", s.act.path, err)
	}
	s.actF.Close()
	s.idxF.Close()
	seg, err := createSegment(s.dir, s.wnext)
	if err != nil {
		return err
	}
	if s.actF, err = os.OpenFile(seg.path, os.O_WRONLY, 0); err != nil {
		return fmt.Errorf("stream: open segment: %w", err)
	}
	if s.idxF, err = os.OpenFile(seg.idxPath, os.O_WRONLY|os.O_APPEND, 0); err != nil {
		return fmt.Errorf("stream: open index: %w", err)
	}
	s.mu.Lock()
	s.act.sealed = true
	s.segs = append(s.segs, seg)
	s.total += seg.size
	s.mu.Unlock()
	s.act, s.wsize = seg, seg.size
	s.EnforceRetention()
	return nil
}

// EnforceRetention removes the oldest segments while the stream is larger than
// MaxLengthBytes or their newest chunk is older than MaxAge. The active segment stays. The
// writer calls it whenever a segment fills; call it periodically too, for max-age to apply to
// a stream nobody writes to. Readers reading a removed segment finish it (the open file
// outlives the unlink) and continue at the new start.
func (s *Stream) EnforceRetention() {
	s.retain.Lock()
	defer s.retain.Unlock()
	if s.opts.MaxLengthBytes <= 0 && s.opts.MaxAge <= 0 {
		return
	}
	cutoff := s.opts.Now().Add(-s.opts.MaxAge).UnixMilli()
	s.mu.Lock()
	var drop []*segment
	total := s.total
	for len(s.segs)-len(drop) > 1 {
		old := s.segs[len(drop)]
		bySize := s.opts.MaxLengthBytes > 0 && total > s.opts.MaxLengthBytes
		byAge := s.opts.MaxAge > 0 && old.chunks > 0 && old.lastTs < cutoff
		if !bySize && !byAge {
			break
		}
		drop = append(drop, old)
		total -= old.size
	}
	s.segs = s.segs[len(drop):]
	s.total = total
	s.mu.Unlock()
	for _, seg := range drop {
		// The segment first: a crash in between leaves an index without a segment, which
		// Open removes; the other way round would leave a segment Open has to rescan.
		if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Error("stream: remove segment", "segment", seg.path, "err", err)
		}
		_ = os.Remove(seg.idxPath)
		s.log.Info("stream: retention removed a segment", "segment", filepath.Base(seg.path),
			"first_offset", seg.base, "next_offset", seg.next, "bytes", seg.size)
	}
}

// SetRetention changes MaxLengthBytes and MaxAge of an open stream (a policy changed) and
// applies them at once. MaxSegmentBytes is left as opened: as in RabbitMQ, a new segment size
// takes effect when the stream is next opened. The two limits are read and written under
// s.retain only.
func (s *Stream) SetRetention(maxLengthBytes int64, maxAge time.Duration) {
	s.retain.Lock()
	s.opts.MaxLengthBytes, s.opts.MaxAge = maxLengthBytes, maxAge
	s.retain.Unlock()
	s.EnforceRetention()
}

// Info is a snapshot of a stream's extent.
type Info struct {
	First    uint64 // offset of the oldest record kept
	Next     uint64 // offset the next record will get; First == Next when the stream is empty
	Bytes    int64  // bytes of the segment files (index files excluded)
	Segments int
}

// CompressedSkipped returns how many records of compressed sub-batch entries (which Warren
// cannot decompress) readers have passed over since the stream was opened; a record is counted
// once for every reader that passes it.
func (s *Stream) CompressedSkipped() uint64 { return s.compressedSkipped.Load() }

// skippedCompressed counts n records of a compressed sub-batch at offset off that a reader
// passed over, logging the first time it happens on this stream.
func (s *Stream) skippedCompressed(off uint64, n int) {
	s.compressedSkipped.Add(uint64(n))
	if s.compressedLogged.CompareAndSwap(false, true) {
		s.log.Warn("stream: readers skip the records of compressed sub-batch entries (not supported)",
			"dir", s.dir, "offset", off, "records", n)
	}
}

// Info returns the stream's current extent.
func (s *Stream) Info() Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Info{First: s.segs[0].base, Next: s.next, Bytes: s.total, Segments: len(s.segs)}
}

// Close waits for queued appends to be written, stops the writer and wakes waiting readers
// with ErrClosed. Readers must still be closed.
func (s *Stream) Close() error {
	s.qmu.Lock()
	if s.qerr == nil {
		s.qerr = ErrClosed
	}
	s.room.Broadcast()
	s.qmu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	<-s.doneCh
	s.mu.Lock()
	select {
	case <-s.closed:
		s.mu.Unlock()
		return nil
	default:
	}
	close(s.closed)
	s.mu.Unlock()
	err := s.actF.Close()
	if ierr := s.idxF.Close(); err == nil {
		err = ierr
	}
	if err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("stream: close: %w", err)
	}
	return nil
}

// Delete closes the stream and removes its directory.
func (s *Stream) Delete() error {
	if err := s.Close(); err != nil {
		return err
	}
	if err := os.RemoveAll(s.dir); err != nil {
		return fmt.Errorf("stream: delete %s: %w", s.dir, err)
	}
	return nil
}
