package conformance

import (
	"errors"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Direct reply-to (amq.rabbitmq.reply-to), as RabbitMQ documents it; every expectation was
// checked against RabbitMQ 3.10.8.

const replyTo = "amq.rabbitmq.reply-to"

// rpcPair returns a client channel consuming its replies and a server channel consuming
// requests from a fresh queue.
func rpcPair(t *testing.T) (c *amqp.Connection, cli, srv *amqp.Channel, q string, replies, reqs <-chan amqp.Delivery) {
	t.Helper()
	c, cli = setup(t)
	srv = openCh(t, c)
	q = declareQueue(t, srv, nil)
	replies, err := cli.Consume(replyTo, "rpc-client", true, false, false, false, nil)
	if err != nil {
		t.Fatalf("basic.consume %s: %v", replyTo, err)
	}
	return c, cli, srv, q, replies, consume(t, srv, q, true)
}

func TestDirectReplyToRoundTrip(t *testing.T) {
	t.Parallel()
	_, cli, srv, q, replies, reqs := rpcPair(t)
	var names []string
	for _, body := range []string{"one", "two"} {
		publishMsg(t, cli, "", q, amqp.Publishing{ReplyTo: replyTo, CorrelationId: body, Body: []byte(body)})
		req := collect(t, reqs, 1)[0]
		if !strings.HasPrefix(req.ReplyTo, replyTo+".") || len(req.ReplyTo) <= len(replyTo)+1 {
			t.Fatalf("request reply_to = %q, want a generated %s.<token> name", req.ReplyTo, replyTo)
		}
		names = append(names, req.ReplyTo)
		publishMsg(t, srv, "", req.ReplyTo, amqp.Publishing{CorrelationId: req.CorrelationId, Body: []byte("re:" + body)})
		r := collect(t, replies, 1)[0]
		if string(r.Body) != "re:"+body || r.CorrelationId != body || r.ConsumerTag != "rpc-client" ||
			r.Exchange != "" || r.RoutingKey != req.ReplyTo || r.Redelivered {
			t.Errorf("reply to %s: body %q corr %q tag %q exchange %q key %q redelivered %v", body, r.Body, r.CorrelationId,
				r.ConsumerTag, r.Exchange, r.RoutingKey, r.Redelivered)
		}
	}
	if names[0] != names[1] {
		t.Errorf("one channel's requests got reply names %q and %q, want one name per channel", names[0], names[1])
	}
	// The RPC server can check that the client is still there.
	if st, err := srv.QueueDeclarePassive(names[0], false, false, false, false, nil); err != nil || st.Consumers != 1 {
		t.Errorf("passive declare of a live reply name: %+v %v", st, err)
	}
	if st, err := srv.QueueDeclarePassive(replyTo, false, false, false, false, nil); err != nil || st.Name != replyTo {
		t.Errorf("passive declare of %s: %+v %v", replyTo, st, err)
	}
}

// As RabbitMQ 3.10.8: a reply goes to no queue, so a mandatory one is returned with 312 NO_ROUTE
// even when it was delivered, and confirms are acks.
func TestDirectReplyToMandatoryAndConfirm(t *testing.T) {
	t.Parallel()
	_, cli, srv, q, replies, reqs := rpcPair(t)
	if err := srv.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confs := srv.NotifyPublish(make(chan amqp.Confirmation, 4))
	returns := srv.NotifyReturn(make(chan amqp.Return, 4))
	publishMsg(t, cli, "", q, amqp.Publishing{ReplyTo: replyTo, Body: []byte("req")})
	name := collect(t, reqs, 1)[0].ReplyTo
	if err := srv.Publish("", name, true, false, amqp.Publishing{Body: []byte("resp")}); err != nil {
		t.Fatal(err)
	}
	if cf := nextConfirm(t, confs); !cf.Ack {
		t.Error("reply nacked")
	}
	assertBodies(t, collect(t, replies, 1), "resp")
	select {
	case r := <-returns:
		if r.ReplyCode != amqp.NoRoute {
			t.Errorf("return %d %s, want 312", r.ReplyCode, r.ReplyText)
		}
	case <-time.After(wait):
		t.Error("no basic.return for a mandatory reply")
	}
}

// A reply to a channel that is gone is dropped; the name no longer exists.
func TestDirectReplyToGoneChannel(t *testing.T) {
	t.Parallel()
	c, cli, srv, q, _, reqs := rpcPair(t)
	publishMsg(t, cli, "", q, amqp.Publishing{ReplyTo: replyTo, Body: []byte("req")})
	name := collect(t, reqs, 1)[0].ReplyTo
	if err := cli.Close(); err != nil {
		t.Fatal(err)
	}
	// Another client's reply consumer does not get it.
	other := openCh(t, c)
	otherReplies, err := other.Consume(replyTo, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confs := srv.NotifyPublish(make(chan amqp.Confirmation, 1))
	publishMsg(t, srv, "", name, amqp.Publishing{Body: []byte("late")})
	if cf := nextConfirm(t, confs); !cf.Ack {
		t.Error("reply to a gone channel nacked")
	}
	expectNoDelivery(t, otherReplies)
	_, err = srv.QueueDeclarePassive(name, false, false, false, false, nil)
	expectChannelClosed(t, c, err, amqp.NotFound)
}

func TestDirectReplyToErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		op   func(t *testing.T, ch *amqp.Channel) error
		code int
		text string
	}{
		{"consume with acks", func(t *testing.T, ch *amqp.Channel) error {
			_, err := ch.Consume(replyTo, "", false, false, false, false, nil)
			return err
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - reply consumer cannot acknowledge"},
		{"consume twice", func(t *testing.T, ch *amqp.Channel) error {
			if _, err := ch.Consume(replyTo, "", true, false, false, false, nil); err != nil {
				t.Fatal(err)
			}
			_, err := ch.Consume(replyTo, "", true, false, false, false, nil)
			return err
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - reply consumer already set"},
		{"publish without consumer", func(t *testing.T, ch *amqp.Channel) error {
			publishMsg(t, ch, "", "conf-no-such-queue", amqp.Publishing{ReplyTo: replyTo})
			_, err := ch.QueueDeclarePassive("conf-no-such-queue", false, false, false, false, nil)
			return err
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - fast reply consumer does not exist"},
		{"publish after cancel", func(t *testing.T, ch *amqp.Channel) error {
			if _, err := ch.Consume(replyTo, "r", true, false, false, false, nil); err != nil {
				t.Fatal(err)
			}
			if err := ch.Cancel("r", false); err != nil {
				t.Fatal(err)
			}
			publishMsg(t, ch, "", "conf-no-such-queue", amqp.Publishing{ReplyTo: replyTo})
			_, err := ch.QueueDeclarePassive("conf-no-such-queue", false, false, false, false, nil)
			return err
		}, amqp.PreconditionFailed, "PRECONDITION_FAILED - fast reply consumer does not exist"},
		{"consume a reply name", func(t *testing.T, ch *amqp.Channel) error {
			_, err := ch.Consume(replyTo+".nonexistent", "", true, false, false, false, nil)
			return err
		}, amqp.NotFound, "NOT_FOUND - no queue 'amq.rabbitmq.reply-to.nonexistent' in vhost '/'"},
		{"passive declare of an unknown reply name", func(t *testing.T, ch *amqp.Channel) error {
			_, err := ch.QueueDeclarePassive(replyTo+".nonexistent", false, false, false, false, nil)
			return err
		}, amqp.NotFound, "NOT_FOUND - no queue 'amq.rabbitmq.reply-to.nonexistent' in vhost '/'"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, ch := setup(t)
			closes := ch.NotifyClose(make(chan *amqp.Error, 1))
			err := tc.op(t, ch)
			if errors.Is(err, amqp.ErrClosed) {
				// The publish closed the channel before the next call went out: the reason came
				// with the channel.close.
				select {
				case ce := <-closes:
					err = ce
				case <-time.After(wait):
				}
			}
			ae := expectChannelClosed(t, c, err, tc.code)
			if ae.Reason != tc.text {
				t.Errorf("reply text = %q, want %q", ae.Reason, tc.text)
			}
		})
	}
}

// A reply published in a transaction is delivered at tx.commit, like every publish of the
// transaction. RabbitMQ 3.10.8 delivers it at once (measured): a deliberate difference, as
// nothing of an uncommitted transaction should be visible.
func TestDirectReplyToInTransaction(t *testing.T) {
	warrenOnly(t)
	t.Parallel()
	_, cli, srv, q, replies, reqs := rpcPair(t)
	publishMsg(t, cli, "", q, amqp.Publishing{ReplyTo: replyTo, Body: []byte("req")})
	name := collect(t, reqs, 1)[0].ReplyTo
	if err := srv.Tx(); err != nil {
		t.Fatal(err)
	}
	publishMsg(t, srv, "", name, amqp.Publishing{Body: []byte("resp")})
	expectNoDelivery(t, replies)
	if err := srv.TxCommit(); err != nil {
		t.Fatal(err)
	}
	assertBodies(t, collect(t, replies, 1), "resp")
}
