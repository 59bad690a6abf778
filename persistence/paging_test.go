package persistence

import (
	"encoding/binary"
	"errors"
	"reflect"
	"slices"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// readAhead is ReadAhead made synchronous.
func readAhead(t *testing.T, s *Store, r ReadRequest) []Stored {
	t.Helper()
	type res struct {
		out []Stored
		err error
	}
	ch := make(chan res, 1)
	s.ReadAhead(r, func(out []Stored, err error) { ch <- res{out, err} })
	got := <-ch
	if got.err != nil {
		t.Fatalf("ReadAhead(%+v): %v", r, got.err)
	}
	return got.out
}

func seqsOf(st []Stored) []uint64 {
	out := []uint64{}
	for _, e := range st {
		out = append(out, e.Seq)
	}
	return out
}

func page(space, seq uint64) Page {
	return Page{Space: space, Seq: seq, Msg: mkMsg(1000 + seq), ExpiresAt: int64(seq) * 10, Persistent: seq%2 == 0}
}

func TestReadAheadMergesIndexAndPages(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir())
	defer closeT(t, s)
	space := s.NewPageSpace()
	if other := s.NewPageSpace(); other == space || other == 0 || space == 0 {
		t.Fatalf("page spaces %d and %d", space, other)
	}
	// Durable entries 1, 3, 5, 6 and pages 2, 4, 7, 8 of the same queue; submitted without
	// waiting: ReadAhead must still see them (it runs after everything submitted before).
	b := &Batch{}
	for _, seq := range []uint64{1, 3, 5, 6} {
		e := ent("q", seq)
		e.ExpiresAt = int64(seq) * 100
		b.Publishes = append(b.Publishes, pub(mkMsg(seq), e))
	}
	s.Submit(b, nil)
	for _, seq := range []uint64{2, 4, 7, 8} {
		s.Submit(&Batch{Pages: []Page{page(space, seq)}}, nil)
	}
	s.Submit(&Batch{Pages: []Page{page(space+1, 3)}}, nil) // another queue's page space
	req := ReadRequest{Queue: qref("q"), Durable: true, Space: space, From: 2, Max: 4, MaxBytes: 1 << 20}
	got := readAhead(t, s, req)
	if want := []uint64{2, 3, 4, 5}; !slices.Equal(seqsOf(got), want) {
		t.Fatalf("read seqs %v, want %v", seqsOf(got), want)
	}
	for _, st := range got {
		switch {
		case st.Seq%2 == 1:
			if !st.Durable || !st.Persistent || st.ExpiresAt != int64(st.Seq)*100 || !reflect.DeepEqual(st.Msg, mkMsg(st.Seq)) {
				t.Errorf("durable entry %+v", st)
			}
		default:
			p := page(space, st.Seq)
			if st.Durable || st.Persistent != p.Persistent || st.ExpiresAt != p.ExpiresAt || !reflect.DeepEqual(st.Msg, p.Msg) {
				t.Errorf("page %+v, want %+v", st, p)
			}
		}
	}
	// Pages that were read are handed over (deleted); durable entries stay until removed.
	got = readAhead(t, s, ReadRequest{Queue: qref("q"), Durable: true, Space: space, From: 0, Max: 100, MaxBytes: 1 << 20})
	if want := []uint64{1, 3, 5, 6, 7, 8}; !slices.Equal(seqsOf(got), want) {
		t.Errorf("second read %v, want %v", seqsOf(got), want)
	}
	got = readAhead(t, s, ReadRequest{Space: space, Max: 100, MaxBytes: 1 << 20})
	if len(got) != 0 {
		t.Errorf("pages left after being read: %v", seqsOf(got))
	}
	// MaxBytes stops the read, but never before one entry.
	got = readAhead(t, s, ReadRequest{Queue: qref("q"), Durable: true, Max: 100, MaxBytes: 1})
	if want := []uint64{1}; !slices.Equal(seqsOf(got), want) {
		t.Errorf("read with MaxBytes 1: %v, want %v", seqsOf(got), want)
	}
	if st := s.Stats(); st.ReadAheads != 4 || st.ReadEntries != 11 {
		t.Errorf("stats: %d read-aheads, %d entries; want 4, 11", st.ReadAheads, st.ReadEntries)
	}
}

