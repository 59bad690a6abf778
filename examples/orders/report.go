package main

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// Report is the reconciliation of one run.
type Report struct {
	Elapsed time.Duration
	Orders  int

	Delivered, Refunded, DeadLettered int
	Paid                              int
	PaymentAttempts, PaymentDeclines  int
	Flagged                           int            // orders the fraud check flagged (3+ declines)
	DeadReasons                       map[string]int // x-death reason -> messages
	RetryGaps                         []time.Duration

	// Priced counts the orders priced by the pricing service over direct reply-to.
	Priced int
	// RemindersSent and RemindersSkipped count the payment reminders that came due for unpaid
	// and for paid orders; RemindersOff says why there were none (reminder.go).
	RemindersSent, RemindersSkipped int
	ReminderMinWait                 time.Duration
	RemindersOff                    string

	Crashes, Restarts int
	// Redelivered counts orders that order processing received again after its crash.
	Redelivered int

	SyncPublished, SyncApplied, SyncOutOfOrder, SyncDuplicates int
	SyncStops, SyncBacklog                                     int

	// Events is what the order-events stream's readers found.
	Events eventReport

	Leftovers map[string]int
	// Problems lists every reconciliation failure; empty means the run reconciled.
	Problems []string
}

// Reconciled reports whether every check passed.
func (r *Report) Reconciled() bool { return len(r.Problems) == 0 }

func (p *pipeline) liveLine(elapsed time.Duration) string {
	l := p.led
	pub, applied := p.sync.snapshot()
	return fmt.Sprintf("%5.1fs  placed %5d  paid %5d  shipped %5d  failed %4d  dead-lettered %3d  settled %5d/%d  customers synced %d/%d",
		elapsed.Seconds(), l.placed.Load(), l.paid.Load(), l.shipped.Load(), l.failed.Load(), l.dead.Load(),
		l.terminal.Load(), len(p.orders), applied, pub)
}

// problemLimit caps how many orders one kind of problem lists by name.
const problemLimit = 5

