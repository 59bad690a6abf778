package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/server"
)

// This file holds RabbitMQ's definitions format (rabbitmqctl export_definitions): the JSON that
// `warren definitions import` reads and `export` writes, that load_definitions names, and whose
// sections (users, vhosts, permissions, policies, exchanges, queues, bindings) config.yaml uses
// with the same field names.

// definitions is a RabbitMQ definitions document.
type definitions struct {
	RabbitVersion    string          `json:"rabbit_version,omitempty" yaml:"-"`
	RabbitMQVersion  string          `json:"rabbitmq_version,omitempty" yaml:"-"`
	ProductName      string          `json:"product_name,omitempty" yaml:"-"`
	ProductVersion   string          `json:"product_version,omitempty" yaml:"-"`
	Users            []defUser       `json:"users" yaml:"users,omitempty"`
	VHosts           []defVHost      `json:"vhosts" yaml:"vhosts,omitempty"`
	Permissions      []defPermission `json:"permissions" yaml:"permissions,omitempty"`
	TopicPermissions []any           `json:"topic_permissions" yaml:"-"`
	Parameters       []defParameter  `json:"parameters" yaml:"-"`
	GlobalParameters []any           `json:"global_parameters" yaml:"-"`
	Policies         []defPolicy     `json:"policies" yaml:"policies,omitempty"`
	Queues           []defQueue      `json:"queues" yaml:"queues,omitempty"`
	Exchanges        []defExchange   `json:"exchanges" yaml:"exchanges,omitempty"`
	Bindings         []defBinding    `json:"bindings" yaml:"bindings,omitempty"`
}

type defUser struct {
	Name string `json:"name" yaml:"name"`
	// Password is Warren's convenience for config.yaml; RabbitMQ files carry password_hash.
	Password         string         `json:"password,omitempty" yaml:"password,omitempty"`
	PasswordHash     string         `json:"password_hash" yaml:"password_hash,omitempty"`
	HashingAlgorithm string         `json:"hashing_algorithm,omitempty" yaml:"hashing_algorithm,omitempty"`
	Tags             tagList        `json:"tags" yaml:"tags,flow"`
	Limits           map[string]any `json:"limits,omitempty" yaml:"limits,omitempty"`
}

// tagList reads tags as a list (RabbitMQ 3.9+) or a comma-separated string (older exports).
type tagList []string

func (t *tagList) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		*t = splitList(s)
		return nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return errors.New("tags: expected a list of strings or a comma-separated string")
	}
	*t = l
	return nil
}

