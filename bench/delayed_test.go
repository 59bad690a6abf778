package bench

import (
	"io"
	"testing"
	"time"
)

func TestParseDelayedFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		span time.Duration
		n    int64
	}{
		{[]string{"-mode", "delayed"}, 0, 0},
		{[]string{"-mode", "delayed", "-pmessages", "1000000", "-delay-span", "10m"}, 10 * time.Minute, 1_000_000},
	} {
		cfg, err := ParseFlags(c.args, io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if cfg.Mode != "delayed" || cfg.DelaySpan != c.span || cfg.PMessages != c.n {
			t.Errorf("%v: mode %q span %v messages %d", c.args, cfg.Mode, cfg.DelaySpan, cfg.PMessages)
		}
	}
}
