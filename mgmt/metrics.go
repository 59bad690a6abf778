package mgmt

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
)

// NewMetricsHandler serves Prometheus metrics with the names and labels of RabbitMQ's
// rabbitmq_prometheus plugin, so RabbitMQ's Grafana dashboards work: /metrics aggregates the
// queue metrics over all queues, /metrics/per-object labels them by vhost and queue. Go runtime
// and process metrics are included, and Warren's own warren_* metrics.
//
// The broker is read at scrape time (one Overview, one Queues, one Connections and one Channels
// call per scrape); nothing is counted per message here.
func NewMetricsHandler(b Broker) http.Handler {
	mux := http.NewServeMux()
	registry := func(perObject bool) *prometheus.Registry {
		reg := prometheus.NewRegistry()
		reg.MustRegister(
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
			&collector{b: b, perObject: perObject},
		)
		return reg
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(registry(false), promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.Handle("GET /metrics/per-object", &perObjectHandler{reg: registry(true), b: b})
	return mux
}

// perObjectHandler writes the node-wide families through client_golang and the per-queue
// families itself, straight into the text format: with 100,000 queues client_golang's const
// metrics (one allocation, label hashing and sorting per sample) took about 10 s a scrape.
type perObjectHandler struct {
	reg *prometheus.Registry
	b   Broker
}

func (h *perObjectHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	mfs, err := h.reg.Gather()
	if err != nil && len(mfs) == 0 {
		http.Error(w, "gathering metrics: "+err.Error(), http.StatusInternalServerError)
		return
	}
	format := expfmt.NewFormat(expfmt.TypeTextPlain)
	w.Header().Set("Content-Type", string(format))
	var out io.Writer = w
	if acceptsGzip(r) {
		// Prometheus asks for gzip; at BestSpeed 100 MB of samples shrink about 20 times for
		// roughly the cost of writing them.
		w.Header().Set("Content-Encoding", "gzip")
		gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
		defer gz.Close()
		out = gz
	}
	bw := bufio.NewWriterSize(out, 256<<10)
	enc := expfmt.NewEncoder(bw, format)
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return // the scraper went away
		}
	}
	writeQueueFamilies(bw, h.b.Queues(""))
	_ = bw.Flush()
}

func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		if enc, _, _ := strings.Cut(strings.TrimSpace(part), ";"); enc == "gzip" {
			return true
		}
	}
	return false
}

// writeQueueFamilies writes the per-queue gauges in the Prometheus text format.
func writeQueueFamilies(w *bufio.Writer, queues []QueueInfo) {
	buf := make([]byte, 0, 256)
	// Label values are escaped once per queue, not once per family.
	labels := make([][]byte, len(queues))
	for i := range queues {
		l := append([]byte(`{vhost="`), escapeLabel(queues[i].VHost)...)
		l = append(l, `",queue="`...)
		l = append(l, escapeLabel(queues[i].Name)...)
		labels[i] = append(l, `"} `...)
	}
	family := func(name, help string, val func(*QueueInfo) (float64, bool)) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
		for i := range queues {
			v, ok := val(&queues[i])
			if !ok {
				continue
			}
			buf = append(buf[:0], name...)
			buf = append(buf, labels[i]...)
			buf = strconv.AppendFloat(buf, v, 'g', -1, 64)
			buf = append(buf, '\n')
			_, _ = w.Write(buf)
		}
	}
	for _, f := range queueFamilies {
		family(f.per.name, f.help, func(q *QueueInfo) (float64, bool) { return f.val(q), true })
	}
	family("rabbitmq_queue_consumer_utilisation", "Consumer utilisation", func(q *QueueInfo) (float64, bool) { return q.ConsumerUtilisation, true })
	family("rabbitmq_queue_consumer_capacity", "Consumer capacity", func(q *QueueInfo) (float64, bool) { return q.ConsumerUtilisation, true })
	family("rabbitmq_queue_head_message_timestamp", "Timestamp of the first message in the queue, if any", func(q *QueueInfo) (float64, bool) {
		return float64(q.HeadMessageTimestamp), q.HeadMessageTimestamp != 0
	})
	// The Raft state of the quorum queues this node runs a replica of, as RabbitMQ reports
	// its local ra servers.
	for _, f := range raftFamilies {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", f.name, f.help, f.name, f.typ)
		for i := range queues {
			if r := queues[i].Raft; r != nil {
				buf = append(buf[:0], f.name...)
				buf = append(buf, labels[i]...)
				buf = strconv.AppendUint(buf, f.val(r), 10)
				buf = append(buf, '\n')
				_, _ = w.Write(buf)
			}
		}
	}
}

