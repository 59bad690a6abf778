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

func (a *api) quorumRoutes() {
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
