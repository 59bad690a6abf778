package broker

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/queue"
	"github.com/warrenmq/warren/stream"
)

// streamQueue is the log behind an x-queue-type: stream queue and its consumers' readers.
// A stream queue still has a queue.Queue (qs.q), always empty: it keeps counts and the code
// paths shared with other queues working; messages go to the log only.
type streamQueue struct {
	log *stream.Stream
	dir string
	tmp bool // in a temporary directory: the broker has no data directory

	mu        sync.Mutex
	consumers map[*streamConsumer]struct{}
	// maxLengthBytes and maxAge are the retention in force (arguments and policy, see
	// combineStream); retention is the max-age timer, gen its generation (a tick of an older
	// generation does not re-arm itself).
	maxLengthBytes int64
	maxAge         time.Duration
	retention      *time.Timer
	gen            uint64
	closed         bool
	// retentionGen is the streamPolicyGen of the retention in force; applyMu serializes
	// setRetention (taken before mu).
	retentionGen uint64
	applyMu      sync.Mutex
}

// streamConsumer is one basic.consume on a stream queue: a goroutine that reads the log from
// the consumer's offset and offers each record to the consumer, waiting for credit (acks) when
// it is busy and for new records when it has caught up.
type streamConsumer struct {
	qs     *Queue
	c      Consumer
	r      *stream.Reader
	kick   chan struct{} // credit may be back
	cancel context.CancelFunc
	done   chan struct{}
	// exclusive is basic.consume's flag, released by cancelByBroker.
	exclusive bool
}

// StreamSink is a Consumer of a stream queue. Gone reports that the front end removed the
// consumer (cancel, channel close): its reader then stops.
type StreamSink interface {
	Consumer
	Gone() bool
}

// StreamConsume are the parameters of a basic.consume on a stream queue.
type StreamConsume struct {
	Exclusive bool
	NoAck     bool
	Prefetch  int // the consumer's prefetch (basic.qos global=false)
	Args      amqp.Table
}

// IsStreamQueue reports whether v has a stream queue of that name (the front end then
// consumes with ConsumeStream).
func (v *VHost) IsStreamQueue(name string) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	qs := v.queues[name]
	return qs != nil && qs.sq != nil
}

// IsStream reports whether qs is an x-queue-type: stream queue.
func (qs *Queue) IsStream() bool { return qs.sq != nil }

// rs is RabbitMQ's rabbit_misc:rs text for a queue.
func (qs *Queue) rs() string { return fmt.Sprintf("queue '%s' in vhost '%s'", qs.name, qs.v.name) }

// checkStreamDeclare makes RabbitMQ's checks of a stream declare and parses its retention
// arguments.
func checkStreamDeclare(name, vhost string, m QueueSpec) (stream.Options, *amqp.Error) {
	prop := func(p string) *amqp.Error {
		return amqp.Errorf(amqp.PreconditionFailed, "invalid property '%s' for queue '%s' in vhost '%s'", p, name, vhost)
	}
	switch {
	case !m.Durable:
		return stream.Options{}, prop("non-durable")
	case m.Exclusive:
		return stream.Options{}, prop("exclusive-owner")
	case m.AutoDelete:
		return stream.Options{}, prop("auto-delete")
	}
	o, aerr := streamOptions(m.Args)
	if aerr != nil {
		aerr.Text = fillQueueName(aerr.Text, name, vhost)
	}
	return o, aerr
}

// streamOptions reads x-max-length-bytes, x-max-age and x-stream-max-segment-size-bytes.
func streamOptions(args amqp.Table) (stream.Options, *amqp.Error) {
	var o stream.Options
	if v, ok := args["x-max-length-bytes"]; ok {
		n, _ := IntArg(v) // parseQueueArgs checked it
		o.MaxLengthBytes = n
	}
	if v, ok := args["x-stream-max-segment-size-bytes"]; ok {
		n, isInt := IntArg(v)
		if !isInt {
			return o, argTextError("x-stream-max-segment-size-bytes", fmt.Sprintf("\"expected integer, got %s\"", typeName(v)))
		}
		if n < 0 {
			return o, argError("x-stream-max-segment-size-bytes", "value_negative", n)
		}
		o.MaxSegmentBytes = n
	}
	if v, ok := args["x-max-age"]; ok {
		s, isStr := v.(string)
		if !isStr {
			return o, argTypeError("x-max-age", v)
		}
		d, err := stream.ParseMaxAge(s)
		if err != nil {
			return o, argTextError("x-max-age", "invalid_max_age")
		}
		o.MaxAge = d
	}
	return o, nil
}

