package cluster

import (
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// The forwarding connection of a peer, written and read with Warren's own amqp codec instead of
// amqp091-go: forwarding is the link's hottest path, and amqp091-go spends more per publish
// (a method struct, a frame struct per frame, a confirm resequencer and a channel send per
// confirm) than the home node spends accepting it. Here a forward is one append of its frames
// to a buffer that is written when the forward queue is drained (or the buffer is large, or the
// confirm window is full), and the confirms, usually multiple, are read in place.

// pubFlushBytes is how much the forwarding connection buffers before it writes anyway.
const pubFlushBytes = 64 << 10

// pubFrameMax is the frame size the forwarding connection asks for (the home may lower it).
const pubFrameMax = 128 << 10

// pubChannelID is the one channel of a forwarding connection.
const pubChannelID = 1

// pubConn is a peer's forwarding connection: one channel in confirm mode. The peer's sender
// goroutine writes (publish, flush); its reader goroutine reads confirms and the home's closes.
type pubConn struct {
	node     string
	nc       net.Conn
	fr       *amqp.FrameReader
	frameMax uint32
	hb       time.Duration // negotiated heartbeat interval, 0 for none

	wmu  sync.Mutex
	wbuf []byte
	werr error
	env  []byte // the envelope being encoded (sender only)

	confirms *confirmQueue
	slots    chan struct{} // one per unconfirmed forward (forwardWindow)
	closing  atomic.Bool
	done     chan struct{} // closed when the reader ends
}

// dialPub connects to addr (over the cluster's TLS when tlsCfg is set), logs in and opens a
// forwarding channel in confirm mode, all bounded by timeout.
func dialPub(addr, vhost, name string, login linkLogin, tlsCfg *tls.Config, heartbeat, timeout time.Duration) (*pubConn, error) {
	nc, err := dialLink(addr, tlsCfg, timeout)
	if err != nil {
		return nil, err
	}
	c := &pubConn{node: login.server, nc: nc, fr: amqp.NewFrameReader(nc, 16<<10), frameMax: pubFrameMax,
		wbuf: make([]byte, 0, pubFlushBytes+pubFrameMax), confirms: newConfirmQueue(),
		slots: make(chan struct{}, forwardWindow), done: make(chan struct{})}
	_ = nc.SetDeadline(time.Now().Add(timeout))
	if err := c.handshake(vhost, name, login, heartbeat); err != nil {
		_ = nc.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	go c.readLoop()
	if c.hb > 0 {
		go watchReads(c.nc, c.fr, c.hb, c.done)
		go c.heartbeats()
	}
	return c, nil
}

func (c *pubConn) handshake(vhost, name string, login linkLogin, heartbeat time.Duration) error {
	t, err := linkHello(c.nc, c.fr, vhost, name, login,
		amqp.Table{"publisher_confirms": true, "basic.nack": true}, heartbeat, c.frameMax)
	if err != nil {
		return err
	}
	c.frameMax, c.hb = t.frameMax, t.heartbeat
	c.buffer(pubChannelID, &amqp.ChannelOpen{})
	c.buffer(pubChannelID, &amqp.ConfirmSelect{})
	if err := c.flush(); err != nil {
		return err
	}
	for _, want := range []string{"channel.open-ok", "confirm.select-ok"} {
		if _, err := c.expect(want); err != nil {
			return err
		}
	}
	return nil
}

// expect reads the next method, during the handshake; a close from the home is an error
// carrying its reply code.
func (c *pubConn) expect(want string) (amqp.Method, error) {
	f, err := c.fr.ReadNonHeartbeat()
	if err != nil {
		return nil, fmt.Errorf("awaiting %s: %w", want, err)
	}
	if f.Type != amqp.FrameMethod {
		return nil, fmt.Errorf("awaiting %s: unexpected frame type %d", want, f.Type)
	}
	m, err := amqp.DecodeMethod(f.Payload)
	if err != nil {
		return nil, fmt.Errorf("awaiting %s: %w", want, err)
	}
	if err := c.closedBy(m); err != nil {
		return nil, err
	}
	if m.Name() != want {
		return nil, fmt.Errorf("awaiting %s: got %s", want, m.Name())
	}
	return m, nil
}

// closedBy answers a connection.close or channel.close of the home and returns it as an
// error (an *amqp.Error with the home's code); any other method gives nil.
func (c *pubConn) closedBy(m amqp.Method) error {
	switch m := m.(type) {
	case *amqp.ConnectionClose:
		c.buffer(0, &amqp.ConnectionCloseOk{})
		_ = c.flush()
		return amqp.Errorf(m.ReplyCode, "%s", m.ReplyText)
	case *amqp.ChannelClose:
		c.buffer(pubChannelID, &amqp.ChannelCloseOk{})
		_ = c.flush()
		return amqp.Errorf(m.ReplyCode, "%s", m.ReplyText)
	}
	return nil
}

func (c *pubConn) buffer(channel uint16, m amqp.Method) {
	c.wmu.Lock()
	c.wbuf = amqp.AppendMethodFrame(c.wbuf, channel, m)
	c.wmu.Unlock()
}

// flush writes what is buffered. The write blocks while the home does not read (its flow
// control), which holds the sender goroutine, as a blocked publisher is held on one node.
func (c *pubConn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
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

// publish buffers one forward (after a slot of the confirm window is free) and writes the
// buffer when more is not coming (more false) or it is large. Once queued is true the
// forward's done belongs to the confirm queue (a confirm, or its kill, runs it); before, an
// error leaves it to the caller. metaIndex is the sender's applied metadata index: a home
// behind it waits before it takes a queue it does not know for deleted.
func (c *pubConn) publish(it fwdItem, metaIndex uint64, more bool) (queued bool, err error) {
	select {
	case c.slots <- struct{}{}:
	default:
		// The window is full: what is buffered must go out for confirms to come back.
		if err := c.flush(); err != nil {
			return false, err
		}
		select {
		case c.slots <- struct{}{}:
		case <-c.confirms.gone:
			return false, c.confirms.err()
		}
	}
	if err := c.confirms.push(it.out); err != nil {
		<-c.slots
		return false, err
	}
	// The envelope is the message's body after everything else (EncodeForwardMessage): the
	// rest is encoded apart and the body copied once, straight into the frames.
	head := *it.msg
	head.Body = nil
	c.env = broker.EncodeForwardMessage(c.env[:0], metaIndex, it.queues, &head)
	c.wmu.Lock()
	c.wbuf = appendForwardFrames(c.wbuf, c.frameMax, it.persistent, c.env, it.msg.Body)
	big := len(c.wbuf) >= pubFlushBytes
	c.wmu.Unlock()
	if !more || big {
		return true, c.flush()
	}
	return true, nil
}

// pubPublishFrame is the method frame of every forward (basic.publish to
// broker.ForwardExchange on the forwarding channel), and pubHeaderFrames the content header
// frames of a transient and a persistent forward with a body size of 0, which
// appendForwardFrames sets: encoded once, as they never change.
var (
	pubPublishFrame = amqp.AppendMethodFrame(nil, pubChannelID, &amqp.BasicPublish{Exchange: broker.ForwardExchange})
	pubHeaderFrames = [2][]byte{pubHeaderFrame(1), pubHeaderFrame(2)}
)

func pubHeaderFrame(mode uint8) []byte {
	return amqp.AppendFrame(nil, amqp.FrameHeader, pubChannelID,
		amqp.AppendContentHeader(nil, amqp.ClassBasic, 0, &amqp.Properties{DeliveryMode: mode}))
}

// pubBodySizeAt is the offset of the body size in a content header frame: after the frame's
// type, channel and size (7 bytes), and the class and weight (4).
const pubBodySizeAt = 7 + 4

// appendForwardFrames appends the frames of one forward to dst: basic.publish, the content
// header (delivery mode 2 when persistent) and the envelope head+body in body frames of at
// most frameMax bytes.
func appendForwardFrames(dst []byte, frameMax uint32, persistent bool, head, body []byte) []byte {
	dst = append(dst, pubPublishFrame...)
	hdr := pubHeaderFrames[0]
	if persistent {
		hdr = pubHeaderFrames[1]
	}
	at := len(dst) + pubBodySizeAt
	dst = append(dst, hdr...)
	binary.BigEndian.PutUint64(dst[at:], uint64(len(head)+len(body)))
	chunk := int(frameMax - amqp.FrameOverhead)
	for len(head)+len(body) > 0 {
		k := min(chunk, len(head)+len(body))
		dst = append(dst, amqp.FrameBody, byte(pubChannelID>>8), byte(pubChannelID&0xff), byte(k>>24), byte(k>>16), byte(k>>8), byte(k))
		h := min(k, len(head))
		dst = append(dst, head[:h]...)
		dst = append(dst, body[:k-h]...)
		head, body = head[h:], body[k-h:]
		dst = append(dst, amqp.FrameEnd)
	}
	return dst
}

// heartbeats sends a heartbeat every half interval until the connection ends. Its write can
// wait behind a sender blocked on a home that does not read: the home's silence is watched
// apart (watchReads), never from here.
func (c *pubConn) heartbeats() {
	t := time.NewTicker(c.hb / 2)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		c.wmu.Lock()
		c.wbuf = amqp.AppendHeartbeat(c.wbuf)
		c.wmu.Unlock()
		if c.flush() != nil {
			return
		}
	}
}

// readLoop reads the home's confirms until the connection ends, then fails what is unconfirmed.
// A home silent for three heartbeat intervals is taken for gone (watchReads).
func (c *pubConn) readLoop() {
	err := c.read()
	if c.closing.Load() {
		err = errLinkClosed
	}
	c.confirms.kill(fmt.Errorf("cluster link to node %s lost: %w", c.node, err))
	close(c.done)
	_ = c.nc.Close()
}

func (c *pubConn) read() error {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return err
		}
		if f.Type != amqp.FrameMethod {
			continue // heartbeats
		}
		var n int
		if tag, multiple, nack, ok := scanConfirm(f.Payload); ok {
			// The confirms, nearly every frame read here, are read in place.
			var err error
			if nack {
				err = fmt.Errorf("cluster: node %s refused a forwarded message", c.node)
			}
			n = c.confirms.settle(tag, multiple, err)
			for range n {
				<-c.slots
			}
			continue
		}
		m, err := amqp.DecodeMethod(f.Payload)
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *amqp.BasicAck:
			n = c.confirms.settle(m.DeliveryTag, m.Multiple, nil)
		case *amqp.BasicNack:
			n = c.confirms.settle(m.DeliveryTag, m.Multiple, fmt.Errorf("cluster: node %s refused a forwarded message", c.node))
		case *amqp.ConnectionCloseOk:
			return errLinkClosed
		default:
			if err := c.closedBy(m); err != nil {
				return err
			}
		}
		for range n {
			<-c.slots
		}
	}
}

