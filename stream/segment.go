package stream

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

const (
	segmentExt = ".segment"
	indexExt   = ".index"
	// fileHeaderSize is the size of the header of both segment and index files.
	fileHeaderSize = 8
	// idxRecordSize is one index record: first offset, timestamp, file position (u64 each)
	// and number of records (u32), big-endian.
	idxRecordSize = 28
	fileVersion   = 1
)

var (
	segmentMagic = [4]byte{'W', 'S', 'E', 'G'}
	indexMagic   = [4]byte{'W', 'I', 'D', 'X'}
)

// segment describes one segment file and its index. base and the paths never change; the
// other fields are guarded by Stream.mu and only ever grow while the segment is active.
type segment struct {
	base    uint64 // offset of the segment's first record (its file name)
	path    string
	idxPath string

	size      int64  // committed bytes, file header included: readers never read past it
	next      uint64 // offset after the segment's last committed record
	chunks    int    // committed chunks (and index records)
	firstTs   int64  // timestamp (ms) of the first chunk, if chunks > 0
	lastTs    int64  // timestamp (ms) of the last chunk, if chunks > 0
	lastChunk uint64 // first offset of the last chunk, if chunks > 0
	lastPos   int64  // file position of the last chunk, if chunks > 0
	sealed    bool   // no more appends: a later segment exists
}

// idxRecord is one entry of a segment's sparse index: one per chunk.
type idxRecord struct {
	offset uint64
	ts     int64
	pos    int64
	n      uint32
}

func appendIdx(b []byte, r idxRecord) []byte {
	b = binary.BigEndian.AppendUint64(b, r.offset)
	b = binary.BigEndian.AppendUint64(b, uint64(r.ts))
	b = binary.BigEndian.AppendUint64(b, uint64(r.pos))
	return binary.BigEndian.AppendUint32(b, r.n)
}

func parseIdx(b []byte) idxRecord {
	return idxRecord{
		offset: binary.BigEndian.Uint64(b),
		ts:     int64(binary.BigEndian.Uint64(b[8:])),
		pos:    int64(binary.BigEndian.Uint64(b[16:])),
		n:      binary.BigEndian.Uint32(b[24:]),
	}
}

func fileHeader(magic [4]byte) []byte {
	b := append([]byte(nil), magic[:]...)
	return binary.BigEndian.AppendUint32(b, fileVersion)
}

func checkFileHeader(b []byte, magic [4]byte) bool {
	return len(b) >= fileHeaderSize && [4]byte(b[:4]) == magic && binary.BigEndian.Uint32(b[4:]) == fileVersion
}

func newSegment(dir string, base uint64) *segment {
	name := fmt.Sprintf("%020d", base)
	return &segment{
		base: base, path: filepath.Join(dir, name+segmentExt), idxPath: filepath.Join(dir, name+indexExt),
		size: fileHeaderSize, next: base,
	}
}

// listSegments returns the segments found in dir, oldest first, with only base and paths set.
// Index files without a segment (left by a crash during retention) are removed.
func listSegments(dir string) ([]*segment, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("stream: list %s: %w", dir, err)
	}
	var segs []*segment
	have := map[uint64]bool{}
	for _, de := range des {
		name, ok := strings.CutSuffix(de.Name(), segmentExt)
		if !ok {
			continue
		}
		base, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue
		}
		segs = append(segs, newSegment(dir, base))
		have[base] = true
	}
	for _, de := range des {
		name, ok := strings.CutSuffix(de.Name(), indexExt)
		if !ok {
			continue
		}
		if base, err := strconv.ParseUint(name, 10, 64); err == nil && !have[base] {
			_ = os.Remove(filepath.Join(dir, de.Name()))
		}
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].base < segs[j].base })
	return segs, nil
}

