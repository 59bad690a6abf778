package server

import (
	"net"
	"testing"
	"time"
)

func TestPeerGone(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pair := func() (client, server net.Conn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c, s
	}
	eventually := func(what string, f func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !f(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal(what)
			}
		}
	}

	c, s := pair()
	if _, err := c.Write([]byte("unread data")); err != nil { // unread bytes must not hide the close
		t.Fatal(err)
	}
	if peerGone(s, 0) {
		t.Fatal("an open connection is reported gone")
	}
	_ = c.Close()
	eventually("a closed client is not reported gone", func() bool { return peerGone(s, 0) })
	_ = s.Close()

	c2, s2 := pair()
	defer c2.Close()
	defer s2.Close()
	if _, err := c2.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if peerGone(s2, time.Hour) {
		t.Fatal("a client that just sent is reported silent")
	}
	eventually("a silent client is not reported gone past idle", func() bool { return peerGone(s2, 50*time.Millisecond) })
}
