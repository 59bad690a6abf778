package broker

import (
	"sort"
	"sync/atomic"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
)

// QueueCounters are a queue's message counters since it was created (RabbitMQ's message_stats):
// atomics bumped on the hot path by whichever goroutine does the work, read by the management
// API, which derives rates from samples. The publishers' counter has a cache line of its own, the
// consumers' share the next: publishers and consumers run on different goroutines and must not
// contend for one line, and 100,000 queues must not cost more than 128 bytes each for this.
type QueueCounters struct {
	publish                                                        counter
	_                                                              [56]byte
	deliver, deliverNoAck, get, getNoAck, getEmpty, ack, redeliver counter
	_                                                              [8]byte
}

type counter struct{ n atomic.Uint64 }

// QueueStats is a snapshot of QueueCounters.
type QueueStats struct {
	Publish, Deliver, DeliverNoAck, Get, GetNoAck, GetEmpty, Ack, Redeliver uint64
}

func (c *QueueCounters) snapshot() QueueStats {
	return QueueStats{
		Publish: c.publish.n.Load(), Deliver: c.deliver.n.Load(), DeliverNoAck: c.deliverNoAck.n.Load(),
		Get: c.get.n.Load(), GetNoAck: c.getNoAck.n.Load(), GetEmpty: c.getEmpty.n.Load(),
		Ack: c.ack.n.Load(), Redeliver: c.redeliver.n.Load(),
	}
}

// QueueInfo is what the management API shows of a queue.
type QueueInfo struct {
	VHost, Name                    string
	Durable, AutoDelete, Exclusive bool
	Owner                          OwnerID // the connection owning an exclusive queue
	Quorum                         bool    // declared x-queue-type quorum
	Args                           amqp.Table
	Policy                         *Policy // nil when none applies
	Counts                         queue.Stats
	Stats                          QueueStats
}

// Queues returns the vhost's queues, in no particular order (listings sort what they show). The
// registry is read under the vhost's read lock; the counts are read after it is released (queue
// locks are not taken under it here).
func (v *VHost) Queues() []QueueInfo {
	v.mu.RLock()
	qs := make([]*Queue, 0, len(v.queues))
	for _, q := range v.queues {
		qs = append(qs, q)
	}
	v.mu.RUnlock()
	out := make([]QueueInfo, len(qs))
	for i, q := range qs {
		out[i] = q.Info()
	}
	return out
}

// QueueInfo describes the named queue, exclusive or not (inspection needs no ownership).
func (v *VHost) QueueInfo(name string) (QueueInfo, bool) {
	v.mu.RLock()
	qs := v.queues[name]
	v.mu.RUnlock()
	if qs == nil {
		return QueueInfo{}, false
	}
	return qs.Info(), true
}

// QueueNames returns the names of the vhost's queues, in no particular order.
func (v *VHost) QueueNames() []string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	out := make([]string, 0, len(v.queues))
	for name := range v.queues {
		out = append(out, name)
	}
	return out
}

// Info returns the queue's description and counts.
func (qs *Queue) Info() QueueInfo {
	v := qs.v
	v.mu.RLock()
	var pol *Policy
	if qs.policy != "" {
		pol = matchQueue(v.policies, qs.name, qs.spec)
	}
	v.mu.RUnlock()
	return QueueInfo{
		VHost: v.name, Name: qs.name, Durable: qs.declDur && !qs.exclusive, AutoDelete: qs.autoDelete,
		Exclusive: qs.exclusive, Owner: qs.owner, Quorum: qs.spec.quorum, Args: qs.args, Policy: pol,
		Counts: qs.infoCounts(), Stats: qs.counters.snapshot(),
	}
}

// ExchangeInfo is what the management API shows of an exchange.
type ExchangeInfo struct {
	VHost, Name, Type             string
	Durable, AutoDelete, Internal bool
	Args                          amqp.Table
	Policy                        *Policy // for alternate-exchange; nil when none applies
	// PublishIn and PublishOut: messages published to it, and those it routed (counted in
	// batches of up to 64 per publisher, so a listing may lag the last few).
	PublishIn, PublishOut uint64
}

// Exchanges returns the vhost's exchanges sorted by name, the default exchange ("") first.
func (v *VHost) Exchanges() []ExchangeInfo {
	v.mu.RLock()
	out := make([]ExchangeInfo, 0, len(v.exchanges))
	for _, ex := range v.exchanges {
		var pol *Policy
		if ex.name != "" {
			pol = matchExchange(v.policies, ex.name)
		}
		out = append(out, ExchangeInfo{VHost: v.name, Name: ex.name, Type: ex.typeName(), Durable: ex.durable,
			AutoDelete: ex.autoDelete, Internal: ex.internal, Args: ex.args, Policy: pol,
			PublishIn: ex.publishIn.Load(), PublishOut: ex.publishOut.Load()})
	}
	v.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// BindingInfo is one binding of a vhost. The default exchange's implicit bindings (to every
// queue, by its name) are listed too, as RabbitMQ lists them.
type BindingInfo struct {
	Source, Destination string
	ToExchange          bool
	Key                 string
	Args                amqp.Table
}

// Bindings returns the vhost's bindings: the default exchange's first, then by source.
func (v *VHost) Bindings() []BindingInfo {
	v.mu.RLock()
	var out []BindingInfo
	for name := range v.queues {
		out = append(out, BindingInfo{Source: "", Destination: name, Key: name})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Destination < out[j].Destination })
	sources := make([]string, 0, len(v.exchanges))
	for name := range v.exchanges {
		sources = append(sources, name)
	}
	sort.Strings(sources)
	for _, name := range sources {
		for _, b := range v.exchanges[name].router.Bindings() {
			out = append(out, BindingInfo{Source: name, Destination: b.Destination, ToExchange: b.ToExchange, Key: b.Key, Args: b.Args})
		}
	}
	v.mu.RUnlock()
	return out
}

// Definition is the policy's definition as configured.
func (p *Policy) Definition() map[string]any { return p.def }