// streamDir is where a stream queue's log lives: names are hex-encoded, so that any queue
// name is a safe path.
func (b *Broker) streamDir(vhost, name string) string {
	return filepath.Join(b.dataDir, "streams", hex.EncodeToString([]byte(vhost)), hex.EncodeToString([]byte(name)))
}

// openStreamLog opens a stream queue's log: stream.Open, replaced by tests that need a slow
// open or an injected clock.
var openStreamLog = stream.Open

// openStream opens (or creates) qs's log with opts and starts its max-age timer.
func (v *VHost) openStream(qs *Queue, opts stream.Options) error {
	sq := &streamQueue{consumers: map[*streamConsumer]struct{}{}, maxLengthBytes: opts.MaxLengthBytes, maxAge: opts.MaxAge}
	if v.b.dataDir != "" {
		sq.dir = v.b.streamDir(v.name, qs.name)
	} else {
		dir, err := os.MkdirTemp("", "warren-stream-")
		if err != nil {
			return fmt.Errorf("stream queue %q: %w", qs.name, err)
		}
		sq.dir, sq.tmp = dir, true
	}
	opts.Logger = v.b.log
	log, err := openStreamLog(sq.dir, opts)
	if err != nil {
		if sq.tmp {
			os.RemoveAll(sq.dir)
		}
		return fmt.Errorf("stream queue %q: %w", qs.name, err)
	}
	sq.log = log
	sq.mu.Lock()
	sq.armRetentionLocked()
	sq.mu.Unlock()
	qs.sq = sq
	return nil
}

// armRetentionLocked (re)starts the max-age timer for sq.maxAge: max-age applies to a stream
// nobody writes to as well. Call with sq.mu held.
func (sq *streamQueue) armRetentionLocked() {
	if sq.retention != nil {
		sq.retention.Stop()
		sq.retention = nil
	}
	sq.gen++
	if sq.maxAge <= 0 || sq.closed {
		return
	}
	gen, every := sq.gen, min(max(sq.maxAge/10, time.Second), time.Minute)
	var tick func()
	tick = func() {
		sq.log.EnforceRetention()
		sq.mu.Lock()
		if !sq.closed && sq.gen == gen {
			sq.retention = time.AfterFunc(every, tick)
		}
		sq.mu.Unlock()
	}
	sq.retention = time.AfterFunc(every, tick)
}

// streamPolicyGen numbers the policy changes (setPolicies increments it under the vhost's
// lock): a retention computed from older policies never replaces one computed from newer
// ones. Retention is computed under v.mu but applied after it is released, so a stream
// declare that read the policies just before a reload could otherwise apply its stale value
// after the reload's (and two reloads could cross the same way).
var streamPolicyGen atomic.Uint64

// setRetention applies a changed retention (a policy set, changed or cleared) to an open
// stream: at once, removing the segments it no longer keeps. gen is streamPolicyGen when o
// was computed; an o older than the one in force is ignored. The segment size is kept until
// the log is next opened, as RabbitMQ's osiris writer keeps it until it restarts.
func (sq *streamQueue) setRetention(o stream.Options, gen uint64) {
	// applyMu orders the log's updates as the fields' (sq.mu is released while the log
	// removes files).
	sq.applyMu.Lock()
	defer sq.applyMu.Unlock()
	sq.mu.Lock()
	if sq.closed || gen < sq.retentionGen {
		sq.mu.Unlock()
		return
	}
	sq.retentionGen = gen
	if o.MaxLengthBytes == sq.maxLengthBytes && o.MaxAge == sq.maxAge {
		sq.mu.Unlock()
		return
	}
	sq.maxLengthBytes, sq.maxAge = o.MaxLengthBytes, o.MaxAge
	sq.armRetentionLocked()
	sq.mu.Unlock()
	// Not under sq.mu: enforcing removes files. A concurrent close makes it a no-op on a
	// closed log at worst (the log's own locks are leaves).
	sq.log.SetRetention(o.MaxLengthBytes, o.MaxAge)
}

// closeStream stops qs's consumers (telling them the queue is gone when deleted), closes its
// log and, when deleted, removes it.
func (qs *Queue) closeStream(deleted bool) {
	sq := qs.sq
	if sq == nil {
		return
	}
	sq.mu.Lock()
	if sq.closed {
		sq.mu.Unlock()
		return
	}
	sq.closed = true
	if sq.retention != nil {
		sq.retention.Stop()
	}
	cs := make([]*streamConsumer, 0, len(sq.consumers))
	for sc := range sq.consumers {
		cs = append(cs, sc)
	}
	sq.consumers = nil
	sq.mu.Unlock()
	for _, sc := range cs {
		sc.stop()
		if deleted {
			sc.c.QueueDeleted()
		}
	}
	var err error
	if deleted || sq.tmp {
		err = sq.log.Delete()
	} else {
		err = sq.log.Close()
	}
	if err != nil {
		qs.v.b.log.Error("closing stream", "queue", qs.name, "err", err)
	}
}

