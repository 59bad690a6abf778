package broker

import (
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/warrenmq/warren/queue"
	"github.com/warrenmq/warren/quorum"
)

// At-least-once dead-lettering of quorum queues (x-dead-letter-strategy: at-least-once), as
// RabbitMQ 3.10's rabbit_fifo_dlx_worker. The queue's state machine keeps what it drops in its
// discards (quorum.Limits.AtLeastOnce) until a KindDLXSettle. On the node that leads the
// queue's group, the worker publishes each discard to the dead-letter exchange as a publisher
// with confirms would (the classic targets' store sync, the quorum targets' commit, the other
// nodes' link confirms) and proposes its settlement once every target confirmed it. A discard
// that cannot be delivered (no dead-letter exchange, no route, a target that refused it or
// failed) stays and is tried again, routed afresh, quorumDLXRetry later: RabbitMQ never drops
// it either. A new leader (leader change, kill -9) finds the discards in its replica and
// publishes them again: at least once, duplicates possible.

// quorumDLXRetry is how long an undeliverable discard waits before the worker tries again.
// RabbitMQ's worker retries every dead_letter_worker_publisher_confirm_timeout_ms (120 s),
// which is also how it detects a lost confirm; Warren's publishes always end in a confirm or
// an error (quorumDLXConfirmTimeout is only a safety net), so a short wait costs no duplicate.
var quorumDLXRetry = 5 * time.Second

// quorumDLXConfirmTimeout: a publish of the worker unanswered this long is sent again
// (RabbitMQ's settle timeout).
var quorumDLXConfirmTimeout = 2 * time.Minute

// quorumDLXTick is how often the worker looks whether this node leads the group (and for due
// retries) without another signal.
var quorumDLXTick = 250 * time.Millisecond

// quorumDLXPrefetch is the worker's window: it works on the oldest discards only, this many
// (published and unanswered, waiting for a retry, or confirmed and not yet settled), as
// RabbitMQ's worker checks out dead_letter_worker_consumer_prefetch (100) of them. A newer
// discard waits until an older one is settled, and a pass costs O(window), whatever the
// backlog of discards (an unroutable dead-letter exchange can pile up many).
const quorumDLXPrefetch = 100

// errDLXNoRoute: the dead-letter exchange is missing or routes the message nowhere.
var errDLXNoRoute = errors.New("dead-letter exchange missing or no route")

// dlxStep is where a discard is in the worker.
type dlxStep uint8

const (
	dlxSending   dlxStep = iota + 1 // published, confirm awaited
	dlxRetry                        // failed: sent again at at
	dlxConfirmed                    // every target confirmed: its settle to propose
	dlxSettling                     // its settle proposed
)

type dlxItem struct {
	step dlxStep
	at   time.Time // dlxSending: when sent; dlxRetry: when due
}

// quorumDLX is a quorum queue's at-least-once dead-letter worker on this node.
type quorumDLX struct {
	qq   *quorumQueue
	wake chan struct{}
	pub  *Publisher // the run goroutine's

	mu       sync.Mutex
	items    map[uint64]dlxItem // by discard (message) ID; a discard without an item is to send
	settling bool               // a KindDLXSettle in flight
	warned   time.Time          // the last "cannot dead-letter" warning (one per quorumDLXRetry)
}

// quorumAtLeastOnce decides a quorum queue's dead-letter strategy as RabbitMQ's
// rabbit_quorum_queue:dlh: at-least-once needs a dead-letter exchange and the reject-publish
// overflow; otherwise it falls back to at-most-once (or none) with a warning.
func (v *VHost) quorumAtLeastOnce(name string, spec queueSpec, overflow quorum.Overflow) bool {
	if !spec.atLeastOnce {
		return false
	}
	switch {
	case !spec.hasDLX:
		v.b.log.Warn("disabling dead-lettering despite configured dead-letter-strategy at-least-once because dead-letter-exchange is not configured",
			"queue", name, "vhost", v.name)
		return false
	case overflow != quorum.RejectPublish:
		v.b.log.Warn("falling back to dead-letter-strategy at-most-once because at-least-once is incompatible with the effective overflow strategy drop-head",
			"queue", name, "vhost", v.name)
		return false
	}
	return true
}