// raftFamily is one rabbitmq_raft_* metric of a quorum queue's replica: per queue on
// /metrics/per-object, summed over the node's replicas on /metrics (as RabbitMQ aggregates).
type raftFamily struct {
	name, help, typ string
	agg             *prometheus.Desc
	val             func(*RaftInfo) uint64
}

func rf(name, help, typ string, val func(*RaftInfo) uint64) raftFamily {
	return raftFamily{name: name, help: help, typ: typ, agg: desc(name, help), val: val}
}

var raftFamilies = []raftFamily{
	rf("rabbitmq_raft_term_total", "Current Raft term number", "counter", func(r *RaftInfo) uint64 { return r.Term }),
	rf("rabbitmq_raft_log_snapshot_index", "Raft log snapshot index", "gauge", func(r *RaftInfo) uint64 { return r.Snapshot }),
	rf("rabbitmq_raft_log_last_applied_index", "Raft log last applied index", "gauge", func(r *RaftInfo) uint64 { return r.AppliedIndex }),
	rf("rabbitmq_raft_log_commit_index", "Raft log commit index", "gauge", func(r *RaftInfo) uint64 { return r.CommitIndex }),
	rf("rabbitmq_raft_log_last_written_index", "Raft log last written index", "gauge", func(r *RaftInfo) uint64 { return r.LastIndex }),
}

