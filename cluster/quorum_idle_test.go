//go:build linux

package cluster

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func processRSSMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.Atoi(strings.Fields(line)[1])
			return float64(kb) / 1024
		}
	}
	return -1
}

// BenchmarkQuorumQueuesIdle declares QUORUM_IDLE_QUEUES (default 1000) quorum queues of the
// default group size (3 replicas) on QUORUM_IDLE_NODES (default 3) nodes in this process
// (default Raft timing, fsync on), waits until each queue's group has a leader, then reports
// the idle cost: CPU of the whole process over 10 s (percent of one core) and its RSS. b.N is
// ignored: one measurement per run.
func BenchmarkQuorumQueuesIdle(b *testing.B) {
	n := 1000
	if s := os.Getenv("QUORUM_IDLE_QUEUES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	names := []string{"n1", "n2", "n3"}
	if s := os.Getenv("QUORUM_IDLE_NODES"); s != "" {
		k, _ := strconv.Atoi(s)
		names = nil
		for i := range k {
			names = append(names, fmt.Sprintf("n%d", i+1))
		}
	}
	rssBefore := processRSSMB()
	nodes := startRaftClusterWith(b, nil, names...)
	declareQuorum(b, nodes, "n1", "idle-0", nil)
	_, ch := dialTB(b, nodes["n1"].url)
	start := time.Now()
	for i := 1; i < n; i++ {
		if _, err := ch.QueueDeclare(fmt.Sprintf("idle-%d", i), true, false, false, false, map[string]any{"x-queue-type": "quorum"}); err != nil {
			b.Fatal(err)
		}
	}
	declared := time.Since(start)
	waitQuorum(b, "every group's leader", func() bool {
		for i := range n {
			led := false
			for _, nd := range nodes {
				if st, ok := nd.node.QuorumStatus("/", fmt.Sprintf("idle-%d", i)); ok && st.Leader != "" {
					led = true
					break
				}
			}
			if !led {
				return false
			}
		}
		return true
	})
	elected := time.Since(start)
	time.Sleep(2 * time.Second)
	cpu0, t0 := processCPU(), time.Now()
	time.Sleep(10 * time.Second)
	cpu := float64(processCPU()-cpu0) / float64(time.Since(t0)) * 100
	rss := processRSSMB()
	replicas := 0
	for _, nd := range nodes {
		replicas += nd.node.host.Stats().Groups
	}
	b.ReportMetric(cpu, "%cpu-idle")
	b.ReportMetric(rss-rssBefore, "MB-rss")
	b.Logf("%d quorum queues on %d nodes in one process (%d group replicas, metadata and status groups included): declared in %v, all groups led after %v; idle CPU %.1f%% of one core, RSS %.0f MB (%.0f MB before the nodes)",
		n, len(nodes), replicas, declared.Round(time.Millisecond), elected.Round(time.Millisecond), cpu, rss, rssBefore)
}
