package quorum

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Kind is a command's type.
type Kind uint8

// The commands of a quorum queue's log.
const (
	KindBatch     Kind = iota + 1 // several commands in one entry (one proposer's round)
	KindEnqueue                   // Msgs appended
	KindCheckout                  // Node's credit set to Credit
	KindSettle                    // IDs held by Node acked
	KindReturn                    // IDs held by Node back at the head (Delivered: counts a delivery)
	KindDiscard                   // IDs held by Node rejected: dropped for dead-lettering
	KindGet                       // the head taken for Node (NoAck: and settled at once)
	KindNodeDown                  // everything Node held returned, its credit zeroed
	KindPurge                     // the ready messages dropped
	KindDelivered                 // IDs held by Node reached a client (NodeDown counts them)
	// KindClock is a follower's clock (Now) for the rest of its batch only: the head may
	// expire by it, but the queue's time does not move to it (a follower whose clock runs
	// ahead must not expire every later message early). A follower's basic.get must not
	// hand out a head that expired while no leader proposal moved the queue's time.
	KindClock
	// KindTouch is a use of the queue that the log does not see otherwise (a redeclare): it
	// restarts the x-expires countdown.
	KindTouch
	// KindCount reports deliveries Node's local queue requeued itself (a single-active-
	// consumer queue's closing channel: the next consumer of the node gets them first, in
	// order): each of IDs held by Node has been returned Counts[i] times in all, and its
	// delivery count is raised to that (never lowered: applying it twice, or after a later
	// count, changes nothing).
	KindCount
	// KindAt is the age (Now, ms) of the next command of the batch (a return) when its batch
	// was built: how long before, by the proposer's own clock, it decided that return. The
	// redelivery delay of what that command returns counts from the queue's time less that
	// age (at most the delay), not from when its batch was proposed (one round or more later
	// under load), as a classic queue's counts from the requeue. An age, not a time: a
	// proposer whose clock runs behind the queue's does not cancel the delay. For that next
	// command only.
	KindAt
	kindEnd
)

// Command is one decoded command; which fields count depends on Kind.
type Command struct {
	Kind      Kind
	Node      string
	Credit    uint32
	IDs       []uint64
	Msgs      []*Msg
	Delivered bool     // KindReturn: the messages had reached a client (their count goes up)
	Counts    []uint32 // KindCount: the delivery count of each of IDs
	NoAck     bool     // KindGet
	Batch     []Command
	// Now is the proposer's clock (unix ms) for a batch: the queue's time moves to the
	// highest Now applied, and messages whose Expires is before it expire at the head.
	// KindClock and KindAt carry a clock too (see them).
	Now int64
}

// Msg is a message of the queue. Header is the publisher's content header, sent verbatim
// (plus x-delivery-count once Count > 0).
type Msg struct {
	ID         uint64 // assigned by Apply, in enqueue order
	Exchange   string
	RoutingKey string
	Header     []byte
	Body       []byte
	Count      uint32 // deliveries returned: RabbitMQ's delivery-count
	// Expires is when the message expires (unix ms, from the proposer's clock: x-message-ttl
	// or its expiration property); 0 never.
	Expires int64
	// Delivered: held by a node that reported it reached a client (state, not a command's).
	Delivered bool
	// Redelivered: it may have reached a client before, uncounted (state, not a command's):
	// it was held by a node taken back by NodeDown (dead, restarted, or caught up by a
	// snapshot) before the node's Delivered mark for it was applied. AMQP's redelivered flag
	// means "may have been delivered before", so its later deliveries carry it; Count (the
	// delivery limit, x-delivery-count) counts only the deliveries the log knows of.
	Redelivered bool
	// downFrom is the node a NodeDown took the message back from before that node's Delivered
	// mark for it was applied (state, in the snapshot since version 6): a late mark counts
	// only from that node, and once (cleared then, or when that node holds it again, whose
	// marks are then of the new hold). Any other node's mark for a message it no longer holds
	// is a duplicate of one already applied (marks are proposed again after an unknown
	// outcome), or of a hold its return counted. One node only: a later NodeDown of another
	// holder replaces it, and the earlier node's late mark is then not counted (a delivery
	// counted less, never one counted twice).
	downFrom string
}

func (m *Msg) size() int64 { return int64(len(m.Body)) }

// Encode appends the command's encoding to b: the kind, then its fields as uvarints and
// length-prefixed bytes.
func (c Command) Encode(b []byte) []byte {
	b = append(b, byte(c.Kind))
	switch c.Kind {
	case KindBatch:
		b = binary.AppendUvarint(b, uint64(max(c.Now, 0)))
		b = binary.AppendUvarint(b, uint64(len(c.Batch)))
		for i := range c.Batch {
			b = c.Batch[i].Encode(b)
		}
	case KindEnqueue:
		b = binary.AppendUvarint(b, uint64(len(c.Msgs)))
		for _, m := range c.Msgs {
			b = appendMsg(b, m)
		}
	case KindCheckout:
		b = appendString(b, c.Node)
		b = binary.AppendUvarint(b, uint64(c.Credit))
	case KindSettle, KindDiscard, KindReturn, KindDelivered:
		b = appendString(b, c.Node)
		b = appendIDs(b, c.IDs)
		if c.Kind == KindReturn {
			b = appendBool(b, c.Delivered)
		}
	case KindCount:
		b = appendString(b, c.Node)
		b = appendIDs(b, c.IDs)
		for i := range c.IDs {
			var n uint32
			if i < len(c.Counts) {
				n = c.Counts[i]
			}
			b = binary.AppendUvarint(b, uint64(n))
		}
	case KindGet:
		b = appendString(b, c.Node)
		b = appendBool(b, c.NoAck)
	case KindNodeDown:
		b = appendString(b, c.Node)
	case KindClock, KindAt:
		b = binary.AppendUvarint(b, uint64(max(c.Now, 0)))
	case KindDLXSettle:
		b = appendIDs(b, c.IDs)
	case KindPurge, KindTouch:
	}
	return b
}

