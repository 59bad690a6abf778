package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCheckReload(t *testing.T) {
	t.Chdir(t.TempDir())
	load := func(body string) *Settings {
		t.Helper()
		s, err := Load([]string{"-config", writeConfig(t, body)}, envMap(nil))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	running := load("users: [{name: app, password: pw}, {name: ops, password: pw}]\nvhosts: [/, prod]\n")
	tests := []struct {
		name string
		next string
		want string // "" for accepted
	}{
		{"same", "users: [{name: app, password: pw}, {name: ops, password: pw}]\nvhosts: [/, prod]\n", ""},
		{"one user and one vhost left", "users: [{name: ops, password: pw}, {name: new, password: pw}]\nvhosts: [prod]\n", ""},
		{"empty file", "", "has no settings (empty, or only whitespace and comments); a reload does not turn it into the defaults"},
		{"whitespace only", " \n\n  \n", "has no settings"},
		{"comments only", "# users:\n#   - {name: app}\n", "has no settings"},
		{"no users", "users: []\nvhosts: [/, prod]\n", "removes every user (app, ops)"},
		{"other users only", "users: [{name: guest, password: guest}]\nvhosts: [/, prod]\n", "removes every user (app, ops)"},
		{"other vhosts only", "users: [{name: app, password: pw}]\nvhosts: [staging]\n", "removes every vhost (/, prod)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckReload(running, load(tt.next))
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("rejected: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
	// Without a file (environment and flags only) there is nothing to be empty.
	noFile, err := Load(nil, envMap(map[string]string{"WARREN_USERS": "[{name: app, password: pw}]"}))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckReload(running, noFile); err != nil {
		t.Errorf("environment-only reload rejected: %v", err)
	}
}

// Watch reports a file once it has been quiet: five writes 20 ms apart are one report, made no
// sooner than quiet after the last write.
func TestWatchQuiet(t *testing.T) {
	path := filepath.Join(t.TempDir(), "warren.yaml")
	if err := os.WriteFile(path, []byte("log: {level: info}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	changed := make(chan struct{}, 1)
	const quiet = 500 * time.Millisecond
	stop, err := Watch(path, quiet, changed)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	var last time.Time
	for i := range 5 {
		last = time.Now() // before the write: the watcher's quiet period starts at its event
		if err := os.WriteFile(path, []byte(strings.Repeat("#\n", i)+"log: {level: info}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-changed:
		if waited := time.Since(last); waited < quiet {
			t.Errorf("reported %v after the last write, before %v of quiet", waited, quiet)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no report")
	}
	select {
	case <-changed:
		t.Error("a second report for one burst of writes")
	case <-time.After(2 * quiet):
	}
	// After stop, changes go nowhere.
	stop()
	if err := os.WriteFile(path, []byte("log: {level: debug}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
		t.Error("reported after stop")
	case <-time.After(2 * quiet):
	}
}
