package bench

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/amqp"
)

// leanConn is the bench's own AMQP 0-9-1 client for the producer and consumer connections
// (-client lean, the default). It speaks the same protocol as amqp091-go, handshake, heartbeats
// and close handshake included, so it works against any broker, but it is built for a load
// generator on a small host:
//
//   - a publish is one copy of a pre-encoded frame template (basic.publish, content header, body)
//     with the timestamp patched in, and publishes are written in batches: when 16 KiB are
//     buffered, when 200 µs have passed since the oldest unwritten one, or before the producer
//     waits (rate limit, confirm window) - never one write(2) per message;
//   - a delivery is parsed in place (delivery tag, body size, the body's first 8 bytes) on the
//     consumer's own goroutine, with no allocation and no channel hand-off;
//   - acks are buffered and written when the input is drained or half the prefetch window is
//     waiting for them.
//
// amqp091-go spends more CPU per message than the broker under test, which on two cores caps
// what can be measured; -client amqp091 keeps it available for cross-checks. The topology
// (declares, binds, deletes) always goes through amqp091-go.
type leanConn struct {
	nc       net.Conn
	fr       *amqp.FrameReader
	frameMax uint32

	wmu  sync.Mutex
	wbuf []byte
	werr error

	closing  atomic.Bool
	reader   bool          // a goroutine runs readLoop; set before it starts, by its starter
	readDone chan struct{} // closed when readLoop returns
	stopHB   chan struct{}
	stopOnce sync.Once
}

// leanChannel is the only channel a lean connection opens.
const leanChannel = 1

// Publish batching: see leanConn.
const (
	leanFlushBytes = 16 << 10
	leanFlushDelay = 200 * time.Microsecond
	leanMaxFrame   = 128 << 10
)

// errLeanClosed is returned by writes after close.
var errLeanClosed = errors.New("bench: connection closed")

// leanDial connects, performs the handshake (PLAIN auth) and opens channel 1. readBuf sizes the
// frame reader: deliveries need room for a whole frame, acks and idle connections little.
func leanDial(cfg *Config, name string, readBuf int) (*leanConn, error) {
	u, err := amqp091.ParseURI(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("bench: bad -url: %w", err)
	}
	addr := net.JoinHostPort(u.Host, strconv.Itoa(u.Port))
	d := net.Dialer{Timeout: 30 * time.Second}
	var nc net.Conn
	if u.Scheme == "amqps" {
		sn := u.ServerName
		if sn == "" {
			sn = u.Host
		}
		nc, err = tls.DialWithDialer(&d, "tcp", addr, &tls.Config{ServerName: sn})
	} else {
		nc, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("bench: dial %s: %w", name, err)
	}
	c := &leanConn{
		nc:       nc,
		fr:       amqp.NewFrameReader(nc, readBuf),
		frameMax: leanMaxFrame,
		wbuf:     make([]byte, 0, 4<<10),
		readDone: make(chan struct{}),
		stopHB:   make(chan struct{}),
	}
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.handshake(cfg, &u, name); err != nil {
		nc.Close()
		return nil, fmt.Errorf("bench: dial %s: %w", name, err)
	}
	_ = nc.SetDeadline(time.Time{})
	return c, nil
}

