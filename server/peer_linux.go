package server

import (
	"crypto/tls"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// peerGone reports whether the client of nc has gone without the broker reading the socket: a
// connection held by an alarm reads nothing, so it cannot see the client's FIN or miss its
// heartbeats the usual way. The kernel knows both: the TCP state is CLOSE_WAIT (or CLOSE) once
// the client closed, and tcpi_last_data_recv says how long the client has sent nothing, which
// past idle (two heartbeat intervals; 0 disables the check) means it is dead.
func peerGone(nc net.Conn, idle time.Duration) bool {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var info *unix.TCPInfo
	var ierr error
	if err := raw.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || ierr != nil {
		return true // the socket is closed already
	}
	switch info.State {
	case unix.BPF_TCP_CLOSE_WAIT, unix.BPF_TCP_CLOSE:
		return true
	}
	return idle > 0 && time.Duration(info.Last_data_recv)*time.Millisecond > idle
}

// peerCheckSupported says whether peerGone can see anything on this platform.
const peerCheckSupported = true
