//go:build !unix

package server

import "net"

// peekByte returns the first byte the client sent and a conn that reads it again.
func peekByte(nc net.Conn) (byte, net.Conn, error) { return peekWrapped(nc) }