func (c *leanConn) handshake(cfg *Config, u *amqp091.URI, name string) error {
	if _, err := c.nc.Write(amqp.ProtocolHeader); err != nil {
		return fmt.Errorf("protocol header: %w", err)
	}
	m, err := c.readMethod()
	if err != nil {
		return fmt.Errorf("connection.start: %w", err)
	}
	start, ok := m.(*amqp.ConnectionStart)
	if !ok {
		return fmt.Errorf("expected connection.start, got %s", m.Name())
	}
	cfg.server.set(start.ServerProperties)
	if !strings.Contains(" "+start.Mechanisms+" ", " PLAIN ") {
		return fmt.Errorf("server offers no PLAIN authentication (%q)", start.Mechanisms)
	}
	c.send(&amqp.ConnectionStartOk{
		ClientProperties: amqp.Table{
			"product":         "warren-bench",
			"connection_name": name,
			"capabilities": amqp.Table{
				"publisher_confirms":           true,
				"basic.nack":                   true,
				"consumer_cancel_notify":       true,
				"authentication_failure_close": true,
			},
		},
		Mechanism: "PLAIN",
		Response:  "\x00" + u.Username + "\x00" + u.Password,
		Locale:    "en_US",
	})
	if err := c.flush(); err != nil {
		return err
	}
	if m, err = c.readMethod(); err != nil {
		return fmt.Errorf("connection.tune: %w", err)
	}
	tune, ok := m.(*amqp.ConnectionTune)
	if !ok {
		return fmt.Errorf("expected connection.tune, got %s", m.Name())
	}
	if tune.FrameMax != 0 && tune.FrameMax < c.frameMax {
		c.frameMax = tune.FrameMax
	}
	channelMax := tune.ChannelMax
	if channelMax == 0 {
		channelMax = 2047
	}
	// amqp091-go's rule: the smaller of 10 s and the server's offer, 10 s if the server has none.
	hb := uint16(10)
	if tune.Heartbeat != 0 && tune.Heartbeat < hb {
		hb = tune.Heartbeat
	}
	c.fr.SetMaxFrameSize(c.frameMax)
	c.send(&amqp.ConnectionTuneOk{ChannelMax: channelMax, FrameMax: c.frameMax, Heartbeat: hb})
	c.send(&amqp.ConnectionOpen{VirtualHost: u.Vhost})
	if _, err := c.rpc(nil, "connection.open-ok"); err != nil {
		return err
	}
	if _, err := c.rpc(&amqp.ChannelOpen{}, "channel.open-ok"); err != nil {
		return err
	}
	go c.heartbeats(time.Duration(hb) * time.Second / 2)
	return nil
}

// heartbeats sends a heartbeat frame every interval (half the negotiated timeout) until close.
func (c *leanConn) heartbeats(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-c.stopHB:
			return
		case <-t.C:
		}
		c.wmu.Lock()
		c.wbuf = amqp.AppendHeartbeat(c.wbuf)
		err := c.flushLocked()
		c.wmu.Unlock()
		if err != nil {
			return
		}
	}
}

// send buffers one method frame (channel 0 for connection methods, else leanChannel).
func (c *leanConn) send(m amqp.Method) {
	ch := uint16(leanChannel)
	if m.ClassID() == 10 {
		ch = 0
	}
	c.wmu.Lock()
	c.wbuf = amqp.AppendMethodFrame(c.wbuf, ch, m)
	c.wmu.Unlock()
}

func (c *leanConn) flush() error {
	c.wmu.Lock()
	err := c.flushLocked()
	c.wmu.Unlock()
	return err
}

// flushLocked writes the buffer; call with wmu held.
func (c *leanConn) flushLocked() error {
	if c.werr != nil {
		return c.werr
	}
	if len(c.wbuf) > 0 {
		if _, err := c.nc.Write(c.wbuf); err != nil {
			c.werr = err
			return err
		}
		c.wbuf = c.wbuf[:0]
	}
	return nil
}

// rpc sends m (if not nil) and reads until the method named want. Only for the set-up phase,
// before a readLoop runs.
func (c *leanConn) rpc(m amqp.Method, want string) (amqp.Method, error) {
	if m != nil {
		c.send(m)
	}
	if err := c.flush(); err != nil {
		return nil, err
	}
	for {
		r, err := c.readMethod()
		if err != nil {
			return nil, fmt.Errorf("awaiting %s: %w", want, err)
		}
		if r.Name() == want {
			return r, nil
		}
	}
}

func (c *leanConn) qos(prefetch int) error {
	_, err := c.rpc(&amqp.BasicQos{PrefetchCount: uint16(prefetch)}, "basic.qos-ok")
	return err
}

func (c *leanConn) consume(queue, tag string, noAck bool, args amqp091.Table) error {
	m := &amqp.BasicConsume{Queue: queue, ConsumerTag: tag, NoAck: noAck}
	if len(args) > 0 {
		m.Arguments = amqp.Table(args)
	}
	_, err := c.rpc(m, "basic.consume-ok")
	return err
}

func (c *leanConn) confirmSelect() error {
	_, err := c.rpc(&amqp.ConfirmSelect{}, "confirm.select-ok")
	return err
}