func splitList(s string) []string {
	out := []string{}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

type defVHost struct {
	Name        string         `json:"name" yaml:"name"`
	Description string         `json:"description,omitempty" yaml:"description,omitempty"`
	Metadata    map[string]any `json:"metadata,omitempty" yaml:"-"`
	Tags        any            `json:"tags,omitempty" yaml:"-"`
	// Limits is Warren's config form ({max-connections: N, max-queues: N}); RabbitMQ 3.10 also
	// writes a list of pairs here, and the authoritative copy in parameters (vhost-limits).
	Limits       vhostLimits `json:"limits,omitempty" yaml:"limits,omitempty"`
	DefaultQueue string      `json:"default_queue_type,omitempty" yaml:"-"`
}

type vhostLimits map[string]any

// UnmarshalJSON keeps numbers as json.Number, as the rest of a definitions file is read, so
// that limitValue range-checks them.
func (l *vhostLimits) UnmarshalJSON(b []byte) error {
	m := map[string]any{}
	if unmarshalNumbers(b, &m) == nil {
		*l = m
		return nil
	}
	var pairs [][]any
	if err := unmarshalNumbers(b, &pairs); err != nil {
		return errors.New("limits: expected {max-connections: N, max-queues: N}")
	}
	for _, p := range pairs {
		if len(p) == 2 {
			if k, ok := p[0].(string); ok {
				m[k] = p[1]
			}
		}
	}
	*l = m
	return nil
}

type defPermission struct {
	User      string `json:"user" yaml:"user"`
	VHost     string `json:"vhost" yaml:"vhost"`
	Configure string `json:"configure" yaml:"configure"`
	Write     string `json:"write" yaml:"write"`
	Read      string `json:"read" yaml:"read"`
}

type defParameter struct {
	VHost     string         `json:"vhost"`
	Component string         `json:"component"`
	Name      string         `json:"name"`
	Value     map[string]any `json:"value"`
}

type defPolicy struct {
	VHost      string         `json:"vhost" yaml:"vhost"`
	Name       string         `json:"name" yaml:"name"`
	Pattern    string         `json:"pattern" yaml:"pattern"`
	ApplyTo    string         `json:"apply-to,omitempty" yaml:"apply-to,omitempty"`
	Definition map[string]any `json:"definition" yaml:"definition"`
	Priority   int            `json:"priority" yaml:"priority"`
}

type defQueue struct {
	Name       string         `json:"name" yaml:"name"`
	VHost      string         `json:"vhost" yaml:"vhost"`
	Durable    *bool          `json:"durable" yaml:"durable"`
	AutoDelete bool           `json:"auto_delete" yaml:"auto_delete"`
	Type       string         `json:"type,omitempty" yaml:"type,omitempty"`
	Arguments  map[string]any `json:"arguments" yaml:"arguments,omitempty"`
}

type defExchange struct {
	Name       string         `json:"name" yaml:"name"`
	VHost      string         `json:"vhost" yaml:"vhost"`
	Type       string         `json:"type" yaml:"type"`
	Durable    *bool          `json:"durable" yaml:"durable"`
	AutoDelete bool           `json:"auto_delete" yaml:"auto_delete"`
	Internal   bool           `json:"internal" yaml:"internal"`
	Arguments  map[string]any `json:"arguments" yaml:"arguments,omitempty"`
}

type defBinding struct {
	Source          string         `json:"source" yaml:"source"`
	VHost           string         `json:"vhost" yaml:"vhost"`
	Destination     string         `json:"destination" yaml:"destination"`
	DestinationType string         `json:"destination_type" yaml:"destination_type"`
	RoutingKey      string         `json:"routing_key" yaml:"routing_key"`
	Arguments       map[string]any `json:"arguments" yaml:"arguments,omitempty"`
}

// fieldError is a configuration error inside a list entry; path continues the key
// ("[2].limits.max-connections"), so that the loader can name the key and its line.
type fieldError struct {
	path string
	err  error
}

func (e *fieldError) Error() string { return strings.TrimPrefix(e.path, ".") + ": " + e.err.Error() }

// decodeList decodes a YAML or JSON list into entries of T with the definitions' field names,
// refusing unknown fields. Each entry goes through JSON so that YAML and JSON files are read by
// the same rules. item may rewrite an entry first (a vhost may be a bare name).
func decodeList[T any](raw any, item func(any) any) ([]T, error) {
	if raw == nil {
		return []T{}, nil
	}
	list, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("expected a list, got %s", describe(raw))
	}
	out := make([]T, 0, len(list))
	for i, x := range list {
		if item != nil {
			x = item(x)
		}
		if _, ok := x.(map[string]any); !ok {
			return nil, &fieldError{fmt.Sprintf("[%d]", i), fmt.Errorf("expected a map, got %s", describe(x))}
		}
		v, err := decodeEntry[T](x.(map[string]any))
		if err != nil {
			return nil, &fieldError{fmt.Sprintf("[%d]", i), jsonFieldError(err)}
		}
		out = append(out, v)
	}
	return out, nil
}

