//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Names of the soak's fixed topology. The durable queues get persistent confirmed messages
// whose every id is checked at the end; the transient queues get load only.
const (
	durableExchange = "soak.durable"
	durableQueues   = 4
	topicExchange   = "soak.topic"
	ttlQueue        = "soak.ttl"
	dlxExchange     = "soak.dlx"
	deadQueue       = "soak.dead"
	ttlMillis       = 300
)

var transientQueues = []struct {
	name, key string
	maxLen    int
}{
	{"soak.t.auto", "t.auto.#", 10000},
	{"soak.t.prefetch", "t.*.prefetch", 10000},
	{"soak.t.unread", "t.#", 1000}, // never consumed: max-length keeps dropping its head
}

// load is the shared state of the workers.
type load struct {
	url  string
	opts options
	errs *errorBook

	durable *tracker // persistent, confirmed, to the durable queues
	ttl     *tracker // persistent, confirmed, expired into soak.dead

	transPub, transCons atomic.Int64
	nacked              atomic.Int64
	churnCycles         atomic.Int64
	connCycles          atomic.Int64
	exclCycles          atomic.Int64

	// Resource alarm as the publishers saw it.
	blockedNow      atomic.Int64 // connections blocked at the moment
	blockedEvents   atomic.Int64
	unblockedEvents atomic.Int64
	inAlarm         atomic.Bool // an alarm cycle is running (blocked outside one is unexpected)
}

// dial opens a connection; abrupt returns a function that drops its TCP socket without the
// AMQP close handshake, as a crashing client would.
func (l *load) dial(name string) (*amqp.Connection, func(), error) {
	var raw net.Conn
	var mu sync.Mutex
	cfg := amqp.Config{
		Heartbeat:  10 * time.Second,
		Properties: amqp.Table{"connection_name": name},
		Dial: func(network, addr string) (net.Conn, error) {
			c, err := net.DialTimeout(network, addr, 10*time.Second)
			mu.Lock()
			raw = c
			mu.Unlock()
			return c, err
		},
	}
	c, err := amqp.DialConfig(l.url, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("dial: %w", err)
	}
	abrupt := func() {
		mu.Lock()
		defer mu.Unlock()
		if raw != nil {
			raw.Close()
		}
	}
	return c, abrupt, nil
}

// closeConn closes a connection without waiting long: a connection blocked by an alarm is not
// read by the broker, so its close-ok may only come when the alarm clears.
func closeConn(c *amqp.Connection) {
	_ = c.CloseDeadline(time.Now().Add(30 * time.Second))
}

// watchBlocked counts connection.blocked/unblocked on c until it closes.
func (l *load) watchBlocked(c *amqp.Connection) {
	ch := c.NotifyBlocked(make(chan amqp.Blocking, 4))
	go func() {
		blocked := false
		for b := range ch {
			switch {
			case b.Active && !blocked:
				blocked = true
				l.blockedNow.Add(1)
				l.blockedEvents.Add(1)
				if l.inAlarm.Load() {
					l.errs.expect("connection.blocked during an alarm")
				} else {
					l.errs.fail("alarm", fmt.Errorf("connection.blocked (%s) outside an alarm cycle", b.Reason))
				}
			case !b.Active && blocked:
				blocked = false
				l.blockedNow.Add(-1)
				l.unblockedEvents.Add(1)
			}
		}
		if blocked {
			l.blockedNow.Add(-1)
		}
	}()
}

