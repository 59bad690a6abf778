package mgmt

// Connections, channels and consumers: listed, and connections closed, through the Broker.

import (
	"net/http"
)

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
	node := a.nodeName()
	now := a.opts.now()
	all := a.b.Connections()
	rows := make([]row, 0, len(all))
	for i := range all {
		c := &all[i]
		if (vhost != "" && c.VHost != vhost) || (!u.isMonitor() && c.User != u.name) {
			continue
		}
		rows = append(rows, row{vhost: c.VHost, name: c.Name, i: int32(i)})
	}
	writeList(w, p, rows, func(i int) obj {
		c := &all[i]
		return a.connectionJSON(c, node, now, !p.noStats)
	})
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
	one(w, r, a.connectionJSON(&c, a.nodeName(), a.opts.now(), true))
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
	node := a.nodeName()
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
		rows = append(rows, row{vhost: c.VHost, name: name, i: int32(i)})
	}
	if single != "" {
		notFound(w)
		return
	}
	writeList(w, p, rows, func(i int) obj {
		c := &all[i]
		return a.channelJSON(c, node, now, !p.noStats)
	})
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
	node := a.nodeName()
	all := a.b.Consumers()
	rows := make([]row, 0, len(all))
	for i := range all {
		c := &all[i]
		if (vhost != "" && c.VHost != vhost) || !u.seesVHost(c.VHost) {
			continue
		}
		rows = append(rows, row{vhost: c.VHost, name: c.Queue + "\x00" + c.Tag, i: int32(i)})
	}
	writeList(w, p, rows, func(i int) obj {
		c := &all[i]
		return consumerJSON(c, node)
	})
}
