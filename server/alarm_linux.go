package server

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// totalMemory is the memory available to the process: the machine's RAM, or the memory
// cgroup's limit when that is smaller (a container), with a description of where it came from.
func totalMemory() (uint64, string) {
	return totalMemoryAt("/")
}

// totalMemoryAt is totalMemory with /proc and /sys/fs/cgroup read under root, so tests can
// supply their own files.
func totalMemoryAt(root string) (uint64, string) {
	ram := memTotal(filepath.Join(root, "proc/meminfo"))
	limit, source := cgroupMemoryLimit(root)
	if limit > 0 && (ram == 0 || limit < ram) {
		return limit, source
	}
	if ram > 0 {
		return ram, "/proc/meminfo MemTotal"
	}
	return 0, ""
}

// memTotal reads MemTotal from a meminfo file; 0 if unknown.
func memTotal(path string) uint64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// noCgroupLimit: limits at or above this are "unlimited". cgroup v1 writes an unlimited
// memory.limit_in_bytes as the largest page-aligned int64 (9223372036854771712).
const noCgroupLimit = 1 << 60

// cgroupMemoryLimit is the memory limit of the process's cgroup, 0 if there is none: the
// smallest limit on the way from the process's cgroup up to the hierarchy's root, since a
// parent's limit (a Kubernetes pod's, say) binds its children too. The memory controller of
// cgroup v1 takes precedence when it is mounted (hybrid hosts also list a v2 line), else the
// unified hierarchy (v2) is used. When the process's cgroup directory is not visible (a
// container without its own cgroup namespace sees the host's path but has its own cgroup
// mounted as the root), the root directory's limit is the container's.
func cgroupMemoryLimit(root string) (uint64, string) {
	f, err := os.Open(filepath.Join(root, "proc/self/cgroup"))
	if err != nil {
		return 0, ""
	}
	defer f.Close()
	var v1, v2 string // the process's cgroup paths
	found1, found2 := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2, found2 = parts[2], true
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				v1, found1 = parts[2], true
			}
		}
	}
	switch {
	case found1:
		return smallestLimit(root, "sys/fs/cgroup/memory", v1, "memory.limit_in_bytes", "cgroup v1")
	case found2:
		return smallestLimit(root, "sys/fs/cgroup", v2, "memory.max", "cgroup v2")
	}
	return 0, ""
}

// smallestLimit walks from mount/cgroupPath up to mount and returns the smallest limit in a
// file named file, with a description naming that file.
func smallestLimit(root, mount, cgroupPath, file, kind string) (uint64, string) {
	base := filepath.Join(root, mount)
	dir := filepath.Join(base, filepath.Clean("/"+cgroupPath))
	if _, err := os.Stat(dir); err != nil {
		dir = base
	}
	var best uint64
	var where string
	for {
		if limit := readCgroupLimit(filepath.Join(dir, file)); limit > 0 && (best == 0 || limit < best) {
			rel, _ := filepath.Rel(base, dir)
			best, where = limit, kind+" "+filepath.Join("/", mount, rel, file)
		}
		if dir == base || len(dir) < len(base) {
			return best, where
		}
		dir = filepath.Dir(dir)
	}
}

// readCgroupLimit parses a memory.max or memory.limit_in_bytes file; 0 when it is missing,
// unreadable or unlimited ("max", or a value too large to be a real limit).
func readCgroupLimit(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || v >= noCgroupLimit {
		return 0
	}
	return v
}