// loop runs session until ctx ends, recording each error that ends a session while the run
// is still on, and pausing after one so a broken broker is not hammered.
func (l *load) loop(ctx context.Context, name string, session func(context.Context) error) {
	for ctx.Err() == nil {
		err := session(ctx)
		if err != nil && ctx.Err() == nil {
			l.errs.fail(name, err)
			sleep(ctx, time.Second)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func body(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

var bodies = [][]byte{body(16), body(200), body(1024), body(4096), body(64 << 10)}

// pickBody returns a body of a mostly small, sometimes large size.
func pickBody() []byte {
	r := rand.IntN(100)
	switch {
	case r < 30:
		return bodies[0]
	case r < 60:
		return bodies[1]
	case r < 85:
		return bodies[2]
	case r < 99:
		return bodies[3]
	default:
		return bodies[4]
	}
}

// setup declares the fixed topology.
func (l *load) setup() error {
	c, _, err := l.dial("soak-setup")
	if err != nil {
		return err
	}
	defer closeConn(c)
	ch, err := c.Channel()
	if err != nil {
		return err
	}
	steps := []func() error{
		func() error { return ch.ExchangeDeclare(durableExchange, "direct", true, false, false, false, nil) },
		func() error { return ch.ExchangeDeclare(topicExchange, "topic", false, false, false, false, nil) },
		func() error { return ch.ExchangeDeclare(dlxExchange, "fanout", true, false, false, false, nil) },
		func() error {
			_, err := ch.QueueDeclare(ttlQueue, true, false, false, false, amqp.Table{
				"x-message-ttl": int32(ttlMillis), "x-dead-letter-exchange": dlxExchange})
			return err
		},
		func() error { _, err := ch.QueueDeclare(deadQueue, true, false, false, false, nil); return err },
		func() error { return ch.QueueBind(deadQueue, "", dlxExchange, false, nil) },
	}
	for i := 0; i < durableQueues; i++ {
		name, key := fmt.Sprintf("soak.durable.%d", i), fmt.Sprintf("q%d", i)
		steps = append(steps,
			func() error { _, err := ch.QueueDeclare(name, true, false, false, false, nil); return err },
			func() error { return ch.QueueBind(name, key, durableExchange, false, nil) })
	}
	for _, q := range transientQueues {
		steps = append(steps,
			func() error {
				_, err := ch.QueueDeclare(q.name, false, false, false, false, amqp.Table{"x-max-length": int32(q.maxLen)})
				return err
			},
			func() error { return ch.QueueBind(q.name, q.key, topicExchange, false, nil) })
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	}
	return nil
}

// confirmedPublisher publishes persistent messages with confirms at rate msgs/s, routed by
// route(seq), recording every confirmed id in t. A nack is unexpected: nothing in the soak
// should make the broker refuse a message.
func (l *load) confirmedPublisher(ctx context.Context, name string, t *tracker, p int, rate int, exchange string, route func(uint64) string) {
	var seq uint64 // continues across sessions: ids stay unique
	l.loop(ctx, name, func(ctx context.Context) error {
		c, _, err := l.dial(name)
		if err != nil {
			return err
		}
		defer closeConn(c)
		l.watchBlocked(c)
		ch, err := c.Channel()
		if err != nil {
			return err
		}
		if err := ch.Confirm(false); err != nil {
			return err
		}
		// Each tick publishes a batch, then waits for its confirms: at most one batch in flight.
		const tick = 50 * time.Millisecond
		batch := max(1, rate*int(tick/time.Millisecond)/1000)
		tk := time.NewTicker(tick)
		defer tk.Stop()
		type pending struct {
			seq uint64
			dc  *amqp.DeferredConfirmation
		}
		sessionEnd := time.Now().Add(time.Duration(30+rand.IntN(90)) * time.Second)
		for ctx.Err() == nil && time.Now().Before(sessionEnd) {
			select {
			case <-ctx.Done():
				return nil
			case <-tk.C:
			}
			ps := make([]pending, 0, batch)
			for i := 0; i < batch; i++ {
				dc, err := ch.PublishWithDeferredConfirm(exchange, route(seq), false, false, amqp.Publishing{
					DeliveryMode: amqp.Persistent, MessageId: t.id(p, seq), Body: pickBody()})
				if err != nil {
					return fmt.Errorf("publish: %w", err)
				}
				ps = append(ps, pending{seq, dc})
				seq++
			}
			// A confirm may wait for an alarm to clear; far longer is a hang.
			wctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			for _, pd := range ps {
				ok, err := pd.dc.WaitContext(wctx)
				if err != nil {
					cancel()
					if ctx.Err() != nil {
						return nil
					}
					return fmt.Errorf("confirm of %s: %w", t.id(p, pd.seq), err)
				}
				if ok {
					t.confirm(p, pd.seq)
				} else {
					l.nacked.Add(1)
					l.errs.fail(name, fmt.Errorf("nack for %s", t.id(p, pd.seq)))
				}
			}
			cancel()
		}
		return nil
	})
}

// consumer consumes queue with manual acks and the given prefetch, nacking or rejecting with
// requeue about 1% of deliveries each (they come back and are acked later), and ends its
// session after a random time - by channel close, connection close or a dropped socket - so
// that unacked messages are requeued over and over. record is called with each acked id.
func (l *load) consumer(ctx context.Context, name, queue string, prefetch int, record func(amqp.Delivery)) {
	l.loop(ctx, name, func(ctx context.Context) error {
		c, abrupt, err := l.dial(name)
		if err != nil {
			return err
		}
		defer closeConn(c)
		ch, err := c.Channel()
		if err != nil {
			return err
		}
		if err := ch.Qos(prefetch, 0, false); err != nil {
			return err
		}
		ds, err := ch.Consume(queue, "", false, false, false, false, nil)
		if err != nil {
			return err
		}
		end := time.NewTimer(time.Duration(20+rand.IntN(100)) * time.Second)
		defer end.Stop()
		closed := c.NotifyClose(make(chan *amqp.Error, 1))
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-end.C:
				switch rand.IntN(3) {
				case 0:
					return ch.Close()
				case 1:
					return c.Close()
				default:
					abrupt()
					return nil
				}
			case e := <-closed:
				if e == nil {
					return errors.New("connection closed")
				}
				return e
			case d, ok := <-ds:
				if !ok {
					return fmt.Errorf("consumer of %s: delivery channel closed", queue)
				}
				var err error
				switch r := rand.IntN(100); {
				case r == 0:
					err = d.Nack(false, true)
					l.errs.expect("nack with requeue (by the soak)")
				case r == 1:
					err = d.Reject(true)
					l.errs.expect("reject with requeue (by the soak)")
				default:
					err = d.Ack(false)
					if err == nil {
						record(d)
					}
				}
				if err != nil {
					return fmt.Errorf("settle: %w", err)
				}
			}
		}
	})
}

// transientPublisher publishes transient messages to the topic exchange at rate msgs/s.
func (l *load) transientPublisher(ctx context.Context, name string, rate int) {
	keys := []string{"t.auto.x", "t.a.prefetch", "t.other", "t.auto.y.z"}
	l.loop(ctx, name, func(ctx context.Context) error {
		c, _, err := l.dial(name)
		if err != nil {
			return err
		}
		defer closeConn(c)
		l.watchBlocked(c)
		ch, err := c.Channel()
		if err != nil {
			return err
		}
		const tick = 20 * time.Millisecond
		batch := max(1, rate*int(tick/time.Millisecond)/1000)
		tk := time.NewTicker(tick)
		defer tk.Stop()
		end := time.Now().Add(time.Duration(30+rand.IntN(90)) * time.Second)
		for ctx.Err() == nil && time.Now().Before(end) {
			select {
			case <-ctx.Done():
				return nil
			case <-tk.C:
			}
			for i := 0; i < batch; i++ {
				if err := ch.Publish(topicExchange, keys[rand.IntN(len(keys))], false, false, amqp.Publishing{Body: pickBody()}); err != nil {
					return fmt.Errorf("publish: %w", err)
				}
				l.transPub.Add(1)
			}
		}
		return nil
	})
}

// autoAckConsumer consumes a transient queue in no-ack mode.
func (l *load) autoAckConsumer(ctx context.Context, name, queue string) {
	l.loop(ctx, name, func(ctx context.Context) error {
		c, _, err := l.dial(name)
		if err != nil {
			return err
		}
		defer closeConn(c)
		ch, err := c.Channel()
		if err != nil {
			return err
		}
		ds, err := ch.Consume(queue, "", true, false, false, false, nil)
		if err != nil {
			return err
		}
		end := time.NewTimer(time.Duration(30+rand.IntN(90)) * time.Second)
		defer end.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-end.C:
				return nil
			case _, ok := <-ds:
				if !ok {
					return fmt.Errorf("consumer of %s: delivery channel closed", queue)
				}
				l.transCons.Add(1)
			}
		}
	})
}

