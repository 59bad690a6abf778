package multiraft

import (
	"context"
	"encoding/binary"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenmq/warren/quorum"
)

// gatedSM is a countSM whose snapshot is encoded off the loop (SnapshotStarter), and only once
// gate is closed: a snapshot that takes as long as the test wants.
type gatedSM struct {
	countSM
	gate    chan struct{}
	started atomic.Int32
}

func (s *gatedSM) StartSnapshot() (func() ([]byte, error), error) {
	n := s.n.Load() // the view: the count as of the last applied index
	s.started.Add(1)
	return func() ([]byte, error) {
		<-s.gate
		return binary.BigEndian.AppendUint64(nil, n), nil
	}, nil
}

// TestSnapshotOffTheLoop: while a group's snapshot is being encoded (held back by its gate),
// another group on the same hosts keeps committing, the snapshot is not stored, and the log
// is not compacted; once encoded, it is stored at the index it was started at, so a member
// restarted from it replays exactly the entries after it (its count comes out right, no
// entry lost or applied twice).
func TestSnapshotOffTheLoop(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	all := []string{"n1", "n2", "n3"}
	gate := make(chan struct{})
	slow, sms := map[string]*Group{}, map[string]*gatedSM{}
	for _, name := range all {
		sm := &gatedSM{gate: gate}
		g, err := c.hosts[name].GroupWith(21, sm, GroupOptions{Voters: all, SnapshotEvery: 50})
		if err != nil {
			t.Fatal(err)
		}
		slow[name], sms[name] = g, sm
	}
	other, _ := c.groups(22)
	lead := waitLeader(t, slow, 10*time.Second)
	otherLead := waitLeader(t, other, 10*time.Second)

	proposeN := func(g *Group, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := g.Propose(ctx, []byte("x"))
			cancel()
			if err != nil {
				t.Fatalf("propose %d: %v", i, err)
			}
		}
	}
	proposeN(slow[lead], 60) // past SnapshotEvery: every member starts a snapshot
	waitFor(t, 10*time.Second, "snapshots started on every member", func() bool {
		for _, sm := range sms {
			if sm.started.Load() == 0 {
				return false
			}
		}
		return true
	})
	// Encoded on the loop, the held-back snapshot would stall every group of the hosts.
	start := time.Now()
	proposeN(other[otherLead], 20)
	t.Logf("20 commits of another group while the snapshot was held back: %v", time.Since(start))
	proposeN(slow[lead], 10) // the snapshotting group itself keeps applying too
	for _, name := range all {
		if si := slow[name].storage.SnapshotIndex(); si != 0 {
			t.Fatalf("%s: snapshot stored at %d before it was encoded", name, si)
		}
		if n := sms[name].started.Load(); n != 1 {
			t.Errorf("%s: %d snapshots started, want 1 in flight at a time", name, n)
		}
	}

	close(gate)
	waitFor(t, 10*time.Second, "snapshots stored", func() bool {
		for _, name := range all {
			if slow[name].storage.SnapshotIndex() == 0 {
				return false
			}
		}
		return true
	})
	for _, name := range all {
		if si, applied := slow[name].storage.SnapshotIndex(), slow[name].appliedIndex.Load(); si >= applied {
			t.Errorf("%s: snapshot at %d, applied %d: want the index it was started at, below", name, si, applied)
		}
	}

	// A member restarted from its snapshot replays the tail after it, once.
	c.stop("n3")
	h := c.start("n3")
	sm := &gatedSM{gate: gate}
	if _, err := h.GroupWith(21, sm, GroupOptions{Voters: all, SnapshotEvery: 50}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "n3 caught up", func() bool { return sm.n.Load() >= 70 })
	time.Sleep(200 * time.Millisecond)
	if n := sm.n.Load(); n != 70 {
		t.Fatalf("n3 restarted from its snapshot counts %d commands, want 70", n)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// loopSnapshot hides a state machine's StartSnapshot: its snapshots are encoded on the loop,
// as before snapasync.go (the "before" of BenchmarkSnapshotStall).
type loopSnapshot struct{ sm StateMachine }

func (l loopSnapshot) Apply(i uint64, cmd []byte) any { return l.sm.Apply(i, cmd) }
func (l loopSnapshot) Snapshot() ([]byte, error)      { return l.sm.Snapshot() }
func (l loopSnapshot) Restore(b []byte) error         { return l.sm.Restore(b) }

var _ SnapshotStarter = (*quorum.Machine)(nil)

// BenchmarkSnapshotStall: one host (fsync on), a quorum queue's group with a backlog of
// snapBacklog messages of snapBody bytes (an 11 MB snapshot: persistence.RaftLog stores no
// snapshot over 16 MiB, badger's value limit, so 1M messages cannot be stored at all yet), and another group committing one small proposal
// after another. The queue's group is made to snapshot (its SnapshotEvery-th entry); the
// other group's commit latencies from then until the snapshot is stored are reported (p50,
// p99, max), with the time the snapshot took to be stored. on-loop: the snapshot encoded on
// the Ready loop (as before); off-loop: encoded from a view on another goroutine.
//
//	go test -run x -bench SnapshotStall -benchtime 1x -count 3 ./cluster/multiraft/
func BenchmarkSnapshotStall(b *testing.B) {
	for _, mode := range []string{"on-loop", "off-loop"} {
		b.Run(mode, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				snapshotStall(b, mode == "off-loop")
			}
		})
	}
}

