package stream

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var childModes = map[string]func(dir string) int{crashChildEnv: crashChild}

func TestMain(m *testing.M) {
	for env, child := range childModes {
		if dir := os.Getenv(env); dir != "" {
			os.Exit(child(dir))
		}
	}
	os.Exit(m.Run())
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fakeClock is an injected clock for timestamps and retention.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)} }
func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func openT(t testing.TB, dir string, o Options) *Stream {
	t.Helper()
	if o.Logger == nil {
		o.Logger = quiet()
	}
	s, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// payload is record i's content: its number, then filler up to size bytes.
func payload(i uint64, size int) []byte {
	b := make([]byte, max(size, 8))
	binary.BigEndian.PutUint64(b, i)
	for j := 8; j < len(b); j++ {
		b[j] = byte(i + uint64(j))
	}
	return b
}

func appendT(t testing.TB, s *Stream, rec []byte) uint64 {
	t.Helper()
	off, err := s.AppendSync(rec)
	if err != nil {
		t.Fatal(err)
	}
	return off
}

// appendBatch appends n records concurrently so they share chunks, and waits for all.
func appendBatch(t testing.TB, s *Stream, from uint64, n int, size int) {
	t.Helper()
	var wg sync.WaitGroup
	var bad atomic.Value
	wg.Add(n)
	for i := 0; i < n; i++ {
		s.Append(payload(from+uint64(i), size), func(off uint64, err error) {
			if err != nil {
				bad.Store(err)
			} else if off != from+uint64(i) {
				bad.Store(fmt.Errorf("record %d got offset %d", from+uint64(i), off))
			}
			wg.Done()
		})
	}
	wg.Wait()
	if err := bad.Load(); err != nil {
		t.Fatal(err)
	}
}

// appendChunkT appends n records as one batch (so one chunk) and waits.
func appendChunkT(t testing.TB, s *Stream, from uint64, n int, size int) {
	t.Helper()
	recs := make([][]byte, n)
	for i := range recs {
		recs[i] = payload(from+uint64(i), size)
	}
	ch := make(chan error, 1)
	s.AppendBatch(recs, func(first uint64, err error) {
		if err == nil && first != from {
			err = fmt.Errorf("batch from %d got offset %d", from, first)
		}
		ch <- err
	})
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
}

// readAll reads from r until it has caught up and checks records are consecutive payloads.
func readAll(t testing.TB, r *Reader) (first, next uint64, n int) {
	t.Helper()
	first = r.Offset()
	for {
		rec, ok, err := r.TryNext()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return first, r.Offset(), n
		}
		if n == 0 {
			first = rec.Offset
		} else if rec.Offset != next {
			t.Fatalf("offset %d after %d", rec.Offset, next-1)
		}
		if got := binary.BigEndian.Uint64(rec.Data); got != rec.Offset {
			t.Fatalf("record at offset %d holds payload %d", rec.Offset, got)
		}
		next = rec.Offset + 1
		n++
	}
}

func TestAppendAndReadBack(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		n      int
		size   int
		batch  int
		segMax int64
	}{
		{"one per chunk", 50, 16, 1, 0},
		{"batched 16B", 5000, 16, 500, 0},
		{"1KiB small segments", 2000, 1024, 100, 64 << 10},
		{"records larger than a chunk", 20, 3 << 20, 4, 0},
		{"empty records", 100, 0, 10, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := openT(t, t.TempDir(), Options{MaxSegmentBytes: tc.segMax, NoSync: true})
			defer s.Close()
			for i := 0; i < tc.n; i += tc.batch {
				appendBatch(t, s, uint64(i), min(tc.batch, tc.n-i), tc.size)
			}
			r, err := s.NewReader(First())
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			first, next, n := readAll(t, r)
			if first != 0 || next != uint64(tc.n) || n != tc.n {
				t.Fatalf("read %d records [%d, %d), want %d", n, first, next, tc.n)
			}
			if info := s.Info(); info.First != 0 || info.Next != uint64(tc.n) {
				t.Fatalf("info %+v", info)
			}
		})
	}
}

