package broker

import "time"

// Flow control holds a publishing connection's reader (so TCP pushes back on the client) in
// two cases, much as RabbitMQ's credit flow throttles publishers that outrun a queue or its
// message store:
//
//   - The store's journal has more than journalRoom bytes of messages waiting to be written
//     (persistent publishes, or transient backlogs paging out): the publisher waits for the disk,
//     instead of the journal's queue growing in memory without bound.
//   - A queue it just published to holds more than its high mark of ready messages while the
//     queue's consumers are taking them, until the backlog is at half the mark. Such a backlog
//     only costs: it eats memory (or goes through the disk, past the paging window), every
//     message waits longer, and the CPU spent accepting messages nobody can take yet is taken
//     from the consumers. A queue without consumers, or whose consumers have stopped taking
//     messages, never holds a publisher back: filling a queue for later is not slowed down.
const (
	flowHigh       = 50_000 // the high mark without paging; with it, half the paging window if lower
	flowCheckEvery = 256    // publishes on a channel between two looks at the backlog
	flowStep       = time.Millisecond
	flowMaxWait    = 100 * time.Millisecond
	journalRoom    = 16 << 20
)

// flowHighFor is the backlog high mark for a broker whose queues keep maxRAM messages in
// memory: a backlog that its consumers are draining stays in the paging window, in memory.
func flowHighFor(maxRAM int, paging bool) int {
	if paging && maxRAM/2 < flowHigh {
		// Half the window: a publisher is held before its backlog starts paging out, even
		// with a few hundred publishes between two looks at the backlog.
		return maxRAM / 2
	}
	return flowHigh
}

// Flow runs on the publisher's goroutine (an AMQP connection's reader) after a publish routed
// to targets, and holds it as described above.
func (p *Publisher) Flow(targets []*Queue) {
	b := p.v.b
	if b.store != nil && b.store.Queued() > journalRoom {
		b.stats.flowPauses.Add(1)
		b.store.AwaitRoom(journalRoom)
	}
	awaitStreams(targets)
	p.count++
	if p.count%flowCheckEvery != 0 {
		return
	}
	for _, qs := range targets {
		if qs.awaitDrain(b.flowHigh, flowStep, flowMaxWait) {
			b.stats.flowPauses.Add(1)
		}
	}
}

// awaitDrain blocks while the queue is over high and being drained, checking every step, at
// most maxWait, until it is at high/2.
func (qs *Queue) awaitDrain(high int, step, maxWait time.Duration) (held bool) {
	if st := qs.q.Counts(); st.Ready <= high || st.Consumers == 0 {
		return false
	}
	for waited := time.Duration(0); waited < maxWait; waited += step {
		before, _ := qs.q.Delivered()
		time.Sleep(step)
		// Consumers waiting for a read-ahead are not stalled: the disk is what they wait for,
		// and the publisher must not outrun it either.
		if after, pagingIn := qs.q.Delivered(); after == before && !pagingIn {
			return true // the consumers stalled: waiting for them would only stall the publisher too
		}
		if qs.q.Counts().Ready <= high/2 {
			return true
		}
	}
	return true
}
