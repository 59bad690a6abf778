package cluster

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/queue"
)

// A home that completes the link's handshake and then neither reads nor writes, without its
// socket closing (a partition, a frozen VM), is taken for gone within a few heartbeats even
// while the sender is blocked writing to it: the forwarding connection closes and every
// forward on it fails. The silence used to be checked in the heartbeat loop, which waits for
// the write lock the blocked sender holds: the check never ran again and the sender stayed
// stuck until TCP gave up (about 15 minutes).
func TestLinkForwardStalledHomeDropsConnection(t *testing.T) {
	fake := startFakeLinkNode(t, &fakeLinkNode{proof: NewLinkAuth("test", "n1", testSecret, nil).LinkProof, stall: make(chan struct{}), stallAt: "confirm.select"})
	t.Cleanup(func() { close(fake.stall) }) // before the fake's own cleanup waits for its connections
	addr := fake.ln.Addr().String()
	l := NewLink(LinkConfig{Cluster: "test", Node: "n2", Secret: testSecret, Logger: quietLog(), Timeout: 2 * time.Second,
		Addr: func(string) string { return addr }})
	defer l.Close()
	const hb = time.Second // the link's heartbeat is in whole seconds
	pc, err := dialPub(addr, "/", "to a stalled fake", l.auth.login("n1"), nil, hb, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.close()
	if pc.hb != hb {
		t.Fatalf("heartbeat %v, want %v", pc.hb, hb)
	}

	// Large forwards until a write blocks: the home reads nothing, so both sockets' buffers
	// fill and the sender waits in Write holding the write lock.
	var mu sync.Mutex
	var failed, sent int
	body := bytes.Repeat([]byte("x"), 1<<20)
	senderDone := make(chan error, 1)
	go func() {
		for {
			it := fwdItem{queues: []string{"q"}, msg: &queue.Message{Body: body}, out: fwdOutcome{done: func(err error) {
				if err != nil {
					mu.Lock()
					failed++
					mu.Unlock()
				}
			}}}
			queued, err := pc.publish(it, 0, false)
			if err != nil {
				if !queued {
					it.finish(err)
				}
				senderDone <- err
				return
			}
			mu.Lock()
			sent++
			mu.Unlock()
		}
	}()
	start := time.Now()
	select {
	case <-pc.done:
	case <-time.After(10 * hb):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("connection to a stalled home still up after %v (%d forwards written)", time.Since(start), sent)
	}
	select {
	case err := <-senderDone:
		t.Logf("sender freed after %v: %v", time.Since(start), err)
	case <-time.After(5 * time.Second):
		t.Fatal("the sender stayed blocked after the connection ended")
	}
	mu.Lock()
	defer mu.Unlock()
	if sent == 0 || failed < sent {
		t.Fatalf("%d of %d forwards failed, want all", failed, sent)
	}
}

// A proxy connection to a home that goes silent after the login is dropped within a few
// heartbeats too (its silence is watched apart from its heartbeat loop since that loop no
// longer checks it).
func TestLinkProxyStalledHomeDropsConnection(t *testing.T) {
	fake := startFakeLinkNode(t, &fakeLinkNode{proof: NewLinkAuth("test", "n1", testSecret, nil).LinkProof,
		stall: make(chan struct{}), stallAt: "connection.open"})
	t.Cleanup(func() { close(fake.stall) })
	addr := fake.ln.Addr().String()
	l := NewLink(LinkConfig{Cluster: "test", Node: "n2", Secret: testSecret, Logger: quietLog(), Timeout: 2 * time.Second,
		Addr: func(string) string { return addr }})
	defer l.Close()
	const hb = time.Second
	pc, err := dialProxy(addr, "/", "to a stalled fake", l.auth.login("n1"), nil, hb, 5*time.Second, "n1")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.close()
	if pc.hb != hb {
		t.Fatalf("heartbeat %v, want %v", pc.hb, hb)
	}
	start := time.Now()
	select {
	case <-pc.done:
		t.Logf("dropped after %v", time.Since(start))
	case <-time.After(10 * hb):
		t.Fatalf("proxy connection to a silent home still up after %v", time.Since(start))
	}
}
