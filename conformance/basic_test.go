package conformance

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestBasicPublishGet(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q := declareQueue(t, ch, nil)
	if _, ok, err := ch.Get(q, false); err != nil || ok {
		t.Fatalf("get on empty queue: ok=%v err=%v, want get-empty", ok, err)
	}
	publishN(t, ch, q, 3)
	for i := 0; i < 3; i++ {
		m := getOne(t, ch, q, false)
		if string(m.Body) != fmt.Sprint(i) {
			t.Fatalf("get #%d body %q", i, m.Body)
		}
		// get-ok message-count is the number of messages left after this one.
		if m.MessageCount != uint32(2-i) {
			t.Fatalf("get #%d message-count %d, want %d", i, m.MessageCount, 2-i)
		}
		if m.DeliveryTag != uint64(i+1) {
			t.Fatalf("get #%d delivery-tag %d, want %d", i, m.DeliveryTag, i+1)
		}
		if m.Exchange != "" || m.RoutingKey != q || m.Redelivered {
			t.Fatalf("get-ok exchange=%q key=%q redelivered=%v", m.Exchange, m.RoutingKey, m.Redelivered)
		}
	}
	if err := ch.Ack(3, true); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := ch.Get(q, false); err != nil || ok {
		t.Fatalf("get after draining: ok=%v err=%v", ok, err)
	}
	if m, _ := queueCounts(t, q); m != 0 {
		t.Fatalf("queue holds %d messages after ack of all", m)
	}
}

func TestBasicConsumeDeliveryFields(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	x := declareExchange(t, ch, "direct", nil)
	q := declareQueue(t, ch, nil)
	bind(t, ch, q, "rk", x, nil)
	d, err := ch.Consume(q, "my-tag", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, ch, x, "rk", "hello")
	m := collect(t, d, 1)[0]
	if m.ConsumerTag != "my-tag" || m.Exchange != x || m.RoutingKey != "rk" || m.DeliveryTag != 1 || m.Redelivered {
		t.Fatalf("deliver: tag=%q exchange=%q key=%q dtag=%d redelivered=%v",
			m.ConsumerTag, m.Exchange, m.RoutingKey, m.DeliveryTag, m.Redelivered)
	}
}

