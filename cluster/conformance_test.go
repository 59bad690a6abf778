package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren/broker"
)

// conformanceSkip are the conformance tests a cluster does not pass (docs/cluster.md, Not
// done yet), by name: none now; the place to list one.
var conformanceSkip []string

// skipPattern is go test's -skip pattern for the tests named (an empty one skips nothing).
func skipPattern(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return "^(" + strings.Join(names, "|") + ")$"
}

// The conformance suite, unchanged, against node n2 of a three-node cluster whose queues are
// homed on n1 and n3: n2 declares with the balanced locator over the members n1 and n3, so
// every queue the suite uses (but the exclusive ones, which live on their connection's node,
// as in RabbitMQ) is reached through the data link: publishes forwarded, consumers, gets and
// acks proxied. Runs `go test` on ../conformance with -amqp-url, bounded to two minutes.
func TestConformanceAcrossNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the conformance suite (about a minute)")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to run the conformance suite with")
	}
	lc := startLinkedWith(t, 3, []string{"n1", "n3"}, []string{"", "balanced", ""})
	// What the suite's declares get: homes on n1 and n3, none on n2.
	_, ch := dial(t, lc.urls[1])
	homes := map[string]int{}
	for i := range 4 {
		name := fmt.Sprintf("home-check-%d", i)
		if _, err := ch.QueueDeclare(name, false, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		qs, err := lc.servers[1].Broker().VHost("/").Queue(broker.System, name)
		if err != nil {
			t.Fatal(err)
		}
		homes[qs.Home()]++
	}
	for i := range 4 {
		if _, err := ch.QueueDelete(fmt.Sprintf("home-check-%d", i), false, false, false); err != nil {
			t.Fatal(err)
		}
	}
	if homes["n1"] != 2 || homes["n3"] != 2 {
		t.Fatalf("homes of queues declared on n2: %v, want two on n1 and two on n3", homes)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	args := []string{"test", "-count=1", "."}
	if skip := skipPattern(conformanceSkip); skip != "" {
		args = append(args, "-skip", skip)
	}
	if testing.Verbose() {
		args = append(args, "-v")
	}
	args = append(args, "-args", "-amqp-url", lc.urls[1])
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = filepath.Join("..", "conformance")
	cmd.Env = append(os.Environ(), "AMQP_URL=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("conformance suite against n2 failed: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