func TestGroupCommitBatches(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir(), Options{})
	defer s.Close()
	appendBatch(t, s, 0, 2000, 16)
	s.mu.Lock()
	chunks := s.segs[0].chunks
	s.mu.Unlock()
	// 2000 concurrent appends with fsync on share chunks: far fewer chunks (and syncs) than records.
	if chunks >= 200 {
		t.Fatalf("%d chunks for 2000 concurrent appends: no group commit", chunks)
	}
	t.Logf("2000 concurrent appends in %d chunks", chunks)
}

func TestReaderSpecs(t *testing.T) {
	t.Parallel()
	clk := newClock()
	s := openT(t, t.TempDir(), Options{MaxSegmentBytes: 4096, Now: clk.Now, NoSync: true})
	defer s.Close()
	// 40 chunks of 10 records of 64 B, one second apart, over several 4 KiB segments.
	t0 := clk.Now()
	for c := 0; c < 40; c++ {
		appendChunkT(t, s, uint64(c*10), 10, 64)
		clk.Advance(time.Second)
	}
	if s.Info().Segments < 5 {
		t.Fatalf("want several segments, have %d", s.Info().Segments)
	}
	for _, tc := range []struct {
		name  string
		spec  Spec
		first uint64 // first offset read; 400 = nothing yet (next)
	}{
		{"first", First(), 0},
		{"last is the last chunk", Last(), 390},
		{"next", Next(), 400},
		{"offset 0", AtOffset(0), 0},
		{"offset mid chunk", AtOffset(123), 123},
		{"offset chunk start", AtOffset(250), 250},
		{"offset last", AtOffset(399), 399},
		{"offset past end", AtOffset(1_000_000), 400},
		{"timestamp before start", AtTime(t0.Add(-time.Hour)), 0},
		{"timestamp exact chunk", AtTime(t0.Add(7 * time.Second)), 70},
		{"timestamp between chunks", AtTime(t0.Add(7*time.Second + 500*time.Millisecond)), 80},
		{"timestamp after end", AtTime(t0.Add(time.Hour)), 400},
	} {
		r, err := s.NewReader(tc.spec)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		rec, ok, err := r.TryNext()
		switch {
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.first == 400 && ok:
			t.Errorf("%s: read offset %d, want nothing until the next append", tc.name, rec.Offset)
		case tc.first != 400 && (!ok || rec.Offset != tc.first):
			t.Errorf("%s: read offset %d (ok %v), want %d", tc.name, rec.Offset, ok, tc.first)
		case ok:
			if _, next, _ := readAll(t, r); next != 400 {
				t.Errorf("%s: read up to %d, want 400", tc.name, next)
			}
		}
		r.Close()
	}
}

func TestReadersAtManyOffsetsWhileAppending(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir(), Options{MaxSegmentBytes: 32 << 10, NoSync: true})
	defer s.Close()
	appendBatch(t, s, 0, 1000, 100)
	const total = 5000
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for start := uint64(0); start < 1000; start += 37 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := s.NewReader(AtOffset(start))
			if err != nil {
				errs <- err
				return
			}
			defer r.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			for want := start; want < total; want++ {
				rec, err := r.Next(ctx)
				if err != nil {
					errs <- fmt.Errorf("reader from %d at %d: %w", start, want, err)
					return
				}
				if rec.Offset != want || binary.BigEndian.Uint64(rec.Data) != want || len(rec.Data) != 100 {
					errs <- fmt.Errorf("reader from %d: got offset %d want %d", start, rec.Offset, want)
					return
				}
			}
		}()
	}
	for i := uint64(1000); i < total; i += 250 {
		appendBatch(t, s, i, 250, 100)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestWaitingReaderWakesPromptly(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir(), Options{NoSync: true})
	defer s.Close()
	r, err := s.NewReader(Next())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// The fastest of several wake-ups, so that a loaded machine's scheduling delays do not
	// count; a reader that polled would show its polling interval in every round.
	fastest := time.Hour
	for i := uint64(0); i < 5; i++ {
		got := make(chan time.Time, 1)
		go func() {
			if _, err := r.Next(context.Background()); err == nil {
				got <- time.Now()
			}
		}()
		time.Sleep(50 * time.Millisecond) // the reader is waiting
		start := time.Now()
		appendT(t, s, payload(i, 16))
		select {
		case at := <-got:
			fastest = min(fastest, at.Sub(start))
		case <-time.After(5 * time.Second):
			t.Fatal("reader not woken")
		}
	}
	if fastest > 50*time.Millisecond {
		t.Fatalf("a waiting reader woke %v after the append at best", fastest)
	}
	// Close wakes a waiting reader with ErrClosed.
	done := make(chan error, 1)
	go func() { _, err := r.Next(context.Background()); done <- err }()
	time.Sleep(20 * time.Millisecond)
	s.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
}

