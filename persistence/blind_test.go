package persistence

import (
	"slices"
	"testing"
	"time"
)

// holdJournal keeps the journal goroutine busy until the returned release is called, so
// that everything submitted meanwhile lands in one group.
func holdJournal(t *testing.T, s *Store) (release func()) {
	t.Helper()
	ch := make(chan struct{})
	held := make(chan struct{})
	go func() {
		_ = s.exclusive(func() error { close(held); <-ch; return nil })
	}()
	<-held
	return func() { close(ch) }
}

// openMemT opens an in-memory store.
func openMemT(t *testing.T) *Store {
	t.Helper()
	return openWith(t, "", Options{InMemory: true})
}

func sole(e Entry, msgID uint64) Entry {
	e.MsgID, e.SoleRef = msgID, true
	return e
}

// Removals promising a sole reference (Entry.SoleRef) and publishes of new entries
// (Publish.NewEntries) do not read the index, and still leave the store exactly as the
// reading paths do: entries and messages gone, MessagesStored right.
func TestBlindWrites(t *testing.T) {
	t.Parallel()
	newPub := func(m *Message, es ...Entry) Publish {
		p := pub(m, es...)
		p.NewEntries = true
		return p
	}
	tests := []struct {
		name string
		// groups are committed one after another; the batches of one group share a
		// transaction (submitted while the journal is held).
		groups     [][]*Batch
		wantQ      []uint64
		stored     []uint64
		gone       []uint64
		nstored    int
		indexReads uint64
	}{
		{
			name: "new entries then sole removal in a later group",
			groups: [][]*Batch{
				{{Publishes: []Publish{newPub(mkMsg(1), ent("q", 1)), newPub(mkMsg(2), ent("q", 2))}}},
				{{Removes: []Entry{sole(ent("q", 1), 1)}}},
			},
			wantQ: []uint64{2}, stored: []uint64{2}, gone: []uint64{1}, nstored: 1,
		},
		{
			name: "sole removal in the publishing group writes nothing",
			groups: [][]*Batch{{
				{Publishes: []Publish{newPub(mkMsg(1), ent("q", 1))}},
				{Removes: []Entry{sole(ent("q", 1), 1)}},
			}},
			wantQ: []uint64{}, gone: []uint64{1}, nstored: 0,
		},
		{
			name: "double sole removal in one group counts once",
			groups: [][]*Batch{
				{{Publishes: []Publish{newPub(mkMsg(1), ent("q", 1)), newPub(mkMsg(2), ent("q", 2))}}},
				{{Removes: []Entry{sole(ent("q", 1), 1)}}, {Removes: []Entry{sole(ent("q", 1), 1)}}},
			},
			wantQ: []uint64{2}, stored: []uint64{2}, gone: []uint64{1}, nstored: 1,
		},
		{
			name: "sole removal after a reading removal in one group",
			groups: [][]*Batch{
				{{Publishes: []Publish{newPub(mkMsg(1), ent("q", 1))}}},
				{{Removes: []Entry{ent("q", 1)}}, {Removes: []Entry{sole(ent("q", 1), 1)}}},
			},
			wantQ: []uint64{}, gone: []uint64{1}, nstored: 0, indexReads: 1,
		},
		{
			name: "delivery mark and ack of one message in one group",
			groups: [][]*Batch{
				{{Publishes: []Publish{newPub(mkMsg(1), ent("q", 1))}}},
				{{Deliveries: []DeliveryMark{{Entry: ent("q", 1), Count: 1}}}, {Removes: []Entry{sole(ent("q", 1), 1)}}},
			},
			wantQ: []uint64{}, gone: []uint64{1}, nstored: 0,
		},
		{
			name: "shared message: removals read the refcount path",
			groups: [][]*Batch{
				{{Publishes: []Publish{newPub(mkMsg(1), ent("q", 1), ent("r", 1))}}},
				{{Removes: []Entry{ent("r", 1)}}},
			},
			wantQ: []uint64{1}, stored: []uint64{1}, nstored: 1, indexReads: 1,
		},
		{
			name: "publish without NewEntries reads for a replaced entry",
			groups: [][]*Batch{
				{{Publishes: []Publish{pub(mkMsg(1), ent("q", 1))}}},
			},
			wantQ: []uint64{1}, stored: []uint64{1}, nstored: 1, indexReads: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openMemT(t)
			defer closeT(t, s)
			for _, group := range tc.groups {
				release := holdJournal(t, s)
				errs := make(chan error, len(group))
				for _, b := range group {
					s.Submit(b, func(err error) { errs <- err })
				}
				release()
				for range group {
					if err := <-errs; err != nil {
						t.Fatal(err)
					}
				}
			}
			checkContents(t, s, tc.wantQ, tc.stored, tc.gone)
			st := s.Stats()
			if st.MessagesStored != tc.nstored {
				t.Errorf("MessagesStored = %d, want %d", st.MessagesStored, tc.nstored)
			}
			if st.IndexReads != tc.indexReads {
				t.Errorf("IndexReads = %d, want %d", st.IndexReads, tc.indexReads)
			}
		})
	}
}

