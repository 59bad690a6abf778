package bench

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// The histogram is log-linear (HDR-like): every power-of-two range is split into
// 2^subBits linear sub-buckets, so a recorded value is reproduced within a
// relative error of 1/2^subBits (~3%) while memory stays fixed (histBuckets
// counters) regardless of how many samples are recorded.
const (
	subBits     = 5
	subCount    = 1 << subBits       // sub-buckets per power of two
	linearLimit = 1 << (subBits + 1) // values below this get an exact bucket
	histBuckets = linearLimit + (64-subBits-1)*subCount
)

// bucketOf maps a non-negative value (nanoseconds) to its bucket index.
func bucketOf(v uint64) int {
	if v < linearLimit {
		return int(v)
	}
	shift := bits.Len64(v) - (subBits + 1) // >= 1
	top := v >> uint(shift)                // in [subCount, 2*subCount)
	return linearLimit + (shift-1)*subCount + int(top-subCount)
}

// bucketBounds returns the inclusive lower and upper values held by bucket i.
func bucketBounds(i int) (lo, hi uint64) {
	if i < linearLimit {
		return uint64(i), uint64(i)
	}
	j := i - linearLimit
	shift := uint(j/subCount + 1)
	top := uint64(j%subCount + subCount)
	lo = top << shift
	hi = lo + (uint64(1) << shift) - 1
	return lo, hi
}

// Histogram records durations concurrently with a single writer per histogram
// in practice; counters are atomic so the reporter can snapshot it at any time
// without stopping producers or consumers.
type Histogram struct {
	counts [histBuckets]atomic.Uint64
	sum    atomic.Uint64
	max    atomic.Uint64
}

// Record adds one sample of d nanoseconds; negative values count as zero
// (clock steps cannot make the monotonic clock go back, but be defensive).
func (h *Histogram) Record(d int64) {
	if d < 0 {
		d = 0
	}
	v := uint64(d)
	h.counts[bucketOf(v)].Add(1)
	h.sum.Add(v)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// Snapshot is a point-in-time copy of a Histogram that can be merged,
// subtracted (for per-interval figures) and queried.
type Snapshot struct {
	Counts [histBuckets]uint64
	Count  uint64
	Sum    uint64
	Max    uint64
}

// AddTo accumulates h into s, used to merge the per-worker histograms.
func (h *Histogram) AddTo(s *Snapshot) {
	for i := range h.counts {
		c := h.counts[i].Load()
		s.Counts[i] += c
		s.Count += c
	}
	s.Sum += h.sum.Load()
	if m := h.max.Load(); m > s.Max {
		s.Max = m
	}
}

// Sub returns s minus an earlier snapshot prev of the same histograms. Max is
// not subtractable, so the interval result keeps s.Max only as an upper bound.
func (s *Snapshot) Sub(prev *Snapshot) *Snapshot {
	d := &Snapshot{Count: s.Count - prev.Count, Sum: s.Sum - prev.Sum, Max: s.Max}
	for i := range s.Counts {
		d.Counts[i] = s.Counts[i] - prev.Counts[i]
	}
	return d
}

// Quantile returns the value at quantile q in [0,1] in nanoseconds, using the
// midpoint of the bucket holding the ceil(q*n)-th smallest sample, clamped to
// the observed maximum. It returns 0 for an empty snapshot.
func (s *Snapshot) Quantile(q float64) uint64 {
	if s.Count == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(s.Count)))
	if rank < 1 {
		rank = 1
	}
	var cum uint64
	for i, c := range s.Counts {
		cum += c
		if cum >= rank {
			lo, hi := bucketBounds(i)
			v := lo + (hi-lo)/2
			if s.Max > 0 && v > s.Max {
				v = s.Max
			}
			return v
		}
	}
	return s.Max
}

// Mean returns the mean sample in nanoseconds.
func (s *Snapshot) Mean() float64 {
	if s.Count == 0 {
		return 0
	}
	return float64(s.Sum) / float64(s.Count)
}

// LatencySummary is the JSON form of a latency distribution, in milliseconds.
type LatencySummary struct {
	Count  uint64  `json:"count"`
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P95Ms  float64 `json:"p95_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`
}

func ms(ns float64) float64 { return math.Round(ns/1e3) / 1e3 }

// Summary converts the snapshot to its JSON form.
func (s *Snapshot) Summary() *LatencySummary {
	return &LatencySummary{
		Count:  s.Count,
		MeanMs: ms(s.Mean()),
		P50Ms:  ms(float64(s.Quantile(0.50))),
		P95Ms:  ms(float64(s.Quantile(0.95))),
		P99Ms:  ms(float64(s.Quantile(0.99))),
		P999Ms: ms(float64(s.Quantile(0.999))),
		MaxMs:  ms(float64(s.Max)),
	}
}

// fmtDur prints nanoseconds compactly for the live and summary lines.
func fmtDur(ns uint64) string {
	d := time.Duration(ns)
	switch {
	case d < time.Millisecond:
		return trimFloat(float64(d)/1e3) + "us"
	case d < time.Second:
		return trimFloat(float64(d)/1e6) + "ms"
	default:
		return trimFloat(d.Seconds()) + "s"
	}
}
