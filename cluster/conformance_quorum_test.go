package cluster

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// quorumKnownBugs are conformance tests that fail with quorum queues in a cluster because of
// Warren bugs, not RabbitMQ differences (each passes against RabbitMQ 3.10.8 quorum queues, or
// fails there differently). Listed, not hidden: each comment says what it needs; remove a
// name when its bug is fixed. Everything else of the suite must pass.
var quorumKnownBugs = []string{}

// runQuorumConformance runs the conformance suite with -queue-type quorum (every queue
// declared through its harness is a durable quorum queue where RabbitMQ allows one) against
// url, bounded to two minutes.
func runQuorumConformance(t *testing.T, url string) {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to run the conformance suite with")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	skip := skipPattern(append(append([]string(nil), conformanceSkip...), quorumKnownBugs...))
	args := []string{"test", "-count=1", ".", "-skip", skip}
	if testing.Verbose() {
		args = append(args, "-v")
	}
	args = append(args, "-args", "-amqp-url", url, "-queue-type", "quorum")
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = filepath.Join("..", "conformance")
	cmd.Env = append(os.Environ(), "AMQP_URL=")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("conformance suite with quorum queues failed after %s: %v\n%s", time.Since(start).Round(time.Second), err, out)
	}
	t.Logf("%s", out)
}

// The conformance suite with quorum queues on a cluster of one node: each quorum queue is a
// real Raft group (of one), not the classic durable queue of a node without a cluster section.
func TestConformanceQuorumOneNode(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the conformance suite (about a minute)")
	}
	nodes := startRaftCluster(t, "n1")
	runQuorumConformance(t, nodes["n1"].url)
}

// The conformance suite with quorum queues against node n2 of a three-node cluster: every
// quorum queue is a Raft group of three, whose leader may be any node.
func TestConformanceQuorumThreeNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the conformance suite (about a minute)")
	}
	nodes := startRaftCluster(t, "n1", "n2", "n3")
	runQuorumConformance(t, nodes["n2"].url)
}
