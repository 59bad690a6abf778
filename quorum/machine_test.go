package quorum

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

// rec records the hooks' calls.
type rec struct {
	assigned map[string][]uint64
	counts   map[uint64]uint32
	revoked  []string
}

func newRec() *rec { return &rec{assigned: map[string][]uint64{}, counts: map[uint64]uint32{}} }

func (r *rec) hooks() Hooks {
	return Hooks{
		Assigned: func(node string, msgs []Msg) {
			for _, m := range msgs {
				r.assigned[node] = append(r.assigned[node], m.ID)
				r.counts[m.ID] = m.Count
			}
		},
		Revoked: func(node string) { r.revoked = append(r.revoked, node) },
	}
}

func enq(bodies ...string) Command {
	c := Command{Kind: KindEnqueue}
	for _, b := range bodies {
		c.Msgs = append(c.Msgs, &Msg{RoutingKey: "q", Header: []byte{1, 2}, Body: []byte(b)})
	}
	return c
}

func run(t *testing.T, m *Machine, c Command) Result {
	t.Helper()
	out := m.Apply(0, c.Encoded())
	r, ok := out.(Result)
	if !ok {
		t.Fatalf("Apply(%v) = %v", c.Kind, out)
	}
	return r
}

func bodiesOf(ds []Dropped) []string {
	var out []string
	for _, d := range ds {
		out = append(out, string(d.Msg.Body))
	}
	return out
}

