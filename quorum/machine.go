package quorum

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"sync/atomic"
)

// Overflow is what a full queue does with a new message.
type Overflow uint8

// The overflow behaviours of a quorum queue (x-overflow); reject-publish-dlx is a classic
// queue's only in RabbitMQ.
const (
	DropHead      Overflow = iota // the default: the oldest ready message is dropped
	RejectPublish                 // the new message is refused (a confirm is a nack)
)

// Limits are a queue's bounds, from its declare arguments (the same on every replica: policies
// are per node and do not apply here). A negative value is no limit.
type Limits struct {
	MaxLength, MaxBytes int64
	Overflow            Overflow
	DeliveryLimit       int64
	// SingleActive (x-single-active-consumer): only one node takes messages at a time, the
	// one that checked out first among those with credit; its local queue keeps one
	// consumer active, so one consumer of the cluster receives.
	SingleActive bool
	// RedeliveryDelay (Warren's x-redelivery-delay, ms; 0 none): a message returned after
	// it reached a client is ready again only that long after the return, by the queue's
	// time; multiplied by RedeliveryBackoff (when > 1) per earlier delivery, capped at
	// RedeliveryMaxDelay (ms; 0 no cap), as on a classic queue.
	RedeliveryDelay, RedeliveryMaxDelay int64
	RedeliveryBackoff                   float64
	// Expires (x-expires, ms; 0 none): the queue is unused that long, by the queue's time,
	// with no node holding a checkout (no consumer anywhere), since its last basic.get,
	// checkout or KindTouch: Expired reports it, and the broker deletes the queue.
	Expires int64
	// AtLeastOnce (x-dead-letter-strategy at-least-once, with a dead-letter exchange and
	// reject-publish): dropped messages stay in the state, in the discards, until a
	// KindDLXSettle (dlx.go); they count against MaxLength and MaxBytes.
	AtLeastOnce bool
}

// NoLimits is Limits with every bound off.
func NoLimits() Limits { return Limits{MaxLength: -1, MaxBytes: -1, DeliveryLimit: -1} }

// redeliveryDelay is the delay (ms) of a message returned with count deliveries, as a
// classic queue's (queue.Queue.redeliveryDelay): a product computed step by step, so that
// every replica gets the same value.
func (l Limits) redeliveryDelay(count uint32) int64 {
	if l.RedeliveryDelay <= 0 {
		return 0
	}
	d := float64(l.RedeliveryDelay)
	capped := func(v float64) int64 {
		if l.RedeliveryMaxDelay > 0 && v > float64(l.RedeliveryMaxDelay) {
			return l.RedeliveryMaxDelay
		}
		if v > 1<<53 {
			return 1 << 53
		}
		return int64(v)
	}
	if l.RedeliveryBackoff <= 1 {
		return capped(d)
	}
	for i := uint32(1); i < count && d <= 1<<53 && (l.RedeliveryMaxDelay <= 0 || d <= float64(l.RedeliveryMaxDelay)); i++ {
		d *= l.RedeliveryBackoff
	}
	return capped(d)
}

// Reason says why a message was dropped; the broker dead-letters with it.
type Reason uint8

// Why messages leave a queue without an ack.
const (
	Rejected      Reason = iota + 1 // basic.reject / nack without requeue
	MaxLen                          // drop-head overflow
	DeliveryLimit                   // returned more than x-delivery-limit times
	Expired                         // its Expires passed while it was at the head
)

// Dropped is a message that left the queue without an ack: the proposer of the command that
// dropped it dead-letters it (at most once).
type Dropped struct {
	Msg    *Msg
	Reason Reason
}

// Result is what one command produced, for its proposer.
type Result struct {
	// Refused lists the indexes (in the command) of enqueued messages refused by a full
	// reject-publish queue.
	Refused []int
	// Msg is basic.get's message (nil: the queue was empty); Remaining the ready count after.
	Msg       *Msg
	Remaining int
	// Purged is queue.purge's count.
	Purged  int
	Dropped []Dropped
	// Revocation is NodeDown's number among the NodeDowns this Machine value applied (1, 2,
	// ...; one Revoked hook call each): a count local to this process's replica, not part of
	// the replicated state, by which the broker tells the Revoked of its own NodeDown from
	// those replayed from the log before it.
	Revocation uint64
}

// Hooks tell the broker what Apply decided for nodes. They run on the loop goroutine, after
// the command's state change, and must only hand the work on.
type Hooks struct {
	// Assigned: msgs are now held by node, to be delivered to its consumers. They are
	// copies: the state's own may change (Count) on the loop goroutine.
	Assigned func(node string, msgs []Msg)
	// Revoked: what node held was taken back (NodeDown); its copies must be dropped.
	Revoked func(node string)
	// Applied: an entry was applied (HeadExpires may have changed).
	Applied func()
	// Restored: the state was replaced by a snapshot (a lagging replica catching up, or a
	// restart). No Assigned or Revoked call covers the change, and a proposal the snapshot
	// covers gets no result here: what a node holds now may not be what it was told, so the
	// node must drop its copies and take its share again.
	Restored func()
	// DeadLettered: messages went to the discards (Limits.AtLeastOnce): the dead-letter
	// worker has work.
	DeadLettered func()
}

