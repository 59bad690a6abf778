package broker

import "testing"

// TestQuorumCredit: a node's credit is its consumers' unacked deliveries plus a window of
// quorumNodeCredit, in steps of quorumNodeCredit, raised when short and lowered only when two
// steps too high (so that not every delivery or ack proposes a checkout).
func TestQuorumCredit(t *testing.T) {
	const w = quorumNodeCredit
	tests := []struct {
		name    string
		unacked int
		credit  uint32
		want    uint32
	}{
		{"first checkout", 0, 0, w},
		{"unknown", 0, creditUnknown, w},
		{"window kept", 0, w, w},
		{"one unacked raises a step", 1, w, 2 * w},
		{"a full window unacked", w, w, 2 * w},
		{"unlimited prefetch keeps growing", 3*w + 5, 3 * w, 5 * w},
		{"within a step: kept", 10, 2 * w, 2 * w},
		{"one step too high: kept", 0, 2 * w, 2 * w},
		{"two steps too high: lowered", 0, 3 * w, w},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := quorumCredit(tt.unacked, tt.credit); got != tt.want {
				t.Fatalf("quorumCredit(%d, %d) = %d, want %d", tt.unacked, tt.credit, got, tt.want)
			}
		})
	}
}
