package persistence

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
)

func putDelayed(t *testing.T, s *Store, ds ...Delayed) {
	t.Helper()
	ch := make(chan error, 1)
	s.PutDelayedAsync(ds, func(err error) { ch <- err })
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
}

func readDelayed(t *testing.T, s *Store, from DelayedKey, upTo int64, max int) ([]Delayed, bool) {
	t.Helper()
	ds, capped, err := s.ReadDelayed(from, upTo, max)
	if err != nil {
		t.Fatal(err)
	}
	return ds, capped
}

// Held messages come back in due order (then sequence), bounded by due time and count, and
// survive a reopen; an incarnation's messages are dropped in chunks; LoadDelayed summarises.
func TestDelayedIndex(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir)
	d := func(due int64, seq, inc uint64, body string) Delayed {
		return Delayed{Key: DelayedKey{Due: due, Seq: seq, Incarnation: inc}, VHost: "/", Exchange: "dx", RoutingKey: "k",
			Header: []byte{1, 2, 3}, Body: []byte(body)}
	}
	putDelayed(t, s, d(300, 1, 7, "c"), d(100, 2, 7, "a"), d(100, 1, 9, "a0"), d(200, 5, 9, "b"))
	for _, c := range []struct {
		from   DelayedKey
		upTo   int64
		max    int
		want   string
		capped bool
	}{
		{DelayedKey{}, 1000, 10, "a0 a b c", false},
		{DelayedKey{}, 150, 10, "a0 a", false},
		{DelayedKey{}, 1000, 2, "a0 a", true},
		{DelayedKey{Due: 100, Seq: 2}, 1000, 10, "b c", false}, // after from, not at it
		{DelayedKey{Due: 300, Seq: 1}, 1000, 10, "", false},
	} {
		ds, capped := readDelayed(t, s, c.from, c.upTo, c.max)
		var got []string
		for _, x := range ds {
			got = append(got, string(x.Body))
			if x.VHost != "/" || x.Exchange != "dx" || x.RoutingKey != "k" || !bytes.Equal(x.Header, []byte{1, 2, 3}) {
				t.Errorf("decoded %+v", x)
			}
		}
		if g := strings.Join(got, " "); g != c.want || capped != c.capped {
			t.Errorf("read after %+v up to %d max %d: %q capped %v, want %q %v", c.from, c.upTo, c.max, g, capped, c.want, c.capped)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir)
	defer closeT(t, s)
	ch := make(chan error, 1)
	s.PutDelayedExchangeAsync("/", "dx", 9, func(err error) { ch <- err })
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	st, err := s.LoadDelayed()
	if err != nil {
		t.Fatal(err)
	}
	if st.Count != 4 || st.Last != (DelayedKey{Due: 300, Seq: 1, Incarnation: 7}) || len(st.Incarnations) != 2 ||
		st.Incarnations[0] != 7 || st.Incarnations[1] != 9 || st.Exchanges[[2]string{"/", "dx"}] != 9 {
		t.Fatalf("after reopen: %+v", st)
	}
	if n, _, done, err := s.DropDelayedChunk(7, DelayedKey{}); err != nil || n != 2 || !done {
		t.Fatalf("drop incarnation 7: %d %v %v", n, done, err)
	}
	if n, _, done, err := s.DropDelayedChunk(7, DelayedKey{}); err != nil || n != 0 || !done {
		t.Fatalf("drop again: %d %v %v", n, done, err)
	}
	ch2 := make(chan error, 1)
	s.RemoveDelayedAsync([]DelayedKey{{Due: 100, Seq: 1, Incarnation: 9}}, func(err error) { ch2 <- err })
	if err := <-ch2; err != nil {
		t.Fatal(err)
	}
	if ds, _ := readDelayed(t, s, DelayedKey{}, 1000, 10); len(ds) != 1 || string(ds[0].Body) != "b" {
		t.Fatalf("left: %v", ds)
	}
	s.DeleteDelayedExchangeAsync("/", "dx", func(err error) { ch <- err })
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	if st, _ := s.LoadDelayed(); len(st.Exchanges) != 0 || st.Count != 1 || len(st.Incarnations) != 1 {
		t.Fatalf("at the end: %+v", st)
	}
}

