package mgmt

// Aliveness test and health checks.

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

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
