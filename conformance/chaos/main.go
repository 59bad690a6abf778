//go:build linux

// Command chaos runs a 3-node Warren cluster on loopback under random faults for -duration and
// checks that it kept its promises. It builds warren (or takes -warren), starts three nodes,
// each with its own data directory and ports, and routes every inter-node connection through a
// fault-injecting TCP proxy (cluster/faultproxy) per ordered pair of nodes. Meanwhile:
//
//   - publishers with confirms send persistent messages to durable queues, each on the queue's
//     home node (two queues per node by default), and consumers on the home node ack them;
//   - declarers on every node declare a new durable queue every -declare-interval;
//   - one fault at a time, every -fault-every: kill -9 of the Raft leader or of a follower
//     (restarted after a pause), a partition of the leader or of a follower (healed after a
//     pause, sometimes longer than cluster.node_timeout), or a follower killed and restarted
//     with an empty data directory as a joiner (cluster.join). With -queue-type quorum every
//     node is a voter of every queue's Raft group and the groups' leaders are spread over the
//     nodes by their elections (the checked queues and the hundreds the declarers make), so a
//     kill -9, partition or wipe of any node strikes the leaders of some groups and followers
//     of the others. (Which node leads a given group is not visible through the API, so the
//     faults are not aimed at one queue's leader.) After each, the tool waits until
//     the cluster has recovered (every node up, one leader, everyone caught up).
//
// At the end it heals everything, stops the publishers, lets the consumers drain, and checks:
//
//   - every node lists the same topology (exchanges, queues, bindings);
//   - every queue that got declare-ok exists on every node;
//   - every confirmed message to a durable queue was delivered (duplicates are counted, not
//     failures: delivery is at least once). With -queue-type classic, a queue's messages
//     confirmed before its home node was wiped are legitimately lost with the data directory:
//     they are left out of the check and counted as excluded (a quorum queue keeps them: with
//     -queue-type quorum nothing is excluded);
//   - order per publisher: every delivery not flagged redelivered of a queue carries a higher
//     sequence number than those before it (each queue has one publisher, one message in
//     flight at a time); a lower one is out of order, or, when it was delivered before, a
//     redelivery without the redelivered flag; flagged redeliveries are counted and exempt;
//   - no declare and no confirm went unanswered (a hang);
//   - no node reported a data race (with -race, warren is built with the race detector).
//
// It prints what it checked and exits 1 on a violation. Loopback only; bounded in time.
//
//	go run ./conformance/chaos -duration 60s
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

type options struct {
	duration        time.Duration
	repo, bin       string
	queueType       string
	queuesPerNode   int
	faultEvery      time.Duration
	nodeTimeout     time.Duration
	publishEvery    time.Duration
	declareEvery    time.Duration
	seed            uint64
	keep            bool
	faults          string
	recoveryTimeout time.Duration
	race            bool
}

// allFaults are the fault kinds, in -faults' spelling.
var allFaults = []string{"kill-leader", "kill-follower", "partition-leader", "partition-follower", "wipe-follower"}

func parseFlags(args []string, out io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.DurationVar(&o.duration, "duration", time.Minute, "how long faults are injected (set-up and the final checks come on top)")
	fs.StringVar(&o.repo, "repo", ".", "Warren repository root to build")
	fs.StringVar(&o.bin, "warren", "", "prebuilt Warren binary (default: go build of -repo)")
	fs.BoolVar(&o.race, "race", false, "build Warren with the race detector (a race reported by a node is a violation either way)")
	fs.StringVar(&o.queueType, "queue-type", "classic", "x-queue-type of the checked queues: classic, or quorum (messages replicated: a wiped node loses none)")
	fs.IntVar(&o.queuesPerNode, "queues", 2, "checked durable queues homed on each node (one publisher and one consumer each)")
	fs.DurationVar(&o.faultEvery, "fault-every", 8*time.Second, "mean time from one fault's recovery to the next fault")
	fs.DurationVar(&o.nodeTimeout, "node-timeout", 5*time.Second, "cluster.node_timeout of the nodes")
	fs.DurationVar(&o.publishEvery, "publish-interval", 20*time.Millisecond, "pause between two confirmed publishes of one publisher")
	fs.DurationVar(&o.declareEvery, "declare-interval", 250*time.Millisecond, "pause between two declares of one declarer (one per node)")
	fs.Uint64Var(&o.seed, "seed", 0, "random seed of the fault schedule (0: from the clock; printed)")
	fs.BoolVar(&o.keep, "keep", false, "keep the work directory (configs, data, node logs); kept anyway on a violation")
	fs.StringVar(&o.faults, "faults", strings.Join(allFaults, ","), "fault kinds to draw from")
	fs.DurationVar(&o.recoveryTimeout, "recovery-timeout", 60*time.Second, "how long the cluster may take to recover from one fault")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.queueType != "classic" && o.queueType != "quorum" {
		return o, fmt.Errorf("-queue-type %q: classic or quorum", o.queueType)
	}
	for _, f := range strings.Split(o.faults, ",") {
		if !slices.Contains(allFaults, f) {
			return o, fmt.Errorf("-faults: unknown fault %q (known: %s)", f, strings.Join(allFaults, ", "))
		}
	}
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}
	return o, nil
}

