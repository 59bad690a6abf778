package broker

import (
	"fmt"
	"strings"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/exchange"
	"github.com/warrenmq/warren/persistence"
)

// ExchangeSpec is an exchange.declare.
type ExchangeSpec struct {
	Name, Type                    string
	Passive                       bool // only check that it exists
	Durable, AutoDelete, Internal bool
	Args                          amqp.Table
}

// DeclareExchange implements exchange.declare for a.
func (v *VHost) DeclareExchange(a Actor, m ExchangeSpec) *amqp.Error {
	if m.Name == "" {
		return errDefaultExchange()
	}
	if m.Passive {
		// RabbitMQ checks no permission for a passive declare.
		_, err := v.Exchange(m.Name)
		return err
	}
	kind, ok := exchange.ParseKind(m.Type)
	if !ok && m.Type != delayedType {
		return amqp.Errorf(amqp.CommandInvalid, "unknown exchange type '%s'", m.Type)
	}
	if err := a.authorize(PermConfigure, ResExchange, m.Name); err != nil {
		return err
	}
	if strings.HasPrefix(m.Name, "amq.") {
		v.mu.RLock()
		ex := v.exchanges[m.Name]
		v.mu.RUnlock()
		if ex == nil {
			return amqp.Errorf(amqp.AccessRefused, "exchange name '%s' contains reserved prefix 'amq.*'", m.Name)
		}
	}
	if ae, ok := m.Args["alternate-exchange"].(string); ok {
		// As RabbitMQ: declaring an alternate exchange needs read on the new exchange and write
		// on the alternate.
		if err := a.authorize(PermRead, ResExchange, m.Name); err != nil {
			return err
		}
		if err := a.authorize(PermWrite, ResExchange, ae); err != nil {
			return err
		}
	}
	if v.b.replicator != nil {
		if m.Type == delayedType {
			// x-delayed-type is checked before the log (as by the plugin, on creation only),
			// so that applying the declare cannot fail on any node. The log makes this node
			// the exchange's home (replicate.go, delayed.go).
			v.mu.RLock()
			exists := v.exchanges[m.Name] != nil
			v.mu.RUnlock()
			if !exists {
				if _, err := parseDelayedType(m.Args); err != nil {
					return err
				}
			}
		}
		_, err := v.replicate(a, TopologyOp{Kind: OpDeclareExchange, Exchange: m})
		return err
	}
	v.mu.Lock()
	if ex := v.exchanges[m.Name]; ex != nil {
		v.mu.Unlock()
		return v.checkExchangeEquivalent(ex, m)
	}
	var delayed *delayedExchange
	if m.Type == delayedType {
		// As the plugin, x-delayed-type is checked when the exchange is created only.
		k, err := parseDelayedType(m.Args)
		if err != nil {
			v.mu.Unlock()
			return err
		}
		kind = k
		delayed = &delayedExchange{v: v, inc: v.b.delayed.newIncarnation()}
	}
	ex := &Exchange{
		name: m.Name, kind: kind, durable: m.Durable, autoDelete: m.AutoDelete, internal: m.Internal,
		args: m.Args, router: exchange.NewRouter(kind), delayed: delayed,
	}
	var synced chan error
	var sw storeWaits
	if ex.durable && v.b.store != nil {
		args, aerr := encodeArgs(ex.args)
		if aerr != nil {
			v.mu.Unlock()
			return aerr
		}
		var done func(error)
		done, synced = submitted()
		v.b.store.PutExchangeAsync(persistence.ExchangeRecord{VHost: v.name, Name: ex.name, Kind: ex.typeName(), Durable: true,
			AutoDelete: ex.autoDelete, Internal: ex.internal, Args: args}, done)
		if delayed != nil {
			v.b.store.PutDelayedExchangeAsync(v.name, ex.name, delayed.inc, sw.add(v.b, "storing delayed exchange"))
		}
	}
	if delayed != nil {
		v.b.delayed.register(ex)
	}
	ex.alternate = v.alternateLocked(ex)
	v.exchanges[ex.name] = ex
	v.mu.Unlock()
	sw.wait(v.b, "storing delayed exchange")
	return wait(synced, "storing exchange")
}