// expect404 checks that err is a 404 NOT_FOUND (what a passive declare of something deleted
// must get) and counts it; anything else is returned.
func (l *load) expect404(what string, err error) error {
	if err == nil {
		return fmt.Errorf("%s: passive declare succeeded after delete", what)
	}
	if amqpCode(err) != amqp.NotFound {
		return fmt.Errorf("%s: want 404 after delete: %w", what, err)
	}
	l.errs.expect("404 NOT_FOUND after delete")
	return nil
}

// topologyChurn declares, binds, uses, unbinds and deletes exchanges and queues in a loop,
// checking that what was deleted is gone (404 on a passive declare).
func (l *load) topologyChurn(ctx context.Context, name string) {
	var n int
	l.loop(ctx, name, func(ctx context.Context) error {
		c, _, err := l.dial(name)
		if err != nil {
			return err
		}
		defer closeConn(c)
		ch, err := c.Channel()
		if err != nil {
			return err
		}
		for i := 0; i < 200 && ctx.Err() == nil; i++ {
			n++
			ex, q := fmt.Sprintf("soak.churn.x%d", n), fmt.Sprintf("soak.churn.q%d", n)
			durable := n%2 == 0
			kind := []string{"direct", "topic", "fanout", "headers"}[n%4]
			if err := ch.ExchangeDeclare(ex, kind, durable, false, false, false, nil); err != nil {
				return fmt.Errorf("exchange.declare %s: %w", ex, err)
			}
			if _, err := ch.QueueDeclare(q, durable, false, false, false, amqp.Table{"x-max-length": int32(100)}); err != nil {
				return fmt.Errorf("queue.declare %s: %w", q, err)
			}
			args := amqp.Table{}
			if kind == "headers" {
				args = amqp.Table{"x-match": "all", "k": "v"}
			}
			if err := ch.QueueBind(q, "k.v", ex, false, args); err != nil {
				return fmt.Errorf("queue.bind: %w", err)
			}
			for j := 0; j < 3; j++ {
				if err := ch.Publish(ex, "k.v", false, false, amqp.Publishing{Headers: amqp.Table{"k": "v"}, Body: bodies[1]}); err != nil {
					return fmt.Errorf("publish: %w", err)
				}
			}
			// The publishes are asynchronous; get until all three arrived (a publish blocked by
			// an alarm arrives when it clears).
			got := 0
			deadline := time.Now().Add(2 * time.Minute)
			for got < 3 && time.Now().Before(deadline) && ctx.Err() == nil {
				_, ok, err := ch.Get(q, true)
				if err != nil {
					return fmt.Errorf("basic.get: %w", err)
				}
				if ok {
					got++
				} else {
					sleep(ctx, 5*time.Millisecond)
				}
			}
			if got < 3 && ctx.Err() == nil {
				return fmt.Errorf("%s: got %d of 3 messages published through %s exchange %s", q, got, kind, ex)
			}
			if err := ch.QueueUnbind(q, "k.v", ex, args); err != nil {
				return fmt.Errorf("queue.unbind: %w", err)
			}
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				return fmt.Errorf("queue.delete: %w", err)
			}
			if err := ch.ExchangeDelete(ex, false, false); err != nil {
				return fmt.Errorf("exchange.delete: %w", err)
			}
			// Passive declares of what was deleted: 404, which closes the channel.
			_, err := ch.QueueDeclarePassive(q, durable, false, false, false, nil)
			if err := l.expect404("queue "+q, err); err != nil {
				return err
			}
			if ch, err = c.Channel(); err != nil {
				return err
			}
			err = ch.ExchangeDeclarePassive(ex, kind, durable, false, false, false, nil)
			if err := l.expect404("exchange "+ex, err); err != nil {
				return err
			}
			if ch, err = c.Channel(); err != nil {
				return err
			}
			l.churnCycles.Add(1)
			sleep(ctx, 100*time.Millisecond)
		}
		return nil
	})
}

