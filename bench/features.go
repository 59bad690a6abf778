package bench

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The queue-feature modes of issue 18, each in this file with its own runner and summary
// lines (registered in featureModes; Run and printSummary consult the table):
//
//	priority  a queue with x-max-priority 10; -producers publish at full speed (or -rate)
//	          with priorities 0-9 spread evenly, -consumers consume it (manual ack unless
//	          -autoack, -prefetch, -multi-ack). Reports consumed msgs/s and e2e latency.
//	rpc       request/reply over direct reply-to: one server consumes <prefix>-rpc and
//	          answers each request to its reply_to; -producers callers each run one
//	          request at a time (publish with reply_to amq.rabbitmq.reply-to, wait for the
//	          reply). Reports round trips/s (consume_rate; received = replies) and the
//	          round-trip latency (latency).
//	sac       single-active-consumer failover: a queue with x-single-active-consumer holding
//	          a backlog (sacBacklog messages published first), or fed at -rate msgs/s
//	          during the run when -rate is given; the active consumer takes a few
//	          deliveries, then is cancelled while a second consumer waits; the time from
//	          sending basic.cancel to the waiting consumer's first delivery is one
//	          failover (latency; received = failovers). A failover with no delivery
//	          within sacStall is a stall (failed), recovered from with a new consumer.
//	          Repeats for -duration or sacMaxFailovers.
//
// They use amqp091-go (with -coalesce) whatever -client says: their cost is in the broker's
// queue and reply-to paths, not in the client's per-publish cost.
var featureModes = map[string]func(*Config, *Result, io.Writer) error{
	"priority": runPriority,
	"rpc":      runRPC,
	"sac":      runSAC,
}

func init() {
	for m := range featureModes {
		modes[m] = true
	}
}

// printFeature writes the summary lines of a feature mode.
func printFeature(b *strings.Builder, r *Result) {
	switch r.Mode {
	case "priority":
		fmt.Fprintf(b, "producers=%d consumers=%d size=%d max-priority=10 autoack=%v prefetch=%d multi-ack=%d\n",
			r.Producers, r.Consumers, r.Size, r.AutoAck, r.Prefetch, r.MultiAck)
		fmt.Fprintf(b, "%-18s %d msgs, %.1f msgs/s\n", "published:", r.Published, r.PublishRate)
		fmt.Fprintf(b, "%-18s %d msgs, %.1f msgs/s\n", "received:", r.Received, r.ConsumeRate)
		printLat(b, "e2e latency", r.Latency)
	case "rpc":
		fmt.Fprintf(b, "callers=%d size=%d (direct reply-to)\n", r.Producers, r.Size)
		fmt.Fprintf(b, "%-18s %d, %.1f/s\n", "round trips:", r.Received, r.ConsumeRate)
		printLat(b, "round trip", r.Latency)
	case "sac":
		fmt.Fprintf(b, "%-18s %d, stalled %d (no delivery within %v; -rate %.0f)\n", "failovers:", r.Received, r.Failed, sacStall, r.Rate)
		printLat(b, "failover", r.Latency)
	}
}

// summary is h's latency summary, nil when it recorded nothing (a zero would read as a
// measurement in compare.sh's table).
func summary(h *Histogram) *LatencySummary {
	var s Snapshot
	h.AddTo(&s)
	if s.Count == 0 {
		return nil
	}
	return s.Summary()
}

// featureRun is what the feature modes share: a stop signal, the first error, the workers.
type featureRun struct {
	cfg   *Config
	stop  atomic.Bool
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
	mu    sync.Mutex
	err   error
	conns []*amqp.Connection
}

func newFeatureRun(cfg *Config) *featureRun { return &featureRun{cfg: cfg, done: make(chan struct{})} }

func (f *featureRun) halt() { f.once.Do(func() { f.stop.Store(true); close(f.done) }) }

// fail records the first error of a worker and stops the run; errors after the stop are
// the fallout of closing connections.
func (f *featureRun) fail(err error) {
	if f.stop.Load() {
		return
	}
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.mu.Unlock()
	f.halt()
}

