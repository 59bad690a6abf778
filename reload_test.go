package main

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
		v, ok := env[k]
		return v, ok
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
