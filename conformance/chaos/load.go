//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ledger is what the clients saw: what the brokers promised (declare-ok, publisher confirms)
// and what the consumers received. The checks compare them at the end.
type ledger struct {
	mu sync.Mutex
	// declared are the queues that got declare-ok.
	declared []string
	// declareErrs counts declare failures by kind (a reply code, or "connection").
	declareErrs map[string]int
	// confirmed[queue][seq]: the broker acked the persistent publish.
	confirmed map[string]map[uint64]bool
	// nacked counts publishes the broker nacked; unknown those whose connection died before
	// the confirm came (they may or may not be delivered).
	nacked, unknown int
	// received[queue][seq] counts deliveries whose ack the broker is known to have processed:
	// a synchronous method on the consumer's channel (basic.qos) or its connection's close
	// answered after the ack (a channel's methods are processed in order). A delivery acked
	// but not known processed when its session died is inDoubt until delivered again: the
	// broker may have processed the ack (the message is rightly gone) or not (it owes it).
	received map[string]map[uint64]int
	inDoubt  map[string]map[uint64]bool
	// fresh[queue] is the highest sequence number delivered without the redelivered flag. The
	// one publisher of a queue publishes one message at a time, so a delivery not flagged
	// redelivered of a lower number breaks per-publisher order: outOfOrder counts those never
	// delivered before, unflagged those delivered before (a redelivery without the
	// redelivered flag); orderSamples keeps the first few of both. redelivered counts the
	// deliveries flagged redelivered (exempt: a requeue puts a message back ahead of later
	// ones). seen[queue] holds every number delivered.
	fresh        map[string]uint64
	seen         map[string]map[uint64]bool
	outOfOrder   int
	unflagged    int
	orderSamples []string
	redelivered  int
	// hung are operations that got no answer in time.
	hung []string
	// seq is each checked queue's last publish sequence number (set up front, then read
	// without mu).
	seq map[string]*atomic.Uint64
}

func newLedger(queues []string) *ledger {
	l := &ledger{declareErrs: map[string]int{}, confirmed: map[string]map[uint64]bool{}, received: map[string]map[uint64]int{},
		inDoubt: map[string]map[uint64]bool{}, fresh: map[string]uint64{}, seen: map[string]map[uint64]bool{},
		seq: map[string]*atomic.Uint64{}}
	for _, q := range queues {
		l.seq[q] = new(atomic.Uint64)
	}
	return l
}

// errKind names an error for the counts: its AMQP reply code, or "connection".
func errKind(err error) string {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		return strconv.Itoa(ae.Code)
	}
	return "connection"
}

// dial connects to addr with a short dial timeout (a node may be down).
func dial(addr string) (*amqp.Connection, error) {
	return amqp.DialConfig("amqp://guest:guest@"+addr+"/", amqp.Config{Dial: amqp.DefaultDial(3 * time.Second), Heartbeat: 5 * time.Second})
}

// sleepCtx sleeps d unless ctx ends first (false then).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// declareQueue declares durable queue name on the node at addr with the workload's queue type,
// retrying until ctx ends (the cluster may still be electing).
func declareQueue(ctx context.Context, addr, name string, qargs amqp.Table) error {
	var last error
	for ctx.Err() == nil {
		conn, err := dial(addr)
		if err == nil {
			var ch *amqp.Channel
			if ch, err = conn.Channel(); err == nil {
				_, err = ch.QueueDeclare(name, true, false, false, false, qargs)
			}
			conn.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		sleepCtx(ctx, 200*time.Millisecond)
	}
	return fmt.Errorf("declare %s: %w (last error %v)", name, ctx.Err(), last)
}

// publisher publishes persistent messages with confirms to queue q through the default
// exchange on the node at addr (the queue's home), one at a time, every interval, until ctx
// ends; it reconnects after a failure.
func publisher(ctx context.Context, l *ledger, addr, q string, interval time.Duration) {
	for ctx.Err() == nil {
		conn, err := dial(addr)
		if err != nil {
			sleepCtx(ctx, 200*time.Millisecond)
			continue
		}
		ch, err := conn.Channel()
		if err == nil {
			err = ch.Confirm(false)
		}
		if err != nil {
			conn.Close()
			sleepCtx(ctx, 200*time.Millisecond)
			continue
		}
		for ctx.Err() == nil {
			seq := l.seq[q].Add(1)
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, false, false, amqp.Publishing{
				DeliveryMode: amqp.Persistent, MessageId: strconv.FormatUint(seq, 10), Body: []byte(q + ":" + strconv.FormatUint(seq, 10))})
			if err != nil {
				break
			}
			wait, cancel := context.WithTimeout(ctx, 15*time.Second)
			ack, err := dc.WaitContext(wait)
			cancel()
			l.mu.Lock()
			switch {
			case err != nil && ctx.Err() == nil && !conn.IsClosed():
				// The connection is up and no confirm came in 15 s.
				l.hung = append(l.hung, fmt.Sprintf("confirm of %s #%d on %s", q, seq, addr))
				l.unknown++
			case err != nil || (!ack && (conn.IsClosed() || ch.IsClosed())):
				// The connection died first (amqp091 then settles pending confirms as nacks).
				l.unknown++
			case ack:
				if l.confirmed[q] == nil {
					l.confirmed[q] = map[uint64]bool{}
				}
				l.confirmed[q][seq] = true
			default:
				l.nacked++
			}
			l.mu.Unlock()
			if err != nil || conn.IsClosed() {
				break
			}
			if !sleepCtx(ctx, interval) {
				break
			}
		}
		conn.Close()
	}
}

