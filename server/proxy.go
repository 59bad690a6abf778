package server

import (
	"slices"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// This file is the client-node half of a cluster's data link: basic.consume and basic.get of a
// queue homed on another node are proxied over a link channel to that node (broker.Proxy). The
// home node's queue decides everything (prefetch, redelivered, requeue position); this channel
// gives the deliveries its own delivery tags and maps settlements back to the link's.

// remoteLinks are the link channels a channel opened: its proxied consumers' (kept after a
// cancel until what they delivered is settled, see closeDrained) and one getter per home node.
// All are closed with the channel, which requeues on the home nodes what the client had not
// settled.
type remoteLinks struct {
	all     []broker.ProxyChannel
	getters map[string]broker.ProxyGetter
	// held are deliveries the home sent over the channel's global prefetch (basic.qos
	// global=true, which each home can only apply per link channel): they wait here, in
	// arrival order, for credit. The home counts them as delivered; they are requeued there if
	// the channel closes first.
	held []heldDelivery
}

type heldDelivery struct {
	rs *remoteSink
	d  broker.ProxyDelivery
}

// takeHeldLocked removes the held deliveries of cs (cancelled) for the caller to requeue on
// their home; call with ch.mu held.
func (ch *channel) takeHeldLocked(cs *consumer) []heldDelivery {
	if ch.remote == nil {
		return nil
	}
	var mine []heldDelivery
	kept := ch.remote.held[:0]
	for _, h := range ch.remote.held {
		if h.rs.cs == cs {
			mine = append(mine, h)
			h.rs.held--
		} else {
			kept = append(kept, h)
		}
	}
	clear(ch.remote.held[len(kept):])
	ch.remote.held = kept
	return mine
}

// remoteSink relays a proxied consumer's deliveries into the channel.
type remoteSink struct {
	cs *consumer
	pc broker.ProxyChannel
	// held counts this consumer's deliveries in ch.remote.held (under ch.mu): while there
	// are, new ones wait behind them, in order.
	held int
}

// Deliver implements broker.ProxySink (on the link's relay goroutine). A delivery waits here
// (held) while the client's socket is congested, as local deliveries wait in their queue: the
// home's window (the client's prefetch, or for a no-ack consumer the link's, see
// broker.ProxyChannel.Written) bounds how many; the writer's drain sends them (kickConsumers).
func (rs *remoteSink) Deliver(d broker.ProxyDelivery) bool {
	cs := rs.cs
	ch := cs.ch
	ch.mu.Lock()
	if ch.closed || ch.consumers[cs.tag] != cs {
		ch.mu.Unlock()
		return false
	}
	hold := rs.held > 0 ||
		(!cs.noAck && ch.prefetch > 0 && (ch.inflight >= ch.prefetch || len(ch.remote.held) > 0))
	w := ch.c.w
	b := w.lock()
	if hold || w.congestedLocked() {
		w.unlock(b)
		// d's header and body may alias the link's read buffer: what waits gets a copy.
		buf := slices.Concat(d.Header, d.Body)
		d.Header, d.Body = buf[:len(d.Header):len(d.Header)], buf[len(d.Header):]
		ch.remote.held = append(ch.remote.held, heldDelivery{rs: rs, d: d})
		rs.held++
		ch.starved = true
		ch.mu.Unlock()
		return true
	}
	rs.writeLocked(b, d)
	ch.mu.Unlock()
	return true
}

// writeLocked sends a delivery to the client; call with ch.mu held and b from ch.c.w.lock(),
// which it unlocks.
func (rs *remoteSink) writeLocked(b []byte, d broker.ProxyDelivery) {
	cs := rs.cs
	ch := cs.ch
	ch.nextTag++
	tag := ch.nextTag
	w := ch.c.w
	start := len(b)
	b = amqp.BeginMethodFrame(b, ch.id)
	m := amqp.BasicDeliver{ConsumerTag: cs.tag, DeliveryTag: tag, Redelivered: d.Redelivered, Exchange: d.Exchange, RoutingKey: d.RoutingKey}
	b = m.Append(b)
	b = amqp.EndMethodFrame(b, start)
	b = amqp.AppendContent(b, ch.id, d.Header, d.Body, ch.c.frameMax)
	w.unlock(b)
	if cs.noAck {
		rs.pc.Written(d.Tag)
		return
	}
	ch.unacked = append(ch.unacked, delivery{tag: tag, qs: cs.qs, cons: cs, rem: rs.pc, rtag: d.Tag})
	cs.unacked++
	ch.inflight++
}

// sendHeld sends the held deliveries the channel's global prefetch now allows (after a
// settlement returned credit); those of consumers gone since are requeued on their home.
func (ch *channel) sendHeld() {
	var back []heldDelivery
	ch.mu.Lock()
	if ch.remote == nil || len(ch.remote.held) == 0 {
		ch.mu.Unlock()
		return
	}
	// Those of gone consumers go back whatever the credit: held here, they would stay
	// unacked on the home (and count against its consumer timeout).
	// A congested client takes nothing more (the writer's drain calls this again); a delivery
	// kept makes every later one of its consumer wait too, so each consumer's stay in order.
	held := ch.remote.held
	kept := held[:0]
	w := ch.c.w
	congested := false
	for _, h := range held {
		switch {
		case ch.closed || ch.consumers[h.rs.cs.tag] != h.rs.cs:
			back = append(back, h)
			h.rs.held--
			continue
		case congested:
		case h.rs.cs.noAck || ch.prefetch == 0 || ch.inflight < ch.prefetch:
			b := w.lock()
			if congested = w.congestedLocked(); !congested {
				h.rs.held--
				h.rs.writeLocked(b, h.d)
				continue
			}
			w.unlock(b)
		}
		kept = append(kept, h)
	}
	clear(held[len(kept):])
	ch.remote.held = kept
	ch.mu.Unlock()
	for _, h := range back {
		h.rs.pc.Settle(broker.Requeue, h.d.Tag, false)
	}
}

// Ended implements broker.ProxySink: the home node cancelled the consumer (queue deleted) or
// the link was lost, and the client is told as for a deleted queue; or the home closed the
// link channel with a channel error (its consumer timeout), and this channel closes with it.
func (rs *remoteSink) Ended(err *amqp.Error) {
	if err == nil {
		rs.cs.QueueDeleted()
		// Its link channel goes once what it delivered is settled (at once when nothing
		// is), as after the client's own cancel: kept, it would hold one of the home's
		// channels until the client's channel closed. What it held over the channel's
		// global prefetch goes back to the home with the link channel's close.
		ch := rs.cs.ch
		ch.mu.Lock()
		rs.cs.cancelled = true
		ch.takeHeldLocked(rs.cs)
		ch.mu.Unlock()
		ch.closeDrained([]delivery{{cons: rs.cs}})
		return
	}
	rs.cs.ch.closeDetached(err)
}

// consumeRemote handles basic.consume of a queue homed on another node; handled is false for a
// local queue (or a single node).
func (ch *channel) consumeRemote(m *amqp.BasicConsume, cs *consumer) (handled bool, err *amqp.Error) {
	p := ch.c.srv.b.Proxy()
	if p == nil {
		return false, nil
	}
	qs, err := ch.v.RemoteQueue(ch.c.actor, m.Queue)
	if err != nil {
		return true, err
	}
	if qs == nil {
		return false, nil
	}
	// A channel-wide limit (global=true) applies to the link channel as a whole: exact for a
	// channel's only consumer, per consumer when it has several on other nodes.
	ch.mu.Lock()
	prefetch, chPrefetch := ch.consumerPrefetch, ch.prefetch
	ch.mu.Unlock()
	rs := &remoteSink{cs: cs}
	var pc broker.ProxyChannel
	err = ch.whileHomeLags(qs, func() *amqp.Error {
		var err *amqp.Error
		pc, err = p.Consume(qs.Home(), ch.v.Name(), m.Queue, broker.ProxyConsume{Tag: cs.tag, NoAck: m.NoAck,
			Exclusive: m.Exclusive, Args: m.Arguments, Prefetch: prefetch, ChannelPrefetch: chPrefetch}, rs)
		return err
	})
	if err != nil {
		return true, err
	}
	rs.pc = pc
	cs.qs, cs.remote = qs, pc
	ch.mu.Lock()
	if ch.closed {
		// Closed off the reader goroutine (consumer timeout, link error) while the home was
		// asked: closeRemote has run, so a link channel registered now would stay open, its
		// deliveries refused here and requeued there in a loop until the reader's shutdown.
		ch.mu.Unlock()
		pc.Close()
		return true, nil
	}
	cs.prefetch = ch.consumerPrefetch
	ch.consumers[cs.tag] = cs
	if ch.remote == nil {
		ch.remote = &remoteLinks{}
	}
	ch.remote.all = append(ch.remote.all, pc)
	ch.mu.Unlock()
	if !m.NoWait {
		ch.c.writeMethod(ch.id, &amqp.BasicConsumeOk{ConsumerTag: cs.tag})
	}
	pc.Start()
	return true, nil
}

// getRemote handles basic.get of a queue homed on another node (see consumeRemote).
func (ch *channel) getRemote(m *amqp.BasicGet) (handled bool, err *amqp.Error) {
	p := ch.c.srv.b.Proxy()
	if p == nil {
		return false, nil
	}
	qs, err := ch.v.RemoteQueue(ch.c.actor, m.Queue)
	if err != nil {
		return true, err
	}
	if qs == nil {
		return false, nil
	}
	var d broker.ProxyDelivery
	var ok bool
	var g broker.ProxyGetter
	err = ch.whileHomeLags(qs, func() *amqp.Error {
		var err *amqp.Error
		g, d, ok, err = ch.getOnce(p, qs, m)
		return err
	})
	if err != nil {
		return true, err
	}
	if !ok {
		ch.c.writeMethod(ch.id, &amqp.BasicGetEmpty{})
		return true, nil
	}
	ch.mu.Lock()
	ch.nextTag++
	tag := ch.nextTag
	w := ch.c.w
	b := w.lock()
	b = amqp.AppendMethodFrame(b, ch.id, &amqp.BasicGetOk{DeliveryTag: tag, Redelivered: d.Redelivered, Exchange: d.Exchange,
		RoutingKey: d.RoutingKey, MessageCount: d.MessageCount})
	b = amqp.AppendContent(b, ch.id, d.Header, d.Body, ch.c.frameMax)
	w.unlock(b)
	if !m.NoAck {
		ch.unacked = append(ch.unacked, delivery{tag: tag, qs: qs, rem: g, rtag: d.Tag})
		ch.inflight++
	}
	ch.mu.Unlock()
	return true, nil
}

// getOnce is one basic.get of qs on its home, on the channel's getter for that home (opened
// when there is none); a failed get forgets the getter, whose link channel the home closed.
func (ch *channel) getOnce(p broker.Proxy, qs *broker.Queue, m *amqp.BasicGet) (g broker.ProxyGetter, d broker.ProxyDelivery, ok bool, err *amqp.Error) {
	ch.mu.Lock()
	if ch.remote != nil {
		g = ch.remote.getters[qs.Home()]
	}
	ch.mu.Unlock()
	if g == nil {
		if g, err = p.Getter(qs.Home(), ch.v.Name()); err != nil {
			return nil, d, false, err
		}
		ch.mu.Lock()
		// ch.remote may have gone meanwhile (the channel closed off the reader goroutine):
		// a new one is closed by the reader's shutdown.
		if ch.remote == nil {
			ch.remote = &remoteLinks{}
		}
		if ch.remote.getters == nil {
			ch.remote.getters = map[string]broker.ProxyGetter{}
		}
		ch.remote.getters[qs.Home()] = g
		ch.remote.all = append(ch.remote.all, g)
		ch.mu.Unlock()
	}
	d, ok, err = g.Get(m.Queue, m.NoAck)
	if err != nil {
		// The home closed the link channel: a new one is opened for the next get.
		ch.mu.Lock()
		if ch.remote != nil {
			if ch.remote.getters[qs.Home()] == g {
				delete(ch.remote.getters, qs.Home())
			}
			// Closed by the failed get: nothing of it to close with the channel.
			if i := slices.IndexFunc(ch.remote.all, func(pc broker.ProxyChannel) bool { return pc == g }); i >= 0 {
				ch.remote.all = slices.Delete(ch.remote.all, i, i+1)
			}
		}
		ch.mu.Unlock()
		return nil, d, false, err
	}
	return g, d, ok, nil
}

// homeLagWait bounds how long a proxied consume, get or purge that the home node answers 404
// is asked again while this node still has the queue homed there.
const homeLagWait = 3 * time.Second

// whileHomeLags runs f, a call on qs's home node, and runs it again, backing off, up to
// homeLagWait, while it fails with 404 NOT_FOUND and qs is still this node's live entry for
// its name. A home that lags behind on the metadata log (a client declared the queue through
// this node, which applied the declare, and consumes at once) does not know the queue yet;
// this node knows it does, from the log, so the 404 is the home's lag, not the answer. Once
// this node has applied a delete of the queue (or a declare of another one of the name, or the
// home's node_down), the 404 stands, as it would on one node.
//
// A home the link cannot reach is, for a durable queue, RabbitMQ's 404 "down or inaccessible"
// (broker.VHost.HomeUnreachable), not the link's 541.
func (ch *channel) whileHomeLags(qs *broker.Queue, f func() *amqp.Error) *amqp.Error {
	deadline := time.Now().Add(homeLagWait)
	for pause := 10 * time.Millisecond; ; pause = min(2*pause, 250*time.Millisecond) {
		err := f()
		if err == nil || err.Code != amqp.NotFound || time.Now().Add(pause).After(deadline) {
			return ch.v.HomeUnreachable(qs, err)
		}
		if cur, lerr := ch.v.Queue(broker.System, qs.Name()); lerr != nil || cur != qs {
			return err
		}
		if derr := ch.v.HomeDown(qs); derr != nil {
			return derr
		}
		time.Sleep(pause)
	}
}

// splitRemote moves the proxied deliveries of ds out (in place) and returns the local ones
// and the proxied ones.
func splitRemote(ds []delivery) (local, remote []delivery) {
	n := 0
	for _, d := range ds {
		if d.rem != nil {
			remote = append(remote, d)
		} else {
			ds[n] = d
			n++
		}
	}
	return ds[:n], remote
}

// settleRemote settles proxied deliveries on their home nodes: with multiple (a client's
// multiple=true, or recover, which take every unacked delivery up to a tag) one settlement up
// to the highest link tag of each link channel, else one per delivery.
func (ch *channel) settleRemote(kind broker.Settlement, ds []delivery, multiple bool) {
	if len(ds) == 0 {
		return
	}
	if !multiple {
		for _, d := range ds {
			d.rem.Settle(kind, d.rtag, false)
		}
		return
	}
	top := map[broker.ProxyChannel]uint64{}
	var order []broker.ProxyChannel
	for _, d := range ds {
		if t, ok := top[d.rem]; !ok {
			order = append(order, d.rem)
			top[d.rem] = d.rtag
		} else if d.rtag > t {
			top[d.rem] = d.rtag
		}
	}
	for _, pc := range order {
		pc.Settle(kind, top[pc], true)
	}
}

// closeRemote closes every link channel of the channel: the home nodes requeue what the client
// had not settled, as a closing channel requeues its local deliveries.
func (ch *channel) closeRemote() {
	ch.mu.Lock()
	rl := ch.remote
	ch.remote = nil
	ch.mu.Unlock()
	if rl == nil {
		return
	}
	for _, pc := range rl.all {
		pc.Close()
	}
}

// applyRemote settles proxied deliveries for good: their credit is returned here and the home
// nodes are told (see settleRemote).
func (ch *channel) applyRemote(kind broker.Settlement, ds []delivery, multiple bool) {
	if len(ds) == 0 {
		return
	}
	starved := ch.released(ds)
	ch.settleRemote(kind, ds, multiple)
	ch.closeDrained(ds)
	if starved {
		ch.kickConsumers()
	}
}

// closeDrained closes the link channels of the cancelled proxied consumers of ds that have
// nothing unsettled left (their settlements already sent): kept open until the client channel
// closed, a consume/cancel loop would use up the home's channels.
func (ch *channel) closeDrained(ds []delivery) {
	var done []broker.ProxyChannel
	ch.mu.Lock()
	for _, d := range ds {
		cs := d.cons
		if cs == nil || cs.remote == nil || !cs.cancelled || cs.unacked > 0 || ch.remote == nil {
			continue
		}
		if i := slices.Index(ch.remote.all, cs.remote); i >= 0 {
			ch.remote.all = slices.Delete(ch.remote.all, i, i+1)
			done = append(done, cs.remote)
		}
	}
	ch.mu.Unlock()
	for _, pc := range done {
		pc.Close()
	}
}

// remoteCounts are queue.declare-ok's counts of a queue of another node, from its home (a
// single node, or no proxy: the remote entry's zeros).
func (ch *channel) remoteCounts(qs *broker.Queue) (ready, consumers int, err *amqp.Error) {
	p := ch.c.srv.b.Proxy()
	if p == nil {
		return 0, 0, nil
	}
	if err := ch.v.HomeDown(qs); err != nil {
		return 0, 0, err // not the link's 541 after a failed dial
	}
	return p.Counts(qs.Home(), ch.v.Name(), qs.Name())
}

// purge is queue.purge: on the queue's home when it lives on another node.
func (ch *channel) purge(name string) (int, *amqp.Error) {
	if p := ch.c.srv.b.Proxy(); p != nil {
		qs, err := ch.v.RemoteQueue(ch.c.actor, name) // purge needs read permission, as a get
		if err != nil {
			return 0, err
		}
		if qs != nil {
			var n int
			err = ch.whileHomeLags(qs, func() *amqp.Error {
				var err *amqp.Error
				n, err = p.Purge(qs.Home(), ch.v.Name(), name)
				return err
			})
			return n, err
		}
	}
	return ch.v.PurgeQueue(ch.c.actor, name)
}

// deleteQueue is queue.delete: for a queue of another node, if-unused and if-empty are checked
// against its home's counts (and the count deleted is the home's), then the delete goes
// through the cluster's log as any other.
func (ch *channel) deleteQueue(name string, ifUnused, ifEmpty bool) (int, *amqp.Error) {
	home := ch.v.QueueHome(name)
	if home == "" {
		return ch.v.DeleteQueue(ch.c.actor, name, ifUnused, ifEmpty)
	}
	if err := ch.c.actor.Authz.Authorize(broker.PermConfigure, broker.ResQueue, name); err != nil {
		return 0, err
	}
	qs, err := ch.v.Queue(ch.c.actor, name)
	if err != nil {
		return 0, err
	}
	if ch.v.HomeDown(qs) != nil {
		// Nothing to count on a dead home: the log decides (RabbitMQ's 404 for a node that is
		// down; the delete, for one removed from the cluster).
		return ch.v.DeleteQueue(ch.c.actor, name, false, false)
	}
	ready, consumers, err := ch.c.srv.b.Proxy().Counts(home, ch.v.Name(), name)
	if err != nil {
		return 0, ch.v.HomeUnreachable(qs, err)
	}
	switch {
	case ifUnused && consumers > 0:
		return 0, amqp.Errorf(amqp.PreconditionFailed, "queue '%s' in vhost '%s' in use", qs.Name(), ch.v.Name())
	case ifEmpty && ready > 0:
		return 0, amqp.Errorf(amqp.PreconditionFailed, "queue '%s' in vhost '%s' is not empty", qs.Name(), ch.v.Name())
	}
	if _, err := ch.v.DeleteQueue(ch.c.actor, name, false, false); err != nil {
		return 0, err
	}
	return ready, nil
}
