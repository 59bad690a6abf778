package persistence

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrDiskFull is wrapped (together with syscall.ENOSPC) by the errors of commits refused
// because the store's file system lacks the space they may need; nothing of such a commit
// was written, and later commits succeed once space returns.
var ErrDiskFull = errors.New("disk full")

// badger writes its write-ahead logs (.mem) and value logs (.vlog) through writable memory
// maps of sparse files. A page first written that way needs a block from the file system at
// fault time, and when none is left the kernel answers with SIGBUS, which kills the process
// (it happens on badger's goroutines, so not even SetPanicOnFault helps). The journal
// therefore reserves, before each commit, every byte that commit can write through a map
// (fallocate), and refuses the commit with ErrDiskFull when the reservation fails - nothing
// is written then, so the store stays consistent and usable:
//
//   - the value log being written, up to ValueLogFileSize plus what the group writes to it
//     (badger rotates files once they pass ValueLogFileSize, so a commit starts below it);
//     blocks past the end of the file are reserved without changing its size, and badger
//     grows the file into them;
//   - the memtable's log, and the log of the next memtable, which badger creates (and
//     writes at once) inside a commit when the current one is full: the journal creates
//     that file ahead of badger, empty with its blocks reserved past its end, and badger
//     opens it as a new file. Empty .mem files left by a crash are removed before badger
//     opens the directory (badger refuses them).
//
// badger also writes tables (flushed memtables, compactions) and the header of each new
// value-log file through maps, on its own schedule, into files it creates exclusively, so
// they cannot be reserved ahead; for them the journal keeps free space: groups that add
// message data are refused while less than flushReserve is free, so that flushing every
// memtable still fits.

// reserver tracks what the journal has reserved. It is used by the journal goroutine only
// (and by Open before the journal starts).
type reserver struct {
	dir       string
	walSize   int64 // bytes badger maps for a memtable log: 2*MemTableSize
	vlogSize  int64 // Options.ValueLogFileSize
	flushKeep int64 // free bytes groups adding messages leave: flushReserve(MemTableSize)
	mem       int   // fid of the newest memtable log badger uses
	memAhead  int   // fid of the memtable log created and reserved ahead of badger
	vlog      int   // fid of the newest value-log file
	vlogTo    int64 // bytes of vlog reserved from its start
	disabled  bool  // the file system (or OS) does not support fallocate: reserve nothing
}

// minFreeToOpen is the free space Open requires: badger starts a new memtable log and maybe
// a value-log file, and writes their headers through maps before the journal can reserve
// anything.
const minFreeToOpen = 1 << 20

// numMemtables is badger's NumMemtables as Open sets it.
const numMemtables = 3

// flushReserve is the free space kept for badger's own writes that cannot be reserved
// ahead: the tables of every memtable being flushed (each at most its memtable's size) and
// one more memtable's worth for compaction output written before its inputs are deleted.
func flushReserve(memTableSize int64) int64 { return (numMemtables + 2) * memTableSize }

// DiskReserve returns the free space the store itself may still claim on its file system
// beyond what it has already reserved: the next value-log file (ValueLogFileSize plus a
// group's bytes, reserved when badger starts it), the log of the memtable after next, and
// the space kept for flushes and compactions. A disk alarm that blocks publishers must trip
// at DiskReserve plus what publishers can write between two of its checks at the highest
// rate, so that the store never refuses a commit for lack of space.
func (s *Store) DiskReserve() int64 {
	if s.dir == "" {
		return 0
	}
	return s.opts.ValueLogFileSize + 2*s.opts.MemTableSize + flushReserve(s.opts.MemTableSize)
}

// WriteError returns why commits adding messages fail - ErrDiskFull (with the free space
// found) as the last group saw it, or the error that made the store read-only - and nil
// once a group adding messages could commit again. It is cheap (an atomic load): a server
// polls it to raise its disk alarm and lowers the alarm when it returns nil.
func (s *Store) WriteError() error {
	if p := s.writeErr.Load(); p != nil {
		return *p
	}
	return nil
}

// probeSpace checks, on the journal goroutine, whether space has come back while commits
// are refused for lack of it, so that WriteError clears even when nothing is committed (a
// server whose disk alarm blocks every publisher commits nothing). One probe at a time.
func (s *Store) probeSpace() {
	p := s.writeErr.Load()
	if s.res == nil || p == nil || !errors.Is(*p, ErrDiskFull) || !s.probing.CompareAndSwap(false, true) {
		return
	}
	s.submit(request{exclusive: func() error {
		defer s.probing.Store(false)
		if s.failed != nil {
			return nil // read-only for good: WriteError keeps saying so
		}
		err := s.res.ensure(0)
		if err == nil {
			err = s.res.room(s.res.flushKeep)
		}
		s.setWriteError(err)
		return nil
	}, done: func(error) { s.probing.Store(false) }})
}

// setWriteError records err (nil clears it) for WriteError.
func (s *Store) setWriteError(err error) {
	if err == nil {
		if s.writeErr.Load() != nil {
			s.writeErr.Store(nil)
			s.log.Info("commits succeed again", "dir", s.dir)
		}
		return
	}
	if s.writeErr.Load() == nil {
		s.log.Warn("commits adding messages are refused", "dir", s.dir, "err", err)
	}
	s.writeErr.Store(&err)
}

