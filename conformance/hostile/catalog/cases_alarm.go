package catalog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/amqp"
)

// Alarm cases: they need Env.RaiseAlarm and Env.ClearAlarm, and always clear the alarm when
// they end.

// raiseAlarm raises the alarm and registers its clearing (nothing to do when it is always on).
func raiseAlarm(t *T) error {
	if t.Env.AlarmOn {
		return nil
	}
	t.Cleanup(func(ctx context.Context) {
		if err := t.Env.ClearAlarm(ctx); err != nil {
			t.Logf("clearing the alarm: %v", err)
		}
	})
	if err := t.Env.RaiseAlarm(t.Ctx); err != nil {
		return fmt.Errorf("raising the alarm: %w", err)
	}
	return nil
}

// BlockedPublisher is finding 2 of issue 23: a client holding an exclusive queue and an unacked
// message publishes while an alarm is on, is blocked, and its socket then closes.
type BlockedPublisher struct {
	Exclusive string // name of the exclusive queue the client declares
	// Shared is a queue with (at least) one ready message, of which the client takes one unacked;
	// "" leaves that part out (when nothing could be published before the alarm).
	Shared string
	// MidBody also leaves a 1 MiB message half-sent (header and 64 KiB of body) before the socket closes.
	MidBody bool
}

