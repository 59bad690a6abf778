package amqp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sync/atomic"
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

// Read buffer sizing: a FrameReader starts with minReadBuf bytes and grows
// (doubling, up to its maximum) whenever a read fills the buffer, i.e. when
// the peer sends faster than frames are consumed. After shrinkAfter reads in
// a row of at most smallRead bytes (heartbeats, acks, a trickle of small
// messages) it drops back to minReadBuf, so an idle connection holds 1 KiB,
// not the buffer of its busiest moment.
const (
	minReadBuf  = 1 << 10
	smallRead   = 512
	shrinkAfter = 4
)

// FrameReader reads frames from a byte stream. It is not safe for
// concurrent use; one connection reader goroutine owns it.
type FrameReader struct {
	rd     io.Reader
	buf    []byte // buf[r:w] holds bytes read but not yet returned
	r, w   int
	maxBuf int
	small  int   // consecutive reads that used little of a grown buffer
	err    error // sticky read error, returned once the buffered bytes are used up
	max    uint32
	big    []byte // for frames larger than maxBuf
	// bytesIn counts the bytes read from rd, bumped once per read call (not per frame), so
	// that a connection's received octets cost the hot path almost nothing.
	bytesIn atomic.Uint64
}

// BytesRead returns how many bytes have been read from the underlying reader; safe to call
// from any goroutine.
func (r *FrameReader) BytesRead() uint64 { return r.bytesIn.Load() }

// NewFrameReader returns a FrameReader reading from r with a read buffer of
// up to bufSize bytes (it starts smaller and grows under load). Frames that
// fit in that buffer are returned without being copied, so bufSize should
// exceed the usual frame size (frame_max is 128 KiB by default).
func NewFrameReader(r io.Reader, bufSize int) *FrameReader {
	bufSize = max(bufSize, 16)
	return &FrameReader{rd: r, buf: make([]byte, min(bufSize, minReadBuf)), maxBuf: bufSize}
}

// SetMaxFrameSize sets the largest frame accepted, FrameOverhead included
// (the negotiated frame_max). 0 means no limit beyond the 4 GiB the size
// field can express.
func (r *FrameReader) SetMaxFrameSize(n uint32) { r.max = n }

// Buffered returns the number of bytes read from the connection but not
// yet returned as frames, so a writer can tell whether more input is
// already waiting.
func (r *FrameReader) Buffered() int { return r.w - r.r }

// BufferSize returns the current size of the read buffer.
func (r *FrameReader) BufferSize() int { return len(r.buf) }

// fill makes at least n bytes (n <= maxBuf) available in buf[r:w], reading
// as little as once per call when the peer is quick.
func (r *FrameReader) fill(n int) error {
	for r.w-r.r < n {
		if r.err != nil {
			return r.err
		}
		if len(r.buf) < n {
			size := len(r.buf)
			for size < n {
				size *= 2
			}
			r.resize(min(size, r.maxBuf))
		} else if free := len(r.buf) - r.w; r.r > 0 && (free < n-(r.w-r.r) || free < len(r.buf)/2) {
			// Move the unread bytes to the front, so the read gets (at least) half the buffer.
			r.w = copy(r.buf, r.buf[r.r:r.w])
			r.r = 0
		}
		free := len(r.buf) - r.w
		m, err := r.rd.Read(r.buf[r.w:])
		if m < 0 || m > free {
			m, err = 0, errors.New("amqp: reader returned an invalid count")
		}
		r.w += m
		r.bytesIn.Add(uint64(m))
		r.err = err
		switch {
		case m == free && len(r.buf) < r.maxBuf:
			// The peer had more than fitted: grow for the next read.
			r.resize(min(2*len(r.buf), r.maxBuf))
			r.small = 0
		case len(r.buf) > minReadBuf && m <= smallRead:
			r.small++
		default:
			r.small = 0
		}
	}
	return nil
}

// resize moves the unread bytes into a new buffer of size bytes.
func (r *FrameReader) resize(size int) {
	nb := make([]byte, max(size, r.w-r.r))
	r.w = copy(nb, r.buf[r.r:r.w])
	r.r = 0
	r.buf = nb
}

// readFull copies exactly len(p) bytes, the buffered ones first.
func (r *FrameReader) readFull(p []byte) (int, error) {
	n := copy(p, r.buf[r.r:r.w])
	r.r += n
	if n == len(p) {
		return n, nil
	}
	if r.err != nil {
		return n, r.err
	}
	m, err := io.ReadFull(r.rd, p[n:])
	r.bytesIn.Add(uint64(m))
	return n + m, err
}

// ReadFrame reads the next frame. A bad frame-end octet, an unknown frame
// type, a heartbeat with a payload or a frame over the maximum size yields
// an *Error with Code FrameError, a heartbeat on a channel other than 0 one
// with Code UnexpectedFrame, as RabbitMQ does (the connection must then be
// closed); I/O errors are returned
// wrapped (errors.Is(err, io.EOF) on a clean close between frames). The
// payload is only allocated as its bytes arrive, never more than the
// frame's own size.
func (r *FrameReader) ReadFrame() (Frame, error) {
	if r.r == r.w && r.small >= shrinkAfter {
		r.buf, r.r, r.w, r.small = make([]byte, minReadBuf), 0, 0, 0
	}
	if err := r.fill(7); err != nil {
		if r.w > r.r && errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, fmt.Errorf("amqp: read frame header: %w", err)
	}
	hdr := r.buf[r.r : r.r+7]
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

	// Fast path: the whole frame fits in the read buffer; alias it.
	if int(total) <= r.maxBuf {
		if err := r.fill(int(total)); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, fmt.Errorf("amqp: read frame payload: %w", err)
		}
		b := r.buf[r.r : r.r+int(total)]
		r.r += int(total)
		if end := b[total-1]; end != FrameEnd {
			return Frame{}, Errorf(FrameError, "bad frame end octet 0x%02x", end)
		}
		return Frame{Type: typ, Channel: channel, Payload: b[7 : total-1 : total-1]}, nil
	}

	r.r += 7
	need := int(size) + 1
	buf := r.big[:0]
	for len(buf) < need {
		n := min(need-len(buf), readChunk)
		if cap(buf)-len(buf) < n {
			// Grow geometrically but never past the frame's own size.
			newCap := min(need, max(2*cap(buf), len(buf)+n))
			nb := make([]byte, len(buf), newCap)
			copy(nb, buf)
			buf = nb
		}
		m, err := r.readFull(buf[len(buf) : len(buf)+n])
		buf = buf[:len(buf)+m]
		if err != nil {
			r.big = buf
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, fmt.Errorf("amqp: read frame payload: %w", err)
		}
	}
	r.big = buf
	if end := buf[need-1]; end != FrameEnd {
		return Frame{}, Errorf(FrameError, "bad frame end octet 0x%02x", end)
	}
	return Frame{Type: typ, Channel: channel, Payload: buf[: need-1 : need-1]}, nil
}

// ReadNonHeartbeat reads frames until one that is not a heartbeat, for the
// phases of a connection (handshake, synchronous requests) that only wait
// for a method.
func (r *FrameReader) ReadNonHeartbeat() (Frame, error) {
	for {
		f, err := r.ReadFrame()
		if err != nil || f.Type != FrameHeartbeat {
			return f, err
		}
	}
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
