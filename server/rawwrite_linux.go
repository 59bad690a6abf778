//go:build linux && !race

package server

import (
	"syscall"
	"unsafe"
)

// canInline: writer.writeInline is available on this platform.
const canInline = true

// rawWrite is write(2) on a non-blocking socket, made without telling the scheduler
// (RawSyscall): it never blocks, and entering a blocking-syscall section costs more than the
// write itself at a trickle (entersyscall wakes the runtime's sysmon thread with a futex when it
// sleeps, which it does on a mostly idle broker).
func rawWrite(fd uintptr, b []byte) (int, error) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// rawRead is read(2) on a non-blocking socket, made as a raw system call for the reason
// rawWrite is (see rawReader).
func rawRead(fd uintptr, b []byte) (int, error) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