func (f *featureRun) dial(name string) (*amqp.Connection, *amqp.Channel, error) {
	conn, err := dial(f.cfg, name, f.cfg.Coalesce)
	if err != nil {
		return nil, nil, err
	}
	f.mu.Lock()
	f.conns = append(f.conns, conn)
	f.mu.Unlock()
	ch, err := conn.Channel()
	if err != nil {
		return nil, nil, fmt.Errorf("bench: %s channel: %w", name, err)
	}
	return conn, ch, nil
}

func (f *featureRun) goWork(fn func() error) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		if err := fn(); err != nil {
			f.fail(err)
		}
	}()
}

// measure waits for -duration (or the first error), printing live lines of what count
// returns per second, and returns the measured seconds.
func (f *featureRun) measure(live io.Writer, what string, count func() int64) float64 {
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	deadline := time.NewTimer(f.cfg.Duration)
	defer deadline.Stop()
	prev := int64(0)
	for {
		select {
		case <-tick.C:
			n := count()
			fmt.Fprintf(live, "%4.0fs %s %d/s\n", time.Since(start).Seconds(), what, n-prev)
			prev = n
			continue
		case <-deadline.C:
		case <-f.done:
		}
		return time.Since(start).Seconds()
	}
}

// finish stops the workers, closes the connections and deletes the queue (unless -keep),
// returning the run's first error.
func (f *featureRun) finish(queue string) error {
	f.halt()
	if queue != "" && !f.cfg.Keep {
		if conn, err := dial(f.cfg, "bench-cleanup", false); err == nil {
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(queue, false, false, false)
			}
			conn.Close()
		}
	}
	f.mu.Lock()
	conns := f.conns
	f.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	waited := make(chan struct{})
	go func() { f.wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		f.fail(errors.New("bench: workers still running 10 s after the end"))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// consumeLoop consumes deliveries until the run stops, acking per -multi-ack unless autoAck,
// and calls got for each.
func (f *featureRun) consumeLoop(ch *amqp.Channel, ds <-chan amqp.Delivery, autoAck bool, got func(amqp.Delivery)) error {
	n := 0
	for {
		select {
		case <-f.done:
			return nil
		case d, ok := <-ds:
			if !ok {
				if f.stop.Load() {
					return nil
				}
				return errors.New("bench: consumer's delivery channel closed")
			}
			got(d)
			if autoAck {
				continue
			}
			n++
			if n%f.cfg.MultiAck == 0 {
				if err := ch.Ack(d.DeliveryTag, f.cfg.MultiAck > 1); err != nil {
					return fmt.Errorf("bench: ack: %w", err)
				}
			}
		}
	}
}

func runPriority(cfg *Config, res *Result, live io.Writer) error {
	res.Client = "amqp091"
	f := newFeatureRun(cfg)
	queue := cfg.QueuePrefix + "-priority"
	_, setup, err := f.dial("bench-priority-setup")
	if err != nil {
		return err
	}
	if _, err := setup.QueueDelete(queue, false, false, false); err != nil {
		return fmt.Errorf("bench: delete %s: %w", queue, err)
	}
	if _, err := setup.QueueDeclare(queue, cfg.Persistent, false, false, false, amqp.Table{"x-max-priority": int32(10)}); err != nil {
		return fmt.Errorf("bench: declare %s: %w", queue, err)
	}
	var sent, received atomic.Int64
	var lat Histogram
	for i := 0; i < cfg.Consumers; i++ {
		_, ch, err := f.dial(fmt.Sprintf("bench-priority-consumer-%d", i))
		if err != nil {
			return err
		}
		if err := ch.Qos(cfg.Prefetch, 0, false); err != nil {
			return fmt.Errorf("bench: qos: %w", err)
		}
		ds, err := ch.Consume(queue, "", cfg.AutoAck, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("bench: consume %s: %w", queue, err)
		}
		f.goWork(func() error {
			return f.consumeLoop(ch, ds, cfg.AutoAck, func(d amqp.Delivery) {
				if ts, ok := readStamp(d.Body); ok {
					lat.Record(nowNanos() - ts)
				}
				received.Add(1)
			})
		})
	}
	mode := amqp.Transient
	if cfg.Persistent {
		mode = amqp.Persistent
	}
	for i := 0; i < cfg.Producers; i++ {
		_, ch, err := f.dial(fmt.Sprintf("bench-priority-producer-%d", i))
		if err != nil {
			return err
		}
		f.goWork(func() error {
			body := make([]byte, cfg.Size)
			var interval time.Duration
			if cfg.Rate > 0 {
				interval = time.Duration(float64(time.Second) / cfg.Rate)
			}
			next := time.Now()
			for seq := 0; !f.stop.Load(); seq++ {
				if interval > 0 {
					next = next.Add(interval)
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
				}
				putStamp(body, nowNanos())
				// Priorities 0-9 in turn: every level holds an even share of the backlog.
				if err := ch.Publish("", queue, false, false, amqp.Publishing{DeliveryMode: mode, Priority: uint8(seq % 10), Body: body}); err != nil {
					return fmt.Errorf("bench: publish: %w", err)
				}
				sent.Add(1)
			}
			return nil
		})
	}
	res.Seconds = f.measure(live, "received", received.Load)
	res.Published, res.Received = sent.Load(), received.Load()
	res.PublishRate, res.ConsumeRate = rate(res.Published, res.Seconds), rate(res.Received, res.Seconds)
	res.RSS = cfg.rss()
	err = f.finish(queue)
	res.Latency = summary(&lat) // the workers have stopped: no record races the read
	return err
}

func runRPC(cfg *Config, res *Result, live io.Writer) error {
	res.Client = "amqp091"
	f := newFeatureRun(cfg)
	queue := cfg.QueuePrefix + "-rpc"
	_, srv, err := f.dial("bench-rpc-server")
	if err != nil {
		return err
	}
	if _, err := srv.QueueDelete(queue, false, false, false); err != nil {
		return fmt.Errorf("bench: delete %s: %w", queue, err)
	}
	if _, err := srv.QueueDeclare(queue, false, false, false, false, nil); err != nil {
		return fmt.Errorf("bench: declare %s: %w", queue, err)
	}
	requests, err := srv.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("bench: consume %s: %w", queue, err)
	}
	// The server answers each request with its own body, to the name direct reply-to stamped.
	f.goWork(func() error {
		return f.consumeLoop(srv, requests, true, func(d amqp.Delivery) {
			if err := srv.Publish("", d.ReplyTo, false, false, amqp.Publishing{CorrelationId: d.CorrelationId, Body: d.Body}); err != nil {
				f.fail(fmt.Errorf("bench: reply: %w", err))
			}
		})
	})
	var trips atomic.Int64
	var lat Histogram
	for i := 0; i < cfg.Producers; i++ {
		_, ch, err := f.dial(fmt.Sprintf("bench-rpc-caller-%d", i))
		if err != nil {
			return err
		}
		replies, err := ch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("bench: consume amq.rabbitmq.reply-to: %w", err)
		}
		f.goWork(func() error {
			body := make([]byte, cfg.Size)
			for seq := 0; !f.stop.Load(); seq++ {
				id := strconv.Itoa(seq)
				t0 := nowNanos()
				if err := ch.Publish("", queue, false, false, amqp.Publishing{ReplyTo: "amq.rabbitmq.reply-to", CorrelationId: id, Body: body}); err != nil {
					return fmt.Errorf("bench: request: %w", err)
				}
				select {
				case <-f.done:
					return nil
				case d, ok := <-replies:
					if !ok {
						if f.stop.Load() {
							return nil
						}
						return errors.New("bench: reply consumer closed")
					}
					if d.CorrelationId != id {
						return fmt.Errorf("bench: reply for request %q while waiting for %q", d.CorrelationId, id)
					}
				}
				lat.Record(nowNanos() - t0)
				trips.Add(1)
			}
			return nil
		})
	}
	res.Seconds = f.measure(live, "round trips", trips.Load)
	res.RSS = cfg.rss()
	err = f.finish(queue)
	// Read once the callers have stopped, so that the count and the histogram agree; the
	// round trips that ended while the run stopped are a few among thousands.
	res.Published, res.Received = trips.Load(), trips.Load()
	res.ConsumeRate = rate(res.Received, res.Seconds)
	res.Latency = summary(&lat)
	return err
}

