package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

const reloadBase = `
amqp:
  listen: 127.0.0.1:0
storage:
  dir: ""
users:
  - {name: guest, password: guest}
  - {name: app, password: pw}
`

const appAllowed = reloadBase + `permissions:
  - {user: guest, vhost: /, configure: .*, write: .*, read: .*}
  - {user: app, vhost: /, configure: .*, write: .*, read: .*}
`

const appReadOnly = reloadBase + `permissions:
  - {user: guest, vhost: /, configure: .*, write: .*, read: .*}
  - {user: app, vhost: /, configure: "", write: "", read: .*}
`

// broken has an invalid regexp on line 11.
const broken = reloadBase + `permissions:
  - {user: guest, vhost: /, configure: .*, write: .*, read: .*}
  - {user: app, vhost: /, configure: "([", write: "", read: .*}
`

// declareResult declares a queue as app and returns the broker's verdict.
func declareResult(addr string) error {
	c, err := amqp091.Dial("amqp://app:pw@" + addr + "/")
	if err != nil {
		return err
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		return err
	}
	_, err = ch.QueueDeclare("reload-test", false, true, false, false, nil)
	return err
}

func isRefused(err error) bool {
	var ae *amqp091.Error
	return errors.As(err, &ae) && ae.Code == 403
}

