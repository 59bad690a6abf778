package conformance

// Raw-TCP tests with a tiny, self-contained AMQP 0-9-1 frame codec (deliberately independent of
// warren/amqp, so the suite also checks Warren's codec against an outside implementation).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

const (
	wMethod    = 1
	wHeader    = 2
	wBody      = 3
	wHeartbeat = 8
	wFrameEnd  = 0xCE
)

var wProtocolHeader = []byte("AMQP\x00\x00\x09\x01")

// wbuf builds method arguments.
type wbuf struct{ b []byte }

func (w *wbuf) octet(v uint8) *wbuf  { w.b = append(w.b, v); return w }
func (w *wbuf) short(v uint16) *wbuf { w.b = binary.BigEndian.AppendUint16(w.b, v); return w }
func (w *wbuf) long(v uint32) *wbuf  { w.b = binary.BigEndian.AppendUint32(w.b, v); return w }
func (w *wbuf) llong(v uint64) *wbuf { w.b = binary.BigEndian.AppendUint64(w.b, v); return w }
func (w *wbuf) shortstr(s string) *wbuf {
	w.b = append(w.b, byte(len(s)))
	w.b = append(w.b, s...)
	return w
}
func (w *wbuf) longstr(s string) *wbuf {
	w.long(uint32(len(s)))
	w.b = append(w.b, s...)
	return w
}

// table appends a field table of string and bool/table values (enough for client-properties).
func (w *wbuf) table(kv ...any) *wbuf {
	var t wbuf
	for i := 0; i < len(kv); i += 2 {
		t.shortstr(kv[i].(string))
		switch v := kv[i+1].(type) {
		case string:
			t.octet('S').longstr(v)
		case bool:
			b := uint8(0)
			if v {
				b = 1
			}
			t.octet('t').octet(b)
		case []byte: // a nested table, already encoded with its length prefix
			t.octet('F')
			t.b = append(t.b, v...)
		}
	}
	w.long(uint32(len(t.b)))
	w.b = append(w.b, t.b...)
	return w
}

func method(class, id uint16) *wbuf { return (&wbuf{}).short(class).short(id) }

// wframe encodes one frame.
func wframe(typ byte, channel uint16, payload []byte) []byte {
	b := []byte{typ}
	b = binary.BigEndian.AppendUint16(b, channel)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, payload...)
	return append(b, wFrameEnd)
}

type rawFrame struct {
	typ     byte
	channel uint16
	payload []byte
}

func (f rawFrame) classMethod() (uint16, uint16) {
	if f.typ != wMethod || len(f.payload) < 4 {
		return 0, 0
	}
	return binary.BigEndian.Uint16(f.payload), binary.BigEndian.Uint16(f.payload[2:])
}

// closeInfo decodes a connection.close or channel.close payload.
type closeInfo struct {
	code          uint16
	text          string
	class, method uint16
}

func decodeClose(p []byte) (closeInfo, error) {
	if len(p) < 7 {
		return closeInfo{}, errors.New("short close")
	}
	p = p[4:]
	ci := closeInfo{code: binary.BigEndian.Uint16(p)}
	n := int(p[2])
	if len(p) < 3+n+4 {
		return closeInfo{}, errors.New("short close text")
	}
	ci.text = string(p[3 : 3+n])
	ci.class = binary.BigEndian.Uint16(p[3+n:])
	ci.method = binary.BigEndian.Uint16(p[5+n:])
	return ci, nil
}

// wconn is a raw AMQP client connection.
type wconn struct {
	t        *testing.T
	c        net.Conn
	frameMax uint32
	chMax    uint16
	hb       uint16
}