// sacWarmup is how many deliveries the active consumer takes before it is cancelled.
const sacWarmup = 20

// sacBacklog is how many messages a sac run without -rate queues before its first consumer
// (a variable so that tests can make it smaller).
var sacBacklog = 300000

// sacMaxFailovers ends a sac run early, before a backlog runs out: each consumer acks
// sacWarmup deliveries (and holds up to a prefetch more, requeued when it goes).
func sacMaxFailovers() int64 {
	return int64(min(2000, sacBacklog/(2*sacWarmup)))
}

// sacStall is how long a failover may take before it counts as a stall.
const sacStall = 5 * time.Second

func runSAC(cfg *Config, res *Result, live io.Writer) error {
	res.Client = "amqp091"
	f := newFeatureRun(cfg)
	queue := cfg.QueuePrefix + "-sac"
	conn, setup, err := f.dial("bench-sac")
	if err != nil {
		return err
	}
	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))
	if _, err := setup.QueueDelete(queue, false, false, false); err != nil {
		return fmt.Errorf("bench: delete %s: %w", queue, err)
	}
	if _, err := setup.QueueDeclare(queue, false, false, false, false, amqp.Table{"x-single-active-consumer": true}); err != nil {
		return fmt.Errorf("bench: declare %s: %w", queue, err)
	}
	res.Rate = cfg.Rate
	_, pub, err := f.dial("bench-sac-feeder")
	if err != nil {
		return err
	}
	body := make([]byte, cfg.Size)
	if cfg.Rate > 0 {
		// The feeder keeps publishing during the failovers; the queue stays short because the
		// active consumer drains faster.
		f.goWork(func() error {
			interval := time.Duration(float64(time.Second) / cfg.Rate)
			next := time.Now()
			for !f.stop.Load() {
				next = next.Add(interval)
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				if err := pub.Publish("", queue, false, false, amqp.Publishing{Body: body}); err != nil {
					return fmt.Errorf("bench: feed: %w", err)
				}
			}
			return nil
		})
	} else {
		// A backlog published before the first consumer: every failover finds messages
		// ready, and nothing is published while consumers change.
		for i := 0; i < sacBacklog; i++ {
			if err := pub.Publish("", queue, false, false, amqp.Publishing{Body: body}); err != nil {
				return fmt.Errorf("bench: backlog: %w", err)
			}
		}
		for deadline := time.Now().Add(2 * time.Minute); ; {
			q, err := setup.QueueDeclarePassive(queue, false, false, false, false, amqp.Table{"x-single-active-consumer": true})
			if err != nil {
				return fmt.Errorf("bench: backlog of %s: %w", queue, err)
			}
			if q.Messages >= sacBacklog {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("bench: backlog of %s: %d of %d messages after 2 min", queue, q.Messages, sacBacklog)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// A consumer on its own channel: first delivery time, deliveries counted.
	type sacConsumer struct {
		ch    *amqp.Channel
		tag   string
		first chan int64 // nowNanos() of the first delivery
		n     atomic.Int64
		quit  chan struct{} // close: the consumer's goroutine closes its channel
		gone  chan struct{} // closed once it has
	}
	var hist Histogram
	var failovers, stalls atomic.Int64
	prefetch := max(cfg.Prefetch, 1)
	seq := 0
	start := func() (*sacConsumer, error) {
		ch, err := conn.Channel()
		if err != nil {
			return nil, fmt.Errorf("bench: sac channel: %w", err)
		}
		if err := ch.Qos(prefetch, 0, false); err != nil {
			return nil, fmt.Errorf("bench: qos: %w", err)
		}
		seq++
		c := &sacConsumer{ch: ch, tag: fmt.Sprintf("sac-%d", seq), first: make(chan int64, 1),
			quit: make(chan struct{}), gone: make(chan struct{})}
		ds, err := ch.Consume(queue, c.tag, false, false, false, false, nil)
		if err != nil {
			return nil, fmt.Errorf("bench: consume %s: %w", queue, err)
		}
		// The goroutine owns the channel: it acks and it closes, so no ack can follow the
		// channel.close on the wire (a method on a closed channel is a 504 connection error).
		f.goWork(func() error {
			defer close(c.gone)
			for {
				select {
				case d, ok := <-ds:
					if !ok { // cancelled: wait for quit to close the channel
						ds = nil
						continue
					}
					n := c.n.Add(1)
					if n == 1 {
						c.first <- nowNanos()
					}
					// Only the first sacWarmup are acked: then the prefetch fills and the
					// consumer takes nothing more, so each failover uses a bounded part of
					// the backlog. The rest go back to the queue when the channel closes.
					if n > sacWarmup {
						continue
					}
					if err := d.Ack(false); err != nil && !f.stop.Load() {
						return fmt.Errorf("bench: ack: %w", err)
					}
				case <-c.quit:
					c.ch.Close()
					return nil
				case <-f.done:
					return nil
				}
			}
		})
		return c, nil
	}
	// stop closes a consumer's channel (requeueing what it has unacked) and waits for it.
	stop := func(c *sacConsumer) {
		close(c.quit)
		<-c.gone
	}
	// wait returns the first delivery time of a consumer, 0 when the run stopped, or an error
	// after limit (errNoDelivery) or when the connection closed.
	errNoDelivery := errors.New("no delivery")
	wait := func(ch <-chan int64, limit time.Duration) (int64, error) {
		select {
		case t := <-ch:
			return t, nil
		case <-f.done:
			return 0, nil
		case e := <-connClosed:
			return 0, fmt.Errorf("bench: connection closed: %v", e)
		case <-time.After(limit):
			return 0, errNoDelivery
		}
	}
	active, err := start()
	if err != nil {
		return err
	}
	if _, err := wait(active.first, 10*time.Second); err != nil {
		return fmt.Errorf("bench: first consumer of %s: %w", queue, err)
	}
	t0 := time.Now()
	deadline := t0.Add(cfg.Duration)
	for time.Now().Before(deadline) && !f.stop.Load() && failovers.Load()+stalls.Load() < sacMaxFailovers() {
		next, err := start()
		if err != nil {
			return err
		}
		for active.n.Load() < sacWarmup && !f.stop.Load() {
			time.Sleep(time.Millisecond)
		}
		// A waiting consumer gets nothing until the active one goes.
		if next.n.Load() != 0 {
			return fmt.Errorf("bench: the waiting consumer %s got a delivery while %s was active: not single-active", next.tag, active.tag)
		}
		cancelAt := nowNanos()
		if err := active.ch.Cancel(active.tag, false); err != nil {
			return fmt.Errorf("bench: cancel: %w", err)
		}
		got, err := wait(next.first, sacStall)
		if errors.Is(err, errNoDelivery) {
			// A stall: the waiting consumer was not activated. Counted, then recovered from
			// with a fresh pair of consumers so the run goes on.
			stalls.Add(1)
			fmt.Fprintf(live, "stall: %s got nothing within %v of the cancel of %s\n", next.tag, sacStall, active.tag)
			stop(active)
			stop(next)
			if active, err = start(); err != nil {
				return err
			}
			if _, err := wait(active.first, 10*time.Second); err != nil {
				return fmt.Errorf("bench: a new consumer after a stall: %w", err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("bench: failover to %s: %w", next.tag, err)
		}
		if got == 0 {
			break
		}
		hist.Record(got - cancelAt)
		failovers.Add(1)
		stop(active)
		active = next
		fmt.Fprintf(live, "failover %d: %s\n", failovers.Load(), time.Duration(got-cancelAt))
	}
	res.Seconds = time.Since(t0).Seconds()
	res.Received = failovers.Load()
	res.Failed = stalls.Load()
	res.ConsumeRate = rate(res.Received, res.Seconds)
	res.Latency = summary(&hist)
	res.RSS = cfg.rss()
	return f.finish(queue)
}