// scanConfirm reads a basic.ack or basic.nack method payload in place (class 60, method 80 or
// 120, a 64-bit tag, then the bits: multiple first); ok is false for any other method.
func scanConfirm(p []byte) (tag uint64, multiple, nack, ok bool) {
	if len(p) != 13 || p[0] != 0 || p[1] != 60 || p[2] != 0 || (p[3] != 80 && p[3] != 120) {
		return 0, false, false, false
	}
	return binary.BigEndian.Uint64(p[4:12]), p[12]&1 != 0, p[3] == 120, true
}

// close ends the connection with the close handshake, not waited for beyond a second.
func (c *pubConn) close() {
	if !c.closing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		c.buffer(0, &amqp.ConnectionClose{ReplyCode: amqp.ReplySuccess, ReplyText: "link closed"})
		_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		if c.flush() == nil {
			select {
			case <-c.done:
			case <-time.After(time.Second):
			}
		}
		_ = c.nc.Close()
	}()
}

// dead reports whether the connection ended (its forwards failed).
func (c *pubConn) dead() bool { return c.confirms.err() != nil }

// confirmQueue are the forwards published on a forwarding channel and not yet confirmed, by
// confirm tag (1, 2, ... in publish order). The home may confirm out of order.
type confirmQueue struct {
	mu    sync.Mutex
	base  uint64 // the tag of items[0]
	items []confirmSlot
	dead  error
	gone  chan struct{} // closed with dead
	fire  []fwdOutcome  // settle's outcomes to report (reused: settle has one caller, the reader)
}

