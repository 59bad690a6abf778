package server

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/persistence"
)

// pagedServer runs a broker with a store and a small in-memory window per queue.
func pagedServer(t *testing.T, dir string, window int) *Server {
	t.Helper()
	return startTestServer(t, func(c *Config) {
		c.DataDir = dir
		c.MaxRAMMessages = window
	})
}

func dialT(t *testing.T, s *Server) *amqp091.Channel {
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
	return ch
}

func (s *Server) testQueueStats(name string) (st struct{ ready, inMemory int }, ok bool) {
	qs, err := s.Broker().VHost("/").Queue(broker.System, name)
	if err != nil {
		return st, false
	}
	c := qs.Q().Counts()
	st.ready, st.inMemory = c.Ready, c.InMemory
	return st, true
}

// watchMemory samples a queue's in-memory count until stop is called and returns the peak.
func watchMemory(s *Server, name string) (stop func() int) {
	var peak atomic.Int64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			if st, ok := s.testQueueStats(name); ok && int64(st.inMemory) > peak.Load() {
				peak.Store(int64(st.inMemory))
			}
			select {
			case <-done:
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}()
	return func() int {
		close(done)
		<-finished
		return int(peak.Load())
	}
}

// publishConfirmedN publishes bodies from..from+n-1 with up to window unconfirmed; it puts
// ch in confirm mode and listens for its confirms, so use each channel for one call only.
func publishConfirmedN(t *testing.T, ch *amqp091.Channel, queue string, from, n int, persistent bool, window int) {
	t.Helper()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	acks := ch.NotifyPublish(make(chan amqp091.Confirmation, window))
	mode := amqp091.Transient
	if persistent {
		mode = amqp091.Persistent
	}
	outstanding := 0
	wait := func() {
		select {
		case c := <-acks:
			if !c.Ack {
				t.Fatalf("publish %d nacked", c.DeliveryTag)
			}
			outstanding--
		case <-time.After(10 * time.Second):
			t.Fatal("no confirm within 10s")
		}
	}
	for i := from; i < from+n; i++ {
		if outstanding == window {
			wait()
		}
		err := ch.Publish("", queue, false, false, amqp091.Publishing{DeliveryMode: mode, Body: []byte(strconv.Itoa(i))})
		if err != nil {
			t.Fatal(err)
		}
		outstanding++
	}
	for outstanding > 0 {
		wait()
	}
}

