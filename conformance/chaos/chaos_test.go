//go:build linux

package main

import (
	"io"
	"slices"
	"testing"
)

// TestLedgerLost: a confirmed message never received is lost, unless its queue's home was wiped
// after it was published (excluded); received ones and unconfirmed ones are not.
func TestLedgerLost(t *testing.T) {
	l := newLedger([]string{"a", "b"})
	l.confirmed["a"] = map[uint64]bool{1: true, 2: true, 3: true}
	l.confirmed["b"] = map[uint64]bool{1: true, 5: true}
	l.received["a"] = map[uint64]int{1: 1, 3: 2, 4: 1} // 4 was never confirmed: fine
	l.received["b"] = map[uint64]int{}
	tests := []struct {
		name     string
		excluded map[string]uint64
		want     []string
	}{
		{"nothing excluded", nil, []string{"a #2", "b #1", "b #5"}},
		{"b wiped after #3", map[string]uint64{"b": 3}, []string{"a #2", "b #5"}},
		{"a wiped after #2", map[string]uint64{"a": 2}, []string{"b #1", "b #5"}},
	}
	for _, tt := range tests {
		if got := l.lost(tt.excluded); !slices.Equal(got, tt.want) {
			t.Errorf("%s: lost %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args []string
		ok   bool
	}{
		{nil, true},
		{[]string{"-queue-type", "quorum", "-faults", "kill-leader,wipe-follower"}, true},
		{[]string{"-queue-type", "stream"}, false},
		{[]string{"-faults", "kill-leader,meteor"}, false},
	}
	for _, tt := range tests {
		o, err := parseFlags(tt.args, io.Discard)
		if (err == nil) != tt.ok {
			t.Errorf("%v: err %v, want ok=%v", tt.args, err, tt.ok)
		}
		if err == nil && o.seed == 0 {
			t.Errorf("%v: no seed chosen", tt.args)
		}
	}
}
