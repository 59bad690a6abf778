package persistence

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkCommit measures durable (fsync) publish throughput of 1 KiB messages with
// group commit: each submitter Commits one message at a time, as a confirming publisher would.
func BenchmarkCommit(b *testing.B) {
	for _, submitters := range []int{1, 64} {
		b.Run(fmt.Sprintf("submitters=%d", submitters), func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{Logger: quietLogger()})
			if err != nil {
				b.Fatal(err)
			}
			body := bytes.Repeat([]byte("x"), 1024)
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for w := 0; w < submitters; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						id := next.Add(1)
						if id > int64(b.N) {
							return
						}
						m := &Message{ID: uint64(id), Exchange: "amq.direct", RoutingKey: "k", Header: []byte{0, 60, 0, 0}, Body: body}
						if err := s.Commit(&Batch{Publishes: []Publish{{Msg: m, Entries: []Entry{{Queue: QueueRef{VHost: "/", Queue: "bench"}, Seq: uint64(id)}}}}}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			el := time.Since(start)
			b.StopTimer()
			st := s.Stats()
			b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
			b.ReportMetric(st.AvgBatchesPerCommit, "batches/commit")
			b.ReportMetric(float64(st.MaxBatchesPerCommit), "max-batches/commit")
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkSubmitPipelined is the confirm-mode publisher pattern: each of 4 submitters
// keeps up to 256 publishes in flight (Submit, confirmation via done), so groups grow large.
func BenchmarkSubmitPipelined(b *testing.B) {
	s, err := Open(b.TempDir(), Options{Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	body := bytes.Repeat([]byte("x"), 1024)
	const submitters, window = 4, 256
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := 0; w < submitters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem := make(chan struct{}, window)
			var inflight sync.WaitGroup
			for {
				id := next.Add(1)
				if id > int64(b.N) {
					break
				}
				sem <- struct{}{}
				inflight.Add(1)
				m := &Message{ID: uint64(id), Exchange: "amq.direct", RoutingKey: "k", Header: []byte{0, 60, 0, 0}, Body: body}
				s.Submit(&Batch{Publishes: []Publish{{Msg: m, Entries: []Entry{{Queue: QueueRef{VHost: "/", Queue: "bench"}, Seq: uint64(id)}}}}}, func(err error) {
					if err != nil {
						b.Error(err)
					}
					<-sem
					inflight.Done()
				})
			}
			inflight.Wait()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	st := s.Stats()
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
	b.ReportMetric(st.AvgBatchesPerCommit, "batches/commit")
	b.ReportMetric(float64(st.MaxBatchesPerCommit), "max-batches/commit")
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkStartup measures a restart with a backlog of 1 KiB messages in one queue, as
// the broker does it: Open (which verifies every message and counts the index) and
// RecoverQueue of the first 4096 entries (the in-memory window) with a summary of the rest.
// The backlog is 100k messages; BENCH_STARTUP_MESSAGES sets another size (1000000 for the
// issue's start-up figure).
func BenchmarkStartup(b *testing.B) {
	n := 100000
	if v := os.Getenv("BENCH_STARTUP_MESSAGES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("BENCH_STARTUP_MESSAGES=%q", v)
		}
	}
	const window = 4096
	dir := b.TempDir()
	s, err := Open(dir, Options{Logger: quietLogger(), NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	body := bytes.Repeat([]byte("y"), 1024)
	q := QueueRef{VHost: "/", Queue: "backlog"}
	for i := 0; i < n; i += 1000 {
		batch := &Batch{}
		for j := i + 1; j <= min(i+1000, n); j++ {
			m := &Message{ID: uint64(j), Exchange: "amq.direct", RoutingKey: "k", Header: []byte{0, 60, 0, 0}, Body: body}
			batch.Publishes = append(batch.Publishes, Publish{Msg: m, Entries: []Entry{{Queue: q, Seq: uint64(j)}}})
		}
		s.Submit(batch, nil)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var openT, recT time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		s, err := Open(dir, Options{Logger: quietLogger()})
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		got := 0
		info, err := s.RecoverQueue(q, window, func(Stored) error {
			got++
			return nil
		})
		if err != nil || got != min(n, window) || info.Count != int64(n) {
			b.Fatalf("recovered %d, info %+v, err %v", got, info, err)
		}
		recT += time.Since(t1)
		openT += t1.Sub(t0)
		b.StopTimer()
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(n), "messages")
	b.ReportMetric(float64(openT.Milliseconds())/float64(b.N), "open-ms")
	b.ReportMetric(float64(recT.Milliseconds())/float64(b.N), "recover-ms")
}

// BenchmarkReserveCheck measures what the journal adds to every commit to keep badger's
// mapped writes inside reserved space (see reserve.go): the checks for a memtable or
// value-log rotation and the free-space check, when nothing new has to be reserved.
func BenchmarkReserveCheck(b *testing.B) {
	s, err := Open(b.TempDir(), Options{Logger: quietLogger(), NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	release := make(chan struct{})
	held := make(chan struct{})
	go func() { _ = s.exclusive(func() error { close(held); <-release; return nil }) }()
	<-held // the reserver belongs to the journal goroutine: keep it out of the way
	defer close(release)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.res.ensure(1 << 10); err != nil {
			b.Fatal(err)
		}
		if err := s.res.room(s.res.flushKeep); err != nil {
			b.Fatal(err)
		}
	}
}
