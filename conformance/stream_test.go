package conformance

import (
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// declareStream declares a stream queue with a unique name and schedules its deletion.
func declareStream(t *testing.T, ch *amqp.Channel) string {
	t.Helper()
	name := uname(t, "sq")
	if _, err := ch.QueueDeclare(name, true, false, false, false, amqp.Table{"x-queue-type": "stream"}); err != nil {
		t.Fatalf("queue.declare stream %s: %v", name, err)
	}
	cleanupQueue(t, name)
	return name
}

// Streams are durable, non-exclusive, non-auto-delete; x-max-age is RabbitMQ's duration.
func TestStreamDeclareErrors(t *testing.T) {
	t.Parallel()
	c := dial(t)
	for _, tc := range []struct {
		name                           string
		durable, exclusive, autoDelete bool
		args                           amqp.Table
		text                           string // after "PRECONDITION_FAILED - ", with %s the queue
	}{
		{"non-durable", false, false, false, nil, "invalid property 'non-durable' for queue '%s' in vhost '/'"},
		{"exclusive", true, true, false, nil, "invalid property 'exclusive-owner' for queue '%s' in vhost '/'"},
		{"auto-delete", true, false, true, nil, "invalid property 'auto-delete' for queue '%s' in vhost '/'"},
		{"bad max-age", true, false, false, amqp.Table{"x-max-age": "1x"}, "invalid arg 'x-max-age' for queue '%s' in vhost '/': invalid_max_age"},
		{"zero max-age", true, false, false, amqp.Table{"x-max-age": "0s"}, "invalid arg 'x-max-age' for queue '%s' in vhost '/': invalid_max_age"},
		{"segment size type", true, false, false, amqp.Table{"x-stream-max-segment-size-bytes": "a"}, "invalid arg 'x-stream-max-segment-size-bytes' for queue '%s' in vhost '/': \"expected integer, got longstr\""},
	} {
		ch := openCh(t, c)
		name := uname(t, "sq")
		args := amqp.Table{"x-queue-type": "stream"}
		for k, v := range tc.args {
			args[k] = v
		}
		_, err := ch.QueueDeclare(name, tc.durable, tc.autoDelete, tc.exclusive, false, args)
		if err == nil {
			cleanupQueue(t, name)
		}
		ae := expectChannelClosed(t, c, err, amqp.PreconditionFailed)
		if want := "PRECONDITION_FAILED - " + fmt.Sprintf(tc.text, name); ae.Reason != want {
			t.Errorf("%s: %q, want %q", tc.name, ae.Reason, want)
		}
	}
	ch := openCh(t, c)
	name := uname(t, "sq")
	if _, err := ch.QueueDeclare(name, true, false, false, false, amqp.Table{"x-queue-type": "stream",
		"x-max-age": "7D", "x-max-length-bytes": int64(1 << 30), "x-stream-max-segment-size-bytes": int64(1 << 20)}); err != nil {
		t.Fatalf("stream with retention arguments: %v", err)
	}
	cleanupQueue(t, name)
}

// streamRead consumes q from offset with prefetch 10 on its own channel, acking, and returns
// "body@x-stream-offset" for what arrives until nothing more comes for quiet.
func streamRead(t *testing.T, c *amqp.Connection, q string, offset any) []string {
	t.Helper()
	ch := openCh(t, c)
	defer ch.Close()
	if err := ch.Qos(10, 0, false); err != nil {
		t.Fatal(err)
	}
	args := amqp.Table{}
	if offset != nil {
		args["x-stream-offset"] = offset
	}
	ds, err := ch.Consume(q, "", false, false, false, false, args)
	if err != nil {
		t.Fatalf("consume at %v: %v", offset, err)
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
		return got
	}
}

// Consuming is non-destructive: every consumer reads from its own x-stream-offset, and every
// delivery carries its offset.
func TestStreamOffsets(t *testing.T) {
	t.Parallel()
	c, ch := setup(t)
	q := declareStream(t, ch)
	for i := 0; i < 5; i++ {
		publishConfirmed(t, c, "", q, fmt.Sprint(i)) // one at a time: one chunk each
	}
	all := "0@0 1@1 2@2 3@3 4@4"
	for _, tc := range []struct {
		offset any
		want   string
	}{
		{"first", all},
		{"last", "4@4"},
		{"next", ""},
		{nil, ""},
		{int64(3), "3@3 4@4"},
		{int64(100), ""},
		{int64(-1), all},
		{"1h", all},
		{time.Now().Add(-time.Hour), all},
		{time.Now().Add(time.Hour), ""},
	} {
		if got := strings.Join(streamRead(t, c, q, tc.offset), " "); got != tc.want {
			t.Errorf("x-stream-offset %v: read %q, want %q", tc.offset, got, tc.want)
		}
	}
	// A consumer at "next" receives what is published after it started.
	cch := openCh(t, c)
	if err := cch.Qos(10, 0, false); err != nil {
		t.Fatal(err)
	}
	ds, err := cch.Consume(q, "", false, false, false, false, amqp.Table{"x-stream-offset": "next"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(quiet) // let the consumer attach before the publish
	publishConfirmed(t, c, "", q, "5")
	d := collect(t, ds, 1)[0]
	if string(d.Body) != "5" || d.Headers["x-stream-offset"] != int64(5) {
		t.Fatalf("next: got %q at %v", d.Body, d.Headers["x-stream-offset"])
	}
}

// RabbitMQ's refusals on streams: a consumer needs a prefetch and manual acks; basic.get and
// queue.purge are not implemented (540 closes the connection).
func TestStreamRefusals(t *testing.T) {
	t.Parallel()
	_, ch := setup(t)
	q := declareStream(t, ch)
	rs := fmt.Sprintf("queue '%s' in vhost '/'", q)
	for _, tc := range []struct {
		name string
		op   func(ch *amqp.Channel) error
		code int
		text string
	}{
		{"consume without prefetch", func(ch *amqp.Channel) error {
			_, err := ch.Consume(q, "", false, false, false, false, nil)
			return err
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - consumer prefetch count is not set for '" + rs + "'"},
		{"no-ack consume", func(ch *amqp.Channel) error {
			if err := ch.Qos(10, 0, false); err != nil {
				return err
			}
			_, err := ch.Consume(q, "", true, false, false, false, nil)
			return err
		}, amqp.NotImplemented, "NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues " + rs},
		{"bad x-stream-offset", func(ch *amqp.Channel) error {
			if err := ch.Qos(10, 0, false); err != nil {
				return err
			}
			_, err := ch.Consume(q, "", false, false, false, false, amqp.Table{"x-stream-offset": "1x"})
			return err
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - invalid arg 'x-stream-offset' for " + rs + ": {invalid_stream_offset_arg,{longstr,<<\"1x\">>}}"},
		{"basic.get", func(ch *amqp.Channel) error {
			_, _, err := ch.Get(q, false)
			return err
		}, amqp.NotImplemented, "NOT_IMPLEMENTED - basic.get not supported by stream queues " + rs},
		{"queue.purge", func(ch *amqp.Channel) error {
			_, err := ch.QueuePurge(q, false)
			return err
		}, amqp.NotImplemented, "NOT_IMPLEMENTED - queue.purge not supported by stream queues " + rs},
	} {
		c := dial(t)
		ae := expectCode(t, tc.op(openCh(t, c)), tc.code)
		if ae.Reason != tc.text {
			t.Errorf("%s: %q, want %q", tc.name, ae.Reason, tc.text)
		}
	}
}
