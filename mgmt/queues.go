package mgmt

// Queues: list, declare, delete, purge, get messages, and their bindings.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

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
	node := a.nodeName()
	now := a.opts.now()
	if ql, ok := a.b.(QueueNamer); ok && (p.sort == "" || p.sort == "name" || p.sort == "vhost") {
		// Sorted by name (or not at all): only the rows shown are looked up, so a page of a
		// broker with 100,000 queues costs 100 lookups, not 100,000 full descriptions.
		names := ql.QueueNames(vhost)
		rows := make([]row, 0, len(names))
		for i, n := range names {
			if u.seesVHost(n.VHost) {
				rows = append(rows, row{vhost: n.VHost, name: n.Name, i: int32(i)})
			}
		}
		writeList(w, p, rows, func(i int) obj {
			q, found := a.b.Queue(names[i].VHost, names[i].Name)
			if !found { // deleted since the names were read
				q = QueueInfo{VHost: names[i].VHost, Name: names[i].Name, State: "deleted"}
			}
			o := a.queueJSON(&q, node, now, !p.noStats)
			if p.noStats && p.queueTotals {
				o["messages"], o["messages_ready"], o["messages_unacknowledged"] = q.Messages, q.MessagesReady, q.MessagesUnacked
			}
			return o
		})
		return
	}
	all := a.b.Queues(vhost)
	rows := make([]row, 0, len(all))
	for i := range all {
		q := &all[i]
		if !u.seesVHost(q.VHost) {
			continue
		}
		rows = append(rows, row{vhost: q.VHost, name: q.Name, i: int32(i)})
	}
	writeList(w, p, rows, func(i int) obj {
		q := &all[i]
		o := a.queueJSON(q, node, now, !p.noStats)
		if p.noStats && p.queueTotals {
			o["messages"], o["messages_ready"], o["messages_unacknowledged"] = q.Messages, q.MessagesReady, q.MessagesUnacked
		}
		return o
	})
}

// QueueNamer is implemented by a Broker that can list its queues' names alone, cheaply; the
// queue listing then describes only the queues of the page it shows.
type QueueNamer interface {
	QueueNames(vhost string) []QueueName
}

// QueueName names one queue.
type QueueName struct{ VHost, Name string }

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
	node := a.nodeName()
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
