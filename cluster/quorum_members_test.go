package cluster

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// waitSetNodes waits until every node applied set_nodes (placement needs it).
func waitSetNodes(t *testing.T, nodes map[string]*raftNode) {
	t.Helper()
	waitQuorum(t, "set_nodes applied", func() bool {
		for _, n := range nodes {
			m := n.node.meta
			m.mu.Lock()
			k := len(m.st.Nodes)
			m.mu.Unlock()
			if k != len(nodes) {
				return false
			}
		}
		return true
	})
}

// TestQuorumMemberChangeCommitted: add_member and delete_member return only once the change
// is in the queue's committed Raft configuration, whichever node is asked (the node being
// added, or one that runs no replica and is not the one added: the metadata records the
// member joined once a replica applied the configuration with it); a change that cannot
// commit (the group lost its majority) fails with a timeout instead of returning as if done.
func TestQuorumMemberChangeCommitted(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	waitSetNodes(t, nodes)
	ctx := t.Context()

	// Asked on the node being added: it returns once the original replica (the leader) has
	// applied (so the group committed) the configuration with it; no polling after the call.
	declareQuorum(t, nodes, "n1", "qa", amqp091.Table{"x-quorum-initial-group-size": int32(1)})
	if err := nodes["n3"].node.AddQuorumMember(ctx, "/", "qa", "n3"); err != nil {
		t.Fatal(err)
	}
	if st, ok := nodes["n1"].node.QuorumStatus("/", "qa"); !ok || !slices.Equal(st.Members, []string{"n1", "n3"}) {
		t.Fatalf("qa on n1 right after add_member n3: %+v (running a replica: %v)", st, ok)
	}
	if p, _ := nodes["n3"].node.QuorumMembers("/", "qa"); len(p.Joining) != 0 {
		t.Fatalf("qa still joining %v after add_member returned", p.Joining)
	}

	// Asked on n3, neither a replica of qb nor the node added: the leader's applied
	// configuration has the new member when it returns.
	declareQuorum(t, nodes, "n1", "qb", amqp091.Table{"x-quorum-initial-group-size": int32(1)})
	if err := nodes["n3"].node.AddQuorumMember(ctx, "/", "qb", "n2"); err != nil {
		t.Fatal(err)
	}
	if st, ok := nodes["n1"].node.QuorumStatus("/", "qb"); !ok || !slices.Equal(st.Members, []string{"n1", "n2"}) {
		t.Fatalf("qb on n1 right after add_member n2 asked on n3: %+v", st)
	}

	// delete_member asked on a node that is not a replica of qb: when it returns, the
	// metadata no longer has n2 (recorded only after a replica applied the configuration
	// without it) and the leader's configuration is n1 alone.
	if err := nodes["n3"].node.DeleteQuorumMember(ctx, "/", "qb", "n2"); err != nil {
		t.Fatal(err)
	}
	if p, _ := nodes["n3"].node.QuorumMembers("/", "qb"); !slices.Equal(p.Members, []string{"n1"}) {
		t.Fatalf("qb's members right after delete_member n2: %v", p.Members)
	}
	if st, ok := nodes["n1"].node.QuorumStatus("/", "qb"); !ok || !slices.Equal(st.Members, []string{"n1"}) {
		t.Fatalf("qb on n1 right after delete_member n2: %+v", st)
	}

	// qa runs on n1 and n3; with n1 dead it has no majority, so adding n2 cannot commit:
	// the call times out with an error (n2 asks: it is the node added).
	nodes["n1"].crash()
	tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	start := time.Now()
	err := nodes["n2"].node.AddQuorumMember(tctx, "/", "qa", "n2")
	if err == nil || !strings.Contains(err.Error(), "timed out waiting for node 'n2' to join") {
		t.Fatalf("add_member without a majority: %v after %v", err, time.Since(start))
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("add_member without a majority took %v, past its 2 s deadline", el)
	}
}