// decodeEntry decodes one entry strictly. A number or boolean given for a string field (a
// password or a vhost written without quotes in YAML) is taken as its text.
func decodeEntry[T any](m map[string]any) (T, error) {
	var v T
	for range len(m) + 1 {
		b, err := json.Marshal(m)
		if err != nil {
			return v, err
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		dec.UseNumber()
		err = dec.Decode(&v)
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Type.Kind() == reflect.String && (te.Value == "number" || te.Value == "bool") {
			if x, ok := m[te.Field]; ok {
				m[te.Field] = fmt.Sprint(x)
				v = *new(T)
				continue
			}
		}
		return v, err
	}
	return v, errors.New("cannot decode entry")
}

// jsonFieldError rewrites encoding/json's messages in the configuration's terms.
func jsonFieldError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("%s: expected %s, got a %s", te.Field, jsonKind(te.Type.String()), te.Value)
	}
	if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return fmt.Errorf("unknown key %s", f)
	}
	return errors.New(strings.TrimPrefix(err.Error(), "json: "))
}

func jsonKind(goType string) string {
	switch {
	case goType == "string":
		return "a string"
	case goType == "bool", goType == "*bool":
		return "true or false"
	case strings.HasPrefix(goType, "int"):
		return "a whole number"
	case strings.HasPrefix(goType, "map"):
		return "a map"
	case strings.HasPrefix(goType, "[]"), goType == "config.tagList":
		return "a list"
	}
	return goType
}

