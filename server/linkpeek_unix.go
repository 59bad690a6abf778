//go:build unix

package server

import (
	"errors"
	"io"
	"net"
	"syscall"
)

// peekByte returns the first byte the client sent without consuming it (recv with MSG_PEEK),
// so that the connection keeps its raw-socket read and write paths; nc is returned as it is.
// A conn without a file descriptor is wrapped instead (peekWrapped).
func peekByte(nc net.Conn) (byte, net.Conn, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return peekWrapped(nc)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return peekWrapped(nc)
	}
	var b [1]byte
	var n int
	var rerr error
	// Read waits for the socket to be readable (within the read deadline) while f says so.
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
		return !errors.Is(rerr, syscall.EAGAIN)
	})
	switch {
	case err != nil:
		return 0, nc, err
	case rerr != nil:
		return 0, nc, rerr
	case n == 0:
		return 0, nc, io.EOF
	}
	return b[0], nc, nil
}
