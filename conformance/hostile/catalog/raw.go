package catalog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/warrenmq/warren/amqp"
)

// rawConn is a hand-driven AMQP connection: the hostile cases need to send what no client
// library would (lying sizes, broken frames, pipelined requests nobody reads the answers to).
// Frames are encoded and decoded with the repo's amqp package.
type rawConn struct {
	wmu      sync.Mutex // writes come from the case and from the heartbeat goroutine
	c        net.Conn
	fr       *amqp.FrameReader
	frameMax uint32
	chMax    uint16
	hb       uint16
	product  string
}

// hsOpts tweaks the hand-made handshake.
type hsOpts struct {
	user, pass string // default: the Env's
	response   string // SASL PLAIN response verbatim, overriding user/pass
	vhost      string // default: the Env's
	frameMax   uint32 // 0: the server's offer
	heartbeat  uint16 // used when setHeartbeat
	setHB      bool
	// authFailureClose advertises authentication_failure_close, so a refused login is answered
	// with connection.close 403 instead of a bare drop.
	authFailureClose bool
}

// dialRaw opens a TCP connection to the broker; every read and write is bounded by ctx's deadline.
func dialRaw(ctx context.Context, e *Env) (*rawConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", e.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", e.Addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return &rawConn{c: c, fr: amqp.NewFrameReader(c, 256<<10)}, nil
}

func (r *rawConn) Close() error { return r.c.Close() }

func (r *rawConn) write(b []byte) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if _, err := r.c.Write(b); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

func (r *rawConn) sendFrame(typ byte, ch uint16, payload []byte) error {
	return r.write(amqp.AppendFrame(nil, typ, ch, payload))
}

func (r *rawConn) send(ch uint16, m amqp.Method) error {
	return r.write(amqp.AppendMethodFrame(nil, ch, m))
}

// frame is a frame read from the broker, with its payload copied.
type frame struct {
	typ     byte
	channel uint16
	payload []byte
	method  amqp.Method // decoded when typ is a method frame
}

func (f frame) String() string {
	if f.method != nil {
		return fmt.Sprintf("%s on channel %d", f.method.Name(), f.channel)
	}
	return fmt.Sprintf("frame type %d on channel %d (%d bytes)", f.typ, f.channel, len(f.payload))
}

// next returns the next frame other than a heartbeat.
func (r *rawConn) next() (frame, error) {
	f, err := r.fr.ReadNonHeartbeat()
	if err != nil {
		return frame{}, err
	}
	out := frame{typ: f.Type, channel: f.Channel, payload: append([]byte(nil), f.Payload...)}
	if f.Type == amqp.FrameMethod {
		m, err := amqp.DecodeMethod(out.payload)
		if err != nil {
			return frame{}, fmt.Errorf("decode method from broker: %w", err)
		}
		out.method = m
	}
	return out, nil
}

// expect reads the next frame and checks it is the method named want on channel ch. A close
// instead is reported with its reply code, so a failure message says what the broker did.
func (r *rawConn) expect(ch uint16, want string) (amqp.Method, error) {
	f, err := r.next()
	if err != nil {
		return nil, fmt.Errorf("waiting for %s: %w", want, err)
	}
	if f.method == nil || f.method.Name() != want || f.channel != ch {
		return nil, &unexpectedError{got: f, want: fmt.Sprintf("%s on channel %d", want, ch)}
	}
	return f.method, nil
}

// unexpectedError is a frame other than the one a case waited for.
type unexpectedError struct {
	got  frame
	want string
}

func (e *unexpectedError) Error() string {
	return fmt.Sprintf("got %s%s, want %s", e.got, closeText(e.got.method), e.want)
}

// closeCode returns the reply code of the connection.close or channel.close err reports, or 0.
func closeCode(err error) uint16 {
	var ue *unexpectedError
	if !errors.As(err, &ue) {
		return 0
	}
	switch c := ue.got.method.(type) {
	case *amqp.ConnectionClose:
		return c.ReplyCode
	case *amqp.ChannelClose:
		return c.ReplyCode
	}
	return 0
}

// closedByPeer reports whether err is the socket being closed or reset under a read (not a
// timeout, not a frame).
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

