package broker

import (
	"fmt"
	"sort"

	"github.com/warrenmq/warren/amqp"
)

// Support says what Warren does with an argument or policy key that RabbitMQ knows. No name in
// these tables is accepted and then ignored: each one either works, or holds trivially on a
// single node, or is refused with a text that says Warren does not support it. Names RabbitMQ
// does not know are ignored, as RabbitMQ ignores them.
type Support uint8

const (
	// Implemented: RabbitMQ's semantics (for the queue types RabbitMQ accepts it for).
	Implemented Support = iota + 1
	// Extension: Warren's own argument, or a RabbitMQ one Warren also allows where RabbitMQ
	// does not (x-delivery-limit on classic queues).
	Extension
	// SingleNode: cluster placement or mirroring. Accepted (an argument's value is validated as
	// RabbitMQ validates it); on a single node every valid value is satisfied: there is one node
	// to place a queue on, nothing to mirror to, no failover.
	SingleNode
	// StorageFormat: RabbitMQ's on-disk format choice (x-queue-version). Validated; Warren has
	// one format, and the choice changes nothing a client can observe.
	StorageFormat
	// StreamsOnly: a policy key that only applies to streams and that Warren's streams do not
	// apply yet (accepted with a warning). No key is in this state today: max-age,
	// stream-max-segment-size-bytes and max-length-bytes apply to streams (policy.go).
	StreamsOnly
	// Refused: queue.declare and basic.consume answer 406 PRECONDITION_FAILED, a policy is a
	// configuration error; the text says Warren does not support it.
	Refused
)

func (s Support) String() string {
	switch s {
	case Implemented:
		return "implemented"
	case Extension:
		return "implemented (Warren extension)"
	case SingleNode:
		return "accepted: single node"
	case StorageFormat:
		return "accepted: storage format"
	case StreamsOnly:
		return "streams only (as a policy: not applied yet; the x- argument works)"
	case Refused:
		return "refused"
	}
	return "unknown"
}

// ArgInfo is one row of an argument table.
type ArgInfo struct {
	Support Support
	// Classic and Quorum: the queue types the name is valid for. RabbitMQ 3.10.8 refuses a
	// known argument on another type with 406 "... of queue type rabbit_classic_queue".
	Classic, Quorum bool
	// Example is a valid value, for the test that walks the table.
	Example any
	// Note explains the status, for the README table.
	Note string
}

// QueueArguments lists the x- arguments of queue.declare that RabbitMQ 3.10.8 knows (the
// queue_arguments of its classic, quorum and stream queue types, read from the running broker
// with rabbit_classic_queue:capabilities() etc., and those its management UI documents), plus
// Warren's own.
var QueueArguments = map[string]ArgInfo{
	"x-expires":                       {Implemented, true, true, int32(60000), ""},
	"x-message-ttl":                   {Implemented, true, true, int32(60000), ""},
	"x-dead-letter-exchange":          {Implemented, true, true, "dlx", ""},
	"x-dead-letter-routing-key":       {Implemented, true, true, "dlrk", "needs x-dead-letter-exchange, as in RabbitMQ"},
	"x-max-length":                    {Implemented, true, true, int32(1000), ""},
	"x-max-length-bytes":              {Implemented, true, true, int32(1 << 20), ""},
	"x-overflow":                      {Implemented, true, true, "reject-publish", "drop-head, reject-publish, reject-publish-dlx"},
	"x-max-priority":                  {Implemented, true, false, int32(10), "1-255 (0: a plain queue); quorum queues refuse it, as in RabbitMQ"},
	"x-single-active-consumer":        {Implemented, true, true, true, ""},
	"x-queue-type":                    {Implemented, true, true, "classic", "classic, quorum, stream"},
	"x-queue-mode":                    {Implemented, true, false, "lazy", "lazy keeps one ready message in memory per queue (the paging window is 1); default uses queue.max_ram_messages. Fixed when the queue is created"},
	"x-max-in-memory-length":          {Implemented, false, true, int32(100), "caps the queue's paging window (0 behaves as 1). Fixed when the queue is created"},
	"x-max-in-memory-bytes":           {Refused, false, true, int32(1 << 20), "per-queue byte bound of memory; Warren bounds memory with queue.max_ram_messages and the shared paging budget"},
	"x-dead-letter-strategy":          {Implemented, false, true, "at-most-once", "at-most-once, or at-least-once (with x-dead-letter-exchange and x-overflow reject-publish, else at-most-once with a warning, as RabbitMQ)"},
	"x-delivery-limit":                {Extension, true, true, int32(5), "RabbitMQ: quorum queues only; Warren also on classic queues"},
	"x-queue-version":                 {StorageFormat, true, false, int32(2), "1 or 2, validated"},
	"x-queue-master-locator":          {SingleNode, true, false, "client-local", ""},
	"x-queue-leader-locator":          {SingleNode, false, true, "balanced", "client-local or balanced, validated"},
	"x-quorum-initial-group-size":     {SingleNode, false, true, int32(3), "a positive integer, validated"},
	"x-initial-cluster-size":          {SingleNode, false, false, int32(3), "streams only; one node"},
	"x-max-age":                       {Implemented, false, false, "1D", "streams only: retention by age"},
	"x-stream-max-segment-size-bytes": {Implemented, false, false, int32(1 << 20), "streams only: segment file size"},
	"x-consumer-timeout":              {Implemented, true, true, int32(60000), "RabbitMQ 3.12+: milliseconds a delivery may stay unacked before its channel is closed (406); 0: none for this queue; the lower of argument and policy wins"},
	"x-redelivery-delay":              {Extension, true, true, int32(100), "Warren: delay before a requeued message is deliverable again"},
	"x-redelivery-backoff":            {Extension, true, true, 2.0, "Warren: factor applied to the delay on each further requeue"},
	"x-redelivery-max-delay":          {Extension, true, true, int32(10000), "Warren: cap on the grown delay"},
}

