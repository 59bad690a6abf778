package broker

import (
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/persistence"
	"github.com/warrenmq/warren/queue"
)

// onDropped is a queue's hook for entries leaving without an ack: their durable copies are
// removed and, unless purged, they are dead-lettered when the queue has a dead-letter exchange.
func (v *VHost) onDropped(qs *Queue) func(*queue.Queue, []*queue.Entry, queue.Reason) {
	return func(_ *queue.Queue, es []*queue.Entry, why queue.Reason) { v.dropped(qs, es, why) }
}

// dropped dead-letters entries a queue let go (expired, over a limit, rejected, refused by a
// reject-publish-dlx queue), or drops them when the queue has no dead-letter exchange or they
// were purged.
func (v *VHost) dropped(qs *Queue, es []*queue.Entry, why queue.Reason) {
	if dl := qs.dl.Load(); why != queue.Purged && dl != nil {
		v.deadLetter(qs, dl, es, why)
		return
	}
	if why == queue.DeliveryLimit {
		v.b.log.Info("message over delivery limit dropped (no dead-letter exchange)", "queue", qs.name, "vhost", v.name, "count", len(es))
	}
	v.removeDurable(qs, es, nil)
}

// removeDurable deletes the disk copies of entries (appending to batch when given).
func (v *VHost) removeDurable(qs *Queue, es []*queue.Entry, batch *persistence.Batch) {
	if v.b.store == nil || qs.deleted.Load() {
		return // a deleted queue's entries go with store.DeleteQueue
	}
	var removes []persistence.Entry
	for _, e := range es {
		if e.Durable {
			removes = append(removes, qs.diskEntry(e))
		}
	}
	if len(removes) == 0 {
		return
	}
	if batch != nil {
		batch.Removes = append(batch.Removes, removes...)
		return
	}
	v.b.store.Submit(&persistence.Batch{Removes: removes}, nil)
}

// deadLetter republishes entries through the queue's dead-letter exchange with RabbitMQ's x-death
// bookkeeping. The new copies and the removal of the old ones are one store batch.
func (v *VHost) deadLetter(qs *Queue, dl *dlConfig, es []*queue.Entry, why queue.Reason) {
	v.mu.RLock()
	dlx := v.exchanges[dl.exchange]
	v.mu.RUnlock()
	var batch persistence.Batch
	type pending struct {
		msg     *queue.Message
		targets []*Queue
	}
	var out []pending
	var forwards []txForward // copies for queues of other nodes (forward.go)
	var rb RouteBuf
	if dlx != nil {
		for _, e := range es {
			msg, keep, err := v.deadLetterTargets(qs, dl, dlx, e.Msg, why, &rb)
			if err != nil {
				continue
			}
			keep, remote := v.splitRemote(keep)
			for home, queues := range remote {
				forwards = append(forwards, txForward{home: home, queues: queues, msg: msg})
			}
			if len(keep) > 0 {
				out = append(out, pending{msg, keep})
			}
		}
	}
	v.removeDurable(qs, es, &batch)
	// Build the whole batch (new copies + removals) before any new entry becomes visible.
	ps := make([]prepared, len(out))
	for i, p := range out {
		ps[i] = v.prepare(p.msg, p.targets, &batch, nil)
	}
	if v.b.store != nil && (len(batch.Publishes) > 0 || len(batch.Removes) > 0) {
		copies := len(batch.Publishes)
		v.b.store.Submit(&batch, func(err error) {
			// Nobody waits for this batch, so say it when the store refuses it (a full disk):
			// nothing of it was written, so the originals stay on disk and come back at the
			// next start, and the copies live in memory only.
			if err != nil {
				v.b.log.Warn("dead-lettered messages not stored; the originals come back at restart",
					"queue", qs.name, "vhost", v.name, "messages", len(es), "durable_copies", copies, "err", err)
			}
		})
	}
	for _, p := range ps {
		v.push(p, false)
	}
	// At most once, as RabbitMQ's classic dead-lettering: nobody waits for these, and this
	// runs on a TTL timer or the store's reader, which must not wait for the link either.
	for _, f := range forwards {
		v.b.forwardNoWait(f.home, v.name, f.queues, f.msg)
	}
}

