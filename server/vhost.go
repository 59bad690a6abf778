package server

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"warren/amqp"
	"warren/exchange"
	"warren/persistence"
	"warren/queue"
)

// exchangeState is one exchange of a vhost.
type exchangeState struct {
	name       string
	kind       exchange.Kind
	durable    bool
	autoDelete bool
	internal   bool
	args       amqp.Table
	alternate  string // alternate-exchange argument
	router     exchange.Router
}

// queueState is one queue of a vhost, with the AMQP-level facts the queue package does not know.
type queueState struct {
	v          *vhost
	name       string
	q          *queue.Queue
	durable    bool // stored on disk (durable and not exclusive)
	declDur    bool // durable flag as declared, for redeclare comparison
	exclusive  bool
	autoDelete bool
	owner      *conn
	args       amqp.Table
	spec       queueSpec // from args; policies combine with it
	// dl is the effective dead-letter target (argument or policy), read without v.mu by the
	// dead-letter path and replaced when policies change.
	dl atomic.Pointer[dlConfig]

	// Guarded by v.mu.
	consumers         int
	exclusiveConsumer bool
	hadConsumer       bool
	deleted           atomic.Bool // read without v.mu by the dead-letter path
	expires           time.Duration
	policy            string // name of the policy applied, "" for none
	expiryTimer       *time.Timer
}

func (qs *queueState) ref() persistence.QueueRef {
	return persistence.QueueRef{VHost: qs.v.name, Queue: qs.name}
}

// diskEntry names a durable entry's disk copy for the store's Removes and delivery marks.
func (qs *queueState) diskEntry(e *queue.Entry) persistence.Entry {
	return persistence.Entry{Queue: qs.ref(), Seq: e.Seq, MsgID: e.Msg.ID, SoleRef: !e.SharedOnDisk}
}

// vhost is an isolated namespace of exchanges, queues and bindings.
type vhost struct {
	srv  *Server
	name string

	mu        sync.RWMutex
	exchanges map[string]*exchangeState
	queues    map[string]*queueState
	policies  []*policy // highest priority first
	// deleting holds the durable queues removed from queues whose store.DeleteQueue has not
	// returned yet, closed when it has: a queue declared again under the name waits, or the
	// old queue's purge would delete the new one's first messages (same sequence numbers).
	deleting map[string]chan struct{}
}

var defaultExchanges = []struct {
	name string
	kind exchange.Kind
}{
	{"amq.direct", exchange.Direct},
	{"amq.fanout", exchange.Fanout},
	{"amq.topic", exchange.Topic},
	{"amq.headers", exchange.Headers},
	{"amq.match", exchange.Headers},
}

func newVHost(s *Server, name string, policies []*policy) *vhost {
	v := &vhost{srv: s, name: name, exchanges: map[string]*exchangeState{}, queues: map[string]*queueState{}, policies: policies}
	v.exchanges[""] = &exchangeState{name: "", kind: exchange.Direct, durable: true}
	for _, d := range defaultExchanges {
		v.exchanges[d.name] = &exchangeState{name: d.name, kind: d.kind, durable: true, router: exchange.NewRouter(d.kind)}
	}
	return v
}

func (v *vhost) stopTimers() {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, qs := range v.queues {
		if qs.expiryTimer != nil {
			qs.expiryTimer.Stop()
		}
	}
}

// errNoQueue and friends build RabbitMQ's exact error texts.
func (v *vhost) errNoQueue(name string) *amqp.Error {
	return amqp.Errorf(amqp.NotFound, "no queue '%s' in vhost '%s'", name, v.name)
}

func (v *vhost) errNoExchange(name string) *amqp.Error {
	return amqp.Errorf(amqp.NotFound, "no exchange '%s' in vhost '%s'", name, v.name)
}

func (v *vhost) errLocked(name string) *amqp.Error {
	return amqp.Errorf(amqp.ResourceLocked, "cannot obtain exclusive access to locked queue '%s' in vhost '%s'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.", name, v.name)
}

func errDefaultExchange() *amqp.Error {
	return amqp.Errorf(amqp.AccessRefused, "operation not permitted on the default exchange")
}