// kickStream wakes qs's consumers that wait for credit.
func (qs *Queue) kickStream() {
	sq := qs.sq
	sq.mu.Lock()
	for sc := range sq.consumers {
		select {
		case sc.kick <- struct{}{}:
		default:
		}
	}
	sq.mu.Unlock()
}

// Kick retries deliveries to qs's consumers, after credit came back or a writer drained.
func (qs *Queue) Kick() {
	if qs.sq != nil {
		qs.kickStream()
		return
	}
	qs.q.Kick()
}

// streamOffset parses a consumer's x-stream-offset as RabbitMQ does: first, last, next (the
// default), a numeric offset (a negative one is the first), an AMQP timestamp (seconds) or an
// interval string ("1h", as x-max-age) meaning that long ago. A bad value is RabbitMQ's 406
// (RabbitMQ 3.10 answers some of them, such as "sometime" or a double, with 541 by crashing).
func streamOffset(qs *Queue, args amqp.Table, now time.Time) (stream.Spec, *amqp.Error) {
	v, ok := args["x-stream-offset"]
	if !ok {
		return stream.Next(), nil
	}
	bad := func() (stream.Spec, *amqp.Error) {
		val := fmt.Sprint(v)
		if s, isStr := v.(string); isStr {
			val = fmt.Sprintf("<<\"%s\">>", s)
		}
		return stream.Spec{}, amqp.Errorf(amqp.PreconditionFailed,
			"invalid arg 'x-stream-offset' for %s: {invalid_stream_offset_arg,{%s,%s}}", qs.rs(), typeName(v), val)
	}
	switch x := v.(type) {
	case string:
		switch x {
		case "first":
			return stream.First(), nil
		case "last":
			return stream.Last(), nil
		case "next":
			return stream.Next(), nil
		}
		d, err := stream.ParseMaxAge(x)
		if err != nil {
			return bad()
		}
		return stream.AtTime(now.Add(-d)), nil
	case time.Time:
		return stream.AtTime(x), nil
	}
	n, isInt := IntArg(v)
	if !isInt {
		return bad()
	}
	return stream.AtOffset(uint64(max(n, 0))), nil
}

// ConsumeStream registers c on the stream queue name: RabbitMQ's checks (a prefetch is
// required, no-ack is refused), then a reader at the x-stream-offset argument. started runs
// before the first delivery, as for Consume.
func (v *VHost) ConsumeStream(a Actor, name string, c StreamSink, m StreamConsume, started func(*Queue)) (*Queue, *amqp.Error) {
	if err := a.authorize(PermRead, ResQueue, name); err != nil {
		return nil, err
	}
	v.mu.Lock()
	qs, err := v.lookupQueue(a, name)
	if err != nil {
		v.mu.Unlock()
		return nil, err
	}
	if qs.sq == nil {
		v.mu.Unlock()
		return nil, amqp.Errorf(amqp.InternalError, "queue '%s' is not a stream", name)
	}
	if m.Prefetch == 0 {
		v.mu.Unlock()
		return nil, amqp.Errorf(amqp.PreconditionFailed, "consumer prefetch count is not set for '%s'", qs.rs())
	}
	if m.NoAck {
		v.mu.Unlock()
		return nil, amqp.Errorf(amqp.NotImplemented, "automatic acknowledgement not supported by stream queues %s", qs.rs())
	}
	spec, aerr := streamOffset(qs, m.Args, time.Now())
	if aerr != nil {
		v.mu.Unlock()
		return nil, aerr
	}
	if qs.exclusiveConsumer || (m.Exclusive && qs.consumers > 0) {
		v.mu.Unlock()
		return nil, amqp.Errorf(amqp.AccessRefused, "queue '%s' in vhost '%s' in exclusive use", qs.name, v.name)
	}
	qs.consumers++
	qs.hadConsumer = true
	if m.Exclusive {
		qs.exclusiveConsumer = true
	}
	v.mu.Unlock()
	r, rerr := qs.sq.log.NewReader(spec) // reads the index: not under v.mu
	if rerr != nil {
		v.ConsumerRemoved(qs, m.Exclusive)
		if errors.Is(rerr, stream.ErrClosed) {
			return nil, v.errNoQueue(name)
		}
		return nil, amqp.Errorf(amqp.InternalError, "reading stream '%s': %v", name, rerr)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sc := &streamConsumer{qs: qs, c: c, r: r, kick: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{}), exclusive: m.Exclusive}
	qs.sq.mu.Lock()
	if qs.sq.closed {
		qs.sq.mu.Unlock()
		cancel()
		r.Close()
		v.ConsumerRemoved(qs, m.Exclusive)
		return nil, v.errNoQueue(name)
	}
	qs.sq.consumers[sc] = struct{}{}
	qs.sq.mu.Unlock()
	if started != nil {
		started(qs)
	}
	go sc.run(ctx, c)
	return qs, nil
}