func main() {
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, o, os.Stdout))
}

// run is the whole tool; it returns the exit status.
func run(ctx context.Context, o options, out io.Writer) int {
	logf := func(format string, args ...any) {
		fmt.Fprintf(out, "chaos %s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
	}
	dir, err := os.MkdirTemp("", "warren-chaos-")
	if err != nil {
		logf("error: %v", err)
		return 2
	}
	bin := o.bin
	if bin == "" {
		bin = filepath.Join(dir, "warren")
		logf("building warren from %s", o.repo)
		build := []string{"build", "-o", bin}
		if o.race {
			build = append(build, "-race")
		}
		cmd := exec.CommandContext(ctx, "go", append(build, ".")...)
		cmd.Dir, cmd.Stdout, cmd.Stderr = o.repo, os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			logf("error: go build: %v", err)
			return 2
		}
	}
	f, err := newFleet(dir, bin, []string{"n1", "n2", "n3"}, o.nodeTimeout)
	if err != nil {
		logf("error: %v", err)
		return 2
	}
	status := 2
	defer func() {
		f.close()
		if status == 0 && !o.keep {
			_ = os.RemoveAll(dir)
		} else {
			logf("work directory kept: %s (node logs: <node>/warren.log)", dir)
		}
	}()
	status = chaos(ctx, o, f, logf)
	return status
}

// plan is the checked workload: queue -> home node.
type plan struct {
	homes map[string]string
	qargs amqp.Table
}

