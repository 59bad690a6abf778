package cluster

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"testing"
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