// lookupQueue finds a queue usable by c: 404 if missing, 405 if another connection owns it.
// Exclusivity is checked first, as RabbitMQ does. Call with v.mu held (read or write).
func (v *vhost) lookupQueue(c *conn, name string) (*queueState, *amqp.Error) {
	qs := v.queues[name]
	if qs == nil {
		return nil, v.errNoQueue(name)
	}
	if qs.exclusive && qs.owner != c {
		return nil, v.errLocked(name)
	}
	return qs, nil
}

// --- routing

// routeBuf is reused per channel to avoid allocating on every publish.
type routeBuf struct {
	dests  []exchange.Dest
	queues []*queueState
	seen   map[*queueState]struct{}
	exSeen []*exchangeState
}

// route resolves the queues a message reaches from ex, following exchange-to-exchange bindings
// and alternate exchanges; each queue appears once however many paths lead to it.
func (v *vhost) route(ex *exchangeState, key string, headersRaw []byte, rb *routeBuf) []*queueState {
	rb.queues = rb.queues[:0]
	rb.exSeen = rb.exSeen[:0]
	for k := range rb.seen {
		delete(rb.seen, k)
	}
	var headers amqp.Table
	headersDecoded := false
	v.mu.RLock()
	defer v.mu.RUnlock()
	if ex.name == "" {
		if qs := v.queues[key]; qs != nil {
			rb.queues = append(rb.queues, qs)
		}
		return rb.queues
	}
	var walk func(ex *exchangeState)
	walk = func(ex *exchangeState) {
		for _, seen := range rb.exSeen {
			if seen == ex {
				return
			}
		}
		rb.exSeen = append(rb.exSeen, ex)
		if ex.kind == exchange.Headers && !headersDecoded {
			headersDecoded = true
			if len(headersRaw) > 0 {
				headers, _, _ = amqp.DecodeTable(headersRaw)
			}
		}
		start := len(rb.dests)
		rb.dests = ex.router.Route(key, headers, rb.dests)
		found := len(rb.queues)
		for i := start; i < len(rb.dests); i++ {
			d := rb.dests[i]
			if d.ToExchange {
				if next := v.exchanges[d.Name]; next != nil && next.router != nil {
					walk(next)
				}
				continue
			}
			qs := v.queues[d.Name]
			if qs == nil {
				continue
			}
			rb.addQueue(qs)
		}
		rb.dests = rb.dests[:start]
		if len(rb.queues) == found && ex.alternate != "" {
			if ae := v.exchanges[ex.alternate]; ae != nil && ae.router != nil {
				walk(ae)
			}
		}
	}
	walk(ex)
	return rb.queues
}

// senderKeys returns the CC and BCC routing keys of a headers table (RabbitMQ's sender-selected
// distribution). BCC keys route like CC keys but are removed from the delivered message.
func senderKeys(h amqp.Table) (cc, bcc []string) {
	for _, name := range [...]string{"CC", "BCC"} {
		arr, _ := h[name].([]any)
		for _, x := range arr {
			var k string
			switch v := x.(type) {
			case string:
				k = v
			case []byte:
				k = string(v)
			default:
				continue
			}
			if name == "CC" {
				cc = append(cc, k)
			} else {
				bcc = append(bcc, k)
			}
		}
	}
	return cc, bcc
}

// mayHaveSenderKeys is a cheap pre-check on raw header bytes so the table is decoded only when a
// CC or BCC field can be present.
func mayHaveSenderKeys(headersRaw []byte) bool {
	return bytes.Contains(headersRaw, []byte("\x02CCA")) || bytes.Contains(headersRaw, []byte("\x03BCCA"))
}

// routeKeys routes with several routing keys at once; each queue appears once.
func (v *vhost) routeKeys(ex *exchangeState, keys []string, headersRaw []byte, rb *routeBuf) []*queueState {
	var out []*queueState
	var tmp routeBuf
	for _, k := range keys {
		for _, qs := range v.route(ex, k, headersRaw, &tmp) {
			rb.addUnique(&out, qs)
		}
	}
	return out
}

func (rb *routeBuf) addUnique(out *[]*queueState, qs *queueState) {
	for _, x := range *out {
		if x == qs {
			return
		}
	}
	*out = append(*out, qs)
}

