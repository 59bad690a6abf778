package persistence

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// childModes are the child processes tests start by running the test binary again with
// one of these environment variables set to a store directory.
var childModes = map[string]func(dir string) int{crashChildEnv: crashChild}

func TestMain(m *testing.M) {
	for env, child := range childModes {
		if dir := os.Getenv(env); dir != "" {
			os.Exit(child(dir))
		}
	}
	os.Exit(m.Run())
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// openT opens the store in dir with production settings, except that it does not sync.
func openT(t testing.TB, dir string) *Store {
	t.Helper()
	return openWith(t, dir, Options{NoSync: true})
}

// openWith opens the store in dir with opts, logging nowhere unless opts has a Logger.
func openWith(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	return s
}

func closeT(t testing.TB, s *Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func reopen(t testing.TB, s *Store, dir string) *Store {
	t.Helper()
	closeT(t, s)
	return openT(t, dir)
}

func mkMsg(id uint64) *Message {
	return &Message{ID: id, Exchange: "ex", RoutingKey: fmt.Sprintf("rk.%d", id), Header: []byte{0, 60, 0, 0, byte(id)}, Body: []byte(fmt.Sprintf("body-%d", id))}
}

func pub(m *Message, entries ...Entry) Publish {
	for i := range entries {
		entries[i].MsgID = m.ID
	}
	return Publish{Msg: m, Entries: entries}
}

func ent(q string, seq uint64) Entry { return Entry{Queue: QueueRef{VHost: "/", Queue: q}, Seq: seq} }

func qref(q string) QueueRef { return QueueRef{VHost: "/", Queue: q} }

type recovered struct {
	Seq, ID    uint64
	Deliveries uint32
}

func recoverAll(t testing.TB, s *Store, q string) []recovered {
	t.Helper()
	var out []recovered
	_, err := s.RecoverQueue(qref(q), 0, func(st Stored) error {
		want := mkMsg(st.Msg.ID)
		if !reflect.DeepEqual(st.Msg, want) {
			t.Errorf("queue %s seq %d: message %+v, want %+v", q, st.Seq, st.Msg, want)
		}
		out = append(out, recovered{st.Seq, st.Msg.ID, st.Deliveries})
		return nil
	})
	if err != nil {
		t.Fatalf("RecoverQueue(%s): %v", q, err)
	}
	return out
}

func ids(rs []recovered) []uint64 {
	out := []uint64{}
	for _, r := range rs {
		out = append(out, r.ID)
	}
	return out
}

// checkContents requires queue "q" to hold messages wantQ in order, the messages stored to
// be readable and the messages gone to be deleted.
func checkContents(t *testing.T, s *Store, wantQ, storedIDs, gone []uint64) {
	t.Helper()
	if got := ids(recoverAll(t, s, "q")); !slices.Equal(got, wantQ) {
		t.Errorf("q = %v, want %v", got, wantQ)
	}
	for _, id := range storedIDs {
		if !stored(s, id) {
			t.Errorf("message %d not stored", id)
		}
	}
	for _, id := range gone {
		if _, err := readMessage(s, id); !errors.Is(err, ErrNotFound) {
			t.Errorf("readMessage(%d) err = %v, want ErrNotFound", id, err)
		}
	}
}

func commitT(t testing.TB, s *Store, b *Batch) {
	t.Helper()
	if err := s.Commit(b); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

func stored(s *Store, id uint64) bool {
	_, err := readMessage(s, id)
	return err == nil
}

func TestTopologyRoundTrip(t *testing.T) {
	t.Parallel()
	exA := ExchangeRecord{VHost: "/", Name: "a", Kind: "topic", Durable: true, Args: []byte{0, 0, 0, 0}}
	exB := ExchangeRecord{VHost: "/", Name: "b", Kind: "fanout", Durable: true, AutoDelete: true, Internal: true}
	exOther := ExchangeRecord{VHost: "other", Name: "a", Kind: "direct", Durable: true}
	q1 := QueueRecord{VHost: "/", Name: "q1", Args: []byte("args")}
	q2 := QueueRecord{VHost: "/", Name: "q2", AutoDelete: true, Epoch: 11}
	qOther := QueueRecord{VHost: "other", Name: "q1"}
	bA1 := BindingRecord{VHost: "/", Source: "a", Destination: "q1", Key: "k.#"}
	bA1args := BindingRecord{VHost: "/", Source: "a", Destination: "q1", Key: "k.#", Args: []byte{1, 2}}
	bA2 := BindingRecord{VHost: "/", Source: "a", Destination: "q2", Key: ""}
	bAB := BindingRecord{VHost: "/", Source: "a", Destination: "b", ToExchange: true, Key: "x"}
	bBq1 := BindingRecord{VHost: "/", Source: "b", Destination: "q1"}
	bOther := BindingRecord{VHost: "other", Source: "a", Destination: "q1"}

	tests := []struct {
		name   string
		change func(s *Store) error
		want   Topology
	}{
		{
			name:   "nothing deleted",
			change: func(*Store) error { return nil },
			want: Topology{
				Exchanges: []ExchangeRecord{exA, exB, exOther},
				Queues:    []QueueRecord{q1, q2, qOther},
				Bindings:  []BindingRecord{bAB, bA1, bA1args, bA2, bBq1, bOther},
			},
		},
		{
			name:   "delete exchange b drops bindings from and to it",
			change: func(s *Store) error { return s.DeleteExchange("/", "b") },
			want: Topology{
				Exchanges: []ExchangeRecord{exA, exOther},
				Queues:    []QueueRecord{q1, q2, qOther},
				Bindings:  []BindingRecord{bA1, bA1args, bA2, bOther},
			},
		},
		{
			name:   "delete queue q1 drops bindings to it in its vhost only",
			change: func(s *Store) error { return s.DeleteQueue("/", "q1") },
			want: Topology{
				Exchanges: []ExchangeRecord{exA, exB, exOther},
				Queues:    []QueueRecord{q2, qOther},
				Bindings:  []BindingRecord{bAB, bA2, bOther},
			},
		},
		{
			name:   "delete one binding by identity including args",
			change: func(s *Store) error { return s.DeleteBinding(bA1args) },
			want: Topology{
				Exchanges: []ExchangeRecord{exA, exB, exOther},
				Queues:    []QueueRecord{q1, q2, qOther},
				Bindings:  []BindingRecord{bAB, bA1, bA2, bBq1, bOther},
			},
		},
		{
			name: "deleting missing things succeeds",
			change: func(s *Store) error {
				return errors.Join(s.DeleteExchange("/", "nope"), s.DeleteQueue("/", "nope"),
					s.DeleteBinding(BindingRecord{VHost: "/", Source: "a", Destination: "zz"}))
			},
			want: Topology{
				Exchanges: []ExchangeRecord{exA, exB, exOther},
				Queues:    []QueueRecord{q1, q2, qOther},
				Bindings:  []BindingRecord{bAB, bA1, bA1args, bA2, bBq1, bOther},
			},
		},
		{
			name: "put replaces",
			change: func(s *Store) error {
				return s.PutQueue(QueueRecord{VHost: "/", Name: "q2", Args: []byte("new")})
			},
			want: Topology{
				Exchanges: []ExchangeRecord{exA, exB, exOther},
				Queues:    []QueueRecord{q1, {VHost: "/", Name: "q2", Args: []byte("new")}, qOther},
				Bindings:  []BindingRecord{bAB, bA1, bA1args, bA2, bBq1, bOther},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir)
			for _, e := range []ExchangeRecord{exB, exA, exOther} {
				if err := s.PutExchange(e); err != nil {
					t.Fatal(err)
				}
			}
			for _, q := range []QueueRecord{q2, q1, qOther} {
				if err := s.PutQueue(q); err != nil {
					t.Fatal(err)
				}
			}
			for _, b := range []BindingRecord{bA1, bA1, bA1args, bA2, bAB, bBq1, bOther} {
				if err := s.PutBinding(b); err != nil {
					t.Fatal(err)
				}
			}
			if err := tc.change(s); err != nil {
				t.Fatal(err)
			}
			s = reopen(t, s, dir)
			defer closeT(t, s)
			got, err := s.LoadTopology()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("topology after reopen:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestSharedMessageRefcount(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		order []string // queues removed one per batch, in this order
	}{
		{"forward", []string{"a", "b", "c"}},
		{"backward", []string{"c", "b", "a"}},
		{"double remove is harmless", []string{"a", "a", "b", "b", "c"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir)
			commitT(t, s, &Batch{Publishes: []Publish{pub(mkMsg(7), ent("a", 1), ent("b", 10), ent("c", 100))}})
			remaining := map[string]bool{"a": true, "b": true, "c": true}
			for i, q := range tc.order {
				seq := map[string]uint64{"a": 1, "b": 10, "c": 100}[q]
				commitT(t, s, &Batch{Removes: []Entry{ent(q, seq)}})
				delete(remaining, q)
				if i%2 == 0 {
					s = reopen(t, s, dir)
				}
				if got, want := stored(s, 7), len(remaining) > 0; got != want {
					t.Fatalf("after removing from %v: message stored = %v, want %v", tc.order[:i+1], got, want)
				}
				for _, q2 := range []string{"a", "b", "c"} {
					if n := len(recoverAll(t, s, q2)); n != map[bool]int{true: 1}[remaining[q2]] {
						t.Fatalf("queue %s has %d entries, remaining=%v", q2, n, remaining)
					}
				}
			}
			if st := s.Stats(); st.MessagesStored != 0 {
				t.Errorf("MessagesStored = %d, want 0", st.MessagesStored)
			}
			closeT(t, s)
		})
	}
}

func TestPurgeAndDeleteQueue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		n     int // messages only in q1 (besides 5 shared with q10); -1 = three purge chunks
		purge func(s *Store) error
	}{
		{"purge small", 10, func(s *Store) error { return s.Commit(&Batch{Purges: []Purge{{Queue: qref("q1")}}}) }},
		{"delete small", 10, func(s *Store) error { return s.DeleteQueue("/", "q1") }},
		{"purge across chunks", -1, func(s *Store) error { return s.Commit(&Batch{Purges: []Purge{{Queue: qref("q1")}}}) }},
		{"delete across chunks", -1, func(s *Store) error { return s.DeleteQueue("/", "q1") }},
		{"purge with publish in same batch", 10, func(s *Store) error {
			return s.Commit(&Batch{Publishes: []Publish{pub(mkMsg(999999), ent("q1", 999999))}, Purges: []Purge{{Queue: qref("q1")}}})
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir)
			if err := s.PutQueue(QueueRecord{VHost: "/", Name: "q1"}); err != nil {
				t.Fatal(err)
			}
			// "q10" shares a prefix with "q1" as a string: must be untouched.
			b := &Batch{}
			for i := 1; i <= 5; i++ {
				b.Publishes = append(b.Publishes, pub(mkMsg(uint64(i)), ent("q1", uint64(i)), ent("q10", uint64(i))))
			}
			commitT(t, s, b)
			if tc.n < 0 {
				tc.n = 2*s.drainChunkFor(indexPrefix(qref("q1"))) + 123
			}
			b = &Batch{}
			for i := 6; i < 6+tc.n; i++ {
				b.Publishes = append(b.Publishes, pub(mkMsg(uint64(i)), ent("q1", uint64(i))))
				if len(b.Publishes) == 1000 {
					commitT(t, s, b)
					b = &Batch{}
				}
			}
			commitT(t, s, b)
			if err := tc.purge(s); err != nil {
				t.Fatal(err)
			}
			check := func() {
				if n := len(recoverAll(t, s, "q1")); n != 0 {
					t.Errorf("q1 has %d entries after purge", n)
				}
				if got := ids(recoverAll(t, s, "q10")); !slices.Equal(got, []uint64{1, 2, 3, 4, 5}) {
					t.Errorf("q10 = %v, want 1..5", got)
				}
				if st := s.Stats(); st.MessagesStored != 5 {
					t.Errorf("MessagesStored = %d, want 5", st.MessagesStored)
				}
				if stored(s, 6) || !stored(s, 5) {
					t.Errorf("message 6 stored=%v (want false), 5 stored=%v (want true)", stored(s, 6), stored(s, 5))
				}
			}
			check()
			// The queue keeps working after a purge.
			commitT(t, s, &Batch{Publishes: []Publish{pub(mkMsg(5000000), ent("q1", 5000000))}})
			commitT(t, s, &Batch{Removes: []Entry{ent("q1", 5000000)}})
			s = reopen(t, s, dir)
			check()
			closeT(t, s)
		})
	}
}

func TestInterruptedPurgeCompletesAtOpen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openT(t, dir)
	b := &Batch{}
	for i := 1; i <= 50; i++ {
		b.Publishes = append(b.Publishes, pub(mkMsg(uint64(i)), ent("q", uint64(i))))
	}
	commitT(t, s, b)
	// Simulate a crash between the marker commit and the drain.
	err := s.do(func(g *group) error { return g.txn.Set(purgeKey(qref("q")), nil) })
	if err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s, dir)
	defer closeT(t, s)
	if n := len(recoverAll(t, s, "q")); n != 0 {
		t.Errorf("q has %d entries, want 0", n)
	}
	if st := s.Stats(); st.MessagesStored != 0 {
		t.Errorf("MessagesStored = %d", st.MessagesStored)
	}
}