// settle records acked deliveries seqs of queue q: received when syncErr is nil (a
// synchronous method answered after their acks, so the broker processed them), in doubt when
// the session died first.
func (l *ledger) settle(q string, seqs []uint64, syncErr error) {
	if len(seqs) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if syncErr != nil {
		if l.inDoubt[q] == nil {
			l.inDoubt[q] = map[uint64]bool{}
		}
		for _, s := range seqs {
			l.inDoubt[q][s] = true
		}
		return
	}
	if l.received[q] == nil {
		l.received[q] = map[uint64]int{}
	}
	for _, s := range seqs {
		l.received[q][s]++
	}
}

// delivered records a delivery of seq of queue q for the order check: a first delivery must
// carry a higher number than every first delivery of q before it.
func (l *ledger) delivered(q string, seq uint64, redelivered bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	before := l.seen[q][seq]
	if l.seen[q] == nil {
		l.seen[q] = map[uint64]bool{}
	}
	l.seen[q][seq] = true
	if redelivered {
		l.redelivered++
		return
	}
	if last := l.fresh[q]; seq <= last || before {
		what := "first delivery"
		if before {
			l.unflagged++
			what = "redelivery without the redelivered flag"
		} else {
			l.outOfOrder++
		}
		if len(l.orderSamples) < 10 {
			l.orderSamples = append(l.orderSamples, fmt.Sprintf("%s #%d: %s after #%d", q, seq, what, last))
		}
		return
	}
	l.fresh[q] = seq
}

// settleEvery bounds the acked deliveries a consumer holds unsettled: at most that many are in
// doubt when its session dies.
const settleEvery = 20

// consumer consumes queue q on the node at addr with manual acks until ctx ends, recording
// deliveries once the broker is known to have processed their acks (ledger.settle: a basic.qos
// round trip whenever no delivery is waiting or settleEvery are unsettled, and the close); it
// reconnects after a failure. With pauses, it consumes for 1 to 4 s, then stays away for 0.5 to 3 s, so
// that the queue holds a backlog when a fault strikes (messages that must come back from the
// home node's disk after a kill -9).
func consumer(ctx context.Context, l *ledger, addr, q string, pauses bool) {
	for ctx.Err() == nil {
		var turn <-chan time.Time
		if pauses {
			turn = time.After(time.Second + rand.N(3*time.Second))
		}
		conn, err := dial(addr)
		if err != nil {
			sleepCtx(ctx, 200*time.Millisecond)
			continue
		}
		ch, err := conn.Channel()
		var ds <-chan amqp.Delivery
		if err == nil {
			if err = ch.Qos(100, 0, false); err == nil {
				ds, err = ch.Consume(q, "", false, false, false, false, nil)
			}
		}
		if err != nil {
			conn.Close()
			sleepCtx(ctx, 200*time.Millisecond)
			continue
		}
		var pending []uint64 // this session's acked deliveries not yet settled
		pause := false
	deliveries:
		for {
			select {
			case <-ctx.Done():
				break deliveries
			case <-turn:
				pause = true
				break deliveries
			case d, ok := <-ds:
				if !ok {
					break deliveries
				}
				name, seqText, found := strings.Cut(string(d.Body), ":")
				seq, err := strconv.ParseUint(seqText, 10, 64)
				if found && err == nil && name == q {
					pending = append(pending, seq)
					l.delivered(q, seq, d.Redelivered)
				}
				if err := d.Ack(false); err != nil {
					break deliveries
				}
				if len(ds) == 0 || len(pending) >= settleEvery {
					// qos-ok comes after the broker processed the acks sent before it.
					if err := ch.Qos(100, 0, false); err != nil {
						break deliveries
					}
					l.settle(q, pending, nil)
					pending = pending[:0]
				}
			}
		}
		// Unacked deliveries go back to the queue; the acked ones left count once the
		// close-ok says the broker processed their acks, else they are in doubt.
		l.settle(q, pending, conn.Close())
		if pause {
			sleepCtx(ctx, 500*time.Millisecond+rand.N(2500*time.Millisecond))
		}
	}
}

// declarer declares a new durable queue on the node at addr every interval until ctx ends,
// on a fresh connection each time (a 541 closes the connection), and records the answer. An
// answer that takes more than 30 s is a hang.
func declarer(ctx context.Context, l *ledger, addr, prefix string, interval time.Duration, qargs amqp.Table) {
	for i := 0; ctx.Err() == nil; i++ {
		name := fmt.Sprintf("%s-%d", prefix, i)
		done := make(chan error, 1)
		go func() {
			conn, err := dial(addr)
			if err != nil {
				done <- err
				return
			}
			defer conn.Close()
			ch, err := conn.Channel()
			if err == nil {
				_, err = ch.QueueDeclare(name, true, false, false, false, qargs)
			}
			done <- err
		}()
		select {
		case err := <-done:
			l.mu.Lock()
			if err == nil {
				l.declared = append(l.declared, name)
			} else {
				l.declareErrs[errKind(err)]++
			}
			l.mu.Unlock()
		case <-time.After(30 * time.Second):
			l.mu.Lock()
			l.hung = append(l.hung, "declare of "+name+" on "+addr)
			l.mu.Unlock()
		}
		if !sleepCtx(ctx, interval) {
			return
		}
	}
}