func wdial(t *testing.T) *wconn {
	t.Helper()
	c, err := net.DialTimeout("tcp", brokerAddr, wait)
	if err != nil {
		t.Fatalf("dial %s: %v", brokerAddr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &wconn{t: t, c: c}
}

func (w *wconn) write(b []byte) {
	w.t.Helper()
	if _, err := w.c.Write(b); err != nil {
		w.t.Fatalf("write: %v", err)
	}
}

func (w *wconn) send(channel uint16, m *wbuf) { w.t.Helper(); w.write(wframe(wMethod, channel, m.b)) }

// readFrame returns the next frame, heartbeats included.
func (w *wconn) readFrame(timeout time.Duration) (rawFrame, error) {
	w.c.SetReadDeadline(time.Now().Add(timeout))
	var h [7]byte
	if _, err := io.ReadFull(w.c, h[:]); err != nil {
		return rawFrame{}, err
	}
	size := binary.BigEndian.Uint32(h[3:])
	if size > 1<<24 {
		return rawFrame{}, fmt.Errorf("frame size %d", size)
	}
	p := make([]byte, size+1)
	if _, err := io.ReadFull(w.c, p); err != nil {
		return rawFrame{}, err
	}
	if p[size] != wFrameEnd {
		return rawFrame{}, fmt.Errorf("bad frame end %#x", p[size])
	}
	return rawFrame{typ: h[0], channel: binary.BigEndian.Uint16(h[1:]), payload: p[:size]}, nil
}

// next returns the next non-heartbeat frame or fails the test.
func (w *wconn) next() rawFrame {
	w.t.Helper()
	for {
		f, err := w.readFrame(wait)
		if err != nil {
			w.t.Fatalf("read frame: %v", err)
		}
		if f.typ != wHeartbeat {
			return f
		}
	}
}

func (w *wconn) expectMethod(channel, class, id uint16) rawFrame {
	w.t.Helper()
	f := w.next()
	c, m := f.classMethod()
	if f.channel != channel || c != class || m != id {
		extra := ""
		if c == 10 && m == 50 || c == 20 && m == 40 {
			ci, _ := decodeClose(f.payload)
			extra = fmt.Sprintf(" (close %d %q on %d.%d)", ci.code, ci.text, ci.class, ci.method)
		}
		w.t.Fatalf("got frame type %d channel %d method %d.%d%s, want %d.%d on channel %d",
			f.typ, f.channel, c, m, extra, class, id, channel)
	}
	return f
}

// handshakeOpts tweaks the hand-made handshake.
type handshakeOpts struct {
	password     string
	frameMax     uint32 // 0 = server's
	heartbeat    uint16
	noHeartbeat  bool
	capabilities bool // advertise authentication_failure_close
	vhost        string
}

// handshake performs start/start-ok/tune/tune-ok/open/open-ok by hand.
func (w *wconn) handshake(o handshakeOpts) {
	w.t.Helper()
	w.startTune(o)
	vhost := o.vhost
	if vhost == "" {
		vhost = "/"
	}
	w.send(0, method(10, 40).shortstr(vhost).shortstr("").octet(0))
	w.expectMethod(0, 10, 41)
}

// startTune performs the handshake up to and including tune-ok.
func (w *wconn) startTune(o handshakeOpts) {
	w.t.Helper()
	w.write(wProtocolHeader)
	w.expectMethod(0, 10, 10)
	pass := o.password
	if pass == "" {
		pass = "guest"
	}
	props := []any{"product", "warren-conformance-wire"}
	if o.capabilities {
		props = append(props, "capabilities", (&wbuf{}).table("authentication_failure_close", true).b)
	}
	w.send(0, method(10, 11).table(props...).shortstr("PLAIN").longstr("\x00guest\x00"+pass).shortstr("en_US"))
	f := w.next()
	if c, m := f.classMethod(); c != 10 || m != 30 {
		w.t.Fatalf("expected connection.tune, got %d.%d", c, m)
	}
	p := f.payload[4:]
	w.chMax = binary.BigEndian.Uint16(p)
	w.frameMax = binary.BigEndian.Uint32(p[2:])
	w.hb = binary.BigEndian.Uint16(p[6:])
	if o.frameMax != 0 {
		w.frameMax = o.frameMax
	}
	if o.heartbeat != 0 || o.noHeartbeat {
		w.hb = o.heartbeat
	}
	w.send(0, method(10, 31).short(w.chMax).long(w.frameMax).short(w.hb))
}

// expectConnectionClose waits for connection.close, checks it, answers close-ok and checks that the
// server then closes the socket.
func (w *wconn) expectConnectionClose(code, class, id uint16, textPrefix string) closeInfo {
	w.t.Helper()
	f := w.expectMethod(0, 10, 50)
	ci, err := decodeClose(f.payload)
	if err != nil {
		w.t.Fatal(err)
	}
	if ci.code != code || ci.class != class || ci.method != id || !strings.HasPrefix(ci.text, textPrefix) {
		w.t.Fatalf("connection.close %d %q class %d method %d, want %d %q... %d %d",
			ci.code, ci.text, ci.class, ci.method, code, textPrefix, class, id)
	}
	// close-ok; the server may already have given up on the socket, so a write error is fine.
	w.c.Write(wframe(wMethod, 0, method(10, 51).b))
	w.expectEOF()
	return ci
}

func (w *wconn) expectChannelClose(channel, code, class, id uint16, textPrefix string) closeInfo {
	w.t.Helper()
	f := w.expectMethod(channel, 20, 40)
	ci, err := decodeClose(f.payload)
	if err != nil {
		w.t.Fatal(err)
	}
	if ci.code != code || ci.class != class || ci.method != id || !strings.HasPrefix(ci.text, textPrefix) {
		w.t.Fatalf("channel.close %d %q class %d method %d, want %d %q... %d %d",
			ci.code, ci.text, ci.class, ci.method, code, textPrefix, class, id)
	}
	w.send(channel, method(20, 41))
	return ci
}

// expectDropped asserts that the server ends the connection. If allowedCode is not 0, a
// connection.close with that code may precede the drop (RabbitMQ sends none).
func (w *wconn) expectDropped(allowedCode uint16) {
	w.t.Helper()
	for {
		f, err := w.readFrame(wait)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				w.t.Fatal("server did not drop the connection")
			}
			return
		}
		if f.typ == wHeartbeat {
			continue
		}
		if c, m := f.classMethod(); c == 10 && m == 50 && allowedCode != 0 {
			ci, _ := decodeClose(f.payload)
			if ci.code != allowedCode {
				w.t.Fatalf("connection.close %d %q, want %d or a plain drop", ci.code, ci.text, allowedCode)
			}
			w.send(0, method(10, 51))
			w.expectEOF()
			return
		}
		c, m := f.classMethod()
		w.t.Fatalf("expected the connection to drop, got frame type %d method %d.%d", f.typ, c, m)
	}
}