// toTable converts decoded JSON/YAML values to AMQP field-table values as RabbitMQ's importer
// does: whole numbers become long (int64), other numbers double, maps tables, lists arrays.
func toTable(m map[string]any) (amqp.Table, error) {
	if len(m) == 0 {
		return nil, nil
	}
	t := make(amqp.Table, len(m))
	for k, v := range m {
		x, err := toFieldValue(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		t[k] = x
	}
	return t, nil
}

func toFieldValue(v any) (any, error) {
	switch x := v.(type) {
	case nil, string, bool, int64, float64:
		return x, nil
	case int:
		return int64(x), nil
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i, nil
		}
		return x.Float64()
	case map[string]any:
		return toTable(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			var err error
			if out[i], err = toFieldValue(e); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unsupported value %v", v)
}

// fromTable is toTable's inverse for export.
func fromTable(t amqp.Table) map[string]any {
	out := make(map[string]any, len(t))
	for k, v := range t {
		out[k] = fromFieldValue(v)
	}
	return out
}

func fromFieldValue(v any) any {
	switch x := v.(type) {
	case amqp.Table:
		return fromTable(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = fromFieldValue(e)
		}
		return out
	case []byte:
		return string(x)
	}
	return v
}

// limitValue reads a RabbitMQ limit: a whole number, negative for none. Every source
// decodes numbers as json.Number (YAML values pass through JSON on the way).
func limitValue(v any) (server.Limit, error) {
	x, ok := v.(json.Number)
	if !ok {
		return server.Limit{}, fmt.Errorf("expected a whole number, got %s", describe(v))
	}
	n, err := x.Int64()
	if err != nil {
		return server.Limit{}, fmt.Errorf("%s is not a whole number", x)
	}
	return server.LimitOf(n), nil
}

func limits(m map[string]any, allowed ...string) (map[string]server.Limit, error) {
	out := map[string]server.Limit{}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !slices.Contains(allowed, k) {
			return nil, fmt.Errorf("unknown limit %q (allowed: %s)", k, strings.Join(allowed, ", "))
		}
		l, err := limitValue(m[k])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		out[k] = l
	}
	return out, nil
}

func unmarshalNumbers(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return d.Decode(v)
}

// --- sections to server configuration

func (u defUser) toServer() (server.User, error) {
	if u.HashingAlgorithm != "" && u.HashingAlgorithm != "rabbit_password_hashing_sha256" {
		return server.User{}, &fieldError{".hashing_algorithm", fmt.Errorf("%q is not supported (only rabbit_password_hashing_sha256)", u.HashingAlgorithm)}
	}
	if u.Name == "" {
		return server.User{}, &fieldError{".name", errors.New("must not be empty")}
	}
	if err := checkName(u.Name); err != nil {
		return server.User{}, err
	}
	if u.Password != "" && u.PasswordHash != "" {
		// Which one would log in is anybody's guess: refuse rather than pick.
		return server.User{}, &fieldError{".password_hash", fmt.Errorf("user %q has both password and password_hash; give one", u.Name)}
	}
	l, err := limits(u.Limits, "max-connections", "max-channels")
	if err != nil {
		return server.User{}, &fieldError{".limits", err}
	}
	tags := []string(u.Tags)
	if tags == nil {
		tags = []string{}
	}
	return server.User{Name: u.Name, Password: u.Password, PasswordHash: u.PasswordHash, Tags: tags,
		MaxConnections: l["max-connections"], MaxChannels: l["max-channels"]}, nil
}

func (v defVHost) toServer() (server.VHost, error) {
	if v.Name == "" {
		return server.VHost{}, &fieldError{".name", errors.New("must not be empty")}
	}
	if err := checkName(v.Name); err != nil {
		return server.VHost{}, err
	}
	l, err := limits(v.Limits, "max-connections", "max-queues")
	if err != nil {
		return server.VHost{}, &fieldError{".limits", err}
	}
	desc := v.Description
	if d, ok := v.Metadata["description"].(string); ok && desc == "" {
		desc = d
	}
	return server.VHost{Name: v.Name, Description: desc, MaxConnections: l["max-connections"], MaxQueues: l["max-queues"]}, nil
}

func orSlash(vhost string) string {
	if vhost == "" {
		return "/"
	}
	return vhost
}

func durable(b *bool) bool { return b == nil || *b }

func (x defExchange) toServer() (server.ExchangeDef, error) {
	if err := checkName(x.Name); err != nil {
		return server.ExchangeDef{}, err
	}
	args, err := toTable(x.Arguments)
	if err != nil {
		return server.ExchangeDef{}, &fieldError{".arguments", err}
	}
	return server.ExchangeDef{Name: x.Name, VHost: orSlash(x.VHost), Type: x.Type, Durable: durable(x.Durable),
		AutoDelete: x.AutoDelete, Internal: x.Internal, Arguments: args}, nil
}

func (q defQueue) toServer() (server.QueueDef, error) {
	if err := checkName(q.Name); err != nil {
		return server.QueueDef{}, err
	}
	args, err := toTable(q.Arguments)
	if err != nil {
		return server.QueueDef{}, &fieldError{".arguments", err}
	}
	if q.Type != "" && q.Type != "classic" {
		// RabbitMQ 3.10 writes the type beside the x-queue-type argument; keep them one.
		if args == nil {
			args = amqp.Table{}
		}
		if _, ok := args["x-queue-type"]; !ok {
			args["x-queue-type"] = q.Type
		}
	}
	return server.QueueDef{Name: q.Name, VHost: orSlash(q.VHost), Durable: durable(q.Durable), AutoDelete: q.AutoDelete, Arguments: args}, nil
}

func (b defBinding) toServer() (server.BindingDef, error) {
	args, err := toTable(b.Arguments)
	if err != nil {
		return server.BindingDef{}, &fieldError{".arguments", err}
	}
	dt := b.DestinationType
	if dt == "" {
		dt = "queue"
	}
	return server.BindingDef{VHost: orSlash(b.VHost), Source: b.Source, Destination: b.Destination, DestinationType: dt,
		RoutingKey: b.RoutingKey, Arguments: args}, nil
}

func (p defPolicy) toServer() (server.Policy, error) {
	if err := checkName(p.Name); err != nil {
		return server.Policy{}, err
	}
	var def map[string]any
	if p.Definition != nil {
		// Numbers arrive as json.Number; the server gets plain int64 and float64.
		def = make(map[string]any, len(p.Definition))
		for k, v := range p.Definition {
			def[k] = plainValue(v)
		}
	}
	return server.Policy{Name: p.Name, VHost: orSlash(p.VHost), Pattern: p.Pattern, ApplyTo: p.ApplyTo, Priority: p.Priority, Definition: def}, nil
}

// maxNameLen is the longest name of a user, vhost, exchange, queue or policy: clients send
// names as AMQP short strings. RabbitMQ 3.10 imports longer ones from definitions, making
// queues no client can name; Warren refuses the file instead.
const maxNameLen = 255

// checkName refuses a name no client could ever use.
func checkName(name string) error {
	if len(name) > maxNameLen {
		return &fieldError{".name", fmt.Errorf("%d bytes, longer than %d (an AMQP short string)", len(name), maxNameLen)}
	}
	return nil
}

func (p defPermission) toServer() server.Permission {
	return server.Permission{User: p.User, VHost: orSlash(p.VHost), Configure: p.Configure, Write: p.Write, Read: p.Read}
}

// convert maps each entry of list with f, naming the entry in errors.
func convert[D, S any](list []D, f func(D) (S, error)) ([]S, error) {
	out := make([]S, 0, len(list))
	for i, d := range list {
		s, err := f(d)
		if err != nil {
			var fe *fieldError
			if errors.As(err, &fe) {
				return nil, &fieldError{fmt.Sprintf("[%d]%s", i, fe.path), fe.err}
			}
			return nil, &fieldError{fmt.Sprintf("[%d]", i), err}
		}
		out = append(out, s)
	}
	return out, nil
}

func noErr[D, S any](f func(D) S) func(D) (S, error) {
	return func(d D) (S, error) { return f(d), nil }
}

// --- RabbitMQ definitions files

// readDefinitions parses a RabbitMQ definitions JSON file.
func readDefinitions(path string) (*definitions, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, jsonSyntaxError(b, err)
	}
	d := &definitions{}
	lists := map[string]func(any) error{
		"users":       func(v any) (err error) { d.Users, err = decodeList[defUser](v, nil); return },
		"vhosts":      func(v any) (err error) { d.VHosts, err = decodeList[defVHost](v, nil); return },
		"permissions": func(v any) (err error) { d.Permissions, err = decodeList[defPermission](v, nil); return },
		"parameters":  func(v any) (err error) { d.Parameters, err = decodeList[defParameter](v, nil); return },
		"policies":    func(v any) (err error) { d.Policies, err = decodeList[defPolicy](v, nil); return },
		"queues":      func(v any) (err error) { d.Queues, err = decodeList[defQueue](v, nil); return },
		"exchanges":   func(v any) (err error) { d.Exchanges, err = decodeList[defExchange](v, nil); return },
		"bindings":    func(v any) (err error) { d.Bindings, err = decodeList[defBinding](v, nil); return },
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch k {
		case "rabbit_version":
			_ = json.Unmarshal(raw[k], &d.RabbitVersion)
		case "rabbitmq_version":
			_ = json.Unmarshal(raw[k], &d.RabbitMQVersion)
		}
		dec, ok := lists[k]
		if !ok {
			continue // versions, topic_permissions, global_parameters: nothing Warren uses
		}
		var v any
		jd := json.NewDecoder(bytes.NewReader(raw[k]))
		jd.UseNumber()
		if err := jd.Decode(&v); err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		if err := dec(v); err != nil {
			return nil, inSection(k, err)
		}
	}
	for i, p := range d.Parameters {
		if p.Component != "vhost-limits" {
			return nil, &fieldError{fmt.Sprintf("parameters[%d].component", i), fmt.Errorf("%q is not supported (only vhost-limits)", p.Component)}
		}
	}
	return d, nil
}

