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

// The order-events stream: every event on the orders exchange is also appended to this
// x-queue-type: stream queue (bound with "#"). Reading a stream does not remove anything, so
// systems that were not there when the events happened can read them later: an analytics
// job reads the whole log from "first" after the pipeline has run, and an audit log follows
// it live, goes down for a while and resumes from the offset it stored.
const (
	queueEvents = "order-events"
	// keyEventsEnd marks the end of a run in the stream (only the stream is bound to it), so
	// that readers know when they have read everything.
	keyEventsEnd = "pipeline.settled"
)

// eventsArgs declares the stream; its retention (x-max-age) removes whole old segments.
var eventsArgs = amqp.Table{"x-queue-type": "stream", "x-max-age": "7D"}

// logged is one record read from the stream.
type logged struct {
	Offset int64
	Key    string
	Event  Event
}

// streamOffset is the x-stream-offset header every stream delivery carries.
func streamOffset(d amqp.Delivery) (int64, error) {
	off, ok := d.Headers["x-stream-offset"].(int64)
	if !ok {
		return 0, fmt.Errorf("delivery without an x-stream-offset header (%T)", d.Headers["x-stream-offset"])
	}
	return off, nil
}

// readStream consumes the order-events stream from offset (a stream consumer needs a
// prefetch and manual acks: an ack only returns credit) and calls apply for every record
// until apply returns stop, ctx ends or the connection fails.
func readStream(ctx context.Context, url, name string, prefetch int, offset any, apply func(logged) (stop bool, err error)) error {
	conn, err := dial(url, name)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("%s: open channel: %w", name, err)
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		return fmt.Errorf("%s: qos: %w", name, err)
	}
	deliveries, err := ch.Consume(queueEvents, name, false, false, false, false, amqp.Table{"x-stream-offset": offset})
	if err != nil {
		return fmt.Errorf("%s: consume %s at %v: %w", name, queueEvents, offset, err)
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case d, ok := <-deliveries:
			if !ok {
				return fmt.Errorf("%s: delivery channel closed", name)
			}
			off, err := streamOffset(d)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			rec := logged{Offset: off, Key: d.RoutingKey}
			if err := json.Unmarshal(d.Body, &rec.Event); err != nil {
				return fmt.Errorf("%s: record at offset %d: %w", name, off, err)
			}
			stop, err := apply(rec)
			if err != nil {
				return err
			}
			if err := d.Ack(false); err != nil {
				return fmt.Errorf("%s: ack: %w", name, err)
			}
			if stop {
				return nil
			}
		}
	}
}

// analytics reads the whole stream from "first" once the pipeline has run, as a service
// added afterwards would, and returns every record up to the end marker.
func (p *pipeline) analytics(ctx context.Context) ([]logged, error) {
	var all []logged
	err := readStream(ctx, p.cfg.URL, "analytics", p.cfg.Prefetch, "first", func(r logged) (bool, error) {
		if r.Key == keyEventsEnd {
			return true, nil
		}
		all = append(all, r)
		return false, nil
	})
	return all, err
}

// auditLog is a catch-up consumer of the stream (the queued real-time sync pattern): it
// applies each event and stores the offset it has processed in the same step, like a row and
// its checkpoint written in one database transaction. After AuditStopAfter events it goes
// down for SyncDowntime; when it comes back it resumes at the stored offset + 1, so it
// misses nothing and applies nothing twice, however far the stream has moved meanwhile.
type auditLog struct {
	mu       sync.Mutex
	applied  []logged
	stored   int64 // offset of the last event applied; -1: none yet
	seen     map[int64]bool
	twice    int // events applied a second time (offset already applied)
	stops    int
	resumeAt []int64 // x-stream-offset of each reconnect
	done     bool    // reached the end marker
}

func newAuditLog() *auditLog { return &auditLog{stored: -1, seen: map[int64]bool{}} }

// apply writes one event and its offset; it reports whether the audit log should stop (the
// end marker, or its downtime is due).
func (a *auditLog) apply(r logged, stopAfter int) (end, down bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.seen[r.Offset] {
		a.twice++
	}
	a.seen[r.Offset] = true
	a.stored = r.Offset
	if r.Key == keyEventsEnd {
		a.done = true
		return true, false
	}
	a.applied = append(a.applied, r)
	if a.stops == 0 && stopAfter > 0 && len(a.applied) == stopAfter {
		a.stops++
		return false, true
	}
	return false, false
}

// nextOffset is where a (re)connecting audit log starts: after the last event it stored, or
// at the start of the stream the first time.
func (a *auditLog) nextOffset() any {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stored < 0 {
		return "first"
	}
	a.resumeAt = append(a.resumeAt, a.stored+1)
	return a.stored + 1
}

// errAuditDown ends one incarnation of the audit log for its planned downtime.
var errAuditDown = errors.New("audit log going down")

