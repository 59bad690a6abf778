package stream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Record format v3: every record is an AMQP 1.0 message (the bare message of AMQP 1.0 part 3:
// a sequence of described sections), as RabbitMQ stores a message in a stream, so that the
// stream protocol can send records as they are. The sections and their mapping from an AMQP
// 0-9-1 publish are in doc.go ("Records"). AppendAMQP10Head converts on publish and
// DecodeAMQP091 converts back for an AMQP 0-9-1 consumer; both work on bytes (no maps, no
// reflection, no allocation but the output buffer).

// AMQP 1.0 section descriptors (part 3.2), written as smallulong.
const (
	secHeader           = 0x70
	secDeliveryAnnots   = 0x71
	secMessageAnnots    = 0x72
	secProperties       = 0x73
	secApplicationProps = 0x74
	secData             = 0x75
	secAMQPSequence     = 0x76
	secAMQPValue        = 0x77
	secFooter           = 0x78
)

// AMQP 1.0 type constructors (part 1.6) used here.
const (
	t10Described = 0x00
	t10Null      = 0x40
	t10True      = 0x41
	t10False     = 0x42
	t10Uint0     = 0x43
	t10Ulong0    = 0x44
	t10List0     = 0x45
	t10SmallUint = 0x52
	t10SmallUlng = 0x53
	t10SmallInt  = 0x54
	t10SmallLong = 0x55
	t10Boolean   = 0x56
	t10Ubyte     = 0x50
	t10Byte      = 0x51
	t10Ushort    = 0x60
	t10Short     = 0x61
	t10Uint      = 0x70
	t10Int       = 0x71
	t10Float     = 0x72
	t10Char      = 0x73
	t10Dec32     = 0x74
	t10Ulong     = 0x80
	t10Long      = 0x81
	t10Double    = 0x82
	t10Timestamp = 0x83
	t10Dec64     = 0x84
	t10Dec128    = 0x94
	t10UUID      = 0x98
	t10Vbin8     = 0xa0
	t10Str8      = 0xa1
	t10Sym8      = 0xa3
	t10Vbin32    = 0xb0
	t10Str32     = 0xb1
	t10Sym32     = 0xb3
	t10List8     = 0xc0
	t10Map8      = 0xc1
	t10List32    = 0xd0
	t10Map32     = 0xd1
	t10Array8    = 0xe0
	t10Array32   = 0xf0
)

// Message annotation keys. x-exchange and x-routing-key are RabbitMQ's (rabbit_stream_queue);
// the x-basic-* keys hold the 0-9-1 properties AMQP 1.0 has no field for, as RabbitMQ's
// rabbit_msg_record names them (x-basic-cluster-id and x-basic-timestamp are Warren's).
const (
	annExchange     = "x-exchange"
	annRoutingKey   = "x-routing-key"
	annType         = "x-basic-type"
	annAppID        = "x-basic-app-id"
	annExpiration   = "x-basic-expiration"
	annDeliveryMode = "x-basic-delivery-mode"
	annPriority     = "x-basic-priority"
	annClusterID    = "x-basic-cluster-id"
	annTimestamp    = "x-basic-timestamp"
)

// descTimestampSeconds describes a 0-9-1 timestamp header value too large for AMQP 1.0's
// millisecond timestamp (beyond year 292 million): a ulong of seconds, so nothing is lost.
const descTimestampSeconds = "warren:timestamp-seconds"

// maxNesting bounds tables and arrays nested in headers, as the amqp package does.
const maxNesting = 8192

// amqp10Type is the body type 0-9-1 consumers see for a body that is not one data section,
// as RabbitMQ (the body is then the encoded AMQP 1.0 body sections).
const amqp10Type = "amqp-1.0"

// StreamOffsetHeader is the header every stream delivery to an AMQP 0-9-1 consumer carries.
const StreamOffsetHeader = "x-stream-offset"

var (
	errBadMessage = errors.New("stream: malformed AMQP 1.0 message")
	errNoBody     = errors.New("stream: AMQP 1.0 message without a body section")
)

// errBadHeader091 reports an AMQP 0-9-1 content header AppendAMQP10Head cannot read.
var errBadHeader091 = errors.New("stream: malformed AMQP 0-9-1 content header")

// props091 are the properties of a 0-9-1 content header, as slices of it.
type props091 struct {
	flags                               uint16
	contentType, contentEncoding        []byte
	headers                             []byte // the table's entries, without the length prefix
	deliveryMode, priority              byte
	correlationID, replyTo, expiration  []byte
	messageID, typ, userID, appID, clID []byte
	timestamp                           uint64
}

const (
	fContentType = 1 << (15 - iota)
	fContentEncoding
	fHeaders
	fDeliveryMode
	fPriority
	fCorrelationID
	fReplyTo
	fExpiration
	fMessageID
	fTimestamp
	fType
	fUserID
	fAppID
	fClusterID
)

// rd reads big-endian values from b; any read past the end sets bad.
type rd struct {
	b   []byte
	off int
	bad bool
}

func (r *rd) n(k int) []byte {
	if r.bad || k < 0 || k > len(r.b)-r.off {
		r.bad = true
		return nil
	}
	s := r.b[r.off : r.off+k]
	r.off += k
	return s
}
func (r *rd) u8() byte {
	if s := r.n(1); s != nil {
		return s[0]
	}
	return 0
}
func (r *rd) u16() uint16 {
	if s := r.n(2); s != nil {
		return binary.BigEndian.Uint16(s)
	}
	return 0
}
func (r *rd) u32() uint32 {
	if s := r.n(4); s != nil {
		return binary.BigEndian.Uint32(s)
	}
	return 0
}
func (r *rd) u64() uint64 {
	if s := r.n(8); s != nil {
		return binary.BigEndian.Uint64(s)
	}
	return 0
}
func (r *rd) shortstr() []byte { return r.n(int(r.u8())) }

// parseProps091 reads a basic content header payload (class, weight, body size, flags,
// properties).
func parseProps091(p *props091, h []byte) error {
	r := rd{b: h}
	r.n(12) // class id, weight, body size: rebuilt from the body on the way back
	p.flags = r.u16()
	if r.bad || p.flags&3 != 0 {
		return errBadHeader091
	}
	f := p.flags
	if f&fContentType != 0 {
		p.contentType = r.shortstr()
	}
	if f&fContentEncoding != 0 {
		p.contentEncoding = r.shortstr()
	}
	if f&fHeaders != 0 {
		p.headers = r.n(int(r.u32()))
	}
	if f&fDeliveryMode != 0 {
		p.deliveryMode = r.u8()
	}
	if f&fPriority != 0 {
		p.priority = r.u8()
	}
	if f&fCorrelationID != 0 {
		p.correlationID = r.shortstr()
	}
	if f&fReplyTo != 0 {
		p.replyTo = r.shortstr()
	}
	if f&fExpiration != 0 {
		p.expiration = r.shortstr()
	}
	if f&fMessageID != 0 {
		p.messageID = r.shortstr()
	}
	if f&fTimestamp != 0 {
		p.timestamp = r.u64()
	}
	if f&fType != 0 {
		p.typ = r.shortstr()
	}
	if f&fUserID != 0 {
		p.userID = r.shortstr()
	}
	if f&fAppID != 0 {
		p.appID = r.shortstr()
	}
	if f&fClusterID != 0 {
		p.clID = r.shortstr()
	}
	if r.bad || r.off != len(h) {
		return errBadHeader091
	}
	return nil
}

// compound starts a list or map: 9 bytes reserved for the 32-bit form, shrunk by
// endCompound to the 8-bit form when it fits.
func beginCompound(dst []byte) ([]byte, int) {
	return append(dst, 0, 0, 0, 0, 0, 0, 0, 0, 0), len(dst)
}

func endCompound(dst []byte, start int, code8, code32 byte, count int) []byte {
	size := len(dst) - start - 9
	if size+1 <= 0xff && count <= 0xff {
		dst[start], dst[start+1], dst[start+2] = code8, byte(size+1), byte(count)
		copy(dst[start+3:], dst[start+9:])
		return dst[:len(dst)-6]
	}
	dst[start] = code32
	binary.BigEndian.PutUint32(dst[start+1:], uint32(size+4))
	binary.BigEndian.PutUint32(dst[start+5:], uint32(count))
	return dst
}

func appendSection(dst []byte, code byte) []byte {
	return append(dst, t10Described, t10SmallUlng, code)
}

// appendVar appends a variable-width value (binary, string, symbol) in its short or long form.
func appendVar(dst []byte, code8, code32 byte, s []byte) []byte {
	if len(s) <= 0xff {
		dst = append(dst, code8, byte(len(s)))
	} else {
		dst = append(dst, code32)
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(s)))
	}
	return append(dst, s...)
}

