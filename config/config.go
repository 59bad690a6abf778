package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/warrenmq/warren/server"
)

// defaultConfigFile is read when -config is not given, but only if it exists: a missing default
// file is not an error, so `go run .` works in an empty directory.
const defaultConfigFile = "config.yaml"

// EnvPrefix starts every environment variable that overrides a key (WARREN_AMQP_LISTEN, ...).
const EnvPrefix = "WARREN_"

// Settings is everything Load produces: the broker's configuration plus what main needs to
// build the logger and the debug endpoint (neither is the server's concern).
type Settings struct {
	// Server is the broker's configuration, validated by server.Config.Validate.
	Server server.Config
	// LogLevel is log.level; LogFormat is log.format, "text" or "json".
	LogLevel  slog.Level
	LogFormat string
	// ConfigFile is the file actually read; "" when none.
	ConfigFile string
	// PprofListen is the address of the net/http/pprof endpoint; "" (the default) serves none.
	PprofListen string
	// ManagementListen is the management HTTP API's address (management.listen; "" is off),
	// served over TLS with ManagementCertFile and ManagementKeyFile when both are set.
	ManagementListen                      string
	ManagementCertFile, ManagementKeyFile string
	// PrometheusListen is the address of /metrics (prometheus.listen; "" is off).
	PrometheusListen string
	// LoadDefinitions is a RabbitMQ definitions file merged into the configuration at start-up
	// and on every reload (RabbitMQ's load_definitions).
	LoadDefinitions string
	// Cluster is the cluster section; its zero value is a single node (see ClusterSettings).
	Cluster ClusterSettings

	// emptyFile is set when ConfigFile holds no settings at all (empty, or only whitespace and
	// comments): fine at start-up, suspicious on a reload (see CheckReload).
	emptyFile bool
}

// key describes one configuration key: how to apply a raw value (from YAML, an environment
// variable or a flag) to settings. Raw values from the environment and flags are strings, so every
// setter accepts strings as well as the YAML-native type.
type key struct {
	name  string
	flag  string // command-line flag overriding the key, "" when none
	usage string
	set   func(s *Settings, raw any) error
}

