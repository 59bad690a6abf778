package persistence

import (
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// PutExchange stores (or replaces) a durable exchange; it is durable when PutExchange returns.
func (s *Store) PutExchange(r ExchangeRecord) error { return wait(s.PutExchangeAsync, r) }

// PutExchangeAsync is PutExchange without the wait: done runs once the record is durable. Topology
// changes and message batches are journalled in the order they are submitted, so a caller may
// submit under a lock (fixing the order) and wait for done after releasing it.
func (s *Store) PutExchangeAsync(r ExchangeRecord, done func(error)) {
	s.submit(request{op: func(g *group) error {
		return g.txn.Set(exchangeRecKey(r.VHost, r.Name), encodeExchange(r))
	}, done: done})
}

// DeleteExchange removes an exchange and every binding where it is the source or the
// destination. Deleting a missing exchange succeeds.
func (s *Store) DeleteExchange(vhost, name string) error {
	return wait(func(r ExchangeRecord, done func(error)) { s.DeleteExchangeAsync(r.VHost, r.Name, done) }, ExchangeRecord{VHost: vhost, Name: name})
}

// DeleteExchangeAsync is DeleteExchange without the wait (see PutExchangeAsync).
func (s *Store) DeleteExchangeAsync(vhost, name string, done func(error)) {
	s.submit(request{op: func(g *group) error {
		if err := g.txn.Delete(exchangeRecKey(vhost, name)); err != nil {
			return err
		}
		return g.deleteBindings(vhost, func(b BindingRecord) bool {
			return b.Source == name || (b.ToExchange && b.Destination == name)
		})
	}, done: done})
}

// PutQueue stores (or replaces) a durable queue record.
func (s *Store) PutQueue(r QueueRecord) error { return wait(s.PutQueueAsync, r) }

// PutQueueAsync is PutQueue without the wait (see PutExchangeAsync).
func (s *Store) PutQueueAsync(r QueueRecord, done func(error)) {
	s.submit(request{op: func(g *group) error {
		return g.txn.Set(queueRecKey(r.VHost, r.Name), encodeQueue(r))
	}, done: done})
}

// DeleteQueue removes a queue, the bindings to it, its index entries and the messages no
// other queue references. The record and bindings go atomically; the entries are deleted
// before DeleteQueue returns (resumed by Open after a crash). Deleting a missing queue succeeds.
func (s *Store) DeleteQueue(vhost, name string) error {
	return s.doOp(func(g *group) error {
		if err := g.txn.Delete(queueRecKey(vhost, name)); err != nil {
			return err
		}
		err := g.deleteBindings(vhost, func(b BindingRecord) bool {
			return !b.ToExchange && b.Destination == name
		})
		if err != nil {
			return err
		}
		return g.markPurge(QueueRef{VHost: vhost, Queue: name}, nil)
	}, true)
}

// PutBinding stores a binding (idempotent).
func (s *Store) PutBinding(r BindingRecord) error { return wait(s.PutBindingAsync, r) }

// PutBindingAsync is PutBinding without the wait (see PutExchangeAsync).
func (s *Store) PutBindingAsync(r BindingRecord, done func(error)) {
	s.submit(request{op: func(g *group) error { return g.txn.Set(bindingKey(r), nil) }, done: done})
}

// DeleteBinding removes the binding identical to r (Args compared byte for byte);
// deleting a missing binding succeeds.
func (s *Store) DeleteBinding(r BindingRecord) error { return wait(s.DeleteBindingAsync, r) }

// DeleteBindingAsync is DeleteBinding without the wait (see PutExchangeAsync).
func (s *Store) DeleteBindingAsync(r BindingRecord, done func(error)) {
	s.submit(request{op: func(g *group) error { return g.txn.Delete(bindingKey(r)) }, done: done})
}

// wait runs an asynchronous topology change and waits for it.
func wait[R any](async func(R, func(error)), r R) error {
	ch := make(chan error, 1)
	async(r, func(err error) { ch <- err })
	return <-ch
}

func (g *group) deleteBindings(vhost string, match func(BindingRecord) bool) error {
	opt := badger.DefaultIteratorOptions
	opt.Prefix = bindingVHostPrefix(vhost)
	opt.PrefetchValues = false
	iter := g.txn.NewIterator(opt)
	var keys [][]byte
	var err error
	for iter.Rewind(); iter.Valid(); iter.Next() {
		var b BindingRecord
		if b, err = decodeBindingKey(iter.Item().Key()); err != nil {
			err = fmt.Errorf("binding key %x: %w", iter.Item().Key(), err)
			break
		}
		if match(b) {
			keys = append(keys, iter.Item().KeyCopy(nil))
		}
	}
	iter.Close()
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := g.txn.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// LoadTopology returns every stored exchange, queue and binding.
func (s *Store) LoadTopology() (Topology, error) {
	var t Topology
	err := s.db.View(func(txn *badger.Txn) error {
		scan := func(prefix byte, fn func(k, v []byte) error) error {
			opt := badger.DefaultIteratorOptions
			opt.Prefix = []byte{prefix}
			iter := txn.NewIterator(opt)
			defer iter.Close()
			for iter.Rewind(); iter.Valid(); iter.Next() {
				item := iter.Item()
				err := item.Value(func(v []byte) error { return fn(item.Key(), v) })
				if err != nil {
					return fmt.Errorf("record %x: %w", item.Key(), err)
				}
			}
			return nil
		}
		err := scan(pfxExchange, func(k, v []byte) error {
			r, err := decodeExchange(k, v)
			t.Exchanges = append(t.Exchanges, r)
			return err
		})
		if err != nil {
			return err
		}
		err = scan(pfxQueue, func(k, v []byte) error {
			r, err := decodeQueue(k, v)
			t.Queues = append(t.Queues, r)
			return err
		})
		if err != nil {
			return err
		}
		return scan(pfxBinding, func(k, _ []byte) error {
			r, err := decodeBindingKey(k)
			t.Bindings = append(t.Bindings, r)
			return err
		})
	})
	if err != nil {
		return Topology{}, fmt.Errorf("persistence: load topology from %s: %w", dirName(s.dir), err)
	}
	return t, nil
}

func beUint64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}
