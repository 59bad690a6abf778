package persistence

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/dgraph-io/badger/v4"
)

// Delayed messages (x-delayed-message exchanges) wait in a due-time index until they are
// routed. Two key spaces, written through the journal so that they are ordered with message
// batches and topology changes:
//
//	'w' due(8) seq(8) incarnation(8) -> str(vhost) str(exchange) str(routing key) bytes(header)
//	                                    bytes(body), zero-padded to valueThreshold
//	'X' str(vhost) str(exchange)     -> incarnation(8): the durable delayed exchanges
//
// due is unix milliseconds and seq a tie-breaker, both big-endian, so Badger's key order is
// due order. An incarnation names one life of an exchange: a delayed exchange deleted and
// declared again under the same name gets a new one, so dropping the old one's messages in
// the background can never touch the new one's. Keys alone (no value read) give an
// incarnation's messages for a drop and the summary at start.
//
// Values are padded to valueThreshold so that every message goes to the value log: the LSM
// tree (whose memtables, flushes and compactions are all in memory while they run) then moves
// only 25-byte keys and value pointers, which is what keeps a million held messages' memory
// small.
const (
	pfxDelayed   = 'w'
	pfxDelayedEx = 'X'
)

// DelayedKey identifies a held message: its due time (unix ms) and a sequence number that
// makes keys unique, plus the incarnation of its exchange (for the by-exchange entry).
type DelayedKey struct {
	Due         int64
	Seq         uint64
	Incarnation uint64
}

// Less orders keys by due time, then sequence.
func (k DelayedKey) Less(o DelayedKey) bool {
	if k.Due != o.Due {
		return k.Due < o.Due
	}
	return k.Seq < o.Seq
}

// Delayed is a message held by a delayed exchange.
type Delayed struct {
	Key        DelayedKey
	VHost      string
	Exchange   string
	RoutingKey string
	Header     []byte // raw content header, as it will be delivered
	Body       []byte
}

func delayedKey(k DelayedKey) []byte {
	b := make([]byte, delayedKeyLen)
	b[0] = pfxDelayed
	binary.BigEndian.PutUint64(b[1:], uint64(k.Due))
	binary.BigEndian.PutUint64(b[9:], k.Seq)
	binary.BigEndian.PutUint64(b[17:], k.Incarnation)
	return b
}

const delayedKeyLen = 25

func decodeDelayedKey(b []byte) (DelayedKey, error) {
	if len(b) != delayedKeyLen || b[0] != pfxDelayed {
		return DelayedKey{}, fmt.Errorf("delayed message key %x: %w", b, errCorrupt)
	}
	return DelayedKey{Due: int64(beUint64(b[1:])), Seq: beUint64(b[9:]), Incarnation: beUint64(b[17:])}, nil
}

func delayedExKey(vhost, name string) []byte {
	return queueKey([]byte{pfxDelayedEx}, vhost, name)
}

func encodeDelayed(d *Delayed) []byte {
	n := len(d.VHost) + len(d.Exchange) + len(d.RoutingKey) + len(d.Header) + len(d.Body) + 30
	v := make([]byte, 0, max(n, valueThreshold))
	v = appendStr(v, d.VHost)
	v = appendStr(v, d.Exchange)
	v = appendStr(v, d.RoutingKey)
	v = appendBytes(v, d.Header)
	v = appendBytes(v, d.Body)
	for len(v) < valueThreshold {
		v = append(v, 0)
	}
	return v
}

func decodeDelayed(k, v []byte) (Delayed, error) {
	key, err := decodeDelayedKey(k)
	if err != nil {
		return Delayed{}, err
	}
	d := Delayed{Key: key}
	dec := decoder{b: v}
	d.VHost = dec.str()
	d.Exchange = dec.str()
	d.RoutingKey = dec.str()
	d.Header = cloneBytes(dec.bytes())
	d.Body = cloneBytes(dec.bytes())
	if dec.err != nil {
		return Delayed{}, fmt.Errorf("delayed message %x: %w", k, dec.err)
	}
	return d, nil
}

