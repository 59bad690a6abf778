package persistence

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const diskFullChildEnv = "WARREN_PERSISTENCE_DISKFULL_CHILD"

func init() { childModes[diskFullChildEnv] = diskFullChild }

// diskFullOpts are small enough that a 64 MB file system holds several value-log files and
// memtables, so that the test crosses file rotations on its way to a full disk.
var diskFullOpts = Options{MemTableSize: 2 << 20, ValueLogFileSize: 4 << 20}

// diskFullBody is the size of the test's messages: in the value log.
const diskFullBody = 16 << 10

// diskFullChild is the child side of TestDiskFull. It obeys commands read from stdin:
// "fill" publishes batches until a commit fails, printing "P id" per confirmed message and
// then "E <ErrDiskFull?> <ENOSPC?> <WriteError set?> <error>"; "ack N" removes messages
// 1..N (which must have been confirmed) and prints "A <error or ok>"; "clear" waits up to
// 10 s for WriteError to clear without committing and prints "C <cleared?>"; "big" publishes
// 6 MB in one batch and prints "B <error or ok>"; "resume" retries a publish
// until one succeeds (printing "P id") and then prints "OK <WriteError clear?>"; "close"
// closes the store and exits 0. Any other outcome exits non-zero; a crash (SIGBUS) shows
// in the parent as a signalled exit.
func diskFullChild(dir string) int {
	opts := diskFullOpts
	opts.Logger = quietLogger()
	s, err := Open(dir, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		return 2
	}
	next := s.MaxMessageID()
	body := bytes.Repeat([]byte("f"), diskFullBody)
	publish := func(n int) (*Batch, error) {
		b := &Batch{}
		for i := 0; i < n; i++ {
			id := next + uint64(i) + 1
			b.Publishes = append(b.Publishes, Publish{Msg: &Message{ID: id, Body: body}, Entries: []Entry{ent("q", id)}, NewEntries: true})
		}
		err := s.Commit(b)
		if err == nil {
			next += uint64(n)
			for _, p := range b.Publishes {
				fmt.Printf("P %d\n", p.Msg.ID)
			}
		}
		return b, err
	}
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if n, ok := strings.CutPrefix(sc.Text(), "ack "); ok {
			last, _ := strconv.ParseUint(n, 10, 64)
			b := &Batch{}
			for id := uint64(1); id <= last; id++ {
				b.Removes = append(b.Removes, Entry{Queue: qref("q"), Seq: id, MsgID: id, SoleRef: true})
			}
			if err := s.Commit(b); err != nil {
				fmt.Printf("A %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			} else {
				fmt.Println("A ok")
			}
			continue
		}
		switch sc.Text() {
		case "big":
			// One group larger than a value-log file: badger grows the file past its
			// mapped size, into blocks reserved beyond its end.
			if _, err := publish(6 << 20 / diskFullBody); err != nil {
				fmt.Printf("B %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			} else {
				fmt.Println("B ok")
			}
		case "fill":
			for {
				if _, err := publish(8); err != nil {
					fmt.Printf("E %v %v %v %s\n", errors.Is(err, ErrDiskFull), errors.Is(err, syscall.ENOSPC),
						s.WriteError() != nil, strings.ReplaceAll(err.Error(), "\n", " "))
					break
				}
			}
		case "clear":
			deadline := time.Now().Add(10 * time.Second)
			for s.WriteError() != nil && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			fmt.Printf("C %v\n", s.WriteError() == nil)
		case "resume":
			deadline := time.Now().Add(30 * time.Second)
			for {
				_, err := publish(1)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					fmt.Fprintln(os.Stderr, "child: commits still fail after the disk was freed:", err)
					return 3
				}
				time.Sleep(10 * time.Millisecond)
			}
			fmt.Printf("OK %v\n", s.WriteError() == nil)
		case "close":
			if err := s.Close(); err != nil {
				fmt.Fprintln(os.Stderr, "child close:", err)
				return 2
			}
			fmt.Println("closed")
			return 0
		}
	}
	return 4
}

// mountSmall mounts a 64 MB file system of the given kind on a new directory and returns
// it; the test is skipped when that is not possible (not root, no loop devices).
func mountSmall(t *testing.T, kind string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small file system (tmpfs, loop-mounted ext4)")
	}
	base := t.TempDir()
	mnt := filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	switch kind {
	case "tmpfs":
		cmd = exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt)
	case "ext4":
		img := filepath.Join(base, "fs.img")
		f, err := os.Create(img)
		if err == nil {
			err = errors.Join(f.Truncate(64<<20), f.Close())
		}
		if err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
			t.Skipf("mkfs.ext4 unavailable: %v: %s", err, out)
		}
		cmd = exec.Command("mount", "-o", "loop", img, mnt)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("cannot mount a %s: %v: %s", kind, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

// fillDisk writes a file in dir until the file system has at most leave bytes free.
func fillDisk(t *testing.T, path string, leave int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i) // not compressible, not a hole
	}
	for {
		free, err := freeBytes(filepath.Dir(path))
		if err != nil {
			t.Fatal(err)
		}
		if free <= leave {
			break
		}
		n := min(int64(len(chunk)), free-leave)
		if _, err := f.Write(chunk[:n]); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil && !errors.Is(err, syscall.ENOSPC) {
			t.Fatal(err)
		}
	}
}

