package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// What the server shows of itself to other front ends (the management API): connections,
// channels, consumers, counters, the configuration's users and permissions. Everything here is
// read off the hot path's own counters and state; nothing is kept for it.

// recvOctets is what the connection has read from its socket. c.fr is set by the handshake
// before the connection is counted in openConns (under Server.mu), and never again, so a
// listing that found the connection there may read it.
func (c *conn) recvOctets() uint64 {
	if c.fr == nil {
		return 0
	}
	return c.fr.BytesRead()
}

// churn counts connections and channels opened and closed; bumped off the message path.
type churn struct {
	connsOpened, connsClosed, chansOpened, chansClosed atomic.Uint64
}

// connStats are a connection's message counters, bumped by its reader goroutine.
type connStats struct {
	published atomic.Uint64 // basic.publish received
	returned  atomic.Uint64 // unroutable mandatory publishes returned
	dropped   atomic.Uint64 // unroutable publishes dropped
}

// Counters are the node's message counters since start, summed over its connections, past and
// present.
type Counters struct {
	Published, Confirmed, Returned, Dropped uint64
	// Churn: connections past connection.open and channels, opened and closed since start.
	ConnectionsOpened, ConnectionsClosed, ChannelsOpened, ChannelsClosed uint64
}

// counters adds the connection's counts to t (its channels' confirms included).
func (c *conn) counters(t *Counters) {
	t.Published += c.stats.published.Load()
	t.Returned += c.stats.returned.Load()
	t.Dropped += c.stats.dropped.Load()
	c.chMu.Lock()
	for _, ch := range c.channels {
		t.Confirmed += ch.confirms.acked.Load()
	}
	c.chMu.Unlock()
	t.Confirmed += c.closedConfirms.Load()
}

// Counters returns the node's message counters.
func (s *Server) Counters() Counters {
	s.mu.Lock()
	t := s.closedCounters
	for c := range s.conns {
		c.counters(&t)
	}
	s.mu.Unlock()
	t.ConnectionsOpened, t.ConnectionsClosed = s.churn.connsOpened.Load(), s.churn.connsClosed.Load()
	t.ChannelsOpened, t.ChannelsClosed = s.churn.chansOpened.Load(), s.churn.chansClosed.Load()
	return t
}

// ConnectionInfo describes one client connection past connection.open.
type ConnectionInfo struct {
	ID                    uint64
	Name                  string // "peer_host:peer_port -> host:port", as RabbitMQ names it
	User, VHost           string
	PeerHost, Host        string
	PeerPort, Port        int
	Mechanism             string
	Blocked               bool
	Channels              int
	ChannelMax, FrameMax  int
	Heartbeat             int
	ClientProperties      amqp.Table
	RecvOct, SendOct      uint64
	RecvCnt               uint64
	ConnectedAt           time.Time
	TLS                   bool
	Published, Unroutable uint64
}

func connName(nc net.Conn) string {
	return nc.RemoteAddr().String() + " -> " + nc.LocalAddr().String()
}

func splitAddr(a net.Addr) (string, int) {
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap().String(), int(ap.Port())
	}
	return a.String(), 0
}

// Connections lists the open client connections (past connection.open), oldest first. Other
// nodes' link connections are not listed: like RabbitMQ's inter-node traffic, they are the
// cluster's own, not clients'.
func (s *Server) Connections() []ConnectionInfo {
	conns := s.clientConns()
	sort.Slice(conns, func(i, j int) bool { return conns[i].id < conns[j].id })
	out := make([]ConnectionInfo, len(conns))
	for i, c := range conns {
		out[i] = c.info()
	}
	return out
}

func (c *conn) info() ConnectionInfo {
	peerHost, peerPort := splitAddr(c.nc.RemoteAddr())
	host, port := splitAddr(c.nc.LocalAddr())
	c.chMu.Lock()
	n := len(c.channels)
	c.chMu.Unlock()
	_, isTLS := c.nc.(*tls.Conn)
	return ConnectionInfo{
		ID: c.id, Name: connName(c.nc), User: c.user, VHost: c.vhost.Name(),
		PeerHost: peerHost, PeerPort: peerPort, Host: host, Port: port,
		Mechanism: c.mechanism, Blocked: c.blocked.Load(), Channels: n,
		ChannelMax: int(c.channelMax), FrameMax: int(c.frameMax), Heartbeat: int(c.heartbeat),
		ClientProperties: c.clientProps, RecvOct: c.recvOctets(), SendOct: c.w.sentOct.Load(),
		RecvCnt: uint64(c.framesIn.Load()), ConnectedAt: c.connectedAt, TLS: isTLS,
		Published: c.stats.published.Load(), Unroutable: c.stats.returned.Load() + c.stats.dropped.Load(),
	}
}

// clientConns are the open connections but the other nodes' links (see Connections).
func (s *Server) clientConns() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	conns := make([]*conn, 0, len(s.openConns))
	for c := range s.openConns {
		if !c.link {
			conns = append(conns, c)
		}
	}
	return conns
}

