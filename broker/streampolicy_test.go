package broker

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/stream"
)

// testClock is an injected clock for stream logs' timestamps and max-age.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// withStreamClock makes the stream logs opened during the test use clk and skip fsync (the
// tests measure retention, not durability).
func withStreamClock(t *testing.T, clk *testClock) {
	t.Helper()
	prev := openStreamLog
	openStreamLog = func(dir string, o stream.Options) (*stream.Stream, error) {
		o.Now, o.NoSync = clk.Now, true
		return stream.Open(dir, o)
	}
	t.Cleanup(func() { openStreamLog = prev })
}

// setStreamPolicies reloads vhost "/" with policies, as a configuration reload does
// (server.Reload -> Broker.SetVHosts).
func setStreamPolicies(t *testing.T, b *Broker, defs ...PolicyDef) {
	t.Helper()
	var ps []*Policy
	for i, d := range defs {
		d.VHost = "/"
		p, warnings, err := CompilePolicy("policies["+string(rune('0'+i))+"]", d)
		if err != nil || len(warnings) > 0 {
			t.Fatalf("policy %s: %v %v", d.Name, err, warnings)
		}
		ps = append(ps, p)
	}
	SortPolicies(ps)
	b.SetVHosts([]VHostSettings{{Name: "/", MaxQueues: -1, Policies: ps}})
}

// fillStream publishes n persistent messages of size bytes to the stream queue name.
func fillStream(t *testing.T, v *VHost, name string, n, size int) {
	t.Helper()
	p := v.NewPublisher()
	body := strings.Repeat("x", size)
	for i := 0; i < n; i++ {
		if res := publish(t, v, p, "", name, body); !res.Routed {
			t.Fatalf("publish %d to %s not routed", i, name)
		}
	}
}

func declareTestStream(t *testing.T, v *VHost, name string, args amqp.Table) *Queue {
	t.Helper()
	all := amqp.Table{"x-queue-type": "stream"}
	for k, val := range args {
		all[k] = val
	}
	qs, err := v.DeclareQueue(System, QueueSpec{Name: name, Durable: true, Args: all})
	if err != nil {
		t.Fatalf("declare stream %s: %v", name, err)
	}
	return qs
}