// expectEOF asserts the server closes the socket.
func (w *wconn) expectEOF() {
	w.t.Helper()
	for {
		f, err := w.readFrame(wait)
		if err == nil {
			if f.typ == wHeartbeat {
				continue
			}
			c, m := f.classMethod()
			w.t.Fatalf("expected EOF, got frame type %d method %d.%d", f.typ, c, m)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			w.t.Fatal("server did not close the socket")
		}
		return
	}
}

func (w *wconn) openChannel(ch uint16) {
	w.t.Helper()
	w.send(ch, method(20, 10).shortstr(""))
	w.expectMethod(ch, 20, 11)
}

// contentHeader builds a basic content header payload with the given property flags/values.
func contentHeader(size uint64, flags uint16, props []byte) []byte {
	b := (&wbuf{}).short(60).short(0).llong(size).short(flags)
	return append(b.b, props...)
}

func publishMethod(exchange, key string) *wbuf {
	return method(60, 40).short(0).shortstr(exchange).shortstr(key).octet(0)
}

func TestWireBadProtocolHeader(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, header string }{
		{"garbage", "GET / HTTP/1.1\r\n\r\n"},
		{"amqp-0-10", "AMQP\x01\x01\x00\x0a"},
		{"amqp-1-0", "AMQP\x00\x01\x00\x00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := wdial(t)
			w.write([]byte(tc.header))
			w.c.SetReadDeadline(time.Now().Add(wait))
			got, err := io.ReadAll(w.c)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("socket not closed; got %q", got)
				}
			}
			if !bytes.Equal(got, wProtocolHeader) {
				t.Fatalf("server replied %q, want %q then close", got, wProtocolHeader)
			}
		})
	}
}

func TestWireHandshakeByHand(t *testing.T) {
	t.Parallel()
	w := wdial(t)
	w.write(wProtocolHeader)
	f := w.expectMethod(0, 10, 10)
	p := f.payload[4:]
	if p[0] != 0 || p[1] != 9 {
		t.Fatalf("connection.start version %d-%d, want 0-9", p[0], p[1])
	}
	// Back to a client that does it all properly.
	w2 := wdial(t)
	w2.handshake(handshakeOpts{})
	if w2.frameMax != 131072 || w2.chMax != 2047 || w2.hb != 60 {
		t.Fatalf("tune offered frame_max=%d channel_max=%d heartbeat=%d, want 131072 2047 60", w2.frameMax, w2.chMax, w2.hb)
	}
	w2.send(0, method(10, 50).short(200).shortstr("bye").short(0).short(0))
	// RabbitMQ answers close-ok and leaves closing the socket to the client.
	w2.expectMethod(0, 10, 51)
}

func TestWireAuthFailureClose(t *testing.T) {
	t.Parallel()
	w := wdial(t)
	w.write(wProtocolHeader)
	w.expectMethod(0, 10, 10)
	caps := (&wbuf{}).table("authentication_failure_close", true).b
	w.send(0, method(10, 11).table("capabilities", caps).shortstr("PLAIN").longstr("\x00guest\x00wrong").shortstr("en_US"))
	f := w.expectMethod(0, 10, 50)
	ci, _ := decodeClose(f.payload)
	want := "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
	if ci.code != 403 || ci.text != want || ci.class != 0 || ci.method != 0 {
		t.Fatalf("close %d %q %d.%d, want 403 %q 0.0", ci.code, ci.text, ci.class, ci.method, want)
	}
}

