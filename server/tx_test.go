package server

import (
	"errors"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/warrenmq/warren/broker"
)

// A tx.commit whose store write fails is never acknowledged: it is answered with 541
// INTERNAL_ERROR (a connection exception in AMQP 0-9-1) and nothing of the transaction is
// visible; the acked delivery comes back.
func TestTxCommitStoreFailureIs541(t *testing.T) {
	s := startTestServer(t, func(c *Config) { c.DataDir = t.TempDir() })
	ch := dialT(t, s)
	if _, err := ch.QueueDeclare("txq", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Publish("", "txq", false, false, amqp091.Publishing{DeliveryMode: 2, Body: []byte("before")}); err != nil {
		t.Fatal(err)
	}
	m, ok, err := ch.Get("txq", false)
	if err != nil || !ok {
		t.Fatalf("get: %v %v", ok, err)
	}
	if err := ch.Tx(); err != nil {
		t.Fatal(err)
	}
	if err := ch.Publish("", "txq", false, false, amqp091.Publishing{DeliveryMode: 2, Body: []byte("in tx")}); err != nil {
		t.Fatal(err)
	}
	if err := m.Ack(false); err != nil {
		t.Fatal(err)
	}
	// The injected failure: the store is closed under the broker, so every write fails.
	if err := s.Broker().Store().Close(); err != nil {
		t.Fatal(err)
	}
	err = ch.TxCommit()
	var ae *amqp091.Error
	if !errors.As(err, &ae) || ae.Code != amqp091.InternalError {
		t.Fatalf("tx.commit with a failed store: %v, want channel closed with 541", err)
	}
	qs, qerr := s.Broker().VHost("/").Queue(broker.System, "txq")
	if qerr != nil {
		t.Fatal(qerr)
	}
	// The publish never became visible; the acked message is back (requeued by the close).
	// 541 is a connection exception: the acked message is requeued when the connection is torn down.
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := qs.Q().Counts()
		if st.Ready == 1 && st.Unacked == 0 {
			break
		}
		if time.Now().After(deadline) || st.Ready > 1 {
			t.Fatalf("after the failed commit: %+v, want 1 ready (the requeued one), 0 unacked", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
