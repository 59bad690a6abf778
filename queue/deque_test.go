package queue

import (
	"math/rand"
	"slices"
	"testing"
)

// seqs lists the deque's entries front to back.
func (d *deque) seqs() []uint64 {
	out := make([]uint64, 0, d.n)
	for i := 0; i < d.n; i++ {
		out = append(out, d.at(i).Seq)
	}
	return out
}

func ent(seq uint64) *Entry { return &Entry{Seq: seq, Msg: &Message{}} }

// wrapped builds a deque holding seqs whose ring has wrapped around, so index arithmetic that
// forgets the mask shows up.
func wrapped(t *testing.T, seqs []uint64) *deque {
	t.Helper()
	d := &deque{}
	for i := 0; i < 12; i++ {
		d.pushBack(ent(0))
	}
	// Leave one behind: popping the last entry resets head to 0.
	for i := 0; i < 11; i++ {
		d.popFront()
	}
	for _, s := range seqs {
		d.pushBack(ent(s))
	}
	d.popFront()
	if len(seqs) > 4 && d.head+d.n <= len(d.buf) {
		t.Fatalf("setup: ring did not wrap (head %d n %d cap %d)", d.head, d.n, len(d.buf))
	}
	return d
}

func TestDequePushPop(t *testing.T) {
	d := &deque{}
	if d.front() != nil || d.popFront() != nil || d.len() != 0 {
		t.Fatal("empty deque returned an entry")
	}
	// Several rounds across the ring boundary.
	next, want := uint64(1), uint64(1)
	for round := 0; round < 50; round++ {
		for i := 0; i < 7; i++ {
			d.pushBack(ent(next))
			next++
		}
		for i := 0; i < 5; i++ {
			if f := d.front(); f == nil || f.Seq != want {
				t.Fatalf("front = %v, want seq %d", f, want)
			}
			if e := d.popFront(); e.Seq != want {
				t.Fatalf("popFront = %d, want %d", e.Seq, want)
			}
			want++
		}
	}
	if d.len() != 100 {
		t.Fatalf("len = %d, want 100", d.len())
	}
	got := d.drain()
	if len(got) != 100 || got[0].Seq != want || got[99].Seq != next-1 || d.len() != 0 {
		t.Fatalf("drain returned %d entries [%d..%d], len after %d", len(got), got[0].Seq, got[len(got)-1].Seq, d.len())
	}
}

func TestDequeInsertBySeq(t *testing.T) {
	base := []uint64{10, 20, 30, 40, 50, 60, 70, 80}
	tests := []struct {
		name string
		seq  uint64
		want []uint64
	}{
		{"front", 5, []uint64{5, 10, 20, 30, 40, 50, 60, 70, 80}},
		{"second", 15, []uint64{10, 15, 20, 30, 40, 50, 60, 70, 80}},
		{"middle", 45, []uint64{10, 20, 30, 40, 45, 50, 60, 70, 80}},
		{"before last", 75, []uint64{10, 20, 30, 40, 50, 60, 70, 75, 80}},
		{"back", 90, []uint64{10, 20, 30, 40, 50, 60, 70, 80, 90}},
	}
	for _, tc := range tests {
		for _, layout := range []string{"linear", "wrapped", "full"} {
			t.Run(tc.name+"/"+layout, func(t *testing.T) {
				var d *deque
				switch layout {
				case "linear":
					d = &deque{}
					for _, s := range base {
						d.pushBack(ent(s))
					}
				case "wrapped":
					d = wrapped(t, base)
				case "full":
					// Exactly at capacity, so the insert must grow first.
					d = &deque{}
					for i := 0; i < 16-len(base); i++ {
						d.pushBack(ent(uint64(i)))
					}
					for _, s := range base {
						d.pushBack(ent(s))
					}
					for i := 0; i < 16-len(base); i++ {
						d.popFront()
					}
					for i := 0; i < 16-len(base); i++ {
						d.pushBack(ent(100 + uint64(i)))
					}
					if d.n != len(d.buf) {
						t.Fatalf("setup: n %d cap %d", d.n, len(d.buf))
					}
				}
				d.insertBySeq(ent(tc.seq))
				got := d.seqs()
				if layout == "full" {
					got = got[:len(tc.want)]
				}
				if !slices.Equal(got, tc.want) {
					t.Fatalf("after insert %d: %v, want %v", tc.seq, got, tc.want)
				}
			})
		}
	}
}