// stop ends the consumer's goroutine and waits for it.
func (sc *streamConsumer) stop() {
	sc.cancel()
	<-sc.done
}

// run delivers records from the reader until the consumer is gone or the stream closes.
func (sc *streamConsumer) run(ctx context.Context, c StreamSink) {
	defer close(sc.done)
	defer sc.r.Close()
	defer sc.forget()
	for {
		rec, err := sc.r.Next(ctx)
		if err != nil {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, stream.ErrClosed) {
				sc.qs.v.b.log.Error("stream consumer cancelled: reading the stream failed", "queue", sc.qs.name, "err", err)
				sc.cancelByBroker()
			}
			return
		}
		msg, err := decodeStreamDelivery(rec.Data, sc.qs.name, rec.Offset)
		if err != nil {
			sc.qs.v.b.log.Error("stream record skipped", "queue", sc.qs.name, "offset", rec.Offset, "err", err)
			continue
		}
		e := &queue.Entry{Seq: rec.Offset, Msg: msg}
		for c.Deliver(sc.qs.q, e) == queue.Busy {
			if c.Gone() {
				return
			}
			select {
			case <-sc.kick:
			case <-ctx.Done():
				return
			}
		}
	}
}

// cancelByBroker ends a consumer whose reader failed (a damaged chunk, an I/O error) as a
// deleted queue ends its consumers: basic.cancel to clients that understand it, and the
// consumer's hold on the queue (count, exclusive use) released. Without it the client would
// wait forever for deliveries that never come. Called by the consumer's own goroutine.
func (sc *streamConsumer) cancelByBroker() {
	sq := sc.qs.sq
	sq.mu.Lock()
	_, mine := sq.consumers[sc]
	// Out of the set first: ConsumerRemoved (below, or the front end's) stops the gone
	// consumers it finds there and waits for them, which would be this goroutine.
	delete(sq.consumers, sc)
	sq.mu.Unlock()
	if !mine || sc.c.(StreamSink).Gone() {
		// closeStream took it, or the front end removed it (cancel, channel close) and
		// releases it itself. A front-end cancel racing between Gone and QueueDeleted would
		// release it twice; the Consumer interface cannot say which of the two removed it.
		return
	}
	sc.c.QueueDeleted()
	sc.qs.v.ConsumerRemoved(sc.qs, sc.exclusive)
}

// forget drops the consumer from its queue's set once its goroutine ends.
func (sc *streamConsumer) forget() {
	sq := sc.qs.sq
	sq.mu.Lock()
	if sq.consumers != nil {
		delete(sq.consumers, sc)
	}
	sq.mu.Unlock()
}

// streamConsumerGone is called by ConsumerRemoved: consumers whose front end removed them
// stop (each checks Gone when woken).
func (qs *Queue) streamConsumerGone() {
	sq := qs.sq
	sq.mu.Lock()
	var gone []*streamConsumer
	for sc := range sq.consumers {
		if sc.c.(StreamSink).Gone() {
			gone = append(gone, sc)
		}
	}
	sq.mu.Unlock()
	for _, sc := range gone {
		sc.stop()
	}
}

// Stream record formats. The first byte says which:
//
//	v1: 0x01, exchange (u8 length + bytes), routing key (u8 length + bytes),
//	    content header (u32 length + the publisher's raw bytes), body (the rest)
//	v2: 0x02, flags (u8), [exchange, routing key as in v1, unless flagOwnQueue],
//	    content header (uvarint length + bytes: without its first 12 bytes if flagShortHeader),
//	    body (the rest)
//	v3: an AMQP 1.0 message (first byte 0x00, a described section), as RabbitMQ stores a
//	    message published over AMQP 0-9-1 in a stream; stream.AppendAMQP10Head and
//	    stream.DecodeAMQP091 convert, stream/doc.go has the mapping
//
// v3 is written since the stream protocol needs AMQP 1.0 records (issue 19): a future port
// 5552 front end can then send chunks from the segment files unchanged. v1 and v2 records,
// in segments written before, are still read, so a stream may mix formats across segments;
// v2 is also written when a content header cannot be converted (a malformed one, or one
// whose class, weight or body size v3 would not rebuild as they were; the front end lets
// neither through). The x-exchange and x-routing-key annotations (v2's
// flagOwnQueue) are left out for the usual publish through the default exchange with the
// stream's name as routing key: RabbitMQ's reader assumes the same defaults.
const (
	streamRecordV1 = 0x01
	streamRecordV2 = 0x02

	flagOwnQueue    = 1 << 0
	flagShortHeader = 1 << 1

	// shortHeaderCut is the part of a basic content header v2 can rebuild: class id (u16),
	// weight (u16), body size (u64).
	shortHeaderCut = 12
)

