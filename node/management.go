// Package node puts a running Warren node's pieces together for the front ends that need more
// than one of them: Management is the management API's view (mgmt.Broker) of the AMQP server
// (connections, channels, the configuration's users) and of its broker core (vhosts, queues,
// exchanges, bindings, messages). It holds no state of its own: every call reads the server and
// the core as they are, and writes go through the same core calls a channel makes.
package node

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
	"github.com/warrenmq/warren/cluster"
	"github.com/warrenmq/warren/mgmt"
	"github.com/warrenmq/warren/persistence"
	"github.com/warrenmq/warren/queue"
	"github.com/warrenmq/warren/server"
)

// Management implements mgmt.Broker over a running server and its broker core.
type Management struct {
	s         *server.Server
	b         *broker.Broker
	started   time.Time
	node      string
	listeners []mgmt.Listener
	dataDir   string
	config    []string
	cluster   func() cluster.Status // nil on a single node
	quorum    *cluster.Node         // nil on a single node
}

// Options are what Management cannot read from the server: the node's name and the HTTP
// listeners the wiring opened (the management API's health check lists them).
type Options struct {
	Node        string          // e.g. "warren@host"; "" uses warren@<hostname>
	Listeners   []mgmt.Listener // http and http/prometheus listeners
	DataDir     string
	ConfigFiles []string
	// Cluster reports the cluster on a cluster node: the node is then named by its
	// cluster.node_name and the cluster by cluster.name. Nil on a single node.
	Cluster func() cluster.Status
	// Quorum is the cluster node that changes quorum queues' replicas (nil on a single node).
	Quorum *cluster.Node
}

// NewManagement returns the management view of s.
func NewManagement(s *server.Server, opts Options) *Management {
	name := opts.Node
	if name == "" && opts.Cluster != nil {
		name = opts.Cluster().Node
	}
	if name == "" {
		host, _ := os.Hostname()
		name = "warren@" + host
	}
	m := &Management{s: s, b: s.Broker(), started: time.Now(), node: name, dataDir: opts.DataDir, config: opts.ConfigFiles, cluster: opts.Cluster, quorum: opts.Quorum}
	for _, a := range []net.Addr{s.Addr(), s.TLSAddr()} {
		if a == nil {
			continue
		}
		proto := "amqp"
		if a == s.TLSAddr() {
			proto = "amqp/ssl"
		}
		m.listeners = append(m.listeners, listenerOf(proto, a))
	}
	m.listeners = append(m.listeners, opts.Listeners...)
	return m
}

// ListenerOf describes a listening address for Options.Listeners.
func ListenerOf(protocol string, a net.Addr) mgmt.Listener { return listenerOf(protocol, a) }

func listenerOf(protocol string, a net.Addr) mgmt.Listener {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return mgmt.Listener{Protocol: protocol, IP: a.String()}
	}
	ip := ap.Addr().Unmap().String()
	if ap.Addr().IsUnspecified() {
		ip = "::"
	}
	return mgmt.Listener{Protocol: protocol, IP: ip, Port: int(ap.Port())}
}

// apiActor is the management API acting in the core: it has no connection (so it owns no
// exclusive queue) and the API checked the user's permissions before calling; a non-nil
// authorizer keeps the vhost limits in force, as for any client.
var apiActor = broker.Actor{Authz: allowed{}}

type allowed struct{}

func (allowed) Authorize(broker.Perm, broker.Resource, string) *amqp.Error { return nil }

// apiError maps a core error onto the API's kinds, with RabbitMQ's text (without the
// "CODE_NAME - " prefix AMQP reply texts carry).
func apiError(e *amqp.Error) error {
	if e == nil {
		return nil
	}
	text := e.Text
	if i := strings.Index(text, " - "); i >= 0 && i < 32 {
		text = text[i+3:]
	}
	switch e.Code {
	case amqp.NotFound:
		return mgmt.NotFound("%s", text)
	case amqp.PreconditionFailed:
		return mgmt.PreconditionFailed("%s", text)
	case amqp.AccessRefused:
		return mgmt.AccessRefused("%s", text)
	case amqp.ResourceLocked:
		return mgmt.ResourceLocked("%s", text)
	case amqp.CommandInvalid, amqp.NotImplemented:
		return mgmt.BadRequest("%s", text)
	}
	return &mgmt.Error{Kind: mgmt.KindInternal, Reason: text, Err: e}
}

