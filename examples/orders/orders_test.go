package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/warrenmq/warren/embedded"
)

// startWarren runs a Warren broker in-process with its own data directory (the pipeline relies on
// durable queues and persistent messages) for the duration of the test.
func startWarren(t *testing.T) string {
	t.Helper()
	return embedded.NewTestBrokerWith(t, embedded.Options{DataDir: t.TempDir()}).URL()
}

func TestPipelineReconciles(t *testing.T) {
	tests := []struct {
		name string
		cfg  func(*Config)
		// want is the exact outcome split, which follows from the seed and the rates.
		wantDelivered, wantRefunded, wantDead int
		wantDeclines                          int
	}{
		{
			name: "failures, crash and consumer downtime",
			cfg: func(c *Config) {
				c.FailRate, c.FlakyRate, c.FlakyFailures, c.UndeliverableRate = 0.05, 0.10, 2, 0.05
				c.CrashAfter = 50
				c.SyncDowntime = 300 * time.Millisecond
			},
			// 10 declined cards (4 declines each, then dead), 20 flaky (2 declines, then paid),
			// 10 undeliverable (paid, then refunded).
			wantDelivered: 180, wantRefunded: 10, wantDead: 10, wantDeclines: 10*4 + 20*2,
		},
		{
			name: "flaky cards beyond the delivery limit are dead-lettered",
			cfg: func(c *Config) {
				c.FailRate, c.FlakyRate, c.FlakyFailures, c.UndeliverableRate = 0, 0.05, 5, 0
				c.CrashAfter = 0
				c.SyncDowntime = 0
			},
			wantDelivered: 190, wantDead: 10, wantDeclines: 10 * 4,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.URL = startWarren(t)
			cfg.Orders = 200
			cfg.Rate = 0
			cfg.DeliveryLimit = 3
			cfg.RetryDelay = 20 * time.Millisecond
			cfg.RetryBackoff = 2
			cfg.Customers = 100
			cfg.CustomerInterval = time.Millisecond
			cfg.Timeout = 25 * time.Second
			cfg.Tick = 500 * time.Millisecond
			cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
			tt.cfg(&cfg)
			var out bytes.Buffer
			cfg.Out = &out

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			rep, err := run(ctx, cfg)
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			t.Logf("output:\n%s", out.String())
			if !rep.Reconciled() {
				t.Fatalf("not reconciled: %v", rep.Problems)
			}
			if rep.Delivered != tt.wantDelivered || rep.Refunded != tt.wantRefunded || rep.DeadLettered != tt.wantDead {
				t.Errorf("delivered/refunded/dead = %d/%d/%d, want %d/%d/%d",
					rep.Delivered, rep.Refunded, rep.DeadLettered, tt.wantDelivered, tt.wantRefunded, tt.wantDead)
			}
			if rep.Priced != cfg.Orders {
				t.Errorf("%d orders priced over direct reply-to, want %d", rep.Priced, cfg.Orders)
			}
			if rep.PaymentDeclines != tt.wantDeclines {
				t.Errorf("payment declines = %d, want %d", rep.PaymentDeclines, tt.wantDeclines)
			}
			if tt.wantDead > 0 && rep.DeadReasons["delivery_limit"] != tt.wantDead {
				t.Errorf("x-death reasons = %v, want delivery_limit x%d", rep.DeadReasons, tt.wantDead)
			}
			// x-redelivery-delay with backoff: the k-th retry waits at least delay*backoff^(k-1).
			for k, gap := range rep.RetryGaps {
				min := time.Duration(float64(cfg.RetryDelay) * math.Pow(cfg.RetryBackoff, float64(k)))
				if gap < min {
					t.Errorf("retry %d came after %v, want at least %v (x-redelivery-delay)", k+1, gap, min)
				}
			}
			if tt.wantDeclines > 0 && len(rep.RetryGaps) == 0 {
				t.Error("no retries measured")
			}
			if rep.SyncApplied != cfg.Customers || rep.SyncOutOfOrder != 0 || rep.SyncDuplicates != 0 {
				t.Errorf("sync applied %d (out of order %d, duplicates %d), want %d in order",
					rep.SyncApplied, rep.SyncOutOfOrder, rep.SyncDuplicates, cfg.Customers)
			}
			if cfg.SyncDowntime > 0 && rep.SyncBacklog == 0 {
				t.Error("consumer system had no backlog to catch up after its downtime")
			}
			// The order-events stream: analytics read it all from first after the run; the
			// audit log, down for a while, resumed after the offset it stored.
			e := rep.Events
			if e.Placed != cfg.Orders || e.Delivered != tt.wantDelivered || e.Cancelled != tt.wantRefunded+tt.wantDead || e.Declines != tt.wantDeclines {
				t.Errorf("order-events read by analytics: %+v", e)
			}
			if e.AuditApplied != e.Logged || e.AuditMissed != 0 || e.AuditTwice != 0 {
				t.Errorf("audit log applied %d of %d events, %d missed, %d twice", e.AuditApplied, e.Logged, e.AuditMissed, e.AuditTwice)
			}
			if cfg.SyncDowntime > 0 {
				if e.AuditStops != 1 || len(e.AuditResumedAt) != 1 || e.AuditResumedAt[0] <= 0 || e.AuditBacklog == 0 {
					t.Errorf("audit log stopped %d time(s), resumed at %v, read %d events after: want one stop mid-stream",
						e.AuditStops, e.AuditResumedAt, e.AuditBacklog)
				}
			}
		})
	}
}