func TestMachine(t *testing.T) {
	type step struct {
		cmd      Command
		assigned map[string][]uint64 // assignments made by this step
		dropped  []string            // bodies dropped by this step
		refused  []int
		get      string // basic.get's body ("" none)
		count    uint32 // basic.get's delivery count
		ready    int    // ready count after
		held     int    // held count after
	}
	co := func(n string, credit uint32) Command { return Command{Kind: KindCheckout, Node: n, Credit: credit} }
	ids := func(kind Kind, n string, ids ...uint64) Command { return Command{Kind: kind, Node: n, IDs: ids} }
	ret := func(n string, delivered bool, ids ...uint64) Command {
		return Command{Kind: KindReturn, Node: n, IDs: ids, Delivered: delivered}
	}
	tests := []struct {
		name   string
		limits Limits
		steps  []step
	}{
		{"enqueue then checkout assigns up to credit", NoLimits(), []step{
			{cmd: enq("a", "b", "c"), ready: 3},
			{cmd: co("n1", 2), assigned: map[string][]uint64{"n1": {1, 2}}, ready: 1, held: 2},
			{cmd: ids(KindSettle, "n1", 1), assigned: map[string][]uint64{"n1": {3}}, held: 2},
			{cmd: ids(KindSettle, "n1", 2, 3), held: 0},
		}},
		{"round robin over nodes", NoLimits(), []step{
			{cmd: co("n2", 10)},
			{cmd: co("n1", 10)},
			{cmd: enq("a", "b", "c", "d"), assigned: map[string][]uint64{"n1": {1, 3}, "n2": {2, 4}}, held: 4},
		}},
		{"returned goes back to the head with a count", NoLimits(), []step{
			{cmd: enq("a", "b"), ready: 2},
			{cmd: Command{Kind: KindGet, Node: "n1"}, get: "a", ready: 1, held: 1},
			{cmd: ret("n1", true, 1), ready: 2},
			{cmd: Command{Kind: KindGet, Node: "n1", NoAck: true}, get: "a", count: 1, ready: 1},
		}},
		{"undelivered return counts nothing", NoLimits(), []step{
			{cmd: enq("a"), ready: 1},
			{cmd: Command{Kind: KindGet, Node: "n1"}, get: "a", held: 1},
			{cmd: ret("n1", false, 1), ready: 1},
			{cmd: Command{Kind: KindGet, Node: "n1"}, get: "a", count: 0, held: 1},
		}},
		{"delivery limit drops", Limits{MaxLength: -1, MaxBytes: -1, DeliveryLimit: 1}, []step{
			{cmd: enq("a"), ready: 1},
			{cmd: Command{Kind: KindGet, Node: "n1"}, get: "a", held: 1},
			{cmd: ret("n1", true, 1), ready: 1},
			{cmd: Command{Kind: KindGet, Node: "n1"}, get: "a", count: 1, held: 1},
			{cmd: ret("n1", true, 1), dropped: []string{"a"}},
		}},
		{"discard drops for dead-lettering", NoLimits(), []step{
			{cmd: co("n1", 5)},
			{cmd: enq("a", "b"), assigned: map[string][]uint64{"n1": {1, 2}}, held: 2},
			{cmd: ids(KindDiscard, "n1", 2, 9), dropped: []string{"b"}, held: 1},
		}},
		{"drop-head", Limits{MaxLength: 2, MaxBytes: -1, DeliveryLimit: -1}, []step{
			{cmd: enq("a", "b", "c"), dropped: []string{"a"}, ready: 2},
			{cmd: Command{Kind: KindGet, Node: "n1", NoAck: true}, get: "b", ready: 1},
		}},
		{"reject-publish", Limits{MaxLength: 2, MaxBytes: -1, Overflow: RejectPublish, DeliveryLimit: -1}, []step{
			{cmd: enq("a", "b", "c"), refused: []int{2}, ready: 2},
			{cmd: enq("d"), refused: []int{0}, ready: 2},
		}},
		{"max bytes drop-head", Limits{MaxLength: -1, MaxBytes: 3, DeliveryLimit: -1}, []step{
			{cmd: enq("aa", "bb"), dropped: []string{"aa"}, ready: 1},
		}},
		{"node down counts what was delivered", NoLimits(), []step{
			{cmd: co("n1", 2)},
			{cmd: co("n2", 2)},
			{cmd: enq("a", "b", "c"), assigned: map[string][]uint64{"n1": {1, 3}, "n2": {2}}, held: 3},
			{cmd: ids(KindDelivered, "n1", 3), held: 3},
			{cmd: Command{Kind: KindNodeDown, Node: "n1"}, assigned: map[string][]uint64{"n2": {1}}, ready: 1, held: 2},
			{cmd: Command{Kind: KindGet, Node: "n3", NoAck: true}, get: "c", count: 1, held: 2},
		}},
		{"node down after get counts it", NoLimits(), []step{
			{cmd: enq("a"), ready: 1},
			{cmd: Command{Kind: KindGet, Node: "n1"}, get: "a", held: 1},
			{cmd: Command{Kind: KindNodeDown, Node: "n1"}, ready: 1},
			{cmd: Command{Kind: KindGet, Node: "n2", NoAck: true}, get: "a", count: 1},
		}},
		{"checkout zero stops assignment", NoLimits(), []step{
			{cmd: co("n1", 1)},
			{cmd: enq("a", "b"), assigned: map[string][]uint64{"n1": {1}}, ready: 1, held: 1},
			{cmd: co("n1", 0), ready: 1, held: 1},
			{cmd: ids(KindSettle, "n1", 1), ready: 1},
		}},
		{"single active: the first node to check out takes everything", Limits{MaxLength: -1, MaxBytes: -1, DeliveryLimit: -1, SingleActive: true}, []step{
			{cmd: co("n2", 2)},
			{cmd: co("n1", 2)},
			{cmd: enq("a", "b", "c"), assigned: map[string][]uint64{"n2": {1, 2}}, ready: 1, held: 2},
			{cmd: co("n2", 0), assigned: map[string][]uint64{"n1": {3}}, held: 3}, // n1 is active now
			{cmd: ret("n2", true, 1, 2), assigned: map[string][]uint64{"n1": {1}}, ready: 1, held: 2},
			{cmd: co("n2", 5), ready: 1, held: 2}, // back, but behind n1 now
		}},
		{"purge keeps held", NoLimits(), []step{
			{cmd: enq("a", "b", "c"), ready: 3},
			{cmd: Command{Kind: KindGet, Node: "n1"}, get: "a", ready: 2, held: 1},
			{cmd: Command{Kind: KindPurge}, held: 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRec()
			m := New(tt.limits, r.hooks())
			for i, s := range tt.steps {
				r.assigned = map[string][]uint64{}
				res := run(t, m, s.cmd)
				want := s.assigned
				if want == nil {
					want = map[string][]uint64{}
				}
				if !reflect.DeepEqual(r.assigned, want) {
					t.Errorf("step %d: assigned %v, want %v", i, r.assigned, want)
				}
				if got := bodiesOf(res.Dropped); !slices.Equal(got, s.dropped) {
					t.Errorf("step %d: dropped %v, want %v", i, got, s.dropped)
				}
				if !slices.Equal(res.Refused, s.refused) {
					t.Errorf("step %d: refused %v, want %v", i, res.Refused, s.refused)
				}
				if s.cmd.Kind == KindGet {
					if res.Msg == nil || string(res.Msg.Body) != s.get || res.Msg.Count != s.count {
						t.Errorf("step %d: get %+v, want %q count %d", i, res.Msg, s.get, s.count)
					}
				}
				if ready, held := m.Counts(); ready != s.ready || held != s.held {
					t.Errorf("step %d: ready %d held %d, want %d %d", i, ready, held, s.ready, s.held)
				}
			}
		})
	}
}

func TestBatchResults(t *testing.T) {
	m := New(Limits{MaxLength: 1, MaxBytes: -1, Overflow: RejectPublish, DeliveryLimit: -1}, Hooks{})
	c := Command{Kind: KindBatch, Batch: []Command{enq("a"), enq("b"), {Kind: KindGet, Node: "n", NoAck: true}}}
	rs, ok := m.Apply(1, c.Encoded()).([]Result)
	if !ok || len(rs) != 3 {
		t.Fatalf("batch result %v", rs)
	}
	if len(rs[0].Refused) != 0 || !slices.Equal(rs[1].Refused, []int{0}) || rs[2].Msg == nil || string(rs[2].Msg.Body) != "a" {
		t.Fatalf("batch results %+v", rs)
	}
}

func TestGetEmpty(t *testing.T) {
	m := New(NoLimits(), Hooks{})
	if r := run(t, m, Command{Kind: KindGet, Node: "n"}); r.Msg != nil {
		t.Fatalf("get on empty: %+v", r.Msg)
	}
}

func TestCorruptEntryIsAnError(t *testing.T) {
	m := New(NoLimits(), Hooks{})
	if _, ok := m.Apply(1, []byte{0xff}).(error); !ok {
		t.Fatal("a corrupt entry must apply as an error")
	}
}

// TestSnapshotRoundTrip: a restored machine continues exactly as the original.
func TestSnapshotRoundTrip(t *testing.T) {
	a := New(NoLimits(), Hooks{})
	for _, c := range []Command{
		enq("a", "b", "c", "d", "e"),
		{Kind: KindCheckout, Node: "n2", Credit: 1},
		{Kind: KindCheckout, Node: "n1", Credit: 1},
		{Kind: KindGet, Node: "n3"},
		{Kind: KindReturn, Node: "n2", IDs: []uint64{1}, Delivered: true},
	} {
		run(t, a, c)
	}
	snap, err := a.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	b := New(NoLimits(), Hooks{})
	if err := b.Restore(snap); err != nil {
		t.Fatal(err)
	}
	again, _ := b.Snapshot()
	if !slices.Equal(snap, again) {
		t.Fatal("snapshot of the restored state differs")
	}
	for _, c := range []Command{enq("f"), {Kind: KindNodeDown, Node: "n1"}, {Kind: KindGet, Node: "x", NoAck: true}} {
		ra, rb := run(t, a, c), run(t, b, c)
		if !reflect.DeepEqual(ra, rb) {
			t.Fatalf("after restore, %v: %+v vs %+v", c.Kind, ra, rb)
		}
	}
	if err := b.Restore(nil); err != nil {
		t.Fatal(err)
	}
	if r, h := b.Counts(); r != 0 || h != 0 {
		t.Fatalf("restore of nothing: %d %d", r, h)
	}
	if err := b.Restore(append(snap, 0)); err == nil {
		t.Fatal("trailing bytes accepted")
	}
}

// TestSnapshotKeepsReturns: returned messages stay apart from ready ones across a snapshot;
// a message returned after the restore goes among them by ID, before the ready ones, as on a
// replica that never restored (one list in the snapshot gave the replicas different heads).
func TestSnapshotKeepsReturns(t *testing.T) {
	a := New(NoLimits(), Hooks{})
	for _, c := range []Command{
		enq("a", "b", "c", "d"),
		{Kind: KindCheckout, Node: "n1", Credit: 2}, // holds a, b
		{Kind: KindCheckout, Node: "n1", Credit: 0},
		{Kind: KindReturn, Node: "n1", IDs: []uint64{1}}, // a waits among the returns
	} {
		run(t, a, c)
	}
	snap, err := a.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	b := New(NoLimits(), Hooks{})
	if err := b.Restore(snap); err != nil {
		t.Fatal(err)
	}
	ret := Command{Kind: KindReturn, Node: "n1", IDs: []uint64{2}}
	run(t, a, ret)
	run(t, b, ret)
	sa, _ := a.Snapshot()
	sb, _ := b.Snapshot()
	if !slices.Equal(sa, sb) {
		t.Fatal("the restored replica's state diverged")
	}
	for _, want := range []string{"a", "b", "c", "d"} {
		ga := run(t, a, Command{Kind: KindGet, Node: "x", NoAck: true})
		gb := run(t, b, Command{Kind: KindGet, Node: "x", NoAck: true})
		if ga.Msg == nil || gb.Msg == nil || string(ga.Msg.Body) != want || string(gb.Msg.Body) != want {
			t.Fatalf("get: want %q, original %+v, restored %+v", want, ga.Msg, gb.Msg)
		}
	}
}

// TestRestoreVersion1: a snapshot of the first version (returned and ready messages in one
// list) still restores, all of them ready, in order.
func TestRestoreVersion1(t *testing.T) {
	// version 1, next id 3, now 0, seq 0, cursor 0, two messages, no nodes.
	var v1 []byte
	v1 = append(v1, 1, 3, 0, 0, 0, 2)
	for i, body := range []string{"a", "b"} {
		v1 = appendSnapMsg(v1, snapOf(&Msg{ID: uint64(i + 1), Body: []byte(body)}))
	}
	v1 = append(v1, 0)
	m := New(NoLimits(), Hooks{})
	if err := m.Restore(v1); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"a", "b"} {
		if g := run(t, m, Command{Kind: KindGet, Node: "x", NoAck: true}); g.Msg == nil || string(g.Msg.Body) != want {
			t.Fatalf("get: want %q, got %+v", want, g.Msg)
		}
	}
}

