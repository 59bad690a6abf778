package bench

import (
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The delayed mode (-mode delayed) measures an x-delayed-message exchange (RabbitMQ's
// delayed-message-exchange plugin, or Warren's own): one producer publishes -pmessages
// messages (default 100000) through a delayed direct exchange whose due times are spread
// evenly over -delay-span (default 1m), starting 2 s after the run starts; one
// consumer (autoack) measures each message's lateness, arrival minus due time, reported as the
// latency summary. The body carries the due time (8 bytes, the bench's monotonic clock), so
// -size is at least 8. A producer slower than the schedule publishes its late messages with
// x-delay 1. -persistent makes the exchange and queue durable and the messages persistent;
// -confirm W publishes with a confirm window. With -broker-pid the RSS reported is the largest
// sampled (once a second) over the run.

func init() { modes["delayed"] = true }

const delayedLead = 2 * time.Second

func runDelayed(cfg *Config, res *Result, live io.Writer) error {
	n := cfg.PMessages
	if n == 0 {
		n = 100_000
	}
	span := cfg.DelaySpan
	if span == 0 {
		span = time.Minute
	}
	if span < 0 {
		return fmt.Errorf("bench: -delay-span must be > 0")
	}
	size := max(cfg.Size, 8)
	conn, err := dial(cfg, "bench-delayed", false)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("bench: delayed channel: %w", err)
	}
	ex, q := cfg.QueuePrefix+"-delayed", cfg.QueuePrefix+"-1"
	if err := ch.ExchangeDeclare(ex, "x-delayed-message", cfg.Persistent, false, false, false, amqp.Table{"x-delayed-type": "direct"}); err != nil {
		return fmt.Errorf("bench: declare x-delayed-message exchange (does the broker have it?): %w", err)
	}
	if _, err := ch.QueueDeclare(q, cfg.Persistent, false, false, false, nil); err != nil {
		return fmt.Errorf("bench: declare queue %s: %w", q, err)
	}
	if err := ch.QueueBind(q, "k", ex, false, nil); err != nil {
		return fmt.Errorf("bench: bind: %w", err)
	}
	if !cfg.Keep {
		defer func() {
			if c, err := conn.Channel(); err == nil {
				_, _ = c.QueueDelete(q, false, false, false)
				_ = c.ExchangeDelete(ex, false, false)
			}
		}()
	}

	cconn, err := dial(cfg, "bench-delayed-consumer", false)
	if err != nil {
		return err
	}
	defer cconn.Close()
	cch, err := cconn.Channel()
	if err != nil {
		return fmt.Errorf("bench: delayed consumer channel: %w", err)
	}
	deliveries, err := cch.Consume(q, "", true, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("bench: consume %s: %w", q, err)
	}
	var (
		late            Histogram
		received, early atomic.Int64
		allIn           = make(chan struct{})
	)
	go func() {
		for d := range deliveries {
			due, ok := readStamp(d.Body)
			if !ok {
				continue
			}
			l := nowNanos() - due
			// The broker counts in whole milliseconds from its own receipt of the publish:
			// up to 1 ms early is its rounding, more would be a bug.
			if l < -int64(time.Millisecond) {
				early.Add(1)
			}
			late.Record(l)
			if received.Add(1) == n {
				close(allIn)
			}
		}
	}()

	mode := amqp.Transient
	if cfg.Persistent {
		mode = amqp.Persistent
	}
	var confirms chan amqp.Confirmation
	if cfg.Confirm > 0 {
		if err := ch.Confirm(false); err != nil {
			return fmt.Errorf("bench: confirm.select: %w", err)
		}
		confirms = ch.NotifyPublish(make(chan amqp.Confirmation, cfg.Confirm))
	}
	start := time.Now()
	t0 := nowNanos() + int64(delayedLead)
	step := float64(span) / float64(n)
	body := make([]byte, size)
	var rssMax atomic.Int64
	stopRSS := make(chan struct{})
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			rssMax.Store(max(rssMax.Load(), cfg.rss()))
			select {
			case <-tick.C:
			case <-stopRSS:
				return
			}
		}
	}()
	var outstanding int
	var published, confirmed, nacked int64
	for i := int64(0); i < n; i++ {
		now := nowNanos()
		due := t0 + int64(float64(i)*step)
		delay := (due - now + int64(time.Millisecond) - 1) / int64(time.Millisecond)
		if delay < 1 {
			delay = 1
		}
		putStamp(body, now+delay*int64(time.Millisecond))
		p := amqp.Publishing{DeliveryMode: mode, Body: body, Headers: amqp.Table{"x-delay": int32(delay)}}
		if err := ch.Publish(ex, "k", false, false, p); err != nil {
			return fmt.Errorf("bench: publish: %w", err)
		}
		published++
		if confirms != nil {
			outstanding++
			for outstanding >= cfg.Confirm {
				c := <-confirms
				outstanding--
				if c.Ack {
					confirmed++
				} else {
					nacked++
				}
			}
		}
		if cfg.Rate > 0 {
			if ahead := time.Duration(float64(i+1)/cfg.Rate*1e9) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
		if i%50_000 == 49_999 {
			fmt.Fprintf(live, "delayed: published %d, received %d, %.0fs\n", i+1, received.Load(), time.Since(start).Seconds())
		}
	}
	for ; outstanding > 0; outstanding-- {
		if c := <-confirms; c.Ack {
			confirmed++
		} else {
			nacked++
		}
	}
	res.PublishSeconds = time.Since(start).Seconds()
	res.Published = published
	res.PublishRate = rate(published, res.PublishSeconds)
	res.Confirmed, res.Nacked = confirmed, nacked
	timeout := delayedLead + span + time.Minute
	if cfg.DurationSet && cfg.Duration > timeout {
		timeout = cfg.Duration
	}
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	var waitErr error
wait:
	for {
		select {
		case <-allIn:
			break wait
		case <-tick.C:
			fmt.Fprintf(live, "delayed: received %d of %d, %.0fs\n", received.Load(), n, time.Since(start).Seconds())
		case <-time.After(time.Until(start.Add(timeout))):
			waitErr = fmt.Errorf("bench: delayed: %d of %d messages arrived within %v", received.Load(), n, timeout)
			break wait
		}
	}
	close(stopRSS)
	res.Seconds = time.Since(start).Seconds()
	res.Received = received.Load()
	res.Early = early.Load()
	var snap Snapshot
	late.AddTo(&snap)
	res.Latency = snap.Summary()
	res.RSS = max(rssMax.Load(), cfg.rss())
	if waitErr != nil {
		res.Errors = append(res.Errors, waitErr.Error())
	}
	return waitErr
}

// printDelayed is the summary of a delayed run.
func printDelayed(b *strings.Builder, r *Result) {
	fmt.Fprintf(b, "%-18s %d msgs in %.2fs (%.1f msgs/s), confirmed %d, nacked %d\n", "published:", r.Published, r.PublishSeconds, r.PublishRate, r.Confirmed, r.Nacked)
	fmt.Fprintf(b, "%-18s %d msgs, %d more than 1 ms early\n", "received:", r.Received, r.Early)
	printLat(b, "lateness", r.Latency)
}
