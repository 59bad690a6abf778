package broker

import (
	"errors"
	"fmt"
	"math"
	"math/rand"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/persistence"
	"github.com/warrenmq/warren/queue"
)

// fakeClock is a manual delayClock: timers fire, on the caller's goroutine, when Advance
// passes them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c       *fakeClock
	at      time.Time
	f       func()
	stopped bool
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.stopped
	t.stopped = true
	return was
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) delayTimer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

// Advance moves the clock and runs the timers that are due, in time order.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var next *fakeTimer
		kept := c.timers[:0]
		for _, t := range c.timers {
			if t.stopped {
				continue
			}
			kept = append(kept, t)
			if !t.at.After(c.now) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		c.timers = kept
		if next != nil {
			next.stopped = true
		}
		c.mu.Unlock()
		if next == nil {
			return
		}
		next.f()
	}
}

// delayedFixture is a broker with a delayed direct exchange "dx" bound to queue "q" (key "k"),
// its scheduler on a fake clock.
func delayedFixture(t *testing.T, dir string, window time.Duration, maxMem int) (*Broker, *VHost, *fakeClock) {
	t.Helper()
	b := newTestBroker(t, dir)
	clock := &fakeClock{now: time.UnixMilli(1_700_000_000_000)}
	b.delayed.mu.Lock()
	b.delayed.clock = clock
	b.delayed.window = window
	b.delayed.maxMem = maxMem
	b.delayed.mu.Unlock()
	v := b.VHost("/")
	if err := v.DeclareExchange(System, ExchangeSpec{Name: "dx", Type: delayedType, Durable: true, Args: amqp.Table{delayedTypeArg: "direct"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "q", Durable: true}); err != nil {
		t.Fatal(err)
	}
	if err := v.Bind(System, BindingSpec{Source: "dx", Destination: "q", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	return b, v, clock
}

// publishDelayed publishes body to exchange ex with an x-delay header (nil: none) and waits
// for its confirm.
func publishDelayed(t testing.TB, v *VHost, p *Publisher, exName, key, body string, delay any, persistent bool) PublishResult {
	t.Helper()
	ex, err := v.Exchange(exName)
	if err != nil {
		t.Fatal(err)
	}
	props := amqp.Properties{DeliveryMode: 1}
	if persistent {
		props.DeliveryMode = 2
	}
	if delay != nil {
		props.Headers = amqp.Table{delayHeader: delay, "other": "kept"}
	}
	header := amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(body)), &props)
	sum, serr := amqp.ScanContentHeader(header)
	if serr != nil {
		t.Fatal(serr)
	}
	msg, aerr := v.b.NewMessage(ex, key, header, &sum, []byte(body))
	if aerr != nil {
		t.Fatal(aerr)
	}
	done := make(chan error, 1)
	res, _ := p.Publish(ex, msg, sum.HeadersRaw, func(err error) { done <- err })
	if res.OnDisk {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	return res
}

// getAll takes every ready message of q (no-ack) and returns bodies and x-delay headers.
func getAll(t *testing.T, v *VHost, q string) (bodies []string, delays []any) {
	t.Helper()
	for {
		_, e, _, ok, err := v.Get(System, q, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return bodies, delays
		}
		bodies = append(bodies, string(e.Msg.Body))
		h, herr := amqp.DecodeContentHeader(e.Msg.Header)
		if herr != nil {
			t.Fatal(herr)
		}
		delays = append(delays, h.Props.Headers[delayHeader])
	}
}

// settle waits until no read ahead is in flight (reads run on the store's journal).
func settle(t *testing.T, d *delayer) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		d.mu.Lock()
		busy := d.reading
		d.mu.Unlock()
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("read ahead never finished")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestDelayOf(t *testing.T) {
	for _, c := range []struct {
		v    any
		ms   int64
		held bool
	}{
		{int32(5000), 5000, true},
		{int8(3), 3, true},
		{uint8(3), 3, true},
		{int16(300), 300, true},
		{int64(1 << 40), 1 << 40, false}, // beyond the plugin's bound: routed at once
		{int64(maxDelay), maxDelay, true},
		{int32(0), 0, false},
		{int32(-20), -20, false},
		{"1500", 1500, true},
		{"soon", 0, false},
		{12.9, 12, true},
		{float32(0.5), 0, false},
		{amqp.Decimal{Scale: 1, Value: 25}, 2, true},
		{true, 0, false},
		{nil, 0, false},
	} {
		ms, held := delayOf(amqp.Table{delayHeader: c.v})
		if held != c.held || (held && ms != c.ms) {
			t.Errorf("x-delay %#v: %d %v, want %d %v", c.v, ms, held, c.ms, c.held)
		}
	}
	if _, held := delayOf(nil); held {
		t.Error("no headers: held")
	}
}

func TestDelayedDeclareArguments(t *testing.T) {
	b := newTestBroker(t, "")
	v := b.VHost("/")
	for _, c := range []struct {
		name string
		args amqp.Table
		code uint16
		text string
	}{
		{"missing", nil, amqp.PreconditionFailed, "Invalid argument, 'x-delayed-type' must be an existing exchange type"},
		{"number", amqp.Table{delayedTypeArg: int32(1)}, amqp.PreconditionFailed, "Invalid argument, 'x-delayed-type' must be an existing exchange type"},
		{"unknown", amqp.Table{delayedTypeArg: "nope"}, amqp.CommandInvalid, "unknown exchange type 'nope'"},
		{"itself", amqp.Table{delayedTypeArg: delayedType}, amqp.CommandInvalid, "unknown exchange type 'x-delayed-message'"},
		{"topic", amqp.Table{delayedTypeArg: "topic"}, 0, ""},
		{"bytes", amqp.Table{delayedTypeArg: []byte("fanout")}, 0, ""},
	} {
		err := v.DeclareExchange(System, ExchangeSpec{Name: "x-" + c.name, Type: delayedType, Args: c.args})
		switch {
		case c.code == 0 && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.code != 0 && (err == nil || err.Code != c.code || !strings.HasSuffix(err.Text, c.text)):
			t.Errorf("%s: %v, want %d %q", c.name, err, c.code, c.text)
		}
	}
	// As the plugin: only type and flags are compared on a redeclare, not x-delayed-type.
	if err := v.DeclareExchange(System, ExchangeSpec{Name: "x-topic", Type: delayedType, Args: amqp.Table{delayedTypeArg: "direct"}}); err != nil {
		t.Errorf("redeclare with another x-delayed-type: %v", err)
	}
	if err := v.DeclareExchange(System, ExchangeSpec{Name: "x-topic", Type: "topic"}); err == nil || err.Code != amqp.PreconditionFailed {
		t.Errorf("redeclare as topic: %v, want 406", err)
	}
	infos := v.Exchanges()
	found := false
	for _, x := range infos {
		if x.Name == "x-topic" {
			found = x.Type == delayedType
		}
	}
	if !found {
		t.Error("x-topic not listed as x-delayed-message")
	}
}

// Due order, the delivered x-delay header, messages without a positive delay routed at once,
// and nothing routed before it is due - with and without a store.
func TestDelayedSchedule(t *testing.T) {
	for _, dir := range []string{"", "disk"} {
		t.Run(map[string]string{"": "memory", "disk": "store"}[dir], func(t *testing.T) {
			if dir != "" {
				dir = t.TempDir()
			}
			b, v, clock := delayedFixture(t, dir, 2*time.Second, 1000)
			p := v.NewPublisher()
			for _, m := range []struct {
				body  string
				delay any
			}{{"c", int32(300)}, {"a", int32(50)}, {"b", "100"}, {"now", nil}, {"zero", int32(0)}, {"neg", int32(-5)}, {"d", 300.7}} {
				res := publishDelayed(t, v, p, "dx", "k", m.body, m.delay, true)
				if m.delay == nil || m.body == "zero" || m.body == "neg" {
					if !res.Routed {
						t.Fatalf("%s not routed at once: %+v", m.body, res)
					}
				} else if res.Routed || res.OnDisk != (dir != "") {
					t.Fatalf("%s: %+v, want held (on disk: %v)", m.body, res, dir != "")
				}
			}
			if got, _ := getAll(t, v, "q"); strings.Join(got, ",") != "now,zero,neg" {
				t.Fatalf("at once: %v", got)
			}
			if n := b.DelayedStats().Held; n != 4 {
				t.Fatalf("held %d, want 4", n)
			}
			clock.Advance(49 * time.Millisecond)
			if got, _ := getAll(t, v, "q"); len(got) != 0 {
				t.Fatalf("before due: %v", got)
			}
			clock.Advance(1 * time.Millisecond)
			got, delays := getAll(t, v, "q")
			if strings.Join(got, ",") != "a" || delays[0] != int32(-50) {
				t.Fatalf("at 50 ms: %v %v", got, delays)
			}
			clock.Advance(250 * time.Millisecond)
			got, delays = getAll(t, v, "q")
			if strings.Join(got, ",") != "b,c,d" || delays[0] != int32(-100) || delays[2] != int32(-300) {
				t.Fatalf("at 300 ms: %v %v", got, delays)
			}
			if st := b.DelayedStats(); st.Held != 0 || st.Routed != 4 || st.InMemory != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// Bindings as of the due time: a binding added while a message waits gets it, one removed
// does not; an unroutable due message goes to the alternate exchange.
func TestDelayedRoutesWithBindingsWhenDue(t *testing.T) {
	b, v, clock := delayedFixture(t, "", time.Second, 100)
	_ = b
	p := v.NewPublisher()
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "late"}); err != nil {
		t.Fatal(err)
	}
	publishDelayed(t, v, p, "dx", "k", "m1", int32(100), false)
	if err := v.Bind(System, BindingSpec{Source: "dx", Destination: "late", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	if err := v.Unbind(System, BindingSpec{Source: "dx", Destination: "q", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(100 * time.Millisecond)
	if got, _ := getAll(t, v, "q"); len(got) != 0 {
		t.Fatalf("unbound queue got %v", got)
	}
	if got, _ := getAll(t, v, "late"); strings.Join(got, ",") != "m1" {
		t.Fatalf("queue bound while waiting got %v", got)
	}
}

// Far more messages than the memory window, over a span far longer than the read-ahead
// window: all routed in due order, none early, memory never above its bound.
func TestDelayedReadAheadBounded(t *testing.T) {
	const n, maxMem = 2000, 64
	b, v, clock := delayedFixture(t, t.TempDir(), 200*time.Millisecond, maxMem)
	d := b.delayed
	p := v.NewPublisher()
	rng := rand.New(rand.NewSource(1))
	start := clock.Now().UnixMilli()
	due := map[string]int64{}
	for i := 0; i < n; i++ {
		delay := 1 + rng.Int63n(20_000) // over 20 s, 100 read-ahead windows
		body := fmt.Sprint(i)
		due[body] = start + delay
		publishDelayed(t, v, p, "dx", "k", body, delay, i%2 == 0)
	}
	settle(t, d)
	var got []string
	peak := 0
	for step := 0; step < 21_000/5; step++ {
		clock.Advance(5 * time.Millisecond)
		settle(t, d)
		d.mu.Lock()
		peak = max(peak, len(d.heap))
		d.mu.Unlock()
		now := clock.Now().UnixMilli()
		bodies, _ := getAll(t, v, "q")
		for _, body := range bodies {
			if due[body] > now {
				t.Fatalf("%s routed at %d, due %d", body, now, due[body])
			}
			if now-due[body] > 5 {
				t.Fatalf("%s routed at %d, due %d: late", body, now, due[body])
			}
		}
		got = append(got, bodies...)
	}
	if len(got) != n {
		t.Fatalf("routed %d of %d", len(got), n)
	}
	if !sort.SliceIsSorted(got, func(i, j int) bool { return due[got[i]] < due[got[j]] }) {
		t.Error("not routed in due order")
	}
	if peak > maxMem {
		t.Errorf("%d messages in memory, bound %d", peak, maxMem)
	}
	st, err := b.store.LoadDelayed()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for st.Count != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		st, _ = b.store.LoadDelayed()
	}
	if st.Count != 0 {
		t.Errorf("%d routed messages still stored", st.Count)
	}
}

// Deleting the exchange drops its held messages, in memory and on disk; a new exchange under
// the name starts empty.
func TestDelayedDeleteDropsHeld(t *testing.T) {
	b, v, clock := delayedFixture(t, t.TempDir(), 100*time.Millisecond, 16)
	p := v.NewPublisher()
	for i := 0; i < 300; i++ {
		publishDelayed(t, v, p, "dx", "k", fmt.Sprint(i), int32(10+i*10), true)
	}
	if err := v.DeleteExchange(System, "dx", false); err != nil {
		t.Fatal(err)
	}
	b.delayed.drops.Wait()
	if err := v.DeclareExchange(System, ExchangeSpec{Name: "dx", Type: delayedType, Durable: true, Args: amqp.Table{delayedTypeArg: "direct"}}); err != nil {
		t.Fatal(err)
	}
	if err := v.Bind(System, BindingSpec{Source: "dx", Destination: "q", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	publishDelayed(t, v, p, "dx", "k", "new", int32(20), true)
	st, err := b.store.LoadDelayed()
	if err != nil {
		t.Fatal(err)
	}
	if st.Count != 1 || len(st.Incarnations) != 1 {
		t.Fatalf("stored after delete: %d messages, incarnations %v; want the new one only", st.Count, st.Incarnations)
	}
	for i := 0; i < 400; i++ {
		clock.Advance(10 * time.Millisecond)
		settle(t, b.delayed)
	}
	if got, _ := getAll(t, v, "q"); strings.Join(got, ",") != "new" {
		t.Fatalf("got %v, want only the new exchange's message", got)
	}
	if st := b.DelayedStats(); st.Held != 0 || st.Dropped != 300 {
		t.Fatalf("stats %+v", st)
	}
}

// A million scheduled messages (100,000 with -short or -race) over ten minutes: memory holds
// the read-ahead window only, the rest is on disk.
func TestDelayedMillionHeapBounded(t *testing.T) {
	n := 1_000_000
	if testing.Short() || raceEnabled {
		n = 100_000
	}
	b := newTestBroker(t, t.TempDir())
	v := b.VHost("/")
	if err := v.DeclareExchange(System, ExchangeSpec{Name: "dx", Type: delayedType, Durable: true, Args: amqp.Table{delayedTypeArg: "direct"}}); err != nil {
		t.Fatal(err)
	}
	ex, _ := v.Exchange("dx")
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	p := v.NewPublisher()
	body := make([]byte, 100)
	done := make(chan error, 1)
	start := time.Now()
	for i := 0; i < n; i++ {
		// From 2 to 12 min: nothing is due while the test runs.
		delay := 120_000 + int64(i)*600_000/int64(n)
		props := amqp.Properties{DeliveryMode: 2, Headers: amqp.Table{delayHeader: int32(delay)}}
		header := amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(body)), &props)
		sum, _ := amqp.ScanContentHeader(header)
		msg, _ := b.NewMessage(ex, "k", header, &sum, body)
		var cb func(error)
		if i == n-1 {
			cb = func(err error) { done <- err }
		}
		if res, _ := p.Publish(ex, msg, sum.HeadersRaw, cb); !res.OnDisk {
			t.Fatalf("message %d not held: %+v", i, res)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	st := b.DelayedStats()
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d held in %v (%.0f/s); %d in memory; heap in use %d MB -> %d MB", n, took.Round(time.Millisecond),
		float64(n)/took.Seconds(), st.InMemory, before.HeapInuse>>20, after.HeapInuse>>20)
	if st.Held != int64(n) {
		t.Errorf("held %d, want %d", st.Held, n)
	}
	if st.InMemory > delayMaxMem {
		t.Errorf("%d held messages in memory, bound %d", st.InMemory, delayMaxMem)
	}
	// The messages alone are over 200 MB at a million (100-byte bodies plus headers and keys).
	// They go to badger's value log (persistence/delayed.go pads them to its threshold), so
	// the in-memory LSM tree carries only keys and pointers: measured +7 MB at a million.
	// When they stayed in the LSM tree, the buffers of its flushes and compactions made it
	// +157 MB.
	if growth > 64<<20 {
		t.Errorf("heap grew by %d MB for %d held messages", growth>>20, n)
	}
}

// A transaction whose held message cannot be stored applies nothing: its ack is not removed on
// disk while the delivery goes back to the front end as still unacked (it would be delivered
// again now and be gone after a restart), and its other publishes are not visible.
func TestDelayedTxnStoreFailureAppliesNothing(t *testing.T) {
	dir := t.TempDir()
	b, v, _ := delayedFixture(t, dir, time.Second, 1000)
	p := v.NewPublisher()
	publish(t, v, p, "", "q", "acked in the tx")
	p.Flush()
	qs, e, _, ok, aerr := v.Get(System, "q", false)
	if aerr != nil || !ok {
		t.Fatalf("get: %v %v", ok, aerr)
	}
	dx, _ := v.Exchange("dx")
	def, _ := v.Exchange("")
	mk := func(ex *Exchange, key string, body []byte, headers amqp.Table) *queue.Message {
		props := amqp.Properties{DeliveryMode: 2, Headers: headers}
		header := amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(body)), &props)
		sum, err := amqp.ScanContentHeader(header)
		if err != nil {
			t.Fatal(err)
		}
		msg, aerr := b.NewMessage(ex, key, header, &sum, body)
		if aerr != nil {
			t.Fatal(aerr)
		}
		return msg
	}
	tx := v.NewTxn()
	tx.Settle(Ack, qs, []*queue.Entry{e})
	tx.Publish(def, mk(def, "q", []byte("published in the tx"), nil), false)
	// A value larger than a value-log file: badger refuses it, the batch alone it would take.
	tx.Publish(dx, mk(dx, "k", make([]byte, 65<<20), amqp.Table{delayHeader: int32(1000)}), false)
	if err := tx.Commit(nil); err == nil {
		t.Fatal("commit reported success though the held message was not stored")
	}
	if n := qs.Q().Counts().Ready; n != 0 {
		t.Fatalf("%d messages visible after a failed commit", n)
	}
	if st := b.DelayedStats(); st.Held != 0 {
		t.Fatalf("held after a failed commit: %+v", st)
	}
	qs.Settle(Requeue, []*queue.Entry{e}, nil) // the front end's unacked delivery goes back
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b2 := newTestBroker(t, dir)
	if bodies, _ := getAll(t, b2.VHost("/"), "q"); len(bodies) != 1 || bodies[0] != "acked in the tx" {
		t.Fatalf("after restart: %q; want the message whose ack failed to commit", bodies)
	}
	if st := b2.DelayedStats(); st.Held != 0 {
		t.Fatalf("held after restart: %+v", st)
	}
}

// A read ahead in flight when its exchange is deleted does not bring the deleted exchange's
// messages back: they are dropped (and counted) once, by the background drop.
func TestDelayedReadAheadAcrossDelete(t *testing.T) {
	b, v, clock := delayedFixture(t, t.TempDir(), 100*time.Millisecond, 1000)
	d := b.delayed
	p := v.NewPublisher()
	const n = 20
	for i := 0; i < n; i++ {
		publishDelayed(t, v, p, "dx", "k", fmt.Sprint(i), int32(1000+i), true) // beyond the window: on disk only
	}
	settle(t, d)
	// A read ahead starts (as startRead does) and reads its snapshot before the delete.
	d.mu.Lock()
	if d.reading {
		d.mu.Unlock()
		t.Fatal("a read ahead is in flight")
	}
	d.reading = true
	from := d.frontier
	d.mu.Unlock()
	to := persistence.DelayedKey{Due: clock.Now().UnixMilli() + 2000, Seq: math.MaxUint64}
	ds, capped, err := b.store.ReadDelayed(from, to.Due, 1000)
	if err != nil || len(ds) != n {
		t.Fatalf("read %d held messages (%v); want %d", len(ds), err, n)
	}
	if err := v.DeleteExchange(System, "dx", false); err != nil {
		t.Fatal(err)
	}
	d.drops.Wait()
	d.readDone(from, to, ds, capped, nil)
	clock.Advance(2 * time.Second)
	if st := b.DelayedStats(); st.Held != 0 || st.Dropped != n || st.InMemory != 0 {
		t.Fatalf("stats %+v; want %d dropped once, none held", st, n)
	}
}

// A held message whose write fails is no longer held (unless it is in memory, to be routed).
// With the store closing, the failure is reported at once, on the publishing goroutine, which
// must not deadlock on the scheduler's lock.
func TestDelayedFailedPutNotHeld(t *testing.T) {
	b, v, _ := delayedFixture(t, t.TempDir(), 100*time.Millisecond, 1000)
	d := b.delayed
	dx, _ := v.Exchange("dx")
	if err := b.store.Close(); err != nil {
		t.Fatal(err)
	}
	props := amqp.Properties{DeliveryMode: 2, Headers: amqp.Table{delayHeader: int32(5000)}}
	header := amqp.AppendContentHeader(nil, amqp.ClassBasic, 1, &props)
	sum, serr := amqp.ScanContentHeader(header)
	if serr != nil {
		t.Fatal(serr)
	}
	h := d.prepare(dx, "k", header, sum.HeadersRaw, []byte("x"))
	if h == nil {
		t.Fatal("not held")
	}
	done := make(chan error, 1)
	go d.add(h, func(err error) { done <- err })
	select {
	case err := <-done:
		if !errors.Is(err, persistence.ErrClosed) {
			t.Fatalf("put with the store closed: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("add deadlocked with the store closing")
	}
	if st := b.DelayedStats(); st.Held != 0 {
		t.Fatalf("stats %+v; want the failed put not held", st)
	}
}

// Due times round up to the millisecond, so a held message never leaves before its x-delay.
func TestCeilMilli(t *testing.T) {
	base := time.UnixMilli(1_700_000_000_000)
	for _, tc := range []struct {
		t    time.Time
		want int64
	}{
		{base, base.UnixMilli()},
		{base.Add(time.Nanosecond), base.UnixMilli() + 1},
		{base.Add(999 * time.Microsecond), base.UnixMilli() + 1},
		{base.Add(time.Millisecond), base.UnixMilli() + 1},
	} {
		if got := ceilMilli(tc.t); got != tc.want {
			t.Errorf("ceilMilli(%v) = %d, want %d", tc.t, got, tc.want)
		}
	}
}
