//go:build !linux

package server

import (
	"net"
	"time"
)

// peerGone needs Linux's TCP_INFO; elsewhere a connection held by an alarm is torn down only
// when the alarm clears (the start-up log says so).
func peerGone(net.Conn, time.Duration) bool { return false }

// peerCheckSupported says whether peerGone can see anything on this platform.
const peerCheckSupported = false