// deadLetterMessage builds the dead-lettered copy of m: x-death updated, x-first-death-* set
// once, and the per-message expiration removed (kept as original-expiration), as RabbitMQ does.
func deadLetterMessage(id uint64, m *queue.Message, queueName string, dl *dlConfig, why queue.Reason) (*queue.Message, error) {
	h, err := amqp.DecodeContentHeader(m.Header)
	if err != nil {
		return nil, err
	}
	headers := make(amqp.Table, len(h.Props.Headers)+4)
	for k, v := range h.Props.Headers {
		headers[k] = v
	}
	reason := why.String()
	deaths, _ := headers["x-death"].([]any)
	var found amqp.Table
	rest := make([]any, 0, len(deaths)+1)
	for _, d := range deaths {
		t, ok := d.(amqp.Table)
		if ok && found == nil && t["queue"] == queueName && t["reason"] == reason {
			found = t
			continue
		}
		rest = append(rest, d)
	}
	if found == nil {
		found = amqp.Table{
			"count":        int64(0),
			"reason":       reason,
			"queue":        queueName,
			"exchange":     m.Exchange,
			"routing-keys": stringsToArray(deathKeys(m)),
		}
		if h.Props.Expiration != "" {
			found["original-expiration"] = h.Props.Expiration
		}
	} else {
		cp := make(amqp.Table, len(found))
		for k, v := range found {
			cp[k] = v
		}
		found = cp
	}
	n, _ := IntArg(found["count"])
	found["count"] = n + 1
	found["time"] = time.Now().Truncate(time.Second)
	headers["x-death"] = append([]any{found}, rest...)
	if _, ok := headers["x-first-death-reason"]; !ok {
		headers["x-first-death-reason"] = reason
		headers["x-first-death-queue"] = queueName
		headers["x-first-death-exchange"] = m.Exchange
	}
	if dl.routingKey != nil {
		// An explicit dead-letter routing key replaces the sender-selected ones.
		delete(headers, "CC")
	}
	h.Props.Headers = headers
	h.Props.Expiration = ""
	return &queue.Message{
		ID:         id,
		Exchange:   dl.exchange,
		RoutingKey: m.RoutingKey,
		Header:     amqp.AppendContentHeader(nil, h.ClassID, uint64(len(m.Body)), &h.Props),
		Body:       m.Body,
		Persistent: m.Persistent,
		Priority:   h.Props.Priority,
	}, nil
}

// deathKeys is the message's routing key followed by its CC keys.
func deathKeys(m *queue.Message) []string {
	keys := []string{m.RoutingKey}
	if raw := scanHeaders(m.Header); mayHaveSenderKeys(raw) {
		if h, _, err := amqp.DecodeTable(raw); err == nil {
			cc, _ := senderKeys(h)
			keys = append(keys, cc...)
		}
	}
	return keys
}

func stringsToArray(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// deadLetterTargets is m dead-lettered from qs for why (x-death, the dead-letter routing key)
// and the queues dlx routes it to, in a new slice; a queue's own copy is dropped but for a
// reject: a message expiring back into its own queue would cycle forever (RabbitMQ drops it).
// An error (logged) means m can never be dead-lettered (a malformed header).
func (v *VHost) deadLetterTargets(qs *Queue, dl *dlConfig, dlx *Exchange, m *queue.Message, why queue.Reason, rb *RouteBuf) (*queue.Message, []*Queue, error) {
	msg, err := deadLetterMessage(v.b.NextMessageID(), m, qs.name, dl, why)
	if err != nil {
		v.b.log.Warn("cannot dead-letter message with malformed header", "queue", qs.name, "err", err)
		return nil, nil, err
	}
	keys := deathKeys(m)
	if dl.routingKey != nil {
		keys = []string{*dl.routingKey}
	}
	msg.RoutingKey = keys[0]
	var keep []*Queue
	for _, t := range v.routeKeys(dlx, keys, scanHeaders(msg.Header), rb) {
		if t != qs || why == queue.Rejected {
			keep = append(keep, t)
		}
	}
	return msg, keep, nil
}