func waitUntil(t *testing.T, what string, log *lockedBuffer, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s\n%s", what, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// run reloads on SIGHUP and when the file changes; a broken file is rejected with one log line
// naming the key and the line, and the running configuration stays.
func TestRunReload(t *testing.T) {
	t.Chdir(t.TempDir())
	path := filepath.Join(t.TempDir(), "warren.yaml")
	if err := os.WriteFile(path, []byte(appAllowed), 0o600); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	signals := make(chan os.Signal, 1)
	code := make(chan int, 1)
	var envMu sync.Mutex
	env := map[string]string{}
	lookupEnv := func(k string) (string, bool) {
		envMu.Lock()
		defer envMu.Unlock()
		return envMap(env)(k)
	}
	go func() {
		code <- run([]string{"-config", path}, lookupEnv, pw, signals)
		pw.Close()
	}()
	var log lockedBuffer
	addr := waitReady(t, pr, &log)
	if err := declareResult(addr); err != nil {
		t.Fatalf("before reload: %v", err)
	}

	// SIGHUP: the new permissions apply. They come from the environment, so that the file
	// watch has nothing to see and only the signal can reload them.
	envMu.Lock()
	env["WARREN_PERMISSIONS"] = `[{user: guest, vhost: /, configure: .*, write: .*, read: .*}, {user: app, vhost: /, configure: "", write: "", read: .*}]`
	envMu.Unlock()
	signals <- syscall.SIGHUP
	waitUntil(t, "write permission is gone", &log, func() bool { return isRefused(declareResult(addr)) })
	// The file says the same from now on (its watch may reload it; nothing changes).
	if err := os.WriteFile(path, []byte(appReadOnly), 0o600); err != nil {
		t.Fatal(err)
	}
	envMu.Lock()
	delete(env, "WARREN_PERMISSIONS")
	envMu.Unlock()

	// A broken file is rejected; the read-only permissions stay.
	if err := os.WriteFile(path, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	signals <- syscall.SIGHUP
	waitUntil(t, "the rejection is logged", &log, func() bool { return strings.Contains(log.String(), "config reload rejected") })
	line := ""
	for _, l := range strings.Split(log.String(), "\n") {
		if strings.Contains(l, "config reload rejected") {
			line = l
		}
	}
	if !strings.Contains(line, "permissions[1].configure") || !strings.Contains(line, "line 11") {
		t.Errorf("rejection does not name the key and line: %s", line)
	}
	if !isRefused(declareResult(addr)) {
		t.Fatal("configuration changed by a rejected reload")
	}

	// Saving a good file is picked up by the file watch, without a signal.
	if err := os.WriteFile(path, []byte(appAllowed), 0o600); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the watched file is reloaded", &log, func() bool { return declareResult(addr) == nil })

	signals <- syscall.SIGTERM
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("exit code %d\n%s", c, log.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop")
	}
}

// The real process reloads on SIGHUP (signal.Notify in main).
func TestBinaryReloadOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "warren.yaml")
	if err := os.WriteFile(path, []byte(appAllowed), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd, stderr := startWarrenProcess(t, dir, "-config", path)
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var log lockedBuffer
	addr := waitReady(t, stderr, &log)
	if _, _, err := net.SplitHostPort(addr); err != nil {
		t.Fatal(err)
	}
	if err := declareResult(addr); err != nil {
		t.Fatalf("before reload: %v", err)
	}
	// Replace the file by rename so the file watch may see it too; either way the SIGHUP reloads.
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(appReadOnly), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "SIGHUP applied the new permissions", &log, func() bool { return isRefused(declareResult(addr)) })
	if !strings.Contains(log.String(), "config reloaded") {
		t.Errorf("no reload log line:\n%s", log.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, log.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still running after SIGTERM")
	}
}

// startRun runs the broker in-process with the config file path, and returns its address, its
// log, and a function that stops it and checks the exit code.
func startRun(t *testing.T, path string) (addr string, log *lockedBuffer, stop func()) {
	t.Helper()
	pr, pw := io.Pipe()
	signals := make(chan os.Signal, 1)
	code := make(chan int, 1)
	go func() {
		code <- run([]string{"-config", path}, envMap(nil), pw, signals)
		pw.Close()
	}()
	log = &lockedBuffer{}
	addr = waitReady(t, pr, log)
	return addr, log, func() {
		signals <- syscall.SIGTERM
		select {
		case c := <-code:
			if c != 0 {
				t.Errorf("exit code %d\n%s", c, log.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("run did not stop")
		}
	}
}

// twoUsers configures users app and ops (no guest), both allowed on /, from anywhere.
const twoUsers = `amqp: {listen: "127.0.0.1:0"}
storage: {dir: ""}
loopback_users: []
permissions:
  - {user: app, vhost: /, configure: .*, write: .*, read: .*}
  - {user: ops, vhost: /, configure: .*, write: .*, read: .*}
users:
  - {name: app, password: pw}
`

const twoUsersRest = `  - {name: ops, password: pw}
`

// watchClose dials user and reports whether the broker ever closes that connection.
func watchClose(t *testing.T, addr, user string) (closed func() bool) {
	t.Helper()
	c := dialURL(t, "amqp://"+user+":pw@"+addr+"/")
	ch := c.NotifyClose(make(chan *amqp091.Error, 1))
	return func() bool {
		select {
		case e := <-ch:
			t.Logf("%s's connection closed: %v", user, e)
			return true
		default:
			return false
		}
	}
}

// waitReloaded waits until the log has n "config reloaded" lines.
func waitReloaded(t *testing.T, log *lockedBuffer, n int) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d reloads", n), log, func() bool { return strings.Count(log.String(), "config reloaded") >= n })
}

// Issue 23 finding 6: truncating config.yaml and writing it again 0.5 s later dropped every user
// and re-enabled guest/guest until the second write was read. The empty file is now rejected and
// nobody is ever dropped.
func TestReloadTruncatedFile(t *testing.T) {
	t.Chdir(t.TempDir())
	path := filepath.Join(t.TempDir(), "warren.yaml")
	full := twoUsers + twoUsersRest
	if err := os.WriteFile(path, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, log, stop := startRun(t, path)
	defer stop()
	appClosed, opsClosed := watchClose(t, addr, "app"), watchClose(t, addr, "ops")

	var guestIn atomic.Bool
	pollDone := make(chan struct{})
	pollStop := make(chan struct{})
	go func() {
		defer close(pollDone)
		for {
			select {
			case <-pollStop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if c, err := amqp091.Dial("amqp://guest:guest@" + addr + "/"); err == nil {
				guestIn.Store(true)
				c.Close()
			}
		}
	}()

	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if err := os.WriteFile(path, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	waitReloaded(t, log, 1) // the rewrite is read (it changes nothing)
	time.Sleep(100 * time.Millisecond)
	close(pollStop)
	<-pollDone

	if appClosed() || opsClosed() {
		t.Errorf("a user was dropped while the file was empty\n%s", log)
	}
	if guestIn.Load() {
		t.Errorf("guest/guest could log in while the file was empty\n%s", log)
	}
	if !strings.Contains(log.String(), "has no settings (empty, or only whitespace and comments)") {
		t.Errorf("the empty file was not rejected with a log line\n%s", log)
	}
}

// A file is read only once it has stopped changing: truncated, then written in two parts, 50 ms
// apart, the first part alone (valid YAML, without user ops) is never applied.
func TestReloadWaitsForQuietFile(t *testing.T) {
	t.Chdir(t.TempDir())
	path := filepath.Join(t.TempDir(), "warren.yaml")
	if err := os.WriteFile(path, []byte(twoUsers+twoUsersRest), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, log, stop := startRun(t, path)
	defer stop()
	opsClosed := watchClose(t, addr, "ops")

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if _, err := f.WriteString(twoUsers); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if _, err := f.WriteString(twoUsersRest); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	waitReloaded(t, log, 1)
	time.Sleep(100 * time.Millisecond)
	if opsClosed() {
		t.Errorf("the half-written file was applied\n%s", log)
	}
	if n := strings.Count(log.String(), "config reloaded"); n != 1 {
		t.Errorf("%d reloads for one save, want 1\n%s", n, log)
	}
}

// A reload that keeps none of the running users is rejected with one log line; a later good
// file is applied.
func TestReloadRemovingEveryUserRejected(t *testing.T) {
	t.Chdir(t.TempDir())
	path := filepath.Join(t.TempDir(), "warren.yaml")
	if err := os.WriteFile(path, []byte(twoUsers+twoUsersRest), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, log, stop := startRun(t, path)
	defer stop()
	appClosed := watchClose(t, addr, "app")
	noUsers := strings.Replace(twoUsers, "users:\n  - {name: app, password: pw}\n", "users: []\n", 1)
	if err := os.WriteFile(path, []byte(noUsers), 0o600); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the rejection is logged", log, func() bool { return strings.Contains(log.String(), "removes every user (app, ops)") })
	if strings.Count(log.String(), "config reload rejected") != 1 {
		t.Errorf("want exactly one rejection line\n%s", log)
	}
	if appClosed() {
		t.Errorf("app was dropped\n%s", log)
	}
	// Dropping one user of two is an ordinary reload.
	if err := os.WriteFile(path, []byte(twoUsers), 0o600); err != nil {
		t.Fatal(err)
	}
	waitReloaded(t, log, 1)
	if appClosed() {
		t.Errorf("app was dropped\n%s", log)
	}
}
