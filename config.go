package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/viper"

	"warren/server"
)

// defaultConfigFile is read when -config is not given, but only if it exists: a missing default
// file is not an error, so `go run .` works in an empty directory.
const defaultConfigFile = "config.yaml"

// envPrefix starts every environment variable that overrides a key (WARREN_AMQP_LISTEN, ...).
const envPrefix = "WARREN_"

// settings is everything loadConfig produces: the broker's configuration plus what main needs to
// build the logger (logging is not the server's concern).
type settings struct {
	Server     server.Config
	LogLevel   slog.Level
	LogFormat  string // "text" or "json"
	ConfigFile string // the file actually read; "" when none
	// PprofListen is the address of the net/http/pprof endpoint; "" (the default) serves none.
	PprofListen string
}

// key describes one configuration key: how to apply a raw value (from YAML, an environment
// variable or a flag) to settings. Raw values from the environment and flags are strings, so every
// setter accepts strings as well as the YAML-native type.
type key struct {
	name  string
	flag  string // command-line flag overriding the key, "" when none
	usage string
	set   func(s *settings, raw any) error
}

// keys is the complete list of configuration keys; anything else in a file is an error.
var keys = []key{
	{name: "amqp.listen", flag: "listen", usage: "AMQP listen address (host:port; port 0 picks a free one)",
		set: func(s *settings, raw any) error {
			v, err := toString(raw)
			if err != nil {
				return err
			}
			if _, _, err := net.SplitHostPort(v); err != nil {
				return fmt.Errorf("%q is not host:port", v)
			}
			s.Server.Listen = v
			return nil
		}},
	{name: "storage.dir", flag: "data-dir", usage: "Badger data directory (\"\" keeps everything in memory)",
		set: func(s *settings, raw any) error {
			v, err := toString(raw)
			s.Server.DataDir = v
			return err
		}},
	{name: "limits.frame_max", set: func(s *settings, raw any) error {
		v, err := toIntRange(raw, 4096, math.MaxUint32)
		s.Server.FrameMax = uint32(v)
		return err
	}},
	{name: "limits.channel_max", set: func(s *settings, raw any) error {
		v, err := toIntRange(raw, 1, math.MaxUint16)
		s.Server.ChannelMax = uint16(v)
		return err
	}},
	{name: "limits.heartbeat", set: func(s *settings, raw any) error {
		v, err := toIntRange(raw, 0, math.MaxUint16)
		s.Server.Heartbeat = uint16(v)
		return err
	}},
	{name: "limits.max_message_size", set: func(s *settings, raw any) error {
		v, err := toIntRange(raw, 1, math.MaxInt64)
		s.Server.MaxMessageSize = v
		return err
	}},
	{name: "limits.handshake_timeout", set: func(s *settings, raw any) error {
		v, err := toString(raw)
		if err != nil {
			return err
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration (examples: 10s, 1m30s)", v)
		}
		if d <= 0 {
			return fmt.Errorf("%s must be positive", d)
		}
		s.Server.HandshakeTimeout = d
		return nil
	}},
	{name: "memory.high_watermark", set: func(s *settings, raw any) error {
		v, err := toFloat(raw)
		if err == nil && (v <= 0 || v > 1) {
			err = fmt.Errorf("%v must be above 0 and at most 1 (a fraction of system RAM)", v)
		}
		s.Server.MemoryHighWatermark = v
		return err
	}},
	{name: "memory.limit", set: func(s *settings, raw any) error {
		v, err := toIntRange(raw, 0, math.MaxInt64)
		s.Server.MemoryLimit = v
		return err
	}},
	{name: "disk.free_limit", set: func(s *settings, raw any) error {
		v, err := toIntRange(raw, 0, math.MaxInt64)
		s.Server.DiskFreeLimit = v
		return err
	}},
	{name: "users", set: func(s *settings, raw any) error {
		users, err := toUsers(raw)
		s.Server.Users = users
		return err
	}},
	{name: "loopback_users", set: func(s *settings, raw any) error {
		v, err := toStringList(raw)
		s.Server.LoopbackUsers = v
		return err
	}},
	{name: "vhosts", set: func(s *settings, raw any) error {
		v, err := toStringList(raw)
		if err == nil && len(v) == 0 {
			err = errors.New("at least one vhost is required")
		}
		for _, h := range v {
			if h == "" {
				err = errors.New("vhost names must not be empty")
			}
		}
		s.Server.VHosts = v
		return err
	}},
	{name: "log.level", set: func(s *settings, raw any) error {
		v, err := toString(raw)
		if err != nil {
			return err
		}
		switch strings.ToLower(v) {
		case "debug":
			s.LogLevel = slog.LevelDebug
		case "info":
			s.LogLevel = slog.LevelInfo
		case "warn":
			s.LogLevel = slog.LevelWarn
		case "error":
			s.LogLevel = slog.LevelError
		default:
			return fmt.Errorf("%q is not one of debug, info, warn, error", v)
		}
		return nil
	}},
	{name: "debug.pprof_listen", set: func(s *settings, raw any) error {
		v, err := toString(raw)
		if err != nil || v == "" {
			s.PprofListen = ""
			return err
		}
		if _, _, err := net.SplitHostPort(v); err != nil {
			return fmt.Errorf("%q is not host:port", v)
		}
		s.PprofListen = v
		return nil
	}},
	{name: "log.format", set: func(s *settings, raw any) error {
		v, err := toString(raw)
		if err != nil {
			return err
		}
		switch v = strings.ToLower(v); v {
		case "text", "json":
			s.LogFormat = v
		default:
			return fmt.Errorf("%q is not one of text, json", v)
		}
		return nil
	}},
}