func (rb *routeBuf) addQueue(qs *queueState) {
	if len(rb.queues) < 16 {
		for _, x := range rb.queues {
			if x == qs {
				return
			}
		}
		rb.queues = append(rb.queues, qs)
		return
	}
	if rb.seen == nil {
		rb.seen = make(map[*queueState]struct{})
	}
	if len(rb.seen) == 0 {
		for _, x := range rb.queues {
			rb.seen[x] = struct{}{}
		}
	}
	if _, ok := rb.seen[qs]; ok {
		return
	}
	rb.seen[qs] = struct{}{}
	rb.queues = append(rb.queues, qs)
}

// --- exchanges

// declareExchange implements exchange.declare for c (nil: declared by the configuration).
func (v *vhost) declareExchange(c *conn, m *amqp.ExchangeDeclare) *amqp.Error {
	if m.Exchange == "" {
		return errDefaultExchange()
	}
	if m.Passive {
		// RabbitMQ checks no permission for a passive declare.
		v.mu.RLock()
		defer v.mu.RUnlock()
		if v.exchanges[m.Exchange] == nil {
			return v.errNoExchange(m.Exchange)
		}
		return nil
	}
	kind, ok := exchange.ParseKind(m.Type)
	if !ok {
		return amqp.Errorf(amqp.CommandInvalid, "unknown exchange type '%s'", m.Type)
	}
	if err := c.authorize(permConfigure, resExchange, m.Exchange); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	ex := v.exchanges[m.Exchange]
	if ex != nil {
		return v.checkExchangeEquivalent(ex, m, kind)
	}
	if strings.HasPrefix(m.Exchange, "amq.") {
		return amqp.Errorf(amqp.AccessRefused, "exchange name '%s' contains reserved prefix 'amq.*'", m.Exchange)
	}
	if ae, ok := m.Arguments["alternate-exchange"].(string); ok {
		// As RabbitMQ: declaring an alternate exchange needs read on the new exchange and write
		// on the alternate.
		if err := c.authorize(permRead, resExchange, m.Exchange); err != nil {
			return err
		}
		if err := c.authorize(permWrite, resExchange, ae); err != nil {
			return err
		}
	}
	ex = &exchangeState{
		name: m.Exchange, kind: kind, durable: m.Durable, autoDelete: m.AutoDelete, internal: m.Internal,
		args: m.Arguments, router: exchange.NewRouter(kind),
	}
	ex.alternate = v.alternateLocked(ex)
	if ex.durable {
		if err := v.storeExchange(ex); err != nil {
			return err
		}
	}
	v.exchanges[ex.name] = ex
	return nil
}

func (v *vhost) checkExchangeEquivalent(ex *exchangeState, m *amqp.ExchangeDeclare, kind exchange.Kind) *amqp.Error {
	ineq := func(arg string, got, cur any) *amqp.Error {
		return amqp.Errorf(amqp.PreconditionFailed, "inequivalent arg '%s' for exchange '%s' in vhost '%s': received '%v' but current is '%v'", arg, ex.name, v.name, got, cur)
	}
	switch {
	case kind != ex.kind:
		return ineq("type", m.Type, ex.kind.String())
	case m.Durable != ex.durable:
		return ineq("durable", m.Durable, ex.durable)
	case m.AutoDelete != ex.autoDelete:
		return ineq("auto_delete", m.AutoDelete, ex.autoDelete)
	case m.Internal != ex.internal:
		return ineq("internal", m.Internal, ex.internal)
	}
	// Like RabbitMQ, only alternate-exchange takes part in the comparison.
	return compareArgs("exchange", ex.name, v.name, m.Arguments, ex.args, []string{"alternate-exchange"})
}

// equivalenceArgs are the queue arguments compared on redeclare (RabbitMQ ignores the others).
var equivalenceArgs = []string{
	"x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key",
	"x-max-length", "x-max-length-bytes", "x-max-priority", "x-overflow", "x-queue-mode",
	"x-single-active-consumer", "x-queue-type", "x-delivery-limit",
	"x-redelivery-delay", "x-redelivery-backoff", "x-redelivery-max-delay",
}

