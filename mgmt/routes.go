package mgmt

import (
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// APIVersion is the RabbitMQ management API version whose paths and fields Warren serves (the
// version the golden captures in testdata come from), reported as management_version and
// rabbitmq_version because tools pick their request shapes from it.
const APIVersion = "3.10.8"

// defaultExchangePath is how RabbitMQ's API names the default exchange in paths.
const defaultExchangePath = "amq.default"

func (a *api) routes() {
	h := func(pattern string, f http.HandlerFunc) { a.mux.HandleFunc(pattern, f) }
	h("GET /api/overview", a.overview)
	h("GET /api/cluster-name", a.clusterName)
	h("GET /api/nodes", a.nodes)
	h("GET /api/nodes/{node}", a.node)
	h("GET /api/whoami", a.whoami)
	h("GET /api/extensions", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, []obj{}) })
	a.quorumRoutes()

	h("GET /api/connections", a.connections)
	h("GET /api/vhosts/{vhost}/connections", a.connections)
	h("GET /api/connections/{name}", a.connection)
	h("DELETE /api/connections/{name}", a.closeConnection)
	h("GET /api/connections/{name}/channels", a.channels)
	h("GET /api/channels", a.channels)
	h("GET /api/vhosts/{vhost}/channels", a.channels)
	h("GET /api/channels/{channel}", a.channels)
	h("GET /api/consumers", a.consumers)
	h("GET /api/consumers/{vhost}", a.consumers)

	h("GET /api/exchanges", a.exchanges)
	h("GET /api/exchanges/{vhost}", a.exchanges)
	h("GET /api/exchanges/{vhost}/{name}", a.exchange)
	h("PUT /api/exchanges/{vhost}/{name}", a.declareExchange)
	h("DELETE /api/exchanges/{vhost}/{name}", a.deleteExchange)
	h("POST /api/exchanges/{vhost}/{name}/publish", a.publish)
	h("GET /api/exchanges/{vhost}/{name}/bindings/source", a.exchangeBindings)
	h("GET /api/exchanges/{vhost}/{name}/bindings/destination", a.exchangeBindings)

	h("GET /api/queues", a.queues)
	h("GET /api/queues/{vhost}", a.queues)
	h("GET /api/queues/{vhost}/{name}", a.queue)
	h("PUT /api/queues/{vhost}/{name}", a.declareQueue)
	h("DELETE /api/queues/{vhost}/{name}", a.deleteQueue)
	h("DELETE /api/queues/{vhost}/{name}/contents", a.purgeQueue)
	h("POST /api/queues/{vhost}/{name}/get", a.getMessages)
	h("GET /api/queues/{vhost}/{name}/bindings", a.queueBindings)

	h("GET /api/bindings", a.bindings)
	h("GET /api/bindings/{vhost}", a.bindings)
	h("GET /api/bindings/{vhost}/e/{source}/{dtype}/{dest}", a.bindingsBetween)
	h("POST /api/bindings/{vhost}/e/{source}/{dtype}/{dest}", a.bind)
	h("GET /api/bindings/{vhost}/e/{source}/{dtype}/{dest}/{props}", a.binding)
	h("DELETE /api/bindings/{vhost}/e/{source}/{dtype}/{dest}/{props}", a.unbind)

	h("GET /api/vhosts", a.vhosts)
	h("GET /api/vhosts/{vhost}", a.vhost)
	h("GET /api/vhosts/{vhost}/permissions", a.permissions)
	h("GET /api/users", a.users)
	h("GET /api/users/{user}", a.user)
	h("GET /api/users/{user}/permissions", a.permissions)
	h("GET /api/permissions", a.permissions)
	h("GET /api/permissions/{vhost}/{user}", a.permission)
	h("GET /api/topic-permissions", func(w http.ResponseWriter, r *http.Request) {
		if a.adminOnly(w, r) {
			writeJSON(w, 200, []obj{})
		}
	})
	h("GET /api/policies", a.policies)
	h("GET /api/policies/{vhost}", a.policies)
	h("GET /api/policies/{vhost}/{name}", a.policy)
	h("GET /api/operator-policies", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, []obj{}) })
	h("GET /api/vhost-limits", a.vhostLimits)
	h("GET /api/vhost-limits/{vhost}", a.vhostLimits)
	h("GET /api/user-limits", a.userLimits)
	h("GET /api/definitions", a.definitions)
	h("GET /api/definitions/{vhost}", a.definitions)

	// Users, vhosts, permissions, limits and policies live in config.yaml.
	refuse := func(key, what string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf(
				"%s are managed in Warren's configuration file: edit the %q key of config.yaml and reload (SIGHUP); the API only lists them",
				what, a.opts.ConfigKeyPrefix+key))
		}
	}
	for _, m := range []string{"PUT", "DELETE"} {
		h(m+" /api/users/{user}", refuse("users", "users"))
		h(m+" /api/vhosts/{vhost}", refuse("vhosts", "virtual hosts"))
		h(m+" /api/permissions/{vhost}/{user}", refuse("permissions", "permissions"))
		h(m+" /api/topic-permissions/{vhost}/{user}", refuse("permissions", "topic permissions (not supported)"))
		h(m+" /api/policies/{vhost}/{name}", refuse("policies", "policies"))
		h(m+" /api/operator-policies/{vhost}/{name}", refuse("policies", "operator policies (not supported; use policies)"))
		h(m+" /api/vhost-limits/{vhost}/{name}", refuse("vhosts[].limits", "virtual host limits"))
		h(m+" /api/user-limits/{user}/{name}", refuse("users[].limits", "user limits"))
		h(m+" /api/parameters/{component}/{vhost}/{name}", refuse("load_definitions", "runtime parameters (not supported)"))
		h(m+" /api/global-parameters/{name}", refuse("load_definitions", "global parameters (not supported)"))
	}
	h("POST /api/users/bulk-delete", refuse("users", "users"))
	h("POST /api/definitions", refuse("load_definitions", "imported definitions"))
	h("POST /api/definitions/{vhost}", refuse("load_definitions", "imported definitions"))

	h("GET /api/aliveness-test/{vhost}", a.aliveness)
	h("GET /api/health/checks/alarms", a.alarms)
	h("GET /api/health/checks/local-alarms", a.alarms)
	h("GET /api/health/checks/port-listener/{port}", a.portListener)
	h("GET /api/health/checks/protocol-listener/{protocol}", a.protocolListener)
	h("GET /api/health/checks/virtual-hosts", a.healthOK)
	h("GET /api/health/checks/node-is-quorum-critical", a.healthOK)
	h("GET /api/health/checks/node-is-mirror-sync-critical", a.healthOK)
}