// The stream policy keys, against the queue's arguments: as in RabbitMQ 3.10
// (rabbit_stream_queue's policy_precedence), the policy's value wins, whether lower or higher.
func TestStreamPolicyPrecedence(t *testing.T) {
	clk := &testClock{now: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)}
	withStreamClock(t, clk)
	b := newTestBroker(t, t.TempDir())
	v := b.VHost("/")
	setStreamPolicies(t, b,
		PolicyDef{Name: "big", Pattern: "^big-bytes$", Definition: map[string]any{"max-length-bytes": 1 << 30}},
		PolicyDef{Name: "small", Pattern: "^small-bytes$", Definition: map[string]any{"max-length-bytes": 6000}},
		PolicyDef{Name: "seg", Pattern: "^small-seg$", Definition: map[string]any{"stream-max-segment-size-bytes": 4096}},
		PolicyDef{Name: "age", Pattern: "^long-age$", Definition: map[string]any{"max-age": "1D"}},
		PolicyDef{Name: "cq", Pattern: "^classic-only$", ApplyTo: "classic_queues", Definition: map[string]any{"max-length-bytes": 6000}},
		PolicyDef{Name: "classic-keys", Pattern: "^ignored$", Definition: map[string]any{"expires": 1, "message-ttl": 1, "max-length": 1}},
	)
	small := amqp.Table{"x-stream-max-segment-size-bytes": 4096}
	for _, tc := range []struct {
		name   string
		args   amqp.Table
		policy string
		// after 40 messages of 500 bytes (about 5 segments of 4 KiB) and two hours
		trimmed  bool // retention removed segments
		segments int  // at least this many segment files (0: no check)
	}{
		// The argument keeps 1 byte, the policy 1 GiB: the policy wins, nothing goes.
		{"big-bytes", amqp.Table{"x-max-length-bytes": 1, "x-stream-max-segment-size-bytes": 4096}, "big", false, 5},
		// No argument, the policy keeps 6000 bytes.
		{"small-bytes", small, "small", true, 0},
		// The argument's segment size is 1 GB, the policy's 4 KiB: segments roll at 4 KiB, and
		// the argument's 6000 bytes trim them.
		{"small-seg", amqp.Table{"x-stream-max-segment-size-bytes": 1 << 30, "x-max-length-bytes": 6000}, "seg", true, 0},
		// x-max-age 1h, policy 1D: two hours later nothing is too old.
		{"long-age", amqp.Table{"x-max-age": "1h", "x-stream-max-segment-size-bytes": 4096}, "age", false, 5},
		// apply-to classic_queues does not match a stream: only its argument applies (none).
		{"classic-only", small, "", false, 5},
		// Classic-queue keys do not apply to streams (RabbitMQ's unsupported_policies): an
		// expires of 1 ms would delete the queue, max-length 1 would trim it.
		{"ignored", small, "classic-keys", false, 5},
	} {
		qs := declareTestStream(t, v, tc.name, tc.args)
		if got := qs.Info().Policy; (got == nil && tc.policy != "") || (got != nil && got.Name() != tc.policy) {
			t.Errorf("%s: policy %v, want %q", tc.name, got, tc.policy)
		}
		fillStream(t, v, tc.name, 20, 500)
		clk.Advance(2 * time.Hour)
		fillStream(t, v, tc.name, 20, 500)
		qs.sq.log.EnforceRetention() // as the max-age timer would
		info := qs.sq.log.Info()
		if trimmed := info.First > 0; trimmed != tc.trimmed {
			t.Errorf("%s: first offset %d, want trimmed=%v (%+v)", tc.name, info.First, tc.trimmed, info)
		}
		if info.Segments < tc.segments {
			t.Errorf("%s: %d segments, want at least %d", tc.name, info.Segments, tc.segments)
		}
		if tc.trimmed && info.Bytes > 6000+4096 {
			t.Errorf("%s: %d bytes kept, over the 6000-byte retention plus the active segment", tc.name, info.Bytes)
		}
		time.Sleep(5 * time.Millisecond) // an expires of 1 ms would have fired
		if _, err := v.Queue(System, tc.name); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// max-age set by a policy on a reload applies to an existing stream at once, with the
// injected clock: segments older than the new limit go, a consumer from first starts at the
// new first offset, and clearing the policy restores the argument's retention.
func TestStreamPolicyMaxAgeOnReload(t *testing.T) {
	clk := &testClock{now: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)}
	withStreamClock(t, clk)
	b := newTestBroker(t, t.TempDir())
	v := b.VHost("/")
	qs := declareTestStream(t, v, "events", amqp.Table{"x-stream-max-segment-size-bytes": 4096, "x-max-age": "3h"})
	fillStream(t, v, "events", 20, 500) // at 12:00
	clk.Advance(2 * time.Hour)
	fillStream(t, v, "events", 20, 500) // at 14:00
	if info := qs.sq.log.Info(); info.First != 0 {
		t.Fatalf("x-max-age 3h trimmed messages 2h old: %+v", info)
	}

	// A policy of 1h wins over the argument's 3h: the 12:00 segments go on the reload.
	setStreamPolicies(t, b, PolicyDef{Name: "hour", Pattern: "^events$", ApplyTo: "streams", Definition: map[string]any{"max-age": "1h"}})
	info := qs.sq.log.Info()
	if info.First == 0 || info.First > 20 {
		t.Fatalf("after max-age 1h: first offset %d, want the 12:00 segments gone and the 14:00 ones kept (%+v)", info.First, info)
	}
	s := newStreamSink()
	if _, err := v.ConsumeStream(System, "events", s, StreamConsume{Prefetch: 1, Args: amqp.Table{"x-stream-offset": "first"}}, nil); err != nil {
		t.Fatal(err)
	}
	if got := s.await(t, 1); got[0].Seq != info.First {
		t.Fatalf("consumer from first got offset %d, want %d", got[0].Seq, info.First)
	}
	if qs.Info().Policy == nil || qs.Info().Policy.Name() != "hour" {
		t.Fatalf("policy %v", qs.Info().Policy)
	}

	// The max-age timer runs with the policy's age: one more hour and everything but the active
	// segment is too old, without a publish.
	clk.Advance(time.Hour + time.Minute)
	qs.sq.mu.Lock()
	armed, age := qs.sq.retention != nil, qs.sq.maxAge
	qs.sq.mu.Unlock()
	if !armed || age != time.Hour {
		t.Fatalf("retention timer armed=%v for %v, want armed for 1h", armed, age)
	}
	qs.sq.log.EnforceRetention() // what the timer's tick does
	if after := qs.sq.log.Info(); after.Segments != 1 {
		t.Fatalf("after another hour: %+v, want only the active segment", after)
	}

	// Cleared policy: back to the argument's 3h (a policy-less reload changes nothing kept).
	setStreamPolicies(t, b)
	qs.sq.mu.Lock()
	age = qs.sq.maxAge
	qs.sq.mu.Unlock()
	if age != 3*time.Hour || qs.Info().Policy != nil {
		t.Fatalf("after clearing the policy: max-age %v, policy %v; want the argument's 3h", age, qs.Info().Policy)
	}
}

