package persistence

import (
	"errors"
	"os"
	"syscall"
)

// fallocKeepSize is FALLOC_FL_KEEP_SIZE: allocate blocks past the end of a file without
// changing its size.
const fallocKeepSize = 0x1

// fallocate allocates the blocks of f's first inside bytes, and of beyond more bytes past
// its end without changing its size. Allocated blocks are never given back by writes, so a
// write through a memory map into them cannot fail for lack of space.
func fallocate(f *os.File, inside, beyond int64) error {
	fd := int(f.Fd())
	if inside > 0 {
		if err := retryEINTR(func() error { return syscall.Fallocate(fd, 0, 0, inside) }); err != nil {
			return unsupported(err)
		}
	}
	if beyond > 0 {
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if err := retryEINTR(func() error { return syscall.Fallocate(fd, fallocKeepSize, fi.Size(), beyond) }); err != nil {
			return unsupported(err)
		}
	}
	return nil
}

func retryEINTR(fn func() error) error {
	for {
		if err := fn(); !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// unsupported maps the errors of a file system without fallocate to errors.ErrUnsupported.
func unsupported(err error) error {
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		return errors.Join(errors.ErrUnsupported, err)
	}
	return err
}

// freeBytes returns the space of dir's file system available to unprivileged users.
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}
