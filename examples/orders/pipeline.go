package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// errCrash is returned by a handler that simulates its process dying: the service drops its
// connection without committing, and the broker rolls back and requeues.
var errCrash = errors.New("simulated crash")

// errPoison marks a message no retry can fix (it cannot be decoded): it is rejected without
// requeue instead of being redelivered forever.
var errPoison = errors.New("undecodable message")

// pipeline is one run: the shared bookkeeping of all services.
type pipeline struct {
	cfg    Config
	log    *slog.Logger
	orders []Order
	led    *ledger
	gw     *gateway
	inv    *inventory
	cat    *catalog
	sync   *syncState
	// audit follows the order-events stream; auditDone is closed when runAudit returns.
	audit     *auditLog
	auditDone chan struct{}

	// outstanding counts queued message copies not yet fully handled (acked after their own
	// follow-up events were published). A publish counts one per queue it routes to before it is
	// sent, and every handler settles after its follow-ups, so once the producers are done, zero
	// means settled.
	outstanding atomic.Int64
	placedDone  atomic.Bool
	syncDone    atomic.Bool

	commits  sync.RWMutex // order processing: a crash waits for in-flight commits
	txOrders atomic.Int64 // order-processing transactions started, for -crash-after
	crashes  atomic.Int64
	restarts atomic.Int64
	// redelivered counts order.placed deliveries that order processing had seen before (the
	// ones rolled back by a crash).
	redelivered atomic.Int64
	// priced counts the storefront's price checks answered over direct reply-to.
	priced atomic.Int64
	// rem is the payment reminder service's bookkeeping (reminder.go).
	rem *reminders
}

// run declares the topology, starts every service, places the orders, waits until everything
// is settled and returns the reconciliation.
func run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &pipeline{
		cfg: cfg, log: log, orders: planOrders(cfg), led: newLedger(),
		gw: newGateway(cfg), inv: newInventory(), cat: newCatalog(), sync: &syncState{},
		audit: newAuditLog(), auditDone: make(chan struct{}), rem: &reminders{},
	}
	if cfg.ReminderDelay > 0 {
		off, err := declareReminders(cfg)
		if err != nil {
			return nil, err
		}
		if off != "" {
			cfg.ReminderDelay, p.cfg.ReminderDelay, p.rem.off = 0, 0, off
		}
	}

	admin, err := dial(cfg.URL, "orders-admin")
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	if err := declare(admin, cfg); err != nil {
		return nil, err
	}

	start := time.Now()
	// The audit log outlives the services: once they are done it still reads up to the end
	// marker.
	auditCtx, stopAudit := context.WithCancel(ctx)
	defer func() { stopAudit(); <-p.auditDone }()
	go p.runAudit(auditCtx)
	svcCtx, stopServices := context.WithCancel(ctx)
	defer stopServices()
	var wg sync.WaitGroup
	for _, s := range p.services() {
		wg.Go(func() { p.runService(svcCtx, s) })
	}
	wg.Go(func() { p.consumerSystem(svcCtx) })
	prodErr := make(chan error, 3)
	wg.Go(func() {
		if err := p.pricingService(svcCtx); err != nil {
			prodErr <- err
		}
	})
	wg.Go(func() { prodErr <- p.storefront(svcCtx) })
	wg.Go(func() { prodErr <- p.integrationSystem(svcCtx) })

	timeout := time.NewTimer(cfg.Timeout)
	defer timeout.Stop()
	tick := time.NewTicker(cfg.Tick)
	defer tick.Stop()
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	var runErr error
	timedOut := false
wait:
	for {
		select {
		case <-ctx.Done():
			runErr = ctx.Err()
			break wait
		case err := <-prodErr:
			if err != nil {
				runErr = err
				break wait
			}
		case <-timeout.C:
			timedOut = true
			break wait
		case <-tick.C:
			fmt.Fprintln(cfg.Out, p.liveLine(time.Since(start)))
		case <-poll.C:
			if p.settled() {
				break wait
			}
		}
	}
	elapsed := time.Since(start)
	stopServices()
	wg.Wait()
	if runErr != nil {
		return nil, fmt.Errorf("pipeline: %w", runErr)
	}

	rep := p.report(elapsed, timedOut)
	if !timedOut {
		if err := p.readEvents(ctx, admin, rep); err != nil {
			return nil, err
		}
	}
	if left, err := leftovers(admin, cfg); err != nil {
		rep.Problems = append(rep.Problems, err.Error())
	} else {
		rep.Leftovers = left
		for q, n := range left {
			rep.Problems = append(rep.Problems, fmt.Sprintf("queue %s still holds %d messages", q, n))
		}
	}
	rep.print(cfg.Out, cfg)
	return rep, nil
}

