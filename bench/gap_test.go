package bench

import (
	"testing"
	"time"
)

func TestConfirmGap(t *testing.T) {
	tests := []struct {
		name  string
		times []int64 // nowNanos() of each confirm
		want  int64   // longest gap
	}{
		{"none", nil, 0},
		{"one confirm has no gap", []int64{5}, 0},
		{"steady", []int64{10, 20, 30}, 10},
		{"a stall in the middle", []int64{10, 20, 2_000_020, 2_000_030}, 2_000_000},
		{"a long stall", []int64{10, 20, 80_000_020, 80_000_030}, 80_000_000},
		{"the first gap counts from the first confirm, not the start", []int64{1_000_000, 1_000_001}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var g confirmGap
			before := time.Now().UnixMilli()
			for _, ts := range tt.times {
				g.note(ts)
			}
			if got := g.max.Load(); got != tt.want {
				t.Fatalf("max gap %d, want %d", got, tt.want)
			}
			if end := g.endsAt.Load(); (tt.want > 0) != (end >= before) {
				t.Fatalf("gap end %d (run began %d), want set iff there is a gap", end, before)
			}
			if long := g.longGaps(); (tt.want >= int64(longGap)) != (len(long) == 1) {
				t.Fatalf("long gaps %v for a longest gap of %d ns", long, tt.want)
			} else if len(long) == 1 && long[0][1]-long[0][0] != tt.want/1e6 {
				t.Fatalf("long gap %v, want %d ms long", long[0], tt.want/1e6)
			}
		})
	}
}