func TestWireUnknownMechanism(t *testing.T) {
	t.Parallel()
	w := wdial(t)
	w.write(wProtocolHeader)
	w.expectMethod(0, 10, 10)
	caps := (&wbuf{}).table("authentication_failure_close", true).b
	w.send(0, method(10, 11).table("capabilities", caps).shortstr("CRAM-MD5").longstr("x").shortstr("en_US"))
	// RabbitMQ 3.10 drops the socket without a connection.close.
	w.expectDropped(0)
}

// Each case runs after a full handshake with one open channel (1).
func TestWireProtocolErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		run  func(w *wconn)
		// expected close; channel=true for channel.close on channel 1
		channel       bool
		code          uint16
		class, method uint16
		text          string
	}{
		{"frame-too-large", func(w *wconn) {
			w.write(publishMethodFrame(1, "", "q"))
			// RabbitMQ tolerates payloads up to frame_max itself (an 8-byte fudge); one more is an error.
			big := make([]byte, w.frameMax+1)
			w.write(wframe(wHeader, 1, contentHeader(uint64(len(big)), 0, nil)))
			// The server may stop reading as soon as it has seen the frame header.
			w.c.Write(wframe(wBody, 1, big))
		}, false, 501, 0, 0, "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,131073,131064}"},
		{"bad-frame-end", func(w *wconn) {
			f := wframe(wMethod, 1, method(50, 10).short(0).shortstr("x").octet(0).table().b)
			f[len(f)-1] = 0x00
			w.write(f)
		}, false, 501, 0, 0, "FRAME_ERROR"},
		{"channel-not-open", func(w *wconn) {
			w.send(7, method(50, 10).short(0).shortstr("").octet(0).table())
		}, false, 504, 50, 10, "CHANNEL_ERROR - expected 'channel.open'"},
		{"channel-open-twice", func(w *wconn) {
			w.send(1, method(20, 10).shortstr(""))
		}, false, 504, 20, 10, "CHANNEL_ERROR - second 'channel.open' seen"},
		{"header-without-publish", func(w *wconn) {
			w.write(wframe(wHeader, 1, contentHeader(3, 0, nil)))
		}, false, 505, 0, 0, "UNEXPECTED_FRAME - expected method frame, got non method frame instead"},
		{"body-without-publish", func(w *wconn) {
			w.write(wframe(wBody, 1, []byte("abc")))
		}, false, 505, 0, 0, "UNEXPECTED_FRAME - expected method frame, got non method frame instead"},
		{"method-instead-of-header", func(w *wconn) {
			w.write(publishMethodFrame(1, "", "q"))
			w.send(1, method(50, 10).short(0).shortstr("").octet(0).table())
		}, false, 505, 60, 40, "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead"},
		{"body-longer-than-declared", func(w *wconn) {
			// RabbitMQ 3.10 swallows the excess and keeps waiting for body frames, so the next
			// method frame is the error.
			w.write(publishMethodFrame(1, "", "q"))
			w.write(wframe(wHeader, 1, contentHeader(2, 0, nil)))
			w.write(wframe(wBody, 1, []byte("abc")))
			w.send(1, method(50, 10).short(0).shortstr("").octet(0).table())
		}, false, 505, 60, 40, "UNEXPECTED_FRAME - expected content body, got non content body frame instead"},
		{"unknown-frame-type", func(w *wconn) {
			w.write(wframe(9, 1, []byte("x")))
		}, false, 501, 0, 0, "FRAME_ERROR - type 9, all octets = <<"},
		{"heartbeat-on-channel", func(w *wconn) {
			w.write(wframe(wHeartbeat, 1, nil))
		}, false, 505, 0, 0, "UNEXPECTED_FRAME - type 8, all octets = <<>>"},
		{"truncated-method", func(w *wconn) {
			w.send(1, method(50, 10).short(0))
		}, false, 501, 50, 10, "FRAME_ERROR - cannot decode <<0,0>>"},
		{"channel-class-on-channel-zero", func(w *wconn) {
			w.send(0, method(50, 10).short(0).shortstr("").octet(0).table())
		}, false, 504, 50, 10, "CHANNEL_ERROR - unexpected method in connection state running"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := wdial(t)
			w.handshake(handshakeOpts{})
			w.openChannel(1)
			tc.run(w)
			if tc.channel {
				w.expectChannelClose(1, tc.code, tc.class, tc.method, tc.text)
			} else {
				ci := w.expectConnectionClose(tc.code, tc.class, tc.method, tc.text)
				t.Logf("close: %d %q %d.%d", ci.code, ci.text, ci.class, ci.method)
			}
		})
	}
}