// one answers a single-object GET, honouring the columns parameter.
func one(w http.ResponseWriter, r *http.Request, o obj) {
	if c := r.URL.Query().Get("columns"); c != "" {
		o = project(o, strings.Split(c, ","))
	}
	writeJSON(w, http.StatusOK, o)
}

func (a *api) adminOnly(w http.ResponseWriter, r *http.Request) bool {
	if !userOf(r).isAdmin() {
		notAuthorised(w, "Not administrator user")
		return false
	}
	return true
}

func (a *api) monitorOnly(w http.ResponseWriter, r *http.Request) bool {
	if !userOf(r).isMonitor() {
		notAuthorised(w, "Not monitor user")
		return false
	}
	return true
}

// listVHost resolves the optional {vhost} of a list path: "" for all vhosts. It answers 404/401
// and returns false when the vhost is unknown or closed to the user.
func (a *api) listVHost(w http.ResponseWriter, r *http.Request) (string, bool) {
	vhost := pathValue(r, "vhost")
	if vhost == "" {
		return "", true
	}
	return vhost, a.openVHost(w, userOf(r), vhost)
}

// ---- overview, nodes, whoami

func exchangeTypes(o *Overview) []obj {
	types := o.ExchangeTypes
	if len(types) == 0 {
		types = []string{"direct", "fanout", "headers", "topic"}
	}
	out := make([]obj, 0, len(types))
	for _, t := range types {
		out = append(out, obj{"name": t, "description": "AMQP " + t + " exchange, as per the AMQP specification", "enabled": true})
	}
	return out
}

func listenersJSON(o *Overview) []obj {
	out := make([]obj, 0, len(o.Listeners))
	for _, l := range o.Listeners {
		out = append(out, obj{"node": o.Node, "protocol": l.Protocol, "ip_address": l.IP, "port": l.Port, "socket_opts": obj{}})
	}
	return out
}

