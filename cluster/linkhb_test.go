package cluster

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// streamSplitFrames plays a home that never stops sending but whose stream, at every moment,
// ends inside a frame: its first write is half a heartbeat frame, each later one the rest of
// one frame and the start of the next. The reader's buffer then always holds part of a frame
// when it waits for more, as on a busy link carrying large bodies.
func streamSplitFrames(t *testing.T, nc net.Conn, stop <-chan struct{}) {
	t.Helper()
	go func() { _, _ = io.Copy(io.Discard, nc) }() // the client's heartbeats
	hb := amqp.AppendHeartbeat(nil)
	if _, err := nc.Write(hb[:4]); err != nil {
		return
	}
	pair := append(append([]byte(nil), hb[4:]...), hb[:4]...)
	for {
		select {
		case <-stop:
			return
		case <-time.After(5 * time.Millisecond):
		}
		if _, err := nc.Write(pair); err != nil {
			return
		}
	}
}

// linkPair is a TCP connection on loopback: the client's end and the home's.
func linkPair(t *testing.T) (client, home net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	home = <-accepted
	if home == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { _ = client.Close(); _ = home.Close() })
	return client, home
}

// A link connection that keeps receiving stays up however its stream splits into reads: the
// home is taken for gone only when nothing at all arrived for three heartbeats. The read
// deadline used to be refreshed only when no partial frame was buffered, so a busy proxy
// connection died three heartbeats into a steady burst, cancelling every proxied consumer.
func TestLinkBusyStreamKeepsConnection(t *testing.T) {
	const hb = 200 * time.Millisecond
	t.Run("proxy", func(t *testing.T) {
		nc, home := linkPair(t)
		c := &proxyConn{node: "n1", nc: nc, w: newLinkWriter(nc), fr: amqp.NewFrameReader(nc, 64<<10), frameMax: proxyFrameMax,
			hb: hb, chMax: 16, chans: map[uint16]*linkChan{}, done: make(chan struct{})}
		stop := make(chan struct{})
		go streamSplitFrames(t, home, stop)
		go c.readLoop()
		go watchReads(nc, c.fr, hb, c.done)
		go c.heartbeats()
		time.Sleep(6 * hb)
		if c.isDead() {
			t.Fatal("busy connection dropped")
		}
		// A home that goes silent is still found dead.
		close(stop)
		select {
		case <-c.done:
		case <-time.After(10 * hb):
			t.Fatal("silent home not found dead within 10 heartbeats")
		}
	})
	t.Run("forward", func(t *testing.T) {
		nc, home := linkPair(t)
		c := &pubConn{node: "n1", nc: nc, fr: amqp.NewFrameReader(nc, 16<<10), frameMax: pubFrameMax, hb: hb,
			confirms: newConfirmQueue(), slots: make(chan struct{}, forwardWindow), done: make(chan struct{})}
		stop := make(chan struct{})
		go streamSplitFrames(t, home, stop)
		go c.readLoop()
		go watchReads(nc, c.fr, hb, c.done)
		go c.heartbeats()
		time.Sleep(6 * hb)
		if c.dead() {
			t.Fatalf("busy connection dropped: %v", c.confirms.err())
		}
		close(stop)
		select {
		case <-c.done:
		case <-time.After(10 * hb):
			t.Fatal("silent home not found dead within 10 heartbeats")
		}
	})
}

// testProxyConn is a proxy connection on loopback to a home the test plays, with the link
// channels given (the connection's read loop runs).
func testProxyConn(t *testing.T, chans ...*linkChan) (*proxyConn, net.Conn) {
	t.Helper()
	nc, home := linkPair(t)
	c := &proxyConn{node: "n1", nc: nc, w: newLinkWriter(nc), fr: amqp.NewFrameReader(nc, 64<<10), frameMax: proxyFrameMax,
		chMax: 16, chans: map[uint16]*linkChan{}, done: make(chan struct{})}
	for _, lc := range chans {
		lc.c = c
		c.chans[lc.id] = lc
	}
	go c.readLoop()
	t.Cleanup(c.close)
	return c, home
}

func newTestLinkChan(id uint16) *linkChan {
	return &linkChan{id: id, reply: make(chan amqp.Method, 1), gone: make(chan struct{}), timeout: time.Second}
}

