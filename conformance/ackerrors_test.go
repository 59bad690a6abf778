package conformance

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// A delivery tag belongs to its channel: acking channel A's tag on channel B closes B with 406,
// and A's unacknowledged message is neither acked nor dropped by B's error.
func TestAckTagFromAnotherChannel(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishN(t, ch, q, 3)
	waitCount(t, q, 3)
	a := openCh(t, c)
	getOne(t, a, q, false)       // tag 1 on a
	ma := getOne(t, a, q, false) // tag 2 on a
	b := openCh(t, c)
	getOne(t, b, q, false) // tag 1 on b; b never had a tag 2
	ae := expectChannelClosed(t, c, awaitClose(t, b, func() { b.Ack(ma.DeliveryTag, false) }), amqp.PreconditionFailed)
	if ae.Reason != "PRECONDITION_FAILED - unknown delivery tag 2" {
		t.Errorf("reply text %q", ae.Reason)
	}
	// b's message went back when b closed; a's are still unacked on a and can be acked there.
	waitCount(t, q, 1)
	if err := a.Ack(ma.DeliveryTag, true); err != nil {
		t.Fatal(err)
	}
	if got := getOne(t, a, q, true); string(got.Body) != "2" || !got.Redelivered {
		t.Fatalf("got %q redelivered=%v, want b's message 2 redelivered", got.Body, got.Redelivered)
	}
	if m, _ := queueCounts(t, q); m != 0 {
		t.Fatalf("%d messages left", m)
	}
}

// basic.nack with multiple=true and tag 0 on a channel with nothing unacknowledged is a no-op;
// with a tag the channel never delivered it is 406.
func TestNackMultipleOnEmptyChannel(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	if err := ch.Nack(0, true, true); err != nil {
		t.Fatal(err)
	}
	// A round trip proves the channel survived the nack.
	if _, err := ch.QueueDeclarePassive(q, false, false, false, false, nil); err != nil {
		t.Fatalf("channel closed by nack(0, multiple) with nothing unacked: %v", err)
	}
	ae := expectChannelClosed(t, c, awaitClose(t, ch, func() { ch.Nack(3, true, false) }), amqp.PreconditionFailed)
	if ae.Reason != "PRECONDITION_FAILED - unknown delivery tag 3" {
		t.Errorf("reply text %q", ae.Reason)
	}
}

// After a channel exception, a tx.commit sent before close-ok is ignored (the channel only waits
// for close-ok), and the transaction's publishes and acks never happen; once the close is
// complete, tx.commit on that channel number is a 504 connection error.
func TestTxCommitAfterChannelError(t *testing.T) {
	t.Parallel()
	_, ach := setup(t)
	q := declareQueue(t, ach, nil)
	publish(t, ach, "", q, "held")
	waitCount(t, q, 1)
	w := wdial(t)
	w.handshake(handshakeOpts{})
	w.openChannel(1)
	w.send(1, method(90, 10)) // tx.select
	w.expectMethod(1, 90, 11)
	w.send(1, method(60, 70).short(0).shortstr(q).octet(0)) // basic.get
	w.expectMethod(1, 60, 71)
	w.next()
	w.next()
	w.send(1, method(60, 80).llong(1).octet(0)) // ack inside the transaction
	w.write(publishMethodFrame(1, "", q))
	w.write(wframe(wHeader, 1, contentHeader(3, 0, nil)))
	w.write(wframe(wBody, 1, []byte("new")))
	w.send(1, method(60, 80).llong(99).octet(0)) // unknown tag: 406 closes the channel
	f := w.expectMethod(1, 20, 40)
	if ci, _ := decodeClose(f.payload); ci.code != 406 {
		t.Fatalf("channel.close %d %q, want 406", ci.code, ci.text)
	}
	w.send(1, method(90, 20)) // tx.commit before close-ok: dropped
	w.send(1, method(20, 41)) // close-ok
	w.send(1, method(90, 20)) // tx.commit on a closed channel
	w.expectConnectionClose(504, 90, 20, "CHANNEL_ERROR")
	// Neither the ack nor the publish was committed: the held message is back, alone.
	waitCount(t, q, 1)
	if got := getOne(t, ach, q, true); string(got.Body) != "held" || !got.Redelivered {
		t.Fatalf("got %q redelivered=%v, want held redelivered", got.Body, got.Redelivered)
	}
}