func TestDequeInsertIntoEmpty(t *testing.T) {
	d := &deque{}
	d.insertBySeq(ent(7))
	d.insertBySeq(ent(3))
	d.insertBySeq(ent(5))
	if got := d.seqs(); !slices.Equal(got, []uint64{3, 5, 7}) {
		t.Fatalf("got %v", got)
	}
}

func TestDequeGrowShrink(t *testing.T) {
	d := &deque{}
	const n = 20_000
	for i := 1; i <= n; i++ {
		d.pushBack(ent(uint64(i)))
	}
	if c := len(d.buf); c < n || c&(c-1) != 0 {
		t.Fatalf("cap %d after %d pushes: want a power of two >= n", c, n)
	}
	peak := len(d.buf)
	for i := 1; i <= n-10; i++ {
		if e := d.popFront(); e.Seq != uint64(i) {
			t.Fatalf("pop %d got seq %d", i, e.Seq)
		}
	}
	if c := len(d.buf); c >= peak/8 || c&(c-1) != 0 || c < d.n {
		t.Fatalf("cap %d after draining to %d (peak %d): want it shrunk to a power of two", c, d.n, peak)
	}
	if got := d.seqs(); got[0] != n-9 || got[9] != n {
		t.Fatalf("contents after shrink: %v", got)
	}
	// The ring still works after shrinking: push, insert at the front, drain.
	d.pushBack(ent(n + 1))
	d.insertBySeq(ent(1))
	want := append([]uint64{1}, d.seqs()[1:]...)
	if !slices.IsSorted(want) || d.len() != 12 {
		t.Fatalf("after shrink ops: %v", d.seqs())
	}
}

// TestDequeRandom checks every operation against a sorted slice.
func TestDequeRandom(t *testing.T) {
	for _, seed := range []int64{1, 2, 3, 4} {
		rng := rand.New(rand.NewSource(seed))
		d := &deque{}
		var model []uint64
		used := map[uint64]bool{}
		var maxSeq uint64
		for op := 0; op < 20_000; op++ {
			// Alternate growing and draining phases so both grow and shrink are exercised.
			pushP, popP := 4, 7
			if (op/5000)%2 == 1 {
				pushP, popP = 1, 8
			}
			switch r := rng.Intn(10); {
			case r < pushP: // pushBack a newer seq
				maxSeq += uint64(1 + rng.Intn(3))
				used[maxSeq] = true
				d.pushBack(ent(maxSeq))
				model = append(model, maxSeq)
			case r < popP: // popFront
				e := d.popFront()
				if len(model) == 0 {
					if e != nil {
						t.Fatalf("seed %d op %d: pop from empty returned %d", seed, op, e.Seq)
					}
					continue
				}
				if e == nil || e.Seq != model[0] {
					t.Fatalf("seed %d op %d: pop = %v, want %d", seed, op, e, model[0])
				}
				model = model[1:]
			default: // insertBySeq an unused seq, biased towards the head like requeues
				if maxSeq == 0 {
					continue
				}
				var s uint64
				lo := uint64(1)
				if len(model) > 0 && rng.Intn(2) == 0 {
					lo = model[0]
				}
				for tries := 0; tries < 10; tries++ {
					c := lo + uint64(rng.Int63n(int64(maxSeq-lo+1)))
					if !used[c] {
						s = c
						break
					}
				}
				if s == 0 {
					continue
				}
				used[s] = true
				d.insertBySeq(ent(s))
				i, _ := slices.BinarySearch(model, s)
				model = slices.Insert(model, i, s)
			}
			if d.len() != len(model) {
				t.Fatalf("seed %d op %d: len %d, model %d", seed, op, d.len(), len(model))
			}
			if op%97 == 0 || d.len() < 40 {
				if got := d.seqs(); !slices.Equal(got, model) {
					t.Fatalf("seed %d op %d: deque %v\nmodel %v", seed, op, got, model)
				}
			}
		}
		if got := d.seqs(); !slices.Equal(got, model) {
			t.Fatalf("seed %d final: deque differs from model", seed)
		}
	}
}
