package cluster

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// withLiveness is a startLinkedPrep prep that wires each node's broker to its metadata's view
// of dead nodes, as StartNode does.
func withLiveness(_ int, m *Metadata) {
	m.applier.(*broker.Broker).SetNodeLiveness(m)
}

// propose appends c to the cluster's metadata log (as the leader's node_down or node_up).
func (lc *linkedCluster) propose(t *testing.T, c Command) {
	t.Helper()
	if _, err := lc.log.join(NewMetadata(nil, quietLog())).Propose(t.Context(), c.Encode()); err != nil {
		t.Fatal(err)
	}
}

// amqpErr is err's AMQP code and reason ("" when it is no AMQP error).
func amqpErr(err error) (int, string) {
	var ae *amqp091.Error
	if errors.As(err, &ae) {
		return ae.Code, ae.Reason
	}
	return 0, ""
}

// With the home node of durable queue dq taken for dead (node_down), every method that names
// dq on another node answers as RabbitMQ 3.10 does for a durable classic queue whose node is
// down: the channel closes with 404 "home node ... is down or inaccessible" - passive and
// active declare, consume, get, purge, delete, bind and unbind (absent_errs_only: even an
// unbind of no binding). Each answer comes at once (not after a link dial and its 541, nor
// after the lagging-home retries). The transient queue and the exclusive queue of the dead
// node's connection are gone (plain 404). node_up brings dq back, with its message.
func TestHomeDownAnswers(t *testing.T) {
	lc := startLinkedPrep(t, 3, nil, nil, nil, withLiveness)
	_, ch1 := dial(t, lc.urls[0])
	if err := ch1.ExchangeDeclare("x", "direct", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch1.QueueDeclare("dq", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch1.QueueDeclare("tq", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch1.QueueBind("dq", "k", "x", false, nil); err != nil {
		t.Fatal(err)
	}
	_, ch1x := dial(t, lc.urls[0])
	if _, err := ch1x.QueueDeclare("xq", false, false, true, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch1.Publish("", "dq", false, false, amqp091.Publishing{DeliveryMode: 2, Body: []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	ready(t, ch1, "dq", 1)

	lc.propose(t, Command{Op: OpNodeDown, Node: "n1"})

	const down = "NOT_FOUND - home node 'n1' of durable queue 'dq' in vhost '/' is down or inaccessible"
	const noTQ = "NOT_FOUND - no queue 'tq' in vhost '/'"
	const noXQ = "NOT_FOUND - no queue 'xq' in vhost '/'"
	cases := []struct {
		name string
		call func(ch *amqp091.Channel) error
		want string
	}{
		{"passive declare", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclarePassive("dq", true, false, false, false, nil)
			return err
		}, down},
		{"declare", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclare("dq", true, false, false, false, nil)
			return err
		}, down},
		{"consume", func(ch *amqp091.Channel) error {
			_, err := ch.Consume("dq", "", false, false, false, false, nil)
			return err
		}, down},
		{"get", func(ch *amqp091.Channel) error {
			_, _, err := ch.Get("dq", false)
			return err
		}, down},
		{"purge", func(ch *amqp091.Channel) error {
			_, err := ch.QueuePurge("dq", false)
			return err
		}, down},
		{"delete", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDelete("dq", false, false, false)
			return err
		}, down},
		{"delete if-empty", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDelete("dq", false, true, false)
			return err
		}, down},
		{"bind", func(ch *amqp091.Channel) error { return ch.QueueBind("dq", "k2", "x", false, nil) }, down},
		{"unbind", func(ch *amqp091.Channel) error { return ch.QueueUnbind("dq", "k", "x", nil) }, down},
		{"unbind of no binding", func(ch *amqp091.Channel) error { return ch.QueueUnbind("dq", "none", "x", nil) }, down},
		{"transient queue gone", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclarePassive("tq", false, false, false, false, nil)
			return err
		}, noTQ},
		{"exclusive queue gone", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclarePassive("xq", false, false, true, false, nil)
			return err
		}, noXQ},
	}
	for _, node := range []int{1, 2} {
		for _, tc := range cases {
			_, ch := dial(t, lc.urls[node])
			start := time.Now()
			err := tc.call(ch)
			took := time.Since(start)
			if code, reason := amqpErr(err); code != 404 || reason != tc.want {
				t.Errorf("n%d %s: %v, want 404 %q", node+1, tc.name, err, tc.want)
			}
			if took > time.Second {
				t.Errorf("n%d %s took %v", node+1, tc.name, took)
			}
		}
	}
	// A passive declare with no-wait still closes the channel with the 404 (RabbitMQ raises
	// it whatever no-wait says).
	_, ch2 := dial(t, lc.urls[1])
	closed := ch2.NotifyClose(make(chan *amqp091.Error, 1))
	if _, err := ch2.QueueDeclarePassive("dq", true, false, false, true, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-closed:
		if e == nil || e.Code != 404 || e.Reason != down {
			t.Errorf("passive no-wait declare: channel closed with %v", e)
		}
	case <-time.After(5 * time.Second):
		t.Error("passive no-wait declare of a queue whose home is down: the channel stayed open")
	}

	// The node returns: dq answers again, from its home, with its message and its binding.
	lc.propose(t, Command{Op: OpNodeUp, Node: "n1"})
	_, ch2 = dial(t, lc.urls[1])
	st, err := ch2.QueueDeclarePassive("dq", true, false, false, false, nil)
	if err != nil || st.Messages != 1 {
		t.Fatalf("dq after node_up: %+v %v, want 1 message", st, err)
	}
	if err := ch2.Publish("x", "k", false, false, amqp091.Publishing{Body: []byte("bound")}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kept", "bound"} {
		var d amqp091.Delivery
		var ok bool
		for deadline := time.Now().Add(5 * time.Second); !ok && time.Now().Before(deadline); {
			if d, ok = getBody(t, ch2, "dq"); !ok {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if !ok || string(d.Body) != want {
			t.Fatalf("get of dq on n2 after node_up: %q %v, want %q", d.Body, ok, want)
		}
	}
}

// A node removed from the cluster (node_gone): its durable queue answers the same 404 to a
// consume, and a delete of it succeeds (so that the name can be declared again elsewhere).
func TestHomeGoneQueueDeletes(t *testing.T) {
	lc := startLinkedPrep(t, 2, nil, nil, nil, withLiveness)
	_, ch1 := dial(t, lc.urls[0])
	if _, err := ch1.QueueDeclare("dq", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	lc.propose(t, Command{Op: OpNodeGone, Node: "n1"})
	_, ch2 := dial(t, lc.urls[1])
	if _, err := ch2.Consume("dq", "", false, false, false, false, nil); amqpCode(err) != 404 {
		t.Fatalf("consume of a queue of a removed node: %v", err)
	}
	_, ch2 = dial(t, lc.urls[1])
	if _, err := ch2.QueueDelete("dq", false, false, false); err != nil {
		t.Fatalf("delete of a queue of a removed node: %v", err)
	}
	if _, err := ch2.QueueDeclare("dq", true, false, false, false, nil); err != nil {
		t.Fatalf("declare again on n2: %v", err)
	}
}

// A client declares a queue through n2 that is homed on n1 while n1 lags on the metadata log,
// and at once consumes, gets and purges it through n2: n1 does not know the queue yet and
// answers 404, which n2 (which applied the declare) takes for the home's lag and asks again,
// bounded, instead of closing the client's channel.
func TestProxyOnLaggingHome(t *testing.T) {
	var lag atomic.Bool
	lc := startLinkedPrep(t, 2, []string{"n1"}, []string{"", "balanced"}, nil, func(i int, m *Metadata) {
		withLiveness(i, m)
		if i != 0 {
			return
		}
		m.testApplyDelay = func() {
			if lag.Load() {
				time.Sleep(300 * time.Millisecond)
			}
		}
		m.StartWorker()
		t.Cleanup(m.StopWorker)
	})
	_, ch2 := dial(t, lc.urls[1])
	lag.Store(true)
	defer lag.Store(false)
	// Balanced over the members {n1}: homed on n1. no-wait: declare-ok's counts would ask n1
	// (and wait for it, TestDeclareOnLaggingHome).
	for _, q := range []string{"lc", "lg", "lp"} {
		if _, err := ch2.QueueDeclare(q, false, false, false, true, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ch2.Consume("lc", "c", true, false, false, false, nil); err != nil {
		t.Fatalf("consume on n2 of a queue just declared, homed on a lagging n1: %v", err)
	}
	if _, ok, err := ch2.Get("lg", true); err != nil || ok {
		t.Fatalf("get on n2 of a queue just declared, homed on a lagging n1: %v %v", ok, err)
	}
	if _, err := ch2.QueuePurge("lp", false); err != nil {
		t.Fatalf("purge on n2 of a queue just declared, homed on a lagging n1: %v", err)
	}
	// A queue that is gone for good still answers 404 at once.
	start := time.Now()
	if _, _, err := ch2.Get("never-declared", true); amqpCode(err) != 404 {
		t.Fatalf("get of a missing queue: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("get of a missing queue took %v", d)
	}
}

// The state machine's verdicts for queues of a dead or removed node, and NodeDown's view, which
// follows node_down, node_up, node_gone, node_restarted and a snapshot restore.
func TestMetadataHomeDown(t *testing.T) {
	quorum := args(t, amqp.Table{"x-queue-type": "quorum"})
	q := func(name string, a []byte) Command {
		return Command{Op: OpDeclareQueue, VHost: "/", Name: name, Durable: true, Node: "n1", Args: a}
	}
	node := func(op, n string) Command { return Command{Op: op, Node: n} }
	bind := func(op, key string) Command {
		return Command{Op: op, VHost: "/", Source: "amq.direct", Destination: "dq", Key: key, Node: "n2"}
	}
	del := func(name string) Command { return Command{Op: OpDeleteQueue, VHost: "/", Name: name, Node: "n2"} }
	const down = "NOT_FOUND - home node 'n1' of durable queue 'dq' in vhost '/' is down or inaccessible"
	type step struct {
		cmd  Command
		code uint16
		text string
		// n1Down is NodeDown("n1") after the step.
		n1Down bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"node_down: 404 for declare, bind, unbind (bound or not), delete; quorum queues unaffected", []step{
			{cmd: q("dq", nil)}, {cmd: q("qq", quorum)}, {cmd: bind(OpBind, "k")},
			{cmd: node(OpNodeDown, "n1"), n1Down: true},
			{cmd: q("dq", nil), code: amqp.NotFound, text: down, n1Down: true},
			{cmd: bind(OpBind, "k2"), code: amqp.NotFound, text: down, n1Down: true},
			{cmd: bind(OpUnbind, "k"), code: amqp.NotFound, text: down, n1Down: true},
			{cmd: bind(OpUnbind, "none"), code: amqp.NotFound, text: down, n1Down: true},
			{cmd: del("dq"), code: amqp.NotFound, text: down, n1Down: true},
			{cmd: q("qq", quorum), n1Down: true},
			{cmd: del("qq"), n1Down: true},
			{cmd: node(OpNodeUp, "n1")},
			{cmd: bind(OpUnbind, "k")},
			{cmd: del("dq")},
		}},
		{"node_gone: 404 for a declare, the delete succeeds; node_restarted ends it", []step{
			{cmd: q("dq", nil)},
			{cmd: node(OpNodeGone, "n1"), n1Down: true},
			{cmd: q("dq", nil), code: amqp.NotFound, text: down, n1Down: true},
			{cmd: bind(OpBind, "k"), code: amqp.NotFound, text: down, n1Down: true},
			{cmd: del("dq"), n1Down: true},
			{cmd: RestartCommand("n1", 2)},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMetadata(nil, quietLog())
			for i, s := range tc.steps {
				r := m.Apply(uint64(i+1), s.cmd.Encode()).(Result)
				if r.Code != s.code || (s.text != "" && r.Text != s.text) {
					t.Fatalf("step %d (%s): %d %q, want %d %q", i, s.cmd.Op, r.Code, r.Text, s.code, s.text)
				}
				if got := m.NodeDown("n1"); got != s.n1Down {
					t.Fatalf("step %d (%s): NodeDown(n1) %v, want %v", i, s.cmd.Op, got, s.n1Down)
				}
			}
		})
	}
	// A snapshot carries the view to a node that restores it.
	m := NewMetadata(nil, quietLog())
	down3 := node(OpNodeDown, "n3")
	m.Apply(1, down3.Encode())
	snap, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	r := NewMetadata(nil, quietLog())
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if !r.NodeDown("n3") || r.NodeDown("n1") {
		t.Fatalf("restored NodeDown: n3 %v, n1 %v", r.NodeDown("n3"), r.NodeDown("n1"))
	}
}

// Before the cluster takes a stopped home for dead, the link cannot reach it: a consume, get,
// purge, passive declare or delete of its durable queue on another node answers RabbitMQ's 404
// "down or inaccessible" (closing the channel, not the connection), in bounded time; a
// non-durable queue's stays the link's 541 (RabbitMQ would delete it once the node is known
// down; until then Warren cannot call it absent).
func TestHomeUnreachableBeforeNodeDown(t *testing.T) {
	lc := startLinkedPrep(t, 3, nil, nil, nil, withLiveness)
	_, ch3 := dial(t, lc.urls[2])
	if _, err := ch3.QueueDeclare("d3", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch3.QueueDeclare("t3", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	_, ch2 := dial(t, lc.urls[1])
	if _, err := ch2.QueueDeclarePassive("d3", true, false, false, false, nil); err != nil {
		t.Fatal(err) // the link to n3 works
	}
	_ = lc.servers[2].Close()

	const down = "NOT_FOUND - home node 'n3' of durable queue 'd3' in vhost '/' is down or inaccessible"
	for _, tc := range []struct {
		name string
		call func(ch *amqp091.Channel) error
		code int
	}{
		{"consume", func(ch *amqp091.Channel) error {
			_, err := ch.Consume("d3", "", false, false, false, false, nil)
			return err
		}, 404},
		{"get", func(ch *amqp091.Channel) error {
			_, _, err := ch.Get("d3", false)
			return err
		}, 404},
		{"purge", func(ch *amqp091.Channel) error {
			_, err := ch.QueuePurge("d3", false)
			return err
		}, 404},
		{"passive declare", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclarePassive("d3", true, false, false, false, nil)
			return err
		}, 404},
		{"delete", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDelete("d3", false, false, false)
			return err
		}, 404},
		{"consume of a transient queue", func(ch *amqp091.Channel) error {
			_, err := ch.Consume("t3", "", false, false, false, false, nil)
			return err
		}, 541},
	} {
		_, ch := dial(t, lc.urls[1])
		start := time.Now()
		code, reason := amqpErr(tc.call(ch))
		if took := time.Since(start); took > 6*time.Second {
			t.Errorf("%s with n3 unreachable took %v", tc.name, took)
		}
		if code != tc.code || (code == 404 && reason != down) {
			t.Errorf("%s with n3 unreachable: %d %q, want %d", tc.name, code, reason, tc.code)
		}
	}
}

// A publish that routes to durable queue dq, whose home n1 the cluster takes for dead, goes
// past it as RabbitMQ 3.10 does (observed on a 3-node RabbitMQ cluster with dq's node stopped
// by stop_app and by kill -9; NOTES-link2.md): the confirm is an ack whatever the delivery
// mode; a mandatory publish that reaches no other queue comes back as basic.return 312
// NO_ROUTE (before its ack); a fanout's live queue gets its copy; an exchange whose only
// bound queue is dq hands the message to its alternate exchange; a transaction's commit
// succeeds with the return. dq gets nothing of it: after node_up it holds only what it had.
func TestPublishHomeDownRoutesPast(t *testing.T) {
	lc := startLinkedPrep(t, 3, nil, nil, nil, withLiveness)
	_, ch1 := dial(t, lc.urls[0])
	if _, err := ch1.QueueDeclare("dq", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	_, ch3 := dial(t, lc.urls[2])
	if _, err := ch3.QueueDeclare("lq", true, false, false, false, nil); err != nil { // homed on n3
		t.Fatal(err)
	}
	for _, x := range []struct{ name, kind, alt string }{{"fx", "fanout", ""}, {"dx", "direct", ""}, {"ae", "fanout", ""}, {"ax", "direct", "ae"}} {
		var a amqp091.Table
		if x.alt != "" {
			a = amqp091.Table{"alternate-exchange": x.alt}
		}
		if err := ch1.ExchangeDeclare(x.name, x.kind, true, false, false, false, a); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range []struct{ q, key, ex string }{{"dq", "", "fx"}, {"lq", "", "fx"}, {"dq", "k", "dx"}, {"dq", "k", "ax"}, {"lq", "", "ae"}} {
		if err := ch1.QueueBind(b.q, b.key, b.ex, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	lc.propose(t, Command{Op: OpNodeDown, Node: "n1"})

	_, ch2 := dial(t, lc.urls[1])
	if err := ch2.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch2.NotifyPublish(make(chan amqp091.Confirmation, 1))
	returns := ch2.NotifyReturn(make(chan amqp091.Return, 1))
	toLive := 0
	for _, mode := range []uint8{amqp091.Persistent, amqp091.Transient} {
		for _, tc := range []struct {
			name, ex, key string
			mandatory     bool
			returned      bool // 312 NO_ROUTE
			live          bool // lq gets a copy
		}{
			{"fanout to dq and lq", "fx", "", false, false, true},
			{"fanout to dq and lq, mandatory", "fx", "", true, false, true},
			{"default exchange to dq", "", "dq", false, false, false},
			{"default exchange to dq, mandatory", "", "dq", true, true, false},
			{"direct to dq only", "dx", "k", false, false, false},
			{"direct to dq only, mandatory", "dx", "k", true, true, false},
			{"dq only, alternate exchange to lq, mandatory", "ax", "k", true, false, true},
		} {
			start := time.Now()
			if err := ch2.Publish(tc.ex, tc.key, tc.mandatory, false, amqp091.Publishing{DeliveryMode: mode, Body: []byte(tc.name)}); err != nil {
				t.Fatal(err)
			}
			var got []string
		wait:
			for {
				select {
				case r := <-returns:
					got = append(got, fmt.Sprintf("return %d %s", r.ReplyCode, r.ReplyText))
				case c := <-confirms:
					got = append(got, fmt.Sprintf("ack %v", c.Ack))
					break wait
				case <-time.After(10 * time.Second):
					t.Fatalf("%s: no confirm within 10 s (got %v)", tc.name, got)
				}
			}
			// amqp091-go hands returns and confirms to separate channels, so a return sent
			// before the ack may be seen after it here.
			select {
			case r := <-returns:
				got = append([]string{fmt.Sprintf("return %d %s", r.ReplyCode, r.ReplyText)}, got...)
			case <-time.After(100 * time.Millisecond):
			}
			want := []string{"ack true"}
			if tc.returned {
				want = []string{"return 312 NO_ROUTE", "ack true"}
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s (delivery mode %d): %v, want %v", tc.name, mode, got, want)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("%s: the confirm took %v", tc.name, took)
			}
			if tc.live {
				toLive++
			}
		}
	}
	// A transaction: commit-ok, with the mandatory publish returned first.
	_, tx := dial(t, lc.urls[1])
	txReturns := tx.NotifyReturn(make(chan amqp091.Return, 1))
	if err := tx.Tx(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Publish("", "dq", true, false, amqp091.Publishing{DeliveryMode: amqp091.Persistent, Body: []byte("tx")}); err != nil {
		t.Fatal(err)
	}
	if err := tx.TxCommit(); err != nil {
		t.Fatalf("tx.commit of a publish to dq only: %v, want commit-ok", err)
	}
	select {
	case r := <-txReturns:
		if r.ReplyCode != 312 {
			t.Fatalf("tx return %d %s", r.ReplyCode, r.ReplyText)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the transaction's mandatory publish to dq only was not returned")
	}
	ready(t, ch2, "lq", toLive)

	lc.propose(t, Command{Op: OpNodeUp, Node: "n1"})
	_, ch2 = dial(t, lc.urls[1])
	if st, err := ch2.QueueDeclarePassive("dq", true, false, false, false, nil); err != nil || st.Messages != 0 {
		t.Fatalf("dq after node_up: %+v %v, want it empty (nothing was routed to it while down)", st, err)
	}
	// And routing to it resumes.
	if err := ch2.Publish("dx", "k", true, false, amqp091.Publishing{Body: []byte("back")}); err != nil {
		t.Fatal(err)
	}
	ready(t, ch2, "dq", 1)
}

// confirmOneMandatory is confirmOne for a mandatory publish.
func confirmOneMandatory(t *testing.T, ch *amqp091.Channel, confirms <-chan amqp091.Confirmation, ex, key string, p amqp091.Publishing) bool {
	t.Helper()
	if err := ch.Publish(ex, key, true, false, p); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-confirms:
		return c.Ack
	case <-time.After(10 * time.Second):
		t.Fatal("no confirm within 10 s")
	}
	return false
}
