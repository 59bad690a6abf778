package amqp

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"
	"testing/iotest"
)

func TestReadFrameSequence(t *testing.T) {
	body := bytes.Repeat([]byte("b"), 3000)
	header := AppendContentHeader(nil, ClassBasic, uint64(len(body)), &Properties{DeliveryMode: 2})
	var stream []byte
	stream = AppendMethodFrame(stream, 1, &BasicPublish{Exchange: "x", RoutingKey: "k"})
	stream = AppendContent(stream, 1, header, body, FrameMinSize)
	stream = AppendHeartbeat(stream)
	stream = AppendFrame(stream, FrameBody, 65535, nil)
	want := []struct {
		typ     byte
		channel uint16
		payload []byte
	}{
		{FrameMethod, 1, (&BasicPublish{Exchange: "x", RoutingKey: "k"}).Append(nil)},
		{FrameHeader, 1, header},
		{FrameBody, 1, body},
		{FrameHeartbeat, 0, nil},
		{FrameBody, 65535, nil},
	}
	// bufio sizes: all frames fit (aliasing path), none fit (copying
	// path), and a reader that returns one byte per Read.
	for _, tc := range []struct {
		name    string
		r       io.Reader
		bufSize int
	}{
		{"large buffer", bytes.NewReader(stream), 1 << 16},
		{"tiny buffer", bytes.NewReader(stream), 16},
		{"one byte reads", iotest.OneByteReader(bytes.NewReader(stream)), 64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fr := NewFrameReader(tc.r, tc.bufSize)
			fr.SetMaxFrameSize(FrameMinSize)
			for i, w := range want {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
				if f.Type != w.typ || f.Channel != w.channel || !bytes.Equal(f.Payload, w.payload) {
					t.Fatalf("frame %d = %d/%d/%d bytes, want %d/%d/%d bytes", i, f.Type, f.Channel, len(f.Payload), w.typ, w.channel, len(w.payload))
				}
			}
			if _, err := fr.ReadFrame(); !errors.Is(err, io.EOF) {
				t.Fatalf("at end: %v, want io.EOF", err)
			}
		})
	}
}

func TestReadFrameErrors(t *testing.T) {
	valid := AppendMethodFrame(nil, 1, &BasicQos{PrefetchCount: 1})
	badEnd := append([]byte(nil), valid...)
	badEnd[len(badEnd)-1] = 0
	tests := []struct {
		name   string
		stream []byte
		max    uint32
		code   uint16 // 0: an I/O error is expected
		ioErr  error
	}{
		{"bad frame end", badEnd, 0, FrameError, nil},
		{"bad frame end, large frame", func() []byte {
			b := AppendFrame(nil, FrameBody, 1, make([]byte, 100000))
			b[len(b)-1] = 'x'
			return b
		}(), 0, FrameError, nil},
		{"over max", AppendFrame(nil, FrameBody, 1, make([]byte, FrameMinSize-FrameOverhead+1)), FrameMinSize, FrameError, nil},
		{"4 GiB header, limited", []byte{FrameBody, 0, 1, 0xff, 0xff, 0xff, 0xff}, 131072, FrameError, nil},
		{"unknown frame type", AppendFrame(nil, 4, 1, []byte{1, 2, 3}), 0, FrameError, nil},
		{"heartbeat with payload", AppendFrame(nil, FrameHeartbeat, 0, []byte{1}), 0, FrameError, nil},
		{"heartbeat on channel 1", AppendFrame(nil, FrameHeartbeat, 1, nil), 0, UnexpectedFrame, nil},
		{"empty stream", nil, 0, 0, io.EOF},
		{"partial header", valid[:5], 0, 0, io.ErrUnexpectedEOF},
		{"partial payload", valid[:len(valid)-3], 0, 0, io.ErrUnexpectedEOF},
		{"missing frame end", valid[:len(valid)-1], 0, 0, io.ErrUnexpectedEOF},
		{"partial large payload", AppendFrame(nil, FrameBody, 1, make([]byte, 100000))[:50000], 0, 0, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fr := NewFrameReader(bytes.NewReader(tt.stream), 4096)
			fr.SetMaxFrameSize(tt.max)
			_, err := fr.ReadFrame()
			if err == nil {
				t.Fatal("no error")
			}
			var e *Error
			if tt.code != 0 {
				if !errors.As(err, &e) || e.Code != tt.code {
					t.Fatalf("got %v, want code %d", err, tt.code)
				}
				if !e.Hard() {
					t.Fatal("frame errors are connection errors")
				}
				return
			}
			if errors.As(err, &e) || !errors.Is(err, tt.ioErr) {
				t.Fatalf("got %v, want %v", err, tt.ioErr)
			}
		})
	}
}

