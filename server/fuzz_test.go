package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// errorLog is a slog handler that keeps the first error-level record: the connection's panic
// recovery logs at error level, so a recorded error means client input crashed a handler.
type errorLog struct {
	mu    sync.Mutex
	first string
}

func (h *errorLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelError }

func (h *errorLog) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.first == "" {
		h.first = r.Message
		r.Attrs(func(a slog.Attr) bool {
			h.first += " " + a.String()
			return true
		})
	}
	return nil
}

func (h *errorLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *errorLog) WithGroup(string) slog.Handler      { return h }

func (h *errorLog) take() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.first
	h.first = ""
	return s
}

// fuzzPrelude is a complete handshake as guest plus channel.open on channel 1: fuzzed frames
// start in a running connection, where most of the server's state machine is.
func fuzzPrelude() []byte {
	b := append([]byte(nil), amqp.ProtocolHeader...)
	b = amqp.AppendMethodFrame(b, 0, &amqp.ConnectionStartOk{
		ClientProperties: amqp.Table{"capabilities": amqp.Table{"consumer_cancel_notify": true, "connection.blocked": true}},
		Mechanism:        "PLAIN", Response: "\x00guest\x00guest", Locale: "en_US",
	})
	b = amqp.AppendMethodFrame(b, 0, &amqp.ConnectionTuneOk{ChannelMax: 16, FrameMax: amqp.FrameMinSize})
	b = amqp.AppendMethodFrame(b, 0, &amqp.ConnectionOpen{VirtualHost: "/"})
	return amqp.AppendMethodFrame(b, 1, &amqp.ChannelOpen{})
}

// fuzzSeeds are frame sequences that reach publishing, consuming, acknowledging, transactions,
// confirms, dead-lettering and topology changes; the fuzzer mutates them from there.
func fuzzSeeds() [][]byte {
	publish := func(b []byte, ch uint16, ex, key string, props *amqp.Properties, body string) []byte {
		b = amqp.AppendMethodFrame(b, ch, &amqp.BasicPublish{Exchange: ex, RoutingKey: key, Mandatory: true})
		return amqp.AppendContent(b, ch, amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(body)), props), []byte(body), amqp.FrameMinSize)
	}
	var seeds [][]byte
	b := amqp.AppendMethodFrame(nil, 1, &amqp.QueueDeclare{Queue: "fz", Durable: true, Arguments: amqp.Table{"x-max-length": int32(2), "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "fz.dl"}})
	b = amqp.AppendMethodFrame(b, 1, &amqp.QueueDeclare{Queue: "fz.dl"})
	b = amqp.AppendMethodFrame(b, 1, &amqp.BasicQos{PrefetchCount: 2})
	b = amqp.AppendMethodFrame(b, 1, &amqp.BasicConsume{Queue: "fz", ConsumerTag: "c"})
	for i := 0; i < 3; i++ {
		b = publish(b, 1, "", "fz", &amqp.Properties{DeliveryMode: 2, Headers: amqp.Table{"n": int32(i)}}, "body")
	}
	b = amqp.AppendMethodFrame(b, 1, &amqp.BasicAck{DeliveryTag: 1})
	b = amqp.AppendMethodFrame(b, 1, &amqp.BasicNack{DeliveryTag: 2, Requeue: false})
	b = amqp.AppendMethodFrame(b, 1, &amqp.BasicRecover{Requeue: true})
	b = amqp.AppendMethodFrame(b, 1, &amqp.BasicCancel{ConsumerTag: "c"})
	b = amqp.AppendMethodFrame(b, 1, &amqp.QueueDelete{Queue: "fz"})
	seeds = append(seeds, b)

	b = amqp.AppendMethodFrame(nil, 1, &amqp.TxSelect{})
	b = amqp.AppendMethodFrame(b, 1, &amqp.QueueDeclare{Queue: "fz.tx", Exclusive: true})
	b = publish(b, 1, "", "fz.tx", &amqp.Properties{Expiration: "0"}, "tx")
	b = amqp.AppendMethodFrame(b, 1, &amqp.TxCommit{})
	b = amqp.AppendMethodFrame(b, 1, &amqp.BasicGet{Queue: "fz.tx"})
	b = amqp.AppendMethodFrame(b, 1, &amqp.BasicReject{DeliveryTag: 1, Requeue: true})
	b = amqp.AppendMethodFrame(b, 1, &amqp.TxRollback{})
	b = amqp.AppendMethodFrame(b, 1, &amqp.BasicAck{DeliveryTag: 7})
	seeds = append(seeds, b)

	b = amqp.AppendMethodFrame(nil, 1, &amqp.ConfirmSelect{})
	b = amqp.AppendMethodFrame(b, 1, &amqp.ExchangeDeclare{Exchange: "fz.t", Type: "topic", AutoDelete: true})
	b = amqp.AppendMethodFrame(b, 1, &amqp.ExchangeDeclare{Exchange: "fz.h", Type: "headers", Arguments: amqp.Table{"alternate-exchange": "fz.t"}})
	b = amqp.AppendMethodFrame(b, 1, &amqp.ExchangeBind{Destination: "fz.t", Source: "fz.h", Arguments: amqp.Table{"x-match": "any", "a": int32(1)}})
	b = amqp.AppendMethodFrame(b, 1, &amqp.QueueDeclare{Queue: "fz.q", Arguments: amqp.Table{"x-message-ttl": int32(10), "x-delivery-limit": int32(1)}})
	b = amqp.AppendMethodFrame(b, 1, &amqp.QueueBind{Queue: "fz.q", Exchange: "fz.t", RoutingKey: "a.#"})
	b = publish(b, 1, "fz.h", "a.b.c", &amqp.Properties{Headers: amqp.Table{"a": int32(1), "CC": []any{"x.y"}}}, "h")
	b = amqp.AppendMethodFrame(b, 2, &amqp.ChannelOpen{})
	b = amqp.AppendMethodFrame(b, 2, &amqp.BasicPublish{RoutingKey: "x"})
	b = amqp.AppendMethodFrame(b, 1, &amqp.ChannelClose{ReplyCode: 200})
	b = amqp.AppendMethodFrame(b, 0, &amqp.ConnectionClose{ReplyCode: 200})
	seeds = append(seeds, b)
	return append(seeds, amqp.AppendHeartbeat(nil), []byte{amqp.FrameBody, 0, 1, 0, 0, 0, 0, 0xce})
}

// FuzzConnection feeds arbitrary frames to a live, logged-in connection of a broker with a real
// store: no input may crash a handler (the per-connection recovery would log it as an error), hang
// the connection, or harm the broker for the next input.
func FuzzConnection(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	rec := &errorLog{}
	cfg := DefaultConfig()
	cfg.DataDir = f.TempDir()
	cfg.LoopbackUsers = nil // net.Pipe has no loopback address
	cfg.Heartbeat = 0
	cfg.Logger = slog.New(rec)
	s, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = s.Close() })
	prelude := fuzzPrelude()

	f.Fuzz(func(t *testing.T, frames []byte) {
		if err := serveFrames(s, append(prelude[:len(prelude):len(prelude)], frames...)); err != nil {
			t.Fatal(err)
		}
		if msg := rec.take(); msg != "" {
			t.Fatalf("server logged an error for client input: %s", msg)
		}
	})
}

