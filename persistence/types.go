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
}

// Publish stores Msg once plus one index entry per durable queue in Entries. Each entry's
// MsgID must be 0 (meaning Msg.ID) or Msg.ID. A Publish without entries stores nothing.
// Publishing an entry that already exists replaces it (the old message loses a reference).
type Publish struct {
	Msg     *Message
	Entries []Entry
}

// DeliveryMark records that Entry has been delivered Count times (for redelivered flags
// and x-delivery-limit after restart). Marks for entries that no longer exist are ignored.
type DeliveryMark struct {
	Entry Entry
	Count uint32
}

// Batch is one atomic unit of work: all of it is committed or none. Within a Batch the
// parts apply in this order: Publishes, Deliveries, Removes, PurgeQueues - so a publish and
// the remove of the same entry may share a Batch. Removes identify entries by Queue and Seq
// (MsgID is ignored; the stored index is authoritative) and removing a missing entry is a
// no-op, so double acks cannot corrupt reference counts.
type Batch struct {
	Publishes   []Publish
	Removes     []Entry
	Deliveries  []DeliveryMark
	PurgeQueues []QueueRef
}