func appendSym(dst []byte, s string) []byte {
	dst = append(dst, t10Sym8, byte(len(s)))
	return append(dst, s...)
}

// AppendAMQP10Head appends, for an AMQP 0-9-1 message (header: its content header frame
// payload; a body of bodyLen bytes), the AMQP 1.0 message that a record of format v3 is, up
// to the data section's binary length: the body's bytes follow, unchanged. annotate adds the
// x-exchange and x-routing-key annotations; leave them out for the usual publish (the default
// exchange, the stream's own name as routing key), which is what RabbitMQ's reader assumes
// when they are absent. A malformed header is an error (the caller keeps another format).
func AppendAMQP10Head(dst, header []byte, bodyLen int, annotate bool, exchange, routingKey string) ([]byte, error) {
	if len(header) == 15 && header[12] == fDeliveryMode>>8 && header[13] == 0 && (header[14] == 1 || header[14] == 2) && !annotate {
		// The usual stream publish: only a delivery mode, through the default exchange.
		durable := byte(t10False)
		if header[14] == 2 {
			durable = t10True
		}
		dst = append(dst, t10Described, t10SmallUlng, secHeader, t10List8, 2, 1, durable)
		return appendData(dst, bodyLen), nil
	}
	var p props091
	if err := parseProps091(&p, header); err != nil {
		return dst, err
	}
	start := len(dst)
	f := p.flags
	dm := f&fDeliveryMode != 0
	durableKnown := dm && (p.deliveryMode == 1 || p.deliveryMode == 2)
	if durableKnown || f&fPriority != 0 {
		// header: durable (delivery mode 2 true, 1 false, absent null), priority.
		dst = appendSection(dst, secHeader)
		var c int
		dst, c = beginCompound(dst)
		switch {
		case !durableKnown:
			dst = append(dst, t10Null)
		case p.deliveryMode == 2:
			dst = append(dst, t10True)
		default:
			dst = append(dst, t10False)
		}
		n := 1
		if f&fPriority != 0 {
			dst = append(dst, t10Ubyte, p.priority)
			n++
		}
		dst = endCompound(dst, c, t10List8, t10List32, n)
	}
	tsMillis := f&fTimestamp != 0 && p.timestamp <= math.MaxInt64/1000
	if annotate || f&(fType|fAppID|fExpiration|fClusterID) != 0 || (dm && !durableKnown) || (f&fTimestamp != 0 && !tsMillis) {
		dst = appendSection(dst, secMessageAnnots)
		var c int
		dst, c = beginCompound(dst)
		n := 0
		str := func(k string, v []byte) {
			dst = appendSym(dst, k)
			dst = appendVar(dst, t10Str8, t10Str32, v)
			n += 2
		}
		if annotate {
			str(annExchange, []byte(exchange))
			str(annRoutingKey, []byte(routingKey))
		}
		if f&fType != 0 {
			str(annType, p.typ)
		}
		if f&fAppID != 0 {
			str(annAppID, p.appID)
		}
		if f&fExpiration != 0 {
			str(annExpiration, p.expiration)
		}
		if dm && !durableKnown {
			dst = append(appendSym(dst, annDeliveryMode), t10Ubyte, p.deliveryMode)
			n += 2
		}
		if f&fClusterID != 0 {
			str(annClusterID, p.clID)
		}
		if f&fTimestamp != 0 && !tsMillis {
			dst = binary.BigEndian.AppendUint64(append(appendSym(dst, annTimestamp), t10Ulong), p.timestamp)
			n += 2
		}
		dst = endCompound(dst, c, t10Map8, t10Map32, n)
	}
	if f&(fMessageID|fUserID|fReplyTo|fCorrelationID|fContentType|fContentEncoding) != 0 || tsMillis {
		dst = appendSection(dst, secProperties)
		var c int
		dst, c = beginCompound(dst)
		// Fields 0-9: message-id, user-id, to, subject, reply-to, correlation-id, content-type,
		// content-encoding, absolute-expiry-time, creation-time; trailing nulls left out.
		last := 0
		for i, bit := range [...]uint16{fMessageID, fUserID, 0, 0, fReplyTo, fCorrelationID, fContentType, fContentEncoding, 0, fTimestamp} {
			if bit != 0 && f&bit != 0 && (bit != fTimestamp || tsMillis) {
				last = i + 1
			}
		}
		for i := 0; i < last; i++ {
			switch i {
			case 0:
				dst = appendOpt(dst, f&fMessageID != 0, t10Str8, t10Str32, p.messageID)
			case 1:
				dst = appendOpt(dst, f&fUserID != 0, t10Vbin8, t10Vbin32, p.userID)
			case 4:
				dst = appendOpt(dst, f&fReplyTo != 0, t10Str8, t10Str32, p.replyTo)
			case 5:
				dst = appendOpt(dst, f&fCorrelationID != 0, t10Str8, t10Str32, p.correlationID)
			case 6:
				dst = appendOpt(dst, f&fContentType != 0, t10Sym8, t10Sym32, p.contentType)
			case 7:
				dst = appendOpt(dst, f&fContentEncoding != 0, t10Sym8, t10Sym32, p.contentEncoding)
			case 9:
				dst = binary.BigEndian.AppendUint64(append(dst, t10Timestamp), p.timestamp*1000)
			default:
				dst = append(dst, t10Null)
			}
		}
		dst = endCompound(dst, c, t10List8, t10List32, last)
	}
	if f&fHeaders != 0 {
		dst = appendSection(dst, secApplicationProps)
		var ok bool
		if dst, ok = appendTable10(dst, p.headers, 0); !ok {
			return dst[:start], errBadHeader091
		}
	}
	return appendData(dst, bodyLen), nil
}