func TestDeliveriesAndOrder(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openT(t, dir)
	// Published out of seq order over several batches; seqs span byte boundaries.
	seqs := []uint64{300, 2, 256, 1, 1 << 40, 255, 70000}
	for i, seq := range seqs {
		commitT(t, s, &Batch{Publishes: []Publish{pub(mkMsg(uint64(i+1)), ent("q", seq))}})
	}
	commitT(t, s, &Batch{Deliveries: []DeliveryMark{
		{Entry: ent("q", 2), Count: 1},
		{Entry: ent("q", 256), Count: 3},
		{Entry: ent("q", 9999), Count: 5}, // missing: ignored, not resurrected
	}})
	commitT(t, s, &Batch{Deliveries: []DeliveryMark{{Entry: ent("q", 2), Count: 2}}})
	s = reopen(t, s, dir)
	defer closeT(t, s)
	want := []recovered{
		{1, 4, 0}, {2, 2, 2}, {255, 6, 0}, {256, 3, 3}, {300, 1, 0}, {70000, 7, 0}, {1 << 40, 5, 0},
	}
	if got := recoverAll(t, s, "q"); !reflect.DeepEqual(got, want) {
		t.Errorf("recovered\n got %v\nwant %v", got, want)
	}
	stop := errors.New("stop")
	n := 0
	_, err := s.RecoverQueue(qref("q"), 0, func(Stored) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("RecoverQueue with failing fn: err=%v calls=%d", err, n)
	}
}