func (v *VHost) checkExchangeEquivalent(ex *Exchange, m ExchangeSpec) *amqp.Error {
	ineq := func(arg string, got, cur any) *amqp.Error {
		return amqp.Errorf(amqp.PreconditionFailed, "inequivalent arg '%s' for exchange '%s' in vhost '%s': received '%v' but current is '%v'", arg, ex.name, v.name, got, cur)
	}
	switch {
	case m.Type != ex.typeName():
		return ineq("type", m.Type, ex.typeName())
	case m.Durable != ex.durable:
		return ineq("durable", m.Durable, ex.durable)
	case m.AutoDelete != ex.autoDelete:
		return ineq("auto_delete", m.AutoDelete, ex.autoDelete)
	case m.Internal != ex.internal:
		return ineq("internal", m.Internal, ex.internal)
	}
	// Like RabbitMQ, only alternate-exchange takes part in the comparison.
	return compareArgs("exchange", ex.name, v.name, m.Args, ex.args, []string{"alternate-exchange"})
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

// DeleteExchange implements exchange.delete; a missing exchange counts as deleted.
func (v *VHost) DeleteExchange(a Actor, name string, ifUnused bool) *amqp.Error {
	if name == "" {
		return errDefaultExchange()
	}
	if strings.HasPrefix(name, "amq.") {
		return amqp.Errorf(amqp.AccessRefused, "deletion of system exchange '%s' in vhost '%s' not allowed", name, v.name)
	}
	if err := a.authorize(PermConfigure, ResExchange, name); err != nil {
		return err
	}
	if v.b.replicator != nil {
		_, err := v.replicate(a, TopologyOp{Kind: OpDeleteExchange, Exchange: ExchangeSpec{Name: name}, IfUnused: ifUnused})
		return err
	}
	v.mu.Lock()
	ex := v.exchanges[name]
	if ex == nil {
		v.mu.Unlock()
		return nil
	}
	if ifUnused && ex.router.Len() > 0 {
		v.mu.Unlock()
		return amqp.Errorf(amqp.PreconditionFailed, "exchange '%s' in vhost '%s' in use", name, v.name)
	}
	var sw storeWaits
	v.removeExchangeLocked(ex, &sw)
	v.mu.Unlock()
	sw.wait(v.b, "deleting durable exchange")
	return nil
}

// storeWaits collects the store writes submitted under v.mu that the caller waits for after
// releasing it.
type storeWaits []chan error

// add returns the done callback of one more write. With a nil sw nobody waits: a failure is
// logged when it happens.
func (sw *storeWaits) add(b *Broker, what string) func(error) {
	if sw == nil {
		return func(err error) {
			if err != nil {
				b.log.Error(what, "err", err)
			}
		}
	}
	done, ch := submitted()
	*sw = append(*sw, ch)
	return done
}

// wait waits for every write; a failure is logged (the in-memory change stands, as it did when
// deletes were written under the lock).
func (sw storeWaits) wait(b *Broker, what string) {
	for _, ch := range sw {
		if err := <-ch; err != nil {
			b.log.Error(what, "err", err)
		}
	}
}

// removeExchangeLocked deletes ex and every binding to or from it.
func (v *VHost) removeExchangeLocked(ex *Exchange, sw *storeWaits) {
	delete(v.exchanges, ex.name)
	if ex.delayed != nil {
		v.b.delayed.unregister(ex, sw)
	}
	for _, other := range v.exchanges {
		if other.router.UnbindDestination(ex.name, true) > 0 {
			v.maybeAutoDeleteExchangeLocked(other, sw)
		}
	}
	if ex.durable && v.b.store != nil {
		v.b.store.DeleteExchangeAsync(v.name, ex.name, sw.add(v.b, "deleting durable exchange"))
	}
}

func (v *VHost) maybeAutoDeleteExchangeLocked(ex *Exchange, sw *storeWaits) {
	if ex.autoDelete && ex.router.Len() == 0 && v.exchanges[ex.name] == ex {
		v.removeExchangeLocked(ex, sw)
	}
}

// authorizeBinding makes RabbitMQ's checks for queue.bind, exchange.bind and their unbinds, in
// its order: write on the destination, then the default exchange, then read on the source.
func authorizeBinding(a Actor, source, dest string, toExchange bool) *amqp.Error {
	destKind := ResQueue
	if toExchange {
		destKind = ResExchange
	}
	if err := a.authorize(PermWrite, destKind, dest); err != nil {
		return err
	}
	if source == "" || (toExchange && dest == "") {
		return errDefaultExchange()
	}
	return a.authorize(PermRead, ResExchange, source)
}

// BindingSpec is a binding from Source to a queue or (ToExchange) an exchange.
type BindingSpec struct {
	Source, Destination string
	ToExchange          bool
	Key                 string
	Args                amqp.Table
}

func (b BindingSpec) record(vhost string, args []byte) persistence.BindingRecord {
	return persistence.BindingRecord{VHost: vhost, Source: b.Source, Destination: b.Destination, ToExchange: b.ToExchange, Key: b.Key, Args: args}
}

// Bind implements queue.bind and exchange.bind.
func (v *VHost) Bind(a Actor, b BindingSpec) *amqp.Error {
	if err := authorizeBinding(a, b.Source, b.Destination, b.ToExchange); err != nil {
		return err
	}
	args, aerr := encodeArgs(b.Args)
	if aerr != nil {
		return aerr
	}
	if v.b.replicator != nil {
		return v.replicatedBind(a, OpBind, b)
	}
	v.mu.Lock()
	durable, err := v.bindingEnds(a, b.Source, b.Destination, b.ToExchange)
	if err != nil {
		v.mu.Unlock()
		return err
	}
	synced, err := v.addBindingLocked(b, args, durable)
	v.mu.Unlock()
	if err != nil {
		return err
	}
	return wait(synced, "storing binding")
}

// addBindingLocked adds b (whose ends exist) to its source's router and submits its store
// write when it is new and durable; call with v.mu held, and wait for the returned channel
// after releasing it.
func (v *VHost) addBindingLocked(b BindingSpec, args []byte, durable bool) (chan error, *amqp.Error) {
	added, berr := v.exchanges[b.Source].router.Bind(exchange.Binding{Destination: b.Destination, ToExchange: b.ToExchange, Key: b.Key, Args: b.Args})
	if berr != nil {
		return nil, amqp.AsError(berr)
	}
	var synced chan error
	if added && durable && v.b.store != nil {
		var done func(error)
		done, synced = submitted()
		v.b.store.PutBindingAsync(b.record(v.name, args), done)
	}
	return synced, nil
}

// bindingEnds checks both ends of a binding exist and reports whether the binding is durable
// (both ends durable). Call with v.mu held.
func (v *VHost) bindingEnds(a Actor, source, dest string, toExchange bool) (bool, *amqp.Error) {
	src := v.exchanges[source]
	durable := true
	if toExchange {
		dst := v.exchanges[dest]
		if dst == nil {
			return false, v.errNoExchange(dest)
		}
		durable = dst.durable
	} else {
		qs, err := v.lookupQueue(a, dest)
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

// Unbind implements queue.unbind and exchange.unbind; a missing binding counts as removed.
func (v *VHost) Unbind(a Actor, b BindingSpec) *amqp.Error {
	if err := authorizeBinding(a, b.Source, b.Destination, b.ToExchange); err != nil {
		return err
	}
	args, aerr := encodeArgs(b.Args)
	if aerr != nil {
		return aerr
	}
	if v.b.replicator != nil {
		return v.replicatedBind(a, OpUnbind, b)
	}
	eb := exchange.Binding{Destination: b.Destination, ToExchange: b.ToExchange, Key: b.Key, Args: b.Args}
	var sw storeWaits
	v.mu.Lock()
	durable, err := v.bindingEnds(a, b.Source, b.Destination, b.ToExchange)
	if err != nil {
		// Unbinding something that is gone succeeds, as in RabbitMQ 3.10, which looks for the
		// binding before it checks exclusivity.
		gone := err.Code == amqp.NotFound || !hasBinding(v.exchanges[b.Source], eb)
		v.mu.Unlock()
		if gone {
			return nil
		}
		return err
	}
	src := v.exchanges[b.Source]
	if src.router.Unbind(eb) {
		if durable && v.b.store != nil {
			v.b.store.DeleteBindingAsync(b.record(v.name, args), sw.add(v.b, "deleting durable binding"))
		}
		v.maybeAutoDeleteExchangeLocked(src, &sw)
	}
	v.mu.Unlock()
	sw.wait(v.b, "deleting durable binding")
	return nil
}

func hasBinding(src *Exchange, b exchange.Binding) bool {
	if src == nil {
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
