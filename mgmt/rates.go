package mgmt

import (
	"sync"
	"time"
)

// rates turns monotonic counters (and gauges) into the per-second *_details.rate values of
// RabbitMQ's API. It samples lazily, when an object is rendered, and keeps one sample per object:
// a rate is the change between two samples at least interval apart, so nothing runs while nobody
// looks and the hot path only keeps counters.
type rates struct {
	interval time.Duration
	mu       sync.Mutex
	m        map[string]*sample
	pruned   time.Time
}

type sample struct {
	at    time.Time // when vals were taken
	seen  time.Time // last observation, for pruning objects that are gone
	vals  []float64
	rates []float64
}

// forget drops samples of objects not observed for this long (deleted queues, closed
// connections).
const forgetAfter = 10 * time.Minute

func newRates(interval time.Duration) *rates {
	return &rates{interval: interval, m: map[string]*sample{}}
}

// observe records vals for key at now and returns the current per-second rate of each value;
// the first observation of a key has rates of 0.
func (r *rates) observe(key string, now time.Time, vals []float64) []float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.pruned) > forgetAfter {
		for k, s := range r.m {
			if now.Sub(s.seen) > forgetAfter {
				delete(r.m, k)
			}
		}
		r.pruned = now
	}
	s := r.m[key]
	if s == nil || len(s.vals) != len(vals) {
		s = &sample{at: now, vals: append([]float64(nil), vals...), rates: make([]float64, len(vals))}
		r.m[key] = s
	}
	s.seen = now
	if dt := now.Sub(s.at); dt >= r.interval {
		secs := dt.Seconds()
		for i, v := range vals {
			s.rates[i] = (v - s.vals[i]) / secs
		}
		copy(s.vals, vals)
		s.at = now
	}
	return append([]float64(nil), s.rates...)
}
