package config

import (
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren/server"
)

// envMap turns a map into a lookupEnv function.
func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// writeConfig writes a YAML file into a temp dir and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "warren.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadConfig(t *testing.T) {
	// Run in an empty directory so the repo's config.yaml is not picked up as the default file.
	t.Chdir(t.TempDir())

	const fileBody = `
amqp:
  listen: 127.0.0.1:6000
storage:
  dir: /var/lib/warren
limits:
  frame_max: 65536
  channel_max: 100
  heartbeat: 30
  max_message_size: 1048576
  handshake_timeout: 3s
users:
  - name: admin
    password: s3cret
    tags: [administrator, monitoring]
  - name: app
    password_hash: "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
loopback_users: []
vhosts: [/, prod]
log:
  level: debug
  format: json
`
	file := writeConfig(t, fileBody)

	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, s *Settings)
	}{
		{
			name: "defaults with no file",
			check: func(t *testing.T, s *Settings) {
				want := Default()
				if !reflect.DeepEqual(*s, want) {
					t.Errorf("got %+v\nwant %+v", s, want)
				}
				if s.Server.Listen != "0.0.0.0:5672" || s.Server.DataDir != "./data" ||
					s.Server.FrameMax != 131072 || s.Server.ChannelMax != 2047 || s.Server.Heartbeat != 60 ||
					s.Server.MaxMessageSize != 134217728 || s.Server.HandshakeTimeout != 10*time.Second ||
					s.LogLevel != slog.LevelInfo || s.LogFormat != "text" || s.ConfigFile != "" {
					t.Errorf("unexpected defaults: %+v", s)
				}
				if len(s.Server.Users) != 1 || s.Server.Users[0].Name != "guest" || s.Server.Users[0].Password != "guest" {
					t.Errorf("default users = %+v", s.Server.Users)
				}
			},
		},
		{
			name: "file values",
			args: []string{"-config", file},
			check: func(t *testing.T, s *Settings) {
				want := server.DefaultConfig()
				want.Listen = "127.0.0.1:6000"
				want.DataDir = "/var/lib/warren"
				want.FrameMax = 65536
				want.ChannelMax = 100
				want.Heartbeat = 30
				want.MaxMessageSize = 1 << 20
				want.HandshakeTimeout = 3 * time.Second
				want.Users = []server.User{
					{Name: "admin", Password: "s3cret", Tags: []string{"administrator", "monitoring"}},
					{Name: "app", PasswordHash: "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR", Tags: []string{}},
				}
				want.LoopbackUsers = []string{}
				want.VHosts = []server.VHost{{Name: "/"}, {Name: "prod"}}
				if !reflect.DeepEqual(s.Server, want) {
					t.Errorf("got  %+v\nwant %+v", s.Server, want)
				}
				if s.LogLevel != slog.LevelDebug || s.LogFormat != "json" || s.ConfigFile != file {
					t.Errorf("log = %v %q, file %q", s.LogLevel, s.LogFormat, s.ConfigFile)
				}
			},
		},
		{
			name: "env overrides file",
			args: []string{"-config", file},
			env: map[string]string{
				"WARREN_AMQP_LISTEN":              "127.0.0.1:5673",
				"WARREN_STORAGE_DIR":              "/tmp/w",
				"WARREN_LIMITS_FRAME_MAX":         "8192",
				"WARREN_LIMITS_HANDSHAKE_TIMEOUT": "1m",
				"WARREN_VHOSTS":                   "/, a ,b",
				"WARREN_LOG_LEVEL":                "WARN",
			},
			check: func(t *testing.T, s *Settings) {
				if s.Server.Listen != "127.0.0.1:5673" || s.Server.DataDir != "/tmp/w" || s.Server.FrameMax != 8192 ||
					s.Server.HandshakeTimeout != time.Minute || s.LogLevel != slog.LevelWarn {
					t.Errorf("env not applied: %+v", s)
				}
				if !reflect.DeepEqual(s.Server.VHosts, []server.VHost{{Name: "/"}, {Name: "a"}, {Name: "b"}}) {
					t.Errorf("vhosts = %q", s.Server.VHosts)
				}
				if s.Server.ChannelMax != 100 || s.LogFormat != "json" {
					t.Errorf("file values lost: channel_max %d, format %q", s.Server.ChannelMax, s.LogFormat)
				}
			},
		},
		{
			name: "env without file",
			env:  map[string]string{"WARREN_LIMITS_HEARTBEAT": "0", "WARREN_LOOPBACK_USERS": "", "WARREN_STORAGE_DIR": ""},
			check: func(t *testing.T, s *Settings) {
				if s.Server.Heartbeat != 0 || len(s.Server.LoopbackUsers) != 0 || s.Server.DataDir != "" {
					t.Errorf("got heartbeat %d loopback %q dir %q", s.Server.Heartbeat, s.Server.LoopbackUsers, s.Server.DataDir)
				}
			},
		},
		{
			name: "flags override env",
			args: []string{"-config", file, "-listen", "127.0.0.1:0", "-data-dir", "/tmp/flag"},
			env:  map[string]string{"WARREN_AMQP_LISTEN": "127.0.0.1:5673", "WARREN_STORAGE_DIR": "/tmp/w"},
			check: func(t *testing.T, s *Settings) {
				if s.Server.Listen != "127.0.0.1:0" || s.Server.DataDir != "/tmp/flag" {
					t.Errorf("flags not applied: listen %q dir %q", s.Server.Listen, s.Server.DataDir)
				}
			},
		},
		{
			name: "pprof endpoint from file, off by default",
			args: []string{"-config", writeConfig(t, "debug:\n  pprof_listen: 127.0.0.1:6060\n")},
			check: func(t *testing.T, s *Settings) {
				if s.PprofListen != "127.0.0.1:6060" || Default().PprofListen != "" {
					t.Errorf("pprof_listen = %q, default %q", s.PprofListen, Default().PprofListen)
				}
			},
		},
		{
			name: "users from env as YAML flow list",
			env:  map[string]string{"WARREN_USERS": "[{name: ops, password: pw, tags: [administrator]}, {name: bot, password: 123}]"},
			check: func(t *testing.T, s *Settings) {
				want := []server.User{
					{Name: "ops", Password: "pw", Tags: []string{"administrator"}},
					{Name: "bot", Password: "123", Tags: []string{}},
				}
				if !reflect.DeepEqual(s.Server.Users, want) {
					t.Errorf("users = %+v", s.Server.Users)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Load(tt.args, envMap(tt.env))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			tt.check(t, s)
		})
	}
}