// appendData appends a data section's descriptor and length, for a body of n bytes.
func appendData(dst []byte, n int) []byte {
	dst = appendSection(dst, secData)
	if n <= 0xff {
		return append(dst, t10Vbin8, byte(n))
	}
	return binary.BigEndian.AppendUint32(append(dst, t10Vbin32), uint32(n))
}

func appendOpt(dst []byte, present bool, code8, code32 byte, v []byte) []byte {
	if !present {
		return append(dst, t10Null)
	}
	return appendVar(dst, code8, code32, v)
}

// appendTable10 converts the entries of a 0-9-1 field table to an AMQP 1.0 map with string
// keys.
func appendTable10(dst, entries []byte, depth int) ([]byte, bool) {
	if depth > maxNesting {
		return dst, false
	}
	dst, c := beginCompound(dst)
	r := rd{b: entries}
	n := 0
	for r.off < len(entries) {
		k := r.shortstr()
		if r.bad {
			return dst, false
		}
		dst = appendVar(dst, t10Str8, t10Str32, k)
		var ok bool
		if dst, ok = appendField10(dst, &r, depth); !ok {
			return dst, false
		}
		n += 2
	}
	return endCompound(dst, c, t10Map8, t10Map32, n), true
}

// appendField10 converts one 0-9-1 field value (type octet and value, RabbitMQ's type codes)
// to AMQP 1.0.
func appendField10(dst []byte, r *rd, depth int) ([]byte, bool) {
	t := r.u8()
	switch t {
	case 't':
		if r.u8() != 0 {
			dst = append(dst, t10True)
		} else {
			dst = append(dst, t10False)
		}
	case 'b':
		dst = append(dst, t10Byte, r.u8())
	case 'B':
		dst = append(dst, t10Ubyte, r.u8())
	case 's':
		dst = append(dst, t10Short)
		dst = append(dst, r.n(2)...)
	case 'u':
		dst = append(dst, t10Ushort)
		dst = append(dst, r.n(2)...)
	case 'I':
		dst = append(dst, t10Int)
		dst = append(dst, r.n(4)...)
	case 'i':
		dst = append(dst, t10Uint)
		dst = append(dst, r.n(4)...)
	case 'l', 'L':
		dst = append(dst, t10Long)
		dst = append(dst, r.n(8)...)
	case 'f':
		dst = append(dst, t10Float)
		dst = append(dst, r.n(4)...)
	case 'd':
		dst = append(dst, t10Double)
		dst = append(dst, r.n(8)...)
	case 'D':
		scale, v := r.u8(), int32(r.u32())
		dst = binary.BigEndian.AppendUint64(append(dst, t10Dec64), decimal64(scale, v))
	case 'S':
		dst = appendVar(dst, t10Str8, t10Str32, r.n(int(r.u32())))
	case 'x':
		dst = appendVar(dst, t10Vbin8, t10Vbin32, r.n(int(r.u32())))
	case 'T':
		s := r.u64()
		if s <= math.MaxInt64/1000 {
			dst = binary.BigEndian.AppendUint64(append(dst, t10Timestamp), s*1000)
		} else {
			dst = appendSym(append(dst, t10Described), descTimestampSeconds)
			dst = binary.BigEndian.AppendUint64(append(dst, t10Ulong), s)
		}
	case 'V':
		dst = append(dst, t10Null)
	case 'F':
		b := r.n(int(r.u32()))
		if r.bad {
			return dst, false
		}
		return appendTable10(dst, b, depth+1)
	case 'A':
		b := r.n(int(r.u32()))
		if r.bad || depth+1 > maxNesting {
			return dst, false
		}
		dst, c := beginCompound(dst)
		ar := rd{b: b}
		n := 0
		for ar.off < len(b) {
			var ok bool
			if dst, ok = appendField10(dst, &ar, depth+1); !ok {
				return dst, false
			}
			n++
		}
		return endCompound(dst, c, t10List8, t10List32, n), true
	default:
		return dst, false
	}
	return dst, !r.bad
}

