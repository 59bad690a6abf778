package persistence

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"
)

const (
	// maxGroup bounds how many requests one transaction takes, so done callbacks of the
	// first ones are not delayed indefinitely under a flood.
	maxGroup = 8192
	// drainChunk is how many index entries one purge transaction deletes at most (less if
	// badger's transaction limits demand it, see drainChunkFor).
	drainChunk = 10000
	// gcAfterDeletes kicks value-log GC after this many message deletions (acks, purges).
	gcAfterDeletes = 10000
)

// request is one unit of journal work: a Batch or a topology change. cut marks an op that
// purges a queue (it must end its group, see commitGroup). An exclusive request runs on
// the journal goroutine outside any transaction, between groups (maintenance that blocks
// badger's writes).
type request struct {
	batch     *Batch
	delayed   []Delayed // held messages written with batch, in the same transaction
	size      int64     // memory batch and delayed hold (queuedBytes), counted in Store.queued
	op        func(g *group) error
	cut       bool
	exclusive func() error
	done      func(error)
}

// refuse ends r with err, a refusal or a failure; one that may have lost state makes the
// stop unclean (see clearRunning).
func (s *Store) refuse(r request, err error) {
	if r.mayLoseState() {
		s.lost.Store(true)
	}
	r.done(err)
}

// mayLoseState reports whether refusing or failing r can lose state the next start trusts after
// a clean stop (see clearRunning): a delivery mark, a removal or a purge (the message would come
// back, unflagged), or an op whose effect is not known here. A refused publish or page write is
// reported to its caller and loses nothing already stored, so it leaves the stop clean.
func (r request) mayLoseState() bool {
	if r.op != nil || r.exclusive != nil {
		return true
	}
	b := r.batch
	return b != nil && (len(b.Deliveries) > 0 || len(b.Removes) > 0 || len(b.Purges) > 0)
}

// errUnexpectedCut: an op purged without being marked cut; its group is committed again
// without the requests after it.
var errUnexpectedCut = errors.New("purge in an op not marked cut")

// entryKey identifies an index entry in memory.
type entryKey struct {
	vhost, queue string
	seq          uint64
}

// ackedIn maps the index entries that reqs remove to the last request removing each.
// Entries a group both publishes (or marks delivered) and then removes - a consumer acking
// a message before its publish is committed, the common case - are not written at all: the
// message never reaches disk. A publish after the last removal of its entry is written.
func ackedIn(reqs []request) map[entryKey]int {
	var acked map[entryKey]int
	for j, r := range reqs {
		if r.batch == nil {
			continue
		}
		for _, e := range r.batch.Removes {
			if acked == nil {
				acked = make(map[entryKey]int, 64)
			}
			acked[entryKey{e.Queue.VHost, e.Queue.Queue, e.Seq}] = j
		}
	}
	return acked
}

// Submit queues b for the journal goroutine, which groups the batches of all callers into
// one badger transaction and one sync (group commit), then calls done(err) for each of
// them in submission order. Each Batch is atomic; a group is split only between Batches.
// done runs on the journal goroutine and must not block (nor call Commit). After Close,
// done(ErrClosed) is called at once on the caller's goroutine. b must not be modified
// until done is called.
func (s *Store) Submit(b *Batch, done func(error)) {
	s.submit(request{batch: b, size: b.queuedBytes(), done: done})
}

// AwaitRoom waits while batches holding more than max bytes of messages are submitted and
// not yet committed, so that a producer faster than the disk (publishers, queues paging
// out) is held back instead of growing the journal's queue in memory without bound. It
// returns at once when the store is closing. It must not be called from a done callback or
// a ReadAhead callback.
func (s *Store) AwaitRoom(max int64) {
	if s.queued.Load() <= max {
		return
	}
	s.mu.Lock()
	for s.queued.Load() > max && !s.closing {
		s.room.Wait()
	}
	s.mu.Unlock()
}

// Queued returns the bytes of messages submitted and not yet committed.
func (s *Store) Queued() int64 { return s.queued.Load() }

// Commit submits b and waits until it is durable (or failed).
func (s *Store) Commit(b *Batch) error {
	ch := make(chan error, 1)
	s.Submit(b, func(err error) { ch <- err })
	return <-ch
}

