//go:build linux

package main

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/embedded"
)

// TestLedgerSettle: acked deliveries count as received only once a synchronous answer says the
// broker processed their acks; those of a session that died first are in doubt (neither
// received nor lost) until delivered again, and a confirmed message never delivered is lost.
func TestLedgerSettle(t *testing.T) {
	tests := []struct {
		name     string
		sessions [][]uint64
		syncErr  []error
		want     map[uint64]int
		lost     []string
	}{
		{"settled counts", [][]uint64{{1, 2}}, []error{nil}, map[uint64]int{1: 1, 2: 1}, []string{"q #3"}},
		{"died session is in doubt, not received", [][]uint64{{1, 2}}, []error{amqp.ErrClosed}, map[uint64]int{}, []string{"q #3"}},
		{"redelivered after a died session counts once", [][]uint64{{1, 2}, {1, 2, 3}}, []error{errors.New("reset"), nil},
			map[uint64]int{1: 1, 2: 1, 3: 1}, nil},
		{"a duplicate across settled sessions counts twice", [][]uint64{{1}, {1}}, []error{nil, nil}, map[uint64]int{1: 2}, []string{"q #2", "q #3"}},
	}
	for _, tt := range tests {
		l := newLedger([]string{"q"})
		l.confirmed["q"] = map[uint64]bool{1: true, 2: true, 3: true}
		for i, s := range tt.sessions {
			l.settle("q", s, tt.syncErr[i])
		}
		got := l.received["q"]
		if got == nil {
			got = map[uint64]int{}
		}
		if !maps.Equal(got, tt.want) {
			t.Errorf("%s: received %v, want %v", tt.name, got, tt.want)
		}
		if lost := l.lost(nil); !slices.Equal(lost, tt.lost) {
			t.Errorf("%s: lost %v, want %v", tt.name, lost, tt.lost)
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

// TestLedgerOrder: first deliveries must come in publish order per queue; redeliveries are
// exempt (counted), and a first delivery at or below an earlier one is out of order.
func TestLedgerOrder(t *testing.T) {
	type dl struct {
		q           string
		seq         uint64
		redelivered bool
	}
	tests := []struct {
		name        string
		ds          []dl
		outOfOrder  int
		unflagged   int
		redelivered int
	}{
		{"in order", []dl{{"q", 1, false}, {"q", 2, false}, {"q", 5, false}}, 0, 0, 0},
		{"redelivery of an earlier one is exempt", []dl{{"q", 1, false}, {"q", 2, false}, {"q", 1, true}, {"q", 3, false}}, 0, 0, 1},
		{"first delivery after a later one", []dl{{"q", 1, false}, {"q", 3, false}, {"q", 2, false}}, 1, 0, 0},
		{"duplicate not flagged redelivered", []dl{{"q", 1, false}, {"q", 1, false}}, 0, 1, 0},
		{"unflagged redelivery of an earlier one", []dl{{"q", 1, false}, {"q", 2, false}, {"q", 1, false}}, 0, 1, 0},
		{"queues are independent", []dl{{"a", 5, false}, {"b", 1, false}, {"a", 6, false}, {"b", 2, false}}, 0, 0, 0},
	}
	for _, tt := range tests {
		l := newLedger([]string{"q", "a", "b"})
		for _, d := range tt.ds {
			l.delivered(d.q, d.seq, d.redelivered)
		}
		if l.outOfOrder != tt.outOfOrder || l.unflagged != tt.unflagged || l.redelivered != tt.redelivered || len(l.orderSamples) != tt.outOfOrder+tt.unflagged {
			t.Errorf("%s: out of order %d, unflagged %d (samples %v), redelivered %d; want %d, %d, %d",
				tt.name, l.outOfOrder, l.unflagged, l.orderSamples, l.redelivered, tt.outOfOrder, tt.unflagged, tt.redelivered)
		}
	}
}
