package node

import (
	"encoding/json"
	"github.com/warrenmq/warren/cluster"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/warrenmq/warren/ctl"
	"github.com/warrenmq/warren/server"
)

// startNode runs a broker (in memory, or on dir) with the management API and metrics on free
// ports, as main wires them.
func startNode(t testing.TB, dir string) (*server.Server, *HTTP) {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.Listen, cfg.DataDir = "127.0.0.1:0", dir
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Users[0].Tags = []string{"administrator"}
	s, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	h, err := ServeHTTP(s, HTTPOptions{ManagementListen: "127.0.0.1:0", PrometheusListen: "127.0.0.1:0", Logger: cfg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close(); _ = s.Close() })
	return s, h
}

func call(t *testing.T, method, url, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth("guest", "guest")
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	code, b := call(t, "GET", url, "")
	if code != 200 {
		t.Fatalf("GET %s: %d %s", url, code, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v in %s", url, err, b)
	}
}

// The management API drives the real broker: what clients do shows in it, and what it does
// reaches clients.
func TestManagementAgainstBroker(t *testing.T) {
	s, h := startNode(t, t.TempDir())
	api := "http://" + h.ManagementAddr().String()
	conn, err := amqp091.Dial("amqp://guest:guest@" + s.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("orders", true, false, false, false, amqp091.Table{"x-max-length": int32(100)}); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 3))
	for _, body := range []string{"one", "two", "three"} {
		if err := ch.Publish("", "orders", false, false, amqp091.Publishing{DeliveryMode: 2, Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
		<-confirms
	}

	var q struct {
		Name, VHost string
		Durable     bool
		Messages    int
		Arguments   map[string]any
		Stats       struct {
			Publish int `json:"publish"`
		} `json:"message_stats"`
	}
	getJSON(t, api+"/api/queues/%2F/orders", &q)
	if q.Name != "orders" || !q.Durable || q.Messages != 3 || q.Arguments["x-max-length"] != float64(100) || q.Stats.Publish != 3 {
		t.Fatalf("queue as the API shows it: %+v", q)
	}

	// basic.get through the API, requeued: the message stays, marked redelivered.
	code, b := call(t, "POST", api+"/api/queues/%2F/orders/get", `{"count":1,"ackmode":"ack_requeue_true","encoding":"auto"}`)
	if code != 200 || !strings.Contains(string(b), `"payload":"one"`) {
		t.Fatalf("get: %d %s", code, b)
	}
	m, ok, err := ch.Get("orders", true)
	if err != nil || !ok || string(m.Body) != "one" || !m.Redelivered {
		t.Fatalf("after the API's requeue the client gets %q redelivered=%v (%v %v)", m.Body, m.Redelivered, ok, err)
	}

	// Declare, bind and publish through the API; the client sees the message.
	if code, b := call(t, "PUT", api+"/api/exchanges/%2F/api.x", `{"type":"fanout","durable":true}`); code != 201 {
		t.Fatalf("declare exchange: %d %s", code, b)
	}
	if code, b := call(t, "POST", api+"/api/bindings/%2F/e/api.x/q/orders", `{"routing_key":"r"}`); code != 201 {
		t.Fatalf("bind: %d %s", code, b)
	}
	code, b = call(t, "POST", api+"/api/exchanges/%2F/api.x/publish", `{"routing_key":"r","payload":"from api","payload_encoding":"string","properties":{"delivery_mode":2}}`)
	if code != 200 || !strings.Contains(string(b), `"routed":true`) {
		t.Fatalf("publish: %d %s", code, b)
	}

	// The exchange counted the API's publish (publish_in and publish_out).
	var ex struct {
		Stats struct {
			In  int `json:"publish_in"`
			Out int `json:"publish_out"`
		} `json:"message_stats"`
	}
	getJSON(t, api+"/api/exchanges/%2F/api.x", &ex)
	if ex.Stats.In != 1 || ex.Stats.Out != 1 {
		t.Fatalf("exchange api.x message_stats: %+v, want publish_in 1, publish_out 1", ex.Stats)
	}

	// Purge through the API.
	if code, b := call(t, "DELETE", api+"/api/queues/%2F/orders/contents", ""); code != 204 {
		t.Fatalf("purge: %d %s", code, b)
	}
	if st, err := ch.QueueDeclarePassive("orders", true, false, false, false, nil); err != nil || st.Messages != 0 {
		t.Fatalf("after the API's purge: %+v %v", st, err)
	}

	// The overview counts what happened.
	var ov struct {
		ObjectTotals struct{ Queues, Connections, Exchanges int } `json:"object_totals"`
		Stats        struct {
			Publish int `json:"publish"`
			Confirm int `json:"confirm"`
		} `json:"message_stats"`
	}
	getJSON(t, api+"/api/overview", &ov)
	if ov.ObjectTotals.Queues != 1 || ov.ObjectTotals.Connections != 1 || ov.Stats.Publish != 3 || ov.Stats.Confirm != 3 {
		t.Fatalf("overview: %+v", ov)
	}

	// Metrics.
	resp, err := http.Get("http://" + h.PrometheusAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "warren_journal_fsync_seconds_count ") || strings.Contains(string(metrics), "warren_journal_fsync_seconds_count 0\n") {
		t.Errorf("/metrics has no timed journal commits:\n%s", metrics)
	}
	for _, want := range []string{"rabbitmq_queues 1", "rabbitmq_connections 1", `rabbitmq_global_messages_received_total{protocol="amqp091"} 3`, "rabbitmq_connections_opened_total 1"} {
		if !strings.Contains(string(metrics), want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// Closing the connection through the API reaches the client.
	var conns []struct{ Name string }
	getJSON(t, api+"/api/connections", &conns)
	if len(conns) != 1 {
		t.Fatalf("connections: %+v", conns)
	}
	closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
	req, _ := http.NewRequest("DELETE", api+"/api/connections/"+strings.ReplaceAll(conns[0].Name, " ", "%20"), nil)
	req.SetBasicAuth("guest", "guest")
	req.Header.Set("X-Reason", "maintenance")
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("close connection: %v %v", resp, err)
	}
	select {
	case e := <-closed:
		if e == nil || e.Code != amqp091.ConnectionForced || !strings.Contains(e.Reason, "maintenance") {
			t.Fatalf("client notified with %v, want 320 with the reason", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the client was not told its connection was closed")
	}
}

// warren ctl against a running node: status, a queue list, a purge.
func TestCtlAgainstBroker(t *testing.T) {
	s, h := startNode(t, "")
	conn, err := amqp091.Dial("amqp://guest:guest@" + s.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("ctl.q", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		if err := ch.Publish("", "ctl.q", false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ch.QueueDeclarePassive("ctl.q", false, false, false, false, nil); err != nil { // the publishes are in
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		var out, errOut strings.Builder
		if code := ctl.Run(append([]string{"-url", "http://" + h.ManagementAddr().String()}, args...), &out, &errOut); code != 0 {
			t.Fatalf("warren ctl %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
		}
		return out.String()
	}
	if out := run("list_queues", "name", "messages"); !strings.Contains(out, "ctl.q") || !strings.Contains(out, "4") {
		t.Fatalf("list_queues:\n%s", out)
	}
	if out := run("status"); !strings.Contains(out, "warren") {
		t.Fatalf("status:\n%s", out)
	}
	run("purge_queue", "ctl.q")
	if st, err := ch.QueueDeclarePassive("ctl.q", false, false, false, false, nil); err != nil || st.Messages != 0 {
		t.Fatalf("after purge_queue: %+v %v", st, err)
	}
}

// /api/queues shows a quorum queue's leader (and node) as a string, like RabbitMQ, also on a
// node that runs no replica or knows no leader yet: then the queue's home.
func TestShownLeader(t *testing.T) {
	tests := []struct {
		name string
		v    cluster.QuorumView
		want string
	}{
		{"leader known", cluster.QuorumView{Leader: "n2", Home: "n1", Members: []string{"n1", "n2"}}, "n2"},
		{"no local replica", cluster.QuorumView{Home: "n3", Members: []string{"n1", "n3"}}, "n3"},
		{"no home", cluster.QuorumView{Members: []string{"n1", "n3"}}, "n1"},
	}
	for _, tt := range tests {
		if got := shownLeader(tt.v); got != tt.want {
			t.Errorf("%s: shownLeader = %q, want %q", tt.name, got, tt.want)
		}
	}
}