func chaos(ctx context.Context, o options, f *fleet, logf func(string, ...any)) int {
	rng := rand.New(rand.NewPCG(o.seed, o.seed>>1|1))
	logf("3 nodes, faults for %v, seed %d, queue type %s, cluster.node_timeout %v, faults %s", o.duration, o.seed, o.queueType, o.nodeTimeout, o.faults)
	var wg sync.WaitGroup
	errs := make(chan error, len(f.nodes))
	for _, n := range f.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- f.start(ctx, n, false)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			logf("error: %v", err)
			return 2
		}
	}
	if err := f.settle(ctx, o.recoveryTimeout); err != nil {
		logf("error: the cluster did not form: %v", err)
		return 2
	}
	p := plan{homes: map[string]string{}}
	if o.queueType != "classic" {
		p.qargs = amqp.Table{"x-queue-type": o.queueType}
	}
	setup, cancelSetup := context.WithTimeout(ctx, 30*time.Second)
	for _, n := range f.nodes {
		for i := range o.queuesPerNode {
			q := fmt.Sprintf("chaos-%s-%d", n.name, i)
			if err := declareQueue(setup, n.amqp, q, p.qargs); err != nil {
				cancelSetup()
				logf("error: %v", err)
				return 2
			}
			p.homes[q] = n.name
		}
	}
	cancelSetup()
	logf("cluster formed, leader %s; %d checked queues declared", f.leader(), len(p.homes))

	l := newLedger(slices.Collect(maps.Keys(p.homes)))
	pubCtx, stopPub := context.WithCancel(ctx)
	conCtx, stopCon := context.WithCancel(ctx)
	defer stopPub()
	defer stopCon()
	var pubs, cons sync.WaitGroup
	for q, home := range p.homes {
		addr := f.node(home).amqp
		pubs.Add(2)
		go func() { defer pubs.Done(); publisher(pubCtx, l, addr, q, o.publishEvery) }()
		go func() {
			defer pubs.Done()
			declarer(pubCtx, l, addr, "chaos-decl-"+q, o.declareEvery*time.Duration(o.queuesPerNode), p.qargs)
		}()
		cons.Add(1)
		go func() { defer cons.Done(); consumer(conCtx, l, addr, q, true) }()
	}

	// The fault schedule: one at a time, each followed by recovery.
	var violations []string
	excludedBelow := map[string]uint64{} // queue -> seqs at or below are not checked (home wiped)
	var recoveries []time.Duration       // leader kill -9 -> first declare-ok on a survivor
	kinds := strings.Split(o.faults, ",")
	end := time.Now().Add(o.duration)
	nFaults := map[string]int{}
	for ctx.Err() == nil {
		pause := o.faultEvery/2 + time.Duration(rng.Int64N(int64(o.faultEvery)))
		if time.Now().Add(pause).After(end) {
			sleepCtx(ctx, time.Until(end))
			break
		}
		sleepCtx(ctx, pause)
		kind := kinds[rng.IntN(len(kinds))]
		leader := f.leader()
		if leader == "" {
			violations = append(violations, "no leader known before a fault")
			break
		}
		victim := leader
		if strings.HasSuffix(kind, "follower") {
			var followers []string
			for _, n := range f.nodes {
				if n.name != leader {
					followers = append(followers, n.name)
				}
			}
			victim = followers[rng.IntN(len(followers))]
		}
		n := f.node(victim)
		down := time.Duration(1+rng.IntN(4)) * time.Second
		nFaults[kind]++
		switch kind {
		case "kill-leader", "kill-follower":
			n.kill()
			killed := time.Now()
			if kind == "kill-leader" {
				if d, ok := declaresResume(ctx, f, l, victim, p.qargs); ok {
					recoveries = append(recoveries, d)
					logf("%s: %s killed (-9); declares resumed on the survivors after %v", kind, victim, d.Round(time.Millisecond))
				} else {
					violations = append(violations, fmt.Sprintf("declares did not resume within 30 s after the leader %s was killed", victim))
				}
			}
			sleepCtx(ctx, down-time.Since(killed))
			if err := f.start(ctx, n, false); err != nil {
				violations = append(violations, fmt.Sprintf("restart of %s after kill -9: %v", victim, err))
			}
			if kind == "kill-follower" {
				logf("%s: %s killed (-9), restarted after %v", kind, victim, time.Since(killed).Round(time.Millisecond))
			}
		case "partition-leader", "partition-follower":
			if rng.IntN(3) == 0 {
				down = o.nodeTimeout + time.Second + time.Duration(rng.IntN(2000))*time.Millisecond // long enough for node_down
			}
			f.isolate(victim, true)
			sleepCtx(ctx, down)
			f.isolate(victim, false)
			logf("%s: %s cut off for %v, healed", kind, victim, down)
		case "wipe-follower":
			n.kill()
			for q, home := range p.homes {
				if home == victim && o.queueType == "classic" {
					// Everything published so far; the publisher cannot publish while the
					// node is down, so what it sends after the restart is checked.
					excludedBelow[q] = l.seq[q].Load()
				}
			}
			if err := os.RemoveAll(n.dataDir); err != nil {
				violations = append(violations, fmt.Sprintf("wipe of %s: %v", victim, err))
				break
			}
			sleepCtx(ctx, down)
			if err := f.start(ctx, n, true); err != nil {
				violations = append(violations, fmt.Sprintf("restart of the wiped %s (join): %v", victim, err))
			}
			logf("%s: %s killed, data directory wiped, restarted as a joiner after %v", kind, victim, down)
		}
		started := time.Now()
		if err := f.settle(ctx, o.recoveryTimeout); err != nil {
			violations = append(violations, fmt.Sprintf("after %s of %s: %v", kind, victim, err))
			break
		}
		logf("recovered in %v (leader %s)", time.Since(started).Round(time.Millisecond), f.leader())
	}
	if ctx.Err() != nil {
		logf("interrupted")
		return 2
	}
	// Heal whatever is left (a break above), and let the cluster settle.
	for _, n := range f.nodes {
		f.isolate(n.name, false)
		if !n.running() {
			if err := f.start(ctx, n, false); err != nil {
				violations = append(violations, fmt.Sprintf("final restart of %s: %v", n.name, err))
			}
		}
	}
	if err := f.settle(ctx, o.recoveryTimeout); err != nil {
		violations = append(violations, fmt.Sprintf("final recovery: %v", err))
	}
	stopPub()
	pubs.Wait()
	// The load's consumers stop (their sessions' deliveries count once each closes cleanly).
	stopCon()
	cons.Wait()
	// Consumers drain what was confirmed, in rounds of 2 s: a delivery counts only once its
	// session closed cleanly (ledger.settle), so each round ends with a close.
	drainEnd := time.Now().Add(30 * time.Second)
	for time.Now().Before(drainEnd) && len(l.lost(excludedBelow)) > 0 {
		roundCtx, endRound := context.WithTimeout(ctx, 2*time.Second)
		for q, home := range p.homes {
			addr := f.node(home).amqp
			cons.Add(1)
			go func() { defer cons.Done(); consumer(roundCtx, l, addr, q, false) }()
		}
		cons.Wait()
		endRound()
	}

	faultList := []string{}
	for _, k := range allFaults {
		if nFaults[k] > 0 {
			faultList = append(faultList, fmt.Sprintf("%s x%d", k, nFaults[k]))
		}
	}
	logf("faults injected: %s", strings.Join(faultList, ", "))
	if len(recoveries) > 0 {
		slices.Sort(recoveries)
		logf("metadata recovery after leader kill -9 (first declare-ok on a survivor): min %v, median %v, max %v over %d kills",
			recoveries[0].Round(time.Millisecond), recoveries[len(recoveries)/2].Round(time.Millisecond), recoveries[len(recoveries)-1].Round(time.Millisecond), len(recoveries))
	}
	violations = append(violations, check(f, l, p, excludedBelow, logf)...)
	if len(violations) > 0 {
		logf("FAIL: %d violation(s):", len(violations))
		for _, v := range violations {
			logf("  %s", v)
		}
		for _, n := range f.nodes {
			logf("last lines of %s's log:\n%s", n.name, tail(n.logPath, 15))
		}
		return 1
	}
	logf("PASS")
	return 0
}

