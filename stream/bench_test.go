package stream

import (
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// fill appends n records of size bytes with up to window appends in flight, as a publisher
// with a confirm window does, and waits for the last confirm.
func fill(tb testing.TB, s *Stream, n, size, window int) {
	tb.Helper()
	sem := make(chan struct{}, window)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	rec := make([]byte, size) // never modified: every append may share it
	wg.Add(n)
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		s.Append(rec, func(_ uint64, err error) {
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
			}
			<-sem
			wg.Done()
		})
	}
	wg.Wait()
	if firstErr != nil {
		tb.Fatal(firstErr)
	}
}

// BenchmarkAppend measures appends with a window of 256 unconfirmed records per publisher,
// fsync on (a confirm means synced), for 1 and 4 concurrent publishers.
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{16, 1024} {
		for _, pubs := range []int{1, 4} {
			b.Run(sizeName(size)+"/publishers="+strconv.Itoa(pubs), func(b *testing.B) {
				s := openT(b, b.TempDir(), Options{})
				defer s.Close()
				b.SetBytes(int64(size))
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				for p := 0; p < pubs; p++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						fill(b, s, b.N/pubs, size, 256)
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(b.N/pubs*pubs)/time.Since(start).Seconds(), "msgs/s")
			})
		}
	}
}

// BenchmarkReadFromFirst measures one reader going through a stream of 16 B records from
// the first offset (page cache warm, as after publishing).
func BenchmarkReadFromFirst(b *testing.B) {
	for _, size := range []int{16, 1024} {
		b.Run(sizeName(size), func(b *testing.B) {
			s := openT(b, b.TempDir(), Options{NoSync: true})
			defer s.Close()
			fill(b, s, b.N, size, 4096)
			b.SetBytes(int64(size))
			b.ResetTimer()
			start := time.Now()
			r, err := s.NewReader(First())
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			for i := 0; i < b.N; i++ {
				if _, ok, err := r.TryNext(); err != nil || !ok {
					b.Fatalf("record %d: ok %v err %v", i, ok, err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// TestReadMillionBoundedHeap reads a stream of 1M records with 8 readers at once and checks
// that the heap does not grow with the stream: readers stream from the files.
// Not parallel: the heap is the process's, other tests would pollute the measure.
func TestReadMillionBoundedHeap(t *testing.T) {
	const n = 1_000_000
	s := openT(t, t.TempDir(), Options{NoSync: true, MaxSegmentBytes: 4 << 20})
	defer s.Close()
	fill(t, s, n, 16, 8192)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var peak uint64
	var peakMu sync.Mutex
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := s.NewReader(AtOffset(uint64(g) * 1000))
			if err != nil {
				t.Error(err)
				return
			}
			defer r.Close()
			for i := uint64(g) * 1000; i < n; i++ {
				rec, ok, err := r.TryNext()
				if err != nil || !ok || rec.Offset != i {
					t.Errorf("reader %d at %d: %d %v %v", g, i, rec.Offset, ok, err)
					return
				}
				if g == 0 && i%100_000 == 0 {
					var m runtime.MemStats
					runtime.ReadMemStats(&m)
					peakMu.Lock()
					peak = max(peak, m.HeapAlloc)
					peakMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	grow := int64(peak) - int64(base)
	t.Logf("1M x 16 B, %d segments, %d B on disk; heap %d KiB before reading, peak growth %d KiB with 8 readers",
		s.Info().Segments, s.Info().Bytes, base>>10, grow>>10)
	// 8 read windows of 256 KiB plus slack; 1M records of index or data would be tens of MB.
	if grow > 8<<20 {
		t.Fatalf("heap grew by %d KiB while reading", grow>>10)
	}
}

func sizeName(n int) string {
	if n >= 1024 {
		return strconv.Itoa(n/1024) + "KiB"
	}
	return strconv.Itoa(n) + "B"
}
