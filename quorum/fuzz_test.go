package quorum

import (
	"bytes"
	"testing"
)

// FuzzDecodeCommand: any input decodes or fails without panicking, a decoded command encodes
// back to the same bytes, and applying it never panics.
func FuzzDecodeCommand(f *testing.F) {
	f.Add(enq("a", "b").Encoded())
	f.Add((&Command{Kind: KindSettle, Node: "n", IDs: []uint64{1, 2}}).Encoded())
	f.Add((&Command{Kind: KindBatch, Batch: []Command{enq("x"), {Kind: KindGet, Node: "n"}}}).Encoded())
	f.Add([]byte{byte(KindEnqueue), 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add((&Command{Kind: KindCount, Node: "n", IDs: []uint64{1, 2}, Counts: []uint32{1, 2}}).Encoded())
	f.Add((&Command{Kind: KindDLXSettle, IDs: []uint64{1, 5}}).Encoded())
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			return
		}
		if again := c.Encoded(); !bytes.Equal(again, b) {
			// Uvarints have one canonical form only when minimal; a non-minimal input may
			// decode, so compare a second round instead.
			c2, err := DecodeCommand(again)
			if err != nil || !bytes.Equal(c2.Encoded(), again) {
				t.Fatalf("re-encoding is not stable: %x -> %x", b, again)
			}
		}
		m := New(Limits{MaxLength: 3, MaxBytes: -1, DeliveryLimit: 1}, Hooks{Assigned: func(string, []Msg) {}})
		m.Apply(1, (&Command{Kind: KindCheckout, Node: "n", Credit: 2}).Encoded())
		m.Apply(2, b)
		if _, err := m.Snapshot(); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzRestore: a snapshot that does not decode is an error, never a panic.
func FuzzRestore(f *testing.F) {
	m := New(NoLimits(), Hooks{})
	m.Apply(1, enq("a", "b").Encoded())
	m.Apply(2, (&Command{Kind: KindGet, Node: "n"}).Encoded())
	s, _ := m.Snapshot()
	f.Add(s)
	// A version 5 snapshot: with discards (at-least-once dead-lettering).
	d := New(Limits{MaxLength: -1, MaxBytes: -1, DeliveryLimit: -1, Overflow: RejectPublish, AtLeastOnce: true}, Hooks{})
	d.Apply(1, enq("a", "b").Encoded())
	d.Apply(2, (&Command{Kind: KindGet, Node: "n"}).Encoded())
	d.Apply(3, (&Command{Kind: KindDiscard, Node: "n", IDs: []uint64{1}}).Encoded())
	s5, _ := d.Snapshot()
	f.Add(s5)
	// A version 6 snapshot: a message taken back from a down node (Msg.downFrom).
	l := New(NoLimits(), Hooks{})
	l.Apply(1, enq("a").Encoded())
	l.Apply(2, (&Command{Kind: KindCheckout, Node: "n", Credit: 1}).Encoded())
	l.Apply(3, (&Command{Kind: KindNodeDown, Node: "n"}).Encoded())
	s6, _ := l.Snapshot()
	f.Add(s6)
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = New(NoLimits(), Hooks{}).Restore(b)
	})
}