func (m *Management) vhost(name string) (*broker.VHost, error) {
	v := m.b.VHost(name)
	if v == nil {
		return nil, mgmt.NotFound("no vhost '%s'", name)
	}
	return v, nil
}

// vhosts is the named vhost, or all of them for "".
func (m *Management) vhosts(name string) []*broker.VHost {
	if name != "" {
		if v := m.b.VHost(name); v != nil {
			return []*broker.VHost{v}
		}
		return nil
	}
	return m.b.VHosts()
}

// Overview implements mgmt.Broker.
func (m *Management) Overview() mgmt.Overview {
	cfg := m.s.Config()
	chans, cons := m.s.Channels()
	o := mgmt.Overview{
		ClusterName: m.clusterName(), Node: m.node, Version: server.Version, Listeners: m.listeners, StartedAt: m.started,
		Connections: len(m.s.Connections()), Channels: len(chans), Consumers: len(cons),
		Processors: runtime.NumCPU(), RunQueue: runtime.NumGoroutine(),
		ExchangeTypes:  []string{"direct", "fanout", "headers", "topic"},
		AuthMechanisms: []string{"PLAIN", "AMQPLAIN", "EXTERNAL"},
		ConfigFiles:    m.config, DataDir: m.dataDir, MemoryHighWatermarkRelative: cfg.MemoryHighWatermark,
	}
	var paged int64
	for _, v := range m.b.VHosts() {
		o.Exchanges += len(v.Exchanges())
		for _, q := range v.Queues() {
			o.Queues++
			o.MessagesReady += int64(q.Counts.Ready)
			o.MessagesUnacked += int64(q.Counts.Unacked)
			paged += int64(q.Counts.Ready - q.Counts.InMemory)
			addQueueStats(&o.Stats, q.Stats)
		}
	}
	o.Messages = o.MessagesReady + o.MessagesUnacked
	c := m.s.Counters()
	o.Stats.Publish, o.Stats.Confirm = c.Published, c.Confirmed
	o.Stats.ReturnUnroutable, o.Stats.DropUnroutable = c.Returned, c.Dropped
	bs := m.b.Stats()
	o.Churn = mgmt.Churn{ConnectionsOpened: c.ConnectionsOpened, ConnectionsClosed: c.ConnectionsClosed,
		ChannelsOpened: c.ChannelsOpened, ChannelsClosed: c.ChannelsClosed,
		QueuesCreated: bs.QueuesCreated, QueuesDeclared: bs.QueuesCreated, QueuesDeleted: bs.QueuesDeleted}
	o.Warren.FlowPauses = bs.FlowPauses
	o.Warren.ForwardsDropped = m.b.ForwardsDropped()
	r := m.s.Resources()
	o.MemUsed, o.MemLimit, o.MemAlarm = r.MemUsed, r.MemLimit, r.MemAlarm
	o.DiskFree, o.DiskFreeLimit, o.DiskAlarm = r.DiskFree, r.DiskFreeLimit, r.DiskAlarm
	o.FDUsed, o.FDTotal = openFiles()
	o.Warren.PagedOutMessages = paged
	if st := m.b.Store(); st != nil {
		js := st.Stats()
		o.Warren.JournalCommits = js.Commits
		o.Warren.JournalCommitMessages = js.Publishes
		h := mgmt.Histogram{Count: js.CommitSeconds.Count, Sum: js.CommitSeconds.Sum, Buckets: map[float64]uint64{}}
		for i, b := range persistence.CommitBuckets {
			h.Buckets[b] = js.CommitSeconds.Counts[i]
		}
		o.Warren.Fsync = h
	}
	if m.cluster != nil {
		o.Cluster = clusterInfo(m.cluster())
	}
	return o
}

func addQueueStats(c *mgmt.Counters, s broker.QueueStats) {
	c.Deliver += s.Deliver
	c.DeliverNoAck += s.DeliverNoAck
	c.Get += s.Get
	c.GetNoAck += s.GetNoAck
	c.GetEmpty += s.GetEmpty
	c.Ack += s.Ack
	c.Redeliver += s.Redeliver
}

