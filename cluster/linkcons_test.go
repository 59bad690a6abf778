package cluster

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// TestProxyAssemblesMessages checks the read loop's assembly of header and body, in turn for
// bodies empty, in one frame and over several, on one channel: each result keeps its own
// header and body (the header's buffer is reused for the next message).
func TestProxyAssemblesMessages(t *testing.T) {
	lc := newTestLinkChan(1)
	lc.getResults = make(chan getResult, 1)
	_, home := testProxyConn(t, lc)
	go func() { _, _ = io.Copy(io.Discard, home) }()
	tests := []struct {
		name     string
		size     int
		frameMax int
	}{
		{"empty", 0, 100},
		{"one frame", 1000, 4096},
		{"one frame exactly", 100, 100},
		{"several frames", 1000, 100},
		{"several frames, last short", 1001, 100},
	}
	var got []getResult
	var want [][]byte
	for i, tt := range tests {
		body := bytes.Repeat([]byte{byte('a' + i)}, tt.size)
		b := amqp.AppendMethodFrame(nil, 1, &amqp.BasicGetOk{DeliveryTag: uint64(i + 1), RoutingKey: tt.name})
		frames := contentFrames(1, uint64(tt.size), body, tt.frameMax)
		// Each header differs (its weight field), so a header overwritten by the next shows.
		frames[7+2], frames[7+3] = byte(i), byte(i)
		b = append(b, frames...)
		if _, err := home.Write(b); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-lc.getResults:
			got = append(got, r)
			want = append(want, body)
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no get result", tt.name)
		}
	}
	for i, r := range got {
		tt := tests[i]
		if !r.ok || r.d.Tag != uint64(i+1) || r.d.RoutingKey != tt.name {
			t.Errorf("%s: got ok %v tag %d key %q", tt.name, r.ok, r.d.Tag, r.d.RoutingKey)
		}
		if len(r.d.Header) != 14 || r.d.Header[2] != byte(i) || r.d.Header[3] != byte(i) || cap(r.d.Header) != 14 {
			t.Errorf("%s: header %x (cap %d)", tt.name, r.d.Header, cap(r.d.Header))
		}
		if !bytes.Equal(r.d.Body, want[i]) {
			t.Errorf("%s: body of %d bytes, want %d", tt.name, len(r.d.Body), len(want[i]))
		}
	}
}

// copySink is a ProxySink that keeps copies of what it is handed (the header and body are
// valid only during Deliver) on a channel.
type copySink chan broker.ProxyDelivery

func (s copySink) Deliver(d broker.ProxyDelivery) bool {
	d.Header, d.Body = bytes.Clone(d.Header), bytes.Clone(d.Body)
	s <- d
	return true
}

func (copySink) Ended(*amqp.Error) {}

// TestProxyDeliversToSink is TestProxyAssemblesMessages for a consumer's deliveries, which
// are handed to the sink from the read buffer (a body in one frame) or the assembly buffer:
// each must be whole while Deliver runs.
func TestProxyDeliversToSink(t *testing.T) {
	lc := newTestLinkChan(1)
	sink := make(copySink, 1)
	lc.sink, lc.started = sink, make(chan struct{})
	lc.release() // as Start does
	_, home := testProxyConn(t, lc)
	go func() { _, _ = io.Copy(io.Discard, home) }()
	for i, tt := range []struct {
		name     string
		size     int
		frameMax int
	}{
		{"empty", 0, 100},
		{"one frame", 1000, 4096},
		{"one frame exactly", 100, 100},
		{"several frames", 1000, 100},
		{"several frames, last short", 1001, 100},
		{"one frame again", 1000, 4096},
	} {
		body := bytes.Repeat([]byte{byte('a' + i)}, tt.size)
		b := amqp.AppendMethodFrame(nil, 1, &amqp.BasicDeliver{ConsumerTag: "c", DeliveryTag: uint64(i + 1), Exchange: "x", RoutingKey: tt.name})
		frames := contentFrames(1, uint64(tt.size), body, tt.frameMax)
		frames[7+2], frames[7+3] = byte(i), byte(i)
		b = append(b, frames...)
		if _, err := home.Write(b); err != nil {
			t.Fatal(err)
		}
		select {
		case d := <-sink:
			if d.Tag != uint64(i+1) || d.Exchange != "x" || d.RoutingKey != tt.name {
				t.Errorf("%s: tag %d exchange %q key %q", tt.name, d.Tag, d.Exchange, d.RoutingKey)
			}
			if len(d.Header) != 14 || d.Header[2] != byte(i) || d.Header[3] != byte(i) {
				t.Errorf("%s: header %x", tt.name, d.Header)
			}
			if !bytes.Equal(d.Body, body) {
				t.Errorf("%s: body of %d bytes, want %d", tt.name, len(d.Body), len(body))
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no delivery", tt.name)
		}
	}
}
