package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// asMainEnv makes the test binary behave as the warren command, so the process test below
// exercises real signal delivery without a separate `go build`.
const asMainEnv = "WARREN_TEST_RUN_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// lockedBuffer collects a process's log for failure messages while another goroutine writes it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) add(line string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.WriteString(line + "\n")
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var readyAddr = regexp.MustCompile(`msg="warren ready" addr=(\S+)`)

// waitReady reads log lines until the ready line and returns the address it reports. The rest
// of r is drained in the background so the writer never blocks.
func waitReady(t *testing.T, r io.Reader, log *lockedBuffer) string {
	t.Helper()
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(r)
		sent := false
		for sc.Scan() {
			log.add(sc.Text())
			if m := readyAddr.FindStringSubmatch(sc.Text()); m != nil && !sent {
				found <- m[1]
				sent = true
			}
		}
		if !sent {
			close(found)
		}
	}()
	select {
	case addr, ok := <-found:
		if !ok {
			t.Fatalf("output ended before the ready line:\n%s", log)
		}
		return addr
	case <-time.After(10 * time.Second):
		t.Fatalf("no ready line within 10s:\n%s", log)
	}
	return ""
}

// checkListening fails unless addr is a concrete address accepting TCP connections.
func checkListening(t *testing.T, addr string) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("ready line addr = %q, want 127.0.0.1:<actual port>", addr)
	}
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("broker not accepting on %s: %v", addr, err)
	}
	c.Close()
}

// startWarrenProcess runs the test binary as the warren command in dir, without the caller's
// WARREN_* variables, and returns it with its stderr.
func startWarrenProcess(t *testing.T, dir string, args ...string) (*exec.Cmd, io.Reader) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Dir = dir
	env := append([]string{asMainEnv + "=1"}, httpOff...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, stderr
}

// TestBinaryStartStop runs warren as a process on a free port, waits for the ready line, connects
// an AMQP client, sends SIGTERM and expects the client to get connection.close 320 and the process
// to exit 0.
func TestBinaryStartStop(t *testing.T) {
	dir := t.TempDir()
	// No config.yaml in dir: defaults + flags only.
	cmd, stderr := startWarrenProcess(t, dir, "-listen", "127.0.0.1:0", "-data-dir", filepath.Join(dir, "data"))
	exited := make(chan error, 1)
	defer func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
		}
	}()

	var log lockedBuffer
	addr := waitReady(t, stderr, &log)
	checkListening(t, addr)
	client, err := amqp091.Dial("amqp://guest:guest@" + addr + "/")
	if err != nil {
		t.Fatalf("AMQP dial %s: %v\n%s", addr, err, log.String())
	}
	defer client.Close()
	closed := client.NotifyClose(make(chan *amqp091.Error, 1))

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-closed:
		if e == nil || e.Code != amqp091.ConnectionForced {
			t.Errorf("client saw close %v, want code 320 CONNECTION_FORCED", e)
		}
	case <-time.After(10 * time.Second):
		t.Error("client got no connection.close within 10s of SIGTERM")
	}
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, log.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still running 10s after SIGTERM")
	}
}

// TestRun drives run in-process: start-up, the ready line, shutdown on a signal, and start-up errors.
func TestRun(t *testing.T) {
	t.Chdir(t.TempDir()) // keep the repo's config.yaml out of it
	noEnv := envMap(nil)

	t.Run("ready and shutdown", func(t *testing.T) {
		pr, pw := io.Pipe()
		signals := make(chan os.Signal, 1)
		code := make(chan int, 1)
		go func() {
			code <- run([]string{"-listen", "127.0.0.1:0", "-data-dir", filepath.Join(t.TempDir(), "data")}, noEnv, pw, signals)
			pw.Close()
		}()
		var log lockedBuffer
		addr := waitReady(t, pr, &log)
		checkListening(t, addr)
		signals <- syscall.SIGINT
		select {
		case c := <-code:
			if c != 0 {
				t.Fatalf("exit code %d, want 0", c)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("run did not return 10s after the signal")
		}
	})

	t.Run("pprof endpoint", func(t *testing.T) {
		pr, pw := io.Pipe()
		signals := make(chan os.Signal, 1)
		code := make(chan int, 1)
		env := envMap(map[string]string{"WARREN_DEBUG_PPROF_LISTEN": "127.0.0.1:0"})
		go func() {
			code <- run([]string{"-listen", "127.0.0.1:0", "-data-dir", ""}, env, pw, signals)
			pw.Close()
		}()
		var log lockedBuffer
		waitReady(t, pr, &log) // the pprof line comes first
		m := regexp.MustCompile(`msg="pprof ready" addr=(\S+)`).FindStringSubmatch(log.String())
		if m == nil {
			t.Fatalf("no pprof ready line:\n%s", log.String())
		}
		resp, err := http.Get("http://" + m[1] + "/debug/pprof/heap?debug=1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "heap profile") {
			t.Errorf("GET heap profile: %s\n%.200s", resp.Status, body)
		}
		signals <- syscall.SIGINT
		if c := <-code; c != 0 {
			t.Fatalf("exit code %d, want 0", c)
		}
	})

	errorCases := []struct {
		name       string
		args       []string
		env        map[string]string
		occupyPort bool // listen on an address another socket already holds
		code       int
		want       string
	}{
		{name: "bad value", env: map[string]string{"WARREN_LIMITS_FRAME_MAX": "100"}, code: 1, want: "warren: config: limits.frame_max: 100 is below 4096"},
		{name: "port in use", args: []string{"-data-dir", ""}, occupyPort: true, code: 1, want: "warren: start:"},
		{name: "help", args: []string{"-h"}, code: 0, want: "Usage: warren"},
	}
	for _, tt := range errorCases {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.occupyPort {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				args = append([]string{"-listen", ln.Addr().String()}, args...)
			}
			var out bytes.Buffer
			c := run(args, envMap(tt.env), &out, make(chan os.Signal))
			if c != tt.code || !strings.Contains(out.String(), tt.want) {
				t.Errorf("code %d output %q; want code %d output containing %q", c, out.String(), tt.code, tt.want)
			}
		})
	}
}

func TestRunBenchCommand(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want string // in stderr
	}{
		{name: "help", args: []string{"-h"}, code: 0},
		{name: "bad flag", args: []string{"-no-such-flag"}, code: 1, want: "warren: bench:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			c := runBenchCommand(tt.args, io.Discard, &stderr)
			if c != tt.code || !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("code %d stderr %q; want code %d stderr containing %q", c, stderr.String(), tt.code, tt.want)
			}
		})
	}
}
