package mgmt

// Users, vhosts, permissions, policies, limits and definitions: read-only views of the
// configuration file (writes are refused in routes).

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
)

func (a *api) vhosts(w http.ResponseWriter, r *http.Request) {
	u := userOf(r)
	p, ok := parseList(w, r)
	if !ok {
		return
	}
	node := a.nodeName()
	now := a.opts.now()
	all := a.b.VHosts()
	rows := make([]row, 0, len(all))
	for i := range all {
		v := &all[i]
		if !u.seesVHost(v.Name) {
			continue
		}
		rows = append(rows, row{name: v.Name, i: int32(i)})
	}
	writeList(w, p, rows, func(i int) obj {
		v := &all[i]
		return a.vhostJSON(v, node, now, !p.noStats)
	})
}

func (a *api) vhost(w http.ResponseWriter, r *http.Request) {
	vhost := pathValue(r, "vhost")
	if !a.openVHost(w, userOf(r), vhost) {
		return
	}
	for _, v := range a.b.VHosts() {
		if v.Name == vhost {
			one(w, r, a.vhostJSON(&v, a.nodeName(), a.opts.now(), true))
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
		rows = append(rows, row{name: u.Name, i: int32(i)})
	}
	writeList(w, p, rows, func(i int) obj {
		u := &all[i]
		return userJSON(u)
	})
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
		rows = append(rows, row{vhost: x.VHost, name: x.User, i: int32(i)})
	}
	writeList(w, p, rows, func(i int) obj {
		x := &all[i]
		return permissionJSON(x)
	})
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
		rows = append(rows, row{vhost: x.VHost, name: x.Name, i: int32(i)})
	}
	writeList(w, p, rows, func(i int) obj {
		x := &all[i]
		return policyJSON(x)
	})
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