// openFiles counts the process's open file descriptors and their limit; zeros where the system
// does not say.
func openFiles() (used, total int) {
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		used = len(ents)
	}
	return used, maxFiles()
}

// VHosts implements mgmt.Broker.
func (m *Management) VHosts() []mgmt.VHostInfo {
	cfg := m.s.Config()
	var out []mgmt.VHostInfo
	for _, vc := range cfg.VHosts {
		info := mgmt.VHostInfo{Name: vc.Name, Description: vc.Description, Limits: map[string]any{}}
		if n, ok := vc.MaxConnections.Value(); ok {
			info.Limits["max-connections"] = n
		}
		if n, ok := vc.MaxQueues.Value(); ok {
			info.Limits["max-queues"] = n
		}
		if v := m.b.VHost(vc.Name); v != nil {
			for _, q := range v.Queues() {
				info.MessagesReady += int64(q.Counts.Ready)
				info.MessagesUnacked += int64(q.Counts.Unacked)
				addQueueStats(&info.Stats, q.Stats)
			}
		}
		info.Messages = info.MessagesReady + info.MessagesUnacked
		for _, c := range m.s.Connections() {
			if c.VHost == vc.Name {
				info.RecvOct += c.RecvOct
				info.SendOct += c.SendOct
				info.Stats.Publish += c.Published
			}
		}
		out = append(out, info)
	}
	return out
}

// NodeName implements mgmt.NodeNamer.
func (m *Management) NodeName() string { return m.node }

// VHostExists implements mgmt.VHostChecker.
func (m *Management) VHostExists(name string) bool { return m.b.VHost(name) != nil }

// Queues implements mgmt.Broker.
func (m *Management) Queues(vhost string) []mgmt.QueueInfo {
	var out []mgmt.QueueInfo
	owners := map[broker.OwnerID]string{}
	views := m.quorumViews(vhost)
	for _, v := range m.vhosts(vhost) {
		qs := v.Queues()
		out = slices.Grow(out, len(qs))
		for _, q := range qs {
			info := m.queueInfo(q, owners)
			if q.Quorum {
				m.addQuorum(&info, views)
			}
			out = append(out, info)
		}
	}
	return out
}

// QueueNames implements mgmt.QueueNamer.
func (m *Management) QueueNames(vhost string) []mgmt.QueueName {
	var out []mgmt.QueueName
	for _, v := range m.vhosts(vhost) {
		names := v.QueueNames()
		out = slices.Grow(out, len(names))
		for _, n := range names {
			out = append(out, mgmt.QueueName{VHost: v.Name(), Name: n})
		}
	}
	return out
}

// Queue implements mgmt.Broker.
func (m *Management) Queue(vhost, name string) (mgmt.QueueInfo, bool) {
	v := m.b.VHost(vhost)
	if v == nil {
		return mgmt.QueueInfo{}, false
	}
	q, ok := v.QueueInfo(name)
	if !ok {
		return mgmt.QueueInfo{}, false
	}
	info := m.queueInfo(q, map[broker.OwnerID]string{})
	if q.Quorum {
		m.addQuorum(&info, m.quorumView(vhost, name))
	}
	return info, true
}

