package conformance

import (
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// confirmCh opens a channel in confirm mode and returns it with its confirmation stream.
func confirmCh(t *testing.T, c *amqp.Connection, buf int) (*amqp.Channel, chan amqp.Confirmation) {
	t.Helper()
	ch := openCh(t, c)
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm.select: %v", err)
	}
	return ch, ch.NotifyPublish(make(chan amqp.Confirmation, buf))
}

func nextConfirm(t *testing.T, confs chan amqp.Confirmation) amqp.Confirmation {
	t.Helper()
	select {
	case cf := <-confs:
		return cf
	case <-time.After(wait):
		t.Fatal("no publisher confirm")
	}
	return amqp.Confirmation{}
}

func TestConfirmSequence(t *testing.T) {
	t.Parallel()
	c := dial(t)
	ch, confs := confirmCh(t, c, 200)
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("second confirm.select: %v", err)
	}
	q := declareQueue(t, ch, nil)
	x := declareExchange(t, ch, "fanout", nil)
	for i := 1; i <= 100; i++ {
		if got := ch.GetNextPublishSeqNo(); got != uint64(i) {
			t.Fatalf("next seq %d, want %d", got, i)
		}
		target := q
		xn := ""
		if i%3 == 0 {
			// Unroutable, non-mandatory: still acked.
			xn, target = x, ""
		}
		publishMsg(t, ch, xn, target, amqp.Publishing{DeliveryMode: uint8(1 + i%2), Body: []byte("m")})
	}
	for i := 1; i <= 100; i++ {
		cf := nextConfirm(t, confs)
		if cf.DeliveryTag != uint64(i) || !cf.Ack {
			t.Fatalf("confirm #%d: tag=%d ack=%v", i, cf.DeliveryTag, cf.Ack)
		}
	}
	if m, _ := queueCounts(t, q); m != 67 {
		t.Fatalf("queue holds %d, want 67", m)
	}
}

func TestConfirmDeferred(t *testing.T) {
	t.Parallel()
	c := dial(t)
	ch, _ := confirmCh(t, c, 10)
	q := declareQueue(t, ch, nil)
	dc, err := ch.PublishWithDeferredConfirm("", q, false, false, amqp.Publishing{Body: []byte("m")})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan bool, 1)
	go func() { done <- dc.Wait() }()
	select {
	case ack := <-done:
		if !ack || dc.DeliveryTag != 1 {
			t.Fatalf("deferred confirm ack=%v tag=%d", ack, dc.DeliveryTag)
		}
	case <-time.After(wait):
		t.Fatal("deferred confirm never completed")
	}
}

func TestConfirmNackRejectPublish(t *testing.T) {
	t.Parallel()
	c := dial(t)
	ch, confs := confirmCh(t, c, 10)
	q := declareQueue(t, ch, amqp.Table{"x-max-length": int32(2), "x-overflow": "reject-publish"})
	for i := 0; i < 4; i++ {
		publish(t, ch, "", q, string(rune('a'+i)))
	}
	want := []bool{true, true, false, false}
	for i, w := range want {
		cf := nextConfirm(t, confs)
		if cf.DeliveryTag != uint64(i+1) || cf.Ack != w {
			t.Fatalf("confirm #%d: tag=%d ack=%v, want ack=%v", i+1, cf.DeliveryTag, cf.Ack, w)
		}
	}
	if got := getAll(t, ch, q); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("queue holds %v, want [a b]", got)
	}
	// With room again, publishes are acked.
	publish(t, ch, "", q, "e")
	if cf := nextConfirm(t, confs); !cf.Ack || cf.DeliveryTag != 5 {
		t.Fatalf("confirm after drain: %+v", cf)
	}
}

func TestConfirmFanoutOneNackNacksAll(t *testing.T) {
	t.Parallel()
	c := dial(t)
	ch, confs := confirmCh(t, c, 10)
	x := declareExchange(t, ch, "fanout", nil)
	full := declareQueue(t, ch, amqp.Table{"x-max-length": int32(1), "x-overflow": "reject-publish"})
	roomy := declareQueue(t, ch, nil)
	bind(t, ch, full, "", x, nil)
	bind(t, ch, roomy, "", x, nil)
	publish(t, ch, x, "", "1")
	publish(t, ch, x, "", "2")
	if cf := nextConfirm(t, confs); !cf.Ack {
		t.Fatal("first publish nacked")
	}
	// One of the two queues refused the second message: the publisher gets a nack.
	if cf := nextConfirm(t, confs); cf.Ack {
		t.Fatal("second publish acked although one queue rejected it")
	}
	if m, _ := queueCounts(t, roomy); m != 2 {
		t.Fatalf("roomy queue holds %d, want 2", m)
	}
}

func TestConfirmAfterReturn(t *testing.T) {
	t.Parallel()
	c := dial(t)
	ch, confs := confirmCh(t, c, 10)
	returns := ch.NotifyReturn(make(chan amqp.Return, 10))
	x := declareExchange(t, ch, "direct", nil)
	if err := ch.Publish(x, "nowhere", true, false, amqp.Publishing{Body: []byte("r")}); err != nil {
		t.Fatal(err)
	}
	cf := nextConfirm(t, confs)
	if !cf.Ack || cf.DeliveryTag != 1 {
		t.Fatalf("confirm for an unroutable mandatory message: %+v, want ack 1", cf)
	}
	// amqp091-go dispatches frames in order into buffered channels, so the return must be queued
	// already when the ack is.
	select {
	case r := <-returns:
		if r.ReplyCode != amqp.NoRoute {
			t.Fatalf("return code %d", r.ReplyCode)
		}
	default:
		t.Fatal("basic.ack arrived before basic.return")
	}
}

func TestConfirmPersistentToDurableQueue(t *testing.T) {
	t.Parallel()
	c := dial(t)
	ch, confs := confirmCh(t, c, 100)
	q := uname(t, "durable")
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	cleanupQueue(t, q)
	for i := 0; i < 50; i++ {
		publishMsg(t, ch, "", q, amqp.Publishing{DeliveryMode: amqp.Persistent, Body: []byte("p")})
	}
	for i := 1; i <= 50; i++ {
		if cf := nextConfirm(t, confs); !cf.Ack || cf.DeliveryTag != uint64(i) {
			t.Fatalf("confirm %+v, want ack %d", cf, i)
		}
	}
	if m, _ := queueCounts(t, q); m != 50 {
		t.Fatalf("queue holds %d", m)
	}
}