func TestPlanOrdersIsDeterministic(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Orders, cfg.FailRate, cfg.FlakyRate, cfg.UndeliverableRate = 200, 0.05, 0.10, 0.05
	a, b := planOrders(cfg), planOrders(cfg)
	counts := map[string]int{}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("order %d differs between two plans: %+v vs %+v", i, a[i], b[i])
		}
		counts[expectedOutcome(cfg, a[i])]++
	}
	if counts[outcomeDead] != 10 || counts[outcomeRefunded] != 10 || counts[outcomeDelivered] != 180 {
		t.Errorf("outcomes %v, want 10 dead, 10 refunded, 180 delivered", counts)
	}
}

// Express orders are about ExpressRate of the plan and do not change which orders get the
// injected failures.
func TestPlanOrdersExpress(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Orders, cfg.ExpressRate = 2000, 0.25
	plan := planOrders(cfg)
	cfg.ExpressRate = 0
	plain := planOrders(cfg)
	express := 0
	for i := range plan {
		if plan[i].Express {
			express++
		}
		o := plan[i]
		o.Express = false
		if o != plain[i] {
			t.Fatalf("order %d changed with the express rate: %+v vs %+v", i, plan[i], plain[i])
		}
	}
	if express < 400 || express > 600 {
		t.Errorf("%d express orders of 2000 at rate 0.25", express)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"defaults", func(*Config) {}, true},
		{"no orders", func(c *Config) { c.Orders = 0 }, false},
		{"rates over one", func(c *Config) { c.FailRate, c.FlakyRate = 0.6, 0.6 }, false},
		{"express rate over one", func(c *Config) { c.ExpressRate = 1.5 }, false},
		{"backoff below one", func(c *Config) { c.RetryBackoff = 0.5 }, false},
		{"no workers", func(c *Config) { c.Workers = 0 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.mod(&cfg)
			if err := cfg.validate(); (err == nil) != tt.ok {
				t.Errorf("validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestCopies(t *testing.T) {
	p := &pipeline{cfg: DefaultConfig()}
	tests := []struct {
		exchange, key string
		want          int64
	}{
		{exchangeOrders, keyOrderPlaced, 1},
		{exchangeOrders, keyPaymentRequested, 2}, // payment, fraud check
		{exchangeOrders, keyPaymentProcessed, 2}, // inventory, fraud check
		{exchangeOrders, keyPaymentFailed, 1},
		{exchangeOrders, keyOrderCancelled, 2}, // inventory, refund
		{exchangeOrders, keyStatusUpdated, 1},
		{exchangeOrders, "payment.refund.issued", 0},
		{exchangeCustomers, keyCustomerUpsert, 1},
	}
	for _, tt := range tests {
		if got := p.copies(tt.exchange, tt.key); got != tt.want {
			t.Errorf("copies(%s, %s) = %d, want %d", tt.exchange, tt.key, got, tt.want)
		}
	}
	for _, m := range []struct {
		pattern, key string
		want         bool
	}{{"a.#", "a", true}, {"#.c", "a.b.c", true}, {"a.*", "a.b.c", false}, {"*", "", true}} {
		if got := topicMatch(m.pattern, m.key); got != m.want {
			t.Errorf("topicMatch(%q, %q) = %v", m.pattern, m.key, got)
		}
	}
}

// The audit log's bookkeeping: an offset applied a second time (a consumer that resumed at
// the stored offset instead of the one after it) is counted, and the downtime comes once.
func TestAuditLogApply(t *testing.T) {
	a := newAuditLog()
	if got := a.nextOffset(); got != "first" {
		t.Fatalf("first connect at %v, want first", got)
	}
	for off := int64(0); off < 3; off++ {
		end, down := a.apply(logged{Offset: off, Key: keyOrderPlaced}, 3)
		if end || down != (off == 2) {
			t.Fatalf("offset %d: end %v down %v", off, end, down)
		}
	}
	if got := a.nextOffset(); got != int64(3) {
		t.Fatalf("resume at %v, want 3 (the stored offset + 1)", got)
	}
	a.apply(logged{Offset: 2, Key: keyOrderPlaced}, 3) // a resume at the stored offset
	if a.twice != 1 || a.stops != 1 {
		t.Fatalf("twice %d stops %d, want 1 and 1", a.twice, a.stops)
	}
	if end, _ := a.apply(logged{Offset: 9, Key: keyEventsEnd}, 3); !end || !a.done {
		t.Fatal("the end marker did not end the audit log")
	}
}
