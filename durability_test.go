package main

// Broker-level durability and crash tests: the test binary re-execs itself as the warren
// broker (asMainEnv, see TestMain), clients talk to it over real sockets with amqp091-go,
// and the tests kill it with SIGKILL or stop it with SIGTERM and restart it on the same
// data directory. Sizes are small enough for CI (a few thousand messages per test).
//
// The random kill moment is derived from a seed that every test logs; set DURABILITY_SEED
// to replay a failing run. (Not WARREN_*: those are configuration overrides.)

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

const (
	// startTimeout bounds a broker start-up, including recovery of a few thousand messages.
	startTimeout = 15 * time.Second
	// exitTimeout bounds the wait for a signalled broker to exit.
	exitTimeout = 10 * time.Second
	// opTimeout bounds waits for deliveries and confirms in the tests.
	opTimeout = 10 * time.Second
	// childWindow is the child broker's queue.max_ram_messages: far below the tests' queue
	// depths, so crashes and restarts hit queues that page to disk.
	childWindow = 64
)

// crashSeed returns the seed for a test's random choices and logs it so a failure can be
// replayed with DURABILITY_SEED.
func crashSeed(t *testing.T) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("DURABILITY_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("DURABILITY_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (replay with DURABILITY_SEED=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// readyWriter receives a child broker's stderr: it keeps every line for failure messages
// and reports the address of the "warren ready" line once.
type readyWriter struct {
	log     *lockedBuffer
	mu      sync.Mutex
	partial []byte
	ready   chan string // buffered, receives one address
	sent    bool
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := strings.IndexByte(string(w.partial), '\n')
		if i < 0 {
			break
		}
		line := string(w.partial[:i])
		w.partial = w.partial[i+1:]
		w.log.add(line)
		if m := readyAddr.FindStringSubmatch(line); m != nil && !w.sent {
			w.sent = true
			w.ready <- m[1]
		}
	}
	return len(p), nil
}

// childBroker is one warren process on a data directory.
type childBroker struct {
	t       *testing.T
	dataDir string
	cmd     *exec.Cmd
	log     *lockedBuffer
	out     *readyWriter
	addr    string
	done    chan struct{} // closed once the process has exited and its output is read
	waitErr error         // cmd.Wait's result, valid after done
}

// spawnBroker starts warren on dataDir without waiting for it to be ready. The process is
// killed at test end if it is still running, and its log is printed if the test failed.
func spawnBroker(t *testing.T, dataDir string) *childBroker {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-listen", "127.0.0.1:0", "-data-dir", dataDir)
	cmd.Dir = t.TempDir() // no config.yaml here: defaults + flags only
	// Under -race the child would sleep a second at exit (atexit_sleep_ms defaults to 1000).
	env := []string{
		asMainEnv + "=1", "GORACE=" + strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"),
		envPrefix + "QUEUE_MAX_RAM_MESSAGES=" + strconv.Itoa(childWindow),
	}
	env = append(env, httpOff...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) && !strings.HasPrefix(kv, "GORACE=") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	b := &childBroker{t: t, dataDir: dataDir, cmd: cmd, log: &lockedBuffer{}, done: make(chan struct{})}
	b.out = &readyWriter{log: b.log, ready: make(chan string, 1)}
	cmd.Stderr = b.out
	cmd.Stdout = b.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start broker: %v", err)
	}
	go func() {
		b.waitErr = cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		select {
		case <-b.done:
		default:
			_ = cmd.Process.Kill()
			<-b.done
		}
		// A -race build of the broker reports races on its stderr, which is all read by now.
		if strings.Contains(b.log.String(), "WARNING: DATA RACE") {
			t.Errorf("the broker (pid %d) reported a data race", cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("broker pid %d log:\n%s", cmd.Process.Pid, b.log.String())
		}
	})
	return b
}

// startBroker starts warren on dataDir and waits for its ready line.
func startBroker(t *testing.T, dataDir string) *childBroker {
	t.Helper()
	b := spawnBroker(t, dataDir)
	select {
	case b.addr = <-b.out.ready:
	case <-b.done:
		t.Fatalf("broker exited before ready (%v):\n%s", b.waitErr, b.log.String())
	case <-time.After(startTimeout):
		t.Fatalf("broker not ready within %v:\n%s", startTimeout, b.log.String())
	}
	return b
}

// waitExit waits for the process to end and returns cmd.Wait's error.
func (b *childBroker) waitExit() error {
	b.t.Helper()
	select {
	case <-b.done:
		return b.waitErr
	case <-time.After(exitTimeout):
		b.t.Fatalf("broker still running %v later:\n%s", exitTimeout, b.log.String())
		return nil
	}
}

// kill sends SIGKILL and waits for the process to die.
func (b *childBroker) kill() {
	b.t.Helper()
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		b.t.Fatalf("SIGKILL: %v", err)
	}
	err := b.waitExit()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		b.t.Fatalf("broker did not die of SIGKILL: %v\n%s", err, b.log.String())
	}
}

// stop sends SIGTERM and requires a clean exit (status 0).
func (b *childBroker) stop() {
	b.t.Helper()
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		b.t.Fatalf("SIGTERM: %v", err)
	}
	if err := b.waitExit(); err != nil {
		b.t.Fatalf("exit after SIGTERM: %v\n%s", err, b.log.String())
	}
}

// dial opens a client connection that is closed at test end.
func (b *childBroker) dial() *amqp091.Connection {
	b.t.Helper()
	c, err := amqp091.Dial("amqp://guest:guest@" + b.addr + "/")
	if err != nil {
		b.t.Fatalf("dial %s: %v", b.addr, err)
	}
	b.t.Cleanup(func() { _ = c.Close() })
	return c
}

