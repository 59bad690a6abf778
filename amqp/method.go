package amqp

import "strconv"

// Method is one AMQP method: a generated struct per class and method
// (methods_gen.go). DecodeMethod returns pointers to those structs, so a
// type switch on *BasicPublish etc. dispatches them.
type Method interface {
	// ClassID is the class id on the wire (ClassBasic for basic.publish).
	ClassID() uint16
	// MethodID is the method id within the class (40 for basic.publish).
	MethodID() uint16
	// Name is the spec name, "basic.publish".
	Name() string
	// HasContent reports whether a content header and body frames follow
	// the method: basic.publish, basic.return, basic.deliver, basic.get-ok.
	HasContent() bool
	// Append appends the method frame payload: class-id, method-id, then
	// the arguments. Short strings over 255 bytes are truncated and table
	// values of unsupported types written as void; use AppendTable first
	// to validate a table built by hand.
	Append(dst []byte) []byte
}

// checkMethodIDs verifies that payload starts with the expected ids, for
// the per-struct Decode methods.
func checkMethodIDs(payload []byte, classID, methodID uint16) error {
	if len(payload) < 4 {
		return &Error{Code: FrameError, Text: "FRAME_ERROR - type 1, all octets = " + erlBinary(payload, 32) + ": unknown_frame"}
	}
	c := uint16(payload[0])<<8 | uint16(payload[1])
	m := uint16(payload[2])<<8 | uint16(payload[3])
	if c != classID || m != methodID {
		return &Error{
			Code:     CommandInvalid,
			Text:     "COMMAND_INVALID - expected method " + itoa(classID) + "." + itoa(methodID) + ", got " + itoa(c) + "." + itoa(m),
			ClassID:  c,
			MethodID: m,
		}
	}
	return nil
}

func itoa(v uint16) string { return strconv.Itoa(int(v)) }
