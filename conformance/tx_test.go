package conformance

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestTxPublishVisibleOnlyAfterCommit(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q := declareQueue(t, ch, nil)
	if err := ch.Tx(); err != nil {
		t.Fatalf("tx.select: %v", err)
	}
	publishN(t, ch, q, 3)
	if m, _ := queueCounts(t, q); m != 0 {
		t.Fatalf("%d uncommitted messages visible", m)
	}
	if err := ch.TxCommit(); err != nil {
		t.Fatalf("tx.commit: %v", err)
	}
	// commit-ok means the messages are enqueued.
	if m, _ := queueCounts(t, q); m != 3 {
		t.Fatalf("%d messages after commit, want 3", m)
	}
	publish(t, ch, "", q, "rolled-back")
	if err := ch.TxRollback(); err != nil {
		t.Fatalf("tx.rollback: %v", err)
	}
	// The channel stays transactional: the next publish needs its own commit.
	publish(t, ch, "", q, "3")
	if err := ch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	if got := getAll(t, ch, q); len(got) != 4 || got[3] != "3" {
		t.Fatalf("queue holds %v, want [0 1 2 3] (the rolled-back publish discarded)", got)
	}
}

func TestTxAckOnlyOnCommit(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishConfirmed(t, c, "", q, nums(0, 3)...)
	if err := ch.Tx(); err != nil {
		t.Fatal(err)
	}
	d := consume(t, ch, q, false)
	got := collect(t, d, 4)
	if err := got[1].Ack(true); err != nil {
		t.Fatal(err)
	}
	// RabbitMQ: an ack pending in a transaction takes the message out of the channel's unacked set
	// (so basic.recover skips it) ...
	if err := ch.Recover(true); err != nil {
		t.Fatal(err)
	}
	again := collect(t, d, 2)
	assertBodies(t, again, "2", "3")
	assertRedelivered(t, again, true)
	expectNoDelivery(t, d)
	// ... and tx.rollback puts it back, so the next recover redelivers everything.
	if err := ch.TxRollback(); err != nil {
		t.Fatal(err)
	}
	if err := ch.Recover(true); err != nil {
		t.Fatal(err)
	}
	again = collect(t, d, 4)
	assertBodies(t, again, nums(0, 3)...)
	assertRedelivered(t, again, true)
	if err := again[1].Ack(true); err != nil {
		t.Fatal(err)
	}
	if err := again[2].Reject(false); err != nil {
		t.Fatal(err)
	}
	if err := ch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	// Committed: only "3" is still unacked.
	if err := ch.Recover(true); err != nil {
		t.Fatal(err)
	}
	last := collect(t, d, 1)
	assertBodies(t, last, "3")
	// An uncommitted ack is lost when the channel closes: the message goes back to the queue.
	last[0].Ack(false)
	ch.Close()
	waitCount(t, q, 1)
}

func TestTxRollbackKeepsUnacked(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishConfirmed(t, c, "", q, nums(0, 2)...)
	if err := ch.Tx(); err != nil {
		t.Fatal(err)
	}
	d := consume(t, ch, q, false)
	got := collect(t, d, 3)
	got[2].Ack(true)
	if err := ch.TxRollback(); err != nil {
		t.Fatal(err)
	}
	// Rollback neither acks nor requeues: the messages are still held by this channel.
	expectNoDelivery(t, d)
	if m, _ := queueCounts(t, q); m != 0 {
		t.Fatalf("rollback requeued %d messages", m)
	}
	// Closing the channel requeues them.
	ch.Close()
	waitCount(t, q, 3)
	ch2 := openCh(t, c)
	again := collect(t, consume(t, ch2, q, false), 3)
	assertBodies(t, again, nums(0, 2)...)
	assertRedelivered(t, again, true)
}

func TestTxNackRequeueOnCommit(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishConfirmed(t, c, "", q, "a", "b")
	if err := ch.Tx(); err != nil {
		t.Fatal(err)
	}
	d := consume(t, ch, q, false)
	got := collect(t, d, 2)
	got[0].Nack(false, true)
	expectNoDelivery(t, d)
	if err := ch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	again := collect(t, d, 1)
	assertBodies(t, again, "a")
	assertRedelivered(t, again, true)
}

func TestTxErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		op   func(ch *amqp.Channel) error
		text string
	}{
		{"commit-without-select", func(ch *amqp.Channel) error { return ch.TxCommit() },
			"PRECONDITION_FAILED - channel is not transactional"},
		{"rollback-without-select", func(ch *amqp.Channel) error { return ch.TxRollback() },
			"PRECONDITION_FAILED - channel is not transactional"},
		{"confirm-after-tx", func(ch *amqp.Channel) error {
			if err := ch.Tx(); err != nil {
				return err
			}
			return ch.Confirm(false)
		}, "PRECONDITION_FAILED - cannot switch from tx to confirm mode"},
		{"tx-after-confirm", func(ch *amqp.Channel) error {
			if err := ch.Confirm(false); err != nil {
				return err
			}
			return ch.Tx()
		}, "PRECONDITION_FAILED - cannot switch from confirm to tx mode"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, ch := setup(t)
			ae := expectChannelClosed(t, c, tc.op(ch), amqp.PreconditionFailed)
			if ae.Reason != tc.text {
				t.Errorf("reply text %q, want %q", ae.Reason, tc.text)
			}
		})
	}
}

func TestTxSelectTwice(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	if err := ch.Tx(); err != nil {
		t.Fatal(err)
	}
	if err := ch.Tx(); err != nil {
		t.Fatalf("second tx.select: %v", err)
	}
	if err := ch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	if err := ch.TxCommit(); err != nil {
		t.Fatalf("empty commit: %v", err)
	}
}

func TestTxReturnBeforeCommitOk(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	x := declareExchange(t, ch, "direct", nil)
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	if err := ch.Tx(); err != nil {
		t.Fatal(err)
	}
	if err := ch.Publish(x, "nowhere", true, false, amqp.Publishing{Body: []byte("r")}); err != nil {
		t.Fatal(err)
	}
	if err := ch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	// amqp091-go hands a basic.return to the buffered channel before it processes the next frame,
	// so the return is already there when commit-ok has been received.
	select {
	case r := <-returns:
		if r.ReplyCode != amqp.NoRoute || string(r.Body) != "r" {
			t.Fatalf("return %d %q", r.ReplyCode, r.Body)
		}
	default:
		t.Fatal("basic.return did not arrive before tx.commit-ok")
	}
}

func TestTxChannelCloseDiscardsPublishes(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	tch := openCh(t, c)
	if err := tch.Tx(); err != nil {
		t.Fatal(err)
	}
	publishN(t, tch, q, 3)
	if err := tch.Close(); err != nil {
		t.Fatal(err)
	}
	// Let a round trip on the same connection pass, then check nothing was enqueued.
	if _, err := ch.QueueDeclarePassive(q, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if m, _ := queueCounts(t, q); m != 0 {
		t.Fatalf("uncommitted publishes of a closed channel enqueued: %d", m)
	}
}