// warnClassicAtLeastOnce says it when a quorum queue asking for at-least-once dead-lettering
// runs as a classic queue (a single node, no Raft host: its dead-lettering is at most once).
func (v *VHost) warnClassicAtLeastOnce(qs *Queue) {
	if qs.spec.quorum && qs.spec.atLeastOnce {
		v.b.log.Warn("dead-letter-strategy at-least-once needs a cluster: this quorum queue is a classic queue here and dead-letters at most once",
			"queue", qs.name, "vhost", v.name)
	}
}

// dlxSignal is the state machine's DeadLettered hook (the Raft loop): the worker has work.
func (qq *quorumQueue) dlxSignal() {
	if qq.dlx != nil {
		qq.dlx.signal()
	}
}

// newQuorumDLX is the dead-letter worker of an at-least-once queue; run starts it.
func newQuorumDLX(qq *quorumQueue) *quorumDLX {
	return &quorumDLX{qq: qq, wake: make(chan struct{}, 1), pub: qq.qs.v.NewPublisher(), items: map[uint64]dlxItem{}}
}

func (d *quorumDLX) signal() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// run is the worker's goroutine. It starts once this process's NodeDown is applied here
// (opened): the log before it is applied, so the discards are not stale.
func (d *quorumDLX) run() {
	qq := d.qq
	if !qq.awaitOpened() {
		return
	}
	tick := time.NewTicker(quorumDLXTick)
	defer tick.Stop()
	for {
		d.pass()
		select {
		case <-d.wake:
		case <-tick.C:
		case <-qq.stop:
			return
		case <-qq.g.Done():
			return
		}
	}
}

// pass forgets the settled discards, proposes the settlement of the confirmed ones and, on
// the leader, publishes those not in flight.
func (d *quorumDLX) pass() {
	qq := d.qq
	l, ok := qq.g.Leader()
	leading := ok && l == qq.node
	d.mu.Lock()
	idle := len(d.items) == 0
	d.mu.Unlock()
	if !leading && idle {
		return
	}
	// The items are always among the oldest discards: they are taken from the head of the
	// list, which only loses settled entries before them and grows at its tail.
	ds := qq.m.DiscardsHead(quorumDLXPrefetch)
	now := time.Now()
	var send []quorum.Dropped
	d.mu.Lock()
	if len(d.items) > 0 {
		present := make(map[uint64]struct{}, len(ds))
		for _, x := range ds {
			present[x.Msg.ID] = struct{}{}
		}
		for id := range d.items {
			if _, ok := present[id]; !ok {
				delete(d.items, id) // settled (by this node or another), or a restore
			}
		}
	}
	if leading {
		for _, x := range ds {
			it, ok := d.items[x.Msg.ID]
			switch {
			case !ok:
			case it.step == dlxRetry && !now.Before(it.at):
			case it.step == dlxSending && now.Sub(it.at) > quorumDLXConfirmTimeout:
			default:
				continue
			}
			d.items[x.Msg.ID] = dlxItem{step: dlxSending, at: now}
			send = append(send, x)
		}
	}
	d.mu.Unlock()
	d.settle()
	for _, x := range send {
		id := x.Msg.ID
		d.publish(x, func(err error) { d.answer(id, err) })
	}
}

// answer records a publish's outcome.
func (d *quorumDLX) answer(id uint64, err error) {
	d.mu.Lock()
	if it, ok := d.items[id]; ok && it.step == dlxSending {
		if err == nil {
			d.items[id] = dlxItem{step: dlxConfirmed}
		} else {
			d.items[id] = dlxItem{step: dlxRetry, at: time.Now().Add(quorumDLXRetry)}
		}
	}
	warn := err != nil && time.Since(d.warned) >= quorumDLXRetry
	if warn {
		d.warned = time.Now()
	}
	d.mu.Unlock()
	if warn {
		qs := d.qq.qs
		qs.v.b.log.Warn("quorum queue: cannot dead-letter a message yet (at-least-once); it stays in the queue and is tried again",
			"queue", qs.name, "vhost", qs.v.name, "retry", quorumDLXRetry, "err", err)
	}
	d.signal()
}

