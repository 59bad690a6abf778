package persistence

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// snapData is n pseudo-random bytes (seeded): chunk boundaries that shift or drop bytes show.
func snapData(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// chunkKeys lists the snapshot chunk keys of group as "index/chunk".
func chunkKeys(t *testing.T, l *RaftLog, group uint64) []string {
	t.Helper()
	var keys []string
	err := l.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = rlKey(rlChunk, group)
		opt.PrefetchValues = false
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			keys = append(keys, fmt.Sprintf("%d/%d", binary.BigEndian.Uint64(k[9:]), binary.BigEndian.Uint32(k[17:])))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func openRaftLogOpts(t *testing.T, dir string, vlogFile int64) *RaftLog {
	t.Helper()
	l, err := OpenRaftLog(dir, RaftLogOptions{Logger: quietLogger(), ValueLogFileSize: vlogFile, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// checkSnapshot fails unless group's stored snapshot is at index with data.
func checkSnapshot(t *testing.T, l *RaftLog, group, index uint64, data []byte) {
	t.Helper()
	s, err := l.Storage(group)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if got := snap.GetMetadata().GetIndex(); got != index || s.SnapshotIndex() != index {
		t.Fatalf("snapshot index %d (SnapshotIndex %d), want %d", got, s.SnapshotIndex(), index)
	}
	if !bytes.Equal(snap.GetData(), data) {
		t.Fatalf("snapshot data: %d bytes, want %d (equal length: %v)", len(snap.GetData()), len(data), len(snap.GetData()) == len(data))
	}
}

// Snapshots of any size, around and far beyond a value-log file, are stored by
// CreateSnapshot and read back the same after a reopen; each new snapshot leaves only its
// own chunks.
func TestRaftLogLargeSnapshot(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	for _, tc := range []struct {
		name     string
		vlogFile int64 // 0: the default (16 MiB files, 4 MiB chunks)
		sizes    []int // successive snapshots
		chunks   []int // chunk keys stored after each
	}{
		// 1 MiB files: 512 KiB chunks.
		{"boundaries", 1 * mib, []int{0, 100, mib / 2, mib/2 + 1, 3 * mib, 100}, []int{0, 0, 0, 2, 6, 0}},
		{"40MiB", 0, []int{40 * mib, 17 * mib}, []int{10, 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			l := openRaftLogOpts(t, dir, tc.vlogFile)
			n := uint64(len(tc.sizes) * 2)
			if err := l.Save([]RaftUpdate{{Group: 3, Entries: rents(1, n, 1), HardState: hardState(1, 1, n)}}, true); err != nil {
				t.Fatal(err)
			}
			for i, size := range tc.sizes {
				index := uint64(2 * (i + 1))
				data := snapData(size, uint64(i))
				s, _ := l.Storage(3)
				if err := s.CreateSnapshot(index, &pb.ConfState{Voters: []uint64{1}}, data, 1); err != nil {
					t.Fatalf("snapshot %d (%d bytes): %v", i, size, err)
				}
				if got := chunkKeys(t, l, 3); len(got) != tc.chunks[i] {
					t.Errorf("snapshot %d (%d bytes): chunk keys %v, want %d", i, size, got, tc.chunks[i])
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				l = openRaftLogOpts(t, dir, tc.vlogFile)
				checkSnapshot(t, l, 3, index, data)
			}
			if err := l.DropGroup(3); err != nil {
				t.Fatal(err)
			}
			if keys, _, _ := l.GroupDiskUsage(3); keys != 0 {
				t.Errorf("%d keys left after DropGroup", keys)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A snapshot stored whole by an older version (whatever its size then) is still read, and
// a chunked snapshot replaces it.
func TestRaftLogLegacySnapshot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l := openRaftLogOpts(t, dir, 1<<20)
	if err := l.Save([]RaftUpdate{{Group: 4, Entries: rents(1, 10, 2), HardState: hardState(2, 1, 10)}}, true); err != nil {
		t.Fatal(err)
	}
	old := snapData(700<<10, 1) // above this log's 512 KiB chunks: the old code stored it whole
	idx, term := uint64(5), uint64(2)
	b, err := proto.Marshal(&pb.Snapshot{Data: old, Metadata: &pb.SnapshotMetadata{Index: &idx, Term: &term, ConfState: &pb.ConfState{Voters: []uint64{1}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.update(func(txn *badger.Txn) error { return txn.Set(rlKey(rlSnapshot, 4), b) }); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l = openRaftLogOpts(t, dir, 1<<20)
	defer l.Close()
	checkSnapshot(t, l, 4, 5, old)
	s, _ := l.Storage(4)
	if _, cs, _ := s.InitialState(); len(cs.GetVoters()) != 1 {
		t.Errorf("conf state %v", cs)
	}
	next := snapData(2<<20, 2)
	if err := s.CreateSnapshot(8, &pb.ConfState{Voters: []uint64{1}}, next, 0); err != nil {
		t.Fatal(err)
	}
	checkSnapshot(t, l, 4, 8, next)
}

// A crash while a snapshot's chunks are written (some committed, no header) leaves the
// previous snapshot whole; the next snapshot removes the orphaned chunks.
func TestRaftLogSnapshotCrashBetweenChunks(t *testing.T) {
	t.Parallel()
	for _, prevSize := range []int{100, 3 << 20} { // previous snapshot whole, or chunked
		for cut := 0; cut <= 6; cut++ { // the new snapshot's 6 chunks, then its header: 7 commits
			t.Run(fmt.Sprintf("prev%d/cut%d", prevSize, cut), func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				l := openRaftLogOpts(t, dir, 1<<20)
				if err := l.Save([]RaftUpdate{{Group: 2, Entries: rents(1, 20, 1), HardState: hardState(1, 1, 20)}}, true); err != nil {
					t.Fatal(err)
				}
				s, _ := l.Storage(2)
				prev := snapData(prevSize, 7)
				if err := s.CreateSnapshot(5, &pb.ConfState{Voters: []uint64{1}}, prev, 100); err != nil {
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
				if err := s.CreateSnapshot(10, &pb.ConfState{Voters: []uint64{1}}, snapData(3<<20, 8), 100); err == nil {
					t.Fatal("CreateSnapshot succeeded through a crash")
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				l = openRaftLogOpts(t, dir, 1<<20)
				defer l.Close()
				checkSnapshot(t, l, 2, 5, prev)
				if got := len(chunkKeys(t, l, 2)); prevSize > 1<<20 && got != 6+cut || prevSize < 1<<20 && got != cut {
					t.Errorf("%d chunk keys after the crash, want the previous snapshot's and %d orphans", got, cut)
				}
				s, _ = l.Storage(2)
				next := snapData(1<<20, 9)
				if err := s.CreateSnapshot(12, &pb.ConfState{Voters: []uint64{1}}, next, 100); err != nil {
					t.Fatal(err)
				}
				checkSnapshot(t, l, 2, 12, next)
				if got := chunkKeys(t, l, 2); len(got) != 2 {
					t.Errorf("chunk keys %v after the next snapshot, want its 2", got)
				}
			})
		}
	}
}

// A large snapshot received from the leader (raft's ApplySnapshot through Save) replaces the
// log and reads back the same after a reopen, chunk boundaries included; a crash before its
// header keeps the old log.
func TestRaftLogSaveLargeSnapshot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l := openRaftLogOpts(t, dir, 0)
	if err := l.Save([]RaftUpdate{{Group: 6, Entries: rents(1, 10, 1), HardState: hardState(1, 1, 8)}}, true); err != nil {
		t.Fatal(err)
	}
	data := snapData(40<<20, 3)
	idx, term := uint64(30), uint64(3)
	snap := &pb.Snapshot{Data: data, Metadata: &pb.SnapshotMetadata{Index: &idx, Term: &term, ConfState: &pb.ConfState{Voters: []uint64{1, 2, 3}}}}
	// First a crash after three of the ten chunks.
	commits := 0
	l.testHooks = &rlTestHooks{txnOps: 1, commit: func() error {
		if commits == 3 {
			return errors.New("crash")
		}
		commits++
		return nil
	}}
	if err := l.Save([]RaftUpdate{{Group: 6, Snapshot: snap, Entries: rents(31, 32, 3), HardState: hardState(3, 0, 30)}}, true); err == nil {
		t.Fatal("Save succeeded through a crash")
	}
	l.Close()
	l = openRaftLogOpts(t, dir, 0)
	s, _ := l.Storage(6)
	if si, last := s.SnapshotIndex(), must(s.LastIndex()); si != 0 || last != 10 {
		t.Fatalf("after the crash: snapshot at %d, last index %d; want 0, 10", si, last)
	}
	if err := l.Save([]RaftUpdate{{Group: 6, Snapshot: snap, Entries: rents(31, 32, 3), HardState: hardState(3, 0, 30)}}, true); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l = openRaftLogOpts(t, dir, 0)
	defer l.Close()
	checkSnapshot(t, l, 6, 30, data)
	s, _ = l.Storage(6)
	if f, last := must(s.FirstIndex()), must(s.LastIndex()); f != 31 || last != 32 {
		t.Errorf("log [%d, %d], want [31, 32]", f, last)
	}
	if got := chunkKeys(t, l, 6); len(got) != 10 {
		t.Errorf("chunk keys %v, want the snapshot's 10 (orphans of the crash gone)", got)
	}
}

func must[T any](v T, _ error) T { return v }

// An error badger reports with a hex dump of the value (an entry over the value-log file
// size) reaches the caller, and so the logs, without the dump: Raft log values carry
// message bodies.
func TestRaftLogErrorsDumpNoValue(t *testing.T) {
	t.Parallel()
	l := openRaftLogOpts(t, t.TempDir(), 1<<20)
	defer l.Close()
	body := bytes.Repeat([]byte("secret-body "), (2<<20)/12)
	idx, term := uint64(1), uint64(1)
	err := l.Save([]RaftUpdate{{Group: 1, Entries: []*pb.Entry{{Index: &idx, Term: &term, Data: body}}}}, true)
	if err == nil {
		t.Fatal("a 2 MiB entry in a log of 1 MiB value-log files was accepted")
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || strings.Contains(msg, "73 65 63 72") || strings.Contains(msg, "secret") {
		t.Errorf("error carries the value: %.300q", msg)
	}
	if !strings.Contains(msg, "exceeded") {
		t.Errorf("error lost badger's reason: %q", msg)
	}
}

// BenchmarkRaftLogCreateSnapshot stores a snapshot (synced) per iteration, the previous
// one's chunks dropped: 12 MiB (stored whole before chunking existed, so comparable) and
// 64 MiB (refused before).
func BenchmarkRaftLogCreateSnapshot(b *testing.B) {
	for _, size := range []int{12 << 20, 64 << 20} {
		b.Run(fmt.Sprintf("%dMiB", size>>20), func(b *testing.B) {
			l, err := OpenRaftLog(b.TempDir(), RaftLogOptions{Logger: quietLogger(), GCInterval: -1})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			n := uint64(b.N + 1)
			if err := l.Save([]RaftUpdate{{Group: 1, Entries: rents(1, n, 1), HardState: hardState(1, 1, n)}}, true); err != nil {
				b.Fatal(err)
			}
			s, _ := l.Storage(1)
			data := snapData(size, 1)
			cs := &pb.ConfState{Voters: []uint64{1}}
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			for i := 1; i <= b.N; i++ {
				if err := s.CreateSnapshot(uint64(i), cs, data, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