// TestRestoreCallsRestored: a restore tells the broker (its per-node view is stale); a
// failed one does not (the state did not change).
func TestRestoreCallsRestored(t *testing.T) {
	a := New(NoLimits(), Hooks{})
	run(t, a, enq("a"))
	snap, _ := a.Snapshot()
	calls := 0
	b := New(NoLimits(), Hooks{Restored: func() { calls++ }})
	if err := b.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Fatalf("Restored called %d times, want 1", calls)
	}
	if err := b.Restore(append(snap, 0)); err == nil || calls != 1 {
		t.Fatalf("failed restore: err %v, Restored calls %d", err, calls)
	}
}

func TestCommandRoundTrip(t *testing.T) {
	cmds := []Command{
		enq("x", ""),
		{Kind: KindCheckout, Node: "n1", Credit: 7},
		{Kind: KindSettle, Node: "n1", IDs: []uint64{1, 300, 1 << 40}},
		{Kind: KindReturn, Node: "n", IDs: []uint64{2}, Delivered: true},
		{Kind: KindDiscard, Node: "n", IDs: []uint64{}},
		{Kind: KindGet, Node: "n", NoAck: true},
		{Kind: KindNodeDown, Node: "n3"},
		{Kind: KindPurge},
		{Kind: KindDelivered, Node: "n", IDs: []uint64{5}},
		{Kind: KindClock, Now: 1796337864116},
		{Kind: KindCount, Node: "n", IDs: []uint64{5, 9}, Counts: []uint32{1, 300}},
		{Kind: KindAt, Now: 1796337864117},
	}
	cmds = append(cmds, Command{Kind: KindBatch, Batch: slices.Clone(cmds)})
	for _, c := range cmds {
		got, err := DecodeCommand(c.Encoded())
		if err != nil {
			t.Fatalf("%v: %v", c.Kind, err)
		}
		if !slices.Equal(got.Encoded(), c.Encoded()) {
			t.Fatalf("%v: round trip differs", c.Kind)
		}
	}
}

