package catalog

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/amqp"
)

// Floods, permission bypass attempts and queue arguments RabbitMQ refuses.

// wantCode checks that err is an AMQP exception with code.
func wantCode(err error, code int) error {
	if err == nil {
		return fmt.Errorf("succeeded, want reply code %d", code)
	}
	var ae *amqp091.Error
	if !errors.As(err, &ae) {
		return fmt.Errorf("got %v, want reply code %d", err, code)
	}
	if ae.Code != code {
		return fmt.Errorf("reply %d %q, want %d", ae.Code, ae.Reason, code)
	}
	return nil
}

// argCase declares a queue with args on a fresh channel; RabbitMQ refuses it with 406.
func argCase(name string, finding int, needs Need, args amqp091.Table) Case {
	return Case{
		Name: name, Finding: finding, Needs: needs,
		Sends: fmt.Sprintf("queue.declare with arguments %v", args), Expect: "channel.close 406 PRECONDITION_FAILED; no queue",
		Run: func(t *T) error {
			_, ch, err := t.Channel()
			if err != nil {
				return err
			}
			q := t.Env.name("arg")
			t.DeleteQueueLater(q)
			_, err = ch.QueueDeclare(q, false, false, false, false, args)
			if err := wantCode(err, 406); err != nil {
				return err
			}
			t.Logf("refused: %v", err)
			// A queue that was created anyway would be deleted by its own x-expires: check now.
			err = adminDo(t.Ctx, t.Env, func(ch *amqp091.Channel) error {
				_, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
				return err
			})
			if err := wantCode(err, 404); err != nil {
				return fmt.Errorf("the refused queue exists: %w", err)
			}
			return nil
		},
	}
}

// chanErrCase runs f on a fresh channel; the broker must answer with channel.close code, and the
// connection must survive it.
func chanErrCase(name, sends string, code int, needs Need, f func(t *T, ch *amqp091.Channel) error) Case {
	return Case{
		Name: name, Sends: sends, Needs: needs,
		Expect: fmt.Sprintf("channel.close %d, connection still usable", code),
		Run: func(t *T) error {
			c, ch, err := t.Channel()
			if err != nil {
				return err
			}
			if err := wantCode(f(t, ch), code); err != nil {
				return err
			}
			if _, err := c.Channel(); err != nil {
				return fmt.Errorf("connection unusable after the channel error: %w", err)
			}
			return nil
		},
	}
}

// restrictedChanErrCase is chanErrCase as the restricted user.
func restrictedChanErrCase(name, sends string, f func(t *T, ch *amqp091.Channel) error) Case {
	return Case{
		Name: name, Sends: sends, Needs: NeedRestricted,
		Expect: "channel.close 403 ACCESS_REFUSED",
		Run: func(t *T) error {
			c, err := t.dialURL(t.Env.RestrictedURL)
			if err != nil {
				return err
			}
			ch, err := c.Channel()
			if err != nil {
				return err
			}
			return wantCode(f(t, ch), 403)
		},
	}
}

// publishRefused publishes on ch and waits for the asynchronous channel.close.
func publishRefused(t *T, ch *amqp091.Channel, exchange, key string) error {
	closes := ch.NotifyClose(make(chan *amqp091.Error, 1))
	if err := ch.PublishWithContext(t.Ctx, exchange, key, false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
		return err
	}
	select {
	case e := <-closes:
		if e == nil {
			return errors.New("channel closed without an error")
		}
		return e
	case <-time.After(3 * time.Second):
		return errors.New("publish not refused within 3 s")
	}
}

// floodTimeout bounds the flood cases: RabbitMQ needs 2-4 s for them on an idle machine, more on
// a busy one, and a flood that times out says nothing about the broker.
const floodTimeout = 20 * time.Second