// FuzzDecodeDelayed: a stored value never panics the decoder, and what encodes decodes back.
func FuzzDecodeDelayed(f *testing.F) {
	f.Add(encodeDelayed(&Delayed{Key: DelayedKey{Incarnation: 3}, VHost: "/", Exchange: "x", RoutingKey: "k", Header: []byte{9}, Body: []byte("b")}))
	f.Add([]byte{})
	f.Add([]byte{1, 47, 0, 0, 200})
	f.Fuzz(func(t *testing.T, v []byte) {
		k := delayedKey(DelayedKey{Due: 5, Seq: 6, Incarnation: 7})
		d, err := decodeDelayed(k, v)
		if err != nil {
			return
		}
		again, err := decodeDelayed(k, encodeDelayed(&d))
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if again.Key != d.Key || again.VHost != d.VHost || again.Exchange != d.Exchange || again.RoutingKey != d.RoutingKey ||
			!bytes.Equal(again.Header, d.Header) || !bytes.Equal(again.Body, d.Body) {
			t.Fatalf("round trip: %+v != %+v", again, d)
		}
	})
}

// Held messages are message data: while disk space is low they are refused like a publish,
// and a batch submitted with them is written with them or not at all.
func TestDelayedSpaceAndAtomicity(t *testing.T) {
	s := openT(t, t.TempDir())
	if s.res == nil {
		t.Fatal("no space reservations on this platform")
	}
	held := func(seq uint64) []Delayed {
		return []Delayed{{Key: DelayedKey{Due: 100, Seq: seq, Incarnation: 1}, VHost: "/", Exchange: "dx", Body: []byte("x")}}
	}
	wait := func(submit func(func(error))) error {
		ch := make(chan error, 1)
		submit(func(err error) { ch <- err })
		return <-ch
	}

	// A batch that fails validation takes its held messages with it.
	bad := &Batch{Publishes: []Publish{{Msg: nil, Entries: []Entry{ent("q", 1)}}}}
	if err := wait(func(done func(error)) { s.SubmitWithDelayed(bad, held(1), done) }); err == nil {
		t.Fatal("invalid batch committed")
	}
	if ds, _ := readDelayed(t, s, DelayedKey{}, 1000, 10); len(ds) != 0 {
		t.Fatalf("held message of a failed batch stored: %+v", ds)
	}
	good := &Batch{Publishes: []Publish{{Msg: &Message{ID: 1, Body: []byte("m")}, Entries: []Entry{ent("q", 1)}, NewEntries: true}}}
	if err := wait(func(done func(error)) { s.SubmitWithDelayed(good, held(2), done) }); err != nil {
		t.Fatal(err)
	}
	if ds, _ := readDelayed(t, s, DelayedKey{}, 1000, 10); len(ds) != 1 || ds[0].Key.Seq != 2 {
		t.Fatalf("held messages after a committed batch: %+v", ds)
	}
	if _, err := readMessage(s, 1); err != nil {
		t.Fatalf("message of the committed batch: %v", err)
	}

	s.res.flushKeep = math.MaxInt64 // as if the disk were full: no free space is enough
	if err := wait(func(done func(error)) { s.PutDelayedAsync(held(3), done) }); !errors.Is(err, ErrDiskFull) {
		t.Errorf("held message with low space: %v; want ErrDiskFull", err)
	}
	if err := wait(func(done func(error)) { s.SubmitWithDelayed(&Batch{}, held(4), done) }); !errors.Is(err, ErrDiskFull) {
		t.Errorf("batch with a held message with low space: %v; want ErrDiskFull", err)
	}
	if ds, _ := readDelayed(t, s, DelayedKey{}, 1000, 10); len(ds) != 1 {
		t.Fatalf("held messages stored while space is low: %+v", ds)
	}
}
