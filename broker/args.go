package broker

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
)

// queueSpec is what a queue's x- arguments configure.
type queueSpec struct {
	opts    queue.Options
	dlx     string
	hasDLX  bool // x-dead-letter-exchange given; "" (the default exchange) is a valid target
	dlrk    *string
	expires time.Duration
	quorum  bool
	// lazy: x-queue-mode lazy; inMemory: x-max-in-memory-length (-1: not set). Both bound the
	// queue's paging window, fixed when the queue is created.
	lazy     bool
	inMemory int64
	// consumerTimeout: x-consumer-timeout (-1: not set; 0: none for this queue).
	consumerTimeout time.Duration
	stream          bool // x-queue-type stream: an append-only log (broker/stream.go)
	// atLeastOnce: x-dead-letter-strategy at-least-once (quorum queues; quorum_dlx.go).
	atLeastOnce bool
}

// argError builds RabbitMQ's text for a bad queue argument; the queue and vhost names are filled
// in by the caller, which knows them.
func argError(key, reason string, value any) *amqp.Error {
	return amqp.Errorf(amqp.PreconditionFailed, "invalid arg '%s' for queue '' in vhost '': {%s,%v}", key, reason, value)
}

// argTextError is argError for RabbitMQ's errors whose detail is plain text, not a tuple.
func argTextError(key, detail string) *amqp.Error {
	return amqp.Errorf(amqp.PreconditionFailed, "invalid arg '%s' for queue '' in vhost '': %s", key, detail)
}

// argTypeError is RabbitMQ's error for a string argument given another type.
func argTypeError(key string, v any) *amqp.Error {
	return amqp.Errorf(amqp.PreconditionFailed, "invalid type '%s' for arg '%s' in queue '' in vhost ''", typeName(v), key)
}

// IntArg reads an integer-typed argument. RabbitMQ accepts any AMQP integer type.
func IntArg(v any) (int64, bool) {
	switch n := v.(type) {
	case int8:
		return int64(n), true
	case uint8:
		return int64(n), true
	case int16:
		return int64(n), true
	case uint16:
		return int64(n), true
	case int32:
		return int64(n), true
	case uint32:
		return int64(n), true
	case int64:
		return n, true
	case int:
		return int64(n), true
	}
	return 0, false
}

// typeName is the field type name RabbitMQ prints for a value.
func typeName(v any) string {
	switch v.(type) {
	case string:
		return "longstr"
	case int8:
		return "byte"
	case uint8:
		return "unsignedbyte"
	case int16:
		return "short"
	case uint16:
		return "unsignedshort"
	case int32:
		return "signedint"
	case uint32:
		return "unsignedint"
	case int64, int:
		return "long"
	case bool:
		return "bool"
	case float32:
		return "float"
	case float64:
		return "double"
	case amqp.Decimal:
		return "decimal"
	case time.Time:
		return "timestamp"
	case amqp.Table:
		return "table"
	case []any:
		return "array"
	case []byte:
		return "binary"
	case nil:
		return "void"
	}
	return fmt.Sprintf("%T", v)
}

// maxExpiry is RabbitMQ's ?MAX_EXPIRY_TIMER: the largest TTL or expiry, in milliseconds.
const maxExpiry = math.MaxUint32

