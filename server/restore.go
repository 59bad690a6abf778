package server

import (
	"fmt"
	"strconv"
	"time"

	"warren/amqp"
	"warren/exchange"
	"warren/persistence"
	"warren/queue"
)

// restore loads durable exchanges, queues (with their messages) and bindings before the listener
// opens. Messages shared by several queues are loaded once.
func (s *Server) restore() error {
	topo, err := s.store.LoadTopology()
	if err != nil {
		return err
	}
	for _, r := range topo.Exchanges {
		v := s.vhosts[r.VHost]
		if v == nil {
			s.log.Warn("stored exchange in unknown vhost ignored", "vhost", r.VHost, "exchange", r.Name)
			continue
		}
		kind, ok := exchange.ParseKind(r.Kind)
		if !ok {
			return fmt.Errorf("exchange %q in vhost %q has unknown type %q", r.Name, r.VHost, r.Kind)
		}
		args, err := decodeArgs(r.Args)
		if err != nil {
			return fmt.Errorf("exchange %q arguments: %w", r.Name, err)
		}
		ex := &exchangeState{name: r.Name, kind: kind, durable: true, autoDelete: r.AutoDelete, internal: r.Internal, args: args, router: exchange.NewRouter(kind)}
		ex.alternate = v.alternateLocked(ex)
		v.exchanges[r.Name] = ex
	}
	cache := map[uint64]*queue.Message{}
	messages := 0
	for _, r := range topo.Queues {
		v := s.vhosts[r.VHost]
		if v == nil {
			s.log.Warn("stored queue in unknown vhost ignored", "vhost", r.VHost, "queue", r.Name)
			continue
		}
		args, err := decodeArgs(r.Args)
		if err != nil {
			return fmt.Errorf("queue %q arguments: %w", r.Name, err)
		}
		spec, aerr := parseQueueArgs(args)
		if aerr != nil {
			return fmt.Errorf("queue %q arguments: %s", r.Name, aerr.Text)
		}
		qs := &queueState{
			v: v, name: r.Name, durable: true, declDur: true, autoDelete: r.AutoDelete, args: args, spec: spec, quorum: spec.quorum,
		}
		v.newQueueLocked(qs)
		err = s.store.RecoverQueue(qs.ref(), func(seq uint64, pm *persistence.Message, deliveries uint32) error {
			m := cache[pm.ID]
			if m == nil {
				m = restoredMessage(pm)
				cache[pm.ID] = m
			}
			e := qs.q.NewEntry(seq, m)
			e.Durable = true
			e.Deliveries = deliveries
			e.Returns = deliveries
			qs.q.Restore(e)
			messages++
			return nil
		})
		if err != nil {
			return fmt.Errorf("recovering queue %q: %w", r.Name, err)
		}
		v.queues[r.Name] = qs
		v.touchLocked(qs)
	}
	for _, r := range topo.Bindings {
		v := s.vhosts[r.VHost]
		if v == nil {
			continue
		}
		src := v.exchanges[r.Source]
		if src == nil || src.router == nil {
			continue
		}
		args, err := decodeArgs(r.Args)
		if err != nil {
			return fmt.Errorf("binding arguments: %w", err)
		}
		if _, err := src.router.Bind(exchange.Binding{Destination: r.Destination, ToExchange: r.ToExchange, Key: r.Key, Args: args}); err != nil {
			return fmt.Errorf("restoring binding %s -> %s: %w", r.Source, r.Destination, err)
		}
	}
	s.log.Info("durable state restored", "exchanges", len(topo.Exchanges), "queues", len(topo.Queues), "bindings", len(topo.Bindings), "messages", messages)
	return nil
}

func restoredMessage(pm *persistence.Message) *queue.Message {
	m := &queue.Message{ID: pm.ID, Exchange: pm.Exchange, RoutingKey: pm.RoutingKey, Header: pm.Header, Body: pm.Body, Persistent: true}
	if sum, err := amqp.ScanContentHeader(pm.Header); err == nil && sum.Expiration != "" {
		// The publish time is not stored, so a per-message expiration counts from the restart.
		if ms, err := strconv.ParseInt(sum.Expiration, 10, 64); err == nil && ms >= 0 {
			m.ExpiresAt = time.Now().UnixNano() + ms*int64(time.Millisecond)
		}
	}
	return m
}

func decodeArgs(b []byte) (amqp.Table, error) {
	if len(b) == 0 {
		return nil, nil
	}
	t, _, err := amqp.DecodeTable(b)
	return t, err
}
