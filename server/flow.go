package server

import "time"

// Queue flow control. A publisher that keeps a queue's backlog growing while the queue's consumers
// are busy draining it only costs: the backlog eats memory, every message waits longer, and the
// CPU spent accepting messages nobody can take yet is taken from the consumers. RabbitMQ's credit
// flow throttles such publishers; here the publishing connection's reader pauses (so TCP pushes
// back on the client) while a queue it just published to holds more than flowHigh ready messages
// and its consumers are taking them, until the backlog is below flowLow. A queue without
// consumers, or whose consumers have stopped taking messages, never holds a publisher back:
// filling a queue for later is not slowed down.
const (
	flowHigh       = 50_000
	flowLow        = flowHigh / 2
	flowCheckEvery = 256 // publishes on a channel between two looks at the backlog
	flowStep       = time.Millisecond
	flowMaxWait    = 100 * time.Millisecond
)

// flowCheck runs on the publishing connection's reader after a publish routed to targets.
func (ch *channel) flowCheck(targets []*queueState) {
	ch.pubCount++
	if ch.pubCount%flowCheckEvery != 0 {
		return
	}
	for _, qs := range targets {
		qs.awaitDrain(flowStep, flowMaxWait)
	}
}

// awaitDrain blocks while the queue is over flowHigh and being drained, checking every step, at
// most maxWait.
func (qs *queueState) awaitDrain(step, maxWait time.Duration) {
	if st := qs.q.Counts(); st.Ready <= flowHigh || st.Consumers == 0 {
		return
	}
	for waited := time.Duration(0); waited < maxWait; waited += step {
		before := qs.q.Delivered()
		time.Sleep(step)
		if qs.q.Delivered() == before {
			return // the consumers stalled: waiting for them would only stall the publisher too
		}
		if qs.q.Counts().Ready < flowLow {
			return
		}
	}
}