// decimal64 encodes the 0-9-1 decimal value/10^scale as an IEEE 754-2008 decimal64 in the
// binary integer encoding AMQP 1.0 uses: sign, a 10-bit exponent biased by 398, a 53-bit
// coefficient (|value| < 2^32 always fits, and -scale in [-255, 0] is within range).
func decimal64(scale byte, v int32) uint64 {
	var sign uint64
	c := int64(v)
	if c < 0 {
		sign, c = 1<<63, -c
	}
	return sign | uint64(398-int(scale))<<53 | uint64(c)
}

// fromDecimal64 is decimal64's inverse, for the values a 0-9-1 decimal can hold.
func fromDecimal64(d uint64) (scale byte, v int32, ok bool) {
	if d>>61&3 == 3 { // the large-coefficient form (or infinity, NaN): no 0-9-1 decimal
		return 0, 0, false
	}
	exp := int(d>>53&0x3ff) - 398
	c := int64(d & (1<<53 - 1))
	if d>>63 != 0 {
		c = -c
	}
	if exp > 0 || exp < -255 || c > math.MaxInt32 || c < math.MinInt32 {
		return 0, 0, false
	}
	return byte(-exp), int32(c), true
}

// Message091 is a record as an AMQP 0-9-1 delivery needs it. Header and Body share one new
// buffer (the record's bytes are the reader's).
type Message091 struct {
	// Exchange and RoutingKey are the x-exchange and x-routing-key annotations; Has... are
	// false when the record has none (then the default exchange and the stream's name).
	Exchange, RoutingKey       string
	HasExchange, HasRoutingKey bool
	// Header is the content header frame payload: class 60, weight 0, body size, flags and
	// properties.
	Header []byte
	Body   []byte
}

// span is a value's bytes in the record: [start, end), start at its constructor.
type span struct{ start, end int }

// msg10 is a parsed AMQP 1.0 message: where its parts are in the record.
type msg10 struct {
	durable, durableSet   bool
	priority              byte
	prioritySet           bool
	ttl                   uint32
	ttlSet                bool
	props                 [13]span // properties fields (0: absent)
	appProps              span     // application-properties map
	ann                   [9]span  // message annotations by annKeys index
	bodyFirst, bodyEnd    int      // body sections, in the record
	dataSections          int
	otherBody             bool
	dataStart, dataLength int // the one data section's content
}

var annKeys = [...]string{annExchange, annRoutingKey, annType, annAppID, annExpiration, annDeliveryMode, annPriority, annClusterID, annTimestamp}

// IsAMQP10 reports whether a record is format v3 (an AMQP 1.0 message starts with a
// described section, byte 0; earlier formats start with their version, 1 or 2).
func IsAMQP10(rec []byte) bool { return len(rec) > 0 && rec[0] == t10Described }