func TestReopenContinues(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openT(t, dir, Options{MaxSegmentBytes: 8 << 10})
	for i := uint64(0); i < 500; i += 20 {
		appendBatch(t, s, i, 20, 100)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendSync([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	s = openT(t, dir, Options{MaxSegmentBytes: 8 << 10})
	defer s.Close()
	if info := s.Info(); info.Next != 500 || info.Segments < 3 {
		t.Fatalf("reopened: %+v", info)
	}
	if off := appendT(t, s, payload(500, 100)); off != 500 {
		t.Fatalf("append after reopen got offset %d", off)
	}
	r, _ := s.NewReader(AtOffset(250))
	defer r.Close()
	if first, next, _ := readAll(t, r); first != 250 || next != 501 {
		t.Fatalf("read [%d, %d)", first, next)
	}
}

// TestTornTail damages the end of the active segment in the ways a crash can and checks that
// Open keeps every whole chunk before the damage and nothing after.
func TestTornTail(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string, lastChunk int64)
		keep   uint64 // records left
	}{
		{"cut inside the last chunk's data", func(t *testing.T, p string, last int64) { truncate(t, p, last+60) }, 90},
		{"cut inside the last chunk's header", func(t *testing.T, p string, last int64) { truncate(t, p, last+20) }, 90},
		{"cut before the trailer", func(t *testing.T, p string, last int64) { truncate(t, p, size(t, p)-2) }, 90},
		{"zeros after the end", func(t *testing.T, p string, last int64) { appendBytes(t, p, make([]byte, 4096)) }, 100},
		{"garbage after the end", func(t *testing.T, p string, last int64) { appendBytes(t, p, bytes.Repeat([]byte{0x50, 0}, 100)) }, 100},
		{"flipped data bit in the last chunk", func(t *testing.T, p string, last int64) { flip(t, p, last+ChunkHeaderSize+10) }, 90},
		{"flipped header bit in the last chunk", func(t *testing.T, p string, last int64) { flip(t, p, last+9) }, 90},
		{"only the file header survived", func(t *testing.T, p string, last int64) { truncate(t, p, fileHeaderSize) }, 0},
		{"torn file header", func(t *testing.T, p string, last int64) { truncate(t, p, 3) }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s := openT(t, dir, Options{NoSync: true})
			for c := 0; c < 10; c++ {
				appendChunkT(t, s, uint64(c*10), 10, 32)
			}
			s.mu.Lock()
			seg := s.act
			last, lastChunk := seg.lastPos, seg.lastChunk
			s.mu.Unlock()
			s.Close()
			tc.damage(t, seg.path, last)
			if lastChunk != 90 {
				t.Fatalf("last chunk starts at %d, want 90", lastChunk)
			}
			s = openT(t, dir, Options{NoSync: true})
			defer s.Close()
			if got := s.Info().Next; got != tc.keep {
				t.Fatalf("after damage, next offset %d, want %d", got, tc.keep)
			}
			r, _ := s.NewReader(First())
			if _, next, n := readAll(t, r); n != int(tc.keep) || next != tc.keep {
				t.Fatalf("read %d records up to %d, want %d", n, next, tc.keep)
			}
			r.Close()
			// The stream goes on from there.
			appendBatch(t, s, tc.keep, 5, 32)
			r, _ = s.NewReader(First())
			defer r.Close()
			if _, next, _ := readAll(t, r); next != tc.keep+5 {
				t.Fatalf("after more appends, read up to %d", next)
			}
		})
	}
}