func (s *Store) submit(r request) {
	lazy := r.lazy()
	if r.done == nil {
		r.done = func(error) {}
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		s.refuse(r, ErrClosed)
		return
	}
	// Only a change the journal acts on wakes it: the first request (it starts the lazy
	// clock), an urgent one, or a full group.
	wake := len(s.pending) == 0 || len(s.pending)+1 >= maxGroup
	if len(s.pending) == 0 {
		s.lazySince = time.Now()
	}
	if !lazy && !s.urgent {
		s.urgent = true
		wake = true
	}
	s.pending = append(s.pending, r)
	s.queued.Add(r.size)
	if wake {
		s.cond.Signal()
	}
	s.mu.Unlock()
}

// lazy reports whether r may wait for company (Options.LazyDelay): a batch of delivery marks
// and removals that nobody waits for.
func (r *request) lazy() bool {
	b := r.batch
	return r.done == nil && b != nil && len(r.delayed) == 0 && len(b.Publishes) == 0 && len(b.Pages) == 0 &&
		len(b.Purges) == 0 && len(b.DropPages) == 0
}

// do runs a topology change through the journal and waits for it to be durable; going
// through the journal serialises it with message batches (DeleteQueue vs. publishes).
func (s *Store) do(op func(g *group) error) error { return s.doOp(op, false) }

// exclusive runs fn on the journal goroutine between groups and waits for it.
func (s *Store) exclusive(fn func() error) error {
	ch := make(chan error, 1)
	s.submit(request{exclusive: fn, done: func(err error) { ch <- err }})
	return <-ch
}

// doOp is do for an op that may purge a queue (cut).
func (s *Store) doOp(op func(g *group) error, cut bool) error {
	ch := make(chan error, 1)
	s.submit(request{op: op, cut: cut, done: func(err error) { ch <- err }})
	return <-ch
}

func (s *Store) journal() {
	defer close(s.journalDone)
	for {
		s.mu.Lock()
		for !s.closing && (len(s.pending) == 0 || !s.urgent && len(s.pending) < maxGroup) {
			if len(s.pending) > 0 {
				wait := time.Until(s.lazySince.Add(s.opts.LazyDelay))
				if wait <= 0 {
					break
				}
				s.lazyTimer.Reset(wait)
			}
			s.cond.Wait()
		}
		if len(s.pending) == 0 {
			s.closed = true
			s.mu.Unlock()
			return
		}
		reqs := s.pending
		s.pending = s.spare[:0]
		s.spare = nil
		s.urgent = false
		s.mu.Unlock()

		s.process(reqs)

		var done int64
		for _, r := range reqs {
			done += r.size
		}
		clear(reqs)
		s.mu.Lock()
		s.spare = reqs[:0]
		s.queued.Add(-done)
		s.room.Broadcast()
		s.mu.Unlock()
	}
}

func (s *Store) process(reqs []request) {
	for len(reqs) > 0 {
		if s.failed != nil {
			err := fmt.Errorf("persistence: store %s failed earlier: %w", dirName(s.dir), s.failed)
			for _, r := range reqs {
				r.done(err)
			}
			return
		}
		n := s.commitGroup(reqs)
		reqs = reqs[n:]
	}
}

// group is one journal transaction under construction. Counter changes are applied by
// merge only after the commit succeeds.
type group struct {
	s          *Store
	txn        *badger.Txn
	drains     []drainJob            // run after the commit (purges, page drops)
	cut        bool                  // a queue purge: later requests must not share this transaction
	acked      map[entryKey]int      // entries removed in this group, to the last request removing each
	gone       map[entryKey]struct{} // entries not on disk for a blind removal (see removeSole)
	cur        int                   // index in the group of the request being applied
	publishes  int
	indexReads int
	stored     int64  // messages written
	removed    int64  // messages deleted
	maxID      uint64 // highest message id published, stored or not
	savedMaxID uint64 // the high-water mark as written (or already on disk)
	estCount   int64  // estimated badger entries / bytes so far, to cut before ErrTxnTooBig
	estSize    int64
}

