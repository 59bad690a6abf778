//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// broker is the Warren child process under soak: built from the repository, started with a
// config file written here, a data directory of its own (a tmpfs when the alarm is crossed,
// so that filling it touches nothing else on the machine), and every listener on a free
// loopback port.
type broker struct {
	dir      string // the soak's temp dir: binary, config, log, data
	bin      string
	cfgPath  string
	logPath  string
	dataDir  string // storage.dir
	mnt      string // tmpfs mount point holding dataDir and the alarm's filler; "" without
	cmd      *exec.Cmd
	exited   chan struct{}
	exitErr  error
	addr     string // AMQP host:port
	pprof    string // pprof host:port
	freeMin  int64  // disk.free_limit
	reloads  int    // config rewrites + SIGHUP sent
	policyOn bool
}

// diskFreeLimit is the disk alarm's threshold: above Warren's own floor (the store's reserve,
// 176 MiB by default, plus 128 MiB it may take between two checks) so that the configured
// value is the one that trips.
const diskFreeLimit = 512 << 20

// tmpfsSize bounds the data directory's file system. Pages of a tmpfs use RAM only once
// written; the store stays far below this, the filler takes it to just under the limit.
const tmpfsSize = 3 << 30

func buildWarren(ctx context.Context, repo, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, ".")
	cmd.Dir = repo
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build of %s: %w", repo, err)
	}
	return nil
}

// prepare creates the data directory, on a tmpfs when tmpfs is true (root only). It returns
// why the tmpfs could not be mounted, "" when it was or was not asked for.
func (b *broker) prepare(tmpfs bool) string {
	b.cfgPath = filepath.Join(b.dir, "warren.yaml")
	if b.logPath == "" {
		b.logPath = filepath.Join(b.dir, "warren.log")
	}
	b.freeMin = diskFreeLimit
	why := ""
	if tmpfs {
		mnt := filepath.Join(b.dir, "mnt")
		if err := os.Mkdir(mnt, 0o700); err != nil {
			why = err.Error()
		} else if err := syscall.Mount("soak-tmpfs", mnt, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", tmpfsSize)); err != nil {
			why = fmt.Sprintf("mount tmpfs on %s: %v (needs root)", mnt, err)
		} else {
			b.mnt = mnt
		}
	}
	base := b.dir
	if b.mnt != "" {
		base = b.mnt
	}
	b.dataDir = filepath.Join(base, "store")
	return why
}

// writeConfig writes the broker's configuration. The policy toggles between two max-length
// values for the transient queues so that each reload changes something real.
func (b *broker) writeConfig() error {
	maxLen := 20000
	if b.policyOn {
		maxLen = 5000
	}
	cfg := fmt.Sprintf(`# written by the soak (conformance/soak); reload %d
amqp:
  listen: 127.0.0.1:0
storage:
  dir: %q
disk:
  free_limit: %d
management:
  listen: 127.0.0.1:0
prometheus:
  listen: 127.0.0.1:0
debug:
  pprof_listen: 127.0.0.1:0
policies:
  - {name: soak-transient-len, vhost: /, pattern: "^soak\\.t\\.", apply-to: queues, priority: 1, definition: {max-length: %d}}
log:
  level: info
`, b.reloads, b.dataDir, b.freeMin, maxLen)
	// Written in place and renamed, so the file watcher never sees a half-written file.
	tmp := b.cfgPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(cfg), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, b.cfgPath)
}

var (
	readyRe = regexp.MustCompile(`msg="warren ready" addr=(\S+)`)
	pprofRe = regexp.MustCompile(`msg="pprof ready" addr=(\S+)`)
)

