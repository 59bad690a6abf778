package cluster

import (
	"fmt"
	"net"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

func next(t *testing.T, ds <-chan amqp091.Delivery) amqp091.Delivery {
	t.Helper()
	select {
	case d, ok := <-ds:
		if !ok {
			t.Fatal("consumer ended")
		}
		return d
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery within 5 s")
	}
	return amqp091.Delivery{}
}

func none(t *testing.T, ds <-chan amqp091.Delivery, what string) {
	t.Helper()
	select {
	case d := <-ds:
		t.Fatalf("%s: unexpected delivery %q (tag %d)", what, d.Body, d.DeliveryTag)
	case <-time.After(150 * time.Millisecond):
	}
}

func publishN(t *testing.T, ch *amqp091.Channel, q string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := ch.Publish("", q, false, false, amqp091.Publishing{Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
}

func ready(t *testing.T, ch *amqp091.Channel, q string, want int) {
	t.Helper()
	var n int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		st, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if n = st.Messages; n == want {
			return
		}
	}
	t.Fatalf("queue %s: %d ready, want %d", q, n, want)
}

// A consumer on n2 of a queue homed on n1 gets RabbitMQ's semantics from the home queue:
// prefetch, ack (single and multiple), nack with requeue to the original position and the
// redelivered flag, reject without requeue, basic.recover, and requeue when the channel closes.
func TestProxyConsumeSemantics(t *testing.T) {
	lc := startLinked(t, 3)
	_, ch1 := dial(t, lc.urls[0])
	_, ch2 := dial(t, lc.urls[1])
	if _, err := ch1.QueueDeclare("work", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	publishN(t, ch1, "work", 0, 10)
	ready(t, ch1, "work", 10)

	if err := ch2.Qos(3, 0, false); err != nil {
		t.Fatal(err)
	}
	ds, err := ch2.Consume("work", "c1", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		d := next(t, ds)
		if string(d.Body) != fmt.Sprint(i) || d.DeliveryTag != uint64(i+1) || d.Redelivered || d.ConsumerTag != "c1" || d.RoutingKey != "work" {
			t.Fatalf("delivery %d: %q tag %d redelivered %v ctag %q", i, d.Body, d.DeliveryTag, d.Redelivered, d.ConsumerTag)
		}
	}
	none(t, ds, "prefetch 3 reached")
	// ack 1 -> "3" arrives (tag 4); nack 2 with requeue -> "1" comes back first, redelivered.
	if err := ch2.Ack(1, false); err != nil {
		t.Fatal(err)
	}
	if d := next(t, ds); string(d.Body) != "3" || d.DeliveryTag != 4 {
		t.Fatalf("after ack: %q tag %d", d.Body, d.DeliveryTag)
	}
	if err := ch2.Nack(2, false, true); err != nil {
		t.Fatal(err)
	}
	if d := next(t, ds); string(d.Body) != "1" || d.DeliveryTag != 5 || !d.Redelivered {
		t.Fatalf("after nack requeue: %q tag %d redelivered %v", d.Body, d.DeliveryTag, d.Redelivered)
	}
	// reject 3 ("2") without requeue: gone; "4" arrives.
	if err := ch2.Reject(3, false); err != nil {
		t.Fatal(err)
	}
	if d := next(t, ds); string(d.Body) != "4" || d.DeliveryTag != 6 {
		t.Fatalf("after reject: %q tag %d", d.Body, d.DeliveryTag)
	}
	// ack multiple up to 5 ("3", "1"): two more, "5" and "6".
	if err := ch2.Ack(5, true); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"5", "6"} {
		if d := next(t, ds); string(d.Body) != want {
			t.Fatalf("after ack multiple: %q, want %q", d.Body, want)
		}
	}
	none(t, ds, "prefetch 3 reached again")
	// recover: "4", "5", "6" come back redelivered, in order, with new tags.
	if err := ch2.Recover(true); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"4", "5", "6"} {
		if d := next(t, ds); string(d.Body) != want || !d.Redelivered {
			t.Fatalf("after recover: %q redelivered %v, want %q", d.Body, d.Redelivered, want)
		}
	}
	// Closing the channel requeues the three unacked on n1: of 10, three acked and one
	// rejected, so 6 ready once the channel is gone.
	if err := ch2.Close(); err != nil {
		t.Fatal(err)
	}
	ready(t, ch1, "work", 6)
	// The order on the home queue is the original one.
	for _, want := range []string{"4", "5", "6", "7", "8", "9"} {
		d, ok, err := ch1.Get("work", true)
		if err != nil || !ok || string(d.Body) != want {
			t.Fatalf("after close: %v %v %q, want %q", err, ok, d.Body, want)
		}
	}
}

// basic.get on n2 of a queue homed on n1: the message count, the redelivered flag of a
// requeued message, ack, and get-empty.
func TestProxyGet(t *testing.T) {
	lc := startLinked(t, 2)
	_, ch1 := dial(t, lc.urls[0])
	_, ch2 := dial(t, lc.urls[1])
	if _, err := ch1.QueueDeclare("g", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	publishN(t, ch1, "g", 0, 3)
	ready(t, ch1, "g", 3)
	d, ok, err := ch2.Get("g", false)
	if err != nil || !ok || string(d.Body) != "0" || d.MessageCount != 2 || d.Redelivered {
		t.Fatalf("get: %v %v %q count %d redelivered %v", err, ok, d.Body, d.MessageCount, d.Redelivered)
	}
	if err := d.Nack(false, true); err != nil {
		t.Fatal(err)
	}
	d, ok, err = ch2.Get("g", false)
	if err != nil || !ok || string(d.Body) != "0" || !d.Redelivered {
		t.Fatalf("get after requeue: %v %v %q redelivered %v", err, ok, d.Body, d.Redelivered)
	}
	if err := d.Ack(false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1", "2"} {
		if d, ok, err := ch2.Get("g", true); err != nil || !ok || string(d.Body) != want {
			t.Fatalf("get no-ack: %v %v %q", err, ok, d.Body)
		}
	}
	if _, ok, err := ch2.Get("g", true); err != nil || ok {
		t.Fatalf("get of an empty queue: %v %v", ok, err)
	}
	ready(t, ch1, "g", 0)
	// An unknown delivery tag is still this channel's 406.
	closed := ch2.NotifyClose(make(chan *amqp091.Error, 1))
	if err := ch2.Ack(99, false); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-closed:
		if amqpCode(err) != 406 {
			t.Fatalf("ack of an unknown tag: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ack of an unknown tag did not close the channel")
	}
}

// The end of a proxied consumer: a cancel stops deliveries (what was delivered can still be
// acked), the home's 403 for an exclusive consumer reaches the client, and the queue deleted
// on its home or its home stopping cancel the consumer (basic.cancel to the client).
func TestProxyConsumerEnds(t *testing.T) {
	lc := startLinked(t, 3)
	_, ch1 := dial(t, lc.urls[0])
	_, ch2 := dial(t, lc.urls[1])
	for _, q := range []string{"a", "b"} {
		if _, err := ch1.QueueDeclare(q, false, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	publishN(t, ch1, "a", 0, 2)
	if err := ch2.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	ds, err := ch2.Consume("a", "ca", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := next(t, ds)
	if err := ch2.Cancel("ca", false); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(false); err != nil {
		t.Fatal(err)
	}
	ready(t, ch1, "a", 1) // "1" stays ready: no consumer took it after the cancel

	// An exclusive consumer on the home: the proxied one gets the home's 403.
	if _, err := ch1.Consume("b", "excl", true, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	_, ch2b := dial(t, lc.urls[1])
	if _, err := ch2b.Consume("b", "", true, false, false, false, nil); amqpCode(err) != 403 {
		t.Fatalf("consume of a queue in exclusive use on its home: %v", err)
	}

	// Deleted on its home: the consumer on n2 is cancelled.
	_, ch2c := dial(t, lc.urls[1])
	cancels := ch2c.NotifyCancel(make(chan string, 2))
	if _, err := ch2c.Consume("a", "cdel", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch1.QueueDelete("a", false, false, false); err != nil {
		t.Fatal(err)
	}
	select {
	case tag := <-cancels:
		if tag != "cdel" {
			t.Fatalf("cancelled %q", tag)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no basic.cancel after the queue was deleted on its home")
	}

	// The home stops: the consumer of a queue of n3 on n2 is cancelled too.
	_, ch3 := dial(t, lc.urls[2])
	if _, err := ch3.QueueDeclare("c", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	_, ch2d := dial(t, lc.urls[1])
	cancels = ch2d.NotifyCancel(make(chan string, 2))
	if _, err := ch2d.Consume("c", "clost", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	_ = lc.servers[2].Close()
	select {
	case tag := <-cancels:
		if tag != "clost" {
			t.Fatalf("cancelled %q", tag)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no basic.cancel after the queue's home stopped")
	}
	// A consume while the home is down: RabbitMQ's 541 class of error, not a hang.
	start := time.Now()
	if _, err := ch2d.Consume("c", "again", false, false, false, false, nil); err == nil {
		t.Fatal("consume of a queue whose home is down succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("consume with the home down took %v", d)
	}
}

// Transactions across nodes: a publish on n2 to a queue of n1 is on n1 when tx.commit-ok
// arrives, and an ack of a proxied delivery takes effect at the commit, not before; a rollback
// leaves it unacked.
func TestProxyTransactions(t *testing.T) {
	lc := startLinked(t, 2)
	_, ch1 := dial(t, lc.urls[0])
	_, ch2 := dial(t, lc.urls[1])
	if _, err := ch1.QueueDeclare("tx", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch2.Tx(); err != nil {
		t.Fatal(err)
	}
	publishN(t, ch2, "tx", 0, 2)
	ready(t, ch1, "tx", 0)
	if err := ch2.TxCommit(); err != nil {
		t.Fatal(err)
	}
	if st, err := ch1.QueueDeclarePassive("tx", false, false, false, false, nil); err != nil || st.Messages != 2 {
		t.Fatalf("after tx.commit-ok: %+v %v", st, err)
	}
	d, ok, err := ch2.Get("tx", false)
	if err != nil || !ok {
		t.Fatalf("get: %v %v", ok, err)
	}
	if err := d.Ack(false); err != nil {
		t.Fatal(err)
	}
	if err := ch2.TxRollback(); err != nil {
		t.Fatal(err)
	}
	if err := ch2.Ack(d.DeliveryTag, false); err != nil { // unacked again after the rollback
		t.Fatal(err)
	}
	if err := ch2.TxCommit(); err != nil {
		t.Fatal(err)
	}
	// Acked on n1: closing the channel requeues nothing.
	if err := ch2.Close(); err != nil {
		t.Fatal(err)
	}
	ready(t, ch1, "tx", 1)
}

// A proxied consumer cancelled while the channel's global prefetch holds a delivery of its on
// this node: the held delivery goes back to the home queue (it was never seen by the client),
// not left unacked there until the channel closes.
func TestProxyCancelRequeuesHeld(t *testing.T) {
	lc := startLinked(t, 3)
	_, ch1 := dial(t, lc.urls[0])
	_, ch2 := dial(t, lc.urls[1])
	for _, q := range []string{"h1", "h2"} {
		if _, err := ch1.QueueDeclare(q, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		publishN(t, ch1, q, 0, 1)
		ready(t, ch1, q, 1)
	}
	if err := ch2.Qos(1, 0, true); err != nil {
		t.Fatal(err)
	}
	ds1, err := ch2.Consume("h1", "c1", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	next(t, ds1)
	ds2, err := ch2.Consume("h2", "c2", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	none(t, ds2, "global prefetch 1 reached")
	ready(t, ch1, "h2", 0) // delivered by the home, held on n2
	if err := ch2.Cancel("c2", false); err != nil {
		t.Fatal(err)
	}
	ready(t, ch1, "h2", 1)
	// The credit freed by an ack delivers nothing of the cancelled consumer.
	if err := ch2.Ack(1, false); err != nil {
		t.Fatal(err)
	}
	if d, ok := <-ds2; ok { // closed by the client library at the cancel-ok
		t.Fatalf("after cancel: delivery %q", d.Body)
	}
	ready(t, ch1, "h2", 1)
}

// Consume/cancel loops on n2 of a queue homed on n1 do not use up n1's channels (2047 per
// link connection): a cancelled consumer's link channel closes once what it delivered is
// settled, at once when nothing is.
func TestProxyCancelClosesLinkChannel(t *testing.T) {
	lc := startLinked(t, 3)
	_, ch1 := dial(t, lc.urls[0])
	_, ch2 := dial(t, lc.urls[1])
	if _, err := ch1.QueueDeclare("loop", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	// One with a delivery unacked at the cancel: its link channel stays for the ack.
	publishN(t, ch1, "loop", 0, 1)
	ds, err := ch2.Consume("loop", "first", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := next(t, ds)
	if err := ch2.Cancel("first", false); err != nil {
		t.Fatal(err)
	}
	for i := range 2100 {
		tag := fmt.Sprint("c", i)
		if _, err := ch2.Consume("loop", tag, false, false, false, false, nil); err != nil {
			t.Fatalf("consume %d: %v", i, err)
		}
		if err := ch2.Cancel(tag, false); err != nil {
			t.Fatalf("cancel %d: %v", i, err)
		}
	}
	// The first consumer's ack still reaches the home.
	if err := d.Ack(false); err != nil {
		t.Fatal(err)
	}
	ready(t, ch1, "loop", 0)
	if err := ch2.Close(); err != nil {
		t.Fatal(err)
	}
	// Acked, so not requeued by the close (the link channel closes asynchronously).
	time.Sleep(300 * time.Millisecond)
	ready(t, ch1, "loop", 0)
}

type nopSink struct{}

func (nopSink) Deliver(broker.ProxyDelivery) bool { return false }
func (nopSink) Ended(*amqp.Error)                 {}

// A proxied cancel that times out drops only the proxy connection it waited on: the peer's
// forwarding connection (and the forwards in flight on it) is not the culprit.
func TestProxyCancelTimeoutKeepsForwarding(t *testing.T) {
	lc := startLinked(t, 2)
	_, ch1 := dial(t, lc.urls[0])
	_, ch2 := dial(t, lc.urls[1])
	if _, err := ch1.QueueDeclare("slow", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	publishN(t, ch2, "slow", 0, 1) // forwarded to n1: the forwarding connection is up
	ready(t, ch1, "slow", 1)
	l := lc.links[1]
	p, err := l.peer("n1", "/")
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	pub := p.pub
	p.mu.Unlock()
	if pub == nil {
		t.Fatal("no forwarding connection after a forward")
	}
	bpc, aerr := l.Consume("n1", "/", "slow", broker.ProxyConsume{Tag: "t", Prefetch: 1}, nopSink{})
	if aerr != nil {
		t.Fatal(aerr)
	}
	pc := bpc.(*proxyChannel)
	// A channel whose replies are dropped here stands for a home that does not answer.
	pc.lc.drop()
	start := time.Now()
	pc.Cancel() // returns after the link timeout
	if d := time.Since(start); d < time.Second {
		t.Fatalf("cancel returned after %v without its cancel-ok", d)
	}
	p.mu.Lock()
	after, proxy := p.pub, p.proxy
	p.mu.Unlock()
	if after != pub {
		t.Fatal("the forwarding connection was dropped by a proxied cancel's timeout")
	}
	if proxy != nil && !proxy.closing.Load() {
		t.Fatal("the proxy connection was kept after its wait timed out")
	}
	publishN(t, ch2, "slow", 1, 2)
	ready(t, ch1, "slow", 2)
}

// proxyChannels is the number of link channels of node i's proxy connection to home (0
// without one).
func (lc *linkedCluster) proxyChannels(t *testing.T, i int, home string) int {
	t.Helper()
	p, err := lc.links[i].peer(home, "/")
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	c := p.proxy
	p.mu.Unlock()
	if c == nil {
		return 0
	}
	return c.channels()
}

// A proxied consumer that its home ends (the queue deleted there) releases its link channel:
// at once when nothing it delivered is unsettled, else once the client settled it.
func TestProxyHomeCancelReleasesLinkChannel(t *testing.T) {
	lc := startLinked(t, 2)
	_, ch1 := dial(t, lc.urls[0])
	_, ch2 := dial(t, lc.urls[1])
	for _, q := range []string{"idle", "busy", "keep"} {
		if _, err := ch1.QueueDeclare(q, false, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	// A consumer that stays, so that the proxy connection exists for the baseline.
	if _, err := ch2.Consume("keep", "keep", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	base := lc.proxyChannels(t, 1, "n1")
	if base == 0 {
		t.Fatal("no proxy connection after a proxied consume")
	}
	cancels := ch2.NotifyCancel(make(chan string, 4))
	awaitCancel := func(want string) {
		t.Helper()
		select {
		case tag := <-cancels:
			if tag != want {
				t.Fatalf("cancelled %q, want %q", tag, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no basic.cancel of %s", want)
		}
	}
	settles := func(want int) {
		t.Helper()
		waitFor(t, 5*time.Second, fmt.Sprintf("%d link channels", want), func() bool { return lc.proxyChannels(t, 1, "n1") == want })
	}

	// Nothing unsettled: the link channel goes with the cancel.
	if _, err := ch2.Consume("idle", "idle", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if n := lc.proxyChannels(t, 1, "n1"); n != base+1 {
		t.Fatalf("%d link channels with a second consumer, want %d", n, base+1)
	}
	if _, err := ch1.QueueDelete("idle", false, false, false); err != nil {
		t.Fatal(err)
	}
	awaitCancel("idle")
	settles(base)

	// A delivery unacked at the home's cancel: the link channel stays for its ack.
	publishN(t, ch1, "busy", 0, 1)
	ds, err := ch2.Consume("busy", "busy", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := next(t, ds)
	if _, err := ch1.QueueDelete("busy", false, false, false); err != nil {
		t.Fatal(err)
	}
	awaitCancel("busy")
	time.Sleep(100 * time.Millisecond)
	if n := lc.proxyChannels(t, 1, "n1"); n != base+1 {
		t.Fatalf("%d link channels with a delivery unacked, want %d", n, base+1)
	}
	if err := d.Ack(false); err != nil {
		t.Fatal(err)
	}
	settles(base)
}

// A proxied no-ack consumer whose client does not read: the deliveries the home sends stop
// once the link's window is out (noAckWindow), instead of the home's whole backlog piling up
// in this node's memory; once the client reads, every message arrives, in order, and none is
// left on the home.
func TestProxyNoAckCongestedClientBounded(t *testing.T) {
	lc := startLinked(t, 2)
	_, ch1 := dial(t, lc.urls[0])
	if _, err := ch1.QueueDeclare("flood", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	const total, size = 20000, 2048 // 40 MiB: ten times the client writer's high water
	body := make([]byte, size)
	for i := range total {
		body[0], body[1], body[2] = byte(i>>16), byte(i>>8), byte(i)
		if err := ch1.Publish("", "flood", false, false, amqp091.Publishing{Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	ready(t, ch1, "flood", total)

	// A raw client that sends basic.consume and then reads nothing.
	addr := lc.servers[1].Addr().String()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(64 << 10)
	}
	fr := amqp.NewFrameReader(nc, 64<<10)
	if _, err := linkHelloPlain(nc, fr); err != nil {
		t.Fatal(err)
	}
	var out []byte
	out = amqp.AppendMethodFrame(out, 1, &amqp.ChannelOpen{})
	out = amqp.AppendMethodFrame(out, 1, &amqp.BasicConsume{Queue: "flood", ConsumerTag: "slow", NoAck: true})
	if _, err := nc.Write(out); err != nil {
		t.Fatal(err)
	}
	// The home's messages: those still ready there plus those it sent and the link has not
	// acked are the ones this node does not hold; the rest went to the client's socket or sit
	// in its writer. Wait for the flow to stop, then check how much left the home.
	var left int
	prev := -1
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		st, err := ch1.QueueDeclarePassive("flood", false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st.Messages == prev {
			break
		}
		prev = st.Messages
	}
	left = prev
	// Taken from the home: the socket buffers (a few MiB on loopback), the writer's 4 MiB high
	// water and the link's window. Without the window it is the whole backlog.
	taken := total - left
	t.Logf("the home still has %d of %d ready; %d taken (%d MiB)", left, total, taken, taken*size>>20)
	if bound := (16<<20)/size + noAckWindow; taken > bound {
		t.Fatalf("%d messages (%d MiB) left the home for a client that reads nothing, want at most %d", taken, taken*size>>20, bound)
	}
	// The client reads: everything arrives in order.
	_ = nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	next := 0
	for next < total {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %d deliveries: %v", next, err)
		}
		if f.Type == amqp.FrameBody {
			if got := int(f.Payload[0])<<16 | int(f.Payload[1])<<8 | int(f.Payload[2]); got != next {
				t.Fatalf("delivery %d is message %d", next, got)
			}
			next++
		}
	}
	ready(t, ch1, "flood", 0)
}

// linkHelloPlain is a client's connection handshake as guest (PLAIN), for raw-frame tests.
func linkHelloPlain(nc net.Conn, fr *amqp.FrameReader) (amqp.Method, error) {
	if _, err := nc.Write(amqp.ProtocolHeader); err != nil {
		return nil, err
	}
	read := func() (amqp.Method, error) {
		f, err := fr.ReadNonHeartbeat()
		if err != nil {
			return nil, err
		}
		return amqp.DecodeMethod(f.Payload)
	}
	if _, err := read(); err != nil { // start
		return nil, err
	}
	out := amqp.AppendMethodFrame(nil, 0, &amqp.ConnectionStartOk{ClientProperties: amqp.Table{"capabilities": amqp.Table{"consumer_cancel_notify": true}},
		Mechanism: "PLAIN", Response: "\x00guest\x00guest", Locale: "en_US"})
	if _, err := nc.Write(out); err != nil {
		return nil, err
	}
	m, err := read() // tune
	if err != nil {
		return nil, err
	}
	tune := m.(*amqp.ConnectionTune)
	out = amqp.AppendMethodFrame(nil, 0, &amqp.ConnectionTuneOk{ChannelMax: tune.ChannelMax, FrameMax: tune.FrameMax})
	out = amqp.AppendMethodFrame(out, 0, &amqp.ConnectionOpen{VirtualHost: "/"})
	if _, err := nc.Write(out); err != nil {
		return nil, err
	}
	return read() // open-ok
}