func TestCorruptSealedSegmentIsAnError(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openT(t, dir, Options{MaxSegmentBytes: 2048, NoSync: true})
	for c := 0; c < 20; c++ {
		appendBatch(t, s, uint64(c*5), 5, 64)
	}
	s.mu.Lock()
	seg := s.segs[0]
	s.mu.Unlock()
	s.Close()
	// A lost index is rebuilt from the segment.
	if err := os.Remove(seg.idxPath); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir, Options{MaxSegmentBytes: 2048, NoSync: true})
	r, _ := s.NewReader(AtOffset(3))
	if first, next, _ := readAll(t, r); first != 3 || next != 100 {
		t.Fatalf("after index rebuild read [%d, %d)", first, next)
	}
	r.Close()
	s.Close()
	// A damaged sealed segment is not silently cut: that would renumber the stream.
	os.Remove(seg.idxPath)
	flip(t, seg.path, fileHeaderSize+ChunkHeaderSize+3)
	if _, err := Open(dir, Options{Logger: quiet()}); err == nil {
		t.Fatal("Open accepted a corrupt sealed segment")
	}
}

func TestRetention(t *testing.T) {
	t.Parallel()
	const recSize = 1000
	for _, tc := range []struct {
		name    string
		opts    Options
		advance time.Duration // between batches
		check   func(t *testing.T, s *Stream, clk *fakeClock)
	}{
		{"max length bytes", Options{MaxLengthBytes: 20_000}, 0, func(t *testing.T, s *Stream, _ *fakeClock) {
			if info := s.Info(); info.Bytes > 20_000+4200 || info.First == 0 {
				t.Fatalf("max-length-bytes 20000: %+v", info)
			}
		}},
		{"max age", Options{MaxAge: 10 * time.Second}, time.Second, func(t *testing.T, s *Stream, clk *fakeClock) {
			info := s.Info()
			if info.First == 0 {
				t.Fatalf("nothing removed: %+v", info)
			}
			// Everything older than 10 s whose whole segment is old is gone.
			r, _ := s.NewReader(First())
			rec, ok, err := r.TryNext()
			r.Close()
			if err != nil || !ok {
				t.Fatal(ok, err)
			}
			if age := clk.Now().Sub(rec.Timestamp); age > 10*time.Second+5*time.Second {
				t.Fatalf("oldest record kept is %v old", age)
			}
			// Time passes with no appends: all but the active segment go.
			clk.Advance(time.Minute)
			s.EnforceRetention()
			if info := s.Info(); info.Segments != 1 {
				t.Fatalf("after a quiet minute: %+v", info)
			}
		}},
		{"no limits keep everything", Options{}, time.Hour, func(t *testing.T, s *Stream, _ *fakeClock) {
			if info := s.Info(); info.First != 0 {
				t.Fatalf("%+v", info)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			o := tc.opts
			o.Now, o.NoSync, o.MaxSegmentBytes = clk.Now, true, 4096
			s := openT(t, t.TempDir(), o)
			defer s.Close()
			// A reader parked at the start, before anything is removed.
			early, _ := s.NewReader(First())
			defer early.Close()
			// A reader in the middle of the first segment with its file open.
			appendBatch(t, s, 0, 2, recSize)
			mid, _ := s.NewReader(First())
			defer mid.Close()
			if rec, ok, err := mid.TryNext(); err != nil || !ok || rec.Offset != 0 {
				t.Fatal(rec.Offset, ok, err)
			}
			for i := uint64(2); i < 100; i += 2 {
				clk.Advance(tc.advance)
				appendBatch(t, s, i, 2, recSize)
			}
			tc.check(t, s, clk)
			start := s.Info().First
			// The parked reader continues at the start of what is kept.
			if first, next, _ := readAll(t, early); first != start || next != 100 {
				t.Fatalf("parked reader read [%d, %d), stream starts at %d", first, next, start)
			}
			// The reader inside a removed segment finishes it, then jumps to the start.
			rec, ok, err := mid.TryNext()
			if err != nil || !ok {
				t.Fatal(ok, err)
			}
			if rec.Offset != 1 && rec.Offset != start {
				t.Fatalf("mid reader went on at %d", rec.Offset)
			}
			if _, next, _ := readAll(t, mid); next != 100 {
				t.Fatalf("mid reader stopped at %d", next)
			}
			// Removed segments left no files behind.
			files, _ := filepath.Glob(filepath.Join(s.dir, "*"))
			if want := 2 * s.Info().Segments; len(files) != want {
				t.Fatalf("%d files for %d segments: %v", len(files), s.Info().Segments, files)
			}
		})
	}
}

func TestParseMaxAge(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"7D", 7 * 24 * time.Hour, true},
		{"12h", 12 * time.Hour, true},
		{"30m", 30 * time.Minute, true},
		{"45s", 45 * time.Second, true},
		{"1Y", 365 * 24 * time.Hour, true},
		{"2M", 60 * 24 * time.Hour, true},
		{"0010s", 10 * time.Second, true},
		{"0s", 0, false},
		{"10", 0, false},
		{"h", 0, false},
		{"", 0, false},
		{"1d", 0, false},
		{"1H", 0, false},
		{"1.5h", 0, false},
		{"-1h", 0, false},
		{"+1h", 0, false},
		{" 1h", 0, false},
		{"1h ", 0, false},
		{"1hm", 0, false},
		{"99999999999999999999s", 0, false},
		{"300000Y", 0, false},
	} {
		got, err := ParseMaxAge(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseMaxAge(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidMaxAge) {
			t.Errorf("ParseMaxAge(%q): error %v is not ErrInvalidMaxAge", tc.in, err)
		}
	}
}

