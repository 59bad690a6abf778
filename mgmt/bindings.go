package mgmt

// Bindings: list, create and delete, addressed by RabbitMQ's properties key.

import (
	"fmt"
	"net/http"
	"net/url"
)

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
			i: int32(i)})
	}
	writeList(w, p, rows, func(i int) obj { return bindingJSON(&all[i]) })
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