func TestPublishAndRemove(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		batches []*Batch
		wantQ   []uint64 // message ids left in q
		stored  []uint64
		gone    []uint64
	}{
		{
			name:    "same batch",
			batches: []*Batch{{Publishes: []Publish{pub(mkMsg(1), ent("q", 1))}, Removes: []Entry{ent("q", 1)}}},
			wantQ:   []uint64{},
			gone:    []uint64{1},
		},
		{
			name: "next batch",
			batches: []*Batch{
				{Publishes: []Publish{pub(mkMsg(1), ent("q", 1)), pub(mkMsg(2), ent("q", 2))}},
				{Removes: []Entry{ent("q", 1)}},
			},
			wantQ:  []uint64{2},
			stored: []uint64{2},
			gone:   []uint64{1},
		},
		{
			name: "delivery and remove in same batch",
			batches: []*Batch{{
				Publishes:  []Publish{pub(mkMsg(1), ent("q", 1))},
				Deliveries: []DeliveryMark{{Entry: ent("q", 1), Count: 1}},
				Removes:    []Entry{ent("q", 1)},
			}},
			wantQ: []uint64{},
			gone:  []uint64{1},
		},
		{
			name: "republish of an entry replaces its message",
			batches: []*Batch{
				{Publishes: []Publish{pub(mkMsg(1), ent("q", 1))}},
				{Publishes: []Publish{pub(mkMsg(2), ent("q", 1))}},
			},
			wantQ:  []uint64{2},
			stored: []uint64{2},
			gone:   []uint64{1},
		},
		{
			name:    "publish without entries stores nothing",
			batches: []*Batch{{Publishes: []Publish{{Msg: mkMsg(1)}}}},
			wantQ:   []uint64{},
			gone:    []uint64{1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open("", Options{InMemory: true, Logger: quietLogger()})
			if err != nil {
				t.Fatal(err)
			}
			defer closeT(t, s)
			// Submit all without waiting, so they may share a transaction.
			errs := make(chan error, len(tc.batches))
			for _, b := range tc.batches {
				s.Submit(b, func(err error) { errs <- err })
			}
			for range tc.batches {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			checkContents(t, s, tc.wantQ, tc.stored, tc.gone)
		})
	}
}