// drainInOrder consumes exactly n messages, which must be bodies from..from+n-1 in order,
// acking with multiple every 100, and returns how many were redelivered.
func drainInOrder(t *testing.T, ch *amqp091.Channel, queue string, from, n int) (redelivered int) {
	t.Helper()
	if err := ch.Qos(300, 0, false); err != nil {
		t.Fatal(err)
	}
	msgs, err := ch.Consume(queue, "drain", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i < from+n; i++ {
		select {
		case d := <-msgs:
			if got := string(d.Body); got != strconv.Itoa(i) {
				t.Fatalf("message %d of %s: body %q, want %d", i-from, queue, got, i)
			}
			if d.Redelivered {
				redelivered++
			}
			if (i-from)%100 == 99 || i == from+n-1 {
				if err := d.Ack(true); err != nil {
					t.Fatal(err)
				}
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: got %d of %d messages", queue, i-from, n)
		}
	}
	if err := ch.Cancel("drain", false); err != nil {
		t.Fatal(err)
	}
	return redelivered
}

// barrier waits until the journal has processed everything submitted so far.
func (s *Server) barrier(t *testing.T) {
	t.Helper()
	if err := s.Broker().Store().Commit(&persistence.Batch{}); err != nil {
		t.Fatal(err)
	}
}

// TestDeepQueueBoundedMemory: a queue far deeper than its window holds only the window in
// memory while it fills and while it drains, and delivers everything in order.
func TestDeepQueueBoundedMemory(t *testing.T) {
	const window = 1000
	tests := []struct {
		name                string
		durable, persistent bool
		n                   int
	}{
		{"persistent in durable queue", true, true, 50000},
		{"transient in durable queue", true, false, 20000},
		{"transient queue", false, false, 20000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.n
			s := pagedServer(t, t.TempDir(), window)
			ch := dialT(t, s)
			q, err := ch.QueueDeclare("deep", tc.durable, false, false, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			stop := watchMemory(s, q.Name)
			publishConfirmedN(t, ch, q.Name, 0, n, tc.persistent, 256)
			if st, _ := s.testQueueStats(q.Name); st.ready != n || st.inMemory != window {
				t.Fatalf("after publishing %d: %d ready, %d in memory; want %d in memory", n, st.ready, st.inMemory, window)
			}
			if q, err := ch.QueueDeclarePassive(q.Name, tc.durable, false, false, false, nil); err != nil || q.Messages != n {
				t.Fatalf("declare-ok reports %d messages (%v), want %d", q.Messages, err, n)
			}
			drainInOrder(t, ch, q.Name, 0, n)
			if peak := stop(); peak > window {
				t.Errorf("queue held up to %d messages in memory, window %d", peak, window)
			}
			st := s.Broker().Store().Stats()
			if st.ReadAheads < uint64((n-window)/window) {
				t.Errorf("%d read-aheads for %d paged messages with a window of %d", st.ReadAheads, n-window, window)
			}
			s.barrier(t)
			if st := s.Broker().Store().Stats(); st.MessagesStored != 0 {
				t.Errorf("%d messages still stored after draining", st.MessagesStored)
			}
		})
	}
}

// TestDeepQueueRestart: a restart loads only the window of a deep queue; the rest comes
// back from disk in order, the unacked ones first and redelivered.
func TestDeepQueueRestart(t *testing.T) {
	const n, window, unacked = 5000, 100, 3
	dir := t.TempDir()
	s := pagedServer(t, dir, window)
	ch := dialT(t, s)
	if _, err := ch.QueueDeclare("deep", true, false, false, false, amqp091.Table{"x-message-ttl": int32(3600000)}); err != nil {
		t.Fatal(err)
	}
	publishConfirmedN(t, ch, "deep", 0, n, true, 256)
	// Deliver the first few without acking them.
	if err := ch.Qos(unacked, 0, false); err != nil {
		t.Fatal(err)
	}
	msgs, err := ch.Consume("deep", "held", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < unacked; i++ {
		<-msgs
	}
	s.barrier(t) // delivery marks are on disk
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = pagedServer(t, dir, window)
	if st, _ := s.testQueueStats("deep"); st.ready != n || st.inMemory != window {
		t.Fatalf("after restart: %d ready, %d in memory; want %d ready, %d in memory", st.ready, st.inMemory, n, window)
	}
	ch = dialT(t, s)
	if got := drainInOrder(t, ch, "deep", 0, n); got != unacked {
		t.Errorf("%d redelivered, want %d", got, unacked)
	}
	s.barrier(t)
	if st := s.Broker().Store().Stats(); st.MessagesStored != 0 {
		t.Errorf("%d messages stored after draining", st.MessagesStored)
	}
}

// TestDeepQueuePurgeAndDelete: purging or deleting a deep queue counts and removes the
// paged messages too (persistent and transient), without reading them, also across a restart.
func TestDeepQueuePurgeAndDelete(t *testing.T) {
	const persistent, transient, window = 20000, 3000, 100
	for _, del := range []bool{false, true} {
		t.Run(map[bool]string{false: "purge", true: "delete"}[del], func(t *testing.T) {
			dir := t.TempDir()
			s := pagedServer(t, dir, window)
			ch := dialT(t, s)
			if _, err := ch.QueueDeclare("deep", true, false, false, false, nil); err != nil {
				t.Fatal(err)
			}
			publishConfirmedN(t, ch, "deep", 0, persistent, true, 256)
			publishConfirmedN(t, dialT(t, s), "deep", persistent, transient, false, 256)
			var n int
			var err error
			if del {
				n, err = ch.QueueDelete("deep", false, false, false)
			} else {
				n, err = ch.QueuePurge("deep", false)
			}
			if err != nil || n != persistent+transient {
				t.Fatalf("reported %d messages (%v), want %d", n, err, persistent+transient)
			}
			s.barrier(t)
			if st := s.Broker().Store().Stats(); st.MessagesStored != 0 {
				t.Errorf("%d messages stored after the purge", st.MessagesStored)
			}
			if st, ok := s.testQueueStats("deep"); ok && (st.ready != 0 || st.inMemory != 0) {
				t.Errorf("queue after purge: %+v", st)
			}
			if !del {
				// The queue works on afterwards, in memory again.
				publishConfirmedN(t, dialT(t, s), "deep", 7, 3, true, 8)
				drainInOrder(t, ch, "deep", 7, 3)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = pagedServer(t, dir, window)
			st, ok := s.testQueueStats("deep")
			if ok == del || st.ready != 0 {
				t.Errorf("after restart: queue exists=%v with %d messages", ok, st.ready)
			}
		})
	}
}

// TestPagedExpiryDeadLetters: messages expiring while paged out are dead-lettered in order.
func TestPagedExpiryDeadLetters(t *testing.T) {
	const n, window = 300, 10
	s := pagedServer(t, t.TempDir(), window)
	ch := dialT(t, s)
	if _, err := ch.QueueDeclare("dead", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	_, err := ch.QueueDeclare("ttl", true, false, false, false, amqp091.Table{
		"x-message-ttl": int32(200), "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead",
	})
	if err != nil {
		t.Fatal(err)
	}
	publishConfirmedN(t, ch, "ttl", 0, n, true, 64)
	drainInOrder(t, ch, "dead", 0, n)
	if st, _ := s.testQueueStats("ttl"); st.ready != 0 {
		t.Errorf("ttl queue still holds %d", st.ready)
	}
}

// TestPagedMaxLength: drop-head on a paged queue drops the oldest, paged or not.
func TestPagedMaxLength(t *testing.T) {
	const n, max, window = 2000, 500, 50
	s := pagedServer(t, t.TempDir(), window)
	ch := dialT(t, s)
	if _, err := ch.QueueDeclare("capped", true, false, false, false, amqp091.Table{"x-max-length": int32(max)}); err != nil {
		t.Fatal(err)
	}
	publishConfirmedN(t, ch, "capped", 0, n, true, 64)
	q, err := ch.QueueDeclarePassive("capped", true, false, false, false, nil)
	if err != nil || q.Messages != max {
		t.Fatalf("%d messages (%v), want %d", q.Messages, err, max)
	}
	drainInOrder(t, ch, "capped", n-max, max)
	s.barrier(t)
	if st := s.Broker().Store().Stats(); st.MessagesStored != 0 {
		t.Errorf("%d messages stored after draining", st.MessagesStored)
	}
}
