//go:build unix && (!linux || race)

// Race-detector builds on Linux use these too: syscall.Read and syscall.Write tell the race
// detector which bytes the kernel wrote and that a socket write happens before the read of
// its bytes, which RawSyscall does not - with it, memory handed over through a socket looked
// like a data race, and real races on the read buffer went unseen.

package server

import "syscall"

// canInline: writer.writeInline is available on this platform.
const canInline = true

// rawWrite is write(2) on a non-blocking socket.
func rawWrite(fd uintptr, b []byte) (int, error) { return syscall.Write(int(fd), b) }

// rawRead is read(2) on a non-blocking socket.
func rawRead(fd uintptr, b []byte) (int, error) { return syscall.Read(int(fd), b) }
