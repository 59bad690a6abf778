package mgmt

import "testing"

// A cluster node's forwards dropped (WarrenStats.ForwardsDropped) are on /metrics as
// warren_cluster_forwards_dropped_total and in /api/overview as cluster_forwards_dropped; a
// single node's overview has no such key.
func TestForwardsDroppedExported(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cluster *ClusterInfo
		dropped uint64
	}{
		{"single node", nil, 0},
		{"cluster", &ClusterInfo{Leader: "n1", State: "leader"}, 42},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			f.overview.Cluster = tc.cluster
			f.overview.Warren.ForwardsDropped = tc.dropped
			fam := scrape(t, f, "/metrics")["warren_cluster_forwards_dropped_total"]
			if v, ok := value(fam); !ok || v != float64(tc.dropped) {
				t.Fatalf("warren_cluster_forwards_dropped_total = %v (%v), want %d", v, ok, tc.dropped)
			}
			r := call(t, NewHandler(f, Options{}), "GET", "/api/overview", "guest", "")
			got, present := r.body.(map[string]any)["cluster_forwards_dropped"]
			switch {
			case r.status != 200:
				t.Fatalf("overview: %d %s", r.status, r.raw)
			case tc.cluster == nil && present:
				t.Fatalf("single node overview has cluster_forwards_dropped = %v", got)
			case tc.cluster != nil && got != float64(tc.dropped):
				t.Fatalf("cluster_forwards_dropped = %v, want %d", got, tc.dropped)
			}
		})
	}
}
