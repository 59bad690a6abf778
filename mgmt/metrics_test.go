package mgmt

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

func scrape(t testing.TB, b Broker, path string) map[string]*dto.MetricFamily {
	t.Helper()
	w := httptest.NewRecorder()
	NewMetricsHandler(b).ServeHTTP(w, httptest.NewRequest("GET", path, nil))
	if w.Code != 200 {
		t.Fatalf("%s: %d %s", path, w.Code, w.Body.String())
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(w.Body)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return fams
}

// rabbitFamilies reads a testdata list of RabbitMQ's families: name -> "type labels".
func rabbitFamilies(t *testing.T, file string) map[string]string {
	f, err := os.Open(filepath.Join("testdata", "rabbitmq", file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		if strings.HasPrefix(s.Text(), "#") {
			continue
		}
		fields := strings.Fields(s.Text())
		labels := ""
		if len(fields) > 2 {
			labels = fields[2]
		}
		out[fields[0]] = fields[1] + " " + labels
	}
	return out
}

func familyShape(f *dto.MetricFamily) string {
	typ := strings.ToLower(f.GetType().String())
	keys := map[string]bool{}
	for _, m := range f.Metric {
		for _, l := range m.Label {
			keys[l.GetName()] = true
		}
	}
	var ks []string
	for k := range keys {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return typ + " " + strings.Join(ks, ",")
}

func value(f *dto.MetricFamily, labels ...string) (float64, bool) {
	for _, m := range f.Metric {
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			if !slices.ContainsFunc(m.Label, func(l *dto.LabelPair) bool { return l.GetName() == labels[i] && l.GetValue() == labels[i+1] }) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// TestMetricsMatchRabbitMQ checks that every rabbitmq_* family Warren exports exists in
// RabbitMQ's plugin with the same type and label names (so dashboards find them), that the
// families the issue lists are there, and a few values.
func TestMetricsMatchRabbitMQ(t *testing.T) {
	f := newFake()
	f.overview.Warren = WarrenStats{JournalCommits: 3, JournalCommitMessages: 30,
		Fsync: Histogram{Count: 3, Sum: 0.006, Buckets: map[float64]uint64{0.001: 1, 0.01: 3}}, PagedOutMessages: 7}
	for _, tc := range []struct{ path, golden string }{
		{"/metrics", "prometheus_metrics.txt"},
		{"/metrics/per-object", "prometheus_per_object.txt"},
	} {
		fams := scrape(t, f, tc.path)
		ref := rabbitFamilies(t, tc.golden)
		for name, fam := range fams {
			if !strings.HasPrefix(name, "rabbitmq_") {
				continue
			}
			want, ok := ref[name]
			if !ok {
				// RabbitMQ's /metrics/per-object has no channel totals of its own: check against /metrics.
				want, ok = rabbitFamilies(t, "prometheus_metrics.txt")[name]
			}
			if !ok {
				t.Errorf("%s: %s is not a RabbitMQ metric", tc.path, name)
				continue
			}
			if got := familyShape(fam); strings.TrimSpace(got) != strings.TrimSpace(want) {
				t.Errorf("%s: %s is %q, RabbitMQ's is %q", tc.path, name, got, want)
			}
		}
		for _, name := range []string{
			"rabbitmq_connections", "rabbitmq_channels", "rabbitmq_queues", "rabbitmq_queue_messages_ready",
			"rabbitmq_queue_messages_unacked", "rabbitmq_global_messages_received_total",
			"rabbitmq_global_messages_confirmed_total", "rabbitmq_global_messages_delivered_total",
			"rabbitmq_global_messages_acknowledged_total", "rabbitmq_global_messages_redelivered_total",
			"rabbitmq_resident_memory_limit_bytes", "rabbitmq_alarms_memory_used_watermark",
			"rabbitmq_alarms_free_disk_space_watermark", "rabbitmq_identity_info",
			"warren_journal_commit_messages_total", "warren_journal_fsync_seconds", "warren_messages_paged_out",
			"warren_flow_control_pauses_total", "go_goroutines",
		} {
			if fams[name] == nil {
				t.Errorf("%s: %s missing", tc.path, name)
			}
		}
	}
	agg := scrape(t, f, "/metrics")
	if v, _ := value(agg["rabbitmq_queue_messages_ready"]); v != 8 { // q1: 3, q2: 5
		t.Errorf("rabbitmq_queue_messages_ready = %v, want 8", v)
	}
	if v, _ := value(agg["rabbitmq_global_messages_received_total"], "protocol", "amqp091"); v != 10 {
		t.Errorf("received = %v, want 10", v)
	}
	if v, _ := value(agg["rabbitmq_connections"]); v != 1 {
		t.Errorf("connections = %v", v)
	}
	if h := agg["warren_journal_fsync_seconds"].Metric[0].Histogram; h.GetSampleCount() != 3 || len(h.Bucket) != 3 { // with +Inf
		t.Errorf("fsync histogram %v", h)
	}
	per := scrape(t, f, "/metrics/per-object")
	// Gzipped, as Prometheus asks for it.
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/metrics/per-object", nil)
	r.Header.Set("Accept-Encoding", "gzip, deflate")
	NewMetricsHandler(f).ServeHTTP(w, r)
	zr, err := gzip.NewReader(w.Body)
	if err != nil || w.Header().Get("Content-Encoding") != "gzip" {
		t.Fatalf("gzip: %v %v", err, w.Header())
	}
	var p expfmt.TextParser
	if fams, err := p.TextToMetricFamilies(zr); err != nil || fams["rabbitmq_queue_messages_ready"] == nil {
		t.Errorf("gzipped per-object: %v", err)
	}
	if v, ok := value(per["rabbitmq_queue_messages_ready"], "vhost", "/", "queue", "q1"); !ok || v != 3 {
		t.Errorf("per-object q1 ready = %v %v", v, ok)
	}
	f.overview.MemAlarm = true
	if v, _ := value(scrape(t, f, "/metrics")["rabbitmq_alarms_memory_used_watermark"]); v != 1 {
		t.Errorf("memory alarm = %v", v)
	}
}

// bigBroker is a fakeBroker with many prebuilt queues, for the scale benchmarks.
type bigBroker struct {
	*fakeBroker
	queues []QueueInfo
}

func (b *bigBroker) Queues(vhost string) []QueueInfo { return b.queues }

func newBig(n int) *bigBroker {
	b := &bigBroker{fakeBroker: newFake()}
	for i := range n {
		b.queues = append(b.queues, QueueInfo{VHost: "/", Name: fmt.Sprintf("queue-%06d", i), Durable: true,
			Messages: int64(i % 100), MessagesReady: int64(i % 100), Arguments: map[string]any{"x-max-length": int64(1000)}})
	}
	return b
}

// BenchmarkQueuesPage100k is one /api/queues page of 100 with 100,000 queues.
func BenchmarkQueuesPage100k(b *testing.B) {
	h := NewHandler(newBig(100_000), Options{})
	for b.Loop() {
		w := httptest.NewRecorder()
		r := httptest.NewRequest("GET", "/api/queues?page=7&page_size=100", nil)
		r.SetBasicAuth("guest", "guest")
		h.ServeHTTP(w, r)
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}

// BenchmarkPerObjectMetrics100k is one /metrics/per-object scrape with 100,000 queues, plain
// and gzipped as Prometheus asks.
func BenchmarkPerObjectMetrics100k(b *testing.B) {
	for _, enc := range []string{"identity", "gzip"} {
		b.Run(enc, func(b *testing.B) { benchPerObject(b, enc) })
	}
}

func benchPerObject(b *testing.B, encoding string) {
	h := NewMetricsHandler(newBig(100_000))
	var w countingWriter
	for b.Loop() {
		w = countingWriter{header: http.Header{}}
		r := httptest.NewRequest("GET", "/metrics/per-object", nil)
		r.Header.Set("Accept-Encoding", encoding)
		h.ServeHTTP(&w, r)
		if w.code != 0 && w.code != 200 {
			b.Fatal(w.code)
		}
	}
	b.ReportMetric(float64(w.n)/1e6, "MB/scrape")
}

// countingWriter is a ResponseWriter that counts and discards the body, as a scraper reading
// from a socket would not hold it in memory the way httptest.ResponseRecorder does.
type countingWriter struct {
	header http.Header
	code   int
	n      int
}

func (c *countingWriter) Header() http.Header  { return c.header }
func (c *countingWriter) WriteHeader(code int) { c.code = code }
func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += len(p)
	return len(p), nil
}

// raftBroker is a fakeBroker whose queues include quorum queues with a local replica.
type raftBroker struct {
	*fakeBroker
	queues []QueueInfo
}

func (b *raftBroker) Queues(vhost string) []QueueInfo { return b.queues }

// TestRaftMetrics: the quorum queues this node runs a replica of export RabbitMQ's
// rabbitmq_raft_* families with RabbitMQ's types and labels: per queue on /metrics/per-object,
// summed on /metrics; a queue without a replica here (Raft nil) exports none, and a node
// with no replica at all has no raft family on /metrics.
func TestRaftMetrics(t *testing.T) {
	b := &raftBroker{fakeBroker: newFake(), queues: []QueueInfo{
		{VHost: "/", Name: "qa", Type: "quorum", Members: []string{"n1"}, Leader: "n1",
			Raft: &RaftInfo{Term: 2, CommitIndex: 10, LastIndex: 11, AppliedIndex: 9, Snapshot: 4}},
		{VHost: "v", Name: "qb", Type: "quorum", Members: []string{"n1", "n2"},
			Raft: &RaftInfo{Term: 3, CommitIndex: 20, LastIndex: 20, AppliedIndex: 20}},
		{VHost: "/", Name: "remote", Type: "quorum", Members: []string{"n2"}},
		{VHost: "/", Name: "classic"},
	}}
	per := scrape(t, b, "/metrics/per-object")
	agg := scrape(t, b, "/metrics")
	for _, tc := range []struct {
		name         string
		qa, qb, summ float64
	}{
		{"rabbitmq_raft_term_total", 2, 3, 5},
		{"rabbitmq_raft_log_commit_index", 10, 20, 30},
		{"rabbitmq_raft_log_last_written_index", 11, 20, 31},
		{"rabbitmq_raft_log_last_applied_index", 9, 20, 29},
		{"rabbitmq_raft_log_snapshot_index", 4, 0, 4},
	} {
		f := per[tc.name]
		if f == nil || len(f.Metric) != 2 {
			t.Errorf("per-object %s: %v", tc.name, f)
			continue
		}
		if v, ok := value(f, "vhost", "/", "queue", "qa"); !ok || v != tc.qa {
			t.Errorf("per-object %s{qa} = %v (%v), want %v", tc.name, v, ok, tc.qa)
		}
		if v, ok := value(f, "vhost", "v", "queue", "qb"); !ok || v != tc.qb {
			t.Errorf("per-object %s{qb} = %v (%v), want %v", tc.name, v, ok, tc.qb)
		}
		if want := rabbitFamilies(t, "prometheus_per_object.txt")[tc.name]; strings.TrimSpace(familyShape(f)) != strings.TrimSpace(want) {
			t.Errorf("per-object %s is %q, RabbitMQ's is %q", tc.name, familyShape(f), want)
		}
		if v, ok := value(agg[tc.name]); !ok || v != tc.summ {
			t.Errorf("/metrics %s = %v (%v), want %v", tc.name, v, ok, tc.summ)
		}
		if want := rabbitFamilies(t, "prometheus_metrics.txt")[tc.name]; strings.TrimSpace(familyShape(agg[tc.name])) != strings.TrimSpace(want) {
			t.Errorf("/metrics %s is %q, RabbitMQ's is %q", tc.name, familyShape(agg[tc.name]), want)
		}
	}
	if fams := scrape(t, newFake(), "/metrics"); fams["rabbitmq_raft_term_total"] != nil {
		t.Errorf("a node without quorum replicas exports rabbitmq_raft_term_total")
	}
}

func (b *raftBroker) Queue(vhost, name string) (QueueInfo, bool) {
	for _, q := range b.queues {
		if q.VHost == vhost && q.Name == name {
			return q, true
		}
	}
	return QueueInfo{}, false
}

// TestQuorumQueueFieldsMatchRabbitMQ compares GET /api/queues/{vhost}/{name} of a quorum
// queue, field by field, with RabbitMQ 3.10.8's (testdata/rabbitmq_quorum_queue.json, a live
// capture of a one-node quorum queue): every field Warren shows is one of RabbitMQ's, and
// RabbitMQ's missing here are only the Erlang process's (garbage_collection, reductions),
// its segment files (open_files) and the at-least-once dead-letter counts (messages_dlx,
// message_bytes_dlx), which Warren does not track.
func TestQuorumQueueFieldsMatchRabbitMQ(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "rabbitmq_quorum_queue.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ref map[string]any
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	b := &raftBroker{fakeBroker: newFake(), queues: []QueueInfo{{VHost: "/", Name: "qq1", Durable: true, Type: "quorum",
		Arguments: map[string]any{"x-queue-type": "quorum"}, Members: []string{"n1"}, Online: []string{"n1"}, Leader: "n1"}}}
	r := call(t, NewHandler(b, Options{}), "GET", "/api/queues/%2F/qq1", "guest", "")
	got, _ := r.body.(map[string]any)
	if r.status != 200 || got == nil {
		t.Fatalf("GET qq1: %d %s", r.status, r.raw)
	}
	notTracked := map[string]bool{"garbage_collection": true, "reductions": true, "reductions_details": true,
		"open_files": true, "messages_dlx": true, "message_bytes_dlx": true}
	for k := range ref {
		if _, ok := got[k]; !ok && !notTracked[k] {
			t.Errorf("RabbitMQ's %q is missing", k)
		}
	}
	for k, v := range got {
		rv, ok := ref[k]
		if !ok {
			t.Errorf("%q is not a field of RabbitMQ's quorum queue", k)
			continue
		}
		// The same JSON kind as RabbitMQ's, null only where RabbitMQ has null (clients decode
		// leader and node as strings).
		if jsonKind(v) != jsonKind(rv) {
			t.Errorf("%q is a JSON %s, RabbitMQ's is a %s", k, jsonKind(v), jsonKind(rv))
		}
	}
	if got["leader"] != "n1" || got["node"] != "n1" || fmt.Sprint(got["members"]) != "[n1]" || fmt.Sprint(got["online"]) != "[n1]" || got["type"] != "quorum" {
		t.Errorf("qq1: leader %v node %v members %v online %v type %v", got["leader"], got["node"], got["members"], got["online"], got["type"])
	}
}

// jsonKind names the JSON kind of a value decoded by encoding/json into any.
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "bool"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}