// channel opens a channel on a new connection.
func (b *childBroker) channel() *amqp091.Channel {
	b.t.Helper()
	ch, err := b.dial().Channel()
	if err != nil {
		b.t.Fatalf("channel: %v", err)
	}
	return ch
}

// drained is one message read back after a restart.
type drained struct {
	body        string
	redelivered bool
}

// drain consumes every message in queue (it must exist) and returns them in delivery
// order. It takes exactly the count that a passive declare reports, then checks that
// nothing else arrives and the queue reads empty.
func (b *childBroker) drain(queue string) []drained {
	b.t.Helper()
	t := b.t
	ch := b.channel()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("passive declare %q after restart: %v", queue, err)
	}
	if err := ch.Qos(500, 0, false); err != nil {
		t.Fatal(err)
	}
	msgs, err := ch.Consume(queue, "drain", false, false, false, false, nil)
	if err != nil {
		t.Fatalf("consume %q: %v", queue, err)
	}
	out := make([]drained, 0, q.Messages)
	deadline := time.After(opTimeout)
	for len(out) < q.Messages {
		select {
		case d, ok := <-msgs:
			if !ok {
				t.Fatalf("consumer closed after %d of %d messages", len(out), q.Messages)
			}
			out = append(out, drained{body: string(d.Body), redelivered: d.Redelivered})
			if len(out)%100 == 0 || len(out) == q.Messages {
				if err := d.Ack(true); err != nil {
					t.Fatal(err)
				}
			}
		case <-deadline:
			t.Fatalf("drained %d of %d messages within %v", len(out), q.Messages, opTimeout)
		}
	}
	// Nothing beyond the reported count: the queue must now read empty.
	if err := ch.Cancel("drain", false); err != nil {
		t.Fatal(err)
	}
	for d := range msgs {
		t.Errorf("message beyond the declared count %d: %q", q.Messages, d.Body)
	}
	if q2, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil); err != nil || q2.Messages != 0 {
		t.Errorf("after draining: %+v, %v; want 0 messages", q2, err)
	}
	return out
}

// checkEmptyAfterRestart stops b cleanly after a drain, restarts it on the same data
// directory and requires the queues to be empty: acks of recovered messages are durable
// too. It returns the new broker.
func (b *childBroker) checkEmptyAfterRestart(queues ...string) *childBroker {
	b.t.Helper()
	b.stop()
	nb := startBroker(b.t, b.dataDir)
	ch := nb.channel()
	for _, queue := range queues {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil || q.Messages != 0 {
			b.t.Fatalf("%q after drain, ack and a clean restart: %+v, %v; want 0 messages", queue, q, err)
		}
	}
	return nb
}

// persistent is a delivery-mode 2 message.
func persistent(body string) amqp091.Publishing {
	return amqp091.Publishing{DeliveryMode: amqp091.Persistent, Body: []byte(body)}
}

// declareDurable declares a plain durable queue.
func declareDurable(t *testing.T, ch *amqp091.Channel, name string) {
	t.Helper()
	if _, err := ch.QueueDeclare(name, true, false, false, false, nil); err != nil {
		t.Fatalf("declare %q: %v", name, err)
	}
}

// publishConfirmed publishes bodies persistently to queue and waits until all are confirmed.
func publishConfirmed(t *testing.T, ch *amqp091.Channel, queue string, bodies []string) {
	t.Helper()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	dcs := make([]*amqp091.DeferredConfirmation, 0, len(bodies))
	for _, body := range bodies {
		dc, err := ch.PublishWithDeferredConfirm("", queue, false, false, persistent(body))
		if err != nil {
			t.Fatalf("publish %q: %v", body, err)
		}
		dcs = append(dcs, dc)
	}
	for i, dc := range dcs {
		select {
		case <-dc.Done():
			if !dc.Acked() {
				t.Fatalf("publish %q nacked", bodies[i])
			}
		case <-time.After(opTimeout):
			t.Fatalf("publish %q not confirmed within %v", bodies[i], opTimeout)
		}
	}
}

// killTrigger fires once when a counter reaches a threshold.
type killTrigger struct {
	at    int64
	n     atomic.Int64
	once  sync.Once
	fired chan struct{}
}

func newKillTrigger(at int) *killTrigger {
	return &killTrigger{at: int64(at), fired: make(chan struct{})}
}

func (k *killTrigger) add(n int) {
	if k.n.Add(int64(n)) >= k.at {
		k.once.Do(func() { close(k.fired) })
	}
}

// killWhen kills b once trigger fires and then parked is closed (or, should the load
// finish first, right away), then waits for the load goroutines. A client closes parked
// after leaving a transaction open on purpose, so that the crash always catches one.
func killWhen(t *testing.T, b *childBroker, trigger *killTrigger, parked <-chan struct{}, load *sync.WaitGroup) {
	t.Helper()
	finished := make(chan struct{})
	go func() { load.Wait(); close(finished) }()
	// On failure the clients must be gone before the test ends: they may still log.
	fail := func(format string, args ...any) {
		t.Helper()
		_ = b.cmd.Process.Kill()
		select {
		case <-finished:
		case <-time.After(opTimeout):
		}
		t.Fatalf(format, args...)
	}
	select {
	case <-trigger.fired:
		select {
		case <-parked:
		case <-finished:
		case <-time.After(opTimeout):
			fail("no client parked within %v of the kill threshold", opTimeout)
		}
	case <-finished:
		t.Logf("load finished before the kill threshold %d", trigger.at)
	case <-time.After(opTimeout):
		fail("kill threshold %d not reached within %v (at %d)", trigger.at, opTimeout, trigger.n.Load())
	}
	b.kill()
	select {
	case <-finished:
	case <-time.After(opTimeout):
		t.Fatalf("clients still running %v after the kill", opTimeout)
	}
}