// keys is the complete list of configuration keys; anything else in a file is an error.
var keys = []key{
	withFlag(addrKey("amqp.listen", false, func(s *Settings) *string { return &s.Server.Listen }),
		"listen", "AMQP listen address (host:port; port 0 picks a free one)"),
	{name: "storage.dir", flag: "data-dir", usage: "Badger data directory (\"\" keeps everything in memory)",
		set: func(s *Settings, raw any) error {
			v, err := toString(raw)
			s.Server.DataDir = v
			return err
		}},
	{name: "limits.frame_max", set: func(s *Settings, raw any) error {
		v, err := toIntRange(raw, 4096, math.MaxUint32)
		s.Server.FrameMax = uint32(v)
		return err
	}},
	{name: "limits.channel_max", set: func(s *Settings, raw any) error {
		v, err := toIntRange(raw, 1, math.MaxUint16)
		s.Server.ChannelMax = uint16(v)
		return err
	}},
	{name: "limits.heartbeat", set: func(s *Settings, raw any) error {
		v, err := toIntRange(raw, 0, math.MaxUint16)
		s.Server.Heartbeat = uint16(v)
		return err
	}},
	{name: "limits.max_message_size", set: func(s *Settings, raw any) error {
		v, err := toIntRange(raw, 1, math.MaxInt64)
		s.Server.MaxMessageSize = v
		return err
	}},
	{name: "limits.handshake_timeout", set: func(s *Settings, raw any) error {
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
	{name: "memory.high_watermark", set: func(s *Settings, raw any) error {
		v, err := toFloat(raw)
		if err == nil && (v <= 0 || v > 1) {
			err = fmt.Errorf("%v must be above 0 and at most 1 (a fraction of system RAM)", v)
		}
		s.Server.MemoryHighWatermark = v
		return err
	}},
	{name: "memory.limit", set: func(s *Settings, raw any) error {
		v, err := toIntRange(raw, 0, math.MaxInt64)
		s.Server.MemoryLimit = v
		return err
	}},
	{name: "disk.free_limit", set: func(s *Settings, raw any) error {
		v, err := toIntRange(raw, 0, math.MaxInt64)
		s.Server.DiskFreeLimit = v
		return err
	}},
	{name: "limits.max_connections", set: func(s *Settings, raw any) error {
		v, err := toIntRange(raw, -1, math.MaxInt64)
		s.Server.MaxConnections = server.LimitOf(v)
		return err
	}},
	addrKey("tls.listen", false, func(s *Settings) *string { return &s.Server.TLS.Listen }),
	{name: "tls.cert_file", set: func(s *Settings, raw any) (err error) { s.Server.TLS.CertFile, err = toString(raw); return }},
	{name: "tls.key_file", set: func(s *Settings, raw any) (err error) { s.Server.TLS.KeyFile, err = toString(raw); return }},
	{name: "tls.ca_file", set: func(s *Settings, raw any) (err error) { s.Server.TLS.CAFile, err = toString(raw); return }},
	{name: "tls.verify_peer", set: func(s *Settings, raw any) (err error) { s.Server.TLS.VerifyPeer, err = toBool(raw); return }},
	{name: "tls.fail_if_no_peer_cert", set: func(s *Settings, raw any) (err error) {
		s.Server.TLS.FailIfNoPeerCert, err = toBool(raw)
		return
	}},
	{name: "consumer_timeout", set: func(s *Settings, raw any) error {
		// RabbitMQ's name and unit (milliseconds); 0 turns the check off.
		v, err := toIntRange(raw, 0, math.MaxUint32)
		s.Server.ConsumerTimeout = time.Duration(v) * time.Millisecond
		return err
	}},
	{name: "queue.max_ram_messages", set: func(s *Settings, raw any) error {
		v, err := toIntRange(raw, 1, math.MaxInt32)
		s.Server.MaxRAMMessages = int(v)
		return err
	}},
	sectionKey("users", "a YAML list of users", defUser.toServer, func(s *Settings) *[]server.User { return &s.Server.Users }),
	{name: "loopback_users", set: func(s *Settings, raw any) error {
		v, err := toStringList(raw)
		s.Server.LoopbackUsers = v
		return err
	}},
	{name: "vhosts", set: func(s *Settings, raw any) error {
		if str, ok := raw.(string); ok && !strings.HasPrefix(strings.TrimSpace(str), "[") {
			// WARREN_VHOSTS=/,staging: names only.
			names, err := toStringList(str)
			if err != nil {
				return err
			}
			raw = stringsToAny(names)
		}
		list, err := sectionList[defVHost](raw, "a YAML list of vhosts", func(x any) any {
			if name, ok := x.(string); ok {
				return map[string]any{"name": name} // a bare name is a vhost without limits
			}
			return x
		})
		if err != nil {
			return err
		}
		if len(list) == 0 {
			return errors.New("at least one vhost is required")
		}
		s.Server.VHosts, err = convert(list, defVHost.toServer)
		return err
	}},
	sectionKey("permissions", "a YAML list of permissions", noErr(defPermission.toServer), func(s *Settings) *[]server.Permission { return &s.Server.Permissions }),
	sectionKey("policies", "a YAML list of policies", defPolicy.toServer, func(s *Settings) *[]server.Policy { return &s.Server.Policies }),
	sectionKey("exchanges", "a YAML list of exchanges", defExchange.toServer, func(s *Settings) *[]server.ExchangeDef { return &s.Server.Exchanges }),
	sectionKey("queues", "a YAML list of queues", defQueue.toServer, func(s *Settings) *[]server.QueueDef { return &s.Server.Queues }),
	sectionKey("bindings", "a YAML list of bindings", defBinding.toServer, func(s *Settings) *[]server.BindingDef { return &s.Server.Bindings }),
	{name: "load_definitions", set: func(s *Settings, raw any) (err error) { s.LoadDefinitions, err = toString(raw); return }},
	{name: "log.level", set: func(s *Settings, raw any) error {
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
	addrKey("debug.pprof_listen", true, func(s *Settings) *string { return &s.PprofListen }),
	addrKey("management.listen", true, func(s *Settings) *string { return &s.ManagementListen }),
	{name: "management.tls.cert_file", set: func(s *Settings, raw any) (err error) { s.ManagementCertFile, err = toString(raw); return }},
	{name: "management.tls.key_file", set: func(s *Settings, raw any) (err error) { s.ManagementKeyFile, err = toString(raw); return }},
	addrKey("prometheus.listen", true, func(s *Settings) *string { return &s.PrometheusListen }),
	{name: "log.format", set: func(s *Settings, raw any) error {
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

// addrKey is a key holding a listen address, host:port, stored in *dst. With optional, "" is
// allowed and means "no listener".
func addrKey(name string, optional bool, dst func(*Settings) *string) key {
	return key{name: name, set: func(s *Settings, raw any) error {
		v, err := toString(raw)
		if err != nil {
			return err
		}
		if v != "" || !optional {
			if _, _, err := net.SplitHostPort(v); err != nil {
				return fmt.Errorf("%q is not host:port", v)
			}
		}
		*dst(s) = v
		return nil
	}}
}

// withFlag gives k a command-line flag that overrides it.
func withFlag(k key, flag, usage string) key {
	k.flag, k.usage = flag, usage
	return k
}

// envName is the environment variable that overrides a key: WARREN_ + upper case, '.' -> '_'.
func envName(k string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(k, ".", "_"))
}

// Default is what Warren runs with when nothing is configured.
func Default() Settings {
	return Settings{Server: server.DefaultConfig(), LogLevel: slog.LevelInfo, LogFormat: "text",
		ManagementListen: "0.0.0.0:15672", PrometheusListen: "0.0.0.0:15692", Cluster: ClusterSettings{NodeTimeout: DefaultNodeTimeout, QueueLeaderLocator: LocatorClientLocal}}
}

// Load builds the settings from, in increasing precedence: built-in defaults, the YAML file
// (-config, or ./config.yaml when it exists), WARREN_* environment variables (looked up with
// lookupEnv, normally os.LookupEnv), the command-line flags in args, and last the RabbitMQ
// definitions file named by load_definitions. Errors name the offending key and where it was set
// (file and line, environment variable or flag). -h gives an error matching flag.ErrHelp.
func Load(args []string, lookupEnv func(string) (string, bool)) (*Settings, error) {
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
			return nil, err
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("config: unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	path := *configPath
	if !set["config"] {
		if _, err := os.Stat(defaultConfigFile); err == nil {
			path = defaultConfigFile
		}
	} else if path == "" {
		return nil, errors.New("config: -config needs a file name")
	}

	// Collect raw values layer by layer; a later layer replaces an earlier one.
	type rawValue struct {
		v      any
		source string
	}
	raw := map[string]rawValue{}
	var file *fileValues
	if path != "" {
		var err error
		file, err = readFile(path)
		if err != nil {
			return nil, err
		}
		for k, v := range file.values {
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

	s := Default()
	s.ConfigFile = path
	s.emptyFile = file != nil && file.empty
	for _, k := range keys {
		r, ok := raw[k.name]
		if !ok {
			continue
		}
		if err := k.set(&s, r.v); err != nil {
			source := r.source
			if file != nil && r.source == path {
				key := k.name
				var fe *fieldError
				if errors.As(err, &fe) {
					key += fe.path
				}
				source = file.where(key)
			}
			return nil, fmt.Errorf("config: %s: %w (from %s)", k.name, err, source)
		}
	}
	if s.LoadDefinitions != "" {
		defs, err := readDefinitions(s.LoadDefinitions)
		if err == nil {
			err = defs.apply(&s.Server)
		}
		if err != nil {
			return nil, fmt.Errorf("config: load_definitions: %s: %w%s", s.LoadDefinitions, err, definitionsLine(s.LoadDefinitions, err))
		}
	}
	if ce := s.Cluster.validate(); ce != nil {
		where := ""
		if file != nil {
			where = " (" + file.where(ce.key) + ")"
		}
		return nil, fmt.Errorf("config: %w%s", ce, where)
	}
	// Cross-field checks (and anything server adds later) are the server's; keep its wording.
	if err := s.Server.Validate(); err != nil {
		var ce *server.ConfigError
		if file != nil && errors.As(err, &ce) && file.has(ce.Key) {
			return nil, fmt.Errorf("config: %w (%s)", err, file.where(ce.Key))
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	return &s, nil
}

// fileValues are the keys of a YAML file with their values and the line of every key and list
// entry (paths such as "limits.frame_max", "users[2].limits.max-connections").
type fileValues struct {
	path   string
	values map[string]any
	lines  map[string]int
	empty  bool // no YAML content: nothing but whitespace and comments
}

// where names a key's place in the file for error messages; for a key the file lacks (a
// default) the nearest enclosing key that it has.
func (f *fileValues) where(key string) string {
	if line, ok := f.lineOf(key); ok {
		return fmt.Sprintf("%s line %d", f.path, line)
	}
	return f.path
}

// lineOf is the line of key, or of the nearest enclosing key the file has.
func (f *fileValues) lineOf(key string) (int, bool) {
	for k := key; k != ""; {
		if line, ok := f.lines[k]; ok {
			return line, true
		}
		i := strings.LastIndexAny(k, ".[")
		if i <= 0 {
			break
		}
		k = k[:i]
	}
	return 0, false
}

func (f *fileValues) has(key string) bool {
	_, ok := f.lines[key]
	return ok
}

// readFile reads a YAML file and returns its values by key, rejecting unknown keys. It parses
// the YAML itself (viper lower-cases map keys, which would change queue arguments and binding
// headers, and keeps no line numbers).
func readFile(path string) (*fileValues, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: reading %s: %w", path, err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("config: reading %s: %w", path, err)
	}
	f := &fileValues{path: path, values: map[string]any{}, lines: map[string]int{}}
	if len(doc.Content) == 0 {
		f.empty = true
		return f, nil // an empty file sets nothing
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config: reading %s: line %d: expected a map of keys", path, root.Line)
	}
	known := map[string]bool{}
	sections := map[string]bool{}
	for _, k := range keys {
		known[k.name] = true
		for i := range len(k.name) {
			if k.name[i] == '.' {
				sections[k.name[:i]] = true
			}
		}
	}
	var walk func(prefix string, m *yaml.Node) error
	walk = func(prefix string, m *yaml.Node) error {
		for i := 0; i+1 < len(m.Content); i += 2 {
			kn, vn := m.Content[i], m.Content[i+1]
			name := strings.ToLower(kn.Value)
			if prefix != "" {
				name = prefix + "." + name
			}
			if first, dup := f.lines[name]; dup {
				// YAML forbids it, and the second would silently win (keys differing in case too).
				return fmt.Errorf("config: duplicate key %q (in %s line %d; first at line %d)", name, path, kn.Line, first)
			}
			f.lines[name] = kn.Line
			switch {
			case known[name]:
				if vn.Tag == "!!null" {
					return fmt.Errorf("config: %s: has no value (in %s line %d)", name, path, kn.Line)
				}
				if err := checkDuplicates(name, vn); err != nil {
					return fmt.Errorf("config: %w (in %s line %d; first at line %d)", err, path, err.line, err.first)
				}
				var v any
				if err := vn.Decode(&v); err != nil {
					return fmt.Errorf("config: %s: %w (in %s line %d)", name, err, path, kn.Line)
				}
				f.values[name] = v
				recordLines(f.lines, name, vn)
			case vn.Kind == yaml.MappingNode && (sections[name] || len(vn.Content) > 0):
				if err := walk(name, vn); err != nil {
					return err
				}
			case sections[name] && vn.Tag == "!!null":
				// "limits:" with nothing under it: harmless.
			default:
				return fmt.Errorf("config: unknown key %q (in %s line %d)", name, path, kn.Line)
			}
		}
		return nil
	}
	if err := walk("", root); err != nil {
		return nil, err
	}
	return f, nil
}

// duplicateError is a map key given twice inside a value (a user with two names).
type duplicateError struct {
	key         string
	line, first int
}

func (e *duplicateError) Error() string { return fmt.Sprintf("duplicate key %q", e.key) }

// checkDuplicates finds a map key given twice anywhere under n, whose path is path. Map keys
// inside values (queue arguments, policy definitions) are case-sensitive.
func checkDuplicates(path string, n *yaml.Node) *duplicateError {
	switch n.Kind {
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if err := checkDuplicates(fmt.Sprintf("%s[%d]", path, i), c); err != nil {
				return err
			}
		}
	case yaml.MappingNode:
		seen := make(map[string]int, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind != yaml.ScalarNode || k.Value == "<<" {
				continue // a merge key brings in keys that the map may override
			}
			p := path + "." + k.Value
			if first, dup := seen[k.Value]; dup {
				return &duplicateError{key: p, line: k.Line, first: first}
			}
			seen[k.Value] = k.Line
			if err := checkDuplicates(p, n.Content[i+1]); err != nil {
				return err
			}
		}
	}
	return nil
}

// recordLines notes the line of every list entry and map key under n.
func recordLines(lines map[string]int, path string, n *yaml.Node) {
	switch n.Kind {
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			lines[p] = c.Line
			recordLines(lines, p, c)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := path + "." + n.Content[i].Value
			lines[p] = n.Content[i].Line
			recordLines(lines, p, n.Content[i+1])
		}
	}
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

// sectionKey is the key of a config section holding a list of definitions records (D, as in
// RabbitMQ's definitions JSON) that conv turns into the server's entries, stored in dst.
func sectionKey[D, S any](name, what string, conv func(D) (S, error), dst func(*Settings) *[]S) key {
	return key{name: name, set: func(s *Settings, raw any) error {
		list, err := sectionList[D](raw, what, nil)
		if err != nil {
			return err
		}
		*dst(s), err = convert(list, conv)
		return err
	}}
}

// sectionList decodes a definitions section (users, vhosts, permissions, ...): a YAML list, or
// from the environment a string holding one in YAML flow style
// (WARREN_USERS='[{name: admin, password: s3cret, tags: [administrator]}]').
func sectionList[T any](raw any, what string, item func(any) any) ([]T, error) {
	if s, ok := raw.(string); ok {
		parsed, err := parseYAMLValue(s)
		if err != nil {
			return nil, err
		}
		if _, isList := parsed.([]any); !isList && parsed != nil {
			return nil, fmt.Errorf("expected %s, got %q", what, s)
		}
		raw = parsed
	}
	return decodeList[T](raw, item)
}

func stringsToAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// toBool accepts a YAML boolean or (from the environment) true/false.
func toBool(raw any) (bool, error) {
	switch v := raw.(type) {
	case bool:
		return v, nil
	case string:
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return false, fmt.Errorf("%q is not true or false", v)
		}
		return b, nil
	}
	return false, fmt.Errorf("expected true or false, got %s", describe(raw))
}

// parseYAMLValue parses a YAML value given as a string (an environment variable's content).
func parseYAMLValue(s string) (any, error) {
	var v any
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	return v, nil
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

// Usage writes the command-line help: the flags, and every key with its environment variable.
func Usage(w io.Writer) {
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