// start runs the broker and waits for its ready line.
func (b *broker) start() error {
	if err := b.writeConfig(); err != nil {
		return err
	}
	logf, err := os.Create(b.logPath)
	if err != nil {
		return err
	}
	// The child runs in the soak's temp dir, so no ./config.yaml of the caller is read; the
	// environment must not override what the config file sets.
	b.cmd = exec.Command(b.bin, "-config", b.cfgPath)
	b.cmd.Dir = b.dir
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WARREN_") {
			env = append(env, kv)
		}
	}
	b.cmd.Env = env
	// Killed with the soak even when the soak itself is killed with SIGKILL.
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := b.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start warren: %w", err)
	}
	b.exited = make(chan struct{})
	go func() {
		b.exitErr = b.cmd.Wait()
		logf.Close()
		close(b.exited)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		log, _ := os.ReadFile(b.logPath)
		if m := readyRe.FindSubmatch(log); m != nil {
			b.addr = string(m[1])
			if p := pprofRe.FindSubmatch(log); p != nil {
				b.pprof = string(p[1])
			}
			if b.pprof == "" {
				return errors.New("warren is ready but logged no pprof address")
			}
			return nil
		}
		select {
		case <-b.exited:
			return fmt.Errorf("warren exited during start-up (%v):\n%s", b.exitErr, tail(b.logPath, 30))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("warren not ready after 60 s:\n%s", tail(b.logPath, 30))
}

// reload rewrites the config with the policy toggled and sends SIGHUP.
func (b *broker) reload() error {
	b.policyOn = !b.policyOn
	b.reloads++
	if err := b.writeConfig(); err != nil {
		return err
	}
	return b.cmd.Process.Signal(syscall.SIGHUP)
}

// alive reports whether the broker process is still running.
func (b *broker) alive() bool {
	select {
	case <-b.exited:
		return false
	default:
		return true
	}
}

// stop asks the broker to shut down (SIGTERM) and kills it if it has not within grace. It
// reports whether the shutdown was clean (exit status 0 within grace).
func (b *broker) stop(grace time.Duration) (clean bool, err error) {
	if b.cmd == nil || b.cmd.Process == nil {
		return false, errors.New("not started")
	}
	if !b.alive() {
		return false, fmt.Errorf("warren had already exited: %v", b.exitErr)
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
		if b.exitErr != nil {
			return false, fmt.Errorf("warren exited after SIGTERM: %v", b.exitErr)
		}
		return true, nil
	case <-time.After(grace):
		_ = b.cmd.Process.Kill()
		<-b.exited
		return false, fmt.Errorf("warren did not stop within %v of SIGTERM: killed", grace)
	}
}

// kill ends the broker at once if it runs; every exit path of the soak calls it.
func (b *broker) kill() {
	if b.cmd != nil && b.cmd.Process != nil && b.alive() {
		_ = b.cmd.Process.Kill()
		<-b.exited
	}
}

// unmount removes the tmpfs (the broker must be gone).
func (b *broker) unmount() {
	if b.mnt == "" {
		return
	}
	if err := syscall.Unmount(b.mnt, 0); err != nil {
		_ = syscall.Unmount(b.mnt, syscall.MNT_DETACH)
	}
	b.mnt = ""
}

// sample is one reading of the broker's resources.
type sample struct {
	RSSKiB     int64 // VmRSS: all resident pages, the store's memory-mapped files included
	AnonKiB    int64 // RssAnon: the process's own memory (heap, stacks), what a leak grows
	ShmemKiB   int64 // RssShmem: resident pages of mapped tmpfs files (the store, here)
	StoreBytes int64 // size of the data directory
	Goroutines int64
	HeapInuse  int64
	HeapAlloc  int64
	FDs        int64
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

func (b *broker) get(path string) ([]byte, error) {
	resp, err := httpClient.Get("http://" + b.pprof + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return body, nil
}

// sample reads RSS and open files from /proc, goroutines and heap from pprof. gc asks the
// heap profile to collect first (live heap rather than heap plus garbage).
func (b *broker) sample(gc bool) (sample, error) {
	var s sample
	pid := b.cmd.Process.Pid
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		kib := func(v string) int64 {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			s.RSSKiB = kib(v)
		} else if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			s.AnonKiB = kib(v)
		} else if v, ok := strings.CutPrefix(line, "RssShmem:"); ok {
			s.ShmemKiB = kib(v)
		}
	}
	if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		s.FDs = int64(len(fds))
	}
	_ = filepath.WalkDir(b.dataDir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				s.StoreBytes += info.Size()
			}
		}
		return nil // files vanish while the store compacts: count what is there
	})
	g, err := b.get("/debug/pprof/goroutine?debug=1")
	if err != nil {
		return s, err
	}
	first, _, _ := bytes.Cut(g, []byte("\n"))
	if _, n, ok := strings.Cut(string(first), "total "); ok {
		s.Goroutines, _ = strconv.ParseInt(strings.TrimSpace(n), 10, 64)
	}
	path := "/debug/pprof/heap?debug=1"
	if gc {
		path += "&gc=1"
	}
	h, err := b.get(path)
	if err != nil {
		return s, err
	}
	sc := bufio.NewScanner(bytes.NewReader(h))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "# HeapInuse = "); ok {
			s.HeapInuse, _ = strconv.ParseInt(v, 10, 64)
		}
		if v, ok := strings.CutPrefix(line, "# HeapAlloc = "); ok {
			s.HeapAlloc, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	return s, nil
}

// logCount counts the broker log's lines containing s.
func (b *broker) logCount(s string) int {
	data, _ := os.ReadFile(b.logPath)
	return bytes.Count(data, []byte(s))
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freeBytes is the free space of the file system holding path, as the broker's disk alarm
// sees it (blocks available to unprivileged users).
func freeBytes(path string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// fill allocates a file in the tmpfs so that leave bytes stay free, which puts the broker
// under its disk alarm; removing the file clears it.
func (b *broker) fill(leave int64) (string, int64, error) {
	free, err := freeBytes(b.mnt)
	if err != nil {
		return "", 0, err
	}
	size := free - leave
	if size <= 0 {
		return "", 0, fmt.Errorf("only %d bytes free on the data file system before filling", free)
	}
	path := filepath.Join(b.mnt, "filler")
	f, err := os.Create(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		os.Remove(path)
		return "", 0, fmt.Errorf("fallocate %d bytes: %w", size, err)
	}
	return path, size, nil
}
