package mgmt

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
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
	p, _ := parseList(httpDiscard{}, r)
	res := obj{
		"management_version": APIVersion, "rabbitmq_version": APIVersion,
		"product_name": "Warren", "product_version": o.Version,
		"rates_mode": "basic", "cluster_name": o.ClusterName, "node": o.Node,
		"erlang_version": runtime.Version(), "erlang_full_version": runtime.Version() + " (Go; Warren has no Erlang VM)",
		"exchange_types": exchangeTypes(&o), "listeners": listenersJSON(&o), "contexts": []obj{},
		"object_totals": totals, "queue_totals": qt, "churn_rates": churn,
		"message_stats":             a.messageStats(key, now, overviewCounters, &stats),
		"statistics_db_event_queue": 0, "disable_stats": p.noStats, "enable_queue_totals": p.queueTotals,
		"sample_retention_policies":     obj{"global": []int{600, 3600, 28800}, "basic": []int{600, 3600}, "detailed": []int{600}},
		"release_series_support_status": "supported",
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

// httpDiscard lets parseList run for its values only.
type httpDiscard struct{}

func (httpDiscard) Header() http.Header         { return http.Header{} }
func (httpDiscard) Write(p []byte) (int, error) { return len(p), nil }
func (httpDiscard) WriteHeader(int)             {}

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
	writeList(w, p, []row{{name: o.Node, render: func() obj { return a.nodeJSON(&o) }}})
}

func (a *api) node(w http.ResponseWriter, r *http.Request) {
	if !a.monitorOnly(w, r) {
		return
	}
	o := a.b.Overview()
	if pathValue(r, "node") != o.Node {
		notFound(w)
		return
	}
	one(w, r, a.nodeJSON(&o))
}

func (a *api) whoami(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	writeJSON(w, http.StatusOK, obj{"name": u.name, "tags": strs(u.tags)})
}

// ---- connections, channels, consumers

func (a *api) connections(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	vhost, ok := a.listVHost(w, r)
	if !ok {
		return
	}
	p, ok := parseList(w, r)
	if !ok {
		return
	}
	node := a.b.Overview().Node
	now := a.opts.now()
	all := a.b.Connections()
	rows := make([]row, 0, len(all))
	for i := range all {
		c := &all[i]
		if (vhost != "" && c.VHost != vhost) || (!u.isMonitor() && c.User != u.name) {
			continue
		}
		rows = append(rows, row{vhost: c.VHost, name: c.Name, render: func() obj { return a.connectionJSON(c, node, now, !p.noStats) }})
	}
	writeList(w, p, rows)
}

// findConnection returns the named connection if u may see it.
func (a *api) findConnection(u *user, name string) (ConnectionInfo, bool) {
	for _, c := range a.b.Connections() {
		if c.Name == name && (u.isMonitor() || c.User == u.name) {
			return c, true
		}
	}
	return ConnectionInfo{}, false
}

func (a *api) connection(w http.ResponseWriter, r *http.Request) {
	c, ok := a.findConnection(userOf(r), pathValue(r, "name"))
	if !ok {
		notFound(w)
		return
	}
	one(w, r, a.connectionJSON(&c, a.b.Overview().Node, a.opts.now(), true))
}

