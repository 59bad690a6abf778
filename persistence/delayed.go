package persistence

import (
	"encoding/binary"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// Delayed messages (x-delayed-message exchanges) wait in a due-time index until they are
// routed. Three key spaces, all written through the journal so that they are ordered with
// message batches and topology changes:
//
//	'w' due(8) seq(8)             -> incarnation(8) str(vhost) str(exchange) str(routing key)
//	                                 bytes(header) body - the message, stored once
//	'W' incarnation(8) due(8) seq(8) -> empty: the same entry found by exchange, so deleting
//	                                 an exchange finds its messages without a full scan
//	'X' str(vhost) str(exchange)  -> incarnation(8): the durable delayed exchanges
//
// due is unix milliseconds and seq a tie-breaker, both big-endian, so Badger's key order is
// due order. An incarnation names one life of an exchange: a delayed exchange deleted and
// declared again under the same name gets a new one, so dropping the old one's messages in
// the background can never touch the new one's.
const (
	pfxDelayed     = 'w'
	pfxDelayedByEx = 'W'
	pfxDelayedEx   = 'X'
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

func delayedKey(due int64, seq uint64) []byte {
	k := make([]byte, 17)
	k[0] = pfxDelayed
	binary.BigEndian.PutUint64(k[1:], uint64(due))
	binary.BigEndian.PutUint64(k[9:], seq)
	return k
}

func delayedByExKey(inc uint64, due int64, seq uint64) []byte {
	k := make([]byte, 25)
	k[0] = pfxDelayedByEx
	binary.BigEndian.PutUint64(k[1:], inc)
	binary.BigEndian.PutUint64(k[9:], uint64(due))
	binary.BigEndian.PutUint64(k[17:], seq)
	return k
}

func delayedExKey(vhost, name string) []byte {
	return queueKey([]byte{pfxDelayedEx}, vhost, name)
}

func encodeDelayed(d *Delayed) []byte {
	v := make([]byte, 8, 8+len(d.VHost)+len(d.Exchange)+len(d.RoutingKey)+len(d.Header)+len(d.Body)+20)
	binary.BigEndian.PutUint64(v, d.Key.Incarnation)
	v = appendStr(v, d.VHost)
	v = appendStr(v, d.Exchange)
	v = appendStr(v, d.RoutingKey)
	v = appendBytes(v, d.Header)
	return append(v, d.Body...)
}

func decodeDelayed(k, v []byte) (Delayed, error) {
	if len(k) != 17 || len(v) < 8 {
		return Delayed{}, fmt.Errorf("delayed message %x: %w", k, errCorrupt)
	}
	d := Delayed{Key: DelayedKey{Due: int64(beUint64(k[1:])), Seq: beUint64(k[9:]), Incarnation: beUint64(v)}}
	dec := decoder{b: v[8:]}
	d.VHost = dec.str()
	d.Exchange = dec.str()
	d.RoutingKey = dec.str()
	d.Header = cloneBytes(dec.bytes())
	if dec.err != nil {
		return Delayed{}, fmt.Errorf("delayed message %x: %w", k, dec.err)
	}
	d.Body = cloneBytes(dec.b)
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

// PutDelayedAsync stores held messages; done runs once they are durable. Like every journal
// write it is ordered with the writes submitted before and after it.
func (s *Store) PutDelayedAsync(ds []Delayed, done func(error)) {
	s.submit(request{size: delayedSize(ds), op: func(g *group) error {
		for i := range ds {
			d := &ds[i]
			if err := g.txn.Set(delayedKey(d.Key.Due, d.Key.Seq), encodeDelayed(d)); err != nil {
				return err
			}
			if err := g.txn.Set(delayedByExKey(d.Key.Incarnation, d.Key.Due, d.Key.Seq), nil); err != nil {
				return err
			}
		}
		return nil
	}, done: done})
}

// RemoveDelayedAsync deletes held messages (routed, or of a deleted exchange). Submitted
// after the publish batch of their routed copies, it commits with or after that batch: a
// crash in between delivers a message twice, never loses it.
func (s *Store) RemoveDelayedAsync(keys []DelayedKey, done func(error)) {
	s.submit(request{op: func(g *group) error {
		for _, k := range keys {
			if err := g.txn.Delete(delayedKey(k.Due, k.Seq)); err != nil {
				return err
			}
			if err := g.txn.Delete(delayedByExKey(k.Incarnation, k.Due, k.Seq)); err != nil {
				return err
			}
		}
		return nil
	}, done: done})
}

// ReadDelayedAsync reads, in key order, up to max held messages with a key after from and a
// due time no later than upTo. It runs on the journal goroutine, ordered with the writes: it
// sees every PutDelayedAsync submitted before it and none submitted after, which is what lets
// the caller know exactly which messages it has in memory. done gets the messages and whether
// max cut the read short.
func (s *Store) ReadDelayedAsync(from DelayedKey, upTo int64, max int, done func([]Delayed, bool, error)) {
	var out []Delayed
	var capped bool
	s.submit(request{op: func(g *group) error {
		out, capped = out[:0], false // the op runs again if its group is retried
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte{pfxDelayed}
		opt.PrefetchSize = min(max, 100)
		it := g.txn.NewIterator(opt)
		defer it.Close()
		start := delayedKey(from.Due, from.Seq)
		for it.Seek(start); it.Valid(); it.Next() {
			item := it.Item()
			k := item.Key()
			if len(k) == 17 && string(k) == string(start) {
				continue
			}
			if len(k) != 17 || int64(beUint64(k[1:])) > upTo {
				break
			}
			if len(out) >= max {
				capped = true
				break
			}
			var d Delayed
			err := item.Value(func(v []byte) error {
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
	}, done: func(err error) { done(out, capped, err) }})
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

// dropDelayedChunk bounds the entries one DropDelayed transaction deletes.
const dropDelayedChunk = 5000

// DropDelayedChunk deletes up to dropDelayedChunk held messages of an incarnation in one
// transaction and returns how many it deleted: 0 when none is left. A caller drops an
// exchange's messages by calling it until then; a crash part-way leaves the rest, which
// LoadDelayed's Incarnations lists again.
func (s *Store) DropDelayedChunk(inc uint64) (int, error) {
	prefix := binary.BigEndian.AppendUint64([]byte{pfxDelayedByEx}, inc)
	n := 0
	err := s.do(func(g *group) error {
		n = 0
		opt := badger.DefaultIteratorOptions
		opt.Prefix = prefix
		opt.PrefetchValues = false
		it := g.txn.NewIterator(opt)
		var keys [][]byte
		for it.Rewind(); it.Valid() && len(keys) < dropDelayedChunk; it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		it.Close()
		for _, k := range keys {
			if len(k) != 25 {
				return fmt.Errorf("delayed index key %x: %w", k, errCorrupt)
			}
			if err := g.txn.Delete(k); err != nil {
				return err
			}
			if err := g.txn.Delete(delayedKey(int64(beUint64(k[9:])), beUint64(k[17:]))); err != nil {
				return err
			}
		}
		n = len(keys)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("dropping delayed messages of incarnation %d: %w", inc, err)
	}
	return n, nil
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

// LoadDelayed reads the delayed exchanges' incarnations and summarises their held messages:
// one seek per incarnation plus a key-only count, no message is read.
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
		opt.Prefix = []byte{pfxDelayedByEx}
		opt.PrefetchValues = false
		it = txn.NewIterator(opt)
		for it.Rewind(); it.Valid(); {
			k := it.Item().Key()
			if len(k) != 25 {
				it.Close()
				return fmt.Errorf("delayed index key %x: %w", k, errCorrupt)
			}
			inc := beUint64(k[1:])
			st.Incarnations = append(st.Incarnations, inc)
			if inc == ^uint64(0) {
				break
			}
			it.Seek(binary.BigEndian.AppendUint64([]byte{pfxDelayedByEx}, inc+1))
		}
		it.Close()

		opt.Prefix = []byte{pfxDelayed}
		it = txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) != 17 {
				return fmt.Errorf("delayed message key %x: %w", k, errCorrupt)
			}
			st.Count++
			st.Last = DelayedKey{Due: int64(beUint64(k[1:])), Seq: beUint64(k[9:])}
		}
		return nil
	})
	return st, err
}
