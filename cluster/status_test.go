package cluster

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestConfigCheck(t *testing.T) {
	var buf bytes.Buffer
	c := NewConfigCheck("n1", "aaaa", slog.New(slog.NewTextHandler(&buf, nil)))
	type step struct {
		do       func()
		mismatch []string
		logs     []string // substrings of the lines logged by this step; nil: nothing logged
	}
	steps := []step{
		{do: func() { c.Observe(NodeStatus{Node: "n2", ConfigDigest: "aaaa"}) }},
		{do: func() { c.Observe(NodeStatus{Node: "n3", ConfigDigest: "bbbb"}) }, mismatch: []string{"n3"},
			logs: []string{"level=WARN", "node=n3", "its_digest=bbbb", "this_digest=aaaa"}},
		{do: func() { c.Observe(NodeStatus{Node: "n3", ConfigDigest: "bbbb"}) }, mismatch: []string{"n3"}}, // no repeat
		{do: func() { c.Observe(NodeStatus{Node: "n1", ConfigDigest: "zzzz"}) }, mismatch: []string{"n3"}}, // itself
		// This node is reloaded with n3's file: n3 agrees, n2 now differs.
		{do: func() { c.SetLocal("bbbb") }, mismatch: []string{"n2"},
			logs: []string{"level=WARN", "node=n2", "level=INFO", "node=n3", "agrees"}},
		{do: func() { c.Observe(NodeStatus{Node: "n2", ConfigDigest: "bbbb"}) }, logs: []string{"level=INFO", "node=n2"}},
		{do: func() { c.Observe(NodeStatus{Node: "n4", ConfigDigest: "cccc"}) }, mismatch: []string{"n4"}, logs: []string{"node=n4"}},
		{do: func() { c.Forget("n4") }},
	}
	for i, s := range steps {
		buf.Reset()
		s.do()
		if got := c.Mismatched(); !slices.Equal(got, s.mismatch) {
			t.Errorf("step %d: mismatched %v, want %v", i, got, s.mismatch)
		}
		out := buf.String()
		if s.logs == nil && out != "" {
			t.Errorf("step %d logged %q", i, out)
		}
		for _, w := range s.logs {
			if !strings.Contains(out, w) {
				t.Errorf("step %d: log %q lacks %q", i, out, w)
			}
		}
	}
}

// Arrival times are this node's clock, and only for statuses applied after this node's own
// first status of this run (before it, the status log is being replayed after a restart).
func TestConfigCheckArrived(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))
	c := NewConfigCheck("n1", "d", quiet)
	skewed := time.Now().Add(-time.Hour) // n2's clock is an hour behind
	type step struct {
		st      NodeStatus
		arrived bool // n2 has an arrival time after the step
	}
	for i, s := range []step{
		{NodeStatus{Node: "n2", ConfigDigest: "d", At: time.Now()}, false},                   // replay
		{NodeStatus{Node: "n1", ConfigDigest: "d", At: time.Now().Add(-time.Minute)}, false}, // own, from before the restart
		{NodeStatus{Node: "n2", ConfigDigest: "d", At: skewed}, false},
		{NodeStatus{Node: "n1", ConfigDigest: "d", At: time.Now()}, false}, // own, this run: live from here
		{NodeStatus{Node: "n2", ConfigDigest: "d", At: skewed}, true},
	} {
		before := time.Now()
		c.Observe(s.st)
		at, ok := c.Arrived("n2")
		if ok != s.arrived {
			t.Fatalf("step %d: arrived %v, want %v", i, ok, s.arrived)
		}
		if ok && (at.Before(before) || at.After(time.Now())) {
			t.Errorf("step %d: arrival %v is not this node's time of applying", i, at)
		}
	}
	c.Forget("n2")
	if _, ok := c.Arrived("n2"); ok {
		t.Error("a forgotten node keeps its arrival time")
	}
}

// A removed node's status (replayed after a restart) is not reported as mismatched.
func TestMembersFilter(t *testing.T) {
	nodes := map[string]string{"n1": "a:1", "n2": "a:2"}
	for _, tc := range []struct{ in, want []string }{
		{nil, []string{}},
		{[]string{"n2", "n9"}, []string{"n2"}},
		{[]string{"n9"}, []string{}},
	} {
		if got := members(tc.in, nodes); !slices.Equal(got, tc.want) || got == nil {
			t.Errorf("members(%v) = %#v, want %v", tc.in, got, tc.want)
		}
	}
}