func TestPagesWipedAtOpen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openT(t, dir)
	space := s.NewPageSpace()
	b := &Batch{Publishes: []Publish{pub(mkMsg(1), ent("q", 1))}}
	for seq := uint64(2); seq < 500; seq++ {
		b.Pages = append(b.Pages, page(space, seq))
	}
	commitT(t, s, b)
	s = reopen(t, s, dir)
	defer closeT(t, s)
	got := readAhead(t, s, ReadRequest{Queue: qref("q"), Durable: true, Space: space, Max: 1000, MaxBytes: 1 << 30})
	if want := []uint64{1}; !slices.Equal(seqsOf(got), want) {
		t.Errorf("after reopen: %v, want only the durable entry", seqsOf(got))
	}
}

func TestDropPages(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir())
	defer closeT(t, s)
	space := s.NewPageSpace()
	b := &Batch{}
	n := uint64(2*s.drainChunkFor(pagePrefix(space)) + 10)
	for seq := uint64(1); seq <= n; seq++ {
		b.Pages = append(b.Pages, page(space, seq))
		if len(b.Pages) == 1000 {
			commitT(t, s, b)
			b = &Batch{}
		}
	}
	commitT(t, s, b)
	commitT(t, s, &Batch{DropPages: []PageDrop{{Space: space, Spans: []Span{{3, 5}, {1, 1}, {4, n - 2}}}}})
	got := readAhead(t, s, ReadRequest{Space: space, Max: 1000, MaxBytes: 1 << 30})
	if want := []uint64{2, n - 1, n}; !slices.Equal(seqsOf(got), want) {
		t.Errorf("left %v, want %v", seqsOf(got), want)
	}
}

func TestPurgeSpans(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openT(t, dir)
	b := &Batch{}
	for i := uint64(1); i <= 20; i++ {
		if i <= 5 {
			b.Publishes = append(b.Publishes, pub(mkMsg(i), ent("q", i), ent("other", i)))
		} else {
			b.Publishes = append(b.Publishes, pub(mkMsg(i), ent("q", i)))
		}
	}
	commitT(t, s, b)
	// Two purges of q in one batch share one marker; spans overlap and touch.
	commitT(t, s, &Batch{Purges: []Purge{
		{Queue: qref("q"), Spans: []Span{{2, 4}, {10, 12}}},
		{Queue: qref("q"), Spans: []Span{{12, 15}, {16, 16}}},
		{Queue: qref("other"), Spans: []Span{}}, // empty: nothing
	}})
	check := func() {
		t.Helper()
		if got, want := ids(recoverAll(t, s, "q")), []uint64{1, 5, 6, 7, 8, 9, 17, 18, 19, 20}; !slices.Equal(got, want) {
			t.Errorf("q = %v, want %v", got, want)
		}
		if got := ids(recoverAll(t, s, "other")); !slices.Equal(got, []uint64{1, 2, 3, 4, 5}) {
			t.Errorf("other = %v", got)
		}
		for id := uint64(1); id <= 20; id++ {
			want := id <= 9 || id >= 17
			if stored(s, id) != want {
				t.Errorf("message %d stored = %v, want %v", id, !want, want)
			}
		}
		if st := s.Stats(); st.MessagesStored != 13 {
			t.Errorf("MessagesStored = %d, want 13", st.MessagesStored)
		}
	}
	check()
	s = reopen(t, s, dir)
	check()
	// A crash between a span purge's marker and its drain: Open completes that purge only.
	err := s.do(func(g *group) error { return g.txn.Set(purgeKey(qref("q")), encodeSpans([]Span{{18, 19}})) })
	if err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s, dir)
	defer closeT(t, s)
	if got, want := ids(recoverAll(t, s, "q")), []uint64{1, 5, 6, 7, 8, 9, 17, 20}; !slices.Equal(got, want) {
		t.Errorf("after interrupted purge: q = %v, want %v", got, want)
	}
}

