package server

import (
	"bytes"
	"testing"
)

// TestAppendConfirmFrames checks the forwarding channel's confirm frames against the ones
// writeConfirms sends a client's channel.
func TestAppendConfirmFrames(t *testing.T) {
	tests := [][]confirmOp{
		nil,
		{{tag: 1}},
		{{tag: 7, multiple: true}},
		{{tag: 3, nack: true}, {tag: 9, multiple: true}, {tag: 1 << 40, nack: true}},
	}
	for _, ops := range tests {
		ch := &channel{id: 513}
		want := ch.appendConfirms([]byte("x"), ops)
		if got := appendConfirmFrames([]byte("x"), ch.id, ops); !bytes.Equal(got, want) {
			t.Errorf("%+v:\ngot  %x\nwant %x", ops, got, want)
		}
	}
}