// FuzzMachineSequence drives two replicas with the same commands, built from the fuzz input,
// one of them restored from a snapshot of the other halfway: they must end in the same state
// (determinism, and a snapshot that carries everything), and no message may appear or vanish
// (enqueued = ready + held + settled + dropped).
func FuzzMachineSequence(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	f.Add([]byte{0, 0, 0, 1, 1, 9, 3, 4, 7, 2, 8, 6, 5})
	// A message returned (n1 without credit) waits at the snapshot; another returned after
	// it must go behind it on both replicas.
	f.Add([]byte{0, 0, 0, 0, 2, 12, 4, 8, 4, 32, 32, 32, 32, 32})
	// At least once, reject-publish: rejects and expiries kept in the discards, then settled.
	f.Add([]byte{64 + 8 + 3, 0, 1, 0, 2, 6, 5, 6, 5, 19, 0, 0, 2, 6, 5, 29, 19})
	// A redelivery delay (odd length): n1 taken for dead holding a message, n2 takes it and
	// returns it (delayed, with a KindAt), then n1's late mark counts it.
	f.Add([]byte{0, 0, 2, 7, 22, 24, 8})
	f.Fuzz(func(t *testing.T, in []byte) {
		limits := Limits{MaxLength: -1, MaxBytes: -1, DeliveryLimit: -1}
		if len(in) > 0 {
			limits.MaxLength = int64(in[0]%8) - 1
			limits.Overflow = Overflow(in[0] / 8 % 2)
			limits.DeliveryLimit = int64(in[0]/16%4) - 1
			limits.SingleActive = in[0] >= 128
			limits.AtLeastOnce = in[0]&64 != 0 // discards kept until a DLXSettle
		}
		if len(in)%2 == 1 {
			limits.RedeliveryDelay = 700 // returns delayed (late marks on delayed messages)
		}
		nodes := []string{"n1", "n2", "n3"}
		held := map[string][]uint64{}
		down := map[string][]uint64{} // held by a node when a NodeDown took them back
		a := New(limits, Hooks{Assigned: func(node string, msgs []Msg) {
			for _, m := range msgs {
				held[node] = append(held[node], m.ID)
			}
		}})
		b := New(limits, Hooks{})
		var enqueued, settled, dropped, refused, dlxSettled int
		now := int64(1000)
		pick := func(node string, k byte) []uint64 {
			ids := held[node]
			if len(ids) == 0 {
				return []uint64{uint64(k)} // an unknown ID: ignored
			}
			n := int(k)%len(ids) + 1
			out := append([]uint64(nil), ids[:n]...)
			held[node] = ids[n:]
			return out
		}
		for i, op := range in {
			node := nodes[int(op>>4)%3]
			var c Command
			var pre []Command // before c in its batch
			switch op % 10 {
			case 0, 1:
				c = Command{Kind: KindEnqueue, Msgs: []*Msg{{Body: []byte{op}, Expires: int64(op%3) * 1500}}}
			case 2:
				c = Command{Kind: KindCheckout, Node: node, Credit: uint32(op % 4)}
			case 3:
				c = Command{Kind: KindSettle, Node: node, IDs: pick(node, op)}
			case 4:
				c = Command{Kind: KindReturn, Node: node, IDs: pick(node, op), Delivered: op%2 == 0}
				if op%3 == 0 {
					pre = append(pre, Command{Kind: KindAt, Now: int64(op%5) * 100}) // its age (the delay is 700)
				}
			case 5:
				c = Command{Kind: KindDiscard, Node: node, IDs: pick(node, op)}
			case 6:
				c = Command{Kind: KindGet, Node: node, NoAck: op%2 == 0}
			case 7:
				c = Command{Kind: KindNodeDown, Node: node}
				down[node] = append(down[node], held[node]...)
				held[node] = nil
			case 8:
				c = Command{Kind: KindDelivered, Node: node, IDs: append([]uint64(nil), held[node]...)}
				if op%20 == 8 && len(down[node]) > 0 {
					// A late mark: of what a NodeDown took back from the node.
					c.IDs, down[node] = down[node], nil
				} else if op >= 128 {
					// A local requeue's count instead (a single-active-consumer node's).
					c = Command{Kind: KindCount, Node: node, IDs: c.IDs}
					for range c.IDs {
						c.Counts = append(c.Counts, uint32(op%3))
					}
				}
			case 9:
				c = Command{Kind: KindPurge}
				if ds := a.DiscardsHead(int(op % 3)); limits.AtLeastOnce && op%20 >= 10 {
					c = Command{Kind: KindDLXSettle, IDs: []uint64{uint64(op)}} // unknown: ignored
					for _, d := range ds {
						c.IDs = append(c.IDs, d.Msg.ID)
					}
				}
			}
			before := map[uint64]bool{}
			for _, d := range a.Discards() {
				before[d.Msg.ID] = true
			}
			now += 500
			batch := Command{Kind: KindBatch, Now: now, Batch: append(pre, c)}.Encoded()
			rs := a.Apply(uint64(i), batch).([]Result)
			b.Apply(uint64(i), batch)
			r := rs[len(pre)]
			for _, x := range []*Machine{a, b} {
				late := 0
				for _, d := range x.delayed {
					if d.msg.downFrom != "" {
						late++
					}
				}
				if late != x.delayedLate {
					t.Fatalf("delayedLate %d, want %d (the delayed messages with a downFrom)", x.delayedLate, late)
				}
			}
			switch c.Kind {
			case KindEnqueue:
				enqueued += len(c.Msgs)
				refused += len(r.Refused)
			case KindSettle:
				settled += len(c.IDs) // unknown IDs counted below
			case KindGet:
				if r.Msg != nil {
					if c.NoAck {
						settled++
					} else {
						held[node] = append(held[node], r.Msg.ID)
					}
				}
			case KindPurge:
				dropped += r.Purged
			case KindDLXSettle:
				after := map[uint64]bool{}
				for _, d := range a.Discards() {
					after[d.Msg.ID] = true
				}
				for id := range before {
					if !after[id] {
						dlxSettled++
					}
				}
			}
			for _, x := range rs {
				dropped += len(x.Dropped)
			}
			if i == len(in)/2 {
				snap, err := a.Snapshot()
				if err != nil {
					t.Fatal(err)
				}
				b = New(limits, Hooks{})
				if err := b.Restore(snap); err != nil {
					t.Fatal(err)
				}
			}
		}
		sa, _ := a.Snapshot()
		sb, _ := b.Snapshot()
		if string(sa) != string(sb) {
			t.Fatal("a replica restored from a snapshot diverged")
		}
		ready, h := a.Counts()
		discards, _ := a.DiscardCounts()
		if !limits.AtLeastOnce && discards != 0 {
			t.Fatalf("%d discards at most once", discards)
		}
		// Settles of IDs the node did not hold are no-ops: count what really left.
		if got := ready + h + dropped + refused + discards + dlxSettled; got > enqueued || enqueued-got > settled {
			t.Fatalf("enqueued %d: ready %d held %d dropped %d refused %d discards %d dlx-settled %d settled at most %d",
				enqueued, ready, h, dropped, refused, discards, dlxSettled, settled)
		}
	})
}
