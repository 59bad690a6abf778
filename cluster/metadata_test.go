package cluster

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func args(t testing.TB, tbl amqp.Table) []byte {
	t.Helper()
	b, err := encodeArgs(tbl)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// recorder is an Applier that records what it was told.
type recorder struct{ ops []broker.TopologyOp }

func (r *recorder) ApplyTopology(op broker.TopologyOp) (broker.TopologyResult, *amqp.Error) {
	r.ops = append(r.ops, op)
	return broker.TopologyResult{Epoch: op.Epoch}, nil
}

func (r *recorder) kinds() []broker.TopologyKind {
	var out []broker.TopologyKind
	for _, op := range r.ops {
		out = append(out, op.Kind)
	}
	return out
}

func TestMetadataApply(t *testing.T) {
	ttl := func(ms int32) []byte { return args(t, amqp.Table{"x-message-ttl": ms}) }
	q := func(name, node string, conn uint64) Command {
		return Command{Op: OpDeclareQueue, VHost: "/", Name: name, Durable: true, Node: node, Conn: conn}
	}
	x := func(name, kind string) Command {
		return Command{Op: OpDeclareExchange, VHost: "/", Name: name, Type: kind, Durable: true, Node: "n1"}
	}
	bind := func(src, dst, key string, node string, conn uint64) Command {
		return Command{Op: OpBind, VHost: "/", Source: src, Destination: dst, Key: key, Node: node, Conn: conn}
	}
	with := func(c Command, f func(*Command)) Command { f(&c); return c }
	type step struct {
		cmd  Command
		code uint16 // expected verdict
		text string // part of the expected text
	}
	tests := []struct {
		name  string
		steps []step
		// after: queues and exchanges expected (true) or not (false) in vhost "/" at the end
		queues    map[string]bool
		exchanges map[string]bool
		bindings  int
		// notDown are nodes that must not be taken for dead at the end.
		notDown []string
	}{
		{name: "declare is idempotent", steps: []step{{cmd: q("a", "n1", 1)}, {cmd: q("a", "n2", 7)}},
			queues: map[string]bool{"a": true}},
		{name: "redeclare with other args is 406", steps: []step{
			{cmd: with(q("a", "n1", 1), func(c *Command) { c.Args = ttl(1000) })},
			{cmd: with(q("a", "n2", 1), func(c *Command) { c.Args = ttl(2000) }), code: amqp.PreconditionFailed,
				text: "inequivalent arg 'x-message-ttl' for queue 'a' in vhost '/': received the value '2000' of type 'signedint' but current is the value '1000' of type 'signedint'"},
			{cmd: with(q("a", "n1", 1), func(c *Command) { c.Durable = false }), code: amqp.PreconditionFailed, text: "inequivalent arg 'durable'"},
		}, queues: map[string]bool{"a": true}},
		{name: "exchange redeclared with another type is 406", steps: []step{
			{cmd: x("e", "topic")}, {cmd: x("e", "direct"), code: amqp.PreconditionFailed, text: "inequivalent arg 'type' for exchange 'e' in vhost '/': received 'direct' but current is 'topic'"},
		}, exchanges: map[string]bool{"e": true}},
		{name: "unknown exchange type", steps: []step{{cmd: x("e", "nope"), code: amqp.CommandInvalid, text: "unknown exchange type 'nope'"}},
			exchanges: map[string]bool{"e": false}},
		{name: "exclusive queue of another connection is 405", steps: []step{
			{cmd: with(q("ex", "n1", 5), func(c *Command) { c.Exclusive = true; c.Durable = false })},
			{cmd: with(q("ex", "n1", 6), func(c *Command) { c.Exclusive = true; c.Durable = false }), code: amqp.ResourceLocked, text: "cannot obtain exclusive access to locked queue 'ex'"},
			{cmd: with(q("ex", "n2", 5), func(c *Command) { c.Exclusive = true; c.Durable = false }), code: amqp.ResourceLocked},
			{cmd: with(q("ex", "n1", 5), func(c *Command) { c.Exclusive = true; c.Durable = false })},
			{cmd: bind("amq.direct", "ex", "k", "n2", 5), code: amqp.ResourceLocked},
			{cmd: Command{Op: OpDeleteQueue, VHost: "/", Name: "ex", Node: "n2", Conn: 1}, code: amqp.ResourceLocked},
		}, queues: map[string]bool{"ex": true}},
		{name: "drop_owner deletes the connection's exclusive queues only", steps: []step{
			{cmd: with(q("mine", "n1", 5), func(c *Command) { c.Exclusive = true })},
			{cmd: with(q("other", "n1", 6), func(c *Command) { c.Exclusive = true })},
			{cmd: with(q("remote", "n2", 5), func(c *Command) { c.Exclusive = true })},
			{cmd: bind("amq.direct", "mine", "k", "n1", 5)},
			{cmd: Command{Op: OpDropOwner, VHost: "/", Node: "n1", Conn: 5}},
		}, queues: map[string]bool{"mine": false, "other": true, "remote": true}},
		{name: "node_gone deletes every exclusive queue of the node", steps: []step{
			{cmd: with(q("a", "n2", 5), func(c *Command) { c.Exclusive = true })},
			{cmd: with(q("b", "n2", 6), func(c *Command) { c.Exclusive = true })},
			{cmd: q("shared", "n2", 6)},
			{cmd: Command{Op: OpNodeGone, Node: "n2"}},
		}, queues: map[string]bool{"a": false, "b": false, "shared": true}},
		{name: "node_restarted deletes the node's exclusive queues of earlier processes only", steps: []step{
			{cmd: with(q("old", "n2", 1<<32|5), func(c *Command) { c.Exclusive = true })},
			{cmd: with(q("new", "n2", 2<<32|5), func(c *Command) { c.Exclusive = true })},
			{cmd: with(q("n1s", "n1", 1<<32|5), func(c *Command) { c.Exclusive = true })},
			{cmd: RestartCommand("n2", 2<<32)},
		}, queues: map[string]bool{"old": false, "new": true, "n1s": true}},
		{name: "node_down deletes the node's exclusive and non-durable queues; its durable ones answer 404 until node_up", steps: []step{
			{cmd: with(q("excl", "n2", 5), func(c *Command) { c.Exclusive = true })},
			{cmd: with(q("transient", "n2", 0), func(c *Command) { c.Durable = false })},
			{cmd: q("durable", "n2", 6)},
			{cmd: with(q("n1transient", "n1", 0), func(c *Command) { c.Durable = false })},
			{cmd: Command{Op: OpNodeDown, Node: "n2"}},
			{cmd: Command{Op: OpNodeDown, Node: "n2"}}, // again: nothing more
			{cmd: q("durable", "n1", 1), code: amqp.NotFound, text: "home node 'n2' of durable queue 'durable' in vhost '/' is down or inaccessible"},
			{cmd: Command{Op: OpDeleteQueue, VHost: "/", Name: "durable", Node: "n1"}, code: amqp.NotFound, text: "is down or inaccessible"},
			{cmd: Command{Op: OpNodeUp, Node: "n2"}},
			{cmd: q("durable", "n1", 1)},
		}, queues: map[string]bool{"excl": false, "transient": false, "durable": true, "n1transient": true}},
		{name: "node_gone ends node_down; the gone node's durable queues can be deleted and declared anew", steps: []step{
			{cmd: Command{Op: OpSetNodes, Nodes: []string{"n1", "n2", "n3"}}},
			{cmd: q("durable", "n2", 6)},
			{cmd: with(q("transient", "n2", 0), func(c *Command) { c.Durable = false })},
			{cmd: with(q("excl", "n2", 5), func(c *Command) { c.Exclusive = true })},
			{cmd: Command{Op: OpNodeDown, Node: "n2"}},
			{cmd: Command{Op: OpSetNodes, Nodes: []string{"n1", "n3"}}},
			{cmd: Command{Op: OpNodeGone, Node: "n2"}},
			{cmd: q("durable", "n1", 1), code: amqp.NotFound, text: "home node 'n2' of durable queue 'durable' in vhost '/' is down or inaccessible"},
			{cmd: Command{Op: OpDeleteQueue, VHost: "/", Name: "durable", Node: "n1"}},
			{cmd: q("durable", "n1", 1)},
			{cmd: q("durable2", "n2", 7)}, // a late command of n2's
			{cmd: q("durable2", "n1", 1), code: amqp.NotFound, text: "home node 'n2'"},
			{cmd: Command{Op: OpSetNodes, Nodes: []string{"n1", "n2", "n3"}}}, // n2 added again
			{cmd: q("durable2", "n1", 1)},
		}, queues: map[string]bool{"durable": true, "durable2": true, "transient": false, "excl": false}, notDown: []string{"n2"}},
		{name: "a member's queue whose home is down cannot be deleted", steps: []step{
			{cmd: Command{Op: OpSetNodes, Nodes: []string{"n1", "n2"}}},
			{cmd: q("durable", "n2", 6)},
			{cmd: Command{Op: OpNodeDown, Node: "n2"}},
			{cmd: Command{Op: OpDeleteQueue, VHost: "/", Name: "durable", Node: "n1"}, code: amqp.NotFound, text: "is down or inaccessible"},
		}, queues: map[string]bool{"durable": true}},
		{name: "node_restarted ends node_down", steps: []step{
			{cmd: q("durable", "n2", 6)},
			{cmd: Command{Op: OpNodeDown, Node: "n2"}},
			{cmd: RestartCommand("n2", 2<<32)},
			{cmd: q("durable", "n3", 1)},
		}, queues: map[string]bool{"durable": true}},
		{name: "bind needs both ends", steps: []step{
			{cmd: q("a", "n1", 1)},
			{cmd: bind("nope", "a", "k", "n1", 1), code: amqp.NotFound, text: "no exchange 'nope' in vhost '/'"},
			{cmd: bind("amq.topic", "nope", "k", "n1", 1), code: amqp.NotFound, text: "no queue 'nope' in vhost '/'"},
			{cmd: bind("amq.topic", "a", "k", "n1", 1)},
			{cmd: bind("amq.topic", "a", "k", "n2", 9)}, // the same binding again: nothing new
		}, queues: map[string]bool{"a": true}, bindings: 1},
		{name: "unbind of what is gone succeeds", steps: []step{
			{cmd: with(bind("amq.topic", "gone", "k", "n1", 1), func(c *Command) { c.Op = OpUnbind })},
		}},
		{name: "queue delete drops bindings and auto-delete exchanges", steps: []step{
			{cmd: with(x("auto", "fanout"), func(c *Command) { c.AutoDelete = true })},
			{cmd: q("a", "n1", 1)},
			{cmd: bind("auto", "a", "", "n1", 1)},
			{cmd: Command{Op: OpDeleteQueue, VHost: "/", Name: "a", Node: "n3"}},
		}, queues: map[string]bool{"a": false}, exchanges: map[string]bool{"auto": false}},
		{name: "exchange delete if-unused", steps: []step{
			{cmd: x("e", "direct")}, {cmd: q("a", "n1", 1)}, {cmd: bind("e", "a", "k", "n1", 1)},
			{cmd: Command{Op: OpDeleteExchange, VHost: "/", Name: "e", IfUnused: true}, code: amqp.PreconditionFailed, text: "exchange 'e' in vhost '/' in use"},
			{cmd: Command{Op: OpDeleteExchange, VHost: "/", Name: "e"}},
		}, exchanges: map[string]bool{"e": false}, queues: map[string]bool{"a": true}},
		{name: "exchange-to-exchange bindings go with either end", steps: []step{
			{cmd: with(x("src", "topic"), func(c *Command) { c.AutoDelete = true })}, {cmd: x("dst", "fanout")},
			{cmd: with(bind("src", "dst", "#", "n1", 0), func(c *Command) { c.ToExchange = true })},
			{cmd: Command{Op: OpDeleteExchange, VHost: "/", Name: "dst"}},
		}, exchanges: map[string]bool{"src": false, "dst": false}},
		{name: "a stale removal does not delete the queue declared again", steps: []step{
			{cmd: q("a", "n1", 1)}, // epoch 1
			{cmd: Command{Op: OpDeleteQueue, VHost: "/", Name: "a", Node: "n1"}},
			{cmd: q("a", "n1", 1)}, // epoch 3
			{cmd: Command{Op: OpDeleteQueue, VHost: "/", Name: "a", Node: "n1", Epoch: 1}},
		}, queues: map[string]bool{"a": true}},
		{name: "a corrupt entry is refused and changes nothing", steps: []step{
			{cmd: Command{Op: "launch_missiles", VHost: "/"}, code: amqp.InternalError, text: `unknown command "launch_missiles"`},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMetadata(nil, quietLog())
			for i, s := range tt.steps {
				c := s.cmd
				res := m.Apply(uint64(i+1), c.Encode()).(Result)
				if res.Code != s.code || !strings.Contains(res.Text, s.text) {
					t.Fatalf("step %d (%s): got %d %q, want %d containing %q", i, c.Op, res.Code, res.Text, s.code, s.text)
				}
			}
			for _, n := range tt.notDown {
				if m.IsDown(n) {
					t.Errorf("%s still taken for dead", n)
				}
			}
			vs := m.st.VHosts["/"]
			for name, want := range tt.queues {
				if got := vs.Queues[name] != nil; got != want {
					t.Errorf("queue %q present %v, want %v", name, got, want)
				}
			}
			for name, want := range tt.exchanges {
				if got := vs != nil && vs.Exchanges[name] != nil; got != want {
					t.Errorf("exchange %q present %v, want %v", name, got, want)
				}
			}
			if vs != nil && len(vs.bindings) != tt.bindings {
				t.Errorf("%d bindings, want %d: %v", len(vs.bindings), tt.bindings, vs.sortedBindings())
			}
		})
	}
}

func TestQueueHome(t *testing.T) {
	m := NewMetadata(nil, quietLog())
	var i uint64
	apply := func(c Command) Result {
		i++
		return m.Apply(i, c.Encode()).(Result)
	}
	apply(Command{Op: OpSetNodes, Nodes: []string{"n3", "n1", "n2", "n1"}})
	balanced := args(t, amqp.Table{"x-queue-leader-locator": "balanced"})
	var homes []string
	for _, name := range []string{"b1", "b2", "b3", "b4"} {
		homes = append(homes, apply(Command{Op: OpDeclareQueue, VHost: "/", Name: name, Node: "n2", Args: balanced}).Home)
	}
	if got := strings.Join(homes, ","); got != "n1,n2,n3,n1" {
		t.Errorf("balanced homes %s, want n1,n2,n3,n1", got)
	}
	for _, tc := range []struct {
		name string
		c    Command
		want string
	}{
		{"client-local by default", Command{Op: OpDeclareQueue, VHost: "/", Name: "l1", Node: "n3"}, "n3"},
		{"client-local", Command{Op: OpDeclareQueue, VHost: "/", Name: "l2", Node: "n2", Args: args(t, amqp.Table{"x-queue-leader-locator": "client-local"})}, "n2"},
		{"exclusive stays with its connection", Command{Op: OpDeclareQueue, VHost: "/", Name: "x", Node: "n3", Exclusive: true, Args: balanced}, "n3"},
		{"redeclare keeps the home", Command{Op: OpDeclareQueue, VHost: "/", Name: "b1", Node: "n3", Args: balanced}, "n1"},
	} {
		if got := apply(tc.c).Home; got != tc.want {
			t.Errorf("%s: home %s, want %s", tc.name, got, tc.want)
		}
	}
	// Queues per home now: n1 2, n2 2, n3 3. A member taken for dead is never chosen; with
	// every member down the client's node is.
	for _, tc := range []struct {
		name string
		down []string
		node string
		want string
	}{
		{"fewest queues", nil, "n3", "n1"},
		{"fewest queues is down", []string{"n1"}, "n3", "n2"},
		{"all but the busiest down", []string{"n1", "n2"}, "n1", "n3"},
		{"every member down", []string{"n1", "n2", "n3"}, "n2", "n2"},
	} {
		for _, n := range tc.down {
			apply(Command{Op: OpNodeDown, Node: n})
		}
		res := apply(Command{Op: OpDeclareQueue, VHost: "/", Name: "d-" + tc.name, Node: tc.node, Args: balanced})
		if res.Home != tc.want {
			t.Errorf("%s: home %s, want %s", tc.name, res.Home, tc.want)
		}
		// Undo the declare and the downs: each case starts from the same counts.
		apply(Command{Op: OpDeleteQueue, VHost: "/", Name: "d-" + tc.name, Node: tc.node, Epoch: res.Epoch})
		if m.st.VHosts["/"].Queues["d-"+tc.name] != nil {
			t.Fatalf("%s: the declared queue was not deleted", tc.name)
		}
		for _, n := range tc.down {
			apply(Command{Op: OpNodeUp, Node: n})
		}
	}
}

// Three state machines fed by one log end with identical state, and a snapshot restored into
// a fresh machine gives the same state and tells its broker everything.
func TestMetadataReplicasAgreeAndSnapshot(t *testing.T) {
	log := &memLog{}
	var members []memMember
	var machines []*Metadata
	for range 3 {
		m := NewMetadata(nil, quietLog())
		machines = append(machines, m)
		members = append(members, log.join(m))
	}
	ctx := context.Background()
	cmds := []Command{
		{Op: OpSetNodes, Nodes: []string{"n1", "n2", "n3"}},
		{Op: OpDeclareExchange, VHost: "/", Name: "orders", Type: "topic", Durable: true},
		{Op: OpDeclareExchange, VHost: "prod", Name: "h", Type: "headers", Args: args(t, amqp.Table{"alternate-exchange": "ae"})},
		{Op: OpDeclareQueue, VHost: "/", Name: "eu", Durable: true, Args: args(t, amqp.Table{"x-queue-leader-locator": "balanced", "x-max-length": int32(10)})},
		{Op: OpDeclareQueue, VHost: "/", Name: "excl", Exclusive: true, Conn: 4},
		{Op: OpBind, VHost: "/", Source: "orders", Destination: "eu", Key: "eu.#"},
		{Op: OpBind, VHost: "/", Source: "orders", Destination: "eu", Key: "x", Args: args(t, amqp.Table{"x-match": "all", "n": int32(-1), "s": "\xff\xfe"})},
		{Op: OpBind, VHost: "/", Source: "amq.fanout", Destination: "orders", ToExchange: true},
		{Op: OpNodeDown}, // of n3 (Node set below): the down set travels in the snapshot
	}
	for i, c := range cmds {
		c.Node = []string{"n1", "n2", "n3"}[i%3]
		out, err := members[i%3].Propose(ctx, c.Encode())
		if err != nil {
			t.Fatal(err)
		}
		if r := out.(Result); r.Code != 0 {
			t.Fatalf("%s: %s", c.Op, r.Text)
		}
	}
	snaps := make([][]byte, 3)
	for i, m := range machines {
		var err error
		if snaps[i], err = m.Snapshot(); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(snaps[0], snaps[1]) || !bytes.Equal(snaps[0], snaps[2]) {
		t.Fatalf("replicas differ:\n%s\n%s\n%s", snaps[0], snaps[1], snaps[2])
	}
	rec := &recorder{}
	fresh := NewMetadata(rec, quietLog())
	if err := fresh.Restore(snaps[0]); err != nil {
		t.Fatal(err)
	}
	for _, op := range rec.ops {
		if op.Kind == broker.OpBind && op.Binding.Key == "x" && (op.Binding.Args["n"] != int32(-1) || op.Binding.Args["s"] != "\xff\xfe") {
			t.Errorf("binding arguments changed through the snapshot: %v", op.Binding.Args)
		}
	}
	if !fresh.IsDown("n3") || fresh.IsDown("n1") {
		t.Errorf("restored down set: n3 %v, n1 %v; want n3 only", fresh.IsDown("n3"), fresh.IsDown("n1"))
	}
	again, _ := fresh.Snapshot()
	if !bytes.Equal(again, snaps[0]) {
		t.Errorf("restored state differs:\n%s\n%s", again, snaps[0])
	}
	if fresh.AppliedIndex() != uint64(len(cmds)) {
		t.Errorf("applied index %d, want %d", fresh.AppliedIndex(), len(cmds))
	}
	// Declares: the 5 default exchanges of each of 2 vhosts, orders and h, 2 queues, 3 bindings.
	counts := map[broker.TopologyKind]int{}
	for _, k := range rec.kinds() {
		counts[k]++
	}
	if counts[broker.OpDeclareExchange] != 2*6+2 || counts[broker.OpDeclareQueue] != 2 || counts[broker.OpBind] != 3 || len(counts) != 3 {
		t.Errorf("restore told the broker %v", counts)
	}
	// Restoring an older snapshot over a newer state removes what the old one lacks.
	old := NewMetadata(nil, quietLog())
	oldSnap, _ := old.Snapshot()
	rec.ops = nil
	if err := fresh.Restore(oldSnap); err != nil {
		t.Fatal(err)
	}
	counts = map[broker.TopologyKind]int{}
	for _, k := range rec.kinds() {
		counts[k]++
	}
	if counts[broker.OpUnbind] != 3 || counts[broker.OpDeleteQueue] != 2 || counts[broker.OpDeleteExchange] != 2*6+2 {
		t.Errorf("restoring an empty snapshot told the broker %v", counts)
	}
}

func TestDecodeCommandErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{`, "decoding a command"},
		{`{"v":2,"op":"bind","vhost":"/"}`, "command version 2, this node knows 1"},
		{`{"v":1,"op":"nope"}`, `unknown command "nope"`},
		{`{"v":1,"op":"bind"}`, "bind command without a vhost"},
		{`{"v":1,"op":"declare_queue","vhost":"/"}`, "declare_queue command without a name"},
		{`{"v":1,"op":"delete_exchange","vhost":"/"}`, "delete_exchange command without a name"}, // the default exchange: never replicated, never removed
		{`{"v":1,"op":"node_gone"}`, "node_gone command without a node"},
		{`{"v":1,"op":"node_restarted","conn":4294967296}`, "node_restarted command without a node"},
		{`{"v":1,"op":"declare_queue","vhost":"/","name":"q","args":"AAAAAQ=="}`, "arguments:"},
		{`{"v":1,"op":"declare_queue","vhost":"/","name":"` + strings.Repeat("q", 256) + `"}`, "a name of 256 bytes"},
	} {
		if _, err := DecodeCommand([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.in, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{`{"v":9}`, "snapshot version 9"},
		{`{"v":1,"vhosts":{"/":null}}`, `vhost "/" has no state`},
		{`{"v":1,"vhosts":{"/":{"queues":{"q":{"args":"AAAAAQ=="}}}}}`, `queue "q": arguments`},
	} {
		if err := NewMetadata(nil, quietLog()).Restore([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.in, err, tc.want)
		}
	}
}

// FuzzDecodeCommand: the decoder never panics, and a command it accepts encodes and decodes to
// itself, and applies without panicking.
func FuzzDecodeCommand(f *testing.F) {
	f.Add([]byte(`{"v":1,"op":"declare_queue","vhost":"/","name":"q","durable":true,"args":"AAAAEQ14LW1heC1sZW5ndGhJAAAACg=="}`))
	f.Add([]byte(`{"v":1,"op":"bind","vhost":"/","source":"amq.topic","destination":"q","key":"a.#"}`))
	f.Add([]byte(`{"v":1,"op":"set_nodes","nodes":["a","b"]}`))
	f.Add([]byte(`{"v":1,"op":"drop_owner","vhost":"/","node":"n1","conn":3}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			return
		}
		c2, err := DecodeCommand(c.Encode())
		if err != nil {
			t.Fatalf("re-decoding %s: %v", c.Encode(), err)
		}
		if !bytes.Equal(c.Encode(), c2.Encode()) {
			t.Fatalf("round trip changed the command: %s vs %s", c.Encode(), c2.Encode())
		}
		m := NewMetadata(&recorder{}, quietLog())
		m.Apply(1, b)
		if _, err := m.Snapshot(); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzRestore: a snapshot the decoder accepts restores, and snapshots back to a state that
// restores again to the same bytes.
func FuzzRestore(f *testing.F) {
	m := NewMetadata(nil, quietLog())
	m.Apply(1, (&Command{Op: OpDeclareQueue, VHost: "/", Name: "q", Node: "n1"}).Encode())
	m.Apply(2, (&Command{Op: OpBind, VHost: "/", Source: "amq.direct", Destination: "q", Key: "k"}).Encode())
	snap, _ := m.Snapshot()
	f.Add(snap)
	f.Add([]byte(`{"v":1,"vhosts":{}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m := NewMetadata(&recorder{}, quietLog())
		if err := m.Restore(b); err != nil {
			return
		}
		s1, err := m.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		m2 := NewMetadata(&recorder{}, quietLog())
		if err := m2.Restore(s1); err != nil {
			t.Fatalf("restoring a snapshot of a restored state: %v", err)
		}
		s2, _ := m2.Snapshot()
		if !bytes.Equal(s1, s2) {
			t.Fatalf("snapshot not stable:\n%s\n%s", s1, s2)
		}
	})
}