// serveFrames runs one connection of s over a pipe: the client writes input and a
// connection.close, waits (briefly) for the server to finish with close-ok or its own
// connection.close, then hangs up.
func serveFrames(s *Server, input []byte) error {
	client, server := net.Pipe()
	c := s.newConn(server, s.connID.Add(1))
	served := make(chan struct{})
	go func() {
		defer close(served)
		c.serve()
	}()
	closed := make(chan struct{})
	go func() {
		// net.Pipe has no buffer: keep reading to the end, or the server's writer would block.
		defer func() { _, _ = io.Copy(io.Discard, client) }()
		defer close(closed)
		_, _ = io.ReadFull(client, make([]byte, len(amqp.ProtocolHeader)))
		fr := amqp.NewFrameReader(client, 64<<10)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if f.Type != amqp.FrameMethod || f.Channel != 0 {
				continue
			}
			switch m, _ := amqp.DecodeMethod(f.Payload); m.(type) {
			case *amqp.ConnectionCloseOk, *amqp.ConnectionClose:
				return
			}
		}
	}()
	_ = client.SetWriteDeadline(time.Now().Add(5 * time.Second))
	// Writes fail once the server has closed the connection: fine.
	if _, err := client.Write(input); err == nil {
		_, _ = client.Write(amqp.AppendMethodFrame(nil, 0, &amqp.ConnectionClose{ReplyCode: amqp.ReplySuccess}))
	}
	select {
	case <-closed:
	case <-time.After(500 * time.Millisecond): // input ended inside a frame: the server waits for more
	}
	_ = client.Close()
	select {
	case <-served:
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("connection still served 10 s after the client hung up")
	}
}

// The fuzz harness really logs in and runs methods: the first seed declares queues and deletes
// one of them.
func TestFuzzHarnessReachesBroker(t *testing.T) {
	s := startTestServer(t, func(c *Config) { c.LoopbackUsers = nil })
	if err := serveFrames(s, append(fuzzPrelude(), fuzzSeeds()[0]...)); err != nil {
		t.Fatal(err)
	}
	v := s.Broker().VHost("/")
	_, err := v.Queue(broker.System, "fz.dl")
	dl := err == nil
	_, err = v.Queue(broker.System, "fz")
	fz := err == nil
	if !dl || fz {
		t.Fatalf("after the seed: fz.dl exists=%v (want true), fz exists=%v (want false)", dl, fz)
	}
}
