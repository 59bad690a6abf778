package amqp

import (
	"time"
)

// Property flags of the basic class, as set in a content header's flags
// word (bit 15 is the first property). Bit 0 would announce a second flags
// word, which basic never needs.
const (
	FlagContentType     = 1 << 15
	FlagContentEncoding = 1 << 14
	FlagHeaders         = 1 << 13
	FlagDeliveryMode    = 1 << 12
	FlagPriority        = 1 << 11
	FlagCorrelationID   = 1 << 10
	FlagReplyTo         = 1 << 9
	FlagExpiration      = 1 << 8
	FlagMessageID       = 1 << 7
	FlagTimestamp       = 1 << 6
	FlagType            = 1 << 5
	FlagUserID          = 1 << 4
	FlagAppID           = 1 << 3
	FlagClusterID       = 1 << 2

	flagsUnknown = 1<<1 | 1<<0
)

// Properties are the 14 basic content properties. On encode a property is
// present when it is non-zero (Headers: non-nil), as in amqp091-go.
type Properties struct {
	ContentType     string
	ContentEncoding string
	Headers         Table
	DeliveryMode    uint8 // 1 transient, 2 persistent
	Priority        uint8
	CorrelationID   string
	ReplyTo         string
	Expiration      string // per-message TTL in milliseconds, as a decimal string
	MessageID       string
	Timestamp       time.Time
	Type            string
	UserID          string
	AppID           string
	ClusterID       string // "reserved" in RabbitMQ's spec XML
}

// ContentHeader is a decoded content-header frame payload.
type ContentHeader struct {
	ClassID  uint16
	BodySize uint64
	Flags    uint16 // property flags as on the wire
	Props    Properties
}

// HeaderSummary is the hot-path view of a content header: what routing,
// TTL, priority, persistence and the user-id check need, with no maps and
// no string allocations except Expiration and UserID when present.
type HeaderSummary struct {
	ClassID      uint16
	DeliveryMode uint8
	Priority     uint8
	// HasUserID tells a present but empty user-id from an absent one. (The small fields come
	// first: the summary is copied per publish and packs into 72 bytes this way.)
	HasUserID  bool
	BodySize   uint64
	Expiration string // raw expiration property ("" if absent)
	HeadersRaw []byte // the headers table incl. its length prefix (aliases the payload), nil if absent
	// UserID is the user-id property ("" if absent), which a broker must
	// compare with the authenticated user on every publish that sets it.
	UserID string
}

func headerError(payload []byte) *Error {
	// The class and method are left zero: a content header is not a method.
	return &Error{Code: FrameError, Text: "FRAME_ERROR - cannot decode content header " + erlBinary(payload, 32)}
}

// DecodeContentHeader decodes a content header frame payload with all its
// properties. Malformed input (truncated, bytes after the last property,
// unknown property flags, a bad headers table) is an *Error with Code
// FrameError. RabbitMQ 3.10 rejects the same headers but with a crash of
// its channel process that reaches the client as 541 INTERNAL_ERROR; a
// frame error says what happened. The class id is not checked here: the
// server compares it with the method's (505 UNEXPECTED_FRAME in RabbitMQ).
func DecodeContentHeader(payload []byte) (ContentHeader, error) {
	r := reader{b: payload}
	var h ContentHeader
	h.ClassID = r.u16()
	r.u16() // weight, always 0
	h.BodySize = r.u64()
	h.Flags = r.u16()
	if r.bad || h.Flags&flagsUnknown != 0 {
		return ContentHeader{}, headerError(payload)
	}
	f, p := h.Flags, &h.Props
	if f&FlagContentType != 0 {
		p.ContentType = r.shortstr()
	}
	if f&FlagContentEncoding != 0 {
		p.ContentEncoding = r.shortstr()
	}
	if f&FlagHeaders != 0 {
		p.Headers = r.table()
	}
	if f&FlagDeliveryMode != 0 {
		p.DeliveryMode = r.u8()
	}
	if f&FlagPriority != 0 {
		p.Priority = r.u8()
	}
	if f&FlagCorrelationID != 0 {
		p.CorrelationID = r.shortstr()
	}
	if f&FlagReplyTo != 0 {
		p.ReplyTo = r.shortstr()
	}
	if f&FlagExpiration != 0 {
		p.Expiration = r.shortstr()
	}
	if f&FlagMessageID != 0 {
		p.MessageID = r.shortstr()
	}
	if f&FlagTimestamp != 0 {
		p.Timestamp = r.timestamp()
	}
	if f&FlagType != 0 {
		p.Type = r.shortstr()
	}
	if f&FlagUserID != 0 {
		p.UserID = r.shortstr()
	}
	if f&FlagAppID != 0 {
		p.AppID = r.shortstr()
	}
	if f&FlagClusterID != 0 {
		p.ClusterID = r.shortstr()
	}
	if r.bad || r.off != len(r.b) {
		return ContentHeader{}, headerError(payload)
	}
	return h, nil
}