// loadFromIndex fills seg's summary from its index file if the index is consistent with the
// segment file; it reports false when the index must be rebuilt. Used for sealed segments,
// whose files were synced when they were sealed.
func (seg *segment) loadFromIndex() bool {
	f, err := os.Open(seg.idxPath)
	if err != nil {
		return false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() < fileHeaderSize || (st.Size()-fileHeaderSize)%idxRecordSize != 0 {
		return false
	}
	hdr := make([]byte, fileHeaderSize)
	if _, err := f.ReadAt(hdr, 0); err != nil || !checkFileHeader(hdr, indexMagic) {
		return false
	}
	n := int((st.Size() - fileHeaderSize) / idxRecordSize)
	segSt, err := os.Stat(seg.path)
	if err != nil {
		return false
	}
	if n == 0 {
		if segSt.Size() != fileHeaderSize {
			return false
		}
		return true
	}
	b := make([]byte, idxRecordSize)
	if _, err := f.ReadAt(b, fileHeaderSize); err != nil {
		return false
	}
	first := parseIdx(b)
	if _, err := f.ReadAt(b, fileHeaderSize+int64(n-1)*idxRecordSize); err != nil {
		return false
	}
	last := parseIdx(b)
	// The last chunk must end exactly at the end of the segment file.
	sf, err := os.Open(seg.path)
	if err != nil {
		return false
	}
	defer sf.Close()
	hb := make([]byte, ChunkHeaderSize)
	if _, err := sf.ReadAt(hb, last.pos); err != nil {
		return false
	}
	h, err := parseHeader(hb)
	if err != nil || h.firstOffset != last.offset || last.pos+h.size() != segSt.Size() || first.offset != seg.base {
		return false
	}
	seg.size = segSt.Size()
	seg.next = last.offset + uint64(last.n)
	seg.chunks = n
	seg.firstTs, seg.lastTs = first.ts, last.ts
	seg.lastChunk, seg.lastPos = last.offset, last.pos
	return true
}

// recover scans the whole segment file, verifying every chunk, rewrites its index and fills
// seg's summary. A torn or corrupt tail is cut off when truncate is set (the active segment);
// otherwise it is an error, since dropping data in the middle of a stream would renumber it.
func (seg *segment) recover(truncate bool) (dropped int64, err error) {
	f, err := os.OpenFile(seg.path, os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("stream: open segment: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("stream: stat segment: %w", err)
	}
	tmp := seg.idxPath + ".tmp"
	idx, err := os.Create(tmp)
	if err != nil {
		return 0, fmt.Errorf("stream: create index: %w", err)
	}
	defer func() {
		if idx != nil {
			idx.Close()
			os.Remove(tmp)
		}
	}()
	iw := bufio.NewWriterSize(idx, 64<<10)
	iw.Write(fileHeader(indexMagic))

	seg.size, seg.next, seg.chunks = fileHeaderSize, seg.base, 0
	r := bufio.NewReaderSize(io.NewSectionReader(f, 0, st.Size()), 1<<20)
	hdr := make([]byte, fileHeaderSize)
	var end int64
	var buf []byte
	var rec []byte
	if _, err := io.ReadFull(r, hdr); err != nil || !checkFileHeader(hdr, segmentMagic) {
		if st.Size() > 0 && !checkFileHeader(hdr, segmentMagic) && !truncate {
			return 0, fmt.Errorf("stream: segment %s: bad file header", seg.path)
		}
		// A segment created just before a crash: rewrite its header.
		if _, err := f.WriteAt(fileHeader(segmentMagic), 0); err != nil {
			return 0, fmt.Errorf("stream: rewrite segment header: %w", err)
		}
		end = 0
	} else {
		end = fileHeaderSize
		for {
			hb, err := r.Peek(ChunkHeaderSize)
			if err != nil {
				break // clean end (or a torn header)
			}
			h, err := parseHeader(hb)
			if err != nil || h.firstOffset != seg.next || h.timestamp < seg.lastTs {
				break
			}
			if int64(cap(buf)) < h.size() {
				buf = make([]byte, h.size())
			}
			buf = buf[:h.size()]
			if _, err := io.ReadFull(r, buf); err != nil {
				break
			}
			data, err := verifyChunk(&h, buf)
			if err != nil {
				break
			}
			if err := entries(data, int(h.numEntries), h.numRecords, func(int, []byte) {}); err != nil && !errors.Is(err, ErrCompressedBatch) {
				break // a compressed batch is a whole chunk: kept, though readers cannot read it
			}
			rec = appendIdx(rec[:0], idxRecord{offset: h.firstOffset, ts: h.timestamp, pos: end, n: h.numRecords})
			iw.Write(rec)
			if seg.chunks == 0 {
				seg.firstTs = h.timestamp
			}
			seg.chunks++
			seg.lastTs, seg.lastChunk, seg.lastPos = h.timestamp, h.firstOffset, end
			seg.next += uint64(h.numRecords)
			end += h.size()
		}
	}
	if end < st.Size() {
		if !truncate {
			return 0, fmt.Errorf("stream: segment %s: corrupt chunk at byte %d (offset %d)", seg.path, end, seg.next)
		}
		if end == 0 {
			end = fileHeaderSize
		}
		// Zeros after the last chunk are the writer's preallocation (prealloc.go), not a
		// torn write: cut them all the same, without reporting them.
		if !allZero(f, end, st.Size()) {
			dropped = st.Size() - end
		}
		if err := f.Truncate(end); err != nil {
			return 0, fmt.Errorf("stream: truncate torn tail: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("stream: sync segment: %w", err)
	}
	seg.size = end
	if end < fileHeaderSize {
		seg.size = fileHeaderSize
	}
	if err := iw.Flush(); err != nil {
		return 0, fmt.Errorf("stream: write index: %w", err)
	}
	if err := idx.Sync(); err != nil {
		return 0, fmt.Errorf("stream: sync index: %w", err)
	}
	if err := idx.Close(); err != nil {
		return 0, fmt.Errorf("stream: close index: %w", err)
	}
	idx = nil
	if err := os.Rename(tmp, seg.idxPath); err != nil {
		return 0, fmt.Errorf("stream: install index: %w", err)
	}
	return dropped, nil
}

// find returns the first of seg's first n index records for which pred is true (pred must be
// false, then true, along the index), and its position; position n when there is none. It
// binary-searches the index file: indexes are never loaded into memory.
func (seg *segment) find(n int, pred func(idxRecord) bool) (idxRecord, int, error) {
	f, err := os.Open(seg.idxPath)
	if err != nil {
		return idxRecord{}, 0, fmt.Errorf("stream: open index: %w", err)
	}
	defer f.Close()
	b := make([]byte, idxRecordSize)
	var rerr error
	read := func(i int) idxRecord {
		if _, err := f.ReadAt(b, fileHeaderSize+int64(i)*idxRecordSize); err != nil && rerr == nil {
			rerr = fmt.Errorf("stream: read index %s: %w", seg.idxPath, err)
		}
		return parseIdx(b)
	}
	i := sort.Search(n, func(i int) bool { return pred(read(i)) })
	if i == n {
		return idxRecord{}, n, rerr
	}
	r := read(i)
	return r, i, rerr
}

// errNoSegment is returned when a reader's segment file was removed by retention.
var errNoSegment = errors.New("segment removed")