// settled reports whether every order reached its end and every event was handled.
func (p *pipeline) settled() bool {
	return p.placedDone.Load() && p.syncDone.Load() && p.outstanding.Load() == 0 &&
		p.led.terminal.Load() == int64(len(p.orders))
}

func dial(url, name string) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(name)
	conn, err := amqp.DialConfig(url, amqp.Config{Properties: props, Heartbeat: 10 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("connect %s as %s: %w", redact(url), name, err)
	}
	return conn, nil
}

func redact(url string) string {
	u, err := amqp.ParseURI(url)
	if err != nil {
		return "(unparsable URL)"
	}
	return fmt.Sprintf("%s://%s:%d%s", u.Scheme, u.Host, u.Port, u.Vhost)
}

// publisher publishes on a consumer's channel: with publisher confirms, or inside the channel's
// transaction (the caller commits).
type publisher struct {
	p  *pipeline
	ch *amqp.Channel
	tx bool
}

func (pb publisher) publish(ctx context.Context, exchange, key string, body any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	msg := amqp.Publishing{
		ContentType:  "application/json",
		DeliveryMode: amqp.Persistent,
		Type:         key,
		Timestamp:    time.Now(),
		Body:         b,
	}
	n := pb.p.copies(exchange, key)
	pb.p.outstanding.Add(n)
	if pb.tx {
		if err := pb.ch.PublishWithContext(ctx, exchange, key, false, false, msg); err != nil {
			pb.p.outstanding.Add(-n)
			return fmt.Errorf("publish %s: %w", key, err)
		}
		return nil
	}
	dc, err := pb.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, false, false, msg)
	if err != nil {
		pb.p.outstanding.Add(-n)
		return fmt.Errorf("publish %s: %w", key, err)
	}
	ok, err := dc.WaitContext(ctx)
	if err == nil && !ok {
		err = errors.New("nacked by the broker")
	}
	if err != nil {
		pb.p.outstanding.Add(-n)
		return fmt.Errorf("publish %s: %w", key, err)
	}
	return nil
}

// handler processes one delivery and settles it itself (ack, nack or commit).
type handler func(ctx context.Context, pb publisher, d amqp.Delivery) error

// service is one subscriber: a durable queue and the code that consumes it.
type service struct {
	name   string
	queue  string
	tx     bool // channels in tx mode instead of confirm mode
	handle handler
}

func (p *pipeline) services() []service {
	var reminder []service
	if p.cfg.ReminderDelay > 0 {
		reminder = append(reminder, service{name: "payment-reminder", queue: queueReminders, handle: p.remind})
	}
	return append(reminder, []service{
		{name: "order-processing", queue: queueProcessing, tx: true, handle: p.processOrder},
		{name: "payment", queue: queuePayment, handle: p.pay},
		{name: "inventory", queue: queueInventory, handle: p.inventoryHandler},
		{name: "catalog", queue: queueCatalog, handle: p.catalogHandler},
		{name: "shipping", queue: queueShipping, handle: p.ship},
		{name: "notification", queue: queueNotify, handle: p.notify},
		{name: "refund", queue: queueRefund, handle: p.refund},
		{name: "fraud-check", queue: queueFraud, handle: p.fraud},
		{name: "dead-letter", queue: queueDead, handle: p.deadLetter},
	}...)
}