// closedChan is a parked channel for tests that do not park a client.
func closedChan() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// hasFired reports whether the trigger has fired.
func (k *killTrigger) hasFired() bool {
	select {
	case <-k.fired:
		return true
	default:
		return false
	}
}

// park leaves ch's open transaction as it is: a synchronous round trip proves the broker
// has read everything sent before it, then parked is closed and park waits for the kill.
func park(ch *amqp091.Channel, queue string, parked chan struct{}) {
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	_, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	close(parked)
	if err == nil {
		<-closed
	}
}

// parseIDs splits a body "<prefix><a>-<b>[-<c>]" into its numbers.
func parseIDs(t *testing.T, body, prefix string) []int {
	t.Helper()
	rest, ok := strings.CutPrefix(body, prefix)
	if !ok {
		t.Fatalf("unexpected body %q", body)
	}
	var ids []int
	for _, f := range strings.Split(rest, "-") {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("unexpected body %q", body)
		}
		ids = append(ids, n)
	}
	return ids
}

// checkUnique fails for every body drained more than once: a message is stored once (each
// body was published once), so one drain can never see it twice, redelivered or not.
func checkUnique(t *testing.T, got []drained) map[string]drained {
	t.Helper()
	seen := make(map[string]drained, len(got))
	for _, d := range got {
		if _, dup := seen[d.body]; dup {
			t.Errorf("message %q drained twice", d.body)
		}
		seen[d.body] = d
	}
	return seen
}