// delayedSize approximates the memory a held message costs in the journal's queue.
func delayedSize(ds []Delayed) int64 {
	var n int64
	for i := range ds {
		n += int64(len(ds[i].Header)+len(ds[i].Body)+len(ds[i].RoutingKey)) + messageOverhead
	}
	return n
}

// estimateDelayed is estimate (journal.go) for held messages: one entry each, its value in
// the value log (padded to valueThreshold).
func estimateDelayed(ds []Delayed) (count, size int64) {
	const ptr, meta = 12, 2
	return int64(len(ds)), int64(len(ds)) * (delayedKeyLen + meta + ptr)
}

// vlogDelayed is vlogBytes (reserve.go) for held messages: all of them go to the value log.
func vlogDelayed(ds []Delayed) int64 {
	const overhead = 64 // key, value encoding, badger's header and checksum
	var n int64
	for i := range ds {
		d := &ds[i]
		n += max(int64(len(d.VHost)+len(d.Exchange)+len(d.RoutingKey)+len(d.Header)+len(d.Body)+30),
			valueThreshold) + overhead
	}
	return n
}

// putDelayed writes held messages in the group's transaction.
func (g *group) putDelayed(ds []Delayed) error {
	for i := range ds {
		if err := g.txn.Set(delayedKey(ds[i].Key), encodeDelayed(&ds[i])); err != nil {
			return err
		}
	}
	return nil
}

// PutDelayedAsync stores held messages; done runs once they are durable. Like every journal
// write it is ordered with the writes submitted before and after it, and like a publish it
// is refused while disk space is low.
func (s *Store) PutDelayedAsync(ds []Delayed, done func(error)) {
	s.submit(request{delayed: ds, size: delayedSize(ds), done: done})
}

// SubmitWithDelayed is Submit for a batch that is written together with held messages, in
// one transaction: both are durable or neither is (a transaction's publishes, acks and
// delayed publishes). Neither b nor ds may be modified until done is called.
func (s *Store) SubmitWithDelayed(b *Batch, ds []Delayed, done func(error)) {
	s.submit(request{batch: b, delayed: ds, size: b.queuedBytes() + delayedSize(ds), done: done})
}

// RemoveDelayedAsync deletes held messages (routed, or of a deleted exchange). Submitted
// after the publish batch of their routed copies, it commits with or after that batch: a
// crash in between delivers a message twice, never loses it.
func (s *Store) RemoveDelayedAsync(keys []DelayedKey, done func(error)) {
	s.submit(request{op: func(g *group) error {
		for _, k := range keys {
			if err := g.txn.Delete(delayedKey(k)); err != nil {
				return err
			}
		}
		return nil
	}, done: done})
}

// ReadDelayed reads, in key order, up to max held messages with a key after from and a due
// time no later than upTo, from a snapshot: it does not wait for the journal, and it sees the
// writes committed before it started (a caller that needs the ones in flight keeps them, see
// broker/delayed.go). capped reports that max cut the read short.
func (s *Store) ReadDelayed(from DelayedKey, upTo int64, max int) (out []Delayed, capped bool, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte{pfxDelayed}
		opt.PrefetchSize = min(max, 100)
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Seek(delayedKey(DelayedKey{Due: from.Due, Seq: from.Seq})); it.Valid(); it.Next() {
			item := it.Item()
			k := item.Key()
			key, err := decodeDelayedKey(k)
			if err != nil {
				return err
			}
			if !from.Less(key) {
				continue // from itself, under any incarnation
			}
			if key.Due > upTo {
				break
			}
			if len(out) >= max {
				capped = true
				break
			}
			var d Delayed
			err = item.Value(func(v []byte) error {
				var err error
				d, err = decodeDelayed(k, v)
				return err
			})
			if err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("persistence: reading delayed messages: %w", err)
	}
	return out, capped, nil
}

// PutDelayedExchangeAsync records a durable delayed exchange's incarnation.
func (s *Store) PutDelayedExchangeAsync(vhost, name string, inc uint64, done func(error)) {
	s.submit(request{op: func(g *group) error {
		return g.txn.Set(delayedExKey(vhost, name), binary.BigEndian.AppendUint64(nil, inc))
	}, done: done})
}

