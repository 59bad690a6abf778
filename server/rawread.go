package server

import (
	"io"
	"net"
	"os"
	"syscall"
)

// rawReader reads a TCP connection's socket with read(2) made as a raw system call (rawRead),
// waiting for input in the runtime's netpoller like net.Conn.Read, deadlines and Close
// included. A connection's reader goroutine reads twice per wake-up at a trickle (the data,
// then EAGAIN before it parks), and net.Conn.Read enters a blocking-syscall section for each:
// on a mostly idle broker every entersyscall woke the runtime's sysmon thread with a futex,
// which then polled with short sleeps until the broker was idle again - a futex wake and a few
// nanosleeps per message read, about a tenth of the broker's CPU at 400 clients x 25 msgs/s.
// A read of a non-blocking socket never blocks, so nothing needs that section.
type rawReader struct {
	rc syscall.RawConn
	// The state of the read in progress (reader goroutine only); readFd is r.readToFd, made
	// once so that a read allocates no closure.
	p      []byte
	n      int
	err    error
	readFd func(fd uintptr) bool
}

// newSocketReader returns what the connection's frames are read from: a rawReader where the
// platform has raw reads and nc is a plain socket, nc itself otherwise (TLS, in-memory pipes).
func newSocketReader(nc net.Conn) io.Reader {
	if !canInline {
		return nc
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nc
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nc
	}
	r := &rawReader{rc: rc}
	r.readFd = r.readToFd
	return r
}

// Read reads into p as net.Conn.Read does: it waits for input (or the read deadline, or a
// Close) in the netpoller, and returns io.EOF when the peer has closed its side.
func (r *rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p, r.n, r.err = p, 0, nil
	err := r.rc.Read(r.readFd)
	n, rerr := r.n, r.err
	r.p, r.err = nil, nil
	switch {
	case err != nil: // deadline, closed
		return 0, err
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readToFd is the RawConn.Read callback: one read(2) into r.p; false (wait for the socket to
// become readable, then call again) on EAGAIN.
func (r *rawReader) readToFd(fd uintptr) bool {
	for {
		n, err := rawRead(fd, r.p)
		switch err {
		case nil:
			r.n = n
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			r.err = err
			return true
		}
	}
}
