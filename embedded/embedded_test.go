package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/embedded"
	"github.com/warrenmq/warren/server"
)

const wait = 10 * time.Second

func dial(t *testing.T, url string) *amqp091.Connection {
	t.Helper()
	c, err := amqp091.Dial(url)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func channel(t *testing.T, c *amqp091.Connection) *amqp091.Channel {
	t.Helper()
	ch, err := c.Channel()
	if err != nil {
		t.Fatalf("channel.open: %v", err)
	}
	return ch
}

// publishConfirmed publishes body to queue q through the default exchange and waits for the
// broker's confirm.
func publishConfirmed(t *testing.T, ch *amqp091.Channel, q, body string, mode uint8) {
	t.Helper()
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm.select: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, true, false,
		amqp091.Publishing{Body: []byte(body), DeliveryMode: mode})
	if err != nil {
		t.Fatalf("basic.publish: %v", err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil || !ok {
		t.Fatalf("confirm of %q: ack=%v err=%v", body, ok, err)
	}
}

func receive(t *testing.T, d <-chan amqp091.Delivery) amqp091.Delivery {
	t.Helper()
	select {
	case m, ok := <-d:
		if !ok {
			t.Fatal("delivery channel closed")
		}
		return m
	case <-time.After(wait):
		t.Fatal("no delivery")
	}
	panic("unreachable")
}

// One broker per test, publish with confirms, consume: the use the package exists for.
func TestNewTestBrokerPublishConsume(t *testing.T) {
	t.Parallel()
	b := embedded.NewTestBroker(t)
	if !strings.HasPrefix(b.Addr(), "127.0.0.1:") || strings.HasSuffix(b.Addr(), ":0") {
		t.Fatalf("Addr = %q, want a chosen port on 127.0.0.1", b.Addr())
	}
	if want := "amqp://guest:guest@" + b.Addr() + "/"; b.URL() != want {
		t.Fatalf("URL = %q, want %q", b.URL(), want)
	}
	c := dial(t, b.URL())
	if p, _ := c.Properties["product"].(string); p != "Warren" {
		t.Fatalf("product = %q, want Warren", p)
	}
	ch := channel(t, c)
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, ch, q.Name, "hello", amqp091.Transient)
	d, err := ch.Consume(q.Name, "", false, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := receive(t, d)
	if string(m.Body) != "hello" {
		t.Fatalf("body = %q, want hello", m.Body)
	}
	if err := m.Ack(false); err != nil {
		t.Fatal(err)
	}
}

// NewTestBroker's broker is gone once its test has finished.
func TestNewTestBrokerClosedByCleanup(t *testing.T) {
	t.Parallel()
	var b *embedded.Broker
	t.Run("user", func(t *testing.T) {
		b = embedded.NewTestBroker(t)
		if err := b.WaitReady(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
	if err := b.WaitReady(context.Background()); !errors.Is(err, embedded.ErrClosed) {
		t.Fatalf("WaitReady after the test = %v, want ErrClosed", err)
	}
	if nc, err := net.DialTimeout("tcp", b.Addr(), time.Second); err == nil {
		nc.Close()
		t.Fatalf("%s still accepts connections after the test", b.Addr())
	}
}

// Two brokers in one process are independent: separate ports, separate queues.
func TestTwoBrokers(t *testing.T) {
	t.Parallel()
	b1 := embedded.NewTestBroker(t)
	b2 := embedded.NewTestBroker(t)
	if b1.Addr() == b2.Addr() {
		t.Fatalf("both brokers on %s", b1.Addr())
	}
	ch1 := channel(t, dial(t, b1.URL()))
	if _, err := ch1.QueueDeclare("only-on-1", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, ch1, "only-on-1", "x", amqp091.Transient)
	ch2 := channel(t, dial(t, b2.URL()))
	_, err := ch2.QueueDeclarePassive("only-on-1", false, false, false, false, nil)
	var ae *amqp091.Error
	if !errors.As(err, &ae) || ae.Code != amqp091.NotFound {
		t.Fatalf("passive declare on the second broker = %v, want 404 NOT_FOUND", err)
	}
	if q, err := ch1.QueueDeclarePassive("only-on-1", false, false, false, false, nil); err != nil || q.Messages != 1 {
		t.Fatalf("first broker's queue = %+v, %v; want 1 message", q, err)
	}
}

// Users, vhosts, permissions, policies and topology given as typed values are in place when Start
// returns.
func TestOptionsTopologyAndAccess(t *testing.T) {
	t.Parallel()
	b := embedded.NewTestBrokerWith(t, embedded.Options{
		Users:       []embedded.User{{Name: "app", Password: "s3cret/?"}},
		VHosts:      []embedded.VHost{{Name: "orders"}},
		Permissions: []embedded.Permission{{User: "app", VHost: "orders", Configure: "", Write: "^in$", Read: "^work$"}},
		Policies: []embedded.Policy{{Name: "cap", VHost: "orders", Pattern: "^work$", ApplyTo: "queues",
			Definition: map[string]any{"max-length": 2}}},
		Exchanges: []embedded.Exchange{{Name: "in", VHost: "orders", Type: "direct", Durable: true}},
		Queues:    []embedded.Queue{{Name: "work", VHost: "orders", Durable: true}, {Name: "on-root"}},
		Bindings:  []embedded.Binding{{VHost: "orders", Source: "in", Destination: "work", RoutingKey: "k"}},
	})
	c := dial(t, b.URLFor("app", "s3cret/?", "orders"))
	ch := channel(t, c)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 3))
	for i := range 3 {
		if err := ch.Publish("in", "k", false, false, amqp091.Publishing{Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		if cf := <-confirms; !cf.Ack {
			t.Fatalf("publish %d nacked", cf.DeliveryTag)
		}
	}
	// The policy's max-length of 2 dropped the oldest message.
	var got []string
	for {
		m, ok, err := ch.Get("work", true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		got = append(got, string(m.Body))
	}
	if strings.Join(got, " ") != "1 2" {
		t.Fatalf("work holds %v, want [1 2] (policy max-length 2)", got)
	}
	// app may not configure anything in orders.
	_, err := ch.QueueDeclare("other", false, false, false, false, nil)
	var ae *amqp091.Error
	if !errors.As(err, &ae) || ae.Code != amqp091.AccessRefused {
		t.Fatalf("queue.declare without configure permission = %v, want 403", err)
	}
	// An empty VHost is "/"; guest keeps its defaults there.
	root := channel(t, dial(t, b.URL()))
	if _, err := root.QueueDeclarePassive("on-root", false, false, false, false, nil); err != nil {
		t.Fatalf("queue on-root in vhost /: %v", err)
	}
	// guest has no permission on the added vhost.
	if _, err := amqp091.Dial(b.URLFor("guest", "guest", "orders")); err == nil {
		t.Fatal("guest connected to vhost orders without a permission")
	}
}

// A user with the default user's name replaces it.
func TestOptionsReplaceGuest(t *testing.T) {
	t.Parallel()
	b := embedded.NewTestBrokerWith(t, embedded.Options{Users: []embedded.User{{Name: "guest", Password: "other"}}})
	if _, err := amqp091.Dial(b.URL()); err == nil {
		t.Fatal("guest/guest accepted after the password was replaced")
	}
	dial(t, b.URLFor("guest", "other", "/"))
}

// Invalid options fail Start with the configuration key in the error, and Start on a port in use
// fails without leaving anything behind.
func TestStartErrors(t *testing.T) {
	_, err := embedded.Start(embedded.Options{Queues: []embedded.Queue{{Name: "q", VHost: "nope"}}})
	if err == nil || !strings.Contains(err.Error(), "queues[0].vhost") {
		t.Fatalf("Start with a queue in a missing vhost = %v, want an error naming queues[0].vhost", err)
	}
	done := leakCheck(t)
	b := embedded.NewTestBroker(t)
	_, err = embedded.Start(embedded.Options{Addr: b.Addr(), DataDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Start on a busy port = %v, want address already in use", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	done()
}

// With a data directory, durable queues and persistent messages survive a restart.
func TestDataDirRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opts := embedded.Options{DataDir: dir, Queues: []embedded.Queue{{Name: "jobs", Durable: true}}}
	b, err := embedded.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	c, err := amqp091.Dial(b.URL())
	if err != nil {
		t.Fatal(err)
	}
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, ch, "jobs", "kept", amqp091.Persistent)
	_ = c.Close()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close = %v, want nil", err)
	}

	b = embedded.NewTestBrokerWith(t, opts)
	m, ok, err := channel(t, dial(t, b.URL())).Get("jobs", true)
	if err != nil || !ok || string(m.Body) != "kept" {
		t.Fatalf("after restart: get = %q, %v, %v; want kept", m.Body, ok, err)
	}
}

// Configure reaches settings that Options does not name.
func TestConfigure(t *testing.T) {
	t.Parallel()
	b := embedded.NewTestBrokerWith(t, embedded.Options{Configure: func(c *server.Config) { c.ChannelMax = 7 }})
	c := dial(t, b.URL())
	if got := c.Config.ChannelMax; got != 7 {
		t.Fatalf("negotiated channel_max = %d, want 7", got)
	}
}

// WaitReady proves the broker speaks AMQP, gives up when its context ends, and reports ErrClosed
// after Close.
func TestWaitReady(t *testing.T) {
	t.Parallel()
	b, err := embedded.Start(embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := b.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady on a started broker: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitReady(ctx); !errors.Is(err, embedded.ErrClosed) {
		t.Fatalf("WaitReady after Close = %v, want ErrClosed", err)
	}
}

// Close leaves no goroutine of the broker running: in memory and with a store, after clients
// connected, published, consumed and were forced off by the shutdown.
func TestNoGoroutineLeak(t *testing.T) {
	for _, tc := range []struct {
		name string
		dir  func(t *testing.T) string
	}{
		{"in memory", func(*testing.T) string { return "" }},
		{"data dir", func(t *testing.T) string { return t.TempDir() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := leakCheck(t)
			b, err := embedded.Start(embedded.Options{DataDir: tc.dir(t)})
			if err != nil {
				t.Fatal(err)
			}
			c, err := amqp091.Dial(b.URL())
			if err != nil {
				t.Fatal(err)
			}
			ch, err := c.Channel()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ch.QueueDeclare("q", true, false, false, false, nil); err != nil {
				t.Fatal(err)
			}
			publishConfirmed(t, ch, "q", "m", amqp091.Persistent)
			d, err := ch.Consume("q", "", false, false, false, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			receive(t, d) // left unacked: Close must cope with it
			// A second client stays connected: Close forces it off with 320 CONNECTION_FORCED.
			forced, err := amqp091.Dial(b.URL())
			if err != nil {
				t.Fatal(err)
			}
			closes := forced.NotifyClose(make(chan *amqp091.Error, 1))
			_ = c.Close()
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			if e := <-closes; e == nil || e.Code != amqp091.ConnectionForced {
				t.Fatalf("connected client got %v, want 320 CONNECTION_FORCED", e)
			}
			done()
		})
	}
}

// Two brokers started and closed at the same time leave nothing behind either.
func TestNoGoroutineLeakTwoBrokers(t *testing.T) {
	done := leakCheck(t)
	var bs [2]*embedded.Broker
	errs := make(chan error, 2)
	for i := range bs {
		go func() {
			var err error
			bs[i], err = embedded.Start(embedded.Options{})
			errs <- err
		}()
	}
	for range bs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range bs {
		go func() { errs <- b.Close() }()
	}
	for range bs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	done()
}

// BenchmarkStart measures starting an in-memory broker until it accepts AMQP connections, and
// closing it. heap-B/broker and stack-B/broker are the live heap and the goroutine stacks an idle
// broker holds (averaged over 20 brokers).
func BenchmarkStart(b *testing.B) {
	for b.Loop() {
		br, err := embedded.Start(embedded.Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := br.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	heap, stack := idleMemory(b, 20, func() string { return "" })
	b.ReportMetric(heap, "heap-B/broker")
	b.ReportMetric(stack, "stack-B/broker")
}

// BenchmarkStartDataDir is BenchmarkStart with a store: an empty data directory opened, restored
// and closed each time.
func BenchmarkStartDataDir(b *testing.B) {
	for b.Loop() {
		br, err := embedded.Start(embedded.Options{DataDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		if err := br.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	heap, stack := idleMemory(b, 5, b.TempDir)
	b.ReportMetric(heap, "heap-B/broker")
	b.ReportMetric(stack, "stack-B/broker")
}

// BenchmarkStartToFirstConnection measures what a test waits for: from Start until an amqp091-go
// client has completed the AMQP handshake and opened a channel.
func BenchmarkStartToFirstConnection(b *testing.B) {
	for b.Loop() {
		br, err := embedded.Start(embedded.Options{})
		if err != nil {
			b.Fatal(err)
		}
		c, err := amqp091.Dial(br.URL())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Channel(); err != nil {
			b.Fatal(err)
		}
		_ = c.Close()
		if err := br.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// idleMemory is the average growth of the live heap and of goroutine stacks while n idle brokers
// run, each with the data directory dir returns.
func idleMemory(b *testing.B, n int, dir func() string) (heap, stack float64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	brokers := make([]*embedded.Broker, n)
	for i := range brokers {
		var err error
		if brokers[i], err = embedded.Start(embedded.Options{DataDir: dir()}); err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	for _, br := range brokers {
		_ = br.Close()
	}
	return float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n),
		float64(int64(after.StackInuse)-int64(before.StackInuse)) / float64(n)
}

// A config.yaml supplies users, permissions and topology; the listen address and the data
// directory still come from Options.
func TestConfigFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.yaml")
	yaml := `users:
  - {name: app, password: s3cret}
vhosts: [/]
permissions:
  - {user: app, vhost: /, configure: ".*", write: ".*", read: ".*"}
queues:
  - {name: from-file, vhost: /, durable: false}
`
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	b := embedded.NewTestBrokerWith(t, embedded.Options{ConfigFile: file})
	if !strings.HasPrefix(b.Addr(), "127.0.0.1:") {
		t.Fatalf("listening on %s, want the embedded default", b.Addr())
	}
	conn, err := amqp091.Dial(b.URLFor("app", "s3cret", "/"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclarePassive("from-file", false, false, false, false, nil); err != nil {
		t.Fatalf("the queue declared by the file: %v", err)
	}
	if _, err := embedded.Start(embedded.Options{ConfigFile: filepath.Join(t.TempDir(), "missing.yaml")}); err == nil {
		t.Fatal("a missing config file started a broker")
	}
}
