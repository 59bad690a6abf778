package broker

import (
	"math"
	"testing"
	"time"
)

func TestExpiresAfter(t *testing.T) {
	now := time.Now().UnixNano()
	for _, tc := range []struct {
		ms       int64
		min, max int64
	}{
		{0, now, now + int64(time.Minute)},
		{1000, now + int64(time.Second), now + int64(time.Second+time.Minute)},
		{10_000_000_000_000, math.MaxInt64, math.MaxInt64}, // ~317 years: saturates, never wraps
		{math.MaxInt64, math.MaxInt64, math.MaxInt64},
	} {
		if got := expiresAfter(tc.ms); got < tc.min || got > tc.max {
			t.Errorf("expiresAfter(%d) = %d, want in [%d, %d]", tc.ms, got, tc.min, tc.max)
		}
	}
}
