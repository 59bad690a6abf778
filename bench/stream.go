package bench

import (
	"errors"
	"fmt"
	"strconv"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Streams (-stream): the queues are declared with x-queue-type: stream (durable, as streams
// must be) and messages are published persistent. Stream consumers need manual acks and a
// prefetch, as RabbitMQ requires; each one reads the whole log from its -stream-offset, so
// consumers of the same stream do not share messages the way queue consumers do.
//
// Reading a stream that is already there: -drain -stream -stream-length N, where N is the
// number of messages in each stream (declare-ok's message count says nothing useful for a
// stream). With -stream-offset spread, consumer i of the n on a stream starts at offset
// i*N/n, so n consumers read at n different positions at once; the run ends when every
// consumer has read to the end.

// streamArgs are the queue.declare arguments of a stream.
func streamArgs() amqp.Table { return amqp.Table{"x-queue-type": "stream"} }

// validateStream checks the -stream flags.
func (c *Config) validateStream() error {
	if !c.Stream {
		if c.StreamOffset != "next" || c.StreamLength != 0 {
			return errors.New("bench: -stream-offset and -stream-length need -stream")
		}
		return nil
	}
	switch {
	case c.Consumers > 0 && (c.AutoAck || c.Prefetch == 0):
		return errors.New("bench: stream consumers need -autoack=false and -prefetch > 0")
	case c.Fanout > 0:
		return errors.New("bench: -stream does not combine with -fanout")
	case c.Drain && c.StreamLength <= 0:
		return errors.New("bench: -drain -stream needs -stream-length (messages in each stream)")
	case c.StreamOffset == "spread" && !c.Drain:
		return errors.New("bench: -stream-offset spread needs -drain and -stream-length")
	case c.StreamLength < 0:
		return errors.New("bench: -stream-length must be >= 0")
	}
	switch c.StreamOffset {
	case "first", "last", "next", "spread":
		return nil
	}
	if n, err := strconv.ParseInt(c.StreamOffset, 10, 64); err != nil || n < 0 {
		return fmt.Errorf("bench: -stream-offset %q: want first, last, next, spread or an offset >= 0", c.StreamOffset)
	}
	return nil
}

// streamStart is the offset consumer i of n on one stream starts at, as an x-stream-offset
// value, and how many messages it reads in a -drain run.
func (c *Config) streamStart(i, n int) (arg any, expect int64) {
	switch c.StreamOffset {
	case "spread":
		off := int64(i) * c.StreamLength / int64(n)
		return off, c.StreamLength - off
	case "first", "last", "next":
		return c.StreamOffset, c.StreamLength
	}
	off, _ := strconv.ParseInt(c.StreamOffset, 10, 64)
	return off, max(c.StreamLength-off, 0)
}

// streamConsumeArgs are consumer i's basic.consume arguments (nil for a queue), and the
// messages it must read before a -drain run is complete.
// total is the number of consumers over all streams.
func (t *throughput) streamConsumeArgs(i, total int) (amqp.Table, int64) {
	cfg := t.cfg
	if !cfg.Stream {
		return nil, 0
	}
	nq := len(t.queues)
	// Consumers of one stream: i, i+nq, i+2nq, ...; this is the k-th of n.
	n := (total - i%nq + nq - 1) / nq
	k := i / nq
	arg, expect := cfg.streamStart(k, n)
	return amqp.Table{"x-stream-offset": arg}, expect
}
