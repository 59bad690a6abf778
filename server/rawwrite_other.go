//go:build !unix

package server

import "syscall"

// canInline is false where a socket's descriptor cannot be written directly: every write
// goes through the writer's flusher goroutine.
const canInline = false

func rawWrite(uintptr, []byte) (int, error) { return 0, syscall.EWINDOWS }

func rawRead(uintptr, []byte) (int, error) { return 0, syscall.EWINDOWS }
