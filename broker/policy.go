package broker

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
	"github.com/warrenmq/warren/stream"
)

// PolicyDef is a RabbitMQ policy as configured: Definition applies to the queues and/or
// exchanges of VHost whose names match Pattern; of several matching policies the one with the
// highest Priority wins.
type PolicyDef struct {
	Name, VHost, Pattern string
	ApplyTo              string // all (default), queues, exchanges, classic_queues, quorum_queues
	Priority             int
	Definition           map[string]any // message-ttl, max-length, dead-letter-exchange, ...
}

// KeyError is an invalid setting, named by its configuration key (for example
// "policies[2].definition.max-length"), so that callers can point at the line.
type KeyError struct {
	Key string
	Err error
}

func (e *KeyError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *KeyError) Unwrap() error { return e.Err }

func keyErr(key string, format string, a ...any) *KeyError {
	return &KeyError{Key: key, Err: fmt.Errorf(format, a...)}
}

// Policy is a compiled PolicyDef. Numeric fields are -1 when the policy does not set them.
type Policy struct {
	def      map[string]any // as configured, for the management API
	name     string
	re       *regexp.Regexp
	applyTo  string
	priority int

	messageTTL, expires, maxLength, maxLengthBytes, deliveryLimit int64
	redeliveryDelay, redeliveryMaxDelay                           int64
	redeliveryBackoff                                             float64 // 0: unset
	overflow                                                      *queue.Overflow
	dlx, dlrk, alternateExchange                                  *string
	queueMode                                                     *string // queue-mode: default or lazy
	maxInMemoryLength                                             int64
	consumerTimeout                                               int64 // ms
	// Stream keys: max-age (0: unset) and stream-max-segment-size-bytes (-1: unset); with
	// max-length-bytes they set a stream's retention (see combine).
	maxAge                time.Duration
	streamMaxSegmentBytes int64
}

var policyApplyTo = map[string]bool{"all": true, "queues": true, "exchanges": true, "classic_queues": true, "quorum_queues": true, "streams": true}