// TestCrashKill9Confirms: several confirming publishers send persistent messages to a
// durable fanout exchange bound to two durable queues; SIGKILL at a random moment, restart,
// and again (the second crash hits a recovered store). Afterwards every confirmed message
// is in both queues exactly once; an unconfirmed one is in both or in neither (a publish
// is atomic); nothing is there that was not published; each publisher's order holds.
func TestCrashKill9Confirms(t *testing.T) {
	rng := crashSeed(t)
	const rounds, publishers, perPublisher, window = 2, 4, 400, 32
	queues := []string{"crash.confirms.a", "crash.confirms.b"}

	dataDir := filepath.Join(t.TempDir(), "data")
	b := startBroker(t, dataDir)
	setup := b.channel()
	if err := setup.ExchangeDeclare("crash.fan", "fanout", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, q := range queues {
		declareDurable(t, setup, q)
		if err := setup.QueueBind(q, "", "crash.fan", false, nil); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	attempted := map[string]bool{}
	confirmed := map[string]bool{}
	for round := 0; round < rounds; round++ {
		if round > 0 {
			b = startBroker(t, dataDir)
		}
		killAt := 50 + rng.IntN(publishers*perPublisher/2)
		t.Logf("round %d: kill after %d confirms", round, killAt)
		trigger := newKillTrigger(killAt)
		var load sync.WaitGroup
		for p := 0; p < publishers; p++ {
			ch := b.channel()
			if err := ch.Confirm(false); err != nil {
				t.Fatal(err)
			}
			load.Add(1)
			go func() {
				defer load.Done()
				type pending struct {
					body string
					dc   *amqp091.DeferredConfirmation
				}
				var inflight []pending
				settle := func(pd pending) bool {
					select {
					case <-pd.dc.Done():
					case <-time.After(opTimeout):
						t.Errorf("publisher %d: no confirm or close for %q within %v", p, pd.body, opTimeout)
						return false
					}
					if pd.dc.Acked() {
						mu.Lock()
						confirmed[pd.body] = true
						mu.Unlock()
						trigger.add(1)
					}
					return true
				}
				for i := 0; i < perPublisher; i++ {
					body := fmt.Sprintf("c%d-%d-%d", p, round, i)
					mu.Lock()
					attempted[body] = true
					mu.Unlock()
					dc, err := ch.PublishWithDeferredConfirm("crash.fan", "", false, false, persistent(body))
					if err != nil {
						break // the broker is gone
					}
					inflight = append(inflight, pending{body, dc})
					if len(inflight) >= window {
						if !settle(inflight[0]) {
							return
						}
						inflight = inflight[1:]
					}
				}
				for _, pd := range inflight {
					if !settle(pd) {
						return
					}
				}
			}()
		}
		killWhen(t, b, trigger, closedChan(), &load)
	}

	b = startBroker(t, dataDir)
	var seen []map[string]drained
	for _, q := range queues {
		got := b.drain(q)
		seen = append(seen, checkUnique(t, got))
		last := make([][2]int, publishers)
		for i := range last {
			last[i] = [2]int{-1, -1}
		}
		for _, d := range got {
			if !attempted[d.body] {
				t.Errorf("%s: drained %q, which was never published", q, d.body)
				continue
			}
			if !d.redelivered {
				t.Errorf("%s: %q redelivered=false, but every message stored before a kill -9 may have been delivered", q, d.body)
			}
			ids := parseIDs(t, d.body, "c")
			pos := [2]int{ids[1], ids[2]}
			if prev := last[ids[0]]; pos[0] < prev[0] || pos[0] == prev[0] && pos[1] <= prev[1] {
				t.Errorf("%s: publisher %d: %q drained after c%d-%d-%d (publish order lost)", q, ids[0], d.body, ids[0], prev[0], prev[1])
			}
			last[ids[0]] = pos
		}
	}
	b.checkEmptyAfterRestart(queues...)
	missing, split, survived := 0, 0, 0
	for body := range attempted {
		_, inA := seen[0][body]
		_, inB := seen[1][body]
		switch {
		case inA != inB:
			split++
			if split <= 10 {
				t.Errorf("%q is in %s=%v but %s=%v: a publish must be all or nothing", body, queues[0], inA, queues[1], inB)
			}
		case confirmed[body] && !inA:
			missing++
			if missing <= 10 {
				t.Errorf("confirmed message %q missing after restart", body)
			}
		case !confirmed[body] && inA:
			survived++
		}
	}
	if missing+split > 0 {
		t.Errorf("%d confirmed messages missing, %d in only one queue", missing, split)
	}
	t.Logf("published %d, confirmed %d, recovered %d per queue (%d unconfirmed survived)",
		len(attempted), len(confirmed), len(seen[0]), survived)
}

// txState is how far a client got with one transaction before the crash.
type txState int

const (
	txOpen      txState = iota // publishes or acks sent, tx.commit not sent: must be absent
	txCommitted                // tx.commit sent, no reply: all or nothing
	txConfirmed                // tx.commit-ok received: must be all there
)

// TestCrashKill9Transactions: publishers in tx mode commit batches of K persistent
// messages; SIGKILL at a random moment. After the restart every transaction is all there
// or all absent: all there when its commit-ok arrived, all absent when tx.commit was never
// sent.
func TestCrashKill9Transactions(t *testing.T) {
	rng := crashSeed(t)
	const publishers, txPerPublisher, K = 3, 200, 5
	killAt := 10 + rng.IntN(publishers*txPerPublisher/2)
	t.Logf("kill after %d committed transactions", killAt)

	dataDir := filepath.Join(t.TempDir(), "data")
	b := startBroker(t, dataDir)
	declareDurable(t, b.channel(), "crash.tx")

	var mu sync.Mutex
	states := map[[2]int]txState{}
	trigger := newKillTrigger(killAt)
	var load sync.WaitGroup
	// Publisher 0 publishes only parkAfter messages of its first transaction after the
	// threshold and leaves it uncommitted.
	parkAfter := 1 + rng.IntN(K-1)
	parked := make(chan struct{})
	for p := 0; p < publishers; p++ {
		ch := b.channel()
		if err := ch.Tx(); err != nil {
			t.Fatal(err)
		}
		load.Add(1)
		go func() {
			defer load.Done()
			set := func(tx int, s txState) {
				mu.Lock()
				states[[2]int{p, tx}] = s
				mu.Unlock()
			}
			for tx := 0; tx < txPerPublisher; tx++ {
				set(tx, txOpen)
				if p == 0 && trigger.hasFired() {
					for i := 0; i < parkAfter; i++ {
						if err := ch.Publish("", "crash.tx", false, false, persistent(fmt.Sprintf("t%d-%d-%d", p, tx, i))); err != nil {
							return
						}
					}
					park(ch, "crash.tx", parked)
					return
				}
				for i := 0; i < K; i++ {
					if err := ch.Publish("", "crash.tx", false, false, persistent(fmt.Sprintf("t%d-%d-%d", p, tx, i))); err != nil {
						return
					}
				}
				set(tx, txCommitted)
				if err := ch.TxCommit(); err != nil {
					return
				}
				set(tx, txConfirmed)
				trigger.add(1)
			}
		}()
	}
	killWhen(t, b, trigger, parked, &load)

	b = startBroker(t, dataDir)
	got := b.drain("crash.tx")
	b.checkEmptyAfterRestart("crash.tx")
	checkUnique(t, got)
	perTx := map[[2]int]int{}
	lastTx := make([]int, publishers)
	for i := range lastTx {
		lastTx[i] = -1
	}
	for _, d := range got {
		if !d.redelivered {
			t.Errorf("%q redelivered=false, but every message stored before a kill -9 may have been delivered", d.body)
		}
		ids := parseIDs(t, d.body, "t")
		key := [2]int{ids[0], ids[1]}
		if _, ok := states[key]; !ok {
			t.Errorf("drained %q of a transaction never started", d.body)
		}
		perTx[key]++
		if ids[1] < lastTx[ids[0]] {
			t.Errorf("publisher %d: %q after transaction %d (order lost)", ids[0], d.body, lastTx[ids[0]])
		}
		lastTx[ids[0]] = ids[1]
	}
	counts := map[txState]int{}
	for key, s := range states {
		counts[s]++
		n := perTx[key]
		switch {
		case s == txConfirmed && n != K:
			t.Errorf("committed transaction %v: %d of %d messages after restart", key, n, K)
		case s == txOpen && n != 0:
			t.Errorf("transaction %v never committed, yet %d of its messages survived", key, n)
		case n != 0 && n != K:
			t.Errorf("transaction %v (commit in flight): %d of %d messages, want all or nothing", key, n, K)
		}
	}
	t.Logf("transactions: %d confirmed, %d commit in flight, %d open; recovered %d messages",
		counts[txConfirmed], counts[txCommitted], counts[txOpen], len(got))
}

// TestCrashKill9Acks: consumers ack in transactions while the broker is killed at a random
// moment. Acks whose tx.commit-ok arrived never come back; every message not acked in a
// committed transaction does; a transaction whose commit was in flight is all or nothing.
func TestCrashKill9Acks(t *testing.T) {
	rng := crashSeed(t)
	const total, consumers, prefetch, K = 1500, 3, 20, 5
	killAt := 50 + rng.IntN(total/2)
	t.Logf("kill after %d committed acks", killAt)

	dataDir := filepath.Join(t.TempDir(), "data")
	b := startBroker(t, dataDir)
	setup := b.channel()
	declareDurable(t, setup, "crash.acks")
	bodies := make([]string, total)
	for i := range bodies {
		bodies[i] = fmt.Sprintf("a%d-0", i)
	}
	publishConfirmed(t, setup, "crash.acks", bodies)

	var mu sync.Mutex
	ackState := map[string]txState{} // body -> state of the transaction that acked it
	ackTx := map[string][2]int{}     // body -> (consumer, tx) that acked it
	received := map[string]bool{}    // delivered to a client before the crash
	trigger := newKillTrigger(killAt)
	var load sync.WaitGroup
	// Consumer 0 acks only parkAfter messages of its first batch after the threshold and
	// leaves that transaction open.
	parkAfter := 1 + rng.IntN(K-1)
	parked := make(chan struct{})
	for c := 0; c < consumers; c++ {
		ch := b.channel()
		if err := ch.Qos(prefetch, 0, false); err != nil {
			t.Fatal(err)
		}
		if err := ch.Tx(); err != nil {
			t.Fatal(err)
		}
		msgs, err := ch.Consume("crash.acks", "", false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		load.Add(1)
		go func() {
			defer load.Done()
			var batch []amqp091.Delivery
			for tx := 0; ; tx++ {
				for len(batch) < K {
					d, ok := <-msgs
					if !ok {
						return // the broker is gone
					}
					mu.Lock()
					received[string(d.Body)] = true
					mu.Unlock()
					batch = append(batch, d)
				}
				set := func(s txState) {
					mu.Lock()
					for _, d := range batch {
						ackState[string(d.Body)] = s
						ackTx[string(d.Body)] = [2]int{c, tx}
					}
					mu.Unlock()
				}
				if c == 0 && trigger.hasFired() {
					// Ack part of the batch and leave the transaction open.
					batch = batch[:parkAfter]
					set(txOpen)
					for _, d := range batch {
						if err := d.Ack(false); err != nil {
							return
						}
					}
					park(ch, "crash.acks", parked)
					return
				}
				set(txOpen)
				for _, d := range batch {
					if err := d.Ack(false); err != nil {
						return
					}
				}
				set(txCommitted)
				if err := ch.TxCommit(); err != nil {
					return
				}
				set(txConfirmed)
				trigger.add(len(batch))
				batch = batch[:0]
			}
		}()
	}
	killWhen(t, b, trigger, parked, &load)

	b = startBroker(t, dataDir)
	got := b.drain("crash.acks")
	b.checkEmptyAfterRestart("crash.acks")
	seen := checkUnique(t, got)
	redelivered := 0
	for _, d := range got {
		if d.redelivered {
			redelivered++
		}
		if s, ok := ackState[d.body]; ok && s == txConfirmed {
			t.Errorf("%q came back although its ack was committed", d.body)
		}
	}
	inFlight := map[[2]int][2]int{} // tx -> (present, absent)
	for _, body := range bodies {
		_, present := seen[body]
		s, acked := ackState[body]
		switch {
		case !acked || s == txOpen:
			if !present {
				t.Errorf("%q missing after restart, but its ack was never committed", body)
			}
		case s == txCommitted:
			pa := inFlight[ackTx[body]]
			if present {
				pa[0]++
			} else {
				pa[1]++
			}
			inFlight[ackTx[body]] = pa
		}
	}
	for tx, pa := range inFlight {
		if pa[0] != 0 && pa[1] != 0 {
			t.Errorf("ack transaction %v (commit in flight): %d messages back, %d gone; want all or nothing", tx, pa[0], pa[1])
		}
	}
	committed, open := 0, 0
	for _, s := range ackState {
		switch s {
		case txConfirmed:
			committed++
		case txOpen:
			open++
		}
	}
	t.Logf("%d acks committed, %d in flight, %d uncommitted; %d delivered before the crash, %d recovered (%d redelivered)",
		committed, len(ackState)-committed-open, open, len(received), len(got), redelivered)
	// A kill -9 can lose the delivery marks of the last deliveries (written after them, without
	// waiting), so every message stored before it comes back flagged.
	if redelivered != len(got) {
		t.Errorf("%d of %d recovered messages came back redelivered; want all (stored before a kill -9)", redelivered, len(got))
	}
	if len(got)+committed > total {
		t.Errorf("recovered %d + committed acks %d > %d published", len(got), committed, total)
	}
}

// TestRestartUnackedRedelivered: 100 of 150 persistent messages are delivered and not
// acked when the broker stops. After a clean stop (SIGTERM) all 150 are there in order and
// the delivery marks decide: the 100 come back redelivered, the 50 never delivered do not.
// After a SIGKILL all 150 come back redelivered: the marks are written after the
// deliveries without waiting, so a kill can lose them and the broker cannot tell which
// stored messages reached a client - whether the kill comes right after the deliveries
// (marks most likely lost) or after a barrier that proves them on disk.
func TestRestartUnackedRedelivered(t *testing.T) {
	tests := []struct {
		name    string
		kill    bool
		barrier bool
	}{
		{name: "sigterm"},
		{name: "sigkill after deliveries", kill: true},
		{name: "sigkill after marks on disk", kill: true, barrier: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const total, unacked = 150, 100
			dataDir := filepath.Join(t.TempDir(), "data")
			b := startBroker(t, dataDir)
			pub := b.channel()
			declareDurable(t, pub, "restart.unacked")
			bodies := make([]string, total)
			for i := range bodies {
				bodies[i] = fmt.Sprintf("m%03d", i)
			}
			publishConfirmed(t, pub, "restart.unacked", bodies)

			cons := b.channel()
			if err := cons.Qos(unacked, 0, false); err != nil {
				t.Fatal(err)
			}
			msgs, err := cons.Consume("restart.unacked", "", false, false, false, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < unacked; i++ {
				select {
				case d := <-msgs:
					if string(d.Body) != bodies[i] || d.Redelivered {
						t.Fatalf("delivery %d: %q redelivered=%v; want %q, false", i, d.Body, d.Redelivered, bodies[i])
					}
				case <-time.After(opTimeout):
					t.Fatalf("got %d of %d deliveries within %v", i, unacked, opTimeout)
				}
			}
			switch {
			case tt.barrier:
				// The broker journals "delivered" marks asynchronously, in order with all
				// other writes: a confirmed publish issued after the deliveries arrived
				// proves the marks are on disk before the kill.
				declareDurable(t, pub, "restart.barrier")
				publishConfirmed(t, pub, "restart.barrier", []string{"barrier"})
				b.kill()
			case tt.kill:
				b.kill()
			default:
				b.stop()
			}

			b = startBroker(t, dataDir)
			got := b.drain("restart.unacked")
			if len(got) != total {
				t.Fatalf("recovered %d messages, want %d", len(got), total)
			}
			for i, d := range got {
				want := drained{body: bodies[i], redelivered: i < unacked || tt.kill}
				if d != want {
					t.Errorf("message %d after restart = %+v, want %+v", i, d, want)
				}
			}
		})
	}
}

// TestUncleanStopRedeliveredForGood: a message stored before a SIGKILL and never delivered
// comes back redelivered, without counting a delivery: on a queue with x-delivery-limit 2
// it carries no x-delivery-count, and its x-delivery-count (returns) and delivery marks
// count only real deliveries. The flag stays after a later clean restart (a clean stop does not bring
// lost marks back), while a message published after the unclean restart and never
// delivered comes back plain.
func TestUncleanStopRedeliveredForGood(t *testing.T) {
	const q = "unclean.limit"
	dataDir := filepath.Join(t.TempDir(), "data")
	b := startBroker(t, dataDir)
	ch := b.channel()
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp091.Table{"x-delivery-limit": int32(2)}); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, ch, q, []string{"old"})
	b.kill()

	b = startBroker(t, dataDir)
	ch = b.channel()
	publishConfirmed(t, ch, q, []string{"new"})
	get := func(ch *amqp091.Channel, body string, redelivered bool, count any) amqp091.Delivery {
		t.Helper()
		d, ok, err := ch.Get(q, false)
		if err != nil || !ok {
			t.Fatalf("basic.get %q: ok=%v, %v", body, ok, err)
		}
		if got := d.Headers["x-delivery-count"]; string(d.Body) != body || d.Redelivered != redelivered || fmt.Sprint(got) != fmt.Sprint(count) {
			t.Fatalf("got %q redelivered=%v x-delivery-count=%v; want %q, %v, %v", d.Body, d.Redelivered, got, body, redelivered, count)
		}
		return d
	}
	d := get(ch, "old", true, nil) // flagged, but no delivery counted
	if err := d.Nack(false, true); err != nil {
		t.Fatal(err)
	}
	get(ch, "old", true, 1) // one return (the nack); left unacked
	b.stop()                // the channel's close returns it a second time: still within the limit

	b = startBroker(t, dataDir)
	ch = b.channel()
	get(ch, "old", true, 2) // two real deliveries before this restart, each returned
	get(ch, "new", false, nil)
}

// TestSharedMessageAckRestart: messages fanned out to two durable queues are stored once.
// Draining one queue (acking messages published in this run, then ones read back after a
// restart) must leave the other queue's copies intact, and draining both leaves nothing.
func TestSharedMessageAckRestart(t *testing.T) {
	queues := []string{"shared.a", "shared.b"}
	dataDir := filepath.Join(t.TempDir(), "data")
	b := startBroker(t, dataDir)
	ch := b.channel()
	if err := ch.ExchangeDeclare("shared.fan", "fanout", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, q := range queues {
		declareDurable(t, ch, q)
		if err := ch.QueueBind(q, "", "shared.fan", false, nil); err != nil {
			t.Fatal(err)
		}
	}
	declareDurable(t, ch, "shared.solo")
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	const n = 200
	var bodies []string
	for i := 0; i < n; i++ {
		bodies = append(bodies, fmt.Sprintf("s%03d", i))
		if err := ch.Publish("shared.fan", "", false, false, persistent(bodies[i])); err != nil {
			t.Fatal(err)
		}
	}
	publishConfirmed(t, ch, "shared.solo", bodies) // also waits for the fan-out confirms

	if got := b.drain("shared.a"); len(got) != n {
		t.Fatalf("drained %d from shared.a, want %d", len(got), n)
	}
	b = b.checkEmptyAfterRestart("shared.a")
	// Read back from disk now: shared.b's entries and shared.solo's (sole references).
	for _, q := range []string{"shared.b", "shared.solo"} {
		got := b.drain(q)
		if len(got) != n {
			t.Fatalf("drained %d from %s after the restart, want %d", len(got), q, n)
		}
		for i, d := range got {
			if d.body != bodies[i] {
				t.Fatalf("%s message %d = %q, want %q", q, i, d.body, bodies[i])
			}
		}
	}
	b = b.checkEmptyAfterRestart(append(queues, "shared.solo")...)
	if !regexp.MustCompile(`msg="store opened" .* messages=0 `).MatchString(b.log.String()) {
		t.Errorf("store not empty after draining every queue:\n%s", b.log.String())
	}
}

// TestAckAfterQueueRedeclared: a delivery of a durable queue is settled (acked, or rejected
// into a dead-letter queue) after the queue was deleted and declared again, and the new queue
// holds a message under the same sequence number. The settlement must not delete it: after
// a restart (clean or SIGKILL) it is there.
func TestAckAfterQueueRedeclared(t *testing.T) {
	dlx := amqp091.Table{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "redeclared.dlq"}
	settles := []struct {
		name   string
		settle func(amqp091.Delivery) error
	}{
		{"ack", func(d amqp091.Delivery) error { return d.Ack(false) }},
		{"reject to a dead-letter queue", func(d amqp091.Delivery) error { return d.Reject(false) }},
	}
	for _, st := range settles {
		for _, kill := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/kill=%v", st.name, kill), func(t *testing.T) {
				const queue = "redeclared"
				dataDir := filepath.Join(t.TempDir(), "data")
				b := startBroker(t, dataDir)
				pub := b.channel()
				declare := func() {
					if _, err := pub.QueueDeclare(queue, true, false, false, false, dlx); err != nil {
						t.Fatal(err)
					}
				}
				declareDurable(t, pub, "redeclared.dlq")
				declare()
				publishConfirmed(t, pub, queue, []string{"old"})

				cons := b.channel()
				msgs, err := cons.Consume(queue, "", false, false, false, false, nil)
				if err != nil {
					t.Fatal(err)
				}
				var old amqp091.Delivery
				select {
				case old = <-msgs:
				case <-time.After(opTimeout):
					t.Fatal("no delivery")
				}
				if _, err := pub.QueueDelete(queue, false, false, false); err != nil {
					t.Fatal(err)
				}
				declare()
				publishConfirmed(t, pub, queue, []string{"new"})
				if err := st.settle(old); err != nil {
					t.Fatal(err)
				}
				// A confirmed publish after the settlement is written after it (the journal
				// keeps order).
				declareDurable(t, pub, "redeclared.barrier")
				publishConfirmed(t, pub, "redeclared.barrier", []string{"barrier"})
				if kill {
					b.kill()
				} else {
					b.stop()
				}
				b = startBroker(t, dataDir)
				if got := b.drain(queue); len(got) != 1 || got[0].body != "new" {
					t.Errorf("%s after the restart = %+v, want the new message", queue, got)
				}
			})
		}
	}
}

