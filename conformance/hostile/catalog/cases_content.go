package catalog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/amqp"
)

// Cases about content: declared sizes that lie, bad property lists, properties RabbitMQ refuses,
// and replies a client asks for and never reads.

// dialSmallRcvBuf is dialRaw with a small socket receive buffer set before connecting, so a
// client that does not read pushes back on the broker after a few KiB instead of the megabytes
// loopback autotuning would absorb.
func dialSmallRcvBuf(ctx context.Context, e *Env) (*rawConn, error) {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = setRcvBuf(fd, 4096) })
		return errors.Join(err, serr)
	}}
	c, err := d.DialContext(ctx, "tcp", e.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", e.Addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return &rawConn{c: c, fr: amqp.NewFrameReader(c, 256<<10)}, nil
}

// LyingContent describes finding 1 of issue 23: content headers that declare a large body,
// each followed by a 1-byte body frame, on several channels of one connection.
type LyingContent struct {
	Channels     int    // channels 2..Channels+1 each carry one lying message (1 is for the round trip)
	DeclaredSize uint64 // body size declared by each content header
	Exchange     string // publish target; "" is the default exchange
	RoutingKey   string
	// User and Pass log in instead of the Env's user (a user without write permission, say).
	User, Pass string
	// AllowedClose is a channel.close reply code accepted instead of silence on the lying
	// channels (a broker may refuse the publish at the method frame: 403, 404); 0 accepts none.
	AllowedClose uint16
}

// Send opens a raw connection, sends the lying messages and returns once the broker has read
// every frame (a round trip on a further channel proves it), leaving the connection open: the
// caller measures memory and then closes it. It returns how many lying channels were closed
// with AllowedClose.
func (l LyingContent) Send(ctx context.Context, e *Env) (io.Closer, int, error) {
	r, err := rawSession(ctx, e, hsOpts{user: l.User, pass: l.Pass})
	if err != nil {
		return nil, 0, err
	}
	var b []byte
	for ch := uint16(2); ch <= uint16(l.Channels)+1; ch++ {
		b = amqp.AppendMethodFrame(b, ch, &amqp.ChannelOpen{})
	}
	for ch := uint16(2); ch <= uint16(l.Channels)+1; ch++ {
		b = amqp.AppendMethodFrame(b, ch, &amqp.BasicPublish{Exchange: l.Exchange, RoutingKey: l.RoutingKey})
		b = amqp.AppendFrame(b, amqp.FrameHeader, ch, contentHeader(l.DeclaredSize, 0, nil))
		b = amqp.AppendFrame(b, amqp.FrameBody, ch, []byte{'x'})
	}
	// Channel 1 carries the round trip.
	b = amqp.AppendMethodFrame(b, 1, &amqp.BasicQos{})
	if err := r.write(b); err != nil {
		r.Close()
		return nil, 0, err
	}
	opened, closed := 0, 0
	for {
		f, err := r.next()
		if err != nil {
			r.Close()
			return nil, closed, fmt.Errorf("waiting for the round trip: %w", err)
		}
		switch m := f.method.(type) {
		case *amqp.ChannelOpenOk:
			opened++
			continue
		case *amqp.BasicQosOk:
			if opened != l.Channels {
				r.Close()
				return nil, closed, fmt.Errorf("%d of %d channels opened", opened, l.Channels)
			}
			return r, closed, nil
		case *amqp.ChannelClose:
			if l.AllowedClose != 0 && m.ReplyCode == l.AllowedClose && f.channel != 1 {
				closed++
				r.send(f.channel, &amqp.ChannelCloseOk{})
				continue
			}
		}
		r.Close()
		return nil, closed, fmt.Errorf("got %s%s while sending lying content", f, closeText(f.method))
	}
}

// GetRecoverFlood is finding 3 of issue 23: N pipelined basic.get (with acks) + basic.recover
// (requeue) pairs on a queue holding a large message, from a client that never reads.
type GetRecoverFlood struct {
	Queue string
	Pairs int
}