// inSection makes err, from decoding or converting the entries of section k, an error about
// the key it names ("queues[2].name"), so that the line can be found.
func inSection(k string, err error) error {
	var fe *fieldError
	if errors.As(err, &fe) {
		return &fieldError{k + fe.path, fe.err}
	}
	return &fieldError{k, err}
}

// definitionsLine returns " (line N)" for the key that err names in the definitions file at
// path, or "" when it cannot tell. Only errors pay for it: the file is parsed again as YAML (of
// which JSON is a subset) to find the line.
func definitionsLine(path string, err error) string {
	var fe *fieldError
	if !errors.As(err, &fe) {
		return ""
	}
	b, rerr := os.ReadFile(path)
	if rerr != nil {
		return ""
	}
	var doc yaml.Node
	if yaml.Unmarshal(b, &doc) != nil || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return ""
	}
	f := &fileValues{lines: map[string]int{}}
	root := doc.Content[0]
	for i := 0; i+1 < len(root.Content); i += 2 {
		k := root.Content[i].Value
		f.lines[k] = root.Content[i].Line
		recordLines(f.lines, k, root.Content[i+1])
	}
	if line, ok := f.lineOf(strings.TrimPrefix(fe.path, ".")); ok {
		return fmt.Sprintf(" (line %d)", line)
	}
	return ""
}