// CompilePolicy validates a policy as RabbitMQ's rabbit_policies does and returns warnings for
// keys that are accepted but ignored. Errors are *KeyError under key (the policy's own key).
func CompilePolicy(key string, p PolicyDef) (*Policy, []string, error) {
	cp := &Policy{
		name: p.Name, applyTo: p.ApplyTo, priority: p.Priority, def: p.Definition,
		messageTTL: -1, expires: -1, maxLength: -1, maxLengthBytes: -1, deliveryLimit: -1,
		redeliveryDelay: -1, redeliveryMaxDelay: -1, maxInMemoryLength: -1, consumerTimeout: -1,
		streamMaxSegmentBytes: -1,
	}
	if p.Name == "" {
		return nil, nil, keyErr(key+".name", "must not be empty")
	}
	if cp.applyTo == "" {
		cp.applyTo = "all"
	}
	if !policyApplyTo[cp.applyTo] {
		return nil, nil, keyErr(key+".apply-to", "%q is not one of all, queues, exchanges, classic_queues, quorum_queues, streams", p.ApplyTo)
	}
	re, err := regexp.Compile(p.Pattern)
	if err != nil {
		return nil, nil, keyErr(key+".pattern", "invalid regular expression %q: %v", p.Pattern, err)
	}
	cp.re = re
	if len(p.Definition) == 0 {
		return nil, nil, keyErr(key+".definition", "must not be empty")
	}
	var warnings []string
	names := make([]string, 0, len(p.Definition))
	for k := range p.Definition {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := p.Definition[k]
		dkey := key + ".definition." + k
		intVal := func(min int64) (int64, error) {
			n, ok := policyInt(v)
			if !ok {
				return 0, keyErr(dkey, "%v is not an integer", v)
			}
			if n < min {
				return 0, keyErr(dkey, "%d is below %d", n, min)
			}
			return n, nil
		}
		// millis is a time in milliseconds, bounded as queue arguments are (maxExpiry).
		millis := func(min int64) (int64, error) {
			n, err := intVal(min)
			if err == nil && n > maxExpiry {
				return 0, keyErr(dkey, "%d is above %d (RabbitMQ's largest expiry, in milliseconds)", n, int64(maxExpiry))
			}
			return n, err
		}
		strVal := func() (*string, error) {
			s, ok := v.(string)
			if !ok {
				return nil, keyErr(dkey, "%v is not a string", v)
			}
			return &s, nil
		}
		var err error
		switch k {
		case "message-ttl":
			cp.messageTTL, err = millis(0)
		case "expires":
			cp.expires, err = millis(1)
		case "max-length":
			cp.maxLength, err = intVal(0)
		case "max-length-bytes":
			cp.maxLengthBytes, err = intVal(0)
		case "delivery-limit":
			cp.deliveryLimit, err = intVal(0)
		case "redelivery-delay":
			cp.redeliveryDelay, err = millis(0)
		case "redelivery-max-delay":
			cp.redeliveryMaxDelay, err = millis(0)
		case "redelivery-backoff":
			f, ok := policyFloat(v)
			if !ok || f < 1 || math.IsNaN(f) || math.IsInf(f, 0) {
				err = keyErr(dkey, "%v is not a number of at least 1", v)
			}
			cp.redeliveryBackoff = f
		case "overflow":
			s, _ := v.(string)
			o, valid := parseOverflow(s)
			if !valid {
				err = keyErr(dkey, "%v is not one of drop-head, reject-publish, reject-publish-dlx", v)
			}
			cp.overflow = &o
		case "dead-letter-exchange":
			cp.dlx, err = strVal()
		case "dead-letter-routing-key":
			cp.dlrk, err = strVal()
		case "alternate-exchange":
			cp.alternateExchange, err = strVal()
		case "queue-mode":
			cp.queueMode, err = strVal()
			if err == nil && *cp.queueMode != "default" && *cp.queueMode != "lazy" {
				err = keyErr(dkey, "%q is not one of default, lazy", *cp.queueMode)
			}
		case "consumer-timeout":
			cp.consumerTimeout, err = millis(0)
		case "max-in-memory-length":
			cp.maxInMemoryLength, err = intVal(0)
		case "dead-letter-strategy":
			if s, _ := v.(string); s != "at-most-once" {
				err = keyErr(dkey, "%v: Warren supports at-most-once only", v)
			}
		case "max-age":
			// As RabbitMQ's validator: a string that x-max-age would accept ("7D", "12h").
			s, isStr := v.(string)
			d, perr := stream.ParseMaxAge(s)
			if !isStr || perr != nil {
				err = keyErr(dkey, "%v is not a valid max age (a positive number and a unit: Y, M, D, h, m, s)", v)
			}
			cp.maxAge = d
		case "stream-max-segment-size-bytes":
			cp.streamMaxSegmentBytes, err = intVal(0)
		case "queue-version":
			if n, ok := policyInt(v); !ok || (n != 1 && n != 2) {
				err = keyErr(dkey, "%v is not 1 or 2", v)
			}
		default:
			info, known := PolicyKeys[k]
			switch {
			case !known:
				return nil, nil, keyErr(dkey, "unknown policy key")
			case info.Support == Refused:
				return nil, nil, keyErr(dkey, "not supported by Warren (%s)", info.Note)
			case info.Support == StreamsOnly:
				warnings = append(warnings, fmt.Sprintf("%s: policy key %q applies to streams only, which Warren does not support", key, k))
			}
			// SingleNode keys: mirroring and placement (initial-cluster-size included) hold
			// trivially on a single node.
		}
		if err != nil {
			return nil, nil, err
		}
	}
	return cp, warnings, nil
}

// policyInt accepts the integer forms YAML and JSON decoders produce.
func policyInt(v any) (int64, bool) {
	switch n := v.(type) {
	case float64:
		if n != math.Trunc(n) || math.Abs(n) > 1<<53 {
			return 0, false
		}
		return int64(n), true
	case json.Number:
		i, err := n.Int64()
		return i, err == nil
	case uint64:
		if n > math.MaxInt64 {
			return 0, false
		}
		return int64(n), true
	}
	return IntArg(v)
}

func policyFloat(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	}
	i, ok := policyInt(v)
	return float64(i), ok
}