// Send writes the pairs on a new raw connection with a small receive buffer and returns it
// unread; the caller waits, measures and closes it.
func (g GetRecoverFlood) Send(ctx context.Context, e *Env) (io.Closer, error) {
	r, err := dialSmallRcvBuf(ctx, e)
	if err != nil {
		return nil, err
	}
	if err := r.handshake(e, hsOpts{}); err != nil {
		r.Close()
		return nil, err
	}
	if err := r.openChannel(1); err != nil {
		r.Close()
		return nil, err
	}
	var pair []byte
	pair = amqp.AppendMethodFrame(pair, 1, &amqp.BasicGet{Queue: g.Queue})
	pair = amqp.AppendMethodFrame(pair, 1, &amqp.BasicRecover{Requeue: true})
	// The writes may block once the broker stops reading us: that is the broker defending itself,
	// so the write deadline is short and a timeout ends the flood without failing it.
	r.c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	for i := 0; i < g.Pairs; i++ {
		if _, err := r.c.Write(pair); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			r.Close()
			return nil, fmt.Errorf("pair %d: %w", i, err)
		}
	}
	r.c.SetWriteDeadline(time.Time{})
	return r, nil
}

// publishConfirmed publishes n copies of body to the default exchange with routing key q and
// waits for the confirms.
func publishConfirmed(t *T, q string, n int, body []byte) error {
	_, ch, err := t.Channel()
	if err != nil {
		return err
	}
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("confirm.select: %w", err)
	}
	confs := ch.NotifyPublish(make(chan amqp091.Confirmation, n+1))
	for i := 0; i < n; i++ {
		if err := ch.PublishWithContext(t.Ctx, "", q, false, false, amqp091.Publishing{Body: body}); err != nil {
			return fmt.Errorf("publish %d: %w", i, err)
		}
	}
	for i := 0; i < n; i++ {
		select {
		case c := <-confs:
			if !c.Ack {
				return fmt.Errorf("publish %d nacked", c.DeliveryTag)
			}
		case <-t.Ctx.Done():
			return fmt.Errorf("confirms: %d of %d: %w", i, n, t.Ctx.Err())
		}
	}
	return nil
}

// queueCount returns the ready messages and consumers of q (passive declare on a fresh
// connection).
func queueCount(ctx context.Context, e *Env, q string) (msgs, consumers int, err error) {
	err = adminDo(ctx, e, func(ch *amqp091.Channel) error {
		st, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
		msgs, consumers = st.Messages, st.Consumers
		return err
	})
	return msgs, consumers, err
}

// waitQueue polls q until cond holds for its counts or the case's deadline passes.
func waitQueue(t *T, q string, what string, cond func(msgs, consumers int) bool) error {
	var msgs, cons int
	var err error
	for {
		msgs, cons, err = queueCount(t.Ctx, t.Env, q)
		if err == nil && cond(msgs, cons) {
			return nil
		}
		if sleepCtx(t.Ctx, 50*time.Millisecond) != nil {
			return fmt.Errorf("queue %s never had %s (last: %d messages, %d consumers, err %v)", q, what, msgs, cons, err)
		}
	}
}

// holdOpen keeps c open for d while the runner samples memory, then closes it.
func holdOpen(t *T, c io.Closer, d time.Duration) {
	sleepCtx(t.Ctx, d)
	c.Close()
}

// propsCase publishes with a raw property list on channel 1 and expects channel.close code.
func propsCase(name string, finding int, sends string, code uint16, text string, flags uint16, props []byte) Case {
	return sessionCase(Case{Name: name, Finding: finding, Sends: sends, Expect: fmt.Sprintf("channel.close %d %s", code, text)},
		func(t *T, r *rawConn) error {
			q, err := t.Queue(nil)
			if err != nil {
				return err
			}
			if err := r.send(1, &amqp.BasicPublish{RoutingKey: q}); err != nil {
				return err
			}
			if err := r.sendFrame(amqp.FrameHeader, 1, contentHeader(1, flags, props)); err != nil {
				return err
			}
			if err := r.sendFrame(amqp.FrameBody, 1, []byte("x")); err != nil {
				return err
			}
			// basic.qos after the publish: its qos-ok means the publish was accepted.
			if err := r.send(1, &amqp.BasicQos{}); err != nil {
				return err
			}
			f, err := r.next()
			if err != nil {
				return fmt.Errorf("waiting for channel.close %d: %w", code, err)
			}
			c, ok := f.method.(*amqp.ChannelClose)
			if !ok {
				return fmt.Errorf("publish accepted: got %s%s, want channel.close %d", f, closeText(f.method), code)
			}
			if c.ReplyCode != code || !strings.HasPrefix(c.ReplyText, text) {
				return fmt.Errorf("channel.close %d %q, want %d %q...", c.ReplyCode, c.ReplyText, code, text)
			}
			if n, _, err := queueCount(t.Ctx, t.Env, q); err != nil || n != 0 {
				return fmt.Errorf("refused message was enqueued: %d messages (%v)", n, err)
			}
			return nil
		})
}

