package cluster

import (
	"testing"
	"time"

	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/cluster/multiraft"
)

// nopSM is a state machine that keeps nothing.
type nopSM struct{}

func (nopSM) Apply(uint64, []byte) any  { return nil }
func (nopSM) Snapshot() ([]byte, error) { return nil, nil }
func (nopSM) Restore(b []byte) error    { return nil }

// A wiped node that rejoins while no majority is up serves after its catch-up timed out, but
// a group it opens then (a quorum queue's, from a metadata snapshot that arrives late) is
// still one whose log it lost: it does not vote until a leader gave the log back. Only once
// its node_restarted command applied are the groups it opens new. Before, StartNode called
// NewGroupsFromNow whether the catch-up succeeded or not.
func TestLostGroupsAfterCatchUpTimeout(t *testing.T) {
	ns := newNodeSet(t, "n1", "n2", "n3")
	ns.startAll(false, nil, "n1", "n2", "n3")
	for _, name := range []string{"n1", "n2", "n3"} {
		ns.stop(name)
	}
	ns.dirs["n3"] = t.TempDir()
	b, err := broker.New(broker.Options{DataDir: ns.dirs["n3"], MaxRAMMessages: 4096, Logger: quietLog(),
		VHosts: []broker.VHostSettings{{Name: "/", MaxQueues: -1}}})
	if err != nil {
		t.Fatal(err)
	}
	n, err := StartNode(NodeConfig{Name: "test", NodeName: "n3", Listen: ns.addrs["n3"], Nodes: ns.addrs,
		Secret: "a-test-secret-of-enough-length", DataDir: ns.dirs["n3"], Logger: quietLog(), Join: true,
		TickInterval: 20 * time.Millisecond, ElectionTicks: 10, NoSync: true, CatchUpTimeout: 300 * time.Millisecond}, b)
	if err != nil {
		_ = b.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = n.Close()
		_ = b.Close()
	})
	voters := multiraft.GroupOptions{Voters: []string{"n1", "n2", "n3"}}
	id := uint64(1 << 40)
	g, err := n.host.GroupWith(id, nopSM{}, voters)
	if err != nil {
		t.Fatal(err)
	}
	if !g.LostLog() {
		t.Fatal("a group opened after a catch-up that timed out is taken for a new one (it votes with an empty log)")
	}
	ns.startAll(false, nil, "n1", "n2")
	deadline := time.Now().Add(20 * time.Second)
	for {
		id++
		g, err := n.host.GroupWith(id, nopSM{}, voters)
		if err != nil {
			t.Fatal(err)
		}
		if !g.LostLog() {
			return // node_restarted applied: new groups are new
		}
		if time.Now().After(deadline) {
			t.Fatal("groups opened after node_restarted applied are still taken for lost")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
