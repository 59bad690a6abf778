package main

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/config"
	"github.com/warrenmq/warren/server"
)

// envPrefix starts the variables a child warren process must not inherit from the test's environment.
const envPrefix = config.EnvPrefix

// realExport is a real `rabbitmqctl export_definitions` from RabbitMQ 3.10.8 (see package config's tests).
const realExport = "config/testdata/rabbitmq-3.10.8-definitions.json"

// envMap turns a map into a lookupEnv function.
// The HTTP listeners are off unless m sets them: their default ports (RabbitMQ's 15672 and
// 15692) may be taken, by RabbitMQ itself or by another test.
func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		if !ok && (k == envPrefix+"MANAGEMENT_LISTEN" || k == envPrefix+"PROMETHEUS_LISTEN") {
			return "", true
		}
		return v, ok
	}
}

// httpOff are the environment variables that turn the HTTP listeners off in a child broker.
var httpOff = []string{envPrefix + "MANAGEMENT_LISTEN=", envPrefix + "PROMETHEUS_LISTEN="}

// writeConfig writes a YAML file into a temp dir and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "warren.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startFromConfig loads a config file as the broker does and starts it on free ports.
func startFromConfig(t *testing.T, path string) *server.Server {
	t.Helper()
	s, err := config.Load([]string{"-config", path, "-listen", "127.0.0.1:0", "-data-dir", ""}, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	s.Server.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.New(s.Server)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

func dialURL(t *testing.T, url string) *amqp091.Connection {
	t.Helper()
	c, err := amqp091.Dial(url)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// `warren definitions import` writes the YAML of a real export to stdout or -o FILE, and
// `export` writes JSON that import reads back.
func TestDefinitionsCommand(t *testing.T) {
	var out, stderr bytes.Buffer
	if code := runDefinitionsCommand([]string{"import", realExport}, envMap(nil), &out, &stderr); code != 0 {
		t.Fatalf("import exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{"# Imported from rabbitmq-3.10.8-definitions.json (RabbitMQ 3.10.8)", "password_hash: E54LOp9W1BsAjj7/zL1cgUDfifAY6KiFWDJKNm1ovHFzIJXf", "max-connections: 100", "apply-to: exchanges", "x-match: any"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("imported YAML lacks %q:\n%s", want, out.String())
		}
	}
	yamlFile := filepath.Join(t.TempDir(), "imported.yaml")
	if code := runDefinitionsCommand([]string{"import", "-o", yamlFile, realExport}, envMap(nil), io.Discard, &stderr); code != 0 {
		t.Fatalf("import -o exit %d: %s", code, stderr.String())
	}
	if b, err := os.ReadFile(yamlFile); err != nil || !bytes.Equal(b, out.Bytes()) {
		t.Errorf("import -o wrote %d bytes (%v), stdout had %d", len(b), err, out.Len())
	}

	abs, _ := filepath.Abs(realExport)
	cfgPath := writeConfig(t, "load_definitions: "+abs+"\n")
	out.Reset()
	if code := runDefinitionsCommand([]string{"export", "-config", cfgPath}, envMap(nil), &out, &stderr); code != 0 {
		t.Fatalf("export exit %d: %s", code, stderr.String())
	}
	var doc map[string]any
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("export is not JSON: %v", err)
	}
	exported := filepath.Join(t.TempDir(), "export.json")
	if err := os.WriteFile(exported, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if code := runDefinitionsCommand([]string{"import", exported}, envMap(nil), io.Discard, &stderr); code != 0 {
		t.Fatalf("importing the export: exit %d: %s", code, stderr.String())
	}
	if code := runDefinitionsCommand([]string{"frobnicate"}, envMap(nil), io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), `unknown subcommand "frobnicate"`) {
		t.Errorf("unknown subcommand: exit %d, stderr %q", code, stderr.String())
	}
}

func TestDefinitionsImportErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, body, want string
	}{
		{"syntax", "{\n\"users\": [\n}", "line 3"},
		{"unknown user field", `{"users": [{"name": "a", "password_hash": "", "passwd": "x"}]}`, `users[0]: unknown key "passwd"`},
		{"other hashing", `{"users": [{"name": "a", "password_hash": "x", "hashing_algorithm": "rabbit_password_hashing_md5"}]}`, "users[0].hashing_algorithm"},
		{"bad regexp", `{"users": [{"name": "a", "password_hash": "", "tags": ""}], "vhosts": [{"name": "/"}], "permissions": [{"user": "a", "vhost": "/", "configure": "(", "write": "", "read": ""}]}`, "permissions[0].configure"},
		{"bad policy", `{"vhosts": [{"name": "/"}], "policies": [{"vhost": "/", "name": "p", "pattern": ".", "apply-to": "queues", "definition": {"message-ttl": -5}, "priority": 0}]}`, "policies[0].definition.message-ttl"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, stderr bytes.Buffer
			code := runDefinitionsCommand([]string{"import", write(tc.name+".json", tc.body)}, envMap(nil), &out, &stderr)
			if code != 1 || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, stderr %q; want 1 and %q", code, stderr.String(), tc.want)
			}
		})
	}
}

func TestPasswdCommand(t *testing.T) {
	var out, stderr bytes.Buffer
	if code := runPasswdCommand([]string{"s3cret"}, strings.NewReader(""), &out, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	hash := strings.TrimSpace(out.String())
	// The hash logs in: a broker configured with it accepts the password.
	path := writeConfig(t, "users:\n  - {name: app, password_hash: \""+hash+"\"}\npermissions:\n  - {user: app, vhost: /, configure: .*, write: .*, read: .*}\n")
	srv := startFromConfig(t, path)
	dialURL(t, "amqp://app:s3cret@"+srv.Addr().String()+"/")
	if _, err := amqp091.Dial("amqp://app:other@" + srv.Addr().String() + "/"); err == nil {
		t.Fatal("another password accepted")
	}
	out.Reset()
	if code := runPasswdCommand(nil, strings.NewReader("from-stdin\n"), &out, &stderr); code != 0 || len(strings.TrimSpace(out.String())) != 48 {
		t.Fatalf("stdin: exit %d, %q", code, out.String())
	}
	if code := runPasswdCommand(nil, strings.NewReader(""), &out, &stderr); code != 1 {
		t.Fatal("empty password accepted")
	}
}
