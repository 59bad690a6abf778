package mgmt

// Exchanges: list, declare, delete, publish, and their bindings.

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
)

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
		rows = append(rows, row{vhost: e.VHost, name: e.Name, i: int32(i)})
	}
	writeList(w, p, rows, func(i int) obj {
		e := &all[i]
		return a.exchangeJSON(e, now, !p.noStats)
	})
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
