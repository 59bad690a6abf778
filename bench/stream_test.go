package bench

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"
)

func TestStreamFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(c *Config) bool
	}{
		{"publish only", []string{"-stream", "-consumers", "0", "-confirm", "256"}, "",
			func(c *Config) bool { return c.Stream && c.Persistent && c.StreamOffset == "next" }},
		{"consumers need manual ack", []string{"-stream"}, "-autoack=false", nil},
		{"consumers need a prefetch", []string{"-stream", "-autoack=false"}, "-prefetch", nil},
		{"from first", []string{"-stream", "-autoack=false", "-prefetch", "10", "-stream-offset", "first"}, "",
			func(c *Config) bool { return c.StreamOffset == "first" }},
		{"numeric offset", []string{"-stream", "-autoack=false", "-prefetch", "10", "-stream-offset", "42"}, "", nil},
		{"bad offset", []string{"-stream", "-autoack=false", "-prefetch", "10", "-stream-offset", "soon"}, "-stream-offset", nil},
		{"negative offset", []string{"-stream", "-autoack=false", "-prefetch", "10", "-stream-offset", "-1"}, "-stream-offset", nil},
		{"drain needs a length", []string{"-stream", "-drain", "-autoack=false", "-prefetch", "10"}, "-stream-length", nil},
		{"spread needs drain", []string{"-stream", "-autoack=false", "-prefetch", "10", "-stream-offset", "spread"}, "spread", nil},
		{"spread", []string{"-stream", "-drain", "-stream-length", "100", "-consumers", "10", "-autoack=false", "-prefetch", "10", "-stream-offset", "spread"}, "",
			func(c *Config) bool { return c.StreamLength == 100 }},
		{"no fanout", []string{"-stream", "-consumers", "0", "-fanout", "2"}, "-fanout", nil},
		{"offset without -stream", []string{"-stream-offset", "first"}, "need -stream", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseFlags(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil && !tt.check(&c) {
				t.Errorf("config %+v", c)
			}
		})
	}
}

func TestStreamStart(t *testing.T) {
	c := Config{StreamOffset: "spread", StreamLength: 1000}
	var sum int64
	for i := 0; i < 4; i++ {
		arg, n := c.streamStart(i, 4)
		if arg != int64(i*250) || n != int64(1000-i*250) {
			t.Errorf("consumer %d: start %v reads %d", i, arg, n)
		}
		sum += n
	}
	if sum != 2500 {
		t.Errorf("total %d, want 2500", sum)
	}
	c.StreamOffset = "700"
	if arg, n := c.streamStart(0, 1); arg != int64(700) || n != 300 {
		t.Errorf("offset 700: start %v reads %d", arg, n)
	}
	c.StreamOffset = "first"
	if arg, n := c.streamStart(3, 4); arg != "first" || n != 1000 {
		t.Errorf("first: start %v reads %d", arg, n)
	}
}

// TestRunStream fills a stream with confirms, reads it from first, then with consumers at
// spread offsets, with both clients: every consumer reads from its offset to the end.
func TestRunStream(t *testing.T) {
	url := testBrokerURL(t)
	for _, client := range []string{"lean", "amqp091"} {
		t.Run(client, func(t *testing.T) {
			prefix := "bench-stream-" + client + "-" + time.Now().Format("150405.000")
			run := func(args ...string) *Result {
				t.Helper()
				var out bytes.Buffer
				args = append([]string{"-url", url, "-json", "-client", client, "-queue-prefix", prefix, "-stream", "-duration", "30s"}, args...)
				if err := Run(args, &out); err != nil {
					t.Fatalf("Run %v: %v\n%s", args, err, out.String())
				}
				var r Result
				if err := json.Unmarshal(out.Bytes(), &r); err != nil {
					t.Fatalf("bad JSON: %v\n%s", err, out.String())
				}
				if len(r.Errors) > 0 {
					t.Fatalf("errors: %v", r.Errors)
				}
				return &r
			}
			fill := run("-consumers", "0", "-pmessages", "2000", "-confirm", "64", "-size", "32", "-keep")
			if fill.Confirmed != 2000 || !fill.Stream {
				t.Fatalf("fill: confirmed %d stream %v", fill.Confirmed, fill.Stream)
			}
			first := run("-drain", "-stream-length", "2000", "-stream-offset", "first", "-autoack=false", "-prefetch", "100", "-multi-ack", "10", "-keep")
			if first.Backlog != 2000 || first.Received != 2000 {
				t.Fatalf("from first: backlog %d received %d", first.Backlog, first.Received)
			}
			// 4 consumers from 0, 500, 1000, 1500: 2000+1500+1000+500.
			spread := run("-drain", "-stream-length", "2000", "-stream-offset", "spread", "-consumers", "4", "-autoack=false", "-prefetch", "100", "-multi-ack", "10")
			if spread.Backlog != 5000 || spread.Received != 5000 || spread.Consumers != 4 {
				t.Fatalf("spread: backlog %d received %d consumers %d", spread.Backlog, spread.Received, spread.Consumers)
			}
		})
	}
}
