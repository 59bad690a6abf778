package mgmt

import (
	"bufio"
	"compress/gzip"
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