// A basic.get answer nobody asked for is the home's protocol error: the connection drops
// instead of the read loop waiting forever to hand it on (and with it every channel on it).
func TestProxyUnexpectedGetAnswerDropsConnection(t *testing.T) {
	getOk := func(ch uint16) []byte {
		b := amqp.AppendMethodFrame(nil, ch, &amqp.BasicGetOk{DeliveryTag: 1, RoutingKey: "q"})
		b = append(b, amqp.FrameHeader, byte(ch>>8), byte(ch), 0, 0, 0, 14, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, amqp.FrameEnd)
		return b
	}
	for _, tc := range []struct {
		name   string
		getter bool
		frames []byte
	}{
		{"get-empty on a consumer's channel", false, amqp.AppendMethodFrame(nil, 1, &amqp.BasicGetEmpty{})},
		{"get-ok on a consumer's channel", false, getOk(1)},
		{"two get-empty, none asked", true, amqp.AppendMethodFrame(amqp.AppendMethodFrame(nil, 1, &amqp.BasicGetEmpty{}), 1, &amqp.BasicGetEmpty{})},
		{"two get-ok, none asked", true, append(getOk(1), getOk(1)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lc := newTestLinkChan(1)
			if tc.getter {
				lc.getResults = make(chan getResult, 1)
			}
			c, home := testProxyConn(t, lc)
			go func() { _, _ = io.Copy(io.Discard, home) }()
			if _, err := home.Write(tc.frames); err != nil {
				t.Fatal(err)
			}
			select {
			case <-c.done:
			case <-time.After(2 * time.Second):
				t.Fatal("read loop stuck on an unexpected basic.get answer")
			}
		})
	}
}

// Frames for a channel id go to the channel that holds the id now, not to the one the read
// loop saw last under it when that one was dropped meanwhile (ids are reused once they
// cycle).
func TestProxyReadLoopForgetsDroppedChannel(t *testing.T) {
	old := newTestLinkChan(1)
	c, home := testProxyConn(t, old)
	go func() { _, _ = io.Copy(io.Discard, home) }()
	if _, err := home.Write(amqp.AppendMethodFrame(nil, 1, &amqp.ChannelClose{ReplyCode: amqp.NotFound, ReplyText: "NOT_FOUND - gone"})); err != nil {
		t.Fatal(err)
	}
	select {
	case <-old.gone:
	case <-time.After(2 * time.Second):
		t.Fatal("home's channel.close not handled")
	}
	reused := newTestLinkChan(1)
	reused.c = c
	c.mu.Lock()
	c.chans[1] = reused
	c.mu.Unlock()
	if _, err := home.Write(amqp.AppendMethodFrame(nil, 1, &amqp.ChannelOpenOk{})); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-reused.reply:
		if m.Name() != "channel.open-ok" {
			t.Fatalf("got %s", m.Name())
		}
	case <-old.reply:
		t.Fatal("the frame went to the dropped channel")
	case <-time.After(2 * time.Second):
		t.Fatal("the frame reached no channel")
	}
}

// contentFrames is a content header announcing size bytes and the body frames of body.
func contentFrames(ch uint16, size uint64, body []byte, frameMax int) []byte {
	hdr := []byte{0, 60, 0, 0, byte(size >> 56), byte(size >> 48), byte(size >> 40), byte(size >> 32),
		byte(size >> 24), byte(size >> 16), byte(size >> 8), byte(size), 0, 0}
	frame := func(b []byte, typ byte, p []byte) []byte {
		n := len(p)
		b = append(b, typ, byte(ch>>8), byte(ch), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
		return append(append(b, p...), amqp.FrameEnd)
	}
	b := frame(nil, amqp.FrameHeader, hdr)
	for len(body) > 0 {
		n := min(len(body), frameMax)
		b = frame(b, amqp.FrameBody, body[:n])
		body = body[n:]
	}
	return b
}

// A body larger than the first allocation is assembled as its frames arrive; a content header
// announcing more than the largest message size any node accepts drops the connection instead
// of allocating what it claims.
func TestProxyBodySizes(t *testing.T) {
	t.Run("multi-megabyte body", func(t *testing.T) {
		lc := newTestLinkChan(1)
		lc.getResults = make(chan getResult, 1)
		_, home := testProxyConn(t, lc)
		go func() { _, _ = io.Copy(io.Discard, home) }()
		body := make([]byte, 3*linkBodyPrealloc+5)
		for i := range body {
			body[i] = byte(i * 7)
		}
		b := amqp.AppendMethodFrame(nil, 1, &amqp.BasicGetOk{DeliveryTag: 1, RoutingKey: "q"})
		b = append(b, contentFrames(1, uint64(len(body)), body, proxyFrameMax-8)...)
		if _, err := home.Write(b); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-lc.getResults:
			if !r.ok || string(r.d.Body) != string(body) {
				t.Fatalf("got ok %v, %d bytes, want %d", r.ok, len(r.d.Body), len(body))
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no get result")
		}
	})
	t.Run("claimed body above the limit", func(t *testing.T) {
		lc := newTestLinkChan(1)
		lc.getResults = make(chan getResult, 1)
		c, home := testProxyConn(t, lc)
		go func() { _, _ = io.Copy(io.Discard, home) }()
		b := amqp.AppendMethodFrame(nil, 1, &amqp.BasicGetOk{DeliveryTag: 1, RoutingKey: "q"})
		b = append(b, contentFrames(1, broker.MaxMessageSize+1, nil, 0)...)
		if _, err := home.Write(b); err != nil {
			t.Fatal(err)
		}
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			t.Fatal("connection kept")
		}
	})
}