func floodCases() []Case {
	return []Case{
		sessionCase(Case{Name: "channel-max-flood", Sends: "2047 pipelined channel.open (the offered channel_max) and then one more",
			Expect: "2047 open-oks, then connection.close 530 NOT_ALLOWED", Timeout: floodTimeout},
			func(t *T, r *rawConn) error {
				var b []byte
				for ch := 2; ch <= int(r.chMax)+1; ch++ {
					b = amqp.AppendMethodFrame(b, uint16(ch), &amqp.ChannelOpen{})
				}
				if err := r.write(b); err != nil {
					return err
				}
				// RabbitMQ runs a process per channel: the open-oks come in any order.
				if err := expectPerChannel(r, 2, int(r.chMax), "channel.open-ok"); err != nil {
					return err
				}
				return r.expectConnClose(530, "NOT_ALLOWED")
			}),
		sessionCase(Case{Name: "channel-churn", Sends: "2000 pipelined channel.open + channel.close pairs",
			Expect: "every open-ok and close-ok, the connection still works", Timeout: floodTimeout},
			func(t *T, r *rawConn) error {
				var b []byte
				for ch := 2; ch < 2002; ch++ {
					b = amqp.AppendMethodFrame(b, uint16(ch), &amqp.ChannelOpen{})
					b = amqp.AppendMethodFrame(b, uint16(ch), &amqp.ChannelClose{ReplyCode: 200})
				}
				if err := r.write(b); err != nil {
					return err
				}
				if err := expectPerChannel(r, 2, 2001, "channel.open-ok", "channel.close-ok"); err != nil {
					return err
				}
				return r.roundTrip(1)
			}),
		sessionCase(Case{Name: "queue-flood-exclusive", Sends: "1000 pipelined exclusive queue.declare (no-wait), then the connection closes",
			Expect: "all are declared; all are gone once the connection is", Timeout: floodTimeout},
			func(t *T, r *rawConn) error {
				base := t.Env.name("flood")
				var b []byte
				for i := 0; i < 1000; i++ {
					b = amqp.AppendMethodFrame(b, 1, &amqp.QueueDeclare{Queue: base + "." + strconv.Itoa(i), Exclusive: true, NoWait: true})
				}
				if err := r.write(b); err != nil {
					return err
				}
				if err := r.roundTrip(1); err != nil {
					return err
				}
				for _, i := range []int{0, 500, 999} {
					t.DeleteQueueLater(base + "." + strconv.Itoa(i))
				}
				r.Close()
				// Exclusive queues go with their connection: poll the last one declared.
				last := base + ".999"
				for {
					err := adminDo(t.Ctx, t.Env, func(ch *amqp091.Channel) error {
						_, err := ch.QueueDeclarePassive(last, false, false, false, false, nil)
						return err
					})
					if wantCode(err, 404) == nil {
						return nil
					}
					if sleepCtx(t.Ctx, 50*time.Millisecond) != nil {
						return fmt.Errorf("exclusive queue still there after its connection closed: %v", err)
					}
				}
			}),
		sessionCase(Case{Name: "consumer-flood", Sends: "5000 pipelined basic.consume (no-wait) on one queue, then the connection closes",
			Expect: "the queue counts 5000 consumers, then 0", Timeout: floodTimeout},
			func(t *T, r *rawConn) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				var b []byte
				for i := 0; i < 5000; i++ {
					b = amqp.AppendMethodFrame(b, 1, &amqp.BasicConsume{Queue: q, ConsumerTag: "c" + strconv.Itoa(i), NoWait: true})
				}
				if err := r.write(b); err != nil {
					return err
				}
				if err := r.roundTrip(1); err != nil {
					return err
				}
				if err := waitQueue(t, q, "5000 consumers", func(_, c int) bool { return c == 5000 }); err != nil {
					return err
				}
				r.Close()
				return waitQueue(t, q, "0 consumers", func(_, c int) bool { return c == 0 })
			}),
		sessionCase(Case{Name: "binding-flood", Sends: "5000 pipelined queue.bind (no-wait) of one queue to amq.direct, then the queue is deleted",
			Expect: "all accepted, the connection still works", Timeout: floodTimeout},
			func(t *T, r *rawConn) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				var b []byte
				for i := 0; i < 5000; i++ {
					b = amqp.AppendMethodFrame(b, 1, &amqp.QueueBind{Queue: q, Exchange: "amq.direct", RoutingKey: q + "." + strconv.Itoa(i), NoWait: true})
				}
				if err := r.write(b); err != nil {
					return err
				}
				return r.roundTrip(1)
			}),
		{
			Name: "connection-flood-idle", Sends: "300 TCP connections: 100 silent, 100 sending only the protocol header, 100 stopping after start-ok; held 1 s",
			Expect: "the broker keeps answering new clients", Timeout: 12 * time.Second,
			Run: func(t *T) error {
				for i := 0; i < 300; i++ {
					r, err := t.raw()
					if err != nil {
						return fmt.Errorf("connection %d: %w", i, err)
					}
					switch i % 3 {
					case 1:
						r.write(amqp.ProtocolHeader)
					case 2:
						r.write(amqp.ProtocolHeader)
						r.write(amqp.AppendMethodFrame(nil, 0, &amqp.ConnectionStartOk{ClientProperties: amqp.Table{},
							Mechanism: "PLAIN", Response: "\x00" + t.Env.User + "\x00" + t.Env.Pass, Locale: "en_US"}))
					}
				}
				if err := sleepCtx(t.Ctx, time.Second); err != nil {
					return err
				}
				// While they are all still open, a well-behaved client must get in.
				return Alive(t.Ctx, t.Env)
			},
		},
		{
			Name: "tx-uncommitted-flood", Sends: "tx.select, 5000 publishes of 4 KiB, no commit, then the connection closes",
			Expect: "nothing is enqueued (rolled back with the connection)",
			Run: func(t *T) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				r, err := t.session(hsOpts{})
				if err != nil {
					return err
				}
				if err := r.send(1, &amqp.TxSelect{}); err != nil {
					return err
				}
				if _, err := r.expect(1, "tx.select-ok"); err != nil {
					return err
				}
				var b []byte
				body := bytes.Repeat([]byte("t"), 4096)
				for i := 0; i < 5000; i++ {
					b = amqp.AppendMethodFrame(b, 1, &amqp.BasicPublish{RoutingKey: q})
					b = amqp.AppendContent(b, 1, contentHeader(uint64(len(body)), 0, nil), body, r.frameMax)
				}
				if err := r.write(b); err != nil {
					return err
				}
				if err := r.roundTrip(1); err != nil {
					return err
				}
				r.Close()
				if err := sleepCtx(t.Ctx, 300*time.Millisecond); err != nil {
					return err
				}
				if n, _, err := queueCount(t.Ctx, t.Env, q); err != nil || n != 0 {
					return fmt.Errorf("%d uncommitted messages enqueued (%v)", n, err)
				}
				return nil
			},
		},
		connCloseCase("qos-prefetch-size", "basic.qos with prefetch_size 1", 540, "NOT_IMPLEMENTED",
			func(r *rawConn) error { return r.send(1, &amqp.BasicQos{PrefetchSize: 1}) }),
		connCloseCase("recover-no-requeue", "basic.recover with requeue=false", 540, "NOT_IMPLEMENTED",
			func(r *rawConn) error { return r.send(1, &amqp.BasicRecover{Requeue: false}) }),
	}
}

