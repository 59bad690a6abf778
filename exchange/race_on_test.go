//go:build race

package exchange

// raceEnabled: under -race sync.Pool deliberately drops pooled objects at
// random, so allocation counts are not meaningful there.
const raceEnabled = true
