package bench

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// manyDefaults gives the many, ramp and floor modes the load of issue 22 (400 producers at
// 25 msgs/s, 1 KiB, one queue and one manual-ack consumer with prefetch 10 per producer) for
// every flag the command line did not set.
func (c *Config) manyDefaults(set map[string]bool) {
	if c.Mode != "many" && c.Mode != "ramp" && c.Mode != "floor" {
		return
	}
	def := func(name string, apply func()) {
		if !set[name] {
			apply()
		}
	}
	def("producers", func() { c.Producers = 400 })
	def("consumers", func() { c.Consumers = c.Producers })
	def("queues", func() { c.Queues = c.Producers })
	def("rate", func() { c.Rate = 25 })
	def("size", func() { c.Size = 1024 })
	def("autoack", func() { c.AutoAck = false })
	def("prefetch", func() { c.Prefetch = 10 })
}

func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bench: -ramp-counts: %q is not a positive count", f)
		}
		if len(out) > 0 && n <= out[len(out)-1] {
			return nil, fmt.Errorf("bench: -ramp-counts must ascend (%d after %d)", n, out[len(out)-1])
		}
		out = append(out, n)
	}
	return out, nil
}

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat. It is 100 on every
// Linux architecture Go supports (the kernel ABI fixes it), so no sysconf call is needed.
const clockTick = 100

// procCPU returns the CPU time (user + system, all threads) that process pid has used, from
// /proc/PID/stat; pid 0 means this process. ok is false where /proc cannot be read.
func procCPU(pid int) (secs float64, ok bool) {
	path := "/proc/self/stat"
	if pid > 0 {
		path = fmt.Sprintf("/proc/%d/stat", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	// The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// After the name: state is field 3, so utime (14) and stime (15) are f[11] and f[12].
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return float64(ut+st) / clockTick, true
}

// cpuMeter measures the broker's and this process's CPU over one interval.
type cpuMeter struct {
	pid              int
	broker, bench    float64
	brokerOK, benchK bool
	at               time.Time
}

func startCPU(pid int) *cpuMeter {
	m := &cpuMeter{pid: pid, at: time.Now()}
	if pid > 0 {
		m.broker, m.brokerOK = procCPU(pid)
	}
	m.bench, m.benchK = procCPU(0)
	return m
}

// stop fills the CPU fields of res; received is the number of messages the interval consumed.
func (m *cpuMeter) stop(res *Result, received int64) {
	secs := time.Since(m.at).Seconds()
	if secs <= 0 {
		return
	}
	if m.brokerOK {
		if b, ok := procCPU(m.pid); ok {
			used := b - m.broker
			res.BrokerCPUSeconds = round3(used)
			res.BrokerCPUPercent = round1(used / secs * 100)
			if received > 0 {
				res.BrokerUsPerMsg = round1(used / float64(received) * 1e6)
			}
		}
	}
	if m.benchK {
		if b, ok := procCPU(0); ok {
			res.BenchCPUPercent = round1((b - m.bench) / secs * 100)
		}
	}
}

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }
func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }

// RampStep is one count of a ramp: the many-mode run at that count.
type RampStep struct {
	Clients        int     `json:"clients"`
	PublishRate    float64 `json:"publish_rate"`
	ConsumeRate    float64 `json:"consume_rate"`
	P50Ms          float64 `json:"p50_ms"`
	P99Ms          float64 `json:"p99_ms"`
	P999Ms         float64 `json:"p999_ms"`
	BrokerCPU      float64 `json:"broker_cpu_percent,omitempty"`
	BrokerUsPerMsg float64 `json:"broker_us_per_msg,omitempty"`
	RSS            int64   `json:"rss_bytes,omitempty"`
	LoadAvg        float64 `json:"loadavg,omitempty"` // the host's, at the step's end: a loaded host inflates p99
	Error          string  `json:"error,omitempty"`
}

// runRamp runs the many load at each of -ramp-counts in turn (each for -duration, on fresh
// connections and queues) and stops at the first count whose p99 passes -ramp-p99, whose
// consumers fall behind (under 95% of what was published reaches them, or the producers send
// under 95% of what was offered: -ramp-behind 0.05) or that fails (a broker out of file
// descriptors refuses connections). res.RampMax is the last count that passed.
func runRamp(cfg *Config, res *Result, live io.Writer) error {
	start := time.Now()
	defer func() { res.Seconds = time.Since(start).Seconds() }()
	counts, err := parseCounts(cfg.RampCounts)
	if err != nil {
		return err
	}
	keep := 1 - cfg.RampBehind
	for _, n := range counts {
		step := *cfg
		step.Mode = "many"
		step.Producers, step.Consumers, step.Queues = n, n, n
		step.QueuePrefix = fmt.Sprintf("%s-r%d", cfg.QueuePrefix, n)
		sr := &Result{}
		err := runThroughput(&step, sr, io.Discard)
		st := RampStep{Clients: n, PublishRate: sr.PublishRate, ConsumeRate: sr.ConsumeRate,
			BrokerCPU: sr.BrokerCPUPercent, BrokerUsPerMsg: sr.BrokerUsPerMsg, RSS: sr.RSS, LoadAvg: loadAvg()}
		if sr.Latency != nil {
			st.P50Ms, st.P99Ms, st.P999Ms = sr.Latency.P50Ms, sr.Latency.P99Ms, sr.Latency.P999Ms
		}
		if err != nil {
			st.Error = err.Error()
		}
		res.Ramp = append(res.Ramp, st)
		res.Producers, res.Consumers, res.Queues = n, n, n
		fmt.Fprintf(live, "ramp %d clients: sent=%.0f/s received=%.0f/s p50=%.1fms p99=%.1fms cpu=%.0f%% (%.1f us/msg) load %.2f%s\n",
			n, st.PublishRate, st.ConsumeRate, st.P50Ms, st.P99Ms, st.BrokerCPU, st.BrokerUsPerMsg, st.LoadAvg, errSuffix(st.Error))
		switch {
		case err != nil:
			res.RampStopCause = fmt.Sprintf("%d clients: %v", n, err)
		case st.P99Ms > float64(cfg.RampP99)/1e6:
			res.RampStopCause = fmt.Sprintf("%d clients: p99 %.1f ms > %s", n, st.P99Ms, cfg.RampP99)
		case st.ConsumeRate < keep*st.PublishRate || st.PublishRate < keep*float64(n)*cfg.Rate:
			res.RampStopCause = fmt.Sprintf("%d clients: fell behind (offered %.0f, sent %.0f, received %.0f msgs/s)",
				n, float64(n)*cfg.Rate, st.PublishRate, st.ConsumeRate)
		default:
			res.RampMax = n
			continue
		}
		break
	}
	if res.RampStopCause == "" {
		res.RampStopCause = "every count passed"
	}
	if res.RampMax == 0 && len(res.Ramp) > 0 && res.Ramp[0].Error != "" {
		return errors.New("bench: ramp: the first count failed: " + res.Ramp[0].Error)
	}
	return nil
}

func errSuffix(e string) string {
	if e == "" {
		return ""
	}
	return " error: " + e
}
