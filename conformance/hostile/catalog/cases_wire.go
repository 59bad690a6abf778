package catalog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/warrenmq/warren/amqp"
)

// Cases about the protocol header, the handshake and framing.

// headerCase sends bytes instead of the protocol header; RabbitMQ answers with the 0-9-1 header
// it speaks and closes the socket.
func headerCase(name, sends string, hdr []byte) Case {
	return Case{
		Name: name, Sends: sends,
		Expect: "the broker writes AMQP\\x00\\x00\\x09\\x01 and closes the socket",
		Run: func(t *T) error {
			r, err := t.raw()
			if err != nil {
				return err
			}
			if err := r.write(hdr); err != nil {
				return err
			}
			got, err := io.ReadAll(r.c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return fmt.Errorf("socket not closed; got %q", got)
			}
			if !bytes.Equal(got, amqp.ProtocolHeader) {
				return fmt.Errorf("broker replied %q, want %q then close", got, amqp.ProtocolHeader)
			}
			return nil
		},
	}
}

// sessionCase opens a raw session (handshake done, channel 1 open) and hands it to f.
func sessionCase(c Case, f func(t *T, r *rawConn) error) Case {
	c.Run = func(t *T) error {
		r, err := t.session(hsOpts{})
		if err != nil {
			return err
		}
		return f(t, r)
	}
	return c
}

// connCloseCase: after the handshake, send what f sends; the broker must close the connection
// with code.
func connCloseCase(name, sends string, code uint16, text string, f func(r *rawConn) error) Case {
	return sessionCase(Case{Name: name, Sends: sends, Expect: fmt.Sprintf("connection.close %d %s", code, text)},
		func(t *T, r *rawConn) error {
			if err := f(r); err != nil {
				return err
			}
			return r.expectConnClose(code, text)
		})
}

// dropCase: after the handshake, send what f sends; the broker must end the connection, with a
// connection.close allowed (when not 0) or without one (RabbitMQ drops some malformed methods).
func dropCase(name, sends string, allowed uint16, f func(r *rawConn) error) Case {
	expect := "connection dropped"
	if allowed != 0 {
		expect = fmt.Sprintf("connection dropped (RabbitMQ sends no close; %d allowed)", allowed)
	}
	return sessionCase(Case{Name: name, Sends: sends, Expect: expect},
		func(t *T, r *rawConn) error {
			if err := f(r); err != nil {
				return err
			}
			return r.expectDropped(allowed)
		})
}

// deepTable encodes a field table nesting depth tables under key "d" (by hand: the amqp
// package refuses to encode what its decoder refuses).
func deepTable(depth int) []byte {
	inner := []byte{0, 0, 0, 0}
	for i := 0; i < depth; i++ {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(inner)+3))
		b = append(b, 1, 'd', 'F')
		inner = append(b, inner...)
	}
	return inner
}

// queueDeclareRaw is a queue.declare payload with a raw arguments table.
func queueDeclareRaw(name string, flags byte, table []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, amqp.ClassQueue)
	b = binary.BigEndian.AppendUint16(b, 10)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = append(b, byte(len(name)))
	b = append(b, name...)
	b = append(b, flags)
	return append(b, table...)
}