// escapeLabel escapes a label value for the text format: backslash, double quote, newline.
func escapeLabel(s string) string {
	if !strings.ContainsAny(s, "\\\"\n") {
		return s
	}
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

// collector reads the Broker at scrape time.
type collector struct {
	b         Broker
	perObject bool
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	protoLabel    = []string{"protocol"}
	protoQTLabels = []string{"protocol", "queue_type"}
)

// Node-wide families.
var (
	dConnections       = desc("rabbitmq_connections", "Connections currently open")
	dChannels          = desc("rabbitmq_channels", "Channels currently open")
	dConsumers         = desc("rabbitmq_consumers", "Consumers currently connected")
	dQueues            = desc("rabbitmq_queues", "Queues available")
	dConnOpened        = desc("rabbitmq_connections_opened_total", "Total number of connections opened")
	dConnClosed        = desc("rabbitmq_connections_closed_total", "Total number of connections closed or terminated")
	dChanOpened        = desc("rabbitmq_channels_opened_total", "Total number of channels opened")
	dChanClosed        = desc("rabbitmq_channels_closed_total", "Total number of channels closed")
	dQueuesDeclared    = desc("rabbitmq_queues_declared_total", "Total number of queues declared")
	dQueuesCreated     = desc("rabbitmq_queues_created_total", "Total number of queues created")
	dQueuesDeleted     = desc("rabbitmq_queues_deleted_total", "Total number of queues deleted")
	dMemLimit          = desc("rabbitmq_resident_memory_limit_bytes", "Memory high watermark in bytes")
	dMemUsed           = desc("rabbitmq_process_resident_memory_bytes", "Memory used in bytes")
	dDiskFree          = desc("rabbitmq_disk_space_available_bytes", "Disk space available in bytes")
	dDiskLimit         = desc("rabbitmq_disk_space_available_limit_bytes", "Free disk space low watermark in bytes")
	dOpenFDs           = desc("rabbitmq_process_open_fds", "Open file descriptors")
	dMaxFDs            = desc("rabbitmq_process_max_fds", "Open file descriptors limit")
	dOpenSockets       = desc("rabbitmq_process_open_tcp_sockets", "Open TCP sockets")
	dMaxSockets        = desc("rabbitmq_process_max_tcp_sockets", "Open TCP sockets limit (the file descriptor limit: Go has no separate one)")
	dUptime            = desc("rabbitmq_erlang_uptime_seconds", "Node uptime")
	dAlarmMem          = desc("rabbitmq_alarms_memory_used_watermark", "is 1 if VM memory watermark alarm is in effect")
	dAlarmDisk         = desc("rabbitmq_alarms_free_disk_space_watermark", "is 1 if free disk space watermark alarm is in effect")
	dAlarmFD           = desc("rabbitmq_alarms_file_descriptor_limit", "is 1 if file descriptor limit alarm is in effect")
	dIdentity          = desc("rabbitmq_identity_info", "RabbitMQ node & cluster identity info", "rabbitmq_node", "rabbitmq_cluster", "rabbitmq_cluster_permanent_id")
	dBuild             = desc("rabbitmq_build_info", "RabbitMQ & Erlang/OTP version info", "rabbitmq_version", "prometheus_plugin_version", "prometheus_client_version", "erlang_version")
	dGlobalReceived    = desc("rabbitmq_global_messages_received_total", "Total number of messages received from publishers", protoLabel...)
	dGlobalConfirmed   = desc("rabbitmq_global_messages_confirmed_total", "Total number of messages confirmed to publishers", protoLabel...)
	dGlobalRouted      = desc("rabbitmq_global_messages_routed_total", "Total number of messages routed to queues or streams", protoLabel...)
	dGlobalDropped     = desc("rabbitmq_global_messages_unroutable_dropped_total", "Total number of messages published as non-mandatory into an exchange and dropped as unroutable", protoLabel...)
	dGlobalReturned    = desc("rabbitmq_global_messages_unroutable_returned_total", "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable", protoLabel...)
	dGlobalConsumers   = desc("rabbitmq_global_consumers", "Current number of consumers", protoLabel...)
	dGlobalDelivered   = desc("rabbitmq_global_messages_delivered_total", "Total number of messages delivered to consumers", protoQTLabels...)
	dGlobalConsManual  = desc("rabbitmq_global_messages_delivered_consume_manual_ack_total", "Total number of messages delivered to consumers using basic.consume with manual acknowledgment", protoQTLabels...)
	dGlobalConsAuto    = desc("rabbitmq_global_messages_delivered_consume_auto_ack_total", "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment", protoQTLabels...)
	dGlobalGetManual   = desc("rabbitmq_global_messages_delivered_get_manual_ack_total", "Total number of messages delivered to consumers using basic.get with manual acknowledgment", protoQTLabels...)
	dGlobalGetAuto     = desc("rabbitmq_global_messages_delivered_get_auto_ack_total", "Total number of messages delivered to consumers using basic.get with automatic acknowledgment", protoQTLabels...)
	dGlobalGetEmpty    = desc("rabbitmq_global_messages_get_empty_total", "Total number of times basic.get operations fetched no message", protoQTLabels...)
	dGlobalRedelivered = desc("rabbitmq_global_messages_redelivered_total", "Total number of messages redelivered to consumers", protoQTLabels...)
	dGlobalAcked       = desc("rabbitmq_global_messages_acknowledged_total", "Total number of messages acknowledged by consumers", protoQTLabels...)

	// Channel totals, aggregated over all channels as the plugin does on /metrics.
	dChPublished   = desc("rabbitmq_channel_messages_published_total", "Total number of messages published into an exchange on a channel")
	dChConfirmed   = desc("rabbitmq_channel_messages_confirmed_total", "Total number of messages published into an exchange and confirmed on the channel")
	dChDropped     = desc("rabbitmq_channel_messages_unroutable_dropped_total", "Total number of messages published as non-mandatory into an exchange and dropped as unroutable")
	dChReturned    = desc("rabbitmq_channel_messages_unroutable_returned_total", "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable")
	dChDelivered   = desc("rabbitmq_channel_messages_delivered_total", "Total number of messages delivered to consumers in automatic acknowledgement mode")
	dChDeliveredAk = desc("rabbitmq_channel_messages_delivered_ack_total", "Total number of messages delivered to consumers in manual acknowledgement mode")
	dChRedelivered = desc("rabbitmq_channel_messages_redelivered_total", "Total number of messages redelivered to consumers")
	dChAcked       = desc("rabbitmq_channel_messages_acked_total", "Total number of messages acknowledged by consumers")
	dChGet         = desc("rabbitmq_channel_get_total", "Total number of messages fetched with basic.get in automatic acknowledgement mode")
	dChGetAck      = desc("rabbitmq_channel_get_ack_total", "Total number of messages fetched with basic.get in manual acknowledgement mode")
	dChGetEmpty    = desc("rabbitmq_channel_get_empty_total", "Total number of times basic.get operations fetched no message")
	dChConsumers   = desc("rabbitmq_channel_consumers", "Consumers on a channel")
	dChUnacked     = desc("rabbitmq_channel_messages_unacked", "Delivered but not yet acknowledged messages")
	dChUnconfirmed = desc("rabbitmq_channel_messages_unconfirmed", "Published but not yet confirmed messages")
	dChUncommitted = desc("rabbitmq_channel_messages_uncommitted", "Messages received in a transaction but not yet committed")
	dChAcksUncomm  = desc("rabbitmq_channel_acks_uncommitted", "Message acknowledgements in a transaction not yet committed")
	dChPrefetch    = desc("rabbitmq_channel_prefetch", "Total limit of unacknowledged messages for all consumers on a channel")
	dConnChannels  = desc("rabbitmq_connection_channels", "Channels on a connection")
	dConnInBytes   = desc("rabbitmq_connection_incoming_bytes_total", "Total number of bytes received on a connection")
	dConnOutBytes  = desc("rabbitmq_connection_outgoing_bytes_total", "Total number of bytes sent on a connection")
	dConnInPkts    = desc("rabbitmq_connection_incoming_packets_total", "Total number of packets received on a connection")
	dConnOutPkts   = desc("rabbitmq_connection_outgoing_packets_total", "Total number of packets sent on a connection")

	dQueuePublished = desc("rabbitmq_queue_messages_published_total", "Total number of messages published to queues")

	dJournalCommits  = desc("warren_journal_commits_total", "Group-commit batches written to the store")
	dJournalMessages = desc("warren_journal_commit_messages_total", "Messages and acks written to the store by group commits")
	dFsync           = desc("warren_journal_fsync_seconds", "Time the store's sync took per group commit")
	dPagedOut        = desc("warren_messages_paged_out", "Ready messages whose bodies live only on disk")
	dFlowPauses      = desc("warren_flow_control_pauses_total", "Times a publisher was held by flow control")
	dFwdDropped      = desc("warren_cluster_forwards_dropped_total", "Dead-lettered or delayed messages a cluster node dropped instead of forwarding them to their home node")
)

// queueFamily is one rabbitmq_queue_* gauge: summed on /metrics, per queue on /metrics/per-object.
type queueFamily struct {
	agg  *prometheus.Desc
	per  struct{ name string }
	help string
	val  func(*QueueInfo) float64
}

func qf(name, help string, val func(*QueueInfo) float64) queueFamily {
	f := queueFamily{agg: desc(name, help), help: help, val: val}
	f.per.name = name
	return f
}

var queueFamilies = []queueFamily{
	qf("rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers", func(q *QueueInfo) float64 { return float64(q.MessagesReady) }),
	qf("rabbitmq_queue_messages_unacked", "Messages delivered to consumers but not yet acknowledged", func(q *QueueInfo) float64 { return float64(q.MessagesUnacked) }),
	qf("rabbitmq_queue_messages", "Sum of ready and unacknowledged messages - total queue depth", func(q *QueueInfo) float64 { return float64(q.Messages) }),
	qf("rabbitmq_queue_consumers", "Consumers on a queue", func(q *QueueInfo) float64 { return float64(q.Consumers) }),
	qf("rabbitmq_queue_messages_bytes", "Size in bytes of ready and unacknowledged messages", func(q *QueueInfo) float64 { return float64(q.Bytes) }),
	qf("rabbitmq_queue_messages_ready_bytes", "Size in bytes of ready messages", func(q *QueueInfo) float64 { return float64(q.BytesReady) }),
	qf("rabbitmq_queue_messages_unacked_bytes", "Size in bytes of all unacknowledged messages", func(q *QueueInfo) float64 { return float64(q.BytesUnacked) }),
	qf("rabbitmq_queue_messages_persistent", "Persistent messages", func(q *QueueInfo) float64 { return float64(q.MessagesPersistent) }),
	qf("rabbitmq_queue_messages_paged_out", "Messages paged out to disk", func(q *QueueInfo) float64 { return float64(q.MessagesPagedOut) }),
	qf("rabbitmq_queue_messages_paged_out_bytes", "Size in bytes of messages paged out to disk", func(q *QueueInfo) float64 { return float64(q.BytesPagedOut) }),
	qf("rabbitmq_queue_messages_ram", "Ready and unacknowledged messages stored in memory", func(q *QueueInfo) float64 { return float64(q.MessagesRAM) }),
	qf("rabbitmq_queue_messages_ram_bytes", "Size of ready and unacknowledged messages stored in memory", func(q *QueueInfo) float64 { return float64(q.BytesRAM) }),
	qf("rabbitmq_queue_process_memory_bytes", "Memory in bytes used by the queue", func(q *QueueInfo) float64 { return float64(q.Memory) }),
}

// Describe sends every family this collector may emit.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		dConnections, dChannels, dConsumers, dQueues, dConnOpened, dConnClosed, dChanOpened, dChanClosed,
		dQueuesDeclared, dQueuesCreated, dQueuesDeleted, dMemLimit, dMemUsed, dDiskFree, dDiskLimit,
		dOpenFDs, dMaxFDs, dOpenSockets, dMaxSockets, dUptime, dAlarmMem, dAlarmDisk, dAlarmFD, dIdentity, dBuild,
		dGlobalReceived, dGlobalConfirmed, dGlobalRouted, dGlobalDropped, dGlobalReturned, dGlobalConsumers,
		dGlobalDelivered, dGlobalConsManual, dGlobalConsAuto, dGlobalGetManual, dGlobalGetAuto,
		dGlobalGetEmpty, dGlobalRedelivered, dGlobalAcked,
		dChPublished, dChConfirmed, dChDropped, dChReturned, dChDelivered, dChDeliveredAk, dChRedelivered,
		dChAcked, dChGet, dChGetAck, dChGetEmpty, dChConsumers, dChUnacked, dChUnconfirmed, dChUncommitted,
		dChAcksUncomm, dChPrefetch, dConnChannels, dConnInBytes, dConnOutBytes, dConnInPkts, dConnOutPkts,
		dJournalCommits, dJournalMessages, dFsync, dPagedOut, dFlowPauses, dFwdDropped,
	} {
		ch <- d
	}
	if c.perObject {
		return // the per-queue families are written by perObjectHandler
	}
	ch <- dQueuePublished
	for _, f := range queueFamilies {
		ch <- f.agg
	}
	for _, f := range raftFamilies {
		ch <- f.agg
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Collect reads the broker once and emits every family.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	o := c.b.Overview()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	count := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(dConnections, float64(o.Connections))
	gauge(dChannels, float64(o.Channels))
	gauge(dConsumers, float64(o.Consumers))
	gauge(dQueues, float64(o.Queues))
	count(dConnOpened, o.Churn.ConnectionsOpened)
	count(dConnClosed, o.Churn.ConnectionsClosed)
	count(dChanOpened, o.Churn.ChannelsOpened)
	count(dChanClosed, o.Churn.ChannelsClosed)
	count(dQueuesDeclared, o.Churn.QueuesDeclared)
	count(dQueuesCreated, o.Churn.QueuesCreated)
	count(dQueuesDeleted, o.Churn.QueuesDeleted)
	gauge(dMemLimit, float64(o.MemLimit))
	gauge(dMemUsed, float64(o.MemUsed))
	gauge(dDiskFree, float64(o.DiskFree))
	gauge(dDiskLimit, float64(o.DiskFreeLimit))
	gauge(dOpenFDs, float64(o.FDUsed))
	gauge(dMaxFDs, float64(o.FDTotal))
	gauge(dOpenSockets, float64(o.Connections))
	gauge(dMaxSockets, float64(o.FDTotal))
	if !o.StartedAt.IsZero() {
		gauge(dUptime, time.Since(o.StartedAt).Seconds())
	}
	// RabbitMQ exports the alarms untyped.
	ch <- prometheus.MustNewConstMetric(dAlarmMem, prometheus.UntypedValue, b2f(o.MemAlarm))
	ch <- prometheus.MustNewConstMetric(dAlarmDisk, prometheus.UntypedValue, b2f(o.DiskAlarm))
	ch <- prometheus.MustNewConstMetric(dAlarmFD, prometheus.UntypedValue, 0)
	ch <- prometheus.MustNewConstMetric(dIdentity, prometheus.UntypedValue, 1, o.Node, o.ClusterName, o.ClusterName)
	ch <- prometheus.MustNewConstMetric(dBuild, prometheus.UntypedValue, 1, o.Version, o.Version, "client_golang", runtime.Version())

	s := &o.Stats
	const proto, qt = "amqp091", "rabbit_classic_queue"
	count(dGlobalReceived, s.Publish, proto)
	count(dGlobalConfirmed, s.Confirm, proto)
	routed := s.Publish - min(s.Publish, s.ReturnUnroutable+s.DropUnroutable)
	count(dGlobalRouted, routed, proto)
	count(dGlobalDropped, s.DropUnroutable, proto)
	count(dGlobalReturned, s.ReturnUnroutable, proto)
	gauge(dGlobalConsumers, float64(o.Consumers), proto)
	count(dGlobalDelivered, s.Deliver+s.DeliverNoAck+s.Get+s.GetNoAck, proto, qt)
	count(dGlobalConsManual, s.Deliver, proto, qt)
	count(dGlobalConsAuto, s.DeliverNoAck, proto, qt)
	count(dGlobalGetManual, s.Get, proto, qt)
	count(dGlobalGetAuto, s.GetNoAck, proto, qt)
	count(dGlobalGetEmpty, s.GetEmpty, proto, qt)
	count(dGlobalRedelivered, s.Redeliver, proto, qt)
	count(dGlobalAcked, s.Ack, proto, qt)

	count(dChPublished, s.Publish)
	count(dChConfirmed, s.Confirm)
	count(dChDropped, s.DropUnroutable)
	count(dChReturned, s.ReturnUnroutable)
	count(dChDelivered, s.DeliverNoAck)
	count(dChDeliveredAk, s.Deliver)
	count(dChRedelivered, s.Redeliver)
	count(dChAcked, s.Ack)
	count(dChGet, s.GetNoAck)
	count(dChGetAck, s.Get)
	count(dChGetEmpty, s.GetEmpty)
	var chConsumers, chUnacked, chUnconfirmed, chUncommitted, chAcksUncomm, chPrefetch float64
	for _, c := range c.b.Channels() {
		chConsumers += float64(c.Consumers)
		chUnacked += float64(c.Unacked)
		chUnconfirmed += float64(c.Unconfirmed)
		chUncommitted += float64(c.Uncommitted)
		chAcksUncomm += float64(c.AcksUncommit)
		chPrefetch += float64(c.PrefetchCount)
	}
	gauge(dChConsumers, chConsumers)
	gauge(dChUnacked, chUnacked)
	gauge(dChUnconfirmed, chUnconfirmed)
	gauge(dChUncommitted, chUncommitted)
	gauge(dChAcksUncomm, chAcksUncomm)
	gauge(dChPrefetch, chPrefetch)
	var connChannels float64
	var in, out, inPkts, outPkts uint64
	for _, c := range c.b.Connections() {
		connChannels += float64(c.Channels)
		in += c.RecvOct
		out += c.SendOct
		inPkts += c.RecvCnt
		outPkts += c.SendCnt
	}
	gauge(dConnChannels, connChannels)
	count(dConnInBytes, in)
	count(dConnOutBytes, out)
	count(dConnInPkts, inPkts)
	count(dConnOutPkts, outPkts)

	if !c.perObject {
		queues := c.b.Queues("")
		sums := make([]float64, len(queueFamilies))
		var published uint64
		for i := range queues {
			for j, f := range queueFamilies {
				sums[j] += f.val(&queues[i])
			}
			published += queues[i].Stats.Publish
		}
		for j, f := range queueFamilies {
			gauge(f.agg, sums[j])
		}
		count(dQueuePublished, published)
		// Emitted only on a node that runs quorum queue replicas, as RabbitMQ's.
		raftSums := make([]uint64, len(raftFamilies))
		replicas := 0
		for i := range queues {
			if r := queues[i].Raft; r != nil {
				replicas++
				for j, f := range raftFamilies {
					raftSums[j] += f.val(r)
				}
			}
		}
		for j, f := range raftFamilies {
			if replicas == 0 {
				break
			}
			if f.typ == "counter" {
				count(f.agg, raftSums[j])
			} else {
				gauge(f.agg, float64(raftSums[j]))
			}
		}
	}

	w := &o.Warren
	count(dJournalCommits, w.JournalCommits)
	count(dJournalMessages, w.JournalCommitMessages)
	ch <- prometheus.MustNewConstHistogram(dFsync, w.Fsync.Count, w.Fsync.Sum, w.Fsync.Buckets)
	gauge(dPagedOut, float64(w.PagedOutMessages))
	count(dFlowPauses, w.FlowPauses)
	count(dFwdDropped, w.ForwardsDropped)
}
