package persistence

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
)

// NewPageSpace returns a page space id for one queue's transient pages, unique until the
// store is closed (pages do not outlive it).
func (s *Store) NewPageSpace() uint64 { return s.pageSpaces.Add(1) }

// ReadAhead reads a queue's next entries (see ReadRequest) on the store's reader
// goroutine and passes them to done there, never on the caller's goroutine, so a caller
// may hold its own lock across ReadAhead that done then takes. The read starts only
// after everything submitted before ReadAhead is committed, so it sees those writes.
// Pages it returns are deleted from the store: they are the caller's now. With an error
// (store closed or failed) done gets no entries.
func (s *Store) ReadAhead(r ReadRequest, done func([]Stored, error)) {
	job := readJob{req: r, done: done}
	// The barrier: an empty request through the journal, which commits in order.
	s.submit(request{op: func(*group) error { return nil }, done: func(err error) {
		job.err = err
		s.reads.push(job)
	}})
}

type readJob struct {
	req  ReadRequest
	done func([]Stored, error)
	err  error
}

// readQueue feeds the reader goroutine.
type readQueue struct {
	mu      sync.Mutex
	cond    *sync.Cond
	jobs    []readJob
	closed  bool
	stopped chan struct{}

	served, entries atomic.Uint64
}

func (q *readQueue) init() {
	q.cond = sync.NewCond(&q.mu)
	q.stopped = make(chan struct{})
}

func (q *readQueue) push(j readJob) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		go j.done(nil, ErrClosed)
		return
	}
	q.jobs = append(q.jobs, j)
	q.cond.Signal()
	q.mu.Unlock()
}

// close fails the jobs still queued and waits for the reader to stop.
func (q *readQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
	<-q.stopped
}

func (s *Store) reader() {
	q := &s.reads
	defer close(q.stopped)
	for {
		q.mu.Lock()
		for len(q.jobs) == 0 && !q.closed {
			q.cond.Wait()
		}
		jobs := q.jobs
		q.jobs = nil
		closed := q.closed
		q.mu.Unlock()
		for _, j := range jobs {
			if closed {
				j.done(nil, ErrClosed)
				continue
			}
			if j.err != nil {
				j.done(nil, j.err)
				continue
			}
			out, err := s.read(j.req)
			q.served.Add(1)
			q.entries.Add(uint64(len(out)))
			j.done(out, err)
		}
		if closed {
			return
		}
	}
}

