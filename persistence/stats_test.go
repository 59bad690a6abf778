package persistence

import "testing"

// Every commit is timed into the commit-latency histogram (exported as warren_journal_fsync_seconds).
func TestCommitSecondsHistogram(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir())
	defer closeT(t, s)
	for i := 0; i < 3; i++ {
		if err := s.Commit(&Batch{Removes: []Entry{{Queue: QueueRef{VHost: "/", Queue: "q"}, Seq: uint64(i + 1), MsgID: uint64(i + 1)}}}); err != nil {
			t.Fatal(err)
		}
	}
	h := s.Stats().CommitSeconds
	if h.Count < 3 || h.Sum <= 0 {
		t.Fatalf("histogram after 3 commits: %+v", h)
	}
	prev := uint64(0)
	for i, n := range h.Counts {
		if n < prev || n > h.Count {
			t.Fatalf("bucket %d (<= %v s) holds %d: not cumulative (count %d): %+v", i, CommitBuckets[i], n, h.Count, h)
		}
		prev = n
	}
}
