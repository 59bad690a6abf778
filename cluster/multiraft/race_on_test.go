//go:build race

package multiraft

// raceEnabled: the race detector slows the hosts down ~10x, so scale tests shrink.
const raceEnabled = true
