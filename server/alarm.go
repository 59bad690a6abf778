package server

import (
	"bufio"
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"warren/amqp"
)

// alarmInterval is how often memory use and free disk space are checked.
const alarmInterval = 500 * time.Millisecond

// alarms implements RabbitMQ's resource alarms: while memory use is over the watermark or free
// disk space under the limit, connections that publish are blocked (connection.blocked is sent
// and their frames are not read) until the alarm clears; consumers keep draining.
type alarms struct {
	memLimit atomic.Int64 // bytes; 0 disables the memory alarm
	active   atomic.Bool  // fast check for the per-frame read loop

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
// of the machine's RAM; 0 (alarm off) when neither is known.
func memoryLimit(cfg Config) int64 {
	if cfg.MemoryLimit > 0 {
		return cfg.MemoryLimit
	}
	if total := systemMemory(); total > 0 {
		return int64(float64(total) * cfg.MemoryHighWatermark)
	}
	return 0
}

func (s *Server) alarmLoop() {
	t := time.NewTicker(alarmInterval)
	defer t.Stop()
	for {
		s.checkAlarms()
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
	}
}

func (s *Server) checkAlarms() {
	var reasons []string
	if limit := s.alarms.memLimit.Load(); limit > 0 && processMemory() > uint64(limit) {
		reasons = append(reasons, "memory")
	}
	if s.cfg.DataDir != "" && s.cfg.DiskFreeLimit > 0 {
		if free, ok := freeDisk(s.cfg.DataDir); ok && free < uint64(s.cfg.DiskFreeLimit) {
			reasons = append(reasons, "disk")
		}
	}
	reason := ""
	if len(reasons) > 0 {
		reason = "low on " + strings.Join(reasons, " and ")
	}
	if s.alarms.set(reason) {
		if reason != "" {
			s.log.Warn("resource alarm set: blocking publishers", "reason", reason, "memory", processMemory(), "memory_limit", s.alarms.memLimit.Load())
		} else {
			s.log.Info("resource alarm cleared: publishers unblocked")
		}
	}
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

// systemMemory reads MemTotal from /proc/meminfo; 0 if unknown (the memory alarm is then off
// unless an absolute limit is configured).
func systemMemory() uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

func freeDisk(dir string) (uint64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return st.Bavail * uint64(st.Bsize), true
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
	select {
	case <-cleared:
	case <-c.srv.quit:
		return
	case <-c.done:
		return
	}
	if c.blockedNotify {
		c.writeMethod(0, &amqp.ConnectionUnblocked{})
	}
}