// parseQueueArgs validates queue arguments the way RabbitMQ does (406 on a bad value) and turns
// them into queue options. Unknown arguments are kept but ignored, as in RabbitMQ.
func parseQueueArgs(args amqp.Table) (queueSpec, *amqp.Error) {
	spec := queueSpec{opts: queue.NoLimits(), inMemory: -1, consumerTimeout: -1}
	// The type first: RabbitMQ refuses a known argument that the type does not take.
	if v, ok := args["x-queue-type"]; ok {
		s, isStr := v.(string)
		if !isStr {
			return spec, argTypeError("x-queue-type", v)
		}
		switch s {
		case "classic":
		case "quorum":
			spec.quorum = true
		case "stream":
			spec.stream = true
		default:
			return spec, argError("x-queue-type", "unsupported_queue_type", s)
		}
	}
	if spec.stream {
		// A stream takes its own arguments (broker/stream.go reads them); RabbitMQ refuses
		// the other queue arguments it knows for rabbit_stream_queue.
		for k := range args {
			if _, known := QueueArguments[k]; known && !streamArguments[k] {
				return spec, amqp.Errorf(amqp.PreconditionFailed, "invalid arg '%s' for queue '' in vhost '' of queue type rabbit_stream_queue", k)
			}
		}
		return spec, nil
	}
	if err := checkKnownArgs(QueueArguments, args, spec.quorum); err != nil {
		return spec, err
	}
	nonNeg := func(key string) (int64, bool, *amqp.Error) {
		v, ok := args[key]
		if !ok {
			return 0, false, nil
		}
		n, isInt := IntArg(v)
		if !isInt {
			return 0, false, argTextError(key, fmt.Sprintf("\"expected integer, got %s\"", typeName(v)))
		}
		if n < 0 {
			return 0, false, argError(key, "value_negative", n)
		}
		return n, true, nil
	}
	// millis reads a time in milliseconds with RabbitMQ's bound (rabbit_misc:check_expiry: at
	// most 2^32-1 ms, about 49.7 days), so that no value overflows a time.Duration.
	millis := func(key string) (time.Duration, bool, *amqp.Error) {
		n, ok, err := nonNeg(key)
		if err != nil || !ok {
			return 0, false, err
		}
		if n > maxExpiry {
			return 0, false, argError(key, "value_too_large", n)
		}
		return time.Duration(n) * time.Millisecond, true, nil
	}
	if d, ok, err := millis("x-message-ttl"); err != nil {
		return spec, err
	} else if ok {
		spec.opts.MessageTTL = d
	}
	if v, ok := args["x-expires"]; ok {
		if n, isInt := IntArg(v); isInt && n == 0 {
			return spec, argError("x-expires", "value_zero", n)
		}
	}
	if d, ok, err := millis("x-expires"); err != nil {
		return spec, err
	} else if ok {
		spec.expires = d
	}
	if n, ok, err := nonNeg("x-max-length"); err != nil {
		return spec, err
	} else if ok {
		spec.opts.MaxLength = n
	}
	if n, ok, err := nonNeg("x-max-length-bytes"); err != nil {
		return spec, err
	} else if ok {
		spec.opts.MaxLengthBytes = n
	}
	if n, ok, err := nonNeg("x-delivery-limit"); err != nil {
		return spec, err
	} else if ok {
		spec.opts.DeliveryLimit = n
	}
	if d, ok, err := millis("x-consumer-timeout"); err != nil {
		return spec, err
	} else if ok {
		spec.consumerTimeout = d
	}
	if d, ok, err := millis("x-redelivery-delay"); err != nil {
		return spec, err
	} else if ok {
		spec.opts.RedeliveryDelay = d
	}
	if d, ok, err := millis("x-redelivery-max-delay"); err != nil {
		return spec, err
	} else if ok {
		spec.opts.RedeliveryMaxDelay = d
	}
	if v, ok := args["x-redelivery-backoff"]; ok {
		var f float64
		switch x := v.(type) {
		case float64:
			f = x
		case float32:
			f = float64(x)
		default:
			n, isInt := IntArg(v)
			if !isInt {
				return spec, argError("x-redelivery-backoff", "unacceptable_type", typeName(v))
			}
			f = float64(n)
		}
		if f < 1 || math.IsNaN(f) || math.IsInf(f, 0) {
			return spec, argError("x-redelivery-backoff", "value_below_one", f)
		}
		spec.opts.RedeliveryBackoff = f
	}
	if v, ok := args["x-overflow"]; ok {
		s, isStr := v.(string)
		if !isStr {
			return spec, argTypeError("x-overflow", v)
		}
		o, valid := parseOverflow(s)
		if !valid {
			return spec, argTextError("x-overflow", "invalid_overflow")
		}
		spec.opts.Overflow = o
	}
	if v, ok := args["x-dead-letter-exchange"]; ok {
		s, isStr := v.(string)
		if !isStr {
			return spec, argTypeError("x-dead-letter-exchange", v)
		}
		spec.dlx = s
		spec.hasDLX = true
	}
	if v, ok := args["x-dead-letter-routing-key"]; ok {
		s, isStr := v.(string)
		if !isStr {
			return spec, argTypeError("x-dead-letter-routing-key", v)
		}
		if _, hasDLX := args["x-dead-letter-exchange"]; !hasDLX {
			return spec, amqp.Errorf(amqp.PreconditionFailed, "invalid arg 'x-dead-letter-routing-key' for queue '' in vhost '': {no_dlx,\"%s\"}", s)
		}
		spec.dlrk = &s
	}
	if v, ok := args["x-max-priority"]; ok {
		// RabbitMQ 3.10.8 (measured): an integer 0..255, 0 meaning a plain queue.
		n, isInt := IntArg(v)
		switch {
		case !isInt:
			return spec, argTextError("x-max-priority", fmt.Sprintf("\"expected integer, got %s\"", typeName(v)))
		case n < 0:
			return spec, argError("x-max-priority", "value_negative", n)
		case n > queue.MaxPriorityLimit:
			return spec, argError("x-max-priority", "max_value_exceeded", n)
		}
		spec.opts.MaxPriority = int(n)
	}
	if v, ok := args["x-single-active-consumer"]; ok {
		b, isBool := v.(bool)
		if !isBool {
			return spec, argError("x-single-active-consumer", "unacceptable_type", typeName(v))
		}
		spec.opts.SingleActiveConsumer = b
	}
	if err := spec.parseStorageArgs(args); err != nil {
		return spec, err
	}
	return spec, nil
}