func (p *pipeline) report(elapsed time.Duration, timedOut bool) *Report {
	cfg := p.cfg
	r := &Report{
		Elapsed: elapsed, Orders: len(p.orders),
		Paid:            int(p.led.paid.Load()),
		PaymentAttempts: p.gw.totalAttempts(),
		PaymentDeclines: int(p.led.failed.Load()),
		RetryGaps:       p.gw.retryGaps(),
		Crashes:         int(p.crashes.Load()),
		Restarts:        int(p.restarts.Load()),
		Redelivered:     int(p.redelivered.Load()),
		Priced:          int(p.priced.Load()),
	}
	problem := func(format string, args ...any) { r.Problems = append(r.Problems, fmt.Sprintf(format, args...)) }
	if timedOut {
		problem("timed out after %s with %d of %d orders settled and %d messages unhandled",
			cfg.Timeout, p.led.terminal.Load(), len(p.orders), p.outstanding.Load())
	}

	l := p.led
	l.mu.Lock()
	r.DeadReasons = maps.Clone(l.reasons)
	bad := map[string][]string{}
	note := func(kind, id string) { bad[kind] = append(bad[kind], id) }
	for _, o := range p.orders {
		outs := l.outcomes[o.ID]
		switch len(outs) {
		case 0:
			note("no outcome", o.ID)
		case 1:
		default:
			note("more than one outcome", fmt.Sprintf("%s %v", o.ID, outs))
		}
		for _, out := range outs {
			switch out {
			case outcomeDelivered:
				r.Delivered++
			case outcomeRefunded:
				r.Refunded++
			case outcomeDead:
				r.DeadLettered++
			}
		}
		want := expectedOutcome(cfg, o)
		if len(outs) == 1 && outs[0] != want {
			note("unexpected outcome", fmt.Sprintf("%s %s, want %s", o.ID, outs[0], want))
		}
		steps := l.steps[o.ID]
		// Steps that happen at most once per order; twice means a duplicated step.
		for _, s := range []string{"processed", keyPaymentRequested, keyPaymentProcessed, "reserved",
			"released", "prepared", "shipped", "delivered", "voided", "inventory-cancel"} {
			if steps[s] > 1 {
				note("step "+s+" twice", o.ID)
			}
		}
		if steps[keyPaymentRequested] != 1 {
			note("fraud check did not see exactly one payment.requested", o.ID)
		}
		if got, want := steps[keyPaymentFailed], expectedDeclines(cfg, o); got != want {
			note("declines", fmt.Sprintf("%s %d, want %d", o.ID, got, want))
		}
		if steps["flagged"] > 0 {
			r.Flagged++
		}
		paid := want != outcomeDead
		if paid != (steps[keyPaymentProcessed] == 1) {
			note("payment.processed seen by fraud check", o.ID)
		}
		if cfg.ReminderDelay > 0 && steps[keyPaymentReminder] != 1 {
			note("payment reminder not handled exactly once", o.ID)
		}
		if want == outcomeDead && steps["voided"] != 1 {
			note("dead-lettered order not cancelled (voided)", o.ID)
		}
		if want == outcomeRefunded && steps["released"] != 1 {
			note("refunded order's stock not released", o.ID)
		}
	}
	l.mu.Unlock()
	for _, kind := range slices.Sorted(maps.Keys(bad)) {
		ids := bad[kind]
		more := ""
		if len(ids) > problemLimit {
			more = fmt.Sprintf(" and %d more", len(ids)-problemLimit)
			ids = ids[:problemLimit]
		}
		problem("%s: %d orders (%s%s)", kind, len(bad[kind]), strings.Join(ids, ", "), more)
	}
	rm := p.rem
	rm.mu.Lock()
	r.RemindersSent, r.RemindersSkipped, r.ReminderMinWait, r.RemindersOff = rm.sent, rm.skipped, rm.minWait, rm.off
	if len(rm.early) > 0 {
		problem("payment reminders delivered before their %s delay: %d (%s)", cfg.ReminderDelay, len(rm.early), strings.Join(rm.early[:min(len(rm.early), problemLimit)], ", "))
	}
	rm.mu.Unlock()
	if r.Delivered+r.Refunded+r.DeadLettered != len(p.orders) {
		problem("outcomes add up to %d, not %d orders", r.Delivered+r.Refunded+r.DeadLettered, len(p.orders))
	}
	if r.DeadLettered > 0 && r.DeadReasons["delivery_limit"] != r.DeadLettered {
		// RabbitMQ before 3.10 and brokers without the reason report "rejected" instead.
		problem("x-death reasons %v, want delivery_limit for all %d", r.DeadReasons, r.DeadLettered)
	}

	// Stock: the catalog's mirror matches the inventory, and only delivered orders took stock.
	inv, cat := p.inv.snapshot(), p.cat.snapshot()
	want := map[string]int{}
	for _, s := range skus {
		want[s] = initialStock
	}
	for _, o := range p.orders {
		if expectedOutcome(cfg, o) == outcomeDelivered {
			want[o.SKU] -= o.Qty
		}
	}
	if !maps.Equal(inv, want) {
		problem("inventory stock %v, want %v", inv, want)
	}
	if !maps.Equal(cat, inv) {
		problem("catalog stock %v differs from inventory %v", cat, inv)
	}

	if cfg.CrashAfter > 0 && cfg.CrashAfter <= len(p.orders) {
		if r.Crashes != 1 {
			problem("order processing crashed %d times, want 1", r.Crashes)
		}
		if r.Redelivered == 0 {
			problem("order processing crashed but no order was redelivered to it")
		}
	}

	s := p.sync
	s.mu.Lock()
	r.SyncPublished, r.SyncApplied = s.published, s.applied
	r.SyncOutOfOrder, r.SyncDuplicates = s.outOfOrder, s.duplicates
	r.SyncStops, r.SyncBacklog = s.stops, s.backlog
	synced := len(s.customers)
	s.mu.Unlock()
	if r.SyncApplied != cfg.Customers || synced != cfg.Customers {
		problem("consumer system applied %d customer records (%d distinct), want %d", r.SyncApplied, synced, cfg.Customers)
	}
	if r.SyncOutOfOrder > 0 || r.SyncDuplicates > 0 {
		problem("consumer system saw %d records out of order and %d duplicates", r.SyncOutOfOrder, r.SyncDuplicates)
	}
	if cfg.SyncDowntime > 0 && cfg.Customers >= 4 && r.SyncStops != 1 {
		problem("consumer system stopped %d times, want 1", r.SyncStops)
	}
	return r
}