// TestExpiry: messages expire at the head once a batch's Now passes their Expires; the
// expired come back as one more result after the batch's own; a message behind an
// unexpired head, or held by a node, does not expire.
func TestExpiry(t *testing.T) {
	msg := func(body string, expires int64) *Msg {
		return &Msg{Body: []byte(body), Expires: expires}
	}
	batch := func(now int64, cs ...Command) Command { return Command{Kind: KindBatch, Now: now, Batch: cs} }
	tests := []struct {
		name    string
		cmds    []Command
		expired []string // by the last batch
		ready   int
	}{
		{"expires at the head", []Command{
			batch(1000, Command{Kind: KindEnqueue, Msgs: []*Msg{msg("a", 1500), msg("b", 0)}}),
			batch(1600),
		}, []string{"a"}, 1},
		{"not before its time", []Command{
			batch(1000, Command{Kind: KindEnqueue, Msgs: []*Msg{msg("a", 1500)}}),
			batch(1500),
		}, nil, 1},
		{"behind an unexpired head", []Command{
			batch(1000, Command{Kind: KindEnqueue, Msgs: []*Msg{msg("a", 0), msg("b", 1100)}}),
			batch(2000),
		}, nil, 2},
		{"time never goes back", []Command{
			batch(3000),
			batch(1000, Command{Kind: KindEnqueue, Msgs: []*Msg{msg("a", 2000)}}),
		}, []string{"a"}, 0},
		{"a follower's clock expires in its batch", []Command{
			batch(1000, Command{Kind: KindEnqueue, Msgs: []*Msg{msg("a", 1500), msg("b", 0)}}),
			batch(0, Command{Kind: KindClock, Now: 1600}),
		}, []string{"a"}, 1},
		{"a follower's clock does not move the queue's time", []Command{
			batch(1000, Command{Kind: KindClock, Now: 5000}),
			batch(0, Command{Kind: KindEnqueue, Msgs: []*Msg{msg("a", 1500)}}),
		}, nil, 1},
		{"held by a node", []Command{
			batch(1000, Command{Kind: KindCheckout, Node: "n1", Credit: 1}, Command{Kind: KindEnqueue, Msgs: []*Msg{msg("a", 1500), msg("b", 1500)}}),
			batch(2000),
		}, []string{"b"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(NoLimits(), Hooks{})
			var rs []Result
			for _, c := range tt.cmds {
				rs = m.Apply(0, c.Encoded()).([]Result)
			}
			last := tt.cmds[len(tt.cmds)-1]
			var got []string
			if len(rs) > len(last.Batch) {
				got = bodiesOf(rs[len(rs)-1].Dropped)
				for _, d := range rs[len(rs)-1].Dropped {
					if d.Reason != Expired {
						t.Errorf("reason %v", d.Reason)
					}
				}
			}
			if !slices.Equal(got, tt.expired) {
				t.Errorf("expired %v, want %v", got, tt.expired)
			}
			if r, _ := m.Counts(); r != tt.ready {
				t.Errorf("ready %d, want %d", r, tt.ready)
			}
		})
	}
}

// TestRevocationNumbers: every NodeDown, of any node, held anything or not, gets the next
// number of this Machine value in its Result, one per Revoked hook call: the broker tells
// the Revoked of its own NodeDown from those the log replays before it by this number.
func TestRevocationNumbers(t *testing.T) {
	r := newRec()
	m := New(Limits{}, r.hooks())
	run(t, m, enq("a", "b"))
	run(t, m, Command{Kind: KindCheckout, Node: "n1", Credit: 1})
	for i, node := range []string{"n1", "n2", "n1"} {
		res := run(t, m, Command{Kind: KindNodeDown, Node: node})
		if want := uint64(i + 1); res.Revocation != want || len(r.revoked) != i+1 {
			t.Fatalf("NodeDown %d (%s): Revocation %d, %d Revoked calls; want %d", i, node, res.Revocation, len(r.revoked), want)
		}
	}
	if res := run(t, m, enq("c")); res.Revocation != 0 {
		t.Fatalf("enqueue: Revocation %d, want 0", res.Revocation)
	}
}

// TestRestoredHook: a snapshot restore tells the broker (Restored), since what the snapshot's
// nodes hold came without Assigned; the NodeDown numbering goes on across it (local count).
func TestRestoredHook(t *testing.T) {
	src := New(Limits{}, Hooks{})
	run(t, src, enq("a"))
	run(t, src, Command{Kind: KindCheckout, Node: "n1", Credit: 1})
	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	restored := 0
	h := newRec().hooks()
	h.Restored = func() { restored++ }
	m := New(Limits{}, h)
	run(t, m, Command{Kind: KindNodeDown, Node: "n2"})
	if err := m.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if restored != 1 {
		t.Fatalf("Restored called %d times, want 1", restored)
	}
	sr, sh := src.Counts()
	if r, h := m.Counts(); r != sr || h != sh {
		t.Fatalf("restored counts %d ready %d held, the source's %d and %d", r, h, sr, sh)
	}
	if r := run(t, m, Command{Kind: KindNodeDown, Node: "n1"}); r.Revocation != 2 {
		t.Fatalf("Revocation %d after restore, want 2", r.Revocation)
	}
}

// TestGetSkipsExpired: basic.get in a batch whose time has passed the head's expiry gets the
// next message; the expired one is dropped as expired (RabbitMQ never hands out an expired
// message).
func TestGetSkipsExpired(t *testing.T) {
	m := New(NoLimits(), Hooks{})
	m.Apply(1, Command{Kind: KindBatch, Now: 1000, Batch: []Command{{Kind: KindEnqueue, Msgs: []*Msg{
		{Body: []byte("a"), Expires: 1500}, {Body: []byte("b")}}}}}.Encoded())
	rs := m.Apply(2, Command{Kind: KindBatch, Now: 2000, Batch: []Command{{Kind: KindGet, Node: "n1", NoAck: true}}}.Encoded()).([]Result)
	if rs[0].Msg == nil || string(rs[0].Msg.Body) != "b" {
		t.Fatalf("get: %+v, want b", rs[0].Msg)
	}
	if len(rs) != 2 || !slices.Equal(bodiesOf(rs[1].Dropped), []string{"a"}) {
		t.Fatalf("results %+v: want a expired", rs)
	}
}