func shortstr(s string) []byte { return append([]byte{byte(len(s))}, s...) }

// Property flag bits of the basic class.
const (
	flagHeaders    = 1 << 13
	flagExpiration = 1 << 8
	flagUserID     = 1 << 4
)

func contentCases() []Case {
	return []Case{
		sessionCase(Case{Name: "declared-1tib-body", Finding: 1,
			Sends:  "publish to a queue, a content header declaring 1 TiB, 1 byte of body, then a synchronous method on another channel",
			Expect: "the other channel answers; no allocation of the declared size (RabbitMQ waits for the body; channel.close 406 at once is accepted)"},
			func(t *T, r *rawConn) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				if err := r.openChannel(2); err != nil {
					return err
				}
				if err := r.send(1, &amqp.BasicPublish{RoutingKey: q}); err != nil {
					return err
				}
				if err := r.sendFrame(amqp.FrameHeader, 1, contentHeader(1<<40, 0, nil)); err != nil {
					return err
				}
				if err := r.sendFrame(amqp.FrameBody, 1, []byte("x")); err != nil {
					return err
				}
				// RabbitMQ waits for the body; refusing the declared size at once with the 406
				// RabbitMQ gives once the body is complete is as good.
				if err := r.send(2, &amqp.BasicQos{}); err != nil {
					return err
				}
				for {
					f, err := r.next()
					if err != nil {
						return fmt.Errorf("waiting for basic.qos-ok on channel 2: %w", err)
					}
					if c, ok := f.method.(*amqp.ChannelClose); ok && f.channel == 1 && c.ReplyCode == 406 {
						t.Logf("refused at the header: %d %q", c.ReplyCode, c.ReplyText)
						r.send(1, &amqp.ChannelCloseOk{})
						continue
					}
					if f.method == nil || f.method.Name() != "basic.qos-ok" || f.channel != 2 {
						return fmt.Errorf("got %s%s, want basic.qos-ok on channel 2", f, closeText(f.method))
					}
					break
				}
				holdOpen(t, r, 500*time.Millisecond)
				return nil
			}),
		connCloseCase("body-longer-than-declared", "publish, a header declaring 2 bytes, a 3-byte body frame, then queue.declare",
			505, "UNEXPECTED_FRAME", func(r *rawConn) error {
				if err := r.send(1, &amqp.BasicPublish{RoutingKey: "nowhere"}); err != nil {
					return err
				}
				if err := r.sendFrame(amqp.FrameHeader, 1, contentHeader(2, 0, nil)); err != nil {
					return err
				}
				if err := r.sendFrame(amqp.FrameBody, 1, []byte("abc")); err != nil {
					return err
				}
				return r.send(1, &amqp.QueueDeclare{Queue: "x", Passive: true})
			}),
		connCloseCase("header-wrong-class", "publish, then a content header for class 10 (connection)", 505, "UNEXPECTED_FRAME",
			func(r *rawConn) error {
				if err := r.send(1, &amqp.BasicPublish{RoutingKey: "nowhere"}); err != nil {
					return err
				}
				h := contentHeader(1, 0, nil)
				h[1] = 10
				return r.sendFrame(amqp.FrameHeader, 1, h)
			}),
		propsCase("user-id-empty", 8, "a publish whose user-id property is present and empty", 406, "PRECONDITION_FAILED",
			flagUserID, shortstr("")),
		propsCase("user-id-impersonation", 0, "a publish whose user-id names another user", 406, "PRECONDITION_FAILED",
			flagUserID, shortstr("someone-else")),
		propsCase("expiration-negative", 0, "a publish with expiration \"-1\"", 406, "PRECONDITION_FAILED",
			flagExpiration, shortstr("-1")),
		propsCase("expiration-not-a-number", 0, "a publish with expiration \"soon\"", 406, "PRECONDITION_FAILED",
			flagExpiration, shortstr("soon")),
		sessionCase(Case{Name: "headers-deep-nesting", Sends: "a publish whose headers property nests tables 5000 deep, then basic.get of it",
			Expect: "the broker stays up (RabbitMQ enqueues it and delivers it back)"},
			func(t *T, r *rawConn) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				if err := r.send(1, &amqp.BasicPublish{RoutingKey: q}); err != nil {
					return err
				}
				if err := r.sendFrame(amqp.FrameHeader, 1, contentHeader(1, flagHeaders, deepTable(5000))); err != nil {
					return err
				}
				if err := r.sendFrame(amqp.FrameBody, 1, []byte("x")); err != nil {
					return err
				}
				if err := r.send(1, &amqp.BasicGet{Queue: q, NoAck: true}); err != nil {
					return err
				}
				m, err := r.next()
				if err != nil {
					return err
				}
				if m.method == nil || m.method.Name() != "basic.get-ok" {
					return fmt.Errorf("got %s%s, want basic.get-ok", m, closeText(m.method))
				}
				h, err := r.next()
				if err != nil {
					return err
				}
				if h.typ != amqp.FrameHeader || !bytes.Equal(h.payload[14:], deepTable(5000)) {
					return errors.New("the headers came back changed")
				}
				return nil
			}),
		{
			Name: "slow-body-dribble", Sends: "a 64 KiB message whose body arrives in 1 KiB frames every 25 ms (1.6 s)",
			Expect: "the message is enqueued intact",
			Run: func(t *T) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				r, err := t.session(hsOpts{})
				if err != nil {
					return err
				}
				body := bytes.Repeat([]byte("0123456789abcdef"), 4096)
				if err := r.send(1, &amqp.BasicPublish{RoutingKey: q}); err != nil {
					return err
				}
				if err := r.sendFrame(amqp.FrameHeader, 1, contentHeader(uint64(len(body)), 0, nil)); err != nil {
					return err
				}
				for i := 0; i < len(body); i += 1024 {
					if err := r.sendFrame(amqp.FrameBody, 1, body[i:i+1024]); err != nil {
						return err
					}
					if err := sleepCtx(t.Ctx, 25*time.Millisecond); err != nil {
						return err
					}
				}
				if err := r.roundTrip(1); err != nil {
					return err
				}
				_, ch, err := t.Channel()
				if err != nil {
					return err
				}
				if err := waitQueue(t, q, "the message", func(m, _ int) bool { return m == 1 }); err != nil {
					return err
				}
				d, ok, err := ch.Get(q, true)
				if err != nil || !ok || !bytes.Equal(d.Body, body) {
					return fmt.Errorf("basic.get: ok=%v err=%v, body intact=%v", ok, err, bytes.Equal(d.Body, body))
				}
				return nil
			},
		},
	}
}