// RabbitMQ 3.10 drops the TCP connection without a connection.close when it sees a method id it does
// not know. Warren may instead send connection.close 540 NOT_IMPLEMENTED first; either way the
// connection must end.
func TestWireUnknownMethod(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		class, method uint16
	}{{"unknown-method", 60, 999}, {"unknown-class", 999, 1}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := wdial(t)
			w.handshake(handshakeOpts{})
			w.openChannel(1)
			w.send(1, method(tc.class, tc.method))
			w.expectDropped(540)
		})
	}
}

// Channel ids above channel_max are accepted by RabbitMQ 3.10; what it limits is the number of open
// channels.
func TestWireChannelMaxCountsChannels(t *testing.T) {
	t.Parallel()
	w := wdial(t)
	w.write(wProtocolHeader)
	w.expectMethod(0, 10, 10)
	w.send(0, method(10, 11).table().shortstr("PLAIN").longstr("\x00guest\x00guest").shortstr("en_US"))
	w.expectMethod(0, 10, 30)
	w.send(0, method(10, 31).short(2).long(131072).short(0))
	w.send(0, method(10, 40).shortstr("/").shortstr("").octet(0))
	w.expectMethod(0, 10, 41)
	w.openChannel(1)
	w.openChannel(5)
	w.send(3, method(20, 10).shortstr(""))
	w.expectConnectionClose(530, 0, 0, "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)")
}

func TestWireEmptyBodyFrameAccepted(t *testing.T) {
	t.Parallel()
	_, ach := setup(t)
	q := declareQueue(t, ach, nil)
	w := wdial(t)
	w.handshake(handshakeOpts{})
	w.openChannel(1)
	w.write(publishMethodFrame(1, "", q))
	w.write(wframe(wHeader, 1, contentHeader(2, 0, nil)))
	w.write(wframe(wBody, 1, nil))
	w.write(wframe(wBody, 1, []byte("ab")))
	w.send(1, method(50, 10).short(0).shortstr("").octet(0).table())
	w.expectMethod(1, 50, 11)
	waitCount(t, q, 1)
	if m := getOne(t, ach, q, true); string(m.Body) != "ab" {
		t.Fatalf("body %q", m.Body)
	}
}

func publishMethodFrame(ch uint16, exchange, key string) []byte {
	return wframe(wMethod, ch, publishMethod(exchange, key).b)
}

func TestWireInterleavedContent(t *testing.T) {
	t.Parallel()
	_, ach := setup(t)
	q1 := declareQueue(t, ach, nil)
	q2 := declareQueue(t, ach, nil)
	w := wdial(t)
	w.handshake(handshakeOpts{frameMax: 4096})
	w.openChannel(1)
	w.openChannel(2)
	// Two multi-frame messages whose frames alternate between the channels.
	b1 := bytes.Repeat([]byte("1"), 10000)
	b2 := bytes.Repeat([]byte("2"), 9000)
	w.write(publishMethodFrame(1, "", q1))
	w.write(publishMethodFrame(2, "", q2))
	w.write(wframe(wHeader, 1, contentHeader(uint64(len(b1)), 0, nil)))
	w.write(wframe(wHeader, 2, contentHeader(uint64(len(b2)), 0, nil)))
	max := int(w.frameMax) - 8
	for i := 0; i < 3; i++ {
		for _, m := range []struct {
			ch   uint16
			body []byte
		}{{1, b1}, {2, b2}} {
			lo, hi := i*max, (i+1)*max
			if lo >= len(m.body) {
				continue
			}
			if hi > len(m.body) {
				hi = len(m.body)
			}
			w.write(wframe(wBody, m.ch, m.body[lo:hi]))
		}
	}
	// A synchronous method on each channel proves both publishes were processed.
	for _, ch := range []uint16{1, 2} {
		w.send(ch, method(85, 10).octet(0)) // confirm.select after the fact is fine
		w.expectMethod(ch, 85, 11)
	}
	waitCount(t, q1, 1)
	waitCount(t, q2, 1)
	if m := getOne(t, ach, q1, true); !bytes.Equal(m.Body, b1) {
		t.Fatalf("q1 body %d bytes", len(m.Body))
	}
	if m := getOne(t, ach, q2, true); !bytes.Equal(m.Body, b2) {
		t.Fatalf("q2 body %d bytes", len(m.Body))
	}
}