// DecodeAMQP091 converts a v3 record (an AMQP 1.0 message) to an AMQP 0-9-1 message: the
// inverse of AppendAMQP10Head, and also what RabbitMQ's rabbit_msg_record:to_amqp091 makes of
// AMQP 1.0 messages written by others. withOffset adds the x-stream-offset header with
// offset. A malformed record is an error; values 0-9-1 cannot carry (AMQP 1.0 char, uuid
// headers, decimal32/128) are left out.
func DecodeAMQP091(rec []byte, offset int64, withOffset bool) (Message091, error) {
	var m msg10
	if err := m.parse(rec); err != nil {
		return Message091{}, err
	}
	var out Message091
	var body []byte
	typ := []byte(nil)
	hasType := false
	if m.dataSections == 1 && !m.otherBody {
		body = rec[m.dataStart : m.dataStart+m.dataLength]
	} else if m.bodyEnd > m.bodyFirst {
		body = rec[m.bodyFirst:m.bodyEnd]
		typ, hasType = []byte(amqp10Type), true
	}
	str := func(i int) ([]byte, bool) {
		s := m.ann[i]
		if s.end == 0 {
			return nil, false
		}
		v, ok := stringValue(rec, s)
		return v, ok && len(v) <= 0xff
	}
	if v, ok := str(0); ok {
		out.Exchange, out.HasExchange = string(v), true
	}
	if v, ok := str(1); ok {
		out.RoutingKey, out.HasRoutingKey = string(v), true
	}
	if v, ok := str(2); ok {
		typ, hasType = v, true
	}
	b := make([]byte, 14, 14+2*(len(rec)-len(body))+32+len(body))
	binary.BigEndian.PutUint16(b, 60)
	binary.BigEndian.PutUint64(b[4:], uint64(len(body)))
	var flags uint16
	short := func(bit uint16, v []byte, ok bool) {
		if ok && len(v) <= 0xff {
			flags |= bit
			b = append(b, byte(len(v)))
			b = append(b, v...)
		}
	}
	prop := func(i int) ([]byte, bool) {
		if m.props[i].end == 0 {
			return nil, false
		}
		return idValue(rec, m.props[i])
	}
	v, ok := prop(6)
	short(fContentType, v, ok)
	v, ok = prop(7)
	short(fContentEncoding, v, ok)
	if m.appProps.end != 0 || withOffset {
		flags |= fHeaders
		at := len(b)
		b = append(b, 0, 0, 0, 0)
		if m.appProps.end != 0 {
			var err error
			if b, err = appendTable091(b, rec, m.appProps, 0, withOffset); err != nil {
				return Message091{}, err
			}
		}
		if withOffset {
			b = append(b, byte(len(StreamOffsetHeader)))
			b = append(b, StreamOffsetHeader...)
			b = binary.BigEndian.AppendUint64(append(b, 'l'), uint64(offset))
		}
		binary.BigEndian.PutUint32(b[at:], uint32(len(b)-at-4))
	}
	if s := m.ann[5]; s.end != 0 {
		if d, ok := uintValue(rec, s); ok && d <= 0xff {
			flags |= fDeliveryMode
			b = append(b, byte(d))
		}
	} else if m.durableSet {
		flags |= fDeliveryMode
		if m.durable {
			b = append(b, 2)
		} else {
			b = append(b, 1)
		}
	}
	if m.prioritySet {
		flags |= fPriority
		b = append(b, m.priority)
	} else if s := m.ann[6]; s.end != 0 {
		if d, ok := uintValue(rec, s); ok && d <= 0xff {
			flags |= fPriority
			b = append(b, byte(d))
		}
	}
	v, ok = prop(5)
	short(fCorrelationID, v, ok)
	v, ok = prop(4)
	short(fReplyTo, v, ok)
	if v, ok := str(4); ok {
		short(fExpiration, v, ok)
	} else if m.ttlSet {
		short(fExpiration, strconv.AppendUint(nil, uint64(m.ttl), 10), true)
	}
	v, ok = prop(0)
	short(fMessageID, v, ok)
	if s := m.props[9]; s.end != 0 && rec[s.start] == t10Timestamp && s.end-s.start == 9 {
		flags |= fTimestamp
		b = binary.BigEndian.AppendUint64(b, uint64(int64(binary.BigEndian.Uint64(rec[s.start+1:]))/1000))
	} else if s := m.ann[8]; s.end != 0 {
		if d, ok := uintValue(rec, s); ok {
			flags |= fTimestamp
			b = binary.BigEndian.AppendUint64(b, d)
		}
	}
	short(fType, typ, hasType)
	v, ok = prop(1)
	short(fUserID, v, ok)
	if v, ok := str(3); ok {
		short(fAppID, v, ok)
	} else {
		v, ok = prop(10) // group-id, where RabbitMQ 3.13 puts app-id
		short(fAppID, v, ok)
	}
	v, ok = str(7)
	short(fClusterID, v, ok)
	if len(b) > maxHeader091(len(rec)) {
		return Message091{}, errBadMessage
	}
	binary.BigEndian.PutUint16(b[12:], flags)
	hl := len(b)
	b = append(b, body...)
	out.Header, out.Body = b[:hl:hl], b[hl:]
	return out, nil
}

// parse finds the sections of the AMQP 1.0 message rec.
func (m *msg10) parse(rec []byte) error {
	p := 0
	m.bodyFirst = -1
	for p < len(rec) {
		code, vstart, err := sectionCode(rec, p)
		if err != nil {
			return err
		}
		end, err := skip10(rec, vstart, 0)
		if err != nil {
			return err
		}
		switch code {
		case secHeader:
			if m.bodyFirst >= 0 {
				return errBadMessage
			}
			err = forList(rec, vstart, func(i int, s span) error {
				switch i {
				case 0:
					m.durable, m.durableSet = boolValue(rec, s)
				case 1:
					if d, ok := uintValue(rec, s); ok && d <= 0xff {
						m.priority, m.prioritySet = byte(d), true
					}
				case 2:
					if d, ok := uintValue(rec, s); ok && d <= math.MaxUint32 {
						m.ttl, m.ttlSet = uint32(d), true
					}
				}
				return nil
			})
		case secMessageAnnots:
			err = forMap(rec, vstart, func(k, v span) error {
				key, ok := stringValue(rec, k)
				if !ok {
					return nil
				}
				for i, a := range annKeys {
					if string(key) == a {
						m.ann[i] = v
					}
				}
				return nil
			})
		case secProperties:
			err = forList(rec, vstart, func(i int, s span) error {
				if i < len(m.props) && rec[s.start] != t10Null {
					m.props[i] = s
				}
				return nil
			})
		case secApplicationProps:
			if !isMap(rec[vstart]) {
				return errBadMessage
			}
			m.appProps = span{vstart, end}
		case secData:
			b, ok := binaryValue(rec, span{vstart, end})
			if !ok {
				return errBadMessage
			}
			if m.bodyFirst < 0 {
				m.bodyFirst = p
			}
			m.dataSections++
			m.dataStart, m.dataLength = end-len(b), len(b)
			m.bodyEnd = end
		case secAMQPSequence, secAMQPValue:
			if m.bodyFirst < 0 {
				m.bodyFirst = p
			}
			m.otherBody = true
			m.bodyEnd = end
		case secDeliveryAnnots, secFooter:
		default:
			return errBadMessage
		}
		if err != nil {
			return err
		}
		p = end
	}
	if m.bodyFirst < 0 {
		return errNoBody // AMQP 1.0 part 3.2: a message has a body
	}
	return nil
}