// TestApplyCopiesMessages: the queued messages do not share the entry's buffer (the log may
// reuse it), and each has its own copy (one kept message must not keep a batch's entry).
func TestApplyCopiesMessages(t *testing.T) {
	m := New(NoLimits(), Hooks{})
	cmd := Command{Kind: KindBatch, Batch: []Command{enq("aaaa", "bbbb")}}.Encoded()
	m.Apply(1, cmd)
	clear(cmd)
	for _, want := range []string{"aaaa", "bbbb"} {
		g := run(t, m, Command{Kind: KindGet, Node: "x", NoAck: true})
		if g.Msg == nil || string(g.Msg.Body) != want || !slices.Equal(g.Msg.Header, []byte{1, 2}) {
			t.Fatalf("get: %+v, want %q", g.Msg, want)
		}
		if cap(g.Msg.Body) != len(g.Msg.Body) {
			t.Fatalf("body cap %d > len %d: it shares a buffer", cap(g.Msg.Body), len(g.Msg.Body))
		}
	}
}

// BenchmarkApplyBatch: a proposer's batch of 64 1 KiB publishes, settled at once (the
// queue stays small).
func BenchmarkApplyBatch(b *testing.B) {
	m := New(NoLimits(), Hooks{})
	body := make([]byte, 1024)
	var msgs []*Msg
	for range 64 {
		msgs = append(msgs, &Msg{RoutingKey: "q", Header: []byte{1, 2}, Body: body})
	}
	cmd := Command{Kind: KindBatch, Batch: []Command{{Kind: KindEnqueue, Msgs: msgs}, {Kind: KindPurge}}}.Encoded()
	b.SetBytes(int64(len(cmd)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		m.Apply(uint64(i), cmd)
	}
}

// TestRequeueOverMaxLength: returns that push the queue over x-max-length drop the head
// (drop-head, dead-lettered with maxlen), as RabbitMQ's requeue does; a reject-publish queue
// keeps them (only publishes are refused). Same for a NodeDown's returns.
func TestRequeueOverMaxLength(t *testing.T) {
	tests := []struct {
		name     string
		overflow Overflow
		back     Command
		dropped  []string
		ready    int
	}{
		{"return drop-head", DropHead, Command{Kind: KindReturn, Node: "n1", IDs: []uint64{1, 2}, Delivered: true}, []string{"0", "1"}, 2},
		{"node down drop-head", DropHead, Command{Kind: KindNodeDown, Node: "n1"}, []string{"0", "1"}, 2},
		{"return reject-publish", RejectPublish, Command{Kind: KindReturn, Node: "n1", IDs: []uint64{1, 2}, Delivered: true}, nil, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NoLimits()
			l.MaxLength, l.Overflow = 2, tt.overflow
			m := New(l, Hooks{})
			run(t, m, Command{Kind: KindCheckout, Node: "n1", Credit: 2})
			run(t, m, enq("0", "1"))
			run(t, m, Command{Kind: KindCheckout, Node: "n1", Credit: 0})
			run(t, m, enq("2", "3"))
			r := run(t, m, tt.back)
			if got := bodiesOf(r.Dropped); !slices.Equal(got, tt.dropped) {
				t.Fatalf("dropped %v, want %v", got, tt.dropped)
			}
			for _, d := range r.Dropped {
				if d.Reason != MaxLen {
					t.Fatalf("reason %v", d.Reason)
				}
			}
			if ready, _ := m.Counts(); ready != tt.ready {
				t.Fatalf("ready %d, want %d", ready, tt.ready)
			}
		})
	}
}

// TestRedeliveryDelay: a message returned after a delivery is ready again only when the
// queue's time reaches the return's time plus its delay (x-redelivery-delay, backoff, cap);
// until then it counts as ready but is not assigned; a snapshot keeps it delayed.
func TestRedeliveryDelay(t *testing.T) {
	tests := []struct {
		name    string
		delay   int64
		backoff float64
		maxDel  int64
		returns int   // deliveries returned before the checked one
		due     int64 // after the last return at time 1000
	}{
		{"plain", 40, 0, 0, 1, 1040},
		{"backoff second", 40, 3, 0, 2, 1120},
		{"backoff capped", 40, 3, 200, 3, 1200},
		{"uncapped third", 40, 3, 0, 3, 1360},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NoLimits()
			l.RedeliveryDelay, l.RedeliveryBackoff, l.RedeliveryMaxDelay = tt.delay, tt.backoff, tt.maxDel
			r := newRec()
			m := New(l, r.hooks())
			batch := func(now int64, cs ...Command) { m.Apply(0, Command{Kind: KindBatch, Now: now, Batch: cs}.Encoded()) }
			batch(1000, Command{Kind: KindCheckout, Node: "n1", Credit: 1}, enq("a"))
			for i := 0; i < tt.returns; i++ {
				batch(1000, Command{Kind: KindReturn, Node: "n1", IDs: []uint64{1}, Delivered: true})
				if i < tt.returns-1 {
					batch(5000 * int64(i+1)) // due: assigned again
					m.now = 1000             // the checked return happens at 1000
				}
			}
			if got := m.NextDue(); got != tt.due {
				t.Fatalf("NextDue %d, want %d", got, tt.due)
			}
			if ready, held := m.Counts(); ready != 1 || held != 0 {
				t.Fatalf("counts %d/%d, want 1 ready", ready, held)
			}
			snap, err := m.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			m2 := New(l, Hooks{})
			if err := m2.Restore(snap); err != nil {
				t.Fatal(err)
			}
			if m2.NextDue() != tt.due {
				t.Fatalf("restored NextDue %d, want %d", m2.NextDue(), tt.due)
			}
			before := len(r.assigned["n1"])
			batch(tt.due - 1)
			if len(r.assigned["n1"]) != before {
				t.Fatal("assigned before its delay")
			}
			batch(tt.due)
			if len(r.assigned["n1"]) != before+1 || r.counts[1] != uint32(tt.returns) {
				t.Fatalf("not assigned when due (assigned %v, count %d)", r.assigned["n1"], r.counts[1])
			}
		})
	}
}

