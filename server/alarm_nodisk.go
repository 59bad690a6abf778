//go:build !linux && !darwin && !freebsd && !windows

package server

// freeDisk is unknown on this system: the disk alarm is off (checkAlarms logs that once).
func freeDisk(string) (uint64, bool) {
	return 0, false
}
