package ctl

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/warrenmq/warren/mgmt"
)

// quorumBroker is the fake broker with quorum membership changes, recording the calls.
type quorumBroker struct {
	*broker
	calls []string
}

func (q *quorumBroker) AddQuorumMember(_ context.Context, vhost, name, node string) error {
	q.calls = append(q.calls, "add "+vhost+" "+name+" "+node)
	if node == "nx" {
		return mgmt.NotFound("node '%s' is not a cluster member", node)
	}
	return nil
}

func (q *quorumBroker) DeleteQuorumMember(_ context.Context, vhost, name, node string) error {
	q.calls = append(q.calls, "delete "+vhost+" "+name+" "+node)
	return mgmt.PreconditionFailed("cannot remove node '%s', the last member of quorum queue '%s' in vhost '%s'", node, name, vhost)
}

func (q *quorumBroker) GrowQuorum(_ context.Context, node string, even bool, vp, qp string) ([]mgmt.MemberChange, error) {
	q.calls = append(q.calls, "grow "+node+" "+map[bool]string{true: "even", false: "all"}[even]+" "+vp+" "+qp)
	return []mgmt.MemberChange{{VHost: "/", Name: "q1", Size: 3}, {VHost: "/", Name: "q2", Size: 2, Error: "boom"}}, nil
}

func (q *quorumBroker) ShrinkQuorum(_ context.Context, node string) []mgmt.MemberChange {
	q.calls = append(q.calls, "shrink "+node)
	return []mgmt.MemberChange{{VHost: "v", Name: "q3", Size: 1}}
}

// TestQuorumMemberCommands: add_member, delete_member, grow and shrink reach Warren's
// endpoints with their arguments, print the outcome, and turn API errors into exit codes.
func TestQuorumMemberCommands(t *testing.T) {
	b := &quorumBroker{broker: newBroker()}
	srv := httptest.NewServer(mgmt.NewHandler(b, mgmt.Options{}))
	defer srv.Close()
	u := "-url=" + srv.URL
	tests := []struct {
		args []string
		code int
		out  string // part of stdout
		errs string // part of stderr
		call string
	}{
		{[]string{"add_member", "--vhost", "v1", "orders", "n2"}, 0, `Added a replica of quorum queue "orders" in vhost "v1" on node "n2"`, "", "add v1 orders n2"},
		{[]string{"add_member", "orders", "nx"}, 1, "", "node 'nx' is not a cluster member", "add / orders nx"},
		{[]string{"delete_member", "orders", "n1"}, 1, "", "last member", "delete / orders n1"},
		{[]string{"grow", "n3", "even", "--queue-pattern", "^q"}, 0, "/      q2    2     boom", "", "grow n3 even  ^q"},
		{[]string{"shrink", "n3"}, 0, "v      q3    1     ok", "", "shrink n3"},
		{[]string{"grow", "n3", "most"}, 64, "", "all or even", ""},
		{[]string{"add_member", "orders"}, 64, "", "a queue name and a node name", ""},
	}
	for _, tt := range tests {
		b.calls = nil
		code, out, errs := run(t, append([]string{u}, tt.args...)...)
		if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errs, tt.errs) {
			t.Errorf("%v: code %d, out %q, err %q", tt.args, code, out, errs)
		}
		if got := strings.Join(b.calls, ";"); got != tt.call {
			t.Errorf("%v: broker called %q, want %q", tt.args, got, tt.call)
		}
	}
}

func (q *quorumBroker) QuorumStatus(vhost, name string) (mgmt.QuorumStatus, error) {
	q.calls = append(q.calls, "status "+vhost+" "+name)
	if name != "orders" {
		return mgmt.QuorumStatus{}, mgmt.NotFound("no queue '%s' in vhost '%s'", name, vhost)
	}
	return mgmt.QuorumStatus{Node: "n1", Leader: "n1", Members: []string{"n1", "n2", "n3"}, Online: []string{"n1", "n2"},
		Voters: []string{"n1", "n2", "n3"}, Replicas: []mgmt.ReplicaStatus{
			{Node: "n1", Online: true, ReportedBy: "self", RaftState: "leader", Term: 4, Commit: 120, Applied: 120, LastIndex: 121, Snapshot: 64,
				HasProgress: true, Match: 121, Replication: "replicate", RecentActive: true},
			{Node: "n2", Online: true, ReportedBy: "leader", RaftState: "follower", HasProgress: true, Match: 119, Replication: "replicate", RecentActive: true},
			{Node: "n3", ReportedBy: "leader", HasProgress: true, Match: 80, Replication: "probe"},
		}}, nil
}

// TestQuorumStatusCommand: quorum_status prints the leader and one row per member with what
// the node asked knows (its own replica in full, the others' match index from the leader),
// --formatter json passes the API's answer through, and errors become exit codes.
func TestQuorumStatusCommand(t *testing.T) {
	b := &quorumBroker{broker: newBroker()}
	srv := httptest.NewServer(mgmt.NewHandler(b, mgmt.Options{}))
	defer srv.Close()
	u := "-url=" + srv.URL
	tests := []struct {
		args []string
		code int
		out  []string // lines (fields joined by one space) or parts of stdout
		errs string
	}{
		{[]string{"quorum_status", "orders"}, 0, []string{
			`Status of quorum queue "orders" in vhost "/" on node n1 (leader: n1)`,
			"n1 leader true 4 120 120 121 64 121 self",
			"n2 follower true 119 leader",
			"n3 false 80 leader",
		}, ""},
		{[]string{"quorum_status", "orders", "--formatter", "json"}, 0, []string{`"match_index": 80`, `"replication_state": "probe"`, `"voters": [`}, ""},
		{[]string{"quorum_status", "nosuch"}, 1, nil, "not found"},
		{[]string{"quorum_status"}, 64, nil, "exactly one queue name"},
	}
	for _, tt := range tests {
		code, out, errs := run(t, append([]string{u}, tt.args...)...)
		var norm []string
		for _, l := range strings.Split(out, "\n") {
			norm = append(norm, strings.Join(strings.Fields(l), " "))
		}
		joined := strings.Join(norm, "\n")
		if code != tt.code || !strings.Contains(errs, tt.errs) {
			t.Errorf("%v: code %d, err %q", tt.args, code, errs)
		}
		for _, want := range tt.out {
			if !strings.Contains(joined, want) && !strings.Contains(out, want) {
				t.Errorf("%v: output has no %q:\n%s", tt.args, want, out)
			}
		}
	}
}