// TestQueueExpires: x-expires counts from the last use by the queue's time (the first known
// time, a basic.get, a checkout given or taken back, a touch), never while a node holds a
// checkout; a snapshot keeps the last use.
func TestQueueExpires(t *testing.T) {
	batch := func(now int64, cs ...Command) Command { return Command{Kind: KindBatch, Now: now, Batch: cs} }
	tests := []struct {
		name    string
		cmds    []Command
		expired bool
		due     int64
	}{
		{"unused", []Command{batch(1000), batch(1100)}, true, 1100},
		{"not yet", []Command{batch(1000), batch(1099)}, false, 1100},
		{"get renews", []Command{batch(1000), batch(1050, Command{Kind: KindGet, Node: "n1", NoAck: true}), batch(1100)}, false, 1150},
		{"touch renews", []Command{batch(1000), batch(1050, Command{Kind: KindTouch}), batch(1149)}, false, 1150},
		{"a consumer keeps it", []Command{batch(1000, Command{Kind: KindCheckout, Node: "n1", Credit: 1}), batch(5000)}, false, 0},
		{"the last consumer leaving restarts it", []Command{batch(1000, Command{Kind: KindCheckout, Node: "n1", Credit: 1}),
			batch(5000, Command{Kind: KindCheckout, Node: "n1", Credit: 0}), batch(5100)}, true, 5100},
		{"a follower's clock", []Command{batch(1000), batch(0, Command{Kind: KindClock, Now: 1200})}, true, 1100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NoLimits()
			l.Expires = 100
			m := New(l, Hooks{})
			for _, c := range tt.cmds {
				m.Apply(0, c.Encoded())
			}
			if m.Expired() != tt.expired {
				t.Fatalf("Expired %v, want %v", m.Expired(), tt.expired)
			}
			if m.NextDue() != tt.due {
				t.Fatalf("NextDue %d, want %d", m.NextDue(), tt.due)
			}
			snap, _ := m.Snapshot()
			m2 := New(l, Hooks{})
			// A follower's clock is its batch's only: a restored replica does not have it.
			want := tt.expired && !strings.Contains(tt.name, "follower")
			if err := m2.Restore(snap); err != nil || m2.Expired() != want || m2.NextDue() != tt.due {
				t.Fatalf("restored: err %v, Expired %v, NextDue %d", err, m2.Expired(), m2.NextDue())
			}
		})
	}
}

