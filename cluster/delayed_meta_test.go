package cluster

import (
	"fmt"
	"testing"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// A node that missed a delayed exchange's delete and its declare again on another node, and
// catches up from a snapshot, deletes its stale exchange and declares the new one with the new
// home, bound again as the snapshot says.
func TestMetadataRestoreRedeclaredDelayedExchange(t *testing.T) {
	m := NewMetadata(&recorder{}, quietLog())
	var i uint64
	apply := func(c Command) {
		t.Helper()
		i++
		if r := m.Apply(i, c.Encode()).(Result); r.Err() != nil {
			t.Fatalf("%v: %v", c.Op, r.Err())
		}
	}
	delayedArgs := args(t, amqp.Table{"x-delayed-type": "fanout"})
	declare := func(node string) {
		apply(Command{Op: OpDeclareExchange, VHost: "/", Name: "dx", Type: "x-delayed-message", Durable: true, Args: delayedArgs, Node: node})
		apply(Command{Op: OpBind, VHost: "/", Source: "dx", Destination: "q", Node: node})
	}
	apply(Command{Op: OpDeclareQueue, VHost: "/", Name: "q", Durable: true, Node: "n1"})
	declare("n1")
	before, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	apply(Command{Op: OpDeleteExchange, VHost: "/", Name: "dx", Node: "n2"})
	declare("n2")
	after, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}

	rec := &recorder{}
	stale := NewMetadata(rec, quietLog())
	if err := stale.Restore(before); err != nil {
		t.Fatal(err)
	}
	rec.ops = nil
	if err := stale.Restore(after); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, op := range rec.ops {
		switch op.Kind {
		case broker.OpDeleteExchange:
			got = append(got, "delete "+op.Exchange.Name)
		case broker.OpDeclareExchange:
			got = append(got, "declare "+op.Exchange.Name+" home "+op.Home)
		case broker.OpBind:
			got = append(got, "bind "+op.Binding.Source+" "+op.Binding.Destination)
		default:
			got = append(got, fmt.Sprint("op ", op.Kind))
		}
	}
	want := []string{"delete dx", "declare dx home n2", "bind dx q"}
	if len(got) != len(want) {
		t.Fatalf("restore told the broker %q, want %q", got, want)
	}
	for k := range want {
		if got[k] != want[k] {
			t.Fatalf("restore told the broker %q, want %q", got, want)
		}
	}
}

// A delayed exchange whose home leaves the cluster (node_gone) moves to the first member
// neither down nor gone, the same on every node: declared again there, and bound again.
func TestMetadataDelayedExchangeRehomedOnNodeGone(t *testing.T) {
	for _, tc := range []struct {
		name, down, want string
	}{
		{"first member", "", "n1"},
		{"first member down", "n1", "n3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			m := NewMetadata(rec, quietLog())
			var i uint64
			apply := func(c Command) {
				t.Helper()
				i++
				if r := m.Apply(i, c.Encode()).(Result); r.Err() != nil {
					t.Fatalf("%v: %v", c.Op, r.Err())
				}
			}
			apply(Command{Op: OpSetNodes, Nodes: []string{"n1", "n2", "n3"}})
			apply(Command{Op: OpDeclareQueue, VHost: "/", Name: "q", Durable: true, Node: "n3"})
			apply(Command{Op: OpDeclareExchange, VHost: "/", Name: "dx", Type: "x-delayed-message", Durable: true,
				Args: args(t, amqp.Table{"x-delayed-type": "fanout"}), Node: "n2"})
			apply(Command{Op: OpBind, VHost: "/", Source: "dx", Destination: "q", Node: "n2"})
			if tc.down != "" {
				apply(Command{Op: OpNodeDown, Node: tc.down})
			}
			rec.ops = nil
			apply(Command{Op: OpNodeGone, Node: "n2"})
			var got []string
			for _, op := range rec.ops {
				switch op.Kind {
				case broker.OpDeleteExchange:
					got = append(got, "delete "+op.Exchange.Name)
				case broker.OpDeclareExchange:
					got = append(got, "declare "+op.Exchange.Name+" home "+op.Home)
				case broker.OpBind:
					got = append(got, "bind "+op.Binding.Source+" "+op.Binding.Destination)
				}
			}
			want := fmt.Sprint([]string{"delete dx", "declare dx home " + tc.want, "bind dx q"})
			if fmt.Sprint(got) != want {
				t.Fatalf("node_gone n2 told the broker %q, want %s", got, want)
			}
			if home := m.st.VHosts["/"].Exchanges["dx"].Home; home != tc.want {
				t.Errorf("dx's recorded home %q, want %q", home, tc.want)
			}
		})
	}
}

// The log refuses a new delayed exchange with a bad x-delayed-type (as the proposing node
// does), with the plugin's codes: no node is told to build an exchange it cannot.
func TestMetadataRefusesBadDelayedType(t *testing.T) {
	for _, tc := range []struct {
		name string
		args amqp.Table
		code uint16
	}{
		{"missing", nil, amqp.PreconditionFailed},
		{"not a string", amqp.Table{"x-delayed-type": int32(1)}, amqp.PreconditionFailed},
		{"unknown type", amqp.Table{"x-delayed-type": "nonsense"}, amqp.CommandInvalid},
		{"itself", amqp.Table{"x-delayed-type": "x-delayed-message"}, amqp.CommandInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			m := NewMetadata(rec, quietLog())
			var raw []byte
			if tc.args != nil {
				raw = args(t, tc.args)
			}
			c := Command{Op: OpDeclareExchange, VHost: "/", Name: "dx", Type: "x-delayed-message", Durable: true, Args: raw, Node: "n1"}
			r := m.Apply(1, c.Encode()).(Result)
			if r.Code != tc.code {
				t.Errorf("declare: code %d (%s), want %d", r.Code, r.Text, tc.code)
			}
			if len(rec.ops) != 0 {
				t.Errorf("the broker was told %d changes, want none", len(rec.ops))
			}
		})
	}
}