func (m *Management) queueInfo(q broker.QueueInfo, owners map[broker.OwnerID]string) mgmt.QueueInfo {
	info := mgmt.QueueInfo{
		VHost: q.VHost, Name: q.Name, Durable: q.Durable, AutoDelete: q.AutoDelete, Exclusive: q.Exclusive,
		Type: "classic", State: "running", Arguments: tableToJSON(q.Args),
		MessagesReady: int64(q.Counts.Ready), MessagesUnacked: int64(q.Counts.Unacked),
		BytesReady: q.Counts.Bytes, Consumers: q.Counts.Consumers,
		MessagesRAM: int64(q.Counts.InMemory), MessagesPagedOut: int64(q.Counts.Ready - q.Counts.InMemory),
	}
	if q.Quorum {
		info.Type = "quorum"
	} else if v := m.b.VHost(q.VHost); v != nil && v.QueueHomeDown(q.Name) {
		info.State = "down" // RabbitMQ's state for a classic queue whose node is down
	}
	info.Messages = info.MessagesReady + info.MessagesUnacked
	info.Bytes = info.BytesReady
	if q.Counts.Ready > 0 {
		info.BytesRAM = q.Counts.Bytes * int64(q.Counts.InMemory) / int64(q.Counts.Ready)
		info.BytesPagedOut = q.Counts.Bytes - info.BytesRAM
	}
	info.Memory = info.BytesRAM
	if q.Durable {
		info.MessagesPersistent, info.BytesPersistent = info.Messages, info.Bytes
	}
	if q.Counts.Consumers > 0 && q.Counts.Ready == 0 {
		info.ConsumerUtilisation = 1 // the consumers take everything as it comes
	}
	if q.Exclusive {
		name, ok := owners[q.Owner]
		if !ok {
			name = m.s.OwnerName(q.Owner)
			owners[q.Owner] = name
		}
		info.Owner = name
	}
	if q.Policy != nil {
		info.Policy = q.Policy.Name()
		info.EffectivePolicy = q.Policy.Definition()
	}
	s := q.Stats
	info.Stats = mgmt.Counters{Publish: s.Publish, Deliver: s.Deliver, DeliverNoAck: s.DeliverNoAck, Get: s.Get,
		GetNoAck: s.GetNoAck, GetEmpty: s.GetEmpty, Ack: s.Ack, Redeliver: s.Redeliver}
	return info
}

// Exchanges implements mgmt.Broker.
func (m *Management) Exchanges(vhost string) []mgmt.ExchangeInfo {
	var out []mgmt.ExchangeInfo
	for _, v := range m.vhosts(vhost) {
		for _, x := range v.Exchanges() {
			info := mgmt.ExchangeInfo{VHost: x.VHost, Name: x.Name, Type: x.Type, Durable: x.Durable,
				AutoDelete: x.AutoDelete, Internal: x.Internal, Arguments: tableToJSON(x.Args),
				Stats: mgmt.Counters{PublishIn: x.PublishIn, PublishOut: x.PublishOut}}
			if x.Policy != nil {
				info.Policy = x.Policy.Name()
			}
			out = append(out, info)
		}
	}
	return out
}

// Bindings implements mgmt.Broker.
func (m *Management) Bindings(vhost string) []mgmt.BindingInfo {
	var out []mgmt.BindingInfo
	for _, v := range m.vhosts(vhost) {
		for _, b := range v.Bindings() {
			dt := "queue"
			if b.ToExchange {
				dt = "exchange"
			}
			out = append(out, mgmt.BindingInfo{VHost: v.Name(), Source: b.Source, Destination: b.Destination,
				DestinationType: dt, RoutingKey: b.Key, Arguments: tableToJSON(b.Args)})
		}
	}
	return out
}

func connInfo(c server.ConnectionInfo) mgmt.ConnectionInfo {
	state := "running"
	if c.Blocked {
		state = "blocked"
	}
	proto := "AMQP 0-9-1"
	return mgmt.ConnectionInfo{
		Name: c.Name, User: c.User, VHost: c.VHost, Host: c.Host, PeerHost: c.PeerHost, Port: c.Port, PeerPort: c.PeerPort,
		Protocol: proto, AuthMechanism: c.Mechanism, State: state, Channels: c.Channels, ChannelMax: c.ChannelMax,
		FrameMax: c.FrameMax, Heartbeat: c.Heartbeat, ClientProperties: tableToJSON(c.ClientProperties),
		RecvOct: c.RecvOct, SendOct: c.SendOct, RecvCnt: c.RecvCnt, ConnectedAt: c.ConnectedAt, TLS: c.TLS,
	}
}

// Connections implements mgmt.Broker.
func (m *Management) Connections() []mgmt.ConnectionInfo {
	cs := m.s.Connections()
	out := make([]mgmt.ConnectionInfo, len(cs))
	for i, c := range cs {
		out[i] = connInfo(c)
	}
	return out
}

