package mgmt

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// obj is one JSON object of the API.
type obj = map[string]any

// Counter names per object type, as RabbitMQ's message_stats carry them.
var (
	queueCounters    = []string{"publish", "deliver", "deliver_no_ack", "get", "get_no_ack", "get_empty", "deliver_get", "ack", "redeliver"}
	overviewCounters = []string{"publish", "confirm", "return_unroutable", "drop_unroutable", "deliver", "deliver_no_ack", "get", "get_no_ack", "get_empty", "deliver_get", "ack", "redeliver", "disk_reads", "disk_writes"}
	exchangeCounters = []string{"publish_in", "publish_out"}
	channelCounters  = []string{"publish", "confirm", "return_unroutable", "drop_unroutable", "deliver", "deliver_no_ack", "get", "get_no_ack", "get_empty", "deliver_get", "ack", "redeliver"}
)

func counter(c *Counters, name string) uint64 {
	switch name {
	case "publish":
		return c.Publish
	case "confirm":
		return c.Confirm
	case "return_unroutable":
		return c.ReturnUnroutable
	case "drop_unroutable":
		return c.DropUnroutable
	case "deliver":
		return c.Deliver
	case "deliver_no_ack":
		return c.DeliverNoAck
	case "get":
		return c.Get
	case "get_no_ack":
		return c.GetNoAck
	case "get_empty":
		return c.GetEmpty
	case "deliver_get":
		return c.Deliver + c.DeliverNoAck + c.Get + c.GetNoAck
	case "ack":
		return c.Ack
	case "redeliver":
		return c.Redeliver
	case "publish_in":
		return c.PublishIn
	case "publish_out":
		return c.PublishOut
	}
	return 0 // disk_reads, disk_writes: Warren's store has no such per-message counters
}

// withRates adds name and name_details {"rate": r} to o for each value, sampling the rates
// under key.
func (a *api) withRates(o obj, key string, now time.Time, names []string, vals []float64) {
	rs := a.rates.observe(key, now, vals)
	for i, n := range names {
		o[n] = num(vals[i])
		o[n+"_details"] = obj{"rate": round1(rs[i])}
	}
}

// messageStats renders RabbitMQ's message_stats object for c.
func (a *api) messageStats(key string, now time.Time, names []string, c *Counters) obj {
	vals := make([]float64, len(names))
	for i, n := range names {
		vals[i] = float64(counter(c, n))
	}
	o := obj{}
	a.withRates(o, key+"\x00stats", now, names, vals)
	return o
}

// num keeps integral values integral in JSON.
func num(f float64) any {
	if f == float64(int64(f)) {
		return int64(f)
	}
	return f
}

func round1(f float64) float64 { return float64(int64(f*10)) / 10 }

