package cluster

import (
	"crypto/tls"
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
	if err := c.confirms.push(it.done); err != nil {
		<-c.slots
		return false, err
	}
	c.env = broker.EncodeForwardMessage(c.env[:0], metaIndex, it.queues, it.msg)
	mode := uint8(1)
	if it.persistent {
		mode = 2
	}
	c.wmu.Lock()
	c.wbuf = amqp.AppendMethodFrame(c.wbuf, pubChannelID, &amqp.BasicPublish{Exchange: broker.ForwardExchange})
	start := len(c.wbuf)
	// The content header is written in place: class, weight, body size, flags, delivery mode.
	c.wbuf = amqp.AppendFrame(c.wbuf, amqp.FrameHeader, pubChannelID, nil)
	c.wbuf = c.wbuf[:len(c.wbuf)-1]
	c.wbuf = amqp.AppendContentHeader(c.wbuf, amqp.ClassBasic, uint64(len(c.env)), &amqp.Properties{DeliveryMode: mode})
	n := len(c.wbuf) - start - 7
	c.wbuf[start+3], c.wbuf[start+4], c.wbuf[start+5], c.wbuf[start+6] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	c.wbuf = append(c.wbuf, amqp.FrameEnd)
	chunk := int(c.frameMax - amqp.FrameOverhead)
	for body := c.env; len(body) > 0; {
		k := min(chunk, len(body))
		c.wbuf = amqp.AppendFrame(c.wbuf, amqp.FrameBody, pubChannelID, body[:k])
		body = body[k:]
	}
	big := len(c.wbuf) >= pubFlushBytes
	c.wmu.Unlock()
	if !more || big {
		return true, c.flush()
	}
	return true, nil
}

// heartbeats sends a heartbeat every half interval and ends the connection when the home was
// silent for three intervals (readWatch), until the connection ends.
func (c *pubConn) heartbeats() {
	t := time.NewTicker(c.hb / 2)
	defer t.Stop()
	watch := newReadWatch(c.nc, c.fr, 3*c.hb)
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			watch.check(now)
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
// A home silent for three heartbeat intervals is taken for gone (heartbeats).
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
		m, err := amqp.DecodeMethod(f.Payload)
		if err != nil {
			return err
		}
		var n int
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
	items []func(error)
	dead  error
	gone  chan struct{} // closed with dead
}

func newConfirmQueue() *confirmQueue { return &confirmQueue{base: 1, gone: make(chan struct{})} }

func (q *confirmQueue) err() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dead
}

// push adds the next tag's outcome callback (nil for none is fine).
func (q *confirmQueue) push(done func(error)) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.dead != nil {
		return q.dead
	}
	if done == nil {
		done = func(error) {}
	}
	q.items = append(q.items, done)
	return nil
}

// settle runs the callbacks of tag (and every earlier one with multiple) with err and returns
// how many it settled.
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
	var fs []func(error)
	for j := lo; j <= i; j++ {
		if q.items[j] != nil {
			fs = append(fs, q.items[j])
			q.items[j] = nil
		}
	}
	k := 0
	for k < len(q.items) && q.items[k] == nil {
		k++
	}
	q.base += uint64(k)
	if k == len(q.items) {
		q.items = q.items[:0] // all settled: the array is reused
	} else {
		q.items = q.items[k:]
	}
	q.mu.Unlock()
	for _, f := range fs {
		f(err)
	}
	return len(fs)
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
	for _, f := range items {
		if f != nil {
			f(err)
		}
	}
}