func memPath(dir string, fid int) string  { return filepath.Join(dir, fmt.Sprintf("%05d.mem", fid)) }
func vlogPath(dir string, fid int) string { return filepath.Join(dir, fmt.Sprintf("%06d.vlog", fid)) }

// removeReservedLogs deletes empty memtable logs from dir: files the journal created ahead
// of badger that badger never started (badger refuses to open an empty one).
func removeReservedLogs(dir string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.mem"))
	if err != nil {
		return err
	}
	for _, p := range files {
		if fi, err := os.Stat(p); err == nil && fi.Size() == 0 {
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("remove reserved memtable log: %w", err)
			}
		}
	}
	return nil
}

// newestFid returns the highest fid of the non-empty files in dir with the extension ext.
func newestFid(dir, ext string) (int, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*"+ext))
	if err != nil {
		return 0, err
	}
	best := 0
	for _, p := range files {
		fid, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(p), ext))
		if err != nil || fid <= best {
			continue
		}
		if fi, err := os.Stat(p); err == nil && fi.Size() > 0 {
			best = fid
		}
	}
	return best, nil
}

// init reserves the memtable log badger opened the store with (the older ones, replayed
// from a previous run, are only read), the next one, and the value log being written.
func (r *reserver) init() error {
	var err error
	if r.mem, err = newestFid(r.dir, ".mem"); err != nil {
		return err
	}
	if r.mem > 0 {
		p := memPath(r.dir, r.mem)
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("reserve memtable log: %w", err)
		}
		if err := r.fallocate(p, false, fi.Size(), 0); err != nil {
			return err
		}
	}
	if r.vlog, err = newestFid(r.dir, ".vlog"); err != nil {
		return err
	}
	return r.ensure(0)
}

// ensure makes sure a commit that writes up to vlogBytes to the value log writes only into
// reserved space; otherwise it returns an error wrapping ErrDiskFull and syscall.ENOSPC (or
// another I/O error).
func (r *reserver) ensure(vlogBytes int64) error {
	// Did badger move on to the memtable log created ahead, or to a new value-log file?
	for {
		fi, err := os.Stat(memPath(r.dir, r.mem+1))
		if err != nil || fi.Size() == 0 {
			break
		}
		r.mem++
	}
	if r.memAhead != r.mem+1 {
		if err := r.fallocate(memPath(r.dir, r.mem+1), true, 0, r.walSize); err != nil {
			return err
		}
		r.memAhead = r.mem + 1
	}
	for {
		if _, err := os.Stat(vlogPath(r.dir, r.vlog+1)); err != nil {
			break
		}
		r.vlog++
		r.vlogTo = 0
	}
	if r.vlog > 0 {
		if to := r.vlogSize + vlogBytes; to > r.vlogTo {
			p := vlogPath(r.dir, r.vlog)
			fi, err := os.Stat(p)
			if err != nil {
				return fmt.Errorf("reserve value log: %w", err)
			}
			if err := r.fallocate(p, false, min(fi.Size(), to), max(0, to-fi.Size())); err != nil {
				return err
			}
			r.vlogTo = to
		}
	}
	return nil
}

// room returns an error wrapping ErrDiskFull and syscall.ENOSPC if less than keep bytes
// are free on the store's file system.
func (r *reserver) room(keep int64) error {
	free, err := freeBytes(r.dir)
	if errors.Is(err, errors.ErrUnsupported) {
		return nil // no statfs here: only the reservations protect the store
	}
	if err != nil {
		return fmt.Errorf("free space of %s: %w", r.dir, err)
	}
	if free < keep {
		return fmt.Errorf("%w: %d bytes free, the store keeps %d for flushes and compactions: %w",
			ErrDiskFull, free, keep, syscall.ENOSPC)
	}
	return nil
}

// fallocate reserves the first inside bytes of path (within its size) and beyond more
// bytes past its end without changing its size, creating the file if create is set.
func (r *reserver) fallocate(path string, create bool, inside, beyond int64) error {
	if r.disabled || inside+beyond == 0 {
		return nil
	}
	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return fmt.Errorf("reserve %s: %w", filepath.Base(path), err)
	}
	defer f.Close()
	err = fallocate(f, inside, beyond)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.ENOSPC):
		return fmt.Errorf("%w: reserve %d bytes of %s: %w", ErrDiskFull, inside+beyond, filepath.Base(path), err)
	case errors.Is(err, errors.ErrUnsupported):
		r.disabled = true
		if create {
			_ = os.Remove(path) // badger creates its own, unreserved
		}
		return nil
	default:
		return fmt.Errorf("reserve %s: %w", filepath.Base(path), err)
	}
}

// vlogBytes estimates (from above) what b writes to the value log: messages and pages
// whose encoded value reaches valueThreshold, with badger's entry header and checksum.
func vlogBytes(b *Batch) int64 {
	const overhead = 64 // key, value encoding, badger's header and checksum
	size := func(m *Message) int64 {
		n := int64(len(m.Exchange)+len(m.RoutingKey)+len(m.Header)+len(m.Body)) + overhead
		if n < valueThreshold {
			return 0
		}
		return n
	}
	var n int64
	for _, p := range b.Publishes {
		if len(p.Entries) > 0 && p.Msg != nil {
			n += size(p.Msg)
		}
	}
	for _, p := range b.Pages {
		if p.Msg != nil {
			n += size(p.Msg)
		}
	}
	return n
}
