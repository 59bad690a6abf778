package stream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Chunk layout constants. The header is osiris's (RabbitMQ's stream storage), byte for byte,
// so the stream protocol's Deliver can send header and data straight from a segment file.
const (
	// ChunkHeaderSize is the size of an osiris chunk header.
	ChunkHeaderSize = 48
	// magicVersion is osiris's first header byte: magic 5 in the high nibble, version 0.
	magicVersion = 0x50
	// chunkTypeUser is osiris's chunk type for user data (1 and 2 are writer tracking).
	chunkTypeUser = 0
	// trailerSize is Warren's trailer: a CRC32C over header and data. osiris keeps its
	// trailer (tracking data) out of Deliver frames too, so clients never see it.
	trailerSize = 4
	// entryHeaderSize is the 4-byte prefix of an osiris simple entry: type bit 0, 31-bit size.
	entryHeaderSize = 4
	// maxEntries is the most entries a chunk holds (osiris's NumEntries is 16 bits).
	maxEntries = 0xFFFF
	// MaxRecordSize is the largest record Append accepts.
	MaxRecordSize = 1 << 30
	// chunkEpoch is the leader epoch written in every chunk: a single node has one leader.
	chunkEpoch = 1
)

var (
	crcC = crc32.MakeTable(crc32.Castagnoli)

	// errTorn reports a chunk that is incomplete or fails its checksum.
	errTorn = errors.New("torn or corrupt chunk")

	// ErrCompressedBatch reports a sub-batch entry whose records are compressed (by a
	// stream-protocol publisher): the chunk is whole, but its records cannot be read yet.
	ErrCompressedBatch = errors.New("stream: compressed sub-batch entries are not supported")
)

// chunkHeader is the decoded form of an osiris chunk header.
type chunkHeader struct {
	numEntries  uint16
	numRecords  uint32
	timestamp   int64 // milliseconds since the Unix epoch
	firstOffset uint64
	dataCRC     uint32 // CRC32 (IEEE, as osiris) of the data section
	dataLen     uint32
	trailerLen  uint32
	bloomSize   uint8
}

// size is the chunk's size on disk: header, bloom filter, data and trailer.
func (h *chunkHeader) size() int64 {
	return ChunkHeaderSize + int64(h.bloomSize) + int64(h.dataLen) + int64(h.trailerLen)
}

// parseHeader decodes and sanity-checks a chunk header. It does not check the checksums.
func parseHeader(b []byte) (chunkHeader, error) {
	if len(b) < ChunkHeaderSize {
		return chunkHeader{}, fmt.Errorf("%w: short header (%d bytes)", errTorn, len(b))
	}
	if b[0] != magicVersion || b[1] != chunkTypeUser {
		return chunkHeader{}, fmt.Errorf("%w: bad magic/version %#x or chunk type %d", errTorn, b[0], b[1])
	}
	h := chunkHeader{
		numEntries:  binary.BigEndian.Uint16(b[2:]),
		numRecords:  binary.BigEndian.Uint32(b[4:]),
		timestamp:   int64(binary.BigEndian.Uint64(b[8:])),
		firstOffset: binary.BigEndian.Uint64(b[24:]),
		dataCRC:     binary.BigEndian.Uint32(b[32:]),
		dataLen:     binary.BigEndian.Uint32(b[36:]),
		trailerLen:  binary.BigEndian.Uint32(b[40:]),
		bloomSize:   b[44],
	}
	if h.numEntries == 0 || uint32(h.numEntries) > h.numRecords || h.trailerLen != trailerSize || h.bloomSize != 0 ||
		uint64(h.dataLen) < uint64(h.numEntries)*entryHeaderSize {
		return chunkHeader{}, fmt.Errorf("%w: inconsistent header (entries %d, records %d, data %d, trailer %d)",
			errTorn, h.numEntries, h.numRecords, h.dataLen, h.trailerLen)
	}
	return h, nil
}

// putHeader encodes h into b[:ChunkHeaderSize].
func putHeader(b []byte, h *chunkHeader) {
	b[0] = magicVersion
	b[1] = chunkTypeUser
	binary.BigEndian.PutUint16(b[2:], h.numEntries)
	binary.BigEndian.PutUint32(b[4:], h.numRecords)
	binary.BigEndian.PutUint64(b[8:], uint64(h.timestamp))
	binary.BigEndian.PutUint64(b[16:], chunkEpoch)
	binary.BigEndian.PutUint64(b[24:], h.firstOffset)
	binary.BigEndian.PutUint32(b[32:], h.dataCRC)
	binary.BigEndian.PutUint32(b[36:], h.dataLen)
	binary.BigEndian.PutUint32(b[40:], h.trailerLen)
	b[44], b[45], b[46], b[47] = h.bloomSize, 0, 0, 0
}

