package persistence

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Key prefixes. Every key starts with one of these bytes; see doc.go for the layout.
const (
	pfxMeta     = 0x00 // store metadata (format version, message-id high-water mark)
	pfxExchange = 'x'
	pfxQueue    = 'q'
	pfxBinding  = 'b'
	pfxMessage  = 'm'
	pfxRef      = 'r' // reference count of a message held by more than one queue
	pfxIndex    = 'i'
	pfxPurge    = 'p'  // pending purge marker: the queue's index entries are being deleted
	pfxPage     = 't'  // transient pages, wiped at Open
	pfxUnused   = 0xff // no key starts with it (see compactIfDrained)
)

var (
	keyFormat = []byte{pfxMeta, 'f'} // format version (uint32 BE)
	keyMaxID  = []byte{pfxMeta, 'h'} // message-id high-water mark (uint64 BE)
	// keyRunning is set while the store is open and deleted by a clean Close: found at Open,
	// it says the previous run stopped without one (see Store.UncleanStop).
	keyRunning = []byte{pfxMeta, 'r'}
	// keyRecovered holds the highest message id that was stored when an Open found
	// keyRunning (uint64 BE): those messages may have been delivered without their delivery
	// marks reaching the disk (see Stored.MaybeDelivered).
	keyRecovered = []byte{pfxMeta, 'u'}
)

// formatVersion is written at creation; Open migrates version 1 stores (refcounts kept only
// in memory, 12-byte index values) and refuses others.
const (
	formatVersion   uint32 = 2
	formatVersionV1 uint32 = 1
)

// Index entry values: msgID (8) deliveries (4) expiresAt (8) body size (4) flags (1).
// Format 1 wrote only msgID and deliveries.
const (
	indexValueLen   = 25
	indexValueLenV1 = 12
)

// Index value flags.
const (
	// idxShared: the message is referenced by several index entries and has a refcount
	// record; without it the entry is the message's only reference.
	idxShared = 1 << iota
	// idxExpiryUnknown: migrated from format 1, which did not store the expiry.
	idxExpiryUnknown
)

// errCorrupt marks decode failures of stored records.
var errCorrupt = errors.New("corrupt record")

// appendStr appends a uvarint length-prefixed string; the prefix makes keys built from
// several strings prefix-free, so a prefix scan of one queue never matches another.
func appendStr(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendBytes(dst []byte, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// decoder reads the length-prefixed fields written by appendStr/appendBytes.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) bytes() []byte {
	if d.err != nil {
		return nil
	}
	n, k := binary.Uvarint(d.b)
	if k <= 0 || n > uint64(len(d.b)-k) {
		d.err = errCorrupt
		return nil
	}
	v := d.b[k : k+int(n)]
	d.b = d.b[k+int(n):]
	return v
}

func (d *decoder) str() string { return string(d.bytes()) }

func (d *decoder) byte1() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.err = errCorrupt
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

// cloneBytes keeps nil as nil so round trips compare equal.
func cloneBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// queueKey is the prefix-free identity of a queue: str(vhost) str(name).
func queueKey(dst []byte, vhost, name string) []byte {
	return appendStr(appendStr(dst, vhost), name)
}

func exchangeRecKey(vhost, name string) []byte {
	return queueKey([]byte{pfxExchange}, vhost, name)
}

func queueRecKey(vhost, name string) []byte {
	return queueKey([]byte{pfxQueue}, vhost, name)
}

func purgeKey(q QueueRef) []byte {
	return queueKey([]byte{pfxPurge}, q.VHost, q.Queue)
}

func indexPrefix(q QueueRef) []byte {
	return queueKey([]byte{pfxIndex}, q.VHost, q.Queue)
}

func indexKey(q QueueRef, seq uint64) []byte {
	k := indexPrefix(q)
	return binary.BigEndian.AppendUint64(k, seq)
}

func messageKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{pfxMessage}, id)
}

func refKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{pfxRef}, id)
}

func pagePrefix(space uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{pfxPage}, space)
}

func pageKey(space, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(pagePrefix(space), seq)
}

func bindingVHostPrefix(vhost string) []byte {
	return appendStr([]byte{pfxBinding}, vhost)
}

