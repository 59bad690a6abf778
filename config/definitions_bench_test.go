package config

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// writeManyQueues writes a definitions file with n durable queues in vhost "/", each bound to
// amq.direct, and a config file that loads it; it returns the config file.
func writeManyQueues(tb testing.TB, n int) string {
	tb.Helper()
	queues := make([]map[string]any, n)
	bindings := make([]map[string]any, n)
	for i := range n {
		name := fmt.Sprintf("q-%05d", i)
		queues[i] = map[string]any{"name": name, "vhost": "/", "durable": true, "auto_delete": false, "arguments": map[string]any{"x-max-length": 1000}}
		bindings[i] = map[string]any{"source": "amq.direct", "vhost": "/", "destination": name, "destination_type": "queue", "routing_key": name, "arguments": map[string]any{}}
	}
	b, err := json.Marshal(map[string]any{"vhosts": []any{map[string]any{"name": "/"}}, "queues": queues, "bindings": bindings})
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	defs := filepath.Join(dir, "defs.json")
	if err := os.WriteFile(defs, b, 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg := filepath.Join(dir, "warren.yaml")
	if err := os.WriteFile(cfg, []byte("load_definitions: "+defs+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// BenchmarkLoadDefinitions10kQueues is what every start and every reload pays for a definitions
// file of 10,000 queues and bindings: reading, converting, merging and validating it.
func BenchmarkLoadDefinitions10kQueues(b *testing.B) {
	cfg := writeManyQueues(b, 10000)
	b.ResetTimer()
	for range b.N {
		s, err := Load([]string{"-config", cfg}, envMap(nil))
		if err != nil {
			b.Fatal(err)
		}
		if len(s.Server.Queues) != 10000 {
			b.Fatalf("%d queues", len(s.Server.Queues))
		}
	}
}