func TestRecoverQueueLimit(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir())
	defer closeT(t, s)
	b := &Batch{}
	var bytes int64
	for i := uint64(1); i <= 100; i++ {
		m := mkMsg(i)
		bytes += int64(len(m.Body))
		b.Publishes = append(b.Publishes, pub(m, ent("q", i*3)))
	}
	commitT(t, s, b)
	var got []uint64
	info, err := s.RecoverQueue(qref("q"), 10, func(st Stored) error {
		got = append(got, st.Seq)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{3, 6, 9, 12, 15, 18, 21, 24, 27, 30}; !slices.Equal(got, want) {
		t.Errorf("recovered %v, want %v", got, want)
	}
	if want := (QueueInfo{Count: 100, Bytes: bytes, MaxSeq: 300}); info != want {
		t.Errorf("info %+v, want %+v", info, want)
	}
	if info, err := s.RecoverQueue(qref("empty"), 10, func(Stored) error { return nil }); err != nil || info != (QueueInfo{}) {
		t.Errorf("empty queue: %+v, %v", info, err)
	}
}

// rawSet writes keys behind the store's back (to build damaged or old stores).
func rawSet(t *testing.T, s *Store, fn func(txn *badger.Txn) error) {
	t.Helper()
	if err := s.db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func TestOpenRepairsInconsistentCounts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		damage  func(txn *badger.Txn) error
		wantErr bool
		q, r    []uint64 // message ids left in q and r after Open
	}{
		{"lost refcount", func(txn *badger.Txn) error { return txn.Delete(refKey(1)) }, false, []uint64{1, 2}, []uint64{1}},
		{"wrong refcount", func(txn *badger.Txn) error { return txn.Set(refKey(1), encodeRef(5)) }, false, []uint64{1, 2}, []uint64{1}},
		{"stray refcount", func(txn *badger.Txn) error { return txn.Set(refKey(77), encodeRef(2)) }, false, []uint64{1, 2}, []uint64{1}},
		{"orphan message", func(txn *badger.Txn) error {
			return txn.Set(messageKey(9), encodeMessage(mkMsg(9)))
		}, false, []uint64{1, 2}, []uint64{1}},
		{"missing message", func(txn *badger.Txn) error { return txn.Delete(messageKey(2)) }, true, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir)
			commitT(t, s, &Batch{Publishes: []Publish{pub(mkMsg(1), ent("q", 1), ent("r", 1)), pub(mkMsg(2), ent("q", 2))}})
			rawSet(t, s, tc.damage)
			closeT(t, s)
			s, err := Open(dir, Options{Logger: quietLogger(), NoSync: true})
			if tc.wantErr {
				if err == nil {
					s.Close()
					t.Fatal("Open succeeded")
				}
				t.Logf("Open: %v", err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(recoverAll(t, s, "q")); !slices.Equal(got, tc.q) {
				t.Errorf("q = %v, want %v", got, tc.q)
			}
			if got := ids(recoverAll(t, s, "r")); !slices.Equal(got, tc.r) {
				t.Errorf("r = %v, want %v", got, tc.r)
			}
			if st := s.Stats(); st.MessagesStored != 2 || stored(s, 9) {
				t.Errorf("MessagesStored = %d (orphan stored: %v)", st.MessagesStored, stored(s, 9))
			}
			// The repaired refcount works: message 1 goes with its last entry, not before.
			commitT(t, s, &Batch{Removes: []Entry{ent("q", 1)}})
			if !stored(s, 1) {
				t.Fatal("message 1 deleted while r still holds it")
			}
			commitT(t, s, &Batch{Removes: []Entry{ent("r", 1)}})
			if stored(s, 1) {
				t.Fatal("message 1 kept after its last entry went")
			}
			closeT(t, s)
		})
	}
}

