package conformance

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/server"
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

// policyBroker is a broker whose policies a test can set. For RabbitMQ that is the broker
// under test, through rabbitmqctl on this machine; for Warren, whose policies come from its
// configuration, it is a broker of the test's own that set reloads (server.Reload, what
// SIGHUP runs).
type policyBroker struct {
	url string
	set func(t *testing.T, name, pattern string, def map[string]any)
}

func newPolicyBroker(t *testing.T) *policyBroker {
	t.Helper()
	if isWarren() {
		cfg := server.DefaultConfig()
		cfg.Listen, cfg.DataDir, cfg.Logger = "127.0.0.1:0", t.TempDir(), slog.New(slog.DiscardHandler)
		s, err := server.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); err != nil {
			s.Close()
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		var mu sync.Mutex
		return &policyBroker{
			url: fmt.Sprintf("amqp://guest:guest@%s/", s.Addr()),
			set: func(t *testing.T, name, pattern string, def map[string]any) {
				t.Helper()
				mu.Lock()
				defer mu.Unlock()
				cfg.Policies = append(cfg.Policies, server.Policy{Name: name, VHost: "/", Pattern: pattern, ApplyTo: "queues", Definition: def})
				if err := s.Reload(cfg); err != nil {
					t.Fatalf("reload with policy %s: %v", name, err)
				}
			},
		}
	}
	ctl, err := exec.LookPath("rabbitmqctl")
	if host, _, _ := net.SplitHostPort(brokerAddr); err != nil || (host != "localhost" && !net.ParseIP(host).IsLoopback()) {
		t.Skipf("policies on %s are set with rabbitmqctl on the broker's machine (rabbitmqctl: %v, broker at %s)", brokerProduct, err, brokerAddr)
	}
	return &policyBroker{
		url: brokerURL,
		set: func(t *testing.T, name, pattern string, def map[string]any) {
			t.Helper()
			js, _ := json.Marshal(def)
			if out, err := exec.Command(ctl, "set_policy", "--apply-to", "queues", "--priority", "100", name, pattern, string(js)).CombinedOutput(); err != nil {
				t.Fatalf("rabbitmqctl set_policy %s: %v\n%s", name, err, out)
			}
			t.Cleanup(func() { _ = exec.Command(ctl, "clear_policy", name).Run() })
		},
	}
}

// streamFirst is the offset of the first message a consumer from "first" receives.
func streamFirst(t *testing.T, c *amqp.Connection, q string) int64 {
	t.Helper()
	ch := openCh(t, c)
	defer ch.Close()
	if err := ch.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	ds, err := ch.Consume(q, "", false, false, false, false, amqp.Table{"x-stream-offset": "first"})
	if err != nil {
		t.Fatalf("consume %s from first: %v", q, err)
	}
	off, _ := collect(t, ds, 1)[0].Headers["x-stream-offset"].(int64)
	return off
}

// fillStreamChunks publishes n messages of size bytes one at a time, each confirmed before
// the next, so that each is a chunk of its own and small segments fill one after the other.
func fillStreamChunks(t *testing.T, c *amqp.Connection, q string, n, size int) {
	t.Helper()
	ch := openCh(t, c)
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confs := ch.NotifyPublish(make(chan amqp.Confirmation, 1))
	body := strings.Repeat("x", size)
	for i := 0; i < n; i++ {
		publish(t, ch, "", q, body)
		select {
		case cf := <-confs:
			if !cf.Ack {
				t.Fatalf("publish %d nacked", i)
			}
		case <-time.After(wait):
			t.Fatal("timeout waiting for a publisher confirm")
		}
	}
}

