// Command orders runs an e-commerce order pipeline over any AMQP 0-9-1 broker: a topic exchange,
// one durable queue per subscribing service, a transactional order-processing step, payment
// retries with a redelivery delay and a delivery limit that end in a dead-letter queue, a
// queued real-time sync of customer records to a consumer system that is down for a while, and
// an order-events stream read from the start by analytics after the run and followed by an
// audit log that resumes from the offset it stored.
//
// It uses only github.com/rabbitmq/amqp091-go, so it runs unchanged against Warren or RabbitMQ.
// At the end it reconciles: every order is delivered, refunded or dead-lettered, exactly once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Config is one pipeline run.
type Config struct {
	URL    string
	Orders int
	// Rate is how many orders per second the storefront places; 0 places them as fast as it can.
	Rate float64
	Seed uint64

	// FailRate is the share of orders whose card is always declined: after the delivery limit
	// they are dead-lettered to orders.dead and cancelled.
	FailRate float64
	// FlakyRate is the share of orders whose card is declined FlakyFailures times, then accepted.
	FlakyRate     float64
	FlakyFailures int
	// UndeliverableRate is the share of paid orders that shipping cannot deliver: they are
	// cancelled and refunded.
	UndeliverableRate float64
	// ExpressRate is the share of orders placed as express: priority 9 on the priority queue
	// orders.processing (x-max-priority 9), so they overtake the standard ones waiting there.
	ExpressRate float64

	// DeliveryLimit is x-delivery-limit on the payment queue (N: delivered N+1 times at most).
	DeliveryLimit int
	// RetryDelay and RetryBackoff are Warren's x-redelivery-delay and x-redelivery-backoff on
	// the payment queue; RabbitMQ ignores them and redelivers at once.
	RetryDelay   time.Duration
	RetryBackoff float64

	// ReminderDelay is the x-delay of the payment reminder order processing schedules through
	// the delayed exchange orders.reminders with every payment request (reminder.go); 0: none.
	ReminderDelay time.Duration

	// CrashAfter makes order processing crash once, between acking its Nth order and committing
	// the transaction; 0 never crashes.
	CrashAfter int

	// Customers is how many customer records the integration system forwards, one every
	// CustomerInterval.
	Customers        int
	CustomerInterval time.Duration
	// SyncDowntime is how long the consumer system is stopped, after it has applied a quarter of
	// the records, and the order-events audit log after about a third of the events; 0 keeps
	// them running.
	SyncDowntime time.Duration

	Workers  int // consumers (channels) per service
	Prefetch int // basic.qos per consumer
	Timeout  time.Duration
	Tick     time.Duration // interval of the live line
	Out      io.Writer     // live lines and summary; nil discards them
	Logger   *slog.Logger  // nil = slog.Default()
}

// DefaultConfig returns the settings of `go run ./examples/orders` without flags.
func DefaultConfig() Config {
	return Config{
		URL:               "amqp://guest:guest@localhost:5672/",
		Orders:            1000,
		Rate:              250,
		Seed:              1,
		FailRate:          0.03,
		FlakyRate:         0.10,
		FlakyFailures:     2,
		UndeliverableRate: 0.02,
		ExpressRate:       0.10,
		DeliveryLimit:     3,
		RetryDelay:        200 * time.Millisecond,
		RetryBackoff:      2,
		ReminderDelay:     time.Second,
		CrashAfter:        100,
		Customers:         200,
		CustomerInterval:  10 * time.Millisecond,
		SyncDowntime:      2 * time.Second,
		Workers:           4,
		Prefetch:          16,
		Timeout:           5 * time.Minute,
		Tick:              time.Second,
	}
}