// ConsumeArguments lists the x- arguments of basic.consume that RabbitMQ 3.10.8 knows.
var ConsumeArguments = map[string]ArgInfo{
	"x-priority":              {Implemented, true, true, int32(5), "consumer priority"},
	"x-cancel-on-ha-failover": {SingleNode, true, false, true, "a boolean, validated; a single node never fails over"},
	"x-stream-offset":         {Refused, false, false, "first", "streams only: 406 of queue type, exactly as RabbitMQ on classic and quorum queues"},
	"x-credit":                {Refused, true, true, amqp.Table{"credit": int32(10), "drain": false}, "credit-based flow (RabbitMQ's AMQP 1.0 plugin); not supported by Warren"},
}

// ExchangeArguments lists the arguments of exchange.declare that RabbitMQ 3.10.8 knows; its
// core knows no x- exchange argument. x-delayed-type is the delayed-message plugin's
// (x-delayed-message exchanges, delayed.go); other plugins' exchange types are refused as
// unknown types, as RabbitMQ does without them.
var ExchangeArguments = map[string]ArgInfo{
	"alternate-exchange": {Implemented, false, false, "ae", ""},
	"x-delayed-type":     {Implemented, false, false, "direct", "x-delayed-message exchanges (the delayed-message plugin's): the routing of the held messages"},
}

