package server

import (
	"net"
	"testing"
	"time"

	"github.com/warrenmq/warren/amqp"
)

// rawClient speaks AMQP frames to a test server, for exchanges no client library produces.
type rawClient struct {
	t  *testing.T
	nc net.Conn
	fr *amqp.FrameReader
}

func dialRaw(t *testing.T, s *Server) *rawClient {
	t.Helper()
	nc, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	c := &rawClient{t: t, nc: nc, fr: amqp.NewFrameReader(nc, 64<<10)}
	c.write(amqp.ProtocolHeader)
	c.expect(0, "connection.start")
	c.send(0, &amqp.ConnectionStartOk{Mechanism: "PLAIN", Response: "\x00guest\x00guest", Locale: "en_US"})
	c.expect(0, "connection.tune")
	c.send(0, &amqp.ConnectionTuneOk{ChannelMax: 16, FrameMax: 128 << 10})
	c.send(0, &amqp.ConnectionOpen{VirtualHost: "/"})
	c.expect(0, "connection.open-ok")
	return c
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawClient) send(ch uint16, ms ...amqp.Method) {
	c.t.Helper()
	var b []byte
	for _, m := range ms {
		b = amqp.AppendMethodFrame(b, ch, m)
	}
	c.write(b)
}

// expect reads the next method and fails unless it is want on channel ch.
func (c *rawClient) expect(ch uint16, want string) amqp.Method {
	c.t.Helper()
	f, err := c.fr.ReadNonHeartbeat()
	if err != nil {
		c.t.Fatalf("awaiting %s: %v", want, err)
	}
	m, err := amqp.DecodeMethod(f.Payload)
	if err != nil {
		c.t.Fatalf("awaiting %s: %v", want, err)
	}
	if f.Channel != ch || m.Name() != want {
		c.t.Fatalf("awaiting %s on channel %d: got %s on channel %d (%+v)", want, ch, m.Name(), f.Channel, m)
	}
	return m
}

// When the client's channel.close crosses the broker's, each side answers the other's close
// and the channel ends at the close-ok for the broker's own, as in RabbitMQ: the client's
// close-ok then finds the channel still there. The broker used to drop the channel at the
// client's close, so that close-ok was a 504 connection error (a cluster link lost every
// proxied consumer on it when the closes of a consumer timeout crossed).
func TestChannelCloseCrossing(t *testing.T) {
	s := startTestServer(t, nil)
	c := dialRaw(t, s)
	c.send(1, &amqp.ChannelOpen{})
	c.expect(1, "channel.open-ok")
	// The get fails (404): the broker closes the channel while the client's close is on its way.
	c.send(1, &amqp.BasicGet{Queue: "no-such-queue"}, &amqp.ChannelClose{ReplyCode: amqp.ReplySuccess, ReplyText: "bye"})
	if cl := c.expect(1, "channel.close").(*amqp.ChannelClose); cl.ReplyCode != amqp.NotFound {
		t.Fatalf("broker's close: %d %s", cl.ReplyCode, cl.ReplyText)
	}
	c.expect(1, "channel.close-ok") // the answer to the client's close
	c.send(1, &amqp.ChannelCloseOk{})
	// The connection is fine and the channel id free again.
	c.send(1, &amqp.ChannelOpen{})
	c.expect(1, "channel.open-ok")
	c.send(0, &amqp.ConnectionClose{ReplyCode: amqp.ReplySuccess})
	c.expect(0, "connection.close-ok")
}
