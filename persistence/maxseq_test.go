package persistence

import "testing"

func TestMaxIndexSeq(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir())
	const hi = 1 << 56 // a second priority's range starts here
	commitT(t, s, &Batch{Publishes: []Publish{
		pub(mkMsg(1), ent("a", 3)), pub(mkMsg(2), ent("a", 7)), pub(mkMsg(3), ent("a", hi+1)),
		pub(mkMsg(4), ent("a", hi+5)), pub(mkMsg(5), ent("b", 100)),
	}})
	q := ent("a", 0).Queue
	tests := []struct {
		name     string
		from, to uint64
		want     uint64
		ok       bool
	}{
		{"low range", 1, hi - 1, 7, true},
		{"high range", hi + 1, 2*hi - 1, hi + 5, true},
		{"exact bound", 3, 7, 7, true},
		{"below the largest", 1, 6, 3, true},
		{"empty range", 8, hi, 0, false},
		{"beyond everything", 2 * hi, 3 * hi, 0, false},
	}
	for _, tc := range tests {
		got, ok, err := s.MaxIndexSeq(q, tc.from, tc.to)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: MaxIndexSeq(%d..%d) = %d, %v; want %d, %v", tc.name, tc.from, tc.to, got, ok, tc.want, tc.ok)
		}
	}
	// Another queue's entries are not seen, before or after this queue's prefix.
	if got, ok, _ := s.MaxIndexSeq(ent("c", 0).Queue, 1, 1<<63); ok {
		t.Errorf("queue c: got %d, want none", got)
	}
	closeT(t, s)
}
