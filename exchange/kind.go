package exchange

import (
	"github.com/warrenmq/warren/amqp"
)

// Kind selects the routing algorithm of an exchange; it is fixed at declare
// time, so it is a small enum rather than an interface.
type Kind uint8

// The four exchange kinds of AMQP 0-9-1 as RabbitMQ implements them.
const (
	Direct Kind = iota
	Fanout
	Topic
	Headers
)

var kindNames = [...]string{Direct: "direct", Fanout: "fanout", Topic: "topic", Headers: "headers"}

// ParseKind maps the type string of exchange.declare to a Kind; ok is false
// for types Warren does not implement so the server can answer 503 as
// RabbitMQ does for an unknown exchange type.
func ParseKind(s string) (Kind, bool) {
	for k, n := range kindNames {
		if n == s {
			return Kind(k), true
		}
	}
	return 0, false
}

// String returns the name used on the wire and in management output.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Binding links an exchange (the source, implicit: the Router it lives in)
// to a destination. Its identity is the whole value: the same destination
// may be bound several times with different keys or arguments.
type Binding struct {
	Destination string // queue or exchange name
	ToExchange  bool   // true for an exchange-to-exchange binding
	Key         string
	Args        amqp.Table
}

// Dest is one routing result. ToExchange keeps a queue and an exchange of
// the same name apart, since they live in different namespaces.
type Dest struct {
	Name       string
	ToExchange bool
}

// Router is one exchange's binding table. It is safe for concurrent Route
// calls alongside Bind and Unbind.
type Router interface {
	// Kind reports the algorithm, so the server can answer redeclares.
	Kind() Kind
	// Bind adds b; it returns false if an identical binding (same
	// destination, key and arguments) exists, because queue.bind is
	// idempotent. Headers: a bad x-match value yields *amqp.Error 406
	// PRECONDITION_FAILED with RabbitMQ's text. Bind keeps a shallow copy of
	// b.Args; nested tables must not be mutated afterwards.
	Bind(b Binding) (bool, error)
	// Unbind removes b and reports whether it was present; queue.unbind of a
	// missing binding succeeds in RabbitMQ, so false is not an error.
	Unbind(b Binding) bool
	// UnbindDestination removes every binding to the destination, for queue
	// and exchange deletion, and returns how many were removed.
	UnbindDestination(name string, toExchange bool) int
	// Route appends the destinations for a message to out and returns it.
	// A destination is appended at most once per call however many of its
	// bindings match. headers is the decoded message headers table; only
	// the Headers kind reads it and it may be nil.
	Route(routingKey string, headers amqp.Table, out []Dest) []Dest
	// Bindings returns a snapshot sorted by destination, kind, key and
	// arguments, so listings and persistence are deterministic.
	Bindings() []Binding
	// Len is the number of bindings.
	Len() int
}

// NewRouter returns an empty binding table for k. An unknown kind falls
// back to Direct, which is what the default exchange uses.
func NewRouter(k Kind) Router {
	r := &router{
		kind:    k,
		entries: make(map[bindKey]*entry),
		dests:   make(map[Dest]*destInfo),
	}
	switch k {
	case Fanout:
		r.tab = &fanoutTable{}
	case Topic:
		r.tab = newTopicTable()
	case Headers:
		r.tab = &headersTable{}
	default:
		r.kind = Direct
		r.tab = &directTable{keys: make(map[string]*destSet)}
	}
	return r
}
