//go:build !conformance_external

package conformance

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"testing"

	"github.com/warrenmq/warren/embedded"
	"github.com/warrenmq/warren/server"
)

var maxRAMMessages = flag.Int("max-ram-messages", 0, "in-process Warren: queue.max_ram_messages (0 = the default); a small window runs the suite with queues paging to disk")

// startWarren runs Warren in-process on a free loopback port with a throw-away data directory,
// through the public package embedded, as any Go program would.
func startWarren() (string, func(), error) { return startWarrenWith(nil) }

// startWarrenWith is startWarren with a configuration change, for tests of Warren's own settings.
func startWarrenWith(mutate func(*server.Config)) (string, func(), error) {
	dir, err := os.MkdirTemp("", "warren-conformance-")
	if err != nil {
		return "", nil, fmt.Errorf("temp dir: %w", err)
	}
	opts := embedded.Options{
		DataDir: dir,
		Configure: func(c *server.Config) {
			if *maxRAMMessages > 0 {
				c.MaxRAMMessages = *maxRAMMessages
			}
			if mutate != nil {
				mutate(c)
			}
		},
	}
	// Broker logs only clutter a passing run (embedded discards them by default); show them with -v.
	if testing.Verbose() {
		opts.Logger = slog.Default()
	}
	b, err := embedded.Start(opts)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	stop := func() {
		b.Close()
		os.RemoveAll(dir)
	}
	return b.URL(), stop, nil
}