func jsonSyntaxError(b []byte, err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line := 1 + bytes.Count(b[:se.Offset], []byte("\n"))
		return fmt.Errorf("line %d: %w", line, err)
	}
	return err
}

// apply merges the definitions into cfg. An entry replaces a configured one with the same
// identity (user name, vhost name, user and vhost of a permission, vhost and name of a policy,
// exchange or queue), as importing into RabbitMQ overwrites; other entries are added.
func (d *definitions) apply(cfg *server.Config) error {
	users, err := convert(d.Users, defUser.toServer)
	if err != nil {
		return inSection("users", err)
	}
	vhosts, err := convert(d.VHosts, defVHost.toServer)
	if err != nil {
		return inSection("vhosts", err)
	}
	for i, p := range d.Parameters {
		l, err := limits(p.Value, "max-connections", "max-queues")
		if err != nil {
			return &fieldError{fmt.Sprintf("parameters[%d].value", i), err}
		}
		found := false
		for j := range vhosts {
			if vhosts[j].Name == p.VHost {
				vhosts[j].MaxConnections, vhosts[j].MaxQueues = l["max-connections"], l["max-queues"]
				found = true
			}
		}
		if !found {
			return &fieldError{fmt.Sprintf("parameters[%d].vhost", i), fmt.Errorf("vhost-limits for vhost %q, which the file does not define", p.VHost)}
		}
	}
	exchanges, err := convert(d.Exchanges, defExchange.toServer)
	if err != nil {
		return inSection("exchanges", err)
	}
	queues, err := convert(d.Queues, defQueue.toServer)
	if err != nil {
		return inSection("queues", err)
	}
	bindings, err := convert(d.Bindings, defBinding.toServer)
	if err != nil {
		return inSection("bindings", err)
	}
	perms, _ := convert(d.Permissions, noErr(defPermission.toServer))
	policies, err := convert(d.Policies, defPolicy.toServer)
	if err != nil {
		return inSection("policies", err)
	}
	cfg.Users = merge(cfg.Users, users, func(u server.User) string { return u.Name })
	cfg.VHosts = merge(cfg.VHosts, vhosts, func(v server.VHost) string { return v.Name })
	cfg.Permissions = merge(cfg.Permissions, perms, func(p server.Permission) string { return p.User + "\x00" + p.VHost })
	cfg.Policies = merge(cfg.Policies, policies, func(p server.Policy) string { return p.VHost + "\x00" + p.Name })
	cfg.Exchanges = merge(cfg.Exchanges, exchanges, func(x server.ExchangeDef) string { return x.VHost + "\x00" + x.Name })
	cfg.Queues = merge(cfg.Queues, queues, func(q server.QueueDef) string { return q.VHost + "\x00" + q.Name })
	cfg.Bindings = append(cfg.Bindings, bindings...)
	return nil
}

// merge returns base with each entry of add replacing the first entry of the same identity, or
// appended when there is none. The index keeps it linear: a definitions file of 10,000 queues
// compared every entry with every other (50 million id strings built per load).
func merge[T any](base, add []T, id func(T) string) []T {
	out := append([]T(nil), base...)
	at := make(map[string]int, len(base)+len(add))
	for i := len(out) - 1; i >= 0; i-- {
		at[id(out[i])] = i // the first of duplicates wins
	}
	for _, a := range add {
		k := id(a)
		if i, ok := at[k]; ok {
			out[i] = a
			continue
		}
		at[k] = len(out)
		out = append(out, a)
	}
	return out
}