func (r *Report) print(w io.Writer, cfg Config) {
	pct := func(n int) string { return fmt.Sprintf("%5.1f%%", 100*float64(n)/float64(max(r.Orders, 1))) }
	fmt.Fprintf(w, "\nSummary after %.2fs\n", r.Elapsed.Seconds())
	fmt.Fprintf(w, "  orders placed      %6d\n", r.Orders)
	fmt.Fprintf(w, "    delivered        %6d %s\n", r.Delivered, pct(r.Delivered))
	fmt.Fprintf(w, "    refunded         %6d %s  (paid, undeliverable, cancelled)\n", r.Refunded, pct(r.Refunded))
	fmt.Fprintf(w, "    dead-lettered    %6d %s  (payment declined %d times, then orders.dead and cancelled; x-death reasons %v)\n",
		r.DeadLettered, pct(r.DeadLettered), cfg.DeliveryLimit+1, r.DeadReasons)
	fmt.Fprintf(w, "  payments           %6d charge attempts, %d declined, %d paid; fraud check flagged %d orders\n",
		r.PaymentAttempts, r.PaymentDeclines, r.Paid, r.Flagged)
	if len(r.RetryGaps) > 0 {
		var gaps []string
		ignored := false
		for k, g := range r.RetryGaps {
			d := time.Duration(float64(cfg.RetryDelay) * math.Pow(cfg.RetryBackoff, float64(k)))
			gaps = append(gaps, fmt.Sprintf("retry %d after %s (delay %s)", k+1, g.Round(time.Millisecond), d.Round(time.Millisecond)))
			ignored = ignored || g < d
		}
		fmt.Fprintf(w, "  shortest wait      %s\n", strings.Join(gaps, "; "))
		if ignored {
			fmt.Fprintf(w, "                     retries came sooner than x-redelivery-delay: the broker ignores it (RabbitMQ does)\n")
		}
	}
	fmt.Fprintf(w, "  pricing            %d orders priced by RPC over direct reply-to (amq.rabbitmq.reply-to)\n", r.Priced)
	if r.RemindersOff != "" {
		fmt.Fprintf(w, "  payment reminders  off: %s\n", r.RemindersOff)
	} else if cfg.ReminderDelay > 0 {
		fmt.Fprintf(w, "  payment reminders  %d sent (order unpaid when due), %d dropped (paid meanwhile); scheduled with x-delay %s, shortest wait %s\n",
			r.RemindersSent, r.RemindersSkipped, cfg.ReminderDelay, r.ReminderMinWait.Round(time.Millisecond))
	}
	fmt.Fprintf(w, "  order processing   %d crash(es) between ack and tx.commit, %d order(s) redelivered and committed once; services restarted %d time(s)\n",
		r.Crashes, r.Redelivered, r.Restarts)
	fmt.Fprintf(w, "  customer sync      %d/%d records applied in order (%d out of order, %d duplicates); consumer system stopped %d time(s), %d records queued when it came back\n",
		r.SyncApplied, r.SyncPublished, r.SyncOutOfOrder, r.SyncDuplicates, r.SyncStops, r.SyncBacklog)
	e := r.Events
	fmt.Fprintf(w, "  order-events       %d events in the stream; analytics (from first, after the run) counted %d placed, %d delivered, %d cancelled, %d declines\n",
		e.Logged, e.Placed, e.Delivered, e.Cancelled, e.Declines)
	fmt.Fprintf(w, "  audit log          %d events applied (%d missed, %d twice); stopped %d time(s), resumed at offset(s) %v and read %d events from there\n",
		e.AuditApplied, e.AuditMissed, e.AuditTwice, e.AuditStops, e.AuditResumedAt, e.AuditBacklog)
	if r.Reconciled() {
		fmt.Fprintf(w, "RECONCILED: every order delivered, refunded or dead-lettered, none twice; all queues empty\n")
		return
	}
	fmt.Fprintf(w, "NOT RECONCILED:\n")
	for _, pr := range r.Problems {
		fmt.Fprintf(w, "  - %s\n", pr)
	}
}
