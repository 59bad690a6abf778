package persistence

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func rent(index, term uint64) *pb.Entry {
	return &pb.Entry{Index: &index, Term: &term, Data: []byte{byte(index), byte(term)}}
}

func rents(lo, hi, term uint64) []*pb.Entry {
	var es []*pb.Entry
	for i := lo; i <= hi; i++ {
		es = append(es, rent(i, term))
	}
	return es
}

func hardState(term, vote, commit uint64) *pb.HardState {
	return &pb.HardState{Term: &term, Vote: &vote, Commit: &commit}
}

func openRaftLogT(t *testing.T, dir string) *RaftLog {
	t.Helper()
	l, err := OpenRaftLog(dir, RaftLogOptions{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// indexTerms reads [first, last] back and returns index->term, failing on any gap.
func indexTerms(t *testing.T, s *RaftStorage) map[uint64]uint64 {
	t.Helper()
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	got := map[uint64]uint64{}
	if last < first {
		return got
	}
	es, err := s.Entries(first, last+1, ^uint64(0))
	if err != nil {
		t.Fatalf("Entries(%d,%d): %v", first, last+1, err)
	}
	for _, e := range es {
		got[e.GetIndex()] = e.GetTerm()
	}
	if uint64(len(es)) != last-first+1 {
		t.Fatalf("Entries(%d,%d) returned %d entries", first, last+1, len(es))
	}
	return got
}

// The storage keeps Raft's log invariants through appends, conflicting suffixes, snapshots
// from a leader and local compaction, and a reopened log reads back the same.
func TestRaftLogStorage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		updates   [][]RaftUpdate
		snapshot  uint64 // CreateSnapshot at this index after the updates (0: none)
		keep      uint64
		first     uint64
		last      uint64
		terms     map[uint64]uint64 // expected term of chosen indices
		compacted []uint64          // Term of these must be ErrCompacted
		hs        *pb.HardState
	}{
		{
			name:    "append",
			updates: [][]RaftUpdate{{{Group: 1, Entries: rents(1, 5, 1), HardState: hardState(1, 2, 3)}}},
			first:   1, last: 5, terms: map[uint64]uint64{1: 1, 5: 1}, hs: hardState(1, 2, 3),
		},
		{
			name: "conflicting suffix replaced and truncated",
			updates: [][]RaftUpdate{
				{{Group: 1, Entries: rents(1, 10, 1)}},
				{{Group: 1, Entries: rents(4, 6, 2), HardState: hardState(2, 0, 3)}},
			},
			first: 1, last: 6, terms: map[uint64]uint64{3: 1, 4: 2, 6: 2}, hs: hardState(2, 0, 3),
		},
		{
			name: "snapshot from the leader replaces the log",
			updates: [][]RaftUpdate{
				{{Group: 1, Entries: rents(1, 4, 1)}},
				{{Group: 1, Snapshot: &pb.Snapshot{Data: []byte("state"), Metadata: &pb.SnapshotMetadata{Index: new(uint64(20)), Term: new(uint64(3)), ConfState: &pb.ConfState{Voters: []uint64{1, 2}}}}, HardState: hardState(3, 0, 20)}},
				{{Group: 1, Entries: rents(21, 22, 3)}},
			},
			first: 21, last: 22, terms: map[uint64]uint64{20: 3, 21: 3}, compacted: []uint64{4, 19}, hs: hardState(3, 0, 20),
		},
		{
			name:     "local snapshot compacts behind it",
			updates:  [][]RaftUpdate{{{Group: 1, Entries: rents(1, 30, 2)}}},
			snapshot: 25, keep: 5,
			first: 21, last: 30, terms: map[uint64]uint64{20: 2, 30: 2}, compacted: []uint64{1, 19},
		},
		{
			name: "groups are independent",
			updates: [][]RaftUpdate{{
				{Group: 1, Entries: rents(1, 3, 1)},
				{Group: 2, Entries: rents(1, 9, 4)},
				{Group: 1, Entries: rents(4, 4, 1)},
			}},
			first: 1, last: 4, terms: map[uint64]uint64{4: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			l := openRaftLogT(t, dir)
			s, err := l.Storage(1)
			if err != nil {
				t.Fatal(err)
			}
			for _, u := range tt.updates {
				if err := l.Save(u, true); err != nil {
					t.Fatal(err)
				}
			}
			if tt.snapshot > 0 {
				if err := s.CreateSnapshot(tt.snapshot, &pb.ConfState{Voters: []uint64{7}}, []byte("sm"), tt.keep); err != nil {
					t.Fatal(err)
				}
			}
			check := func(s *RaftStorage) {
				t.Helper()
				if f, _ := s.FirstIndex(); f != tt.first {
					t.Errorf("FirstIndex = %d, want %d", f, tt.first)
				}
				if l, _ := s.LastIndex(); l != tt.last {
					t.Errorf("LastIndex = %d, want %d", l, tt.last)
				}
				for i, want := range tt.terms {
					if got, err := s.Term(i); err != nil || got != want {
						t.Errorf("Term(%d) = %d, %v; want %d", i, got, err, want)
					}
				}
				for _, i := range tt.compacted {
					if _, err := s.Term(i); !errors.Is(err, raft.ErrCompacted) {
						t.Errorf("Term(%d) err = %v, want ErrCompacted", i, err)
					}
					if _, err := s.Entries(i, i+1, 1<<20); !errors.Is(err, raft.ErrCompacted) {
						t.Errorf("Entries(%d) err = %v, want ErrCompacted", i, err)
					}
				}
				if _, err := s.Term(tt.last + 1); !errors.Is(err, raft.ErrUnavailable) {
					t.Errorf("Term(last+1) err = %v, want ErrUnavailable", err)
				}
				got := indexTerms(t, s)
				for i := tt.first; i <= tt.last; i++ {
					if _, ok := got[i]; !ok {
						t.Errorf("entry %d missing", i)
					}
				}
				hs, _, _ := s.InitialState()
				if tt.hs != nil && (hs.GetTerm() != tt.hs.GetTerm() || hs.GetVote() != tt.hs.GetVote() || hs.GetCommit() != tt.hs.GetCommit()) {
					t.Errorf("hard state = %v, want %v", hs, tt.hs)
				}
			}
			check(s)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l = openRaftLogT(t, dir)
			defer l.Close()
			s, err = l.Storage(1)
			if err != nil {
				t.Fatal(err)
			}
			check(s)
		})
	}
}

// Entries honours maxSize but always returns at least one entry; a snapshot and its
// configuration survive a reopen.
func TestRaftLogEntriesSizeAndSnapshot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l := openRaftLogT(t, dir)
	s, _ := l.Storage(9)
	if err := l.Save([]RaftUpdate{{Group: 9, Entries: rents(1, 10, 1)}}, true); err != nil {
		t.Fatal(err)
	}
	one := uint64(len(mustMarshal(t, rent(1, 1))))
	for _, tt := range []struct{ max, want uint64 }{{0, 1}, {one, 1}, {2*one + 1, 2}, {1 << 30, 10}} {
		es, err := s.Entries(1, 11, tt.max)
		if err != nil || uint64(len(es)) != tt.want {
			t.Errorf("Entries(max=%d) = %d entries, %v; want %d", tt.max, len(es), err, tt.want)
		}
	}
	if err := s.CreateSnapshot(8, &pb.ConfState{Voters: []uint64{1, 2, 3}}, []byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSnapshot(8, nil, nil, 0); !errors.Is(err, raft.ErrSnapOutOfDate) {
		t.Errorf("second snapshot at 8: %v, want ErrSnapOutOfDate", err)
	}
	l.Close()
	l = openRaftLogT(t, dir)
	defer l.Close()
	s, _ = l.Storage(9)
	snap, err := s.Snapshot()
	if err != nil || string(snap.GetData()) != "data" || snap.GetMetadata().GetIndex() != 8 || snap.GetMetadata().GetTerm() != 1 {
		t.Fatalf("snapshot = %v, %v", snap, err)
	}
	_, cs, _ := s.InitialState()
	if len(cs.GetVoters()) != 3 {
		t.Errorf("conf state = %v", cs)
	}
	if f, _ := s.FirstIndex(); f != 9 {
		t.Errorf("FirstIndex = %d, want 9", f)
	}
	if err := l.DropGroup(9); err != nil {
		t.Fatal(err)
	}
	s, _ = l.Storage(9)
	if last, _ := s.LastIndex(); last != 0 {
		t.Errorf("after DropGroup LastIndex = %d", last)
	}
}

// Appends that would leave a gap or rewrite compacted entries are refused.
func TestRaftLogRejectsGaps(t *testing.T) {
	t.Parallel()
	l, err := OpenRaftLog("", RaftLogOptions{InMemory: true, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Save([]RaftUpdate{{Group: 1, Entries: rents(1, 3, 1)}}, true); err != nil {
		t.Fatal(err)
	}
	if err := l.Save([]RaftUpdate{{Group: 1, Entries: rents(5, 6, 1)}}, true); err == nil {
		t.Error("gap accepted")
	}
}

func mustMarshal(t *testing.T, e *pb.Entry) []byte {
	t.Helper()
	b, err := proto.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Save may commit in several transactions; a crash between any two of them leaves a log raft
// can start from: no gap in [FirstIndex, LastIndex], the commit index within it, the first
// index right after the snapshot, terms never decreasing (no mix of old and new suffix), and
// nothing at or below the commit index lost.
func TestRaftLogSaveCrashBetweenCommits(t *testing.T) {
	snap := func(index, term uint64) *pb.Snapshot {
		return &pb.Snapshot{Data: []byte("state"), Metadata: &pb.SnapshotMetadata{Index: &index, Term: &term,
			ConfState: &pb.ConfState{Voters: []uint64{1}}}}
	}
	for _, tc := range []struct {
		name string
		u    RaftUpdate
	}{
		{"conflicting suffix", RaftUpdate{Entries: rents(6, 8, 2), HardState: hardState(2, 1, 5)}},
		{"snapshot", RaftUpdate{Snapshot: snap(7, 2), Entries: rents(8, 9, 2), HardState: hardState(2, 1, 7)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for cut := 0; ; cut++ {
				dir := t.TempDir()
				l := openRaftLogT(t, dir)
				if err := l.Save([]RaftUpdate{{Group: 1, Entries: rents(1, 10, 1), HardState: hardState(1, 1, 5)}}, true); err != nil {
					t.Fatal(err)
				}
				commits := 0
				l.testHooks = &rlTestHooks{txnOps: 1, commit: func() error {
					if commits == cut {
						return errors.New("crash")
					}
					commits++
					return nil
				}}
				u := tc.u
				u.Group = 1
				err := l.Save([]RaftUpdate{u}, true)
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				l = openRaftLogT(t, dir)
				s, serr := l.Storage(1)
				if serr != nil {
					t.Fatal(serr)
				}
				got := indexTerms(t, s) // fails on a gap
				first, _ := s.FirstIndex()
				last, _ := s.LastIndex()
				hs, _, _ := s.InitialState()
				if c := hs.GetCommit(); c+1 < first || c > last {
					t.Errorf("cut %d: commit %d outside [%d, %d]", cut, c, first-1, last)
				}
				if si := s.SnapshotIndex(); si != first-1 {
					t.Errorf("cut %d: snapshot at %d, first index %d", cut, si, first)
				}
				for i := uint64(1); i <= hs.GetCommit(); i++ {
					if _, ok := got[i]; !ok && i >= first {
						t.Errorf("cut %d: committed entry %d lost", cut, i)
					}
				}
				prev := uint64(0)
				for i := first; i <= last; i++ {
					if got[i] < prev {
						t.Errorf("cut %d: term %d at %d after term %d", cut, got[i], i, prev)
					}
					prev = got[i]
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				if err == nil {
					if cut < 2 {
						t.Fatalf("Save committed in %d transactions: the test splits nothing", cut)
					}
					return // every cut point tried
				}
			}
		})
	}
}

// DropGroup removes every key of a group, however many batches it takes, and leaves other
// groups alone; tombstones are listed until cleared.
func TestRaftLogDropGroupBatches(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l := openRaftLogT(t, dir)
	n := uint64(3*DropBatch + 17)
	for _, g := range []uint64{5, 6} {
		var es []*pb.Entry
		for lo := uint64(1); lo <= n; lo += 500 {
			es = rents(lo, min(lo+499, n), 1)
			if err := l.Save([]RaftUpdate{{Group: g, Entries: es, HardState: hardState(1, 0, lo)}}, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	s5, _ := l.Storage(5)
	if err := s5.CreateSnapshot(n/2, &pb.ConfState{Voters: []uint64{1}}, []byte("state"), 10); err != nil {
		t.Fatal(err)
	}
	if keys, _, err := l.GroupDiskUsage(5); err != nil || keys < int(n/2) {
		t.Fatalf("group 5 before the drop: %d keys, %v", keys, err)
	}
	if err := l.MarkDeleted(5); err != nil {
		t.Fatal(err)
	}
	if err := l.DropGroup(5); err != nil {
		t.Fatal(err)
	}
	if keys, _, err := l.GroupDiskUsage(5); err != nil || keys != 0 {
		t.Fatalf("group 5 after the drop: %d keys, %v", keys, err)
	}
	if keys, _, _ := l.GroupDiskUsage(6); keys != int(n)+1 {
		t.Fatalf("group 6: %d keys, want %d", keys, n+1)
	}
	l.Close()
	l = openRaftLogT(t, dir)
	defer l.Close()
	if ts, err := l.Tombstones(); err != nil || len(ts) != 1 || ts[0] != 5 {
		t.Fatalf("tombstones after reopen = %v, %v", ts, err)
	}
	s5, _ = l.Storage(5)
	if last, _ := s5.LastIndex(); last != 0 || s5.SnapshotIndex() != 0 {
		t.Fatalf("group 5 after reopen: last %d, snapshot %d", last, s5.SnapshotIndex())
	}
	if err := l.ClearTombstone(5); err != nil {
		t.Fatal(err)
	}
	if ts, _ := l.Tombstones(); len(ts) != 0 {
		t.Fatalf("tombstones after clear = %v", ts)
	}
}

// vlogFilesSize is the size of the value-log files in dir.
func vlogFilesSize(t *testing.T, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".vlog") {
			fi, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			n += fi.Size()
		}
	}
	return n
}

// Entries above the value threshold (a quorum queue's messages) live in the value log: once
// compacted, RunGC gives their files back; without it the log's disk use would follow its
// history. Each round writes 1 MiB, compacts it all and reopens (a memtable flush): the
// level-0 tables pile up and badger's compaction records the garbage that GC then reclaims.
func TestRaftLogGCReclaimsCompacted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opts := RaftLogOptions{Logger: quietLogger(), NoSync: true, GCInterval: -1, ValueLogFileSize: 1 << 20}
	const rounds, per, size = 10, 256, 4 << 10
	var l *RaftLog
	next := uint64(1)
	for r := 0; r < rounds; r++ {
		var err error
		if l, err = OpenRaftLog(dir, opts); err != nil {
			t.Fatal(err)
		}
		var es []*pb.Entry
		for i := 0; i < per; i++ {
			idx, term := next, uint64(1)
			next++
			es = append(es, &pb.Entry{Index: &idx, Term: &term, Data: make([]byte, size)})
		}
		if err := l.Save([]RaftUpdate{{Group: 1, Entries: es, HardState: hardState(1, 0, next-1)}}, false); err != nil {
			t.Fatal(err)
		}
		s, _ := l.Storage(1)
		if err := s.CreateSnapshot(next-1, &pb.ConfState{Voters: []uint64{1}}, []byte("small"), 0); err != nil {
			t.Fatal(err)
		}
		if r < rounds-1 {
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	defer l.Close()
	written := int64(rounds * per * size)
	before := vlogFilesSize(t, dir)
	var after int64
	rewritten := 0
	// GC picks files by the discard stats LSM compactions record; on a loaded machine they
	// lag, so a round that rewrote nothing forces a compaction (Flatten), and the bound is a
	// generous one: it only stops a GC that never reclaims.
	deadline := time.Now().Add(90 * time.Second)
	for {
		k, err := l.RunGC()
		if err != nil {
			t.Fatal(err)
		}
		if k == 0 {
			_ = l.db.Flatten(1)
		}
		rewritten += k
		after = vlogFilesSize(t, dir)
		if after < before/2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("value log: %d KiB written and compacted, %d KiB of files before GC, %d KiB after (%d files rewritten)", written>>10, before>>10, after>>10, rewritten)
	if before < written || after >= before/2 {
		t.Errorf("value log files: %d bytes before GC, %d after; want more than half of the %d bytes compacted back", before, after, written)
	}
	if s, _ := l.Storage(1); s.SnapshotIndex() != next-1 {
		t.Errorf("snapshot index %d after GC, want %d", s.SnapshotIndex(), next-1)
	}
}

// How long value-log GC stalls Save (it holds wmu while badger rewrites a file's live
// values): each file here is 43% live, near the worst a rewrite meets (GC takes files at
// least half garbage). It logs the longest Save during GC for the default file size and, with
// RAFTLOG_GC_PAUSE_64=1, for badger's 64 MiB in the same run; it asserts only that a file was
// rewritten and that Save kept working (timings depend on the machine's load).
func TestRaftLogGCSavePause(t *testing.T) {
	sizes := []int64{DefaultRaftValueLogFileSize}
	if os.Getenv("RAFTLOG_GC_PAUSE_64") != "" {
		sizes = append(sizes, 64<<20)
	}
	for _, fileSize := range sizes {
		dir := t.TempDir()
		opts := RaftLogOptions{Logger: quietLogger(), NoSync: true, GCInterval: -1, ValueLogFileSize: fileSize}
		l, err := OpenRaftLog(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		// Groups 1 and 2 interleaved over two files' worth; group 2 (4 KiB entries against
		// 3 KiB) is then dropped.
		var next [3]uint64
		put := func(group uint64, size, n int) {
			var es []*pb.Entry
			for i := 0; i < n; i++ {
				next[group]++
				idx, term := next[group], uint64(1)
				es = append(es, &pb.Entry{Index: &idx, Term: &term, Data: make([]byte, size)})
			}
			if err := l.Save([]RaftUpdate{{Group: group, Entries: es, HardState: hardState(1, 0, next[group])}}, false); err != nil {
				t.Fatal(err)
			}
		}
		for written := int64(0); written < 2*fileSize; written += 64 * 7 << 10 {
			put(1, 3<<10, 64)
			put(2, 4<<10, 64)
		}
		if err := l.DropGroup(2); err != nil {
			t.Fatal(err)
		}
		// Each reopen flushes a level-0 table; badger compacts them once there are several,
		// which records the garbage GC looks for.
		for i := 0; i < 8; i++ {
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if l, err = OpenRaftLog(dir, opts); err != nil {
				t.Fatal(err)
			}
			put(1, 16, 1)
		}
		if err := l.db.Flatten(1); err != nil {
			t.Fatal(err)
		}
		// Saves of a small entry, back to back, during GC.
		stop, done := make(chan struct{}), make(chan time.Duration)
		go func() {
			var longest time.Duration
			for {
				select {
				case <-stop:
					done <- longest
					return
				default:
				}
				start := time.Now()
				next[0]++
				idx, term := next[0], uint64(1)
				err := l.Save([]RaftUpdate{{Group: 3, Entries: []*pb.Entry{{Index: &idx, Term: &term, Data: []byte("x")}}, HardState: hardState(1, 0, idx)}}, false)
				if err != nil {
					t.Error(err)
				}
				longest = max(longest, time.Since(start))
			}
		}()
		before := vlogFilesSize(t, dir)
		gcStart := time.Now()
		n, err := l.RunGC()
		gcTime := time.Since(gcStart)
		close(stop)
		longest := <-done
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("value-log file %d MiB: GC rewrote %d files (value log %d -> %d MiB) in %v; longest Save meanwhile %v",
			fileSize>>20, n, before>>20, vlogFilesSize(t, dir)>>20, gcTime, longest)
		if n == 0 {
			t.Errorf("%d MiB files: GC rewrote nothing", fileSize>>20)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
