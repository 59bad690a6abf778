//go:build !linux

package stream

import "os"

// datasync makes f's data durable; fdatasync is Linux's, elsewhere a full fsync.
func datasync(f *os.File) error { return f.Sync() }
