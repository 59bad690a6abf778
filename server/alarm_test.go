package server

import (
	"bytes"
	"io"
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"
)

// footprintNow is what the Go runtime holds from the OS, read the same way the alarm reads it,
// but independently of the code under test.
func footprintNow() uint64 {
	s := []metrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	metrics.Read(s)
	return s[0].Value.Uint64() - s[1].Value.Uint64()
}

// A spike of garbage must not hold the memory alarm: once the spike is unreachable the alarm
// collects and clears within seconds, not when the runtime gets round to a GC and to returning
// the pages (about 4 minutes in the report of issue 23).
func TestMemoryAlarmClearsAfterSpikeIsFreed(t *testing.T) {
	s := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	debug.FreeOSMemory()
	base := footprintNow()
	const spikeSize = 256 << 20
	spike := make([]byte, spikeSize)
	spike[0], spike[len(spike)-1] = 1, 1
	// The limit sits halfway up the spike: over it while the spike is live, under it after.
	s.alarms.memLimit.Store(int64(base + spikeSize/2))
	defer s.alarms.memLimit.Store(0)
	s.checkAlarms()
	if reason, _ := s.alarms.current(); reason != "low on memory" {
		t.Fatalf("alarm with a live %d MiB spike over a limit of %d MiB: %q, want low on memory",
			spikeSize>>20, (base+spikeSize/2)>>20, reason)
	}
	runtime.KeepAlive(spike)
	spike = nil

	start := time.Now()
	for {
		s.checkAlarms()
		reason, _ := s.alarms.current()
		if reason == "" {
			t.Logf("alarm cleared %v after the spike was freed", time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > 15*time.Second {
			t.Fatalf("alarm still %q 15 s after the spike was freed (footprint %d MiB, limit %d MiB)",
				reason, footprintNow()>>20, s.alarms.memLimit.Load()>>20)
		}
		time.Sleep(alarmInterval)
	}
}

func forcedGCs() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/forced:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// Over the limit for real, the check must not collect at every tick: one forced collection
// decides, and the next waits memGCMinWait or more, doubling while memory stays over.
func TestMemoryCheckRateLimitsCollections(t *testing.T) {
	var m memoryCheck
	before := forcedGCs()
	for range 50 {
		if over, used := m.check(1); !over {
			t.Fatalf("check(1) = false with %d bytes in use", used)
		}
	}
	if n := forcedGCs() - before; n != 1 {
		t.Fatalf("50 checks over the limit forced %d collections, want 1", n)
	}
	if m.wait != memGCMinWait {
		t.Fatalf("wait after one collection over the limit = %v, want %v", m.wait, memGCMinWait)
	}
	// Once the wait has passed, the next collection still finds memory over: the wait doubles.
	m.lastGC = m.lastGC.Add(-memGCMinWait)
	m.check(1)
	if n := forcedGCs() - before; n != 2 {
		t.Fatalf("forced collections after the wait = %d, want 2", n)
	}
	if m.wait != 2*memGCMinWait {
		t.Fatalf("wait after two collections over the limit = %v, want %v", m.wait, 2*memGCMinWait)
	}
	// Under the limit: no collection and no alarm.
	if over, _ := m.check(1 << 62); over {
		t.Fatal("check(2^62) = true")
	}
	if n := forcedGCs() - before; n != 2 {
		t.Fatalf("a check under the limit forced a collection (%d in all, want 2)", n)
	}
}

// The limit and where it came from are logged at start-up.
func TestMemoryLimitLogsItsSource(t *testing.T) {
	var buf bytes.Buffer
	cfg := Config{Logger: slog.New(slog.NewTextHandler(&buf, nil)), MemoryHighWatermark: 0.4}
	limit := memoryLimit(cfg)
	total, source := totalMemory()
	if total == 0 {
		if limit != 0 || !strings.Contains(buf.String(), "memory alarm off") {
			t.Fatalf("unknown total: limit %d, log %q", limit, buf.String())
		}
		return
	}
	if want := int64(float64(total) * 0.4); limit != want {
		t.Fatalf("memoryLimit = %d, want %d (0.4 of %d)", limit, want, total)
	}
	for _, want := range []string{"memory alarm limit", "limit=" + strconv.FormatInt(limit, 10), "source=" + strconv.Quote(source)} {
		if !strings.Contains(buf.String(), want) {
			t.Fatalf("log %q lacks %q", buf.String(), want)
		}
	}

	buf.Reset()
	cfg.MemoryLimit = 123 << 20
	if got := memoryLimit(cfg); got != 123<<20 {
		t.Fatalf("memoryLimit with memory.limit set = %d", got)
	}
	if !strings.Contains(buf.String(), "source=memory.limit") {
		t.Fatalf("log %q does not name memory.limit", buf.String())
	}
}
