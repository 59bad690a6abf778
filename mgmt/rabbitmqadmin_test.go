package mgmt

import (
	"encoding/json"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRabbitmqadmin runs RabbitMQ's own CLI, rabbitmqadmin (shipped with Debian's
// rabbitmq-server), unchanged against the API: list, declare, publish, get, purge, delete, close
// connection, export. It needs python3 and rabbitmqadmin on PATH.
func TestRabbitmqadmin(t *testing.T) {
	admin, err := exec.LookPath("rabbitmqadmin")
	if err != nil {
		t.Skip("rabbitmqadmin not installed (apt-get install rabbitmq-server provides it)")
	}
	f := newFake()
	srv := httptest.NewServer(NewHandler(f, Options{}))
	defer srv.Close()
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	ra := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(admin, append([]string{"-H", host, "-P", port, "-u", "guest", "-p", "guest"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("rabbitmqadmin %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	expect := func(out string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("output lacks %q:\n%s", w, out)
			}
		}
	}
	expect(ra("show", "overview"), "3.10.8")
	expect(ra("list", "queues"), "q1", "q2")
	expect(ra("list", "queues", "name", "messages", "consumers"), "| q1", "| q2")
	expect(ra("list", "exchanges"), "amq.topic", "ex1")
	expect(ra("list", "bindings"), "a.#")
	expect(ra("list", "connections"), "127.0.0.1")
	expect(ra("list", "channels"), "(2)")
	expect(ra("list", "consumers"), "ctag1")
	expect(ra("list", "vhosts"), "other")
	expect(ra("list", "users"), "guest", "administrator")
	expect(ra("list", "permissions"), "mgr")
	expect(ra("list", "policies"), "ttlpol")
	expect(ra("list", "nodes"), "warren@test")
	expect(ra("declare", "queue", "name=adm", "durable=false", `arguments={"x-max-length": 5}`), "queue declared")
	expect(ra("declare", "exchange", "name=adm.x", "type=fanout"), "exchange declared")
	expect(ra("declare", "binding", "source=adm.x", "destination=adm", "routing_key=r"), "binding declared")
	expect(ra("publish", "exchange=adm.x", "routing_key=r", "payload=hello"), "Message published")
	expect(ra("publish", "routing_key=adm", "payload=second"), "Message published") // default exchange
	expect(ra("get", "queue=adm", "ackmode=ack_requeue_true", "count=2"), "hello", "second")
	expect(ra("purge", "queue", "name=adm"), "queue purged")
	if q, _ := f.findQueueForTest("/", "adm"); q.Arguments["x-max-length"] != int64(5) {
		t.Errorf("arguments of the declared queue: %v", q.Arguments)
	}
	if n := f.readyCount("/", "adm"); n != 0 {
		t.Errorf("%d messages after purge", n)
	}
	expect(ra("delete", "binding", "source=adm.x", "destination=adm", "destination_type=queue", "properties_key=r"), "binding deleted")
	expect(ra("delete", "queue", "name=adm"), "queue deleted")
	expect(ra("delete", "exchange", "name=adm.x"), "exchange deleted")
	expect(ra("close", "connection", "name=127.0.0.1:33296 -> 127.0.0.1:5672"), "connection closed")
	if _, ok := f.closedReason("127.0.0.1:33296 -> 127.0.0.1:5672"); !ok {
		t.Error("connection not closed")
	}
	file := filepath.Join(t.TempDir(), "defs.json")
	expect(ra("export", file), "Exported definitions")
	raw, err := os.ReadFile(file)
	var defs map[string]any
	if err != nil || json.Unmarshal(raw, &defs) != nil || defs["exchanges"] == nil {
		t.Errorf("exported definitions: %v %s", err, raw)
	}
	// A refused configuration write is an error rabbitmqadmin shows, not a silent success.
	cmd := exec.Command(admin, "-H", host, "-P", port, "-u", "guest", "-p", "guest", "declare", "user", "name=x", "password=y", "tags=")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "config.yaml") {
		t.Errorf("declare user: %v\n%s", err, out)
	}
}
