package stream

import (
	"os"

	"golang.org/x/sys/unix"
)

// datasync makes f's data durable: fdatasync, which skips the metadata a log append does not
// need (the file's size is recovered by scanning its tail at open).
func datasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }
