package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// producer is one publishing connection; its counters are read concurrently
// by the reporter, hence atomics (each worker owns its own, so no contention).
type producer struct {
	id       int
	exchange string
	key      string
	conn     *amqp.Connection // -client amqp091
	ch       *amqp.Channel
	confirms chan amqp.Confirmation
	lean     *leanConn // -client lean
	window   *confirmWindow

	sent      atomic.Int64
	confirmed atomic.Int64
	nacked    atomic.Int64
	doneAt    atomic.Int64 // nowNanos() when a -pmessages producer finished, 0 while running
	confLat   Histogram
	gap       confirmGap
}

// confirmGap tracks the longest interval between two consecutive confirms of one producer, and
// when it ended: a failover measurement (compare.sh qf) kills a node at a known time and takes
// the end of the gap that spans the kill as the first confirm after it. Only the goroutine that
// handles the producer's confirms calls note; the atomics let the result be read after the run.
type confirmGap struct {
	last   int64        // nowNanos() of the previous confirm; 0 before the first
	max    atomic.Int64 // longest gap, ns
	endsAt atomic.Int64 // wall clock (Unix ms) of the confirm that ended it

	mu   sync.Mutex
	long [][2]int64 // gaps of at least longGap: [start, end] wall clock, Unix ms (at most maxLongGaps)
}

const (
	longGap     = 50 * time.Millisecond
	maxLongGaps = 100
)

func (g *confirmGap) note(now int64) {
	if g.last != 0 {
		gap := now - g.last
		if gap > g.max.Load() {
			g.max.Store(gap)
			g.endsAt.Store(time.Now().UnixMilli())
		}
		if gap >= int64(longGap) {
			end := time.Now().UnixMilli()
			g.mu.Lock()
			if len(g.long) < maxLongGaps {
				g.long = append(g.long, [2]int64{end - gap/1e6, end})
			}
			g.mu.Unlock()
		}
	}
	g.last = now
}

func (g *confirmGap) longGaps() [][2]int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.long)
}

// consumer is one consuming connection bound to one queue.
type consumer struct {
	id         int
	queue      string
	conn       *amqp.Connection // -client amqp091
	ch         *amqp.Channel
	deliveries <-chan amqp.Delivery
	lean       *leanConn // -client lean

	received atomic.Int64
	lat      Histogram
}

type throughput struct {
	cfg       *Config
	queues    []string
	exchange  string // "" = default exchange
	producers []*producer
	consumers []*consumer

	// streamExpected is what the consumers of a -drain -stream run read in all.
	streamExpected int64

	stop      atomic.Bool
	stopCh    chan struct{}
	stopOnce  sync.Once
	closeOnce sync.Once
	errCh     chan error
	wg        sync.WaitGroup
}

func (t *throughput) halt() {
	t.stopOnce.Do(func() {
		t.stop.Store(true)
		close(t.stopCh)
		for _, p := range t.producers {
			if p.window != nil {
				p.window.abort()
			}
		}
	})
}

// fail reports a worker error unless the run is already stopping, in which
// case errors are the expected fallout of closing connections.
func (t *throughput) fail(err error) {
	if t.stop.Load() {
		return
	}
	select {
	case t.errCh <- err:
	default:
	}
}

func runThroughput(cfg *Config, res *Result, live io.Writer) error {
	t := &throughput{cfg: cfg, stopCh: make(chan struct{}), errCh: make(chan error, 1)}
	admin, err := dial(cfg, "bench-admin", false)
	if err != nil {
		return err
	}
	defer admin.Close()
	ach, err := admin.Channel()
	if err != nil {
		return fmt.Errorf("bench: admin channel: %w", err)
	}

	nq := cfg.Queues
	if cfg.Fanout > 0 {
		nq = cfg.Fanout
	}
	for i := 1; i <= nq; i++ {
		t.queues = append(t.queues, fmt.Sprintf("%s-%d", cfg.QueuePrefix, i))
	}
	t.exchange = cfg.Exchange
	if cfg.Fanout > 0 && t.exchange == "" {
		t.exchange = cfg.QueuePrefix + "-fanout"
	}
	var backlog int64
	if cfg.Drain {
		for _, q := range t.queues {
			info, err := ach.QueueDeclarePassive(q, cfg.Persistent, false, false, false, nil)
			if err != nil {
				return fmt.Errorf("bench: drain: queue %s: %w", q, err)
			}
			backlog += int64(info.Messages)
		}
		if cfg.Stream {
			backlog = 0 // counted per consumer in startConsumers
		}
		res.Backlog = backlog
	} else if err := t.declare(ach); err != nil {
		return err
	}
	defer t.cleanup(admin, res)

	defer t.closeAll()
	if err := t.startConsumers(); err != nil {
		return err
	}
	var expected int64 // messages the consumers must get before a -pmessages run is complete
	if !cfg.Drain {
		expected, err = t.startProducers()
		if err != nil {
			return err
		}
	} else {
		expected = backlog
		if cfg.Stream {
			expected = t.streamExpected
			res.Backlog = expected
		}
	}

	start := time.Now()
	startNs := nowNanos()
	cpu := startCPU(cfg.BrokerPID)
	for _, c := range t.consumers {
		t.wg.Add(1)
		if c.lean != nil {
			c.lean.reader = true
			go t.consumeLean(c)
		} else {
			go t.consume(c)
		}
	}
	for _, p := range t.producers {
		t.wg.Add(1)
		if p.lean != nil {
			t.wg.Add(1)
			p.lean.reader = true
			go t.confirmReader(p)
			go t.publishLean(p, startNs)
		} else {
			go t.publish(p, startNs)
		}
	}

	finite := cfg.PMessages > 0 || cfg.Drain
	var deadline <-chan time.Time
	if !finite || cfg.DurationSet {
		tm := time.NewTimer(cfg.Duration)
		defer tm.Stop()
		deadline = tm.C
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()

	var prev sample
	prev.lat, prev.conf = &Snapshot{}, &Snapshot{}
	sec := 0
loop:
	for {
		select {
		case <-deadline:
			break loop
		case err := <-t.errCh:
			res.Errors = append(res.Errors, err.Error())
			break loop
		case <-tick.C:
			sec++
			if r := cfg.rss(); r > res.RSSMax {
				res.RSSMax = r
			}
			cur := t.sample()
			t.liveLine(live, sec, &cur, &prev)
			prev = cur
		case <-poll.C:
			if finite && t.complete(expected) {
				break loop
			}
		}
	}
	end := time.Now()
	endNs := nowNanos()
	cpu.stop(res, t.sample().received)
	res.RSS = cfg.rss()
	res.RSSMax = max(res.RSSMax, res.RSS)
	// Counted once the workers are gone, as floor does: a consumer still running (messages in
	// flight at the end) records a latency between the reads of its count and of its histogram,
	// and the result's received and latency count disagreed (by 19 of 552 on a loaded host).
	t.closeAll()
	final := t.sample()
	elapsed := end.Sub(start).Seconds()
	res.Seconds = elapsed
	res.Published = final.sent
	res.Received = final.received
	res.Confirmed = final.confirmed
	res.Nacked = final.nacked
	pubSecs := elapsed
	if cfg.PMessages > 0 {
		// Publishing may end long before the consumers drain the backlog.
		last := int64(0)
		for _, p := range t.producers {
			if d := p.doneAt.Load(); d > last {
				last = d
			}
			if p.doneAt.Load() == 0 {
				last = endNs
				break
			}
		}
		if last > startNs {
			pubSecs = float64(last-startNs) / 1e9
		}
		res.PublishSeconds = pubSecs
	}
	res.PublishRate = rate(final.sent, pubSecs)
	res.ConsumeRate = rate(final.received, elapsed)
	res.ConfirmRate = rate(final.confirmed, pubSecs)
	if cfg.Confirm > 0 {
		res.ConfirmLatency = final.conf.Summary()
		for _, p := range t.producers {
			if g := float64(p.gap.max.Load()) / 1e6; g > res.ConfirmGapMaxMs {
				res.ConfirmGapMaxMs, res.ConfirmGapEndUnixMs = g, p.gap.endsAt.Load()
			}
			res.ConfirmGaps = append(res.ConfirmGaps, p.gap.longGaps()...)
		}
	}
	res.Producers, res.Consumers = len(t.producers), len(t.consumers)
	// A drained backlog was stamped by another process's clock: no latency.
	if len(t.consumers) > 0 && cfg.Size >= 8 && !cfg.Drain {
		res.Latency = final.lat.Summary()
	}
	if len(res.Errors) > 0 {
		return fmt.Errorf("bench: run aborted: %s", strings.Join(res.Errors, "; "))
	}
	return nil
}

func (t *throughput) declare(ch *amqp.Channel) error {
	cfg := t.cfg
	var args amqp.Table
	if cfg.Stream {
		args = streamArgs()
	}
	if cfg.Quorum {
		args = amqp.Table{"x-queue-type": "quorum"}
	}
	for _, q := range t.queues {
		if _, err := ch.QueueDeclare(q, cfg.Persistent, false, false, false, args); err != nil {
			return fmt.Errorf("bench: declare queue %s: %w", q, err)
		}
	}
	kind := "direct"
	if cfg.Fanout > 0 {
		kind = "fanout"
	}
	if t.exchange == "" {
		return nil
	}
	// Pre-declared amq.* exchanges cannot be redeclared with other flags.
	if !strings.HasPrefix(t.exchange, "amq.") {
		if err := ch.ExchangeDeclare(t.exchange, kind, cfg.Persistent, false, false, false, nil); err != nil {
			return fmt.Errorf("bench: declare exchange %s: %w", t.exchange, err)
		}
	}
	for _, q := range t.queues {
		key := q
		if cfg.Fanout > 0 {
			key = ""
		}
		if err := ch.QueueBind(q, key, t.exchange, false, nil); err != nil {
			return fmt.Errorf("bench: bind %s to %s: %w", q, t.exchange, err)
		}
	}
	return nil
}

func (t *throughput) startConsumers() error {
	cfg := t.cfg
	n := cfg.Consumers
	switch {
	case cfg.Drain && n < len(t.queues):
		n = len(t.queues) // every queue needs a consumer to be drained
	case cfg.Fanout > 0:
		n = cfg.Consumers * len(t.queues)
	}
	for i := 0; i < n; i++ {
		c := &consumer{id: i, queue: t.queues[i%len(t.queues)]}
		name := fmt.Sprintf("bench-consumer-%d", i)
		ctag := fmt.Sprintf("bench-%d", i)
		args, expect := t.streamConsumeArgs(i, n)
		t.streamExpected += expect
		if cfg.Client == "lean" {
			// Room for a whole frame, so deliveries are parsed in place.
			lc, err := leanDial(cfg, name, 256<<10)
			if err != nil {
				return err
			}
			c.lean = lc
			t.consumers = append(t.consumers, c)
			if cfg.Prefetch > 0 {
				if err := lc.qos(cfg.Prefetch); err != nil {
					return fmt.Errorf("bench: consumer %d qos: %w", i, err)
				}
			}
			if err := lc.consume(c.queue, ctag, cfg.AutoAck, args); err != nil {
				return fmt.Errorf("bench: consumer %d consume %s: %w", i, c.queue, err)
			}
			continue
		}
		conn, err := dial(cfg, name, cfg.Coalesce)
		if err != nil {
			return err
		}
		c.conn = conn
		t.consumers = append(t.consumers, c)
		if c.ch, err = conn.Channel(); err != nil {
			return fmt.Errorf("bench: consumer %d channel: %w", i, err)
		}
		if cfg.Prefetch > 0 {
			if err := c.ch.Qos(cfg.Prefetch, 0, false); err != nil {
				return fmt.Errorf("bench: consumer %d qos: %w", i, err)
			}
		}
		c.deliveries, err = c.ch.Consume(c.queue, ctag, cfg.AutoAck, false, false, false, args)
		if err != nil {
			return fmt.Errorf("bench: consumer %d consume %s: %w", i, c.queue, err)
		}
	}
	return nil
}

// startProducers connects the producers and returns how many deliveries the
// consumers should see in a -pmessages run.
func (t *throughput) startProducers() (int64, error) {
	cfg := t.cfg
	perQueue := make([]int64, len(t.queues))
	for i := 0; i < cfg.Producers; i++ {
		p := &producer{id: i, exchange: t.exchange}
		switch {
		case cfg.Fanout > 0:
			for q := range perQueue {
				perQueue[q] += cfg.PMessages
			}
		default:
			q := i % len(t.queues)
			p.key = t.queues[q]
			perQueue[q] += cfg.PMessages
		}
		name := fmt.Sprintf("bench-producer-%d", i)
		if cfg.Client == "lean" {
			lc, err := leanDial(cfg, name, 16<<10)
			if err != nil {
				return 0, err
			}
			p.lean = lc
			t.producers = append(t.producers, p)
			if cfg.Confirm > 0 {
				if err := lc.confirmSelect(); err != nil {
					return 0, fmt.Errorf("bench: producer %d confirm.select: %w", i, err)
				}
				p.window = newConfirmWindow(cfg.Confirm)
			}
			continue
		}
		conn, err := dial(cfg, name, cfg.Coalesce)
		if err != nil {
			return 0, err
		}
		p.conn = conn
		t.producers = append(t.producers, p)
		if p.ch, err = conn.Channel(); err != nil {
			return 0, fmt.Errorf("bench: producer %d channel: %w", i, err)
		}
		if cfg.Confirm > 0 {
			if err := p.ch.Confirm(false); err != nil {
				return 0, fmt.Errorf("bench: producer %d confirm.select: %w", i, err)
			}
			// Capacity >= the window: amqp091-go's reader blocks on a full
			// listener, and at most Confirm publishes are ever outstanding.
			p.confirms = p.ch.NotifyPublish(make(chan amqp.Confirmation, cfg.Confirm+1))
		}
	}
	consumed := make([]bool, len(t.queues))
	for _, c := range t.consumers {
		consumed[c.id%len(t.queues)] = true
	}
	var expected int64
	for q, n := range perQueue {
		if consumed[q] {
			expected += n
		}
	}
	return expected, nil
}

func (t *throughput) complete(expected int64) bool {
	for _, p := range t.producers {
		if p.doneAt.Load() == 0 {
			return false
		}
	}
	if len(t.consumers) == 0 {
		return true
	}
	var got int64
	for _, c := range t.consumers {
		got += c.received.Load()
	}
	return got >= expected
}

func (t *throughput) publish(p *producer, startNs int64) {
	defer t.wg.Done()
	cfg := t.cfg
	body := make([]byte, cfg.Size) // reused: amqp091-go copies it into its writer before Publish returns
	msg := amqp.Publishing{Body: body, DeliveryMode: amqp.Transient}
	if cfg.Persistent {
		msg.DeliveryMode = amqp.Persistent
	}
	window := cfg.Confirm
	var sentAt []int64 // send time by delivery tag modulo window
	if window > 0 {
		sentAt = make([]int64, window)
	}
	var tag uint64 // last delivery tag used (confirm mode)
	outstanding := 0
	onConfirm := func(c amqp.Confirmation) {
		outstanding--
		p.gap.note(nowNanos())
		if c.Ack {
			p.confirmed.Add(1)
		} else {
			p.nacked.Add(1)
		}
		p.confLat.Record(nowNanos() - sentAt[c.DeliveryTag%uint64(window)])
	}
	// waitConfirm blocks for one confirm; false if the run stops or the channel dies.
	waitConfirm := func() bool {
		select {
		case c, ok := <-p.confirms:
			if !ok {
				t.fail(fmt.Errorf("bench: producer %d: channel closed while awaiting confirms", p.id))
				return false
			}
			onConfirm(c)
			return true
		case <-t.stopCh:
			return false
		}
	}
	pace := newPacer(cfg.Rate, startNs+t.phase(p.id))
	for n := int64(0); !t.stop.Load(); n++ {
		if cfg.PMessages > 0 && n >= cfg.PMessages {
			for outstanding > 0 {
				if !waitConfirm() {
					return
				}
			}
			p.doneAt.Store(nowNanos())
			return
		}
		if !pace.wait(n, t.stopCh) {
			return
		}
		if window > 0 {
			for outstanding >= window {
				if !waitConfirm() {
					return
				}
			}
		}
		ts := nowNanos()
		putStamp(body, ts)
		if err := p.ch.Publish(p.exchange, p.key, false, false, msg); err != nil {
			t.fail(fmt.Errorf("bench: producer %d publish: %w", p.id, err))
			return
		}
		p.sent.Add(1)
		if window > 0 {
			tag++
			sentAt[tag%uint64(window)] = ts
			outstanding++
			// Take whatever confirms already arrived without blocking, so
			// latency samples are stamped close to their arrival.
			for drained := false; !drained; {
				select {
				case c, ok := <-p.confirms:
					if !ok {
						t.fail(fmt.Errorf("bench: producer %d: channel closed", p.id))
						return
					}
					onConfirm(c)
				default:
					drained = true
				}
			}
		}
	}
}

func (t *throughput) consume(c *consumer) {
	defer t.wg.Done()
	autoAck := t.cfg.AutoAck
	multi := t.cfg.MultiAck
	unacked := 0
	for d := range c.deliveries {
		if ts, ok := readStamp(d.Body); ok {
			c.lat.Record(nowNanos() - ts)
		}
		c.received.Add(1)
		if !autoAck {
			unacked++
			if unacked >= multi {
				if err := c.ch.Ack(d.DeliveryTag, multi > 1); err != nil {
					t.fail(fmt.Errorf("bench: consumer %d ack: %w", c.id, err))
					return
				}
				unacked = 0
			}
		}
	}
	t.fail(fmt.Errorf("bench: consumer %d: delivery channel closed by the broker", c.id))
}

type sample struct {
	sent, received, confirmed, nacked int64
	lat, conf                         *Snapshot
}

func (t *throughput) sample() sample {
	s := sample{lat: &Snapshot{}, conf: &Snapshot{}}
	for _, p := range t.producers {
		s.sent += p.sent.Load()
		s.confirmed += p.confirmed.Load()
		s.nacked += p.nacked.Load()
		p.confLat.AddTo(s.conf)
	}
	for _, c := range t.consumers {
		s.received += c.received.Load()
		c.lat.AddTo(s.lat)
	}
	return s
}

func (t *throughput) liveLine(w io.Writer, sec int, cur, prev *sample) {
	if w == io.Discard {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "t=%ds sent=%d/s received=%d/s", sec, cur.sent-prev.sent, cur.received-prev.received)
	if t.cfg.Confirm > 0 {
		c := cur.conf.Sub(prev.conf)
		fmt.Fprintf(&b, " confirmed=%d/s", cur.confirmed-prev.confirmed)
		if n := cur.nacked - prev.nacked; n > 0 {
			fmt.Fprintf(&b, " nacked=%d/s", n)
		}
		if c.Count > 0 {
			fmt.Fprintf(&b, " confirm-p50=%s confirm-p99=%s", fmtDur(c.Quantile(0.5)), fmtDur(c.Quantile(0.99)))
		}
	}
	if l := cur.lat.Sub(prev.lat); l.Count > 0 {
		fmt.Fprintf(&b, " p50=%s p99=%s", fmtDur(l.Quantile(0.5)), fmtDur(l.Quantile(0.99)))
	}
	b.WriteByte('\n')
	io.WriteString(w, b.String())
}

// closeAll stops the workers by closing their connections (a blocked Publish
// or a consumer waiting for deliveries only returns that way) and waits a
// bounded time for them to exit. Once: the run calls it before its final
// sample, and again (deferred) on every way out.
func (t *throughput) closeAll() {
	t.closeOnce.Do(t.closeAll0)
}

func (t *throughput) closeAll0() {
	t.halt()
	var cw sync.WaitGroup
	async := func(close func()) {
		cw.Add(1)
		go func() {
			defer cw.Done()
			close()
		}()
	}
	for _, p := range t.producers {
		if p.conn != nil {
			async(func() { p.conn.Close() })
		}
		if p.lean != nil {
			async(p.lean.close)
		}
	}
	for _, c := range t.consumers {
		if c.conn != nil {
			async(func() { c.conn.Close() })
		}
		if c.lean != nil {
			async(c.lean.close)
		}
	}
	waitTimeout(&cw, 5*time.Second)
	waitTimeout(&t.wg, 5*time.Second)
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// cleanup deletes the queues and exchange on a fresh channel (the run may
// have closed the admin channel with an error) unless -keep.
func (t *throughput) cleanup(admin *amqp.Connection, res *Result) {
	if t.cfg.Keep {
		return
	}
	ch, err := admin.Channel()
	if err != nil {
		res.Errors = append(res.Errors, fmt.Sprintf("cleanup: %v", err))
		return
	}
	defer ch.Close()
	for _, q := range t.queues {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("cleanup: delete queue %s: %v", q, err))
			return
		}
	}
	if t.exchange != "" && !strings.HasPrefix(t.exchange, "amq.") {
		if err := ch.ExchangeDelete(t.exchange, false, false); err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("cleanup: delete exchange %s: %v", t.exchange, err))
		}
	}
}

// phase staggers rate-limited producers evenly over one publish interval, so N producers at R
// msgs/s offer a steady N*R msgs/s instead of N publishes at the same instant every 1/R s
// (clients in production are not synchronised either).
func (t *throughput) phase(id int) int64 {
	if t.cfg.Rate <= 0 || t.cfg.Producers <= 1 {
		return 0
	}
	return int64(1e9 / t.cfg.Rate * float64(id) / float64(t.cfg.Producers))
}

// pacer spaces a producer's publishes for -rate: publish n is due at start + n/rate, so a
// producer that fell behind catches up instead of drifting.
type pacer struct {
	interval float64 // ns between publishes; 0 = unlimited
	startNs  int64
	timer    *time.Timer
}

func newPacer(rate float64, startNs int64) *pacer {
	p := &pacer{startNs: startNs}
	if rate > 0 {
		p.interval = 1e9 / rate
		p.timer = time.NewTimer(time.Hour)
		p.timer.Stop()
	}
	return p
}

// due reports how long until publish n may go; <= 0 means now.
func (p *pacer) due(n int64) time.Duration {
	if p.interval == 0 {
		return 0
	}
	return time.Duration(p.startNs + int64(float64(n)*p.interval) - nowNanos())
}

// wait sleeps until publish n is due; false if stop closed first.
func (p *pacer) wait(n int64, stop <-chan struct{}) bool {
	d := p.due(n)
	if d <= 0 {
		return true
	}
	p.timer.Reset(d)
	select {
	case <-p.timer.C:
		return true
	case <-stop:
		return false
	}
}

// confirmWindow tracks a lean producer's unconfirmed publishes: the producer waits while the span
// from the oldest unconfirmed tag to the next one reaches the window, the connection's reader
// settles tags as basic.ack / basic.nack arrive (in any order, multiple or not).
type confirmWindow struct {
	mu      sync.Mutex
	cond    *sync.Cond
	size    uint64
	low     uint64 // oldest unconfirmed tag (tags start at 1)
	next    uint64 // tag of the next publish
	settled []bool // by tag % size, for tags in [low, next)
	sentAt  []atomic.Int64
	dead    bool
}

func newConfirmWindow(size int) *confirmWindow {
	w := &confirmWindow{size: uint64(size), low: 1, next: 1, settled: make([]bool, size), sentAt: make([]atomic.Int64, size)}
	w.cond = sync.NewCond(&w.mu)
	return w
}

// reserve waits for room and returns the tag of the next publish; false if aborted.
func (w *confirmWindow) reserve(beforeWait func()) (uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.next-w.low >= w.size && !w.dead {
		if beforeWait != nil {
			w.mu.Unlock()
			beforeWait()
			w.mu.Lock()
			beforeWait = nil
			continue
		}
		w.cond.Wait()
	}
	if w.dead {
		return 0, false
	}
	tag := w.next
	w.next++
	return tag, true
}

// drained waits until every reserved tag is settled; false if aborted.
func (w *confirmWindow) drained() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.low < w.next && !w.dead {
		w.cond.Wait()
	}
	return !w.dead
}

// settle marks tag (and with multiple every older unsettled tag) confirmed, calling each for
// every tag settled now, and wakes the producer.
func (w *confirmWindow) settle(tag uint64, multiple bool, each func(tag uint64)) {
	w.mu.Lock()
	first := tag
	if multiple {
		first = w.low
	}
	for t := max(first, w.low); t <= tag && t < w.next; t++ {
		if !w.settled[t%w.size] {
			w.settled[t%w.size] = true
			each(t)
		}
	}
	for w.low < w.next && w.settled[w.low%w.size] {
		w.settled[w.low%w.size] = false
		w.low++
	}
	w.mu.Unlock()
	w.cond.Broadcast()
}

// abort wakes and fails every waiter (run stopping or connection gone).
func (w *confirmWindow) abort() {
	w.mu.Lock()
	w.dead = true
	w.mu.Unlock()
	w.cond.Broadcast()
}

// publishLean is publish for -client lean.
func (t *throughput) publishLean(p *producer, startNs int64) {
	defer t.wg.Done()
	cfg := t.cfg
	tmpl := newPublishTemplate(p.exchange, p.key, cfg.Size, cfg.Persistent, p.lean.frameMax)
	pace := newPacer(cfg.Rate, startNs+t.phase(p.id))
	w := p.window
	var firstAt int64 // stamp of the oldest buffered publish, 0 = none
	flush := func() {
		if firstAt != 0 {
			firstAt = 0
			if err := p.lean.flush(); err != nil {
				t.fail(fmt.Errorf("bench: producer %d: %w", p.id, err))
			}
		}
	}
	for n := int64(0); !t.stop.Load(); n++ {
		if cfg.PMessages > 0 && n >= cfg.PMessages {
			flush()
			if w != nil && !w.drained() {
				return
			}
			p.doneAt.Store(nowNanos())
			return
		}
		if pace.due(n) > 0 {
			flush()
			if !pace.wait(n, t.stopCh) {
				return
			}
		}
		var tag uint64
		if w != nil {
			var ok bool
			if tag, ok = w.reserve(flush); !ok {
				return
			}
		}
		ts := nowNanos()
		if w != nil {
			w.sentAt[tag%w.size].Store(ts)
		}
		var err error
		if firstAt, err = p.lean.publish(&tmpl, ts, firstAt); err != nil {
			t.fail(fmt.Errorf("bench: producer %d publish: %w", p.id, err))
			return
		}
		p.sent.Add(1)
	}
	flush()
}

