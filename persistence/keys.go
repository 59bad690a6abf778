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
	pfxIndex    = 'i'
	pfxPurge    = 'p' // pending purge marker: the queue's index entries are being deleted
)

var (
	keyFormat = []byte{pfxMeta, 'f'} // format version (uint32 BE)
	keyMaxID  = []byte{pfxMeta, 'h'} // message-id high-water mark (uint64 BE)
)

// formatVersion is written at creation; Open refuses other versions.
const formatVersion uint32 = 1

// indexValueLen is the size of an index entry value: msgID (8) + delivery count (4).
const indexValueLen = 12

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
	return appendBytes([]byte{f}, r.Args)
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
	return r, d.err
}

// messageVersion leads every stored message so the encoding can evolve.
const messageVersion = 1

func encodeMessage(m *Message) []byte {
	v := make([]byte, 0, 1+len(m.Exchange)+len(m.RoutingKey)+len(m.Header)+len(m.Body)+12)
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

func encodeIndexValue(msgID uint64, count uint32) []byte {
	v := make([]byte, indexValueLen)
	binary.BigEndian.PutUint64(v, msgID)
	binary.BigEndian.PutUint32(v[8:], count)
	return v
}

func decodeIndexValue(v []byte) (msgID uint64, count uint32, err error) {
	if len(v) != indexValueLen {
		return 0, 0, fmt.Errorf("index value of %d bytes: %w", len(v), errCorrupt)
	}
	return binary.BigEndian.Uint64(v), binary.BigEndian.Uint32(v[8:]), nil
}