func (s *Store) newGroup() *group {
	m := s.maxID.Load()
	return &group{s: s, txn: s.db.NewTransaction(true), maxID: m, savedMaxID: m}
}

// commitGroup commits a non-empty prefix of reqs in one transaction and returns its length.
func (s *Store) commitGroup(reqs []request) int {
	if reqs[0].exclusive != nil {
		var err error
		if s.res != nil {
			err = s.res.ensure(0) // maintenance may start a memtable (DropPrefix flushes)
		}
		if err == nil {
			err = reqs[0].exclusive()
		}
		if err != nil {
			s.refuse(reqs[0], err)
		} else {
			reqs[0].done(nil)
		}
		return 1
	}
	// First decide which requests share the transaction, so that entries published and
	// removed within it can cancel out before anything is written.
	n := 0
	var estCount, estSize, vlog int64
	addsMessages := false
	// Cut groups at 80% of badger's limits by estimate, so ErrTxnTooBig (which costs a
	// rebuild of the transaction) is the exception.
	limCount, limSize := s.db.MaxBatchCount()*4/5, s.db.MaxBatchSize()*4/5
	for j, r := range reqs {
		if r.exclusive != nil {
			break
		}
		if r.batch != nil {
			if err := validateBatch(r.batch); err != nil {
				if j == 0 {
					s.refuse(r, err)
					return 1
				}
				break // r fails alone next round
			}
			c, sz := estimate(r.batch)
			if j > 0 && (estCount+c > limCount || estSize+sz > limSize) {
				break
			}
			estCount += c
			estSize += sz
			vlog += vlogBytes(r.batch)
			addsMessages = addsMessages || len(r.batch.Publishes) > 0 || len(r.batch.Pages) > 0
		}
		if len(r.delayed) > 0 {
			// Held messages are message data in the value log like publishes: reserved for,
			// and refused while space is low.
			c, sz := estimateDelayed(r.delayed)
			if j > 0 && (estCount+c > limCount || estSize+sz > limSize) {
				break
			}
			estCount += c
			estSize += sz
			vlog += vlogDelayed(r.delayed)
			addsMessages = true
		}
		n = j + 1
		// A purge is finished (drain) right after its commit; later requests must not share
		// its transaction, or the drain would delete entries they add.
		if r.cut || (r.batch != nil && len(r.batch.Purges) > 0) || n >= maxGroup {
			break
		}
	}
	// Reserve what the group may write through badger's memory maps before writing anything
	// (see reserve.go): a group refused here wrote nothing, so the store stays usable.
	var lowSpace error
	if s.res != nil {
		err := s.res.ensure(vlog)
		if err == nil {
			lowSpace = s.res.room(s.res.flushKeep)
			if addsMessages {
				err = lowSpace
			}
		}
		if err != nil {
			s.setWriteError(err)
			err = fmt.Errorf("persistence: commit to %s: %w", s.dir, err)
			for _, r := range reqs[:n] {
				s.refuse(r, err)
			}
			return n
		}
	}
	g := s.newGroup()
	g.acked = ackedIn(reqs[:n])
	for j, r := range reqs[:n] {
		g.cur = j
		var err error
		switch {
		case r.batch != nil:
			err = g.applyBatch(r.batch)
			if err == nil {
				err = g.putDelayed(r.delayed)
			}
		case r.op != nil:
			err = r.op(g)
		default:
			err = g.putDelayed(r.delayed)
		}
		if err == nil && g.cut && j < n-1 {
			err = errUnexpectedCut
		}
		if err != nil {
			// A transaction cannot roll back one request, so start over without it.
			g.txn.Discard()
			if errors.Is(err, errUnexpectedCut) {
				return s.commitGroup(reqs[:j+1])
			}
			if j == 0 {
				if errors.Is(err, badger.ErrTxnTooBig) {
					err = fmt.Errorf("batch too large for one transaction: %w", err)
				}
				s.refuse(reqs[0], fmt.Errorf("persistence: %w", err))
				return 1
			}
			return s.commitGroup(reqs[:j])
		}
	}
	commitStart := time.Now()
	if err := g.txn.Commit(); err != nil {
		s.failed = err
		s.log.Error("journal commit failed; store is now read-only", "dir", s.dir, "err", err)
		err = fmt.Errorf("persistence: commit to %s: %w", dirName(s.dir), err)
		s.setWriteError(err)
		for _, r := range reqs[:n] {
			r.done(err)
		}
		return n
	}
	// Commits adding messages fail while space is low, even if this one (acks) went through.
	s.setWriteError(lowSpace)
	s.merge(g)
	var drainErr error
	for _, j := range g.drains {
		if err := s.drain(j); err != nil {
			s.failed = err
			s.log.Error("purge failed; store is now read-only", "dir", s.dir, "err", err)
			drainErr = fmt.Errorf("persistence: purge in %s: %w", dirName(s.dir), err)
			break
		}
	}
	took := time.Since(commitStart)
	s.statsMu.Lock()
	s.stats.CommitSeconds.observe(took.Seconds())
	s.stats.Commits++
	s.stats.Batches += uint64(n)
	s.stats.Publishes += uint64(g.publishes)
	s.stats.IndexReads += uint64(g.indexReads)
	s.stats.MaxBatchesPerCommit = max(s.stats.MaxBatchesPerCommit, n)
	s.stats.MaxPublishesPerCommit = max(s.stats.MaxPublishesPerCommit, g.publishes)
	s.statsMu.Unlock()
	for _, r := range reqs[:n] {
		r.done(drainErr)
	}
	return n
}

