package stream

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// simpleEntry is an osiris simple entry: u32 length (top bit 0), then the record.
func simpleEntry(rec string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(rec))), rec...)
}

// subBatchEntry is a sub-batch entry as a stream-protocol publisher sends it and osiris stores
// it: 0x80 | compression << 4, record count (u16), uncompressed length, length (u32), then
// each record as a u32 length and its bytes (for compression 0; other values get the same
// bytes, standing in for compressed ones).
func subBatchEntry(comp byte, recs ...string) []byte {
	var data []byte
	for _, r := range recs {
		data = append(data, simpleEntry(r)...)
	}
	b := binary.BigEndian.AppendUint16([]byte{0x80 | comp<<4}, uint16(len(recs)))
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// rawChunk is a whole chunk (header, data, Warren's trailer) of the given entries holding
// records records, the first at offset first.
func rawChunk(first uint64, records uint32, es ...[]byte) []byte {
	var data []byte
	for _, e := range es {
		data = append(data, e...)
	}
	b := make([]byte, ChunkHeaderSize, ChunkHeaderSize+len(data)+trailerSize)
	putHeader(b, &chunkHeader{numEntries: uint16(len(es)), numRecords: records, timestamp: time.Now().UnixMilli(),
		firstOffset: first, dataCRC: crc32.ChecksumIEEE(data), dataLen: uint32(len(data)), trailerLen: trailerSize})
	b = append(b, data...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crcC))
}

// TestSubBatchEntries reads chunks written by a stream-protocol publisher's batches: records
// of an uncompressed sub-batch entry get an offset each (also when a reader starts inside the
// batch), a compressed one is kept by recovery and passed over by readers (its records keep
// their offsets, counted by the stream), and appends after them are numbered on.
func TestSubBatchEntries(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{})
	for _, r := range []string{"a", "b"} {
		if _, err := s.AppendSync([]byte(r)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*"+segmentExt))
	if len(segs) != 1 {
		t.Fatalf("segments %v", segs)
	}
	f, err := os.OpenFile(segs[0], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(rawChunk(2, 4, subBatchEntry(0, "s0", "s1", "s2"), simpleEntry("after")))
	f.Write(rawChunk(6, 4, simpleEntry("pre"), subBatchEntry(1, "z0", "z1"), simpleEntry("tail")))
	f.Write(rawChunk(10, 2, subBatchEntry(3, "y0", "y1"))) // a chunk of nothing readable
	f.Close()

	s = openT(t, dir, Options{})
	defer s.Close()
	if info := s.Info(); info.Next != 12 {
		t.Fatalf("recovered stream ends at %d, want 12 (every record of the batches counted)", info.Next)
	}
	readable := map[uint64]string{0: "a", 1: "b", 2: "s0", 3: "s1", 4: "s2", 5: "after", 6: "pre", 9: "tail"}
	for _, start := range []uint64{0, 3, 5, 7, 8, 9, 10} {
		r, err := s.NewReader(AtOffset(start))
		if err != nil {
			t.Fatal(err)
		}
		for off := start; off < 12; off++ {
			want, ok := readable[off]
			if !ok {
				continue // in a compressed batch
			}
			rec, ok, err := r.TryNext()
			if err != nil || !ok || rec.Offset != off || string(rec.Data) != want {
				t.Fatalf("from %d: record %d = %d %q %v %v", start, off, rec.Offset, rec.Data, ok, err)
			}
		}
		if rec, ok, err := r.TryNext(); err != nil || ok {
			t.Fatalf("from %d: past the end: %d %q %v %v", start, rec.Offset, rec.Data, ok, err)
		}
		if r.Offset() != 12 {
			t.Fatalf("from %d: reader at %d after the compressed batches, want 12", start, r.Offset())
		}
		r.Close()
	}
	if s.CompressedSkipped() == 0 {
		t.Fatal("compressed records passed over but not counted")
	}
	if off, err := s.AppendSync([]byte("next")); err != nil || off != 12 {
		t.Fatalf("append after the batches: offset %d, %v", off, err)
	}
	r, err := s.NewReader(AtOffset(12))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if rec, ok, err := r.TryNext(); err != nil || !ok || rec.Offset != 12 || string(rec.Data) != "next" {
		t.Fatalf("record 12: %d %q %v %v", rec.Offset, rec.Data, ok, err)
	}
	// A reader waiting in Next gets the record after the compressed batch, not an error.
	r2, err := s.NewReader(AtOffset(7))
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if rec, err := r2.Next(ctx); err != nil || rec.Offset != 9 || string(rec.Data) != "tail" {
		t.Fatalf("Next from 7: %d %q %v", rec.Offset, rec.Data, err)
	}
}

// TestSubBatchMalformed checks that a sub-batch entry that does not add up is a torn chunk.
func TestSubBatchMalformed(t *testing.T) {
	good := subBatchEntry(0, "x", "yy")
	tests := []struct {
		name    string
		entry   []byte
		records uint32
	}{
		{"record count in the header", good, 3},
		{"no records", subBatchEntry(0), 0},
		{"uncompressed length differs", func() []byte { b := append([]byte(nil), good...); b[6]++; return b }(), 2},
		{"records overrun the batch", func() []byte { b := append([]byte(nil), good...); b[len(b)-3] = 9; return b }(), 2},
		{"batch shorter than its length", good[:len(good)-1], 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := entries(tt.entry, 1, tt.records, func(int, []byte) {})
			if !errors.Is(err, errTorn) {
				t.Fatalf("entries: %v, want a torn chunk", err)
			}
		})
	}
}
