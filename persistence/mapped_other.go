//go:build !linux

package persistence

// trimMapped is Linux-only (see mapped_linux.go); elsewhere mapped pages stay resident
// until the operating system reclaims them.
func trimMapped(string, int64) {}
