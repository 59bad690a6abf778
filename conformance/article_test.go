package conformance

// The listings of "Transaction and redelivery in JMS" (JavaWorld), replayed over AMQP 0-9-1.
// Listing 1's sender publishes the integers 0..9; each test is one of the article's receivers and
// asserts the exact sequence of bodies (and redelivered flags) the receiver sees.

import (
	"net"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// articleSend is Listing 1: the sender. It publishes "0".."9" and waits for the broker's confirms.
func articleSend(t *testing.T, c *amqp.Connection, q string) {
	t.Helper()
	publishConfirmed(t, c, "", q, nums(0, 9)...)
}

// Listing 2/3: auto mode. Every message arrives exactly once; nothing is left behind.
func TestArticleAutoAcknowledge(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	articleSend(t, c, q)
	rch := openCh(t, c)
	got := collect(t, consume(t, rch, q, true), 10)
	assertBodies(t, got, nums(0, 9)...)
	assertRedelivered(t, got, false)
	rch.Close()
	if m, _ := queueCounts(t, q); m != 0 {
		t.Fatalf("%d messages redelivered after an auto-ack session ended", m)
	}
}

// Listing 4: duplicates-okay mode. Acks are sent lazily (multiple=true every third message); the
// connection drops before the last lazy ack, so the unacknowledged tail is delivered again.
func TestArticleDupsOK(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	articleSend(t, c, q)

	var raw net.Conn
	rc, err := amqp.DialConfig(brokerURL, amqp.Config{Dial: func(network, addr string) (net.Conn, error) {
		conn, err := net.DialTimeout(network, addr, wait)
		raw = conn
		return conn, err
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	rch := openCh(t, rc)
	got := collect(t, consume(t, rch, q, false), 10)
	assertBodies(t, got, nums(0, 9)...)
	for i, m := range got {
		if i == 8 {
			break // the lazy ack due after message 8 is never sent
		}
		if i%3 == 2 {
			if err := m.Ack(true); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A round trip on the channel makes sure the acks were processed before the drop.
	if _, err := rch.QueueDeclarePassive(q, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	again := collect(t, consume(t, ch, q, false), 4)
	assertBodies(t, again, "6", "7", "8", "9")
	assertRedelivered(t, again, true)
}

// Listing 5: client mode. Acknowledging 5 acknowledges 0..5; recover redelivers exactly 6..9.
func TestArticleClientAcknowledge(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	articleSend(t, c, q)
	rch := openCh(t, c)
	d := consume(t, rch, q, false)
	got := collect(t, d, 10)
	assertBodies(t, got, nums(0, 9)...)
	if err := got[5].Ack(true); err != nil {
		t.Fatal(err)
	}
	if err := rch.Recover(true); err != nil {
		t.Fatal(err)
	}
	again := collect(t, d, 4)
	assertBodies(t, again, "6", "7", "8", "9")
	assertRedelivered(t, again, true)
	expectNoDelivery(t, d)
}

// transactedRound receives 6..9 (or 0..9), acks up to 5 with a commit, acks the rest and rolls back,
// then recovers so the rolled-back messages come again (JMS redelivers after rollback; AMQP needs
// basic.recover or a new channel).
func transactedRound(t *testing.T, rch *amqp.Channel, got []amqp.Delivery) {
	t.Helper()
	for _, m := range got {
		switch string(m.Body) {
		case "5":
			if err := m.Ack(true); err != nil {
				t.Fatal(err)
			}
			if err := rch.TxCommit(); err != nil {
				t.Fatal(err)
			}
		case "9":
			if err := m.Ack(true); err != nil {
				t.Fatal(err)
			}
			if err := rch.TxRollback(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := rch.Recover(true); err != nil {
		t.Fatal(err)
	}
}

// Listing 6: transacted session. Commit at 5, rollback at 9: "6 7 8 9" comes back every time.
func TestArticleTransactedSession(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	articleSend(t, c, q)
	rch := openCh(t, c)
	if err := rch.Tx(); err != nil {
		t.Fatal(err)
	}
	d := consume(t, rch, q, false)
	got := collect(t, d, 10)
	assertBodies(t, got, nums(0, 9)...)
	transactedRound(t, rch, got)
	for round := 0; round < 5; round++ {
		again := collect(t, d, 4)
		assertBodies(t, again, "6", "7", "8", "9")
		assertRedelivered(t, again, true)
		transactedRound(t, rch, again)
	}
	// The committed messages 0..5 are gone for good.
	rch.Close()
	waitCount(t, q, 4)
}

// Listing 6 with a redelivery count: a quorum queue with x-delivery-limit 3 and a dead-letter
// exchange ends the loop, and 6..9 land in the dead-letter queue.
func TestArticleTransactedSessionDeliveryLimit(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	dlx, _, deadLetters := dlxSetup(t, ch)
	q := declareQuorum(t, ch, amqp.Table{"x-delivery-limit": int32(3), "x-dead-letter-exchange": dlx})
	articleSend(t, c, q)
	rch := openCh(t, dial(t))
	if err := rch.Tx(); err != nil {
		t.Fatal(err)
	}
	d := consume(t, rch, q, false)
	got := collect(t, d, 10)
	assertBodies(t, got, nums(0, 9)...)
	transactedRound(t, rch, got)
	// The first delivery plus three redeliveries; the fourth return exceeds the limit.
	for round := 1; round <= 3; round++ {
		again := collect(t, d, 4)
		assertBodies(t, again, "6", "7", "8", "9")
		assertRedelivered(t, again, true)
		for _, m := range again {
			if n := m.Headers["x-delivery-count"]; n != int64(round) {
				t.Fatalf("round %d: %s x-delivery-count = %#v", round, m.Body, n)
			}
		}
		transactedRound(t, rch, again)
	}
	expectNoDelivery(t, d)
	dead := collect(t, deadLetters, 4)
	assertBodies(t, dead, "6", "7", "8", "9")
	for _, m := range dead {
		checkDeath(t, xDeath(t, m)[0], 1, "delivery_limit", q, "", q)
	}
}

// Listing 7: MDB with container-managed transactions. Every message above 5 is rolled back
// (basic.nack requeue=true) and redelivered until the delivery limit, then dead-lettered.
func TestArticleCMTD(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	dlx, _, dead := dlxSetup(t, ch)
	q := declareQuorum(t, ch, amqp.Table{"x-delivery-limit": int32(2), "x-dead-letter-exchange": dlx})
	articleSend(t, c, q)
	rch := openCh(t, dial(t))
	d := consume(t, rch, q, false)
	onMessage := func(m amqp.Delivery) {
		if m.Body[0] > '5' {
			m.Nack(false, true) // setRollbackOnly
		} else {
			m.Ack(false)
		}
	}
	got := collect(t, d, 10)
	assertBodies(t, got, nums(0, 9)...)
	assertRedelivered(t, got, false)
	for _, m := range got {
		onMessage(m)
	}
	for round := 1; round <= 2; round++ {
		again := collect(t, d, 4)
		assertBodies(t, again, "6", "7", "8", "9")
		assertRedelivered(t, again, true)
		for _, m := range again {
			onMessage(m)
		}
	}
	expectNoDelivery(t, d)
	assertBodies(t, collect(t, dead, 4), "6", "7", "8", "9")
}

// Listing 8: MDB with bean-managed transactions. The user transaction does not span the receipt
// (auto-ack), so rolling it back redelivers nothing.
func TestArticleBMTD(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	articleSend(t, c, q)
	rch := openCh(t, c)
	d := consume(t, rch, q, true)
	got := collect(t, d, 10)
	assertBodies(t, got, nums(0, 9)...)
	// The application's own rollback for messages above 5 touches nothing on the broker.
	expectNoDelivery(t, d)
	if err := rch.Recover(true); err != nil {
		t.Fatal(err)
	}
	expectNoDelivery(t, d)
	if m, _ := queueCounts(t, q); m != 0 {
		t.Fatalf("%d messages left", m)
	}
}

// "Does a redelivered message go to the back of the queue or sneak to the front?" With prefetch 3,
// 0..4 processed and 5 rolled back while 6 and 7 are in flight, the next deliveries are 5
// (redelivered), then 8 and 9.
func TestArticleRedeliveryPosition(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	articleSend(t, c, q)
	rch := openCh(t, c)
	if err := rch.Qos(3, 0, false); err != nil {
		t.Fatal(err)
	}
	d := consume(t, rch, q, false)
	var seq []amqp.Delivery
	for i := 0; i < 5; i++ {
		m := collect(t, d, 1)[0]
		seq = append(seq, m)
		m.Ack(false)
	}
	// Now 5, 6, 7 are in flight (prefetch 3).
	inflight := collect(t, d, 3)
	assertBodies(t, inflight, "5", "6", "7")
	expectNoDelivery(t, d)
	inflight[0].Nack(false, true)
	m := collect(t, d, 1)[0]
	if string(m.Body) != "5" || !m.Redelivered {
		t.Fatalf("after rollback of 5 got %q redelivered=%v, want 5 redelivered", m.Body, m.Redelivered)
	}
	inflight[1].Ack(false)
	inflight[2].Ack(false)
	m.Ack(false)
	rest := collect(t, d, 2)
	assertBodies(t, rest, "8", "9")
	assertRedelivered(t, rest, false)
	assertBodies(t, seq, "0", "1", "2", "3", "4")
}