// read merges a queue's durable index and page space from r.From on, and hands the pages
// it read over to the caller by deleting them.
func (s *Store) read(r ReadRequest) ([]Stored, error) {
	var out []Stored
	var pages []Span
	err := s.db.View(func(txn *badger.Txn) error {
		var idx, pg *cursor
		if r.Durable {
			idx = newCursor(txn, indexPrefix(r.Queue), r.From, r.Max)
			defer idx.close()
		}
		if r.Space != 0 {
			pg = newCursor(txn, pagePrefix(r.Space), r.From, r.Max)
			defer pg.close()
		}
		var msgs *msgCursor
		var bytes int64
		for len(out) < r.Max && (bytes < r.MaxBytes || len(out) == 0) {
			iseq, iok, err := idx.peek()
			if err != nil {
				return err
			}
			pseq, pok, err := pg.peek()
			if err != nil {
				return err
			}
			var st Stored
			switch {
			case iok && (!pok || iseq < pseq):
				if msgs == nil {
					msgs = newMsgCursor(txn)
					defer msgs.it.Close()
				}
				if st, err = idx.entry(msgs); err != nil {
					return err
				}
				st.MaybeDelivered = s.maybeDelivered(st.Msg.ID)
			case pok:
				if st, err = pg.page(); err != nil {
					return err
				}
				if n := len(pages); n > 0 && pages[n-1].To+1 == st.Seq {
					pages[n-1].To = st.Seq
				} else {
					pages = append(pages, Span{st.Seq, st.Seq})
				}
			default:
				return nil
			}
			out = append(out, st)
			bytes += int64(len(st.Msg.Body))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("persistence: read queue %q in vhost %q from %s: %w", r.Queue.Queue, r.Queue.VHost, dirName(s.dir), err)
	}
	if len(pages) > 0 {
		s.Submit(&Batch{DropPages: []PageDrop{{Space: r.Space, Spans: pages}}}, nil)
	}
	return out, nil
}

// maybeDelivered reports whether message id was stored before an unclean stop (see
// Stored.MaybeDelivered); ids start at 1, so 0 means none.
func (s *Store) maybeDelivered(id uint64) bool { return s.recovered != 0 && id <= s.recovered }

// cursor walks the 8-byte sequence numbers under one prefix (a queue's index or a page
// space). A nil cursor is empty.
type cursor struct {
	it     *badger.Iterator
	prefix []byte
}

// newCursor starts at from; it reads at most want values ahead (page values are large).
func newCursor(txn *badger.Txn, prefix []byte, from uint64, want int) *cursor {
	opt := badger.DefaultIteratorOptions
	opt.Prefix = prefix
	opt.PrefetchSize = max(1, min(want, 64))
	c := &cursor{it: txn.NewIterator(opt), prefix: prefix}
	c.it.Seek(seqKey(prefix, from))
	return c
}

// seqKey is prefix followed by seq, big-endian, in a new slice.
func seqKey(prefix []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(slices.Clip(prefix), seq)
}

func (c *cursor) close() { c.it.Close() }

func (c *cursor) peek() (uint64, bool, error) {
	if c == nil || !c.it.Valid() {
		return 0, false, nil
	}
	k := c.it.Item().Key()
	if len(k) != len(c.prefix)+8 {
		return 0, false, fmt.Errorf("key %x: %w", k, errCorrupt)
	}
	return beUint64(k[len(c.prefix):]), true, nil
}

// entry decodes the index entry under the cursor, reads its message and advances.
func (c *cursor) entry(msgs *msgCursor) (Stored, error) {
	seq, _, _ := c.peek()
	var v indexValue
	err := c.it.Item().Value(func(b []byte) error {
		var err error
		v, _, err = decodeIndexValue(b)
		return err
	})
	if err != nil {
		return Stored{}, fmt.Errorf("index entry %d: %w", seq, err)
	}
	m, err := msgs.read(v.msgID)
	if err != nil {
		return Stored{}, fmt.Errorf("entry %d: %w", seq, err)
	}
	c.it.Next()
	return Stored{
		Seq: seq, Msg: m, Deliveries: v.deliveries, ExpiresAt: v.expiresAt,
		ExpiryUnknown: v.flags&idxExpiryUnknown != 0, Durable: true, Shared: v.shared(), Persistent: true,
	}, nil
}

// page decodes the page under the cursor and advances.
func (c *cursor) page() (Stored, error) {
	seq, _, _ := c.peek()
	v, err := c.it.Item().ValueCopy(nil)
	if err != nil {
		return Stored{}, fmt.Errorf("page %d: %w", seq, err)
	}
	c.it.Next()
	return decodePage(seq, v)
}

// RecoverQueue passes q's first limit entries (all when limit <= 0), in ascending Seq with
// their messages, to fn and summarises the whole queue, reading only index values past
// the limit. An error from fn stops the scan and is returned as is.
func (s *Store) RecoverQueue(q QueueRef, limit int, fn func(Stored) error) (QueueInfo, error) {
	if limit <= 0 {
		limit = math.MaxInt
	}
	var info QueueInfo
	var fnErr error
	err := s.db.View(func(txn *badger.Txn) error {
		c := newCursor(txn, indexPrefix(q), 0, limit)
		defer c.close()
		// Messages of one queue are mostly in id order, so a second cursor stepping through
		// the messages beats a point lookup per entry (which decodes a block each time).
		msgs := newMsgCursor(txn)
		defer msgs.it.Close()
		for {
			seq, ok, err := c.peek()
			if err != nil || !ok {
				return err
			}
			if info.Count < int64(limit) {
				st, err := c.entry(msgs)
				if err != nil {
					return err
				}
				st.MaybeDelivered = s.maybeDelivered(st.Msg.ID)
				if err := fn(st); err != nil {
					fnErr = err
					return err
				}
				info.Bytes += int64(len(st.Msg.Body))
			} else {
				err := c.it.Item().Value(func(b []byte) error {
					v, _, err := decodeIndexValue(b)
					info.Bytes += int64(v.size)
					return err
				})
				if err != nil {
					return fmt.Errorf("index entry %d: %w", seq, err)
				}
				c.it.Next()
			}
			info.Count++
			info.MaxSeq = seq
		}
	})
	if fnErr != nil {
		return QueueInfo{}, fnErr
	}
	if err != nil {
		return QueueInfo{}, fmt.Errorf("persistence: recover queue %q in vhost %q from %s: %w", q.Queue, q.VHost, dirName(s.dir), err)
	}
	return info, nil
}

func newMsgCursor(txn *badger.Txn) *msgCursor {
	opt := badger.DefaultIteratorOptions
	opt.Prefix = []byte{pfxMessage}
	opt.PrefetchValues = false
	return &msgCursor{it: txn.NewIterator(opt)}
}

// msgCursor reads messages by id through one iterator, stepping forward when the next id
// is the next key and seeking otherwise.
type msgCursor struct {
	it      *badger.Iterator
	started bool
}

func (c *msgCursor) read(id uint64) (*Message, error) {
	key := messageKey(id)
	switch {
	case !c.started || !c.it.Valid():
		c.it.Seek(key)
		c.started = true
	default:
		switch cmp := bytes.Compare(c.it.Item().Key(), key); {
		case cmp < 0:
			c.it.Next()
			if !c.it.Valid() || bytes.Compare(c.it.Item().Key(), key) < 0 {
				c.it.Seek(key)
			}
		case cmp > 0:
			c.it.Seek(key)
		}
	}
	if !c.it.Valid() || !bytes.Equal(c.it.Item().Key(), key) {
		return nil, fmt.Errorf("message %d: %w", id, ErrNotFound)
	}
	v, err := c.it.Item().ValueCopy(nil)
	if err != nil {
		return nil, fmt.Errorf("message %d: %w", id, err)
	}
	return decodeMessage(id, v)
}

// MaxIndexSeq returns the largest sequence number of q's stored entries within from..to (ok
// false when there is none). A priority queue encodes each priority in a range of sequence
// numbers; on restart its owner asks for each range so that new entries of a priority continue
// after the stored ones, including those beyond the window it loaded. Page spaces need no
// lookup: they do not survive a restart.
func (s *Store) MaxIndexSeq(q QueueRef, from, to uint64) (seq uint64, ok bool, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = indexPrefix(q)
		opt.PrefetchValues = false
		opt.Reverse = true
		it := txn.NewIterator(opt)
		defer it.Close()
		c := &cursor{it: it, prefix: opt.Prefix}
		// In reverse, Seek lands on the largest key <= the one given.
		it.Seek(seqKey(opt.Prefix, to))
		n, valid, err := c.peek()
		if err != nil || !valid || n < from {
			return err
		}
		seq, ok = n, true
		return nil
	})
	if err != nil {
		return 0, false, fmt.Errorf("persistence: max seq of queue %q in vhost %q from %s: %w", q.Queue, q.VHost, dirName(s.dir), err)
	}
	return seq, ok, nil
}
