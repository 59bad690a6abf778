package cluster

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/warrenmq/warren/amqp"
)

// commandVersion is the version of Command's encoding. A node refuses a command of a version it
// does not know (an older node in a cluster being upgraded): it must never guess.
const commandVersion = 1

// The operations a Command carries.
const (
	OpDeclareExchange = "declare_exchange"
	OpDeleteExchange  = "delete_exchange"
	OpDeclareQueue    = "declare_queue"
	OpDeleteQueue     = "delete_queue"
	OpBind            = "bind"
	OpUnbind          = "unbind"
	// OpDropOwner deletes the exclusive queues of connection Conn of node Node.
	OpDropOwner = "drop_owner"
	// OpNodeGone says node Node left the cluster (a reload without it): it is no longer down,
	// the exclusive queues of its connections and its non-durable queues are deleted, and its
	// durable queues answer 404 and can be deleted, until a set_nodes lists it again or it
	// proposes node_restarted.
	OpNodeGone = "node_gone"
	// OpNodeRestarted deletes the exclusive queues of node Node's connections of earlier
	// processes: those whose owner's incarnation (broker.IncarnationOf) is not Conn's. A node
	// proposes it at every start.
	OpNodeRestarted = "node_restarted"
	// OpSetNodes sets the members a balanced queue may be homed on.
	OpSetNodes = "set_nodes"
	// OpNodeDown marks node Node dead (silent for cluster.node_timeout; the leader proposes it):
	// its connections' exclusive queues and its non-durable queues are deleted, as RabbitMQ does
	// when a node goes down, and its durable queues answer 404 until OpNodeUp or
	// OpNodeRestarted.
	OpNodeDown = "node_down"
	// OpNodeUp marks node Node alive again (its status reports came back).
	OpNodeUp = "node_up"
	// OpQuorumMember adds node Node to (Type "add") or removes it from (Type "delete", then
	// "removed" once out of the Raft group) the replicas of quorum queue Name (placement.go).
	OpQuorumMember = "quorum_member"
)

// maxShortStr is AMQP's short-string limit: names and routing keys longer than this never come
// from a client, so a command holding one is corrupt.
const maxShortStr = 255

// Command is one entry of the metadata log. It is encoded as JSON (Encode) with a version
// field, so that entries stay readable across versions and in a debugger.
type Command struct {
	V     int    `json:"v"`
	Op    string `json:"op"`
	VHost string `json:"vhost,omitempty"`
	// Name is the exchange or queue declared or deleted; Type an exchange's type, or a
	// quorum_member's change (add, delete).
	Name string `json:"name,omitempty"`
	Type string `json:"type,omitempty"`

	Durable    bool `json:"durable,omitempty"`
	AutoDelete bool `json:"auto_delete,omitempty"`
	Internal   bool `json:"internal,omitempty"`
	Exclusive  bool `json:"exclusive,omitempty"`
	// Args is the AMQP field-table encoding of the arguments (keys sorted, so one table has
	// one encoding).
	Args []byte `json:"args,omitempty"`

	// A binding: Source to Destination (a queue, or an exchange with ToExchange) with Key.
	Source      string `json:"source,omitempty"`
	Destination string `json:"destination,omitempty"`
	ToExchange  bool   `json:"to_exchange,omitempty"`
	Key         string `json:"key,omitempty"`

	IfUnused bool `json:"if_unused,omitempty"`
	IfEmpty  bool `json:"if_empty,omitempty"`

	// Locator is the proposing node's default queue leader locator (its
	// cluster.queue_leader_locator) for a declare_queue whose arguments name none; "" is
	// client-local.
	Locator string `json:"locator,omitempty"`

	// Node proposed the command for its connection Conn (0: not a connection).
	Node string `json:"node,omitempty"`
	Conn uint64 `json:"conn,omitempty"`
	// Epoch names the incarnation of the queue a delete_queue removes (0: whatever is there).
	Epoch uint64 `json:"epoch,omitempty"`
	// Nodes are set_nodes' members.
	Nodes []string `json:"nodes,omitempty"`
}

// Encode is the command's log entry.
func (c *Command) Encode() []byte {
	c.V = commandVersion
	b, err := json.Marshal(c)
	if err != nil {
		panic(fmt.Sprintf("cluster: encoding a command: %v", err)) // only strings, bools, numbers and bytes
	}
	return b
}

// DecodeCommand reads a log entry, refusing an unknown version or operation, and fields no
// client could have produced.
func DecodeCommand(b []byte) (Command, error) {
	var c Command
	if err := json.Unmarshal(b, &c); err != nil {
		return Command{}, fmt.Errorf("cluster: decoding a command: %w", err)
	}
	if c.V != commandVersion {
		return Command{}, fmt.Errorf("cluster: command version %d, this node knows %d", c.V, commandVersion)
	}
	switch c.Op {
	case OpDeclareExchange, OpDeleteExchange, OpDeclareQueue, OpDeleteQueue, OpBind, OpUnbind, OpDropOwner, OpQuorumMember:
		if c.VHost == "" && c.Op != OpDropOwner {
			return Command{}, fmt.Errorf("cluster: %s command without a vhost", c.Op)
		}
	case OpNodeGone, OpNodeRestarted, OpSetNodes, OpNodeDown, OpNodeUp:
	default:
		return Command{}, fmt.Errorf("cluster: unknown command %q", c.Op)
	}
	for _, s := range [...]string{c.Name, c.Type, c.Source, c.Destination, c.Key} {
		if len(s) > maxShortStr {
			return Command{}, fmt.Errorf("cluster: %s command with a name of %d bytes", c.Op, len(s))
		}
	}
	if c.Op == OpQuorumMember && c.Type != memberAdd && c.Type != memberDelete && c.Type != memberRemoved && c.Type != memberJoined {
		return Command{}, fmt.Errorf("cluster: %s command with change %q", c.Op, c.Type)
	}
	if (c.Op == OpDeclareQueue || c.Op == OpDeleteQueue || c.Op == OpDeclareExchange || c.Op == OpDeleteExchange || c.Op == OpQuorumMember) && c.Name == "" {
		return Command{}, fmt.Errorf("cluster: %s command without a name", c.Op)
	}
	if (c.Op == OpDropOwner || c.Op == OpNodeGone || c.Op == OpNodeRestarted || c.Op == OpNodeDown || c.Op == OpNodeUp || c.Op == OpQuorumMember) && c.Node == "" {
		return Command{}, fmt.Errorf("cluster: %s command without a node", c.Op)
	}
	if _, err := decodeArgs(c.Args); err != nil {
		return Command{}, fmt.Errorf("cluster: %s command: %w", c.Op, err)
	}
	return c, nil
}

// encodeArgs is the Args encoding of t (nil for no arguments).
func encodeArgs(t amqp.Table) ([]byte, error) {
	if len(t) == 0 {
		return nil, nil
	}
	return amqp.AppendTable(nil, t)
}

// decodeArgs reads Args back; nil and empty are no arguments.
func decodeArgs(b []byte) (amqp.Table, error) {
	if len(b) == 0 {
		return nil, nil
	}
	t, n, err := amqp.DecodeTable(b)
	if err != nil {
		return nil, fmt.Errorf("arguments: %w", err)
	}
	if n != len(b) {
		return nil, errors.New("arguments: trailing bytes after the table")
	}
	return t, nil
}
