package persistence

import (
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// readMessage reads a stored message behind the store's back; a message that is not stored
// (never was, or no entry references it any more) gives ErrNotFound.
func readMessage(s *Store, id uint64) (*Message, error) {
	var m *Message
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(messageKey(id))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("message %d: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		m, err = decodeMessage(id, v)
		return err
	})
	return m, err
}
