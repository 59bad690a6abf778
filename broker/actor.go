package broker

import "github.com/warrenmq/warren/amqp"

// Perm is what an operation needs on a resource, in RabbitMQ's terms.
type Perm uint8

// The three RabbitMQ permissions.
const (
	PermConfigure Perm = iota
	PermWrite
	PermRead
)

// Resource is the kind of resource a permission is checked on.
type Resource uint8

// The kinds of resource permissions name.
const (
	ResQueue Resource = iota
	ResExchange
)

// Authorizer decides whether an actor may use a resource, returning RabbitMQ's 403 when not.
// The default exchange is checked with the name "" (the authorizer names it amq.default).
type Authorizer interface {
	Authorize(p Perm, r Resource, name string) *amqp.Error
}

// OwnerID identifies the owner of exclusive queues: a client connection. 0 is nobody.
type OwnerID uint64

// Actor is who performs an operation on a vhost.
type Actor struct {
	// Owner is the connection that owns the exclusive queues the actor declares and the only
	// one that may use them. 0 (the configuration, the management API) owns none.
	Owner OwnerID
	// Authz checks the actor's permissions; nil is the broker itself (declared topology), which
	// may do anything and is not held to the vhost's queue limit.
	Authz Authorizer
}

// System is the broker acting for its own configuration.
var System = Actor{}

func (a Actor) authorize(p Perm, r Resource, name string) *amqp.Error {
	if a.Authz == nil {
		return nil
	}
	return a.Authz.Authorize(p, r, name)
}