// bindingKey encodes the whole identity of a binding, so identical bindings collapse and
// DeleteBinding needs no scan.
func bindingKey(r BindingRecord) []byte {
	k := appendStr(bindingVHostPrefix(r.VHost), r.Source)
	k = appendStr(k, r.Destination)
	if r.ToExchange {
		k = append(k, 1)
	} else {
		k = append(k, 0)
	}
	k = appendStr(k, r.Key)
	return appendBytes(k, r.Args)
}

func decodeBindingKey(k []byte) (BindingRecord, error) {
	if len(k) == 0 || k[0] != pfxBinding {
		return BindingRecord{}, errCorrupt
	}
	d := decoder{b: k[1:]}
	var r BindingRecord
	r.VHost = d.str()
	r.Source = d.str()
	r.Destination = d.str()
	r.ToExchange = d.byte1() == 1
	r.Key = d.str()
	r.Args = cloneBytes(d.bytes())
	if d.err == nil && len(d.b) != 0 {
		d.err = errCorrupt
	}
	return r, d.err
}

// decodeQueueKey decodes str(vhost) str(name) after a one-byte prefix and returns the rest.
func decodeQueueKey(k []byte) (vhost, name string, rest []byte, err error) {
	if len(k) == 0 {
		return "", "", nil, errCorrupt
	}
	d := decoder{b: k[1:]}
	vhost = d.str()
	name = d.str()
	return vhost, name, d.b, d.err
}

const (
	flagDurable = 1 << iota
	flagAutoDelete
	flagInternal
)

func encodeExchange(r ExchangeRecord) []byte {
	var f byte
	if r.Durable {
		f |= flagDurable
	}
	if r.AutoDelete {
		f |= flagAutoDelete
	}
	if r.Internal {
		f |= flagInternal
	}
	v := appendStr(nil, r.Kind)
	v = append(v, f)
	return appendBytes(v, r.Args)
}

func decodeExchange(k, v []byte) (ExchangeRecord, error) {
	vhost, name, rest, err := decodeQueueKey(k)
	if err != nil || len(rest) != 0 {
		return ExchangeRecord{}, errCorrupt
	}
	d := decoder{b: v}
	r := ExchangeRecord{VHost: vhost, Name: name}
	r.Kind = d.str()
	f := d.byte1()
	r.Durable = f&flagDurable != 0
	r.AutoDelete = f&flagAutoDelete != 0
	r.Internal = f&flagInternal != 0
	r.Args = cloneBytes(d.bytes())
	return r, d.err
}

func encodeQueue(r QueueRecord) []byte {
	var f byte
	if r.AutoDelete {
		f |= flagAutoDelete
	}
	v := appendBytes([]byte{f}, r.Args)
	if r.Epoch != 0 {
		// Optional trailing field: records written before it existed decode with epoch 0.
		v = binary.AppendUvarint(v, r.Epoch)
	}
	return v
}

func decodeQueue(k, v []byte) (QueueRecord, error) {
	vhost, name, rest, err := decodeQueueKey(k)
	if err != nil || len(rest) != 0 {
		return QueueRecord{}, errCorrupt
	}
	d := decoder{b: v}
	r := QueueRecord{VHost: vhost, Name: name}
	r.AutoDelete = d.byte1()&flagAutoDelete != 0
	r.Args = cloneBytes(d.bytes())
	if d.err == nil && len(d.b) > 0 {
		n, k := binary.Uvarint(d.b)
		if k <= 0 || k != len(d.b) {
			return QueueRecord{}, errCorrupt
		}
		r.Epoch = n
	}
	return r, d.err
}

// messageVersion leads every stored message so the encoding can evolve.
const messageVersion = 1

func encodeMessage(m *Message) []byte {
	return appendMessage(make([]byte, 0, messageLen(m)), m)
}

// messageLen bounds the encoded size of m (its length prefixes are varints).
func messageLen(m *Message) int {
	return 1 + len(m.Exchange) + len(m.RoutingKey) + len(m.Header) + len(m.Body) + 12
}

func appendMessage(v []byte, m *Message) []byte {
	v = append(v, messageVersion)
	v = appendStr(v, m.Exchange)
	v = appendStr(v, m.RoutingKey)
	v = appendBytes(v, m.Header)
	return append(v, m.Body...)
}