// delayedMsg is a returned message and when it is ready again (queue time, unix ms).
type delayedMsg struct {
	at  int64
	msg *Msg
}

// nodeState is what one node holds.
type nodeState struct {
	name   string
	credit uint32
	out    map[uint64]*Msg
	since  uint64 // when its credit last went from 0 (checkout order, for SingleActive)
}

// Machine is a quorum queue's state: it implements multiraft.StateMachine.
type Machine struct {
	limits Limits
	hooks  Hooks
	// revocations counts the NodeDowns applied by this value (Result.Revocation); local,
	// neither snapshotted nor restored.
	revocations uint64

	nextID  uint64
	seq     uint64 // checkouts counted, for nodeState.since
	now     int64  // the highest batch Now applied (unix ms)
	clock   int64  // a follower's KindClock, for the rest of its batch only
	age     int64  // a KindAt's age (ms), for the next command only (aged)
	aged    bool
	expired []Dropped
	returns []*Msg // returned messages, by ID: delivered before ready ones
	// delayed are returned messages waiting for their redelivery delay, by due time (then
	// ID); they join returns when the queue's time reaches it.
	delayed []delayedMsg
	used    int64  // the queue's time of its last use (x-expires); 0 before any time is known
	ready   []*Msg // FIFO from head
	head    int
	bytes   int64 // of ready and returns
	nodes   []*nodeState
	cursor  int // round-robin position in nodes
	// delayedLate counts the delayed messages with a downFrom: lateMark looks through
	// delayed (linearly) only when it is not zero.
	delayedLate int

	readyN, heldN atomic.Int64 // for Counts from other goroutines
	headExpires   atomic.Int64 // the head's Expires, for HeadExpires
	nextDue       atomic.Int64 // for NextDue
	nextRedeliver atomic.Int64 // for NextRedelivery
	expiredQ      atomic.Bool  // for Expired
	assigned      map[string][]Msg
	// dlx is the discards of at-least-once dead-lettering (dlx.go).
	dlx dlxState
}

// New returns an empty queue with limits.
func New(limits Limits, hooks Hooks) *Machine {
	return &Machine{limits: limits, hooks: hooks, nextID: 1}
}

// Counts are the queue's ready messages and those held by nodes (unsettled).
func (m *Machine) Counts() (ready, held int) {
	return int(m.readyN.Load()), int(m.heldN.Load())
}

// Apply implements multiraft.StateMachine: cmd is an encoded Command. The result is a
// Result, []Result for a batch, or an error for an entry that does not decode (ignored alike
// on every replica).
func (m *Machine) Apply(_ uint64, cmd []byte) any {
	c, err := DecodeCommand(cmd)
	if err != nil {
		return err
	}
	// The messages keep slices of the entry: each gets a copy of its own, whatever the log
	// does with its buffers, and so that one message left in the queue does not keep a
	// whole batch's entry (up to 1 MiB) alive.
	ownCommand(&c)
	var out any
	if c.Kind == KindBatch {
		m.now = max(m.now, c.Now)
		rs := make([]Result, len(c.Batch), len(c.Batch)+1)
		for i := range c.Batch {
			rs[i] = m.applyKeep(&c.Batch[i])
		}
		m.promote()
		m.expireHead()
		m.assign()
		m.keepDiscards(&m.expired)
		if len(m.expired) > 0 {
			// One more result past the batch's: the messages that expired, for the
			// proposer to dead-letter.
			rs = append(rs, Result{Dropped: m.expired})
			m.expired = nil
		}
		out = rs
	} else {
		r := m.applyKeep(&c)
		r.Dropped = append(r.Dropped, m.expired...)
		m.expired = nil
		out = r
	}
	if m.used == 0 {
		m.touch() // the queue's first known time: the countdown starts at its creation
	}
	m.storeCounts() // with the batch's clock: Expired may be by a follower's
	m.clock, m.age, m.aged = 0, 0, false
	m.flushAssigned()
	if m.hooks.Applied != nil {
		m.hooks.Applied()
	}
	return out
}

// storeCounts publishes the head's expiry and the ready and held counts the broker reads
// without the Raft loop (after an Apply or a Restore).
func (m *Machine) storeCounts() {
	m.headExpires.Store(m.headExpiry())
	due := m.headExpiry()
	if len(m.delayed) > 0 && (due == 0 || m.delayed[0].at < due) {
		due = m.delayed[0].at
	}
	if at := m.idleDue(); at > 0 && (due == 0 || at < due) {
		due = at
	}
	m.nextDue.Store(due)
	var redeliver int64
	if len(m.delayed) > 0 {
		redeliver = m.delayed[0].at
	}
	m.nextRedeliver.Store(redeliver)
	m.expiredQ.Store(m.idleDue() > 0 && m.time() >= m.idleDue())
	m.readyN.Store(int64(m.readyLen() + len(m.delayed)))
	held := 0
	for _, n := range m.nodes {
		held += len(n.out)
	}
	m.heldN.Store(int64(held))
}