func TestBatchAtomicity(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openT(t, dir)
	defer func() { closeT(t, s) }()
	commitT(t, s, &Batch{Publishes: []Publish{pub(mkMsg(1), ent("q", 1)), pub(mkMsg(2), ent("q", 2))}})

	// tooBig exceeds badger's transaction limit on its own (values below the value-log
	// threshold count in full); it also removes entry 1, which must not happen.
	tooBig := &Batch{Removes: []Entry{ent("q", 1)}}
	body := bytes.Repeat([]byte("x"), valueThreshold-40) // in the LSM tree: counts in full
	for i := 0; i < 20000; i++ {
		id := uint64(1000 + i)
		tooBig.Publishes = append(tooBig.Publishes, Publish{Msg: &Message{ID: id, Body: body}, Entries: []Entry{ent("q", id)}})
	}
	invalid := &Batch{
		Removes:   []Entry{ent("q", 2)},
		Publishes: []Publish{{Msg: mkMsg(50), Entries: []Entry{{Queue: qref("q"), Seq: 50, MsgID: 51}}}},
	}
	tests := []struct {
		name    string
		b       *Batch
		wantErr bool
	}{
		{"ok before", &Batch{Publishes: []Publish{pub(mkMsg(3), ent("q", 3))}}, false},
		{"too big", tooBig, true},
		{"ok between", &Batch{Publishes: []Publish{pub(mkMsg(4), ent("q", 4))}}, false},
		{"invalid", invalid, true},
		{"nil message", &Batch{Publishes: []Publish{{Entries: []Entry{ent("q", 60)}}}}, true},
		{"ok after", &Batch{Publishes: []Publish{pub(mkMsg(5), ent("q", 5))}, Removes: []Entry{ent("q", 3)}}, false},
	}
	errs := make([]error, len(tests))
	var order []int
	var wg sync.WaitGroup
	wg.Add(len(tests))
	for i, tc := range tests {
		s.Submit(tc.b, func(err error) {
			errs[i] = err
			order = append(order, i) // done runs on the single journal goroutine
			wg.Done()
		})
	}
	wg.Wait()
	if !slices.IsSorted(order) {
		t.Errorf("done order %v, want submission order", order)
	}
	for i, tc := range tests {
		if (errs[i] != nil) != tc.wantErr {
			t.Errorf("%s: err = %v, wantErr %v", tc.name, errs[i], tc.wantErr)
		}
	}
	s = reopen(t, s, dir)
	if got, want := ids(recoverAll(t, s, "q")), []uint64{1, 2, 4, 5}; !slices.Equal(got, want) {
		t.Errorf("q = %v, want %v", got, want)
	}
	if stored(s, 1000) || stored(s, 50) || stored(s, 3) {
		t.Error("a message of a failed batch (or removed message 3) is stored")
	}
	if got := s.MaxMessageID(); got != 5 {
		t.Errorf("MaxMessageID = %d, want 5 (failed batches must not move it)", got)
	}
}

func TestMaxMessageIDAfterRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openT(t, dir)
	if got := s.MaxMessageID(); got != 0 {
		t.Fatalf("fresh MaxMessageID = %d", got)
	}
	commitT(t, s, &Batch{Publishes: []Publish{pub(mkMsg(41), ent("q", 1)), pub(mkMsg(17), ent("q", 2))}})
	commitT(t, s, &Batch{Removes: []Entry{ent("q", 1), ent("q", 2)}})
	if got := s.MaxMessageID(); got != 41 {
		t.Fatalf("MaxMessageID = %d, want 41", got)
	}
	s = reopen(t, s, dir)
	defer closeT(t, s)
	if got := s.MaxMessageID(); got != 41 {
		t.Errorf("MaxMessageID after restart with all messages deleted = %d, want 41", got)
	}
}

func TestConcurrentSubmit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openT(t, dir)
	const workers, perWorker = 32, 100
	var wg sync.WaitGroup
	errc := make(chan error, workers*perWorker*2)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				id := uint64(w*perWorker + i + 1)
				// Shared with "victim", which is deleted concurrently.
				b := &Batch{Publishes: []Publish{pub(mkMsg(id), ent("q", id), ent("victim", id))}}
				if i%2 == 1 {
					b.Removes = []Entry{ent("q", id-1)}
					b.Deliveries = []DeliveryMark{{Entry: ent("q", id), Count: 1}}
				}
				if i%3 == 0 {
					errc <- s.Commit(b)
				} else {
					s.Submit(b, func(err error) { errc <- err })
				}
			}
		}(w)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 5; i++ {
			errc <- s.DeleteQueue("/", "victim")
		}
	}()
	wg.Wait()
	s = reopen(t, s, dir) // Close drains Submits still in flight
	defer closeT(t, s)
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := recoverAll(t, s, "q")
	if len(got) != workers*perWorker/2 {
		t.Fatalf("q has %d entries, want %d", len(got), workers*perWorker/2)
	}
	for _, r := range got {
		if r.ID%2 != 0 || r.Deliveries != 1 {
			t.Fatalf("unexpected entry %+v", r)
		}
	}
	// victim's final delete might precede some publishes; whatever is left must be consistent.
	victim := recoverAll(t, s, "victim")
	inVictim := map[uint64]bool{}
	for _, r := range victim {
		inVictim[r.ID] = true
	}
	for id := uint64(1); id <= workers*perWorker; id++ {
		if want := id%2 == 0 || inVictim[id]; stored(s, id) != want {
			t.Errorf("message %d stored=%v, want %v", id, !want, want)
		}
	}
	if st := s.Stats(); st.MessagesStored != len(got)+len(victim)-countEven(victim) {
		t.Errorf("MessagesStored = %d", st.MessagesStored)
	}
}

