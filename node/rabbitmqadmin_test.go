package node

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// TestRabbitmqadminAgainstWarren runs RabbitMQ's own CLI, rabbitmqadmin (Debian's
// rabbitmq-server ships it), unchanged against a real Warren: list, declare, publish, get,
// purge, delete, close a client's connection, export. .ci/run installs it and sets
// WARREN_REQUIRE_RABBITMQADMIN=1, so that there it fails instead of skipping.
func TestRabbitmqadminAgainstWarren(t *testing.T) {
	admin, err := exec.LookPath("rabbitmqadmin")
	if err != nil {
		if os.Getenv("WARREN_REQUIRE_RABBITMQADMIN") != "" {
			t.Fatal("rabbitmqadmin not installed")
		}
		t.Skip("rabbitmqadmin not installed (apt-get install rabbitmq-server provides it)")
	}
	s, h := startNode(t, t.TempDir())
	host, port, _ := net.SplitHostPort(h.ManagementAddr().String())
	ra := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(admin, append([]string{"-H", host, "-P", port, "-u", "guest", "-p", "guest"}, args...)...).CombinedOutput()
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
	conn, err := amqp091.Dial("amqp://guest:guest@" + s.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("client.q", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Consume("client.q", "ctag-client", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}

	expect(ra("show", "overview"), "3.10.8", "warren")
	expect(ra("list", "queues", "name", "messages", "consumers"), "client.q")
	expect(ra("list", "exchanges"), "amq.topic")
	expect(ra("list", "connections"), "guest")
	expect(ra("list", "channels"), "guest")
	expect(ra("list", "consumers"), "ctag-client")
	expect(ra("list", "users"), "guest")
	expect(ra("declare", "queue", "name=adm", "durable=true", `arguments={"x-max-length": 5}`), "queue declared")
	expect(ra("declare", "exchange", "name=adm.x", "type=fanout"), "exchange declared")
	expect(ra("declare", "binding", "source=adm.x", "destination=adm", "routing_key=r"), "binding declared")
	expect(ra("list", "bindings"), "adm.x")
	expect(ra("publish", "exchange=adm.x", "routing_key=r", "payload=hello"), "Message published")
	expect(ra("publish", "routing_key=adm", "payload=second"), "Message published") // default exchange
	expect(ra("get", "queue=adm", "ackmode=ack_requeue_true", "count=2"), "hello", "second")
	st, err := ch.QueueDeclarePassive("adm", true, false, false, false, nil)
	if err != nil || st.Messages != 2 {
		t.Fatalf("queue adm as a client sees it: %+v %v, want 2 messages", st, err)
	}
	expect(ra("purge", "queue", "name=adm"), "queue purged")
	if st, err := ch.QueueDeclarePassive("adm", true, false, false, false, nil); err != nil || st.Messages != 0 {
		t.Fatalf("after purge: %+v %v", st, err)
	}
	file := filepath.Join(t.TempDir(), "defs.json")
	expect(ra("export", file), "Exported definitions")
	var defs struct {
		Queues []struct{ Name string } `json:"queues"`
	}
	raw, err := os.ReadFile(file)
	if err != nil || json.Unmarshal(raw, &defs) != nil {
		t.Fatalf("export: %v %s", err, raw)
	}
	found := false
	for _, q := range defs.Queues {
		found = found || q.Name == "adm"
	}
	if !found {
		t.Errorf("the durable queue adm is not in the exported definitions: %s", raw)
	}
	expect(ra("delete", "binding", "source=adm.x", "destination=adm", "destination_type=queue", "properties_key=r"), "binding deleted")
	expect(ra("delete", "queue", "name=adm"), "queue deleted")
	expect(ra("delete", "exchange", "name=adm.x"), "exchange deleted")

	closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
	name := strings.TrimSpace(ra("-f", "bash", "list", "connections", "name"))
	expect(ra("close", "connection", "name="+name), "connection closed")
	if e := <-closed; e == nil || e.Code != amqp091.ConnectionForced {
		t.Fatalf("client told %v, want 320", e)
	}
}