// Channels implements mgmt.Broker.
func (m *Management) Channels() []mgmt.ChannelInfo {
	chans, _ := m.s.Channels()
	out := make([]mgmt.ChannelInfo, len(chans))
	for i, ch := range chans {
		out[i] = mgmt.ChannelInfo{
			Connection: ch.Connection.Name, Number: ch.Number, User: ch.Connection.User, VHost: ch.Connection.VHost,
			PeerHost: ch.Connection.PeerHost, PeerPort: ch.Connection.PeerPort, State: "running", Consumers: ch.Consumers,
			PrefetchCount: ch.ConsumerPrefetch, GlobalCount: ch.Prefetch, Unacked: ch.Unacked,
			Confirm: ch.Confirm, Transactional: ch.Transactional, Stats: mgmt.Counters{Confirm: ch.Confirmed},
		}
	}
	return out
}

// Consumers implements mgmt.Broker.
func (m *Management) Consumers() []mgmt.ConsumerInfo {
	_, cons := m.s.Channels()
	out := make([]mgmt.ConsumerInfo, len(cons))
	for i, c := range cons {
		out[i] = mgmt.ConsumerInfo{
			VHost: c.VHost, Queue: c.Queue, Tag: c.Tag, Connection: c.Connection.Name, Channel: c.Channel,
			User: c.Connection.User, PeerHost: c.Connection.PeerHost, PeerPort: c.Connection.PeerPort,
			AckRequired: !c.NoAck, Exclusive: c.Exclusive, Active: true, PrefetchCount: c.Prefetch,
			Arguments: tableToJSON(c.Arguments),
		}
	}
	return out
}

// Users implements mgmt.Broker.
func (m *Management) Users() []mgmt.UserInfo {
	cfg := m.s.Config()
	out := make([]mgmt.UserInfo, 0, len(cfg.Users))
	for _, u := range cfg.Users {
		info := mgmt.UserInfo{Name: u.Name, Tags: u.Tags, Limits: map[string]any{}}
		info.PasswordHash = u.PasswordHash
		if info.PasswordHash == "" && u.Password != "" {
			info.PasswordHash = server.NewPasswordHash(u.Password)
		}
		if n, ok := u.MaxConnections.Value(); ok {
			info.Limits["max-connections"] = n
		}
		if n, ok := u.MaxChannels.Value(); ok {
			info.Limits["max-channels"] = n
		}
		out = append(out, info)
	}
	return out
}

// Permissions implements mgmt.Broker.
func (m *Management) Permissions() []mgmt.PermissionInfo {
	cfg := m.s.Config()
	out := make([]mgmt.PermissionInfo, 0, len(cfg.Permissions))
	for _, p := range cfg.Permissions {
		out = append(out, mgmt.PermissionInfo{User: p.User, VHost: p.VHost, Configure: p.Configure, Write: p.Write, Read: p.Read})
	}
	return out
}

// Policies implements mgmt.Broker.
func (m *Management) Policies() []mgmt.PolicyInfo {
	cfg := m.s.Config()
	out := make([]mgmt.PolicyInfo, 0, len(cfg.Policies))
	for _, p := range cfg.Policies {
		applyTo := p.ApplyTo
		if applyTo == "" {
			applyTo = "all"
		}
		out = append(out, mgmt.PolicyInfo{VHost: p.VHost, Name: p.Name, Pattern: p.Pattern, ApplyTo: applyTo,
			Priority: p.Priority, Definition: p.Definition})
	}
	return out
}

// Authenticate implements mgmt.Broker.
func (m *Management) Authenticate(user, password string, peer netip.Addr) ([]string, bool) {
	return m.s.CheckLogin(user, password, peer)
}

// DeclareQueue implements mgmt.Broker.
func (m *Management) DeclareQueue(vhost, name string, opts mgmt.QueueOptions) (bool, error) {
	v, err := m.vhost(vhost)
	if err != nil {
		return false, err
	}
	args, err := tableFromJSON(opts.Arguments)
	if err != nil {
		return false, err
	}
	if _, e := v.Queue(apiActor, name); e == nil {
		_, e := v.DeclareQueue(apiActor, broker.QueueSpec{Name: name, Durable: opts.Durable, AutoDelete: opts.AutoDelete, Args: args})
		return false, apiError(e)
	}
	_, e := v.DeclareQueue(apiActor, broker.QueueSpec{Name: name, Durable: opts.Durable, AutoDelete: opts.AutoDelete, Args: args})
	return e == nil, apiError(e)
}