// envName is the environment variable that overrides a key: WARREN_ + upper case, '.' -> '_'.
func envName(k string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(k, ".", "_"))
}

// defaultSettings is what Warren runs with when nothing is configured.
func defaultSettings() settings {
	return settings{Server: server.DefaultConfig(), LogLevel: slog.LevelInfo, LogFormat: "text"}
}

// loadConfig builds the settings from, in increasing precedence: built-in defaults, the YAML file,
// WARREN_* environment variables (looked up with lookupEnv, normally os.LookupEnv) and the
// command-line flags in args. Errors name the offending key.
func loadConfig(args []string, lookupEnv func(string) (string, bool)) (settings, error) {
	fs := flag.NewFlagSet("warren", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // main prints usage itself; tests stay quiet
	configPath := fs.String("config", "", "YAML configuration file (default \"config.yaml\" if it exists)")
	flagValues := map[string]*string{}
	for _, k := range keys {
		if k.flag != "" {
			flagValues[k.name] = fs.String(k.flag, "", k.usage+" (overrides "+k.name+")")
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return settings{}, err
		}
		return settings{}, fmt.Errorf("config: %w", err)
	}
	if fs.NArg() > 0 {
		return settings{}, fmt.Errorf("config: unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	path := *configPath
	if !set["config"] {
		if _, err := os.Stat(defaultConfigFile); err == nil {
			path = defaultConfigFile
		}
	} else if path == "" {
		return settings{}, errors.New("config: -config needs a file name")
	}

	// Collect raw values layer by layer; a later layer replaces an earlier one.
	type rawValue struct {
		v      any
		source string
	}
	raw := map[string]rawValue{}
	if path != "" {
		file, err := readFile(path)
		if err != nil {
			return settings{}, err
		}
		for k, v := range file {
			raw[k] = rawValue{v, path}
		}
	}
	for _, k := range keys {
		if v, ok := lookupEnv(envName(k.name)); ok {
			raw[k.name] = rawValue{v, "environment variable " + envName(k.name)}
		}
		if k.flag != "" && set[k.flag] {
			raw[k.name] = rawValue{*flagValues[k.name], "flag -" + k.flag}
		}
	}

	s := defaultSettings()
	s.ConfigFile = path
	for _, k := range keys {
		r, ok := raw[k.name]
		if !ok {
			continue
		}
		if err := k.set(&s, r.v); err != nil {
			return settings{}, fmt.Errorf("config: %s: %w (from %s)", k.name, err, r.source)
		}
	}
	// Cross-field checks (and anything server adds later) are the server's; keep its wording.
	if err := s.Server.Validate(); err != nil {
		return settings{}, fmt.Errorf("config: %w", err)
	}
	return s, nil
}

// readFile reads a YAML file with viper and returns its values by key, rejecting unknown keys.
func readFile(path string) (map[string]any, error) {
	v := viper.New()
	v.SetConfigFile(path)
	v.SetConfigType("yaml") // whatever the extension, the format is YAML
	if err := v.ReadInConfig(); err != nil {
		return nil, fmt.Errorf("config: reading %s: %w", path, err)
	}
	known := map[string]bool{}
	sections := map[string]bool{}
	for _, k := range keys {
		known[k.name] = true
		if i := strings.IndexByte(k.name, '.'); i > 0 {
			sections[k.name[:i]] = true
		}
	}
	out := map[string]any{}
	all := v.AllKeys()
	sort.Strings(all) // report the first unknown key deterministically
	for _, k := range all {
		val := v.Get(k)
		switch {
		case known[k]:
			if val == nil {
				return nil, fmt.Errorf("config: %s: has no value (in %s)", k, path)
			}
			out[k] = val
		case sections[k] && isEmpty(val):
			// "limits:" with nothing under it: harmless.
		default:
			return nil, fmt.Errorf("config: unknown key %q (in %s)", k, path)
		}
	}
	return out, nil
}

func isEmpty(v any) bool {
	if v == nil {
		return true
	}
	m, ok := v.(map[string]any)
	return ok && len(m) == 0
}

// toString accepts a YAML scalar as a string. Numbers are allowed so that e.g. a vhost or a
// password written without quotes still works; maps and lists are not.
func toString(raw any) (string, error) {
	switch v := raw.(type) {
	case string:
		return v, nil
	case int, int64, uint64, float64, bool:
		return fmt.Sprint(v), nil
	}
	return "", fmt.Errorf("expected a string, got %s", describe(raw))
}

// toFloat accepts a YAML number or a decimal string.
func toFloat(raw any) (float64, error) {
	switch v := raw.(type) {
	case int:
		return float64(v), nil
	case int64:
		return float64(v), nil
	case uint64:
		return float64(v), nil
	case float64:
		return v, nil
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return 0, fmt.Errorf("%q is not a number", v)
		}
		return f, nil
	}
	return 0, fmt.Errorf("expected a number, got %s", describe(raw))
}

// toIntRange accepts a YAML integer or a decimal string and checks it against [lo, hi].
func toIntRange(raw any, lo, hi int64) (int64, error) {
	var n int64
	switch v := raw.(type) {
	case int:
		n = int64(v)
	case int64:
		n = v
	case uint64:
		if v > math.MaxInt64 {
			return 0, fmt.Errorf("%d is above %d", v, hi)
		}
		n = int64(v)
	case float64:
		if v != math.Trunc(v) || math.Abs(v) > 1<<53 {
			return 0, fmt.Errorf("%v is not a whole number", v)
		}
		n = int64(v)
	case string:
		var err error
		n, err = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%q is not a whole number", v)
		}
	default:
		return 0, fmt.Errorf("expected a whole number, got %s", describe(raw))
	}
	switch {
	case n < lo:
		return 0, fmt.Errorf("%d is below %d", n, lo)
	case n > hi:
		return 0, fmt.Errorf("%d is above %d", n, hi)
	}
	return n, nil
}

// toStringList accepts a YAML list of strings, or (from the environment or a flag) a string that
// is either comma-separated ("/,prod") or a YAML flow list ("[/, prod]"). An empty string is an
// empty list.
func toStringList(raw any) ([]string, error) {
	if s, ok := raw.(string); ok {
		s = strings.TrimSpace(s)
		if strings.HasPrefix(s, "[") {
			parsed, err := parseYAMLValue(s)
			if err != nil {
				return nil, err
			}
			return toStringList(parsed)
		}
		if s == "" {
			return []string{}, nil
		}
		parts := strings.Split(s, ",")
		for i := range parts {
			parts[i] = strings.TrimSpace(parts[i])
		}
		return parts, nil
	}
	list, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("expected a list of strings, got %s", describe(raw))
	}
	out := make([]string, 0, len(list))
	for i, item := range list {
		s, err := toString(item)
		if err != nil {
			return nil, fmt.Errorf("item %d: %w", i, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// userFields are the keys allowed in one entry of the users list.
var userFields = map[string]bool{"name": true, "password": true, "password_hash": true, "tags": true}

// toUsers accepts the YAML users list, or a string holding the same list in YAML flow style
// (for WARREN_USERS: '[{name: admin, password: s3cret, tags: [administrator]}]').
func toUsers(raw any) ([]server.User, error) {
	if s, ok := raw.(string); ok {
		parsed, err := parseYAMLValue(s)
		if err != nil {
			return nil, err
		}
		if _, isString := parsed.(string); isString {
			return nil, fmt.Errorf("expected a YAML list of users, got %q", s)
		}
		return toUsers(parsed)
	}
	if raw == nil {
		return []server.User{}, nil
	}
	list, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("expected a list of users, got %s", describe(raw))
	}
	users := make([]server.User, 0, len(list))
	seen := map[string]bool{}
	for i, item := range list {
		m, ok := item.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("[%d]: expected {name, password, password_hash, tags}, got %s", i, describe(item))
		}
		fields := make([]string, 0, len(m))
		for f := range m {
			fields = append(fields, f)
		}
		sort.Strings(fields)
		for _, f := range fields {
			if !userFields[strings.ToLower(f)] {
				return nil, fmt.Errorf("[%d]: unknown key %q (allowed: name, password, password_hash, tags)", i, f)
			}
		}
		var u server.User
		var err error
		for f, v := range m {
			switch strings.ToLower(f) {
			case "name":
				u.Name, err = toString(v)
			case "password":
				u.Password, err = toString(v)
			case "password_hash":
				u.PasswordHash, err = toString(v)
			case "tags":
				u.Tags, err = toStringList(v)
			}
			if err != nil {
				return nil, fmt.Errorf("[%d].%s: %w", i, strings.ToLower(f), err)
			}
		}
		switch {
		case u.Name == "":
			return nil, fmt.Errorf("[%d].name: must not be empty", i)
		case u.Password == "" && u.PasswordHash == "":
			return nil, fmt.Errorf("[%d] (%s): needs password or password_hash", i, u.Name)
		case seen[u.Name]:
			return nil, fmt.Errorf("[%d]: user %q is listed twice", i, u.Name)
		}
		seen[u.Name] = true
		if u.Tags == nil {
			u.Tags = []string{}
		}
		users = append(users, u)
	}
	return users, nil
}

// parseYAMLValue parses a YAML value given as a string (an environment variable's content).
func parseYAMLValue(s string) (any, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(strings.NewReader("value: " + s)); err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	return v.Get("value"), nil
}

// describe names a YAML value's kind for error messages.
func describe(v any) string {
	switch v.(type) {
	case nil:
		return "nothing"
	case map[string]any:
		return "a map"
	case []any:
		return "a list"
	case string:
		return fmt.Sprintf("%q", v)
	}
	return fmt.Sprintf("%v", v)
}

// newLogger builds the process logger from the log.* settings.
func newLogger(w io.Writer, s settings) *slog.Logger {
	opts := &slog.HandlerOptions{Level: s.LogLevel}
	if s.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// usage writes the command-line help.
func usage(w io.Writer) {
	fmt.Fprintf(w, `Usage: warren [flags]
       warren bench [bench flags]

Flags:
  -config FILE     YAML configuration file (default "config.yaml" if it exists)
  -listen ADDR     AMQP listen address, overrides amqp.listen
  -data-dir DIR    Badger data directory, overrides storage.dir

Every key can also be set with an environment variable: WARREN_ + the key in upper case with
'.' replaced by '_' (WARREN_AMQP_LISTEN, WARREN_LIMITS_FRAME_MAX, ...). Precedence, lowest
first: defaults, config file, environment, flags. Known keys:
`)
	for _, k := range keys {
		fmt.Fprintf(w, "  %-26s %s\n", k.name, envName(k.name))
	}
}
