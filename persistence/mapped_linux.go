package persistence

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// madvPageout is Linux's MADV_PAGEOUT (5.4+): reclaim the pages of a range now. Unlike
// MADV_DONTNEED it never discards data - anonymous memory is swapped or kept, dirty file
// pages are written back - so advising a range that was unmapped and reused meanwhile is
// harmless.
const madvPageout = 21

// trimMapped reclaims the resident pages of the store's memory-mapped tables and value logs
// (files in dir) once the process holds more than limit bytes of file pages. badger reads (and writes the
// value log) through mmap, so every message written or read back would otherwise stay in
// the broker's resident set until the kernel came under memory pressure; reclaimed pages
// are read from disk again when needed (the block cache keeps the hot table blocks).
func trimMapped(dir string, limit int64) {
	if dir == "" || residentFileBytes() < limit {
		return
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// start-end perms offset dev inode path
		fields := bytes.Fields(sc.Bytes())
		if len(fields) < 6 {
			continue
		}
		path := string(fields[5])
		if !strings.HasPrefix(path, dir) || (!strings.HasSuffix(path, ".sst") && !strings.HasSuffix(path, ".vlog")) {
			continue
		}
		lo, hi, ok := bytes.Cut(fields[0], []byte{'-'})
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(string(lo), 16, 64)
		end, err2 := strconv.ParseUint(string(hi), 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, uintptr(start), uintptr(end-start), madvPageout)
	}
}

// residentFileBytes is the process's file-backed resident memory (RssFile).
func residentFileBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	_, rest, ok := bytes.Cut(b, []byte("RssFile:"))
	if !ok {
		return 0
	}
	line, _, _ := bytes.Cut(rest, []byte{'\n'})
	kb, err := strconv.ParseInt(string(bytes.TrimSuffix(bytes.TrimSpace(line), []byte(" kB"))), 10, 64)
	if err != nil {
		return 0
	}
	return kb << 10
}