// runService keeps a service consuming until ctx ends, reconnecting after a crash or a lost
// connection, as a supervisor restarting a process would.
func (p *pipeline) runService(ctx context.Context, s service) {
	for {
		err := p.serveOnce(ctx, s)
		if ctx.Err() != nil {
			return
		}
		p.restarts.Add(1)
		if errors.Is(err, errCrash) {
			p.log.Info("service crashed; restarting", "service", s.name)
		} else {
			p.log.Warn("service lost its connection; reconnecting", "service", s.name, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// serveOnce runs one incarnation of a service: one connection, cfg.Workers consumer channels.
func (p *pipeline) serveOnce(ctx context.Context, s service) error {
	conn, err := dial(p.cfg.URL, s.name)
	if err != nil {
		return err
	}
	defer conn.Close()
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	crashed := make(chan struct{})
	var crashOnce sync.Once

	var wg sync.WaitGroup
	defer wg.Wait()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i := range p.cfg.Workers {
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("%s: open channel: %w", s.name, err)
		}
		if err := ch.Qos(p.cfg.Prefetch, 0, false); err != nil {
			return fmt.Errorf("%s: qos: %w", s.name, err)
		}
		if s.tx {
			err = ch.Tx()
		} else {
			err = ch.Confirm(false)
		}
		if err != nil {
			return fmt.Errorf("%s: select tx/confirm mode: %w", s.name, err)
		}
		deliveries, err := ch.Consume(s.queue, fmt.Sprintf("%s-%d", s.name, i), false, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("%s: consume %s: %w", s.name, s.queue, err)
		}
		pb := publisher{p: p, ch: ch, tx: s.tx}
		wg.Go(func() {
			for {
				select {
				case <-wctx.Done():
					return
				case d, ok := <-deliveries:
					if !ok {
						return
					}
					err := s.handle(wctx, pb, d)
					if errors.Is(err, errCrash) {
						crashOnce.Do(func() { close(crashed) })
						return
					}
					switch {
					case err == nil || wctx.Err() != nil:
					case errors.Is(err, errPoison):
						p.log.Error("message rejected", "service", s.name, "err", err)
						if d.Reject(false) == nil {
							p.outstanding.Add(-1)
						}
					default:
						p.log.Warn("handler failed; message requeued", "service", s.name, "err", err)
						_ = d.Nack(false, true)
					}
				}
			}
		})
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-closed:
		return fmt.Errorf("%s: connection closed: %v", s.name, err)
	case <-crashed:
		// Like a killed process: the connection goes away with a transaction open and deliveries
		// unacked. commits is held so that no other worker's commit is in flight at this moment,
		// which would leave its outcome unknown to the bookkeeping.
		p.commits.Lock()
		cancel()
		conn.Close()
		p.commits.Unlock()
		return errCrash
	}
}

func decode(d amqp.Delivery, v any) error {
	if err := json.Unmarshal(d.Body, v); err != nil {
		return fmt.Errorf("%w: %s: %v", errPoison, d.RoutingKey, err)
	}
	return nil
}

// done acks a delivery whose follow-up events are all published.
func (p *pipeline) done(d amqp.Delivery) error {
	if err := d.Ack(false); err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	p.outstanding.Add(-1)
	return nil
}

// processOrder is order processing: it turns order.placed into payment.requested. The ack of
// the order and the publish of the next step are one transaction, so a crash in between loses or
// duplicates neither: the broker discards both and redelivers the order.
func (p *pipeline) processOrder(ctx context.Context, pb publisher, d amqp.Delivery) error {
	var ev Event
	if err := decode(d, &ev); err != nil {
		return err
	}
	if d.Redelivered {
		p.redelivered.Add(1)
	}
	p.commits.RLock()
	defer p.commits.RUnlock()
	if err := pb.publish(ctx, exchangeOrders, keyPaymentRequested, Event{Order: ev.Order}); err != nil {
		return err
	}
	if p.cfg.ReminderDelay > 0 {
		if err := pb.scheduleReminder(ctx, ev.Order); err != nil {
			return err
		}
	}
	copies := p.copies(exchangeOrders, keyPaymentRequested) + p.reminderCopies()
	if err := d.Ack(false); err != nil {
		p.outstanding.Add(-copies) // the publish dies with the transaction
		return fmt.Errorf("ack: %w", err)
	}
	if n := p.txOrders.Add(1); p.cfg.CrashAfter > 0 && n == int64(p.cfg.CrashAfter) {
		p.crashes.Add(1)
		p.outstanding.Add(-copies) // rolled back by the broker when the connection drops
		return errCrash
	}
	if err := pb.ch.TxCommit(); err != nil {
		p.outstanding.Add(-copies)
		return fmt.Errorf("tx.commit: %w", err)
	}
	p.led.add(ev.Order.ID, "processed")
	p.outstanding.Add(-1) // the order.placed message
	return nil
}

// pay is the payment service: it charges the card through the (simulated) gateway. A decline is
// announced as payment.failed and the request is nacked with requeue, so the queue's
// x-redelivery-delay spaces the retries and x-delivery-limit finally dead-letters it.
func (p *pipeline) pay(ctx context.Context, pb publisher, d amqp.Delivery) error {
	var ev Event
	if err := decode(d, &ev); err != nil {
		return err
	}
	attempt, ok := p.gw.charge(ev.Order)
	if !ok {
		p.led.failed.Add(1)
		if err := pb.publish(ctx, exchangeOrders, keyPaymentFailed,
			Event{Order: ev.Order, Attempt: attempt, Reason: "card_declined"}); err != nil {
			return err
		}
		if err := d.Nack(false, true); err != nil {
			return fmt.Errorf("nack: %w", err)
		}
		return nil
	}
	if err := pb.publish(ctx, exchangeOrders, keyPaymentProcessed, Event{Order: ev.Order, Attempt: attempt}); err != nil {
		return err
	}
	p.led.paid.Add(1)
	return p.done(d)
}

// inventoryHandler reserves stock for paid orders (then the order is ready for shipping) and
// releases it for cancelled ones.
func (p *pipeline) inventoryHandler(ctx context.Context, pb publisher, d amqp.Delivery) error {
	var ev Event
	if err := decode(d, &ev); err != nil {
		return err
	}
	o := ev.Order
	switch d.RoutingKey {
	case keyPaymentProcessed:
		if p.inv.reserve(o) {
			p.led.add(o.ID, "reserved")
			if err := pb.publish(ctx, exchangeOrders, keyInventoryUpdated, Event{Order: o, SKU: o.SKU, Delta: -o.Qty}); err != nil {
				return err
			}
		}
		if err := pb.publish(ctx, exchangeOrders, keyShippingPrepared, Event{Order: o}); err != nil {
			return err
		}
	case keyOrderCancelled:
		p.led.add(o.ID, "inventory-cancel")
		if p.inv.release(o) {
			p.led.add(o.ID, "released")
			if err := pb.publish(ctx, exchangeOrders, keyInventoryUpdated, Event{Order: o, SKU: o.SKU, Delta: o.Qty}); err != nil {
				return err
			}
		}
	}
	return p.done(d)
}

// catalogHandler keeps the product catalog's copy of the stock levels in sync.
func (p *pipeline) catalogHandler(_ context.Context, _ publisher, d amqp.Delivery) error {
	var ev Event
	if err := decode(d, &ev); err != nil {
		return err
	}
	p.cat.apply(ev.SKU, ev.Delta)
	return p.done(d)
}

// ship is shipping and logistics: it ships prepared orders (shipped, then delivered) or cancels
// the ones it cannot deliver.
func (p *pipeline) ship(ctx context.Context, pb publisher, d amqp.Delivery) error {
	var ev Event
	if err := decode(d, &ev); err != nil {
		return err
	}
	o := ev.Order
	p.led.add(o.ID, "prepared")
	if o.Address == addressUndeliverable {
		if err := pb.publish(ctx, exchangeOrders, keyOrderCancelled, Event{Order: o, Reason: "undeliverable", Paid: true}); err != nil {
			return err
		}
		return p.done(d)
	}
	for _, st := range []string{"shipped", "delivered"} {
		if err := pb.publish(ctx, exchangeOrders, keyStatusUpdated, Event{Order: o, Status: st}); err != nil {
			return err
		}
	}
	return p.done(d)
}

// notify is customer notification: one message to the customer per status change.
func (p *pipeline) notify(_ context.Context, _ publisher, d amqp.Delivery) error {
	var ev Event
	if err := decode(d, &ev); err != nil {
		return err
	}
	p.led.add(ev.Order.ID, ev.Status)
	switch ev.Status {
	case "shipped":
		p.led.shipped.Add(1)
	case "delivered":
		p.led.outcome(ev.Order.ID, outcomeDelivered)
	}
	return p.done(d)
}

// refund gives the money back for cancelled orders that were paid; unpaid ones are only voided.
func (p *pipeline) refund(_ context.Context, _ publisher, d amqp.Delivery) error {
	var ev Event
	if err := decode(d, &ev); err != nil {
		return err
	}
	if ev.Paid {
		p.led.outcome(ev.Order.ID, outcomeRefunded)
	} else {
		p.led.add(ev.Order.ID, "voided")
	}
	return p.done(d)
}

// fraud sees every payment event (payment.*) and flags orders with repeated declines.
func (p *pipeline) fraud(_ context.Context, _ publisher, d amqp.Delivery) error {
	var ev Event
	if err := decode(d, &ev); err != nil {
		return err
	}
	if n := p.led.add(ev.Order.ID, d.RoutingKey); d.RoutingKey == keyPaymentFailed && n == 3 {
		p.led.add(ev.Order.ID, "flagged")
	}
	return p.done(d)
}

// deadLetter handles the exception destination: an order whose payment was given up on is
// cancelled, so refund and inventory clean up after it.
func (p *pipeline) deadLetter(ctx context.Context, pb publisher, d amqp.Delivery) error {
	var ev Event
	if err := decode(d, &ev); err != nil {
		return err
	}
	p.led.deadReason(deathReason(d.Headers))
	if err := pb.publish(ctx, exchangeOrders, keyOrderCancelled, Event{Order: ev.Order, Reason: "payment_failed"}); err != nil {
		return err
	}
	p.led.outcome(ev.Order.ID, outcomeDead)
	return p.done(d)
}

// deathReason returns the reason of the most recent x-death entry.
func deathReason(h amqp.Table) string {
	deaths, _ := h["x-death"].([]any)
	if len(deaths) == 0 {
		return "(no x-death header)"
	}
	t, _ := deaths[0].(amqp.Table)
	if r, ok := t["reason"].(string); ok {
		return r
	}
	return "(no reason)"
}

// storefront places the orders, with publisher confirms.
func (p *pipeline) storefront(ctx context.Context) error {
	defer p.placedDone.Store(true)
	conn, err := dial(p.cfg.URL, "storefront")
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("storefront: open channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("storefront: confirm.select: %w", err)
	}
	pr, err := newPricer(conn, 10*time.Second)
	if err != nil {
		return fmt.Errorf("storefront: %w", err)
	}
	var pace <-chan time.Time
	if p.cfg.Rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / p.cfg.Rate))
		defer t.Stop()
		pace = t.C
	}
	// Confirms are awaited in windows so that the storefront is not limited by one round trip
	// (and one disk sync) per order.
	const window = 64
	type pending struct {
		dc *amqp.DeferredConfirmation
		id string
	}
	var inflight []pending
	flush := func() error {
		for _, pd := range inflight {
			ok, err := pd.dc.WaitContext(ctx)
			if err != nil {
				return fmt.Errorf("storefront: wait for confirm: %w", err)
			}
			if !ok {
				return fmt.Errorf("storefront: order %s nacked by the broker", pd.id)
			}
			p.led.placed.Add(1)
		}
		inflight = inflight[:0]
		return nil
	}
	for _, o := range p.orders {
		if pace != nil {
			select {
			case <-ctx.Done():
				return nil
			case <-pace:
			}
		}
		// The price comes from the pricing service, an RPC over direct reply-to.
		amount, err := pr.price(ctx, o)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("storefront: %w", err)
		}
		o.Amount = amount
		p.priced.Add(1)
		body, err := json.Marshal(Event{Order: o})
		if err != nil {
			return fmt.Errorf("storefront: encode: %w", err)
		}
		p.outstanding.Add(p.copies(exchangeOrders, keyOrderPlaced))
		var prio uint8
		if o.Express {
			prio = expressPriority
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchangeOrders, keyOrderPlaced, false, false, amqp.Publishing{
			ContentType: "application/json", DeliveryMode: amqp.Persistent, Type: keyOrderPlaced,
			MessageId: o.ID, Timestamp: time.Now(), Priority: prio, Body: body,
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("storefront: publish %s: %w", o.ID, err)
		}
		inflight = append(inflight, pending{dc, o.ID})
		if len(inflight) == window || pace != nil {
			if err := flush(); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
	}
	if err := flush(); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}
