package server

import (
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/persistence"
)

// alarmInterval is how often memory use and free disk space are checked.
const alarmInterval = 500 * time.Millisecond

// alarms implements RabbitMQ's resource alarms: while memory use is over the watermark or free
// disk space under the limit, connections that publish are blocked (connection.blocked is sent
// and their frames are not read) until the alarm clears; consumers keep draining.
type alarms struct {
	memLimit    atomic.Int64 // bytes; 0 disables the memory alarm
	active      atomic.Bool  // fast check for the per-frame read loop
	memory      memoryCheck
	diskUnknown atomic.Bool // the disk alarm's "off on this system" line was logged

	mu      sync.Mutex
	reason  string        // "" when no alarm is active
	cleared chan struct{} // closed when the current alarm clears
}

func (a *alarms) set(reason string) (changed bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if reason == a.reason {
		return false
	}
	if a.reason == "" {
		a.cleared = make(chan struct{})
	}
	if reason == "" {
		close(a.cleared)
	}
	a.reason = reason
	a.active.Store(reason != "")
	return true
}

// current returns the active alarm's reason and a channel closed when it clears.
func (a *alarms) current() (string, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reason, a.cleared
}

// memoryLimit is the memory alarm's threshold in bytes: memory.limit, or the high watermark
// of the memory available to the process - the machine's RAM or, in a container, the cgroup's
// limit when that is smaller, as RabbitMQ does; 0 (alarm off) when neither is known. It logs
// which one it used, since a limit taken from the wrong source blocks publishers for no reason
// (or lets the kernel kill the broker first).
func memoryLimit(cfg Config) int64 {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.MemoryLimit > 0 {
		log.Info("memory alarm limit", "limit", cfg.MemoryLimit, "source", "memory.limit")
		return cfg.MemoryLimit
	}
	total, source := totalMemory()
	if total == 0 {
		log.Warn("memory alarm off: the memory available is unknown on this system; set memory.limit to enable it",
			"os", runtime.GOOS)
		return 0
	}
	limit := int64(float64(total) * cfg.MemoryHighWatermark)
	log.Info("memory alarm limit", "limit", limit, "high_watermark", cfg.MemoryHighWatermark,
		"total", total, "source", source)
	return limit
}

func (s *Server) alarmLoop() {
	t := time.NewTicker(alarmInterval)
	defer t.Stop()
	for {
		select { // Start made the first check
		case <-s.quit:
			return
		case <-t.C:
		}
		s.checkAlarms()
	}
}

// diskCheckMargin is what publishers may write between two alarm checks: 256 MB/s (above the
// store's highest measured write rate, about 70 MB/s of 1 KiB persistent messages) for one
// alarmInterval.
const diskCheckMargin = 256 << 20 * int64(alarmInterval/time.Millisecond) / 1000

func (s *Server) checkAlarms() {
	var reasons []string
	over, used := s.alarms.memory.check(uint64(max(s.alarms.memLimit.Load(), 0)))
	if over {
		reasons = append(reasons, "memory")
	}
	var store *persistence.Store
	if s.b != nil { // nil in tests of the alarm alone
		store = s.b.Store()
	}
	diskFull := store != nil && store.WriteError() != nil // the store refused a commit for lack of space
	if s.cfg.DataDir != "" && s.cfg.DiskFreeLimit > 0 {
		// The limit is never below what the store may still claim (DiskReserve: files badger
		// writes through memory maps, reserved ahead) plus what publishers can write between
		// two checks, so that publishers are blocked before the store has to refuse a commit.
		limit := s.cfg.DiskFreeLimit
		if store != nil {
			limit = max(limit, store.DiskReserve()+diskCheckMargin)
		}
		free, ok := freeDisk(s.cfg.DataDir)
		if ok && free < uint64(limit) {
			diskFull = true
		}
		if !ok && s.alarms.diskUnknown.CompareAndSwap(false, true) {
			s.log.Warn("disk alarm off: free space of the data directory is unknown on this system",
				"dir", s.cfg.DataDir, "os", runtime.GOOS)
		}
	}
	if diskFull {
		reasons = append(reasons, "disk")
	}
	reason := ""
	if len(reasons) > 0 {
		reason = "low on " + strings.Join(reasons, " and ")
	}
	if s.alarms.set(reason) {
		if reason != "" {
			s.log.Warn("resource alarm set: blocking publishers", "reason", reason, "memory", used, "memory_limit", s.alarms.memLimit.Load())
		} else {
			s.log.Info("resource alarm cleared: publishers unblocked", "memory", used)
		}
	}
}

