package server

import (
	"bytes"
	"testing"

	"github.com/warrenmq/warren/amqp"
)

// TestAppendConfirmFrames checks the confirm frames against the general method encoder's.
func TestAppendConfirmFrames(t *testing.T) {
	tests := [][]confirmOp{
		nil,
		{{tag: 1}},
		{{tag: 7, multiple: true}},
		{{tag: 3, nack: true}, {tag: 9, multiple: true}, {tag: 1 << 40, nack: true}},
	}
	for _, ops := range tests {
		want := []byte("x")
		for _, op := range ops {
			if op.nack {
				want = amqp.AppendMethodFrame(want, 513, &amqp.BasicNack{DeliveryTag: op.tag, Multiple: op.multiple})
			} else {
				want = amqp.AppendMethodFrame(want, 513, &amqp.BasicAck{DeliveryTag: op.tag, Multiple: op.multiple})
			}
		}
		if got := appendConfirmFrames([]byte("x"), 513, ops); !bytes.Equal(got, want) {
			t.Errorf("%+v:\ngot  %x\nwant %x", ops, got, want)
		}
	}
}