// TestOpenMigratesFormat1 builds a format 1 store by hand (12-byte index values, no
// refcount records) and opens it.
func TestOpenMigratesFormat1(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openT(t, dir)
	legacy := func(id uint64, deliveries uint32) []byte {
		v := binary.BigEndian.AppendUint64(nil, id)
		return binary.BigEndian.AppendUint32(v, deliveries)
	}
	rawSet(t, s, func(txn *badger.Txn) error {
		for _, kv := range []struct{ k, v []byte }{
			{keyFormat, binary.BigEndian.AppendUint32(nil, formatVersionV1)},
			{messageKey(1), encodeMessage(mkMsg(1))},
			{messageKey(2), encodeMessage(mkMsg(2))},
			{indexKey(qref("q"), 1), legacy(1, 0)},
			{indexKey(qref("q"), 2), legacy(2, 3)},
			{indexKey(qref("r"), 7), legacy(1, 1)},
			{purgeKey(qref("gone")), nil},
			{indexKey(qref("gone"), 1), legacy(1, 0)},
		} {
			if err := txn.Set(kv.k, kv.v); err != nil {
				return err
			}
		}
		return nil
	})
	s = reopen(t, s, dir)
	defer closeT(t, s)
	if got := recoverAll(t, s, "q"); !reflect.DeepEqual(got, []recovered{{1, 1, 0}, {2, 2, 3}}) {
		t.Errorf("q = %v", got)
	}
	if n := len(recoverAll(t, s, "gone")); n != 0 {
		t.Errorf("interrupted purge left %d entries", n)
	}
	var unknown []bool
	info, err := s.RecoverQueue(qref("q"), 0, func(st Stored) error {
		unknown = append(unknown, st.ExpiryUnknown)
		return nil
	})
	if err != nil || !slices.Equal(unknown, []bool{true, true}) || info.Bytes != int64(len(mkMsg(1).Body)+len(mkMsg(2).Body)) {
		t.Errorf("migrated entries: expiry unknown %v, info %+v, err %v", unknown, info, err)
	}
	commitT(t, s, &Batch{Removes: []Entry{ent("q", 1)}})
	if !stored(s, 1) {
		t.Fatal("message 1 deleted while r still holds it: refcount not migrated")
	}
	commitT(t, s, &Batch{Removes: []Entry{ent("r", 7)}})
	if stored(s, 1) {
		t.Fatal("message 1 kept after its last entry went")
	}
	if v, err := s.readMeta(); err != nil || v != formatVersion {
		t.Errorf("format after migration: %d, %v", v, err)
	}
}

func TestSpanCodec(t *testing.T) {
	t.Parallel()
	for _, spans := range [][]Span{nil, {{1, 2}}, {{0, 0}, {5, 1 << 60}}} {
		got, err := decodeSpans(encodeSpans(spans))
		if err != nil || !reflect.DeepEqual(got, spans) {
			t.Errorf("round trip of %v: %v, %v", spans, got, err)
		}
	}
	if _, err := decodeSpans([]byte{2, 0}); !errors.Is(err, errCorrupt) {
		t.Errorf("short spans: %v", err)
	}
	// A count whose byte length overflows to the length present must not reach make.
	huge := append(binary.AppendUvarint(nil, 1<<60+1), make([]byte, 16)...)
	if _, err := decodeSpans(huge); !errors.Is(err, errCorrupt) {
		t.Errorf("overflowing span count: %v", err)
	}
	got := normalizeSpans([]Span{{10, 20}, {1, 3}, {4, 5}, {15, 30}, {9, 8}, {40, 1<<64 - 1}, {50, 60}})
	if want := []Span{{1, 5}, {10, 30}, {40, 1<<64 - 1}}; !reflect.DeepEqual(got, want) {
		t.Errorf("normalizeSpans = %v, want %v", got, want)
	}
}

