package broker

import (
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
)

// The names RabbitMQ 3.10.8 knows, read from the running broker (rabbit_amqqueue:declare_args()
// and consume_args(), the capabilities() of its three queue types, and its policy validators)
// plus its management UI's argument links and the names the issue lists (consumer timeout,
// federation). The tables must cover every one.
var rabbitKnown = struct{ queue, consume, exchange, policy []string }{
	queue: []string{"x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key",
		"x-dead-letter-strategy", "x-max-length", "x-max-length-bytes", "x-max-in-memory-length",
		"x-max-in-memory-bytes", "x-max-priority", "x-overflow", "x-queue-mode", "x-queue-version",
		"x-single-active-consumer", "x-queue-type", "x-quorum-initial-group-size", "x-max-age",
		"x-stream-max-segment-size-bytes", "x-initial-cluster-size", "x-queue-leader-locator",
		"x-queue-master-locator", "x-delivery-limit", "x-consumer-timeout"},
	consume:  []string{"x-priority", "x-cancel-on-ha-failover", "x-stream-offset", "x-credit"},
	exchange: []string{"alternate-exchange"},
	policy: []string{"alternate-exchange", "ha-promote-on-shutdown", "ha-mode", "max-length",
		"initial-cluster-size", "expires", "max-in-memory-length", "ha-sync-batch-size",
		"dead-letter-strategy", "max-age", "max-in-memory-bytes", "queue-leader-locator",
		"queue-master-locator", "dead-letter-routing-key", "ha-promote-on-failure",
		"stream-max-segment-size-bytes", "queue-version", "dead-letter-exchange", "max-length-bytes",
		"overflow", "message-ttl", "delivery-limit", "ha-params", "queue-mode", "ha-sync-mode",
		"federation-upstream", "federation-upstream-set", "consumer-timeout"},
}

func TestArgTablesCoverRabbitMQ(t *testing.T) {
	for _, c := range []struct {
		what  string
		names []string
		table map[string]ArgInfo
	}{
		{"queue argument", rabbitKnown.queue, QueueArguments},
		{"consume argument", rabbitKnown.consume, ConsumeArguments},
		{"exchange argument", rabbitKnown.exchange, ExchangeArguments},
		{"policy key", rabbitKnown.policy, PolicyKeys},
	} {
		for _, n := range c.names {
			if _, ok := c.table[n]; !ok {
				t.Errorf("%s %q that RabbitMQ knows is missing from the table", c.what, n)
			}
		}
		for n, info := range c.table {
			if info.Support == 0 || info.Example == nil {
				t.Errorf("%s %q: incomplete row %+v", c.what, n, info)
			}
		}
	}
}

// expectStatus checks an outcome against a table row for a queue type.
func expectStatus(t *testing.T, what string, info ArgInfo, quorum bool, err *amqp.Error) {
	t.Helper()
	valid := (quorum && info.Quorum) || (!quorum && info.Classic)
	switch {
	case !valid:
		if err == nil || err.Code != amqp.PreconditionFailed || !strings.Contains(err.Text, "of queue type "+queueTypeName(quorum)) {
			t.Errorf("%s: %v, want 406 ... of queue type %s", what, err, queueTypeName(quorum))
		}
	case info.Support == Refused:
		if err == nil || err.Code != amqp.PreconditionFailed || !strings.Contains(err.Text, "not supported by Warren") {
			t.Errorf("%s: %v, want 406 not supported by Warren", what, err)
		}
	case err != nil:
		t.Errorf("%s (%s): refused: %v", what, info.Support, err)
	}
}

