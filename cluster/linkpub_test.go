package cluster

import (
	"bytes"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/queue"
)

// TestConfirmQueue checks the forwarding channel's confirm bookkeeping: single and multiple
// confirms, out of order, nacks, unknown tags, and the failure of what is left when the
// connection ends.
func TestConfirmQueue(t *testing.T) {
	nack := errors.New("nack")
	type settle struct {
		tag      uint64
		multiple bool
		err      error
		want     int // callbacks run
	}
	tests := []struct {
		name    string
		pushed  int
		settles []settle
		// outcome per tag (1-based index - 1): "ack", "nack", "dead" or "" (still pending).
		want []string
	}{
		{"in order", 3, []settle{{1, false, nil, 1}, {2, false, nil, 1}, {3, false, nil, 1}}, []string{"ack", "ack", "ack"}},
		{"multiple", 4, []settle{{3, true, nil, 3}}, []string{"ack", "ack", "ack", "dead"}},
		{"out of order", 3, []settle{{2, false, nil, 1}, {1, false, nack, 1}, {3, true, nil, 1}}, []string{"nack", "ack", "ack"}},
		{"multiple after a single", 4, []settle{{3, false, nil, 1}, {4, true, nack, 3}}, []string{"nack", "nack", "ack", "nack"}},
		{"unknown and repeated tags", 2, []settle{{5, false, nil, 0}, {1, false, nil, 1}, {1, false, nil, 0}, {0, true, nil, 0}}, []string{"ack", "dead"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newConfirmQueue()
			got := make([]string, tt.pushed)
			for i := range tt.pushed {
				if err := q.push(fwdOutcome{done: func(err error) {
					switch {
					case err == nil:
						got[i] = "ack"
					case errors.Is(err, nack):
						got[i] = "nack"
					default:
						got[i] = "dead"
					}
				}}); err != nil {
					t.Fatal(err)
				}
			}
			for _, s := range tt.settles {
				if n := q.settle(s.tag, s.multiple, s.err); n != s.want {
					t.Errorf("settle(%d, %v): %d callbacks, want %d", s.tag, s.multiple, n, s.want)
				}
			}
			q.kill(errLinkClosed)
			if !slices.Equal(got, tt.want) {
				t.Errorf("outcomes %q, want %q", got, tt.want)
			}
			if err := q.push(fwdOutcome{}); !errors.Is(err, errLinkClosed) {
				t.Errorf("push after kill: %v", err)
			}
		})
	}
}

// TestConfirmQueueReusesArray checks that a window settled completely does not grow the
// queue's array forever (tags keep counting from where they were).
func TestConfirmQueueReusesArray(t *testing.T) {
	q := newConfirmQueue()
	for round := range 100 {
		for range 10 {
			_ = q.push(fwdOutcome{})
		}
		if n := q.settle(uint64(round*10+10), true, nil); n != 10 {
			t.Fatalf("round %d: settled %d", round, n)
		}
	}
	if cap(q.items) > 64 {
		t.Errorf("array grew to %d", cap(q.items))
	}
}

// TestForwardWriteFailureSettlesOnce checks that a forward whose write fails is failed exactly
// once (its done runs once, as a nack to the client), whether the failure comes before it is
// queued for a confirm or after.
func TestForwardWriteFailureSettlesOnce(t *testing.T) {
	l := NewLink(LinkConfig{Cluster: "c", Node: "n2", Secret: "0123456789abcdef", Addr: func(string) string { return "" }, Logger: quietLog()})
	defer l.Close()
	for _, full := range []bool{false, true} {
		local, remote := net.Pipe()
		_ = remote.Close() // every write fails
		c := &pubConn{node: "n1", nc: local, frameMax: pubFrameMax, confirms: newConfirmQueue(),
			slots: make(chan struct{}, forwardWindow), done: make(chan struct{})}
		if full {
			for range forwardWindow {
				c.slots <- struct{}{} // the window is full: the flush fails before queueing
			}
			c.wbuf = append(c.wbuf, "earlier forwards"...)
		}
		p := &peer{l: l, node: "n1", vhost: "/", fwd: make(chan fwdItem, 1)}
		var calls int
		var got error
		it := fwdItem{queues: []string{"q"}, msg: &queue.Message{Body: []byte("x")}, out: fwdOutcome{done: func(err error) { calls++; got = err }}}
		if next := p.send(c, it); next != nil {
			t.Errorf("full=%v: send kept a broken connection", full)
		}
		if calls != 1 || got == nil {
			t.Errorf("full=%v: done ran %d times, last error %v; want once with an error", full, calls, got)
		}
	}
}

