//go:build !linux && !darwin

package server

// totalMemory is unknown on this system: the memory alarm is off unless memory.limit sets an
// absolute limit (memoryLimit logs that at start-up).
func totalMemory() (uint64, string) {
	return 0, ""
}