func permissionCases() []Case {
	return []Case{
		chanErrCase("exchange-declare-amq-prefix", "exchange.declare of \"amq.hostile\" (reserved prefix)", 403, 0,
			func(t *T, ch *amqp091.Channel) error {
				t.DeleteExchangeLater("amq.hostile")
				return ch.ExchangeDeclare("amq.hostile", "direct", false, true, false, false, nil)
			}),
		chanErrCase("exchange-delete-amq-direct", "exchange.delete of amq.direct", 403, 0,
			func(t *T, ch *amqp091.Channel) error { return ch.ExchangeDelete("amq.direct", false, false) }),
		chanErrCase("queue-declare-amq-prefix", "queue.declare of \"amq.hostile\" (reserved prefix)", 403, 0,
			func(t *T, ch *amqp091.Channel) error {
				t.DeleteQueueLater("amq.hostile")
				_, err := ch.QueueDeclare("amq.hostile", false, true, false, false, nil)
				return err
			}),
		chanErrCase("bind-default-exchange", "queue.bind to the default exchange", 403, 0,
			func(t *T, ch *amqp091.Channel) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				return ch.QueueBind(q, "k", "", false, nil)
			}),
		{
			Name: "exclusive-queue-of-another-connection", Sends: "basic.consume, basic.get, queue.purge and queue.delete of another connection's exclusive queue",
			Expect: "channel.close 405 RESOURCE_LOCKED for each",
			Run: func(t *T) error {
				_, owner, err := t.Channel()
				if err != nil {
					return err
				}
				q, err := owner.QueueDeclare("", false, true, true, false, nil)
				if err != nil {
					return err
				}
				c, err := t.Dial()
				if err != nil {
					return err
				}
				tries := []struct {
					name string
					f    func(ch *amqp091.Channel) error
				}{
					{"consume", func(ch *amqp091.Channel) error {
						_, err := ch.Consume(q.Name, "", false, false, false, false, nil)
						return err
					}},
					{"get", func(ch *amqp091.Channel) error { _, _, err := ch.Get(q.Name, true); return err }},
					{"purge", func(ch *amqp091.Channel) error { _, err := ch.QueuePurge(q.Name, false); return err }},
					{"delete", func(ch *amqp091.Channel) error { _, err := ch.QueueDelete(q.Name, false, false, false); return err }},
				}
				for _, try := range tries {
					ch, err := c.Channel()
					if err != nil {
						return err
					}
					if err := wantCode(try.f(ch), 405); err != nil {
						return fmt.Errorf("%s: %w", try.name, err)
					}
				}
				return nil
			},
		},
		restrictedChanErrCase("restricted-queue-declare", "as a user without configure permission: queue.declare",
			func(t *T, ch *amqp091.Channel) error {
				q := t.Env.name("ro")
				t.DeleteQueueLater(q)
				_, err := ch.QueueDeclare(q, false, true, false, false, nil)
				return err
			}),
		restrictedChanErrCase("restricted-publish", "as a user without write permission: basic.publish to a queue via the default exchange",
			func(t *T, ch *amqp091.Channel) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				return publishRefused(t, ch, "", q)
			}),
		restrictedChanErrCase("restricted-publish-amq-default", "as a user without write permission: basic.publish to \"amq.default\"",
			func(t *T, ch *amqp091.Channel) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				return publishRefused(t, ch, "amq.default", q)
			}),
		restrictedChanErrCase("restricted-queue-delete", "as a user without configure permission: queue.delete of another user's queue",
			func(t *T, ch *amqp091.Channel) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				_, err = ch.QueueDelete(q, false, false, false)
				return err
			}),
		restrictedChanErrCase("restricted-queue-bind", "as a user without write permission: queue.bind of a queue to amq.fanout",
			func(t *T, ch *amqp091.Channel) error {
				q, err := t.Queue(nil)
				if err != nil {
					return err
				}
				return ch.QueueBind(q, "", "amq.fanout", false, nil)
			}),
	}
}

