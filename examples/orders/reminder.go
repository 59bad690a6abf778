package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Payment reminders go through a delayed-message exchange (type x-delayed-message, RabbitMQ's
// rabbitmq_delayed_message_exchange plugin or Warren's own): when order processing requests a
// payment it also schedules, in the same transaction, a reminder with x-delay
// Config.ReminderDelay. The broker holds it (durably) and routes it to orders.reminders when it
// is due; the reminder service then reminds the customer if the order is still unpaid, or
// drops the reminder if payment went through meanwhile. A broker without the exchange type
// (RabbitMQ's Debian package lacks the plugin) refuses the declare: the run goes on without
// reminders and says so.
const (
	exchangeReminders  = "orders.reminders"
	queueReminders     = "orders.reminders"
	keyPaymentReminder = "payment.reminder"
)

// Reminder is the body of a scheduled payment reminder.
type Reminder struct {
	Order Order `json:"order"`
	// ScheduledMs is when it was published (unix ms); it must not arrive before
	// ScheduledMs + DelayMs.
	ScheduledMs int64 `json:"scheduled_ms"`
	DelayMs     int64 `json:"delay_ms"`
}

// reminders is the reminder service's bookkeeping.
type reminders struct {
	mu      sync.Mutex
	sent    int           // order still unpaid when due: the customer was reminded
	skipped int           // paid before it was due: dropped
	early   []string      // arrived before it was due
	minWait time.Duration // shortest time from scheduling to arrival
	off     string        // why reminders are off ("" when on)
}

// declareReminders declares the delayed exchange on a connection of its own: a broker without
// the x-delayed-message type answers with a connection error (503 COMMAND_INVALID), which
// turns reminders off instead of failing the run.
func declareReminders(cfg Config) (off string, err error) {
	conn, err := dial(cfg.URL, "orders-admin-reminders")
	if err != nil {
		return "", err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return "", fmt.Errorf("open channel: %w", err)
	}
	err = ch.ExchangeDeclare(exchangeReminders, "x-delayed-message", true, false, false, false, amqp.Table{"x-delayed-type": "direct"})
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.CommandInvalid {
		return "the broker has no x-delayed-message exchange type (" + ae.Reason + ")", nil
	}
	if err != nil {
		return "", fmt.Errorf("declare exchange %s: %w", exchangeReminders, err)
	}
	return "", nil
}

// scheduleReminder publishes an order's payment reminder inside order processing's
// transaction: it is scheduled only if the order's ack and payment request commit.
func (pb publisher) scheduleReminder(ctx context.Context, o Order) error {
	delay := pb.p.cfg.ReminderDelay.Milliseconds()
	b, err := json.Marshal(Reminder{Order: o, ScheduledMs: time.Now().UnixMilli(), DelayMs: delay})
	if err != nil {
		return fmt.Errorf("encode reminder: %w", err)
	}
	n := pb.p.copies(exchangeReminders, keyPaymentReminder)
	pb.p.outstanding.Add(n)
	err = pb.ch.PublishWithContext(ctx, exchangeReminders, keyPaymentReminder, false, false, amqp.Publishing{
		ContentType: "application/json", DeliveryMode: amqp.Persistent, Type: keyPaymentReminder,
		Headers: amqp.Table{"x-delay": delay}, Body: b,
	})
	if err != nil {
		pb.p.outstanding.Add(-n)
		return fmt.Errorf("publish %s: %w", keyPaymentReminder, err)
	}
	return nil
}

// reminderCopies is how many queue copies a scheduled reminder makes (0 with reminders off).
func (p *pipeline) reminderCopies() int64 {
	if p.cfg.ReminderDelay <= 0 {
		return 0
	}
	return p.copies(exchangeReminders, keyPaymentReminder)
}

// remind is the reminder service: a due reminder of an unpaid order reminds the customer; one
// of an order paid meanwhile is dropped.
func (p *pipeline) remind(_ context.Context, _ publisher, d amqp.Delivery) error {
	var r Reminder
	if err := decode(d, &r); err != nil {
		return err
	}
	wait := time.Since(time.UnixMilli(r.ScheduledMs))
	paid := p.led.count(r.Order.ID, keyPaymentProcessed) > 0
	p.led.add(r.Order.ID, keyPaymentReminder)
	rm := p.rem
	rm.mu.Lock()
	// The broker counts whole milliseconds from its own receipt of the commit.
	if wait < time.Duration(r.DelayMs-1)*time.Millisecond {
		rm.early = append(rm.early, fmt.Sprintf("%s after %s", r.Order.ID, wait.Round(time.Millisecond)))
	}
	if rm.minWait == 0 || wait < rm.minWait {
		rm.minWait = wait
	}
	if paid {
		rm.skipped++
	} else {
		rm.sent++
	}
	rm.mu.Unlock()
	return p.done(d)
}