// skipShortstr advances over a short string without allocating it.
func (r *reader) skipShortstr() {
	n := r.u8()
	if !r.bad {
		r.bytes(uint64(n))
	}
}

// ScanContentHeader validates a whole content header payload exactly as
// DecodeContentHeader does (the headers table included) and returns the
// summary, without building the headers table or any string but
// Expiration and UserID. It does not allocate when neither is present.
func ScanContentHeader(payload []byte) (HeaderSummary, error) {
	r := reader{b: payload}
	var s HeaderSummary
	s.ClassID = r.u16()
	r.u16()
	s.BodySize = r.u64()
	f := r.u16()
	if r.bad || f&flagsUnknown != 0 {
		return HeaderSummary{}, headerError(payload)
	}
	if f&FlagContentType != 0 {
		r.skipShortstr()
	}
	if f&FlagContentEncoding != 0 {
		r.skipShortstr()
	}
	if f&FlagHeaders != 0 && !r.bad {
		n, err := validateTable(r.b[r.off:], 0)
		if err != nil {
			return HeaderSummary{}, headerError(payload)
		}
		s.HeadersRaw = r.b[r.off : r.off+n : r.off+n]
		r.off += n
	}
	if f&FlagDeliveryMode != 0 {
		s.DeliveryMode = r.u8()
	}
	if f&FlagPriority != 0 {
		s.Priority = r.u8()
	}
	if f&FlagCorrelationID != 0 {
		r.skipShortstr()
	}
	if f&FlagReplyTo != 0 {
		r.skipShortstr()
	}
	if f&FlagExpiration != 0 {
		s.Expiration = r.shortstr()
	}
	if f&FlagMessageID != 0 {
		r.skipShortstr()
	}
	if f&FlagTimestamp != 0 {
		r.u64()
	}
	if f&FlagType != 0 {
		r.skipShortstr()
	}
	if f&FlagUserID != 0 {
		s.UserID, s.HasUserID = r.shortstr(), true
	}
	if f&FlagAppID != 0 {
		r.skipShortstr()
	}
	if f&FlagClusterID != 0 {
		r.skipShortstr()
	}
	if r.bad || r.off != len(r.b) {
		return HeaderSummary{}, headerError(payload)
	}
	return s, nil
}

// validateTable checks a field table the way decodeTable parses it,
// without building anything, and returns its encoded size.
func validateTable(b []byte, depth int) (int, error) {
	if depth > maxTableDepth || len(b) < 4 {
		return 0, errBadTable
	}
	size := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	if uint64(size) > uint64(len(b)-4) {
		return 0, errBadTable
	}
	end := 4 + int(size)
	r := reader{b: b[:end], off: 4}
	for r.off < end {
		r.skipShortstr()
		if r.bad || !validateField(&r, depth) {
			return 0, errBadTable
		}
	}
	return end, nil
}

var errBadTable = Errorf(FrameError, "malformed field table")