// TestArgTablesWalk declares with every row's example value on both queue types and compiles a
// policy with every key: each name does what its row says.
func TestArgTablesWalk(t *testing.T) {
	for name, info := range QueueArguments {
		for _, quorum := range []bool{false, true} {
			args := amqp.Table{name: info.Example}
			if name == "x-queue-type" {
				args[name] = map[bool]string{false: "classic", true: "quorum"}[quorum]
			} else if quorum {
				args["x-queue-type"] = "quorum"
			}
			if name == "x-dead-letter-routing-key" {
				args["x-dead-letter-exchange"] = "dlx"
			}
			_, err := parseQueueArgs(args)
			expectStatus(t, "queue.declare "+name, info, quorum, err)
		}
	}
	for name, info := range ConsumeArguments {
		for _, quorum := range []bool{false, true} {
			_, err := parseConsumeArgs(amqp.Table{name: info.Example}, quorum)
			expectStatus(t, "basic.consume "+name, info, quorum, err)
		}
	}
	for name, info := range PolicyKeys {
		_, _, err := CompilePolicy("p", PolicyDef{Name: "p", Pattern: ".", Definition: map[string]any{name: info.Example}})
		if info.Support == Refused {
			if err == nil || !strings.Contains(err.Error(), "not supported by Warren") {
				t.Errorf("policy key %s: %v, want not supported by Warren", name, err)
			}
		} else if err != nil {
			t.Errorf("policy key %s (%s): %v", name, info.Support, err)
		}
	}
}

// RabbitMQ 3.10.8's texts for bad values of the storage and placement arguments (measured).
func TestStorageArgErrors(t *testing.T) {
	q := amqp.Table{"x-queue-type": "quorum"}
	with := func(base amqp.Table, k string, v any) amqp.Table {
		t := amqp.Table{k: v}
		for bk, bv := range base {
			t[bk] = bv
		}
		return t
	}
	for _, tc := range []struct {
		args amqp.Table
		want string
	}{
		{amqp.Table{"x-queue-mode": "bogus"}, `invalid arg 'x-queue-mode' for queue '' in vhost '': "unsupported queue mode 'bogus'"`},
		{amqp.Table{"x-queue-mode": int32(1)}, `invalid arg 'x-queue-mode' for queue '' in vhost '': {unacceptable_type,signedint}`},
		{amqp.Table{"x-queue-version": int32(3)}, `invalid arg 'x-queue-version' for queue '' in vhost '': "unsupported queue version '3'"`},
		{amqp.Table{"x-queue-version": "2"}, `invalid arg 'x-queue-version' for queue '' in vhost '': "expected integer, got longstr"`},
		{amqp.Table{"x-queue-leader-locator": "balanced"}, `invalid arg 'x-queue-leader-locator' for queue '' in vhost '' of queue type rabbit_classic_queue`},
		{amqp.Table{"x-max-age": "1D"}, `invalid arg 'x-max-age' for queue '' in vhost '' of queue type rabbit_classic_queue`},
		{with(q, "x-max-priority", int32(3)), `invalid arg 'x-max-priority' for queue '' in vhost '' of queue type rabbit_quorum_queue`},
		{with(q, "x-queue-leader-locator", "bogus"), `invalid arg 'x-queue-leader-locator' for queue '' in vhost '': invalid_queue_locator_arg`},
		{with(q, "x-queue-leader-locator", int32(1)), `invalid arg 'x-queue-leader-locator' for queue '' in vhost '': {unacceptable_type,signedint}`},
		{with(q, "x-quorum-initial-group-size", int32(0)), `invalid arg 'x-quorum-initial-group-size' for queue '' in vhost '': {value_zero,0}`},
		{with(q, "x-dead-letter-strategy", "bogus"), `invalid arg 'x-dead-letter-strategy' for queue '' in vhost '': invalid_dlx_strategy`},
		{with(q, "x-dead-letter-strategy", int32(1)), `invalid arg 'x-dead-letter-strategy' for queue '' in vhost '': {unacceptable_type,signedint}`},
		{with(q, "x-max-in-memory-length", int32(-1)), `invalid arg 'x-max-in-memory-length' for queue '' in vhost '': {value_negative,-1}`},
	} {
		_, err := parseQueueArgs(tc.args)
		if err == nil || err.Code != amqp.PreconditionFailed || !strings.Contains(err.Text, tc.want) {
			t.Errorf("%v: %v, want 406 %s", tc.args, err, tc.want)
		}
	}
}