// confirmReader reads a lean producer's connection: confirms, and the broker closing it.
func (t *throughput) confirmReader(p *producer) {
	defer t.wg.Done()
	h := &leanHandler{}
	if w := p.window; w != nil {
		h.confirm = func(tag uint64, multiple, nack bool) {
			now := nowNanos()
			p.gap.note(now)
			w.settle(tag, multiple, func(tag uint64) {
				if nack {
					p.nacked.Add(1)
				} else {
					p.confirmed.Add(1)
				}
				p.confLat.Record(now - w.sentAt[tag%w.size].Load())
			})
		}
	}
	h.message = func(uint64, int64, bool) error { return nil }
	err := p.lean.readLoop(h)
	if p.window != nil {
		p.window.abort()
	}
	if err != nil {
		t.fail(fmt.Errorf("bench: producer %d: %w", p.id, err))
	} else if !t.stop.Load() {
		t.fail(fmt.Errorf("bench: producer %d: connection closed", p.id))
	}
}

// consumeLean is consume for -client lean: deliveries are handled on the reading goroutine.
func (t *throughput) consumeLean(c *consumer) {
	defer t.wg.Done()
	autoAck := t.cfg.AutoAck
	multi := t.cfg.MultiAck
	// Acks are written when the input runs dry, or earlier once half the prefetch window
	// waits on them, so the broker never stalls for credit we hold back.
	flushAt := 1 << 30
	if t.cfg.Prefetch > 0 {
		flushAt = max(1, t.cfg.Prefetch/2)
	}
	unacked, buffered := 0, 0
	h := &leanHandler{
		message: func(tag uint64, stamp int64, stamped bool) error {
			if stamped {
				c.lat.Record(nowNanos() - stamp)
			}
			c.received.Add(1)
			if autoAck {
				return nil
			}
			if unacked++; unacked < multi {
				return nil
			}
			c.lean.ack(tag, multi > 1)
			buffered += unacked
			unacked = 0
			if buffered >= flushAt {
				buffered = 0
				return c.lean.flush()
			}
			return nil
		},
		idle: func() error {
			if buffered == 0 {
				return nil
			}
			buffered = 0
			return c.lean.flush()
		},
	}
	if err := c.lean.readLoop(h); err != nil {
		t.fail(fmt.Errorf("bench: consumer %d: %w", c.id, err))
	} else if !t.stop.Load() {
		t.fail(fmt.Errorf("bench: consumer %d: connection closed", c.id))
	}
}