// sectionCode reads a section's descriptor at p (a described value: byte 0, then the
// descriptor as a ulong or as its symbolic name) and returns its code and where the value
// starts.
func sectionCode(b []byte, p int) (uint64, int, error) {
	if p+2 > len(b) || b[p] != t10Described {
		return 0, 0, errBadMessage
	}
	p++
	switch b[p] {
	case t10SmallUlng:
		if p+2 > len(b) {
			return 0, 0, errBadMessage
		}
		return uint64(b[p+1]), p + 2, nil
	case t10Ulong:
		if p+9 > len(b) {
			return 0, 0, errBadMessage
		}
		return binary.BigEndian.Uint64(b[p+1:]), p + 9, nil
	case t10Sym8, t10Sym32:
		end, err := skip10(b, p, 0)
		if err != nil {
			return 0, 0, err
		}
		name, _ := stringValue(b, span{p, end})
		for code, n := range sectionNames {
			if string(name) == n {
				return code, end, nil
			}
		}
	}
	return 0, 0, errBadMessage
}

var sectionNames = map[uint64]string{
	secHeader: "amqp:header:list", secDeliveryAnnots: "amqp:delivery-annotations:map",
	secMessageAnnots: "amqp:message-annotations:map", secProperties: "amqp:properties:list",
	secApplicationProps: "amqp:application-properties:map", secData: "amqp:data:binary",
	secAMQPSequence: "amqp:amqp-sequence:list", secAMQPValue: "amqp:value:*", secFooter: "amqp:footer:map",
}

// fixedWidth is the size of a fixed-width type's value after its constructor, -1 if the
// constructor is not a fixed-width one.
func fixedWidth(c byte) int {
	switch c >> 4 {
	case 0x4:
		return 0
	case 0x5:
		return 1
	case 0x6:
		return 2
	case 0x7:
		return 4
	case 0x8:
		return 8
	case 0x9:
		return 16
	}
	return -1
}

// skip10 returns the end of the value at p.
func skip10(b []byte, p int, depth int) (int, error) {
	if p >= len(b) || depth > maxNesting {
		return 0, errBadMessage
	}
	c := b[p]
	if c == t10Described {
		q, err := skip10(b, p+1, depth+1) // descriptor
		if err != nil {
			return 0, err
		}
		return skip10(b, q, depth+1)
	}
	return skipWith(b, p+1, c)
}

// skipWith returns the end of a value of constructor c whose bytes start at p (after the
// constructor, as in an array).
func skipWith(b []byte, p int, c byte) (int, error) {
	var n int
	if w := fixedWidth(c); w >= 0 {
		n = w
	} else {
		switch c >> 4 {
		case 0xa, 0xc, 0xe:
			if p >= len(b) {
				return 0, errBadMessage
			}
			n, p = int(b[p]), p+1
		case 0xb, 0xd, 0xf:
			if p+4 > len(b) {
				return 0, errBadMessage
			}
			u := binary.BigEndian.Uint32(b[p:])
			if u > uint32(len(b)) {
				return 0, errBadMessage
			}
			n, p = int(u), p+4
		default:
			return 0, errBadMessage
		}
	}
	if n > len(b)-p {
		return 0, errBadMessage
	}
	return p + n, nil
}

func isMap(c byte) bool { return c == t10Map8 || c == t10Map32 }

// compound returns the element count and the span of the elements of the list or map at p.
func compound(b []byte, p int) (count int, elems span, err error) {
	end, err := skip10(b, p, 0)
	if err != nil {
		return 0, span{}, err
	}
	switch b[p] {
	case t10List0:
		return 0, span{end, end}, nil
	case t10List8, t10Map8:
		if end-p < 3 {
			return 0, span{}, errBadMessage
		}
		return int(b[p+2]), span{p + 3, end}, nil
	case t10List32, t10Map32:
		if end-p < 9 {
			return 0, span{}, errBadMessage
		}
		return int(binary.BigEndian.Uint32(b[p+5:])), span{p + 9, end}, nil
	}
	return 0, span{}, errBadMessage
}

// forList calls f with each element of the list at p.
func forList(b []byte, p int, f func(int, span) error) error {
	count, el, err := compound(b, p)
	if err != nil || isMap(b[p]) {
		return errBadMessage
	}
	q := el.start
	for i := 0; i < count; i++ {
		if q >= el.end {
			return errBadMessage
		}
		e, err := skip10(b[:el.end], q, 0)
		if err != nil {
			return err
		}
		if err := f(i, span{q, e}); err != nil {
			return err
		}
		q = e
	}
	if q != el.end {
		return errBadMessage
	}
	return nil
}