// x-queue-mode lazy and x-max-in-memory-length (or their policy keys) bound the paging window.
func TestPagingWindowArgs(t *testing.T) {
	pol := func(def map[string]any) *Policy {
		p, _, err := CompilePolicy("p", PolicyDef{Name: "p", Pattern: ".", Definition: def})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name string
		args amqp.Table
		p    *Policy
		want int
	}{
		{"none", nil, nil, 0},
		{"lazy", amqp.Table{"x-queue-mode": "lazy"}, nil, 1},
		{"default", amqp.Table{"x-queue-mode": "default"}, nil, 0},
		{"lazy policy", nil, pol(map[string]any{"queue-mode": "lazy"}), 1},
		{"argument wins over queue-mode", amqp.Table{"x-queue-mode": "default"}, pol(map[string]any{"queue-mode": "lazy"}), 0},
		{"in-memory length", amqp.Table{"x-queue-type": "quorum", "x-max-in-memory-length": int32(50)}, nil, 50},
		{"in-memory 0", amqp.Table{"x-queue-type": "quorum", "x-max-in-memory-length": int32(0)}, nil, 1},
		{"lower in-memory wins", amqp.Table{"x-queue-type": "quorum", "x-max-in-memory-length": int32(50)}, pol(map[string]any{"max-in-memory-length": 20}), 20},
	} {
		spec, aerr := parseQueueArgs(tc.args)
		if aerr != nil {
			t.Fatalf("%s: %v", tc.name, aerr)
		}
		if got := combine(spec, tc.args, tc.p).window; got != tc.want {
			t.Errorf("%s: window %d, want %d", tc.name, got, tc.want)
		}
	}
	// A lazy queue pages everything but one message.
	b, err := New(Options{DataDir: t.TempDir(), MaxRAMMessages: 100, Logger: quietLog(), VHosts: []VHostSettings{{Name: "/", MaxQueues: -1}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	v := b.VHost("/")
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "lz", Args: amqp.Table{"x-queue-mode": "lazy"}}); err != nil {
		t.Fatal(err)
	}
	p := v.NewPublisher()
	for range 10 {
		publish(t, v, p, "", "lz", "m")
	}
	qs, _ := v.Queue(System, "lz")
	if st := qs.Q().Stats(); st.Ready != 10 || st.InMemory > 1 {
		t.Fatalf("lazy queue stats %+v, want 10 ready, at most 1 in memory", st)
	}
}

// x-consumer-timeout and the consumer-timeout policy key: the lower wins; without either the
// server's setting applies.
func TestConsumerTimeoutPrecedence(t *testing.T) {
	pol, _, err := CompilePolicy("p", PolicyDef{Name: "p", Pattern: ".", Definition: map[string]any{"consumer-timeout": 5000}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args amqp.Table
		p    *Policy
		want time.Duration
	}{
		{"none", nil, nil, -1},
		{"argument", amqp.Table{"x-consumer-timeout": int32(2000)}, nil, 2 * time.Second},
		{"policy", nil, pol, 5 * time.Second},
		{"lower argument", amqp.Table{"x-consumer-timeout": int32(2000)}, pol, 2 * time.Second},
		{"lower policy", amqp.Table{"x-consumer-timeout": int32(9000)}, pol, 5 * time.Second},
		{"argument off", amqp.Table{"x-consumer-timeout": int32(0)}, pol, 0},
	} {
		spec, aerr := parseQueueArgs(tc.args)
		if aerr != nil {
			t.Fatalf("%s: %v", tc.name, aerr)
		}
		if got := combine(spec, tc.args, tc.p).consumerTimeout; got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if _, _, err := CompilePolicy("p", PolicyDef{Name: "p", Pattern: ".", Definition: map[string]any{"consumer-timeout": -1}}); err == nil {
		t.Error("consumer-timeout -1 accepted")
	}
}
