package server

import (
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

func dialStreamT(t *testing.T, s *Server) (*amqp091.Connection, *amqp091.Channel) {
	t.Helper()
	c, err := amqp091.Dial("amqp://guest:guest@" + s.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return c, ch
}

func streamErrCode(err error) int {
	var e *amqp091.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

var streamArgs = amqp091.Table{"x-queue-type": "stream"}

// publishConfirmed publishes bodies "m<from>".."m<to-1>" to the default exchange with confirms.
func publishStreamT(t *testing.T, ch *amqp091.Channel, q string, from, to int) {
	t.Helper()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	for i := from; i < to; i++ {
		dc, err := ch.PublishWithDeferredConfirm("", q, false, false, amqp091.Publishing{Body: []byte(fmt.Sprintf("m%d", i))})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(t.Context()); err != nil || !ok {
			t.Fatalf("publish %d not confirmed: %v %v", i, ok, err)
		}
	}
}

// consumeN reads n deliveries from a consumer with x-stream-offset spec, acking each, and
// checks bodies and offsets run from first.
func consumeStreamT(t *testing.T, ch *amqp091.Channel, q string, offset any, first, n int) {
	t.Helper()
	args := amqp091.Table{}
	if offset != nil {
		args["x-stream-offset"] = offset
	}
	if err := ch.Qos(10, 0, false); err != nil {
		t.Fatal(err)
	}
	ds, err := ch.Consume(q, "", false, false, false, false, args)
	if err != nil {
		t.Fatal(err)
	}
	for i := first; i < first+n; i++ {
		select {
		case d := <-ds:
			if string(d.Body) != fmt.Sprintf("m%d", i) || d.Headers["x-stream-offset"] != int64(i) {
				t.Fatalf("offset %v: got %q with x-stream-offset %v, want m%d", offset, d.Body, d.Headers["x-stream-offset"], i)
			}
			if err := d.Ack(false); err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("offset %v: delivery %d did not come", offset, i)
		}
	}
}

func TestStreamQueueDeclareErrors(t *testing.T) {
	s := startTestServer(t, nil)
	c, _ := dialStreamT(t, s)
	for _, tc := range []struct {
		name                           string
		durable, exclusive, autoDelete bool
		args                           amqp091.Table
		code                           int
	}{
		{"ok", true, false, false, nil, 0},
		{"non-durable", false, false, false, nil, 406},
		{"exclusive", true, true, false, nil, 406},
		{"auto-delete", true, false, true, nil, 406},
		{"bad max-age", true, false, false, amqp091.Table{"x-max-age": "1x"}, 406},
		{"max-age and segment size", true, false, false, amqp091.Table{"x-max-age": "7D", "x-stream-max-segment-size-bytes": int64(1 << 20), "x-max-length-bytes": int64(1 << 30)}, 0},
	} {
		ch, err := c.Channel()
		if err != nil {
			t.Fatal(err)
		}
		args := amqp091.Table{"x-queue-type": "stream"}
		for k, v := range tc.args {
			args[k] = v
		}
		_, err = ch.QueueDeclare("s-"+tc.name, tc.durable, tc.autoDelete, tc.exclusive, false, args)
		if got := streamErrCode(err); got != tc.code {
			t.Errorf("%s: declare got %v, want code %d", tc.name, err, tc.code)
		}
		if err == nil {
			ch.Close()
		}
	}
}

func TestStreamQueuePublishConsume(t *testing.T) {
	s := startTestServer(t, nil)
	c, ch := dialStreamT(t, s)
	if _, err := ch.QueueDeclare("events", true, false, false, false, streamArgs); err != nil {
		t.Fatal(err)
	}
	publishStreamT(t, ch, "events", 0, 100)

	// Many consumers, each at its own position, on their own channels.
	for _, tc := range []struct {
		offset any
		first  int
	}{
		{"first", 0}, {int64(0), 0}, {int64(42), 42}, {int32(99), 99}, {"last", 0},
	} {
		cch, err := c.Channel()
		if err != nil {
			t.Fatal(err)
		}
		n := 100 - tc.first
		if tc.offset == "last" {
			n = 1 // the last chunk: with one confirmed publish at a time, the last message
			tc.first = 99
		}
		consumeStreamT(t, cch, "events", tc.offset, tc.first, n)
		cch.Close()
	}

	// A consumer at "next" (the default) gets only what is published after it started, at once.
	nch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		consumeStreamT(t, nch, "events", nil, 100, 5)
	}()
	time.Sleep(100 * time.Millisecond)
	pch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	publishStreamT(t, pch, "events", 100, 105)
	<-done
}

func TestStreamQueueRefusals(t *testing.T) {
	s := startTestServer(t, nil)
	c, ch := dialStreamT(t, s)
	if _, err := ch.QueueDeclare("log", true, false, false, false, streamArgs); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		op   func(ch *amqp091.Channel) error
		code int
	}{
		{"consume without prefetch", func(ch *amqp091.Channel) error {
			_, err := ch.Consume("log", "", false, false, false, false, nil)
			return err
		}, 406},
		{"no-ack consume", func(ch *amqp091.Channel) error {
			if err := ch.Qos(10, 0, false); err != nil {
				return err
			}
			_, err := ch.Consume("log", "", true, false, false, false, nil)
			return err
		}, 540},
		{"bad x-stream-offset", func(ch *amqp091.Channel) error {
			if err := ch.Qos(10, 0, false); err != nil {
				return err
			}
			_, err := ch.Consume("log", "", false, false, false, false, amqp091.Table{"x-stream-offset": "sometime"})
			return err
		}, 406},
		{"basic.get", func(ch *amqp091.Channel) error {
			_, _, err := ch.Get("log", false)
			return err
		}, 540},
		{"queue.purge", func(ch *amqp091.Channel) error {
			_, err := ch.QueuePurge("log", false)
			return err
		}, 540},
	} {
		_, ch := dialStreamT(t, s) // 540 is a connection error
		if got := streamErrCode(tc.op(ch)); got != tc.code {
			t.Errorf("%s: code %d, want %d", tc.name, got, tc.code)
		}
	}
	// Deleting the queue cancels its consumers.
	cch, _ := c.Channel()
	if err := cch.Qos(10, 0, false); err != nil {
		t.Fatal(err)
	}
	ds, err := cch.Consume("log", "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	dch, _ := c.Channel()
	if _, err := dch.QueueDelete("log", false, false, false); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-ds:
		if ok {
			t.Fatal("delivery after delete")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("consumer not cancelled by the delete")
	}
}

// A durable stream survives a restart with its messages and offsets.
func TestStreamQueueSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s := startTestServer(t, func(c *Config) { c.DataDir = dir })
	_, ch := dialStreamT(t, s)
	if _, err := ch.QueueDeclare("kept", true, false, false, false, streamArgs); err != nil {
		t.Fatal(err)
	}
	publishStreamT(t, ch, "kept", 0, 20)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = startTestServer(t, func(c *Config) { c.DataDir = dir })
	_, ch = dialStreamT(t, s)
	consumeStreamT(t, ch, "kept", "first", 0, 20)
}

// TestStreamQueueThroughput publishes 16 B messages with confirms (window 256) to a stream on
// disk, then reads them all from "first" with 3 consumers at once (prefetch 1000, multiple
// acks), checking order, and logs the rates (run without -race for numbers).
func TestStreamQueueThroughput(t *testing.T) {
	n := 100_000
	if testing.Short() {
		n = 10_000
	}
	s := startTestServer(t, func(c *Config) { c.DataDir = t.TempDir() })
	_, ch := dialStreamT(t, s)
	if _, err := ch.QueueDeclare("tp", true, false, false, false, streamArgs); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	publishConfirmedN(t, ch, "tp", 0, n, true, 256)
	pub := time.Since(start)
	start = time.Now()
	errs := make(chan error, 3)
	for r := 0; r < 3; r++ {
		go func() {
			_, ch := dialStreamT(t, s)
			if err := ch.Qos(1000, 0, false); err != nil {
				errs <- err
				return
			}
			ds, err := ch.Consume("tp", "", false, false, false, false, amqp091.Table{"x-stream-offset": "first"})
			if err != nil {
				errs <- err
				return
			}
			for i := 0; i < n; i++ {
				d := <-ds
				if string(d.Body) != strconv.Itoa(i) {
					errs <- fmt.Errorf("delivery %d has body %q", i, d.Body)
					return
				}
				if i%500 == 499 || i == n-1 {
					if err := d.Ack(true); err != nil {
						errs <- err
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for r := 0; r < 3; r++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	read := time.Since(start)
	t.Logf("%d msgs: publish with confirms %.0f msgs/s; 3 consumers from first %.0f msgs/s each",
		n, float64(n)/pub.Seconds(), float64(n)/read.Seconds())
}

// Publishes in a transaction reach the stream at commit; acks in a transaction return credit at
// commit; nacks return credit without redelivery (a stream is not a queue).
func TestStreamQueueTxAndNack(t *testing.T) {
	s := startTestServer(t, nil)
	c, ch := dialStreamT(t, s)
	if _, err := ch.QueueDeclare("txs", true, false, false, false, streamArgs); err != nil {
		t.Fatal(err)
	}
	if err := ch.Tx(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		if err := ch.Publish("", "txs", false, false, amqp091.Publishing{Body: []byte(fmt.Sprintf("m%d", i))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	cch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := cch.Qos(1, 0, false); err != nil { // one at a time: each next delivery needs credit back
		t.Fatal(err)
	}
	if err := cch.Tx(); err != nil {
		t.Fatal(err)
	}
	ds, err := cch.Consume("txs", "", false, false, false, false, amqp091.Table{"x-stream-offset": "first"})
	if err != nil {
		t.Fatal(err)
	}
	next := func(want string) amqp091.Delivery {
		t.Helper()
		select {
		case d := <-ds:
			if string(d.Body) != want || d.Redelivered {
				t.Fatalf("got %q (redelivered %v), want %s", d.Body, d.Redelivered, want)
			}
			return d
		case <-time.After(5 * time.Second):
			t.Fatalf("%s not delivered", want)
		}
		return amqp091.Delivery{}
	}
	d := next("m0")
	if err := d.Ack(false); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-ds:
		t.Fatalf("delivery %q before the ack was committed", d.Body)
	case <-time.After(200 * time.Millisecond):
	}
	if err := cch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	d = next("m1")
	if err := d.Nack(false, true); err != nil {
		t.Fatal(err)
	}
	if err := cch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	d = next("m2") // not m1 again
	if err := d.Reject(false); err != nil {
		t.Fatal(err)
	}
	if err := cch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	next("m3")
}