// TestDurableTopologyRestart: durable exchanges (with an alternate exchange), a durable
// queue with arguments, queue and exchange-to-exchange bindings and persistent messages
// survive a restart and still route; transient and exclusive entities and transient
// messages do not.
func TestDurableTopologyRestart(t *testing.T) {
	tests := []struct {
		name string
		kill bool
	}{
		{name: "sigterm"},
		{name: "sigkill", kill: true},
	}
	mainArgs := amqp091.Table{
		"x-message-ttl":          int32(3600000),
		"x-max-length":           int32(1000),
		"x-dead-letter-exchange": "dur.dlx",
	}
	topicArgs := amqp091.Table{"alternate-exchange": "dur.ae"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "data")
			b := startBroker(t, dataDir)
			conn := b.dial()
			ch, err := conn.Channel()
			if err != nil {
				t.Fatal(err)
			}
			must := func(what string, err error) {
				t.Helper()
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
			}
			must("declare dur.ae", ch.ExchangeDeclare("dur.ae", "fanout", true, false, false, false, nil))
			must("declare dur.dlx", ch.ExchangeDeclare("dur.dlx", "direct", true, false, false, false, nil))
			must("declare dur.topic", ch.ExchangeDeclare("dur.topic", "topic", true, false, false, false, topicArgs))
			must("declare dur.src", ch.ExchangeDeclare("dur.src", "direct", true, false, false, false, nil))
			must("declare trans.ex", ch.ExchangeDeclare("trans.ex", "fanout", false, false, false, false, nil))
			_, err = ch.QueueDeclare("dur.main", true, false, false, false, mainArgs)
			must("declare dur.main", err)
			for _, q := range []string{"dur.alt", "dur.dead"} {
				_, err = ch.QueueDeclare(q, true, false, false, false, nil)
				must("declare "+q, err)
			}
			_, err = ch.QueueDeclare("trans.q", false, false, false, false, nil)
			must("declare trans.q", err)
			_, err = ch.QueueDeclare("excl.q", true, false, true, false, nil)
			must("declare excl.q", err)
			must("bind e2e", ch.ExchangeBind("dur.topic", "route.e2e", "dur.src", false, nil))
			must("bind dur.main", ch.QueueBind("dur.main", "route.#", "dur.topic", false, nil))
			must("bind dur.alt", ch.QueueBind("dur.alt", "", "dur.ae", false, nil))
			must("bind dur.dead", ch.QueueBind("dur.dead", "route.e2e", "dur.dlx", false, nil))
			must("bind trans.q", ch.QueueBind("trans.q", "", "trans.ex", false, nil))
			must("confirm", ch.Confirm(false))
			publish := func(ex, key string, msg amqp091.Publishing) {
				t.Helper()
				dc, err := ch.PublishWithDeferredConfirm(ex, key, true, false, msg)
				must("publish", err)
				select {
				case <-dc.Done():
					if !dc.Acked() {
						t.Fatalf("publish to %q/%q nacked", ex, key)
					}
				case <-time.After(opTimeout):
					t.Fatalf("publish to %q/%q not confirmed", ex, key)
				}
			}
			// Through the e2e binding and the topic binding into dur.main.
			publish("dur.src", "route.e2e", persistent("kept"))
			publish("dur.src", "route.e2e", amqp091.Publishing{DeliveryMode: amqp091.Transient, Body: []byte("transient")})
			if q, err := ch.QueueDeclarePassive("dur.main", true, false, false, false, nil); err != nil || q.Messages != 2 {
				t.Fatalf("dur.main before restart: %+v, %v; want 2 messages", q, err)
			}
			if tt.kill {
				b.kill()
			} else {
				b.stop()
			}

			b = startBroker(t, dataDir)
			conn = b.dial()
			// Each failing passive declare closes its channel, so each check gets one.
			open := func() *amqp091.Channel {
				t.Helper()
				c, err := conn.Channel()
				must("channel", err)
				return c
			}
			for _, ex := range []string{"dur.ae", "dur.dlx", "dur.topic", "dur.src"} {
				if err := open().ExchangeDeclarePassive(ex, "", true, false, false, false, nil); err != nil {
					t.Errorf("durable exchange %q after restart: %v", ex, err)
				}
			}
			for _, q := range []string{"dur.main", "dur.alt", "dur.dead"} {
				if _, err := open().QueueDeclarePassive(q, true, false, false, false, nil); err != nil {
					t.Errorf("durable queue %q after restart: %v", q, err)
				}
			}
			// Redeclaring with the original arguments must be equivalent, and with others not.
			if err := open().ExchangeDeclare("dur.topic", "topic", true, false, false, false, topicArgs); err != nil {
				t.Errorf("redeclare dur.topic with its arguments: %v", err)
			}
			if _, err := open().QueueDeclare("dur.main", true, false, false, false, mainArgs); err != nil {
				t.Errorf("redeclare dur.main with its arguments: %v", err)
			}
			other := amqp091.Table{"x-message-ttl": int32(3600000), "x-max-length": int32(5), "x-dead-letter-exchange": "dur.dlx"}
			var aerr *amqp091.Error
			if _, err := open().QueueDeclare("dur.main", true, false, false, false, other); !errors.As(err, &aerr) || aerr.Code != amqp091.PreconditionFailed {
				t.Errorf("redeclare dur.main with another x-max-length: %v, want 406", err)
			}
			for _, ex := range []string{"trans.ex"} {
				if err := open().ExchangeDeclarePassive(ex, "fanout", false, false, false, false, nil); !errors.As(err, &aerr) || aerr.Code != amqp091.NotFound {
					t.Errorf("transient exchange %q after restart: %v, want 404", ex, err)
				}
			}
			for _, q := range []string{"trans.q", "excl.q"} {
				if _, err := open().QueueDeclarePassive(q, false, false, false, false, nil); !errors.As(err, &aerr) || aerr.Code != amqp091.NotFound {
					t.Errorf("queue %q after restart: %v, want 404", q, err)
				}
			}

			ch = open()
			// The persistent message survived, the transient one did not.
			d, ok, err := ch.Get("dur.main", false)
			if err != nil || !ok || string(d.Body) != "kept" {
				t.Fatalf("get dur.main after restart: %q ok=%v err=%v; want \"kept\"", d.Body, ok, err)
			}
			// Dead-lettering still goes to dur.dlx and its binding.
			must("reject", d.Reject(false))
			waitGet(t, ch, "dur.dead", "kept")
			if _, ok, err := ch.Get("dur.main", true); ok || err != nil {
				t.Errorf("dur.main after restart holds more than the persistent message (ok=%v, err=%v)", ok, err)
			}
			// Routing: e2e + topic binding, and the alternate exchange for unroutable keys.
			must("confirm", ch.Confirm(false))
			publish = func(ex, key string, msg amqp091.Publishing) {
				t.Helper()
				dc, err := ch.PublishWithDeferredConfirm(ex, key, false, false, msg)
				must("publish", err)
				select {
				case <-dc.Done():
				case <-time.After(opTimeout):
					t.Fatalf("publish to %q/%q not confirmed", ex, key)
				}
			}
			publish("dur.src", "route.e2e", persistent("after-e2e"))
			waitGet(t, ch, "dur.main", "after-e2e")
			publish("dur.topic", "nomatch", persistent("after-ae"))
			waitGet(t, ch, "dur.alt", "after-ae")
		})
	}
}