func closeText(m amqp.Method) string {
	switch c := m.(type) {
	case *amqp.ConnectionClose:
		return fmt.Sprintf(" (%d %q)", c.ReplyCode, c.ReplyText)
	case *amqp.ChannelClose:
		return fmt.Sprintf(" (%d %q)", c.ReplyCode, c.ReplyText)
	}
	return ""
}

// startTune sends the protocol header, answers connection.start with PLAIN and tune with tune-ok.
func (r *rawConn) startTune(e *Env, o hsOpts) error {
	if err := r.write(amqp.ProtocolHeader); err != nil {
		return err
	}
	m, err := r.expect(0, "connection.start")
	if err != nil {
		return err
	}
	if p, ok := m.(*amqp.ConnectionStart).ServerProperties["product"].(string); ok {
		r.product = p
	}
	user, pass := o.user, o.pass
	if user == "" {
		user, pass = e.User, e.Pass
	}
	resp := o.response
	if resp == "" {
		resp = "\x00" + user + "\x00" + pass
	}
	// connection.blocked is sent only to clients that advertise it.
	caps := amqp.Table{"connection.blocked": true}
	if o.authFailureClose {
		caps["authentication_failure_close"] = true
	}
	props := amqp.Table{"product": "warren-hostile", "capabilities": caps}
	if err := r.send(0, &amqp.ConnectionStartOk{ClientProperties: props, Mechanism: "PLAIN", Response: resp, Locale: "en_US"}); err != nil {
		return err
	}
	m, err = r.expect(0, "connection.tune")
	if err != nil {
		return err
	}
	t := m.(*amqp.ConnectionTune)
	r.chMax, r.frameMax, r.hb = t.ChannelMax, t.FrameMax, t.Heartbeat
	if o.frameMax != 0 {
		r.frameMax = o.frameMax
	}
	if o.setHB {
		r.hb = o.heartbeat
	}
	return r.send(0, &amqp.ConnectionTuneOk{ChannelMax: r.chMax, FrameMax: r.frameMax, Heartbeat: r.hb})
}

// handshake runs the whole handshake up to connection.open-ok.
func (r *rawConn) handshake(e *Env, o hsOpts) error {
	if err := r.startTune(e, o); err != nil {
		return err
	}
	vhost := o.vhost
	if vhost == "" {
		vhost = e.VHost
	}
	if err := r.send(0, &amqp.ConnectionOpen{VirtualHost: vhost}); err != nil {
		return err
	}
	_, err := r.expect(0, "connection.open-ok")
	return err
}

// openChannel opens channel ch and waits for open-ok.
func (r *rawConn) openChannel(ch uint16) error {
	if err := r.send(ch, &amqp.ChannelOpen{}); err != nil {
		return err
	}
	_, err := r.expect(ch, "channel.open-ok")
	return err
}

// rawSession dials, shakes hands and opens channel 1: the start of most raw cases.
func rawSession(ctx context.Context, e *Env, o hsOpts) (*rawConn, error) {
	r, err := dialRaw(ctx, e)
	if err != nil {
		return nil, err
	}
	if err := r.handshake(e, o); err != nil {
		r.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if err := r.openChannel(1); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// publish sends basic.publish, a content header with the given properties and the body in
// frames of at most frame_max.
func (r *rawConn) publish(ch uint16, exchange, key string, p *amqp.Properties, body []byte) error {
	if p == nil {
		p = &amqp.Properties{}
	}
	b := amqp.AppendMethodFrame(nil, ch, &amqp.BasicPublish{Exchange: exchange, RoutingKey: key})
	h := amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(body)), p)
	b = amqp.AppendContent(b, ch, h, body, r.frameMax)
	return r.write(b)
}

// contentHeader is a basic content header with raw property flags and bytes, so a case can
// declare any size and any property list, true or not.
func contentHeader(bodySize uint64, flags uint16, props []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, amqp.ClassBasic)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint64(b, bodySize)
	b = binary.BigEndian.AppendUint16(b, flags)
	return append(b, props...)
}

