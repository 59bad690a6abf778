//go:build unix

package node

import "syscall"

// maxFiles is the process's open-file limit (RLIMIT_NOFILE), 0 when unknown.
func maxFiles() int {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Cur > 1<<31 {
		return 0
	}
	return int(r.Cur)
}
