package stream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// SpecKind says how a reader picks its first record.
type SpecKind int

// The kinds of Spec, named after RabbitMQ's x-stream-offset values.
const (
	SpecNext      SpecKind = iota // the next record appended (RabbitMQ's default)
	SpecFirst                     // the oldest record kept
	SpecLast                      // the first record of the last chunk written
	SpecOffset                    // a numeric offset, clamped to [first, next]
	SpecTimestamp                 // the first chunk written at or after a time
)

// Spec is where a reader starts.
type Spec struct {
	Kind   SpecKind
	Offset uint64    // for SpecOffset
	Time   time.Time // for SpecTimestamp (millisecond precision, as chunk timestamps)
}

// First, Last, Next, AtOffset and AtTime build a Spec.
func First() Spec              { return Spec{Kind: SpecFirst} }
func Last() Spec               { return Spec{Kind: SpecLast} }
func Next() Spec               { return Spec{Kind: SpecNext} }
func AtOffset(off uint64) Spec { return Spec{Kind: SpecOffset, Offset: off} }
func AtTime(t time.Time) Spec  { return Spec{Kind: SpecTimestamp, Time: t} }
func (k SpecKind) String() string {
	return [...]string{"next", "first", "last", "offset", "timestamp"}[k]
}

// Record is one record read from a stream. Data is only valid until the reader's next call.
type Record struct {
	Offset    uint64
	Timestamp time.Time // the chunk's: when the batch holding the record was written
	Data      []byte
}

// windowSize is the reader's read-ahead from the segment file: several small chunks per
// pread. Windows come from a pool and go back whenever a reader waits for new data, so idle
// readers hold no buffer.
const windowSize = 256 << 10

var windowPool = sync.Pool{New: func() any { b := make([]byte, windowSize); return &b }}

// Reader reads a stream's records in offset order, from files: its memory is one read window
// (a chunk, if larger), whatever the stream's length. A Reader is not safe for concurrent use;
// any number of readers may read one stream.
type Reader struct {
	s    *Stream
	next uint64   // offset of the next record to return
	seg  *segment // segment being read; nil after its file disappeared
	f    *os.File
	pos  int64 // file position of the next chunk

	win    *[]byte // read-ahead: file bytes [winPos, winPos+winLen)
	big    []byte  // a chunk larger than a window
	winPos int64
	winLen int

	// The chunk being returned.
	data []byte
	left int    // entries not yet returned
	off  uint64 // offset of the next record
	tsMs int64
	// The sub-batch entry being returned (records of a stream-protocol batch).
	sub     []byte
	subLeft int
}

// more reports whether the current chunk has records left to return.
func (r *Reader) more() bool { return r.left > 0 || r.subLeft > 0 }

