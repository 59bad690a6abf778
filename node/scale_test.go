package node

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/mgmt"
)

// BenchmarkManagement100kQueues is what monitoring pays with 100,000 queues on the real broker:
// one page of 100 queues from /api/queues (the target: under 50 ms) and a full
// /metrics/per-object scrape (target: under 1 s).
func BenchmarkManagement100kQueues(b *testing.B) {
	s, _ := startNode(b, "")
	v := s.Broker().VHost("/")
	for i := 0; i < 100_000; i++ {
		if _, err := v.DeclareQueue(broker.System, broker.QueueSpec{Name: fmt.Sprintf("q%06d", i)}); err != nil {
			b.Fatal(err)
		}
	}
	m := NewManagement(s, Options{})
	api := mgmt.NewHandler(m, mgmt.Options{})
	metrics := mgmt.NewMetricsHandler(m)
	get := func(b *testing.B, h http.Handler, url string) {
		req := httptest.NewRequest("GET", url, nil)
		req.SetBasicAuth("guest", "guest")
		req.RemoteAddr = "127.0.0.1:1"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatalf("GET %s: %d %s", url, rec.Code, rec.Body.String())
		}
		_, _ = io.Copy(io.Discard, rec.Body)
	}
	b.Run("api-queues-page-100", func(b *testing.B) {
		for b.Loop() {
			get(b, api, "/api/queues/%2F?page=1&page_size=100")
		}
	})
	b.Run("metrics-per-object", func(b *testing.B) {
		for b.Loop() {
			get(b, metrics, "/metrics/per-object")
		}
	})
}