// forMap calls f with each key and value of the map at p.
func forMap(b []byte, p int, f func(k, v span) error) error {
	if p >= len(b) || !isMap(b[p]) {
		return errBadMessage
	}
	count, el, err := compound(b, p)
	if err != nil || count%2 != 0 {
		return errBadMessage
	}
	q := el.start
	for i := 0; i < count; i += 2 {
		if q >= el.end {
			return errBadMessage
		}
		k, err := skip10(b[:el.end], q, 0)
		if err != nil || k >= el.end {
			return errBadMessage
		}
		v, err := skip10(b[:el.end], k, 0)
		if err != nil {
			return err
		}
		if err := f(span{q, k}, span{k, v}); err != nil {
			return err
		}
		q = v
	}
	if q != el.end {
		return errBadMessage
	}
	return nil
}

// stringValue returns a string, symbol or binary value's bytes.
func stringValue(b []byte, s span) ([]byte, bool) {
	switch b[s.start] {
	case t10Str8, t10Sym8, t10Vbin8:
		return b[s.start+2 : s.end], true
	case t10Str32, t10Sym32, t10Vbin32:
		return b[s.start+5 : s.end], true
	}
	return nil, false
}

func binaryValue(b []byte, s span) ([]byte, bool) {
	if c := b[s.start]; c != t10Vbin8 && c != t10Vbin32 {
		return nil, false
	}
	return stringValue(b, s)
}