// confirmSlot is one forward's place in the confirm queue; settled once its outcome is
// reported.
type confirmSlot struct {
	out     fwdOutcome
	settled bool
}

func newConfirmQueue() *confirmQueue { return &confirmQueue{base: 1, gone: make(chan struct{})} }

func (q *confirmQueue) err() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dead
}

// push adds the next tag's outcome (an empty one is fine).
func (q *confirmQueue) push(out fwdOutcome) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.dead != nil {
		return q.dead
	}
	q.items = append(q.items, confirmSlot{out: out})
	return nil
}

// settle reports err as the outcome of tag (and of every earlier one with multiple) and
// returns how many it settled. One goroutine at a time (the connection's reader).
func (q *confirmQueue) settle(tag uint64, multiple bool, err error) int {
	q.mu.Lock()
	if tag < q.base || tag >= q.base+uint64(len(q.items)) {
		q.mu.Unlock()
		return 0
	}
	i := int(tag - q.base)
	lo := i
	if multiple {
		lo = 0
	}
	fs := q.fire[:0]
	for j := lo; j <= i; j++ {
		if s := &q.items[j]; !s.settled {
			fs = append(fs, s.out)
			*s = confirmSlot{settled: true} // the outcome is reported once; drop its references
		}
	}
	k := 0
	for k < len(q.items) && q.items[k].settled {
		k++
	}
	q.base += uint64(k)
	if k == len(q.items) {
		q.items = q.items[:0] // all settled: the array is reused
	} else {
		q.items = q.items[k:]
	}
	q.mu.Unlock()
	for _, o := range fs {
		o.report(err)
	}
	n := len(fs)
	clear(fs)
	q.fire = fs[:0]
	return n
}

// kill fails every unconfirmed forward: the channel is gone, so their confirms never come.
func (q *confirmQueue) kill(err error) {
	q.mu.Lock()
	if q.dead != nil {
		q.mu.Unlock()
		return
	}
	items := q.items
	q.items, q.dead = nil, err
	close(q.gone)
	q.mu.Unlock()
	for _, s := range items {
		if !s.settled {
			s.out.report(err)
		}
	}
}