// merge applies a committed group's counters and id high-water mark.
func (s *Store) merge(g *group) {
	if g.maxID > s.maxID.Load() {
		s.maxID.Store(g.maxID)
	}
	s.nstored.Add(g.stored - g.removed)
	if g.removed > 0 {
		s.removedSinceGC += g.removed
		s.deleted.Add(g.removed)
		if s.removedSinceGC >= gcAfterDeletes {
			s.removedSinceGC = 0
			s.kickGC()
		}
	}
}

// decref drops one reference to the message of index value v and deletes the message with
// its last one. Only messages held by several queues have a refcount record; for the others
// the entry is the only reference.
func (g *group) decref(v indexValue) error {
	if v.shared() {
		k := refKey(v.msgID)
		item, err := g.txn.Get(k)
		switch {
		case err == nil:
			var n uint32
			if err := item.Value(func(b []byte) error { n, err = decodeRef(b); return err }); err != nil {
				return fmt.Errorf("refcount of message %d: %w", v.msgID, err)
			}
			if n > 1 {
				return g.txn.Set(k, encodeRef(n-1))
			}
			if err := g.txn.Delete(k); err != nil {
				return err
			}
		case !errors.Is(err, badger.ErrKeyNotFound):
			return fmt.Errorf("refcount of message %d: %w", v.msgID, err)
		}
	}
	g.removed++
	return g.txn.Delete(messageKey(v.msgID))
}

// getIndex reads an index entry as the transaction sees it (its own writes included).
func (g *group) getIndex(k []byte) (v indexValue, ok bool, err error) {
	g.indexReads++
	item, err := g.txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return v, false, nil
	}
	if err != nil {
		return v, false, fmt.Errorf("read index entry: %w", err)
	}
	err = item.Value(func(b []byte) error {
		v, err = decodeIndex(b)
		return err
	})
	if err != nil {
		return v, false, fmt.Errorf("read index entry: %w", err)
	}
	return v, true, nil
}

// decodeIndex decodes an index value outside Open's migration, where format 1 values
// cannot occur any more.
func decodeIndex(b []byte) (indexValue, error) {
	v, legacy, err := decodeIndexValue(b)
	if err == nil && legacy {
		err = fmt.Errorf("format 1 index value: %w", errCorrupt)
	}
	return v, err
}

