package broker

import (
	"testing"

	"github.com/warrenmq/warren/amqp"
)

// downNodes is a NodeLiveness taking the listed nodes for dead.
type downNodes map[string]bool

func (d downNodes) NodeDown(node string) bool { return d[node] }

// A durable classic queue whose home is down answers the home-down 404; a quorum queue of that
// home does not (its other members serve it), neither when the cluster takes the node for dead
// nor when the link could not reach it.
func TestHomeDownNotForQuorumQueues(t *testing.T) {
	b := newTestBroker(t, "")
	b.SetReplicator(testReplicator{b})
	b.SetNodeLiveness(downNodes{"B": true})
	v := b.VHost("/")
	for _, op := range []TopologyOp{
		{Kind: OpDeclareQueue, VHost: "/", Queue: QueueSpec{Name: "classic", Durable: true}, Home: "B"},
		{Kind: OpDeclareQueue, VHost: "/", Queue: QueueSpec{Name: "quorum", Durable: true,
			Args: amqp.Table{"x-queue-type": "quorum"}}, Home: "B", Members: []string{"B", "C"}},
	} {
		if _, err := b.ApplyTopology(op); err != nil {
			t.Fatal(err)
		}
	}
	unreachable := amqp.Errorf(amqp.InternalError, "cluster link to node B: connection refused")
	for _, tc := range []struct {
		queue    string
		homeDown bool
	}{
		{"classic", true},
		{"quorum", false},
	} {
		v.mu.RLock()
		qs := v.queues[tc.queue]
		v.mu.RUnlock()
		if qs == nil {
			t.Fatalf("%s: not declared", tc.queue)
		}
		if err := v.HomeDown(qs); (err != nil) != tc.homeDown || (err != nil && err.Code != amqp.NotFound) {
			t.Errorf("%s: HomeDown %v, want home-down %v", tc.queue, err, tc.homeDown)
		}
		if got := v.QueueHomeDown(tc.queue); got != tc.homeDown {
			t.Errorf("%s: QueueHomeDown %v, want %v", tc.queue, got, tc.homeDown)
		}
		err := v.HomeUnreachable(qs, unreachable)
		if want := map[bool]uint16{true: amqp.NotFound, false: amqp.InternalError}[tc.homeDown]; err == nil || err.Code != want {
			t.Errorf("%s: HomeUnreachable %v, want code %d", tc.queue, err, want)
		}
	}
}
