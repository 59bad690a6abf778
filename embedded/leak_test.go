package embedded_test

import (
	"bytes"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// goroutines returns the stacks of all goroutines, keyed by the goroutine's header line
// ("goroutine 42 [chan receive]:" without the state, which changes while it waits).
func goroutines() map[string]string {
	buf := make([]byte, 1<<16)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		s := string(g)
		header, _, _ := strings.Cut(s, " [")
		out[header] = s
	}
	return out
}

// leakCheck records the goroutines running now; the returned function fails t if goroutines that
// were not running then are still running a few seconds later (client libraries and the broker
// finish their goroutines asynchronously, so it polls). It must not be used by parallel tests,
// whose goroutines would count as leaks.
func leakCheck(t *testing.T) func() {
	t.Helper()
	before := goroutines()
	return func() {
		t.Helper()
		var leaked []string
		deadline := time.Now().Add(5 * time.Second)
		for {
			leaked = leaked[:0]
			for id, stack := range goroutines() {
				// The goroutine running this check did not exist before when it is a subtest's.
				if _, ok := before[id]; !ok && !strings.Contains(stack, "embedded_test.leakCheck") {
					leaked = append(leaked, stack)
				}
			}
			if len(leaked) == 0 {
				return
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		sort.Strings(leaked)
		t.Errorf("%d goroutine(s) still running after Close:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
	}
}
