package quorum

import (
	"reflect"
	"testing"
)

// discardBodies lists the discards' bodies and reasons.
func discardBodies(m *Machine) []string {
	var out []string
	for _, d := range m.Discards() {
		out = append(out, string(d.Msg.Body)+"/"+[]string{"", "rejected", "maxlen", "delivery_limit", "expired"}[d.Reason])
	}
	return out
}

func discardIDs(m *Machine) []uint64 {
	var out []uint64
	for _, d := range m.Discards() {
		out = append(out, d.Msg.ID)
	}
	return out
}

// TestAtLeastOnceDiscards: with Limits.AtLeastOnce every drop (reject, delivery limit, expiry)
// goes to the discards, not to the proposer, the discards count against the length limits
// (a reject-publish queue refuses while they wait) and DLXSettle removes them.
func TestAtLeastOnceDiscards(t *testing.T) {
	alo := Limits{MaxLength: 3, MaxBytes: -1, DeliveryLimit: 1, Overflow: RejectPublish, AtLeastOnce: true}
	amo := alo
	amo.AtLeastOnce = false
	co := Command{Kind: KindCheckout, Node: "n1", Credit: 10}
	batch := func(now int64, cs ...Command) Command { return Command{Kind: KindBatch, Now: now, Batch: cs} }
	type step struct {
		cmd      Command
		dropped  []string // to the proposer (at most once)
		refused  []int
		discards []string // after the step
		ready    int
	}
	tests := []struct {
		name   string
		limits Limits
		steps  []step
	}{
		{"reject goes to the discards", alo, []step{
			{cmd: enq("a", "b"), ready: 2},
			{cmd: co},
			{cmd: Command{Kind: KindDiscard, Node: "n1", IDs: []uint64{1}}, discards: []string{"a/rejected"}},
			{cmd: Command{Kind: KindDLXSettle, IDs: []uint64{1}}},
		}},
		{"at most once: reject goes to the proposer", amo, []step{
			{cmd: enq("a"), ready: 1},
			{cmd: co},
			{cmd: Command{Kind: KindDiscard, Node: "n1", IDs: []uint64{1}}, dropped: []string{"a"}},
		}},
		{"delivery limit", alo, []step{
			{cmd: enq("a"), ready: 1},
			{cmd: co},
			{cmd: Command{Kind: KindReturn, Node: "n1", IDs: []uint64{1}, Delivered: true}},
			{cmd: Command{Kind: KindReturn, Node: "n1", IDs: []uint64{1}, Delivered: true}, discards: []string{"a/delivery_limit"}},
		}},
		{"node down past the delivery limit", alo, []step{
			{cmd: enq("a"), ready: 1},
			{cmd: co},
			{cmd: Command{Kind: KindDelivered, Node: "n1", IDs: []uint64{1}}},
			{cmd: Command{Kind: KindNodeDown, Node: "n1"}, ready: 1},
			{cmd: co},
			{cmd: Command{Kind: KindDelivered, Node: "n1", IDs: []uint64{1}}},
			{cmd: Command{Kind: KindNodeDown, Node: "n1"}, discards: []string{"a/delivery_limit"}},
		}},
		{"expired at the head, in a batch", alo, []step{
			{cmd: batch(1000, Command{Kind: KindEnqueue, Msgs: []*Msg{{Body: []byte("a"), Expires: 1500}, {Body: []byte("b")}}}), ready: 2},
			{cmd: batch(2000), discards: []string{"a/expired"}, ready: 1},
		}},
		{"discards count against x-max-length", alo, []step{
			{cmd: enq("a", "b", "c"), ready: 3},
			{cmd: co},
			{cmd: Command{Kind: KindDiscard, Node: "n1", IDs: []uint64{1, 2}}, discards: []string{"a/rejected", "b/rejected"}},
			{cmd: enq("d", "e"), refused: []int{1}, discards: []string{"a/rejected", "b/rejected"}}, // c held, d ready, 2 discards
			{cmd: Command{Kind: KindDLXSettle, IDs: []uint64{2, 99}}, discards: []string{"a/rejected"}},
			{cmd: enq("f"), discards: []string{"a/rejected"}}, // assigned to n1 at once
			{cmd: Command{Kind: KindDLXSettle, IDs: []uint64{1}}},
		}},
		{"purge leaves the discards", alo, []step{
			{cmd: enq("a", "b"), ready: 2},
			{cmd: Command{Kind: KindCheckout, Node: "n1", Credit: 1}, ready: 1},
			{cmd: Command{Kind: KindDiscard, Node: "n1", IDs: []uint64{1}}, discards: []string{"a/rejected"}},
			{cmd: Command{Kind: KindNodeDown, Node: "n1"}, discards: []string{"a/rejected"}, ready: 1},
			{cmd: Command{Kind: KindPurge}, discards: []string{"a/rejected"}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			signals := 0
			m := New(tc.limits, Hooks{DeadLettered: func() { signals++ }})
			for i, s := range tc.steps {
				var r Result
				out := m.Apply(uint64(i+1), s.cmd.Encoded())
				switch o := out.(type) {
				case Result:
					r = o
				case []Result:
					for _, x := range o {
						r.Dropped = append(r.Dropped, x.Dropped...)
						r.Refused = append(r.Refused, x.Refused...)
					}
				default:
					t.Fatalf("step %d: %v", i, out)
				}
				if got := bodiesOf(r.Dropped); !reflect.DeepEqual(got, s.dropped) {
					t.Errorf("step %d: dropped %v, want %v", i, got, s.dropped)
				}
				if !reflect.DeepEqual(r.Refused, s.refused) {
					t.Errorf("step %d: refused %v, want %v", i, r.Refused, s.refused)
				}
				if got := discardBodies(m); !reflect.DeepEqual(got, s.discards) {
					t.Errorf("step %d: discards %v, want %v", i, got, s.discards)
				}
				if ready, _ := m.Counts(); ready != s.ready {
					t.Errorf("step %d: ready %d, want %d", i, ready, s.ready)
				}
				n, _ := m.DiscardCounts()
				if n != len(s.discards) {
					t.Errorf("step %d: DiscardCounts %d, want %d", i, n, len(s.discards))
				}
			}
			if tc.limits.AtLeastOnce && signals == 0 {
				t.Error("DeadLettered hook never called")
			}
			if !tc.limits.AtLeastOnce && signals != 0 {
				t.Error("DeadLettered hook called at most once")
			}
		})
	}
}

// TestDiscardsMaxBytes: the discards' bytes count against x-max-length-bytes.
func TestDiscardsMaxBytes(t *testing.T) {
	m := New(Limits{MaxLength: -1, MaxBytes: 4, DeliveryLimit: -1, Overflow: RejectPublish, AtLeastOnce: true}, Hooks{})
	run(t, m, enq("aaa"))
	run(t, m, Command{Kind: KindCheckout, Node: "n1", Credit: 1})
	run(t, m, Command{Kind: KindDiscard, Node: "n1", IDs: []uint64{1}})
	if r := run(t, m, enq("bb")); !reflect.DeepEqual(r.Refused, []int{0}) {
		t.Fatalf("refused %v, want [0] (3 bytes discarded + 2 > 4)", r.Refused)
	}
	run(t, m, Command{Kind: KindDLXSettle, IDs: []uint64{1}})
	if r := run(t, m, enq("bb")); len(r.Refused) != 0 {
		t.Fatalf("refused %v after the settle", r.Refused)
	}
	if n, b := m.DiscardCounts(); n != 0 || b != 0 {
		t.Fatalf("DiscardCounts = %d, %d", n, b)
	}
}

// TestDiscardsSnapshot: the discards survive a snapshot (version 5, restored on a replica
// that can then settle them); a state without discards is written as version 4, which an
// earlier release reads.
func TestDiscardsSnapshot(t *testing.T) {
	limits := Limits{MaxLength: -1, MaxBytes: -1, DeliveryLimit: -1, Overflow: RejectPublish, AtLeastOnce: true}
	m := New(limits, Hooks{})
	s0, _ := m.Snapshot()
	if s0[0] != 4 {
		t.Fatalf("empty snapshot version %d, want 4", s0[0])
	}
	run(t, m, enq("a", "b", "c"))
	run(t, m, Command{Kind: KindCheckout, Node: "n1", Credit: 2})
	run(t, m, Command{Kind: KindDiscard, Node: "n1", IDs: []uint64{2, 1}})
	s, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if s[0] != 5 {
		t.Fatalf("snapshot version %d, want 5", s[0])
	}
	r := New(limits, Hooks{})
	if err := r.Restore(s); err != nil {
		t.Fatal(err)
	}
	if got := discardBodies(r); !reflect.DeepEqual(got, []string{"b/rejected", "a/rejected"}) {
		t.Fatalf("restored discards %v", got)
	}
	if again, _ := r.Snapshot(); string(again) != string(s) {
		t.Fatal("a restored replica's snapshot differs")
	}
	// The view taken before a settle still encodes the discards.
	enc, _ := m.StartSnapshot()
	run(t, m, Command{Kind: KindDLXSettle, IDs: []uint64{1, 2}})
	if b, _ := enc(); string(b) != string(s) {
		t.Fatal("StartSnapshot's view changed with a later settle")
	}
	run(t, r, Command{Kind: KindDLXSettle, IDs: []uint64{2}})
	if got := discardIDs(r); !reflect.DeepEqual(got, []uint64{1}) {
		t.Fatalf("after settle: %v", got)
	}
	// Restoring a version 4 snapshot clears the discards.
	if err := r.Restore(s0); err != nil {
		t.Fatal(err)
	}
	if n, _ := r.DiscardCounts(); n != 0 {
		t.Fatalf("discards after restoring an empty state: %d", n)
	}
	if err := New(limits, Hooks{}).Restore(append(s[:len(s):len(s)], 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
}

func TestDLXSettleRoundTrip(t *testing.T) {
	c := Command{Kind: KindDLXSettle, IDs: []uint64{3, 1, 1 << 40}}
	got, err := DecodeCommand(c.Encoded())
	if err != nil || !reflect.DeepEqual(got, c) {
		t.Fatalf("DecodeCommand = %+v, %v", got, err)
	}
}

func TestDiscardsHead(t *testing.T) {
	m := New(Limits{MaxLength: -1, MaxBytes: -1, DeliveryLimit: -1, Overflow: RejectPublish, AtLeastOnce: true}, Hooks{})
	run(t, m, enq("a", "b", "c"))
	run(t, m, Command{Kind: KindCheckout, Node: "n1", Credit: 3})
	run(t, m, Command{Kind: KindDiscard, Node: "n1", IDs: []uint64{1, 2, 3}})
	for n, want := range map[int]int{0: 0, 2: 2, 5: 3} {
		if got := m.DiscardsHead(n); len(got) != want || (want > 0 && got[0].Msg.ID != 1) {
			t.Errorf("DiscardsHead(%d) = %d messages, want %d from ID 1", n, len(got), want)
		}
	}
}
