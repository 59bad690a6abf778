package amqp

import "encoding/binary"

// BeginMethodFrame appends the 7-byte header of a method frame on channel, with the size left
// for EndMethodFrame to fill in. Between the two, call Append on a concrete method value: unlike
// AppendMethodFrame, whose interface argument always escapes to the heap, that lets the compiler
// keep the method struct on the stack, which matters for basic.deliver on the delivery path.
func BeginMethodFrame(dst []byte, channel uint16) []byte {
	return append(dst, FrameMethod, byte(channel>>8), byte(channel), 0, 0, 0, 0)
}

// EndMethodFrame completes the method frame that BeginMethodFrame started at offset start.
func EndMethodFrame(dst []byte, start int) []byte {
	binary.BigEndian.PutUint32(dst[start+3:], uint32(len(dst)-start-7))
	return append(dst, FrameEnd)
}

// PublishScan is a basic.publish read in place: Exchange and RoutingKey alias the payload.
type PublishScan struct {
	Exchange   []byte
	RoutingKey []byte
	Mandatory  bool
	Immediate  bool
}

// ScanBasicPublish reads a basic.publish method payload (class and method ids included) without
// allocating. ok is false unless the payload is a well-formed basic.publish, exactly as
// (*BasicPublish).Decode accepts it; DecodeMethod then reports the error.
func ScanBasicPublish(payload []byte) (s PublishScan, ok bool) {
	if len(payload) < 4 || binary.BigEndian.Uint32(payload) != uint32(ClassBasic)<<16|40 {
		return s, false
	}
	r := reader{b: payload, off: 4}
	r.u16() // reserved-1 (ticket)
	s.Exchange = r.bytes(uint64(r.u8()))
	s.RoutingKey = r.bytes(uint64(r.u8()))
	bits := r.u8()
	if r.bad || r.off != len(payload) {
		return PublishScan{}, false
	}
	s.Mandatory, s.Immediate = bits&1 != 0, bits&2 != 0
	return s, true
}