func TestChunkChecks(t *testing.T) {
	t.Parallel()
	recs := [][]byte{[]byte("hello"), {}, bytes.Repeat([]byte{7}, 300)}
	chunk := appendChunk(nil, 42, 1234, recs)
	h, err := parseHeader(chunk)
	if err != nil {
		t.Fatal(err)
	}
	if h.firstOffset != 42 || h.timestamp != 1234 || h.numEntries != 3 || h.size() != int64(len(chunk)) {
		t.Fatalf("header %+v", h)
	}
	// osiris layout: magic 5 / version 0, user chunk, big-endian fields, trailer after data.
	if chunk[0] != 0x50 || chunk[1] != 0 || binary.BigEndian.Uint64(chunk[24:]) != 42 ||
		binary.BigEndian.Uint32(chunk[36:]) != uint32(len(chunk)-ChunkHeaderSize-trailerSize) {
		t.Fatalf("not osiris layout: % x", chunk[:ChunkHeaderSize])
	}
	data, err := verifyChunk(&h, chunk)
	if err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	if err := entries(data, 3, 3, func(_ int, r []byte) { got = append(got, r) }); err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		if !bytes.Equal(got[i], recs[i]) {
			t.Fatalf("entry %d: %q", i, got[i])
		}
	}
	for i := 0; i < len(chunk); i++ {
		bad := bytes.Clone(chunk)
		bad[i] ^= 0x10
		h, err := parseHeader(bad)
		if err == nil {
			_, err = verifyChunk(&h, bad)
		}
		if err == nil {
			t.Fatalf("flipping a bit of byte %d went unnoticed", i)
		}
	}
}

func truncate(t *testing.T, p string, n int64) {
	t.Helper()
	if err := os.Truncate(p, n); err != nil {
		t.Fatal(err)
	}
}

func size(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func appendBytes(t *testing.T, p string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func flip(t *testing.T, p string, at int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x04
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

// AwaitRoom holds a publisher while the queued bytes exceed the bound, and lets it go once
// the writer has taken them.
func TestAwaitRoom(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir(), Options{})
	defer s.Close()
	var wg sync.WaitGroup
	rec := make([]byte, 1024)
	for i := 0; i < 2000; i++ {
		wg.Add(1)
		s.Append(rec, func(uint64, error) { wg.Done() })
		s.AwaitRoom(64 << 10)
		s.qmu.Lock()
		queued := s.qbytes
		s.qmu.Unlock()
		if queued > 64<<10 {
			t.Fatalf("AwaitRoom returned with %d bytes queued", queued)
		}
	}
	wg.Wait()
	s.Close()
	s.AwaitRoom(0) // a closed stream holds nobody
}