// decodeMessage aliases v for Header and Body; callers pass a buffer they own.
func decodeMessage(id uint64, v []byte) (*Message, error) {
	d := decoder{b: v}
	if d.byte1() != messageVersion {
		return nil, fmt.Errorf("message %d: %w (bad version)", id, errCorrupt)
	}
	m := &Message{ID: id}
	m.Exchange = d.str()
	m.RoutingKey = d.str()
	h := d.bytes()
	if d.err != nil {
		return nil, fmt.Errorf("message %d: %w", id, d.err)
	}
	if len(h) > 0 {
		m.Header = h[:len(h):len(h)]
	}
	if len(d.b) > 0 {
		m.Body = d.b
	}
	return m, nil
}

// indexValue is a decoded index entry value.
type indexValue struct {
	msgID      uint64
	deliveries uint32
	expiresAt  int64
	size       uint32 // body bytes
	flags      byte
}

func (v indexValue) shared() bool { return v.flags&idxShared != 0 }

func encodeIndexValue(v indexValue) []byte {
	b := make([]byte, indexValueLen)
	binary.BigEndian.PutUint64(b, v.msgID)
	binary.BigEndian.PutUint32(b[8:], v.deliveries)
	binary.BigEndian.PutUint64(b[12:], uint64(v.expiresAt))
	binary.BigEndian.PutUint32(b[20:], v.size)
	b[24] = v.flags
	return b
}

// decodeIndexValue decodes a format 2 value; legacy reports a format 1 value (msgID and
// deliveries only), which only Open's migration accepts.
func decodeIndexValue(b []byte) (v indexValue, legacy bool, err error) {
	switch len(b) {
	case indexValueLen:
		v.msgID = binary.BigEndian.Uint64(b)
		v.deliveries = binary.BigEndian.Uint32(b[8:])
		v.expiresAt = int64(binary.BigEndian.Uint64(b[12:]))
		v.size = binary.BigEndian.Uint32(b[20:])
		v.flags = b[24]
		return v, false, nil
	case indexValueLenV1:
		v.msgID = binary.BigEndian.Uint64(b)
		v.deliveries = binary.BigEndian.Uint32(b[8:])
		v.flags = idxExpiryUnknown
		return v, true, nil
	}
	return v, false, fmt.Errorf("index value of %d bytes: %w", len(b), errCorrupt)
}

func encodeRef(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }

func decodeRef(b []byte) (uint32, error) {
	if len(b) != 4 {
		return 0, fmt.Errorf("refcount of %d bytes: %w", len(b), errCorrupt)
	}
	return binary.BigEndian.Uint32(b), nil
}

// Page values: flags (1) expiresAt (8) msgID (8) message (as encodeMessage).
const pageFlagPersistent = 1

func encodePage(p *Page) []byte {
	b := make([]byte, 17, 17+messageLen(p.Msg))
	if p.Persistent {
		b[0] = pageFlagPersistent
	}
	binary.BigEndian.PutUint64(b[1:], uint64(p.ExpiresAt))
	binary.BigEndian.PutUint64(b[9:], p.Msg.ID)
	return appendMessage(b, p.Msg)
}

// decodePage aliases v like decodeMessage.
func decodePage(seq uint64, v []byte) (Stored, error) {
	if len(v) < 17 {
		return Stored{}, fmt.Errorf("page %d: %w", seq, errCorrupt)
	}
	m, err := decodeMessage(binary.BigEndian.Uint64(v[9:]), v[17:])
	if err != nil {
		return Stored{}, err
	}
	return Stored{Seq: seq, Msg: m, ExpiresAt: int64(binary.BigEndian.Uint64(v[1:])), Persistent: v[0]&pageFlagPersistent != 0}, nil
}

// encodeSpans is a purge marker's value: the spans still to purge; empty means all.
func encodeSpans(spans []Span) []byte {
	if len(spans) == 0 {
		return nil
	}
	b := binary.AppendUvarint(nil, uint64(len(spans)))
	for _, sp := range spans {
		b = binary.BigEndian.AppendUint64(b, sp.From)
		b = binary.BigEndian.AppendUint64(b, sp.To)
	}
	return b
}

func decodeSpans(b []byte) ([]Span, error) {
	if len(b) == 0 {
		return nil, nil
	}
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k)/16 || uint64(len(b)-k) != n*16 { // n*16 may overflow
		return nil, errCorrupt
	}
	b = b[k:]
	spans := make([]Span, n)
	for i := range spans {
		spans[i] = Span{From: binary.BigEndian.Uint64(b), To: binary.BigEndian.Uint64(b[8:])}
		b = b[16:]
	}
	return spans, nil
}