// A forged 4 GiB size with no frame_max must not allocate 4 GiB: the
// buffer grows only as bytes arrive.
func TestReadFrameHugeSizeNoLimit(t *testing.T) {
	stream := append([]byte{FrameBody, 0, 1, 0xff, 0xff, 0xff, 0xff}, make([]byte, 1000)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fr := NewFrameReader(bytes.NewReader(stream), 4096)
	_, err := fr.ReadFrame()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v", err)
	}
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 8<<20 {
		t.Fatalf("allocated %d bytes for a 1000-byte stream", grown)
	}
}

// Payloads alias the reader's buffer; the buffer for large frames is
// reused rather than reallocated.
func TestReadFrameReusesBuffer(t *testing.T) {
	var stream []byte
	for i := 0; i < 3; i++ {
		stream = AppendFrame(stream, FrameBody, 1, bytes.Repeat([]byte{byte(i)}, 10000))
	}
	fr := NewFrameReader(bytes.NewReader(stream), 4096)
	var first []byte
	for i := 0; i < 3; i++ {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if f.Payload[0] != byte(i) || len(f.Payload) != 10000 {
			t.Fatalf("frame %d wrong", i)
		}
		if i == 0 {
			first = f.Payload
		} else if &first[0] != &f.Payload[0] {
			t.Fatalf("frame %d got a new buffer", i)
		}
		if cap(f.Payload) != len(f.Payload) {
			t.Fatalf("payload capacity %d leaks the buffer beyond the frame", cap(f.Payload))
		}
	}
}

func TestAppendContentSplitting(t *testing.T) {
	header := []byte{0, 60, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0}
	tests := []struct {
		name     string
		bodyLen  int
		frameMax uint32
		want     []int // body frame sizes
	}{
		{"empty body: header only", 0, 4096, nil},
		{"fits one frame", 4088, 4096, []int{4088}},
		{"one byte over", 4089, 4096, []int{4088, 1}},
		{"three frames", 10000, 4096, []int{4088, 4088, 1824}},
		{"no limit", 100000, 0, []int{100000}},
		{"too small frame_max raised to minimum", 5000, 8, []int{4088, 912}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := make([]byte, tt.bodyLen)
			for i := range body {
				body[i] = byte(i)
			}
			out := AppendContent([]byte("prefix"), 9, header, body, tt.frameMax)
			if !bytes.HasPrefix(out, []byte("prefix")) {
				t.Fatal("dst prefix lost")
			}
			fr := NewFrameReader(bytes.NewReader(out[6:]), 1<<17)
			f, err := fr.ReadFrame()
			if err != nil || f.Type != FrameHeader || f.Channel != 9 || !bytes.Equal(f.Payload, header) {
				t.Fatalf("header frame: %v %+v", err, f)
			}
			var got []byte
			for i, n := range tt.want {
				f, err := fr.ReadFrame()
				if err != nil || f.Type != FrameBody || f.Channel != 9 || len(f.Payload) != n {
					t.Fatalf("body frame %d: %v type %d len %d, want %d", i, err, f.Type, len(f.Payload), n)
				}
				got = append(got, f.Payload...)
			}
			if !bytes.Equal(got, body) {
				t.Fatal("body differs")
			}
			if _, err := fr.ReadFrame(); !errors.Is(err, io.EOF) {
				t.Fatalf("extra frames: %v", err)
			}
		})
	}
}

func TestAppendFrameBytes(t *testing.T) {
	tests := []struct {
		name string
		got  []byte
		want []byte
	}{
		{"heartbeat", AppendHeartbeat(nil), []byte{8, 0, 0, 0, 0, 0, 0, 0xCE}},
		{"body", AppendFrame(nil, FrameBody, 0x0102, []byte{9}), []byte{3, 1, 2, 0, 0, 0, 1, 9, 0xCE}},
		{"method", AppendMethodFrame(nil, 5, &ChannelOpenOk{}), []byte{1, 0, 5, 0, 0, 0, 8, 0, 20, 0, 11, 0, 0, 0, 0, 0xCE}},
		{"protocol header", ProtocolHeader, []byte{'A', 'M', 'Q', 'P', 0, 0, 9, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !bytes.Equal(tt.got, tt.want) {
				t.Fatalf("got % x, want % x", tt.got, tt.want)
			}
		})
	}
}

// loopReader replays the same stream forever, for allocation tests and
// benchmarks.
type loopReader struct {
	data []byte
	off  int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], l.data[l.off:])
		n += c
		l.off = (l.off + c) % len(l.data)
	}
	return n, nil
}