// verifyChunk checks a whole chunk (header, data, trailer as laid out on disk) against both
// checksums and returns its data section.
func verifyChunk(h *chunkHeader, chunk []byte) ([]byte, error) {
	if int64(len(chunk)) != h.size() {
		return nil, fmt.Errorf("%w: chunk at offset %d has %d of %d bytes", errTorn, h.firstOffset, len(chunk), h.size())
	}
	body := chunk[:len(chunk)-trailerSize]
	if crc32.Checksum(body, crcC) != binary.BigEndian.Uint32(chunk[len(body):]) {
		return nil, fmt.Errorf("%w: chunk at offset %d fails its CRC32C", errTorn, h.firstOffset)
	}
	data := body[ChunkHeaderSize+int(h.bloomSize):]
	if crc32.ChecksumIEEE(data) != h.dataCRC {
		return nil, fmt.Errorf("%w: chunk at offset %d fails its data CRC32", errTorn, h.firstOffset)
	}
	return data, nil
}

// appendChunk encodes one chunk holding recs, the first at offset first, onto buf.
func appendChunk(buf []byte, first uint64, tsMillis int64, recs [][]byte) []byte {
	ps := make([]pending, len(recs))
	for i, r := range recs {
		ps[i].data = r
	}
	return appendChunkOf(buf, first, tsMillis, ps)
}

// appendChunkOf is appendChunk for queued records, each its head followed by its data.
func appendChunkOf(buf []byte, first uint64, tsMillis int64, recs []pending) []byte {
	start := len(buf)
	buf = append(buf, make([]byte, ChunkHeaderSize)...)
	for _, r := range recs {
		buf = binary.BigEndian.AppendUint32(buf, uint32(r.size()))
		buf = append(buf, r.head...)
		buf = append(buf, r.data...)
	}
	data := buf[start+ChunkHeaderSize:]
	h := chunkHeader{
		numEntries:  uint16(len(recs)),
		numRecords:  uint32(len(recs)),
		timestamp:   tsMillis,
		firstOffset: first,
		dataCRC:     crc32.ChecksumIEEE(data),
		dataLen:     uint32(len(data)),
		trailerLen:  trailerSize,
	}
	putHeader(buf[start:], &h)
	return binary.BigEndian.AppendUint32(buf, crc32.Checksum(buf[start:], crcC))
}

// subBatchHeaderSize is the head of an osiris sub-batch entry (the stream protocol's
// compressed batch): type bit 1 with the compression in the next 3 bits (1 byte), number of
// records (u16), uncompressed length (u32), length (u32); then length bytes of records.
const subBatchHeaderSize = 11

// entries iterates over a verified data section of n entries holding records records, calling
// fn with each record's bytes. Simple entries are one record each; a sub-batch entry (written
// by stream-protocol publishers batching records, not by Warren) holds several, each a u32
// length and the record, and is read when uncompressed (compression 0); compressed ones
// (gzip, snappy, lz4, zstd) are reported as unsupported.
func entries(data []byte, n int, records uint32, fn func(i int, rec []byte)) error {
	p, r := 0, 0
	var unsupported error
	for i := 0; i < n; i++ {
		if len(data)-p < entryHeaderSize {
			return fmt.Errorf("%w: entry %d header past data end", errTorn, i)
		}
		v := binary.BigEndian.Uint32(data[p:])
		if v&0x80000000 != 0 {
			if len(data)-p < subBatchHeaderSize {
				return fmt.Errorf("%w: sub-batch entry %d header past data end", errTorn, i)
			}
			comp := data[p] >> 4 & 7
			count := int(binary.BigEndian.Uint16(data[p+1:]))
			ulen := binary.BigEndian.Uint32(data[p+3:])
			size := binary.BigEndian.Uint32(data[p+7:])
			p += subBatchHeaderSize
			if uint64(len(data)-p) < uint64(size) {
				return fmt.Errorf("%w: sub-batch entry %d past data end", errTorn, i)
			}
			if count == 0 {
				return fmt.Errorf("%w: sub-batch entry %d without records", errTorn, i)
			}
			if comp != 0 {
				// Counted, not read: the chunk is whole (recovery keeps it), a reader cannot
				// return its records.
				if unsupported == nil {
					unsupported = fmt.Errorf("%w (entry %d, compression %d)", ErrCompressedBatch, i, comp)
				}
				r += count
				p += int(size)
				continue
			}
			if ulen != size {
				return fmt.Errorf("%w: sub-batch entry %d: %d records, length %d, uncompressed %d", errTorn, i, count, size, ulen)
			}
			sub := data[p : p+int(size)]
			q := 0
			for j := 0; j < count; j++ {
				if len(sub)-q < entryHeaderSize {
					return fmt.Errorf("%w: sub-batch entry %d record %d header past its end", errTorn, i, j)
				}
				m := binary.BigEndian.Uint32(sub[q:])
				q += entryHeaderSize
				if uint64(len(sub)-q) < uint64(m) {
					return fmt.Errorf("%w: sub-batch entry %d record %d past its end", errTorn, i, j)
				}
				fn(r, sub[q:q+int(m)])
				q += int(m)
				r++
			}
			if q != len(sub) {
				return fmt.Errorf("%w: sub-batch entry %d has %d bytes after its records", errTorn, i, len(sub)-q)
			}
			p += int(size)
			continue
		}
		p += entryHeaderSize
		if uint64(len(data)-p) < uint64(v) {
			return fmt.Errorf("%w: entry %d past data end", errTorn, i)
		}
		fn(r, data[p:p+int(v)])
		p += int(v)
		r++
	}
	if uint32(r) != records {
		return fmt.Errorf("%w: %d records in the entries, the header says %d", errTorn, r, records)
	}
	return unsupported
}