func TestLoadConfigErrors(t *testing.T) {
	t.Chdir(t.TempDir())

	tests := []struct {
		name string
		file string // YAML; "" means no file
		env  map[string]string
		args []string
		want []string // substrings of the error
	}{
		{name: "unknown key", file: "amqp:\n  lisen: 1.2.3.4:5\n", want: []string{`config: unknown key "amqp.lisen"`, "line 2)"}},
		{name: "unknown top-level key", file: "storage_dir: x\n", want: []string{`unknown key "storage_dir"`}},
		{name: "section as scalar", file: "limits: 5\n", want: []string{`unknown key "limits"`}},
		{name: "unknown user field", file: "users:\n  - name: a\n    passwd: b\n", want: []string{"config: users: [0]: unknown key \"passwd\"", "line 2)"}},
		{name: "bad permission regexp", file: "permissions:\n  - user: guest\n    vhost: /\n    configure: .*\n    write: \"([\"\n    read: .*\n", want: []string{"config: permissions[0].write: invalid regular expression", "line 5)"}},
		{name: "bad policy value", file: "policies:\n  - name: p\n    pattern: .\n    definition:\n      max-length: lots\n", want: []string{"config: policies[0].definition.max-length: lots is not an integer", "line 5)"}},
		{name: "bad user limit", file: "users:\n  - name: a\n    password: x\n    limits: {max-connections: many}\n", want: []string{`config: users: [0].limits: max-connections: expected a whole number, got "many"`, "line 4)"}},
		{name: "queue with bad arguments", file: "queues:\n  - name: q\n    arguments: {x-max-length: -1}\n", want: []string{"config: queues[0].arguments: PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}", "line 3)"}},
		{name: "binding to nowhere", file: "bindings:\n  - {source: amq.direct, destination: q, destination_type: table}\n", want: []string{`config: bindings[0].destination_type: "table" is not queue or exchange`}},
		{name: "tls cert missing", file: "tls:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent-key.pem\n", want: []string{"config: tls.cert_file: loading /nonexistent.pem", "line 2)"}},
		{name: "bad tls bool", env: map[string]string{"WARREN_TLS_VERIFY_PEER": "maybe"}, want: []string{`config: tls.verify_peer: "maybe" is not true or false`}},
		{name: "load_definitions missing", file: "load_definitions: /nonexistent.json\n", want: []string{"config: load_definitions: /nonexistent.json: open /nonexistent.json"}},
		{name: "frame_max too small", file: "limits:\n  frame_max: 100\n", want: []string{"config: limits.frame_max: 100 is below 4096"}},
		{name: "frame_max too big", env: map[string]string{"WARREN_LIMITS_FRAME_MAX": "4294967296"}, want: []string{"limits.frame_max: 4294967296 is above 4294967295", "WARREN_LIMITS_FRAME_MAX"}},
		{name: "channel_max zero", file: "limits:\n  channel_max: 0\n", want: []string{"config: limits.channel_max: 0 is below 1"}},
		{name: "channel_max too big", file: "limits:\n  channel_max: 65536\n", want: []string{"limits.channel_max: 65536 is above 65535"}},
		{name: "heartbeat negative", file: "limits:\n  heartbeat: -1\n", want: []string{"config: limits.heartbeat: -1 is below 0"}},
		{name: "heartbeat not a number", env: map[string]string{"WARREN_LIMITS_HEARTBEAT": "60s"}, want: []string{`limits.heartbeat: "60s" is not a whole number`}},
		{name: "max_message_size text", file: "limits:\n  max_message_size: abc\n", want: []string{`config: limits.max_message_size: "abc" is not a whole number`}},
		{name: "max_message_size fraction", file: "limits:\n  max_message_size: 1.5\n", want: []string{"limits.max_message_size: 1.5 is not a whole number"}},
		{name: "max_message_size zero", file: "limits:\n  max_message_size: 0\n", want: []string{"limits.max_message_size: 0 is below 1"}},
		{name: "bad log level", file: "log:\n  level: verbose\n", want: []string{`config: log.level: "verbose" is not one of debug, info, warn, error`}},
		{name: "bad log format", env: map[string]string{"WARREN_LOG_FORMAT": "xml"}, want: []string{`config: log.format: "xml" is not one of text, json`}},
		{name: "bad pprof listen", env: map[string]string{"WARREN_DEBUG_PPROF_LISTEN": "6060"}, want: []string{`config: debug.pprof_listen: "6060" is not host:port`}},
		{name: "bad duration", file: "limits:\n  handshake_timeout: soon\n", want: []string{`config: limits.handshake_timeout: "soon" is not a duration`}},
		{name: "duration without unit", file: "limits:\n  handshake_timeout: 10\n", want: []string{`limits.handshake_timeout: "10" is not a duration`}},
		{name: "negative duration", file: "limits:\n  handshake_timeout: -1s\n", want: []string{"limits.handshake_timeout: -1s must be positive"}},
		{name: "bad listen", args: []string{"-listen", "5672"}, want: []string{`config: amqp.listen: "5672" is not host:port (from flag -listen)`}},
		{name: "listen is a map", file: "amqp:\n  listen: {a: 1}\n", want: []string{`amqp.listen: expected a string, got a map`}},
		{name: "listen is a list", file: "amqp:\n  listen: [a]\n", want: []string{"amqp.listen: expected a string, got a list"}},
		{name: "watermark above one", file: "memory:\n  high_watermark: 1.5\n", want: []string{"config: memory.high_watermark: 1.5 must be above 0 and at most 1"}},
		{name: "watermark not a number", env: map[string]string{"WARREN_MEMORY_HIGH_WATERMARK": "lots"}, want: []string{`memory.high_watermark: "lots" is not a number`}},
		{name: "negative disk limit", file: "disk:\n  free_limit: -1\n", want: []string{"config: disk.free_limit: -1 is below 0"}},
		{name: "no vhosts", file: "vhosts: []\n", want: []string{"config: vhosts: at least one vhost is required"}},
		{name: "vhosts not a list", file: "vhosts: 5\n", want: []string{"vhosts: expected a list, got 5"}},
		{name: "empty vhost name", file: "vhosts: [/, \"\"]\n", want: []string{"config: vhosts: [1].name: must not be empty (from ", "line 1)"}},
		{name: "user without name", file: "users:\n  - password: x\n", want: []string{"config: users: [0].name: must not be empty", "line 2)"}},
		{name: "duplicate user", file: "users:\n  - {name: a, password: x}\n  - {name: a, password: y}\n", want: []string{`config: users[1]: user "a" is listed twice`, "line 3)"}},
		{name: "users not a list", file: "users:\n  guest: guest\n", want: []string{`config: users: expected a list, got a map`}},
		{name: "users env not YAML list", env: map[string]string{"WARREN_USERS": "guest:guest"}, want: []string{"config: users: expected a YAML list of users"}},
		{name: "key without value", file: "storage:\n  dir:\n", want: []string{"config: storage.dir: has no value"}},
		{name: "invalid YAML", file: "amqp: [\n", want: []string{"config: reading"}},
		{name: "missing -config file", args: []string{"-config", "/nonexistent/warren.yaml"}, want: []string{"config: reading /nonexistent/warren.yaml"}},
		{name: "unknown flag", args: []string{"-port", "1"}, want: []string{"config: flag provided but not defined: -port"}},
		{name: "stray argument", args: []string{"serve"}, want: []string{`config: unexpected argument "serve"`}},
		// Issue 23 finding 8: duplicate keys used to be read silently, the last one winning.
		{name: "duplicate section", file: "amqp:\n  listen: 127.0.0.1:1\namqp:\n  listen: 127.0.0.1:2\n", want: []string{`config: duplicate key "amqp" (in `, "line 3; first at line 1)"}},
		{name: "duplicate key", file: "limits:\n  frame_max: 8192\n  frame_max: 4096\n", want: []string{`config: duplicate key "limits.frame_max" (in `, "line 3; first at line 2)"}},
		{name: "duplicate key in other case", file: "log:\n  level: info\n  Level: debug\n", want: []string{`config: duplicate key "log.level"`, "line 3; first at line 2)"}},
		{name: "duplicate top-level list", file: "vhosts: [/]\nusers: []\nvhosts: [prod]\n", want: []string{`config: duplicate key "vhosts"`, "line 3; first at line 1)"}},
		{name: "duplicate user field", file: "users:\n  - name: a\n    password: x\n    password: y\n", want: []string{`config: duplicate key "users[0].password" (in `, "line 4; first at line 3)"}},
		{name: "duplicate queue argument", file: "queues:\n  - name: q\n    arguments:\n      x-max-length: 1\n      x-max-length: 2\n", want: []string{`config: duplicate key "queues[0].arguments.x-max-length"`, "line 5; first at line 4)"}},
		{name: "duplicate in environment list", env: map[string]string{"WARREN_USERS": "[{name: a, password: x, password: y}]"}, want: []string{"config: users:", `"password" already defined`, "WARREN_USERS"}},
		{name: "password and hash", file: "users:\n  - name: a\n    password: x\n    password_hash: \"kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR\"\n", want: []string{`config: users: [0].password_hash: user "a" has both password and password_hash; give one`, "line 4)"}},
		{name: "long queue name", file: "queues:\n  - name: q\n  - name: " + strings.Repeat("q", 256) + "\n", want: []string{"config: queues: [1].name: 256 bytes, longer than 255 (an AMQP short string)", "line 3)"}},
		{name: "long user name", file: "users:\n  - {name: " + strings.Repeat("u", 300) + ", password: x}\n", want: []string{"config: users: [0].name: 300 bytes, longer than 255", "line 2)"}},
		{name: "long vhost name", env: map[string]string{"WARREN_VHOSTS": "/," + strings.Repeat("v", 256)}, want: []string{"config: vhosts: [1].name: 256 bytes, longer than 255", "WARREN_VHOSTS"}},
		{name: "long exchange name", file: "exchanges:\n  - {name: " + strings.Repeat("x", 256) + ", type: direct}\n", want: []string{"config: exchanges: [0].name: 256 bytes", "line 2)"}},
		{name: "long policy name", file: "policies:\n  - {name: " + strings.Repeat("p", 256) + ", pattern: ., definition: {max-length: 1}}\n", want: []string{"config: policies: [0].name: 256 bytes", "line 2)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append([]string{"-config", writeConfig(t, tt.file)}, args...)
			}
			_, err := Load(args, envMap(tt.env))
			if err == nil {
				t.Fatalf("Load succeeded, want error containing %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoadConfigHelp(t *testing.T) {
	_, err := Load([]string{"-h"}, envMap(nil))
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v, want flag.ErrHelp", err)
	}
	var b strings.Builder
	Usage(&b)
	for _, k := range keys {
		if !strings.Contains(b.String(), envName(k.name)) {
			t.Errorf("usage does not mention %s", envName(k.name))
		}
	}
}

// TestDefaultConfigFile checks that the shipped config.yaml sets every key, to exactly the built-in
// defaults, and that it is read when -config is not given.
func TestDefaultConfigFile(t *testing.T) {
	t.Chdir("..") // the shipped file is at the repository root, next to main.go
	abs, err := filepath.Abs(defaultConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	file, err := readFile(abs)
	if err != nil {
		t.Fatalf("shipped %s: %v", defaultConfigFile, err)
	}
	for _, k := range keys {
		if _, ok := file.values[k.name]; !ok {
			t.Errorf("%s does not set %s", defaultConfigFile, k.name)
		}
	}

	s, err := Load(nil, envMap(nil)) // cwd is the repository root, so config.yaml is the default
	if err != nil {
		t.Fatal(err)
	}
	if s.ConfigFile != defaultConfigFile {
		t.Errorf("ConfigFile = %q, want %q", s.ConfigFile, defaultConfigFile)
	}
	s.ConfigFile = ""
	if want := Default(); !reflect.DeepEqual(*s, want) {
		t.Errorf("%s differs from the built-in defaults:\n got  %+v\n want %+v", defaultConfigFile, s, want)
	}
}

func TestEnvName(t *testing.T) {
	tests := map[string]string{
		"amqp.listen":      "WARREN_AMQP_LISTEN",
		"storage.dir":      "WARREN_STORAGE_DIR",
		"limits.frame_max": "WARREN_LIMITS_FRAME_MAX",
		"loopback_users":   "WARREN_LOOPBACK_USERS",
	}
	for k, want := range tests {
		if got := envName(k); got != want {
			t.Errorf("envName(%q) = %q, want %q", k, got, want)
		}
	}
}
