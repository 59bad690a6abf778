package mgmt

import (
	"context"
	"errors"
	"net/http"
)

// QuorumMembership is implemented by a Broker of a cluster node: the membership changes of
// quorum queues that RabbitMQ 3.10 offers in rabbitmq-queues only (add_member, delete_member,
// grow, shrink). Warren serves them on endpoints of its own, for warren ctl:
//
//	POST   /api/queues/{vhost}/{name}/members          {"node": "n2"}
//	DELETE /api/queues/{vhost}/{name}/members/{node}
//	POST   /api/nodes/{node}/quorum/grow               {"strategy": "all"|"even", "vhost_pattern": "", "queue_pattern": ""}
//	POST   /api/nodes/{node}/quorum/shrink
//
// Administrators only.
type QuorumMembership interface {
	AddQuorumMember(ctx context.Context, vhost, name, node string) error
	DeleteQuorumMember(ctx context.Context, vhost, name, node string) error
	GrowQuorum(ctx context.Context, node string, even bool, vhostPattern, queuePattern string) ([]MemberChange, error)
	ShrinkQuorum(ctx context.Context, node string) []MemberChange
}

// MemberChange is one queue's outcome of a grow or shrink: its replica count after the
// change, or the error that stopped it (Error, with the count before).
type MemberChange struct {
	VHost, Name string
	Size        int
	Error       string
}

// QuorumStatuser is implemented by a Broker that reports a quorum queue's Raft group, as
// rabbitmq-queues quorum_status does, on Warren's endpoint
//
//	GET /api/queues/{vhost}/{name}/quorum_status
//
// (warren ctl quorum_status). Errors: NotFound for no such queue, BadRequest for a queue that
// is not a quorum queue or a node that runs no Raft (not in a cluster).
type QuorumStatuser interface {
	QuorumStatus(vhost, name string) (QuorumStatus, error)
}

// QuorumStatus is a quorum queue's Raft group as the answering node knows it.
type QuorumStatus struct {
	// Node is the answering node; Leader the group's leader as its replica knows it ("" when
	// it runs none or no leader is known).
	Node, Leader string
	// Members are the queue's replicas, Online those the cluster takes for running, Voters
	// the Raft configuration the answering node's replica has applied (nil: no replica
	// there); Members and Voters differ while a member is being added or removed.
	Members, Online, Voters []string
	Replicas                []ReplicaStatus
}

// ReplicaStatus is one member of a quorum queue's group. A node knows the full Raft state of
// its own replica only (ReportedBy "self"); the group's leader also tracks how far every
// member's log matches its own (ReportedBy "leader" for the other members, with Match,
// Replication and RecentActive). A member the answering node knows nothing of has
// ReportedBy "" and only Node and Online.
type ReplicaStatus struct {
	Node       string
	Online     bool
	ReportedBy string
	// RaftState: leader, follower, candidate or pre_candidate ("" unknown). The leader
	// reports a member follower when it answered within an election timeout.
	RaftState string
	// The replica's own state (ReportedBy "self"): term, commit index, applied index, last
	// index written to its log, latest snapshot's index.
	Term, Commit, Applied, LastIndex, Snapshot uint64
	// The leader's view (the leader's own row too): the highest index known to be in the
	// member's log, raft's replication state (probe, replicate, snapshot) and whether the
	// member answered recently.
	HasProgress  bool
	Match        uint64
	Replication  string
	RecentActive bool
}

func (a *api) quorumStatus(w http.ResponseWriter, r *http.Request) {
	vhost := pathValue(r, "vhost")
	if !a.openVHost(w, userOf(r), vhost) {
		return
	}
	qs, ok := a.b.(QuorumStatuser)
	if !ok {
		badRequest(w, "quorum queue status needs a cluster")
		return
	}
	st, err := qs.QuorumStatus(vhost, pathValue(r, "name"))
	if err != nil {
		a.brokerError(w, r, err)
		return
	}
	reps := make([]obj, 0, len(st.Replicas))
	for _, rs := range st.Replicas {
		o := obj{"node": rs.Node, "online": rs.Online, "reported_by": nullable(rs.ReportedBy), "raft_state": nullable(rs.RaftState)}
		if rs.ReportedBy == "self" {
			o["term"], o["commit_index"], o["applied_index"] = rs.Term, rs.Commit, rs.Applied
			o["last_log_index"], o["snapshot_index"] = rs.LastIndex, rs.Snapshot
		}
		if rs.HasProgress {
			o["match_index"], o["replication_state"], o["recent_active"] = rs.Match, rs.Replication, rs.RecentActive
		}
		reps = append(reps, o)
	}
	var voters any
	if st.Voters != nil {
		voters = st.Voters
	}
	writeJSON(w, http.StatusOK, obj{"name": pathValue(r, "name"), "vhost": vhost, "node": st.Node, "leader": nullable(st.Leader),
		"members": orNoNodes(st.Members), "online": orNoNodes(st.Online), "voters": voters, "replicas": reps})
}

