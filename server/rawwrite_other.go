//go:build !unix

package server

import "errors"

// canInline is false where a socket's descriptor cannot be written directly: every write
// goes through the writer's flusher goroutine.
const canInline = false

func rawWrite(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }

func rawRead(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }
