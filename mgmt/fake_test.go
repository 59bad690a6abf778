package mgmt

import (
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"
)

// fakeBroker is a small in-memory Broker for the API tests. Its error texts are RabbitMQ's, so
// it also shows the adapter over the real core what each method is expected to return.
type fakeBroker struct {
	mu        sync.Mutex
	vhosts    []VHostInfo
	users     map[string]fakeUser
	perms     []PermissionInfo
	policies  []PolicyInfo
	exchanges map[string]*ExchangeInfo // vhost\x00name
	queues    map[string]*fakeQueue
	bindings  []BindingInfo
	conns     []ConnectionInfo
	channels  []ChannelInfo
	consumers []ConsumerInfo
	closed    map[string]string // connection -> reason
	overview  Overview
}

type fakeUser struct {
	pass         string
	info         UserInfo
	loopbackOnly bool // as loopback_users
}

type fakeQueue struct {
	info QueueInfo
	msgs []Message
}

func key(vhost, name string) string { return vhost + "\x00" + name }

// newFake builds the state the RabbitMQ captures in testdata were taken with (see capture.py).
func newFake() *fakeBroker {
	f := &fakeBroker{
		users:     map[string]fakeUser{},
		exchanges: map[string]*ExchangeInfo{},
		queues:    map[string]*fakeQueue{},
		closed:    map[string]string{},
	}
	f.overview = Overview{
		ClusterName: "warren@test", Node: "warren@test", Version: "0.1.0",
		Listeners: []Listener{{"amqp", "::", 5672}, {"http", "::", 15672}, {"http/prometheus", "::", 15692}},
		StartedAt: time.Now().Add(-time.Minute), MemUsed: 100 << 20, MemLimit: 1 << 30,
		DiskFree: 10 << 30, DiskFreeLimit: 50_000_000, FDUsed: 20, FDTotal: 1024, Processors: 2,
		AuthMechanisms: []string{"PLAIN", "AMQPLAIN"},
	}
	f.vhosts = []VHostInfo{{Name: "/", Description: "Default virtual host"}, {Name: "other", Limits: map[string]any{"max-connections": 10}}}
	for _, u := range []struct{ name, tag string }{{"guest", "administrator"}, {"mon", "monitoring"}, {"mgr", "management"}, {"pm", "policymaker"}, {"notag", ""}} {
		var tags []string
		if u.tag != "" {
			tags = []string{u.tag}
		}
		f.users[u.name] = fakeUser{pass: u.name, info: UserInfo{Name: u.name, PasswordHash: "hash-" + u.name, Tags: tags}}
	}
	f.perms = []PermissionInfo{{"guest", "/", ".*", ".*", ".*"}, {"mgr", "other", ".*", ".*", ".*"}}
	f.policies = []PolicyInfo{{VHost: "/", Name: "ttlpol", Pattern: "^q2$", ApplyTo: "queues", Definition: map[string]any{"message-ttl": 120000}}}
	for _, v := range []string{"/", "other"} {
		for _, e := range []struct{ name, typ string }{{"", "direct"}, {"amq.direct", "direct"}, {"amq.fanout", "fanout"}, {"amq.topic", "topic"}, {"amq.headers", "headers"}, {"amq.match", "headers"}} {
			f.exchanges[key(v, e.name)] = &ExchangeInfo{VHost: v, Name: e.name, Type: e.typ, Durable: true}
		}
	}
	must := func(_ bool, err error) {
		if err != nil {
			panic(err)
		}
	}
	must(f.DeclareQueue("/", "q1", QueueOptions{Durable: true, Arguments: map[string]any{"x-message-ttl": int64(60000), "x-max-length": int64(1000)}}))
	must(f.DeclareQueue("/", "q2", QueueOptions{}))
	must(f.DeclareExchange("/", "ex1", ExchangeOptions{Type: "topic", Durable: true}))
	must(true, f.Bind(BindingInfo{VHost: "/", Source: "ex1", Destination: "q1", DestinationType: "queue", RoutingKey: "a.#"}))
	must(true, f.Bind(BindingInfo{VHost: "/", Source: "ex1", Destination: "amq.fanout", DestinationType: "exchange", RoutingKey: "k"}))
	for i := 0; i < 5; i++ {
		must(f.Publish("/", "ex1", Publishing{RoutingKey: "a.b", Payload: []byte("hello")}))
		must(f.Publish("/", "", Publishing{RoutingKey: "q2", Payload: []byte("hi"), Properties: map[string]any{"headers": map[string]any{"h": "v"}}}))
	}
	conn := "127.0.0.1:33296 -> 127.0.0.1:5672"
	f.conns = []ConnectionInfo{{
		Name: conn, User: "guest", VHost: "/", Host: "127.0.0.1", Port: 5672, PeerHost: "127.0.0.1", PeerPort: 33296,
		Protocol: "AMQP 0-9-1", AuthMechanism: "PLAIN", State: "running", Channels: 2, ChannelMax: 2047, FrameMax: 131072,
		Heartbeat: 10, ClientProperties: map[string]any{"connection_name": "capture"}, RecvOct: 1143, SendOct: 881,
		ConnectedAt: time.Now(),
	}}
	f.channels = []ChannelInfo{
		{Connection: conn, Number: 1, User: "guest", VHost: "/", PeerHost: "127.0.0.1", PeerPort: 33296, State: "running", PrefetchCount: 10},
		{Connection: conn, Number: 2, User: "guest", VHost: "/", PeerHost: "127.0.0.1", PeerPort: 33296, State: "running", PrefetchCount: 2, Consumers: 1, Unacked: 2},
	}
	f.consumers = []ConsumerInfo{{VHost: "/", Queue: "q1", Tag: "ctag1", Connection: conn, Channel: 2, User: "guest",
		PeerHost: "127.0.0.1", PeerPort: 33296, AckRequired: true, Active: true, PrefetchCount: 2}}
	q1 := f.queues[key("/", "q1")]
	q1.info.Consumers = 1
	// The consumer holds two messages unacknowledged.
	q1.msgs = q1.msgs[2:]
	q1.info.MessagesUnacked = 2
	return f
}

func (f *fakeBroker) Overview() Overview {
	f.mu.Lock()
	defer f.mu.Unlock()
	o := f.overview
	o.Connections, o.Channels, o.Consumers, o.Exchanges, o.Queues = len(f.conns), len(f.channels), len(f.consumers), len(f.exchanges), len(f.queues)
	for _, q := range f.queues {
		qi := f.queueInfo(q)
		o.Messages += qi.Messages
		o.MessagesReady += qi.MessagesReady
		o.MessagesUnacked += qi.MessagesUnacked
		addCounters(&o.Stats, &qi.Stats)
	}
	return o
}

func (f *fakeBroker) VHosts() []VHostInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := slices.Clone(f.vhosts)
	for i := range out {
		for _, q := range f.queues {
			if q.info.VHost == out[i].Name {
				qi := f.queueInfo(q)
				out[i].Messages += qi.Messages
				out[i].MessagesReady += qi.MessagesReady
				out[i].MessagesUnacked += qi.MessagesUnacked
				addCounters(&out[i].Stats, &qi.Stats)
			}
		}
	}
	return out
}

func (f *fakeBroker) queueInfo(q *fakeQueue) QueueInfo {
	qi := q.info
	qi.MessagesReady = int64(len(q.msgs))
	qi.Messages = qi.MessagesReady + qi.MessagesUnacked
	for _, m := range q.msgs {
		qi.BytesReady += int64(len(m.Payload))
	}
	qi.Bytes = qi.BytesReady
	qi.MessagesRAM = qi.Messages
	for _, p := range f.policies {
		if p.VHost == qi.VHost && strings.Contains(p.Pattern, qi.Name) {
			qi.Policy, qi.EffectivePolicy = p.Name, p.Definition
		}
	}
	return qi
}

func (f *fakeBroker) Queues(vhost string) []QueueInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []QueueInfo
	for _, q := range f.queues {
		if vhost == "" || q.info.VHost == vhost {
			out = append(out, f.queueInfo(q))
		}
	}
	return out
}

func (f *fakeBroker) Queue(vhost, name string) (QueueInfo, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	q, ok := f.queues[key(vhost, name)]
	if !ok {
		return QueueInfo{}, false
	}
	return f.queueInfo(q), true
}

func (f *fakeBroker) Exchanges(vhost string) []ExchangeInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []ExchangeInfo
	for _, e := range f.exchanges {
		if vhost == "" || e.VHost == vhost {
			out = append(out, *e)
		}
	}
	return out
}

func (f *fakeBroker) Bindings(vhost string) []BindingInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []BindingInfo
	for _, q := range f.queues {
		if vhost == "" || q.info.VHost == vhost {
			out = append(out, BindingInfo{VHost: q.info.VHost, Destination: q.info.Name, DestinationType: "queue", RoutingKey: q.info.Name})
		}
	}
	for _, b := range f.bindings {
		if vhost == "" || b.VHost == vhost {
			out = append(out, b)
		}
	}
	return out
}

func (f *fakeBroker) Connections() []ConnectionInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.conns)
}

func (f *fakeBroker) Channels() []ChannelInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.channels)
}

func (f *fakeBroker) Consumers() []ConsumerInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.consumers)
}

func (f *fakeBroker) Users() []UserInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []UserInfo
	for _, u := range f.users {
		out = append(out, u.info)
	}
	return out
}

func (f *fakeBroker) Permissions() []PermissionInfo { return slices.Clone(f.perms) }
func (f *fakeBroker) Policies() []PolicyInfo        { return slices.Clone(f.policies) }

func (f *fakeBroker) Authenticate(user, password string, peer netip.Addr) ([]string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u, ok := f.users[user]
	if !ok || u.pass != password {
		return nil, false
	}
	if u.loopbackOnly && !peer.IsLoopback() {
		return nil, false
	}
	return u.info.Tags, true
}

func (f *fakeBroker) hasVHost(v string) bool {
	return slices.ContainsFunc(f.vhosts, func(x VHostInfo) bool { return x.Name == v })
}

func (f *fakeBroker) DeclareQueue(vhost, name string, opts QueueOptions) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.hasVHost(vhost) {
		return false, NotFound("no vhost '%s'", vhost)
	}
	if strings.HasPrefix(name, "amq.") {
		return false, AccessRefused("queue name '%s' contains reserved prefix 'amq.*'", name)
	}
	for k, v := range opts.Arguments {
		if k == "x-max-length" || k == "x-message-ttl" {
			if _, ok := v.(int64); !ok {
				return false, BadRequest("invalid arg '%s' for queue '%s' in vhost '%s': \"expected integer, got longstr\"", k, name, vhost)
			}
		}
	}
	if q, ok := f.queues[key(vhost, name)]; ok {
		if q.info.Durable != opts.Durable {
			return false, PreconditionFailed("inequivalent arg 'durable' for queue '%s' in vhost '%s': received '%t' but current is '%t'", name, vhost, opts.Durable, q.info.Durable)
		}
		if !reflect.DeepEqual(orEmpty(q.info.Arguments), orEmpty(opts.Arguments)) {
			return false, PreconditionFailed("inequivalent arguments for queue '%s' in vhost '%s'", name, vhost)
		}
		return false, nil
	}
	f.queues[key(vhost, name)] = &fakeQueue{info: QueueInfo{VHost: vhost, Name: name, Durable: opts.Durable,
		AutoDelete: opts.AutoDelete, Arguments: opts.Arguments, Type: "classic", State: "running"}}
	return true, nil
}

func (f *fakeBroker) DeleteQueue(vhost, name string, ifUnused, ifEmpty bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	q, ok := f.queues[key(vhost, name)]
	if !ok {
		return NotFound("no queue '%s' in vhost '%s'", name, vhost)
	}
	if ifUnused && q.info.Consumers > 0 {
		return PreconditionFailed("queue '%s' in vhost '%s' in use", name, vhost)
	}
	if ifEmpty && len(q.msgs)+int(q.info.MessagesUnacked) > 0 {
		return PreconditionFailed("queue '%s' in vhost '%s' not empty", name, vhost)
	}
	delete(f.queues, key(vhost, name))
	f.bindings = slices.DeleteFunc(f.bindings, func(b BindingInfo) bool {
		return b.VHost == vhost && b.DestinationType == "queue" && b.Destination == name
	})
	return nil
}

func (f *fakeBroker) PurgeQueue(vhost, name string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	q, ok := f.queues[key(vhost, name)]
	if !ok {
		return 0, NotFound("no queue '%s' in vhost '%s'", name, vhost)
	}
	n := len(q.msgs)
	q.msgs = nil
	return n, nil
}

func (f *fakeBroker) GetMessages(vhost, queue string, count int, mode AckMode) ([]Message, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	q, ok := f.queues[key(vhost, queue)]
	if !ok {
		return nil, NotFound("no queue '%s' in vhost '%s'", queue, vhost)
	}
	n := min(count, len(q.msgs))
	out := slices.Clone(q.msgs[:n])
	for i := range out {
		out[i].Remaining = len(q.msgs) - i - 1
	}
	q.info.Stats.Get += uint64(n)
	switch mode {
	case AckRequeue, RejectRequeue:
		for i := range q.msgs[:n] {
			q.msgs[i].Redelivered = true
		}
	default:
		q.msgs = q.msgs[n:]
	}
	return out, nil
}

func (f *fakeBroker) DeclareExchange(vhost, name string, opts ExchangeOptions) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.hasVHost(vhost) {
		return false, NotFound("no vhost '%s'", vhost)
	}
	if !slices.Contains([]string{"direct", "fanout", "topic", "headers"}, opts.Type) {
		return false, BadRequest("unknown exchange type '%s'", opts.Type)
	}
	if e, ok := f.exchanges[key(vhost, name)]; ok {
		if e.Type != opts.Type {
			return false, PreconditionFailed("inequivalent arg 'type' for exchange '%s' in vhost '%s': received '%s' but current is '%s'", name, vhost, opts.Type, e.Type)
		}
		return false, nil
	}
	if strings.HasPrefix(name, "amq.") {
		return false, AccessRefused("exchange name '%s' contains reserved prefix 'amq.*'", name)
	}
	f.exchanges[key(vhost, name)] = &ExchangeInfo{VHost: vhost, Name: name, Type: opts.Type, Durable: opts.Durable,
		AutoDelete: opts.AutoDelete, Internal: opts.Internal, Arguments: opts.Arguments}
	return true, nil
}

func (f *fakeBroker) DeleteExchange(vhost, name string, ifUnused bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.exchanges[key(vhost, name)]; !ok {
		return NotFound("no exchange '%s' in vhost '%s'", name, vhost)
	}
	if name == "" || strings.HasPrefix(name, "amq.") {
		return AccessRefused("operation not permitted on the default exchange")
	}
	if ifUnused && slices.ContainsFunc(f.bindings, func(b BindingInfo) bool { return b.VHost == vhost && b.Source == name }) {
		return PreconditionFailed("exchange '%s' in vhost '%s' in use", name, vhost)
	}
	delete(f.exchanges, key(vhost, name))
	return nil
}

func (f *fakeBroker) Bind(b BindingInfo) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b.Source == "" {
		return AccessRefused("operation not permitted on the default exchange")
	}
	for _, x := range f.bindings {
		if reflect.DeepEqual(orEmpty(x.Arguments), orEmpty(b.Arguments)) && x.VHost == b.VHost && sameEnds(&x, &b) && x.RoutingKey == b.RoutingKey {
			return nil
		}
	}
	f.bindings = append(f.bindings, b)
	return nil
}

func (f *fakeBroker) Unbind(b BindingInfo) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.bindings)
	f.bindings = slices.DeleteFunc(f.bindings, func(x BindingInfo) bool {
		return x.VHost == b.VHost && sameEnds(&x, &b) && x.RoutingKey == b.RoutingKey && maps.Equal(mapStr(x.Arguments), mapStr(b.Arguments))
	})
	if n == len(f.bindings) {
		return NotFound("no binding")
	}
	return nil
}

func mapStr(m map[string]any) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = fmt.Sprint(v)
	}
	return out
}

// topicMatch is AMQP topic matching with * (one word) and # (zero or more words).
func topicMatch(pattern, key string) bool {
	var match func(p, k []string) bool
	match = func(p, k []string) bool {
		if len(p) == 0 {
			return len(k) == 0
		}
		if p[0] == "#" {
			for i := 0; i <= len(k); i++ {
				if match(p[1:], k[i:]) {
					return true
				}
			}
			return false
		}
		if len(k) == 0 || (p[0] != "*" && p[0] != k[0]) {
			return false
		}
		return match(p[1:], k[1:])
	}
	return match(strings.Split(pattern, "."), strings.Split(key, "."))
}

func (f *fakeBroker) Publish(vhost, exchange string, msg Publishing) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.exchanges[key(vhost, exchange)]
	if !ok {
		return false, NotFound("no exchange '%s' in vhost '%s'", exchange, vhost)
	}
	e.Stats.PublishIn++
	routed := false
	deliver := func(q *fakeQueue) {
		q.msgs = append(q.msgs, Message{Exchange: exchange, RoutingKey: msg.RoutingKey, Properties: msg.Properties, Payload: msg.Payload})
		q.info.Stats.Publish++
		routed = true
	}
	if exchange == "" {
		if q, ok := f.queues[key(vhost, msg.RoutingKey)]; ok {
			deliver(q)
		}
		return routed, nil
	}
	for _, b := range f.bindings {
		if b.VHost != vhost || b.Source != exchange || b.DestinationType != "queue" {
			continue
		}
		if (e.Type == "fanout") || (e.Type == "direct" && b.RoutingKey == msg.RoutingKey) || (e.Type == "topic" && topicMatch(b.RoutingKey, msg.RoutingKey)) {
			if q, ok := f.queues[key(vhost, b.Destination)]; ok {
				deliver(q)
			}
		}
	}
	if routed {
		e.Stats.PublishOut++
	}
	return routed, nil
}

func (f *fakeBroker) CloseConnection(name, reason string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.IndexFunc(f.conns, func(c ConnectionInfo) bool { return c.Name == name })
	if i < 0 {
		return NotFound("")
	}
	f.conns = slices.Delete(f.conns, i, i+1)
	f.closed[name] = reason
	return nil
}