func argumentCases() []Case {
	return []Case{
		argCase("x-expires-overflow", 7, 0, amqp091.Table{"x-expires": int64(76480200929599801)}),
		argCase("x-message-ttl-overflow", 7, 0, amqp091.Table{"x-message-ttl": int64(76480200929599801)}),
		argCase("x-max-priority-256", 7, 0, amqp091.Table{"x-max-priority": int32(256)}),
		argCase("x-expires-zero", 0, 0, amqp091.Table{"x-expires": int32(0)}),
		argCase("x-max-length-negative", 0, 0, amqp091.Table{"x-max-length": int32(-1)}),
		argCase("x-redelivery-delay-overflow", 7, NeedWarren, amqp091.Table{"x-redelivery-delay": int64(76480200929599801)}),
		argCase("x-redelivery-max-delay-overflow", 7, NeedWarren, amqp091.Table{"x-redelivery-max-delay": int64(76480200929599801)}),
	}
}

// expectPerChannel reads, for every channel from..to, the methods named want in that order; the
// channels may interleave.
func expectPerChannel(r *rawConn, from, to int, want ...string) error {
	next := make(map[uint16]int, to-from+1)
	for left := (to - from + 1) * len(want); left > 0; left-- {
		f, err := r.next()
		if err != nil {
			return fmt.Errorf("%d replies missing: %w", left, err)
		}
		i := next[f.channel]
		if int(f.channel) < from || int(f.channel) > to || i >= len(want) || f.method == nil || f.method.Name() != want[i] {
			return fmt.Errorf("got %s%s, want %s", f, closeText(f.method), strings.Join(want, " then "))
		}
		next[f.channel] = i + 1
	}
	return nil
}
