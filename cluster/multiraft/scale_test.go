//go:build unix

package multiraft

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func rssMB() float64 {
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

// Many groups (quorum queues to come) on three hosts in this process, at production timing
// (100 ms tick, heartbeat every tick): every group elects a leader and takes a proposal, then
// the idle cost is measured - CPU over 10 s and RSS - and printed. Idle groups quiesce, so
// the idle cost should be the node heartbeats and the loops' scans only. MULTIRAFT_GROUPS sets the
// number of groups (default 1000; 100 with -short or the race detector, which slow the
// hosts down too much for 3,000 group replicas on a shared 2-core machine).
func TestManyGroupsIdleCost(t *testing.T) {
	n := 1000
	if testing.Short() || raceEnabled {
		n = 100
	}
	if v := os.Getenv("MULTIRAFT_GROUPS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	rssBefore := rssMB()
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.TickInterval = DefaultTickInterval
		cfg.ElectionTicks = DefaultElectionTicks
		cfg.NoSync = false
	})
	start := time.Now()
	all := map[string][]*Group{}
	for name, h := range c.hosts {
		for id := uint64(1); id <= uint64(n); id++ {
			g, err := h.Group(id, &logSM{})
			if err != nil {
				t.Fatal(err)
			}
			all[name] = append(all[name], g)
		}
	}
	// Every group elects a leader.
	deadline := time.Now().Add(60 * time.Second)
	for _, g := range all["n1"] {
		for {
			if _, ok := g.Leader(); ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("group %d has no leader after 60 s", g.ID())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	elected := time.Since(start)
	// One proposal per group, from n1, 32 at a time.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	propStart := time.Now()
	for _, g := range all["n1"] {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			// A proposal forwarded to a leader that lost its leadership meanwhile is lost
			// (Propose documents it); like a client, try again (the command may then apply
			// twice, which this test does not mind).
			var err error
			for try := 0; try < 4; try++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err = g.Propose(ctx, []byte("hello"))
				cancel()
				if err == nil {
					return
				}
			}
			t.Errorf("group %d: %v", g.ID(), err)
		}()
	}
	wg.Wait()
	proposed := time.Since(propStart)
	leaders := map[string]int{}
	for _, g := range all["n1"] {
		l, _ := g.Leader()
		leaders[l]++
	}
	time.Sleep(2 * time.Second) // let the proposals' commits reach the followers
	var st [3]Stats
	for i, name := range c.names {
		st[i] = c.hosts[name].Stats()
	}
	cpu0, t0 := cpuTime(), time.Now()
	time.Sleep(10 * time.Second)
	cpu, wall := cpuTime()-cpu0, time.Since(t0)
	var sent, saves, hbs uint64
	quiesced := 0
	for i, name := range c.names {
		s := c.hosts[name].Stats()
		sent += s.MessagesSent - st[i].MessagesSent
		saves += s.LogSaves - st[i].LogSaves
		hbs += s.NodeHeartbeats - st[i].NodeHeartbeats
		quiesced += s.Quiesced
	}
	idle := fmt.Sprintf("%d groups x 3 hosts in one process: elected in %v, %d proposals in %v; leaders %v; idle over %v: CPU %.1f%% of one core (all 3 hosts), %.0f raft msgs/s, %.0f node heartbeats/s, %.1f log syncs/s, %d of %d group replicas quiesced; RSS %.0f MB (%.0f MB before the hosts started)",
		n, elected.Round(time.Millisecond), n, proposed.Round(time.Millisecond), leaders, wall.Round(time.Second),
		100*cpu.Seconds()/wall.Seconds(), float64(sent)/wall.Seconds(), float64(hbs)/wall.Seconds(), float64(saves)/wall.Seconds(), quiesced, 3*n, rssMB(), rssBefore)
	t.Log(idle)
	fmt.Println(idle)
}