// exclusiveChurn uses server-named exclusive queues and auto-delete queues, then checks they
// went with their connection or their last consumer.
func (l *load) exclusiveChurn(ctx context.Context, name string) {
	l.loop(ctx, name, func(ctx context.Context) error {
		checker, _, err := l.dial(name + "-checker")
		if err != nil {
			return err
		}
		defer closeConn(checker)
		for i := 0; i < 50 && ctx.Err() == nil; i++ {
			c, abrupt, err := l.dial(name)
			if err != nil {
				return err
			}
			ch, err := c.Channel()
			if err != nil {
				closeConn(c)
				return err
			}
			q, err := ch.QueueDeclare("", false, true, true, false, nil)
			if err != nil {
				closeConn(c)
				return fmt.Errorf("exclusive queue.declare: %w", err)
			}
			ad, err := ch.QueueDeclare(fmt.Sprintf("soak.autodelete.%d.%d", time.Now().UnixNano(), i), false, true, false, false, nil)
			if err != nil {
				closeConn(c)
				return fmt.Errorf("auto-delete queue.declare: %w", err)
			}
			ds, err := ch.Consume(q.Name, "", true, false, false, false, nil)
			if err != nil {
				closeConn(c)
				return err
			}
			if _, err := ch.Consume(ad.Name, "ad", false, false, false, false, nil); err != nil {
				closeConn(c)
				return err
			}
			if err := ch.Publish("", q.Name, false, false, amqp.Publishing{Body: bodies[0]}); err != nil {
				closeConn(c)
				return err
			}
			select {
			case <-ds:
			case <-time.After(2 * time.Minute):
				closeConn(c)
				return fmt.Errorf("exclusive queue %s: no delivery of a message published to it", q.Name)
			case <-ctx.Done():
				closeConn(c)
				return nil
			}
			// The auto-delete queue goes with its last consumer.
			if err := ch.Cancel("ad", false); err != nil {
				closeConn(c)
				return err
			}
			if i%2 == 0 {
				abrupt()
			} else {
				closeConn(c)
			}
			cch, err := checker.Channel()
			if err != nil {
				return err
			}
			// The exclusive queue goes with its connection: after an abrupt close the broker
			// notices the dropped socket shortly, so poll.
			deadline := time.Now().Add(30 * time.Second)
			for {
				_, err = cch.QueueDeclarePassive(q.Name, false, true, true, false, nil)
				if err == nil || amqpCode(err) == amqp.ResourceLocked {
					if err == nil {
						_ = cch.Close()
					}
					if time.Now().After(deadline) {
						return fmt.Errorf("exclusive queue %s still there 30 s after its connection closed", q.Name)
					}
					if cch, err = checker.Channel(); err != nil {
						return err
					}
					sleep(ctx, 50*time.Millisecond)
					continue
				}
				break
			}
			if err := l.expect404("exclusive queue", err); err != nil {
				return err
			}
			if cch, err = checker.Channel(); err != nil {
				return err
			}
			_, err = cch.QueueDeclarePassive(ad.Name, false, true, false, false, nil)
			if err := l.expect404("auto-delete queue", err); err != nil {
				return err
			}
			l.exclCycles.Add(1)
			sleep(ctx, 200*time.Millisecond)
		}
		return nil
	})
}

// connChurn opens connections with a few channels and closes them, cleanly or by dropping
// the socket.
func (l *load) connChurn(ctx context.Context, name string) {
	l.loop(ctx, name, func(ctx context.Context) error {
		for i := 0; i < 100 && ctx.Err() == nil; i++ {
			c, abrupt, err := l.dial(name)
			if err != nil {
				return err
			}
			n := 1 + rand.IntN(10)
			for j := 0; j < n; j++ {
				ch, err := c.Channel()
				if err != nil {
					closeConn(c)
					return err
				}
				if err := ch.Qos(1+rand.IntN(100), 0, false); err != nil {
					closeConn(c)
					return err
				}
				if j%2 == 0 {
					if err := ch.Close(); err != nil {
						closeConn(c)
						return err
					}
				}
			}
			if rand.IntN(4) == 0 {
				abrupt()
			} else if err := c.Close(); err != nil {
				return fmt.Errorf("connection.close: %w", err)
			}
			l.connCycles.Add(1)
			sleep(ctx, time.Duration(100+rand.IntN(200))*time.Millisecond)
		}
		return nil
	})
}
