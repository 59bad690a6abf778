//go:build linux

package main

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/embedded"
)

// TestLedgerSettle: a consumer session's deliveries count as received only when its connection
// closed cleanly; a session that died may not have had its acks processed, so the broker owes
// those messages again and the ledger must not take them as delivered.
func TestLedgerSettle(t *testing.T) {
	tests := []struct {
		name     string
		sessions [][]uint64
		closeErr []error
		want     map[uint64]int
	}{
		{"clean close counts", [][]uint64{{1, 2}}, []error{nil}, map[uint64]int{1: 1, 2: 1}},
		{"died session does not count", [][]uint64{{1, 2}}, []error{amqp.ErrClosed}, map[uint64]int{}},
		{"redelivered after a died session counts once", [][]uint64{{1, 2}, {1, 2, 3}}, []error{errors.New("reset"), nil},
			map[uint64]int{1: 1, 2: 1, 3: 1}},
		{"a duplicate across clean sessions counts twice", [][]uint64{{1}, {1}}, []error{nil, nil}, map[uint64]int{1: 2}},
	}
	for _, tt := range tests {
		l := newLedger([]string{"q"})
		for i, s := range tt.sessions {
			l.settle("q", s, tt.closeErr[i])
		}
		got := l.received["q"]
		if got == nil {
			got = map[uint64]int{}
		}
		if !maps.Equal(got, tt.want) {
			t.Errorf("%s: received %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestConsumerSettlesOnClose: against a real broker, the consumer's deliveries are in the ledger
// once its session closed (ctx ended), and the broker processed their acks.
func TestConsumerSettlesOnClose(t *testing.T) {
	b := embedded.NewTestBroker(t)
	conn, err := dial(b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("q", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if err := ch.PublishWithContext(t.Context(), "", "q", false, false, amqp.Publishing{Body: []byte("q:" + strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	l := newLedger([]string{"q"})
	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	consumer(ctx, l, b.Addr(), "q", false)
	if want := map[uint64]int{1: 1, 2: 1, 3: 1}; !maps.Equal(l.received["q"], want) {
		t.Errorf("received %v, want %v", l.received["q"], want)
	}
	q, err := ch.QueueDeclarePassive("q", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if q.Messages != 0 {
		t.Errorf("%d messages left in the queue: acks not processed", q.Messages)
	}
}