// settle proposes the settlement of the confirmed discards, one proposal at a time.
func (d *quorumDLX) settle() {
	d.mu.Lock()
	if d.settling {
		d.mu.Unlock()
		return
	}
	var ids []uint64
	for id, it := range d.items {
		if it.step == dlxConfirmed {
			ids = append(ids, id)
			d.items[id] = dlxItem{step: dlxSettling}
		}
	}
	if len(ids) == 0 {
		d.mu.Unlock()
		return
	}
	d.settling = true
	d.mu.Unlock()
	slices.Sort(ids)
	d.qq.submit(quorum.Command{Kind: quorum.KindDLXSettle, IDs: ids}, func(_ quorum.Result, err error) {
		d.mu.Lock()
		d.settling = false
		if err != nil {
			// Proposed again with the next pass (settling twice changes nothing).
			for _, id := range ids {
				if it, ok := d.items[id]; ok && it.step == dlxSettling {
					d.items[id] = dlxItem{step: dlxConfirmed}
				}
			}
		}
		d.mu.Unlock()
		if err == nil {
			d.signal()
		}
	})
}

// quorumDropReason is a quorum drop's dead-letter reason (x-death's).
func quorumDropReason(r quorum.Reason) queue.Reason {
	switch r {
	case quorum.MaxLen:
		return queue.MaxLen
	case quorum.DeliveryLimit:
		return queue.DeliveryLimit
	case quorum.Expired:
		return queue.Expired
	}
	return queue.Rejected
}

// publish dead-letters one discard as deadLetter does (x-death, routing, cycles dropped)
// and calls done once every target confirmed it (nil) or with why it was not delivered.
func (d *quorumDLX) publish(x quorum.Dropped, done func(error)) {
	qs := d.qq.qs
	v := qs.v
	dl := qs.dl.Load()
	if dl == nil {
		done(errDLXNoRoute)
		return
	}
	v.mu.RLock()
	dlx := v.exchanges[dl.exchange]
	v.mu.RUnlock()
	if dlx == nil {
		done(errDLXNoRoute)
		return
	}
	msg, targets, err := v.deadLetterTargets(qs, dl, dlx, quorumEntry(x.Msg).Msg, quorumDropReason(x.Reason), &d.pub.rb)
	if err != nil {
		// It can never be dead-lettered: dropped, as the at-most-once path drops it.
		done(nil)
		return
	}
	// With no target left (a queue's own copy is dropped but for a reject), RabbitMQ keeps
	// the message.
	if len(targets) == 0 {
		done(errDLXNoRoute)
		return
	}
	d.send(msg, targets, done)
}

// send enqueues msg to targets (forwarding to other nodes' queues) with a confirm: done(nil)
// once every target has it as a confirmed publish would, an error if one refused or failed.
func (d *quorumDLX) send(msg *queue.Message, targets []*Queue, done func(error)) {
	v := d.qq.qs.v
	ch := make(chan error, 1)
	confirm := func(err error) { ch <- err }
	var refused, wait bool
	if v.b.cluster.forwarder != nil && hasRemote(targets) {
		res := d.pub.publishSplit(msg, targets, confirm)
		refused, wait = res.Refused, res.OnDisk
	} else {
		refused, wait = v.enqueue(msg, targets, confirm, &d.pub.entryBuf)
	}
	if !wait {
		if refused {
			done(errForwardRefused)
		} else {
			done(nil)
		}
		return
	}
	go func() {
		err := <-ch
		if err == nil && refused {
			err = errForwardRefused
		}
		done(err)
	}()
}
