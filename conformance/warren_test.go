//go:build !conformance_external

package conformance

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"

	"warren/server"
)

// startWarren runs Warren in-process on a free loopback port with a throw-away data directory.
func startWarren() (string, func(), error) { return startWarrenWith(nil) }

// startWarrenWith is startWarren with a configuration change, for tests of Warren's own settings.
func startWarrenWith(mutate func(*server.Config)) (string, func(), error) {
	dir, err := os.MkdirTemp("", "warren-conformance-")
	if err != nil {
		return "", nil, fmt.Errorf("temp dir: %w", err)
	}
	cfg := server.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = dir
	// Broker logs only clutter a passing run; show them with -v.
	if !testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("server.New: %w", err)
	}
	if err := srv.Start(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("server.Start: %w", err)
	}
	stop := func() {
		srv.Close()
		os.RemoveAll(dir)
	}
	return "amqp://guest:guest@" + srv.Addr().String() + "/", stop, nil
}
