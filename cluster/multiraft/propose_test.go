package multiraft

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"
)

// The dedupe table applies each request of a proposer incarnation once, and nothing below
// the proposer's watermark; incarnations are independent.
func TestDedupeAdmit(t *testing.T) {
	type step struct {
		ph   proposalHdr
		want bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"first copies apply, second copies do not", []step{
			{proposalHdr{1, 7, 1, 1}, true},
			{proposalHdr{1, 7, 2, 1}, true},
			{proposalHdr{1, 7, 1, 1}, false},
			{proposalHdr{1, 7, 2, 1}, false},
		}},
		{"out of order within the window", []step{
			{proposalHdr{1, 7, 3, 1}, true},
			{proposalHdr{1, 7, 1, 1}, true},
			{proposalHdr{1, 7, 2, 1}, true},
			{proposalHdr{1, 7, 3, 1}, false},
		}},
		{"below the watermark: given up or done", []step{
			{proposalHdr{1, 7, 5, 5}, true},
			{proposalHdr{1, 7, 4, 4}, false},
			{proposalHdr{1, 7, 9, 9}, true},
			{proposalHdr{1, 7, 6, 6}, false},
		}},
		{"incarnations and nodes are independent", []step{
			{proposalHdr{1, 7, 1, 1}, true},
			{proposalHdr{1, 8, 1, 1}, true},
			{proposalHdr{2, 7, 1, 1}, true},
			{proposalHdr{1, 8, 1, 1}, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := dedupeTable{}
			for i, s := range tt.steps {
				if got := tab.admit(s.ph, uint64(i+1)); got != s.want {
					t.Fatalf("step %d %+v: admit = %v, want %v", i, s.ph, got, s.want)
				}
			}
			// The table survives a snapshot: the same copies are refused after restore.
			b := tab.encode(nil)
			back, rest, err := decodeDedupe(append(b, "sm"...))
			if err != nil || string(rest) != "sm" {
				t.Fatalf("decode: %v, rest %q", err, rest)
			}
			if !bytes.Equal(back.encode(nil), b) {
				t.Fatal("table changed through encode/decode")
			}
			for i, s := range tt.steps {
				if back.admit(s.ph, uint64(100+i)) {
					t.Errorf("after restore, step %d admitted again", i)
				}
			}
		})
	}
}

// FuzzDecodeDedupe: arbitrary snapshot headers never panic the decoder, and what it accepts
// encodes back to the same bytes.
func FuzzDecodeDedupe(f *testing.F) {
	tab := dedupeTable{}
	tab.admit(proposalHdr{1, 2, 3, 1}, 1)
	tab.admit(proposalHdr{4, 5, 6, 6}, 2)
	f.Add(tab.encode(nil))
	f.Add([]byte("D\x00"))
	f.Add([]byte("D\x05"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, rest, err := decodeDedupe(b)
		if err != nil {
			return
		}
		enc := d.encode(nil)
		d2, _, err := decodeDedupe(enc)
		if err != nil || !bytes.Equal(d2.encode(nil), enc) {
			t.Fatalf("re-encoding differs (%v)", err)
		}
		_ = rest
	})
}

// Two copies of one proposal in the log (a retry after a loss that was only a delay) apply
// once on every member.
func TestDuplicateProposalAppliesOnce(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	gs, sms := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	g := gs[lead]
	data := proposalData(proposalHdr{proposer: g.h.id, inc: g.h.incarnation, req: 1 << 40, watermark: 1}, []byte("twice"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 2; i++ {
		if err := g.submit(ctx, data); err != nil {
			t.Fatal(err)
		}
	}
	propose(t, g, "after")
	waitApplied(t, sms, 2, 10*time.Second)
	log := sameLogs(t, sms)
	if len(log) != 2 || log[0] != "twice" || log[1] != "after" {
		t.Fatalf("log = %q", log)
	}
}

// A follower's proposal forwarded into a black hole (its link to the leader drops every
// byte) is proposed again once the link works, and applied once.
func TestForwardedProposalLostIsRetried(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	gs, sms := c.groups(MetadataGroup)
	lead := waitLeader(t, gs, 10*time.Second)
	var follower string
	for _, n := range c.names {
		if n != lead {
			follower = n
			break
		}
	}
	propose(t, gs[follower], "warm-up")
	link := c.proxies[pairKey(follower, lead)]
	link.SetDrop(true)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := gs[follower].Propose(ctx, []byte("through-the-hole"))
		done <- err
	}()
	time.Sleep(150 * time.Millisecond) // the MsgProp is gone by now
	link.Heal()
	link.Cut() // the silent connection is replaced
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitApplied(t, sms, 2, 10*time.Second)
	log := sameLogs(t, sms)
	n := 0
	for _, cmd := range log {
		if cmd == "through-the-hole" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("applied %d times: %s", n, fmt.Sprint(log))
	}
}
