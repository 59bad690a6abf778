package cluster

import (
	"slices"
	"testing"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// TestQuorumPlacement: the log places a quorum queue's replicas (x-quorum-initial-group-size,
// default 3, capped at the running members), its leader by the locator, and spreads the
// replicas over the least loaded nodes; quorum_member changes them.
func TestQuorumPlacement(t *testing.T) {
	nodes := []string{"n1", "n2", "n3", "n4", "n5"}
	qq := func(name, on string, extra amqp.Table) Command {
		tbl := amqp.Table{"x-queue-type": "quorum"}
		for k, v := range extra {
			tbl[k] = v
		}
		return Command{Op: OpDeclareQueue, VHost: "/", Name: name, Durable: true, Node: on, Args: args(t, tbl)}
	}
	type want struct {
		home    string
		members []string
	}
	tests := []struct {
		name   string
		nodes  []string
		down   []string
		before []Command // applied first
		decl   Command
		want   want
	}{
		{"default size 3, client-local", nodes, nil, nil, qq("a", "n4", nil), want{"n4", []string{"n1", "n2", "n4"}}},
		{"size 1", nodes, nil, nil, qq("a", "n2", amqp.Table{"x-quorum-initial-group-size": int32(1)}), want{"n2", []string{"n2"}}},
		{"size 2", nodes, nil, nil, qq("a", "n5", amqp.Table{"x-quorum-initial-group-size": int8(2)}), want{"n5", []string{"n1", "n5"}}},
		{"size capped at the cluster", nodes[:3], nil, nil, qq("a", "n1", amqp.Table{"x-quorum-initial-group-size": int32(7)}),
			want{"n1", []string{"n1", "n2", "n3"}}},
		{"down nodes are not chosen", nodes, []string{"n1", "n2"}, nil, qq("a", "n3", nil), want{"n3", []string{"n3", "n4", "n5"}}},
		{"spread: least replicas first", nodes,
			nil, []Command{qq("a", "n1", nil)}, // n1 n2 n3
			qq("b", "n1", nil), want{"n1", []string{"n1", "n4", "n5"}}},
		{"balanced leader: fewest leaders", nodes,
			nil, []Command{qq("a", "n1", amqp.Table{"x-quorum-initial-group-size": int32(1)})},
			qq("b", "n1", amqp.Table{"x-queue-leader-locator": "balanced", "x-quorum-initial-group-size": int32(2)}),
			want{"n2", []string{"n2", "n3"}}},
		{"client-local on a down node falls back to balanced", nodes, []string{"n1"}, nil,
			qq("a", "n1", amqp.Table{"x-quorum-initial-group-size": int32(1)}), want{"n2", []string{"n2"}}},
		{"no set_nodes yet: every node", nil, nil, nil, qq("a", "n1", nil), want{"n1", nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMetadata(nil, quietLog())
			idx := uint64(0)
			apply := func(c Command) Result {
				idx++
				return m.Apply(idx, c.Encode()).(Result)
			}
			if tt.nodes != nil {
				apply(Command{Op: OpSetNodes, Nodes: tt.nodes})
			}
			for _, d := range tt.down {
				apply(Command{Op: OpNodeDown, Node: d})
			}
			for _, c := range tt.before {
				if r := apply(c); r.Code != 0 {
					t.Fatal(r.Text)
				}
			}
			r := apply(tt.decl)
			if r.Code != 0 || r.Home != tt.want.home {
				t.Fatalf("declare: %+v, want home %s", r, tt.want.home)
			}
			p, ok := m.QuorumPlacement("/", tt.decl.Name)
			if !ok || !slices.Equal(p.Members, tt.want.members) || !slices.Equal(p.Voters, tt.want.members) {
				t.Fatalf("placement %+v, want members %v", p, tt.want.members)
			}
		})
	}
}

// TestQuorumMemberCommand: add and delete change the members (idempotently), tell the broker,
// refuse the last member, a node outside the cluster, a classic queue and a missing queue; a
// delete marks the member leaving until removed; a leaving home moves to a remaining member,
// and a home that goes down to a running one.
func TestQuorumMemberCommand(t *testing.T) {
	rec := &recorder{}
	m := NewMetadata(rec, quietLog())
	idx := uint64(0)
	apply := func(c Command) Result {
		idx++
		return m.Apply(idx, c.Encode()).(Result)
	}
	member := func(change, node, queue string) Command {
		return Command{Op: OpQuorumMember, VHost: "/", Name: queue, Node: node, Type: change}
	}
	apply(Command{Op: OpSetNodes, Nodes: []string{"n1", "n2", "n3"}})
	apply(Command{Op: OpDeclareQueue, VHost: "/", Name: "q", Durable: true, Node: "n1",
		Args: args(t, amqp.Table{"x-queue-type": "quorum", "x-quorum-initial-group-size": int32(1)})})
	apply(Command{Op: OpDeclareQueue, VHost: "/", Name: "classic", Durable: true, Node: "n1"})
	steps := []struct {
		cmd     Command
		code    uint16
		members []string
		leaving []string
		home    string
		told    bool // the broker is told (OpQuorumMembers)
	}{
		{member(memberAdd, "n2", "q"), 0, []string{"n1", "n2"}, nil, "n1", true},
		{member(memberAdd, "n2", "q"), 0, []string{"n1", "n2"}, nil, "n1", false},
		{member(memberAdd, "n9", "q"), amqp.NotFound, []string{"n1", "n2"}, nil, "n1", false},
		{member(memberAdd, "n2", "missing"), amqp.NotFound, []string{"n1", "n2"}, nil, "n1", false},
		{member(memberAdd, "n2", "classic"), amqp.PreconditionFailed, []string{"n1", "n2"}, nil, "n1", false},
		// delete: leaving first (the home moves at once), removed once out of the group.
		{member(memberDelete, "n1", "q"), 0, []string{"n1", "n2"}, []string{"n1"}, "n2", true},
		{member(memberDelete, "n1", "q"), 0, []string{"n1", "n2"}, []string{"n1"}, "n2", false},
		{member(memberDelete, "n2", "q"), amqp.PreconditionFailed, []string{"n1", "n2"}, []string{"n1"}, "n2", false},
		{member(memberAdd, "n1", "q"), amqp.PreconditionFailed, []string{"n1", "n2"}, []string{"n1"}, "n2", false},
		{member(memberRemoved, "n1", "q"), 0, []string{"n2"}, nil, "n2", true},
		{member(memberRemoved, "n1", "q"), 0, []string{"n2"}, nil, "n2", false},
		{member(memberDelete, "n2", "q"), amqp.PreconditionFailed, []string{"n2"}, nil, "n2", false},
		{member(memberAdd, "n3", "q"), 0, []string{"n2", "n3"}, nil, "n2", true},
		{Command{Op: OpNodeDown, Node: "n2"}, 0, []string{"n2", "n3"}, nil, "n3", true},
		// A node that is down cannot be added (RabbitMQ: node_not_running): a queue of one
		// replica would be unavailable until it is back.
		{Command{Op: OpNodeDown, Node: "n1"}, 0, []string{"n2", "n3"}, nil, "n3", false},
		{member(memberAdd, "n1", "q"), amqp.PreconditionFailed, []string{"n2", "n3"}, nil, "n3", false},
	}
	for i, s := range steps {
		rec.ops = nil
		r := apply(s.cmd)
		if r.Code != s.code {
			t.Fatalf("step %d %+v: code %d (%s), want %d", i, s.cmd, r.Code, r.Text, s.code)
		}
		p, _ := m.QuorumPlacement("/", "q")
		if !slices.Equal(p.Members, s.members) || !slices.Equal(p.Leaving, s.leaving) || p.Home != s.home || !slices.Equal(p.Voters, []string{"n1"}) {
			t.Fatalf("step %d: placement %+v, want %v leaving %v home %s", i, p, s.members, s.leaving, s.home)
		}
		if got := len(rec.ops) == 1 && rec.ops[0].Kind == broker.OpQuorumMembers; got != s.told {
			t.Fatalf("step %d: broker told %+v, want told: %v", i, rec.ops, s.told)
		} else if got && (!slices.Equal(rec.ops[0].Members, s.members) || rec.ops[0].Home != s.home) {
			t.Fatalf("step %d: broker told %+v", i, rec.ops[0])
		}
	}
	// A snapshot carries the placement.
	snap, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	m2 := NewMetadata(nil, quietLog())
	if err := m2.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if p, _ := m2.QuorumPlacement("/", "q"); !slices.Equal(p.Members, []string{"n2", "n3"}) || p.Home != "n3" || !slices.Equal(p.Voters, []string{"n1"}) {
		t.Fatalf("restored placement %+v", p)
	}
}

// TestRestoreRehome: a snapshot whose quorum queue moved its home (its home went down inside
// the snapshot's gap) tells the broker the new home, although the members are the same.
func TestRestoreRehome(t *testing.T) {
	m := NewMetadata(nil, quietLog())
	idx := uint64(0)
	apply := func(c Command) {
		idx++
		if r := m.Apply(idx, c.Encode()).(Result); r.Code != 0 {
			t.Fatalf("%+v: %d %s", c, r.Code, r.Text)
		}
	}
	apply(Command{Op: OpSetNodes, Nodes: []string{"n1", "n2", "n3"}})
	apply(Command{Op: OpDeclareQueue, VHost: "/", Name: "q", Durable: true, Node: "n1",
		Args: args(t, amqp.Table{"x-queue-type": "quorum", "x-quorum-initial-group-size": int32(2)})})
	before, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	p0, _ := m.QuorumPlacement("/", "q")
	apply(Command{Op: OpNodeDown, Node: p0.Home})
	p1, _ := m.QuorumPlacement("/", "q")
	if p1.Home == p0.Home || !slices.Equal(p1.Members, p0.Members) {
		t.Fatalf("placement %+v after %s went down (was %+v)", p1, p0.Home, p0)
	}
	after, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}

	rec := &recorder{}
	m2 := NewMetadata(rec, quietLog())
	if err := m2.Restore(before); err != nil {
		t.Fatal(err)
	}
	rec.ops = nil
	if err := m2.Restore(after); err != nil {
		t.Fatal(err)
	}
	for _, op := range rec.ops {
		if op.Kind == broker.OpQuorumMembers && op.Queue.Name == "q" && op.Home == p1.Home && slices.Equal(op.Members, p1.Members) {
			return
		}
	}
	t.Fatalf("the broker was not told q's new home %s: %+v", p1.Home, rec.ops)
}