func countEven(rs []recovered) int {
	n := 0
	for _, r := range rs {
		if r.ID%2 == 0 {
			n++
		}
	}
	return n
}

func TestSubmitAfterClose(t *testing.T) {
	t.Parallel()
	s, err := Open("", Options{InMemory: true, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	closeT(t, s)
	if err := s.Commit(&Batch{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Commit after Close: %v, want ErrClosed", err)
	}
	if err := s.PutQueue(QueueRecord{Name: "q"}); !errors.Is(err, ErrClosed) {
		t.Errorf("PutQueue after Close: %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestOpenRefusesForeignDirs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(t *testing.T) string
	}{
		{"non-empty non-badger dir", func(t *testing.T) string {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("hi"), 0o600); err != nil {
				t.Fatal(err)
			}
			return dir
		}},
		{"path is a file", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "file")
			if err := os.WriteFile(p, []byte("hi"), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}},
		{"badger dir without warren metadata", func(t *testing.T) string {
			dir := t.TempDir()
			s := openT(t, dir)
			closeT(t, s)
			// Remove the metadata record behind the store's back.
			s = openT(t, dir)
			if err := s.do(func(g *group) error { return g.txn.Delete(keyFormat) }); err != nil {
				t.Fatal(err)
			}
			closeT(t, s)
			return dir
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.setup(t)
			s, err := Open(dir, Options{Logger: quietLogger()})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), dir) {
				t.Errorf("error %q does not name %s", err, dir)
			}
		})
	}
	t.Run("missing dir is created", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "a", "b")
		s := openT(t, dir)
		closeT(t, s)
		s = openT(t, dir)
		closeT(t, s)
	})
}

// populate fills a store for corruption tests: many small messages (LSM tables) and a
// few big ones (value log), then closes it so everything is in .sst/.vlog files.
func populate(t *testing.T, dir string) {
	t.Helper()
	s := openT(t, dir)
	if err := s.PutQueue(QueueRecord{VHost: "/", Name: "q"}); err != nil {
		t.Fatal(err)
	}
	b := &Batch{}
	for i := 1; i <= 2000; i++ {
		b.Publishes = append(b.Publishes, pub(mkMsg(uint64(i)), ent("q", uint64(i))))
	}
	big := bytes.Repeat([]byte("B"), 64<<10)
	for i := 0; i < 4; i++ {
		id := uint64(10000 + i)
		b.Publishes = append(b.Publishes, Publish{Msg: &Message{ID: id, Body: big}, Entries: []Entry{ent("big", id)}})
	}
	commitT(t, s, b)
	closeT(t, s)
}

func findFile(t *testing.T, dir, suffix string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "*"+suffix))
	var best string
	var size int64
	for _, p := range m {
		if fi, err := os.Stat(p); err == nil && fi.Size() > size {
			best, size = p, fi.Size()
		}
	}
	if best == "" {
		t.Fatalf("no non-empty *%s file in %s", suffix, dir)
	}
	return best
}

func garble(t *testing.T, p string, at func(size int64) int64, n int) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	off := at(fi.Size())
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatal(err)
	}
	for i := range buf {
		buf[i] ^= 0x5a
	}
	if _, err := f.WriteAt(buf, off); err != nil {
		t.Fatal(err)
	}
}

func truncate(t *testing.T, p string, frac float64) {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, int64(float64(fi.Size())*frac)); err != nil {
		t.Fatal(err)
	}
}

