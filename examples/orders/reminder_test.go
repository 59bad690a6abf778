package main

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// Every order processed gets one payment reminder through the delayed exchange, never before
// its delay; the orders whose payment is declined for good are never paid, so theirs are sent.
func TestPaymentReminders(t *testing.T) {
	cfg := DefaultConfig()
	cfg.URL = startWarren(t)
	cfg.Orders, cfg.Rate = 100, 0
	cfg.FailRate, cfg.FlakyRate, cfg.UndeliverableRate = 0.10, 0, 0
	cfg.RetryDelay = 100 * time.Millisecond // declined for good after 100+200+400 ms
	cfg.ReminderDelay = 300 * time.Millisecond
	cfg.CrashAfter = 30
	cfg.Customers, cfg.SyncDowntime = 10, 0
	cfg.Timeout = 25 * time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	var out bytes.Buffer
	cfg.Out = &out
	rep, err := run(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Reconciled() {
		t.Fatalf("not reconciled: %v\n%s", rep.Problems, out.String())
	}
	if rep.RemindersOff != "" {
		t.Fatalf("reminders off against Warren: %s", rep.RemindersOff)
	}
	if got := rep.RemindersSent + rep.RemindersSkipped; got != cfg.Orders {
		t.Errorf("%d reminders handled, want one per order (%d)", got, cfg.Orders)
	}
	if rep.RemindersSent < rep.DeadLettered || rep.DeadLettered != 10 {
		t.Errorf("%d reminders sent, %d orders never paid: each of those needs one", rep.RemindersSent, rep.DeadLettered)
	}
	if rep.ReminderMinWait < cfg.ReminderDelay-time.Millisecond {
		t.Errorf("a reminder came after %s, before its %s delay", rep.ReminderMinWait, cfg.ReminderDelay)
	}
	if !strings.Contains(out.String(), "payment reminders") {
		t.Errorf("summary without the reminders line:\n%s", out.String())
	}
	t.Logf("%d sent, %d dropped, shortest wait %s", rep.RemindersSent, rep.RemindersSkipped, rep.ReminderMinWait)
}
