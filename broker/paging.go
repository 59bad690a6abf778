package broker

import (
	"math"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/persistence"
	"github.com/warrenmq/warren/queue"
)

// pager is a queue's queue.Pager on the store: durable entries are on disk already (their
// publish was submitted before the push) and are read back from the queue's index;
// transient ones are written as pages into a page space of the queue's own.
type pager struct {
	qs    *Queue
	store pageStore
	space uint64

	// refused holds the transient entries whose page write the store refused (a full disk):
	// they are nowhere else, so they stay here, in memory, and PageIn returns them in order
	// with what it reads, until they are read or discarded. Losing them instead would drop
	// messages nobody was told about; memory is the lesser evil while the disk alarm blocks
	// publishers.
	mu      sync.Mutex
	refused map[uint64]*queue.Entry
}

// pageStore is what a pager needs of the store (tests wrap it to refuse writes).
type pageStore interface {
	Submit(b *persistence.Batch, done func(error))
	ReadAhead(r persistence.ReadRequest, done func([]persistence.Stored, error))
}

// pageStore returns the store pagers write to: b.store, unless a test replaced it.
func (b *Broker) pageStore() pageStore {
	if b.testPages != nil {
		return b.testPages
	}
	return b.store
}

// enablePaging bounds qs's memory to the configured window, or to window when it is smaller
// (a lazy queue's, or x-max-in-memory-length); without a store everything stays in memory.
func (b *Broker) enablePaging(qs *Queue, window int) {
	if b.store == nil {
		return
	}
	if window <= 0 || window > b.maxRAMMessages {
		window = b.maxRAMMessages
	}
	qs.q.SetPaging(queue.Paging{
		Pager:  &pager{qs: qs, store: b.pageStore(), space: b.store.NewPageSpace()},
		Window: window,
		Budget: b.budget,
	})
}

func (p *pager) PageOut(e *queue.Entry) {
	if e.Durable {
		return
	}
	p.store.Submit(&persistence.Batch{Pages: []persistence.Page{{
		Space: p.space, Seq: e.Seq, Msg: storedMessage(e.Msg), ExpiresAt: e.ExpiresAt, Persistent: e.Msg.Persistent,
	}}}, func(err error) {
		if err != nil {
			p.keepRefused(e, err)
		}
	})
}

// keepRefused keeps e, whose page write failed with err, in memory (see pager.refused).
func (p *pager) keepRefused(e *queue.Entry, err error) {
	p.mu.Lock()
	if p.refused == nil {
		p.refused = make(map[uint64]*queue.Entry)
	}
	first := len(p.refused) == 0
	p.refused[e.Seq] = e
	p.mu.Unlock()
	if first { // one line per episode, not per message
		p.qs.v.b.log.Warn("page write refused; keeping paged-out messages of the queue in memory",
			"queue", p.qs.name, "vhost", p.qs.v.name, "err", err)
	}
}

// withRefused merges the refused entries into es, a read from seq from that stopped at its
// limits (full) or at the end of the stored ones: the refused entries up to where the read
// got, or all from `from` on when it reached the end. The result may hold more than the
// read's max: the store drops the pages it read, so none of es may be left out. The entries
// returned leave p.refused.
func (p *pager) withRefused(es []*queue.Entry, from uint64, full bool) []*queue.Entry {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.refused) == 0 {
		return es
	}
	limit := uint64(math.MaxUint64)
	if full && len(es) > 0 {
		limit = es[len(es)-1].Seq
	}
	n := len(es)
	for seq, e := range p.refused {
		if seq >= from && seq <= limit {
			es = append(es, e)
		}
	}
	if len(es) == n {
		return es
	}
	sort.Slice(es, func(i, j int) bool { return es[i].Seq < es[j].Seq })
	for _, e := range es {
		delete(p.refused, e.Seq)
	}
	return es
}

func (p *pager) PageIn(from uint64, max int, maxBytes int64, done func([]*queue.Entry, error)) {
	req := persistence.ReadRequest{Queue: p.qs.ref(), Durable: p.qs.durable, Space: p.space, From: from, Max: max, MaxBytes: maxBytes}
	p.store.ReadAhead(req, func(sts []persistence.Stored, err error) {
		if err != nil {
			p.qs.v.b.log.Error("reading paged messages", "queue", p.qs.name, "vhost", p.qs.v.name, "err", err)
		}
		es := make([]*queue.Entry, len(sts))
		var read int64
		for i, st := range sts {
			es[i] = p.qs.storedEntry(st, nil)
			read += int64(len(st.Msg.Body))
		}
		if err == nil {
			es = p.withRefused(es, from, len(es) >= max || read >= maxBytes)
		}
		done(es, err)
	})
}

