package multiraft

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countSM's state is a count of commands: small whatever the history (like a drained queue).
type countSM struct{ n atomic.Uint64 }

func (s *countSM) Apply(uint64, []byte) any { return s.n.Add(1) }
func (s *countSM) Snapshot() ([]byte, error) {
	return binary.BigEndian.AppendUint64(nil, s.n.Load()), nil
}
func (s *countSM) Restore(b []byte) error {
	if len(b) != 8 {
		return errors.New("bad count snapshot")
	}
	s.n.Store(binary.BigEndian.Uint64(b))
	return nil
}

// A group's disk use follows its state, not its history: with a snapshot every 64 KiB of
// commands (GroupOptions), 400 KiB of 1 KiB commands leave at most two intervals of log
// (plus the snapshot) on every member; with a snapshot every 50 entries, at most about 100
// entries. Neither threshold set on the group: the host's apply (nothing compacted here).
func TestCompactionFollowsState(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	all := []string{"n1", "n2", "n3"}
	payload := []byte(strings.Repeat("x", 1024))
	for _, tc := range []struct {
		name     string
		id       uint64
		opts     GroupOptions
		maxKeys  int
		maxBytes int64
	}{
		{"bytes", 11, GroupOptions{SnapshotBytes: 64 << 10}, 140, 160 << 10},
		{"entries", 12, GroupOptions{SnapshotEvery: 50}, 105, 120 << 10},
		{"host default", 13, GroupOptions{}, 1 << 20, 1 << 40},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			opts.Voters = all
			gs, sms := map[string]*Group{}, map[string]*countSM{}
			for _, name := range all {
				sm := &countSM{}
				g, err := c.hosts[name].GroupWith(tc.id, sm, opts)
				if err != nil {
					t.Fatal(err)
				}
				gs[name], sms[name] = g, sm
			}
			lead := waitLeader(t, gs, 10*time.Second)
			const n = 400
			var wg sync.WaitGroup
			var next atomic.Int64
			for w := 0; w < 8; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= n {
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						_, err := gs[lead].Propose(ctx, payload)
						cancel()
						if err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			deadline := time.Now().Add(10 * time.Second)
			for _, name := range all {
				for sms[name].n.Load() < n {
					if time.Now().After(deadline) {
						t.Fatalf("%s applied %d of %d", name, sms[name].n.Load(), n)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			for _, name := range all {
				keys, bytes, err := c.hosts[name].rlog.GroupDiskUsage(tc.id)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: %d keys, %d bytes stored for %d KiB of history", name, keys, bytes, n*len(payload)>>10)
				if keys > tc.maxKeys || bytes > tc.maxBytes {
					t.Errorf("%s: %d keys, %d bytes; want at most %d keys, %d bytes", name, keys, bytes, tc.maxKeys, tc.maxBytes)
				}
				if tc.maxKeys < n && gs[name].storage.SnapshotIndex() == 0 {
					t.Errorf("%s: no snapshot", name)
				}
				if tc.maxKeys > n && keys < n {
					t.Errorf("%s: compacted (%d keys) under the host's thresholds", name, keys)
				}
			}
		})
	}
}
