package amqp

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// FrameOverhead is the bytes a frame adds around its payload: the 7-byte
// header (type, channel, size) and the frame-end octet. frame_max counts
// them.
const FrameOverhead = 8

// ProtocolHeader is what a client sends first on a 0-9-1 connection.
var ProtocolHeader = []byte("AMQP\x00\x00\x09\x01")

// Frame is one frame as read from the wire.
type Frame struct {
	Type    byte
	Channel uint16
	// Payload aliases the FrameReader's buffer: it is valid until the next
	// ReadFrame. Copy what must outlive it.
	Payload []byte
}

// readChunk bounds how far a frame's buffer is grown ahead of the bytes
// that have actually arrived, so a forged size on a connection without a
// frame_max cannot make the reader allocate gigabytes up front.
const readChunk = 64 << 10

// FrameReader reads frames from a byte stream. It is not safe for
// concurrent use; one connection reader goroutine owns it.
type FrameReader struct {
	br  *bufio.Reader
	max uint32
	buf []byte // for frames larger than the bufio buffer
}

// NewFrameReader returns a FrameReader reading from r through a
// bufio.Reader of bufSize bytes. Frames that fit in that buffer are returned
// without being copied, so bufSize should exceed the usual frame size
// (frame_max is 128 KiB by default).
func NewFrameReader(r io.Reader, bufSize int) *FrameReader {
	return &FrameReader{br: bufio.NewReaderSize(r, bufSize)}
}

// SetMaxFrameSize sets the largest frame accepted, FrameOverhead included
// (the negotiated frame_max). 0 means no limit beyond the 4 GiB the size
// field can express.
func (r *FrameReader) SetMaxFrameSize(n uint32) { r.max = n }

// Buffered returns the number of bytes read from the connection but not
// yet returned as frames, so a writer can tell whether more input is
// already waiting.
func (r *FrameReader) Buffered() int { return r.br.Buffered() }

// ReadFrame reads the next frame. A bad frame-end octet, an unknown frame
// type, a heartbeat with a payload or a frame over the maximum size yields
// an *Error with Code FrameError, a heartbeat on a channel other than 0 one
// with Code UnexpectedFrame, as RabbitMQ does (the connection must then be
// closed); I/O errors are returned
// wrapped (errors.Is(err, io.EOF) on a clean close between frames). The
// payload is only allocated as its bytes arrive, never more than the
// frame's own size.
func (r *FrameReader) ReadFrame() (Frame, error) {
	hdr, err := r.br.Peek(7)
	if err != nil {
		if len(hdr) > 0 && errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, fmt.Errorf("amqp: read frame header: %w", err)
	}
	typ := hdr[0]
	channel := binary.BigEndian.Uint16(hdr[1:3])
	size := binary.BigEndian.Uint32(hdr[3:7])
	total := uint64(size) + FrameOverhead
	// The checks and texts below are RabbitMQ 3.10's (probed on the wire).
	switch typ {
	case FrameMethod, FrameHeader, FrameBody:
	case FrameHeartbeat:
		if size != 0 {
			return Frame{}, Errorf(FrameError, "type 8, all octets = <<...>>: unknown_frame")
		}
		if channel != 0 {
			return Frame{}, Errorf(UnexpectedFrame, "type 8, all octets = <<>>")
		}
	default:
		return Frame{}, Errorf(FrameError, "type %d, all octets = <<...>>: unknown_frame", typ)
	}
	if r.max != 0 && total > uint64(r.max) {
		return Frame{}, Errorf(FrameError, "type %d, all octets = <<>>: {frame_too_large,%d,%d}", typ, size, r.max-FrameOverhead)
	}
	if total > math.MaxInt {
		return Frame{}, Errorf(FrameError, "frame size %d too large for this platform", total)
	}

	// Fast path: the whole frame fits in the bufio buffer; alias it.
	if int(total) <= r.br.Size() {
		b, err := r.br.Peek(int(total))
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, fmt.Errorf("amqp: read frame payload: %w", err)
		}
		if _, err := r.br.Discard(int(total)); err != nil {
			return Frame{}, fmt.Errorf("amqp: read frame payload: %w", err)
		}
		if end := b[total-1]; end != FrameEnd {
			return Frame{}, Errorf(FrameError, "bad frame end octet 0x%02x", end)
		}
		return Frame{Type: typ, Channel: channel, Payload: b[7 : total-1 : total-1]}, nil
	}

	if _, err := r.br.Discard(7); err != nil {
		return Frame{}, fmt.Errorf("amqp: read frame header: %w", err)
	}
	need := int(size) + 1
	buf := r.buf[:0]
	for len(buf) < need {
		n := min(need-len(buf), readChunk)
		if cap(buf)-len(buf) < n {
			// Grow geometrically but never past the frame's own size.
			newCap := min(need, max(2*cap(buf), len(buf)+n))
			nb := make([]byte, len(buf), newCap)
			copy(nb, buf)
			buf = nb
		}
		m, err := io.ReadFull(r.br, buf[len(buf):len(buf)+n])
		buf = buf[:len(buf)+m]
		if err != nil {
			r.buf = buf
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, fmt.Errorf("amqp: read frame payload: %w", err)
		}
	}
	r.buf = buf
	if end := buf[need-1]; end != FrameEnd {
		return Frame{}, Errorf(FrameError, "bad frame end octet 0x%02x", end)
	}
	return Frame{Type: typ, Channel: channel, Payload: buf[: need-1 : need-1]}, nil
}

// AppendFrame appends a frame of the given type carrying payload.
func AppendFrame(dst []byte, typ byte, channel uint16, payload []byte) []byte {
	n := uint32(len(payload))
	dst = append(dst, typ, byte(channel>>8), byte(channel), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	dst = append(dst, payload...)
	return append(dst, FrameEnd)
}

// AppendMethodFrame appends a method frame carrying m, encoded in place
// (no intermediate buffer).
func AppendMethodFrame(dst []byte, channel uint16, m Method) []byte {
	start := len(dst)
	dst = BeginMethodFrame(dst, channel)
	dst = m.Append(dst)
	return EndMethodFrame(dst, start)
}

// AppendHeartbeat appends a heartbeat frame (type 8, channel 0, empty).
func AppendHeartbeat(dst []byte) []byte {
	return append(dst, FrameHeartbeat, 0, 0, 0, 0, 0, 0, FrameEnd)
}

// AppendContent appends a content header frame whose payload is header,
// written verbatim (a raw header as received from a publisher, or one from
// AppendContentHeader), then body split into body frames of at most
// frameMax-FrameOverhead bytes. An empty body gets no body frame. A
// frameMax of 0 means no limit (one body frame); values too small to carry
// any body are raised to FrameMinSize.
func AppendContent(dst []byte, channel uint16, header []byte, body []byte, frameMax uint32) []byte {
	dst = AppendFrame(dst, FrameHeader, channel, header)
	if len(body) == 0 {
		return dst
	}
	chunk := len(body)
	if frameMax != 0 {
		if frameMax <= FrameOverhead {
			frameMax = FrameMinSize
		}
		chunk = min(chunk, int(frameMax-FrameOverhead))
	}
	for len(body) > 0 {
		n := min(chunk, len(body))
		dst = AppendFrame(dst, FrameBody, channel, body[:n])
		body = body[n:]
	}
	return dst
}