// compareArgs returns RabbitMQ's 406 for the first of keys whose value differs.
func compareArgs(kind, name, vhost string, got, cur amqp.Table, keys []string) *amqp.Error {
	for _, k := range keys {
		a, aok := got[k]
		b, bok := cur[k]
		if aok == bok && (!aok || (amqp.Table{k: a}).Equal(amqp.Table{k: b})) {
			continue
		}
		describe := func(v any, ok bool) string {
			if !ok {
				return "none"
			}
			return fmt.Sprintf("the value '%v' of type '%s'", v, typeName(v))
		}
		return amqp.Errorf(amqp.PreconditionFailed, "inequivalent arg '%s' for %s '%s' in vhost '%s': received %s but current is %s", k, kind, name, vhost, describe(a, aok), describe(b, bok))
	}
	return nil
}

func (v *vhost) storeExchange(ex *exchangeState) *amqp.Error {
	if v.srv.store == nil {
		return nil
	}
	rec := persistence.ExchangeRecord{VHost: v.name, Name: ex.name, Kind: ex.kind.String(), Durable: true, AutoDelete: ex.autoDelete, Internal: ex.internal, Args: encodeArgs(ex.args)}
	if err := v.srv.store.PutExchange(rec); err != nil {
		return amqp.Errorf(amqp.InternalError, "storing exchange: %v", err)
	}
	return nil
}

func (v *vhost) deleteExchange(c *conn, name string, ifUnused bool) *amqp.Error {
	if name == "" {
		return errDefaultExchange()
	}
	if strings.HasPrefix(name, "amq.") {
		return amqp.Errorf(amqp.AccessRefused, "deletion of system exchange '%s' in vhost '%s' not allowed", name, v.name)
	}
	if err := c.authorize(permConfigure, resExchange, name); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	ex := v.exchanges[name]
	if ex == nil {
		return nil
	}
	if ifUnused && ex.router.Len() > 0 {
		return amqp.Errorf(amqp.PreconditionFailed, "exchange '%s' in vhost '%s' in use", name, v.name)
	}
	v.removeExchangeLocked(ex)
	return nil
}

// removeExchangeLocked deletes ex and every binding to or from it.
func (v *vhost) removeExchangeLocked(ex *exchangeState) {
	delete(v.exchanges, ex.name)
	for _, other := range v.exchanges {
		if other.router != nil && other.router.UnbindDestination(ex.name, true) > 0 {
			v.maybeAutoDeleteExchangeLocked(other)
		}
	}
	if ex.durable && v.srv.store != nil {
		if err := v.srv.store.DeleteExchange(v.name, ex.name); err != nil {
			v.srv.log.Error("deleting durable exchange", "exchange", ex.name, "err", err)
		}
	}
}

func (v *vhost) maybeAutoDeleteExchangeLocked(ex *exchangeState) {
	if ex.autoDelete && ex.router.Len() == 0 && v.exchanges[ex.name] == ex {
		v.removeExchangeLocked(ex)
	}
}

// authorizeBinding makes RabbitMQ's checks for queue.bind, exchange.bind and their unbinds, in
// its order: write on the destination, then the default exchange, then read on the source.
func authorizeBinding(c *conn, source, dest string, toExchange bool) *amqp.Error {
	destKind := resQueue
	if toExchange {
		destKind = resExchange
	}
	if err := c.authorize(permWrite, destKind, dest); err != nil {
		return err
	}
	if source == "" || (toExchange && dest == "") {
		return errDefaultExchange()
	}
	return c.authorize(permRead, resExchange, source)
}

// bind adds a binding from source to a queue or exchange destination.
func (v *vhost) bind(c *conn, source, dest string, toExchange bool, key string, args amqp.Table) *amqp.Error {
	if err := authorizeBinding(c, source, dest, toExchange); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	durable, err := v.bindingEnds(c, source, dest, toExchange)
	if err != nil {
		return err
	}
	src := v.exchanges[source]
	added, berr := src.router.Bind(exchange.Binding{Destination: dest, ToExchange: toExchange, Key: key, Args: args})
	if berr != nil {
		return asAMQP(berr)
	}
	if added && durable && v.srv.store != nil {
		rec := persistence.BindingRecord{VHost: v.name, Source: source, Destination: dest, ToExchange: toExchange, Key: key, Args: encodeArgs(args)}
		if err := v.srv.store.PutBinding(rec); err != nil {
			return amqp.Errorf(amqp.InternalError, "storing binding: %v", err)
		}
	}
	return nil
}