// awaitTrimmed waits until retention has removed the start of q (RabbitMQ applies a policy
// and its retention asynchronously).
func awaitTrimmed(t *testing.T, c *amqp.Connection, q, what string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for streamFirst(t, c, q) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the stream still starts at offset 0", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The stream policy keys: max-length-bytes, max-age and stream-max-segment-size-bytes set a
// stream's retention, and for streams the policy's value wins over the queue's argument, higher
// or lower (RabbitMQ 3.10: rabbit_stream_queue resolves them with policy_precedence). A policy
// set on an existing stream changes its retention. Segments are 4 KiB and each message a chunk
// of about 500 bytes, so 40 messages fill several segments.
func TestStreamPolicies(t *testing.T) {
	t.Parallel()
	pb := newPolicyBroker(t)
	c, err := amqp.Dial(pb.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	policyFor := func(t *testing.T, q string, def map[string]any) {
		t.Helper()
		pb.set(t, "pol."+q, "^"+regexp.QuoteMeta(q)+"$", def)
	}
	seg := int64(4096)

	t.Run("policy wins over a lower argument", func(t *testing.T) {
		q := uname(t, "sq")
		policyFor(t, q, map[string]any{"max-length-bytes": 1 << 30})
		q2 := declareNamed(t, c, q, amqp.Table{"x-queue-type": "stream", "x-max-length-bytes": int64(1), "x-stream-max-segment-size-bytes": seg})
		fillStreamChunks(t, c, q2, 40, 500)
		time.Sleep(quiet) // RabbitMQ's retention runs after the segment rolls
		if first := streamFirst(t, c, q2); first != 0 {
			t.Fatalf("x-max-length-bytes 1 with a 1 GiB policy: the stream starts at %d, want 0 (the policy wins)", first)
		}
	})
	t.Run("policy wins over a higher argument", func(t *testing.T) {
		q := uname(t, "sq")
		policyFor(t, q, map[string]any{"max-length-bytes": 6000})
		q2 := declareNamed(t, c, q, amqp.Table{"x-queue-type": "stream", "x-max-length-bytes": int64(1 << 30), "x-stream-max-segment-size-bytes": seg})
		fillStreamChunks(t, c, q2, 40, 500)
		awaitTrimmed(t, c, q2, "x-max-length-bytes 1 GiB with a 6000-byte policy")
	})
	t.Run("policy segment size wins", func(t *testing.T) {
		q := uname(t, "sq")
		policyFor(t, q, map[string]any{"stream-max-segment-size-bytes": seg})
		q2 := declareNamed(t, c, q, amqp.Table{"x-queue-type": "stream", "x-max-length-bytes": int64(6000), "x-stream-max-segment-size-bytes": int64(1 << 30)})
		fillStreamChunks(t, c, q2, 40, 500)
		awaitTrimmed(t, c, q2, "x-stream-max-segment-size-bytes 1 GB with a 4 KiB policy and 6000 bytes kept")
	})
	t.Run("policy max-age wins", func(t *testing.T) {
		q := uname(t, "sq")
		policyFor(t, q, map[string]any{"max-age": "1s"})
		q2 := declareNamed(t, c, q, amqp.Table{"x-queue-type": "stream", "x-max-age": "1D", "x-stream-max-segment-size-bytes": seg})
		fillStreamChunks(t, c, q2, 20, 500)
		time.Sleep(2 * time.Second)
		fillStreamChunks(t, c, q2, 20, 500) // rolls segments: retention runs
		awaitTrimmed(t, c, q2, "x-max-age 1D with a 1s policy, 2s later")
	})
	t.Run("policy set on an existing stream", func(t *testing.T) {
		q := declareNamed(t, c, uname(t, "sq"), amqp.Table{"x-queue-type": "stream", "x-stream-max-segment-size-bytes": seg})
		fillStreamChunks(t, c, q, 40, 500)
		if first := streamFirst(t, c, q); first != 0 {
			t.Fatalf("no retention: the stream starts at %d", first)
		}
		policyFor(t, q, map[string]any{"max-length-bytes": 6000})
		fillStreamChunks(t, c, q, 10, 500) // in case the broker applies it when a segment rolls
		awaitTrimmed(t, c, q, "a 6000-byte policy set on a stream of 40 messages")
	})
}

// declareNamed declares q on a channel of c with args and schedules its deletion.
func declareNamed(t *testing.T, c *amqp.Connection, q string, args amqp.Table) string {
	t.Helper()
	ch := openCh(t, c)
	defer ch.Close()
	if _, err := ch.QueueDeclare(q, true, false, false, false, args); err != nil {
		t.Fatalf("declare %s: %v", q, err)
	}
	t.Cleanup(func() {
		if ch, err := c.Channel(); err == nil {
			ch.QueueDelete(q, false, false, false)
			ch.Close()
		}
	})
	return q
}