// A stored entry read back says whether its message is shared, which is what lets the
// caller promise SoleRef.
func TestStoredShared(t *testing.T) {
	t.Parallel()
	s := openMemT(t)
	defer closeT(t, s)
	if err := s.Commit(&Batch{Publishes: []Publish{pub(mkMsg(1), ent("q", 1)), pub(mkMsg(2), ent("q", 2), ent("r", 1))}}); err != nil {
		t.Fatal(err)
	}
	var shared []bool
	if _, err := s.RecoverQueue(QueueRef{VHost: "/", Queue: "q"}, 0, func(st Stored) error {
		shared = append(shared, st.Shared)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := []bool{false, true}; !slices.Equal(shared, want) {
		t.Errorf("Shared = %v, want %v", shared, want)
	}
}

// Delivery marks and acks nobody waits for wait for company up to Options.LazyDelay; any other
// request takes them along at once, in order, and Close writes them too.
func TestLazyRequests(t *testing.T) {
	t.Parallel()
	const wait = time.Hour // never reached: something else must commit them
	t.Run("a waiting request commits them", func(t *testing.T) {
		t.Parallel()
		s := openWith(t, "", Options{InMemory: true, LazyDelay: wait})
		defer closeT(t, s)
		if err := s.Commit(&Batch{Publishes: []Publish{pub(mkMsg(1), ent("q", 1)), pub(mkMsg(2), ent("q", 2))}}); err != nil {
			t.Fatal(err)
		}
		before := s.Stats()
		s.Submit(&Batch{Deliveries: []DeliveryMark{{Entry: ent("q", 1), Count: 1}}}, nil)
		s.Submit(&Batch{Removes: []Entry{sole(ent("q", 1), 1)}}, nil)
		s.Submit(&Batch{Deliveries: []DeliveryMark{{Entry: ent("q", 2), Count: 1}}}, nil)
		// The journal wakes for the first lazy request only to start its clock.
		time.Sleep(20 * time.Millisecond)
		if st := s.Stats(); st.Commits != before.Commits {
			t.Fatalf("lazy requests committed alone: %d commits, before %d", st.Commits, before.Commits)
		}
		if err := s.Commit(&Batch{}); err != nil {
			t.Fatal(err)
		}
		st := s.Stats()
		if st.Commits != before.Commits+1 || st.Batches != before.Batches+4 {
			t.Errorf("commits %d -> %d, batches %d -> %d; want one commit of 4 batches", before.Commits, st.Commits, before.Batches, st.Batches)
		}
		// The mark of the acked message was skipped; the other one read its entry.
		if reads := st.IndexReads - before.IndexReads; reads != 1 {
			t.Errorf("%d index reads, want 1", reads)
		}
		got := recoverAll(t, s, "q")
		if len(got) != 1 || got[0].Seq != 2 || got[0].Deliveries != 1 {
			t.Errorf("q after the group = %+v, want entry 2 delivered once", got)
		}
	})
	t.Run("they commit alone after LazyDelay", func(t *testing.T) {
		t.Parallel()
		s := openWith(t, "", Options{InMemory: true, LazyDelay: 5 * time.Millisecond})
		defer closeT(t, s)
		if err := s.Commit(&Batch{Publishes: []Publish{pub(mkMsg(1), ent("q", 1))}}); err != nil {
			t.Fatal(err)
		}
		s.Submit(&Batch{Removes: []Entry{ent("q", 1)}}, nil)
		deadline := time.Now().Add(10 * time.Second)
		for s.Stats().MessagesStored != 0 {
			if time.Now().After(deadline) {
				t.Fatal("a lazy removal was not committed within 10 s")
			}
			time.Sleep(time.Millisecond)
		}
	})
	t.Run("close writes them", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		s := openWith(t, dir, Options{NoSync: true, LazyDelay: wait})
		if err := s.Commit(&Batch{Publishes: []Publish{pub(mkMsg(1), ent("q", 1)), pub(mkMsg(2), ent("q", 2))}}); err != nil {
			t.Fatal(err)
		}
		s.Submit(&Batch{Removes: []Entry{sole(ent("q", 1), 1)}}, nil)
		closeT(t, s)
		s = openT(t, dir)
		defer closeT(t, s)
		if got := ids(recoverAll(t, s, "q")); !slices.Equal(got, []uint64{2}) {
			t.Errorf("q after close and reopen = %v, want [2]", got)
		}
	})
}
