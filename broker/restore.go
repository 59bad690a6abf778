package broker

import (
	"fmt"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/exchange"
	"github.com/warrenmq/warren/persistence"
	"github.com/warrenmq/warren/queue"
)

// restore loads durable exchanges, queues (with the first window of their messages) and
// bindings before the listener opens.
func (b *Broker) restore() error {
	start := time.Now()
	topo, err := b.store.LoadTopology()
	if err != nil {
		return err
	}
	for _, r := range topo.Exchanges {
		v := b.vhosts[r.VHost]
		if v == nil {
			b.log.Warn("stored exchange in unknown vhost ignored", "vhost", r.VHost, "exchange", r.Name)
			continue
		}
		kind, ok := exchange.ParseKind(r.Kind)
		if !ok && r.Kind != delayedType {
			return fmt.Errorf("exchange %q in vhost %q has unknown type %q", r.Name, r.VHost, r.Kind)
		}
		args, err := decodeArgs(r.Args)
		if err != nil {
			return fmt.Errorf("exchange %q arguments: %w", r.Name, err)
		}
		if r.Kind == delayedType {
			k, aerr := parseDelayedType(args)
			if aerr != nil {
				return fmt.Errorf("exchange %q in vhost %q: %s", r.Name, r.VHost, aerr.Text)
			}
			kind = k
		}
		ex := &Exchange{name: r.Name, kind: kind, durable: true, autoDelete: r.AutoDelete, internal: r.Internal, args: args, router: exchange.NewRouter(kind)}
		if r.Kind == delayedType {
			if err := b.delayed.restoreExchange(v, ex); err != nil {
				return fmt.Errorf("exchange %q in vhost %q: %w", r.Name, r.VHost, err)
			}
		}
		ex.alternate = v.alternateLocked(ex)
		v.exchanges[r.Name] = ex
	}
	// Messages shared by several queues' windows are loaded once.
	cache := map[uint64]*queue.Message{}
	var messages, inMemory int64
	for _, r := range topo.Queues {
		v := b.vhosts[r.VHost]
		if v == nil {
			b.log.Warn("stored queue in unknown vhost ignored", "vhost", r.VHost, "queue", r.Name)
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
		qs := &Queue{
			v: v, name: r.Name, durable: true, declDur: true, autoDelete: r.AutoDelete, args: args, spec: spec,
		}
		qs.epoch.Store(r.Epoch)
		v.newQueueLocked(qs)
		if spec.stream {
			if err := v.restoreStream(qs); err != nil {
				return err
			}
			v.queues[r.Name] = qs // its messages are in its log, not in the store
			continue
		}
		// Only the window is loaded; the rest of the backlog stays on disk, counted.
		var last uint64
		var loaded, loadedBytes int64
		info, err := b.store.RecoverQueue(qs.ref(), b.maxRAMMessages, func(st persistence.Stored) error {
			qs.q.Restore(qs.storedEntry(st, cache))
			last = st.Seq
			loaded++
			loadedBytes += int64(len(st.Msg.Body))
			return nil
		})
		if err != nil {
			return fmt.Errorf("recovering queue %q: %w", r.Name, err)
		}
		qs.q.RestorePaged(last+1, info.MaxSeq, info.Count-loaded, info.Bytes-loadedBytes)
		if err := b.restorePrioritySeqs(qs); err != nil {
			return err
		}
		messages += info.Count
		inMemory += loaded
		v.queues[r.Name] = qs
		v.touchLocked(qs)
	}
	for _, r := range topo.Bindings {
		v := b.vhosts[r.VHost]
		if v == nil {
			continue
		}
		src := v.exchanges[r.Source]
		if src == nil {
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
	b.log.Info("durable state restored", "exchanges", len(topo.Exchanges), "queues", len(topo.Queues), "bindings", len(topo.Bindings),
		"messages", messages, "in_memory", inMemory, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// restorePrioritySeqs continues each priority's sequence numbers after its largest stored one.
// A priority queue encodes the priority in the seq; RestorePaged only knows the backlog's overall
// range, so without this a priority whose last entries lie in the paged-out span would reuse
// (and reorder) their seqs.
func (b *Broker) restorePrioritySeqs(qs *Queue) error {
	maxPrio := qs.q.Options().MaxPriority
	if maxPrio == 0 {
		return nil
	}
	for p := 0; p <= maxPrio; p++ {
		r := qs.q.SeqRange(p)
		seq, ok, err := b.store.MaxIndexSeq(qs.ref(), r.From, r.To)
		if err != nil {
			return fmt.Errorf("recovering queue %q: %w", qs.name, err)
		}
		if ok {
			qs.q.RestoreSeq(seq)
		}
	}
	return nil
}

func decodeArgs(b []byte) (amqp.Table, error) {
	if len(b) == 0 {
		return nil, nil
	}
	t, _, err := amqp.DecodeTable(b)
	return t, err
}
