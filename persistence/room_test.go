package persistence

import (
	"bytes"
	"testing"
	"time"
)

// A publisher faster than the disk waits in AwaitRoom until the journal has written what it
// queued, and the journal's queue counts the messages it holds.
func TestAwaitRoomWaitsForTheJournal(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir())
	defer closeT(t, s)

	// Hold the journal goroutine so that submitted batches stay queued.
	release := holdJournal(t, s)

	body := bytes.Repeat([]byte("x"), 64<<10)
	committed := make(chan error, 1)
	s.Submit(&Batch{Publishes: []Publish{pub(&Message{ID: 1, Body: body}, ent("q", 1))}}, func(err error) { committed <- err })
	if got, min := s.Queued(), int64(len(body)); got < min {
		t.Fatalf("Queued = %d with a %d-byte message waiting", got, min)
	}
	s.AwaitRoom(1 << 20) // under the limit: returns at once

	waited := make(chan struct{})
	go func() { s.AwaitRoom(1024); close(waited) }()
	select {
	case <-waited:
		t.Fatal("AwaitRoom returned while the journal still held the batch")
	case <-time.After(50 * time.Millisecond):
	}
	release()
	<-waited
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	if got := s.Queued(); got != 0 {
		t.Fatalf("Queued = %d after the journal wrote everything", got)
	}
}

// AwaitRoom never blocks a caller once the store is closing.
func TestAwaitRoomReturnsOnClose(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir())
	release := holdJournal(t, s)
	s.Submit(&Batch{Publishes: []Publish{pub(&Message{ID: 1, Body: make([]byte, 4096)}, ent("q", 1))}}, nil)
	waited := make(chan struct{})
	go func() { s.AwaitRoom(0); close(waited) }()
	select {
	case <-waited:
		t.Fatal("AwaitRoom returned while the journal held the batch")
	case <-time.After(50 * time.Millisecond): // AwaitRoom is waiting by now
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	// The journal is still held, so only Close can be what wakes AwaitRoom.
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("AwaitRoom still blocked after Close began")
	}
	release()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}
