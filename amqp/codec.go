package amqp

import (
	"encoding/binary"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"
)

// reader decodes big-endian AMQP values from a byte slice. Instead of
// returning an error from every call it latches a bad flag: the generated
// decoders stay straight-line code and the caller checks once at the end.
// Every length prefix is checked against the bytes that remain before
// anything is sliced or allocated, so a forged length cannot cause a large
// allocation or a panic.
type reader struct {
	b   []byte
	off int
	bad bool
	// owned means b is a private, never-written copy (the bytes of a
	// string made for the purpose), so decoded strings may alias it
	// instead of each being allocated: a table decodes with one copy.
	owned bool
}

func (r *reader) u8() uint8 {
	if r.off >= len(r.b) {
		r.bad = true
		return 0
	}
	v := r.b[r.off]
	r.off++
	return v
}

func (r *reader) u16() uint16 {
	if len(r.b)-r.off < 2 {
		r.bad = true
		r.off = len(r.b)
		return 0
	}
	v := binary.BigEndian.Uint16(r.b[r.off:])
	r.off += 2
	return v
}

func (r *reader) u32() uint32 {
	if len(r.b)-r.off < 4 {
		r.bad = true
		r.off = len(r.b)
		return 0
	}
	v := binary.BigEndian.Uint32(r.b[r.off:])
	r.off += 4
	return v
}

func (r *reader) u64() uint64 {
	if len(r.b)-r.off < 8 {
		r.bad = true
		r.off = len(r.b)
		return 0
	}
	v := binary.BigEndian.Uint64(r.b[r.off:])
	r.off += 8
	return v
}

// bytes returns the next n bytes, aliasing the input.
func (r *reader) bytes(n uint64) []byte {
	if uint64(len(r.b)-r.off) < n {
		r.bad = true
		r.off = len(r.b)
		return nil
	}
	v := r.b[r.off : r.off+int(n) : r.off+int(n)]
	r.off += int(n)
	return v
}

// str returns the next n bytes as a string.
func (r *reader) str(n uint64) string {
	b := r.bytes(n)
	if len(b) == 0 {
		return ""
	}
	if r.owned {
		return unsafe.String(&b[0], len(b))
	}
	return string(b)
}

func (r *reader) shortstr() string {
	n := r.u8()
	if r.bad {
		return ""
	}
	return r.str(uint64(n))
}

// shortstrs decodes consecutive short strings with a single allocation:
// one string holding all of them (length octets included), which the
// results slice. basic.publish's exchange and routing key cost one
// allocation instead of two.
func (r *reader) shortstrs(out ...*string) {
	start := r.off
	for range out {
		n := r.u8()
		if r.bad {
			return
		}
		r.bytes(uint64(n))
	}
	if r.bad {
		return
	}
	if r.off-start == len(out) { // all empty: no allocation at all
		for _, p := range out {
			*p = ""
		}
		return
	}
	all := string(r.b[start:r.off])
	off := 0
	for _, p := range out {
		n := int(all[off])
		*p = all[off+1 : off+1+n]
		off += 1 + n
	}
}

func (r *reader) longstr() string {
	n := r.u32()
	if r.bad {
		return ""
	}
	return r.str(uint64(n))
}

func (r *reader) timestamp() time.Time {
	v := r.u64()
	if r.bad {
		return time.Time{}
	}
	return time.Unix(int64(v), 0)
}

func (r *reader) table() Table {
	if r.bad {
		return nil
	}
	var t Table
	var n int
	var err error
	if r.owned {
		t, n, err = decodeTable(r.b[r.off:], 0, true)
	} else {
		t, n, err = decodeTableCopy(r.b[r.off:])
	}
	if err != nil {
		r.bad = true
		r.off = len(r.b)
		return nil
	}
	r.off += n
	return t
}

// finishMethod turns the reader state into the error RabbitMQ 3.10 raises
// for a method whose arguments do not parse: a 501 FRAME_ERROR connection
// exception "cannot decode <<...>>" naming the method. Trailing bytes after
// the last argument are an error too (RabbitMQ rejects them the same way).
func (r *reader) finishMethod(classID, methodID uint16) error {
	if !r.bad && r.off == len(r.b) {
		return nil
	}
	return &Error{
		Code:     FrameError,
		Text:     "FRAME_ERROR - cannot decode " + erlBinary(r.b[4:], 32),
		ClassID:  classID,
		MethodID: methodID,
	}
}

// erlBinary formats b the way Erlang prints a binary (<<1,2,3>>), which is
// what RabbitMQ puts in its FRAME_ERROR texts. At most max bytes are shown.
func erlBinary(b []byte, max int) string {
	var sb strings.Builder
	sb.WriteString("<<")
	for i, c := range b {
		if i == max {
			sb.WriteString(",...")
			break
		}
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, "%d", c)
	}
	sb.WriteString(">>")
	return sb.String()
}

func appendU16(dst []byte, v uint16) []byte { return append(dst, byte(v>>8), byte(v)) }

func appendU32(dst []byte, v uint32) []byte {
	return append(dst, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

func appendU64(dst []byte, v uint64) []byte {
	return append(dst, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32),
		byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// appendShortstr writes s with its one-octet length. A short string cannot
// hold more than 255 bytes, so longer values are truncated: the methods'
// Append has no error result, and truncating a reply text (the usual case:
// long names quoted in an error) is what RabbitMQ does too.
//
// The cut falls on a UTF-8 character boundary, so a client never gets half a
// character.
func appendShortstr(dst []byte, s string) []byte {
	if len(s) > 255 {
		n := 255
		for n > 252 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n]
	}
	dst = append(dst, byte(len(s)))
	return append(dst, s...)
}

func appendLongstr(dst []byte, s string) []byte {
	dst = appendU32(dst, uint32(len(s)))
	return append(dst, s...)
}

func appendTimestamp(dst []byte, t time.Time) []byte {
	return appendU64(dst, uint64(t.Unix()))
}

// appendTableLax is AppendTable for contexts without an error result (the
// generated method encoders): a value of an unsupported Go type is written
// as void ('V') rather than failing the whole frame.
func appendTableLax(dst []byte, t Table) []byte {
	dst, _ = appendTable(dst, t, 0, true)
	return dst
}