// parseStorageArgs reads the arguments about where a queue keeps its messages and where it
// lives in a cluster, with RabbitMQ 3.10.8's texts (measured). checkKnownArgs has refused
// those the queue's type does not take.
func (spec *queueSpec) parseStorageArgs(args amqp.Table) *amqp.Error {
	str := func(key string) (string, bool, *amqp.Error) {
		v, ok := args[key]
		if !ok {
			return "", false, nil
		}
		s, isStr := v.(string)
		if !isStr {
			return "", false, argError(key, "unacceptable_type", typeName(v))
		}
		return s, true, nil
	}
	integer := func(key string) (int64, bool, *amqp.Error) {
		v, ok := args[key]
		if !ok {
			return 0, false, nil
		}
		n, isInt := IntArg(v)
		if !isInt {
			return 0, false, argTextError(key, fmt.Sprintf("\"expected integer, got %s\"", typeName(v)))
		}
		return n, true, nil
	}
	if s, ok, err := str("x-queue-mode"); err != nil {
		return err
	} else if ok {
		if s != "default" && s != "lazy" {
			return argTextError("x-queue-mode", fmt.Sprintf("\"unsupported queue mode '%s'\"", s))
		}
		spec.lazy = s == "lazy"
	}
	if n, ok, err := integer("x-queue-version"); err != nil {
		return err
	} else if ok && n != 1 && n != 2 {
		return argTextError("x-queue-version", fmt.Sprintf("\"unsupported queue version '%d'\"", n))
	}
	if n, ok, err := integer("x-max-in-memory-length"); err != nil {
		return err
	} else if ok {
		if n < 0 {
			return argError("x-max-in-memory-length", "value_negative", n)
		}
		spec.inMemory = n
	}
	if s, ok, err := str("x-dead-letter-strategy"); err != nil {
		return err
	} else if ok {
		switch s {
		case "at-most-once":
		case "at-least-once":
			spec.atLeastOnce = true
		default:
			return argTextError("x-dead-letter-strategy", "invalid_dlx_strategy")
		}
	}
	if s, ok, err := str("x-queue-leader-locator"); err != nil {
		return err
	} else if ok && s != "client-local" && s != "balanced" {
		return argTextError("x-queue-leader-locator", "invalid_queue_locator_arg")
	}
	if n, ok, err := integer("x-quorum-initial-group-size"); err != nil {
		return err
	} else if ok && n <= 0 {
		if n == 0 {
			return argError("x-quorum-initial-group-size", "value_zero", n)
		}
		return argError("x-quorum-initial-group-size", "value_negative", n)
	}
	return nil
}

// parseOverflow reads an overflow behaviour as x-overflow and the overflow policy key name it.
func parseOverflow(s string) (queue.Overflow, bool) {
	switch s {
	case "drop-head":
		return queue.DropHead, true
	case "reject-publish":
		return queue.RejectPublish, true
	case "reject-publish-dlx":
		return queue.RejectPublishDLX, true
	}
	return 0, false
}

// fillQueueName puts the queue and vhost names into an argument error's text (argError leaves
// them empty: the parser does not know them).
func fillQueueName(text, queue, vhost string) string {
	text = strings.Replace(text, "queue ''", "queue '"+queue+"'", 1)
	return strings.Replace(text, "vhost ''", "vhost '"+vhost+"'", 1)
}

// CheckQueueArgs validates a configured queue's arguments as queue.declare would (RabbitMQ's 406
// texts, with the names filled in); the text is returned for the configuration error.
func CheckQueueArgs(name, vhost string, durable bool, args amqp.Table) error {
	spec, aerr := parseQueueArgs(args)
	if aerr != nil {
		return errors.New(fillQueueName(aerr.Text, name, vhost))
	}
	if spec.quorum && !durable {
		return ErrQuorumDurable
	}
	return nil
}

// ErrQuorumDurable is CheckQueueArgs's error for a quorum queue declared non-durable.
var ErrQuorumDurable = errors.New("a quorum queue must be durable")

// streamArguments are the queue arguments a stream takes (RabbitMQ 3.10's rabbit_stream_queue
// capabilities).
var streamArguments = map[string]bool{
	"x-queue-type": true, "x-max-length-bytes": true, "x-max-age": true,
	"x-stream-max-segment-size-bytes": true, "x-initial-cluster-size": true, "x-queue-leader-locator": true,
}