func TestWireClusterIDProperty(t *testing.T) {
	t.Parallel()
	_, ach := setup(t)
	q := declareQueue(t, ach, nil)
	w := wdial(t)
	w.handshake(handshakeOpts{})
	w.openChannel(1)
	// Flags: content-type (bit 15) and cluster-id (bit 2).
	props := (&wbuf{}).shortstr("text/plain").shortstr("cluster-7").b
	w.write(publishMethodFrame(1, "", q))
	w.write(wframe(wHeader, 1, contentHeader(2, 1<<15|1<<2, props)))
	w.write(wframe(wBody, 1, []byte("hi")))
	// basic.get on the same connection returns the raw header.
	w.send(1, method(60, 70).short(0).shortstr(q).octet(1))
	w.expectMethod(1, 60, 71)
	h := w.next()
	if h.typ != wHeader {
		t.Fatalf("expected content header, got frame type %d", h.typ)
	}
	flags := binary.BigEndian.Uint16(h.payload[12:])
	if flags != 1<<15|1<<2 || !bytes.Equal(h.payload[14:], props) {
		t.Fatalf("header flags %#x props %q, want %#x %q", flags, h.payload[14:], 1<<15|1<<2, props)
	}
	if b := w.next(); b.typ != wBody || string(b.payload) != "hi" {
		t.Fatalf("body frame %d %q", b.typ, b.payload)
	}
}

func TestWireEmptyBodyHasNoBodyFrame(t *testing.T) {
	t.Parallel()
	_, ach := setup(t)
	q := declareQueue(t, ach, nil)
	w := wdial(t)
	w.handshake(handshakeOpts{})
	w.openChannel(1)
	w.write(publishMethodFrame(1, "", q))
	w.write(wframe(wHeader, 1, contentHeader(0, 0, nil)))
	w.send(1, method(60, 70).short(0).shortstr(q).octet(1))
	w.expectMethod(1, 60, 71)
	if h := w.next(); h.typ != wHeader {
		t.Fatalf("frame type %d, want header", h.typ)
	}
	// The next frame is the reply to a new request, not an empty body frame.
	w.send(1, method(60, 70).short(0).shortstr(q).octet(1))
	w.expectMethod(1, 60, 72) // get-empty
}

func TestWireTuneErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		frameMax uint32
		code     uint16
		text     string
	}{
		{"frame-max-above-offer", 131072 * 2, 530, "NOT_ALLOWED - frame_max=262144 > 131072 max size"},
		{"frame-max-below-minimum", 1024, 530, "NOT_ALLOWED - frame_max=1024 < 4096 min size"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := wdial(t)
			w.startTune(handshakeOpts{frameMax: tc.frameMax})
			// RabbitMQ 3.10 drops the socket without a connection.close.
			w.expectDropped(tc.code)
		})
	}
}

func TestWireHeartbeatTimeout(t *testing.T) {
	t.Parallel()
	w := wdial(t)
	w.handshake(handshakeOpts{heartbeat: 1})
	w.openChannel(1)
	// Stop mid-frame: half of a method frame, then silence.
	f := wframe(wMethod, 1, method(50, 10).short(0).shortstr("x").octet(0).table().b)
	w.write(f[:5])
	start := time.Now()
	heartbeats := 0
	for {
		fr, err := w.readFrame(15 * time.Second)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("connection not dropped after missed heartbeats")
			}
			break
		}
		if fr.typ == wHeartbeat {
			heartbeats++
		}
	}
	el := time.Since(start)
	t.Logf("dropped %s after the last byte, %d server heartbeats seen", el, heartbeats)
	if el < time.Second || el > 10*time.Second {
		t.Fatalf("dropped after %s; want between 1s and 10s for heartbeat=1", el)
	}
	if heartbeats == 0 {
		t.Fatal("server sent no heartbeats")
	}
}