// A restart applies the policy to a restored stream, segment size included.
func TestStreamPolicyOnRestore(t *testing.T) {
	clk := &testClock{now: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)}
	withStreamClock(t, clk)
	dir := t.TempDir()
	ps := func() []*Policy {
		p, _, err := CompilePolicy("p", PolicyDef{Name: "p", VHost: "/", Pattern: "^s$",
			Definition: map[string]any{"stream-max-segment-size-bytes": 4096, "max-length-bytes": 6000}})
		if err != nil {
			t.Fatal(err)
		}
		return []*Policy{p}
	}
	b, err := New(Options{DataDir: dir, MaxRAMMessages: 4096, Logger: quietLog(), VHosts: []VHostSettings{{Name: "/", MaxQueues: -1}}})
	if err != nil {
		t.Fatal(err)
	}
	declareTestStream(t, b.VHost("/"), "s", nil)
	fillStream(t, b.VHost("/"), "s", 5, 500)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b, err = New(Options{DataDir: dir, MaxRAMMessages: 4096, Logger: quietLog(), VHosts: []VHostSettings{{Name: "/", MaxQueues: -1, Policies: ps()}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	v := b.VHost("/")
	fillStream(t, v, "s", 40, 500)
	qs, aerr := v.Queue(System, "s")
	if aerr != nil {
		t.Fatal(aerr)
	}
	if info := qs.sq.log.Info(); info.Segments < 2 || info.First == 0 || info.Bytes > 6000+4096 {
		t.Fatalf("restored stream under the policy: %+v, want 4 KiB segments trimmed to about 6000 bytes", info)
	}
}

// The stream keys are validated as RabbitMQ's policy validators do.
func TestStreamPolicyKeysRejected(t *testing.T) {
	for _, tc := range []struct {
		def  map[string]any
		want string
	}{
		{map[string]any{"max-age": "1x"}, "policies[0].definition.max-age"},
		{map[string]any{"max-age": 3600}, "policies[0].definition.max-age"},
		{map[string]any{"max-age": "0s"}, "policies[0].definition.max-age"},
		{map[string]any{"stream-max-segment-size-bytes": -1}, "policies[0].definition.stream-max-segment-size-bytes"},
		{map[string]any{"stream-max-segment-size-bytes": "1MB"}, "policies[0].definition.stream-max-segment-size-bytes"},
	} {
		_, _, err := CompilePolicy("policies[0]", PolicyDef{Name: "p", Pattern: ".", Definition: tc.def})
		if err == nil || !strings.HasPrefix(err.Error(), tc.want+":") {
			t.Errorf("%v: %v, want an error at %s", tc.def, err, tc.want)
		}
	}
	for _, def := range []map[string]any{{"max-age": "7D"}, {"stream-max-segment-size-bytes": 0}, {"initial-cluster-size": 3}} {
		if _, warnings, err := CompilePolicy("p", PolicyDef{Name: "p", Pattern: ".", Definition: def}); err != nil || len(warnings) > 0 {
			t.Errorf("%v: %v %v, want accepted without warnings", def, err, warnings)
		}
	}
}

// The max-age timer a policy arms trims a stream nobody publishes to: with the injected clock
// a minute ahead, the timer (every second for a max-age of 5s) removes the old segments.
func TestStreamPolicyMaxAgeTimer(t *testing.T) {
	clk := &testClock{now: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)}
	withStreamClock(t, clk)
	b := newTestBroker(t, t.TempDir())
	v := b.VHost("/")
	qs := declareTestStream(t, v, "idle", amqp.Table{"x-stream-max-segment-size-bytes": 4096})
	fillStream(t, v, "idle", 40, 500)
	setStreamPolicies(t, b, PolicyDef{Name: "short", Pattern: "^idle$", Definition: map[string]any{"max-age": "5s"}})
	if info := qs.sq.log.Info(); info.First != 0 {
		t.Fatalf("max-age 5s trimmed records written now: %+v", info)
	}
	clk.Advance(time.Minute)
	deadline := time.Now().Add(5 * time.Second)
	for qs.sq.log.Info().Segments > 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the max-age timer did not trim an idle stream: %+v", qs.sq.log.Info())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if info := qs.sq.log.Info(); info.First == 0 {
		t.Fatalf("after the timer: %+v", info)
	}
}