func (a *api) quorumRoutes() {
	a.mux.HandleFunc("GET /api/queues/{vhost}/{name}/quorum_status", a.quorumStatus)
	a.mux.HandleFunc("POST /api/queues/{vhost}/{name}/members", a.addQuorumMember)
	a.mux.HandleFunc("DELETE /api/queues/{vhost}/{name}/members/{node}", a.deleteQuorumMember)
	a.mux.HandleFunc("POST /api/nodes/{node}/quorum/grow", a.growQuorum)
	a.mux.HandleFunc("POST /api/nodes/{node}/quorum/shrink", a.shrinkQuorum)
}

// quorum is the broker's QuorumMembership for an administrator's request; it answers the
// request itself (401, or 400 on a node that is not in a cluster) when it returns false.
func (a *api) quorum(w http.ResponseWriter, r *http.Request) (QuorumMembership, bool) {
	if !a.adminOnly(w, r) {
		return nil, false
	}
	q, ok := a.b.(QuorumMembership)
	if !ok {
		badRequest(w, "quorum queue membership changes need a cluster")
		return nil, false
	}
	return q, true
}

func (a *api) addQuorumMember(w http.ResponseWriter, r *http.Request) {
	q, ok := a.quorum(w, r)
	if !ok {
		return
	}
	var body struct {
		Node string `json:"node"`
	}
	if !readJSON(w, r, &body) {
		return
	}
	if body.Node == "" {
		badRequest(w, "{key_missing,node}")
		return
	}
	if err := q.AddQuorumMember(r.Context(), pathValue(r, "vhost"), pathValue(r, "name"), body.Node); err != nil {
		a.brokerError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) deleteQuorumMember(w http.ResponseWriter, r *http.Request) {
	q, ok := a.quorum(w, r)
	if !ok {
		return
	}
	if err := q.DeleteQuorumMember(r.Context(), pathValue(r, "vhost"), pathValue(r, "name"), pathValue(r, "node")); err != nil {
		a.brokerError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) growQuorum(w http.ResponseWriter, r *http.Request) {
	q, ok := a.quorum(w, r)
	if !ok {
		return
	}
	var body struct {
		Strategy     string `json:"strategy"`
		VHostPattern string `json:"vhost_pattern"`
		QueuePattern string `json:"queue_pattern"`
	}
	if !readJSON(w, r, &body) {
		return
	}
	if body.Strategy != "all" && body.Strategy != "even" {
		badRequest(w, "strategy must be all or even")
		return
	}
	res, err := q.GrowQuorum(r.Context(), pathValue(r, "node"), body.Strategy == "even", body.VHostPattern, body.QueuePattern)
	if err != nil {
		a.brokerError(w, r, BadRequest("%s", err.Error()))
		return
	}
	writeJSON(w, http.StatusOK, changesJSON(res))
}

func (a *api) shrinkQuorum(w http.ResponseWriter, r *http.Request) {
	q, ok := a.quorum(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, changesJSON(q.ShrinkQuorum(r.Context(), pathValue(r, "node"))))
}

func changesJSON(res []MemberChange) []obj {
	out := make([]obj, 0, len(res))
	for _, c := range res {
		o := obj{"vhost": c.VHost, "name": c.Name, "size": c.Size, "result": "ok"}
		if c.Error != "" {
			o["result"] = c.Error
		}
		out = append(out, o)
	}
	return out
}

// errNotCluster is what a Broker's QuorumMembership answers on a single node.
var errNotCluster = errors.New("quorum queue membership changes need a cluster")

// ErrNotCluster is returned by a QuorumMembership of a node that is not in a cluster.
func ErrNotCluster() error { return BadRequest("%s", errNotCluster.Error()) }