func TestWireClientHeartbeatsKeepAlive(t *testing.T) {
	t.Parallel()
	w := wdial(t)
	w.handshake(handshakeOpts{heartbeat: 1})
	w.openChannel(1)
	// Only heartbeats for 3.5 s (3.5 heartbeat intervals): the connection must survive.
	end := time.Now().Add(3500 * time.Millisecond)
	heartbeats := 0
	for time.Now().Before(end) {
		w.write(wframe(wHeartbeat, 0, nil))
		f, err := w.readFrame(400 * time.Millisecond)
		if err == nil {
			if f.typ != wHeartbeat || f.channel != 0 || len(f.payload) != 0 {
				t.Fatalf("unexpected frame type %d on channel %d", f.typ, f.channel)
			}
			heartbeats++
			continue
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("connection dropped although the client sent heartbeats: %v", err)
		}
	}
	if heartbeats == 0 {
		t.Fatal("server sent no heartbeats within 3.5 intervals")
	}
	// Still usable.
	w.send(1, method(50, 10).short(0).shortstr("").octet(0x08).table()) // server-named, exclusive... auto-delete bit
	w.expectMethod(1, 50, 11)
}

// expectReturn reads a basic.return with its content and checks the reply code.
func (w *wconn) expectReturn(channel uint16, body string) {
	w.t.Helper()
	f := w.expectMethod(channel, 60, 50)
	if code := binary.BigEndian.Uint16(f.payload[4:]); code != 312 {
		w.t.Fatalf("basic.return code %d, want 312", code)
	}
	if h := w.next(); h.typ != wHeader || h.channel != channel {
		w.t.Fatalf("expected content header after basic.return, got type %d", h.typ)
	}
	if b := w.next(); b.typ != wBody || string(b.payload) != body {
		w.t.Fatalf("expected body %q, got type %d %q", body, b.typ, b.payload)
	}
}

// publishMandatory sends a mandatory publish with a one-frame body.
func (w *wconn) publishMandatory(channel uint16, exchange, key, body string) {
	w.t.Helper()
	w.send(channel, method(60, 40).short(0).shortstr(exchange).shortstr(key).octet(1))
	w.write(wframe(wHeader, channel, contentHeader(uint64(len(body)), 0, nil)))
	w.write(wframe(wBody, channel, []byte(body)))
}

// On the wire, with no client library in between: basic.return precedes tx.commit-ok, and
// basic.return precedes the publisher confirm.
func TestWireReturnOrdering(t *testing.T) {
	t.Parallel()
	t.Run("tx", func(t *testing.T) {
		t.Parallel()
		w := wdial(t)
		w.handshake(handshakeOpts{})
		w.openChannel(1)
		w.send(1, method(90, 10))
		w.expectMethod(1, 90, 11)
		w.publishMandatory(1, "amq.direct", "conformance-nowhere", "r1")
		w.send(1, method(90, 20))
		w.expectReturn(1, "r1")
		w.expectMethod(1, 90, 21)
	})
	t.Run("confirm", func(t *testing.T) {
		t.Parallel()
		w := wdial(t)
		w.handshake(handshakeOpts{})
		w.openChannel(1)
		w.send(1, method(85, 10).octet(0))
		w.expectMethod(1, 85, 11)
		w.publishMandatory(1, "amq.direct", "conformance-nowhere", "r2")
		w.expectReturn(1, "r2")
		f := w.expectMethod(1, 60, 80)
		if tag := binary.BigEndian.Uint64(f.payload[4:]); tag != 1 || f.payload[12] != 0 {
			t.Fatalf("basic.ack tag %d multiple %d, want 1 0", tag, f.payload[12])
		}
	})
}

func TestWireServerGeneratedConsumerTag(t *testing.T) {
	t.Parallel()
	_, ach := setup(t)
	q := declareQueue(t, ach, nil)
	w := wdial(t)
	w.handshake(handshakeOpts{})
	w.openChannel(1)
	w.send(1, method(60, 20).short(0).shortstr(q).shortstr("").octet(0).table())
	f := w.expectMethod(1, 60, 21)
	n := int(f.payload[4])
	tag := string(f.payload[5 : 5+n])
	if !strings.HasPrefix(tag, "amq.ctag-") || len(tag) <= len("amq.ctag-") {
		t.Fatalf("server-generated consumer tag %q, want amq.ctag-*", tag)
	}
}