// TestDiskFull: on a small file system that another process fills up, the store neither
// crashes (badger writes its logs through memory maps: SIGBUS on a full file system unless
// the space is reserved) nor loses a confirmed message. A publish that does not fit fails
// with ErrDiskFull (and ENOSPC) and WriteError reports it; once space is freed, publishes
// succeed again and WriteError clears. The store runs in a child process, since a crash
// is the failure this test looks for.
func TestDiskFull(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"tmpfs", "ext4"} {
		t.Run(kind, func(t *testing.T) {
			mnt := mountSmall(t, kind)
			dir := filepath.Join(mnt, "store")
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), diskFullChildEnv+"="+dir)
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if cmd.ProcessState == nil {
					_ = cmd.Process.Kill()
					_ = cmd.Wait()
				}
			}()
			lines := make(chan string, 1024)
			go func() {
				sc := bufio.NewScanner(stdout)
				for sc.Scan() {
					lines <- sc.Text()
				}
				close(lines)
			}()
			var confirmed []uint64
			// await reads the child's lines up to one starting with prefix, collecting
			// confirmations; it fails if the child dies first.
			await := func(prefix string) string {
				t.Helper()
				timeout := time.After(2 * time.Minute)
				for {
					select {
					case l, ok := <-lines:
						if !ok {
							err := cmd.Wait()
							t.Fatalf("child exited (%v) before %q; stderr: %s", err, prefix, stderr.String())
						}
						if id, ok := strings.CutPrefix(l, "P "); ok {
							n, err := strconv.ParseUint(id, 10, 64)
							if err != nil {
								t.Fatalf("bad child line %q", l)
							}
							confirmed = append(confirmed, n)
							continue
						}
						if strings.HasPrefix(l, prefix) {
							return l
						}
						t.Fatalf("unexpected child line %q", l)
					case <-timeout:
						t.Fatalf("no %q from the child in 2 minutes; stderr: %s", prefix, stderr.String())
					}
				}
			}
			send := func(cmd string) {
				if _, err := io.WriteString(stdin, cmd+"\n"); err != nil {
					t.Fatal(err)
				}
			}

			await("ready")
			// Leave room for several value-log files and memtables beyond what the store
			// reserved at Open, so the child fills the disk itself, across file rotations.
			filler := filepath.Join(mnt, "filler")
			fillDisk(t, filler, 24<<20)
			send("big")
			if b := await("B "); b != "B ok" {
				t.Errorf("a 6 MB batch with 24 MB free: %q; want it committed", b)
			}
			send("fill")
			e := strings.Fields(await("E "))
			if len(e) < 4 || e[1] != "true" || e[2] != "true" || e[3] != "true" {
				t.Fatalf("failed commit: %q; want an ErrDiskFull wrapping ENOSPC, reported by WriteError", strings.Join(e, " "))
			}
			full := len(confirmed)
			if full == 0 {
				t.Fatal("no publish succeeded before the disk was full")
			}
			t.Logf("%s: %d messages of %d KiB confirmed before the disk was full: %s", kind, full, diskFullBody>>10, strings.Join(e[4:], " "))

			// Consumers still ack: removals write no message data and fit in the space reserved.
			const acked = 16
			send(fmt.Sprintf("ack %d", acked))
			if a := await("A "); a != "A ok" {
				t.Errorf("acks while the disk is full: %q; want them to succeed", a)
			}

			// Someone else takes the last bytes: still no crash, still an error.
			fillDisk(t, filler+"2", 0)
			send("fill")
			e = strings.Fields(await("E "))
			if len(e) < 4 || e[1] != "true" || e[3] != "true" {
				t.Fatalf("commit on a completely full disk: %q; want ErrDiskFull", strings.Join(e, " "))
			}

			if err := errors.Join(os.Remove(filler), os.Remove(filler+"2")); err != nil {
				t.Fatal(err)
			}
			// The store notices by itself (a disk alarm blocking every publisher commits nothing).
			send("clear")
			if c := await("C "); c != "C true" {
				t.Errorf("WriteError after freeing the disk, without commits: %q; want it cleared", c)
			}
			send("resume")
			if ok := await("OK "); ok != "OK true" {
				t.Errorf("after freeing the disk: %q; want WriteError cleared", ok)
			}
			send("close")
			await("closed")
			if err := cmd.Wait(); err != nil {
				t.Fatalf("child: %v; stderr: %s", err, stderr.String())
			}

			opts := diskFullOpts
			opts.NoSync = true
			s := openWith(t, dir, opts)
			defer closeT(t, s)
			got := map[uint64]bool{}
			_, err = s.RecoverQueue(qref("q"), 0, func(st Stored) error {
				if len(st.Msg.Body) != diskFullBody {
					t.Errorf("message %d has a %d-byte body", st.Msg.ID, len(st.Msg.Body))
				}
				got[st.Msg.ID] = true
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range confirmed {
				if id <= acked && got[id] {
					t.Errorf("message %d is stored although its removal was confirmed", id)
				}
				if id > acked && !got[id] {
					t.Errorf("confirmed message %d lost", id)
				}
			}
			if len(got) != len(confirmed)-acked {
				t.Errorf("%d messages stored, %d confirmed and %d of them removed: a failed commit left messages behind", len(got), len(confirmed), acked)
			}
		})
	}
}

