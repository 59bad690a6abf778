//go:build linux || darwin || freebsd

package server

import "golang.org/x/sys/unix"

// freeDisk is the space available to an unprivileged user on dir's file system.
func freeDisk(dir string) (uint64, bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return uint64(st.Bavail) * uint64(st.Bsize), true
}
