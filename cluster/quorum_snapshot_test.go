package cluster

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/persistence"
)

// lockedBuffer is a bytes.Buffer safe for the nodes' concurrent log writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// raftGroupOnDisk opens the Raft log of a stopped node and reports group's stored snapshot
// (index and data size), its first and last log index, and its keys.
func raftGroupOnDisk(t *testing.T, n *raftNode, group uint64) (snapIndex uint64, snapBytes int, first, last uint64, keys int) {
	t.Helper()
	l, err := persistence.OpenRaftLog(filepath.Join(n.nc.DataDir, "raft"), persistence.RaftLogOptions{Logger: quietLog(), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s, err := l.Storage(group)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatalf("node %s: read snapshot: %v", n.name, err)
	}
	first, _ = s.FirstIndex()
	last, _ = s.LastIndex()
	keys, _, err = l.GroupDiskUsage(group)
	if err != nil {
		t.Fatal(err)
	}
	return s.SnapshotIndex(), len(snap.GetData()), first, last, keys
}

// TestQuorumQueueLargeSnapshot: a quorum queue whose backlog (40 MiB) is larger than a value
// of the Raft log's badger (a 16 MiB value-log file) still snapshots and compacts its log,
// and a replica that was down while the backlog was published catches up from that
// snapshot (a MsgSnap of 40 MiB through the transport), stores it, restarts from it and
// serves the whole backlog. No log line carries a message body.
func TestQuorumQueueLargeSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes 40 MiB through a 3-node cluster")
	}
	logs := &lockedBuffer{}
	nodes := startRaftClusterWith(t, func(nc *NodeConfig) {
		nc.TickInterval, nc.ElectionTicks, nc.NoSync = 20*time.Millisecond, 10, true
		nc.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qbig", nil)
	st, ok := nodes["n1"].node.QuorumStatus("/", "qbig")
	if !ok {
		t.Fatal("no status for the queue's group")
	}
	group := st.Group

	// n3 is down while the backlog is published: it holds the first few entries only.
	nodes["n3"].crash()
	_, _, _, n3Last, _ := raftGroupOnDisk(t, nodes["n3"], group)

	const count, size = 10000, 4 << 10 // 40 MiB: snapshots every 16 MiB applied (SnapshotBytes)
	body := func(i int) []byte {
		b := bytes.Repeat([]byte(fmt.Sprintf("snapbody-%05d;", i)), size/15+1)
		return b[:size]
	}
	_, pch := dial(t, nodes["n1"].url)
	if err := pch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	for lo := 0; lo < count; lo += 500 {
		var dcs []*amqp091.DeferredConfirmation
		for i := lo; i < lo+500; i++ {
			dc, err := pch.PublishWithDeferredConfirm("", "qbig", false, false, amqp091.Publishing{DeliveryMode: 2, Body: body(i)})
			if err != nil {
				t.Fatal(err)
			}
			dcs = append(dcs, dc)
		}
		for _, dc := range dcs {
			if ok, err := dc.WaitContext(ctx); err != nil || !ok {
				t.Fatalf("publish before %d: confirmed %v, %v", lo+500, ok, err)
			}
		}
	}
	commit := uint64(0)
	for _, name := range []string{"n1", "n2"} {
		if st, ok := nodes[name].node.QuorumStatus("/", "qbig"); ok {
			commit = max(commit, st.Commit)
		}
	}

	// n3 comes back and catches up.
	caughtUp := func() {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			if st, ok := nodes["n3"].node.QuorumStatus("/", "qbig"); ok && st.Applied >= commit {
				return
			}
			if time.Now().After(deadline) {
				st, _ := nodes["n3"].node.QuorumStatus("/", "qbig")
				t.Fatalf("n3 applied %d, want %d", st.Applied, commit)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	nodes["n3"].start()
	caughtUp()
	nodes["n3"].crash()
	snapIndex, snapBytes, first, last, keys := raftGroupOnDisk(t, nodes["n3"], group)
	t.Logf("n3 before: last index %d; after catching up: snapshot at %d (%d bytes), log [%d, %d] in %d keys",
		n3Last, snapIndex, snapBytes, first, last, keys)
	if snapBytes <= 16<<20 {
		t.Errorf("n3's snapshot holds %d bytes, want more than a 16 MiB value-log file", snapBytes)
	}
	// Entries right after what n3 held before were never written on n3: it got them as the
	// leader's snapshot (a leader whose log kept them would have sent them instead).
	if first <= n3Last+1 {
		t.Errorf("n3's log starts at %d, right after its old last index %d: no snapshot was installed", first, n3Last)
	}
	// The log is compacted behind the snapshot: most of the group's history is gone (the
	// publishes are batched, a few hundred per entry).
	if held := last - first + 1; held >= last/2 {
		t.Errorf("n3 holds %d of the group's %d entries: the log was not compacted", held, last)
	}

	// n3 restarts from the chunked snapshot; with n1 down, n2 and n3 serve the backlog.
	nodes["n3"].start()
	caughtUp()
	nodes["n1"].crash()
	waitQueue(t, nodes["n3"].url, "qbig")
	_, cch := dial(t, nodes["n3"].url)
	if err := cch.Qos(1000, 0, false); err != nil {
		t.Fatal(err)
	}
	var ds <-chan amqp091.Delivery
	deadline := time.Now().Add(15 * time.Second)
	for {
		var err error
		ds, err = cch.Consume("qbig", "all", true, false, false, false, nil)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consume on n3 without n1: %v", err)
		}
		_, cch = dial(t, nodes["n3"].url)
		time.Sleep(100 * time.Millisecond)
	}
	for i := range count {
		d := recv(t, ds)
		if !bytes.Equal(d.Body, body(i)) {
			t.Fatalf("delivery %d: %.20q, want %.20q", i, d.Body, body(i))
		}
	}
	if out := logs.String(); strings.Contains(out, "snapbody") {
		i := strings.Index(out, "snapbody")
		t.Errorf("a log line carries a message body: %.300q", out[max(0, i-200):])
	}
}