// shortHeader reports whether h is a basic content header of weight 0 for a body of n bytes,
// so that its first 12 bytes need not be stored.
func shortHeader(h []byte, n int) bool {
	return len(h) >= shortHeaderCut+2 && binary.BigEndian.Uint16(h) == amqp.ClassBasic &&
		binary.BigEndian.Uint16(h[2:]) == 0 && binary.BigEndian.Uint64(h[4:]) == uint64(n)
}

// encodeStreamRecord encodes msg as a record that names its exchange and routing key.
func encodeStreamRecord(msg *queue.Message) []byte { return encodeRecord(msg, false) }

// encodeRecord encodes msg as a v3 record; own leaves out the exchange and routing key (the
// default exchange and the stream's name).
func encodeRecord(msg *queue.Message, own bool) []byte {
	return append(recordHead(msg, own, len(msg.Body)), msg.Body...)
}

// recordHead is the v3 record of msg up to its body (the data section's length included),
// allocated with room for extra bytes more; v2 if the content header cannot be converted or
// is not the usual one (class 60, weight 0, the body's size), which v3 rebuilds.
func recordHead(msg *queue.Message, own bool, extra int) []byte {
	if !shortHeader(msg.Header, len(msg.Body)) {
		return recordHeadV2(msg, own, extra)
	}
	// AMQP 1.0 takes a few bytes more than 0-9-1 per property and header entry, and fewer
	// for long strings: one and a half times the header and the fixed parts is room enough in
	// practice (append grows it if not).
	n := len(msg.Header) + len(msg.Header)/2 + 32 + extra
	if !own {
		n += 48 + len(msg.Exchange) + len(msg.RoutingKey)
	} else if len(msg.Header) == 15 {
		n = 15 + extra // a delivery mode only: header and data sections, 12 bytes (15 for a body over 255)
	}
	b, err := stream.AppendAMQP10Head(make([]byte, 0, n), msg.Header, len(msg.Body), !own, msg.Exchange, msg.RoutingKey)
	if err != nil {
		return recordHeadV2(msg, own, extra)
	}
	return b
}

// encodeRecordV2 encodes msg as a v2 record (the format before v3).
func encodeRecordV2(msg *queue.Message, own bool) []byte {
	return append(recordHeadV2(msg, own, len(msg.Body)), msg.Body...)
}

// recordHeadV2 is the v2 record of msg up to its body, allocated with room for extra bytes more.
func recordHeadV2(msg *queue.Message, own bool, extra int) []byte {
	var flags byte
	if own {
		flags |= flagOwnQueue
	}
	h := msg.Header
	if shortHeader(h, len(msg.Body)) {
		flags |= flagShortHeader
		h = h[shortHeaderCut:]
	}
	n := 2 + binary.MaxVarintLen32 + len(h) + extra
	if !own {
		n += 2 + len(msg.Exchange) + len(msg.RoutingKey)
	}
	b := make([]byte, 0, n)
	b = append(b, streamRecordV2, flags)
	if !own {
		b = append(b, byte(len(msg.Exchange)))
		b = append(b, msg.Exchange...)
		b = append(b, byte(len(msg.RoutingKey)))
		b = append(b, msg.RoutingKey...)
	}
	b = binary.AppendUvarint(b, uint64(len(h)))
	return append(b, h...)
}

var errBadStreamRecord = errors.New("malformed stream record")

// decodeStreamDelivery is decodeStreamRecord for a delivery of the record at offset: its
// content header carries the x-stream-offset header RabbitMQ adds. For a v3 record that is
// one conversion from AMQP 1.0; v1 and v2 records' headers are decoded and re-encoded.
func decodeStreamDelivery(rec []byte, queueName string, offset uint64) (*queue.Message, error) {
	if stream.IsAMQP10(rec) {
		return decodeV3(rec, queueName, offset, true)
	}
	msg, err := decodeStreamRecord(rec, queueName)
	if err != nil {
		return nil, err
	}
	msg.Header = withStreamOffset(msg.Header, offset)
	return msg, nil
}

