package quorum

import (
	"fmt"
	"slices"
	"testing"
)

// TestStartSnapshotIsAView: the encoding StartSnapshot returns is the state when it was
// called, byte for byte what Snapshot said then, however the machine changes while it runs
// (on another goroutine: go test -race checks that the two share nothing mutable).
func TestStartSnapshotIsAView(t *testing.T) {
	m := New(NoLimits(), Hooks{})
	for _, c := range []Command{
		enq("a", "b", "c", "d", "e", "f"),
		{Kind: KindCheckout, Node: "n1", Credit: 3}, // holds a, b, c
		{Kind: KindCheckout, Node: "n2", Credit: 1}, // holds d
		{Kind: KindDelivered, Node: "n1", IDs: []uint64{1, 2}},
		{Kind: KindCheckout, Node: "n1", Credit: 0},
		{Kind: KindReturn, Node: "n1", IDs: []uint64{1}, Delivered: true}, // a: count 1, among the returns
	} {
		run(t, m, c)
	}
	want, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	encode, err := m.StartSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte)
	go func() {
		b, err := encode()
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	// Every kind of change to what the view holds: counts, delivery marks, settles, new
	// messages, checkouts, a purge.
	for i, c := range []Command{
		{Kind: KindReturn, Node: "n1", IDs: []uint64{2}, Delivered: true},
		{Kind: KindDelivered, Node: "n2", IDs: []uint64{4}},
		{Kind: KindSettle, Node: "n2", IDs: []uint64{4}},
		enq("g", "h"),
		{Kind: KindCheckout, Node: "n3", Credit: 5},
		{Kind: KindNodeDown, Node: "n1"},
		{Kind: KindPurge},
	} {
		if r := m.Apply(uint64(100+i), c.Encoded()); r == nil {
			t.Fatalf("command %d: no result", i)
		}
	}
	if b := <-got; !slices.Equal(b, want) {
		t.Fatalf("the view's encoding (%d bytes) differs from the snapshot when it was taken (%d bytes)", len(b), len(want))
	}
	if now, _ := m.Snapshot(); slices.Equal(now, want) {
		t.Fatal("the machine did not change: the test proves nothing")
	}
}

// BenchmarkSnapshotLoopShare is the Raft loop's share of a snapshot of a 1M-message backlog
// (100 B bodies): all of the encoding before (Snapshot), the view after (StartSnapshot).
//
//	go test -run x -bench SnapshotLoopShare -benchtime 5x ./quorum/
func BenchmarkSnapshotLoopShare(b *testing.B) {
	m := New(NoLimits(), Hooks{})
	body := make([]byte, 100)
	for i := 0; i < 1000; i++ {
		c := Command{Kind: KindEnqueue}
		for j := 0; j < 1000; j++ {
			c.Msgs = append(c.Msgs, &Msg{RoutingKey: fmt.Sprint(j % 10), Body: body})
		}
		m.Apply(uint64(i+1), c.Encoded())
	}
	b.Run("encode-on-loop", func(b *testing.B) {
		for range b.N {
			if _, err := m.Snapshot(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("view-on-loop", func(b *testing.B) {
		for range b.N {
			if _, err := m.StartSnapshot(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
