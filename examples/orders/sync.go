package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// syncState is the consumer system's database and the checks on how records arrived.
type syncState struct {
	mu         sync.Mutex
	published  int
	applied    int
	last       int // highest sequence number applied
	outOfOrder int // records that arrived with a gap before them
	duplicates int // records applied before (seq <= last)
	stops      int
	backlog    int // records waiting in the queue when the consumer system came back
	customers  map[string]CustomerRecord
}

func (s *syncState) snapshot() (published, applied int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.published, s.applied
}

// integrationSystem forwards customer records as they arrive from the outside, one every
// CustomerInterval, instead of writing them into the consumer system directly.
func (p *pipeline) integrationSystem(ctx context.Context) error {
	defer p.syncDone.Store(true)
	if p.cfg.Customers == 0 {
		return nil
	}
	conn, err := dial(p.cfg.URL, "integration-system")
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("integration system: open channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("integration system: confirm.select: %w", err)
	}
	pb := publisher{p: p, ch: ch}
	for i := 1; i <= p.cfg.Customers; i++ {
		rec := CustomerRecord{
			Seq:   i,
			ID:    fmt.Sprintf("cust-%04d", i),
			Name:  fmt.Sprintf("Customer %d", i),
			Email: fmt.Sprintf("customer%d@example.com", i),
		}
		// Counted before the publish so that the live line never shows more applied than sent.
		p.sync.mu.Lock()
		p.sync.published++
		p.sync.mu.Unlock()
		if err := pb.publish(ctx, exchangeCustomers, keyCustomerUpsert, rec); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("integration system: %w", err)
		}
		if p.cfg.CustomerInterval > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(p.cfg.CustomerInterval):
			}
		}
	}
	return nil
}

// consumerSystem applies customer records in order. After a quarter of them it stops (its
// connection goes away, as when the system is taken down) for SyncDowntime, then comes back and
// catches up from the durable queue.
func (p *pipeline) consumerSystem(ctx context.Context) {
	stopAt := -1
	if p.cfg.SyncDowntime > 0 {
		stopAt = p.cfg.Customers / 4
	}
	for ctx.Err() == nil {
		stopped, err := p.consumeCustomers(ctx, stopAt)
		if ctx.Err() != nil {
			return
		}
		wait := 50 * time.Millisecond
		if stopped {
			stopAt = -1
			wait = p.cfg.SyncDowntime
			p.log.Info("consumer system stopped", "downtime", wait)
		} else {
			p.log.Warn("consumer system lost its connection; reconnecting", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// consumeCustomers runs the consumer system until ctx ends, its connection fails, or it has
// applied stopAt records (then it returns true).
func (p *pipeline) consumeCustomers(ctx context.Context, stopAt int) (bool, error) {
	conn, err := dial(p.cfg.URL, "consumer-system")
	if err != nil {
		return false, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return false, fmt.Errorf("consumer system: open channel: %w", err)
	}
	if err := ch.Qos(p.cfg.Prefetch, 0, false); err != nil {
		return false, fmt.Errorf("consumer system: qos: %w", err)
	}
	st, err := ch.QueueDeclarePassive(queueCustomers, true, false, false, false, nil)
	if err != nil {
		return false, fmt.Errorf("consumer system: inspect queue: %w", err)
	}
	p.sync.mu.Lock()
	if p.sync.stops > 0 && p.sync.backlog == 0 {
		p.sync.backlog = st.Messages
	}
	p.sync.mu.Unlock()
	// A single consumer: records must be applied in the order they were published.
	deliveries, err := ch.Consume(queueCustomers, "consumer-system", false, true, false, false, nil)
	if err != nil {
		return false, fmt.Errorf("consumer system: consume: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return false, nil
		case d, ok := <-deliveries:
			if !ok {
				return false, fmt.Errorf("consumer system: delivery channel closed")
			}
			var rec CustomerRecord
			if err := json.Unmarshal(d.Body, &rec); err != nil {
				p.log.Error("consumer system: bad record dropped", "err", err)
				_ = d.Reject(false)
				p.outstanding.Add(-1)
				continue
			}
			fresh, stop := p.applyCustomer(rec, stopAt)
			if err := d.Ack(false); err != nil {
				return false, fmt.Errorf("consumer system: ack: %w", err)
			}
			if fresh {
				p.outstanding.Add(-1)
			}
			if stop {
				// The ack is on the wire before the connection closes; the records prefetched
				// but not applied go back to the queue in their original order.
				return true, nil
			}
		}
	}
}

// applyCustomer writes one record to the consumer system's database. It reports whether the
// record was new and whether the consumer system should now stop.
func (p *pipeline) applyCustomer(rec CustomerRecord, stopAt int) (fresh, stop bool) {
	s := p.sync
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.customers == nil {
		s.customers = map[string]CustomerRecord{}
	}
	if rec.Seq <= s.last {
		s.duplicates++
		return false, false
	}
	if rec.Seq != s.last+1 {
		s.outOfOrder++
	}
	s.last = rec.Seq
	s.customers[rec.ID] = rec
	s.applied++
	if s.applied == stopAt {
		s.stops++
		return true, true
	}
	return true, false
}