// decodeV3 converts a v3 record to a message for AMQP 0-9-1 consumers.
func decodeV3(rec []byte, queueName string, offset uint64, withOffset bool) (*queue.Message, error) {
	m, err := stream.DecodeAMQP091(rec, int64(offset), withOffset)
	if err != nil {
		return nil, err
	}
	msg := &queue.Message{Exchange: m.Exchange, RoutingKey: queueName, Header: m.Header, Body: m.Body}
	if m.HasRoutingKey {
		msg.RoutingKey = m.RoutingKey
	}
	return msg, nil
}

// decodeStreamRecord rebuilds a message from a record of the stream queue named queueName; it
// copies, since the record's bytes are the reader's buffer.
func decodeStreamRecord(rec []byte, queueName string) (*queue.Message, error) {
	if stream.IsAMQP10(rec) {
		return decodeV3(rec, queueName, 0, false)
	}
	if len(rec) < 1 || (rec[0] != streamRecordV1 && rec[0] != streamRecordV2) {
		return nil, errBadStreamRecord
	}
	v2 := rec[0] == streamRecordV2
	p := 1
	var flags byte
	if v2 {
		if len(rec) < 2 || rec[1]&^(flagOwnQueue|flagShortHeader) != 0 {
			return nil, errBadStreamRecord
		}
		flags = rec[1]
		p = 2
	}
	str := func() (string, bool) {
		if p >= len(rec) || p+1+int(rec[p]) > len(rec) {
			return "", false
		}
		n := int(rec[p])
		s := string(rec[p+1 : p+1+n])
		p += 1 + n
		return s, true
	}
	ex, rk := "", queueName
	if flags&flagOwnQueue == 0 {
		var ok1, ok2 bool
		ex, ok1 = str()
		rk, ok2 = str()
		if !ok1 || !ok2 {
			return nil, errBadStreamRecord
		}
	}
	var hl int
	if v2 {
		n, w := binary.Uvarint(rec[p:])
		if w <= 0 || n > uint64(len(rec)-p-w) {
			return nil, errBadStreamRecord
		}
		hl, p = int(n), p+w
	} else {
		if p+4 > len(rec) {
			return nil, errBadStreamRecord
		}
		hl = int(binary.BigEndian.Uint32(rec[p:]))
		p += 4
		if hl > len(rec)-p {
			return nil, errBadStreamRecord
		}
	}
	if flags&flagShortHeader == 0 {
		own := append([]byte(nil), rec[p:]...)
		return &queue.Message{Exchange: ex, RoutingKey: rk, Header: own[:hl:hl], Body: own[hl:]}, nil
	}
	if hl < 2 {
		return nil, errBadStreamRecord
	}
	// Rebuild the 12 bytes left out, then the stored properties and the body, in one buffer.
	bodyLen := len(rec) - p - hl
	own := make([]byte, shortHeaderCut, shortHeaderCut+len(rec)-p)
	binary.BigEndian.PutUint16(own, amqp.ClassBasic)
	binary.BigEndian.PutUint64(own[4:], uint64(bodyLen))
	own = append(own, rec[p:]...)
	full := shortHeaderCut + hl
	return &queue.Message{Exchange: ex, RoutingKey: rk, Header: own[:full:full], Body: own[full:]}, nil
}

// streamHeader is the content header of a stream delivery: the publisher's properties plus
// the x-stream-offset header RabbitMQ adds, which decodeStreamDelivery put in when it read
// the record (a stream entry exists only for its delivery).
func streamHeader(e *queue.Entry) []byte { return e.Msg.Header }

// withStreamOffset adds the x-stream-offset header to a v1 or v2 record's content header.
func withStreamOffset(header []byte, offset uint64) []byte {
	h, err := amqp.DecodeContentHeader(header)
	if err != nil {
		return header
	}
	headers := make(amqp.Table, len(h.Props.Headers)+1)
	for k, v := range h.Props.Headers {
		headers[k] = v
	}
	headers[stream.StreamOffsetHeader] = int64(offset)
	h.Props.Headers = headers
	return amqp.AppendContentHeader(nil, h.ClassID, h.BodySize, &h.Props)
}

// appendToStreams appends msg to the stream queues among targets and returns the other
// targets, with done wrapped to run once the stream appends (and the store write, when
// storeToo) are synced. streamed reports whether there was a stream queue.
func appendToStreams(msg *queue.Message, targets []*Queue, done func(error)) (rest []*Queue, joined func(error), streamed bool) {
	n := 0
	for _, qs := range targets {
		if qs.sq != nil {
			n++
		}
	}
	if n == 0 {
		return targets, done, false
	}
	// In a function of its own: its closures capture done and joined, which would otherwise be
	// moved to the heap on every publish, streams or not.
	return appendToStreamsSlow(msg, targets, done, n)
}

