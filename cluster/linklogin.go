package cluster

import (
	"encoding/binary"
	"io"
	"net"

	"github.com/warrenmq/warren/amqp"
)

// loginConn answers the link login's connection.secure for amqp091-go, which does not
// implement that step (after start-ok it expects connection.tune). Until the login is over it
// reads the server's frames one at a time: it answers connection.secure itself with
// secure-ok and hands every other frame to amqp091-go unchanged. From the first frame that is
// neither connection.start nor connection.secure on, Read passes straight through.
type loginConn struct {
	net.Conn
	answer  func(challenge string) string
	pending []byte // read and not yet handed to the client
	past    bool   // the login is over
}

// loginFrameMax bounds a frame read before the login is over: connection.start and
// connection.secure are small, and the server's frame_max is not negotiated yet.
const loginFrameMax = 128 << 10

// Read implements net.Conn.
func (c *loginConn) Read(p []byte) (int, error) {
	for !c.past && len(c.pending) == 0 {
		if err := c.readFrame(); err != nil {
			return 0, err
		}
	}
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// readFrame reads one frame of the handshake; a connection.secure is answered, anything else
// is left in pending. Bytes that are not a method frame (a server refusing the protocol
// header answers with its own) end the login, for the client to see as they are.
func (c *loginConn) readFrame() error {
	var hdr [7]byte
	if _, err := io.ReadFull(c.Conn, hdr[:]); err != nil {
		return err
	}
	size := binary.BigEndian.Uint32(hdr[3:])
	if hdr[0] != amqp.FrameMethod || size < 4 || size > loginFrameMax {
		c.past, c.pending = true, hdr[:]
		return nil
	}
	frame := make([]byte, len(hdr)+int(size)+1)
	copy(frame, hdr[:])
	if _, err := io.ReadFull(c.Conn, frame[len(hdr):]); err != nil {
		return err
	}
	payload := frame[len(hdr) : len(frame)-1]
	class, method := binary.BigEndian.Uint16(payload), binary.BigEndian.Uint16(payload[2:])
	switch {
	case class == 10 && method == 20: // connection.secure
		var m amqp.ConnectionSecure
		if err := m.Decode(payload); err != nil {
			return err
		}
		// The client's writer is idle here (it waits for connection.tune), and the
		// coalescing conn underneath serialises writes anyway.
		_, err := c.Conn.Write(amqp.AppendMethodFrame(nil, 0, &amqp.ConnectionSecureOk{Response: c.answer(m.Challenge)}))
		return err
	case class == 10 && method == 10: // connection.start: the login is still to come
	default:
		c.past = true
	}
	c.pending = frame
	return nil
}
