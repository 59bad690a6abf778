//go:build race

package broker

// raceEnabled: under -race the memory test uses fewer messages (the detector is ~10x slower).
const raceEnabled = true