func (c Config) validate() error {
	switch {
	case c.Orders < 1:
		return errors.New("-orders must be at least 1")
	case c.ExpressRate < 0 || c.ExpressRate > 1:
		return fmt.Errorf("-express-rate %v must be between 0 and 1", c.ExpressRate)
	case c.FailRate < 0 || c.FlakyRate < 0 || c.UndeliverableRate < 0 ||
		c.FailRate+c.FlakyRate+c.UndeliverableRate > 1:
		return errors.New("-fail-rate, -flaky-rate and -undeliverable-rate must be >= 0 and add up to at most 1")
	case c.FlakyFailures < 0:
		return errors.New("-flaky-failures must be >= 0")
	case c.DeliveryLimit < 0:
		return errors.New("-delivery-limit must be >= 0")
	case c.RetryDelay < 0:
		return errors.New("-retry-delay must be >= 0")
	case c.ReminderDelay < 0:
		return errors.New("-reminder-delay must be >= 0")
	case c.RetryBackoff < 1:
		return errors.New("-retry-backoff must be >= 1")
	case c.CrashAfter < 0 || c.Customers < 0 || c.CustomerInterval < 0 || c.SyncDowntime < 0 || c.Rate < 0:
		return errors.New("-crash-after, -customers, -customer-interval, -sync-downtime and -rate must be >= 0")
	case c.Workers < 1 || c.Prefetch < 1:
		return errors.New("-workers and -prefetch must be at least 1")
	case c.Timeout <= 0:
		return errors.New("-timeout must be positive")
	}
	return nil
}

func main() {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("orders", flag.ExitOnError)
	fs.StringVar(&cfg.URL, "url", cfg.URL, "AMQP URL of the broker (Warren or RabbitMQ)")
	fs.IntVar(&cfg.Orders, "orders", cfg.Orders, "orders to place")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "orders placed per second (0 = as fast as possible)")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed that picks which orders get injected failures")
	fs.Float64Var(&cfg.FailRate, "fail-rate", cfg.FailRate, "share of orders whose payment always fails (dead-lettered, then cancelled)")
	fs.Float64Var(&cfg.FlakyRate, "flaky-rate", cfg.FlakyRate, "share of orders whose payment fails transiently and succeeds on retry")
	fs.IntVar(&cfg.FlakyFailures, "flaky-failures", cfg.FlakyFailures, "declines before a flaky payment succeeds (more than -delivery-limit means dead-lettered)")
	fs.Float64Var(&cfg.UndeliverableRate, "undeliverable-rate", cfg.UndeliverableRate, "share of orders that are paid, then cancelled by shipping and refunded")
	fs.Float64Var(&cfg.ExpressRate, "express-rate", cfg.ExpressRate, "share of orders placed as express (message priority 9 on the priority queue orders.processing)")
	fs.IntVar(&cfg.DeliveryLimit, "delivery-limit", cfg.DeliveryLimit, "x-delivery-limit of the payment queue")
	fs.DurationVar(&cfg.RetryDelay, "retry-delay", cfg.RetryDelay, "x-redelivery-delay of the payment queue (Warren only; RabbitMQ ignores it)")
	fs.Float64Var(&cfg.RetryBackoff, "retry-backoff", cfg.RetryBackoff, "x-redelivery-backoff of the payment queue (Warren only)")
	fs.DurationVar(&cfg.ReminderDelay, "reminder-delay", cfg.ReminderDelay, "payment reminder scheduled through the x-delayed-message exchange with every payment request (0 = none)")
	fs.IntVar(&cfg.CrashAfter, "crash-after", cfg.CrashAfter, "order processing crashes mid-transaction after this many orders (0 = never)")
	fs.IntVar(&cfg.Customers, "customers", cfg.Customers, "customer records the integration system forwards")
	fs.DurationVar(&cfg.CustomerInterval, "customer-interval", cfg.CustomerInterval, "time between two customer records")
	fs.DurationVar(&cfg.SyncDowntime, "sync-downtime", cfg.SyncDowntime, "how long the consumer system and the order-events audit log are stopped (0 = never stopped)")
	fs.IntVar(&cfg.Workers, "workers", cfg.Workers, "consumers per service")
	fs.IntVar(&cfg.Prefetch, "prefetch", cfg.Prefetch, "prefetch (basic.qos) per consumer")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "give up if the pipeline has not settled by then")
	_ = fs.Parse(os.Args[1:])
	cfg.Out = os.Stdout

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "orders:", err)
		os.Exit(1)
	}
	if !rep.Reconciled() {
		os.Exit(2)
	}
}