func orEmpty(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

func strs(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func idleSince(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	// RabbitMQ's format: 2026-12-03T13:23:40.716+00:00
	return t.UTC().Format("2006-01-02T15:04:05.000+00:00")
}

func (a *api) queueJSON(q *QueueInfo, node string, now time.Time, stats bool) obj {
	o := obj{
		"name": q.Name, "vhost": q.VHost, "durable": q.Durable, "auto_delete": q.AutoDelete,
		"exclusive": q.Exclusive, "arguments": orEmpty(q.Arguments), "node": node,
		"state": q.State, "type": q.Type,
	}
	if o["state"] == "" {
		o["state"] = "running"
	}
	if o["type"] == "" {
		o["type"] = "classic"
	}
	quorum := q.Type == "quorum" && q.Members != nil
	if quorum {
		// RabbitMQ 3.10's fields of a quorum queue: its replicas, those running, and the
		// leader, which is also its node (absent without stats, as there).
		o["members"], o["online"] = q.Members, orNoNodes(q.Online)
		o["leader"] = nullable(q.Leader)
		delete(o, "node")
		if stats {
			o["node"] = o["leader"]
		}
	}
	if !stats {
		if q.Policy != "" {
			o["policy"] = q.Policy
		}
		return o
	}
	key := "q\x00" + q.VHost + "\x00" + q.Name
	o["owner_pid_details"] = nil
	if q.Owner != "" {
		o["owner_pid_details"] = obj{"name": q.Owner}
	}
	o["policy"] = nullable(q.Policy)
	o["operator_policy"] = nil
	o["effective_policy_definition"] = orEmpty(q.EffectivePolicy)
	a.withRates(o, key, now, []string{"messages", "messages_ready", "messages_unacknowledged"},
		[]float64{float64(q.Messages), float64(q.MessagesReady), float64(q.MessagesUnacked)})
	o["message_bytes"] = q.Bytes
	o["message_bytes_ready"] = q.BytesReady
	o["message_bytes_unacknowledged"] = q.BytesUnacked
	o["message_bytes_persistent"] = q.BytesPersistent
	o["message_bytes_paged_out"] = q.BytesPagedOut
	o["message_bytes_ram"] = q.BytesRAM
	o["messages_persistent"] = q.MessagesPersistent
	o["messages_paged_out"] = q.MessagesPagedOut
	o["messages_ram"] = q.MessagesRAM
	ramReady := q.MessagesRAM - q.MessagesUnacked
	if ramReady < 0 {
		ramReady = 0
	}
	o["messages_ready_ram"] = ramReady
	o["messages_unacknowledged_ram"] = q.MessagesUnacked
	o["consumers"] = q.Consumers
	o["consumer_utilisation"] = q.ConsumerUtilisation
	o["consumer_capacity"] = q.ConsumerUtilisation
	o["memory"] = q.Memory
	o["idle_since"] = idleSince(q.IdleSince)
	o["head_message_timestamp"] = nil
	if q.HeadMessageTimestamp != 0 {
		o["head_message_timestamp"] = q.HeadMessageTimestamp
	}
	o["exclusive_consumer_tag"] = nullable(q.ExclusiveConsumer)
	o["single_active_consumer_tag"] = nullable(q.SingleActiveConsumerTag)
	o["message_stats"] = a.messageStats(key, now, queueCounters, &q.Stats)
	if quorum {
		// The classic queue's fields a RabbitMQ quorum queue does not have (no paging, no
		// exclusive consumers or owners, no idle timer), and its name for the active consumer's tag.
		for _, k := range []string{"messages_paged_out", "message_bytes_paged_out", "messages_ready_ram",
			"messages_unacknowledged_ram", "head_message_timestamp", "idle_since", "exclusive_consumer_tag",
			"single_active_consumer_tag", "owner_pid_details"} {
			delete(o, k)
		}
		o["single_active_consumer_ctag"] = nullable(q.SingleActiveConsumerTag)
	}
	return o
}

// orNoNodes is nodes, or an empty list (JSON [] rather than null).
func orNoNodes(nodes []string) []string {
	if nodes == nil {
		return []string{}
	}
	return nodes
}

func (a *api) exchangeJSON(e *ExchangeInfo, now time.Time, stats bool) obj {
	o := obj{
		"name": e.Name, "vhost": e.VHost, "type": e.Type, "durable": e.Durable,
		"auto_delete": e.AutoDelete, "internal": e.Internal, "arguments": orEmpty(e.Arguments),
		"user_who_performed_action": "rmq-internal",
	}
	if e.Policy != "" {
		o["policy"] = e.Policy
	}
	if stats {
		o["message_stats"] = a.messageStats("e\x00"+e.VHost+"\x00"+e.Name, now, exchangeCounters, &e.Stats)
	}
	return o
}

// propertiesKey is RabbitMQ's binding "props" path segment: the URL-encoded routing key, plus
// "~" and a digest of the arguments when there are any. Clients treat it as opaque.
func propertiesKey(b *BindingInfo) string {
	k := url.PathEscape(b.RoutingKey)
	if len(b.Arguments) == 0 {
		return k
	}
	raw, _ := json.Marshal(b.Arguments) // map keys are sorted: the digest is stable
	sum := sha256.Sum256(raw)
	return k + "~" + base64.RawURLEncoding.EncodeToString(sum[:9])
}

func bindingJSON(b *BindingInfo) obj {
	return obj{
		"source": b.Source, "vhost": b.VHost, "destination": b.Destination,
		"destination_type": b.DestinationType, "routing_key": b.RoutingKey,
		"arguments": orEmpty(b.Arguments), "properties_key": propertiesKey(b),
	}
}

func (a *api) connectionJSON(c *ConnectionInfo, node string, now time.Time, stats bool) obj {
	o := obj{
		"name": c.Name, "user": c.User, "vhost": c.VHost, "node": node,
		"host": c.Host, "port": c.Port, "peer_host": c.PeerHost, "peer_port": c.PeerPort,
		"protocol": c.Protocol, "auth_mechanism": c.AuthMechanism, "state": c.State,
		"channels": c.Channels, "channel_max": c.ChannelMax, "frame_max": c.FrameMax,
		"timeout": c.Heartbeat, "client_properties": orEmpty(c.ClientProperties),
		"connected_at": c.ConnectedAt.UnixMilli(), "type": "network", "ssl": c.TLS,
		"ssl_protocol": nullable(c.TLSProtocol), "ssl_cipher": nil, "ssl_hash": nil,
		"ssl_key_exchange": nil, "peer_cert_issuer": nil, "peer_cert_subject": nil,
		"peer_cert_validity": nil, "user_who_performed_action": c.User,
		"user_provided_name": nil,
	}
	if n, ok := c.ClientProperties["connection_name"].(string); ok {
		o["user_provided_name"] = n
	}
	if !stats {
		return o
	}
	a.withRates(o, "c\x00"+c.Name, now, []string{"recv_oct", "send_oct"},
		[]float64{float64(c.RecvOct), float64(c.SendOct)})
	o["recv_cnt"] = c.RecvCnt
	o["send_cnt"] = c.SendCnt
	o["send_pend"] = 0
	return o
}

func channelName(conn string, n int) string { return conn + " (" + strconv.Itoa(n) + ")" }

func (a *api) channelJSON(c *ChannelInfo, node string, now time.Time, stats bool) obj {
	name := channelName(c.Connection, c.Number)
	o := obj{
		"name": name, "number": c.Number, "user": c.User, "vhost": c.VHost, "node": node,
		"connection_details": obj{"name": c.Connection, "peer_host": c.PeerHost, "peer_port": c.PeerPort},
		"state":              c.State, "consumer_count": c.Consumers, "prefetch_count": c.PrefetchCount,
		"global_prefetch_count": c.GlobalCount, "messages_unacknowledged": c.Unacked,
		"messages_unconfirmed": c.Unconfirmed, "messages_uncommitted": c.Uncommitted,
		"acks_uncommitted": c.AcksUncommit, "confirm": c.Confirm, "transactional": c.Transactional,
		"idle_since": idleSince(c.IdleSince), "user_who_performed_action": c.User,
		"pending_raft_commands": 0,
	}
	if o["state"] == "" {
		o["state"] = "running"
	}
	if stats {
		o["message_stats"] = a.messageStats("ch\x00"+name, now, channelCounters, &c.Stats)
	}
	return o
}

func consumerJSON(c *ConsumerInfo, node string) obj {
	return obj{
		"consumer_tag": c.Tag, "queue": obj{"name": c.Queue, "vhost": c.VHost},
		"channel_details": obj{
			"name": channelName(c.Connection, c.Channel), "number": c.Channel,
			"connection_name": c.Connection, "peer_host": c.PeerHost, "peer_port": c.PeerPort,
			"user": c.User, "node": node,
		},
		"ack_required": c.AckRequired, "exclusive": c.Exclusive, "active": c.Active,
		"activity_status": activity(c.Active), "prefetch_count": c.PrefetchCount,
		"arguments": orEmpty(c.Arguments),
	}
}

func activity(active bool) string {
	if active {
		return "up"
	}
	return "waiting"
}

func (a *api) vhostJSON(v *VHostInfo, node string, now time.Time, stats bool) obj {
	o := obj{
		"name": v.Name, "description": v.Description, "tags": strs(v.Tags),
		"metadata":      obj{"description": v.Description, "tags": strs(v.Tags)},
		"tracing":       false,
		"cluster_state": obj{node: "running"}, "default_queue_type": "classic",
	}
	if !stats {
		return o
	}
	key := "v\x00" + v.Name
	a.withRates(o, key, now, []string{"messages", "messages_ready", "messages_unacknowledged", "recv_oct", "send_oct"},
		[]float64{float64(v.Messages), float64(v.MessagesReady), float64(v.MessagesUnacked), float64(v.RecvOct), float64(v.SendOct)})
	o["message_stats"] = a.messageStats(key, now, overviewCounters, &v.Stats)
	return o
}

func userJSON(u *UserInfo) obj {
	return obj{
		"name": u.Name, "password_hash": u.PasswordHash, "hashing_algorithm": "rabbit_password_hashing_sha256",
		"tags": strs(u.Tags), "limits": orEmpty(u.Limits),
	}
}

func permissionJSON(p *PermissionInfo) obj {
	return obj{"user": p.User, "vhost": p.VHost, "configure": p.Configure, "write": p.Write, "read": p.Read}
}

func policyJSON(p *PolicyInfo) obj {
	applyTo := p.ApplyTo
	if applyTo == "" {
		applyTo = "all"
	}
	return obj{
		"vhost": p.VHost, "name": p.Name, "pattern": p.Pattern, "apply-to": applyTo,
		"priority": p.Priority, "definition": orEmpty(p.Definition),
	}
}

// project keeps only the given columns of o; a column "a.b" keeps o["a"]["b"] (RabbitMQ's
// columns parameter).
func project(o obj, columns []string) obj {
	out := obj{}
	for _, c := range columns {
		parts := strings.Split(c, ".")
		src, dst := o, out
		for i, p := range parts {
			v, ok := src[p]
			if !ok {
				break
			}
			if i == len(parts)-1 {
				dst[p] = v
				break
			}
			sub, ok := v.(obj)
			if !ok {
				break
			}
			next, ok := dst[p].(obj)
			if !ok {
				next = obj{}
				dst[p] = next
			}
			src, dst = sub, next
		}
	}
	return out
}

// lookup returns the value at a dotted path of o, for sorting.
func lookup(o obj, path string) any {
	var v any = o
	for _, p := range strings.Split(path, ".") {
		m, ok := v.(obj)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// less orders JSON values: numbers numerically, strings lexically, absent values first.
func less(x, y any) int {
	fx, xn := toFloat(x)
	fy, yn := toFloat(y)
	switch {
	case xn && yn:
		switch {
		case fx < fy:
			return -1
		case fx > fy:
			return 1
		}
		return 0
	case x == nil && y != nil:
		return -1
	case y == nil && x != nil:
		return 1
	}
	sx, _ := x.(string)
	sy, _ := y.(string)
	return strings.Compare(sx, sy)
}

func toFloat(v any) (float64, bool) {
	switch n := v.(type) {
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case uint64:
		return float64(n), true
	case float64:
		return n, true
	case bool:
		if n {
			return 1, true
		}
		return 0, true
	}
	return 0, false
}
