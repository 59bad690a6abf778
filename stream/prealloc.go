package stream

import (
	"fmt"
	"os"
)

// Zero-ahead preallocation of the active segment.
//
// An fdatasync after an append that grows the file must also commit the new file size (a
// journal commit on ext4 and xfs); one that only overwrites blocks already written needs a
// data flush and the disk's cache flush. Measured on this project's virtio ext4 disk: ~330 us
// per 6 KB fdatasync into a zero-filled file against ~450-750 us growing it. Publisher
// confirms wait for that sync, so a helper goroutine keeps zeroAhead bytes of written,
// synced zeros ahead of the writer, and the writer's per-batch syncs overwrite them.
//
// Correctness never depends on it: the writer may write past the zeros (the file then grows
// as without preallocation); it only waits for a zeroing in progress that it would write
// into, so zeros never overwrite records. Recovery cuts the zero tail like a torn one (a zero
// byte is not a chunk magic), and sealing a segment truncates it to its last chunk, so sealed
// segments keep their "last chunk ends at end of file" invariant.

const (
	// zeroAhead is the most one zeroing adds; a new one starts when the writer is within half
	// of it of the end of the zeros. 16 MiB is ~5% of a second at 300 MB/s of appends.
	zeroAhead = 16 << 20
	// minZeroAhead is the least: a zeroing adds as much as the segment holds already, between
	// the two, so that many slowly written streams do not each hold 16 MiB of zeros.
	minZeroAhead = 64 << 10
	// zeroBufSize is the zero buffer written repeatedly (read-only, shared by all streams).
	zeroBufSize = 1 << 20
)

var zeroBuf = make([]byte, zeroBufSize)

// zeroing is one zero-fill in progress on the active segment: [from, to).
type zeroing struct {
	from, to int64
	done     chan error
}

// startZeroing starts zero-filling the active segment after end, the end of what the writer
// has written, if the zeros ahead of it are running short and none is in progress.
func (s *Stream) startZeroing(end int64) {
	ahead := min(zeroAhead, max(minZeroAhead, end))
	if s.opts.NoSync || s.zeroing != nil || end+ahead/2 <= s.zeroTo {
		return
	}
	// Not right at end: the writer's next batch goes there and would wait for this zeroing.
	// The gap is written as the file grows.
	gap := min(zeroBufSize, ahead/8, (s.opts.MaxSegmentBytes-end)/8)
	from := max(s.zeroTo, end+gap)
	// Not past the segment's size limit: the segment rolls there.
	to := min(from+ahead, s.opts.MaxSegmentBytes)
	if to <= from {
		return
	}
	z := &zeroing{from: from, to: to, done: make(chan error, 1)}
	f := s.actF
	go func() {
		var err error
		for off := z.from; off < z.to && err == nil; off += zeroBufSize {
			_, err = f.WriteAt(zeroBuf[:min(zeroBufSize, z.to-off)], off)
		}
		if err == nil {
			err = datasync(f)
		}
		z.done <- err
	}()
	s.zeroing = z
	s.zeroed = true
}

// awaitZeroing waits for the zeroing in progress, if any, when the writer is about to write up
// to end (or always, with end < 0: before the file is truncated or closed). A failed zeroing
// is logged and forgotten: the writer then just grows the file.
func (s *Stream) awaitZeroing(end int64) {
	z := s.zeroing
	if z == nil || (end >= 0 && end <= z.from) {
		return
	}
	s.zeroing = nil
	if err := <-z.done; err != nil {
		s.log.Warn("stream: preallocating the segment failed; appending without", "segment", s.act.path, "err", err)
		return
	}
	s.zeroTo = z.to
}

// trimZeros waits for any zeroing and cuts the active segment back to its last chunk (sealing
// or closing it).
func (s *Stream) trimZeros() error {
	s.awaitZeroing(-1)
	s.zeroTo = 0
	if !s.zeroed {
		return nil
	}
	// Even after a failed zeroing, which may have written some zeros.
	s.zeroed = false
	if err := s.actF.Truncate(s.wsize); err != nil {
		return fmt.Errorf("stream: trim preallocated tail of %s: %w", s.act.path, err)
	}
	return nil
}

// allZero reports whether f holds only zero bytes in [from, to).
func allZero(f *os.File, from, to int64) bool {
	buf := make([]byte, 64<<10)
	for off := from; off < to; {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), to-off)], off)
		for _, c := range buf[:n] {
			if c != 0 {
				return false
			}
		}
		if err != nil {
			return false
		}
		off += int64(n)
	}
	return true
}
