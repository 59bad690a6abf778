package stream

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

const crashChildEnv = "WARREN_STREAM_CRASH_CHILD"

// crashChild is the child side of TestKill9: 8 goroutines append records (fsync on, small
// segments so that segments roll too) and print each confirmed offset, until killed. A
// record's payload is its offset and a length derived from it, so the parent can check
// every record it reads back.
func crashChild(dir string) int {
	s, err := Open(dir, Options{MaxSegmentBytes: 256 << 10, Logger: quiet()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		return 2
	}
	var outMu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	sem := make(chan struct{}, 256) // a confirm window, as a publisher's
	for {
		sem <- struct{}{}
		rec := make([]byte, 8+rand.IntN(300))
		binary.BigEndian.PutUint64(rec, uint64(len(rec)))
		s.Append(rec, func(off uint64, err error) {
			<-sem
			if err != nil {
				fmt.Fprintln(os.Stderr, "child append:", err)
				os.Exit(2)
			}
			outMu.Lock()
			// Flushed at once: a line printed is a confirm the parent has seen.
			fmt.Fprintf(out, "%d %d\n", off, len(rec))
			out.Flush()
			outMu.Unlock()
		})
	}
}

func TestKill9(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	confirmed := map[uint64]int{} // offset -> record length
	for round := 0; round < 3; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
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
		want := 2000 + rand.IntN(8000)
		seen := 0
		killed := false
		deadline := time.After(60 * time.Second)
	loop:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break loop
				}
				var off uint64
				var n int
				if _, err := fmt.Sscanf(l, "%d %d", &off, &n); err != nil {
					t.Fatalf("bad child line %q", l)
				}
				confirmed[off] = n
				seen++
				if seen == want && !killed {
					if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
						t.Fatal(err)
					}
					killed = true
				}
			case <-deadline:
				_ = cmd.Process.Kill()
				t.Fatalf("round %d: child confirmed only %d records", round, seen)
			}
		}
		_ = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child did not die of SIGKILL: %v", round, cmd.ProcessState)
		}

		s := openT(t, dir, Options{MaxSegmentBytes: 256 << 10})
		r, err := s.NewReader(First())
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for {
			rec, ok, err := r.TryNext()
			if err != nil {
				t.Fatalf("round %d: read at %d: %v", round, n, err)
			}
			if !ok {
				break
			}
			if rec.Offset != n {
				t.Fatalf("round %d: offset %d after %d", round, rec.Offset, n-1)
			}
			if len(rec.Data) < 8 || binary.BigEndian.Uint64(rec.Data) != uint64(len(rec.Data)) {
				t.Fatalf("round %d: record %d is damaged (%d bytes)", round, n, len(rec.Data))
			}
			if want, ok := confirmed[n]; ok && want != len(rec.Data) {
				t.Fatalf("round %d: record %d has %d bytes, confirmed with %d", round, n, len(rec.Data), want)
			}
			n++
		}
		r.Close()
		for off := range confirmed {
			if off >= n {
				t.Fatalf("round %d: confirmed record %d lost (stream ends at %d)", round, off, n)
			}
		}
		info := s.Info()
		t.Logf("round %d: killed after %d confirms; %d records in %d segments, %s", round, seen, n, info.Segments, strconv.FormatInt(info.Bytes, 10)+" B")
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
