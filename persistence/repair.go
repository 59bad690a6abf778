package persistence

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/dgraph-io/badger/v4"
)

// repair rebuilds refcount records and index flags from the index, deletes messages no
// entry references, rewrites format 1 index values and stamps the current format. Unlike
// everything else at Open it holds state per message (a map over the index), so it only
// runs to migrate a format 1 store or when check found the counts disagreeing - which
// atomic commits never cause. An index entry pointing at a missing message means data was
// lost: that fails Open.
func (s *Store) repair() error {
	refs := make(map[uint64]uint32)
	err := s.db.View(func(txn *badger.Txn) error {
		iter := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxIndex}, PrefetchValues: true, PrefetchSize: 100})
		defer iter.Close()
		for iter.Rewind(); iter.Valid(); iter.Next() {
			item := iter.Item()
			err := item.Value(func(b []byte) error {
				v, _, err := decodeIndexValue(b)
				refs[v.msgID]++
				return err
			})
			if err != nil {
				return fmt.Errorf("index entry %x: %w", item.Key(), err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	sizes := make(map[uint64]uint32) // body sizes of referenced messages, for format 1 entries
	orphans := 0
	err = s.db.View(func(txn *badger.Txn) error {
		iter := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxMessage}})
		defer iter.Close()
		for iter.Rewind(); iter.Valid(); iter.Next() {
			item := iter.Item()
			k := item.Key()
			if len(k) != 9 {
				return fmt.Errorf("message key %x: %w", k, errCorrupt)
			}
			id := beUint64(k[1:])
			if refs[id] == 0 {
				orphans++
				if err := wb.Delete(item.KeyCopy(nil)); err != nil {
					return err
				}
				continue
			}
			err := item.Value(func(v []byte) error {
				m, err := decodeMessage(id, v)
				if err == nil {
					sizes[id] = uint32(min(len(m.Body), math.MaxUint32))
				}
				return err
			})
			if err != nil {
				return fmt.Errorf("read message %d: %w", id, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	dangling := 0
	for id := range refs {
		if _, ok := sizes[id]; !ok {
			dangling++
		}
	}
	if dangling > 0 {
		return fmt.Errorf("index entries point at %d missing messages: data files were lost or truncated", dangling)
	}
	// Refcount records: exactly the messages with more than one entry.
	err = s.db.View(func(txn *badger.Txn) error {
		iter := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxRef}})
		defer iter.Close()
		for iter.Rewind(); iter.Valid(); iter.Next() {
			k := iter.Item().Key()
			if len(k) != 9 || refs[beUint64(k[1:])] <= 1 {
				if err := wb.Delete(iter.Item().KeyCopy(nil)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for id, n := range refs {
		if n > 1 {
			if err := wb.Set(refKey(id), encodeRef(n)); err != nil {
				return err
			}
		}
	}
	// Index values: the shared flag follows the count; format 1 values get the new layout.
	rewritten := 0
	err = s.db.View(func(txn *badger.Txn) error {
		iter := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pfxIndex}, PrefetchValues: true, PrefetchSize: 100})
		defer iter.Close()
		for iter.Rewind(); iter.Valid(); iter.Next() {
			item := iter.Item()
			var v indexValue
			var legacy bool
			err := item.Value(func(b []byte) error {
				var err error
				v, legacy, err = decodeIndexValue(b)
				return err
			})
			if err != nil {
				return err
			}
			flags := v.flags &^ idxShared
			if refs[v.msgID] > 1 {
				flags |= idxShared
			}
			if !legacy && flags == v.flags {
				continue
			}
			v.flags, v.size = flags, sizes[v.msgID]
			if err := wb.Set(item.KeyCopy(nil), encodeIndexValue(v)); err != nil {
				return err
			}
			rewritten++
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := wb.Set(keyFormat, binary.BigEndian.AppendUint32(nil, formatVersion)); err != nil {
		return err
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("write repairs: %w", err)
	}
	s.log.Warn("store repaired", "dir", s.dir, "messages", len(sizes), "orphans_deleted", orphans, "index_entries_rewritten", rewritten)
	return nil
}