// closeChannel closes channel 1 with the close handshake (churn mode).
func (c *leanConn) closeChannel() error {
	_, err := c.rpc(&amqp.ChannelClose{ReplyCode: amqp.ReplySuccess}, "channel.close-ok")
	return err
}

// readMethod reads the next method frame, skipping heartbeats; a close from the server is
// answered and returned as an error.
func (c *leanConn) readMethod() (amqp.Method, error) {
	f, err := c.fr.ReadNonHeartbeat()
	if err != nil {
		return nil, err
	}
	if f.Type != amqp.FrameMethod {
		return nil, fmt.Errorf("unexpected frame type %d", f.Type)
	}
	m, err := amqp.DecodeMethod(f.Payload)
	if err != nil {
		return nil, err
	}
	if err := c.serverClose(m); err != nil {
		return nil, err
	}
	return m, nil
}

// serverClose answers a connection.close or channel.close from the server and returns it as an
// error; any other method gives nil.
func (c *leanConn) serverClose(m amqp.Method) error {
	switch m := m.(type) {
	case *amqp.ConnectionClose:
		c.send(&amqp.ConnectionCloseOk{})
		_ = c.flush()
		return fmt.Errorf("connection closed by the broker: %d %s", m.ReplyCode, m.ReplyText)
	case *amqp.ChannelClose:
		c.send(&amqp.ChannelCloseOk{})
		_ = c.flush()
		return fmt.Errorf("channel closed by the broker: %d %s", m.ReplyCode, m.ReplyText)
	}
	return nil
}

// leanHandler receives what readLoop parses. Nil callbacks are not called.
type leanHandler struct {
	// message is called once per complete delivery with the body's timestamp, if it has one.
	message func(tag uint64, stamp int64, stamped bool) error
	// confirm is called per basic.ack / basic.nack from the broker (publisher confirms).
	confirm func(tag uint64, multiple, nack bool)
	// idle is called when no more input is buffered, before a read that may block.
	idle func() error
}

// readLoop reads frames until the connection closes. It returns nil after our own close, the
// broker's reason when the broker closed the channel or connection or cancelled the consumer,
// and the I/O error otherwise.
func (c *leanConn) readLoop(h *leanHandler) error {
	defer close(c.readDone)
	var (
		tag      uint64
		size     uint64
		got      uint64
		stamp    int64
		stamped  bool
		inHeader bool // a basic.deliver arrived, its content header is next
		inBody   bool
	)
	for {
		if h.idle != nil && c.fr.Buffered() == 0 {
			if err := h.idle(); err != nil {
				return c.ioErr(err)
			}
		}
		f, err := c.fr.ReadFrame()
		if err != nil {
			return c.ioErr(err)
		}
		p := f.Payload
		switch f.Type {
		case amqp.FrameMethod:
			if len(p) >= 4 && binary.BigEndian.Uint32(p) == 60<<16|60 { // basic.deliver
				// consumer-tag shortstr, then the delivery tag.
				if len(p) < 5 || len(p) < 5+int(p[4])+8 {
					return fmt.Errorf("bench: short basic.deliver frame")
				}
				off := 5 + int(p[4])
				tag = binary.BigEndian.Uint64(p[off:])
				inHeader, inBody = true, false
				continue
			}
			m, err := amqp.DecodeMethod(p)
			if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			switch m := m.(type) {
			case *amqp.BasicAck:
				if h.confirm != nil {
					h.confirm(m.DeliveryTag, m.Multiple, false)
				}
			case *amqp.BasicNack:
				if h.confirm != nil {
					h.confirm(m.DeliveryTag, m.Multiple, true)
				}
			case *amqp.ConnectionCloseOk:
				return nil
			case *amqp.BasicCancel:
				return fmt.Errorf("bench: consumer %s cancelled by the broker", m.ConsumerTag)
			default:
				if err := c.serverClose(m); err != nil {
					return err
				}
			}
		case amqp.FrameHeader:
			if !inHeader || len(p) < 12 {
				return fmt.Errorf("bench: unexpected content header")
			}
			size = binary.BigEndian.Uint64(p[4:12])
			got, stamped, inHeader = 0, false, false
			if size == 0 {
				if err := h.message(tag, 0, false); err != nil {
					return c.ioErr(err)
				}
				continue
			}
			inBody = true
		case amqp.FrameBody:
			if !inBody {
				return fmt.Errorf("bench: unexpected content body")
			}
			if got == 0 {
				stamp, stamped = readStamp(p)
			}
			got += uint64(len(p))
			if got >= size {
				inBody = false
				if err := h.message(tag, stamp, stamped); err != nil {
					return c.ioErr(err)
				}
			}
		}
	}
}

