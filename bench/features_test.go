package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestFeatureModes drives the issue 18 modes against a live broker (Warren in-process, or
// BENCH_TEST_URL) and checks each measured what it reports.
func TestFeatureModes(t *testing.T) {
	url := testBrokerURL(t)
	defer func(n int) { sacBacklog = n }(sacBacklog)
	sacBacklog = 20000 // enough for a second of failovers
	prefix := "bench-feature-" + time.Now().Format("150405.000")
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, r *Result)
	}{
		{"priority", []string{"-mode", "priority", "-size", "1024", "-autoack=false", "-prefetch", "50", "-multi-ack", "5", "-rate", "5000"},
			func(t *testing.T, r *Result) {
				if r.Published == 0 || r.Received == 0 || r.ConsumeRate <= 0 || r.Latency == nil || r.Latency.Count == 0 {
					t.Errorf("nothing measured: %+v", r)
				}
			}},
		{"rpc 1 caller", []string{"-mode", "rpc", "-producers", "1"}, func(t *testing.T, r *Result) {
			if r.Received == 0 || r.ConsumeRate <= 0 || r.Latency == nil || r.Latency.Count != uint64(r.Received) {
				t.Errorf("round trips not measured: %+v", r)
			}
		}},
		{"rpc 4 callers", []string{"-mode", "rpc", "-producers", "4", "-size", "100"}, func(t *testing.T, r *Result) {
			if r.Received == 0 || r.Latency == nil {
				t.Errorf("round trips not measured: %+v", r)
			}
		}},
		{"sac over a backlog", []string{"-mode", "sac", "-prefetch", "10"}, func(t *testing.T, r *Result) {
			if r.Received == 0 || r.Failed != 0 || r.Latency == nil || r.Latency.Count != uint64(r.Received) {
				t.Errorf("failovers %d, stalls %d, latency %+v", r.Received, r.Failed, r.Latency)
			}
		}},
		{"sac fed during the run", []string{"-mode", "sac", "-prefetch", "1", "-rate", "2000"}, func(t *testing.T, r *Result) {
			if r.Received == 0 || r.Failed != 0 || r.Rate != 2000 {
				t.Errorf("failovers %d, stalls %d, rate %v", r.Received, r.Failed, r.Rate)
			}
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-url", url, "-duration", "1s", "-json", "-queue-prefix", fmt.Sprintf("%s-%d", prefix, i)}, tt.args...)
			var out bytes.Buffer
			if err := Run(args, &out); err != nil {
				t.Fatalf("Run: %v\n%s", err, out.String())
			}
			var r Result
			if err := json.Unmarshal(out.Bytes(), &r); err != nil {
				t.Fatalf("output is not one JSON object: %v\n%s", err, out.String())
			}
			if r.Client != "amqp091" || r.Seconds <= 0 {
				t.Errorf("client %q seconds %v", r.Client, r.Seconds)
			}
			tt.check(t, &r)
			// The text summary names what was measured.
			var text bytes.Buffer
			printSummary(&text, &r)
			if want := map[string]string{"priority": "received:", "rpc": "round trips:", "sac": "failovers:"}[r.Mode]; !strings.Contains(text.String(), want) {
				t.Errorf("summary lacks %q:\n%s", want, text.String())
			}
		})
	}
}