// TestReservations: after every commit, the memtable log after the current one exists,
// empty, with its blocks allocated, and the value log being written has its blocks
// allocated up to ValueLogFileSize - across memtable and value-log rotations; Close
// leaves no empty log behind for badger to trip over at the next Open.
func TestReservations(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opts := diskFullOpts
	opts.NoSync = true
	s := openWith(t, dir, opts)
	allocated := func(p string) (size, blocks int64) {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Size, st.Blocks * 512
	}
	check := func(when string) {
		t.Helper()
		mem, err := newestFid(dir, ".mem")
		if err != nil {
			t.Fatal(err)
		}
		if size, blocks := allocated(memPath(dir, mem+1)); size != 0 || blocks < 2*opts.MemTableSize {
			t.Fatalf("%s: next memtable log %d: size %d, %d bytes allocated; want empty with %d reserved", when, mem+1, size, blocks, 2*opts.MemTableSize)
		}
		if _, blocks := allocated(memPath(dir, mem)); blocks < 2*opts.MemTableSize {
			t.Fatalf("%s: memtable log %d: %d bytes allocated, want %d", when, mem, blocks, 2*opts.MemTableSize)
		}
		vlog, err := newestFid(dir, ".vlog")
		if err != nil {
			t.Fatal(err)
		}
		if _, blocks := allocated(vlogPath(dir, vlog)); blocks < opts.ValueLogFileSize {
			t.Fatalf("%s: value log %d: %d bytes allocated, want %d", when, vlog, blocks, opts.ValueLogFileSize)
		}
	}
	// Commit (on the journal) before checking: reservations are made ahead of each group.
	commitT(t, s, &Batch{})
	check("after Open")
	body := bytes.Repeat([]byte("r"), 8<<10)
	small := bytes.Repeat([]byte("s"), 180) // in the LSM tree: fills memtables
	firstMem, _ := newestFid(dir, ".mem")
	firstVlog, _ := newestFid(dir, ".vlog")
	const n = 4000
	for i := uint64(1); i <= n; i++ {
		b := &Batch{Publishes: []Publish{
			{Msg: &Message{ID: 3 * i, Body: body}, Entries: []Entry{ent("q", 3*i)}, NewEntries: true},
			{Msg: &Message{ID: 3*i + 1, Body: small}, Entries: []Entry{ent("q", 3*i+1)}, NewEntries: true},
			{Msg: &Message{ID: 3*i + 2, Body: small}, Entries: []Entry{ent("q", 3*i+2)}, NewEntries: true},
		}}
		commitT(t, s, b)
		commitT(t, s, &Batch{})
		check(fmt.Sprintf("after commit %d", i))
	}
	mem, _ := newestFid(dir, ".mem")
	vlog, _ := newestFid(dir, ".vlog")
	if mem == firstMem || vlog == firstVlog {
		t.Errorf("memtable log %d -> %d, value log %d -> %d: the test did not rotate both", firstMem, mem, firstVlog, vlog)
	}
	closeT(t, s)
	files, _ := filepath.Glob(filepath.Join(dir, "*.mem"))
	for _, p := range files {
		if size, _ := allocated(p); size == 0 {
			t.Errorf("Close left the empty log %s", filepath.Base(p))
		}
	}
	s = openWith(t, dir, opts)
	defer closeT(t, s)
	got := 0
	if _, err := s.RecoverQueue(qref("q"), 0, func(Stored) error { got++; return nil }); err != nil {
		t.Fatal(err)
	}
	if got != 3*n {
		t.Errorf("%d messages after reopening, want %d", got, 3*n)
	}
}