// bindingEnds checks both ends of a binding exist and reports whether the binding is durable
// (both ends durable). Call with v.mu held.
func (v *vhost) bindingEnds(c *conn, source, dest string, toExchange bool) (bool, *amqp.Error) {
	src := v.exchanges[source]
	durable := true
	if toExchange {
		dst := v.exchanges[dest]
		if dst == nil || dst.router == nil {
			return false, v.errNoExchange(dest)
		}
		durable = dst.durable
	} else {
		qs, err := v.lookupQueue(c, dest)
		if err != nil {
			return false, err
		}
		durable = qs.durable
	}
	if src == nil {
		return false, v.errNoExchange(source)
	}
	return durable && src.durable, nil
}

func (v *vhost) unbind(c *conn, source, dest string, toExchange bool, key string, args amqp.Table) *amqp.Error {
	if err := authorizeBinding(c, source, dest, toExchange); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	b := exchange.Binding{Destination: dest, ToExchange: toExchange, Key: key, Args: args}
	durable, err := v.bindingEnds(c, source, dest, toExchange)
	if err != nil {
		// Unbinding something that is gone succeeds, as in RabbitMQ 3.10, which looks for the
		// binding before it checks exclusivity.
		if err.Code == amqp.NotFound || !hasBinding(v.exchanges[source], b) {
			return nil
		}
		return err
	}
	src := v.exchanges[source]
	if src.router.Unbind(b) {
		if durable && v.srv.store != nil {
			rec := persistence.BindingRecord{VHost: v.name, Source: source, Destination: dest, ToExchange: toExchange, Key: key, Args: encodeArgs(args)}
			if err := v.srv.store.DeleteBinding(rec); err != nil {
				v.srv.log.Error("deleting durable binding", "source", source, "err", err)
			}
		}
		v.maybeAutoDeleteExchangeLocked(src)
	}
	return nil
}

func hasBinding(src *exchangeState, b exchange.Binding) bool {
	if src == nil || src.router == nil {
		return false
	}
	for _, x := range src.router.Bindings() {
		if x.Destination == b.Destination && x.ToExchange == b.ToExchange && x.Key == b.Key && argsEqual(x.Args, b.Args) {
			return true
		}
	}
	return false
}

func argsEqual(a, b amqp.Table) bool {
	if len(a) == 0 && len(b) == 0 {
		return true
	}
	return a.Equal(b)
}

// --- queues