func validateField(r *reader, depth int) bool {
	typ := r.u8()
	switch typ {
	case 't', 'b', 'B':
		r.u8()
	case 's', 'u':
		r.u16()
	case 'I', 'i', 'f':
		r.u32()
	case 'l', 'L', 'd', 'T':
		r.u64()
	case 'D':
		r.u8()
		r.u32()
	case 'S', 'x':
		n := r.u32()
		if !r.bad {
			r.bytes(uint64(n))
		}
	case 'A':
		if depth+1 > maxTableDepth {
			return false
		}
		n := r.u32()
		body := r.bytes(uint64(n))
		if r.bad {
			return false
		}
		ar := reader{b: body}
		for ar.off < len(body) {
			if !validateField(&ar, depth+1) {
				return false
			}
		}
	case 'F':
		if r.bad {
			return false
		}
		n, err := validateTable(r.b[r.off:], depth+1)
		if err != nil {
			return false
		}
		r.off += n
	case 'V':
	default:
		return false
	}
	return !r.bad
}

// AppendContentHeader appends a content header frame payload (not the
// frame around it) for a content of bodySize bytes with properties p. A
// property is written when non-zero; Headers when non-nil. p may be nil.
func AppendContentHeader(dst []byte, classID uint16, bodySize uint64, p *Properties) []byte {
	dst = appendU16(dst, classID)
	dst = append(dst, 0, 0)
	dst = appendU64(dst, bodySize)
	if p == nil {
		return append(dst, 0, 0)
	}
	var f uint16
	if p.ContentType != "" {
		f |= FlagContentType
	}
	if p.ContentEncoding != "" {
		f |= FlagContentEncoding
	}
	if p.Headers != nil {
		f |= FlagHeaders
	}
	if p.DeliveryMode != 0 {
		f |= FlagDeliveryMode
	}
	if p.Priority != 0 {
		f |= FlagPriority
	}
	if p.CorrelationID != "" {
		f |= FlagCorrelationID
	}
	if p.ReplyTo != "" {
		f |= FlagReplyTo
	}
	if p.Expiration != "" {
		f |= FlagExpiration
	}
	if p.MessageID != "" {
		f |= FlagMessageID
	}
	if !p.Timestamp.IsZero() {
		f |= FlagTimestamp
	}
	if p.Type != "" {
		f |= FlagType
	}
	if p.UserID != "" {
		f |= FlagUserID
	}
	if p.AppID != "" {
		f |= FlagAppID
	}
	if p.ClusterID != "" {
		f |= FlagClusterID
	}
	dst = appendU16(dst, f)
	if f&FlagContentType != 0 {
		dst = appendShortstr(dst, p.ContentType)
	}
	if f&FlagContentEncoding != 0 {
		dst = appendShortstr(dst, p.ContentEncoding)
	}
	if f&FlagHeaders != 0 {
		dst = appendTableLax(dst, p.Headers)
	}
	if f&FlagDeliveryMode != 0 {
		dst = append(dst, p.DeliveryMode)
	}
	if f&FlagPriority != 0 {
		dst = append(dst, p.Priority)
	}
	if f&FlagCorrelationID != 0 {
		dst = appendShortstr(dst, p.CorrelationID)
	}
	if f&FlagReplyTo != 0 {
		dst = appendShortstr(dst, p.ReplyTo)
	}
	if f&FlagExpiration != 0 {
		dst = appendShortstr(dst, p.Expiration)
	}
	if f&FlagMessageID != 0 {
		dst = appendShortstr(dst, p.MessageID)
	}
	if f&FlagTimestamp != 0 {
		dst = appendTimestamp(dst, p.Timestamp)
	}
	if f&FlagType != 0 {
		dst = appendShortstr(dst, p.Type)
	}
	if f&FlagUserID != 0 {
		dst = appendShortstr(dst, p.UserID)
	}
	if f&FlagAppID != 0 {
		dst = appendShortstr(dst, p.AppID)
	}
	if f&FlagClusterID != 0 {
		dst = appendShortstr(dst, p.ClusterID)
	}
	return dst
}
