package persistence

// ExchangeRecord is a durable exchange as stored. Args is the caller-encoded AMQP field
// table (opaque here).
type ExchangeRecord struct {
	VHost, Name, Kind             string
	Durable, AutoDelete, Internal bool
	Args                          []byte
}

// QueueRecord is a durable queue as stored (durable is implied). Queue names are per vhost.
type QueueRecord struct {
	VHost, Name string
	AutoDelete  bool
	Args        []byte
	// Epoch is the cluster's incarnation of the queue (the log index of its declare; 0 on a
	// single node or in a record written before it was stored): a node replaying the log after
	// a restart must not take a delete of an earlier queue of the name for this one.
	Epoch uint64
}

// BindingRecord is a durable binding from exchange Source to a queue or (ToExchange)
// exchange Destination. All fields, Args bytes included, form its identity, so the caller
// must encode Args deterministically (e.g. sorted table keys) for DeleteBinding to match.
type BindingRecord struct {
	VHost, Source, Destination string
	ToExchange                 bool
	Key                        string
	Args                       []byte
}

// Topology is everything LoadTopology returns, each slice in key order (by vhost, then name).
type Topology struct {
	Exchanges []ExchangeRecord
	Queues    []QueueRecord
	Bindings  []BindingRecord
}

// Message is a persistent message body as stored once, however many queues hold it.
type Message struct {
	ID         uint64
	Exchange   string
	RoutingKey string
	Header     []byte // raw AMQP content-header frame payload
	Body       []byte
}

// QueueRef names a queue.
type QueueRef struct {
	VHost, Queue string
}

// Entry is one queue's index entry for a message: Seq orders the queue; MsgID is the
// message it points at.
type Entry struct {
	Queue QueueRef
	Seq   uint64
	MsgID uint64
	// ExpiresAt is the entry's absolute expiry (unix nanoseconds, 0 = never), stored with a
	// published entry so that it expires on time when read back (paging, restart).
	ExpiresAt int64
	// SoleRef, in a Remove, promises that the stored entry points at MsgID and is that
	// message's only index entry (it was published to one durable queue, or read back
	// without Stored.Shared): the store then deletes both without reading the index, which
	// is what makes draining a backlog cheap. Without it the stored index is authoritative.
	SoleRef bool
}

// Publish stores Msg once plus one index entry per durable queue in Entries. Each entry's
// MsgID must be 0 (meaning Msg.ID) or Msg.ID, and Msg.ID must be new: a message is
// published once, with all its entries. A Publish without entries stores nothing.
// Publishing an entry that already exists replaces it (the old message loses a reference),
// unless NewEntries promises that no entry exists under those sequence numbers: then the
// store writes without reading the index first (and an existing entry's message would be
// left behind unreferenced until a repair).
type Publish struct {
	Msg        *Message
	Entries    []Entry
	NewEntries bool
}

// DeliveryMark records that Entry has been delivered Count times (for redelivered flags
// and x-delivery-limit after restart). Marks for entries that no longer exist are ignored.
type DeliveryMark struct {
	Entry Entry
	Count uint32
}

// Span is the range of sequence numbers From..To, both included.
type Span struct {
	From, To uint64
}

// Purge deletes a queue's index entries whose Seq lies in one of Spans (all of them when
// Spans is nil), and the messages that lose their last reference with them.
type Purge struct {
	Queue QueueRef
	Spans []Span
}

// Page is a transient message that a queue keeps on disk instead of in memory (it
// overflowed the queue's in-memory window). Pages live in the queue's page space (see
// NewPageSpace), are never synced for their own sake and are wiped when the store opens.
type Page struct {
	Space      uint64
	Seq        uint64
	Msg        *Message
	ExpiresAt  int64 // as Entry.ExpiresAt
	Persistent bool  // delivery-mode 2 (kept for dead-lettering), though not stored durably
}

// PageDrop deletes the pages of a page space whose Seq lies in one of Spans (all of them
// when Spans is nil).
type PageDrop struct {
	Space uint64
	Spans []Span
}

// Batch is one atomic unit of work: all of it is committed or none. Within a Batch the
// parts apply in this order: Publishes, Pages, Deliveries, Removes, Purges, DropPages - so a
// publish and the remove of the same entry may share a Batch. Removes identify entries by
// Queue and Seq (MsgID is ignored unless SoleRef is set; the stored index is authoritative)
// and removing a missing entry is a no-op, so double acks cannot corrupt reference counts
// (a SoleRef removal of a missing entry writes tombstones and miscounts MessagesStored, but
// deletes nothing else). Purges and DropPages are atomic too: a crash part-way through a
// purge is completed at the next Open (pages are wiped at Open anyway).
//
// A Batch of only Deliveries and Removes submitted without a done callback may wait up to
// Options.LazyDelay for company in the journal, so that the delivery marks of messages acked soon
// after are never written; any other request commits it at once, in order.
type Batch struct {
	Publishes  []Publish
	Pages      []Page
	Removes    []Entry
	Deliveries []DeliveryMark
	Purges     []Purge
	DropPages  []PageDrop
}

// messageOverhead approximates what a queued message costs in memory beside its header and
// body (the Message, its strings, the request), so that small messages count too.
const messageOverhead = 128

// queuedBytes approximates the memory b holds until it is committed: its messages.
func (b *Batch) queuedBytes() int64 {
	var n int64
	for _, p := range b.Publishes {
		n += messageSize(p.Msg)
	}
	for _, p := range b.Pages {
		n += messageSize(p.Msg)
	}
	return n
}

func messageSize(m *Message) int64 {
	if m == nil {
		return 0
	}
	return int64(len(m.Header)+len(m.Body)+len(m.Exchange)+len(m.RoutingKey)) + messageOverhead
}

// Stored is one queue entry read back from the store by RecoverQueue or ReadAhead.
type Stored struct {
	Seq        uint64
	Msg        *Message // freshly allocated, may be kept
	Deliveries uint32
	ExpiresAt  int64
	// ExpiryUnknown is set for entries written by store format 1, which did not keep the
	// expiry: the caller has to derive it again (from the queue's TTL and the message).
	ExpiryUnknown bool
	// Durable: the entry comes from the queue's durable index; otherwise it is a page.
	Durable bool
	// Shared: the message may have index entries in other queues too (see Entry.SoleRef).
	Shared     bool
	Persistent bool
	// MaybeDelivered: a durable entry whose message was already stored when the store was
	// last opened after an unclean stop (see Store.UncleanStop). Delivery marks are written
	// after the delivery without waiting, so such a message may have been delivered though
	// Deliveries is 0; it is not a delivery to count (x-delivery-limit), only a reason to
	// flag the message redelivered.
	MaybeDelivered bool
}

// QueueInfo summarises a queue's durable index.
type QueueInfo struct {
	Count  int64  // index entries
	Bytes  int64  // body bytes of their messages
	MaxSeq uint64 // highest sequence number, 0 when empty
}

// ReadRequest asks ReadAhead for a queue's next entries, in Seq order, from its durable
// index (when Durable) and its page space (when Space is not 0) merged.
type ReadRequest struct {
	Queue   QueueRef
	Durable bool
	Space   uint64
	// From is the first sequence number to consider.
	From uint64
	// Max bounds the number of entries; MaxBytes their body bytes (at least one entry is
	// read if there is one).
	Max      int
	MaxBytes int64
}