// After a channel exception the server discards everything on that channel except
// channel.close-ok; then the channel id can be opened again.
func TestWireChannelCloseHandshake(t *testing.T) {
	t.Parallel()
	w := wdial(t)
	w.handshake(handshakeOpts{})
	w.openChannel(1)
	w.openChannel(2)
	missing := "conformance-wire-missing-queue"
	// queue.declare passive (bit 0 of the flags octet).
	w.send(1, method(50, 10).short(0).shortstr(missing).octet(1).table())
	f := w.expectMethod(1, 20, 40)
	ci, _ := decodeClose(f.payload)
	if ci.code != 404 || ci.class != 50 || ci.method != 10 || ci.text != "NOT_FOUND - no queue '"+missing+"' in vhost '/'" {
		t.Fatalf("channel.close %d %q %d.%d", ci.code, ci.text, ci.class, ci.method)
	}
	// Ignored: the channel is closing.
	w.send(1, method(50, 10).short(0).shortstr(missing).octet(1).table())
	w.write(publishMethodFrame(1, "", missing))
	w.write(wframe(wHeader, 1, contentHeader(1, 0, nil)))
	w.write(wframe(wBody, 1, []byte("x")))
	// Channel 2 is unaffected meanwhile.
	w.send(2, method(50, 10).short(0).shortstr("").octet(0x08).table())
	w.expectMethod(2, 50, 11)
	w.send(1, method(20, 41))
	w.openChannel(1)
	w.send(1, method(50, 10).short(0).shortstr("").octet(0x08).table())
	w.expectMethod(1, 50, 11)
	// A client-initiated channel.close gets close-ok.
	w.send(2, method(20, 40).short(200).shortstr("bye").short(0).short(0))
	w.expectMethod(2, 20, 41)
}

// Content framing is checked even on a channel that is closing: RabbitMQ assembles frames before it
// looks at the channel state, so a basic.publish without its content header is a connection error.
func TestWireClosingChannelStillFramesContent(t *testing.T) {
	t.Parallel()
	w := wdial(t)
	w.handshake(handshakeOpts{})
	w.openChannel(1)
	w.send(1, method(50, 10).short(0).shortstr("conformance-wire-missing-queue").octet(1).table())
	w.expectMethod(1, 20, 40)
	w.write(publishMethodFrame(1, "", "x"))
	w.send(1, method(20, 41))
	w.expectConnectionClose(505, 60, 40, "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead")
}

// connection.update-secret is acknowledged with update-secret-ok. RabbitMQ 3.10 with its internal
// user database acknowledges any secret (the new secret is only checked by token backends), and
// the connection keeps working.
func TestWireUpdateSecret(t *testing.T) {
	t.Parallel()
	w := wdial(t)
	w.handshake(handshakeOpts{})
	w.send(0, method(10, 70).longstr("guest").shortstr("rotation"))
	w.expectMethod(0, 10, 71)
	w.openChannel(1)
}

// basic.recover-async (deprecated, no reply) requeues the channel's unacked messages like
// basic.recover; requeue=false is 540 NOT_IMPLEMENTED, a connection exception, as in RabbitMQ.
func TestWireRecoverAsync(t *testing.T) {
	t.Parallel()
	ac, ach := setup(t)
	q := declareQueue(t, ach, nil)
	// Confirmed: the get comes on another connection, and no broker orders one connection's
	// publish before another's get (a quorum queue's publish may still be committing).
	publishConfirmed(t, ac, "", q, "m")
	w := wdial(t)
	w.handshake(handshakeOpts{})
	w.openChannel(1)
	get := func(wantRedelivered bool) {
		t.Helper()
		w.send(1, method(60, 70).short(0).shortstr(q).octet(0)) // basic.get, no-ack=false
		f := w.expectMethod(1, 60, 71)
		// get-ok: delivery-tag(8) redelivered(1) ...
		if redelivered := f.payload[12] != 0; redelivered != wantRedelivered {
			t.Fatalf("redelivered=%v, want %v", redelivered, wantRedelivered)
		}
		w.next() // content header
		w.next() // body
	}
	get(false)
	w.send(1, method(60, 100).octet(1)) // recover-async requeue=true
	get(true)
	w.send(1, method(60, 100).octet(0))
	w.expectConnectionClose(540, 60, 100, "NOT_IMPLEMENTED")
	// The unacked message went back to the queue with the connection.
	waitCount(t, q, 1)
}

// confirm.select with nowait gets no select-ok, and confirms still arrive.
func TestWireConfirmSelectNoWait(t *testing.T) {
	t.Parallel()
	_, ach := setup(t)
	q := declareQueue(t, ach, nil)
	w := wdial(t)
	w.handshake(handshakeOpts{})
	w.openChannel(1)
	w.send(1, method(85, 10).octet(1))
	w.write(publishMethodFrame(1, "", q))
	w.write(wframe(wHeader, 1, contentHeader(1, 0, nil)))
	w.write(wframe(wBody, 1, []byte("x")))
	f := w.expectMethod(1, 60, 80) // basic.ack, not select-ok
	if tag := binary.BigEndian.Uint64(f.payload[4:]); tag != 1 {
		t.Fatalf("confirm delivery-tag %d, want 1", tag)
	}
	waitCount(t, q, 1)
}