func randomName(prefix string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return prefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// declareQueue implements queue.declare and returns the queue with its counts.
// The caller reads the counts after the vhost lock is released: counting may expire messages,
// and dead-lettering them needs the lock.
func (v *vhost) declareQueue(c *conn, m *amqp.QueueDeclare) (*queueState, *amqp.Error) {
	name := m.Queue
	if m.Passive {
		// RabbitMQ checks no permission for a passive declare.
		v.mu.Lock()
		defer v.mu.Unlock()
		if name == "" {
			return nil, v.errNoQueue(name)
		}
		qs, err := v.lookupQueue(c, name)
		if err != nil {
			return nil, err
		}
		v.touchLocked(qs)
		return qs, nil
	}
	if name == "" {
		name = randomName("amq.gen-")
	} else if strings.HasPrefix(name, "amq.") {
		return nil, amqp.Errorf(amqp.AccessRefused, "queue name '%s' contains reserved prefix 'amq.*'", name)
	}
	if err := c.authorize(permConfigure, resQueue, name); err != nil {
		return nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for done, ok := v.deleting[name]; ok; done, ok = v.deleting[name] {
		v.mu.Unlock()
		<-done
		v.mu.Lock()
	}
	if qs := v.queues[name]; qs != nil {
		if qs.exclusive && qs.owner != c {
			return nil, v.errLocked(name)
		}
		if err := v.checkQueueEquivalent(qs, m); err != nil {
			return nil, err
		}
		v.touchLocked(qs)
		return qs, nil
	}
	if err := v.queueLimitError(c, name); err != nil {
		return nil, err
	}
	if dlx, ok := m.Arguments["x-dead-letter-exchange"].(string); ok {
		// As RabbitMQ: a dead-letter exchange needs read on the queue and write on the exchange.
		if err := c.authorize(permRead, resQueue, name); err != nil {
			return nil, err
		}
		if err := c.authorize(permWrite, resExchange, dlx); err != nil {
			return nil, err
		}
	}
	spec, aerr := parseQueueArgs(m.Arguments)
	if aerr != nil {
		aerr.Text = fillQueueName(aerr.Text, name, v.name)
		return nil, aerr
	}
	if spec.quorum && !m.Durable {
		return nil, amqp.Errorf(amqp.PreconditionFailed, "invalid property 'non-durable' for queue '%s' in vhost '%s'", name, v.name)
	}
	if spec.quorum && m.Exclusive {
		return nil, amqp.Errorf(amqp.PreconditionFailed, "invalid property 'exclusive-owner' for queue '%s' in vhost '%s'", name, v.name)
	}
	qs := &queueState{
		v: v, name: name, declDur: m.Durable, durable: m.Durable && !m.Exclusive && v.srv.store != nil,
		exclusive: m.Exclusive, autoDelete: m.AutoDelete, args: m.Arguments, spec: spec,
	}
	if m.Exclusive {
		qs.owner = c
	}
	v.newQueueLocked(qs)
	if qs.durable {
		rec := persistence.QueueRecord{VHost: v.name, Name: name, AutoDelete: m.AutoDelete, Args: encodeArgs(m.Arguments)}
		if err := v.srv.store.PutQueue(rec); err != nil {
			return nil, amqp.Errorf(amqp.InternalError, "storing queue: %v", err)
		}
	}
	v.queues[name] = qs
	v.touchLocked(qs)
	return qs, nil
}

// newQueueLocked builds qs's queue with its arguments combined with the matching policy; call
// with v.mu held.
func (v *vhost) newQueueLocked(qs *queueState) {
	e := v.effectiveLocked(qs.name, qs.spec, qs.args)
	qs.dl.Store(e.dl)
	qs.expires, qs.policy = e.expires, e.policy
	qs.q = queue.New(qs.name, e.opts, queue.Hooks{Dropped: v.onDropped(qs)})
	v.srv.enablePaging(qs)
}

func (v *vhost) checkQueueEquivalent(qs *queueState, m *amqp.QueueDeclare) *amqp.Error {
	ineq := func(arg string, got, cur any) *amqp.Error {
		return amqp.Errorf(amqp.PreconditionFailed, "inequivalent arg '%s' for queue '%s' in vhost '%s': received '%v' but current is '%v'", arg, qs.name, v.name, got, cur)
	}
	switch {
	case m.Durable != qs.declDur:
		return ineq("durable", m.Durable, qs.declDur)
	case m.AutoDelete != qs.autoDelete:
		return ineq("auto_delete", m.AutoDelete, qs.autoDelete)
	case m.Exclusive != qs.exclusive:
		return ineq("exclusive", m.Exclusive, qs.exclusive)
	}
	return compareArgs("queue", qs.name, v.name, m.Arguments, qs.args, equivalenceArgs)
}

// deleteQueue implements queue.delete; a missing queue counts as deleted with 0 messages.
func (v *vhost) deleteQueue(c *conn, name string, ifUnused, ifEmpty bool) (int, *amqp.Error) {
	if err := c.authorize(permConfigure, resQueue, name); err != nil {
		return 0, err
	}
	v.mu.Lock()
	qs := v.queues[name]
	if qs == nil {
		v.mu.Unlock()
		return 0, nil
	}
	if qs.exclusive && qs.owner != c {
		v.mu.Unlock()
		return 0, v.errLocked(name)
	}
	st := qs.q.Counts()
	if ifUnused && st.Consumers > 0 {
		v.mu.Unlock()
		return 0, amqp.Errorf(amqp.PreconditionFailed, "queue '%s' in vhost '%s' in use", name, v.name)
	}
	if ifEmpty && st.Ready > 0 {
		v.mu.Unlock()
		return 0, amqp.Errorf(amqp.PreconditionFailed, "queue '%s' in vhost '%s' is not empty", name, v.name)
	}
	v.removeQueueLocked(qs)
	v.mu.Unlock()
	n := v.finishQueueRemoval(qs)
	return n, nil
}

// removeQueueLocked unlinks qs from the registry and its bindings; finishQueueRemoval (called
// without v.mu) then closes it and cancels its consumers.
func (v *vhost) removeQueueLocked(qs *queueState) {
	if v.queues[qs.name] != qs {
		return
	}
	delete(v.queues, qs.name)
	qs.deleted.Store(true)
	if qs.durable {
		if v.deleting == nil {
			v.deleting = make(map[string]chan struct{})
		}
		v.deleting[qs.name] = make(chan struct{})
	}
	if qs.expiryTimer != nil {
		qs.expiryTimer.Stop()
	}
	for _, ex := range v.exchanges {
		if ex.router != nil && ex.router.UnbindDestination(qs.name, false) > 0 {
			v.maybeAutoDeleteExchangeLocked(ex)
		}
	}
}

func (v *vhost) finishQueueRemoval(qs *queueState) int {
	consumers, n := qs.q.Close()
	for _, c := range consumers {
		if cs, ok := c.(*consumer); ok {
			cs.ch.serverCancel(cs)
		}
	}
	if qs.durable {
		if err := v.srv.store.DeleteQueue(v.name, qs.name); err != nil {
			v.srv.log.Error("deleting durable queue", "queue", qs.name, "err", err)
		}
		v.mu.Lock()
		// A queue of that name cannot be declared (and deleted) again before this returns.
		if done, ok := v.deleting[qs.name]; ok {
			delete(v.deleting, qs.name)
			close(done)
		}
		v.mu.Unlock()
	}
	return n
}

// dropExclusive deletes the exclusive queues owned by a closing connection.
func (v *vhost) dropExclusive(c *conn) {
	v.mu.Lock()
	var gone []*queueState
	for _, qs := range v.queues {
		if qs.exclusive && qs.owner == c {
			v.removeQueueLocked(qs)
			gone = append(gone, qs)
		}
	}
	v.mu.Unlock()
	for _, qs := range gone {
		v.finishQueueRemoval(qs)
	}
}

// touchLocked restarts a queue's x-expires countdown; call with v.mu held for writing.
func (v *vhost) touchLocked(qs *queueState) {
	if qs.expires <= 0 {
		return
	}
	if qs.expiryTimer != nil {
		qs.expiryTimer.Stop()
	}
	if qs.consumers > 0 {
		return
	}
	qs.expiryTimer = time.AfterFunc(qs.expires, func() { v.expireQueue(qs) })
}

func (v *vhost) expireQueue(qs *queueState) {
	v.mu.Lock()
	if qs.deleted.Load() || qs.consumers > 0 || v.queues[qs.name] != qs {
		v.mu.Unlock()
		return
	}
	v.removeQueueLocked(qs)
	v.mu.Unlock()
	v.finishQueueRemoval(qs)
}

// touch restarts the x-expires countdown (basic.get counts as use).
func (v *vhost) touch(qs *queueState) {
	if qs.expires <= 0 {
		return
	}
	v.mu.Lock()
	if !qs.deleted.Load() {
		v.touchLocked(qs)
	}
	v.mu.Unlock()
}

// consumerAdded / consumerRemoved keep the counts auto-delete and x-expires depend on.
func (v *vhost) consumerAdded(qs *queueState, exclusive bool) {
	v.mu.Lock()
	qs.consumers++
	qs.hadConsumer = true
	if exclusive {
		qs.exclusiveConsumer = true
	}
	if qs.expiryTimer != nil {
		qs.expiryTimer.Stop()
	}
	v.mu.Unlock()
}

func (v *vhost) consumerRemoved(qs *queueState, exclusive bool) {
	v.mu.Lock()
	qs.consumers--
	if exclusive {
		qs.exclusiveConsumer = false
	}
	if qs.deleted.Load() {
		v.mu.Unlock()
		return
	}
	if qs.consumers == 0 && qs.autoDelete && qs.hadConsumer {
		v.removeQueueLocked(qs)
		v.mu.Unlock()
		v.finishQueueRemoval(qs)
		return
	}
	v.touchLocked(qs)
	v.mu.Unlock()
}

// asAMQP converts an error from exchange/ (already an *amqp.Error) or anything else (541).
func asAMQP(err error) *amqp.Error {
	if ae, ok := err.(*amqp.Error); ok {
		return ae
	}
	return amqp.Errorf(amqp.InternalError, "%v", err)
}

func encodeArgs(t amqp.Table) []byte {
	if len(t) == 0 {
		return nil
	}
	b, err := amqp.AppendTable(nil, t)
	if err != nil {
		return nil
	}
	return b
}