// Two consumers on one channel, each delivery carries its consumer's tag. (Server-generated tags
// are checked in wire_test.go: amqp091-go always sends its own.)
func TestBasicConsumerTagsCoexist(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q := declareQueue(t, ch, nil)
	d1, err := ch.Consume(q, "a", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := ch.Consume(q, "b", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, ch, q, 2)
	if m := collect(t, d1, 1)[0]; m.ConsumerTag != "a" {
		t.Fatalf("tag %q", m.ConsumerTag)
	}
	if m := collect(t, d2, 1)[0]; m.ConsumerTag != "b" {
		t.Fatalf("tag %q", m.ConsumerTag)
	}
}

func TestBasicPropertiesRoundTrip(t *testing.T) {
	t.Parallel()
	ts := time.Unix(1700000000, 0)
	headers := amqp.Table{
		"string":  "text",
		"bool":    true,
		"int8":    int8(-8),
		"uint8":   uint8(200),
		"int16":   int16(-16000),
		"uint16":  uint16(65000),
		"int32":   int32(-2000000000),
		"uint32":  uint32(4000000000),
		"int64":   int64(-9000000000000),
		"float32": float32(1.5),
		"float64": float64(-2.25),
		"decimal": amqp.Decimal{Scale: 2, Value: -12345},
		"bytes":   []byte{0, 1, 2, 0xff},
		"time":    ts,
		"void":    nil,
		"array":   []any{"a", int32(1), true, amqp.Table{"in": "array"}},
		"nested":  amqp.Table{"level2": amqp.Table{"level3": "deep", "n": int64(3)}, "arr": []any{int64(1), "two"}},
	}
	pub := amqp.Publishing{
		Headers:         headers,
		ContentType:     "application/json",
		ContentEncoding: "gzip",
		DeliveryMode:    amqp.Persistent,
		Priority:        7,
		CorrelationId:   "corr-1",
		ReplyTo:         "reply-queue",
		Expiration:      "600000",
		MessageId:       "msg-1",
		Timestamp:       ts,
		Type:            "kind",
		UserId:          "guest",
		AppId:           "conformance",
		Body:            []byte(`{"k":1}`),
	}
	check := func(t *testing.T, m amqp.Delivery) {
		t.Helper()
		got := amqp.Publishing{
			Headers: m.Headers, ContentType: m.ContentType, ContentEncoding: m.ContentEncoding,
			DeliveryMode: m.DeliveryMode, Priority: m.Priority, CorrelationId: m.CorrelationId,
			ReplyTo: m.ReplyTo, Expiration: m.Expiration, MessageId: m.MessageId, Timestamp: m.Timestamp,
			Type: m.Type, UserId: m.UserId, AppId: m.AppId, Body: m.Body,
		}
		if !got.Timestamp.Equal(pub.Timestamp) {
			t.Errorf("timestamp %v, want %v", got.Timestamp, pub.Timestamp)
		}
		got.Timestamp = pub.Timestamp
		gh, wh := got.Headers, pub.Headers
		got.Headers, pub.Headers = nil, nil
		if !reflect.DeepEqual(got, pub) {
			t.Errorf("properties\n got %+v\nwant %+v", got, pub)
		}
		pub.Headers = wh
		for k, want := range wh {
			g := gh[k]
			if tw, ok := want.(time.Time); ok {
				if tg, ok := g.(time.Time); !ok || !tg.Equal(tw) {
					t.Errorf("header %q = %#v, want %v", k, g, tw)
				}
				continue
			}
			if !reflect.DeepEqual(g, want) {
				t.Errorf("header %q = %#v (%T), want %#v (%T)", k, g, g, want, want)
			}
		}
		if len(gh) != len(wh) {
			t.Errorf("got %d headers, want %d: %v", len(gh), len(wh), gh)
		}
	}
	_, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishMsg(t, ch, "", q, pub)
	t.Run("get", func(t *testing.T) { check(t, getOne(t, ch, q, true)) })
	publishMsg(t, ch, "", q, pub)
	t.Run("deliver", func(t *testing.T) { check(t, collect(t, consume(t, ch, q, true), 1)[0]) })
}

func TestBasicUserIDMustMatch(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	err := awaitClose(t, ch, func() { publishMsg(t, ch, "", q, amqp.Publishing{UserId: "mallory", Body: []byte("x")}) })
	ae := expectChannelClosed(t, c, err, amqp.PreconditionFailed)
	if ae.Reason != "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was 'guest'" {
		t.Errorf("reply text %q", ae.Reason)
	}
}

func TestBasicBodySizes(t *testing.T) {
	t.Parallel()
	sizes := []int{0, 1, 4096, 131072 - 8, 131072, 1 << 20}
	_, ch := setup(t)
	q := declareQueue(t, ch, nil)
	d := consume(t, ch, q, true)
	for _, n := range sizes {
		body := bytes.Repeat([]byte{byte(n)}, n)
		for i := range body {
			body[i] = byte(i * 7)
		}
		publishMsg(t, ch, "", q, amqp.Publishing{Body: body})
		m := collect(t, d, 1)[0]
		if !bytes.Equal(m.Body, body) {
			t.Fatalf("body of %d bytes came back as %d bytes (or corrupted)", n, len(m.Body))
		}
	}
}

func TestBasicMandatoryReturn(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	x := declareExchange(t, ch, "direct", nil)
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	pub := amqp.Publishing{MessageId: "id-7", Headers: amqp.Table{"h": "v"}, Body: []byte("unroutable")}
	if err := ch.Publish(x, "nowhere", true, false, pub); err != nil {
		t.Fatal(err)
	}
	// A non-mandatory unroutable message is dropped silently.
	if err := ch.Publish(x, "nowhere", false, false, amqp.Publishing{Body: []byte("dropped")}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-returns:
		if r.ReplyCode != amqp.NoRoute || r.ReplyText != "NO_ROUTE" || r.Exchange != x || r.RoutingKey != "nowhere" ||
			string(r.Body) != "unroutable" || r.MessageId != "id-7" || r.Headers["h"] != "v" {
			t.Fatalf("return = %d %q %q %q %q", r.ReplyCode, r.ReplyText, r.Exchange, r.RoutingKey, r.Body)
		}
	case <-time.After(wait):
		t.Fatal("no basic.return")
	}
	select {
	case r := <-returns:
		t.Fatalf("non-mandatory message returned: %q", r.Body)
	case <-time.After(quiet):
	}
	// Mandatory to the default exchange with a missing queue name is returned too.
	if err := ch.Publish("", uname(t, "noqueue"), true, false, amqp.Publishing{Body: []byte("r2")}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-returns:
		if r.ReplyCode != amqp.NoRoute || string(r.Body) != "r2" {
			t.Fatalf("return = %d %q", r.ReplyCode, r.Body)
		}
	case <-time.After(wait):
		t.Fatal("no basic.return for default exchange")
	}
}

func TestBasicImmediateNotImplemented(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	closes := closeNotify(c)
	q := declareQueue(t, ch, nil)
	if err := ch.Publish("", q, false, true, amqp.Publishing{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-closes:
		if e == nil || e.Code != amqp.NotImplemented || e.Reason != "NOT_IMPLEMENTED - immediate=true" {
			t.Fatalf("close = %+v, want 540 NOT_IMPLEMENTED - immediate=true", e)
		}
	case <-time.After(wait):
		t.Fatal("immediate=true did not close the connection")
	}
}

func TestBasicConsumeExclusive(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	if _, err := ch.Consume(q, "excl", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	ch2 := openCh(t, c)
	_, err := ch2.Consume(q, "second", false, false, false, false, nil)
	ae := expectChannelClosed(t, c, err, amqp.AccessRefused)
	want := fmt.Sprintf("ACCESS_REFUSED - queue '%s' in vhost '/' in exclusive use", q)
	if ae.Reason != want {
		t.Errorf("reply text %q, want %q", ae.Reason, want)
	}
	// An exclusive consume on a queue that already has a consumer is refused too.
	q2 := declareQueue(t, ch, nil)
	consume(t, ch, q2, false)
	ch3 := openCh(t, c)
	_, err = ch3.Consume(q2, "want-excl", false, true, false, false, nil)
	ae = expectChannelClosed(t, c, err, amqp.AccessRefused)
	want = fmt.Sprintf("ACCESS_REFUSED - queue '%s' in vhost '/' in exclusive use", q2)
	if ae.Reason != want {
		t.Errorf("reply text %q, want %q", ae.Reason, want)
	}
}

func TestBasicDuplicateConsumerTag(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	closes := closeNotify(c)
	q := declareQueue(t, ch, nil)
	if _, err := ch.Consume(q, "dup", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	_, err := ch.Consume(q, "dup", false, false, false, false, nil)
	ae := expectConnectionClosed(t, c, closes, err, amqp.NotAllowed)
	if ae.Reason != "NOT_ALLOWED - attempt to reuse consumer tag 'dup'" {
		t.Errorf("reply text %q", ae.Reason)
	}
}

func TestBasicCancel(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q := declareQueue(t, ch, nil)
	d, err := ch.Consume(q, "c", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, ch, "", q, "before")
	assertBodies(t, collect(t, d, 1), "before")
	if err := ch.Cancel("c", false); err != nil {
		t.Fatalf("basic.cancel: %v", err)
	}
	select {
	case m, ok := <-d:
		if ok {
			t.Fatalf("delivery after cancel: %q", m.Body)
		}
	case <-time.After(wait):
		t.Fatal("delivery channel not closed after cancel")
	}
	publish(t, ch, "", q, "after")
	waitCount(t, q, 1)
	// Cancelling an unknown tag is not an error.
	if err := ch.Cancel("never-existed", false); err != nil {
		t.Fatalf("cancel of unknown tag: %v", err)
	}
	if _, c := queueCounts(t, q); c != 0 {
		t.Fatalf("consumer count %d after cancel", c)
	}
}

func TestBasicServerCancelOnQueueDelete(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	cancels := ch.NotifyCancel(make(chan string, 1))
	d, err := ch.Consume(q, "watched", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	other := openCh(t, c)
	if _, err := other.QueueDelete(q, false, false, false); err != nil {
		t.Fatal(err)
	}
	select {
	case tag := <-cancels:
		if tag != "watched" {
			t.Fatalf("basic.cancel for %q", tag)
		}
	case <-time.After(wait):
		t.Fatal("no server-initiated basic.cancel")
	}
	if _, ok := <-d; ok {
		t.Fatal("delivery channel still open")
	}
	// The channel survives.
	if _, err := ch.QueueDeclare(uname(t, "after"), false, true, false, false, nil); err != nil {
		t.Fatalf("channel unusable after server cancel: %v", err)
	}
}

func TestBasicRoundRobin(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	var ds []<-chan amqp.Delivery
	for i := 0; i < 3; i++ {
		cch := openCh(t, c)
		ds = append(ds, consume(t, cch, q, true))
	}
	publishN(t, ch, q, 9)
	for i, d := range ds {
		got := collect(t, d, 3)
		want := []string{fmt.Sprint(i), fmt.Sprint(i + 3), fmt.Sprint(i + 6)}
		assertBodies(t, got, want...)
	}
}

func TestBasicOrderPreserved(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishN(t, ch, q, 500)
	got := collect(t, consume(t, ch, q, false), 500)
	assertBodies(t, got, nums(0, 499)...)
	for i, m := range got {
		if m.DeliveryTag != uint64(i+1) {
			t.Fatalf("message %d has delivery tag %d", i, m.DeliveryTag)
		}
	}
}

func TestBasicDeliveryTagsPerChannel(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q1 := declareQueue(t, ch, nil)
	q2 := declareQueue(t, ch, nil)
	publishConfirmed(t, c, "", q1, "a", "b", "c")
	publishConfirmed(t, c, "", q2, "d", "e")
	// Deliveries from two consumers and a get on one channel share one tag sequence.
	cch := openCh(t, c)
	m := getOne(t, cch, q1, false)
	if m.DeliveryTag != 1 {
		t.Fatalf("first get tag %d", m.DeliveryTag)
	}
	d2 := consume(t, cch, q2, false)
	got := collect(t, d2, 2)
	if got[0].DeliveryTag != 2 || got[1].DeliveryTag != 3 {
		t.Fatalf("consumer tags %d %d, want 2 3", got[0].DeliveryTag, got[1].DeliveryTag)
	}
	m = getOne(t, cch, q1, false)
	if m.DeliveryTag != 4 {
		t.Fatalf("second get tag %d, want 4", m.DeliveryTag)
	}
	// A different channel starts from 1.
	other := openCh(t, c)
	if m := getOne(t, other, q1, false); m.DeliveryTag != 1 {
		t.Fatalf("other channel's first tag %d", m.DeliveryTag)
	}
}

func TestBasicQosPerConsumer(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q1 := declareQueue(t, ch, nil)
	q2 := declareQueue(t, ch, nil)
	publishN(t, ch, q1, 10)
	publishN(t, ch, q2, 10)
	if err := ch.Qos(2, 0, false); err != nil {
		t.Fatal(err)
	}
	d1 := consume(t, ch, q1, false)
	d2 := consume(t, ch, q2, false)
	// Each consumer gets its own window of 2.
	got1 := collect(t, d1, 2)
	got2 := collect(t, d2, 2)
	expectNoDelivery(t, d1)
	expectNoDelivery(t, d2)
	assertBodies(t, got1, "0", "1")
	assertBodies(t, got2, "0", "1")
	if err := got1[0].Ack(false); err != nil {
		t.Fatal(err)
	}
	assertBodies(t, collect(t, d1, 1), "2")
	expectNoDelivery(t, d1)
	// Raising the limit applies to new consumers only in RabbitMQ, so acking is what frees credit.
	if err := got2[1].Ack(true); err != nil {
		t.Fatal(err)
	}
	assertBodies(t, collect(t, d2, 2), "2", "3")
}

func TestBasicQosGlobal(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q1 := declareQueue(t, ch, nil)
	q2 := declareQueue(t, ch, nil)
	publishN(t, ch, q1, 10)
	publishN(t, ch, q2, 10)
	waitCount(t, q2, 10)
	if err := ch.Qos(3, 0, true); err != nil {
		t.Fatal(err)
	}
	d1 := consume(t, ch, q1, false)
	got1 := collect(t, d1, 3)
	// The channel-wide window is used up by the first consumer.
	d2 := consume(t, ch, q2, false)
	expectNoDelivery(t, d2)
	expectNoDelivery(t, d1)
	if err := ch.Ack(got1[2].DeliveryTag, true); err != nil {
		t.Fatal(err)
	}
	var n int
	timeout := time.After(wait)
	for n < 3 {
		select {
		case <-d1:
			n++
		case <-d2:
			n++
		case <-timeout:
			t.Fatalf("only %d deliveries after freeing 3 global credits", n)
		}
	}
	select {
	case <-d1:
		t.Fatal("global prefetch exceeded")
	case <-d2:
		t.Fatal("global prefetch exceeded")
	case <-time.After(quiet):
	}
}

func TestBasicQosBoth(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishN(t, ch, q, 10)
	// Per-consumer limit 5, channel limit 2: the smaller one wins.
	if err := ch.Qos(5, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := ch.Qos(2, 0, true); err != nil {
		t.Fatal(err)
	}
	d := consume(t, ch, q, false)
	assertBodies(t, collect(t, d, 2), "0", "1")
	expectNoDelivery(t, d)
}

func TestBasicAckNackReject(t *testing.T) {
	t.Parallel()
	type step struct {
		name        string
		settle      func(ds []amqp.Delivery) error // given deliveries of 0..4
		wantLeft    []string                       // the queue's contents afterwards, in order
		redelivered []bool
	}
	tests := []step{
		{"ack-each", func(ds []amqp.Delivery) error {
			for _, d := range ds {
				if err := d.Ack(false); err != nil {
					return err
				}
			}
			return nil
		}, nil, nil},
		{"ack-multiple", func(ds []amqp.Delivery) error { return ds[2].Ack(true) }, []string{"3", "4"}, []bool{true, true}},
		{"nack-multiple-requeue", func(ds []amqp.Delivery) error { return ds[4].Nack(true, true) }, nums(0, 4), []bool{true, true, true, true, true}},
		{"nack-multiple-drop", func(ds []amqp.Delivery) error { return ds[1].Nack(true, false) }, []string{"2", "3", "4"}, []bool{true, true, true}},
		{"nack-single-requeue", func(ds []amqp.Delivery) error { return ds[1].Nack(false, true) }, nums(0, 4), []bool{true, true, true, true, true}},
		{"reject-requeue", func(ds []amqp.Delivery) error { return ds[3].Reject(true) }, nums(0, 4), []bool{true, true, true, true, true}},
		{"reject-drop", func(ds []amqp.Delivery) error { return ds[0].Reject(false) }, []string{"1", "2", "3", "4"}, []bool{true, true, true, true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, ch := setup(t)
			q := declareQueue(t, ch, nil)
			publishConfirmed(t, c, "", q, nums(0, 4)...)
			cch := openCh(t, c)
			ds := collect(t, consume(t, cch, q, false), 5)
			if err := tc.settle(ds); err != nil {
				t.Fatal(err)
			}
			// Closing the channel requeues whatever is still unacked; then read everything back.
			cch.Close()
			var got []amqp.Delivery
			for {
				m, ok, err := ch.Get(q, true)
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					break
				}
				got = append(got, m)
			}
			assertBodies(t, got, tc.wantLeft...)
			for i, m := range got {
				if m.Redelivered != tc.redelivered[i] {
					t.Fatalf("%q redelivered=%v", m.Body, m.Redelivered)
				}
			}
		})
	}
}

func TestBasicRequeueKeepsPosition(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishN(t, ch, q, 6)
	m := make([]amqp.Delivery, 5)
	for i := range m {
		m[i] = getOne(t, ch, q, false)
	}
	m[0].Ack(false)
	m[2].Ack(false)
	// Requeue 3, then 1, then 4: they go back in their original order, ahead of 5.
	m[3].Nack(false, true)
	m[1].Reject(true)
	m[4].Nack(false, true)
	got := collect(t, consume(t, ch, q, false), 4)
	assertBodies(t, got, "1", "3", "4", "5")
	for _, d := range got[:3] {
		if !d.Redelivered {
			t.Fatalf("%q not flagged redelivered", d.Body)
		}
	}
	if got[3].Redelivered {
		t.Fatal("5 flagged redelivered")
	}
}

func TestBasicRecoverRequeue(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishN(t, ch, q, 4)
	d := consume(t, ch, q, false)
	first := collect(t, d, 4)
	assertRedelivered(t, first, false)
	if err := first[1].Ack(false); err != nil {
		t.Fatal(err)
	}
	if err := ch.Recover(true); err != nil {
		t.Fatalf("basic.recover: %v", err)
	}
	again := collect(t, d, 3)
	assertBodies(t, again, "0", "2", "3")
	assertRedelivered(t, again, true)
	// Redeliveries get fresh delivery tags.
	if again[0].DeliveryTag != 5 {
		t.Fatalf("redelivery tag %d, want 5", again[0].DeliveryTag)
	}
	if err := again[2].Ack(true); err != nil {
		t.Fatal(err)
	}
	if m, _ := queueCounts(t, q); m != 0 {
		t.Fatalf("%d messages left", m)
	}
}

func TestBasicAckErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		op   func(ch *amqp.Channel, tag uint64) error
		text string
		left int // messages in the queue once the channel is gone
	}{
		{"unknown-tag", func(ch *amqp.Channel, tag uint64) error { return ch.Ack(tag+10, false) }, "PRECONDITION_FAILED - unknown delivery tag 11", 1},
		{"double-ack", func(ch *amqp.Channel, tag uint64) error {
			ch.Ack(tag, false)
			return ch.Ack(tag, false)
		}, "PRECONDITION_FAILED - unknown delivery tag 1", 0},
		{"nack-unknown", func(ch *amqp.Channel, tag uint64) error { return ch.Nack(tag+10, false, true) }, "PRECONDITION_FAILED - unknown delivery tag 11", 1},
		{"reject-unknown", func(ch *amqp.Channel, tag uint64) error { return ch.Reject(tag+10, false) }, "PRECONDITION_FAILED - unknown delivery tag 11", 1},
		{"ack-multiple-unknown", func(ch *amqp.Channel, tag uint64) error { return ch.Ack(tag+10, true) }, "PRECONDITION_FAILED - unknown delivery tag 11", 1},
		{"ack-after-autoack", func(ch *amqp.Channel, tag uint64) error {
			ch.Ack(tag, false)
			q := declareQueue(t, ch, nil)
			publish(t, ch, "", q, "m")
			m := getOne(t, ch, q, true)
			return ch.Ack(m.DeliveryTag, false)
		}, "PRECONDITION_FAILED - unknown delivery tag 2", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, ch := setup(t)
			closes := ch.NotifyClose(make(chan *amqp.Error, 1))
			q := declareQueue(t, ch, nil)
			publish(t, ch, "", q, "m")
			m := getOne(t, ch, q, false)
			tc.op(ch, m.DeliveryTag)
			var e *amqp.Error
			select {
			case e = <-closes:
			case <-time.After(wait):
				t.Fatal("channel not closed")
			}
			ae := expectChannelClosed(t, c, e, amqp.PreconditionFailed)
			if ae.Reason != tc.text {
				t.Errorf("reply text %q, want %q", ae.Reason, tc.text)
			}
			// A message held unacked by the dead channel is back in the queue.
			waitCount(t, q, tc.left)
		})
	}
}

func TestBasicChannelCloseRequeues(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishN(t, ch, q, 5)
	cch := openCh(t, c)
	got := collect(t, consume(t, cch, q, false), 5)
	got[0].Ack(false)
	got[3].Ack(false)
	if err := cch.Close(); err != nil {
		t.Fatal(err)
	}
	ch2 := openCh(t, c)
	again := collect(t, consume(t, ch2, q, false), 3)
	assertBodies(t, again, "1", "2", "4")
	assertRedelivered(t, again, true)
}

func TestBasicConnectionCloseRequeues(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishN(t, ch, q, 3)
	c2 := dial(t)
	got := collect(t, consume(t, openCh(t, c2), q, false), 3)
	got[1].Ack(false)
	c2.Close()
	again := collect(t, consume(t, ch, q, false), 2)
	assertBodies(t, again, "0", "2")
	assertRedelivered(t, again, true)
}

func TestBasicAutoAckNotRedelivered(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareQueue(t, ch, nil)
	publishN(t, ch, q, 3)
	cch := openCh(t, c)
	assertBodies(t, collect(t, consume(t, cch, q, true), 3), "0", "1", "2")
	cch.Close()
	if m, _ := queueCounts(t, q); m != 0 {
		t.Fatalf("auto-acked messages came back: %d", m)
	}
}

func TestBasicPublishToMissingExchange(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	x := uname(t, "missing")
	publish(t, ch, x, "k", "m")
	select {
	case e := <-closes:
		ae := expectChannelClosed(t, c, e, amqp.NotFound)
		if ae.Reason != fmt.Sprintf("NOT_FOUND - no exchange '%s' in vhost '/'", x) {
			t.Errorf("reply text %q", ae.Reason)
		}
		if ae.Server != true {
			t.Error("close not server-initiated")
		}
	case <-time.After(wait):
		t.Fatal("channel not closed")
	}
}
