package broker

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/quorum"
)

// ledStuckGroup is a QuorumGroup that reports a leader and never commits (a leader that
// lost its majority and has not noticed yet).
type ledStuckGroup struct{ stuckGroup }

func (g ledStuckGroup) Leader() (string, bool) { return "B", true }

// newPromoteQueue is a quorum queue on g with a redelivery delay and a return of
// deliveries due long ago, not applied: every promoteDue finds a redelivery due.
func newPromoteQueue(g QuorumGroup) *quorumQueue {
	qq := &quorumQueue{node: "A", g: g, m: quorum.New(quorum.Limits{}, quorum.Hooks{}), minRedelivery: 100,
		stop: make(chan struct{}), wake: make(chan struct{}, 1), returnsDue: []int64{time.Now().UnixMilli() - time.Hour.Milliseconds()}}
	qq.cond = sync.NewCond(&qq.mu)
	return qq
}

// TestPromoteDueNoLeader: with a redelivery due and no leader (an election, the minority
// side of a partition), an ack (settle's promoteDue, on the connection's reader) does not
// wait for a promotion that cannot be applied; before, each ack waited quorumPromoteWait.
func TestPromoteDueNoLeader(t *testing.T) {
	qq := newPromoteQueue(stuckGroup{done: make(chan struct{})})
	defer close(qq.stop)
	start := time.Now()
	for range 3 {
		qq.promoteDue()
	}
	if d := time.Since(start); d > quorumPromoteWait/2 {
		t.Fatalf("3 promoteDue without a leader took %v", d)
	}
	if len(qq.pending) != 0 {
		t.Fatalf("%d clock ops pending, want none", len(qq.pending))
	}
}

// TestPromoteDueAfterTimeout: once a promotion timed out (a leader is reported, the log
// does not apply), the next ones do not wait again until its clock op is answered, nor
// propose more clock ops; before, each ack waited quorumPromoteWait and left one more.
func TestPromoteDueAfterTimeout(t *testing.T) {
	qq := newPromoteQueue(ledStuckGroup{stuckGroup{done: make(chan struct{})}})
	defer close(qq.stop)
	start := time.Now()
	for range 4 {
		qq.promoteDue()
	}
	if d := time.Since(start); d > quorumPromoteWait+quorumPromoteWait/4 {
		t.Fatalf("4 promoteDue with a stuck log took %v, want one wait (%v)", d, quorumPromoteWait)
	}
	qq.mu.Lock()
	n := len(qq.pending)
	qq.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d clock ops pending, want 1", n)
	}
	// The clock op answered (applied, or failed): the next one promotes again.
	qq.mu.Lock()
	op := qq.pending[0]
	qq.pending = nil
	qq.mu.Unlock()
	op.done(quorum.Result{}, context.DeadlineExceeded)
	go qq.promoteDue()
	deadline := time.Now().Add(time.Second)
	for {
		qq.mu.Lock()
		n = len(qq.pending)
		qq.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no promotion after the stuck one was answered")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