func TestOpenCorruptedDirectory(t *testing.T) {
	t.Parallel()
	mid := func(size int64) int64 { return size / 2 }
	tests := []struct {
		name    string
		corrupt func(t *testing.T, dir string)
	}{
		{"MANIFEST truncated", func(t *testing.T, dir string) { truncate(t, filepath.Join(dir, "MANIFEST"), 0.6) }},
		{"MANIFEST emptied", func(t *testing.T, dir string) { truncate(t, filepath.Join(dir, "MANIFEST"), 0) }},
		{"MANIFEST garbled", func(t *testing.T, dir string) { garble(t, filepath.Join(dir, "MANIFEST"), mid, 4) }},
		{"MANIFEST deleted", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "MANIFEST")); err != nil {
				t.Fatal(err)
			}
		}},
		{"sst garbled", func(t *testing.T, dir string) { garble(t, findFile(t, dir, ".sst"), mid, 16) }},
		{"sst truncated", func(t *testing.T, dir string) { truncate(t, findFile(t, dir, ".sst"), 0.5) }},
		{"sst deleted", func(t *testing.T, dir string) {
			if err := os.Remove(findFile(t, dir, ".sst")); err != nil {
				t.Fatal(err)
			}
		}},
		{"vlog garbled", func(t *testing.T, dir string) { garble(t, findFile(t, dir, ".vlog"), mid, 16) }},
		{"vlog truncated", func(t *testing.T, dir string) { truncate(t, findFile(t, dir, ".vlog"), 0.5) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			populate(t, dir)
			tc.corrupt(t, dir)
			s, err := Open(dir, Options{Logger: quietLogger()})
			if err == nil {
				n := len(recoverAll(t, s, "q"))
				s.Close()
				t.Fatalf("Open of a corrupted store succeeded (q has %d of 2000 entries)", n)
			}
			t.Logf("Open: %v", err)
			if !strings.Contains(err.Error(), dir) {
				t.Errorf("error %q does not name %s", err, dir)
			}
		})
	}
	t.Run("intact control", func(t *testing.T) {
		dir := t.TempDir()
		populate(t, dir)
		s := openT(t, dir)
		defer closeT(t, s)
		if n := len(recoverAll(t, s, "q")); n != 2000 {
			t.Errorf("q has %d entries, want 2000", n)
		}
	})
}

