package config

import (
	"slices"
	"testing"
	"time"
)

func TestClusterStartOnlyKeys(t *testing.T) {
	base := ClusterSettings{Name: "c", NodeName: "n1", NodeTimeout: time.Minute, QueueLeaderLocator: "client-local"}
	for _, tc := range []struct {
		name string
		edit func(*ClusterSettings)
		want []string
	}{
		{"unchanged", func(*ClusterSettings) {}, nil},
		{"join", func(c *ClusterSettings) { c.Join = true }, []string{"cluster.join"}},
		{"node_timeout", func(c *ClusterSettings) { c.NodeTimeout = 5 * time.Second }, []string{"cluster.node_timeout"}},
		{"locator and join", func(c *ClusterSettings) { c.QueueLeaderLocator = "balanced"; c.Join = true },
			[]string{"cluster.join", "cluster.queue_leader_locator"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := base
			tc.edit(&next)
			if got := ClusterStartOnlyKeys(&base, &next); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}
