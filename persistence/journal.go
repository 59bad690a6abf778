package persistence

import (
	"encoding/binary"
	"errors"
	"fmt"

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

// request is one unit of journal work: a Batch or a topology change.
type request struct {
	batch *Batch
	op    func(g *group) error
	done  func(error)
}

// Submit queues b for the journal goroutine, which groups the batches of all callers into
// one badger transaction and one sync (group commit), then calls done(err) for each of
// them in submission order. Each Batch is atomic; a group is split only between Batches.
// done runs on the journal goroutine and must not block (nor call Commit). After Close,
// done(ErrClosed) is called at once on the caller's goroutine. b must not be modified
// until done is called.
func (s *Store) Submit(b *Batch, done func(error)) {
	s.submit(request{batch: b, done: done})
}

// Commit submits b and waits until it is durable (or failed).
func (s *Store) Commit(b *Batch) error {
	ch := make(chan error, 1)
	s.Submit(b, func(err error) { ch <- err })
	return <-ch
}

func (s *Store) submit(r request) {
	if r.done == nil {
		r.done = func(error) {}
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		r.done(ErrClosed)
		return
	}
	s.pending = append(s.pending, r)
	s.cond.Signal()
	s.mu.Unlock()
}

// do runs a topology change through the journal and waits for it to be durable; going
// through the journal serialises it with message batches (DeleteQueue vs. publishes).
func (s *Store) do(op func(g *group) error) error {
	ch := make(chan error, 1)
	s.submit(request{op: op, done: func(err error) { ch <- err }})
	return <-ch
}

func (s *Store) journal() {
	defer close(s.journalDone)
	for {
		s.mu.Lock()
		for len(s.pending) == 0 && !s.closing {
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
		s.mu.Unlock()

		s.process(reqs)

		clear(reqs)
		s.mu.Lock()
		s.spare = reqs[:0]
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

// group is one journal transaction under construction. Reference-count changes are kept
// in delta until the commit succeeds, so a failed or abandoned transaction leaves refs intact.
type group struct {
	s         *Store
	txn       *badger.Txn
	delta     map[uint64]int64
	drains    []QueueRef
	publishes int
	maxID     uint64
	estCount  int64 // estimated badger entries / bytes so far, to cut before ErrTxnTooBig
	estSize   int64
}

func (s *Store) newGroup() *group {
	return &group{s: s, txn: s.db.NewTransaction(true), delta: make(map[uint64]int64), maxID: s.maxID.Load()}
}

// commitGroup commits a non-empty prefix of reqs in one transaction and returns its length.
func (s *Store) commitGroup(reqs []request) int {
	g := s.newGroup()
	n := 0
	var applyErr error
	// Cut groups at 80% of badger's limits by estimate, so ErrTxnTooBig (which costs a
	// rebuild of the transaction) is the exception.
	limCount, limSize := s.db.MaxBatchCount()*4/5, s.db.MaxBatchSize()*4/5
	for j, r := range reqs {
		if r.batch != nil {
			if err := validateBatch(r.batch); err != nil {
				if j == 0 {
					g.txn.Discard()
					r.done(err)
					return 1
				}
				break // nothing of r applied: commit the others, r fails alone next round
			}
			c, sz := estimate(r.batch)
			if j > 0 && (g.estCount+c > limCount || g.estSize+sz > limSize) {
				break
			}
			g.estCount += c
			g.estSize += sz
			applyErr = g.applyBatch(r.batch)
		} else {
			applyErr = r.op(g)
		}
		if applyErr != nil {
			break
		}
		n = j + 1
		// A purge is finished (drain) right after its commit; later requests must not share
		// its transaction, or the drain would delete entries they add.
		if len(g.drains) > 0 || n >= maxGroup {
			break
		}
	}
	if applyErr != nil {
		// A transaction cannot roll back one request, so start over without it.
		g.txn.Discard()
		if n == 0 {
			if errors.Is(applyErr, badger.ErrTxnTooBig) {
				applyErr = fmt.Errorf("batch too large for one transaction: %w", applyErr)
			}
			reqs[0].done(fmt.Errorf("persistence: %w", applyErr))
			return 1
		}
		return s.commitGroup(reqs[:n])
	}
	if err := g.txn.Commit(); err != nil {
		s.failed = err
		s.log.Error("journal commit failed; store is now read-only", "dir", s.dir, "err", err)
		err = fmt.Errorf("persistence: commit to %s: %w", dirName(s.dir), err)
		for _, r := range reqs[:n] {
			r.done(err)
		}
		return n
	}
	s.merge(g)
	var drainErr error
	for _, q := range g.drains {
		if err := s.drain(q); err != nil {
			s.failed = err
			s.log.Error("purge failed; store is now read-only", "dir", s.dir, "err", err)
			drainErr = fmt.Errorf("persistence: purge in %s: %w", dirName(s.dir), err)
			break
		}
	}
	s.statsMu.Lock()
	s.stats.Commits++
	s.stats.Batches += uint64(n)
	s.stats.Publishes += uint64(g.publishes)
	s.stats.MaxBatchesPerCommit = max(s.stats.MaxBatchesPerCommit, n)
	s.stats.MaxPublishesPerCommit = max(s.stats.MaxPublishesPerCommit, g.publishes)
	s.statsMu.Unlock()
	for _, r := range reqs[:n] {
		r.done(drainErr)
	}
	return n
}

// merge applies a committed group's refcount changes and id high-water mark.
func (s *Store) merge(g *group) {
	for id, d := range g.delta {
		n := int64(s.refs[id]) + d
		if n <= 0 {
			delete(s.refs, id)
		} else {
			s.refs[id] = uint32(n)
		}
	}
	if g.maxID > s.maxID.Load() {
		s.maxID.Store(g.maxID)
	}
	before := s.nstored.Swap(int64(len(s.refs)))
	if d := before - int64(len(s.refs)); d > 0 {
		s.removedSinceGC += int(d)
		if s.removedSinceGC >= gcAfterDeletes {
			s.removedSinceGC = 0
			s.kickGC()
		}
	}
}

func (g *group) refcount(id uint64) int64 { return int64(g.s.refs[id]) + g.delta[id] }

func (g *group) incref(id uint64) { g.delta[id]++ }

// decref drops one reference and deletes the message with its last one.
func (g *group) decref(id uint64) error {
	g.delta[id]--
	if g.refcount(id) <= 0 {
		return g.txn.Delete(messageKey(id))
	}
	return nil
}

// getIndex reads an index entry as the transaction sees it (its own writes included).
func (g *group) getIndex(k []byte) (msgID uint64, count uint32, ok bool, err error) {
	item, err := g.txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, 0, false, nil
	}
	if err != nil {
		return 0, 0, false, fmt.Errorf("read index entry: %w", err)
	}
	err = item.Value(func(v []byte) error {
		msgID, count, err = decodeIndexValue(v)
		return err
	})
	if err != nil {
		return 0, 0, false, fmt.Errorf("read index entry: %w", err)
	}
	return msgID, count, true, nil
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
	return nil
}

// estimate approximates the badger entries and bytes b adds to a transaction, the way
// badger counts them (key + value + meta, or a value pointer for big values).
func estimate(b *Batch) (count, size int64) {
	const ptr, meta, idxVal, msgKey = 12, 2, indexValueLen, 9
	entry := func(q QueueRef) int64 { return int64(len(q.VHost) + len(q.Queue) + 4 + 8) }
	for _, p := range b.Publishes {
		if len(p.Entries) == 0 {
			continue
		}
		v := int64(len(p.Msg.Exchange) + len(p.Msg.RoutingKey) + len(p.Msg.Header) + len(p.Msg.Body) + 12)
		if v > valueThreshold {
			v = ptr
		}
		count++
		size += msgKey + v + meta
		for _, e := range p.Entries {
			count += 2 // the entry, and maybe the delete of a replaced entry's message
			size += entry(e.Queue) + idxVal + meta + msgKey + meta
		}
	}
	count += int64(len(b.Deliveries)) + 2*int64(len(b.Removes)) + int64(len(b.PurgeQueues)) + 1
	for _, d := range b.Deliveries {
		size += entry(d.Entry.Queue) + idxVal + meta
	}
	for _, e := range b.Removes {
		size += entry(e.Queue) + meta + msgKey + meta
	}
	for _, q := range b.PurgeQueues {
		size += entry(q) + meta
	}
	return count, size + 16
}

func (g *group) applyBatch(b *Batch) error {
	idBefore := g.maxID
	for _, p := range b.Publishes {
		if len(p.Entries) == 0 {
			continue
		}
		id := p.Msg.ID
		for _, e := range p.Entries {
			k := indexKey(e.Queue, e.Seq)
			old, _, ok, err := g.getIndex(k)
			if err != nil {
				return err
			}
			if ok {
				if err := g.decref(old); err != nil {
					return err
				}
			}
			if err := g.txn.Set(k, encodeIndexValue(id, 0)); err != nil {
				return err
			}
			g.incref(id)
		}
		if err := g.txn.Set(messageKey(id), encodeMessage(p.Msg)); err != nil {
			return err
		}
		g.publishes++
		g.maxID = max(g.maxID, id)
	}
	if g.maxID != idBefore {
		if err := g.txn.Set(keyMaxID, binary.BigEndian.AppendUint64(nil, g.maxID)); err != nil {
			return err
		}
	}
	for _, d := range b.Deliveries {
		k := indexKey(d.Entry.Queue, d.Entry.Seq)
		id, _, ok, err := g.getIndex(k)
		if err != nil {
			return err
		}
		if ok {
			if err := g.txn.Set(k, encodeIndexValue(id, d.Count)); err != nil {
				return err
			}
		}
	}
	for _, e := range b.Removes {
		k := indexKey(e.Queue, e.Seq)
		id, _, ok, err := g.getIndex(k)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if err := g.txn.Delete(k); err != nil {
			return err
		}
		if err := g.decref(id); err != nil {
			return err
		}
	}
	for _, q := range b.PurgeQueues {
		if err := g.markPurge(q); err != nil {
			return err
		}
	}
	return nil
}

// markPurge records, atomically with the rest of the transaction, that all of q's index
// entries are to be deleted; the journal deletes them (drain) in bounded transactions
// right after the commit, and Open finishes the job if a crash interrupts it.
func (g *group) markPurge(q QueueRef) error {
	if err := g.txn.Set(purgeKey(q), nil); err != nil {
		return err
	}
	g.drains = append(g.drains, q)
	return nil
}

// drain deletes q's index entries (and messages losing their last reference) in chunks,
// then the purge marker. It runs on the journal goroutine (or in Open), never concurrently
// with a group.
func (s *Store) drain(q QueueRef) error {
	prefix := indexPrefix(q)
	chunk := s.drainChunkFor(prefix)
	for {
		g := s.newGroup()
		type ent struct {
			k  []byte
			id uint64
		}
		ents := make([]ent, 0, 256)
		opt := badger.DefaultIteratorOptions
		opt.Prefix = prefix
		iter := g.txn.NewIterator(opt)
		var err error
		for iter.Rewind(); iter.Valid() && len(ents) < chunk; iter.Next() {
			item := iter.Item()
			var id uint64
			err = item.Value(func(v []byte) error {
				var err error
				id, _, err = decodeIndexValue(v)
				return err
			})
			if err != nil {
				break
			}
			ents = append(ents, ent{k: item.KeyCopy(nil), id: id})
		}
		iter.Close()
		last := len(ents) < chunk
		for _, e := range ents {
			if err != nil {
				break
			}
			if err = g.txn.Delete(e.k); err == nil {
				err = g.decref(e.id)
			}
		}
		if err == nil && last {
			err = g.txn.Delete(purgeKey(q))
		}
		if err == nil {
			err = g.txn.Commit()
		} else {
			g.txn.Discard()
		}
		if err != nil {
			return fmt.Errorf("purge queue %q in vhost %q: %w", q.Queue, q.VHost, err)
		}
		s.merge(g)
		if last {
			break
		}
	}
	return nil
}

// drainChunkFor sizes purge transactions to stay well inside badger's limits: each entry
// costs an index delete and possibly a message delete.
func (s *Store) drainChunkFor(prefix []byte) int {
	perEntry := int64(2 * (len(prefix) + 8 + 64))
	n := min(int64(drainChunk), s.db.MaxBatchCount()/3, s.db.MaxBatchSize()/perEntry)
	return int(max(n, 1))
}
