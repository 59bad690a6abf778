package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// queuePricing is the pricing service's request queue. It is not part of the event topology
// (topology): requests go to it through the default exchange and are answered over direct
// reply-to, so no reply queue is declared anywhere.
const queuePricing = "orders.pricing"

// directReplyTo is RabbitMQ's direct reply-to pseudo-queue.
const directReplyTo = "amq.rabbitmq.reply-to"

// unitPrices is the pricing service's price list, in cents.
var unitPrices = map[string]int64{
	"sku-apple": 120, "sku-brick": 450, "sku-cable": 899, "sku-drill": 5999, "sku-easel": 2450,
}

// quoteRequest and quote are the RPC's bodies.
type quoteRequest struct {
	SKU string `json:"sku"`
	Qty int    `json:"qty"`
}

type quote struct {
	Amount int64  `json:"amount_cents"`
	Error  string `json:"error,omitempty"`
}

// pricingService answers quote requests until ctx ends. Requests are consumed without acks:
// a request lost with a crash is re-asked by the caller's timeout, not redelivered.
func (p *pipeline) pricingService(ctx context.Context) error {
	conn, err := dial(p.cfg.URL, "pricing")
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("pricing: open channel: %w", err)
	}
	reqs, err := ch.Consume(queuePricing, "pricing", true, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("pricing: consume: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case d, ok := <-reqs:
			if !ok {
				return errors.New("pricing: consumer cancelled")
			}
			var req quoteRequest
			var q quote
			if err := json.Unmarshal(d.Body, &req); err != nil {
				q.Error = "bad request: " + err.Error()
			} else if unit, known := unitPrices[req.SKU]; !known {
				q.Error = "unknown sku " + req.SKU
			} else {
				q.Amount = unit * int64(req.Qty)
			}
			body, _ := json.Marshal(q)
			// The reply goes to the generated amq.rabbitmq.reply-to.<token> name the broker
			// stamped on the request; it reaches the caller's channel without any queue.
			err := ch.PublishWithContext(ctx, "", d.ReplyTo, false, false, amqp.Publishing{
				ContentType: "application/json", CorrelationId: d.CorrelationId, Body: body,
			})
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("pricing: reply: %w", err)
			}
		}
	}
}

// pricer is the storefront's RPC client of the pricing service, over direct reply-to.
type pricer struct {
	ch      *amqp.Channel
	replies <-chan amqp.Delivery
	wait    time.Duration
}

// newPricer consumes amq.rabbitmq.reply-to (in no-ack mode, as direct reply-to requires) on a
// channel of its own.
func newPricer(conn *amqp.Connection, wait time.Duration) (*pricer, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("pricer: open channel: %w", err)
	}
	replies, err := ch.Consume(directReplyTo, "", true, false, false, false, nil)
	if err != nil {
		return nil, fmt.Errorf("pricer: consume %s: %w", directReplyTo, err)
	}
	return &pricer{ch: ch, replies: replies, wait: wait}, nil
}

// price asks for an order's amount and waits for the answer. Calls are sequential, so the
// next reply is this call's; the correlation id checks it.
func (pr *pricer) price(ctx context.Context, o Order) (int64, error) {
	body, _ := json.Marshal(quoteRequest{SKU: o.SKU, Qty: o.Qty})
	err := pr.ch.PublishWithContext(ctx, "", queuePricing, false, false, amqp.Publishing{
		ContentType: "application/json", ReplyTo: directReplyTo, CorrelationId: o.ID, Body: body,
	})
	if err != nil {
		return 0, fmt.Errorf("price %s: %w", o.ID, err)
	}
	timer := time.NewTimer(pr.wait)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-timer.C:
		return 0, fmt.Errorf("price %s: no reply within %s", o.ID, pr.wait)
	case d, ok := <-pr.replies:
		if !ok {
			return 0, fmt.Errorf("price %s: reply consumer closed", o.ID)
		}
		var q quote
		switch {
		case d.CorrelationId != o.ID:
			return 0, fmt.Errorf("price %s: reply for %q", o.ID, d.CorrelationId)
		case json.Unmarshal(d.Body, &q) != nil:
			return 0, fmt.Errorf("price %s: bad reply %q", o.ID, d.Body)
		case q.Error != "":
			return 0, fmt.Errorf("price %s: %s", o.ID, q.Error)
		}
		return q.Amount, nil
	}
}