const (
	snapBacklog = 100_000
	snapBody    = 100
	snapBatch   = 1000 // messages per enqueue proposal
)

func snapshotStall(b *testing.B, offLoop bool) {
	b.StopTimer()
	c := newTestCluster(b, 1, func(cfg *Config) { cfg.NoSync = false })
	h := c.hosts["n1"]
	fills := snapBacklog / snapBatch
	qm := quorum.New(quorum.NoLimits(), quorum.Hooks{})
	var sm StateMachine = qm
	if !offLoop {
		sm = loopSnapshot{qm}
	}
	// The snapshot comes with the SnapshotEvery-th entry, after the backlog and some padding
	// (bytes never trigger it).
	every := uint64(fills) + 100
	opts := GroupOptions{Voters: []string{"n1"}, SnapshotEvery: every, SnapshotBytes: 1 << 50}
	q, err := h.GroupWith(31, sm, opts)
	if err != nil {
		b.Fatal(err)
	}
	other, err := h.GroupWith(32, &countSM{}, GroupOptions{Voters: []string{"n1"}})
	if err != nil {
		b.Fatal(err)
	}
	waitLeader(b, map[string]*Group{"n1": q}, 10*time.Second)
	waitLeader(b, map[string]*Group{"n1": other}, 10*time.Second)
	prop := func(g *Group, cmd []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := g.Propose(ctx, cmd); err != nil {
			b.Fatal(err)
		}
	}
	body := make([]byte, snapBody)
	enq := quorum.Command{Kind: quorum.KindEnqueue}
	for range snapBatch {
		enq.Msgs = append(enq.Msgs, &quorum.Msg{RoutingKey: "q", Body: body})
	}
	cmd := enq.Encoded()
	fillStart := time.Now()
	for range fills {
		prop(q, cmd)
	}
	b.Logf("backlog of %d messages proposed in %v", snapBacklog, time.Since(fillStart))
	noop := quorum.Command{Kind: quorum.KindCheckout, Node: "n0"}.Encoded()
	for q.appliedIndex.Load() < every-1 {
		prop(q, noop)
	}
	if si, applied := q.storage.SnapshotIndex(), q.appliedIndex.Load(); si != 0 || applied != every-1 {
		b.Fatalf("before the trigger: snapshot at %d, applied %d (want 0, %d)", si, applied, every-1)
	}

	type commit struct {
		end time.Time
		lat time.Duration
	}
	var commits []commit
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			prop(other, []byte("x"))
			end := time.Now()
			commits = append(commits, commit{end, end.Sub(t0)})
		}
	}()
	time.Sleep(200 * time.Millisecond) // the other group's latency at rest comes first
	b.StartTimer()
	t0 := time.Now()
	prop(q, noop) // the SnapshotEvery-th entry: the snapshot starts
	for q.storage.SnapshotIndex() == 0 {
		if time.Since(t0) > time.Minute {
			b.Fatal("snapshot not stored within a minute (persistence refuses values over 16 MiB: MULTIRAFT_DEBUG=1 shows why)")
		}
		time.Sleep(time.Millisecond)
	}
	stored := time.Since(t0)
	b.StopTimer()
	end := time.Now()
	time.Sleep(100 * time.Millisecond) // a commit stalled behind the store ends after it
	close(stop)
	<-done
	// The commits that ended between the trigger and 100 ms after the snapshot was stored.
	var lats []time.Duration
	for _, c := range commits {
		if c.end.After(t0) && c.end.Before(end.Add(100*time.Millisecond)) {
			lats = append(lats, c.lat)
		}
	}
	if len(lats) == 0 {
		b.Fatal("no commit of the other group measured")
	}
	slices.Sort(lats)
	pct := func(p float64) float64 { return float64(lats[int(p*float64(len(lats)-1))]) / 1e6 }
	b.ReportMetric(stored.Seconds()*1e3, "snapshot-stored-ms")
	b.ReportMetric(pct(0.5), "other-p50-ms")
	b.ReportMetric(pct(0.99), "other-p99-ms")
	b.ReportMetric(pct(1), "other-max-ms")
	b.ReportMetric(float64(len(lats)), "other-commits")
}