// TestNodeDownFlagsUnmarkedRedelivered: a node proposes a message's Delivered mark after
// delivering it, so what a NodeDown takes back unmarked may have reached a client (the
// chaos run's redeliveries without the redelivered flag, after a kill -9 or a wipe). It
// comes back flagged Redelivered, its Count (delivery limit, x-delivery-count) unchanged;
// a marked one is counted as before; a Return of a node that knows it never delivered
// (Delivered false) flags nothing. The flag survives a snapshot and later returns.
func TestNodeDownFlagsUnmarkedRedelivered(t *testing.T) {
	type want struct {
		count       uint32
		redelivered bool
	}
	for _, tc := range []struct {
		name string
		cmds []Command // after enqueue a, b, c and n1's checkout of all three
		want map[uint64]want
	}{
		{"node down, nothing marked", []Command{{Kind: KindNodeDown, Node: "n1"}},
			map[uint64]want{1: {0, true}, 2: {0, true}, 3: {0, true}}},
		{"node down, one marked", []Command{{Kind: KindDelivered, Node: "n1", IDs: []uint64{2}}, {Kind: KindNodeDown, Node: "n1"}},
			map[uint64]want{1: {0, true}, 2: {1, false}, 3: {0, true}}},
		{"return undelivered", []Command{{Kind: KindCheckout, Node: "n1"}, {Kind: KindReturn, Node: "n1", IDs: []uint64{1, 2, 3}}},
			map[uint64]want{1: {0, false}, 2: {0, false}, 3: {0, false}}},
		{"node down then return undelivered", []Command{
			{Kind: KindNodeDown, Node: "n1"}, {Kind: KindCheckout, Node: "n1", Credit: 3},
			{Kind: KindCheckout, Node: "n1"}, {Kind: KindReturn, Node: "n1", IDs: []uint64{1, 2, 3}}},
			map[uint64]want{1: {0, true}, 2: {0, true}, 3: {0, true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := New(NoLimits(), Hooks{})
			run(t, m, enq("a", "b", "c"))
			run(t, m, Command{Kind: KindCheckout, Node: "n1", Credit: 3})
			for _, c := range tc.cmds {
				run(t, m, c)
			}
			// Through a snapshot, then to a new node one at a time (as its deliverer sees them).
			snap, err := m.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			m2 := New(NoLimits(), Hooks{})
			if err := m2.Restore(snap); err != nil {
				t.Fatal(err)
			}
			got := map[uint64]want{}
			for range 3 {
				r := run(t, m2, Command{Kind: KindGet, Node: "n2", NoAck: true})
				if r.Msg == nil {
					t.Fatal("queue empty")
				}
				got[r.Msg.ID] = want{r.Msg.Count, r.Msg.Redelivered}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestGetPromotesDue: a basic.get first in a batch whose time is past a delayed redelivery's
// due time gets that message: the due messages are promoted before the get, not after it.
func TestGetPromotesDue(t *testing.T) {
	l := NoLimits()
	l.RedeliveryDelay = 40
	m := New(l, Hooks{})
	batch := func(now int64, cs ...Command) []Result {
		return m.Apply(0, Command{Kind: KindBatch, Now: now, Batch: cs}.Encoded()).([]Result)
	}
	batch(1000, enq("a"), Command{Kind: KindGet, Node: "n1"})
	batch(1000, Command{Kind: KindReturn, Node: "n1", IDs: []uint64{1}, Delivered: true})
	rs := batch(2000, Command{Kind: KindGet, Node: "n1", NoAck: true})
	if rs[0].Msg == nil || string(rs[0].Msg.Body) != "a" || rs[0].Msg.Count != 1 {
		t.Fatalf("get past the due time: %+v", rs[0].Msg)
	}
}

// msgStates maps every message of m (ready, returned, delayed or held) to its delivery count
// and redelivered flag.
func msgStates(m *Machine) map[uint64][2]any {
	out := map[uint64][2]any{}
	add := func(msg *Msg) { out[msg.ID] = [2]any{msg.Count, msg.Redelivered} }
	for _, msg := range m.returns {
		add(msg)
	}
	for _, msg := range m.ready[m.head:] {
		add(msg)
	}
	for _, dm := range m.delayed {
		add(dm.msg)
	}
	for _, n := range m.nodes {
		for _, msg := range n.out {
			add(msg)
		}
	}
	return out
}

// kindRestoreTest, in TestCountAndLateMarks' commands, replaces the machine with one restored
// from its snapshot.
const kindRestoreTest Kind = 255

// TestCountAndLateMarks: a Count raises the delivery count of messages the node holds (never
// lowers it); a Delivered mark applied after a NodeDown took the message back uncounted counts
// that delivery once, wherever the message is now, and dead-letters it past the delivery limit
// when it waits in the queue.
func TestCountAndLateMarks(t *testing.T) {
	type st = [2]any
	co := func(n string, credit uint32) Command { return Command{Kind: KindCheckout, Node: n, Credit: credit} }
	down := func(n string) Command { return Command{Kind: KindNodeDown, Node: n} }
	mark := func(n string, ids ...uint64) Command { return Command{Kind: KindDelivered, Node: n, IDs: ids} }
	count := func(n string, ids []uint64, counts ...uint32) Command {
		return Command{Kind: KindCount, Node: n, IDs: ids, Counts: counts}
	}
	ret := func(n string, ids ...uint64) Command {
		return Command{Kind: KindReturn, Node: n, IDs: ids, Delivered: true}
	}
	restore := func() Command { return Command{Kind: kindRestoreTest} }
	for _, tc := range []struct {
		name    string
		limit   int64
		cmds    []Command // after enqueue a, b, c and n1's checkout of all three
		dropped []string
		want    map[uint64]st
	}{
		{"count raises, never lowers", -1, []Command{count("n1", []uint64{1, 2}, 2, 0), count("n1", []uint64{1}, 1)}, nil,
			map[uint64]st{1: {uint32(2), false}, 2: {uint32(0), false}, 3: {uint32(0), false}}},
		{"count of another node's message: nothing", -1, []Command{count("n2", []uint64{1}, 3)}, nil,
			map[uint64]st{1: {uint32(0), false}, 2: {uint32(0), false}, 3: {uint32(0), false}}},
		{"count then node down counts the marked delivery", -1, []Command{mark("n1", 1), count("n1", []uint64{1}, 1), down("n1")}, nil,
			map[uint64]st{1: {uint32(2), false}, 2: {uint32(0), true}, 3: {uint32(0), true}}},
		{"late mark counts once", -1, []Command{down("n1"), mark("n1", 2), mark("n1", 2)}, nil,
			map[uint64]st{1: {uint32(0), true}, 2: {uint32(1), false}, 3: {uint32(0), true}}},
		{"late mark of a message held by another node", -1, []Command{down("n1"), co("n2", 3), mark("n1", 1, 3)}, nil,
			map[uint64]st{1: {uint32(1), false}, 2: {uint32(0), true}, 3: {uint32(1), false}}},
		{"late mark past the delivery limit", 0, []Command{down("n1"), mark("n1", 2)}, []string{"b"},
			map[uint64]st{1: {uint32(0), true}, 3: {uint32(0), true}}},
		{"mark of a settled message: nothing", -1, []Command{{Kind: KindSettle, Node: "n1", IDs: []uint64{1}}, down("n1"), mark("n1", 1)}, nil,
			map[uint64]st{2: {uint32(0), true}, 3: {uint32(0), true}}},
		// The message's next holder delivers it, its mark counts at the return; a duplicate
		// of that mark (proposed again after an unknown outcome) is not a late mark of n1's.
		{"duplicate mark of the next holder counts once", -1, []Command{down("n1"), co("n2", 3), mark("n2", 1), co("n2", 0), ret("n2", 1), mark("n2", 1)}, nil,
			map[uint64]st{1: {uint32(1), true}, 2: {uint32(0), true}, 3: {uint32(0), true}}},
		// n1 takes the message again: its marks are of that hold, counted at its return.
		{"duplicate mark of the node that took it again counts once", -1, []Command{down("n1"), co("n1", 3), mark("n1", 1), co("n1", 0), ret("n1", 1), mark("n1", 1)}, nil,
			map[uint64]st{1: {uint32(1), true}, 2: {uint32(0), true}, 3: {uint32(0), true}}},
		// A late mark still counts on a replica restored from a snapshot taken before it.
		{"late mark after a restore", -1, []Command{down("n1"), restore(), mark("n1", 2)}, nil,
			map[uint64]st{1: {uint32(0), true}, 2: {uint32(1), false}, 3: {uint32(0), true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			limits := NoLimits()
			limits.DeliveryLimit = tc.limit
			m := New(limits, Hooks{})
			run(t, m, enq("a", "b", "c"))
			run(t, m, co("n1", 3))
			var dropped []string
			for _, c := range tc.cmds {
				if c.Kind == kindRestoreTest {
					snap, err := m.Snapshot()
					if err != nil {
						t.Fatal(err)
					}
					m = New(limits, Hooks{})
					if err := m.Restore(snap); err != nil {
						t.Fatal(err)
					}
					continue
				}
				dropped = append(dropped, bodiesOf(run(t, m, c).Dropped)...)
			}
			if !slices.Equal(dropped, tc.dropped) {
				t.Fatalf("dropped %v, want %v", dropped, tc.dropped)
			}
			if got := msgStates(m); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			// A replica restored from a snapshot agrees.
			snap, err := m.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			m2 := New(limits, Hooks{})
			if err := m2.Restore(snap); err != nil {
				t.Fatal(err)
			}
			if got := msgStates(m2); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("restored: got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestReturnAt: a return's delay counts from the queue's time less its KindAt's age (how
// long before its batch was built the proposer decided it, on its own clock: no skew), at
// most the delay, for that return only; NextRedelivery is the first delayed message's due
// time, and a follower's KindClock past it promotes it.
func TestReturnAt(t *testing.T) {
	tests := []struct {
		name string
		age  int64 // -1: no KindAt
		due  int64 // the first return's due time (batch at 1000, delay 300); 0: at once
	}{
		{"no at", -1, 1300},
		{"aged", 100, 1200},
		{"fresh", 0, 1300},
		{"older than the delay", 5000, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NoLimits()
			l.RedeliveryDelay = 300
			r := newRec()
			m := New(l, r.hooks())
			batch := func(now int64, cs ...Command) { m.Apply(0, Command{Kind: KindBatch, Now: now, Batch: cs}.Encoded()) }
			batch(500, Command{Kind: KindCheckout, Node: "n1", Credit: 3}, enq("a", "b", "c"))
			var cs []Command
			if tt.age >= 0 {
				cs = append(cs, Command{Kind: KindAt, Now: tt.age})
			}
			cs = append(cs, Command{Kind: KindReturn, Node: "n1", IDs: []uint64{1}, Delivered: true},
				Command{Kind: KindReturn, Node: "n1", IDs: []uint64{2}, Delivered: true})
			before := len(r.assigned["n1"])
			batch(1000, cs...)
			if tt.due == 0 {
				// Due at once (from the queue's time less the whole delay): promoted by
				// the same batch, the second still delayed.
				if len(m.delayed) != 1 || m.delayed[0].msg.ID != 2 || m.delayed[0].at != 1300 {
					t.Fatalf("delayed %+v, want only the second, due at 1300", m.delayed)
				}
				if got := r.assigned["n1"][before:]; !slices.Contains(got, 1) {
					t.Fatalf("not promoted at once: assigned %v", got)
				}
				return
			}
			if got := m.NextRedelivery(); got != tt.due {
				t.Fatalf("NextRedelivery %d, want %d", got, tt.due)
			}
			// The second return had no KindAt of its own: from the queue's time.
			if len(m.delayed) != 2 || m.delayed[1].at != 1300 {
				t.Fatalf("delayed %+v, want the second due at 1300", m.delayed)
			}
			before = len(r.assigned["n1"])
			batch(0, Command{Kind: KindClock, Now: tt.due - 1})
			if len(r.assigned["n1"]) != before {
				t.Fatal("promoted before its time")
			}
			batch(0, Command{Kind: KindClock, Now: tt.due})
			if got := r.assigned["n1"][before:]; !slices.Contains(got, 1) {
				t.Fatalf("not promoted by a clock at its due time: assigned %v", got)
			}
			if m.now != 1000 {
				t.Fatalf("queue time moved to a follower's clock: %d", m.now)
			}
		})
	}
}

// TestDownFromSnapshot: a message a NodeDown took back uncounted keeps the node its late
// mark counts from in the snapshot (version 6, only while one has it: version 4 again once
// it counted); a delayed one too, counted by the late mark after a restore.
func TestDownFromSnapshot(t *testing.T) {
	limits := NoLimits()
	limits.RedeliveryDelay = 60_000
	m := New(limits, Hooks{})
	m.Apply(0, (&Command{Kind: KindBatch, Now: 1000, Batch: []Command{enq("a", "b")}}).Encoded())
	run(t, m, Command{Kind: KindCheckout, Node: "n1", Credit: 2})
	run(t, m, Command{Kind: KindNodeDown, Node: "n1"})
	// n2 delivers both; their return delays them, each still n1's for a late mark.
	run(t, m, Command{Kind: KindCheckout, Node: "n2", Credit: 2})
	run(t, m, Command{Kind: KindDelivered, Node: "n2", IDs: []uint64{1, 2}})
	run(t, m, Command{Kind: KindCheckout, Node: "n2", Credit: 0})
	run(t, m, Command{Kind: KindReturn, Node: "n2", IDs: []uint64{1, 2}, Delivered: true})
	if len(m.delayed) != 2 || m.delayedLate != 2 {
		t.Fatalf("delayed %d, delayedLate %d, want 2, 2", len(m.delayed), m.delayedLate)
	}
	s, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if s[0] != 6 {
		t.Fatalf("snapshot version %d, want 6", s[0])
	}
	r := New(limits, Hooks{})
	if err := r.Restore(s); err != nil {
		t.Fatal(err)
	}
	if again, _ := r.Snapshot(); string(again) != string(s) {
		t.Fatal("a restored replica's snapshot differs")
	}
	if r.delayedLate != 2 {
		t.Fatalf("restored delayedLate %d, want 2", r.delayedLate)
	}
	for _, x := range []*Machine{m, r} {
		run(t, x, Command{Kind: KindDelivered, Node: "n2", IDs: []uint64{1}}) // a duplicate: nothing
		run(t, x, Command{Kind: KindDelivered, Node: "n1", IDs: []uint64{1, 2}})
		want := map[uint64][2]any{1: {uint32(2), false}, 2: {uint32(2), false}}
		if got := msgStates(x); !reflect.DeepEqual(got, want) || x.delayedLate != 0 {
			t.Fatalf("after the late marks: %v, delayedLate %d, want %v, 0", got, x.delayedLate, want)
		}
		if s, _ := x.Snapshot(); s[0] != 4 {
			t.Fatalf("snapshot version %d once counted, want 4", s[0])
		}
	}
	// A version 5 snapshot cannot have a downFrom.
	s5 := slices.Clone(s)
	s5[0] = 5
	if err := New(limits, Hooks{}).Restore(s5); err == nil {
		t.Fatal("a downFrom accepted in a version 5 snapshot")
	}
}
