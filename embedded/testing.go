package embedded

import "testing"

// NewTestBroker starts an in-memory broker with the default options for the test or benchmark tb
// and closes it in tb.Cleanup, like httptest.NewServer. It fails tb if the broker cannot start.
// Each call starts a broker of its own, so parallel tests do not share queues.
func NewTestBroker(tb testing.TB) *Broker {
	tb.Helper()
	return NewTestBrokerWith(tb, Options{})
}

// NewTestBrokerWith is NewTestBroker with options: users, topology, a data directory (for example
// tb.TempDir(), to test restarts), a logger.
func NewTestBrokerWith(tb testing.TB, opts Options) *Broker {
	tb.Helper()
	b, err := Start(opts)
	if err != nil {
		tb.Fatalf("embedded.NewTestBroker: %v", err)
	}
	tb.Cleanup(func() {
		if err := b.Close(); err != nil {
			tb.Errorf("embedded.NewTestBroker: %v", err)
		}
	})
	return b
}