func wireCases() []Case {
	return []Case{
		headerCase("header-http", "an HTTP request instead of the protocol header", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")),
		headerCase("header-amqp-1-0", "the AMQP 1.0 protocol header", []byte("AMQP\x00\x01\x00\x00")),
		headerCase("header-amqp-0-10", "the AMQP 0-10 protocol header", []byte("AMQP\x01\x01\x00\x0a")),
		{
			Name: "header-slow-dribble", Sends: "the protocol header and start-ok one byte every 100 ms (a slow sender)",
			Expect: "the handshake completes normally",
			Run: func(t *T) error {
				r, err := t.raw()
				if err != nil {
					return err
				}
				for _, b := range amqp.ProtocolHeader {
					if err := r.write([]byte{b}); err != nil {
						return err
					}
					if err := sleepCtx(t.Ctx, 100*time.Millisecond); err != nil {
						return err
					}
				}
				if _, err := r.expect(0, "connection.start"); err != nil {
					return err
				}
				so := amqp.AppendMethodFrame(nil, 0, &amqp.ConnectionStartOk{ClientProperties: amqp.Table{}, Mechanism: "PLAIN",
					Response: "\x00" + t.Env.User + "\x00" + t.Env.Pass, Locale: "en_US"})
				for i := 0; i < len(so); i += len(so)/8 + 1 {
					if err := r.write(so[i:min(len(so), i+len(so)/8+1)]); err != nil {
						return err
					}
					if err := sleepCtx(t.Ctx, 100*time.Millisecond); err != nil {
						return err
					}
				}
				_, err = r.expect(0, "connection.tune")
				return err
			},
		},
		{
			Name: "login-wrong-password", Sends: "PLAIN with a wrong password, advertising authentication_failure_close",
			Expect: "connection.close 403 ACCESS_REFUSED",
			Run: func(t *T) error {
				r, err := t.raw()
				if err != nil {
					return err
				}
				if err := r.startTune(t.Env, hsOpts{pass: "not-" + t.Env.Pass, user: t.Env.User, authFailureClose: true}); err == nil {
					return errors.New("login with a wrong password reached connection.tune")
				} else if closeCode(err) != 403 {
					return err
				}
				return nil
			},
		},
		{
			Name: "login-plain-authzid", Finding: 8,
			Sends:  "PLAIN with an authorization identity: \"admin\\0guest\\0guest\"",
			Expect: "login refused (RabbitMQ's PLAIN takes no authorization identity)",
			Run: func(t *T) error {
				return loginRefused(t, "someone-else\x00"+t.Env.User+"\x00"+t.Env.Pass)
			},
		},
		{
			Name: "login-plain-authzid-self", Finding: 8,
			Sends:  "PLAIN with the user itself as authorization identity: \"guest\\0guest\\0guest\"",
			Expect: "login refused (RabbitMQ's PLAIN takes no authorization identity)",
			Run: func(t *T) error {
				return loginRefused(t, t.Env.User+"\x00"+t.Env.User+"\x00"+t.Env.Pass)
			},
		},
		{
			Name: "login-plain-no-separators", Sends: "a PLAIN response without NUL separators",
			Expect: "login refused",
			Run: func(t *T) error {
				return loginRefused(t, t.Env.User+t.Env.Pass)
			},
		},
		{
			Name: "login-unknown-mechanism", Sends: "start-ok with mechanism CRAM-MD5 (not offered)",
			Expect: "connection dropped (RabbitMQ sends no close; 540 allowed)",
			Run: func(t *T) error {
				r, err := t.raw()
				if err != nil {
					return err
				}
				if err := r.write(amqp.ProtocolHeader); err != nil {
					return err
				}
				if _, err := r.expect(0, "connection.start"); err != nil {
					return err
				}
				if err := r.send(0, &amqp.ConnectionStartOk{ClientProperties: amqp.Table{}, Mechanism: "CRAM-MD5", Response: "x", Locale: "en_US"}); err != nil {
					return err
				}
				return r.expectDropped(540)
			},
		},
		{
			Name: "tune-frame-max-above-offer", Sends: "tune-ok asking for frame_max 1 GiB",
			Expect: "connection dropped (530 allowed)",
			Run: func(t *T) error {
				r, err := t.raw()
				if err != nil {
					return err
				}
				if err := r.startTune(t.Env, hsOpts{frameMax: 1 << 30}); err != nil {
					return err
				}
				return r.expectDropped(530)
			},
		},
		{
			Name: "open-unknown-vhost", Sends: "connection.open of a vhost that does not exist",
			Expect: "connection.close 530 NOT_ALLOWED",
			Run: func(t *T) error {
				r, err := t.raw()
				if err != nil {
					return err
				}
				if err := r.startTune(t.Env, hsOpts{}); err != nil {
					return err
				}
				if err := r.send(0, &amqp.ConnectionOpen{VirtualHost: t.Env.name("no-such-vhost")}); err != nil {
					return err
				}
				return r.expectConnClose(530, "NOT_ALLOWED")
			},
		},
		{
			Name: "frame-size-lie-in-handshake", Finding: 1,
			Sends:  "after connection.start, a frame header declaring a 2 GiB method frame, then 1 KiB, then silence",
			Expect: "no allocation of the declared size: the connection is closed or dropped, memory flat",
			Run: func(t *T) error {
				r, err := t.raw()
				if err != nil {
					return err
				}
				if err := r.write(amqp.ProtocolHeader); err != nil {
					return err
				}
				if _, err := r.expect(0, "connection.start"); err != nil {
					return err
				}
				hdr := []byte{amqp.FrameMethod, 0, 0, 0x7f, 0xff, 0xff, 0xf0}
				if err := r.write(append(hdr, make([]byte, 1024)...)); err != nil {
					return nil // the broker may already have dropped us
				}
				return r.expectDropped(501)
			},
		},
		connCloseCase("frame-size-lie-4gib", "a method frame header declaring 4 GiB - 1 bytes, then 16 bytes", 501, "FRAME_ERROR",
			func(r *rawConn) error {
				return r.write(append([]byte{amqp.FrameMethod, 0, 1, 0xff, 0xff, 0xff, 0xff}, make([]byte, 16)...))
			}),
		sessionCase(Case{Name: "frame-size-lie-within-max", Finding: 1,
			Sends:  "a method frame header declaring 131000 bytes (under frame_max), 10 bytes of it, then silence for 1 s",
			Expect: "the broker waits for the rest without replying; memory flat"},
			func(t *T, r *rawConn) error {
				if err := r.write(append([]byte{amqp.FrameMethod, 0, 1, 0, 1, 0xff, 0xb8}, make([]byte, 10)...)); err != nil {
					return err
				}
				r.c.SetReadDeadline(time.Now().Add(time.Second))
				if f, err := r.next(); err == nil {
					return fmt.Errorf("broker answered %s%s to a frame it has not received", f, closeText(f.method))
				} else if ne := (net.Error)(nil); !errors.As(err, &ne) || !ne.Timeout() {
					return fmt.Errorf("connection ended while the frame was incomplete: %w", err)
				}
				return nil
			}),
		connCloseCase("frame-bad-end-octet", "a queue.declare frame whose end octet is 0x00", 501, "FRAME_ERROR",
			func(r *rawConn) error {
				f := amqp.AppendMethodFrame(nil, 1, &amqp.QueueDeclare{Queue: "x", Passive: true})
				f[len(f)-1] = 0
				return r.write(f)
			}),
		connCloseCase("frame-unknown-type", "a frame of type 9", 501, "FRAME_ERROR",
			func(r *rawConn) error { return r.sendFrame(9, 1, []byte("x")) }),
		connCloseCase("frame-over-frame-max", "a body frame one byte over the negotiated frame_max", 501, "FRAME_ERROR",
			func(r *rawConn) error {
				if err := r.send(1, &amqp.BasicPublish{RoutingKey: "nowhere"}); err != nil {
					return err
				}
				big := make([]byte, r.frameMax+1)
				if err := r.sendFrame(amqp.FrameHeader, 1, contentHeader(uint64(len(big)), 0, nil)); err != nil {
					return err
				}
				r.sendFrame(amqp.FrameBody, 1, big) // the broker may stop reading at the frame header
				return nil
			}),
		connCloseCase("heartbeat-with-payload", "a heartbeat frame carrying 4 bytes", 501, "FRAME_ERROR",
			func(r *rawConn) error { return r.sendFrame(amqp.FrameHeartbeat, 0, []byte("boom")) }),
		connCloseCase("heartbeat-on-channel", "a heartbeat frame on channel 1", 505, "UNEXPECTED_FRAME",
			func(r *rawConn) error { return r.sendFrame(amqp.FrameHeartbeat, 1, nil) }),
		connCloseCase("method-truncated", "queue.declare cut after its reserved short", 501, "FRAME_ERROR",
			func(r *rawConn) error { return r.sendFrame(amqp.FrameMethod, 1, []byte{0, 50, 0, 10, 0, 0}) }),
		connCloseCase("shortstr-past-end", "queue.declare whose queue name claims 255 bytes and has 3", 501, "FRAME_ERROR",
			func(r *rawConn) error {
				return r.sendFrame(amqp.FrameMethod, 1, []byte{0, 50, 0, 10, 0, 0, 255, 'a', 'b', 'c'})
			}),
		connCloseCase("table-length-lie", "queue.declare whose arguments table claims 2 GiB and holds 6 bytes", 501, "FRAME_ERROR",
			func(r *rawConn) error {
				return r.sendFrame(amqp.FrameMethod, 1, queueDeclareRaw("", 0, []byte{0x7f, 0xff, 0xff, 0xff, 1, 'a', 't', 1, 0, 0}))
			}),
		dropCase("longstr-length-lie", "queue.declare with an argument whose long string claims 1 GiB", 501,
			func(r *rawConn) error {
				entry := []byte{3, 'x', '-', 'a', 'S', 0x40, 0, 0, 0, 'h', 'i'}
				tbl := append(binary.BigEndian.AppendUint32(nil, uint32(len(entry))), entry...)
				return r.sendFrame(amqp.FrameMethod, 1, queueDeclareRaw("", 0, tbl))
			}),
		dropCase("array-length-lie", "queue.declare with an argument whose field array claims 1 GiB", 501,
			func(r *rawConn) error {
				entry := []byte{3, 'x', '-', 'a', 'A', 0x40, 0, 0, 0, 't', 1}
				tbl := append(binary.BigEndian.AppendUint32(nil, uint32(len(entry))), entry...)
				return r.sendFrame(amqp.FrameMethod, 1, queueDeclareRaw("", 0, tbl))
			}),
		dropCase("table-unknown-field-type", "queue.declare with an argument of field type 'Z'", 501,
			func(r *rawConn) error {
				entry := []byte{3, 'x', '-', 'a', 'Z', 1, 2, 3, 4}
				tbl := append(binary.BigEndian.AppendUint32(nil, uint32(len(entry))), entry...)
				return r.sendFrame(amqp.FrameMethod, 1, queueDeclareRaw("", 0, tbl))
			}),
		sessionCase(Case{Name: "table-deep-nesting", Sends: "an exclusive queue.declare whose arguments nest tables 5000 deep (within frame_max)",
			Expect: "the broker stays up and answers (RabbitMQ: declare-ok)"},
			func(t *T, r *rawConn) error {
				name := t.Env.name("deep")
				t.DeleteQueueLater(name)
				if err := r.sendFrame(amqp.FrameMethod, 1, queueDeclareRaw(name, 1<<2, deepTable(5000))); err != nil {
					return err
				}
				_, err := r.expect(1, "queue.declare-ok")
				return err
			}),
		connCloseCase("channel-not-open", "queue.declare on channel 7, never opened", 504, "CHANNEL_ERROR",
			func(r *rawConn) error { return r.send(7, &amqp.QueueDeclare{Queue: "x", Passive: true}) }),
		connCloseCase("channel-method-on-channel-0", "queue.declare on channel 0", 504, "CHANNEL_ERROR",
			func(r *rawConn) error { return r.send(0, &amqp.QueueDeclare{Queue: "x", Passive: true}) }),
		sessionCase(Case{Name: "method-unknown", Sends: "method 60.999 (no such basic method)",
			Expect: "connection dropped (RabbitMQ sends no close; 540 allowed)"},
			func(t *T, r *rawConn) error {
				if err := r.sendFrame(amqp.FrameMethod, 1, []byte{0, 60, 0x03, 0xe7}); err != nil {
					return err
				}
				return r.expectDropped(540)
			}),
		connCloseCase("body-without-header", "a body frame with no publish before it", 505, "UNEXPECTED_FRAME",
			func(r *rawConn) error { return r.sendFrame(amqp.FrameBody, 1, []byte("abc")) }),
		connCloseCase("header-without-publish", "a content header with no publish before it", 505, "UNEXPECTED_FRAME",
			func(r *rawConn) error { return r.sendFrame(amqp.FrameHeader, 1, contentHeader(3, 0, nil)) }),
		connCloseCase("body-after-empty-content", "publish, a content header declaring 0 bytes, then a body frame", 505, "UNEXPECTED_FRAME",
			func(r *rawConn) error {
				if err := r.send(1, &amqp.BasicPublish{RoutingKey: "nowhere"}); err != nil {
					return err
				}
				if err := r.sendFrame(amqp.FrameHeader, 1, contentHeader(0, 0, nil)); err != nil {
					return err
				}
				return r.sendFrame(amqp.FrameBody, 1, []byte("x"))
			}),
		{Name: "heartbeat-silence", Sends: "heartbeat 1 s negotiated, then half a method frame and silence",
			Expect: "connection dropped within a few seconds (RabbitMQ sends no close)", Timeout: 12 * time.Second,
			Run: func(t *T) error {
				r, err := t.raw()
				if err != nil {
					return err
				}
				if err := r.handshake(t.Env, hsOpts{heartbeat: 1, setHB: true}); err != nil {
					return err
				}
				f := amqp.AppendMethodFrame(nil, 0, &amqp.ConnectionClose{ReplyCode: 200})
				if err := r.write(f[:5]); err != nil {
					return err
				}
				start := time.Now()
				r.c.SetReadDeadline(time.Now().Add(8 * time.Second))
				for {
					if _, err := r.fr.ReadFrame(); err != nil {
						if err := eofOrTimeout(err); err != nil {
							return fmt.Errorf("after %s: %w", time.Since(start).Round(time.Millisecond), err)
						}
						t.Logf("dropped after %s", time.Since(start).Round(time.Millisecond))
						return nil
					}
				}
			}},
	}
}

// loginRefused sends a PLAIN response and expects the login to be refused: connection.close 403
// (authentication_failure_close is advertised) or a dropped connection.
func loginRefused(t *T, response string) error {
	r, err := t.raw()
	if err != nil {
		return err
	}
	err = r.startTune(t.Env, hsOpts{response: response, authFailureClose: true})
	switch code := closeCode(err); {
	case err == nil:
		return errors.New("login accepted: the broker sent connection.tune")
	case code == 403 || code == 530:
		t.Logf("refused: %v", err)
		return nil
	case closedByPeer(err):
		t.Logf("refused by dropping the connection: %v", err)
		return nil
	}
	return err
}