func TestZeroAllocs(t *testing.T) {
	body := make([]byte, 1000)
	header := AppendContentHeader(nil, ClassBasic, uint64(len(body)), &Properties{DeliveryMode: 2, Headers: Table{"a": "b"}})
	var stream []byte
	stream = AppendMethodFrame(stream, 1, &BasicPublish{Exchange: "x", RoutingKey: "k"})
	stream = AppendContent(stream, 1, header, body, 131072)
	stream = AppendContent(stream, 1, header, make([]byte, 200000), 131072) // large frames: copying path
	fr := NewFrameReader(&loopReader{data: stream}, 1<<16)
	for i := 0; i < 10; i++ { // warm the large-frame buffer
		if _, err := fr.ReadFrame(); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 0, 1<<20)
	deliver := &BasicDeliver{ConsumerTag: "ctag", DeliveryTag: 99, Exchange: "x", RoutingKey: "k"}
	tests := []struct {
		name string
		f    func()
	}{
		{"ReadFrame", func() {
			if _, err := fr.ReadFrame(); err != nil {
				t.Fatal(err)
			}
		}},
		{"AppendFrame", func() { buf = AppendFrame(buf[:0], FrameBody, 1, body) }},
		{"AppendMethodFrame", func() { buf = AppendMethodFrame(buf[:0], 1, deliver) }},
		{"AppendContent", func() { buf = AppendContent(buf[:0], 1, header, body, 4096) }},
		{"AppendHeartbeat", func() { buf = AppendHeartbeat(buf[:0]) }},
		{"BeginMethodFrame+Append+EndMethodFrame", func() {
			buf = BeginMethodFrame(buf[:0], 1)
			d := BasicDeliver{ConsumerTag: "ctag", DeliveryTag: 99, Exchange: "x", RoutingKey: "k"}
			buf = d.Append(buf)
			buf = EndMethodFrame(buf, 0)
		}},
		{"ScanBasicPublish", func() {
			if _, ok := ScanBasicPublish([]byte{0, 60, 0, 40, 0, 0, 1, 'x', 1, 'k', 0}); !ok {
				t.Fatal("not scanned")
			}
		}},
		{"ScanContentHeader", func() {
			if _, err := ScanContentHeader(header); err != nil {
				t.Fatal(err)
			}
		}},
		{"BasicPublish.Decode", func() {
			var p BasicPublish
			if err := p.Decode([]byte{0, 60, 0, 40, 0, 0, 0, 0, 0}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(200, tt.f); n != 0 {
				t.Fatalf("%v allocs per run", n)
			}
		})
	}
}

// chunkReader returns its chunks one per Read call (a chunk larger than p is split).
type chunkReader struct{ chunks [][]byte }

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	if c.chunks[0] = c.chunks[0][n:]; len(c.chunks[0]) == 0 {
		c.chunks = c.chunks[1:]
	}
	return n, nil
}

// The read buffer starts small, grows while reads fill it and drops back once reads are small:
// an idle connection must not hold the maximum.
func TestFrameReaderBufferSize(t *testing.T) {
	frame := AppendFrame(nil, FrameBody, 1, make([]byte, 1000))
	var burst []byte
	for len(burst) < 1<<20 {
		burst = append(burst, frame...)
	}
	src := &chunkReader{chunks: [][]byte{burst}}
	for i := 0; i < 10; i++ { // 1 KiB messages one by one: not small enough to shrink
		src.chunks = append(src.chunks, frame)
	}
	for i := 0; i < 10; i++ { // then heartbeats only
		src.chunks = append(src.chunks, AppendHeartbeat(nil))
	}
	fr := NewFrameReader(src, 128<<10)
	if got := fr.BufferSize(); got != minReadBuf {
		t.Fatalf("initial buffer %d, want %d", got, minReadBuf)
	}
	peak, beforeHeartbeats := 0, 0
	for n := 0; ; n++ {
		f, err := fr.ReadFrame()
		if f.Type == FrameHeartbeat && beforeHeartbeats == 0 {
			beforeHeartbeats = fr.BufferSize() // after the first heartbeat's read
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil || (f.Type == FrameBody && len(f.Payload) != 1000) {
			t.Fatalf("frame %d: %v", n, err)
		}
		peak = max(peak, fr.BufferSize())
	}
	if beforeHeartbeats != 128<<10 {
		t.Errorf("buffer %d while 1 KiB messages trickled in, want it kept at %d", beforeHeartbeats, 128<<10)
	}
	if peak != 128<<10 {
		t.Errorf("buffer peaked at %d during the burst, want %d", peak, 128<<10)
	}
	if got := fr.BufferSize(); got != minReadBuf {
		t.Errorf("buffer %d after the heartbeats, want %d", got, minReadBuf)
	}
}

func TestReadNonHeartbeat(t *testing.T) {
	stream := AppendHeartbeat(AppendHeartbeat(nil))
	stream = AppendMethodFrame(stream, 2, &BasicAck{DeliveryTag: 5})
	fr := NewFrameReader(bytes.NewReader(stream), 4096)
	f, err := fr.ReadNonHeartbeat()
	if err != nil || f.Type != FrameMethod || f.Channel != 2 {
		t.Fatalf("got %+v, %v; want the method frame on channel 2", f, err)
	}
	if _, err := fr.ReadNonHeartbeat(); !errors.Is(err, io.EOF) {
		t.Fatalf("at end: %v, want EOF", err)
	}
}