// NewReader returns a reader positioned by spec. A position before the start of the stream
// (removed by retention) reads from the start; past the end, from the next record appended.
func (s *Stream) NewReader(spec Spec) (*Reader, error) {
	r := &Reader{s: s}
	var err error
	for try := 0; try < 10; try++ {
		if err = r.seek(spec); err == nil || !errors.Is(err, os.ErrNotExist) {
			break
		}
		// Retention removed the segment while we searched its index: search again.
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Reader) seek(spec Spec) error {
	s := r.s
	s.mu.Lock()
	segs := s.segs
	act := segs[len(segs)-1]
	// Defaults: the end of the stream.
	seg, target, pos := act, s.next, act.size
	var n int
	var pred func(idxRecord) bool
	switch spec.Kind {
	case SpecFirst:
		seg, target, pos = segs[0], segs[0].base, fileHeaderSize
	case SpecLast:
		for i := len(segs) - 1; i >= 0; i-- {
			if segs[i].chunks > 0 {
				seg, target, pos = segs[i], segs[i].lastChunk, segs[i].lastPos
				break
			}
		}
	case SpecOffset:
		target = min(max(spec.Offset, segs[0].base), s.next)
		for i := len(segs) - 1; i >= 0; i-- {
			if segs[i].base <= target {
				seg = segs[i]
				break
			}
		}
		n, pos = seg.chunks, seg.size
		pred = func(x idxRecord) bool { return x.offset+uint64(x.n) > target }
	case SpecTimestamp:
		ms := spec.Time.UnixMilli()
		for _, sg := range segs {
			if sg.chunks > 0 && sg.lastTs >= ms {
				seg, n = sg, sg.chunks
				pred = func(x idxRecord) bool { return x.ts >= ms }
				break
			}
		}
	case SpecNext:
	default:
		s.mu.Unlock()
		return fmt.Errorf("stream: unknown offset spec %d", spec.Kind)
	}
	s.mu.Unlock()
	if pred != nil && n > 0 {
		rec, i, err := seg.find(n, pred)
		if err != nil {
			return err
		}
		if i < n {
			pos = rec.pos
			if spec.Kind == SpecTimestamp {
				target = rec.offset
			}
		}
	}
	r.closeFile()
	r.seg, r.next, r.pos = seg, target, pos
	r.left, r.subLeft = 0, 0
	return nil
}

// Offset returns the offset of the next record the reader returns.
func (r *Reader) Offset() uint64 { return r.next }

// TryNext returns the next record, or ok false when the reader has caught up.
func (r *Reader) TryNext() (rec Record, ok bool, err error) {
	for {
		if r.more() {
			return r.entry(), true, nil
		}
		got, _, err := r.fill()
		if err != nil || !got {
			return Record{}, false, err
		}
	}
}

// Next returns the next record, waiting for it to be appended (and synced) if the reader has
// caught up. It returns ctx's error when ctx ends and ErrClosed when the stream closes.
func (r *Reader) Next(ctx context.Context) (Record, error) {
	for {
		if r.more() {
			return r.entry(), nil
		}
		got, notify, err := r.fill()
		if err != nil {
			return Record{}, err
		}
		if got {
			continue
		}
		r.releaseWindow()
		select {
		case <-notify:
		case <-r.s.closed:
			return Record{}, ErrClosed
		case <-ctx.Done():
			return Record{}, ctx.Err()
		}
	}
}

// entry decodes the next record of the current chunk; entries were checked by fill.
func (r *Reader) entry() Record {
	if r.subLeft == 0 && r.data[0]&0x80 != 0 {
		// A sub-batch entry (uncompressed, checked by fill): its records come one by one.
		n := int(binary.BigEndian.Uint32(r.data[7:]))
		r.subLeft = int(binary.BigEndian.Uint16(r.data[1:]))
		r.sub = r.data[subBatchHeaderSize : subBatchHeaderSize+n]
		r.data = r.data[subBatchHeaderSize+n:]
		r.left--
	}
	var rec Record
	if r.subLeft > 0 {
		n := int(binary.BigEndian.Uint32(r.sub))
		rec = Record{Offset: r.off, Timestamp: time.UnixMilli(r.tsMs), Data: r.sub[entryHeaderSize : entryHeaderSize+n : entryHeaderSize+n]}
		r.sub = r.sub[entryHeaderSize+n:]
		r.subLeft--
	} else {
		n := int(uint32(r.data[0])<<24 | uint32(r.data[1])<<16 | uint32(r.data[2])<<8 | uint32(r.data[3]))
		rec = Record{Offset: r.off, Timestamp: time.UnixMilli(r.tsMs), Data: r.data[entryHeaderSize : entryHeaderSize+n : entryHeaderSize+n]}
		r.data = r.data[entryHeaderSize+n:]
		r.left--
	}
	r.off++
	r.next = r.off
	r.skipCompressed()
	return rec
}

// skipCompressed passes over compressed sub-batch entries at the reader's position in the
// current chunk, so that more reports only records the reader can return. Their records keep
// their offsets (the chunk counts them) but are never returned; the stream counts and logs them.
func (r *Reader) skipCompressed() {
	for r.subLeft == 0 && r.left > 0 && r.data[0]&0x80 != 0 && r.data[0]>>4&7 != 0 {
		count := int(binary.BigEndian.Uint16(r.data[1:]))
		n := int(binary.BigEndian.Uint32(r.data[7:]))
		r.data = r.data[subBatchHeaderSize+n:]
		r.left--
		r.s.skippedCompressed(r.off, count)
		r.off += uint64(count)
		r.next = r.off
	}
}

// fill loads the next chunk holding records at or after r.next. It reports false, with the
// channel to wait on, when there is none yet.
func (r *Reader) fill() (bool, <-chan struct{}, error) {
	s := r.s
	for {
		s.mu.Lock()
		if r.seg == nil || (r.seg.sealed && r.pos >= r.seg.size) {
			// Move to the segment holding r.next; a reader behind the start goes to the start.
			segs := s.segs
			seg := segs[0]
			if r.next < seg.base {
				r.next = seg.base
			}
			for i := len(segs) - 1; i >= 0; i-- {
				if segs[i].base <= r.next {
					seg = segs[i]
					break
				}
			}
			if seg == r.seg {
				s.mu.Unlock()
				return false, nil, fmt.Errorf("stream: reader at offset %d: sealed segment %s ends at %d", r.next, seg.path, seg.next)
			}
			r.closeFile()
			r.seg, r.pos = seg, fileHeaderSize
		}
		seg, limit, sealed, notify := r.seg, r.seg.size, r.seg.sealed, s.notify
		s.mu.Unlock()
		if r.pos >= limit {
			if sealed {
				continue // sealed since we looked: move on
			}
			return false, notify, nil
		}
		if r.f == nil {
			f, err := os.Open(seg.path)
			if errors.Is(err, os.ErrNotExist) {
				r.seg = nil // removed by retention: continue at the start
				continue
			}
			if err != nil {
				return false, nil, fmt.Errorf("stream: open segment: %w", err)
			}
			r.f = f
		}
		hb, err := r.read(r.pos, ChunkHeaderSize, limit)
		if err != nil {
			return false, nil, err
		}
		h, err := parseHeader(hb)
		if err != nil {
			return false, nil, fmt.Errorf("stream: %s at byte %d: %w", seg.path, r.pos, err)
		}
		chunk, err := r.read(r.pos, int(h.size()), limit)
		if err != nil {
			return false, nil, err
		}
		data, err := verifyChunk(&h, chunk)
		if err != nil {
			return false, nil, fmt.Errorf("stream: %s at byte %d: %w", seg.path, r.pos, err)
		}
		// Compressed sub-batches are passed over (skipCompressed), not an error: stopping there
		// would stop every reader before them for good.
		if err := entries(data, int(h.numEntries), h.numRecords, func(int, []byte) {}); err != nil && !errors.Is(err, ErrCompressedBatch) {
			return false, nil, fmt.Errorf("stream: %s at byte %d: %w", seg.path, r.pos, err)
		}
		r.pos += h.size()
		r.data, r.left, r.off, r.tsMs = data, int(h.numEntries), h.firstOffset, h.timestamp
		r.sub, r.subLeft = nil, 0
		// Skip the records before the position asked for (numeric offsets inside a chunk).
		target := r.next
		r.skipCompressed()
		for r.more() && r.off < target {
			r.entry()
		}
		if r.more() {
			r.next = r.off
			return true, nil, nil
		}
		r.next = max(r.next, target)
	}
}

// read returns n file bytes at pos (pos+n <= limit) from the read-ahead window, refilling it.
func (r *Reader) read(pos int64, n int, limit int64) ([]byte, error) {
	if pos+int64(n) > limit {
		return nil, fmt.Errorf("stream: %s: chunk at byte %d overruns the committed end %d: %w", r.seg.path, pos, limit, errTorn)
	}
	if r.win != nil && pos >= r.winPos && pos+int64(n) <= r.winPos+int64(r.winLen) {
		b := *r.win
		if r.big != nil {
			b = r.big
		}
		o := int(pos - r.winPos)
		return b[o : o+n], nil
	}
	if r.win == nil {
		r.win = windowPool.Get().(*[]byte)
	}
	buf := *r.win
	r.big = nil
	if n > len(buf) {
		r.big = make([]byte, n)
		buf = r.big
	}
	want := min(int64(len(buf)), limit-pos)
	got, err := r.f.ReadAt(buf[:want], pos)
	if int64(got) < want {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		r.winLen = 0
		return nil, fmt.Errorf("stream: read %s at byte %d: %w", r.seg.path, pos, err)
	}
	r.winPos, r.winLen = pos, int(want)
	return buf[:n], nil
}

// releaseWindow returns the read window to the pool while the reader waits.
func (r *Reader) releaseWindow() {
	if r.win != nil {
		windowPool.Put(r.win)
		r.win, r.big, r.winLen = nil, nil, 0
	}
}

func (r *Reader) closeFile() {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
	r.winLen = 0
}

// Close releases the reader's file and buffer.
func (r *Reader) Close() {
	r.closeFile()
	r.releaseWindow()
	r.left, r.subLeft = 0, 0
}
