package cluster

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// streamReadAt consumes stream q on url from offset (nil: no argument) with a prefetch and
// manual acks (acks return credit), and returns "body@offset" of what it read until nothing
// came for quiet, or the consume's error.
func streamReadAt(t *testing.T, url, q string, offset any, quiet time.Duration) ([]string, error) {
	t.Helper()
	c, ch := dial(t, url)
	defer c.Close()
	if err := ch.Qos(2, 0, false); err != nil { // below the count: acks must return credit
		t.Fatal(err)
	}
	var args amqp091.Table
	if offset != nil {
		args = amqp091.Table{"x-stream-offset": offset}
	}
	ds, err := ch.Consume(q, "", false, false, false, false, args)
	if err != nil {
		return nil, err
	}
	var got []string
	for {
		select {
		case d := <-ds:
			got = append(got, fmt.Sprintf("%s@%v", d.Body, d.Headers["x-stream-offset"]))
			if err := d.Ack(false); err != nil {
				t.Fatal(err)
			}
			continue
		case <-time.After(quiet):
		}
		return got, nil
	}
}

// A stream declared on n1 lives there (its log on n1's disk); a publish on n2 is forwarded to
// it and confirmed once written; consumers on n3 are proxied to n1 with their x-stream-offset
// (first, a number, a timestamp, an interval, last, next), read with a prefetch and acks as
// credit, and see the offsets of n1's log. After n1 crashes and restarts, the stream and its
// records are still there and still reached from n3.
func TestClusterStreamAcrossNodes(t *testing.T) {
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	const q = "cs"
	args := amqp091.Table{"x-queue-type": "stream"}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := amqp091.Dial(nodes["n1"].url)
		if err == nil {
			var ch *amqp091.Channel
			if ch, err = c.Channel(); err == nil {
				_, err = ch.QueueDeclare(q, true, false, false, false, args)
			}
			_ = c.Close()
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("declaring the stream on n1: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // the metadata log's first election
	}
	for _, n := range nodes {
		waitQueue(t, n.url, q)
	}
	home := nodes["n1"].srv.Broker().VHost("/")
	if !home.IsStreamQueue(q) {
		t.Fatal("n1 has no stream log for the stream it declared")
	}
	if nodes["n3"].srv.Broker().VHost("/").IsStreamQueue(q) {
		t.Fatal("n3 opened a log of its own for a stream homed on n1")
	}

	_, pch := dial(t, nodes["n2"].url)
	for i := range 5 {
		publishConfirmed(t, pch, q, fmt.Sprint(i)) // one at a time: one chunk each
	}
	all := "0@0 1@1 2@2 3@3 4@4"
	const quiet = 500 * time.Millisecond
	for _, tc := range []struct {
		offset any
		want   string
	}{
		{"first", all},
		{int64(3), "3@3 4@4"},
		{int64(-1), all},
		{time.Now().Add(-time.Hour), all},
		{time.Now().Add(time.Hour), ""},
		{"1h", all},
		{"last", "4@4"},
		{"next", ""},
	} {
		got, err := streamReadAt(t, nodes["n3"].url, q, tc.offset, quiet)
		if err != nil {
			t.Fatalf("n3, x-stream-offset %v: %v", tc.offset, err)
		}
		if got := strings.Join(got, " "); got != tc.want {
			t.Errorf("n3, x-stream-offset %v: read %q, want %q", tc.offset, got, tc.want)
		}
	}

	// RabbitMQ's checks are the home's, answered through the proxy: a stream consumer needs a
	// prefetch.
	_, nch := dial(t, nodes["n3"].url)
	_, err := nch.Consume(q, "", false, false, false, false, nil)
	if code := amqpCode(err); code != amqp091.PreconditionFailed {
		t.Errorf("consume without prefetch on n3: %v, want 406", err)
	}
	// A no-ack consume without prefetch too, with the home's code and text (the link turns a
	// no-ack consume into an acknowledging one with a window: the home never sees it).
	_, hch := dial(t, nodes["n1"].url)
	_, herr := hch.Consume(q, "", true, false, false, false, nil)
	_, nch = dial(t, nodes["n3"].url)
	_, err = nch.Consume(q, "", true, false, false, false, nil)
	if amqpCode(herr) != amqp091.PreconditionFailed || fmt.Sprint(err) != fmt.Sprint(herr) {
		t.Errorf("no-ack consume without prefetch on n3: %v; on the home n1: %v; want the home's 406", err, herr)
	}

	// What the home would refuse with a connection error (540) is refused on n3, the client's
	// node, with RabbitMQ's code and text; the link to n1 is untouched.
	rs := fmt.Sprintf("queue '%s' in vhost '/'", q)
	for _, tc := range []struct {
		name string
		op   func(ch *amqp091.Channel) error
		text string
	}{
		{"no-ack consume", func(ch *amqp091.Channel) error {
			if err := ch.Qos(10, 0, false); err != nil {
				return err
			}
			_, err := ch.Consume(q, "", true, false, false, false, nil)
			return err
		}, "NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues " + rs},
		{"basic.get", func(ch *amqp091.Channel) error {
			_, _, err := ch.Get(q, false)
			return err
		}, "NOT_IMPLEMENTED - basic.get not supported by stream queues " + rs},
		{"queue.purge", func(ch *amqp091.Channel) error {
			_, err := ch.QueuePurge(q, false)
			return err
		}, "NOT_IMPLEMENTED - queue.purge not supported by stream queues " + rs},
	} {
		_, ch := dial(t, nodes["n3"].url)
		var ae *amqp091.Error
		if err := tc.op(ch); !errors.As(err, &ae) || ae.Code != amqp091.NotImplemented || ae.Reason != tc.text {
			t.Errorf("%s on n3: %v, want 540 %q", tc.name, err, tc.text)
		}
	}
	if got, err := streamReadAt(t, nodes["n3"].url, q, int64(4), quiet); err != nil || strings.Join(got, " ") != "4@4" {
		t.Errorf("n3 after the refusals, from offset 4: read %q, %v", got, err)
	}

	nodes["n1"].crash()
	nodes["n1"].start()
	waitQueue(t, nodes["n1"].url, q)
	if !nodes["n1"].srv.Broker().VHost("/").IsStreamQueue(q) {
		t.Fatal("n1 restarted without the stream's log")
	}
	_, pch = dial(t, nodes["n2"].url)
	deadline = time.Now().Add(15 * time.Second)
	for {
		// n2's link to the restarted n1 reconnects: a publish nacked meanwhile is retried.
		if err := pch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		dc, err := pch.PublishWithDeferredConfirm("", q, false, false, amqp091.Publishing{DeliveryMode: 2, Body: []byte("5")})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(t.Context()); err != nil {
			t.Fatal(err)
		} else if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("publishes to the stream still nacked 15 s after n1's restart")
		}
		time.Sleep(100 * time.Millisecond)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		read, err := streamReadAt(t, nodes["n3"].url, q, "first", quiet)
		got := strings.Join(read, " ")
		if err == nil && got == all+" 5@5" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n3 after n1's restart, from first: read %q (%v), want %q", got, err, all+" 5@5")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A stream declare the home would refuse (non-durable, a bad retention argument) is refused by
// the declaring node before it reaches the log, with RabbitMQ's 406, and leaves the name free.
func TestClusterStreamDeclareChecks(t *testing.T) {
	tc := newTestCluster(t, 2, true)
	entries := len(tc.log.entries)
	for _, m := range []broker.QueueSpec{
		{Name: "s", Durable: false, Args: amqp.Table{"x-queue-type": "stream"}},
		{Name: "s", Durable: true, Args: amqp.Table{"x-queue-type": "stream", "x-max-age": "1x"}},
	} {
		_, err := tc.vhost(1).DeclareQueue(broker.System, m)
		if err == nil || err.Code != amqp.PreconditionFailed {
			t.Fatalf("declare %+v: %v, want 406", m, err)
		}
	}
	if len(tc.log.entries) != entries {
		t.Errorf("refused declares reached the log: %d entries, want %d", len(tc.log.entries), entries)
	}
	if _, err := tc.vhost(1).DeclareQueue(broker.System, broker.QueueSpec{Name: "s", Durable: true,
		Args: amqp.Table{"x-queue-type": "stream"}}); err != nil {
		t.Fatalf("stream declare: %v", err)
	}
	if !tc.vhost(1).IsStreamQueue("s") || tc.vhost(0).IsStreamQueue("s") {
		t.Errorf("stream log on n2 %v, on n1 %v; want only on its home n2", tc.vhost(1).IsStreamQueue("s"), tc.vhost(0).IsStreamQueue("s"))
	}
	tc.sameTopology(t)
}