// PolicyKeys lists the policy definition keys RabbitMQ 3.10.8 knows (its policy validators,
// read from the running broker), the federation plugin's and consumer-timeout (3.12+), plus
// Warren's own.
var PolicyKeys = map[string]ArgInfo{
	"message-ttl":                   {Implemented, true, true, 60000, "the lower of argument and policy wins"},
	"expires":                       {Implemented, true, true, 60000, "the lower wins"},
	"max-length":                    {Implemented, true, true, 1000, "the lower wins"},
	"max-length-bytes":              {Implemented, true, true, 1 << 20, "the lower wins; for a stream the policy wins"},
	"overflow":                      {Implemented, true, true, "drop-head", "the argument wins"},
	"dead-letter-exchange":          {Implemented, true, true, "dlx", "the argument wins"},
	"dead-letter-routing-key":       {Implemented, true, true, "k", "the argument wins"},
	"delivery-limit":                {Implemented, true, true, 5, "the lower wins (Warren: classic queues too)"},
	"alternate-exchange":            {Implemented, false, false, "ae", "the argument wins"},
	"queue-mode":                    {Implemented, true, false, "lazy", "as x-queue-mode, the argument wins; applied when a queue is created (or restored), not to existing queues"},
	"max-in-memory-length":          {Implemented, false, true, 100, "as x-max-in-memory-length, the lower wins; applied when a queue is created (or restored)"},
	"max-in-memory-bytes":           {Refused, false, true, 1 << 20, "not supported by Warren (see x-max-in-memory-bytes)"},
	"dead-letter-strategy":          {Implemented, false, true, "at-most-once", "at-most-once only; at-least-once is refused"},
	"queue-version":                 {StorageFormat, true, false, 2, "1 or 2"},
	"ha-mode":                       {SingleNode, true, false, "all", "classic mirroring: nothing to mirror to on one node"},
	"ha-params":                     {SingleNode, true, false, 2, ""},
	"ha-sync-mode":                  {SingleNode, true, false, "automatic", ""},
	"ha-sync-batch-size":            {SingleNode, true, false, 100, ""},
	"ha-promote-on-shutdown":        {SingleNode, true, false, "always", ""},
	"ha-promote-on-failure":         {SingleNode, true, false, "always", ""},
	"queue-master-locator":          {SingleNode, true, false, "min-masters", ""},
	"queue-leader-locator":          {SingleNode, false, true, "balanced", ""},
	"initial-cluster-size":          {SingleNode, false, false, 3, "streams: one node is the whole cluster"},
	"max-age":                       {Implemented, false, false, "1D", "streams: the policy wins over x-max-age; applied to existing streams"},
	"stream-max-segment-size-bytes": {Implemented, false, false, 1 << 20, "streams: the policy wins; an existing stream takes it when next opened"},
	"federation-upstream":           {Refused, true, true, "up", "federation is not supported by Warren"},
	"federation-upstream-set":       {Refused, true, true, "all", "federation is not supported by Warren"},
	"consumer-timeout":              {Implemented, true, true, 60000, "as x-consumer-timeout; the lower wins"},
	"redelivery-delay":              {Extension, true, true, 100, "Warren; the argument wins"},
	"redelivery-backoff":            {Extension, true, true, 2, "Warren; the argument wins"},
	"redelivery-max-delay":          {Extension, true, true, 10000, "Warren; the argument wins"},
}

// queueTypeName is RabbitMQ's module name for a queue type, which its 406 texts print.
func queueTypeName(quorum bool) string {
	if quorum {
		return "rabbit_quorum_queue"
	}
	return "rabbit_classic_queue"
}

// checkKnownArgs applies a table to arguments before their values are read: a name the table
// does not hold for the queue's type is refused as RabbitMQ 3.10.8 refuses it (406 "invalid
// arg ... of queue type ..."), a refused name with a text saying Warren does not support it.
// queue and vhost are left empty for fillQueueName.
func checkKnownArgs(table map[string]ArgInfo, args amqp.Table, quorum bool) *amqp.Error {
	for k := range args {
		info, known := table[k]
		if !known {
			continue
		}
		if (quorum && !info.Quorum) || (!quorum && !info.Classic) {
			return amqp.Errorf(amqp.PreconditionFailed, "invalid arg '%s' for queue '' in vhost '' of queue type %s", k, queueTypeName(quorum))
		}
		if info.Support == Refused {
			return notSupported(k, info.Note)
		}
	}
	return nil
}

// notSupported is the 406 for an argument RabbitMQ knows and Warren does not implement.
func notSupported(key, why string) *amqp.Error {
	return amqp.Errorf(amqp.PreconditionFailed, "invalid arg '%s' for queue '' in vhost '': not supported by Warren (%s)", key, why)
}

// argTableMarkdown renders a table as the README's argument table rows (name, status, note),
// sorted by name.
func argTableMarkdown(table map[string]ArgInfo, withTypes bool) string {
	names := make([]string, 0, len(table))
	for k := range table {
		names = append(names, k)
	}
	sort.Strings(names)
	out := ""
	for _, k := range names {
		info := table[k]
		if withTypes {
			out += fmt.Sprintf("| `%s` | %s | %s | %s |\n", k, info.Support, types(info), info.Note)
		} else {
			out += fmt.Sprintf("| `%s` | %s | %s |\n", k, info.Support, info.Note)
		}
	}
	return out
}

func types(info ArgInfo) string {
	switch {
	case info.Classic && info.Quorum:
		return "classic, quorum"
	case info.Classic:
		return "classic"
	case info.Quorum:
		return "quorum"
	}
	return "stream"
}
