//go:build !conformance_external

package conformance

// In-process tests for findings 1, 2 and 3 of issue 23 (hostile clients), using the cases of
// conformance/hostile/catalog against a Warren of their own. They measure Warren's heap with
// runtime.ReadMemStats, which only means something when Warren runs in this process, so they are
// not parallel (parallel tests start only after the sequential ones are done) and are skipped
// when the suite is pointed at another broker.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/conformance/hostile/catalog"
	"github.com/warrenmq/warren/server"
)

// hostileWarren starts a Warren of the test's own on dir (a new temp dir when "") with cfg
// changed by mutate, and returns its URL and a function that stops it (also called at the end
// of the test).
func hostileWarren(t *testing.T, dir string, mutate func(*server.Config)) (string, func()) {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	cfg := server.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = dir
	if !testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("server.Start: %v", err)
	}
	var once sync.Once
	stop := func() { once.Do(func() { srv.Close() }) }
	t.Cleanup(stop)
	return "amqp://guest:guest@" + srv.Addr().String() + "/", stop
}

// inProcessOnly skips tests that measure Warren's memory from inside its process.
func inProcessOnly(t *testing.T) {
	t.Helper()
	warrenOnly(t)
	if *amqpURLFlag != "" || os.Getenv("AMQP_URL") != "" {
		t.Skip("measures the heap of an in-process Warren; the suite was given a broker URL")
	}
}

// liveHeap is the heap in use after a full collection: what the broker really holds.
func liveHeap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