func (a *api) closeConnection(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	c, ok := a.findConnection(u, pathValue(r, "name"))
	if !ok {
		notFound(w)
		return
	}
	if !u.isAdmin() && c.User != u.name {
		notAuthorised(w, "Not administrator user")
		return
	}
	reason := r.Header.Get("X-Reason")
	if reason == "" {
		reason = "Closed via management plugin"
	}
	if err := a.b.CloseConnection(c.Name, reason); err != nil {
		a.brokerError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) channels(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	vhost, ok := a.listVHost(w, r)
	if !ok {
		return
	}
	p, ok := parseList(w, r)
	if !ok {
		return
	}
	conn := pathValue(r, "name")
	if conn != "" {
		if _, ok := a.findConnection(u, conn); !ok {
			notFound(w)
			return
		}
	}
	single := pathValue(r, "channel")
	node := a.b.Overview().Node
	now := a.opts.now()
	all := a.b.Channels()
	rows := make([]row, 0, len(all))
	for i := range all {
		c := &all[i]
		name := channelName(c.Connection, c.Number)
		if (vhost != "" && c.VHost != vhost) || (conn != "" && c.Connection != conn) ||
			(!u.isMonitor() && c.User != u.name) {
			continue
		}
		if single != "" {
			if name == single {
				one(w, r, a.channelJSON(c, node, now, true))
				return
			}
			continue
		}
		rows = append(rows, row{vhost: c.VHost, name: name, render: func() obj { return a.channelJSON(c, node, now, !p.noStats) }})
	}
	if single != "" {
		notFound(w)
		return
	}
	writeList(w, p, rows)
}

func (a *api) consumers(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	vhost, ok := a.listVHost(w, r)
	if !ok {
		return
	}
	p, ok := parseList(w, r)
	if !ok {
		return
	}
	node := a.b.Overview().Node
	all := a.b.Consumers()
	rows := make([]row, 0, len(all))
	for i := range all {
		c := &all[i]
		if (vhost != "" && c.VHost != vhost) || !u.seesVHost(c.VHost) {
			continue
		}
		rows = append(rows, row{vhost: c.VHost, name: c.Queue + "\x00" + c.Tag, render: func() obj { return consumerJSON(c, node) }})
	}
	writeList(w, p, rows)
}

// ---- exchanges

func exchangeName(r *http.Request) string {
	n := pathValue(r, "name")
	if n == defaultExchangePath {
		return ""
	}
	return n
}

func (a *api) exchanges(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	vhost, ok := a.listVHost(w, r)
	if !ok {
		return
	}
	p, ok := parseList(w, r)
	if !ok {
		return
	}
	now := a.opts.now()
	all := a.b.Exchanges(vhost)
	rows := make([]row, 0, len(all))
	for i := range all {
		e := &all[i]
		if !u.seesVHost(e.VHost) {
			continue
		}
		rows = append(rows, row{vhost: e.VHost, name: e.Name, render: func() obj { return a.exchangeJSON(e, now, !p.noStats) }})
	}
	writeList(w, p, rows)
}

func (a *api) findExchange(vhost, name string) (ExchangeInfo, bool) {
	for _, e := range a.b.Exchanges(vhost) {
		if e.Name == name {
			return e, true
		}
	}
	return ExchangeInfo{}, false
}

func (a *api) exchange(w http.ResponseWriter, r *http.Request) {
	vhost := pathValue(r, "vhost")
	if !a.openVHost(w, userOf(r), vhost) {
		return
	}
	e, ok := a.findExchange(vhost, exchangeName(r))
	if !ok {
		notFound(w)
		return
	}
	o := a.exchangeJSON(&e, a.opts.now(), true)
	o["incoming"], o["outgoing"] = []obj{}, []obj{} // per-channel and per-queue detail: not kept
	one(w, r, o)
}

// boolField reads a boolean of a request body; like RabbitMQ it also takes the strings "true"
// and "false", which rabbitmqadmin sends.
func boolField(m map[string]any, k string) (bool, error) {
	switch v := m[k].(type) {
	case nil:
		return false, nil
	case bool:
		return v, nil
	case string:
		switch v {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
	}
	return false, fmt.Errorf("%v", m[k])
}

// declareFields reads the booleans of a declare body, answering RabbitMQ's 400 for a bad one.
func declareFields(w http.ResponseWriter, body map[string]any, keys ...string) ([]bool, bool) {
	out := make([]bool, len(keys))
	for i, k := range keys {
		b, err := boolField(body, k)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, obj{"error": "bad_request", "reason": []string{"not_boolean", err.Error()}})
			return nil, false
		}
		out[i] = b
	}
	return out, true
}

// argumentsField reads the arguments object of a body.
func argumentsField(w http.ResponseWriter, body map[string]any) (map[string]any, bool) {
	switch v := body["arguments"].(type) {
	case nil:
		return nil, true
	case map[string]any:
		return normalize(v), true
	}
	badRequest(w, "arguments must be a JSON object")
	return nil, false
}

func (a *api) declareExchange(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	vhost, name := pathValue(r, "vhost"), exchangeName(r)
	if !a.openVHost(w, u, vhost) || !a.requirePerm(w, u, vhost, "configure", name) {
		return
	}
	var body map[string]any
	if !readJSON(w, r, &body) {
		return
	}
	flags, ok := declareFields(w, body, "durable", "auto_delete", "internal")
	if !ok {
		return
	}
	args, ok := argumentsField(w, body)
	if !ok {
		return
	}
	typ, _ := body["type"].(string)
	if typ == "" {
		typ = "direct"
	}
	created, err := a.b.DeclareExchange(vhost, name, ExchangeOptions{
		Type: typ, Durable: flags[0], AutoDelete: flags[1], Internal: flags[2], Arguments: args,
	})
	if err != nil {
		a.brokerError(w, r, err)
		return
	}
	created201(w, created)
}

