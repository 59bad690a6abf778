//go:build unix

package bench

import "syscall"

// raiseFileLimit lifts the soft open-files limit to the hard one: a many-clients run holds two
// sockets per producer/consumer pair, and shells often start with a soft limit of 1024.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}
