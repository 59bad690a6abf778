package persistence

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const crashChildEnv = "WARREN_PERSISTENCE_CRASH_CHILD"

// crashChild is the child side of TestKill9: it commits batches from several goroutines
// as fast as it can (fsync on) and prints "P id" once a publish is confirmed and "R id"
// once the removal of that id is confirmed, until it is killed.
func crashChild(dir string) int {
	s, err := Open(dir, Options{Logger: quietLogger()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		return 2
	}
	if err := s.PutQueue(QueueRecord{VHost: "/", Name: "q"}); err != nil {
		fmt.Fprintln(os.Stderr, "child put queue:", err)
		return 2
	}
	var next atomic.Uint64
	next.Store(s.MaxMessageID())
	var outMu sync.Mutex
	say := func(format string, a ...any) {
		outMu.Lock()
		fmt.Fprintf(os.Stdout, format, a...) // unbuffered: one write per line
		outMu.Unlock()
	}
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var prev uint64
			for {
				id := next.Add(1)
				b := &Batch{Publishes: []Publish{pub(mkMsg(id), ent("q", id), ent("q2", id))}}
				if prev != 0 && prev%3 == 0 {
					b.Removes = []Entry{ent("q", prev), ent("q2", prev)}
				}
				if err := s.Commit(b); err != nil {
					fmt.Fprintln(os.Stderr, "child commit:", err)
					os.Exit(2)
				}
				if len(b.Removes) > 0 {
					say("R %d\nP %d\n", prev, id)
				} else {
					say("P %d\n", id)
				}
				prev = id
			}
		}()
	}
	wg.Wait()
	return 0
}

func TestKill9(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	confirmed := map[uint64]bool{} // id -> still expected in q (false once its removal is confirmed)
	rounds := 3
	for round := 0; round < rounds; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Kill at a random moment after the child is well into committing.
		want := 200 + rand.IntN(800)
		seen := 0
		var killed bool
		deadline := time.After(30 * time.Second)
	loop:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break loop
				}
				apply(t, confirmed, l)
				seen++
				if seen == want && !killed {
					time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
					if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
						t.Fatal(err)
					}
					killed = true
				}
			case <-deadline:
				_ = cmd.Process.Kill()
				t.Fatalf("round %d: child produced only %d lines; stderr: %s", round, seen, stderr.String())
			}
		}
		werr := cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child did not die of SIGKILL: %v; stderr: %s", round, werr, stderr.String())
		}

		s := openT(t, dir)
		present := map[uint64]bool{}
		for _, r := range recoverAll(t, s, "q") {
			present[r.ID] = true
		}
		q2 := map[uint64]bool{}
		for _, r := range recoverAll(t, s, "q2") {
			q2[r.ID] = true
		}
		var maxConfirmed uint64
		for id, keep := range confirmed {
			maxConfirmed = max(maxConfirmed, id)
			if keep && id%3 == 0 && !present[id] && !q2[id] && !stored(s, id) {
				// Its removal was committed but the child died before reporting it.
				continue
			}
			if present[id] != keep || q2[id] != keep {
				t.Errorf("round %d: message %d in q=%v q2=%v, want %v", round, id, present[id], q2[id], keep)
			}
			if stored(s, id) != keep {
				t.Errorf("round %d: message %d stored=%v, want %v", round, id, !keep, keep)
			}
		}
		for id := range present {
			if !q2[id] {
				t.Errorf("round %d: message %d in q but not q2: a batch was split", round, id)
			}
		}
		if got := s.MaxMessageID(); got < maxConfirmed {
			t.Errorf("round %d: MaxMessageID %d < confirmed %d", round, got, maxConfirmed)
		}
		t.Logf("round %d: killed after %d confirmations, %d messages present", round, seen, len(present))
		closeT(t, s)
		if t.Failed() {
			return
		}
	}
}

func apply(t *testing.T, confirmed map[uint64]bool, line string) {
	t.Helper()
	kind, num, ok := strings.Cut(line, " ")
	id, err := strconv.ParseUint(num, 10, 64)
	if !ok || err != nil {
		t.Fatalf("bad child line %q", line)
	}
	switch kind {
	case "P":
		confirmed[id] = true
	case "R":
		confirmed[id] = false
	default:
		t.Fatalf("bad child line %q", line)
	}
}