func (p *pager) Discard(spans []queue.Span) {
	ss := make([]persistence.Span, len(spans))
	for i, sp := range spans {
		ss[i] = persistence.Span{From: sp.From, To: sp.To}
	}
	p.mu.Lock()
	for seq := range p.refused {
		for _, sp := range spans {
			if seq >= sp.From && seq <= sp.To {
				delete(p.refused, seq)
				break
			}
		}
	}
	p.mu.Unlock()
	b := &persistence.Batch{DropPages: []persistence.PageDrop{{Space: p.space, Spans: ss}}}
	// A deleted queue's index goes with store.DeleteQueue.
	if p.qs.durable && !p.qs.deleted.Load() {
		b.Purges = []persistence.Purge{{Queue: p.qs.ref(), Spans: ss}}
	}
	p.store.Submit(b, nil)
}

func storedMessage(m *queue.Message) *persistence.Message {
	return &persistence.Message{ID: m.ID, Exchange: m.Exchange, RoutingKey: m.RoutingKey, Header: m.Header, Body: m.Body}
}

// storedEntry turns an entry read back from the store into a queue entry. cache, when not
// nil, shares the message of entries of several queues (restore).
func (qs *Queue) storedEntry(st persistence.Stored, cache map[uint64]*queue.Message) *queue.Entry {
	m := cache[st.Msg.ID]
	if m == nil {
		pm := st.Msg
		m = &queue.Message{ID: pm.ID, Exchange: pm.Exchange, RoutingKey: pm.RoutingKey, Header: pm.Header, Body: pm.Body, Persistent: st.Persistent}
		// The store keeps only the raw header: the priority is read back from it, for the
		// queues this message may be dead-lettered into (the seq already holds it here).
		if sum, err := amqp.ScanContentHeader(pm.Header); err == nil {
			m.Priority = sum.Priority
		}
		if cache != nil {
			cache[pm.ID] = m
		}
	}
	var e *queue.Entry
	if st.ExpiryUnknown {
		// Stored by format 1 without its expiry: count the TTL and expiration from now.
		if m.ExpiresAt == 0 {
			m.ExpiresAt = expirationFromNow(m.Header)
		}
		e = qs.q.NewEntry(st.Seq, m)
	} else {
		e = &queue.Entry{Seq: st.Seq, Msg: m, ExpiresAt: st.ExpiresAt}
	}
	e.Durable = st.Durable
	e.SharedOnDisk = st.Shared
	e.Deliveries = st.Deliveries
	e.Returns = st.Deliveries
	if st.MaybeDelivered && e.Deliveries == 0 {
		// Stored before an unclean stop, which may have lost its delivery mark (they are
		// written after the delivery, without waiting): flag it redelivered, as a client must
		// assume it may have processed it. Returns stays 0: not a delivery x-delivery-limit
		// and x-delivery-count count (journal writes marks from Returns for that reason).
		e.Deliveries = 1
		e.MaybeDelivered = true // may be paged out again: see queue.Entry.MaybeDelivered
	}
	return e
}

// expirationFromNow is the absolute expiry of a message's expiration property counted from
// now; 0 without one.
func expirationFromNow(header []byte) int64 {
	sum, err := amqp.ScanContentHeader(header)
	if err != nil || sum.Expiration == "" {
		return 0
	}
	ms, err := strconv.ParseInt(sum.Expiration, 10, 64)
	if err != nil || ms < 0 {
		return 0
	}
	return expiresAfter(ms)
}

// expiresAfter is the absolute expiry (unix nanoseconds) ms milliseconds from now, saturated:
// an expiration of centuries must not wrap into the past and expire at once.
func expiresAfter(ms int64) int64 {
	now := time.Now().UnixNano()
	if ms > (math.MaxInt64-now)/int64(time.Millisecond) {
		return math.MaxInt64
	}
	return now + ms*int64(time.Millisecond)
}
