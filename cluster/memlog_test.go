package cluster

import (
	"context"
	"errors"
	"sync"
)

// stateMachine is cluster/multiraft's StateMachine contract, which Metadata implements.
type stateMachine interface {
	Apply(index uint64, cmd []byte) any
	Snapshot() ([]byte, error)
	Restore([]byte) error
}

var _ stateMachine = (*Metadata)(nil)

// memLog is a real replicated log in one process, minus the network: one ordered sequence of
// entries, each applied to every member's state machine in the same order before Propose
// returns, with the proposer's result. It stands in for a Raft group in tests (the Raft wiring
// is the next step); it never loses, reorders or duplicates an entry, so it tests the state
// machine and the broker hook, not consensus.
type memLog struct {
	mu       sync.Mutex
	entries  [][]byte
	machines []stateMachine
	down     map[int]bool // members that do not accept proposals (no majority behind them)
}

// member returns member i's handle (its Log), after adding its state machine.
func (l *memLog) join(sm stateMachine) memMember {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.machines = append(l.machines, sm)
	return memMember{l: l, i: len(l.machines) - 1}
}

type memMember struct {
	l *memLog
	i int
}

var errNoQuorum = errors.New("no quorum: this member is cut off")

// Propose implements Log.
func (m memMember) Propose(ctx context.Context, cmd []byte) (any, error) {
	l := m.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down[m.i] {
		return nil, errNoQuorum
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.entries = append(l.entries, append([]byte(nil), cmd...))
	index := uint64(len(l.entries))
	var out any
	for i, sm := range l.machines {
		if r := sm.Apply(index, cmd); i == m.i {
			out = r
		}
	}
	return out, nil
}