func appendToStreamsSlow(msg *queue.Message, targets []*Queue, done func(error), n int) (rest []*Queue, joined func(error), streamed bool) {
	if len(targets) == 1 {
		// The usual stream publish: one stream and nothing else, so its sync is the confirm;
		// no join (a mutex and two closures per message).
		qs := targets[0]
		// The body is not copied: the record is written as head and body (a message is
		// immutable once assembled).
		head := recordHead(msg, msg.Exchange == "" && msg.RoutingKey == qs.name, 0)
		if done == nil {
			qs.sq.log.AppendParts(head, msg.Body, ignoreAppend)
		} else {
			qs.sq.log.AppendParts(head, msg.Body, func(_ uint64, err error) { done(err) })
		}
		return targets[:0], done, true
	}
	rest = make([]*Queue, 0, len(targets)-n)
	for _, qs := range targets {
		if qs.sq == nil {
			rest = append(rest, qs)
		}
	}
	parts := n
	if needsDisk(msg, rest) {
		parts++
	}
	var mu sync.Mutex
	var firstErr error
	joined = func(err error) {
		mu.Lock()
		if err != nil && firstErr == nil {
			firstErr = err
		}
		parts--
		last := parts == 0
		mu.Unlock()
		if last && done != nil {
			done(firstErr)
		}
	}
	// Several targets (not through the default exchange, which routes to one queue): one
	// record naming the exchange and routing key serves every stream.
	rec := encodeStreamRecord(msg)
	for _, qs := range targets {
		if qs.sq != nil {
			qs.sq.log.Append(rec, func(_ uint64, err error) { joined(err) })
		}
	}
	return rest, joined, true
}

// ignoreAppend is the done callback of a stream append nobody waits for.
func ignoreAppend(uint64, error) {}

// reserveStreamLocked makes a new stream queue's checks and reserves its name in v.opening;
// call with v.mu held. openReservedStream then creates the log without v.mu: creating it
// syncs two new files and the directory, a wait that would stall every publisher of the vhost
// (routing takes v.mu).
func (v *VHost) reserveStreamLocked(qs *Queue, m QueueSpec) *amqp.Error {
	if _, aerr := checkStreamDeclare(qs.name, v.name, m); aerr != nil {
		return aerr
	}
	if v.opening == nil {
		v.opening = make(map[string]chan struct{})
	}
	v.opening[qs.name] = make(chan struct{})
	return nil
}

// openReservedStream opens the log of a stream queue reserved by reserveStreamLocked, with no
// lock held, then registers the queue (submitting its store write, reported by the returned
// channel) and lifts the reservation, waking the declares that wait for the name: they find
// the queue. A failed open lifts the reservation with nothing registered: a waiting declare
// then tries itself, as if this one had never been made.
func (v *VHost) openReservedStream(qs *Queue, m QueueSpec) (chan error, *amqp.Error) {
	v.mu.RLock()
	opts := v.effectiveLocked(qs.name, qs.spec, qs.args).stream
	v.mu.RUnlock()
	err := v.openStream(qs, opts)
	var args []byte
	if err == nil && qs.durable {
		args, _ = encodeArgs(m.Args) // newQueue encoded them already: cannot fail
	}
	v.mu.Lock()
	done := v.opening[qs.name]
	delete(v.opening, qs.name)
	if err != nil {
		v.mu.Unlock()
		close(done)
		v.b.log.Error("opening stream", "queue", qs.name, "err", err)
		return nil, amqp.Errorf(amqp.InternalError, "cannot open stream for queue '%s' in vhost '%s'", qs.name, v.name)
	}
	synced := v.registerQueueLocked(qs, args)
	// The policies may have changed while the log was being opened.
	now, gen := v.effectiveLocked(qs.name, qs.spec, qs.args).stream, streamPolicyGen.Load()
	v.mu.Unlock()
	close(done)
	qs.sq.setRetention(now, gen) // a no-op when they did not, or when a reload came after
	return synced, nil
}

// restoreStream reopens a restored stream queue's log (recovering it after a crash), with its
// arguments and the vhost's policy.
func (v *VHost) restoreStream(qs *Queue) error {
	if _, aerr := streamOptions(qs.args); aerr != nil {
		return fmt.Errorf("stream queue %q arguments: %s", qs.name, aerr.Text)
	}
	return v.openStream(qs, v.effectiveLocked(qs.name, qs.spec, qs.args).stream)
}