// Bounds on how often the memory check forces a collection. The first collection after
// memory goes over the limit is immediate; while collections keep finding it over (a real
// backlog, not garbage), the wait doubles up to the maximum so a broker at its limit spends
// at most one full GC per memGCMaxWait on the check. The maximum also bounds how long the
// alarm outlives the memory that caused it.
const (
	memGCMinWait = time.Second
	memGCMaxWait = 8 * time.Second
)

// memoryCheck decides whether the process is over its memory limit. It measures what the
// runtime holds from the OS (what RSS and the cgroup's OOM killer see), but only trusts a
// measurement over the limit once a forced collection has run: garbage and freed pages the
// runtime keeps for reuse are not load, and without a forced collection they kept the alarm on
// for minutes after a spike (a GC only runs when the heap grows, and freed pages go back to
// the OS slowly).
type memoryCheck struct {
	mu      sync.Mutex
	over    bool      // the last decision, kept until the next forced collection
	started bool      // the first reading has been taken
	lastGC  time.Time // when the last forced collection ran
	wait    time.Duration
}

// check reports whether memory use is over limit (0: no limit) and the use measured.
func (m *memoryCheck) check(limit uint64) (bool, uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	first := !m.started
	m.started = true
	used := processMemory()
	if limit == 0 || used <= limit {
		m.over, m.wait = false, 0
		return false, used
	}
	if first {
		// The first reading decides without a collection: a broker started over its limit
		// blocks from its first publish rather than after a full GC (tens of milliseconds
		// with a large heap) during which clients already connect. Start-up garbage can
		// raise the alarm once; the next check collects and clears it.
		m.over = true
		return true, used
	}
	if !m.lastGC.IsZero() && time.Since(m.lastGC) < m.wait {
		// Too soon for another collection: keep the last decision. An alarm that is on stays
		// on; one that is off stays off until a collection shows the growth is live memory,
		// which delays it by at most m.wait (RabbitMQ checks memory every 2.5 s).
		return m.over, used
	}
	debug.FreeOSMemory() // a full collection, then the free pages go back to the OS
	m.lastGC = time.Now()
	used = processMemory()
	m.over = used > limit
	if m.over {
		m.wait = min(max(2*m.wait, memGCMinWait), memGCMaxWait)
	} else {
		m.wait = memGCMinWait
	}
	return m.over, used
}

var memSamples = []metrics.Sample{
	{Name: "/memory/classes/total:bytes"},
	{Name: "/memory/classes/heap/released:bytes"},
}

// processMemory is the memory the Go runtime holds from the OS (what RSS tracks), without the
// heap pages it already gave back.
func processMemory() uint64 {
	s := make([]metrics.Sample, len(memSamples))
	copy(s, memSamples)
	metrics.Read(s)
	return s[0].Value.Uint64() - s[1].Value.Uint64()
}

// waitWhileBlocked holds a publishing connection's reader while an alarm is active: nothing
// more is read from it, so its publishers stop, as in RabbitMQ.
func (c *conn) waitWhileBlocked() {
	reason, cleared := c.srv.alarms.current()
	if reason == "" {
		return
	}
	c.blocked.Store(true)
	defer c.blocked.Store(false)
	if c.blockedNotify {
		c.writeMethod(0, &amqp.ConnectionBlocked{Reason: reason})
	}
	// Nothing is read meanwhile, so the client's FIN or its silence is not seen by the reader:
	// the kernel is asked instead, and a client that went is torn down at once, releasing its
	// connection slot, exclusive queues and unacked messages (the socket close ends the reader).
	var idle time.Duration
	if c.heartbeat > 0 {
		idle = 2 * time.Duration(c.heartbeat) * time.Second
	}
	check := time.NewTicker(blockedPeerCheck)
	defer check.Stop()
	for {
		select {
		case <-cleared:
			if c.blockedNotify {
				c.writeMethod(0, &amqp.ConnectionUnblocked{})
			}
			return
		case <-c.srv.quit:
			return
		case <-c.done:
			return
		case <-check.C:
			if peerGone(c.nc, idle) {
				c.log.Info("client gone while blocked by an alarm, closing")
				_ = c.nc.Close()
				return
			}
		}
	}
}

// blockedPeerCheck is how often a connection held by an alarm asks whether its client is gone.
const blockedPeerCheck = 500 * time.Millisecond
