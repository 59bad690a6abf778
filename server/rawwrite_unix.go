//go:build unix && !linux

package server

import "syscall"

// canInline: writer.writeInline is available on this platform.
const canInline = true

// rawWrite is write(2) on a non-blocking socket.
func rawWrite(fd uintptr, b []byte) (int, error) { return syscall.Write(int(fd), b) }

// rawRead is read(2) on a non-blocking socket.
func rawRead(fd uintptr, b []byte) (int, error) { return syscall.Read(int(fd), b) }