func (a *api) overview(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	o := a.b.Overview()
	now := a.opts.now()
	totals := obj{"connections": o.Connections, "channels": o.Channels, "consumers": o.Consumers,
		"exchanges": o.Exchanges, "queues": o.Queues}
	msgs, ready, unacked := o.Messages, o.MessagesReady, o.MessagesUnacked
	stats := o.Stats
	key := "overview"
	if !u.isMonitor() {
		// A management user's overview counts only what it can see.
		key = "overview\x00" + u.name
		msgs, ready, unacked, stats = 0, 0, 0, Counters{}
		for _, v := range a.b.VHosts() {
			if u.seesVHost(v.Name) {
				msgs += v.Messages
				ready += v.MessagesReady
				unacked += v.MessagesUnacked
				addCounters(&stats, &v.Stats)
			}
		}
		nq, ne, nc := 0, 0, 0
		for _, q := range a.b.Queues("") {
			if u.seesVHost(q.VHost) {
				nq++
			}
		}
		for _, e := range a.b.Exchanges("") {
			if u.seesVHost(e.VHost) {
				ne++
			}
		}
		for _, c := range a.b.Consumers() {
			if u.seesVHost(c.VHost) {
				nc++
			}
		}
		conns, chans := 0, 0
		for _, c := range a.b.Connections() {
			if c.User == u.name {
				conns++
				chans += c.Channels
			}
		}
		totals = obj{"connections": conns, "channels": chans, "consumers": nc, "exchanges": ne, "queues": nq}
	}
	qt := obj{}
	a.withRates(qt, key+"\x00totals", now, []string{"messages", "messages_ready", "messages_unacknowledged"},
		[]float64{float64(msgs), float64(ready), float64(unacked)})
	churn := obj{}
	a.withRates(churn, "churn", now,
		[]string{"connection_created", "connection_closed", "channel_created", "channel_closed", "queue_declared", "queue_created", "queue_deleted"},
		[]float64{float64(o.Churn.ConnectionsOpened), float64(o.Churn.ConnectionsClosed), float64(o.Churn.ChannelsOpened),
			float64(o.Churn.ChannelsClosed), float64(o.Churn.QueuesDeclared), float64(o.Churn.QueuesCreated), float64(o.Churn.QueuesDeleted)})
	q := r.URL.Query()
	res := obj{
		"management_version": APIVersion, "rabbitmq_version": APIVersion,
		"product_name": "Warren", "product_version": o.Version,
		"rates_mode": "basic", "cluster_name": o.ClusterName, "node": o.Node,
		"erlang_version": runtime.Version(), "erlang_full_version": runtime.Version() + " (Go; Warren has no Erlang VM)",
		"exchange_types": exchangeTypes(&o), "listeners": listenersJSON(&o), "contexts": []obj{},
		"object_totals": totals, "queue_totals": qt, "churn_rates": churn,
		"message_stats":             a.messageStats(key, now, overviewCounters, &stats),
		"statistics_db_event_queue": 0, "disable_stats": q.Get("disable_stats") == "true", "enable_queue_totals": q.Get("enable_queue_totals") == "true",
		"sample_retention_policies":     obj{"global": []int{600, 3600, 28800}, "basic": []int{600, 3600}, "detailed": []int{600}},
		"release_series_support_status": "supported",
	}
	if o.Cluster != nil {
		// Warren's own: messages a node could not forward to their queues' home (see
		// WarrenStats.ForwardsDropped); RabbitMQ has no such loss to report.
		res["cluster_forwards_dropped"] = o.Warren.ForwardsDropped
	}
	one(w, r, res)
}

func addCounters(dst, c *Counters) {
	dst.Publish += c.Publish
	dst.Confirm += c.Confirm
	dst.ReturnUnroutable += c.ReturnUnroutable
	dst.DropUnroutable += c.DropUnroutable
	dst.Deliver += c.Deliver
	dst.DeliverNoAck += c.DeliverNoAck
	dst.Get += c.Get
	dst.GetNoAck += c.GetNoAck
	dst.GetEmpty += c.GetEmpty
	dst.Ack += c.Ack
	dst.Redeliver += c.Redeliver
	dst.PublishIn += c.PublishIn
	dst.PublishOut += c.PublishOut
}

func (a *api) clusterName(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, obj{"name": a.b.Overview().ClusterName})
}