// SortPolicies orders a vhost's policies as matching wants them: highest priority first, then
// by name.
func SortPolicies(ps []*Policy) {
	slices.SortStableFunc(ps, func(a, b *Policy) int {
		if c := cmp.Compare(b.priority, a.priority); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
}

// Name is the policy's name.
func (p *Policy) Name() string { return p.name }

// matchQueue returns the policy that applies to a queue: of the matching ones, the highest
// priority (then the first by name). RabbitMQ applies one policy at a time; so does Warren.
// apply-to queues (and all) covers every queue type, streams included, as in RabbitMQ.
func matchQueue(ps []*Policy, name string, spec queueSpec) *Policy {
	for _, p := range ps {
		switch p.applyTo {
		case "exchanges":
			continue
		case "classic_queues":
			if spec.quorum || spec.stream {
				continue
			}
		case "quorum_queues":
			if !spec.quorum {
				continue
			}
		case "streams":
			if !spec.stream {
				continue
			}
		}
		if p.re.MatchString(name) {
			return p
		}
	}
	return nil
}

func matchExchange(ps []*Policy, name string) *Policy {
	for _, p := range ps {
		if (p.applyTo == "all" || p.applyTo == "exchanges") && p.re.MatchString(name) {
			return p
		}
	}
	return nil
}

// dlConfig is a queue's effective dead-letter target; a nil *dlConfig means none.
type dlConfig struct {
	exchange   string
	routingKey *string
}

// effective is what a queue runs with: its arguments combined with its policy.
type effective struct {
	opts    queue.Options
	dl      *dlConfig
	expires time.Duration
	policy  string
	// consumerTimeout is how long a delivery may stay unacked (-1: the server's setting; 0:
	// none), from x-consumer-timeout and consumer-timeout, the lower winning.
	consumerTimeout time.Duration
	// window caps the queue's paging window (0: queue.max_ram_messages): x-queue-mode lazy and
	// x-max-in-memory-length or their policy keys. Used when the queue is created.
	window int
	// stream is a stream queue's log settings: its x- arguments, each overridden by the
	// policy's key when the policy sets it (see combineStream).
	stream stream.Options
}

// combine applies RabbitMQ's precedence between a queue's arguments and its policy: for
// message-ttl, expires, max-length, max-length-bytes and delivery-limit the lower value wins; for
// dead-letter-exchange, dead-letter-routing-key and overflow (and Warren's redelivery settings) the
// argument wins.
func combine(spec queueSpec, args amqp.Table, p *Policy) (e effective) {
	if spec.stream {
		return combineStream(spec, args, p)
	}
	e = effective{opts: spec.opts, expires: spec.expires}
	if spec.hasDLX {
		e.dl = &dlConfig{exchange: spec.dlx, routingKey: spec.dlrk}
	}
	lazy, inMemory := spec.lazy, spec.inMemory
	e.consumerTimeout = spec.consumerTimeout
	defer func() {
		// As RabbitMQ: x-queue-mode wins over queue-mode; the lower in-memory length wins.
		if p != nil {
			if _, set := args["x-queue-mode"]; !set && p.queueMode != nil {
				lazy = *p.queueMode == "lazy"
			}
			if p.maxInMemoryLength >= 0 && (inMemory < 0 || p.maxInMemoryLength < inMemory) {
				inMemory = p.maxInMemoryLength
			}
		}
		switch {
		case lazy:
			e.window = 1
		case inMemory >= 0:
			e.window = int(max(inMemory, 1))
		}
	}()
	if p == nil {
		return e
	}
	e.policy = p.name
	lower := func(arg *int64, pol int64) {
		if pol >= 0 && (*arg < 0 || pol < *arg) {
			*arg = pol
		}
	}
	ttl := int64(-1)
	if e.opts.MessageTTL >= 0 {
		ttl = e.opts.MessageTTL.Milliseconds()
	}
	lower(&ttl, p.messageTTL)
	if ttl >= 0 {
		e.opts.MessageTTL = time.Duration(ttl) * time.Millisecond
	}
	lower(&e.opts.MaxLength, p.maxLength)
	lower(&e.opts.MaxLengthBytes, p.maxLengthBytes)
	lower(&e.opts.DeliveryLimit, p.deliveryLimit)
	if p.consumerTimeout >= 0 {
		ct := time.Duration(p.consumerTimeout) * time.Millisecond
		if e.consumerTimeout < 0 || ct < e.consumerTimeout {
			e.consumerTimeout = ct
		}
	}
	if p.expires > 0 && (e.expires <= 0 || time.Duration(p.expires)*time.Millisecond < e.expires) {
		e.expires = time.Duration(p.expires) * time.Millisecond
	}
	if _, set := args["x-overflow"]; !set && p.overflow != nil {
		e.opts.Overflow = *p.overflow
	}
	if _, set := args["x-redelivery-delay"]; !set && p.redeliveryDelay >= 0 {
		e.opts.RedeliveryDelay = time.Duration(p.redeliveryDelay) * time.Millisecond
	}
	if _, set := args["x-redelivery-max-delay"]; !set && p.redeliveryMaxDelay >= 0 {
		e.opts.RedeliveryMaxDelay = time.Duration(p.redeliveryMaxDelay) * time.Millisecond
	}
	if _, set := args["x-redelivery-backoff"]; !set && p.redeliveryBackoff > 0 {
		e.opts.RedeliveryBackoff = p.redeliveryBackoff
	}
	if e.dl == nil && p.dlx != nil {
		e.dl = &dlConfig{exchange: *p.dlx}
	}
	if e.dl != nil && e.dl.routingKey == nil && p.dlrk != nil {
		e.dl.routingKey = p.dlrk
	}
	return e
}

// combineStream is combine for a stream queue. RabbitMQ 3.10's rabbit_stream_queue resolves
// max-length-bytes, max-age and stream-max-segment-size-bytes with policy_precedence: the
// policy's value wins over the queue's argument (not the lower, as for classic queues). The
// other keys (message-ttl, expires, dead-letter-*, max-length, ...) are among its
// unsupported_policies: ignored for streams, though the policy is still the queue's policy.
func combineStream(spec queueSpec, args amqp.Table, p *Policy) effective {
	e := effective{opts: spec.opts, expires: spec.expires, consumerTimeout: spec.consumerTimeout}
	e.stream, _ = streamOptions(args) // checked when the stream was declared
	if p == nil {
		return e
	}
	e.policy = p.name
	if p.maxLengthBytes >= 0 {
		e.stream.MaxLengthBytes = p.maxLengthBytes
	}
	if p.maxAge > 0 {
		e.stream.MaxAge = p.maxAge
	}
	if p.streamMaxSegmentBytes >= 0 {
		e.stream.MaxSegmentBytes = p.streamMaxSegmentBytes
	}
	return e
}

// effectiveLocked is a queue's settings under the vhost's current policies; call with v.mu held.
func (v *VHost) effectiveLocked(name string, spec queueSpec, args amqp.Table) effective {
	return combine(spec, args, matchQueue(v.policies, name, spec))
}

// alternateLocked is an exchange's effective alternate exchange: the argument wins over a policy.
func (v *VHost) alternateLocked(ex *Exchange) string {
	if ae, ok := ex.args["alternate-exchange"].(string); ok {
		return ae
	}
	if ex.name == "" {
		return ""
	}
	if p := matchExchange(v.policies, ex.name); p != nil && p.alternateExchange != nil {
		return *p.alternateExchange
	}
	return ""
}

// setPolicies installs a vhost's policies and re-applies them to every queue and exchange, as
// RabbitMQ does when a policy is set, changed or cleared.
func (v *VHost) setPolicies(ps []*Policy) {
	type change struct {
		qs   *Queue
		opts queue.Options
	}
	var changes []change
	type streamChange struct {
		sq   *streamQueue
		opts stream.Options
	}
	var streams []streamChange
	v.mu.Lock()
	v.policies = ps
	gen := streamPolicyGen.Add(1)
	for _, ex := range v.exchanges {
		ex.alternate = v.alternateLocked(ex)
	}
	for _, qs := range v.queues {
		e := v.effectiveLocked(qs.name, qs.spec, qs.args)
		qs.dl.Store(e.dl)
		qs.consumerTimeout.Store(int64(e.consumerTimeout))
		qs.policy = e.policy
		if e.expires != qs.expires && qs.qq == nil { // not on quorum queues (registerQuorumLocked)
			qs.expires = e.expires
			if qs.expiryTimer != nil {
				qs.expiryTimer.Stop()
				qs.expiryTimer = nil
			}
			v.touchLocked(qs)
		}
		if qs.sq != nil {
			streams = append(streams, streamChange{qs.sq, e.stream})
		} else if qs.qq == nil && e.opts != qs.q.Options() { // a quorum queue's limits are its log's
			changes = append(changes, change{qs, e.opts})
		}
	}
	v.mu.Unlock()
	// Outside the lock: a lowered limit drops messages, and dead-lettering them takes v.mu.
	for _, ch := range changes {
		ch.qs.q.SetOptions(ch.opts)
	}
	// And a stream's new retention removes segment files (streamQueue.mu is never taken under
	// v.mu either).
	for _, sc := range streams {
		sc.sq.setRetention(sc.opts, gen)
	}
}
