package amqp

import (
	"bytes"
	"testing"
)

func TestBeginEndMethodFrame(t *testing.T) {
	methods := []Method{
		&BasicDeliver{ConsumerTag: "ctag", DeliveryTag: 1 << 40, Redelivered: true, Exchange: "ex", RoutingKey: "rk"},
		&BasicAck{DeliveryTag: 7, Multiple: true},
		&ConnectionCloseOk{},
	}
	for _, m := range methods {
		t.Run(m.Name(), func(t *testing.T) {
			prefix := []byte("already queued")
			want := AppendMethodFrame(bytes.Clone(prefix), 3, m)
			got := BeginMethodFrame(bytes.Clone(prefix), 3)
			got = m.Append(got)
			got = EndMethodFrame(got, len(prefix))
			if !bytes.Equal(got, want) {
				t.Fatalf("got % x\nwant % x", got, want)
			}
			f, err := NewFrameReader(bytes.NewReader(got[len(prefix):]), 4096).ReadFrame()
			if err != nil || f.Channel != 3 || f.Type != FrameMethod {
				t.Fatalf("frame does not read back: %v %+v", err, f)
			}
		})
	}
}

func TestScanBasicPublish(t *testing.T) {
	valid := func(m *BasicPublish) []byte { return m.Append(nil) }
	long := string(bytes.Repeat([]byte("k"), 255))
	tests := []struct {
		name    string
		payload []byte
		ok      bool
	}{
		{"default exchange", valid(&BasicPublish{RoutingKey: "q"}), true},
		{"all fields", valid(&BasicPublish{Reserved1: 9, Exchange: "amq.topic", RoutingKey: long, Mandatory: true, Immediate: true}), true},
		{"empty keys", valid(&BasicPublish{}), true},
		{"mandatory only", valid(&BasicPublish{Exchange: "x", Mandatory: true}), true},
		{"trailing byte", append(valid(&BasicPublish{RoutingKey: "q"}), 0), false},
		{"truncated bits", valid(&BasicPublish{RoutingKey: "q"})[:9], false},
		{"truncated key", valid(&BasicPublish{RoutingKey: "queue"})[:10], false},
		{"other basic method", (&BasicGet{Queue: "q"}).Append(nil), false},
		{"empty", nil, false},
		{"basic.ack", (&BasicAck{DeliveryTag: 1}).Append(nil), false},
		{"short", []byte{0, 60}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, ok := ScanBasicPublish(tt.payload)
			var m BasicPublish
			err := m.Decode(tt.payload)
			if ok != tt.ok || ok != (err == nil) {
				t.Fatalf("ok = %v, want %v (Decode err %v)", ok, tt.ok, err)
			}
			if ok && (string(s.Exchange) != m.Exchange || string(s.RoutingKey) != m.RoutingKey ||
				s.Mandatory != m.Mandatory || s.Immediate != m.Immediate) {
				t.Errorf("scan %+v, decode %+v", s, m)
			}
		})
	}
}

// FuzzScanBasicPublish checks that ScanBasicPublish accepts exactly what Decode accepts, with the
// same fields.
func FuzzScanBasicPublish(f *testing.F) {
	f.Add((&BasicPublish{Exchange: "x", RoutingKey: "k", Mandatory: true}).Append(nil))
	f.Add((&BasicPublish{}).Append(nil))
	f.Add([]byte{0, 60, 0, 40, 0, 0, 5})
	f.Fuzz(func(t *testing.T, payload []byte) {
		s, ok := ScanBasicPublish(payload)
		var m BasicPublish
		err := m.Decode(payload)
		if ok != (err == nil) {
			t.Fatalf("scan ok %v, decode err %v", ok, err)
		}
		if ok && (string(s.Exchange) != m.Exchange || string(s.RoutingKey) != m.RoutingKey ||
			s.Mandatory != m.Mandatory || s.Immediate != m.Immediate) {
			t.Fatalf("scan %+v, decode %+v", s, m)
		}
	})
}
