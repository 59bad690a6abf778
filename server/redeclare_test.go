package server

import (
	"testing"
	"time"
)

// A durable queue declared again while the store is still deleting the old one (whose purge
// would take the new queue's first messages, under the same sequence numbers) waits for the
// delete to finish.
func TestRedeclareWaitsForStoreDelete(t *testing.T) {
	s := pagedServer(t, t.TempDir(), 100)
	ch := dialT(t, s)
	declare := func() error {
		_, err := ch.QueueDeclare("redeclared", true, false, false, false, nil)
		return err
	}
	if err := declare(); err != nil {
		t.Fatal(err)
	}
	v := s.vhost("/")
	v.mu.Lock()
	qs := v.queues["redeclared"]
	v.removeQueueLocked(qs) // the delete has begun: gone from the registry, not yet from the store
	v.mu.Unlock()

	declared := make(chan error, 1)
	go func() { declared <- declare() }()
	select {
	case err := <-declared:
		t.Fatalf("declare returned (%v) while the old queue was still being deleted", err)
	case <-time.After(50 * time.Millisecond):
	}
	v.finishQueueRemoval(qs)
	select {
	case err := <-declared:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("declare still waiting after the delete finished")
	}
	v.mu.RLock()
	fresh := v.queues["redeclared"]
	v.mu.RUnlock()
	if fresh == nil || fresh == qs {
		t.Fatalf("queue after the redeclare: %p (old %p)", fresh, qs)
	}
}
