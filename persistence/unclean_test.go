package persistence

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

const uncleanChildEnv = "WARREN_PERSISTENCE_UNCLEAN_CHILD"

func init() { childModes[uncleanChildEnv] = uncleanChild }

// uncleanChild is the child side of TestUncleanStopKill9: it commits messages 1 and 2 to
// queue q, submits the delivery mark of message 1 the way the broker does (after the
// delivery, nobody waiting) with a LazyDelay so long that the journal never commits it,
// prints "ready" and waits to be killed.
func uncleanChild(dir string) int {
	s, err := Open(dir, Options{Logger: quietLogger(), LazyDelay: time.Hour})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		return 2
	}
	b := &Batch{Publishes: []Publish{pub(mkMsg(1), ent("q", 1)), pub(mkMsg(2), ent("q", 2))}}
	if err := s.Commit(b); err != nil {
		fmt.Fprintln(os.Stderr, "child commit:", err)
		return 2
	}
	s.Submit(&Batch{Deliveries: []DeliveryMark{{Entry: ent("q", 1), Count: 1}}}, nil)
	fmt.Println("ready")
	time.Sleep(time.Minute)
	return 3
}

// recoverStored returns q's stored entries by sequence number.
func recoverStored(t testing.TB, s *Store, q string) map[uint64]Stored {
	t.Helper()
	out := map[uint64]Stored{}
	if _, err := s.RecoverQueue(qref(q), 0, func(st Stored) error {
		out[st.Seq] = st
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkStored compares what the store reads back for each seq of q (RecoverQueue and
// ReadAhead alike) with want: the mark's count and whether the entry may have been
// delivered without its mark.
func checkStored(t *testing.T, s *Store, q string, want map[uint64]Stored) {
	t.Helper()
	got := recoverStored(t, s, q)
	if len(got) != len(want) {
		t.Fatalf("%d entries stored, want %d", len(got), len(want))
	}
	ahead := map[uint64]Stored{}
	for _, st := range readAhead(t, s, ReadRequest{Queue: qref(q), Durable: true, Max: 100, MaxBytes: 1 << 20}) {
		ahead[st.Seq] = st
	}
	for seq, w := range want {
		for _, m := range []map[uint64]Stored{got, ahead} {
			g, ok := m[seq]
			if !ok {
				t.Fatalf("entry %d missing", seq)
			}
			if g.Deliveries != w.Deliveries || g.MaybeDelivered != w.MaybeDelivered {
				t.Errorf("entry %d: Deliveries %d MaybeDelivered %v, want %d %v", seq, g.Deliveries, g.MaybeDelivered, w.Deliveries, w.MaybeDelivered)
			}
		}
	}
}

// TestUncleanStopKill9: a process killed after a delivery whose mark was submitted but not
// committed. The mark is lost, so the reopened store reads the message back with no
// deliveries but MaybeDelivered, and so is the other message stored before the kill (the
// store cannot tell which ones reached a client). After a later clean stop those stay
// flagged - a clean stop does not bring the lost mark back - while a message stored after
// the unclean restart comes back exactly as its marks say.
func TestUncleanStopKill9(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), uncleanChildEnv+"="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		ok := sc.Scan() && sc.Text() == "ready"
		ready <- ok
		for sc.Scan() {
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("child did not get ready; stderr: %s", stderr.String())
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child not ready within 30s; stderr: %s", stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	werr := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v; stderr: %s", werr, stderr.String())
	}

	s := openT(t, dir)
	if !s.UncleanStop() {
		t.Error("UncleanStop() = false after kill -9")
	}
	checkStored(t, s, "q", map[uint64]Stored{1: {MaybeDelivered: true}, 2: {MaybeDelivered: true}})
	// Message 3 comes after the unclean restart: delivered once (mark committed) it reads
	// back with its mark; message 4, never delivered, reads back plain.
	id := s.MaxMessageID()
	if err := s.Commit(&Batch{Publishes: []Publish{pub(mkMsg(id+1), ent("q", 3)), pub(mkMsg(id+2), ent("q", 4))}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(&Batch{Deliveries: []DeliveryMark{{Entry: ent("q", 3), Count: 1}}}); err != nil {
		t.Fatal(err)
	}

	s = reopen(t, s, dir)
	defer closeT(t, s)
	if s.UncleanStop() {
		t.Error("UncleanStop() = true after a clean Close")
	}
	checkStored(t, s, "q", map[uint64]Stored{
		1: {MaybeDelivered: true}, 2: {MaybeDelivered: true}, // from before the kill, for good
		3: {Deliveries: 1}, 4: {},
	})
}

// TestUncleanStop: what makes a stop unclean, in process. A clean Close leaves the marks in
// charge; a Close after a refused write that held a delivery mark (or a removal) leaves the
// store flagged unclean, one that only held a publish does not.
func TestUncleanStop(t *testing.T) {
	tests := []struct {
		name    string
		before  func(t *testing.T, s *Store) // runs before the Close
		unclean bool
	}{
		{name: "clean close", before: func(*testing.T, *Store) {}},
		{name: "refused batch with a mark", unclean: true, before: func(t *testing.T, s *Store) {
			// Message id 0 is invalid: the journal refuses the batch, and its mark with it.
			if err := s.Commit(&Batch{Publishes: []Publish{{Msg: &Message{}, Entries: []Entry{ent("q", 9)}}},
				Deliveries: []DeliveryMark{{Entry: ent("q", 2), Count: 1}}}); err == nil {
				t.Fatal("a publish of message id 0 was accepted")
			}
		}},
		{name: "refused publish", before: func(t *testing.T, s *Store) {
			// A refused publish is reported to its publisher and loses nothing stored.
			if err := s.Commit(&Batch{Publishes: []Publish{{Msg: &Message{}, Entries: []Entry{ent("q", 9)}}}}); err == nil {
				t.Fatal("a publish of message id 0 was accepted")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir)
			if s.UncleanStop() {
				t.Error("a new store reports an unclean stop")
			}
			if err := s.Commit(&Batch{Publishes: []Publish{pub(mkMsg(1), ent("q", 1)), pub(mkMsg(2), ent("q", 2))}}); err != nil {
				t.Fatal(err)
			}
			if err := s.Commit(&Batch{Deliveries: []DeliveryMark{{Entry: ent("q", 1), Count: 1}}}); err != nil {
				t.Fatal(err)
			}
			tt.before(t, s)
			s = reopen(t, s, dir)
			defer closeT(t, s)
			if s.UncleanStop() != tt.unclean {
				t.Errorf("UncleanStop() = %v, want %v", s.UncleanStop(), tt.unclean)
			}
			checkStored(t, s, "q", map[uint64]Stored{
				1: {Deliveries: 1, MaybeDelivered: tt.unclean},
				2: {MaybeDelivered: tt.unclean},
			})
		})
	}
}
