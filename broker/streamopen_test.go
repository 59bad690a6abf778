package broker

import (
	"errors"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/stream"
)

// slowStreamOpen makes the stream logs opened during the test wait for release after
// signalling entered.
type slowStreamOpen struct {
	entered chan string
	release chan struct{}
}

func withSlowStreamOpen(t *testing.T) *slowStreamOpen {
	t.Helper()
	s := &slowStreamOpen{entered: make(chan string, 4), release: make(chan struct{})}
	prev := openStreamLog
	openStreamLog = func(dir string, o stream.Options) (*stream.Stream, error) {
		s.entered <- dir
		<-s.release
		o.NoSync = true
		return stream.Open(dir, o)
	}
	t.Cleanup(func() { openStreamLog = prev })
	return s
}

type declareResult struct {
	qs  *Queue
	err *amqp.Error
}

func declareAsync(v *VHost, name string) chan declareResult {
	ch := make(chan declareResult, 1)
	go func() {
		qs, err := v.DeclareQueue(System, QueueSpec{Name: name, Durable: true, Args: amqp.Table{"x-queue-type": "stream"}})
		ch <- declareResult{qs, err}
	}()
	return ch
}

// A stream's log is created without the vhost's lock: while one is slow to open, publishers
// to the vhost's other queues and declares of other queues go on; a declare of the same name
// waits and then finds the stream, as a second declare after the first would.
func TestStreamOpenOutsideVHostLock(t *testing.T) {
	slow := withSlowStreamOpen(t)
	b := newTestBroker(t, t.TempDir())
	v := b.VHost("/")
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "work", Durable: true}); err != nil {
		t.Fatal(err)
	}
	first := declareAsync(v, "events")
	select {
	case <-slow.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream's log was not opened")
	}
	second := declareAsync(v, "events")

	// While the open is stuck: a publish to another queue of the vhost is routed and
	// confirmed, another queue is declared, and a passive declare does not see the stream yet.
	others := make(chan error, 1)
	go func() {
		if err := publishPlain(v, "work", "m"); err != nil {
			others <- err
			return
		}
		if _, err := v.DeclareQueue(System, QueueSpec{Name: "other", Durable: true}); err != nil {
			others <- err
			return
		}
		if _, err := v.DeclareQueue(System, QueueSpec{Name: "events", Passive: true}); err == nil || err.Code != amqp.NotFound {
			others <- errors.New("passive declare of a stream being opened: want 404")
			return
		}
		others <- nil
	}()
	select {
	case err := <-others:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		close(slow.release)
		t.Fatal("a publish or declare on the vhost waited for another stream's log to be opened")
	}
	select {
	case r := <-second:
		t.Fatalf("a second declare of the stream returned before its log was open: %v", r.err)
	case <-time.After(50 * time.Millisecond):
	}

	close(slow.release)
	r1, r2 := <-first, <-second
	if r1.err != nil || r2.err != nil || r1.qs != r2.qs || !r1.qs.IsStream() {
		t.Fatalf("declares: %+v %+v, want the same stream queue", r1, r2)
	}
	select {
	case dir := <-slow.entered:
		t.Fatalf("the stream's log was opened twice (%s)", dir)
	default:
	}
	if res := publish(t, v, v.NewPublisher(), "", "events", "e"); !res.Routed || !res.OnDisk {
		t.Fatalf("publish to the new stream: %+v", res)
	}
}

// A failed open gives 541 and lifts the reservation: nothing is registered or stored, and the
// name can be declared again.
func TestStreamOpenFailure(t *testing.T) {
	prev := openStreamLog
	t.Cleanup(func() { openStreamLog = prev })
	fail := true
	openStreamLog = func(dir string, o stream.Options) (*stream.Stream, error) {
		if fail {
			return nil, errors.New("injected: disk full")
		}
		return stream.Open(dir, o)
	}
	dir := t.TempDir()
	b := newTestBroker(t, dir)
	v := b.VHost("/")
	_, err := v.DeclareQueue(System, QueueSpec{Name: "events", Durable: true, Args: amqp.Table{"x-queue-type": "stream"}})
	if err == nil || err.Code != amqp.InternalError {
		t.Fatalf("declare with a failing open: %v, want 541", err)
	}
	if _, err := v.Queue(System, "events"); err == nil || err.Code != amqp.NotFound {
		t.Fatalf("after a failed open the queue exists: %v", err)
	}
	v.mu.RLock()
	reserved := len(v.opening)
	v.mu.RUnlock()
	if reserved != 0 {
		t.Fatalf("%d names still reserved after a failed open", reserved)
	}
	fail = false
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "events", Durable: true, Args: amqp.Table{"x-queue-type": "stream"}}); err != nil {
		t.Fatalf("declare after the failure: %v", err)
	}
}

// publishPlain publishes body to queue through the default exchange and waits for its sync:
// publish without a *testing.T, for goroutines other than the test's.
func publishPlain(v *VHost, queue, body string) error {
	ex, aerr := v.Exchange("")
	if aerr != nil {
		return aerr
	}
	props := amqp.Properties{DeliveryMode: 2}
	header := amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(body)), &props)
	sum, err := amqp.ScanContentHeader(header)
	if err != nil {
		return err
	}
	msg, aerr := v.b.NewMessage(ex, queue, header, &sum, []byte(body))
	if aerr != nil {
		return aerr
	}
	done := make(chan error, 1)
	res, _ := v.NewPublisher().Publish(ex, msg, sum.HeadersRaw, func(err error) { done <- err })
	if !res.Routed {
		return errors.New("publish to " + queue + " not routed")
	}
	if res.OnDisk {
		return <-done
	}
	return nil
}

// A transaction's persistent publish routed to a stream and to two durable queues commits
// (prepare left a nil entry for the stream and then marked every entry shared on disk: a
// nil dereference that closed the connection with 541, found by the orders example).
func TestTxnPublishToStreamAndQueues(t *testing.T) {
	b := newTestBroker(t, t.TempDir())
	v := b.VHost("/")
	if err := v.DeclareExchange(System, ExchangeSpec{Name: "events", Type: "topic", Durable: true}); err != nil {
		t.Fatal(err)
	}
	declareTestStream(t, v, "log", nil)
	for _, q := range []string{"a", "b"} {
		if _, err := v.DeclareQueue(System, QueueSpec{Name: q, Durable: true}); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{"log", "a", "b"} {
		if err := v.Bind(System, BindingSpec{Source: "events", Destination: q, Key: "#"}); err != nil {
			t.Fatal(err)
		}
	}
	ex, _ := v.Exchange("events")
	props := amqp.Properties{DeliveryMode: 2}
	header := amqp.AppendContentHeader(nil, amqp.ClassBasic, 1, &props)
	sum, _ := amqp.ScanContentHeader(header)
	msg, _ := b.NewMessage(ex, "order.placed", header, &sum, []byte("x"))
	tx := v.NewTxn()
	tx.Publish(ex, msg, false)
	if err := tx.Commit(nil); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"a", "b"} {
		qs, _ := v.Queue(System, q)
		if n := qs.Q().Counts().Ready; n != 1 {
			t.Fatalf("queue %s holds %d messages after the commit, want 1", q, n)
		}
	}
	s := newStreamSink()
	if _, err := v.ConsumeStream(System, "log", s, StreamConsume{Prefetch: 1, Args: amqp.Table{"x-stream-offset": "first"}}, nil); err != nil {
		t.Fatal(err)
	}
	if got := s.await(t, 1); string(got[0].Msg.Body) != "x" {
		t.Fatalf("stream record %q", got[0].Msg.Body)
	}
}
