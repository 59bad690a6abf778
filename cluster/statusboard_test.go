package cluster

import (
	"encoding/json"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"
)

func statusEntry(t *testing.T, st NodeStatus) []byte {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The status board keeps each node's newest status, ignores corrupt entries alike on every
// node, feeds the configuration check, and survives a snapshot.
func TestStatusBoard(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	t0 := time.Date(2026, 12, 3, 16, 0, 0, 0, time.UTC)
	check := NewConfigCheck("n1", "d1", quiet)
	sb := NewStatusBoard(check)
	for i, tc := range []struct {
		entry    []byte
		wantErr  bool
		n2Digest string // n2's digest on the board after the entry
		mismatch []string
	}{
		{entry: statusEntry(t, NodeStatus{Node: "n2", ConfigDigest: "d1", AppliedIndex: 5, At: t0}), n2Digest: "d1"},
		{entry: statusEntry(t, NodeStatus{Node: "n3", ConfigDigest: "other", AppliedIndex: 5, At: t0}), n2Digest: "d1", mismatch: []string{"n3"}},
		// A retried, older status of n2 does not replace its newer one.
		{entry: statusEntry(t, NodeStatus{Node: "n2", ConfigDigest: "d2", At: t0.Add(-time.Second)}), n2Digest: "d1", mismatch: []string{"n3"}},
		{entry: statusEntry(t, NodeStatus{Node: "n2", ConfigDigest: "d2", AppliedIndex: 9, At: t0.Add(time.Second)}), n2Digest: "d2", mismatch: []string{"n2", "n3"}},
		{entry: []byte("not json"), wantErr: true, n2Digest: "d2", mismatch: []string{"n2", "n3"}},
		{entry: statusEntry(t, NodeStatus{ConfigDigest: "x"}), wantErr: true, n2Digest: "d2", mismatch: []string{"n2", "n3"}},
	} {
		res := sb.Apply(uint64(i+1), tc.entry)
		if _, isErr := res.(error); isErr != tc.wantErr {
			t.Errorf("entry %d: Apply = %v, want error %v", i, res, tc.wantErr)
		}
		if got := sb.Nodes()["n2"].ConfigDigest; got != tc.n2Digest {
			t.Errorf("entry %d: n2's digest %q, want %q", i, got, tc.n2Digest)
		}
		if got := check.Mismatched(); !slices.Equal(got, tc.mismatch) {
			t.Errorf("entry %d: mismatched %v, want %v", i, got, tc.mismatch)
		}
	}

	snap, err := sb.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	check2 := NewConfigCheck("n1", "d1", quiet)
	sb2 := NewStatusBoard(check2)
	if err := sb2.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if got := sb2.Nodes(); len(got) != 2 || got["n2"].AppliedIndex != 9 || !got["n3"].At.Equal(t0) {
		t.Errorf("restored board: %+v", got)
	}
	if got := check2.Mismatched(); !slices.Equal(got, []string{"n2", "n3"}) {
		t.Errorf("restored check: mismatched %v", got)
	}
	if err := sb2.Restore([]byte("{")); err == nil {
		t.Error("a corrupt snapshot restored")
	}
	sb2.Forget("n3")
	if _, ok := sb2.Nodes()["n3"]; ok {
		t.Error("n3 still on the board after Forget")
	}
}