// ioErr hides the errors a closing connection produces.
func (c *leanConn) ioErr(err error) error {
	if c.closing.Load() {
		return nil
	}
	return err
}

// close performs the close handshake (bounded by a short timeout) and closes the socket.
func (c *leanConn) close() {
	if !c.closing.CompareAndSwap(false, true) {
		return
	}
	c.stopOnce.Do(func() { close(c.stopHB) })
	c.wmu.Lock()
	c.wbuf = amqp.AppendMethodFrame(c.wbuf, 0, &amqp.ConnectionClose{ReplyCode: amqp.ReplySuccess, ReplyText: "bench done"})
	err := c.flushLocked()
	c.wmu.Unlock()
	if err == nil {
		if c.reader {
			select {
			case <-c.readDone:
			case <-time.After(2 * time.Second):
			}
		} else {
			_ = c.nc.SetReadDeadline(time.Now().Add(2 * time.Second))
			for {
				f, err := c.fr.ReadFrame()
				if err != nil || (f.Type == amqp.FrameMethod && len(f.Payload) >= 4 &&
					binary.BigEndian.Uint32(f.Payload) == 10<<16|51) { // connection.close-ok
					break
				}
			}
		}
	}
	c.nc.Close()
}

// publishTemplate is one pre-encoded publish: method frame, content header frame and body
// frames. stampAt is the offset of the body's first byte (the timestamp), -1 without a body.
type publishTemplate struct {
	frames  []byte
	stampAt int
}

func newPublishTemplate(exchange, key string, size int, persistent bool, frameMax uint32) publishTemplate {
	var t publishTemplate
	t.frames = amqp.AppendMethodFrame(nil, leanChannel, &amqp.BasicPublish{Exchange: exchange, RoutingKey: key})
	mode := uint8(1)
	if persistent {
		mode = 2
	}
	header := amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(size), &amqp.Properties{DeliveryMode: mode})
	t.stampAt = -1
	if size > 0 {
		// The header frame, then the first body frame's 7-byte header.
		t.stampAt = len(t.frames) + 7 + len(header) + 1 + 7
	}
	t.frames = amqp.AppendContent(t.frames, leanChannel, header, make([]byte, size), frameMax)
	return t
}

// publish buffers one message stamped ts and writes the buffer if the batching rules say so.
// firstAt is the stamp of the oldest unwritten message, 0 if none; the new value is returned.
func (c *leanConn) publish(t *publishTemplate, ts, firstAt int64) (int64, error) {
	c.wmu.Lock()
	off := len(c.wbuf)
	c.wbuf = append(c.wbuf, t.frames...)
	if t.stampAt >= 0 {
		putStamp(c.wbuf[off+t.stampAt:], ts)
	}
	if firstAt == 0 {
		firstAt = ts
	}
	var err error
	if len(c.wbuf) >= leanFlushBytes || ts-firstAt >= int64(leanFlushDelay) {
		err = c.flushLocked()
		firstAt = 0
	}
	c.wmu.Unlock()
	return firstAt, err
}

// ack buffers a basic.ack; the consumer's idle callback (or the prefetch rule) writes it. The
// frame is encoded by hand (a fixed 21-byte frame), so the ack path allocates nothing.
func (c *leanConn) ack(tag uint64, multiple bool) {
	var bits byte
	if multiple {
		bits = 1
	}
	c.wmu.Lock()
	c.wbuf = append(c.wbuf, amqp.FrameMethod, 0, leanChannel, 0, 0, 0, 13, 0, 60, 0, 80)
	c.wbuf = binary.BigEndian.AppendUint64(c.wbuf, tag)
	c.wbuf = append(c.wbuf, bits, amqp.FrameEnd)
	c.wmu.Unlock()
}
