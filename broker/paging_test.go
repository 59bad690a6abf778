package broker

import (
	"fmt"
	"math"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/persistence"
	"github.com/warrenmq/warren/queue"
)

// refusingPages is the real store, except that page writes fail while refuse is set, as on
// a full disk. The failure is reported from the journal goroutine, in order with the other
// requests, as the store reports a refused group.
type refusingPages struct {
	*persistence.Store
	refuse  atomic.Bool
	refused atomic.Int64
}

func (r *refusingPages) Submit(b *persistence.Batch, done func(error)) {
	if !r.refuse.Load() || len(b.Pages) == 0 {
		r.Store.Submit(b, done)
		return
	}
	r.refused.Add(int64(len(b.Pages)))
	r.Store.Submit(&persistence.Batch{}, func(error) {
		if done != nil {
			done(fmt.Errorf("injected: %w", persistence.ErrDiskFull))
		}
	})
}

// A transient message paged out while the disk refuses writes stays in memory and is
// delivered in order: before, it was dropped from memory and lost without a word.
func TestRefusedPageWriteKeepsMessages(t *testing.T) {
	b, err := New(Options{DataDir: t.TempDir(), MaxRAMMessages: 2, Logger: quietLog(),
		VHosts: []VHostSettings{{Name: "/", MaxQueues: -1}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	pages := &refusingPages{Store: b.store}
	b.testPages = pages
	v := b.VHost("/")
	if _, err := v.DeclareQueue(System, QueueSpec{Name: "q"}); err != nil {
		t.Fatal(err)
	}
	ex, xerr := v.Exchange("")
	if xerr != nil {
		t.Fatal(xerr)
	}
	p := v.NewPublisher()
	send := func(body string) {
		header := amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(body)), &amqp.Properties{})
		sum, err := amqp.ScanContentHeader(header)
		if err != nil {
			t.Fatal(err)
		}
		msg, aerr := b.NewMessage(ex, "q", header, &sum, []byte(body))
		if aerr != nil {
			t.Fatal(aerr)
		}
		if res, _ := p.Publish(ex, msg, sum.HeadersRaw, nil); !res.Routed {
			t.Fatalf("%s not routed", body)
		}
	}
	const n = 20
	for i := 0; i < n; i++ {
		// Refuse the middle third: pages before and after it are written.
		pages.refuse.Store(i >= 7 && i < 14)
		send(fmt.Sprintf("m%02d", i))
	}
	p.Flush()
	if pages.refused.Load() == 0 {
		t.Fatal("no page write was refused: the test did not page out")
	}
	pages.refuse.Store(false)
	for i := 0; i < n; i++ {
		_, e, _, ok, err := v.Get(System, "q", true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Fatalf("message %d of %d missing (%d page writes refused)", i, n, pages.refused.Load())
		}
		if got, want := string(e.Msg.Body), fmt.Sprintf("m%02d", i); got != want {
			t.Fatalf("message %d is %q, want %q", i, got, want)
		}
	}
	if _, _, _, ok, _ := v.Get(System, "q", true); ok {
		t.Fatal("more messages than were published")
	}
}

// The pager's refused entries: Discard (purge, delete) drops them, and a read merges them in
// seq order only up to where it got.
func TestPagerRefusedEntries(t *testing.T) {
	b := newTestBroker(t, "")
	v := b.VHost("/")
	qs, err := v.DeclareQueue(System, QueueSpec{Name: "q"})
	if err != nil {
		t.Fatal(err)
	}
	var dropped []persistence.Batch
	p := &pager{qs: qs, store: recordPages(func(b *persistence.Batch) { dropped = append(dropped, *b) })}
	entry := func(seq uint64) *queue.Entry { return &queue.Entry{Seq: seq, Msg: &queue.Message{}} }
	for _, seq := range []uint64{3, 5, 9, 12} {
		p.keepRefused(entry(seq), persistence.ErrDiskFull)
	}
	seqs := func(es []*queue.Entry) (out []uint64) {
		for _, e := range es {
			out = append(out, e.Seq)
		}
		return out
	}
	// A full read of 4 and 6: only refused 5 fits in it, 3 is below from, 9 and 12 after it.
	if got := seqs(p.withRefused([]*queue.Entry{entry(4), entry(6)}, 4, true)); !slices.Equal(got, []uint64{4, 5, 6}) {
		t.Fatalf("full read merged to %v, want [4 5 6]", got)
	}
	p.Discard([]queue.Span{{From: 1, To: 3}})
	// A read that reached the end takes every refused entry from `from` on.
	if got := seqs(p.withRefused(nil, 6, false)); !slices.Equal(got, []uint64{9, 12}) {
		t.Fatalf("end read merged to %v, want [9 12]", got)
	}
	if len(p.refused) != 0 {
		t.Fatalf("refused left: %v (3 discarded, 5, 9, 12 read)", p.refused)
	}
	if len(dropped) != 1 || len(dropped[0].DropPages) != 1 {
		t.Fatalf("Discard submitted %+v, want one page drop", dropped)
	}
}

// recordPages is a pageStore that passes submitted batches to fn and reads nothing.
type recordPages func(*persistence.Batch)

func (r recordPages) Submit(b *persistence.Batch, done func(error)) {
	r(b)
	if done != nil {
		done(nil)
	}
}

func (recordPages) ReadAhead(_ persistence.ReadRequest, done func([]persistence.Stored, error)) {
	done(nil, nil)
}

func TestExpiresAfter(t *testing.T) {
	now := time.Now().UnixNano()
	for _, tc := range []struct {
		ms       int64
		min, max int64
	}{
		{0, now, now + int64(time.Minute)},
		{1000, now + int64(time.Second), now + int64(time.Second+time.Minute)},
		{10_000_000_000_000, math.MaxInt64, math.MaxInt64}, // ~317 years: saturates, never wraps
		{math.MaxInt64, math.MaxInt64, math.MaxInt64},
	} {
		if got := expiresAfter(tc.ms); got < tc.min || got > tc.max {
			t.Errorf("expiresAfter(%d) = %d, want in [%d, %d]", tc.ms, got, tc.min, tc.max)
		}
	}
}
