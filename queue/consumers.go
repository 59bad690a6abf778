package queue

// ConsumerOptions are a consumer's settings, from basic.consume's arguments.
type ConsumerOptions struct {
	// Priority is the consumer priority (x-priority; RabbitMQ's default 0, may be negative):
	// entries go to the highest-priority consumers that can take them (do not answer Busy),
	// round-robin among equal priorities; lower priorities get entries only while every
	// higher one is busy. A single-active-consumer queue ignores it.
	Priority int
}

// consumerGroup is the consumers of one priority, served round-robin from rr.
type consumerGroup struct {
	prio int
	cs   []Consumer
	rr   int
}

// AddConsumer registers c with priority 0 and delivers to it what is ready.
func (q *Queue) AddConsumer(c Consumer) bool { return q.AddConsumerWith(c, ConsumerOptions{}) }

// AddConsumerWith registers c with o and delivers to it what is ready. In a
// single-active-consumer queue c becomes active (and Hooks.ActiveChanged is called) if it is
// the only consumer; otherwise it waits until the consumers registered before it are gone.
//
// A closed queue refuses c (false): Close has already handed its consumers back, so c would
// never receive anything.
func (q *Queue) AddConsumerWith(c Consumer, o ConsumerOptions) bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	q.consumers = append(q.consumers, c)
	switch {
	case !q.sac:
		q.joinGroup(c, o.Priority)
	case len(q.consumers) == 1:
		q.groups = []consumerGroup{{cs: []Consumer{c}}}
		q.drops = append(q.drops, drop{activeChanged: true, active: c})
	}
	now := q.clock()
	q.dispatch(now)
	q.expireHead(now)
	q.settle(now)
	q.unlockEmit()
	return true
}

// joinGroup adds c to the group of priority prio, after its members (registration order),
// creating the group in priority order if needed.
func (q *Queue) joinGroup(c Consumer, prio int) {
	i := 0
	for ; i < len(q.groups) && q.groups[i].prio >= prio; i++ {
		if q.groups[i].prio == prio {
			q.groups[i].cs = append(q.groups[i].cs, c)
			return
		}
	}
	q.groups = append(q.groups, consumerGroup{})
	copy(q.groups[i+1:], q.groups[i:])
	q.groups[i] = consumerGroup{prio: prio, cs: []Consumer{c}}
}

// leave unregisters c. Call with mu held.
func (q *Queue) leave(c Consumer) {
	for i, x := range q.consumers {
		if x == c {
			q.consumers = append(q.consumers[:i], q.consumers[i+1:]...)
			break
		}
	}
	for gi := range q.groups {
		g := &q.groups[gi]
		for i, x := range g.cs {
			if x != c {
				continue
			}
			g.cs = append(g.cs[:i], g.cs[i+1:]...)
			// Keep the round-robin position on the consumer that was next.
			if g.rr > i {
				g.rr--
			}
			if len(g.cs) == 0 {
				q.groups = append(q.groups[:gi], q.groups[gi+1:]...)
			} else {
				g.rr %= len(g.cs)
			}
			return
		}
	}
}

// RemoveConsumer unregisters c and returns how many consumers remain. In a
// single-active-consumer queue, removing the active consumer activates the next one in
// registration order and delivers to it; when c's unacked entries are to be requeued (its
// channel closed), use RemoveConsumers so the next consumer gets them first.
func (q *Queue) RemoveConsumer(c Consumer) int { return q.RemoveConsumers([]Consumer{c}, nil) }

// RemoveConsumers unregisters cs and requeues the entries in requeue (delivered and unacked,
// typically everything a closing channel held from this queue) in one step, then delivers:
// nothing can reach the remaining consumers between the removal and the requeue, so with a
// single active consumer the next one receives the requeued entries in their original order,
// before anything newer. It returns how many consumers remain.
func (q *Queue) RemoveConsumers(cs []Consumer, requeue []*Entry) int {
	q.mu.Lock()
	before := q.activeLocked()
	for _, c := range cs {
		q.leave(c)
	}
	n := len(q.consumers)
	after := q.activeLocked()
	changed := after != before
	if changed && after != nil {
		q.groups = []consumerGroup{{cs: []Consumer{after}}}
	}
	if changed && !q.closed {
		q.drops = append(q.drops, drop{activeChanged: true, active: after})
	}
	switch {
	case len(requeue) > 0:
		q.requeue(requeue) // delivers to whoever is now active
	case changed && !q.closed:
		// The new active consumer was never offered the ready entries.
		now := q.clock()
		q.dispatch(now)
		q.expireHead(now)
		q.settle(now)
	}
	q.unlockEmit()
	return n
}

// ActiveConsumer returns the consumer that receives in a single-active-consumer queue, nil
// when it has no consumer or is not such a queue.
func (q *Queue) ActiveConsumer() Consumer {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.activeLocked()
}

func (q *Queue) activeLocked() Consumer {
	if !q.sac || len(q.consumers) == 0 {
		return nil
	}
	return q.consumers[0]
}

// offer offers e to the consumers in dispatch order until one takes it: by priority,
// round-robin within a priority starting after the consumer served last (in a
// single-active-consumer queue, groups holds just the active one).
func (q *Queue) offer(e *Entry) bool {
	for gi := range q.groups {
		g := &q.groups[gi]
		n := len(g.cs)
		for i := 0; i < n; i++ {
			idx := g.rr + i
			if idx >= n {
				idx -= n
			}
			switch g.cs[idx].Deliver(q, e) {
			case Accepted:
				q.unacked++
			case AcceptedNoAck:
			default:
				continue
			}
			e.Deliveries++
			q.delivered++
			g.rr = idx + 1
			if g.rr == n {
				g.rr = 0
			}
			return true
		}
	}
	return false
}