func validateBatch(b *Batch) error {
	if b == nil {
		return errors.New("persistence: invalid batch: nil")
	}
	for i, p := range b.Publishes {
		if p.Msg == nil {
			if len(p.Entries) == 0 {
				continue
			}
			return fmt.Errorf("persistence: invalid batch: publish %d has no message", i)
		}
		if p.Msg.ID == 0 {
			return fmt.Errorf("persistence: invalid batch: publish %d: message id 0", i)
		}
		for _, e := range p.Entries {
			if e.MsgID != 0 && e.MsgID != p.Msg.ID {
				return fmt.Errorf("persistence: invalid batch: publish %d: entry for message %d in message %d", i, e.MsgID, p.Msg.ID)
			}
		}
	}
	for i, p := range b.Pages {
		if p.Msg == nil || p.Space == 0 {
			return fmt.Errorf("persistence: invalid batch: page %d has no message or no page space", i)
		}
	}
	for i, d := range b.DropPages {
		if d.Space == 0 {
			return fmt.Errorf("persistence: invalid batch: page drop %d has no page space", i)
		}
	}
	return nil
}

// estimate approximates the badger entries and bytes b adds to a transaction, the way
// badger counts them (key + value + meta, or a value pointer for big values).
func estimate(b *Batch) (count, size int64) {
	const ptr, meta, msgKey, ref = 12, 2, 9, 4
	entry := func(q QueueRef) int64 { return int64(len(q.VHost) + len(q.Queue) + 4 + 8) }
	value := func(m *Message) int64 {
		v := int64(len(m.Exchange) + len(m.RoutingKey) + len(m.Header) + len(m.Body) + 12)
		if v > valueThreshold {
			v = ptr
		}
		return v
	}
	for _, p := range b.Publishes {
		if len(p.Entries) == 0 {
			continue
		}
		count += 2 // the message and its refcount
		size += 2*(msgKey+meta) + value(p.Msg) + ref
		for _, e := range p.Entries {
			count += 3 // the entry, and maybe the delete of a replaced entry's message and refcount
			size += entry(e.Queue) + indexValueLen + meta + 2*(msgKey+meta) + ref
		}
	}
	for _, p := range b.Pages {
		count++
		size += 17 + meta + 17 + value(p.Msg)
	}
	count += int64(len(b.Deliveries)) + 3*int64(len(b.Removes)) + int64(len(b.Purges)) + 1
	for _, d := range b.Deliveries {
		size += entry(d.Entry.Queue) + indexValueLen + meta
	}
	for _, e := range b.Removes {
		size += entry(e.Queue) + meta + 2*(msgKey+meta) + ref
	}
	for _, p := range b.Purges {
		size += entry(p.Queue) + meta + 16*int64(len(p.Spans))
	}
	return count, size + 16
}

func (g *group) applyBatch(b *Batch) error {
	for _, p := range b.Publishes {
		if len(p.Entries) == 0 {
			continue
		}
		id := p.Msg.ID
		g.publishes++
		g.maxID = max(g.maxID, id)
		live := len(p.Entries)
		for _, e := range p.Entries {
			if g.isAcked(e.Queue, e.Seq) {
				live--
				g.markGone(e.Queue, e.Seq)
			}
		}
		if live == 0 {
			continue // consumed within this transaction: nothing to store
		}
		iv := indexValue{msgID: id, size: uint32(min(len(p.Msg.Body), math.MaxUint32))}
		shared := live > 1
		if shared {
			iv.flags = idxShared
		}
		for _, e := range p.Entries {
			if g.isAcked(e.Queue, e.Seq) {
				continue
			}
			k := indexKey(e.Queue, e.Seq)
			if !p.NewEntries {
				old, ok, err := g.getIndex(k)
				if err != nil {
					return err
				}
				if ok {
					if err := g.decref(old); err != nil {
						return err
					}
				}
			}
			iv.expiresAt = e.ExpiresAt
			if err := g.txn.Set(k, encodeIndexValue(iv)); err != nil {
				return err
			}
			if !p.NewEntries { // a new entry cannot have been removed earlier in the group
				g.forget(e.Queue, e.Seq)
			}
		}
		if shared {
			if err := g.txn.Set(refKey(id), encodeRef(uint32(live))); err != nil {
				return err
			}
		}
		if err := g.txn.Set(messageKey(id), encodeMessage(p.Msg)); err != nil {
			return err
		}
		g.stored++
	}
	if g.stored > 0 && g.maxID > g.savedMaxID {
		// Only ids that reach the disk need to stay unique across restarts: a group whose
		// messages were all consumed within it writes nothing at all (and needs no sync).
		if err := g.txn.Set(keyMaxID, binary.BigEndian.AppendUint64(nil, g.maxID)); err != nil {
			return err
		}
		g.savedMaxID = g.maxID
	}
	for i := range b.Pages {
		p := &b.Pages[i]
		if err := g.txn.Set(pageKey(p.Space, p.Seq), encodePage(p)); err != nil {
			return err
		}
	}
	for _, d := range b.Deliveries {
		if g.isAcked(d.Entry.Queue, d.Entry.Seq) {
			continue // removed later in this transaction
		}
		k := indexKey(d.Entry.Queue, d.Entry.Seq)
		v, ok, err := g.getIndex(k)
		if err != nil {
			return err
		}
		if ok {
			v.deliveries = d.Count
			if err := g.txn.Set(k, encodeIndexValue(v)); err != nil {
				return err
			}
		}
	}
	for _, e := range b.Removes {
		k := indexKey(e.Queue, e.Seq)
		if e.SoleRef && e.MsgID != 0 {
			if err := g.removeSole(e, k); err != nil {
				return err
			}
			continue
		}
		v, ok, err := g.getIndex(k)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if err := g.txn.Delete(k); err != nil {
			return err
		}
		if err := g.decref(v); err != nil {
			return err
		}
		g.markGone(e.Queue, e.Seq)
	}
	for _, p := range b.Purges {
		if p.Spans != nil && len(p.Spans) == 0 {
			continue
		}
		if err := g.markPurge(p.Queue, p.Spans); err != nil {
			return err
		}
	}
	for _, d := range b.DropPages {
		if d.Spans != nil && len(d.Spans) == 0 {
			continue
		}
		// Pages are never written again under a dropped seq, so a drop needs no cut.
		g.drains = append(g.drains, drainJob{prefix: pagePrefix(d.Space), spans: normalizeSpans(d.Spans)})
	}
	return nil
}