// Encoded is the command's encoding.
func (c Command) Encoded() []byte { return c.Encode(nil) }

// ErrCorrupt is returned for a command or snapshot that does not decode.
var ErrCorrupt = errors.New("quorum: corrupt encoding")

// maxBatchDepth bounds nested batches (a proposer never nests them; a corrupt entry might).
const maxBatchDepth = 2

// DecodeCommand decodes one command; trailing bytes are an error.
func DecodeCommand(b []byte) (Command, error) {
	d := decoder{b: b}
	c := d.command(0)
	if d.err == nil && len(d.b) > 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(d.b))
	}
	return c, d.err
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytes(b, p []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

func appendIDs(b []byte, ids []uint64) []byte {
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, id := range ids {
		b = binary.AppendUvarint(b, id)
	}
	return b
}

// appendMsg encodes m; withState adds what only a snapshot carries (ID and Count).
func appendMsg(b []byte, m *Msg) []byte {
	b = binary.AppendUvarint(b, uint64(max(m.Expires, 0)))
	b = appendString(b, m.Exchange)
	b = appendString(b, m.RoutingKey)
	b = appendBytes(b, m.Header)
	return appendBytes(b, m.Body)
}

// decoder reads the encoding; the first error sticks and every later read returns zero.
type decoder struct {
	b   []byte
	err error
	// downFrom: a message's state byte may have bit 2 set, Msg.downFrom follows it (snapshot
	// version 6).
	downFrom bool
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrCorrupt, what)
	}
	d.b = nil
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a length that must fit in what is left, at least min bytes per element.
func (d *decoder) count(what string, min int) int {
	n := d.uvarint(what)
	if d.err == nil && n > uint64(len(d.b)/min) {
		d.fail(what + " count")
		return 0
	}
	return int(n)
}

// int63 reads a uvarint that must fit an int64.
func (d *decoder) int63(what string) int64 {
	v := d.uvarint(what)
	if v > 1<<63-1 {
		d.fail(what)
		return 0
	}
	return int64(v)
}

func (d *decoder) bytes(what string) []byte {
	n := d.count(what, 1)
	if d.err != nil {
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) string(what string) string { return string(d.bytes(what)) }

func (d *decoder) byte(what string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail(what)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) bool(what string) bool {
	if d.err != nil {
		return false
	}
	if len(d.b) == 0 || d.b[0] > 1 {
		d.fail(what)
		return false
	}
	v := d.b[0] == 1
	d.b = d.b[1:]
	return v
}

func (d *decoder) ids() []uint64 {
	n := d.count("ids", 1)
	ids := make([]uint64, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		ids = append(ids, d.uvarint("id"))
	}
	return ids
}

func (d *decoder) msg(withState bool) *Msg {
	m := &Msg{}
	if withState {
		m.ID = d.uvarint("message id")
		c := d.uvarint("delivery count")
		if c > 1<<32-1 {
			d.fail("delivery count")
		}
		m.Count = uint32(c)
		st := d.byte("message state")
		if st > 7 || (st&4 != 0 && !d.downFrom) {
			d.fail("message state")
		}
		m.Delivered, m.Redelivered = st&1 != 0, st&2 != 0
		if st&4 != 0 {
			m.downFrom = d.string("down from")
			if m.downFrom == "" {
				d.fail("down from")
			}
		}
	}
	m.Expires = d.int63("expires")
	m.Exchange = d.string("exchange")
	m.RoutingKey = d.string("routing key")
	m.Header = d.bytes("header")
	m.Body = d.bytes("body")
	return m
}

func (d *decoder) command(depth int) Command {
	if d.err != nil {
		return Command{}
	}
	if len(d.b) == 0 {
		d.fail("empty command")
		return Command{}
	}
	c := Command{Kind: Kind(d.b[0])}
	d.b = d.b[1:]
	switch c.Kind {
	case KindBatch:
		if depth >= maxBatchDepth {
			d.fail("nested batch")
			return c
		}
		c.Now = d.int63("now")
		n := d.count("batch", 1)
		c.Batch = make([]Command, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			c.Batch = append(c.Batch, d.command(depth+1))
		}
	case KindEnqueue:
		n := d.count("messages", 4)
		c.Msgs = make([]*Msg, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			c.Msgs = append(c.Msgs, d.msg(false))
		}
	case KindCheckout:
		c.Node = d.string("node")
		cr := d.uvarint("credit")
		if cr > 1<<32-1 {
			d.fail("credit")
		}
		c.Credit = uint32(cr)
	case KindSettle, KindDiscard, KindReturn, KindDelivered:
		c.Node = d.string("node")
		c.IDs = d.ids()
		if c.Kind == KindReturn {
			c.Delivered = d.bool("delivered")
		}
	case KindCount:
		c.Node = d.string("node")
		c.IDs = d.ids()
		c.Counts = make([]uint32, 0, len(c.IDs))
		for range c.IDs {
			n := d.uvarint("count")
			if n > 1<<32-1 {
				d.fail("count")
			}
			c.Counts = append(c.Counts, uint32(n))
		}
	case KindGet:
		c.Node = d.string("node")
		c.NoAck = d.bool("no-ack")
	case KindNodeDown:
		c.Node = d.string("node")
	case KindClock, KindAt:
		c.Now = d.int63("clock")
	case KindDLXSettle:
		c.IDs = d.ids()
	case KindPurge, KindTouch:
	default:
		d.fail(fmt.Sprintf("unknown command kind %d", c.Kind))
	}
	return c
}
