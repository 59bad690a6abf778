package main

import (
	"fmt"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// queueDef is one queue of the example and what it is bound to.
type queueDef struct {
	name     string
	exchange string
	keys     []string
	args     amqp.Table
	// stream: an x-queue-type: stream queue, read later rather than drained: not counted as
	// a copy to handle, never "left over".
	stream bool
}

// topology lists every queue. The payment queue is the only one with retry arguments; it is a
// quorum queue because RabbitMQ honours x-delivery-limit only there (Warren on any queue).
func topology(cfg Config) []queueDef {
	payment := amqp.Table{
		"x-queue-type":           "quorum",
		"x-delivery-limit":       int64(cfg.DeliveryLimit),
		"x-dead-letter-exchange": exchangeDLX,
	}
	if cfg.RetryDelay > 0 {
		// Warren extensions; RabbitMQ accepts and ignores unknown x- arguments.
		payment["x-redelivery-delay"] = cfg.RetryDelay.Milliseconds()
		payment["x-redelivery-backoff"] = cfg.RetryBackoff
	}
	var reminders []queueDef
	if cfg.ReminderDelay > 0 {
		// Fed by the delayed exchange orders.reminders (declared by declareReminders).
		reminders = append(reminders, queueDef{name: queueReminders, exchange: exchangeReminders, keys: []string{keyPaymentReminder}})
	}
	return append(reminders, []queueDef{
		// A priority queue: express orders (priority 9) overtake the standard ones waiting.
		{name: queueProcessing, exchange: exchangeOrders, keys: []string{keyOrderPlaced}, args: amqp.Table{"x-max-priority": int32(expressPriority)}},
		{name: queuePayment, exchange: exchangeOrders, keys: []string{keyPaymentRequested}, args: payment},
		{name: queueInventory, exchange: exchangeOrders, keys: []string{keyPaymentProcessed, keyOrderCancelled}},
		{name: queueCatalog, exchange: exchangeOrders, keys: []string{keyInventoryUpdated}},
		{name: queueShipping, exchange: exchangeOrders, keys: []string{keyShippingPrepared}},
		{name: queueNotify, exchange: exchangeOrders, keys: []string{keyStatusUpdated}},
		{name: queueRefund, exchange: exchangeOrders, keys: []string{keyOrderCancelled}},
		{name: queueFraud, exchange: exchangeOrders, keys: []string{"payment.*"}},
		{name: queueDead, exchange: exchangeDLX, keys: []string{""}},
		{name: queueCustomers, exchange: exchangeCustomers, keys: []string{keyCustomerUpsert}},
		// Every order event, kept: read from the start by analytics, followed by the audit log.
		{name: queueEvents, exchange: exchangeOrders, keys: []string{"#"}, args: eventsArgs, stream: true},
	}...)
}

// declare creates the exchanges and queues. The queues are deleted first: a demo run starts
// from empty queues, and a run with other -delivery-limit or -retry-delay flags would otherwise
// fail with PRECONDITION_FAILED on the payment queue's changed arguments.
func declare(conn *amqp.Connection, cfg Config) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	for _, ex := range []struct{ name, kind string }{
		{exchangeOrders, amqp.ExchangeTopic},
		{exchangeDLX, amqp.ExchangeFanout},
		{exchangeCustomers, amqp.ExchangeDirect},
	} {
		if err := ch.ExchangeDeclare(ex.name, ex.kind, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare exchange %s: %w", ex.name, err)
		}
	}
	for _, q := range topology(cfg) {
		if _, err := ch.QueueDelete(q.name, false, false, false); err != nil {
			return fmt.Errorf("delete queue %s: %w", q.name, err)
		}
		if _, err := ch.QueueDeclare(q.name, true, false, false, false, q.args); err != nil {
			return fmt.Errorf("declare queue %s: %w", q.name, err)
		}
		for _, k := range q.keys {
			if err := ch.QueueBind(q.name, k, q.exchange, false, nil); err != nil {
				return fmt.Errorf("bind queue %s to %s with %q: %w", q.name, q.exchange, k, err)
			}
		}
	}
	// The pricing service's request queue (default exchange; replies over direct reply-to).
	if _, err := ch.QueueDelete(queuePricing, false, false, false); err != nil {
		return fmt.Errorf("delete queue %s: %w", queuePricing, err)
	}
	if _, err := ch.QueueDeclare(queuePricing, false, false, false, false, nil); err != nil {
		return fmt.Errorf("declare queue %s: %w", queuePricing, err)
	}
	return nil
}

// leftovers returns the queues that still hold ready messages after the run.
func leftovers(conn *amqp.Connection, cfg Config) (map[string]int, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	left := map[string]int{}
	for _, q := range topology(cfg) {
		if q.stream {
			continue // a stream keeps its messages: it is never empty
		}
		st, err := ch.QueueDeclarePassive(q.name, true, false, false, false, q.args)
		if err != nil {
			return nil, fmt.Errorf("inspect queue %s: %w", q.name, err)
		}
		if st.Messages > 0 {
			left[q.name] = st.Messages
		}
	}
	return left, nil
}

// copies returns how many queues a message published to exchange with key lands in, so that
// the pipeline knows how many handlings to wait for.
func (p *pipeline) copies(exchange, key string) int64 {
	var n int64
	for _, q := range topology(p.cfg) {
		if q.exchange != exchange || q.stream {
			continue
		}
		for _, k := range q.keys {
			if topicMatch(k, key) {
				n++
				break
			}
		}
	}
	return n
}

// topicMatch reports whether a topic binding pattern ("*" one word, "#" zero or more) matches key.
func topicMatch(pattern, key string) bool {
	return matchWords(strings.Split(pattern, "."), strings.Split(key, "."))
}

func matchWords(p, k []string) bool {
	if len(p) == 0 {
		return len(k) == 0
	}
	if p[0] == "#" {
		for i := 0; i <= len(k); i++ {
			if matchWords(p[1:], k[i:]) {
				return true
			}
		}
		return false
	}
	if len(k) == 0 || (p[0] != "*" && p[0] != k[0]) {
		return false
	}
	return matchWords(p[1:], k[1:])
}