// removeSole deletes entry e (index key k) and its message, which the caller promises is
// referenced by nothing else (Entry.SoleRef), without reading either: blind deletes. An
// entry that this group removed already, or whose publish it skipped, is not there.
func (g *group) removeSole(e Entry, k []byte) error {
	if _, gone := g.gone[entryKey{e.Queue.VHost, e.Queue.Queue, e.Seq}]; gone {
		return nil
	}
	g.markGone(e.Queue, e.Seq)
	if err := g.txn.Delete(k); err != nil {
		return err
	}
	g.removed++
	return g.txn.Delete(messageKey(e.MsgID))
}

// markGone records that an entry is not on disk as this group sees it: removed, or its
// publish skipped because a later request of the group removes it.
func (g *group) markGone(q QueueRef, seq uint64) {
	if g.gone == nil {
		g.gone = make(map[entryKey]struct{}, 64)
	}
	g.gone[entryKey{q.VHost, q.Queue, seq}] = struct{}{}
}

// forget notes that the group writes an entry, so a later blind removal deletes it.
func (g *group) forget(q QueueRef, seq uint64) {
	if g.gone != nil {
		delete(g.gone, entryKey{q.VHost, q.Queue, seq})
	}
}

// isAcked reports whether the entry is removed by the current request (whose Removes apply
// after its Publishes and Deliveries) or a later one of the group.
func (g *group) isAcked(q QueueRef, seq uint64) bool {
	if g.acked == nil {
		return false
	}
	j, ok := g.acked[entryKey{q.VHost, q.Queue, seq}]
	return ok && j >= g.cur
}

// markPurge records, atomically with the rest of the transaction, which of q's index
// entries are to be deleted (spans, nil = all); the journal deletes them (drain) in
// bounded transactions right after the commit, and Open finishes the job if a crash
// interrupts it.
func (g *group) markPurge(q QueueRef, spans []Span) error {
	k := purgeKey(q)
	spans = normalizeSpans(spans)
	for i := range g.drains {
		j := &g.drains[i]
		if j.marker == nil || !bytes.Equal(j.marker, k) {
			continue
		}
		// A second purge of the queue in this transaction: one marker covers both.
		if j.spans == nil || spans == nil {
			j.spans = nil
		} else {
			j.spans = normalizeSpans(append(j.spans, spans...))
		}
		return g.txn.Set(k, encodeSpans(j.spans))
	}
	if err := g.txn.Set(k, encodeSpans(spans)); err != nil {
		return err
	}
	g.drains = append(g.drains, drainJob{prefix: indexPrefix(q), spans: spans, index: true, marker: k})
	g.cut = true
	return nil
}