// DeleteQueue implements mgmt.Broker.
func (m *Management) DeleteQueue(vhost, name string, ifUnused, ifEmpty bool) error {
	v, err := m.vhost(vhost)
	if err != nil {
		return err
	}
	if _, e := v.Queue(apiActor, name); e != nil && e.Code == amqp.NotFound {
		return apiError(e)
	}
	_, e := v.DeleteQueue(apiActor, name, ifUnused, ifEmpty)
	return apiError(e)
}

// PurgeQueue implements mgmt.Broker.
func (m *Management) PurgeQueue(vhost, name string) (int, error) {
	v, err := m.vhost(vhost)
	if err != nil {
		return 0, err
	}
	n, e := v.PurgeQueue(apiActor, name)
	return n, apiError(e)
}

// GetMessages implements mgmt.Broker: the messages are taken as basic.get with acks would take
// them, then all settled together as mode says (so a requeued message is not taken twice).
func (m *Management) GetMessages(vhost, name string, count int, mode mgmt.AckMode) ([]mgmt.Message, error) {
	v, err := m.vhost(vhost)
	if err != nil {
		return nil, err
	}
	var out []mgmt.Message
	var qs *broker.Queue
	var es []*queue.Entry
	for i := 0; i < count; i++ {
		q, e, remaining, ok, aerr := v.Get(apiActor, name, false)
		if aerr != nil {
			return nil, apiError(aerr)
		}
		if !ok {
			break
		}
		qs = q
		es = append(es, e)
		out = append(out, mgmt.Message{Exchange: e.Msg.Exchange, RoutingKey: e.Msg.RoutingKey,
			Redelivered: e.Deliveries > 1, Remaining: remaining, Properties: propertiesToJSON(e.Msg.Header), Payload: e.Msg.Body})
	}
	if qs != nil {
		kind := broker.Requeue
		switch mode {
		case mgmt.AckNoRequeue:
			kind = broker.Ack
		case mgmt.RejectDrop:
			kind = broker.Reject
		}
		qs.Settle(kind, es, nil)
	}
	return out, nil
}

// DeclareExchange implements mgmt.Broker.
func (m *Management) DeclareExchange(vhost, name string, opts mgmt.ExchangeOptions) (bool, error) {
	v, err := m.vhost(vhost)
	if err != nil {
		return false, err
	}
	args, err := tableFromJSON(opts.Arguments)
	if err != nil {
		return false, err
	}
	_, missing := v.Exchange(name)
	e := v.DeclareExchange(apiActor, broker.ExchangeSpec{Name: name, Type: opts.Type, Durable: opts.Durable,
		AutoDelete: opts.AutoDelete, Internal: opts.Internal, Args: args})
	return e == nil && missing != nil, apiError(e)
}

// DeleteExchange implements mgmt.Broker.
func (m *Management) DeleteExchange(vhost, name string, ifUnused bool) error {
	v, err := m.vhost(vhost)
	if err != nil {
		return err
	}
	if _, e := v.Exchange(name); e != nil {
		return apiError(e)
	}
	return apiError(v.DeleteExchange(apiActor, name, ifUnused))
}

func bindingSpec(b mgmt.BindingInfo) (broker.BindingSpec, error) {
	args, err := tableFromJSON(b.Arguments)
	return broker.BindingSpec{Source: b.Source, Destination: b.Destination, ToExchange: b.DestinationType == "exchange",
		Key: b.RoutingKey, Args: args}, err
}

// Bind implements mgmt.Broker.
func (m *Management) Bind(b mgmt.BindingInfo) error {
	v, err := m.vhost(b.VHost)
	if err != nil {
		return err
	}
	spec, err := bindingSpec(b)
	if err != nil {
		return err
	}
	return apiError(v.Bind(apiActor, spec))
}