// TestAppendForwardFrames checks the forwarding connection's frames against the encoding from
// scratch (method, content header and body frames of the whole envelope) for bodies empty,
// small, one frame exactly, and split over frames, transient and persistent.
func TestAppendForwardFrames(t *testing.T) {
	const frameMax = 64
	chunk := frameMax - amqp.FrameOverhead
	for _, size := range []int{0, 1, 20, chunk - 30, chunk, chunk + 1, 3*chunk + 5} {
		for _, persistent := range []bool{false, true} {
			msg := &queue.Message{Exchange: "ex", RoutingKey: "rk", Header: []byte{0, 60, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0},
				Body: bytes.Repeat([]byte{'b'}, size), Persistent: persistent}
			env := broker.EncodeForwardMessage(nil, 7, []string{"q1", "q2"}, msg)
			mode := uint8(1)
			if persistent {
				mode = 2
			}
			want := amqp.AppendMethodFrame(nil, pubChannelID, &amqp.BasicPublish{Exchange: broker.ForwardExchange})
			want = amqp.AppendFrame(want, amqp.FrameHeader, pubChannelID,
				amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(env)), &amqp.Properties{DeliveryMode: mode}))
			for b := env; len(b) > 0; {
				k := min(chunk, len(b))
				want = amqp.AppendFrame(want, amqp.FrameBody, pubChannelID, b[:k])
				b = b[k:]
			}
			head := *msg
			head.Body = nil
			got := appendForwardFrames([]byte("prefix"), frameMax, persistent,
				broker.EncodeForwardMessage(nil, 7, []string{"q1", "q2"}, &head), msg.Body)
			if !bytes.Equal(got, append([]byte("prefix"), want...)) {
				t.Errorf("body %d persistent %v: frames differ\ngot  %x\nwant prefix+%x", size, persistent, got, want)
			}
		}
	}
}

// TestScanConfirm checks the in-place reading of confirms against the method decoder.
func TestScanConfirm(t *testing.T) {
	tests := []amqp.Method{
		&amqp.BasicAck{DeliveryTag: 1},
		&amqp.BasicAck{DeliveryTag: 1<<63 + 5, Multiple: true},
		&amqp.BasicNack{DeliveryTag: 9},
		&amqp.BasicNack{DeliveryTag: 300, Multiple: true, Requeue: true},
		&amqp.BasicQosOk{},
		&amqp.ChannelClose{ReplyCode: 406, ReplyText: "x"},
		&amqp.BasicReject{DeliveryTag: 4},
	}
	for _, m := range tests {
		p := amqp.AppendMethodFrame(nil, 1, m)
		payload := p[7 : len(p)-1]
		tag, multiple, nack, ok := scanConfirm(payload)
		switch m := m.(type) {
		case *amqp.BasicAck:
			if !ok || nack || tag != m.DeliveryTag || multiple != m.Multiple {
				t.Errorf("%+v: got tag %d multiple %v nack %v ok %v", m, tag, multiple, nack, ok)
			}
		case *amqp.BasicNack:
			if !ok || !nack || tag != m.DeliveryTag || multiple != m.Multiple {
				t.Errorf("%+v: got tag %d multiple %v nack %v ok %v", m, tag, multiple, nack, ok)
			}
		default:
			if ok {
				t.Errorf("%s taken for a confirm", m.Name())
			}
		}
	}
}

// FuzzScanConfirm checks that scanConfirm never panics and takes only what the method decoder
// reads as basic.ack or basic.nack, with the same tag and multiple flag.
func FuzzScanConfirm(f *testing.F) {
	for _, m := range []amqp.Method{&amqp.BasicAck{DeliveryTag: 3, Multiple: true}, &amqp.BasicNack{DeliveryTag: 2}, &amqp.BasicQosOk{}} {
		p := amqp.AppendMethodFrame(nil, 1, m)
		f.Add(p[7 : len(p)-1])
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		tag, multiple, nack, ok := scanConfirm(p)
		if !ok {
			return
		}
		m, err := amqp.DecodeMethod(p)
		if err != nil {
			t.Fatalf("scanConfirm took %x, which the decoder refuses: %v", p, err)
		}
		switch m := m.(type) {
		case *amqp.BasicAck:
			if nack || m.DeliveryTag != tag || m.Multiple != multiple {
				t.Fatalf("%x: scanned tag %d multiple %v nack %v, decoded %+v", p, tag, multiple, nack, m)
			}
		case *amqp.BasicNack:
			if !nack || m.DeliveryTag != tag || m.Multiple != multiple {
				t.Fatalf("%x: scanned tag %d multiple %v nack %v, decoded %+v", p, tag, multiple, nack, m)
			}
		default:
			t.Fatalf("%x: scanned as a confirm, decoded as %s", p, m.Name())
		}
	})
}

// TestForwardAfterCloseGetsOutcome checks that a forward queued to a peer taken before the
// link closed, after its sender goroutine drained the queue for the last time, still gets its
// outcome (it waited forever, and a barrier behind it until its timeout).
func TestForwardAfterCloseGetsOutcome(t *testing.T) {
	l := NewLink(LinkConfig{Cluster: "c", Node: "n2", Secret: "0123456789abcdef", Addr: func(string) string { return "" }, Logger: quietLog()})
	// A peer with no sender goroutine stands for one whose sender already exited.
	p := &peer{l: l, node: "n1", vhost: "/", fwd: make(chan fwdItem, 4)}
	l.Close()
	got := make(chan error, 1)
	p.enqueue(fwdItem{queues: []string{"q"}, msg: &queue.Message{Body: []byte("x")}, out: fwdOutcome{done: func(err error) { got <- err }}})
	select {
	case err := <-got:
		if !errors.Is(err, errLinkClosed) {
			t.Fatalf("outcome %v, want %v", err, errLinkClosed)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a forward queued after the link closed got no outcome")
	}
}