// Setup connects (heartbeat 1 s, which the client keeps sending), declares the exclusive queue
// and takes one message from Shared without acking it. Raise the alarm after Setup, then call Block.
func (b BlockedPublisher) Setup(ctx context.Context, e *Env) (*BlockedClient, error) {
	r, err := dialRaw(ctx, e)
	if err != nil {
		return nil, err
	}
	c := &BlockedClient{r: r, b: b}
	if err := r.handshake(e, hsOpts{heartbeat: 1, setHB: true}); err != nil {
		r.Close()
		return nil, err
	}
	c.stopHB = r.heartbeats(300 * time.Millisecond)
	if err := c.setup(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// BlockedClient is the raw client of BlockedPublisher.
type BlockedClient struct {
	r      *rawConn
	b      BlockedPublisher
	stopHB func()
}

func (c *BlockedClient) setup() error {
	r := c.r
	if err := r.openChannel(1); err != nil {
		return err
	}
	if err := r.send(1, &amqp.QueueDeclare{Queue: c.b.Exclusive, Exclusive: true}); err != nil {
		return err
	}
	if _, err := r.expect(1, "queue.declare-ok"); err != nil {
		return err
	}
	if err := r.send(1, &amqp.BasicQos{PrefetchCount: 1}); err != nil {
		return err
	}
	if _, err := r.expect(1, "basic.qos-ok"); err != nil {
		return err
	}
	if c.b.Shared == "" {
		return nil
	}
	if err := r.send(1, &amqp.BasicConsume{Queue: c.b.Shared, ConsumerTag: "blocked"}); err != nil {
		return err
	}
	if _, err := r.expect(1, "basic.consume-ok"); err != nil {
		return err
	}
	if _, err := r.expect(1, "basic.deliver"); err != nil {
		return err
	}
	for got, size := uint64(0), uint64(0); ; {
		f, err := r.next()
		if err != nil {
			return err
		}
		switch f.typ {
		case amqp.FrameHeader:
			h, err := amqp.DecodeContentHeader(f.payload)
			if err != nil {
				return err
			}
			size = h.BodySize
		case amqp.FrameBody:
			got += uint64(len(f.payload))
		default:
			return fmt.Errorf("got %s in a delivery", f)
		}
		if got >= size {
			return nil
		}
	}
}

// Block publishes (while the alarm is on) and waits for connection.blocked.
func (c *BlockedClient) Block(ctx context.Context) error {
	r := c.r
	if err := r.publish(1, "", c.b.Exclusive, nil, []byte("blocked")); err != nil {
		return err
	}
	dl := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	r.c.SetReadDeadline(dl)
	for {
		f, err := r.next()
		if err != nil {
			return fmt.Errorf("waiting for connection.blocked: %w", err)
		}
		if f.method == nil {
			continue
		}
		if _, ok := f.method.(*amqp.ConnectionBlocked); ok {
			break
		}
		return fmt.Errorf("got %s%s, want connection.blocked", f, closeText(f.method))
	}
	if c.b.MidBody {
		var b []byte
		b = amqp.AppendMethodFrame(b, 1, &amqp.BasicPublish{RoutingKey: c.b.Exclusive})
		b = amqp.AppendFrame(b, amqp.FrameHeader, 1, contentHeader(1<<20, 0, nil))
		b = amqp.AppendFrame(b, amqp.FrameBody, 1, bytes.Repeat([]byte("m"), 64<<10))
		r.c.SetWriteDeadline(time.Now().Add(time.Second))
		r.write(b) // may not all fit in the socket buffers of a broker that stopped reading
	}
	return nil
}

// Close stops the heartbeats and closes the socket without a close handshake: the client is gone.
func (c *BlockedClient) Close() error {
	c.stopHB()
	return c.r.Close()
}

// WaitTornDown waits until the broker has let go of what the dead client held: its exclusive
// queue is gone (404, not 405) and its unacked message is ready again in Shared. It returns how
// long that took.
func (b BlockedPublisher) WaitTornDown(ctx context.Context, e *Env) (time.Duration, error) {
	start := time.Now()
	var exclErr error
	var ready int
	for {
		exclErr = adminDo(ctx, e, func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclarePassive(b.Exclusive, false, false, false, false, nil)
			return err
		})
		var err error
		ready = 1
		if b.Shared != "" {
			ready, _, err = queueCount(ctx, e, b.Shared)
		}
		if wantCode(exclErr, 404) == nil && err == nil && ready >= 1 {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			unacked := "no unacked message in this run"
			if b.Shared != "" {
				unacked = fmt.Sprintf("its unacked message requeued: %v", ready >= 1)
			}
			return time.Since(start), fmt.Errorf("dead blocked client not torn down after %s: its exclusive queue answers %v; %s",
				time.Since(start).Round(time.Millisecond), exclErr, unacked)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func blockedPublisherCase(name, sends string, midBody bool) Case {
	return Case{
		Name: name, Finding: 2, Needs: NeedAlarm, Timeout: 30 * time.Second,
		Sends:  sends,
		Expect: "within 8 s of the socket closing the connection is torn down: its exclusive queue is gone (404) and its unacked message requeued (unless -alarm-on)",
		Run: func(t *T) error {
			shared := ""
			if !t.Env.AlarmOn {
				var err error
				if shared, err = t.Queue(nil); err != nil {
					return err
				}
				if err := publishConfirmed(t, shared, 1, []byte("unacked")); err != nil {
					return err
				}
			}
			bp := BlockedPublisher{Exclusive: t.Env.name("excl"), Shared: shared, MidBody: midBody}
			t.DeleteQueueLater(bp.Exclusive)
			c, err := bp.Setup(t.Ctx, t.Env)
			if err != nil {
				return err
			}
			t.track(c)
			if err := raiseAlarm(t); err != nil {
				return err
			}
			if err := c.Block(t.Ctx); err != nil {
				return err
			}
			c.Close()
			ctx, cancel := context.WithTimeout(t.Ctx, 8*time.Second)
			defer cancel()
			took, err := bp.WaitTornDown(ctx, t.Env)
			if err == nil {
				t.Logf("torn down %s after the socket closed", took.Round(time.Millisecond))
			}
			return err
		},
	}
}

func alarmCases() []Case {
	return []Case{
		blockedPublisherCase("alarm-blocked-publisher-dies", "under an alarm: a publisher (heartbeat 1 s) holding an exclusive queue and an unacked message publishes, is blocked, and its socket closes", false),
		blockedPublisherCase("alarm-blocked-publisher-dies-mid-body", "as alarm-blocked-publisher-dies, with a 1 MiB message half-sent when the socket closes", true),
		{
			Name: "alarm-consumers-still-served", Needs: NeedAlarm | NeedAlarmHook, Timeout: 20 * time.Second,
			Sends:  "under an alarm: a new connection takes a message with basic.get and another consumes one",
			Expect: "both get their message: alarms block publishers only",
			Run: func(t *T) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				if err := publishConfirmed(t, q, 2, []byte("m")); err != nil {
					return err
				}
				if err := raiseAlarm(t); err != nil {
					return err
				}
				_, ch, err := t.Channel()
				if err != nil {
					return err
				}
				if _, ok, err := ch.Get(q, true); err != nil || !ok {
					return fmt.Errorf("basic.get under the alarm: ok=%v err=%v", ok, err)
				}
				d, err := ch.Consume(q, "", true, false, false, false, nil)
				if err != nil {
					return err
				}
				select {
				case <-d:
					return nil
				case <-time.After(3 * time.Second):
					return errors.New("no delivery to a consumer under the alarm")
				}
			},
		},
	}
}
