package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/amqp"
)

// runsGroup reports which nodes run a copy of queue's group.
func runsGroup(nodes map[string]*raftNode, queue string) []string {
	var out []string
	for name, n := range nodes {
		if _, ok := n.node.QuorumStatus("/", queue); ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// consumeN consumes n messages from queue on ch with acks and returns their bodies; the
// consumer is cancelled then.
func consumeN(t *testing.T, ch *amqp091.Channel, queue string, n int) []string {
	t.Helper()
	ds, err := ch.Consume(queue, "consumeN", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for range n {
		d := recv(t, ds)
		got = append(got, string(d.Body))
		if err := d.Ack(false); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.Cancel("consumeN", false); err != nil {
		t.Fatal(err)
	}
	return got
}

// amqpErrCode is the reply code of an *amqp.Error in err's chain (0: none).
func amqpErrCode(err error) uint16 {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return 0
}

func numbered(prefix string, n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("%s%03d", prefix, i))
	}
	return out
}

// TestQuorumPlacementGroupSize: on a 3-node cluster, a quorum queue of size 1 runs its group
// on the declaring node only and one of size 2 on two nodes; a node that is not a replica
// publishes with confirms to it and consumes from it (the data link's proxy).
func TestQuorumPlacementGroupSize(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	waitQuorum(t, "set_nodes applied", func() bool {
		for _, n := range nodes {
			m := n.node.meta
			m.mu.Lock()
			k := len(m.st.Nodes)
			m.mu.Unlock()
			if k != 3 {
				return false
			}
		}
		return true
	})

	declareQuorum(t, nodes, "n1", "q1", amqp091.Table{"x-quorum-initial-group-size": int32(1)})
	if p, _ := nodes["n2"].node.QuorumMembers("/", "q1"); !slices.Equal(p.Members, []string{"n1"}) || p.Home != "n1" {
		t.Fatalf("q1 placement %+v", p)
	}
	waitQuorum(t, "q1's group on n1 alone", func() bool { return slices.Equal(runsGroup(nodes, "q1"), []string{"n1"}) })
	_, ch2 := dial(t, nodes["n2"].url)
	bodies := numbered("a", 20)
	publishConfirmed(t, ch2, "q1", bodies...)
	_, ch3 := dial(t, nodes["n3"].url)
	if got := consumeN(t, ch3, "q1", 20); !slices.Equal(got, bodies) {
		t.Fatalf("consumed on n3 %v", got)
	}
	waitQuorum(t, "q1 empty on its replica", func() bool {
		info, ok := nodes["n1"].srv.Broker().VHost("/").QueueInfo("q1")
		return ok && info.Counts.Ready == 0 && info.Counts.Unacked == 0
	})

	declareQuorum(t, nodes, "n3", "q2", amqp091.Table{"x-quorum-initial-group-size": int32(2)})
	p, _ := nodes["n1"].node.QuorumMembers("/", "q2")
	if len(p.Members) != 2 || !slices.Contains(p.Members, "n3") || p.Home != "n3" || slices.Contains(p.Members, "n1") {
		// n1 holds q1's replica: the second replica goes to the least loaded node, n2.
		t.Fatalf("q2 placement %+v", p)
	}
	waitQuorum(t, "q2's group on n2 and n3", func() bool { return slices.Equal(runsGroup(nodes, "q2"), []string{"n2", "n3"}) })
	_, ch1 := dial(t, nodes["n1"].url)
	bodies = numbered("b", 10)
	publishConfirmed(t, ch1, "q2", bodies...)
	_, ch1b := dial(t, nodes["n1"].url)
	if got := consumeN(t, ch1b, "q2", 10); !slices.Equal(got, bodies) {
		t.Fatalf("consumed on n1 %v", got)
	}
}

// TestQuorumMembersGrowShrink: a queue of one replica with a compacted log grows to three
// (the new replicas catch up from a snapshot and the log's tail); its only original replica
// is killed and the messages are still there; the dead node is removed and the queue shrinks
// to one replica, whose former replica deletes its copy and still reaches the queue.
func TestQuorumMembersGrowShrink(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qm", amqp091.Table{"x-quorum-initial-group-size": int32(1)})
	waitQuorum(t, "qm's group on n1 alone", func() bool { return slices.Equal(runsGroup(nodes, "qm"), []string{"n1"}) })

	// 18 MiB of bodies published and consumed one at a time: past multiraft's SnapshotBytes
	// (16 MiB), so the log is compacted under a snapshot (of a small state: a snapshot must
	// fit in one store value) before the new members ask for it; then a tail of messages
	// that stay in the queue.
	_, ch1 := dial(t, nodes["n1"].url)
	_, ch1c := dial(t, nodes["n1"].url)
	ds1, err := ch1c.Consume("qm", "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	big := string(bytes.Repeat([]byte("x"), 1<<20))
	for i := range 18 {
		publishConfirmed(t, ch1, "qm", fmt.Sprint(i, big))
		if d := recv(t, ds1); len(d.Body) != len(big)+len(fmt.Sprint(i)) {
			t.Fatalf("big message %d: %d bytes", i, len(d.Body))
		} else if err := d.Ack(false); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch1c.Close(); err != nil {
		t.Fatal(err)
	}
	tail := numbered("t", 20)
	publishConfirmed(t, ch1, "qm", tail...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Each add asked on n3, which runs no replica at first (as rabbitmq-queues add_member
	// works from any node): it returns once a replica recorded the member joined.
	for _, add := range []string{"n2", "n3"} {
		if err := nodes["n3"].node.AddQuorumMember(ctx, "/", "qm", add); err != nil {
			t.Fatalf("add_member %s: %v", add, err)
		}
	}
	all := []string{"n1", "n2", "n3"}
	waitQuorum(t, "qm's group on every node, every node a voter, caught up", func() bool {
		lead, ok := nodes["n1"].node.QuorumStatus("/", "qm")
		if !ok || !slices.Equal(lead.Members, all) {
			return false
		}
		for _, n := range nodes {
			st, ok := n.node.QuorumStatus("/", "qm")
			if !ok || !slices.Equal(st.Members, all) || st.Applied < lead.Commit {
				return false
			}
		}
		return true
	})

	// Kill the only replica the queue started with: the two new ones are a majority.
	nodes["n1"].crash()
	delete(nodes, "n1")
	_, ch2 := dial(t, nodes["n2"].url)
	if got := consumeN(t, ch2, "qm", len(tail)); !slices.Equal(got, tail) {
		t.Fatalf("consumed on n2 after n1 died: %v", got)
	}

	// Shrink: the dead node, then n3. The last replica cannot go.
	if res := nodes["n2"].node.ShrinkQuorum(ctx, "n1"); len(res) != 1 || res[0].Err != nil || res[0].Size != 2 {
		t.Fatalf("shrink n1: %+v", res)
	}
	if err := nodes["n2"].node.DeleteQuorumMember(ctx, "/", "qm", "n3"); err != nil {
		t.Fatal(err)
	}
	if err := nodes["n3"].node.DeleteQuorumMember(ctx, "/", "qm", "n2"); amqpErrCode(err) != 406 {
		t.Fatalf("removing the last replica: %v", err)
	}
	waitQuorum(t, "qm's group on n2 alone", func() bool {
		st, ok := nodes["n2"].node.QuorumStatus("/", "qm")
		return ok && slices.Equal(st.Members, []string{"n2"}) && slices.Equal(runsGroup(nodes, "qm"), []string{"n2"})
	})
	_, ch3 := dial(t, nodes["n3"].url)
	more := numbered("m", 5)
	publishConfirmed(t, ch3, "qm", more...)
	_, ch3b := dial(t, nodes["n3"].url)
	if got := consumeN(t, ch3b, "qm", 5); !slices.Equal(got, more) {
		t.Fatalf("consumed on n3 after shrink: %v", got)
	}
	// grow n3 all: back to two replicas.
	res, err := nodes["n3"].node.GrowQuorum(ctx, "n3", GrowSelection{QueuePattern: "^qm$"})
	if err != nil || len(res) != 1 || res[0].Err != nil || res[0].Size != 2 {
		t.Fatalf("grow: %+v %v", res, err)
	}
	waitQuorum(t, "qm's group on n2 and n3", func() bool {
		st, ok := nodes["n3"].node.QuorumStatus("/", "qm")
		return ok && slices.Equal(st.Members, []string{"n2", "n3"})
	})
}