// Unbind implements mgmt.Broker: a binding that does not exist is NotFound, as in RabbitMQ's API.
func (m *Management) Unbind(b mgmt.BindingInfo) error {
	v, err := m.vhost(b.VHost)
	if err != nil {
		return err
	}
	spec, err := bindingSpec(b)
	if err != nil {
		return err
	}
	found := false
	for _, x := range v.Bindings() {
		if x.Source == spec.Source && x.Destination == spec.Destination && x.ToExchange == spec.ToExchange &&
			x.Key == spec.Key && (len(x.Args) == 0 && len(spec.Args) == 0 || x.Args.Equal(spec.Args)) {
			found = true
			break
		}
	}
	if !found {
		return mgmt.NotFound("")
	}
	return apiError(v.Unbind(apiActor, spec))
}

// Publish implements mgmt.Broker.
func (m *Management) Publish(vhost, exchange string, p mgmt.Publishing) (bool, error) {
	v, err := m.vhost(vhost)
	if err != nil {
		return false, err
	}
	ex, e := v.Exchange(exchange)
	if e != nil {
		return false, apiError(e)
	}
	props, err := propertiesFromJSON(p.Properties)
	if err != nil {
		return false, err
	}
	header := amqp.AppendContentHeader(nil, amqp.ClassBasic, uint64(len(p.Payload)), &props)
	sum, serr := amqp.ScanContentHeader(header)
	if serr != nil {
		return false, mgmt.BadRequest("%v", serr)
	}
	msg, e := m.b.NewMessage(ex, p.RoutingKey, header, &sum, p.Payload)
	if e != nil {
		return false, apiError(e)
	}
	done := make(chan error, 1)
	pub := v.NewPublisher()
	res, _ := pub.Publish(ex, msg, sum.HeadersRaw, func(err error) { done <- err })
	pub.Flush()
	if res.OnDisk {
		if err := <-done; err != nil {
			return false, &mgmt.Error{Kind: mgmt.KindInternal, Reason: "storing the message failed", Err: err}
		}
	}
	return res.Routed && !res.Refused, nil
}

// CloseConnection implements mgmt.Broker.
func (m *Management) CloseConnection(name, reason string) error {
	if err := m.s.CloseConnection(name, reason); err != nil {
		if errors.Is(err, server.ErrNoConnection) {
			return mgmt.NotFound("")
		}
		return err
	}
	return nil
}

// tableToJSON turns an AMQP table into values JSON encodes as RabbitMQ's API shows them.
func tableToJSON(t amqp.Table) map[string]any {
	out := make(map[string]any, len(t))
	for k, v := range t {
		out[k] = valueToJSON(v)
	}
	return out
}

func valueToJSON(v any) any {
	switch x := v.(type) {
	case amqp.Table:
		return tableToJSON(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = valueToJSON(e)
		}
		return out
	case []byte:
		return string(x)
	case time.Time:
		return x.Unix()
	case amqp.Decimal:
		return float64(x.Value) / math.Pow10(int(x.Scale))
	}
	return v
}

// tableFromJSON turns JSON arguments into an AMQP table: whole numbers become long integers
// (RabbitMQ's API does the same), so that x-max-length: 5 is an integer argument.
func tableFromJSON(m map[string]any) (amqp.Table, error) {
	if len(m) == 0 {
		return nil, nil
	}
	t := make(amqp.Table, len(m))
	for k, v := range m {
		x, err := valueFromJSON(v)
		if err != nil {
			return nil, mgmt.BadRequest("argument %q: %v", k, err)
		}
		t[k] = x
	}
	return t, nil
}

func valueFromJSON(v any) (any, error) {
	switch x := v.(type) {
	case nil, bool, string, int64, int32, int:
		return x, nil
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<62 {
			return int64(x), nil
		}
		return x, nil
	case map[string]any:
		return tableFromJSON(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			y, err := valueFromJSON(e)
			if err != nil {
				return nil, err
			}
			out[i] = y
		}
		return out, nil
	}
	return nil, fmt.Errorf("unsupported value %v of type %T", v, v)
}

