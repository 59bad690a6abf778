package cluster

import (
	"encoding/json"
	"fmt"
	"maps"
	"sync"
)

// StatusGroup is the multiraft group that carries the nodes' NodeStatus (group 1,
// multiraft.MetadataGroup, is the metadata). Quorum queues must number their groups above it.
const StatusGroup uint64 = 2

// StatusBoard is the state machine of the status group: the last NodeStatus each node
// proposed. Every node proposes its own at start, after a reload and every StatusInterval, so
// every node learns every other node's configuration digest and applied index through the
// same Raft transport, authenticated like the metadata, without a protocol of its own. It is
// kept apart from Metadata so that a status never touches the topology's log or snapshots.
type StatusBoard struct {
	check *ConfigCheck // fed with every status applied; nil for none

	mu    sync.Mutex
	nodes map[string]NodeStatus
}

// NewStatusBoard returns an empty board that reports every status it applies to check.
func NewStatusBoard(check *ConfigCheck) *StatusBoard {
	return &StatusBoard{check: check, nodes: map[string]NodeStatus{}}
}

// Apply implements multiraft.StateMachine: cmd is a NodeStatus as JSON. A corrupt entry is
// ignored alike on every node (a status is advisory).
func (s *StatusBoard) Apply(index uint64, cmd []byte) any {
	var st NodeStatus
	if err := json.Unmarshal(cmd, &st); err != nil || st.Node == "" {
		return fmt.Errorf("cluster: status entry %d ignored: not a node status", index)
	}
	s.mu.Lock()
	if prev, ok := s.nodes[st.Node]; ok && prev.At.After(st.At) {
		// An older status proposed again after a newer one (a retried proposal): keep the newer.
		s.mu.Unlock()
		return nil
	}
	s.nodes[st.Node] = st
	s.mu.Unlock()
	if s.check != nil {
		s.check.Observe(st)
	}
	return nil
}

// Snapshot implements multiraft.StateMachine.
func (s *StatusBoard) Snapshot() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.Marshal(s.nodes)
}

// Restore implements multiraft.StateMachine.
func (s *StatusBoard) Restore(b []byte) error {
	nodes := map[string]NodeStatus{}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &nodes); err != nil {
			return fmt.Errorf("cluster: restoring the status board: %w", err)
		}
	}
	s.mu.Lock()
	s.nodes = nodes
	s.mu.Unlock()
	if s.check != nil {
		for _, st := range nodes {
			s.check.Observe(st)
		}
	}
	return nil
}

// Nodes returns the last status of every node that reported one.
func (s *StatusBoard) Nodes() map[string]NodeStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.nodes)
}

// Forget drops a node that left the cluster (not replicated: each node forgets on its reload).
func (s *StatusBoard) Forget(node string) {
	s.mu.Lock()
	delete(s.nodes, node)
	s.mu.Unlock()
}
