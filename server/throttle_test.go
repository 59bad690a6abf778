package server

import (
	"net"
	"testing"
	"time"
)

func TestLoginThrottle(t *testing.T) {
	var lt loginThrottle
	a := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 1000}
	b := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 1000}
	now := time.Unix(1e9, 0)
	for i, want := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond} {
		// Another port of the same host counts as the same source.
		a.Port = 1000 + i
		if got := lt.failed(a, now); got != want {
			t.Fatalf("failure %d: delay %v, want %v", i+1, got, want)
		}
	}
	if got := lt.failed(b, now); got != loginDelayStep {
		t.Fatalf("another address: %v, want %v", got, loginDelayStep)
	}
	for i := 0; i < 100; i++ {
		lt.failed(a, now)
	}
	if got := lt.failed(a, now); got != loginDelayMax {
		t.Fatalf("after many failures: %v, want the cap %v", got, loginDelayMax)
	}
	if got := lt.failed(a, now.Add(2*loginForget)); got != loginDelayStep {
		t.Fatalf("after a quiet spell: %v, want %v", got, loginDelayStep)
	}
	for i := 0; i < loginMaxAddrs+10; i++ {
		lt.failed(&net.TCPAddr{IP: net.IPv4(11, byte(i>>16), byte(i>>8), byte(i))}, now)
	}
	if len(lt.fails) > loginMaxAddrs {
		t.Fatalf("%d addresses tracked, bound %d", len(lt.fails), loginMaxAddrs)
	}
}