// ownCommand gives c's messages copies of their header and body (one allocation each).
func ownCommand(c *Command) {
	for _, msg := range c.Msgs {
		ownMsg(msg)
	}
	for i := range c.Batch {
		ownCommand(&c.Batch[i])
	}
}

// ownMsg replaces msg's header and body, slices of a decoded buffer, with a copy of its own.
func ownMsg(msg *Msg) {
	h := len(msg.Header)
	buf := make([]byte, h+len(msg.Body))
	copy(buf, msg.Header)
	copy(buf[h:], msg.Body)
	msg.Header, msg.Body = buf[:h:h], buf[h:]
}

func (m *Machine) apply(c *Command) Result {
	var r Result
	switch c.Kind {
	case KindEnqueue:
		for i, msg := range c.Msgs {
			if m.limits.Overflow == RejectPublish && m.full(msg.size()) {
				r.Refused = append(r.Refused, i)
				continue
			}
			msg.ID = m.nextID
			m.nextID++
			msg.Count = 0
			m.ready = append(m.ready, msg)
			m.bytes += msg.size()
			for m.over() {
				d := m.popHead()
				r.Dropped = append(r.Dropped, Dropped{Msg: d, Reason: MaxLen})
			}
		}
	case KindCheckout:
		m.touch() // a consumer came or went: in use, or the countdown starts now
		n := m.node(c.Node, c.Credit > 0)
		if n != nil {
			if n.credit == 0 && c.Credit > 0 {
				m.seq++
				n.since = m.seq
			}
			n.credit = c.Credit
			m.dropIdle(n)
		}
	case KindSettle:
		if n := m.node(c.Node, false); n != nil {
			for _, id := range c.IDs {
				delete(n.out, id)
			}
			m.dropIdle(n)
		}
	case KindReturn:
		if n := m.node(c.Node, false); n != nil {
			for _, id := range c.IDs {
				if msg, ok := n.out[id]; ok {
					delete(n.out, id)
					if d, dropped := m.giveBack(msg, c.Delivered); dropped {
						r.Dropped = append(r.Dropped, d)
					}
				}
			}
			m.dropIdle(n)
			m.dropOver(&r)
		}
	case KindDiscard:
		if n := m.node(c.Node, false); n != nil {
			for _, id := range c.IDs {
				if msg, ok := n.out[id]; ok {
					delete(n.out, id)
					r.Dropped = append(r.Dropped, Dropped{Msg: msg, Reason: Rejected})
				}
			}
			m.dropIdle(n)
		}
	case KindGet:
		m.touch()
		// The batch's time may have passed delayed redeliveries' due times (they are ready
		// now) and the head's expiry (it goes first, never to a client, reported with the
		// batch's expired messages): a get first in a leader's batch comes before the
		// promote at the end of any command.
		m.promote()
		m.expireHead()
		msg := m.popHead()
		if msg != nil && !c.NoAck {
			msg.Delivered = true // basic.get hands it to the client at once
			m.node(c.Node, true).hold(msg)
		}
		if msg != nil {
			cp := *msg // the state's copy may change later (Count)
			r.Msg = &cp
		}
		r.Remaining = m.readyLen()
	case KindCount:
		if n := m.node(c.Node, false); n != nil {
			for i, id := range c.IDs {
				if msg, ok := n.out[id]; ok && i < len(c.Counts) && c.Counts[i] > msg.Count {
					msg.Count = c.Counts[i]
				}
			}
		}
	case KindDelivered:
		n := m.node(c.Node, false)
		for _, id := range c.IDs {
			if n != nil {
				if msg, ok := n.out[id]; ok {
					msg.Delivered = true
					continue
				}
			}
			m.lateMark(c.Node, id, &r)
		}
	case KindNodeDown:
		if n := m.node(c.Node, false); n != nil {
			ids := make([]uint64, 0, len(n.out))
			for id := range n.out {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			for _, id := range ids {
				// Only what the log knows reached a client counts a delivery. The rest of
				// the node's window may have reached one too: the node proposes its
				// Delivered marks after the delivery, and a node that died, restarted or
				// lost its proposal to a snapshot may have had marks in flight. It is
				// flagged redelivered (AMQP: "may have been delivered before"), not
				// counted (RabbitMQ counts only checked-out messages, which are all sent
				// to its consumers; most of a node's window here never left the node).
				msg := n.out[id]
				if !msg.Delivered {
					msg.Redelivered = true
					msg.downFrom = c.Node // its late mark counts (lateMark)
				}
				if d, dropped := m.giveBack(msg, msg.Delivered); dropped {
					r.Dropped = append(r.Dropped, d)
				}
			}
			clear(n.out)
			n.credit = 0
			m.dropIdle(n)
			m.dropOver(&r)
		}
		m.revocations++
		r.Revocation = m.revocations
		if m.hooks.Revoked != nil {
			m.hooks.Revoked(c.Node)
		}
	case KindClock:
		m.clock = max(m.clock, c.Now)
	case KindAt:
		m.age, m.aged = c.Now, true
		return r // for the next command: neither reset nor anything to promote yet
	case KindTouch:
		m.touch()
	case KindPurge:
		r.Purged = m.readyLen() + len(m.delayed)
		m.returns, m.ready, m.head, m.bytes, m.delayed, m.delayedLate = nil, nil, 0, 0, nil, 0
	}
	m.age, m.aged = 0, false
	m.promote()
	m.expireHead()
	m.assign()
	return r
}

// lateMark counts the delivery of node's mark that came after a NodeDown had already taken
// the message back from node uncounted (Msg.downFrom): a node taken for dead while it was
// alive (a partition, a stalled process) or caught up by a snapshot proposes its marks again,
// and they reach the log after the NodeDown. RabbitMQ 3.10 counts every message a down node's
// consumers had checked out (rabbit_fifo's return_all on noconnection); so does the log, as
// soon as it learns of the delivery. Only the mark of the node the message was taken from
// counts, and once: downFrom and Redelivered are cleared (marks are proposed again after an
// unknown outcome, and another node's mark for a message it no longer holds is such a
// duplicate, of a delivery its return counted). A message waiting in the queue that is now
// past x-delivery-limit is dropped, as the NodeDown would have; one held by a node is checked
// at its next return. Not found (settled, dropped, purged since) or not node's: nothing.
func (m *Machine) lateMark(node string, id uint64, r *Result) {
	count := func(msg *Msg) bool {
		if msg.downFrom == "" || msg.downFrom != node {
			return false
		}
		msg.downFrom = ""
		msg.Redelivered = false
		msg.Count++
		return m.limits.DeliveryLimit >= 0 && int64(msg.Count) > m.limits.DeliveryLimit
	}
	if i, ok := slices.BinarySearchFunc(m.returns, id, func(x *Msg, id uint64) int { return cmpU64(x.ID, id) }); ok {
		if msg := m.returns[i]; count(msg) {
			m.returns = slices.Delete(m.returns, i, i+1)
			m.bytes -= msg.size()
			r.Dropped = append(r.Dropped, Dropped{Msg: msg, Reason: DeliveryLimit})
		}
		return
	}
	for _, n := range m.nodes {
		if msg, ok := n.out[id]; ok {
			count(msg)
			return
		}
	}
	if m.delayedLate == 0 {
		return // none of the delayed ones can count (nor is the message ready: never taken)
	}
	for i, dm := range m.delayed {
		if dm.msg.ID == id {
			if dm.msg.downFrom == node {
				m.delayedLate--
			}
			if count(dm.msg) {
				m.delayed = slices.Delete(m.delayed, i, i+1)
				r.Dropped = append(r.Dropped, Dropped{Msg: dm.msg, Reason: DeliveryLimit})
			}
			return
		}
	}
}

// expireHead drops the messages at the head whose Expires is before the queue's time (as
// RabbitMQ, only the head expires: a message behind an unexpired one waits for it).
func (m *Machine) expireHead() {
	for {
		var head *Msg
		switch {
		case len(m.returns) > 0:
			head = m.returns[0]
		case m.head < len(m.ready):
			head = m.ready[m.head]
		default:
			return
		}
		if head.Expires == 0 || head.Expires >= m.time() {
			return
		}
		m.popHead()
		m.expired = append(m.expired, Dropped{Msg: head, Reason: Expired})
	}
}

// headExpiry is the head's Expires (0: none, or an empty queue).
func (m *Machine) headExpiry() int64 {
	switch {
	case len(m.returns) > 0:
		return m.returns[0].Expires
	case m.head < len(m.ready):
		return m.ready[m.head].Expires
	}
	return 0
}

// HeadExpires is when the head message expires (unix ms, 0: never or empty): the broker
// proposes an empty batch then, so that an idle queue's messages expire too. Safe from any
// goroutine.
func (m *Machine) HeadExpires() int64 { return m.headExpires.Load() }

// NextRedelivery is when the first delayed redelivery is due (unix ms, queue time; 0: none
// waits). A node about to hand its consumers more messages once that time has passed by its
// own clock has the promotion applied first (broker/quorum.go, promoteDue), so that the due
// message goes ahead of later ones, as on a classic queue. Safe from any goroutine.
func (m *Machine) NextRedelivery() int64 { return m.nextRedeliver.Load() }

// NextDue is when the queue's time next matters (unix ms, 0: never): the head's expiry or
// the first delayed redelivery, whichever comes first. The broker's leader proposes an empty
// batch then (its clock moves the queue's time). Safe from any goroutine.
func (m *Machine) NextDue() int64 { return m.nextDue.Load() }

// Expired reports that the queue went unused for its x-expires (Limits.Expires) by the
// queue's time: the broker deletes it. Safe from any goroutine.
func (m *Machine) Expired() bool { return m.expiredQ.Load() }

// idleDue is when an unused queue expires (queue time; 0: never, or in use: a node holds a
// checkout).
func (m *Machine) idleDue() int64 {
	if m.limits.Expires <= 0 || m.used == 0 {
		return 0
	}
	for _, n := range m.nodes {
		if n.credit > 0 {
			return 0
		}
	}
	return m.used + m.limits.Expires
}

// touch records a use of the queue (x-expires).
func (m *Machine) touch() {
	if t := m.time(); t > m.used {
		m.used = t
	}
}

// time is the queue's time for the command being applied: the leader's, or a follower's
// clock for the rest of its batch (KindClock) when that is later.
func (m *Machine) time() int64 { return max(m.now, m.clock) }

// promote moves the delayed messages whose time has come to the returned ones.
func (m *Machine) promote() {
	now := m.time()
	n := 0
	for n < len(m.delayed) && m.delayed[n].at <= now {
		if m.delayed[n].msg.downFrom != "" {
			m.delayedLate--
		}
		m.insertReturn(m.delayed[n].msg)
		n++
	}
	if n > 0 {
		m.delayed = slices.Delete(m.delayed, 0, n)
	}
}

// insertReturn puts msg among the returned messages, by ID.
func (m *Machine) insertReturn(msg *Msg) {
	i := sort.Search(len(m.returns), func(i int) bool { return m.returns[i].ID > msg.ID })
	m.returns = slices.Insert(m.returns, i, msg)
	m.bytes += msg.size()
}

// giveBack returns a held message to the head; a delivered one counts a delivery and is
// dropped past the delivery limit.
func (m *Machine) giveBack(msg *Msg, delivered bool) (Dropped, bool) {
	msg.Delivered = false
	if delivered {
		msg.Count++
		if m.limits.DeliveryLimit >= 0 && int64(msg.Count) > m.limits.DeliveryLimit {
			return Dropped{Msg: msg, Reason: DeliveryLimit}, true
		}
		if d := m.limits.redeliveryDelay(msg.Count); d > 0 {
			// From the return's own time (KindAt: its age when proposed, measured on the
			// proposer's clock alone, so no clock skew between nodes enters it): the delay
			// counts from the requeue, not from the round that carried it; never from
			// further back than the delay.
			from := m.time()
			if m.aged {
				from -= min(max(m.age, 0), d)
			}
			at := from + d
			i := sort.Search(len(m.delayed), func(i int) bool {
				x := m.delayed[i]
				return x.at > at || (x.at == at && x.msg.ID > msg.ID)
			})
			m.delayed = slices.Insert(m.delayed, i, delayedMsg{at: at, msg: msg})
			if msg.downFrom != "" {
				m.delayedLate++
			}
			return Dropped{}, false
		}
	}
	m.insertReturn(msg)
	return Dropped{}, false
}

// dropOver drops from the head while the queue is over its length limits (drop-head only):
// a requeue may push it over, and, as RabbitMQ's requeue, the oldest go (a reject-publish
// queue keeps them: only publishes are refused).
func (m *Machine) dropOver(r *Result) {
	if m.limits.Overflow != DropHead {
		return
	}
	for m.over() {
		r.Dropped = append(r.Dropped, Dropped{Msg: m.popHead(), Reason: MaxLen})
	}
}

// node finds a node's state, creating it when create is set. Nodes stay sorted by name.
func (m *Machine) node(name string, create bool) *nodeState {
	i := sort.Search(len(m.nodes), func(i int) bool { return m.nodes[i].name >= name })
	if i < len(m.nodes) && m.nodes[i].name == name {
		return m.nodes[i]
	}
	if !create {
		return nil
	}
	n := &nodeState{name: name, out: map[uint64]*Msg{}}
	m.nodes = slices.Insert(m.nodes, i, n)
	if i < m.cursor {
		m.cursor++
	}
	return n
}

// hold gives msg to n. A message n had before a NodeDown took it back is n's again: n's
// marks for it are now of this hold, counted at its return, no longer late ones.
func (n *nodeState) hold(msg *Msg) {
	n.out[msg.ID] = msg
	if msg.downFrom == n.name {
		msg.downFrom = ""
	}
}

// dropIdle forgets a node that holds nothing and has no credit (state stays small).
func (m *Machine) dropIdle(n *nodeState) {
	if n.credit > 0 || len(n.out) > 0 {
		return
	}
	i := slices.Index(m.nodes, n)
	m.nodes = slices.Delete(m.nodes, i, i+1)
	if i < m.cursor {
		m.cursor--
	}
	if m.cursor >= len(m.nodes) {
		m.cursor = 0
	}
}

func (m *Machine) readyLen() int { return len(m.returns) + len(m.ready) - m.head }

func (m *Machine) full(size int64) bool {
	l := m.limits
	// The discards count, as in RabbitMQ's rabbit_fifo (always empty but with AtLeastOnce).
	return (l.MaxLength >= 0 && int64(m.readyLen()+m.discardLen()) >= l.MaxLength) ||
		(l.MaxBytes >= 0 && m.bytes+m.dlx.bytes+size > l.MaxBytes)
}

func (m *Machine) over() bool {
	l := m.limits
	return (l.MaxLength >= 0 && int64(m.readyLen()) > l.MaxLength) ||
		(l.MaxBytes >= 0 && m.bytes > l.MaxBytes && m.readyLen() > 0)
}

// popHead takes the next message to deliver: returned ones first, by ID, then ready ones.
func (m *Machine) popHead() *Msg {
	var msg *Msg
	switch {
	case len(m.returns) > 0:
		msg = m.returns[0]
		m.returns[0] = nil
		m.returns = m.returns[1:]
	case m.head < len(m.ready):
		msg = m.ready[m.head]
		m.ready[m.head] = nil
		m.head++
		if m.head > 1024 && m.head*2 > len(m.ready) {
			m.ready = append([]*Msg(nil), m.ready[m.head:]...)
			m.head = 0
		}
	default:
		return nil
	}
	m.bytes -= msg.size()
	return msg
}

// assign hands ready messages to nodes with free credit, one at a time round-robin from the
// cursor, and records them for the Assigned hook.
func (m *Machine) assign() {
	if m.limits.SingleActive {
		m.assignActive()
		return
	}
	for m.readyLen() > 0 && len(m.nodes) > 0 {
		given := false
		for range m.nodes {
			n := m.nodes[m.cursor]
			m.cursor = (m.cursor + 1) % len(m.nodes)
			if uint32(len(n.out)) >= n.credit {
				continue
			}
			msg := m.popHead()
			n.hold(msg)
			if m.hooks.Assigned != nil {
				if m.assigned == nil {
					m.assigned = map[string][]Msg{}
				}
				m.assigned[n.name] = append(m.assigned[n.name], *msg)
			}
			given = true
			break
		}
		if !given {
			return
		}
	}
}

// assignActive is assign for a single-active-consumer queue: only the node with credit that
// checked out first takes messages.
func (m *Machine) assignActive() {
	var active *nodeState
	for _, n := range m.nodes {
		if n.credit > 0 && (active == nil || n.since < active.since) {
			active = n
		}
	}
	for active != nil && m.readyLen() > 0 && uint32(len(active.out)) < active.credit {
		msg := m.popHead()
		active.hold(msg)
		if m.hooks.Assigned != nil {
			if m.assigned == nil {
				m.assigned = map[string][]Msg{}
			}
			m.assigned[active.name] = append(m.assigned[active.name], *msg)
		}
	}
}

// flushAssigned calls the Assigned hook once per node for the entry's assignments, nodes in
// name order.
func (m *Machine) flushAssigned() {
	if len(m.assigned) == 0 {
		return
	}
	names := make([]string, 0, len(m.assigned))
	for name := range m.assigned {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		m.hooks.Assigned(name, m.assigned[name])
	}
	clear(m.assigned)
}

// Held returns the messages node holds, by ID. Loop goroutine only (or a quiescent machine).
func (m *Machine) Held(node string) []*Msg {
	n := m.node(node, false)
	if n == nil {
		return nil
	}
	out := make([]*Msg, 0, len(n.out))
	for _, msg := range n.out {
		out = append(out, msg)
	}
	slices.SortFunc(out, func(a, b *Msg) int { return cmpU64(a.ID, b.ID) })
	return out
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// snapshotVersion is the first byte of a snapshot. Version 2 adds the count of returned
// messages before the list (version 1 had them as ready ones: a message returned after the
// restore then went before them, not among them by ID, and replicas' heads differed).
//
// Version 3 adds the delayed redeliveries (their due time and message) after the nodes, then
// the time of the queue's last use (x-expires).
//
// Version 4: a message's state byte may have bit 1 set (Msg.Redelivered); the layout is
// version 3's.
//
// Version 5 adds the discards of at-least-once dead-lettering after the last use (dlx.go). A
// state without discards is still written as version 4, which a node of an earlier release
// can restore.
//
// Version 6: a message's state byte may have bit 2 set, then the node its late mark counts
// from follows (Msg.downFrom); the layout is otherwise version 5's. A state without such a
// message is still written as version 5 or 4.
const snapshotVersion = 6

// Snapshot implements multiraft.StateMachine: the whole state, messages included, so that
// the log behind it can go and a queue's disk follows its backlog.
func (m *Machine) Snapshot() ([]byte, error) {
	return m.view().encode(), nil
}

// StartSnapshot implements multiraft.SnapshotStarter: it takes an immutable view of the state
// (a copy of the message pointers and of the fields a command may change later, Count,
// Delivered, Redelivered and downFrom: about 32 bytes a message, where the encoding copies
// every body) and returns the encoding of that view, which multiraft runs on another
// goroutine while this machine goes on applying. A message's ID, Exchange, RoutingKey, Header, Body and Expires are never written
// once it is in the queue, so the encoder reads them through the shared pointers.
func (m *Machine) StartSnapshot() (func() ([]byte, error), error) {
	v := m.view()
	return func() ([]byte, error) { return v.encode(), nil }, nil
}

// snapMsg is a message as of a snapshot's view.
type snapMsg struct {
	msg         *Msg // immutable fields only (see StartSnapshot)
	count       uint32
	delivered   bool
	redelivered bool
	downFrom    string
}

type snapNode struct {
	name   string
	credit uint32
	since  uint64
	held   []snapMsg
}

// snapView is the state a snapshot encodes, detached from the live Machine.
type snapView struct {
	nextID, seq uint64
	now         int64
	cursor      int
	nret        int
	msgs        []snapMsg // returned ones first, then ready ones
	nodes       []snapNode
	delayed     []snapDelayed
	used        int64
	discards    []Dropped // messages never written once discarded: shared
}

// snapDelayed is a delayed redelivery as of a snapshot's view.
type snapDelayed struct {
	at int64
	snapMsg
}

// snapOf is msg's state as of now (the Raft loop), for a snapshot's view.
func snapOf(msg *Msg) snapMsg {
	return snapMsg{msg: msg, count: msg.Count, delivered: msg.Delivered, redelivered: msg.Redelivered, downFrom: msg.downFrom}
}

func snapMsgs(dst []snapMsg, msgs []*Msg) []snapMsg {
	for _, msg := range msgs {
		dst = append(dst, snapOf(msg))
	}
	return dst
}

// view captures the state (Raft loop goroutine; O(messages) pointer copies, no body bytes).
func (m *Machine) view() *snapView {
	v := &snapView{nextID: m.nextID, seq: m.seq, now: m.now, cursor: m.cursor, nret: len(m.returns), used: m.used}
	v.msgs = make([]snapMsg, 0, len(m.returns)+m.readyLen())
	v.msgs = snapMsgs(v.msgs, m.returns)
	v.msgs = snapMsgs(v.msgs, m.ready[m.head:])
	v.nodes = make([]snapNode, 0, len(m.nodes))
	for _, n := range m.nodes {
		held := m.Held(n.name)
		v.nodes = append(v.nodes, snapNode{name: n.name, credit: n.credit, since: n.since, held: snapMsgs(make([]snapMsg, 0, len(held)), held)})
	}
	v.delayed = make([]snapDelayed, 0, len(m.delayed))
	for _, dm := range m.delayed {
		v.delayed = append(v.delayed, snapDelayed{at: dm.at, snapMsg: snapOf(dm.msg)})
	}
	v.discards = slices.Clone(m.dlx.list)
	return v
}

// encode writes the snapshot (snapshotVersion), see Restore.
func (v *snapView) encode() []byte {
	size := 64
	for _, sm := range v.msgs {
		size += 32 + len(sm.msg.Exchange) + len(sm.msg.RoutingKey) + len(sm.msg.Header) + len(sm.msg.Body)
	}
	for _, d := range v.discards {
		size += 32 + len(d.Msg.Exchange) + len(d.Msg.RoutingKey) + len(d.Msg.Header) + len(d.Msg.Body)
	}
	b := make([]byte, 0, size) // one allocation for the bodies, not a doubling series
	// The earliest version that has the state: an earlier release restores it.
	version := byte(4)
	if len(v.discards) > 0 {
		version = 5
	}
	if v.hasDownFrom() {
		version = 6
	}
	b = append(b, version)
	b = binary.AppendUvarint(b, v.nextID)
	b = binary.AppendUvarint(b, uint64(max(v.now, 0)))
	b = binary.AppendUvarint(b, v.seq)
	b = binary.AppendUvarint(b, uint64(v.cursor))
	b = binary.AppendUvarint(b, uint64(v.nret))
	b = binary.AppendUvarint(b, uint64(len(v.msgs))) // returned and ready
	for _, sm := range v.msgs {
		b = appendSnapMsg(b, sm)
	}
	b = binary.AppendUvarint(b, uint64(len(v.nodes)))
	for _, n := range v.nodes {
		b = appendString(b, n.name)
		b = binary.AppendUvarint(b, uint64(n.credit))
		b = binary.AppendUvarint(b, n.since)
		b = binary.AppendUvarint(b, uint64(len(n.held)))
		for _, sm := range n.held {
			b = appendSnapMsg(b, sm)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(v.delayed)))
	for _, dm := range v.delayed {
		b = binary.AppendUvarint(b, uint64(max(dm.at, 0)))
		b = appendSnapMsg(b, dm.snapMsg)
	}
	b = binary.AppendUvarint(b, uint64(max(v.used, 0)))
	if version >= 5 {
		b = appendDiscards(b, v.discards)
	}
	return b
}

// hasDownFrom reports that a message of the view has a downFrom (snapshot version 6).
func (v *snapView) hasDownFrom() bool {
	for _, sm := range v.msgs {
		if sm.downFrom != "" {
			return true
		}
	}
	for _, n := range v.nodes {
		for _, sm := range n.held {
			if sm.downFrom != "" {
				return true
			}
		}
	}
	for _, dm := range v.delayed {
		if dm.downFrom != "" {
			return true
		}
	}
	return false
}

// appendSnapMsg is a snapshot's message: its id, the view's Count, the state byte (bit 0
// Delivered, bit 1 Redelivered since version 4; before, only 0 or 1; bit 2 downFrom, which
// follows the byte, version 6 only), then appendMsg.
func appendSnapMsg(b []byte, sm snapMsg) []byte {
	b = binary.AppendUvarint(b, sm.msg.ID)
	b = binary.AppendUvarint(b, uint64(sm.count))
	var st byte
	if sm.delivered {
		st |= 1
	}
	if sm.redelivered {
		st |= 2
	}
	if sm.downFrom != "" {
		st |= 4
	}
	b = append(b, st)
	if sm.downFrom != "" {
		b = appendString(b, sm.downFrom)
	}
	return appendMsg(b, sm.msg)
}

// Restore implements multiraft.StateMachine. Returned and ready messages are one list in a
// snapshot (returned first, their count before it), which keeps the delivery order. A
// version 1 snapshot (no count) restores them all as ready.
func (m *Machine) Restore(b []byte) error {
	fresh := New(m.limits, m.hooks)
	if len(b) > 0 {
		if b[0] < 1 || b[0] > snapshotVersion {
			return fmt.Errorf("quorum: snapshot version %d unknown", b[0])
		}
		d := decoder{b: b[1:], downFrom: b[0] >= 6}
		fresh.nextID = d.uvarint("next id")
		fresh.now = d.int63("now")
		fresh.seq = d.uvarint("checkout seq")
		fresh.cursor = int(d.uvarint("cursor"))
		var nret uint64
		if b[0] >= 2 {
			nret = d.uvarint("returns")
		}
		n := d.count("ready", 6)
		if d.err == nil && nret > uint64(n) {
			d.fail("returns")
		}
		for i := 0; i < n && d.err == nil; i++ {
			msg := d.msg(true)
			ownMsg(msg) // not the whole snapshot's buffer
			if uint64(i) < nret {
				// giveBack inserts by ID: the list must be sorted.
				if k := len(fresh.returns); k > 0 && fresh.returns[k-1].ID >= msg.ID {
					d.fail("returns out of order")
				}
				fresh.returns = append(fresh.returns, msg)
			} else {
				fresh.ready = append(fresh.ready, msg)
			}
			fresh.bytes += msg.size()
		}
		nn := d.count("nodes", 3)
		for i := 0; i < nn && d.err == nil; i++ {
			ns := &nodeState{name: d.string("node"), out: map[uint64]*Msg{}}
			cr := d.uvarint("credit")
			if cr > 1<<32-1 {
				d.fail("credit")
			}
			ns.credit = uint32(cr)
			ns.since = d.uvarint("since")
			k := d.count("held", 6)
			for j := 0; j < k && d.err == nil; j++ {
				msg := d.msg(true)
				ownMsg(msg)
				ns.out[msg.ID] = msg
			}
			if len(fresh.nodes) > 0 && fresh.nodes[len(fresh.nodes)-1].name >= ns.name {
				d.fail("nodes out of order")
			}
			fresh.nodes = append(fresh.nodes, ns)
		}
		if b[0] >= 3 {
			nd := d.count("delayed", 7)
			for i := 0; i < nd && d.err == nil; i++ {
				at := d.int63("due")
				msg := d.msg(true)
				ownMsg(msg)
				if k := len(fresh.delayed); k > 0 && fresh.delayed[k-1].at > at {
					d.fail("delayed out of order")
				}
				fresh.delayed = append(fresh.delayed, delayedMsg{at: at, msg: msg})
				if msg.downFrom != "" {
					fresh.delayedLate++
				}
			}
			fresh.used = d.int63("used")
		}
		if b[0] >= 5 {
			fresh.dlx.list, fresh.dlx.bytes = d.discards()
		}
		if d.err == nil && len(d.b) > 0 {
			d.fail("trailing bytes")
		}
		if d.err != nil {
			return fmt.Errorf("quorum: restoring snapshot: %w", d.err)
		}
		if fresh.cursor >= len(fresh.nodes) {
			fresh.cursor = 0
		}
	}
	m.nextID, m.now, m.seq, m.cursor, m.returns, m.ready, m.head, m.bytes, m.nodes, m.delayed =
		fresh.nextID, fresh.now, fresh.seq, fresh.cursor, fresh.returns, fresh.ready, 0, fresh.bytes, fresh.nodes, fresh.delayed
	m.delayedLate = fresh.delayedLate
	m.used = fresh.used
	m.dlx.mu.Lock()
	m.dlx.list, m.dlx.bytes = fresh.dlx.list, fresh.dlx.bytes
	m.dlx.mu.Unlock()
	m.expired = nil
	m.storeCounts()
	if m.hooks.Restored != nil {
		m.hooks.Restored()
	}
	return nil
}