// runAudit follows the stream until it reads the end marker or ctx ends.
func (p *pipeline) runAudit(ctx context.Context) {
	defer close(p.auditDone)
	stopAfter := 0
	if p.cfg.SyncDowntime > 0 {
		// Down in the middle of the run: about a third of the events of the orders.
		stopAfter = max(p.cfg.Orders*8/3, 1)
	}
	for ctx.Err() == nil {
		err := readStream(ctx, p.cfg.URL, "audit-log", p.cfg.Prefetch, p.audit.nextOffset(), func(r logged) (bool, error) {
			end, down := p.audit.apply(r, stopAfter)
			if down {
				return true, errAuditDown
			}
			return end, nil
		})
		if err == nil || ctx.Err() != nil {
			return // the end marker, or the run is over
		}
		wait := 50 * time.Millisecond
		if errors.Is(err, errAuditDown) {
			wait = p.cfg.SyncDowntime
			p.log.Info("audit log stopped", "downtime", wait)
		} else {
			p.log.Warn("audit log lost its connection; reconnecting", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// endEvents appends the end marker to the stream (confirmed) once the pipeline has settled.
func endEvents(conn *amqp.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("end marker: open channel: %w", err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("end marker: confirm.select: %w", err)
	}
	dc, err := ch.PublishWithDeferredConfirm(exchangeOrders, keyEventsEnd, false, false, amqp.Publishing{
		ContentType: "application/json", DeliveryMode: amqp.Persistent, Type: keyEventsEnd, Body: []byte(`{"order":{}}`),
	})
	if err != nil {
		return fmt.Errorf("end marker: %w", err)
	}
	if !dc.Wait() {
		return errors.New("end marker: nacked by the broker")
	}
	return nil
}

// eventReport is what the analytics job and the audit log found in the stream.
type eventReport struct {
	Logged                       int // events in the stream (end marker excluded)
	Placed, Delivered, Cancelled int // distinct orders with order.placed, status delivered, order.cancelled
	Declines                     int // payment.failed events
	AuditApplied, AuditTwice     int
	AuditMissed, AuditStops      int
	AuditResumedAt               []int64
	AuditBacklog                 int // events the audit log read after coming back
}

// checkEvents compares the stream's contents with the pipeline's bookkeeping and the audit
// log with the analytics job's full read, and adds what does not match to r.Problems.
func (p *pipeline) checkEvents(r *Report, all []logged) {
	e := &r.Events
	e.Logged = len(all)
	placed, delivered, cancelled := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, l := range all {
		switch {
		case l.Key == keyOrderPlaced:
			placed[l.Event.Order.ID] = true
		case l.Key == keyStatusUpdated && l.Event.Status == "delivered":
			delivered[l.Event.Order.ID] = true
		case l.Key == keyOrderCancelled:
			cancelled[l.Event.Order.ID] = true
		case l.Key == keyPaymentFailed:
			e.Declines++
		}
	}
	e.Placed, e.Delivered, e.Cancelled = len(placed), len(delivered), len(cancelled)
	problem := func(format string, args ...any) { r.Problems = append(r.Problems, fmt.Sprintf(format, args...)) }
	if e.Placed != r.Orders || e.Delivered != r.Delivered || e.Cancelled != r.Refunded+r.DeadLettered {
		problem("order-events stream: %d placed, %d delivered, %d cancelled; the pipeline had %d orders, %d delivered, %d refunded or dead-lettered",
			e.Placed, e.Delivered, e.Cancelled, r.Orders, r.Delivered, r.Refunded+r.DeadLettered)
	}

	a := p.audit
	a.mu.Lock()
	defer a.mu.Unlock()
	e.AuditApplied, e.AuditTwice, e.AuditStops = len(a.applied), a.twice, a.stops
	e.AuditResumedAt = append([]int64(nil), a.resumeAt...)
	if len(a.resumeAt) > 0 {
		for _, l := range a.applied {
			if l.Offset >= a.resumeAt[0] {
				e.AuditBacklog++
			}
		}
	}
	if !a.done {
		problem("audit log did not reach the end of the order-events stream (%d of %d events)", len(a.applied), len(all))
	}
	// Nothing missed, nothing twice: the audit log applied exactly the records the analytics
	// job read, in the same order.
	byOffset := make(map[int64]bool, len(a.applied))
	for _, l := range a.applied {
		byOffset[l.Offset] = true
	}
	for _, l := range all {
		if !byOffset[l.Offset] {
			e.AuditMissed++
		}
	}
	same := len(a.applied) == len(all)
	for i := 0; same && i < len(all); i++ {
		same = a.applied[i].Offset == all[i].Offset && a.applied[i].Key == all[i].Key
	}
	if e.AuditTwice > 0 || e.AuditMissed > 0 || !same {
		problem("audit log: %d events applied, %d twice, %d missed; the stream holds %d (in the same order: %v)",
			len(a.applied), e.AuditTwice, e.AuditMissed, len(all), same)
	}
}

// readEvents ends the run's stream (the end marker), reads it whole as analytics, waits for
// the audit log to reach the marker, and checks both.
func (p *pipeline) readEvents(ctx context.Context, admin *amqp.Connection, r *Report) error {
	if err := endEvents(admin); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	all, err := p.analytics(rctx)
	if err != nil {
		return fmt.Errorf("analytics: %w", err)
	}
	select {
	case <-p.auditDone:
	case <-rctx.Done():
	}
	p.checkEvents(r, all)
	return nil
}