// closeStreams closes every stream queue's log (broker shutdown; nothing is deleted but
// temporary logs).
func (b *Broker) closeStreams() {
	b.vhMu.RLock()
	var vs []*VHost
	for _, v := range b.vhosts {
		vs = append(vs, v)
	}
	for _, v := range b.retired {
		vs = append(vs, v)
	}
	b.vhMu.RUnlock()
	for _, v := range vs {
		v.mu.RLock()
		var qss []*Queue
		for _, qs := range v.queues {
			if qs.sq != nil {
				qss = append(qss, qs)
			}
		}
		v.mu.RUnlock()
		for _, qs := range qss {
			qs.closeStream(false)
		}
	}
}

// awaitStreams holds a publisher while a stream queue it published to has more than
// journalRoom bytes waiting for its writer, as the store's journal does: without confirms a
// publisher could otherwise grow that queue in memory without bound.
func awaitStreams(targets []*Queue) {
	for _, qs := range targets {
		if qs.sq != nil {
			qs.sq.log.AwaitRoom(journalRoom)
		}
	}
}

// streamChecks is the Proxy a cluster member uses (SetProxy): the cluster's, with the refusals
// a stream's home would answer with a connection error (540 NOT_IMPLEMENTED: a no-ack consumer,
// basic.get, queue.purge) made on the client's node instead, from the stream's remote entry.
// Sent to the home, they would close the link connection every proxied consumer of that
// home shares, and reach the client as a 541; here they close the client's connection with
// RabbitMQ's 540, as on the home. The checks the home answers with a channel error (406: no
// prefetch, a bad x-stream-offset) stay the home's: they arrive with their code.
type streamChecks struct {
	Proxy
	b *Broker
}

func withStreamChecks(b *Broker, p Proxy) Proxy {
	if p == nil {
		return nil
	}
	return streamChecks{Proxy: p, b: b}
}

// remoteStream is the remote entry of vhost's stream queue name, nil when name is not a stream
// homed on another node.
func (b *Broker) remoteStream(vhost, name string) *Queue {
	v := b.VHost(vhost)
	if v == nil {
		return nil
	}
	v.mu.RLock()
	qs := v.queues[name]
	v.mu.RUnlock()
	if qs == nil || qs.home == "" || !qs.spec.stream {
		return nil
	}
	return qs
}

// Consume implements Proxy. As ConsumeStream, a missing prefetch (406) is checked before
// no-ack (540). A no-ack consume is answered here whatever its prefetch: the link turns it
// into an acknowledging consume with a window, so the home would never see the missing
// prefetch.
func (p streamChecks) Consume(home, vhost, queue string, o ProxyConsume, sink ProxySink) (ProxyChannel, *amqp.Error) {
	if o.NoAck {
		if qs := p.b.remoteStream(vhost, queue); qs != nil {
			if o.Prefetch == 0 {
				return nil, amqp.Errorf(amqp.PreconditionFailed, "consumer prefetch count is not set for '%s'", qs.rs())
			}
			return nil, amqp.Errorf(amqp.NotImplemented, "automatic acknowledgement not supported by stream queues %s", qs.rs())
		}
	}
	return p.Proxy.Consume(home, vhost, queue, o, sink)
}

// Getter implements Proxy.
func (p streamChecks) Getter(home, vhost string) (ProxyGetter, *amqp.Error) {
	g, err := p.Proxy.Getter(home, vhost)
	if err != nil {
		return nil, err
	}
	return streamGetter{ProxyGetter: g, b: p.b, vhost: vhost}, nil
}

// Purge implements Proxy.
func (p streamChecks) Purge(home, vhost, queue string) (int, *amqp.Error) {
	if qs := p.b.remoteStream(vhost, queue); qs != nil {
		return 0, amqp.Errorf(amqp.NotImplemented, "queue.purge not supported by stream queues %s", qs.rs())
	}
	return p.Proxy.Purge(home, vhost, queue)
}

// streamGetter refuses basic.get of a stream homed elsewhere (see streamChecks).
type streamGetter struct {
	ProxyGetter
	b     *Broker
	vhost string
}

// Get implements ProxyGetter.
func (g streamGetter) Get(queue string, noAck bool) (ProxyDelivery, bool, *amqp.Error) {
	if qs := g.b.remoteStream(g.vhost, queue); qs != nil {
		// As a get the home refused: its link channel is closed (the front end drops it).
		g.ProxyGetter.Close()
		return ProxyDelivery{}, false, amqp.Errorf(amqp.NotImplemented, "basic.get not supported by stream queues %s", qs.rs())
	}
	return g.ProxyGetter.Get(queue, noAck)
}