// exportDefinitions renders cfg as a RabbitMQ definitions document. Plain-text passwords are
// written as fresh salted rabbit_password_hashing_sha256 hashes.
func exportDefinitions(cfg *server.Config) (*definitions, error) {
	d := &definitions{
		RabbitVersion: "3.10.8", ProductName: "Warren", ProductVersion: server.Version,
		TopicPermissions: []any{}, GlobalParameters: []any{}, Parameters: []defParameter{},
		Users: []defUser{}, VHosts: []defVHost{}, Permissions: []defPermission{}, Policies: []defPolicy{},
		Queues: []defQueue{}, Exchanges: []defExchange{}, Bindings: []defBinding{},
	}
	for _, u := range cfg.Users {
		hash := u.PasswordHash
		if hash == "" && u.Password != "" {
			hash = server.NewPasswordHash(u.Password)
		}
		du := defUser{Name: u.Name, PasswordHash: hash, HashingAlgorithm: "rabbit_password_hashing_sha256", Tags: u.Tags, Limits: map[string]any{}}
		if du.Tags == nil {
			du.Tags = tagList{}
		}
		if n, ok := u.MaxConnections.Value(); ok {
			du.Limits["max-connections"] = n
		}
		if n, ok := u.MaxChannels.Value(); ok {
			du.Limits["max-channels"] = n
		}
		d.Users = append(d.Users, du)
	}
	for _, v := range cfg.VHosts {
		d.VHosts = append(d.VHosts, defVHost{Name: v.Name, Metadata: map[string]any{"description": v.Description, "tags": []string{}}})
		value := map[string]any{}
		if n, ok := v.MaxConnections.Value(); ok {
			value["max-connections"] = n
		}
		if n, ok := v.MaxQueues.Value(); ok {
			value["max-queues"] = n
		}
		if len(value) > 0 {
			d.Parameters = append(d.Parameters, defParameter{VHost: v.Name, Component: "vhost-limits", Name: "limits", Value: value})
		}
	}
	for _, p := range cfg.Permissions {
		d.Permissions = append(d.Permissions, defPermission{User: p.User, VHost: p.VHost, Configure: p.Configure, Write: p.Write, Read: p.Read})
	}
	for _, p := range cfg.Policies {
		applyTo := p.ApplyTo
		if applyTo == "" {
			applyTo = "all"
		}
		d.Policies = append(d.Policies, defPolicy{VHost: p.VHost, Name: p.Name, Pattern: p.Pattern, ApplyTo: applyTo, Definition: p.Definition, Priority: p.Priority})
	}
	for _, x := range cfg.Exchanges {
		dur := x.Durable
		d.Exchanges = append(d.Exchanges, defExchange{Name: x.Name, VHost: x.VHost, Type: x.Type, Durable: &dur, AutoDelete: x.AutoDelete, Internal: x.Internal, Arguments: fromTable(x.Arguments)})
	}
	for _, q := range cfg.Queues {
		dur := q.Durable
		typ := "classic"
		if t, ok := q.Arguments["x-queue-type"].(string); ok {
			typ = t
		}
		d.Queues = append(d.Queues, defQueue{Name: q.Name, VHost: q.VHost, Durable: &dur, AutoDelete: q.AutoDelete, Type: typ, Arguments: fromTable(q.Arguments)})
	}
	for _, b := range cfg.Bindings {
		d.Bindings = append(d.Bindings, defBinding{Source: b.Source, VHost: b.VHost, Destination: b.Destination, DestinationType: b.DestinationType, RoutingKey: b.RoutingKey, Arguments: fromTable(b.Arguments)})
	}
	return d, nil
}
