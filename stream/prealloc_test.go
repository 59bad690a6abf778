package stream

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fileSize is the size of the file at path.
func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// syncBuffer is a log sink safe for the stream's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// copyDir copies the files of dir into a new temporary directory, as a crash would leave them
// (the stream in dir stays open).
func copyDir(t *testing.T, dir string) string {
	t.Helper()
	to := t.TempDir()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, de.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

// TestPreallocatedTail checks the zero-ahead preallocation: the active segment carries synced
// zeros past its last chunk; sealing and closing cut them; a crash copy with the zeros opens
// with every record and no torn-tail warning; records are never overwritten by zeros.
func TestPreallocatedTail(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const segMax = 3 << 20
	s := openT(t, dir, Options{MaxSegmentBytes: segMax})
	var n uint64
	appendMore := func(batches int) {
		for i := 0; i < batches; i++ {
			appendBatch(t, s, n, 50, 200)
			n += 50
		}
	}
	appendMore(4)
	// The zeroing runs beside the writer: wait for the file to grow past the records.
	active := func() (path string, committed int64) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.act.path, s.act.size
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		path, committed := active()
		if fileSize(t, path) > committed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("active segment %d bytes, committed %d: no preallocated tail", fileSize(t, path), committed)
		}
		appendMore(1)
		time.Sleep(10 * time.Millisecond)
	}

	// A crash now leaves the zeros: they are cut, not reported as a torn tail.
	var logs syncBuffer
	crashed := copyDir(t, dir)
	c := openT(t, crashed, Options{MaxSegmentBytes: segMax, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if got := c.Info().Next; got != n {
		t.Fatalf("crash copy: next offset %d, want %d", got, n)
	}
	r, _ := c.NewReader(First())
	if _, next, cnt := readAll(t, r); next != n || uint64(cnt) != n {
		t.Fatalf("crash copy: read %d records up to %d, want %d", cnt, next, n)
	}
	r.Close()
	c.Close()
	if strings.Contains(logs.String(), "torn") {
		t.Errorf("zeros reported as a torn tail: %s", logs.String())
	}

	// Fill past a few segments: every sealed segment ends at its last chunk.
	for s.Info().Segments < 4 {
		appendMore(20)
	}
	s.mu.Lock()
	segs := append([]*segment(nil), s.segs...)
	s.mu.Unlock()
	for _, seg := range segs[:len(segs)-1] {
		if got := fileSize(t, seg.path); got != seg.size || got > segMax {
			t.Errorf("sealed %s: %d bytes on disk, %d committed (limit %d)", filepath.Base(seg.path), got, seg.size, segMax)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	path, committed := active()
	if got := fileSize(t, path); got != committed {
		t.Errorf("closed: active segment %d bytes, committed %d", got, committed)
	}

	// Reopened: sealed segments are trusted from their indexes, all records read back.
	logs = syncBuffer{}
	s = openT(t, dir, Options{MaxSegmentBytes: segMax, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	defer s.Close()
	r, _ = s.NewReader(First())
	defer r.Close()
	if _, next, cnt := readAll(t, r); next != n || uint64(cnt) != n {
		t.Fatalf("reopened: read %d records up to %d, want %d", cnt, next, n)
	}
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("reopen warned: %s", logs.String())
	}
}

// TestAppendParts mixes Append and AppendParts in the same chunks: a record written in parts
// reads back as its head followed by its body.
func TestAppendParts(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir(), Options{NoSync: true})
	defer s.Close()
	const n = 300
	var wg sync.WaitGroup
	wg.Add(n)
	for i := uint64(0); i < n; i++ {
		rec := payload(i, 40+int(i%7))
		done := func(off uint64, err error) {
			if err != nil || off != i {
				t.Errorf("record %d: offset %d, %v", i, off, err)
			}
			wg.Done()
		}
		switch i % 3 {
		case 0:
			s.Append(rec, done)
		case 1:
			s.AppendParts(rec[:11], rec[11:], done)
		default:
			s.AppendParts(nil, rec, done) // an empty head
		}
	}
	wg.Wait()
	r, _ := s.NewReader(First())
	defer r.Close()
	for i := uint64(0); i < n; i++ {
		rec, ok, err := r.TryNext()
		if err != nil || !ok {
			t.Fatalf("record %d: %v %v", i, ok, err)
		}
		if want := payload(i, 40+int(i%7)); !bytes.Equal(rec.Data, want) {
			t.Fatalf("record %d reads back as % x, want % x", i, rec.Data, want)
		}
	}
}

// TestPreallocSmallStream checks that a stream holding little keeps few zeros ahead: the
// zero-fill grows with the segment, so many quiet streams do not each take zeroAhead of disk.
func TestPreallocSmallStream(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir(), Options{})
	defer s.Close()
	var path string
	var committed int64
	deadline := time.Now().Add(10 * time.Second)
	for i := uint64(0); ; i++ {
		appendT(t, s, payload(i, 100))
		s.mu.Lock()
		path, committed = s.act.path, s.act.size
		s.mu.Unlock()
		if fileSize(t, path) > committed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no preallocated tail")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := fileSize(t, path); got > committed+2*minZeroAhead {
		t.Errorf("a %d-byte segment preallocated to %d bytes", committed, got)
	}
}