func hostileEnv(t *testing.T, url, restrictedURL string) *catalog.Env {
	t.Helper()
	e, err := catalog.NewEnv(url, restrictedURL)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func declareTransient(t *testing.T, url, name string) {
	t.Helper()
	c, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(name, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
}

// heapBound is how much a hostile client that sent a few KiB may make the broker hold.
const heapBound = 32 << 20

// Finding 1: a content header declaring 128 MiB followed by a 1-byte body frame must not make
// the broker allocate the declared size (RabbitMQ's memory does not move). Four channels of one
// connection; the test holds the connection open while it measures.
func TestHostileDeclaredBodySizeNotAllocated(t *testing.T) {
	inProcessOnly(t)
	url, _ := hostileWarren(t, "", nil)
	declareTransient(t, url, "lying")
	e := hostileEnv(t, url, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before := liveHeap()
	c, _, err := catalog.LyingContent{Channels: 4, DeclaredSize: 128 << 20, RoutingKey: "lying"}.Send(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	grown := liveHeap() - before
	t.Logf("heap grew by %s for 4 headers declaring 128 MiB each", catalog.MiB(grown))
	if grown > heapBound {
		t.Fatalf("4 content headers declaring 128 MiB with 1 byte of body each grew the heap by %s (bound %s): body buffers must grow with the bytes received",
			catalog.MiB(grown), catalog.MiB(heapBound))
	}
}

// Finding 1, without write permission: authorization must come before any body is buffered, so a
// user who may not publish cannot make the broker allocate either.
func TestHostileDeclaredBodySizeWithoutWritePermission(t *testing.T) {
	inProcessOnly(t)
	url, _ := hostileWarren(t, "", func(c *server.Config) {
		c.Users = append(c.Users, server.User{Name: "ro", Password: "ro"})
		c.Permissions = append(c.Permissions, server.Permission{User: "ro", VHost: "/", Configure: "", Write: "", Read: ".*"})
	})
	declareTransient(t, url, "lying")
	restricted := fmt.Sprintf("amqp://ro:ro@%s/", hostileEnv(t, url, "").Addr)
	e := hostileEnv(t, url, restricted)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before := liveHeap()
	c, refused, err := catalog.LyingContent{Channels: 4, DeclaredSize: 128 << 20, RoutingKey: "lying",
		User: e.RestrictedUser, Pass: e.RestrictedPass, AllowedClose: 403}.Send(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	grown := liveHeap() - before
	t.Logf("heap grew by %s; %d of 4 publishes refused with 403 at the method frame", catalog.MiB(grown), refused)
	if grown > heapBound {
		t.Fatalf("a user without write permission grew the heap by %s (bound %s) with 4 lying content headers",
			catalog.MiB(grown), catalog.MiB(heapBound))
	}
}

// Finding 3: basic.get-ok must obey the same output bound as deliveries. A client pipelines 300
// basic.get + basic.recover pairs on a 1 MiB message and never reads: the broker must stop reading
// it rather than queue 300 MiB of get-ok frames, and must give the memory back when it goes.
func TestHostileGetRecoverUnreadBounded(t *testing.T) {
	inProcessOnly(t)
	url, _ := hostileWarren(t, "", nil)
	declareTransient(t, url, "big")
	c, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confs := ch.NotifyPublish(make(chan amqp091.Confirmation, 1))
	if err := ch.Publish("", "big", false, false, amqp091.Publishing{Body: make([]byte, 1<<20)}); err != nil {
		t.Fatal(err)
	}
	if cf := <-confs; !cf.Ack {
		t.Fatal("publish nacked")
	}
	e := hostileEnv(t, url, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before := liveHeap()
	flood, err := catalog.GetRecoverFlood{Queue: "big", Pairs: 300}.Send(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	// The broker works through what it read for a while (slowly under -race): watch the heap for
	// 5 s, or until it is past the bound.
	var peak int64
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end) && peak <= 2*heapBound; time.Sleep(200 * time.Millisecond) {
		peak = max(peak, liveHeap()-before)
	}
	flood.Close()
	var after int64
	deadline := time.Now().Add(5 * time.Second)
	for {
		after = liveHeap() - before
		if after <= heapBound || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("heap peak +%s while the client did not read, +%s after it left", catalog.MiB(peak), catalog.MiB(after))
	if peak > 2*heapBound {
		t.Errorf("300 unread basic.get + basic.recover pairs on a 1 MiB message grew the heap by %s (bound %s): get-ok must obey the output bound",
			catalog.MiB(peak), catalog.MiB(2*heapBound))
	}
	if after > heapBound {
		t.Errorf("heap still +%s 5 s after the client disconnected (bound %s)", catalog.MiB(after), catalog.MiB(heapBound))
	}
	// The flood's unacked delivery is requeued when the broker has torn its connection down,
	// which under -race can take a moment after the socket closed.
	var st amqp091.Queue
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		st, err = ch.QueueDeclarePassive("big", false, false, false, false, nil)
		if err != nil || st.Messages == 1 || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || st.Messages != 1 {
		t.Errorf("queue after the flood: %+v %v, want its 1 message ready", st, err)
	}
}

// Finding 2: a publisher blocked by an alarm whose socket closes must be torn down with
// everything it holds released: its exclusive queue, its unacked message and its place in the
// user's connection limit. The alarm of Warren cannot be raised while it runs, so the test stores
// a persistent message with a first Warren, then restarts on the same directory with a one-byte
// memory limit (the alarm is on from the start) and a connection limit of 2 for guest.
func TestHostileBlockedPublisherTornDown(t *testing.T) {
	inProcessOnly(t)
	dir := t.TempDir()
	{
		url, stop := hostileWarren(t, dir, nil)
		c, err := amqp091.Dial(url)
		if err != nil {
			t.Fatal(err)
		}
		ch, err := c.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ch.QueueDeclare("shared", true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		confs := ch.NotifyPublish(make(chan amqp091.Confirmation, 1))
		if err := ch.Publish("", "shared", false, false, amqp091.Publishing{DeliveryMode: 2, Body: []byte("held")}); err != nil {
			t.Fatal(err)
		}
		if cf := <-confs; !cf.Ack {
			t.Fatal("publish nacked")
		}
		c.Close()
		stop()
	}
	url, _ := hostileWarren(t, dir, func(c *server.Config) {
		c.MemoryLimit = 1
		for i := range c.Users {
			if c.Users[i].Name == "guest" {
				c.Users[i].MaxConnections = server.LimitOf(2)
			}
		}
	})
	e := hostileEnv(t, url, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bp := catalog.BlockedPublisher{Exclusive: "excl", Shared: "shared"}
	client, err := bp.Setup(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if err := client.Block(ctx); err != nil {
		t.Fatal(err)
	}
	client.Close()
	wctx, wcancel := context.WithTimeout(ctx, 8*time.Second)
	defer wcancel()
	took, err := bp.WaitTornDown(wctx, e)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("torn down %s after the socket closed", took.Round(time.Millisecond))
	// The dead connection no longer counts against guest's limit of 2. The checks' own
	// connections may take a moment to be let go of, so each dial gets a few tries.
	for i := 0; i < 2; i++ {
		var c *amqp091.Connection
		var err error
		for try := 0; try < 20; try++ {
			if c, err = amqp091.Dial(url); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("connection %d of guest's 2 after the teardown: %v", i+1, err)
		}
		defer c.Close()
	}
}