// propertiesToJSON lists a message's basic properties with the management API's names.
func propertiesToJSON(header []byte) map[string]any {
	h, err := amqp.DecodeContentHeader(header)
	if err != nil {
		return map[string]any{}
	}
	p := h.Props
	out := map[string]any{}
	set := func(name string, flag uint16, v any) {
		if h.Flags&flag != 0 {
			out[name] = v
		}
	}
	set("content_type", amqp.FlagContentType, p.ContentType)
	set("content_encoding", amqp.FlagContentEncoding, p.ContentEncoding)
	set("headers", amqp.FlagHeaders, tableToJSON(p.Headers))
	set("delivery_mode", amqp.FlagDeliveryMode, p.DeliveryMode)
	set("priority", amqp.FlagPriority, p.Priority)
	set("correlation_id", amqp.FlagCorrelationID, p.CorrelationID)
	set("reply_to", amqp.FlagReplyTo, p.ReplyTo)
	set("expiration", amqp.FlagExpiration, p.Expiration)
	set("message_id", amqp.FlagMessageID, p.MessageID)
	set("timestamp", amqp.FlagTimestamp, p.Timestamp.Unix())
	set("type", amqp.FlagType, p.Type)
	set("user_id", amqp.FlagUserID, p.UserID)
	set("app_id", amqp.FlagAppID, p.AppID)
	return out
}

// propertiesFromJSON reads the properties of a message published through the API.
func propertiesFromJSON(m map[string]any) (amqp.Properties, error) {
	var p amqp.Properties
	str := func(k string) (string, error) {
		v, ok := m[k]
		if !ok {
			return "", nil
		}
		s, ok := v.(string)
		if !ok {
			return "", mgmt.BadRequest("property %q: not a string", k)
		}
		return s, nil
	}
	num := func(k string, max float64) (float64, bool, error) {
		v, ok := m[k]
		if !ok {
			return 0, false, nil
		}
		var f float64
		isNum := true
		switch x := v.(type) {
		case int64: // whole numbers, as the API decodes them
			f = float64(x)
		case float64:
			f = x
		default:
			isNum = false
		}
		if !isNum || f < 0 || f > max || f != math.Trunc(f) {
			return 0, false, mgmt.BadRequest("property %q: not an integer from 0 to %v", k, max)
		}
		return f, true, nil
	}
	var err error
	for _, f := range []struct {
		key string
		dst *string
	}{{"content_type", &p.ContentType}, {"content_encoding", &p.ContentEncoding}, {"correlation_id", &p.CorrelationID},
		{"reply_to", &p.ReplyTo}, {"expiration", &p.Expiration}, {"message_id", &p.MessageID}, {"type", &p.Type},
		{"user_id", &p.UserID}, {"app_id", &p.AppID}} {
		if *f.dst, err = str(f.key); err != nil {
			return p, err
		}
	}
	if n, ok, err := num("delivery_mode", 2); err != nil {
		return p, err
	} else if ok {
		p.DeliveryMode = uint8(n)
	}
	if n, ok, err := num("priority", 255); err != nil {
		return p, err
	} else if ok {
		p.Priority = uint8(n)
	}
	if n, ok, err := num("timestamp", math.MaxInt64); err != nil {
		return p, err
	} else if ok {
		p.Timestamp = time.Unix(int64(n), 0)
	}
	if h, ok := m["headers"]; ok {
		hm, isMap := h.(map[string]any)
		if !isMap {
			return p, mgmt.BadRequest("property \"headers\": not an object")
		}
		if p.Headers, err = tableFromJSON(hm); err != nil {
			return p, err
		}
	}
	return p, nil
}

// clusterName is cluster.name on a cluster node, "warren" (the default cluster_name) otherwise.
func (m *Management) clusterName() string {
	if m.cluster != nil {
		if n := m.cluster().Cluster; n != "" {
			return n
		}
	}
	return "warren"
}

// clusterInfo is the management API's view of a cluster status.
func clusterInfo(st cluster.Status) *mgmt.ClusterInfo {
	ci := &mgmt.ClusterInfo{Leader: st.Leader, State: st.State, Term: st.Term, CommitIndex: st.CommitIndex,
		AppliedIndex: st.AppliedIndex, ConfigDigest: st.ConfigDigest}
	for _, m := range st.Members {
		ci.Members = append(ci.Members, mgmt.ClusterMember{Name: m.Name, Address: m.Address, Running: m.Running,
			Voter: m.Voter, ConfigDigest: m.ConfigDigest, ConfigMatch: m.ConfigMatch, AppliedIndex: m.AppliedIndex, LastSeen: m.LastSeen})
	}
	return ci
}