// memoryCases are the cases that make a broker without bounds grow by gigabytes. They run after
// the others so that memory a broker keeps after one of them cannot hide another's growth; the
// restricted-user variant comes first for the same reason.
func memoryCases() []Case {
	return []Case{
		{
			Name: "get-recover-loop-unread", Finding: 3,
			Sends:   "a 1 MiB message, then 600 pipelined basic.get + basic.recover(requeue) pairs, never reading; held 2 s",
			Expect:  "the broker's memory stays bounded (it stops reading the client); the message stays in its queue",
			Timeout: 15 * time.Second,
			Run: func(t *T) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				if err := publishConfirmed(t, q, 1, bytes.Repeat([]byte("g"), 1<<20)); err != nil {
					return err
				}
				c, err := GetRecoverFlood{Queue: q, Pairs: 600}.Send(t.Ctx, t.Env)
				if err != nil {
					return err
				}
				t.track(c)
				holdOpen(t, c, 2*time.Second)
				return waitQueue(t, q, "its message back", func(m, _ int) bool { return m == 1 })
			},
		},
		{
			Name: "consumer-never-reads", Sends: "1000 messages of 32 KiB, then a consumer without prefetch limit that never reads; held 1.5 s",
			Expect:  "the broker's memory stays bounded; once the consumer goes all 1000 messages are ready again",
			Timeout: 15 * time.Second,
			Run: func(t *T) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				if err := publishConfirmed(t, q, 1000, bytes.Repeat([]byte("c"), 32<<10)); err != nil {
					return err
				}
				r, err := dialSmallRcvBuf(t.Ctx, t.Env)
				if err != nil {
					return err
				}
				t.track(r)
				if err := r.handshake(t.Env, hsOpts{}); err != nil {
					return err
				}
				if err := r.openChannel(1); err != nil {
					return err
				}
				if err := r.send(1, &amqp.BasicConsume{Queue: q, ConsumerTag: "never-reads"}); err != nil {
					return err
				}
				holdOpen(t, r, 1500*time.Millisecond)
				return waitQueue(t, q, "all 1000 messages ready", func(m, c int) bool { return m == 1000 && c == 0 })
			},
		},
		{
			Name: "returns-never-read", Sends: "20000 mandatory 1 KiB publishes that cannot be routed, never reading the basic.returns",
			Expect:  "the broker stays up with bounded memory (it stops reading the client)",
			Timeout: 12 * time.Second,
			Run: func(t *T) error {
				r, err := dialSmallRcvBuf(t.Ctx, t.Env)
				if err != nil {
					return err
				}
				t.track(r)
				if err := r.handshake(t.Env, hsOpts{}); err != nil {
					return err
				}
				if err := r.openChannel(1); err != nil {
					return err
				}
				var msg []byte
				msg = amqp.AppendMethodFrame(msg, 1, &amqp.BasicPublish{RoutingKey: t.Env.name("unroutable"), Mandatory: true})
				msg = amqp.AppendContent(msg, 1, contentHeader(1024, 0, nil), bytes.Repeat([]byte("r"), 1024), r.frameMax)
				r.c.SetWriteDeadline(time.Now().Add(3 * time.Second))
				sent := 0
				for ; sent < 20000; sent++ {
					if _, err := r.c.Write(msg); err != nil {
						break // the broker stopped reading us: fine
					}
				}
				t.Logf("%d publishes written", sent)
				holdOpen(t, r, time.Second)
				return nil
			},
		},
		{
			Name: "declared-128mib-body-no-write-permission", Finding: 1, Needs: NeedRestricted,
			Sends:   "as a user without write permission, on 8 channels: publish, a 128 MiB content header, 1 byte of body",
			Expect:  "no reply or channel.close 403 per channel; the broker's memory does not move",
			Timeout: 15 * time.Second,
			Run: func(t *T) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				c, closed, err := LyingContent{Channels: 8, DeclaredSize: 128 << 20, RoutingKey: q,
					User: t.Env.RestrictedUser, Pass: t.Env.RestrictedPass, AllowedClose: 403}.Send(t.Ctx, t.Env)
				if err != nil {
					return err
				}
				t.track(c)
				t.Logf("%d of 8 channels closed with 403 before the body", closed)
				holdOpen(t, c, 1500*time.Millisecond)
				if n, _, err := queueCount(t.Ctx, t.Env, q); err != nil || n != 0 {
					return fmt.Errorf("messages were enqueued: %d (%v)", n, err)
				}
				return nil
			},
		},
		{
			Name: "declared-128mib-body-unknown-exchange", Finding: 1,
			Sends:   "on 8 channels: publish to an exchange that does not exist, a 128 MiB content header, 1 byte of body",
			Expect:  "no reply or channel.close 404 per channel; the broker's memory does not move",
			Timeout: 15 * time.Second,
			Run: func(t *T) error {
				c, closed, err := LyingContent{Channels: 8, DeclaredSize: 128 << 20, Exchange: t.Env.name("no-such-exchange"), AllowedClose: 404}.Send(t.Ctx, t.Env)
				if err != nil {
					return err
				}
				t.track(c)
				t.Logf("%d of 8 channels closed with 404 before the body", closed)
				holdOpen(t, c, 1500*time.Millisecond)
				return nil
			},
		},
		{
			Name: "declared-128mib-body-16-channels", Finding: 1,
			Sends:   "on 16 channels: publish to a queue, a content header declaring 128 MiB, a 1-byte body frame; held 1.5 s",
			Expect:  "no reply, the broker's memory does not move, nothing is enqueued",
			Timeout: 15 * time.Second,
			Run: func(t *T) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				c, _, err := LyingContent{Channels: 16, DeclaredSize: 128 << 20, RoutingKey: q}.Send(t.Ctx, t.Env)
				if err != nil {
					return err
				}
				t.track(c)
				holdOpen(t, c, 1500*time.Millisecond)
				if n, _, err := queueCount(t.Ctx, t.Env, q); err != nil || n != 0 {
					return fmt.Errorf("incomplete messages were enqueued: %d (%v)", n, err)
				}
				return nil
			},
		},
	}
}