// declaresResume declares a new queue on a survivor of the killed leader until one succeeds and
// returns how long after the kill that was.
func declaresResume(ctx context.Context, f *fleet, l *ledger, killed string, qargs amqp.Table) (time.Duration, bool) {
	start := time.Now()
	var survivor *node
	for _, n := range f.nodes {
		if n.name != killed {
			survivor = n
			break
		}
	}
	for i := 0; time.Since(start) < 30*time.Second && ctx.Err() == nil; i++ {
		name := fmt.Sprintf("chaos-probe-%d-%d", start.UnixNano(), i)
		conn, err := dial(survivor.amqp)
		if err == nil {
			var ch *amqp.Channel
			if ch, err = conn.Channel(); err == nil {
				_, err = ch.QueueDeclare(name, true, false, false, false, qargs)
			}
			conn.Close()
		}
		if err == nil {
			l.mu.Lock()
			l.declared = append(l.declared, name)
			l.mu.Unlock()
			return time.Since(start), true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, false
}

// lost lists the confirmed messages not received, leaving out those below excludedBelow and
// those in doubt (see ledger.inDoubt).
func (l *ledger) lost(excludedBelow map[string]uint64) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for q, seqs := range l.confirmed {
		for s := range seqs {
			if s <= excludedBelow[q] {
				continue
			}
			if l.received[q][s] == 0 && !l.inDoubt[q][s] {
				out = append(out, fmt.Sprintf("%s #%d", q, s))
			}
		}
	}
	slices.Sort(out)
	return out
}

// check runs the final checks and returns the violations.
func check(f *fleet, l *ledger, p plan, excludedBelow map[string]uint64, logf func(string, ...any)) []string {
	var violations []string
	// 1. Every node the same topology (a follower applies a moment after the leader).
	var tops map[string]string
	var names map[string]map[string]bool
	deadline := time.Now().Add(30 * time.Second)
	same := false
	for !same && time.Now().Before(deadline) {
		tops, names = map[string]string{}, map[string]map[string]bool{}
		var err error
		for _, n := range f.nodes {
			if tops[n.name], names[n.name], err = n.topology(); err != nil {
				break
			}
		}
		same = err == nil && tops["n1"] == tops["n2"] && tops["n2"] == tops["n3"]
		if !same {
			time.Sleep(500 * time.Millisecond)
		}
	}
	lines := strings.Count(tops["n1"], "\n") + 1
	if same {
		logf("checked: every node lists the same topology (%d exchanges, queues and bindings): ok", lines)
	} else {
		violations = append(violations, "the nodes' topologies differ after 30 s")
		for _, n := range f.nodes {
			logf("topology of %s: %d lines", n.name, strings.Count(tops[n.name], "\n")+1)
		}
	}
	// 2. Every declare-ok is there, on every node.
	l.mu.Lock()
	declared := slices.Clone(l.declared)
	declareErrs := fmt.Sprint(l.declareErrs)
	hung := slices.Clone(l.hung)
	nacked, unknown := l.nacked, l.unknown
	l.mu.Unlock()
	for q := range p.homes {
		declared = append(declared, q)
	}
	missing := 0
	for _, n := range f.nodes {
		for _, q := range declared {
			if !names[n.name][q] {
				missing++
				if missing <= 10 {
					violations = append(violations, fmt.Sprintf("queue %s got declare-ok but %s does not list it", q, n.name))
				}
			}
		}
	}
	logf("checked: %d queues that got declare-ok exist on all 3 nodes: %d missing (declare errors by reply code: %s)", len(declared), missing, declareErrs)
	// 3. Every confirmed message delivered.
	l.mu.Lock()
	confirmed, delivered, excluded, dups, inDoubt := 0, 0, 0, 0, 0
	for q, seqs := range l.confirmed {
		for s := range seqs {
			if s <= excludedBelow[q] {
				excluded++
				continue
			}
			confirmed++
			switch {
			case l.received[q][s] > 0:
				delivered++
			case l.inDoubt[q][s]:
				inDoubt++
			}
		}
	}
	for _, seqs := range l.received {
		for _, c := range seqs {
			dups += max(c-1, 0)
		}
	}
	l.mu.Unlock()
	lost := l.lost(excludedBelow)
	logf("checked: %d confirmed persistent messages to durable queues on surviving homes: %d delivered, %d lost; %d in doubt (acked just before the consumer's connection died, at most %d per session, not delivered again); %d redelivered duplicates; %d excluded (home wiped, %s queues); %d nacked, %d unconfirmed when a connection died",
		confirmed, delivered, len(lost), inDoubt, settleEvery, dups, excluded, p.queueTypeName(), nacked, unknown)
	for i, m := range lost {
		if i == 10 {
			violations = append(violations, fmt.Sprintf("... and %d more lost", len(lost)-10))
			break
		}
		violations = append(violations, "confirmed message lost: "+m)
	}
	if confirmed == 0 {
		violations = append(violations, "no message was confirmed: the load did not run")
	}
	// 3b. Order per publisher: first deliveries (not flagged redelivered) in publish order.
	l.mu.Lock()
	outOfOrder, unflagged, samples, redelivered := l.outOfOrder, l.unflagged, slices.Clone(l.orderSamples), l.redelivered
	l.mu.Unlock()
	logf("checked: order per publisher holds except for redeliveries: %d first deliveries out of order, %d redeliveries without the redelivered flag (%d deliveries flagged redelivered, exempt)",
		outOfOrder, unflagged, redelivered)
	for _, s := range samples {
		violations = append(violations, "order: "+s)
	}
	if n := outOfOrder + unflagged; n > len(samples) {
		violations = append(violations, fmt.Sprintf("... and %d more order violations", n-len(samples)))
	}
	// 4. No node reported a data race (a warren built with -race).
	races := 0
	for _, n := range f.nodes {
		if data, err := os.ReadFile(n.logPath); err == nil {
			if c := strings.Count(string(data), "WARNING: DATA RACE"); c > 0 {
				races += c
				violations = append(violations, fmt.Sprintf("%s reported %d data race(s), see its log", n.name, c))
			}
		}
	}
	logf("checked: no data race reported by a node: %d", races)
	// 5. Nothing hung.
	logf("checked: no declare or confirm left unanswered: %d hung", len(hung))
	for _, h := range hung {
		violations = append(violations, "no answer: "+h)
	}
	return violations
}

func (p plan) queueTypeName() string {
	if t, ok := p.qargs["x-queue-type"].(string); ok {
		return t
	}
	return "classic"
}