func (a *api) nodeJSON(o *Overview) obj {
	now := a.opts.now()
	res := obj{
		"name": o.Node, "type": "disc", "running": true, "being_drained": false,
		"mem_used": o.MemUsed, "mem_limit": o.MemLimit, "mem_alarm": o.MemAlarm,
		"mem_calculation_strategy": "rss",
		"disk_free":                o.DiskFree, "disk_free_limit": o.DiskFreeLimit, "disk_free_alarm": o.DiskAlarm,
		"fd_used": o.FDUsed, "fd_total": o.FDTotal, "sockets_used": o.Connections, "sockets_total": o.FDTotal,
		"proc_used": runtime.NumGoroutine(), "proc_total": 0, "run_queue": o.RunQueue,
		"processors": o.Processors, "uptime": now.Sub(o.StartedAt).Milliseconds(),
		"os_pid": strconv.Itoa(os.Getpid()), "rates_mode": "basic", "net_ticktime": 60,
		"exchange_types": exchangeTypes(o), "auth_mechanisms": authMechanisms(o),
		"applications": []obj{}, "contexts": []obj{}, "partitions": []string{}, "cluster_links": []obj{},
		"enabled_plugins": []string{"rabbitmq_management", "rabbitmq_prometheus"},
		"config_files":    strs(o.ConfigFiles), "log_files": []string{"<stderr>"}, "db_dir": o.DataDir,
		"erlang_version": runtime.Version(),
	}
	a.withRates(res, "node", now, []string{"mem_used", "disk_free", "fd_used"},
		[]float64{float64(o.MemUsed), float64(o.DiskFree), float64(o.FDUsed)})
	return res
}

func authMechanisms(o *Overview) []obj {
	out := []obj{}
	for _, m := range o.AuthMechanisms {
		out = append(out, obj{"name": m, "description": m + " authentication mechanism", "enabled": true})
	}
	return out
}

func (a *api) nodes(w http.ResponseWriter, r *http.Request) {
	if !a.monitorOnly(w, r) {
		return
	}
	o := a.b.Overview()
	p, ok := parseList(w, r)
	if !ok {
		return
	}
	if o.Cluster == nil {
		writeList(w, p, []row{{name: o.Node}}, func(int) obj { return a.nodeJSON(&o) })
		return
	}
	rows := make([]row, len(o.Cluster.Members))
	for i, m := range o.Cluster.Members {
		rows[i] = row{name: m.Name, i: int32(i)}
	}
	writeList(w, p, rows, func(i int) obj { return a.memberJSON(&o, o.Cluster.Members[i]) })
}

// memberJSON is a cluster member in /api/nodes: this node's full entry, or for another node
// RabbitMQ's name, type and running (its resources are on its own /api/nodes), both with
// Warren's cluster fields.
func (a *api) memberJSON(o *Overview, m ClusterMember) obj {
	res := obj{"name": m.Name, "type": "disc", "running": m.Running}
	if m.Name == o.Node {
		res = a.nodeJSON(o)
	}
	c := o.Cluster
	res["cluster_address"] = m.Address
	res["raft_voter"] = m.Voter
	res["raft_leader"] = c.Leader
	res["raft_is_leader"] = c.Leader == m.Name
	res["raft_term"] = c.Term
	res["raft_commit_index"] = c.CommitIndex
	res["raft_applied_index"] = m.AppliedIndex
	res["config_digest"] = m.ConfigDigest
	res["config_digest_match"] = m.ConfigMatch
	if !m.LastSeen.IsZero() {
		res["last_seen"] = m.LastSeen.UTC().Format(time.RFC3339)
	}
	return res
}

func (a *api) node(w http.ResponseWriter, r *http.Request) {
	if !a.monitorOnly(w, r) {
		return
	}
	o := a.b.Overview()
	name := pathValue(r, "node")
	if o.Cluster != nil {
		for _, m := range o.Cluster.Members {
			if m.Name == name {
				one(w, r, a.memberJSON(&o, m))
				return
			}
		}
	}
	if name != o.Node {
		notFound(w)
		return
	}
	one(w, r, a.nodeJSON(&o))
}

func (a *api) whoami(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	writeJSON(w, http.StatusOK, obj{"name": u.name, "tags": strs(u.tags)})
}
