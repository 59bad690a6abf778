package main

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// Routing keys on the orders topic exchange.
const (
	keyOrderPlaced      = "order.placed"
	keyPaymentRequested = "payment.requested"
	keyPaymentProcessed = "payment.processed"
	keyPaymentFailed    = "payment.failed"
	keyInventoryUpdated = "inventory.updated"
	keyShippingPrepared = "shipping.prepared"
	keyStatusUpdated    = "order.status.updated"
	keyOrderCancelled   = "order.cancelled"
	keyCustomerUpsert   = "customer.upsert"
)

// Exchanges and queues. Every queue is durable and has exactly one subscribing service.
const (
	exchangeOrders    = "orders"
	exchangeDLX       = "orders.dlx"
	exchangeCustomers = "customers"

	queueProcessing = "orders.processing"
	queuePayment    = "orders.payment"
	queueInventory  = "orders.inventory"
	queueCatalog    = "orders.catalog"
	queueShipping   = "orders.shipping"
	queueNotify     = "orders.notification"
	queueRefund     = "orders.refund"
	queueFraud      = "orders.fraud"
	queueDead       = "orders.dead"
	queueCustomers  = "customers.sync"
)

// Simulated card and address values that drive the failure injection.
const (
	cardOK       = "ok"
	cardDeclined = "declined" // every charge is declined: the order ends in orders.dead
	cardFlaky    = "flaky"    // the first Config.FlakyFailures charges are declined

	addressOK            = "ok"
	addressUndeliverable = "undeliverable" // shipping cancels the paid order: refund
)

// Terminal outcomes of an order.
const (
	outcomeDelivered = "delivered"
	outcomeRefunded  = "refunded"
	outcomeDead      = "dead-lettered"
)

var skus = []string{"sku-apple", "sku-brick", "sku-cable", "sku-drill", "sku-easel"}

// initialStock is what the inventory (and the catalog's mirror of it) starts with, per SKU.
const initialStock = 1_000_000

// Order is the body every order event carries.
type Order struct {
	ID       string `json:"id"`
	Customer string `json:"customer"`
	SKU      string `json:"sku"`
	Qty      int    `json:"qty"`
	Amount   int64  `json:"amount_cents"`
	Card     string `json:"card"`
	Address  string `json:"address"`
	Express  bool   `json:"express,omitempty"` // placed with message priority expressPriority
}

// expressPriority is the message priority of express orders; orders.processing is a priority
// queue with this maximum (standard orders have none, which counts as 0).
const expressPriority = 9

// Event is the JSON body of every message on the orders exchange; fields not used by an event
// type are left out.
type Event struct {
	Order   Order  `json:"order"`
	Status  string `json:"status,omitempty"`  // order.status.updated: shipped, delivered
	Reason  string `json:"reason,omitempty"`  // order.cancelled, payment.failed
	Paid    bool   `json:"paid,omitempty"`    // order.cancelled: money was taken and must go back
	Attempt int    `json:"attempt,omitempty"` // payment.*: charge attempt, 1-based
	SKU     string `json:"sku,omitempty"`     // inventory.updated
	Delta   int    `json:"delta,omitempty"`   // inventory.updated: stock change
}

// CustomerRecord is what the integration system forwards to the consumer system.
type CustomerRecord struct {
	Seq   int    `json:"seq"`
	ID    string `json:"id"`
	Name  string `json:"name"`
	Email string `json:"email"`
}

// planOrders builds the orders and decides, from the seed, which ones get a declined card, a
// flaky card or an undeliverable address. Counts are exact (rate × orders, rounded), so a run's
// expected outcome is known in advance.
func planOrders(cfg Config) []Order {
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	n := cfg.Orders
	orders := make([]Order, n)
	for i := range orders {
		orders[i] = Order{
			ID:       fmt.Sprintf("ord-%06d", i+1),
			Customer: fmt.Sprintf("cust-%04d", rng.IntN(max(cfg.Customers, 1))+1),
			SKU:      skus[rng.IntN(len(skus))],
			Qty:      1 + rng.IntN(3),
			Amount:   int64(500 + rng.IntN(20000)),
			Card:     cardOK,
			Address:  addressOK,
		}
	}
	count := func(rate float64) int { return int(math.Round(rate * float64(n))) }
	perm := rng.Perm(n)
	take := func(k int) []int {
		k = min(k, len(perm))
		s := perm[:k]
		perm = perm[k:]
		return s
	}
	for _, i := range take(count(cfg.FailRate)) {
		orders[i].Card = cardDeclined
	}
	for _, i := range take(count(cfg.FlakyRate)) {
		orders[i].Card = cardFlaky
	}
	for _, i := range take(count(cfg.UndeliverableRate)) {
		orders[i].Address = addressUndeliverable
	}
	// Drawn independently of the failures (and after them, so that a seed injects the same
	// failures whatever the express rate).
	for i := range orders {
		orders[i].Express = rng.Float64() < cfg.ExpressRate
	}
	return orders
}

// expectedOutcome is where an order must end up given its injected failures.
func expectedOutcome(cfg Config, o Order) string {
	switch {
	case o.Card == cardDeclined,
		o.Card == cardFlaky && cfg.FlakyFailures > cfg.DeliveryLimit:
		return outcomeDead
	case o.Address == addressUndeliverable:
		return outcomeRefunded
	}
	return outcomeDelivered
}

// expectedDeclines is how many payment.failed events an order must produce: a message on a queue
// with x-delivery-limit N is delivered N+1 times before it is dead-lettered.
func expectedDeclines(cfg Config, o Order) int {
	switch o.Card {
	case cardDeclined:
		return cfg.DeliveryLimit + 1
	case cardFlaky:
		return min(cfg.FlakyFailures, cfg.DeliveryLimit+1)
	}
	return 0
}
