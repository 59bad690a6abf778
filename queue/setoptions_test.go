package queue

import (
	"slices"
	"testing"
	"time"
)

// SetOptions on a live queue: a lowered drop-head limit drops from the head at once, a
// reject-publish limit only refuses new messages, a new TTL applies to later messages only, and
// Options reflects the change.
func TestSetOptions(t *testing.T) {
	tests := []struct {
		name      string
		set       func(*Options)
		dropped   []uint64 // MaxLen drops caused by SetOptions
		nextPush  PushResult
		remaining []uint64 // ready after the extra push, drained with Get
	}{
		{"lower drop-head limit", func(o *Options) { o.MaxLength = 2 }, []uint64{1, 2, 3}, Enqueued, []uint64{5, 6}},
		{"byte limit", func(o *Options) { o.MaxLengthBytes = 30 }, []uint64{1, 2}, Enqueued, []uint64{4, 5, 6}},
		{"reject-publish keeps messages", func(o *Options) { o.MaxLength, o.Overflow = 2, RejectPublish }, nil, Refused, []uint64{1, 2, 3, 4, 5}},
		{"raise limit", func(o *Options) { o.MaxLength = 100 }, nil, Enqueued, []uint64{1, 2, 3, 4, 5, 6}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, r, _ := newTestQueue(NoLimits())
			pushN(t, q, 5, 10)
			opts := NoLimits()
			tc.set(&opts)
			q.SetOptions(opts)
			if got := q.Options(); got != opts {
				t.Fatalf("Options() = %+v, want %+v", got, opts)
			}
			if got := r.dropped(MaxLen); !slices.Equal(got, tc.dropped) {
				t.Fatalf("dropped %v, want %v", got, tc.dropped)
			}
			if res := q.Push(q.NewEntry(q.NextSeq(), &Message{Body: make([]byte, 10)})); res != tc.nextPush {
				t.Fatalf("push after SetOptions = %v, want %v", res, tc.nextPush)
			}
			var ready []uint64
			for {
				e, _, ok := q.Get(true)
				if !ok {
					break
				}
				ready = append(ready, e.Seq)
			}
			if !slices.Equal(ready, tc.remaining) {
				t.Fatalf("ready %v, want %v", ready, tc.remaining)
			}
		})
	}
}

func TestSetOptionsTTLAppliesToNewMessages(t *testing.T) {
	q, r, clk := newTestQueue(NoLimits())
	pushN(t, q, 1, 1) // no TTL
	opts := NoLimits()
	opts.MessageTTL = time.Hour
	q.SetOptions(opts)
	late := q.NewEntry(q.NextSeq(), &Message{})
	if late.ExpiresAt != clk.now()+int64(time.Hour) {
		t.Fatalf("entry after SetOptions expires at %d, want now+1h", late.ExpiresAt)
	}
	q.Push(late)
	clk.advance(2 * time.Hour)
	q.Kick()
	// The old message has no expiry and stays at the head, so nothing expires (expiry is checked
	// at the head only, as in RabbitMQ).
	if got := r.dropped(Expired); len(got) != 0 {
		t.Fatalf("expired %v, want none while the head has no TTL", got)
	}
	q.Get(true)
	q.Kick()
	if got := r.dropped(Expired); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("expired %v, want [2]", got)
	}
}

// SetOptions on a deleted queue records the options, drops nothing and does not panic; the
// queue stays closed.
func TestSetOptionsClosed(t *testing.T) {
	q, r, _ := newTestQueue(NoLimits())
	pushN(t, q, 3, 1)
	q.Close()
	opts := NoLimits()
	opts.MaxLength = 0
	q.SetOptions(opts)
	if got := r.dropped(MaxLen); len(got) != 0 {
		t.Fatalf("closed queue dropped %v", got)
	}
	if got := q.Options(); got.MaxLength != 0 {
		t.Errorf("Options().MaxLength = %d after SetOptions, want 0", got.MaxLength)
	}
	if got := q.Push(q.NewEntry(q.NextSeq(), &Message{})); got != Refused {
		t.Errorf("Push on the closed queue = %v, want Refused", got)
	}
}