func TestGroupSplitsAtTransactionLimits(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openT(t, dir)
	body := bytes.Repeat([]byte("z"), valueThreshold-40) // in the LSM tree: counts in full
	const batches, per = 200, 150
	var wg sync.WaitGroup
	errs := make(chan error, batches)
	wg.Add(batches)
	for i := 0; i < batches; i++ {
		b := &Batch{}
		for j := 0; j < per; j++ {
			id := uint64(i*per + j + 1)
			b.Publishes = append(b.Publishes, Publish{Msg: &Message{ID: id, Body: body}, Entries: []Entry{ent("q", id)}})
		}
		s.Submit(b, func(err error) { errs <- err; wg.Done() })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.Batches != batches || st.Commits < 2 {
		t.Errorf("stats %+v: want %d batches over several commits", st, batches)
	}
	s = reopen(t, s, dir)
	defer closeT(t, s)
	n := 0
	_, err := s.RecoverQueue(qref("q"), 0, func(st Stored) error {
		n++
		if st.Msg.ID != st.Seq || !bytes.Equal(st.Msg.Body, body) {
			t.Fatalf("entry %d: message %d with %d-byte body", st.Seq, st.Msg.ID, len(st.Msg.Body))
		}
		return nil
	})
	if err != nil || n != batches*per {
		t.Fatalf("recovered %d, err %v", n, err)
	}
}

func TestValueLogGCDuringTraffic(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(dir, Options{Logger: quietLogger(), NoSync: true, GCInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("g"), 64<<10) // value log
	for i := uint64(1); i <= 300; i++ {
		commitT(t, s, &Batch{
			Publishes: []Publish{{Msg: &Message{ID: i, Body: big}, Entries: []Entry{ent("q", i)}}},
			Removes:   []Entry{ent("q", i-1)},
		})
	}
	s.kickGC()
	s = reopen(t, s, dir)
	defer closeT(t, s)
	m, err := readMessage(s, 300)
	if err != nil || !bytes.Equal(m.Body, big) {
		t.Fatalf("readMessage(300) = %v", err)
	}
	if st := s.Stats(); st.MessagesStored != 1 {
		t.Errorf("MessagesStored = %d, want 1", st.MessagesStored)
	}
}

// TestDrainedBacklogGivesDiskBack: once a backlog is drained, the timer-driven maintenance
// compacts the tree and value-log GC deletes the garbage files, without further traffic.
func TestDrainedBacklogGivesDiskBack(t *testing.T) {
	t.Parallel()
	// Small files and memtables: the backlog spreads over several value-log files and levels
	// of the tree, as a real one does.
	dir := t.TempDir()
	s := openWith(t, dir, Options{NoSync: true, GCInterval: 50 * time.Millisecond,
		ValueLogFileSize: 1 << 20, FlattenAfterDeletes: 1000, MemTableSize: 256 << 10})
	defer closeT(t, s)
	vlogBytes := func() int64 { return valueLogBytes(dir) }
	const n = 15000
	body := bytes.Repeat([]byte("d"), 1<<10) // value log
	b := &Batch{}
	for i := uint64(1); i <= n; i++ {
		b.Publishes = append(b.Publishes, Publish{Msg: &Message{ID: i, Body: body}, Entries: []Entry{ent("q", i)}})
		if len(b.Publishes) == 100 {
			commitT(t, s, b)
			b = &Batch{}
		}
	}
	full := vlogBytes()
	b = &Batch{}
	for i := uint64(1); i <= n; i++ {
		b.Removes = append(b.Removes, ent("q", i))
		if len(b.Removes) == 100 {
			commitT(t, s, b)
			b = &Batch{}
		}
	}
	// Traffic goes on while the maintenance runs: it must never make a commit fail.
	stop := make(chan struct{})
	traffic := make(chan error, 1)
	go func() {
		// At least one commit, even when the maintenance finished before this goroutine ran.
		for id := uint64(n + 1); ; id++ {
			b := &Batch{Publishes: []Publish{pub(mkMsg(id), ent("other", id))}, Removes: []Entry{ent("other", id-1)}}
			if err := s.Commit(b); err != nil {
				traffic <- err
				return
			}
			select {
			case <-stop:
				traffic <- nil
				return
			default:
			}
		}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for vlogBytes() > full/4 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	if err := <-traffic; err != nil {
		t.Fatalf("a commit failed during maintenance: %v", err)
	}
	if got := vlogBytes(); got > full/4 {
		t.Fatalf("value log still %d bytes after draining (%d with the backlog)", got, full)
	}
	if st := s.Stats(); st.MessagesStored != 1 {
		t.Errorf("MessagesStored = %d, want 1 (the last of the traffic)", st.MessagesStored)
	}
}

// TestGarbageLeftBeforeRestartIsReclaimed: a value log much larger than the messages found
// at Open is compacted and collected without any new deletions.
func TestGarbageLeftBeforeRestartIsReclaimed(t *testing.T) {
	t.Parallel()
	small := Options{NoSync: true, ValueLogFileSize: 1 << 20, MemTableSize: 256 << 10}
	dir := t.TempDir()
	s := openWith(t, dir, small)
	body := bytes.Repeat([]byte("g"), 1<<10)
	const n = 15000
	for i := uint64(1); i <= n; i += 100 {
		b := &Batch{}
		for j := i; j < i+100; j++ {
			b.Publishes = append(b.Publishes, Publish{Msg: &Message{ID: j, Body: body}, Entries: []Entry{ent("q", j)}})
		}
		commitT(t, s, b)
		b = &Batch{}
		for j := i; j < i+100; j++ {
			b.Removes = append(b.Removes, ent("q", j))
		}
		commitT(t, s, b)
	}
	closeT(t, s)
	full := valueLogBytes(dir)
	small.GCInterval = 50 * time.Millisecond
	s = openWith(t, dir, small)
	defer closeT(t, s)
	if !s.garbageAtOpen {
		t.Fatalf("a value log of %d bytes without messages was not noticed", full)
	}
	// badger starts a new value-log file at every Open (2*ValueLogFileSize long, mostly
	// empty); only the files from before can be garbage. Counting the new one made the test
	// fail whenever GC during the first phase had left less than 4 times its size.
	old := func() int64 {
		newest, err := newestFid(dir, ".vlog")
		if err != nil {
			t.Fatal(err)
		}
		n := valueLogBytes(dir)
		if fi, err := os.Stat(vlogPath(dir, newest)); err == nil {
			n -= fi.Size()
		}
		return n
	}
	deadline := time.Now().Add(60 * time.Second)
	for old() > full/4 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := old(); got > full/4 {
		t.Fatalf("value-log files from before Open still %d bytes (%d at Open)", got, full)
	}
}