func TestIndexValueCodec(t *testing.T) {
	t.Parallel()
	v := indexValue{msgID: 1<<63 + 5, deliveries: 7, expiresAt: -1, size: 1 << 31, flags: idxShared}
	got, legacy, err := decodeIndexValue(encodeIndexValue(v))
	if err != nil || legacy || got != v {
		t.Errorf("round trip: %+v legacy=%v err=%v", got, legacy, err)
	}
	for _, n := range []int{0, 11, 13, 24, 26} {
		if _, _, err := decodeIndexValue(make([]byte, n)); !errors.Is(err, errCorrupt) {
			t.Errorf("%d-byte value: %v", n, err)
		}
	}
}

// TestAckedInSameGroup: entries published and removed by the same transaction are never
// written; a shared message keeps only the references that survive it.
// An entry removed and then published again within one group ends up stored: only a removal
// at or after a publish cancels it.
func TestRemoveThenPublishInSameGroup(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir())
	defer closeT(t, s)
	commitT(t, s, &Batch{Publishes: []Publish{pub(mkMsg(1), ent("q", 5))}})
	hold := make(chan struct{})
	s.submit(request{op: func(*group) error { <-hold; return nil }})
	errs := make(chan error, 2)
	done := func(err error) { errs <- err }
	s.Submit(&Batch{Removes: []Entry{ent("q", 5)}}, done)
	s.Submit(&Batch{Publishes: []Publish{pub(mkMsg(2), ent("q", 5))}}, done)
	close(hold)
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := recoverAll(t, s, "q"); !reflect.DeepEqual(got, []recovered{{5, 2, 0}}) {
		t.Errorf("q = %v, want message 2 at seq 5", got)
	}
	if stored(s, 1) || !stored(s, 2) {
		t.Errorf("stored: message 1 %v (want false), message 2 %v (want true)", stored(s, 1), stored(s, 2))
	}
}

func TestAckedInSameGroup(t *testing.T) {
	t.Parallel()
	s := openT(t, t.TempDir())
	defer closeT(t, s)
	// Submitted without waiting into one group (the journal is held by a slow first request).
	hold := make(chan struct{})
	s.submit(request{op: func(*group) error { <-hold; return nil }})
	errs := make(chan error, 4)
	done := func(err error) { errs <- err }
	s.Submit(&Batch{Publishes: []Publish{pub(mkMsg(1), ent("q", 1)), pub(mkMsg(2), ent("q", 2), ent("r", 2))}}, done)
	s.Submit(&Batch{Deliveries: []DeliveryMark{{Entry: ent("q", 1), Count: 1}, {Entry: ent("q", 2), Count: 1}}}, done)
	s.Submit(&Batch{Removes: []Entry{ent("q", 1), ent("q", 2)}}, done)
	close(hold)
	for i := 0; i < 3; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if stored(s, 1) {
		t.Error("message 1, published and acked in one transaction, was stored")
	}
	if got := recoverAll(t, s, "r"); !reflect.DeepEqual(got, []recovered{{2, 2, 0}}) {
		t.Errorf("r = %v", got)
	}
	if got := recoverAll(t, s, "q"); len(got) != 0 {
		t.Errorf("q = %v", got)
	}
	if st := s.Stats(); st.MessagesStored != 1 || st.Publishes != 2 || s.MaxMessageID() != 2 {
		t.Errorf("stats %+v, max id %d", st, s.MaxMessageID())
	}
	// Message 2 kept one reference (r), without a refcount record.
	commitT(t, s, &Batch{Removes: []Entry{ent("r", 2)}})
	if stored(s, 2) {
		t.Error("message 2 kept after its last entry went")
	}
}
