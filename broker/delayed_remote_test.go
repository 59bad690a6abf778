package broker

import (
	"errors"
	"maps"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
)

// flakyForwarder refuses the first fails forwards, then accepts, recording the queues of each.
type flakyForwarder struct {
	mu     sync.Mutex
	fails  int
	calls  int
	queues [][]string
}

func (f *flakyForwarder) Forward(home, vhost string, queues []string, msg *queue.Message, done func(error)) {
	f.mu.Lock()
	f.calls++
	f.queues = append(f.queues, queues)
	fail := f.calls <= f.fails
	f.mu.Unlock()
	if done == nil {
		return
	}
	if fail {
		done(errors.New("nacked by B"))
		return
	}
	done(nil)
}

func (f *flakyForwarder) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// A due delayed message for a queue of node B is forwarded with a confirm; refused, it is sent
// again (to B only: the local queue has its copy once) until B accepts it, then no more.
func TestDelayedDueForwardRetried(t *testing.T) {
	b := newTestBroker(t, t.TempDir())
	b.SetReplicator(testReplicator{b})
	fw := &flakyForwarder{fails: 2}
	b.SetForwarder(fw)
	v := b.VHost("/")
	for _, op := range []TopologyOp{
		{Kind: OpDeclareExchange, VHost: "/", Exchange: ExchangeSpec{Name: "dx", Type: delayedType, Durable: true,
			Args: amqp.Table{delayedTypeArg: "fanout"}}, Home: "A"},
		{Kind: OpDeclareQueue, VHost: "/", Queue: QueueSpec{Name: "here", Durable: true}, Home: "A"},
		{Kind: OpDeclareQueue, VHost: "/", Queue: QueueSpec{Name: "there", Durable: true}, Home: "B"},
		{Kind: OpBind, VHost: "/", Binding: BindingSpec{Source: "dx", Destination: "here"}},
		{Kind: OpBind, VHost: "/", Binding: BindingSpec{Source: "dx", Destination: "there"}},
	} {
		if _, err := b.ApplyTopology(op); err != nil {
			t.Fatal(err)
		}
	}
	publishDelayed(t, v, v.NewPublisher(), "dx", "", "m", int32(20), true)
	deadline := time.Now().Add(5 * time.Second)
	for fw.count() < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // a retry too many would come within this
	if n := fw.count(); n != 3 {
		t.Fatalf("%d forwards, want 3 (two refused, then accepted)", n)
	}
	for _, qs := range fw.queues {
		if len(qs) != 1 || qs[0] != "there" {
			t.Fatalf("forwarded for queues %v, want [there]", qs)
		}
	}
	qs, aerr := v.Queue(System, "here")
	if aerr != nil {
		t.Fatal(aerr)
	}
	if got := qs.Q().Stats().Ready; got != 1 {
		t.Fatalf("local queue has %d, want 1", got)
	}
}

// queueRefuser refuses every forward that names queue refuse until open is set, as a home does
// when one of the queues of a forward is a full reject-publish queue (the others have their copy
// by then); it counts the copies each queue was sent.
type queueRefuser struct {
	mu     sync.Mutex
	refuse string
	open   bool
	copies map[string]int
	msgs   map[*queue.Message]bool
}

func (f *queueRefuser) Forward(home, vhost string, queues []string, msg *queue.Message, done func(error)) {
	f.mu.Lock()
	refused := false
	for _, q := range queues {
		f.copies[q]++
		refused = refused || (q == f.refuse && !f.open)
	}
	f.msgs[msg] = true
	f.mu.Unlock()
	if done == nil {
		return
	}
	if refused {
		done(errors.New("nacked by B"))
		return
	}
	done(nil)
}

func (f *queueRefuser) state() (copies map[string]int, msgs int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.copies), len(f.msgs)
}

func (f *queueRefuser) setOpen() {
	f.mu.Lock()
	f.open = true
	f.mu.Unlock()
}

// delayedToB declares delayed fanout exchange dx homed here, bound to queues homed on node B.
func delayedToB(t *testing.T, fw Forwarder, queues ...string) *VHost {
	t.Helper()
	b := newTestBroker(t, t.TempDir())
	b.SetReplicator(testReplicator{b})
	b.SetForwarder(fw)
	ops := []TopologyOp{{Kind: OpDeclareExchange, VHost: "/", Exchange: ExchangeSpec{Name: "dx", Type: delayedType,
		Durable: true, Args: amqp.Table{delayedTypeArg: "fanout"}}, Home: "A"}}
	for _, q := range queues {
		ops = append(ops,
			TopologyOp{Kind: OpDeclareQueue, VHost: "/", Queue: QueueSpec{Name: q, Durable: true}, Home: "B"},
			TopologyOp{Kind: OpBind, VHost: "/", Binding: BindingSpec{Source: "dx", Destination: q}})
	}
	for _, op := range ops {
		if _, err := b.ApplyTopology(op); err != nil {
			t.Fatal(err)
		}
	}
	return b.VHost("/")
}

// A due message for two queues of node B, one of which refuses it for a while: the retries go
// to the refusing queue only, the other has its one copy.
func TestDelayedDueForwardRetriedPerQueue(t *testing.T) {
	fw := &queueRefuser{refuse: "b", copies: map[string]int{}, msgs: map[*queue.Message]bool{}}
	v := delayedToB(t, fw, "a", "b")
	publishDelayed(t, v, v.NewPublisher(), "dx", "", "m", int32(20), true)
	deadline := time.Now().Add(5 * time.Second)
	for c, _ := fw.state(); c["b"] < 3 && time.Now().Before(deadline); c, _ = fw.state() {
		time.Sleep(10 * time.Millisecond)
	}
	fw.setOpen()
	for c, _ := fw.state(); c["b"] < 4 && time.Now().Before(deadline); c, _ = fw.state() {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // a retry too many would come within this
	c, _ := fw.state()
	if c["b"] < 4 {
		t.Fatalf("queue b was sent %d copies, want at least 4 (refused three times, then accepted)", c["b"])
	}
	if c["a"] != 1 {
		t.Fatalf("queue a was sent %d copies, want 1 (only b refused)", c["a"])
	}
}

// forwardDueGoroutines counts the goroutines running delayer.forwardDue.
func forwardDueGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "broker.(*delayer).forwardDue(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// Due messages routed in many rounds while node B keeps refusing them are retried by one
// goroutine, not one per round; once B accepts, they are all delivered and the goroutine ends.
func TestDelayedDueForwardOneGoroutine(t *testing.T) {
	fw := &queueRefuser{refuse: "b", copies: map[string]int{}, msgs: map[*queue.Message]bool{}}
	v := delayedToB(t, fw, "b")
	p := v.NewPublisher()
	const n = 10
	for i := range n {
		publishDelayed(t, v, p, "dx", "", "m", int32(20+30*i), true)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, m := fw.state(); m < n && time.Now().Before(deadline); _, m = fw.state() {
		time.Sleep(10 * time.Millisecond)
	}
	if _, m := fw.state(); m < n {
		t.Fatalf("%d of %d due messages forwarded", m, n)
	}
	if g := forwardDueGoroutines(); g != 1 {
		t.Fatalf("%d goroutines forwarding due messages, want 1", g)
	}
	fw.setOpen()
	for forwardDueGoroutines() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := forwardDueGoroutines(); g != 0 {
		t.Fatalf("%d goroutines forwarding due messages once all were accepted, want 0", g)
	}
}
