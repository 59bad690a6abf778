package main

import (
	"sync"
	"sync/atomic"
	"time"
)

// ledger records what every service did to every order, for the live line and the final
// reconciliation. In a real system each service would have its own database; here they share
// the process, so the reconciliation can look across all of them.
type ledger struct {
	mu       sync.Mutex
	steps    map[string]map[string]int // order id -> step -> times seen
	outcomes map[string][]string       // order id -> terminal outcomes recorded
	reasons  map[string]int            // x-death reason -> dead-lettered messages

	placed, paid, shipped, failed, dead, terminal atomic.Int64
}

func newLedger() *ledger {
	return &ledger{
		steps:    map[string]map[string]int{},
		outcomes: map[string][]string{},
		reasons:  map[string]int{},
	}
}

// add records one occurrence of step for an order and returns how often it has been seen.
func (l *ledger) add(id, step string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.steps[id]
	if m == nil {
		m = map[string]int{}
		l.steps[id] = m
	}
	m[step]++
	return m[step]
}

func (l *ledger) count(id, step string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.steps[id][step]
}

// outcome records a terminal state; recording a second one for the same order is a
// reconciliation failure, not an error here.
func (l *ledger) outcome(id, what string) {
	l.mu.Lock()
	first := len(l.outcomes[id]) == 0
	l.outcomes[id] = append(l.outcomes[id], what)
	l.mu.Unlock()
	if what == outcomeDead {
		l.dead.Add(1)
	}
	if first {
		l.terminal.Add(1)
	}
}

func (l *ledger) deadReason(r string) {
	l.mu.Lock()
	l.reasons[r]++
	l.mu.Unlock()
}

// gateway simulates the card processor: it declines "declined" cards always and "flaky" cards
// for their first FlakyFailures charges, and remembers when each charge was attempted.
type gateway struct {
	mu       sync.Mutex
	failures int
	attempts map[string][]time.Time
}

func newGateway(cfg Config) *gateway {
	return &gateway{failures: cfg.FlakyFailures, attempts: map[string][]time.Time{}}
}

func (g *gateway) charge(o Order) (attempt int, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.attempts[o.ID] = append(g.attempts[o.ID], time.Now())
	attempt = len(g.attempts[o.ID])
	switch o.Card {
	case cardDeclined:
		return attempt, false
	case cardFlaky:
		return attempt, attempt > g.failures
	}
	return attempt, true
}

// retryGaps returns, for the k-th retry (index k-1), the shortest time any order waited between
// attempt k and attempt k+1. With x-redelivery-delay D and backoff B it must be at least D·B^(k-1).
func (g *gateway) retryGaps() []time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	var gaps []time.Duration
	for _, ts := range g.attempts {
		for k := 1; k < len(ts); k++ {
			gap := ts[k].Sub(ts[k-1])
			if len(gaps) < k {
				gaps = append(gaps, gap)
			} else if gap < gaps[k-1] {
				gaps[k-1] = gap
			}
		}
	}
	return gaps
}

func (g *gateway) totalAttempts() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, ts := range g.attempts {
		n += len(ts)
	}
	return n
}

// inventory is the stock-keeping service's state.
type inventory struct {
	mu       sync.Mutex
	stock    map[string]int
	reserved map[string]bool
	released map[string]bool
}

func newInventory() *inventory {
	inv := &inventory{stock: map[string]int{}, reserved: map[string]bool{}, released: map[string]bool{}}
	for _, s := range skus {
		inv.stock[s] = initialStock
	}
	return inv
}

// reserve takes an order's items out of stock; false if they were already taken.
func (inv *inventory) reserve(o Order) bool {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.reserved[o.ID] {
		return false
	}
	inv.reserved[o.ID] = true
	inv.stock[o.SKU] -= o.Qty
	return true
}

// release puts a cancelled order's items back; false if nothing was reserved or it was done.
func (inv *inventory) release(o Order) bool {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if !inv.reserved[o.ID] || inv.released[o.ID] {
		return false
	}
	inv.released[o.ID] = true
	inv.stock[o.SKU] += o.Qty
	return true
}

func (inv *inventory) snapshot() map[string]int {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	m := make(map[string]int, len(inv.stock))
	for k, v := range inv.stock {
		m[k] = v
	}
	return m
}

// catalog is the product catalog's copy of the stock levels, kept in sync by inventory.updated.
type catalog struct {
	mu    sync.Mutex
	stock map[string]int
}

func newCatalog() *catalog {
	c := &catalog{stock: map[string]int{}}
	for _, s := range skus {
		c.stock[s] = initialStock
	}
	return c
}

func (c *catalog) apply(sku string, delta int) {
	c.mu.Lock()
	c.stock[sku] += delta
	c.mu.Unlock()
}

func (c *catalog) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]int, len(c.stock))
	for k, v := range c.stock {
		m[k] = v
	}
	return m
}