// waitGet polls queue with basic.get until a message arrives and checks its body.
func waitGet(t *testing.T, ch *amqp091.Channel, queue, want string) {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	for {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatalf("get %q: %v", queue, err)
		}
		if ok {
			if string(d.Body) != want {
				t.Errorf("get %q = %q, want %q", queue, d.Body, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no message in %q within %v, want %q", queue, opTimeout, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCorruptDataDirRefusesStart: after a clean stop, a damaged data directory makes the
// broker exit non-zero, before the ready line, with an error naming the directory.
func TestCorruptDataDirRefusesStart(t *testing.T) {
	manifest := func(dir string) string { return filepath.Join(dir, "MANIFEST") }
	tests := []struct {
		name   string
		damage func(t *testing.T, dir string)
	}{
		{name: "truncated MANIFEST", damage: func(t *testing.T, dir string) {
			fi, err := os.Stat(manifest(dir))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(manifest(dir), fi.Size()-3); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "garbled MANIFEST", damage: func(t *testing.T, dir string) {
			data, err := os.ReadFile(manifest(dir))
			if err != nil {
				t.Fatal(err)
			}
			for i := len(data) / 2; i < len(data) && i < len(data)/2+16; i++ {
				data[i] ^= 0xA5
			}
			if err := os.WriteFile(manifest(dir), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "empty MANIFEST", damage: func(t *testing.T, dir string) {
			if err := os.Truncate(manifest(dir), 0); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "missing MANIFEST", damage: func(t *testing.T, dir string) {
			if err := os.Remove(manifest(dir)); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "missing table", damage: func(t *testing.T, dir string) {
			tables, err := filepath.Glob(filepath.Join(dir, "*.sst"))
			if err != nil || len(tables) == 0 {
				t.Fatalf("no table files in %s (%v)", dir, err)
			}
			sort.Strings(tables)
			if err := os.Remove(tables[0]); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "data")
			b := startBroker(t, dataDir)
			ch := b.channel()
			declareDurable(t, ch, "corrupt.q")
			bodies := make([]string, 50)
			for i := range bodies {
				bodies[i] = fmt.Sprintf("x%d", i)
			}
			publishConfirmed(t, ch, "corrupt.q", bodies)
			b.stop()

			tt.damage(t, dataDir)
			b = spawnBroker(t, dataDir)
			err := b.waitExit()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() <= 0 {
				t.Fatalf("broker on a damaged data dir: exit %v, want a non-zero exit code\n%s", err, b.log.String())
			}
			out := b.log.String()
			t.Logf("refused: %s", strings.TrimSpace(out))
			if strings.Contains(out, "warren ready") {
				t.Errorf("broker reported ready on a damaged data dir:\n%s", out)
			}
			if !strings.Contains(out, dataDir) {
				t.Errorf("error output does not name the data dir %s:\n%s", dataDir, out)
			}
		})
	}
}
