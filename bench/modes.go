package bench

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// runChurn measures connection setup cost: each of -producers workers loops
// dial, channel.open, channel.close, connection.close for -duration.
func runChurn(cfg *Config, res *Result, live io.Writer) error {
	var (
		ok, failed atomic.Int64
		hist       Histogram
		stop       atomic.Bool
		wg         sync.WaitGroup
		firstErr   atomic.Value
	)
	cycle := func() error {
		if cfg.Client == "lean" {
			c, err := leanDial(cfg, "bench-churn", 4<<10)
			if err != nil {
				return err
			}
			defer c.close()
			if err := c.closeChannel(); err != nil {
				return fmt.Errorf("bench: churn channel close: %w", err)
			}
			return nil
		}
		conn, err := dial(cfg, "bench-churn", false)
		if err != nil {
			return err
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("bench: churn channel: %w", err)
		}
		if err := ch.Close(); err != nil {
			return fmt.Errorf("bench: churn channel close: %w", err)
		}
		if err := conn.Close(); err != nil {
			return fmt.Errorf("bench: churn connection close: %w", err)
		}
		return nil
	}
	start := time.Now()
	for i := 0; i < cfg.Producers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				t0 := nowNanos()
				if err := cycle(); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					// Do not spin on a refusing broker.
					time.Sleep(10 * time.Millisecond)
					continue
				}
				hist.Record(nowNanos() - t0)
				ok.Add(1)
			}
		}()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	deadline := time.NewTimer(cfg.Duration)
	defer deadline.Stop()
	var prevOK int64
	prev := &Snapshot{}
	for sec := 1; ; sec++ {
		select {
		case <-tick.C:
			cur := &Snapshot{}
			hist.AddTo(cur)
			iv := cur.Sub(prev)
			n := ok.Load()
			fmt.Fprintf(live, "t=%ds connections=%d/s failed=%d p50=%s p99=%s\n",
				sec, n-prevOK, failed.Load(), fmtDur(iv.Quantile(0.5)), fmtDur(iv.Quantile(0.99)))
			prevOK, prev = n, cur
			continue
		case <-deadline.C:
		}
		break
	}
	elapsed := time.Since(start).Seconds()
	n := ok.Load()
	res.RSS = cfg.rss()
	stop.Store(true)
	wg.Wait()
	res.Seconds = elapsed
	res.Connections = n
	res.ConnRate = rate(n, elapsed)
	res.Failed = failed.Load()
	snap := &Snapshot{}
	hist.AddTo(snap)
	res.ConnLatency = snap.Summary()
	if e, _ := firstErr.Load().(string); e != "" {
		res.Errors = append(res.Errors, e)
	}
	if n == 0 {
		return fmt.Errorf("bench: churn: no connection succeeded (%d failures)", res.Failed)
	}
	return nil
}

// runIdleConns opens -conns connections (16 dials in flight), holds them idle
// for -duration with heartbeats running, and counts how many survived.
func runIdleConns(cfg *Config, res *Result, live io.Writer) error {
	conns := make([]*amqp.Connection, cfg.Conns)
	closed := make([]chan *amqp.Error, cfg.Conns)
	var failed atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dial(cfg, fmt.Sprintf("bench-idle-%d", i), false)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			conns[i] = c
			closed[i] = c.NotifyClose(make(chan *amqp.Error, 1))
		}()
	}
	wg.Wait()
	res.OpenSeconds = time.Since(start).Seconds()
	var opened int64
	for _, c := range conns {
		if c != nil {
			opened++
		}
	}
	fmt.Fprintf(live, "opened %d connections in %.2fs, failed %d; holding for %s\n", opened, res.OpenSeconds, failed.Load(), cfg.Duration)
	// What idle connections cost the broker in CPU: heartbeats (amqp091-go asks for 10 s) and
	// whatever timers it keeps per connection. No messages: only the CPU fields are filled.
	cpu := startCPU(cfg.BrokerPID)
	time.Sleep(cfg.Duration)
	cpu.stop(res, 0)
	res.RSS = cfg.rss()
	var alive int64
	for i, c := range conns {
		if c == nil {
			continue
		}
		select {
		case <-closed[i]:
		default:
			if !c.IsClosed() {
				alive++
			}
		}
	}
	for _, c := range conns {
		if c != nil {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c.Close()
			}()
		}
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.Connections = opened
	res.Failed = failed.Load()
	res.Alive = alive
	if e, _ := firstErr.Load().(string); e != "" {
		res.Errors = append(res.Errors, e)
	}
	return nil
}

// runQueues declares -count queues back to back on one channel (each declare
// waits for declare-ok, as a client would), then deletes them the same way.
func runQueues(cfg *Config, res *Result) error {
	conn, err := dial(cfg, "bench-queues", false)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("bench: queues channel: %w", err)
	}
	names := make([]string, cfg.Count)
	for i := range names {
		names[i] = fmt.Sprintf("%s-q-%d", cfg.QueuePrefix, i+1)
	}
	start := time.Now()
	var declared int
	for _, q := range names {
		if _, err := ch.QueueDeclare(q, cfg.Persistent, false, false, false, nil); err != nil {
			err = fmt.Errorf("bench: declare %s: %w", q, err)
			res.Errors = append(res.Errors, err.Error())
			break
		}
		declared++
	}
	res.DeclareSeconds = time.Since(start).Seconds()
	res.RSS = cfg.rss()
	res.Declared = int64(declared)
	res.DeclareRate = rate(int64(declared), res.DeclareSeconds)
	if !cfg.Keep {
		if ch.IsClosed() {
			if ch, err = conn.Channel(); err != nil {
				return fmt.Errorf("bench: queues channel: %w", err)
			}
		}
		start := time.Now()
		for _, q := range names[:declared] {
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				return fmt.Errorf("bench: delete %s: %w", q, err)
			}
		}
		res.DeleteSeconds = time.Since(start).Seconds()
	}
	res.Seconds = res.DeclareSeconds + res.DeleteSeconds
	if len(res.Errors) > 0 {
		return fmt.Errorf("bench: queues: %s", res.Errors[0])
	}
	return nil
}