// normalizeSpans sorts spans and merges overlapping and adjacent ones (nil stays nil), so
// that a drain visits every key once.
func normalizeSpans(spans []Span) []Span {
	if spans == nil {
		return nil
	}
	out := slices.Clone(spans)
	slices.SortFunc(out, func(a, b Span) int { return cmp.Compare(a.From, b.From) })
	n := 0
	for _, sp := range out {
		if sp.To < sp.From {
			continue
		}
		if n > 0 && (out[n-1].To == math.MaxUint64 || sp.From <= out[n-1].To+1) {
			out[n-1].To = max(out[n-1].To, sp.To)
			continue
		}
		out[n] = sp
		n++
	}
	return out[:n]
}

// drainJob deletes the keys under prefix (a queue's index, or a page space) whose sequence
// number lies in spans (nil = all). For an index, the messages lose a reference and the
// purge marker is deleted at the end.
type drainJob struct {
	prefix []byte
	spans  []Span
	index  bool
	marker []byte
}

// drain runs j in bounded transactions. It runs on the journal goroutine (or in Open),
// never concurrently with a group.
func (s *Store) drain(j drainJob) error {
	spans := j.spans
	if spans == nil {
		spans = []Span{{0, math.MaxUint64}}
	}
	chunk := s.drainChunkFor(j.prefix)
	si, next := 0, spans[0].From
	plen := len(j.prefix)
	for {
		g := s.newGroup()
		type ent struct {
			k []byte
			v indexValue
		}
		ents := make([]ent, 0, min(chunk, 256))
		opt := badger.DefaultIteratorOptions
		opt.Prefix = j.prefix
		opt.PrefetchValues = j.index
		iter := g.txn.NewIterator(opt)
		var err error
	spanLoop:
		for si < len(spans) && len(ents) < chunk {
			iter.Seek(seqKey(j.prefix, next))
			for ; iter.Valid(); iter.Next() {
				item := iter.Item()
				k := item.Key()
				if len(k) != plen+8 {
					err = fmt.Errorf("key %x: %w", k, errCorrupt)
					break spanLoop
				}
				seq := beUint64(k[plen:])
				if seq > spans[si].To {
					break
				}
				if len(ents) == chunk {
					next = seq
					break spanLoop
				}
				e := ent{k: item.KeyCopy(nil)}
				if j.index {
					err = item.Value(func(b []byte) error {
						var err error
						e.v, err = decodeIndex(b)
						return err
					})
					if err != nil {
						break spanLoop
					}
				}
				ents = append(ents, e)
			}
			si++
			if si < len(spans) {
				next = spans[si].From
			}
		}
		iter.Close()
		last := si >= len(spans)
		for _, e := range ents {
			if err != nil {
				break
			}
			if err = g.txn.Delete(e.k); err == nil && j.index {
				err = g.decref(e.v)
			}
		}
		if err == nil && last && j.marker != nil {
			err = g.txn.Delete(j.marker)
		}
		if err == nil && s.res != nil {
			err = s.res.ensure(0) // the deletes may fill the memtable and start the next
		}
		if err == nil {
			err = g.txn.Commit()
		} else {
			g.txn.Discard()
		}
		if err != nil {
			if j.marker != nil {
				q, name, _, _ := decodeQueueKey(j.marker)
				return fmt.Errorf("purge queue %q in vhost %q: %w", name, q, err)
			}
			return fmt.Errorf("drop pages: %w", err)
		}
		s.merge(g)
		if last {
			return nil
		}
	}
}

// drainChunkFor sizes purge transactions to stay well inside badger's limits: each entry
// costs an index delete, possibly a message delete and a refcount update.
func (s *Store) drainChunkFor(prefix []byte) int {
	perEntry := int64(3 * (len(prefix) + 8 + 64))
	n := min(int64(drainChunk), s.db.MaxBatchCount()/4, s.db.MaxBatchSize()/perEntry)
	return int(max(n, 1))
}
