package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/server"
)

// realExport is `rabbitmqctl export_definitions` from RabbitMQ 3.10.8, reduced to one vhost
// (h9-shop) made for this test: users h9-app (password app-secret, user limits) and h9-ops
// (ops-secret, tags), vhost limits, permissions, two policies, exchanges of four types, queues
// with arguments (one quorum), queue and exchange bindings with arguments.
const realExport = "testdata/rabbitmq-3.10.8-definitions.json"

// startFromConfig loads a config file as the broker does and starts it on free ports.
func startFromConfig(t *testing.T, path string) *server.Server {
	t.Helper()
	s, err := Load([]string{"-config", path, "-listen", "127.0.0.1:0", "-data-dir", ""}, envMap(nil))
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

// checkImported verifies, with clients, everything the real export defines.
func checkImported(t *testing.T, srv *server.Server) {
	t.Helper()
	addr := srv.Addr().String()
	ops := dialURL(t, "amqp://h9-ops:ops-secret@"+addr+"/h9-shop")
	ch, err := ops.Channel()
	if err != nil {
		t.Fatal(err)
	}
	// Exchanges and queues exist with their types and arguments (a different declaration is 406).
	for _, x := range [][2]string{{"orders", "topic"}, {"orders.dlx", "fanout"}, {"orders.unrouted", "fanout"}, {"orders.audit", "headers"}} {
		if err := ch.ExchangeDeclarePassive(x[0], x[1], true, false, false, false, nil); err != nil {
			t.Fatalf("exchange %s: %v", x[0], err)
		}
	}
	if _, err := ch.QueueDeclare("orders.created", true, false, false, false, amqp091.Table{"x-max-length": int64(500), "x-overflow": "reject-publish"}); err != nil {
		t.Fatalf("orders.created with its arguments: %v", err)
	}
	if _, err := ch.QueueDeclare("orders.audit", true, false, false, false, amqp091.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatalf("quorum orders.audit: %v", err)
	}
	// Bindings: topic to a queue, exchange-to-exchange into a headers exchange with arguments.
	pub := func(key string, headers amqp091.Table) {
		if err := ch.Publish("orders", key, false, false, amqp091.Publishing{Headers: headers, Body: []byte(key)}); err != nil {
			t.Fatal(err)
		}
	}
	pub("order.created.eu", amqp091.Table{"priority": "high"})
	pub("order.created.us", nil)
	pub("nothing.binds.this", nil) // alternate-exchange policy on "orders" -> orders.unrouted
	depth := func(q string) int {
		st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		if err != nil {
			t.Fatalf("queue %s: %v", q, err)
		}
		return st.Messages
	}
	want := map[string]int{"orders.created": 2, "orders.audit": 1, "orders.unrouted": 1, "orders.dead": 0}
	for q, n := range want {
		if got := depth(q); got != n {
			t.Errorf("%s has %d messages, want %d", q, got, n)
		}
	}
	// Policy h9-orders-ttl (max-length 1000, dead-letter-exchange orders.dlx) on orders.*: a
	// rejected message goes to orders.dead through orders.dlx.
	m, ok, err := ch.Get("orders.created", false)
	if err != nil || !ok {
		t.Fatalf("get: %v %v", ok, err)
	}
	if err := m.Reject(false); err != nil {
		t.Fatal(err)
	}
	waitForDepth(t, depth, "orders.dead", 1)

	// Permissions: h9-app may use orders.* only, and no other vhost.
	app := dialURL(t, "amqp://h9-app:app-secret@"+addr+"/h9-shop")
	ach, err := app.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ach.QueueDeclare("orders.mine", true, false, false, false, nil); err != nil {
		t.Fatalf("h9-app declares orders.mine: %v", err)
	}
	_, err = ach.QueueDeclare("billing", true, false, false, false, nil)
	var ae *amqp091.Error
	if !errors.As(err, &ae) || ae.Code != 403 || ae.Reason != "ACCESS_REFUSED - access to queue 'billing' in vhost 'h9-shop' refused for user 'h9-app'" {
		t.Fatalf("h9-app declares billing: %v", err)
	}
	if _, err := amqp091.Dial("amqp://h9-app:wrong@" + addr + "/h9-shop"); err == nil {
		t.Fatal("wrong password accepted")
	}
	// User limits: h9-app has max-connections 10 (one is open).
	var extra []*amqp091.Connection
	for i := 0; i < 9; i++ {
		extra = append(extra, dialURL(t, "amqp://h9-app:app-secret@"+addr+"/h9-shop"))
	}
	_, err = amqp091.Dial("amqp://h9-app:app-secret@" + addr + "/h9-shop")
	if !errors.As(err, &ae) || ae.Code != 530 || !strings.Contains(ae.Reason, "user connection limit (10) is reached") {
		t.Fatalf("11th connection of h9-app: %v", err)
	}
	for _, c := range extra {
		c.Close()
	}
}

func waitForDepth(t *testing.T, depth func(string) int, q string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for depth(q) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%s never reached %d messages", q, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ImportDefinitions (`warren definitions import`) turns a real RabbitMQ export into config.yaml
// sections that recreate its users, vhosts, permissions, limits, exchanges, queues, bindings
// and policies.
func TestDefinitionsImportRealExport(t *testing.T) {
	out, err := ImportDefinitions(realExport, time.Now())
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	yamlText := string(out)
	for _, want := range []string{"password_hash: E54LOp9W1BsAjj7/zL1cgUDfifAY6KiFWDJKNm1ovHFzIJXf", "max-connections: 100", "apply-to: exchanges", "x-match: any"} {
		if !strings.Contains(yamlText, want) {
			t.Errorf("imported YAML lacks %q:\n%s", want, yamlText)
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte("loopback_users: []\n"+yamlText), 0o600); err != nil {
		t.Fatal(err)
	}
	checkImported(t, startFromConfig(t, path))
}

// load_definitions reads the same export directly.
func TestLoadDefinitionsRealExport(t *testing.T) {
	abs, err := filepath.Abs(realExport)
	if err != nil {
		t.Fatal(err)
	}
	path := writeConfig(t, "load_definitions: "+abs+"\n")
	checkImported(t, startFromConfig(t, path))
}

// export writes what import reads back: the same users (hashes verify the same passwords),
// vhosts with limits, permissions, policies and topology.
func TestDefinitionsExportRoundTrip(t *testing.T) {
	abs, _ := filepath.Abs(realExport)
	cfgPath := writeConfig(t, "users:\n  - {name: plain, password: pw, limits: {max-channels: 3}}\nload_definitions: "+abs+"\n")
	a, err := Load([]string{"-config", cfgPath}, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	out, err := ExportDefinitions(a)
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	var doc map[string]any
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("export is not JSON: %v", err)
	}
	for _, k := range []string{"users", "vhosts", "permissions", "parameters", "policies", "queues", "exchanges", "bindings"} {
		if _, ok := doc[k].([]any); !ok {
			t.Errorf("export lacks %s", k)
		}
	}
	exported := filepath.Join(t.TempDir(), "export.json")
	if err := os.WriteFile(exported, out, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := Load([]string{"-config", writeConfig(t, "users: []\nvhosts: [/]\npermissions: []\nload_definitions: "+exported+"\n")}, envMap(nil))
	if err != nil {
		t.Fatalf("re-importing the export: %v", err)
	}
	if len(a.Server.Users) != len(b.Server.Users) || len(a.Server.Permissions) != len(b.Server.Permissions) ||
		len(a.Server.Policies) != len(b.Server.Policies) || len(a.Server.Queues) != len(b.Server.Queues) ||
		len(a.Server.Exchanges) != len(b.Server.Exchanges) || len(a.Server.Bindings) != len(b.Server.Bindings) {
		t.Fatalf("round trip changed the counts:\n%+v\n%+v", a.Server, b.Server)
	}
	for _, u := range b.Server.Users {
		if u.Name == "plain" {
			if u.PasswordHash == "" || u.Password != "" {
				t.Errorf("plain password not exported as a hash: %+v", u)
			}
			if n, ok := u.MaxChannels.Value(); !ok || n != 3 {
				t.Errorf("user limit lost: %+v", u)
			}
		}
	}
	for _, v := range b.Server.VHosts {
		if v.Name == "h9-shop" {
			if n, _ := v.MaxQueues.Value(); n != 50 {
				t.Errorf("vhost limit lost: %+v", v)
			}
		}
	}
}

// The configuration example in README.md loads (with its TLS section left out: the certificate
// files are the reader's).
func TestREADMEConfigExample(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "```yaml\nusers:\n  - name: admin")
	if start < 0 {
		t.Fatal("README example not found")
	}
	body := text[start+len("```yaml\n"):]
	body = body[:strings.Index(body, "```")]
	body = body[:strings.Index(body, "\ntls:\n")]
	s, err := Load([]string{"-config", writeConfig(t, body)}, envMap(nil))
	if err != nil {
		t.Fatalf("README example: %v", err)
	}
	if len(s.Server.Users) != 3 || len(s.Server.Policies) != 1 || len(s.Server.Bindings) != 2 {
		t.Fatalf("README example parsed to %+v", s.Server)
	}
}

// Limits out of int64's range are refused, in JSON numbers (definitions) and in YAML floats
// (config), never wrapped into a negative "no limit".
func TestVHostLimitOutOfRange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "defs.json")
	if err := os.WriteFile(path, []byte(`{"vhosts": [{"name": "/", "limits": {"max-queues": 1e19}}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := readDefinitions(path)
	if err == nil {
		_, err = d.VHosts[0].toServer()
	}
	if err == nil {
		t.Fatal("max-queues 1e19 accepted")
	}
	cfg := writeConfig(t, "vhosts:\n  - {name: /, limits: {max-queues: 1e19}}\n")
	if _, err := Load([]string{"-config", cfg}, envMap(nil)); err == nil {
		t.Error("max-queues 1e19 as a YAML float accepted")
	}
}

// merge replaces by identity (the first entry with the same id, also one added earlier by the
// same call) and appends the rest in order.
func TestMerge(t *testing.T) {
	type e struct{ id, v string }
	id := func(x e) string { return x.id }
	base := []e{{"a", "1"}, {"b", "1"}, {"a", "dup"}}
	got := merge(base, []e{{"b", "2"}, {"c", "2"}, {"a", "2"}, {"c", "3"}}, id)
	want := []e{{"a", "2"}, {"b", "2"}, {"a", "dup"}, {"c", "3"}}
	if !slices.Equal(got, want) {
		t.Errorf("merge = %v, want %v", got, want)
	}
	if base[0].v != "1" {
		t.Error("merge changed its base")
	}
}

// merge is linear: loading a definitions file of 10,000 queues took seconds when every added
// entry was compared with every other, building two id strings per comparison.
func TestMergeLinear(t *testing.T) {
	const n = 2000
	add := make([]server.QueueDef, n)
	for i := range add {
		add[i] = server.QueueDef{Name: fmt.Sprintf("q%d", i), VHost: "/"}
	}
	id := func(q server.QueueDef) string { return q.VHost + "\x00" + q.Name }
	allocs := testing.AllocsPerRun(3, func() { merge(nil, add, id) })
	if allocs > 10*n {
		t.Errorf("merging %d queues made %.0f allocations; more than %d means it is not linear", n, allocs, 10*n)
	}
}

// Issue 23 finding 8: a definitions file with names no client can send (over 255 bytes) or a user
// with both password and password_hash is refused, naming the key and its line, by
// load_definitions and by `warren definitions import` alike.
func TestDefinitionsRefused(t *testing.T) {
	long := func(c string, n int) string { return strings.Repeat(c, n) }
	tests := []struct {
		name, body string
		want       []string
	}{
		{"long queue name", `{
  "queues": [
    {"name": "ok", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}},
    {"name": "` + long("q", 256) + `", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}
  ]
}`, []string{"queues[1].name: 256 bytes, longer than 255 (an AMQP short string) (line 4)"}},
		{"long exchange name", `{"exchanges": [
  {"name": "` + long("x", 300) + `", "vhost": "/", "type": "direct", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}
]}`, []string{"exchanges[0].name: 300 bytes", "(line 2)"}},
		{"long user name", `{"users": [
  {"name": "` + long("u", 256) + `", "password_hash": "", "tags": []}
]}`, []string{"users[0].name: 256 bytes", "(line 2)"}},
		{"long vhost name", `{"vhosts": [
  {"name": "/"},
  {"name": "` + long("v", 256) + `"}
]}`, []string{"vhosts[1].name: 256 bytes", "(line 3)"}},
		{"long policy name", `{"vhosts": [{"name": "/"}], "policies": [
  {"vhost": "/", "name": "` + long("p", 256) + `", "pattern": ".", "apply-to": "queues", "definition": {"max-length": 1}, "priority": 0}
]}`, []string{"policies[0].name: 256 bytes", "(line 2)"}},
		{"password and hash", `{"users": [
  {
    "name": "a",
    "password": "x",
    "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
    "tags": []
  }
]}`, []string{`users[0].password_hash: user "a" has both password and password_hash; give one (line 5)`}},
		{"unknown parameter component", `{"vhosts": [{"name": "/"}],
  "parameters": [{"vhost": "/", "component": "federation-upstream", "name": "x", "value": {}}]}`,
			[]string{`parameters[0].component: "federation-upstream" is not supported (only vhost-limits) (line 2)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "defs.json")
			if err := os.WriteFile(path, []byte(tt.body), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load([]string{"-config", writeConfig(t, "load_definitions: "+path+"\n")}, envMap(nil))
			if err == nil {
				t.Fatal("load_definitions accepted it")
			}
			for _, w := range append([]string{"config: load_definitions: " + path + ": "}, tt.want...) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("load_definitions: error %q does not contain %q", err, w)
				}
			}
			_, err = ImportDefinitions(path, time.Now())
			if err == nil {
				t.Fatal("import accepted it")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("import: error %q does not contain %q", err, w)
				}
			}
		})
	}
	// 255 bytes is a name a client can send.
	path := filepath.Join(t.TempDir(), "defs.json")
	body := `{"queues": [{"name": "` + long("q", 255) + `", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}]}`
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Load([]string{"-config", writeConfig(t, "load_definitions: "+path+"\n")}, envMap(nil))
	if err != nil || len(s.Server.Queues) != 1 {
		t.Fatalf("a 255-byte queue name: %v", err)
	}
}

// The server is given plain numbers, never json.Number: policy definitions from config.yaml and
// from definitions files alike.
func TestPolicyDefinitionTyped(t *testing.T) {
	abs, err := filepath.Abs(realExport)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Load([]string{"-config", writeConfig(t, "policies:\n  - {name: p, pattern: ., definition: {max-length: 5, redelivery-backoff: 1.5}}\nload_definitions: "+abs+"\n")}, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	var check func(path string, v any)
	check = func(path string, v any) {
		switch x := v.(type) {
		case json.Number:
			t.Errorf("%s is a json.Number (%s)", path, x)
		case map[string]any:
			for k, e := range x {
				check(path+"."+k, e)
			}
		case []any:
			for i, e := range x {
				check(fmt.Sprintf("%s[%d]", path, i), e)
			}
		}
	}
	if len(s.Server.Policies) < 2 {
		t.Fatalf("policies = %+v", s.Server.Policies)
	}
	for _, p := range s.Server.Policies {
		check(p.Name, p.Definition)
	}
	if got := s.Server.Policies[0].Definition; got["max-length"] != int64(5) || got["redelivery-backoff"] != 1.5 {
		t.Errorf("definition = %#v", got)
	}
}