// ErrNoConnection is CloseConnection's error for a name no open connection has.
var ErrNoConnection = errors.New("no such connection")

// CloseConnection closes the named connection (ConnectionInfo.Name) with 320 CONNECTION_FORCED
// and the reason, as RabbitMQ's management API does.
func (s *Server) CloseConnection(name, reason string) error {
	s.mu.Lock()
	var victim *conn
	for c := range s.openConns {
		if !c.link && connName(c.nc) == name {
			victim = c
			break
		}
	}
	s.mu.Unlock()
	if victim == nil {
		return fmt.Errorf("%w: %q", ErrNoConnection, name)
	}
	if reason == "" {
		reason = "Closed via management plugin"
	}
	victim.log.Info("closing connection on request", "reason", reason)
	victim.forceClose(amqp.Errorf(amqp.ConnectionForced, "%s", reason))
	return nil
}

// ChannelInfo describes one channel.
type ChannelInfo struct {
	Connection                 ConnectionInfo
	Number                     int
	Consumers                  int
	Prefetch, ConsumerPrefetch int
	Unacked                    int
	Confirm, Transactional     bool
	Confirmed                  uint64
}

// ConsumerInfo describes one consumer.
type ConsumerInfo struct {
	Connection                     ConnectionInfo
	Channel                        int
	VHost, Queue, Tag              string
	NoAck, Exclusive               bool
	Prefetch                       int
	Arguments                      amqp.Table
	UnackedDeliveries, ChannelOpen int
}

// Channels lists the channels of every open connection, with their consumers.
func (s *Server) Channels() ([]ChannelInfo, []ConsumerInfo) {
	var chans []ChannelInfo
	var cons []ConsumerInfo
	conns := s.clientConns()
	sort.Slice(conns, func(i, j int) bool { return conns[i].id < conns[j].id })
	for _, c := range conns {
		ci := c.info()
		c.chMu.Lock()
		chs := make([]*channel, 0, len(c.channels))
		for _, ch := range c.channels {
			chs = append(chs, ch)
		}
		c.chMu.Unlock()
		sort.Slice(chs, func(i, j int) bool { return chs[i].id < chs[j].id })
		for _, ch := range chs {
			ch.mu.Lock()
			info := ChannelInfo{Connection: ci, Number: int(ch.id), Consumers: len(ch.consumers), Prefetch: ch.prefetch,
				ConsumerPrefetch: ch.consumerPrefetch, Unacked: len(ch.unacked), Confirm: ch.confirmMode.Load(),
				Transactional: ch.txMode.Load(), Confirmed: ch.confirms.acked.Load()}
			for _, cs := range ch.consumers {
				cons = append(cons, ConsumerInfo{Connection: ci, Channel: int(ch.id), VHost: ci.VHost, Queue: cs.qs.Name(),
					Tag: cs.tag, NoAck: cs.noAck, Exclusive: cs.exclusive, Prefetch: cs.prefetch, Arguments: cs.args})
			}
			ch.mu.Unlock()
			chans = append(chans, info)
		}
	}
	sort.Slice(cons, func(i, j int) bool {
		if cons[i].Queue != cons[j].Queue {
			return cons[i].Queue < cons[j].Queue
		}
		return cons[i].Tag < cons[j].Tag
	})
	return chans, cons
}

// OwnerName is the name of the connection owning exclusive queues as owner, "" when it is gone.
func (s *Server) OwnerName(owner broker.OwnerID) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.openConns {
		if broker.OwnerID(c.id) == owner {
			return connName(c.nc)
		}
	}
	return ""
}

// Config returns the running configuration (users, vhosts, permissions, policies as last
// loaded or reloaded).
func (s *Server) Config() Config { return s.rt.Load().cfg }

// CheckLogin checks a user's password as an AMQP PLAIN login would, loopback_users included
// (peer is the client's address; the zero Addr counts as remote), and returns the user's tags.
func (s *Server) CheckLogin(user, password string, peer netip.Addr) (tags []string, ok bool) {
	rt := s.rt.Load()
	u := rt.users[user]
	if u == nil || !checkPassword(u, password) {
		return nil, false
	}
	if rt.loopback[user] && !peer.IsLoopback() {
		return nil, false
	}
	return u.Tags, true
}

// Resources is the state of the resource alarms.
type Resources struct {
	MemUsed, MemLimit int64
	MemAlarm          bool
	DiskFree          int64 // -1 when unknown
	DiskFreeLimit     int64
	DiskAlarm         bool
}

// Resources reports memory and disk against their alarm limits.
func (s *Server) Resources() Resources {
	reason, _ := s.alarms.current()
	r := Resources{MemUsed: int64(processMemory()), MemLimit: s.alarms.memLimit.Load(), DiskFree: -1, DiskFreeLimit: s.cfg.DiskFreeLimit}
	r.MemAlarm = strings.Contains(reason, "memory")
	r.DiskAlarm = strings.Contains(reason, "disk")
	if s.cfg.DataDir != "" {
		if free, ok := freeDisk(s.cfg.DataDir); ok {
			r.DiskFree = int64(free)
		}
	}
	return r
}
