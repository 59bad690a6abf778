package server

import "golang.org/x/sys/unix"

// totalMemory is the machine's RAM (sysctl hw.memsize), with where it came from.
func totalMemory() (uint64, string) {
	n, err := unix.SysctlUint64("hw.memsize")
	if err != nil {
		return 0, ""
	}
	return n, "sysctl hw.memsize"
}