// expectConnClose waits for connection.close with code (and a reply text starting with
// textPrefix, when given), answers close-ok and waits for the socket to close.
func (r *rawConn) expectConnClose(code uint16, textPrefix string) error {
	f, err := r.next()
	if err != nil {
		return fmt.Errorf("waiting for connection.close %d: %w", code, err)
	}
	c, ok := f.method.(*amqp.ConnectionClose)
	if !ok || f.channel != 0 {
		return fmt.Errorf("got %s%s, want connection.close %d", f, closeText(f.method), code)
	}
	if c.ReplyCode != code || !strings.HasPrefix(c.ReplyText, textPrefix) {
		return fmt.Errorf("connection.close %d %q, want %d %q...", c.ReplyCode, c.ReplyText, code, textPrefix)
	}
	// The broker may already have given up on the socket: a failed close-ok is fine.
	r.send(0, &amqp.ConnectionCloseOk{})
	return r.expectEOF()
}

// expectChanClose waits for channel.close with code on ch (skipping other frames on other
// channels and deliveries) and answers close-ok.
func (r *rawConn) expectChanClose(ch, code uint16, textPrefix string) error {
	for {
		f, err := r.next()
		if err != nil {
			return fmt.Errorf("waiting for channel.close %d: %w", code, err)
		}
		if f.method == nil {
			continue // content of a delivery
		}
		switch c := f.method.(type) {
		case *amqp.ChannelClose:
			if f.channel != ch {
				return fmt.Errorf("channel.close %d %q on channel %d, want it on %d", c.ReplyCode, c.ReplyText, f.channel, ch)
			}
			if c.ReplyCode != code || !strings.HasPrefix(c.ReplyText, textPrefix) {
				return fmt.Errorf("channel.close %d %q, want %d %q...", c.ReplyCode, c.ReplyText, code, textPrefix)
			}
			return r.send(ch, &amqp.ChannelCloseOk{})
		case *amqp.ConnectionClose:
			return fmt.Errorf("connection.close %d %q, want channel.close %d", c.ReplyCode, c.ReplyText, code)
		}
	}
}

// expectEOF waits for the broker to close the socket; frames before that are an error.
func (r *rawConn) expectEOF() error {
	for {
		f, err := r.fr.ReadFrame()
		if err == nil {
			if f.Type == amqp.FrameHeartbeat {
				continue
			}
			return fmt.Errorf("want the socket closed, got frame type %d on channel %d", f.Type, f.Channel)
		}
		return eofOrTimeout(err)
	}
}

// expectDropped asserts that the broker ends the connection. A connection.close with code
// allowed (when not 0) may come first: RabbitMQ drops some connections without one.
func (r *rawConn) expectDropped(allowed uint16) error {
	f, err := r.next()
	if err != nil {
		return eofOrTimeout(err)
	}
	if c, ok := f.method.(*amqp.ConnectionClose); ok && allowed != 0 {
		if c.ReplyCode != allowed {
			return fmt.Errorf("connection.close %d %q, want %d or a plain drop", c.ReplyCode, c.ReplyText, allowed)
		}
		r.send(0, &amqp.ConnectionCloseOk{})
		return r.expectEOF()
	}
	return fmt.Errorf("want the connection dropped, got %s%s", f, closeText(f.method))
}

// eofOrTimeout turns a read error into nil when the broker closed or reset the socket, and into
// an error when the deadline passed first or the bytes were not a frame.
func eofOrTimeout(err error) error {
	if closedByPeer(err) {
		return nil
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("broker did not close the connection")
	}
	return fmt.Errorf("reading from the broker: %w", err)
}

// roundTrip proves the broker has processed everything sent on ch so far: channel frames are
// handled in order, so once a synchronous method's reply arrives the earlier frames are done.
// It uses basic.qos, which changes nothing when prefetch_count is 0.
func (r *rawConn) roundTrip(ch uint16) error {
	if err := r.send(ch, &amqp.BasicQos{}); err != nil {
		return err
	}
	for {
		f, err := r.next()
		if err != nil {
			return fmt.Errorf("waiting for basic.qos-ok: %w", err)
		}
		if f.method == nil {
			continue
		}
		if f.method.Name() == "basic.qos-ok" && f.channel == ch {
			return nil
		}
		switch f.method.(type) {
		case *amqp.ChannelClose, *amqp.ConnectionClose:
			return fmt.Errorf("got %s%s, want basic.qos-ok", f, closeText(f.method))
		}
	}
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// heartbeats sends a heartbeat frame every interval until the returned stop function is called,
// so a case that waits (for an alarm, say) is not dropped for being silent.
func (r *rawConn) heartbeats(interval time.Duration) (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if r.write(amqp.AppendHeartbeat(nil)) != nil {
					return
				}
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); <-exited }) }
}