func created201(w http.ResponseWriter, created bool) {
	if created {
		w.WriteHeader(http.StatusCreated)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) deleteExchange(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	vhost, name := pathValue(r, "vhost"), exchangeName(r)
	if !a.openVHost(w, u, vhost) {
		return
	}
	if _, ok := a.findExchange(vhost, name); !ok {
		notFound(w)
		return
	}
	if !a.requirePerm(w, u, vhost, "configure", name) {
		return
	}
	if err := a.b.DeleteExchange(vhost, name, r.URL.Query().Get("if-unused") == "true"); err != nil {
		a.brokerError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) publish(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	vhost, name := pathValue(r, "vhost"), exchangeName(r)
	if !a.openVHost(w, u, vhost) {
		return
	}
	var body map[string]any
	if !readJSON(w, r, &body) {
		return
	}
	var missing []string
	for _, k := range []string{"properties", "routing_key", "payload", "payload_encoding"} {
		if _, ok := body[k]; !ok {
			missing = append(missing, "{key_missing,"+k+"}")
		}
	}
	if len(missing) > 0 {
		badRequest(w, keysMissing(missing))
		return
	}
	props, _ := body["properties"].(map[string]any)
	rk, _ := body["routing_key"].(string)
	payload, _ := body["payload"].(string)
	var data []byte
	switch enc, _ := body["payload_encoding"].(string); enc {
	case "string":
		data = []byte(payload)
	case "base64":
		b, err := base64.StdEncoding.DecodeString(payload)
		if err != nil {
			badRequest(w, "payload is not valid base64")
			return
		}
		data = b
	default:
		writeJSON(w, http.StatusBadRequest, obj{"error": "bad_request", "reason": []string{"unsupported_encoding", enc}})
		return
	}
	if _, ok := a.findExchange(vhost, name); !ok {
		notFound(w)
		return
	}
	if !a.requirePerm(w, u, vhost, "write", name) {
		return
	}
	routed, err := a.b.Publish(vhost, name, Publishing{RoutingKey: rk, Properties: normalize(props), Payload: data})
	if err != nil {
		a.brokerError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, obj{"routed": routed})
}

func (a *api) exchangeBindings(w http.ResponseWriter, r *http.Request) {
	vhost, name := pathValue(r, "vhost"), exchangeName(r)
	if !a.openVHost(w, userOf(r), vhost) {
		return
	}
	if _, ok := a.findExchange(vhost, name); !ok {
		notFound(w)
		return
	}
	source := strings.HasSuffix(r.URL.Path, "/source")
	a.writeBindings(w, r, vhost, func(b *BindingInfo) bool {
		if source {
			return b.Source == name
		}
		return b.DestinationType == "exchange" && b.Destination == name
	})
}

// ---- queues

func (a *api) queues(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	vhost, ok := a.listVHost(w, r)
	if !ok {
		return
	}
	p, ok := parseList(w, r)
	if !ok {
		return
	}
	node := a.b.Overview().Node
	now := a.opts.now()
	all := a.b.Queues(vhost)
	rows := make([]row, 0, len(all))
	for i := range all {
		q := &all[i]
		if !u.seesVHost(q.VHost) {
			continue
		}
		rows = append(rows, row{vhost: q.VHost, name: q.Name, render: func() obj {
			o := a.queueJSON(q, node, now, !p.noStats)
			if p.noStats && p.queueTotals {
				o["messages"], o["messages_ready"], o["messages_unacknowledged"] = q.Messages, q.MessagesReady, q.MessagesUnacked
			}
			return o
		}})
	}
	writeList(w, p, rows)
}

func (a *api) findQueue(vhost, name string) (QueueInfo, bool) {
	return a.b.Queue(vhost, name)
}

func (a *api) queue(w http.ResponseWriter, r *http.Request) {
	vhost := pathValue(r, "vhost")
	if !a.openVHost(w, userOf(r), vhost) {
		return
	}
	q, ok := a.findQueue(vhost, pathValue(r, "name"))
	if !ok {
		notFound(w)
		return
	}
	node := a.b.Overview().Node
	o := a.queueJSON(&q, node, a.opts.now(), true)
	var details []obj
	for _, c := range a.b.Consumers() {
		if c.VHost == vhost && c.Queue == q.Name {
			details = append(details, consumerJSON(&c, node))
		}
	}
	o["consumer_details"] = orEmptyList(details)
	o["deliveries"] = []obj{}
	o["incoming"] = []obj{}
	one(w, r, o)
}

func orEmptyList(l []obj) []obj {
	if l == nil {
		return []obj{}
	}
	return l
}

func (a *api) declareQueue(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	vhost, name := pathValue(r, "vhost"), pathValue(r, "name")
	if !a.openVHost(w, u, vhost) || !a.requirePerm(w, u, vhost, "configure", name) {
		return
	}
	var body map[string]any
	if !readJSON(w, r, &body) {
		return
	}
	flags, ok := declareFields(w, body, "durable", "auto_delete")
	if !ok {
		return
	}
	args, ok := argumentsField(w, body)
	if !ok {
		return
	}
	created, err := a.b.DeclareQueue(vhost, name, QueueOptions{Durable: flags[0], AutoDelete: flags[1], Arguments: args})
	if err != nil {
		a.brokerError(w, r, err)
		return
	}
	created201(w, created)
}

// queueOp resolves the vhost and queue of a queue path, checks permission what on it, and
// answers 404/401 itself when they fail.
func (a *api) queueOp(w http.ResponseWriter, r *http.Request, what string) (string, string, bool) {
	u := userOf(r)
	vhost, name := pathValue(r, "vhost"), pathValue(r, "name")
	if !a.openVHost(w, u, vhost) {
		return "", "", false
	}
	if _, ok := a.findQueue(vhost, name); !ok {
		notFound(w)
		return "", "", false
	}
	return vhost, name, a.requirePerm(w, u, vhost, what, name)
}

func (a *api) deleteQueue(w http.ResponseWriter, r *http.Request) {
	vhost, name, ok := a.queueOp(w, r, "configure")
	if !ok {
		return
	}
	q := r.URL.Query()
	if err := a.b.DeleteQueue(vhost, name, q.Get("if-unused") == "true", q.Get("if-empty") == "true"); err != nil {
		a.brokerError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) purgeQueue(w http.ResponseWriter, r *http.Request) {
	vhost, name, ok := a.queueOp(w, r, "read")
	if !ok {
		return
	}
	if _, err := a.b.PurgeQueue(vhost, name); err != nil {
		a.brokerError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

var ackModes = map[string]AckMode{
	"ack_requeue_true": AckRequeue, "ack_requeue_false": AckNoRequeue,
	"reject_requeue_true": RejectRequeue, "reject_requeue_false": RejectDrop,
}

func (a *api) getMessages(w http.ResponseWriter, r *http.Request) {
	vhost, name, ok := a.queueOp(w, r, "read")
	if !ok {
		return
	}
	var body map[string]any
	if !readJSON(w, r, &body) {
		return
	}
	var missing []string
	for _, k := range []string{"ackmode", "encoding"} {
		if _, ok := body[k]; !ok {
			missing = append(missing, "{key_missing,"+k+"}")
		}
	}
	if len(missing) > 0 {
		badRequest(w, keysMissing(missing))
		return
	}
	modeName, _ := body["ackmode"].(string)
	mode, ok := ackModes[modeName]
	if !ok {
		badRequest(w, fmt.Sprintf("unknown ackmode %q: use ack_requeue_true, ack_requeue_false, reject_requeue_true or reject_requeue_false", modeName))
		return
	}
	enc, _ := body["encoding"].(string)
	if enc != "auto" && enc != "base64" {
		writeJSON(w, http.StatusBadRequest, obj{"error": "bad_request", "reason": []string{"unsupported_encoding", enc}})
		return
	}
	count, truncate := 1, -1
	if n, ok := intOf(body["count"]); ok {
		count = n
	}
	if n, ok := intOf(body["truncate"]); ok {
		truncate = n
	}
	if count < 1 {
		badRequest(w, "count must be at least 1")
		return
	}
	msgs, err := a.b.GetMessages(vhost, name, count, mode)
	if err != nil {
		a.brokerError(w, r, err)
		return
	}
	out := make([]obj, 0, len(msgs))
	for _, m := range msgs {
		p := m.Payload
		if truncate >= 0 && len(p) > truncate {
			p = p[:truncate]
		}
		o := obj{
			"payload_bytes": len(m.Payload), "redelivered": m.Redelivered, "exchange": m.Exchange,
			"routing_key": m.RoutingKey, "message_count": m.Remaining, "properties": orEmpty(m.Properties),
		}
		if enc == "auto" && utf8.Valid(p) {
			o["payload"], o["payload_encoding"] = string(p), "string"
		} else {
			o["payload"], o["payload_encoding"] = base64.StdEncoding.EncodeToString(p), "base64"
		}
		out = append(out, o)
	}
	writeJSON(w, http.StatusOK, out)
}

// keysMissing formats missing body keys as RabbitMQ does (an Erlang list, wrapped when long
// columns), since scripts match on it.
func keysMissing(missing []string) string {
	s := "[" + strings.Join(missing, ",") + "]"
	if len(s) > 60 {
		s = "[" + strings.Join(missing, ",\n ") + "]"
	}
	return s
}

func intOf(v any) (int, bool) {
	switch n := v.(type) {
	case json.Number:
		i, err := n.Int64()
		return int(i), err == nil
	case string:
		i, err := strconv.Atoi(n)
		return i, err == nil
	}
	return 0, false
}

func (a *api) queueBindings(w http.ResponseWriter, r *http.Request) {
	vhost, name := pathValue(r, "vhost"), pathValue(r, "name")
	if !a.openVHost(w, userOf(r), vhost) {
		return
	}
	if _, ok := a.findQueue(vhost, name); !ok {
		notFound(w)
		return
	}
	a.writeBindings(w, r, vhost, func(b *BindingInfo) bool {
		return b.DestinationType == "queue" && b.Destination == name
	})
}

// ---- bindings

func (a *api) writeBindings(w http.ResponseWriter, r *http.Request, vhost string, keep func(*BindingInfo) bool) {
	u := userOf(r)
	p, ok := parseList(w, r)
	if !ok {
		return
	}
	all := a.b.Bindings(vhost)
	rows := make([]row, 0, len(all))
	for i := range all {
		b := &all[i]
		if !u.seesVHost(b.VHost) || !keep(b) {
			continue
		}
		rows = append(rows, row{vhost: b.VHost, name: b.Source + "\x00" + b.DestinationType + "\x00" + b.Destination + "\x00" + b.RoutingKey,
			render: func() obj { return bindingJSON(b) }})
	}
	writeList(w, p, rows)
}

func (a *api) bindings(w http.ResponseWriter, r *http.Request) {
	vhost, ok := a.listVHost(w, r)
	if !ok {
		return
	}
	a.writeBindings(w, r, vhost, func(*BindingInfo) bool { return true })
}

// bindingPath resolves /api/bindings/{vhost}/e/{source}/{q|e}/{dest}: both ends must exist.
func (a *api) bindingPath(w http.ResponseWriter, r *http.Request) (BindingInfo, bool) {
	vhost := pathValue(r, "vhost")
	b := BindingInfo{VHost: vhost, Source: pathValue(r, "source"), Destination: pathValue(r, "dest")}
	if b.Source == defaultExchangePath {
		b.Source = ""
	}
	switch pathValue(r, "dtype") {
	case "q":
		b.DestinationType = "queue"
	case "e":
		b.DestinationType = "exchange"
	default:
		notFound(w)
		return b, false
	}
	if !a.openVHost(w, userOf(r), vhost) {
		return b, false
	}
	if _, ok := a.findExchange(vhost, b.Source); !ok {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no exchange '%s' in vhost '%s'", b.Source, vhost))
		return b, false
	}
	if b.DestinationType == "queue" {
		if _, ok := a.findQueue(vhost, b.Destination); !ok {
			writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no queue '%s' in vhost '%s'", b.Destination, vhost))
			return b, false
		}
	} else if _, ok := a.findExchange(vhost, b.Destination); !ok {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no exchange '%s' in vhost '%s'", b.Destination, vhost))
		return b, false
	}
	return b, true
}

func sameEnds(x, y *BindingInfo) bool {
	return x.Source == y.Source && x.DestinationType == y.DestinationType && x.Destination == y.Destination
}

func (a *api) bindingsBetween(w http.ResponseWriter, r *http.Request) {
	want, ok := a.bindingPath(w, r)
	if !ok {
		return
	}
	a.writeBindings(w, r, want.VHost, func(b *BindingInfo) bool { return sameEnds(b, &want) })
}

func (a *api) findBinding(w http.ResponseWriter, r *http.Request) (BindingInfo, bool) {
	want, ok := a.bindingPath(w, r)
	if !ok {
		return want, false
	}
	props := pathValue(r, "props")
	for _, b := range a.b.Bindings(want.VHost) {
		if sameEnds(&b, &want) && propertiesKey(&b) == url.PathEscape(props) || sameEnds(&b, &want) && propertiesKey(&b) == props {
			return b, true
		}
	}
	notFound(w)
	return want, false
}

func (a *api) binding(w http.ResponseWriter, r *http.Request) {
	if b, ok := a.findBinding(w, r); ok {
		one(w, r, bindingJSON(&b))
	}
}

func (a *api) bind(w http.ResponseWriter, r *http.Request) {
	b, ok := a.bindingPath(w, r)
	if !ok {
		return
	}
	u := userOf(r)
	if !a.requirePerm(w, u, b.VHost, "write", b.Destination) || !a.requirePerm(w, u, b.VHost, "read", b.Source) {
		return
	}
	var body map[string]any
	if !readJSON(w, r, &body) {
		return
	}
	args, ok := argumentsField(w, body)
	if !ok {
		return
	}
	b.RoutingKey, _ = body["routing_key"].(string)
	b.Arguments = args
	if err := a.b.Bind(b); err != nil {
		a.brokerError(w, r, err)
		return
	}
	// RabbitMQ's Location is relative to the request path: destination/props.
	w.Header().Set("Location", url.PathEscape(b.Destination)+"/"+propertiesKey(&b))
	w.WriteHeader(http.StatusCreated)
}

func (a *api) unbind(w http.ResponseWriter, r *http.Request) {
	b, ok := a.findBinding(w, r)
	if !ok {
		return
	}
	u := userOf(r)
	if !a.requirePerm(w, u, b.VHost, "write", b.Destination) || !a.requirePerm(w, u, b.VHost, "read", b.Source) {
		return
	}
	if err := a.b.Unbind(b); err != nil {
		a.brokerError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// ---- configuration objects (read-only)

func (a *api) vhosts(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	p, ok := parseList(w, r)
	if !ok {
		return
	}
	node := a.b.Overview().Node
	now := a.opts.now()
	all := a.b.VHosts()
	rows := make([]row, 0, len(all))
	for i := range all {
		v := &all[i]
		if !u.seesVHost(v.Name) {
			continue
		}
		rows = append(rows, row{name: v.Name, render: func() obj { return a.vhostJSON(v, node, now, !p.noStats) }})
	}
	writeList(w, p, rows)
}

func (a *api) vhost(w http.ResponseWriter, r *http.Request) {
	vhost := pathValue(r, "vhost")
	if !a.openVHost(w, userOf(r), vhost) {
		return
	}
	for _, v := range a.b.VHosts() {
		if v.Name == vhost {
			one(w, r, a.vhostJSON(&v, a.b.Overview().Node, a.opts.now(), true))
			return
		}
	}
	notFound(w)
}

func (a *api) users(w http.ResponseWriter, r *http.Request) {
	if !a.adminOnly(w, r) {
		return
	}
	p, ok := parseList(w, r)
	if !ok {
		return
	}
	all := a.b.Users()
	rows := make([]row, 0, len(all))
	for i := range all {
		u := &all[i]
		rows = append(rows, row{name: u.Name, render: func() obj { return userJSON(u) }})
	}
	writeList(w, p, rows)
}

func (a *api) user(w http.ResponseWriter, r *http.Request) {
	if !a.adminOnly(w, r) {
		return
	}
	for _, u := range a.b.Users() {
		if u.Name == pathValue(r, "user") {
			one(w, r, userJSON(&u))
			return
		}
	}
	notFound(w)
}

func (a *api) userLimits(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	var out []obj
	for _, x := range a.b.Users() {
		if len(x.Limits) > 0 && (u.isAdmin() || x.Name == u.name) {
			out = append(out, obj{"user": x.Name, "value": x.Limits})
		}
	}
	writeJSON(w, http.StatusOK, orEmptyList(out))
}

func (a *api) permissions(w http.ResponseWriter, r *http.Request) {
	if !a.adminOnly(w, r) {
		return
	}
	vhost, user := pathValue(r, "vhost"), pathValue(r, "user")
	if vhost != "" && !a.vhostExists(vhost) {
		notFound(w)
		return
	}
	if user != "" && !slices.ContainsFunc(a.b.Users(), func(u UserInfo) bool { return u.Name == user }) {
		notFound(w)
		return
	}
	p, ok := parseList(w, r)
	if !ok {
		return
	}
	all := a.b.Permissions()
	rows := make([]row, 0, len(all))
	for i := range all {
		x := &all[i]
		if (vhost != "" && x.VHost != vhost) || (user != "" && x.User != user) {
			continue
		}
		rows = append(rows, row{vhost: x.VHost, name: x.User, render: func() obj { return permissionJSON(x) }})
	}
	writeList(w, p, rows)
}

func (a *api) permission(w http.ResponseWriter, r *http.Request) {
	if !a.adminOnly(w, r) {
		return
	}
	for _, x := range a.b.Permissions() {
		if x.VHost == pathValue(r, "vhost") && x.User == pathValue(r, "user") {
			one(w, r, permissionJSON(&x))
			return
		}
	}
	notFound(w)
}

func (a *api) policies(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	vhost, ok := a.listVHost(w, r)
	if !ok {
		return
	}
	p, ok := parseList(w, r)
	if !ok {
		return
	}
	all := a.b.Policies()
	rows := make([]row, 0, len(all))
	for i := range all {
		x := &all[i]
		// Policies are visible to policymakers (and administrators) on their vhosts, as in RabbitMQ.
		if (vhost != "" && x.VHost != vhost) || !(u.isAdmin() || u.isPolicymaker() && u.seesVHost(x.VHost)) {
			continue
		}
		rows = append(rows, row{vhost: x.VHost, name: x.Name, render: func() obj { return policyJSON(x) }})
	}
	writeList(w, p, rows)
}

func (a *api) policy(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	vhost := pathValue(r, "vhost")
	if !a.openVHost(w, u, vhost) {
		return
	}
	if !u.isPolicymaker() {
		notAuthorised(w, "Not policymaker user")
		return
	}
	for _, x := range a.b.Policies() {
		if x.VHost == vhost && x.Name == pathValue(r, "name") {
			one(w, r, policyJSON(&x))
			return
		}
	}
	notFound(w)
}

func (a *api) vhostLimits(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	vhost, ok := a.listVHost(w, r)
	if !ok {
		return
	}
	out := []obj{}
	for _, v := range a.b.VHosts() {
		if (vhost != "" && v.Name != vhost) || !u.seesVHost(v.Name) || len(v.Limits) == 0 {
			continue
		}
		out = append(out, obj{"vhost": v.Name, "value": v.Limits})
	}
	writeJSON(w, http.StatusOK, out)
}

// definitions exports the running topology and the configuration in RabbitMQ's definitions
// format: what `rabbitmqctl export_definitions` and rabbitmqadmin export write, and what
// config.yaml's load_definitions reads.
func (a *api) definitions(w http.ResponseWriter, r *http.Request) {
	if !a.adminOnly(w, r) {
		return
	}
	vhost := pathValue(r, "vhost")
	if vhost != "" && !a.vhostExists(vhost) {
		notFound(w)
		return
	}
	o := a.b.Overview()
	var exchanges, queues, bindings, policies, params, users, vhosts, perms []obj
	for _, e := range a.b.Exchanges(vhost) {
		if e.Name == "" || strings.HasPrefix(e.Name, "amq.") {
			continue // built in: every vhost has them
		}
		exchanges = append(exchanges, obj{"name": e.Name, "vhost": e.VHost, "type": e.Type, "durable": e.Durable,
			"auto_delete": e.AutoDelete, "internal": e.Internal, "arguments": orEmpty(e.Arguments)})
	}
	for _, q := range a.b.Queues(vhost) {
		if q.Exclusive {
			continue // owned by a connection; RabbitMQ does not export them
		}
		queues = append(queues, obj{"name": q.Name, "vhost": q.VHost, "durable": q.Durable,
			"auto_delete": q.AutoDelete, "arguments": orEmpty(q.Arguments)})
	}
	for _, b := range a.b.Bindings(vhost) {
		if b.Source == "" {
			continue // the default exchange's implicit bindings
		}
		bindings = append(bindings, obj{"source": b.Source, "vhost": b.VHost, "destination": b.Destination,
			"destination_type": b.DestinationType, "routing_key": b.RoutingKey, "arguments": orEmpty(b.Arguments)})
	}
	for _, p := range a.b.Policies() {
		if vhost == "" || p.VHost == vhost {
			policies = append(policies, policyJSON(&p))
		}
	}
	for _, v := range a.b.VHosts() {
		if vhost == "" || v.Name == vhost {
			vhosts = append(vhosts, obj{"name": v.Name, "description": v.Description, "tags": strs(v.Tags)})
			if len(v.Limits) > 0 {
				params = append(params, obj{"vhost": v.Name, "component": "vhost-limits", "name": "limits", "value": v.Limits})
			}
		}
	}
	// A per-vhost export carries only the vhost's objects, as RabbitMQ's does.
	if vhost != "" {
		strip := func(l []obj) []obj {
			for _, o := range l {
				delete(o, "vhost")
			}
			return orEmptyList(l)
		}
		writeJSON(w, http.StatusOK, obj{
			"rabbit_version": APIVersion, "rabbitmq_version": APIVersion, "product_name": "Warren", "product_version": o.Version,
			"exchanges": strip(exchanges), "queues": strip(queues), "bindings": strip(bindings),
			"policies": strip(policies), "parameters": strip(params),
		})
		return
	}
	for _, u := range a.b.Users() {
		j := userJSON(&u)
		users = append(users, j)
	}
	for _, p := range a.b.Permissions() {
		perms = append(perms, permissionJSON(&p))
	}
	res := obj{
		"rabbit_version": APIVersion, "rabbitmq_version": APIVersion, "product_name": "Warren", "product_version": o.Version,
		"users": orEmptyList(users), "vhosts": orEmptyList(vhosts), "permissions": orEmptyList(perms),
		"topic_permissions": []obj{}, "parameters": orEmptyList(params),
		"global_parameters": []obj{{"name": "cluster_name", "value": o.ClusterName}},
		"policies":          orEmptyList(policies), "queues": orEmptyList(queues), "exchanges": orEmptyList(exchanges),
		"bindings": orEmptyList(bindings),
	}
	if r.URL.Query().Has("download") {
		w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", r.URL.Query().Get("download")))
	}
	writeJSON(w, http.StatusOK, res)
}

// ---- health

func (a *api) healthOK(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, obj{"status": "ok"})
}

// alivenessQueue is the queue RabbitMQ's aliveness test declares, publishes to and reads from.
const alivenessQueue = "aliveness-test"

func (a *api) aliveness(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	vhost := pathValue(r, "vhost")
	if !a.vhostExists(vhost) {
		notFound(w)
		return
	}
	if _, ok := u.perms[vhost]; !ok {
		notAuthorised(w, vhostRefused)
		return
	}
	fail := func(err error) {
		writeJSON(w, http.StatusServiceUnavailable, obj{"status": "failed", "reason": err.Error()})
	}
	if _, err := a.b.DeclareQueue(vhost, alivenessQueue, QueueOptions{}); err != nil {
		fail(err)
		return
	}
	if _, err := a.b.Publish(vhost, "", Publishing{RoutingKey: alivenessQueue, Payload: []byte("test_message")}); err != nil {
		fail(err)
		return
	}
	msgs, err := a.b.GetMessages(vhost, alivenessQueue, 1, AckNoRequeue)
	if err != nil {
		fail(err)
		return
	}
	if len(msgs) == 0 {
		fail(fmt.Errorf("the test message was not delivered"))
		return
	}
	writeJSON(w, http.StatusOK, obj{"status": "ok"})
}

func (a *api) alarms(w http.ResponseWriter, r *http.Request) {
	o := a.b.Overview()
	var list []obj
	if o.MemAlarm {
		list = append(list, obj{"node": o.Node, "resource": "memory"})
	}
	if o.DiskAlarm {
		list = append(list, obj{"node": o.Node, "resource": "disk"})
	}
	if len(list) == 0 {
		writeJSON(w, http.StatusOK, obj{"status": "ok"})
		return
	}
	reason := "There are alarms in effect in the cluster"
	if strings.HasSuffix(r.URL.Path, "local-alarms") {
		reason = "There are alarms in effect on the node"
	}
	writeJSON(w, http.StatusServiceUnavailable, obj{"status": "failed", "reason": reason, "alarms": list})
}

func (a *api) portListener(w http.ResponseWriter, r *http.Request) {
	port, err := strconv.Atoi(pathValue(r, "port"))
	if err != nil || port < 1 || port > 65535 {
		badRequest(w, "invalid port "+strconv.Quote(pathValue(r, "port")))
		return
	}
	o := a.b.Overview()
	ports := []int{}
	for _, l := range o.Listeners {
		if l.Port == port {
			writeJSON(w, http.StatusOK, obj{"status": "ok", "port": port})
			return
		}
		ports = append(ports, l.Port)
	}
	writeJSON(w, http.StatusServiceUnavailable, obj{"status": "failed", "reason": "No active listener", "missing": port, "ports": ports})
}

func (a *api) protocolListener(w http.ResponseWriter, r *http.Request) {
	want := pathValue(r, "protocol")
	o := a.b.Overview()
	protos := []string{}
	for _, l := range o.Listeners {
		if l.Protocol == want {
			writeJSON(w, http.StatusOK, obj{"status": "ok", "protocol": want})
			return
		}
		protos = append(protos, l.Protocol)
	}
	writeJSON(w, http.StatusServiceUnavailable, obj{"status": "failed", "reason": "No active listener", "missing": want, "protocols": protos})
}

// normalize turns the json.Numbers of a decoded body into int64 (or float64) so that the broker
// sees the types an AMQP client would send.
func normalize(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = normalizeValue(v)
	}
	return out
}

func normalizeValue(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		return normalize(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalizeValue(e)
		}
		return out
	}
	return v
}
