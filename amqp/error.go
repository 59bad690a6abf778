package amqp

import (
	"fmt"
	"strconv"
)

// Error is an AMQP exception, raised by the broker with channel.close
// (soft errors) or connection.close (hard errors). ClassID and MethodID name
// the method that caused it (zero when no method did).
type Error struct {
	Code     uint16
	Text     string // RabbitMQ style: "NOT_FOUND - no queue 'q' in vhost '/'"
	ClassID  uint16
	MethodID uint16
}

// Error returns the reply text with the code, so that logs show both.
func (e *Error) Error() string {
	if e.ClassID != 0 || e.MethodID != 0 {
		return "amqp " + strconv.Itoa(int(e.Code)) + ": " + e.Text +
			" (class " + strconv.Itoa(int(e.ClassID)) + ", method " + strconv.Itoa(int(e.MethodID)) + ")"
	}
	return "amqp " + strconv.Itoa(int(e.Code)) + ": " + e.Text
}

// Hard reports whether the error is a connection exception (the spec's
// hard-error class: 320, 402, 501-506, 530, 540, 541): the whole connection
// must be closed rather than just the channel.
func (e *Error) Hard() bool { return replyHard(e.Code) }

// Errorf builds an Error whose Text is "<CODE_NAME> - " followed by the
// formatted message, the shape RabbitMQ gives every reply text.
func Errorf(code uint16, format string, args ...any) *Error {
	return &Error{Code: code, Text: ReplyName(code) + " - " + fmt.Sprintf(format, args...)}
}

// ReplyName returns the spec name of a reply code in RabbitMQ's spelling
// ("NOT_FOUND" for 404), or "UNKNOWN_<code>" for a code the spec lacks.
func ReplyName(code uint16) string {
	if n := replyName(code); n != "" {
		return n
	}
	return "UNKNOWN_" + strconv.Itoa(int(code))
}

// AsError returns err as an *Error: itself when it is one, else 541 INTERNAL_ERROR with its text.
func AsError(err error) *Error {
	if ae, ok := err.(*Error); ok {
		return ae
	}
	return Errorf(InternalError, "%v", err)
}