// idValue returns a message-id-like property as a 0-9-1 string: strings, symbols and binary
// as they are, a ulong in decimal, a uuid as RabbitMQ 3.13 writes it (urn:uuid:...).
func idValue(b []byte, s span) ([]byte, bool) {
	if v, ok := stringValue(b, s); ok {
		return v, true
	}
	if b[s.start] == t10UUID {
		u := b[s.start+1 : s.end]
		return fmt.Appendf(nil, "urn:uuid:%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), true
	}
	if d, ok := uintValue(b, s); ok {
		return strconv.AppendUint(nil, d, 10), true
	}
	return nil, false
}

func boolValue(b []byte, s span) (v, ok bool) {
	switch b[s.start] {
	case t10True:
		return true, true
	case t10False:
		return false, true
	case t10Boolean:
		return b[s.start+1] != 0, true
	}
	return false, false
}

// uintValue returns an unsigned integer value (ubyte, ushort, uint, ulong in any encoding).
func uintValue(b []byte, s span) (uint64, bool) {
	v := b[s.start+1 : s.end]
	switch b[s.start] {
	case t10Uint0, t10Ulong0:
		return 0, true
	case t10Ubyte, t10SmallUint, t10SmallUlng:
		return uint64(v[0]), true
	case t10Ushort:
		return uint64(binary.BigEndian.Uint16(v)), true
	case t10Uint:
		return uint64(binary.BigEndian.Uint32(v)), true
	case t10Ulong:
		return binary.BigEndian.Uint64(v), true
	}
	return 0, false
}

// appendTable091 appends the entries of the AMQP 1.0 map at s as 0-9-1 field table entries
// (without the length prefix). skipOffset leaves out an x-stream-offset entry (the delivery's
// own replaces it). Entries whose key or value 0-9-1 cannot carry are left out.
func appendTable091(dst, b []byte, s span, depth int, skipOffset bool) ([]byte, error) {
	err := forMap(b, s.start, func(k, v span) error {
		key, ok := stringValue(b, k)
		if !ok || len(key) > 0xff || (skipOffset && string(key) == StreamOffsetHeader) {
			return nil
		}
		at := len(dst)
		dst = append(dst, byte(len(key)))
		dst = append(dst, key...)
		var err error
		if dst, ok, err = appendField091(dst, b, v, depth); err != nil {
			return err
		}
		if !ok {
			dst = dst[:at]
		}
		return nil
	})
	return dst, err
}

// appendField091 appends the AMQP 1.0 value at s as a 0-9-1 field value; ok is false (and
// nothing appended) for a value 0-9-1 has no type for.
func appendField091(dst, b []byte, s span, depth int) (_ []byte, ok bool, err error) {
	if depth > maxNesting {
		return dst, false, errBadMessage
	}
	c := b[s.start]
	if c == t10Described {
		// Warren's only described value: a timestamp in seconds beyond the millisecond range.
		d, err := skip10(b, s.start+1, 0)
		if err != nil {
			return dst, false, err
		}
		if name, ok := stringValue(b, span{s.start + 1, d}); ok && b[s.start+1] == t10Sym8 && string(name) == descTimestampSeconds {
			if u, ok := uintValue(b, span{d, s.end}); ok {
				return binary.BigEndian.AppendUint64(append(dst, 'T'), u), true, nil
			}
		}
		return dst, false, nil
	}
	return appendWith091(dst, b, s.start+1, s.end, c, depth)
}

// appendWith091 converts a value of constructor c whose bytes are b[p:end].
func appendWith091(dst, b []byte, p, end int, c byte, depth int) ([]byte, bool, error) {
	v := b[p:end]
	switch c {
	case t10Null:
		return append(dst, 'V'), true, nil
	case t10True:
		return append(dst, 't', 1), true, nil
	case t10False:
		return append(dst, 't', 0), true, nil
	case t10Boolean:
		return append(dst, 't', min(v[0], 1)), true, nil
	case t10Ubyte:
		return append(dst, 'B', v[0]), true, nil
	case t10Byte:
		return append(dst, 'b', v[0]), true, nil
	case t10Ushort:
		return append(append(dst, 'u'), v...), true, nil
	case t10Short:
		return append(append(dst, 's'), v...), true, nil
	case t10Uint:
		return append(append(dst, 'i'), v...), true, nil
	case t10SmallUint:
		return binary.BigEndian.AppendUint32(append(dst, 'i'), uint32(v[0])), true, nil
	case t10Uint0:
		return binary.BigEndian.AppendUint32(append(dst, 'i'), 0), true, nil
	case t10Int:
		return append(append(dst, 'I'), v...), true, nil
	case t10SmallInt:
		return binary.BigEndian.AppendUint32(append(dst, 'I'), uint32(int32(int8(v[0])))), true, nil
	case t10Long, t10Ulong: // a ulong as a long, as RabbitMQ does
		return append(append(dst, 'l'), v...), true, nil
	case t10SmallLong:
		return binary.BigEndian.AppendUint64(append(dst, 'l'), uint64(int64(int8(v[0])))), true, nil
	case t10SmallUlng:
		return binary.BigEndian.AppendUint64(append(dst, 'l'), uint64(v[0])), true, nil
	case t10Ulong0:
		return binary.BigEndian.AppendUint64(append(dst, 'l'), 0), true, nil
	case t10Float:
		return append(append(dst, 'f'), v...), true, nil
	case t10Double:
		return append(append(dst, 'd'), v...), true, nil
	case t10Timestamp:
		return binary.BigEndian.AppendUint64(append(dst, 'T'), uint64(int64(binary.BigEndian.Uint64(v))/1000)), true, nil
	case t10Dec64:
		scale, d, ok := fromDecimal64(binary.BigEndian.Uint64(v))
		if !ok {
			return dst, false, nil
		}
		return binary.BigEndian.AppendUint32(append(dst, 'D', scale), uint32(d)), true, nil
	case t10Str8, t10Sym8, t10Str32, t10Sym32:
		return append(binary.BigEndian.AppendUint32(append(dst, 'S'), uint32(len(v)-lenPrefix(c))), v[lenPrefix(c):]...), true, nil
	case t10Vbin8, t10Vbin32:
		return append(binary.BigEndian.AppendUint32(append(dst, 'x'), uint32(len(v)-lenPrefix(c))), v[lenPrefix(c):]...), true, nil
	case t10Map8, t10Map32:
		dst = append(dst, 'F', 0, 0, 0, 0)
		at := len(dst)
		var err error
		if dst, err = appendTable091(dst, b, span{p - 1, end}, depth+1, false); err != nil {
			return dst, false, err
		}
		binary.BigEndian.PutUint32(dst[at-4:], uint32(len(dst)-at))
		return dst, true, nil
	case t10List0, t10List8, t10List32:
		dst = append(dst, 'A', 0, 0, 0, 0)
		at := len(dst)
		limit := maxHeader091(len(b))
		err := forList(b, p-1, func(_ int, s span) error {
			if len(dst) > limit {
				return errBadMessage
			}
			var err error
			dst, _, err = appendField091(dst, b, s, depth+1)
			return err
		})
		if err != nil {
			return dst, false, err
		}
		binary.BigEndian.PutUint32(dst[at-4:], uint32(len(dst)-at))
		return dst, true, nil
	case t10Array8, t10Array32:
		// size, count, one element constructor, then the elements without constructors.
		hl := lenPrefix(c)
		if len(v) < 2*hl+1 {
			return dst, false, errBadMessage
		}
		count := int(v[hl])
		if hl == 4 {
			count = int(binary.BigEndian.Uint32(v[4:]))
		}
		q := p + 2*hl
		ec := b[q]
		q++
		if ec == t10Described || fixedWidth(ec) < 0 && ec>>4 >= 0xc {
			// Described or compound elements (which have no constructor of their own here):
			// left out, as RabbitMQ's readers have no 0-9-1 mapping for them either.
			return dst, false, nil
		}
		if fixedWidth(ec) == 0 && count > 1<<16 {
			return dst, false, errBadMessage // a hostile count of zero-width elements
		}
		dst = append(dst, 'A', 0, 0, 0, 0)
		at := len(dst)
		limit := maxHeader091(len(b))
		for i := 0; i < count; i++ {
			if len(dst) > limit {
				// Zero-width elements (null, uint0, list0...) cost no input bytes: without a
				// budget shared by the whole record, lists of such arrays turn kilobytes into
				// gigabytes (and wrap the uint32 lengths).
				return dst, false, errBadMessage
			}
			e, err := skipWith(b[:end], q, ec)
			if err != nil {
				return dst, false, err
			}
			if dst, _, err = appendWith091(dst, b, q, e, ec, depth+1); err != nil {
				return dst, false, err
			}
			q = e
		}
		if q != end {
			return dst, false, errBadMessage
		}
		binary.BigEndian.PutUint32(dst[at-4:], uint32(len(dst)-at))
		return dst, true, nil
	}
	return dst, false, nil // char, uuid, decimal32/128: no 0-9-1 type
}

// maxHeader091 bounds the 0-9-1 content header DecodeAMQP091 makes of a record of recLen
// bytes. Outside arrays no AMQP 1.0 value of n bytes becomes more than 9n bytes (ulong0 in a
// list: 1 byte, 'l' and 8); arrays of zero-width elements are the only unbounded expansion,
// and the decoder checks this budget, shared by the whole record, while it expands them. The
// constant leaves room for legitimate small arrays of such elements; the cap keeps the
// uint32 table lengths from wrapping.
func maxHeader091(recLen int) int {
	return int(min(16*int64(recLen)+1<<16, math.MaxInt32)) // int64: no overflow where int is 32 bits
}

// lenPrefix is the width of a variable or compound type's size prefix.
func lenPrefix(c byte) int {
	if c>>4 == 0xa || c>>4 == 0xc || c>>4 == 0xe {
		return 1
	}
	return 4
}
