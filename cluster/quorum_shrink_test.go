package cluster

import (
	"context"
	"slices"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// TestQuorumShrinkGivesBackHeld: a replica removed (delete_member) while its consumer holds
// unacked deliveries: the remaining replicas take back what it held (NodeDown), so the
// messages are redelivered to a consumer on another replica, and new publishes reach that
// consumer, none of them assigned to the removed node.
func TestQuorumShrinkGivesBackHeld(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qs", amqp091.Table{"x-quorum-initial-group-size": int32(3)})
	waitQuorum(t, "qs's group on every node", func() bool { return slices.Equal(runsGroup(nodes, "qs"), []string{"n1", "n2", "n3"}) })

	// n3's consumer takes every message and acks none.
	_, ch3 := dial(t, nodes["n3"].url)
	ds3, err := ch3.Consume("qs", "c3", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, ch1 := dial(t, nodes["n1"].url)
	held := numbered("h", 10)
	publishConfirmed(t, ch1, "qs", held...)
	for range held {
		recv(t, ds3)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := nodes["n1"].node.DeleteQuorumMember(ctx, "/", "qs", "n3"); err != nil {
		t.Fatal(err)
	}
	waitQuorum(t, "qs's group on n1 and n2", func() bool { return slices.Equal(runsGroup(nodes, "qs"), []string{"n1", "n2"}) })

	_, ch2 := dial(t, nodes["n2"].url)
	ds2, err := ch2.Consume("qs", "c2", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	more := numbered("m", 10)
	publishConfirmed(t, ch1, "qs", more...)
	var got []string
	for range len(held) + len(more) {
		d := recv(t, ds2)
		got = append(got, string(d.Body))
		if err := d.Ack(false); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(got)
	if want := append(slices.Clone(held), more...); !slices.Equal(got, want) {
		t.Fatalf("consumed on n2 %v, want %v", got, want)
	}
}

// TestConsumerTimeoutNotHeldByQuorum: a consumer timeout on a quorum queue whose log has no
// majority does not hold up the server's consumer-timeout loop: the requeue of its unacked
// delivery waits for the log (up to quorumOpTimeout, twice), and another channel's timeout,
// on a classic queue, must close that channel on time meanwhile.
func TestConsumerTimeoutNotHeldByQuorum(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	declareQuorum(t, nodes, "n1", "qt", amqp091.Table{"x-quorum-initial-group-size": int32(3), "x-consumer-timeout": int32(1500)})
	waitQuorum(t, "qt's group on every node", func() bool { return slices.Equal(runsGroup(nodes, "qt"), []string{"n1", "n2", "n3"}) })
	_, ch := dial(t, nodes["n1"].url)
	if _, err := ch.QueueDeclare("ct", false, false, false, false, amqp091.Table{"x-consumer-timeout": int32(2500)}); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, ch, "qt", "q")
	publishConfirmed(t, ch, "ct", "c")

	_, chq := dial(t, nodes["n1"].url)
	dq, err := chq.Consume("qt", "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	recv(t, dq)
	// The log loses its majority before qt's timeout.
	nodes["n2"].crash()
	nodes["n3"].crash()
	_, chc := dial(t, nodes["n1"].url)
	closed := chc.NotifyClose(make(chan *amqp091.Error, 1))
	dc, err := chc.Consume("ct", "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	recv(t, dc)
	start := time.Now()
	select {
	case e := <-closed:
		if e == nil || e.Code != 406 {
			t.Fatalf("ct's channel closed with %v, want 406", e)
		}
		if took := time.Since(start); took > 6*time.Second {
			t.Fatalf("ct's channel closed after %v (timeout 2.5 s)", took)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("ct's channel not closed 8 s after its delivery (timeout 2.5 s)")
	}
}
