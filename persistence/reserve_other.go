//go:build !linux

package persistence

import (
	"errors"
	"os"
)

// fallocate is Linux-only here: elsewhere the store reserves nothing ahead (see reserve.go)
// and a full disk may still crash it inside badger.
func fallocate(*os.File, int64, int64) error { return errors.ErrUnsupported }

// freeBytes is Linux-only here; the free-space check is skipped elsewhere.
func freeBytes(string) (int64, error) { return 0, errors.ErrUnsupported }