// DeleteDelayedExchangeAsync forgets a durable delayed exchange's incarnation; its messages
// are dropped by DropDelayed.
func (s *Store) DeleteDelayedExchangeAsync(vhost, name string, done func(error)) {
	s.submit(request{op: func(g *group) error {
		return g.txn.Delete(delayedExKey(vhost, name))
	}, done: done})
}

// dropDelayedChunk bounds the entries one DropDelayedChunk transaction deletes, and
// dropDelayedScan the keys it looks at.
const (
	dropDelayedChunk = 5000
	dropDelayedScan  = 200_000
)

// DropDelayedChunk deletes, in one transaction, the held messages of an incarnation among the
// keys from from on (at most dropDelayedChunk deletions, dropDelayedScan keys looked at). It
// returns how many it deleted and where to go on; done when it reached the end. A caller
// drops an exchange's messages by calling it until done; a crash part-way leaves the rest,
// which LoadDelayed's Incarnations lists again.
func (s *Store) DropDelayedChunk(inc uint64, from DelayedKey) (n int, next DelayedKey, done bool, err error) {
	err = s.do(func(g *group) error {
		n, next, done = 0, from, true
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte{pfxDelayed}
		opt.PrefetchValues = false
		it := g.txn.NewIterator(opt)
		var keys [][]byte
		scanned := 0
		for it.Seek(delayedKey(from)); it.Valid(); it.Next() {
			k := it.Item().Key()
			key, err := decodeDelayedKey(k)
			if err != nil {
				it.Close()
				return err
			}
			if len(keys) >= dropDelayedChunk || scanned >= dropDelayedScan {
				next, done = key, false
				break
			}
			scanned++
			if key.Incarnation == inc {
				keys = append(keys, it.Item().KeyCopy(nil))
			}
		}
		it.Close()
		for _, k := range keys {
			if err := g.txn.Delete(k); err != nil {
				return err
			}
		}
		n = len(keys)
		return nil
	})
	if err != nil {
		return 0, from, false, fmt.Errorf("dropping delayed messages of incarnation %d: %w", inc, err)
	}
	return n, next, done, nil
}

// DelayedState is what Open's caller needs to resume delayed exchanges.
type DelayedState struct {
	// Exchanges maps the durable delayed exchanges (vhost, name) to their incarnations.
	Exchanges map[[2]string]uint64
	// Incarnations are those that have held messages on disk, each once.
	Incarnations []uint64
	// Last is the key of the last held message (by due time), Count the held messages.
	Last  DelayedKey
	Count int64
}

// LoadDelayed reads the delayed exchanges' incarnations and summarises their held messages
// from the keys alone (no message is read).
func (s *Store) LoadDelayed() (DelayedState, error) {
	st := DelayedState{Exchanges: map[[2]string]uint64{}}
	err := s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte{pfxDelayedEx}
		it := txn.NewIterator(opt)
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			k := item.Key()
			d := decoder{b: k[1:]}
			vhost, name := d.str(), d.str()
			if d.err != nil || len(d.b) != 0 {
				it.Close()
				return fmt.Errorf("delayed exchange key %x: %w", k, errCorrupt)
			}
			err := item.Value(func(v []byte) error {
				if len(v) != 8 {
					return fmt.Errorf("delayed exchange %q: %w", name, errCorrupt)
				}
				st.Exchanges[[2]string{vhost, name}] = beUint64(v)
				return nil
			})
			if err != nil {
				it.Close()
				return err
			}
		}
		it.Close()

		opt = badger.DefaultIteratorOptions
		opt.Prefix = []byte{pfxDelayed}
		opt.PrefetchValues = false
		it = txn.NewIterator(opt)
		defer it.Close()
		seen := map[uint64]bool{}
		for it.Rewind(); it.Valid(); it.Next() {
			key, err := decodeDelayedKey(it.Item().Key())
			if err != nil {
				return err
			}
			st.Count++
			st.Last = key
			if !seen[key.Incarnation] {
				seen[key.Incarnation] = true
				st.Incarnations = append(st.Incarnations, key.Incarnation)
			}
		}
		slices.Sort(st.Incarnations)
		return nil
	})
	return st, err
}
