package mgmt

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

type apiResp struct {
	status int
	header http.Header
	body   any
	raw    string
}

// call sends one request to h as user (password = user name; "" for none).
func call(t *testing.T, h http.Handler, method, path, user, body string) apiResp {
	t.Helper()
	var r *http.Request
	if body != "" {
		r = httptest.NewRequest(method, path, strings.NewReader(body))
	} else {
		r = httptest.NewRequest(method, path, nil)
	}
	if user != "" {
		u, p, ok := strings.Cut(user, ":")
		if !ok {
			p = u
		}
		r.SetBasicAuth(u, p)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	res := apiResp{status: w.Code, header: w.Header(), raw: w.Body.String()}
	if w.Body.Len() > 0 {
		if err := json.Unmarshal(w.Body.Bytes(), &res.body); err != nil {
			t.Fatalf("%s %s: body is not JSON: %q", method, path, w.Body.String())
		}
	}
	return res
}

func (r apiResp) field(path string) any {
	var v any = r.body
	for _, p := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func (r apiResp) names() []string {
	var out []string
	l, _ := r.body.([]any)
	if m, ok := r.body.(map[string]any); ok {
		l, _ = m["items"].([]any)
	}
	for _, e := range l {
		out = append(out, fmt.Sprint(e.(map[string]any)["name"]))
	}
	return out
}

func TestAuthAndVisibility(t *testing.T) {
	f := newFake()
	if _, err := f.DeclareQueue("other", "oq", QueueOptions{}); err != nil {
		t.Fatal(err)
	}
	h := NewHandler(f, Options{})
	tests := []struct {
		name, method, path, user string
		status                   int
		reason                   string
		names                    []string // expected names of a list, in order
	}{
		{"no credentials", "GET", "/api/overview", "", 401, "Login failed", nil},
		{"wrong password", "GET", "/api/overview", "guest:nope", 401, "Login failed", nil},
		{"unknown user", "GET", "/api/overview", "nobody", 401, "Login failed", nil},
		{"no management tag", "GET", "/api/overview", "notag", 401, "Not management user", nil},
		{"admin sees all queues", "GET", "/api/queues", "guest", 200, "", []string{"q1", "q2", "oq"}},
		{"monitoring sees all queues", "GET", "/api/queues", "mon", 200, "", []string{"q1", "q2", "oq"}},
		{"management sees its vhosts", "GET", "/api/queues", "mgr", 200, "", []string{"oq"}},
		{"policymaker without permissions sees none", "GET", "/api/queues", "pm", 200, "", nil},
		{"management, other vhost path", "GET", "/api/queues/%2F", "mgr", 401, vhostRefused, nil},
		{"monitoring, vhost path without permissions", "GET", "/api/queues/%2F", "mon", 401, vhostRefused, nil},
		{"admin reads any vhost path", "GET", "/api/queues/other", "guest", 200, "", []string{"oq"}},
		{"management vhosts", "GET", "/api/vhosts", "mgr", 200, "", []string{"other"}},
		{"users need administrator", "GET", "/api/users", "mon", 401, "Not administrator user", nil},
		{"definitions need administrator", "GET", "/api/definitions", "mgr", 401, "Not administrator user", nil},
		{"nodes need monitoring", "GET", "/api/nodes", "mgr", 401, "Not monitor user", nil},
		{"management sees only its connections", "GET", "/api/connections", "mgr", 200, "", nil},
		{"monitoring sees all connections", "GET", "/api/connections", "mon", 200, "", []string{"127.0.0.1:33296 -> 127.0.0.1:5672"}},
		{"management cannot close others' connections", "DELETE", "/api/connections/127.0.0.1%3A33296%20-%3E%20127.0.0.1%3A5672", "mgr", 404, "Not Found", nil},
		{"monitoring cannot close connections", "DELETE", "/api/connections/127.0.0.1%3A33296%20-%3E%20127.0.0.1%3A5672", "mon", 401, "Not administrator user", nil},
		{"declare needs vhost permission", "PUT", "/api/queues/%2F/x", "mgr", 401, vhostRefused, nil},
		{"monitoring cannot declare", "PUT", "/api/queues/other/x", "mon", 401, vhostRefused, nil},
		{"management declares in its vhost", "PUT", "/api/queues/other/x", "mgr", 201, "", nil},
		{"policymaker sees policies of its vhosts only", "GET", "/api/policies", "pm", 200, "", nil},
		{"admin sees policies", "GET", "/api/policies", "guest", 200, "", []string{"ttlpol"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := call(t, h, tc.method, tc.path, tc.user, "")
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.raw)
			}
			if tc.status == 401 && tc.reason == "Login failed" && r.header.Get("WWW-Authenticate") != realm {
				t.Errorf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
			}
			if tc.reason != "" && r.field("reason") != tc.reason {
				t.Errorf("reason %v, want %q", r.field("reason"), tc.reason)
			}
			if tc.status == 200 && strings.HasPrefix(tc.path, "/api/") && tc.method == "GET" {
				if got := r.names(); fmt.Sprint(got) != fmt.Sprint(tc.names) && !(len(got) == 0 && len(tc.names) == 0) {
					t.Errorf("names %v, want %v", got, tc.names)
				}
			}
		})
	}
}

// TestLoopbackUsers: a loopback-only user (guest by default) may use the API only from a
// loopback address, as in RabbitMQ.
func TestLoopbackUsers(t *testing.T) {
	f := newFake()
	f.users["local"] = fakeUser{pass: "local", info: UserInfo{Name: "local", Tags: []string{"administrator"}}, loopbackOnly: true}
	h := NewHandler(f, Options{})
	for addr, want := range map[string]int{"127.0.0.1:40000": 200, "[::1]:40000": 200, "[::ffff:127.0.0.1]:40000": 200, "192.0.2.7:40000": 401} {
		r := httptest.NewRequest("GET", "/api/whoami", nil)
		r.RemoteAddr = addr
		r.SetBasicAuth("local", "local")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("from %s: %d, want %d", addr, w.Code, want)
		}
	}
}

func TestPermissionRegexps(t *testing.T) {
	f := newFake()
	f.users["app"] = fakeUser{pass: "app", info: UserInfo{Name: "app", Tags: []string{"management"}}}
	f.perms = append(f.perms, PermissionInfo{User: "app", VHost: "/", Configure: "^app\\.", Write: "^app\\.", Read: ""})
	h := NewHandler(f, Options{})
	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{"PUT", "/api/queues/%2F/app.q", "", 201},
		{"PUT", "/api/queues/%2F/other.q", "", 401},
		{"DELETE", "/api/queues/%2F/q1", "", 401},
		{"DELETE", "/api/queues/%2F/app.q/contents", "", 401}, // purge needs read; read is ""
		{"POST", "/api/exchanges/%2F/amq.default/publish", `{"properties":{},"routing_key":"app.q","payload":"x","payload_encoding":"string"}`, 401},
		{"PUT", "/api/exchanges/%2F/app.x", `{"type":"fanout"}`, 201},
		{"POST", "/api/exchanges/%2F/app.x/publish", `{"properties":{},"routing_key":"","payload":"x","payload_encoding":"string"}`, 200},
		{"DELETE", "/api/queues/%2F/app.q", "", 204},
	} {
		if r := call(t, h, tc.method, tc.path, "app", tc.body); r.status != tc.status {
			t.Errorf("%s %s: %d, want %d: %s", tc.method, tc.path, r.status, tc.status, r.raw)
		}
	}
}

func TestPagingSortingColumns(t *testing.T) {
	f := newFake()
	for i := range 250 {
		if _, err := f.DeclareQueue("/", fmt.Sprintf("p%03d", i), QueueOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		if _, err := f.Publish("/", "", Publishing{RoutingKey: "p007", Payload: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	h := NewHandler(f, Options{})
	r := call(t, h, "GET", "/api/queues/%2F?page=2&page_size=100&name=p&sort=name", "guest", "")
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.raw)
	}
	for k, want := range map[string]float64{"page": 2, "page_size": 100, "page_count": 3, "item_count": 100, "filtered_count": 250, "total_count": 252} {
		if r.field(k) != want {
			t.Errorf("%s = %v, want %v", k, r.field(k), want)
		}
	}
	if n := r.names(); n[0] != "p100" || n[99] != "p199" {
		t.Errorf("page 2 is %s..%s", n[0], n[99])
	}
	r = call(t, h, "GET", "/api/queues?page=1&page_size=2&name=%5Ep00%5B12%5D%24&use_regex=true&sort_reverse=true&sort=name", "guest", "")
	if fmt.Sprint(r.names()) != "[p002 p001]" || r.field("filtered_count") != float64(2) {
		t.Errorf("regex filter: %v %v", r.names(), r.field("filtered_count"))
	}
	r = call(t, h, "GET", "/api/queues?sort=messages&sort_reverse=true&columns=name,messages,message_stats.publish", "guest", "")
	l := r.body.([]any)
	first := l[0].(map[string]any)
	if first["name"] != "q2" && first["name"] != "p007" && first["name"] != "q1" {
		t.Errorf("sorted by messages, first is %v", first["name"])
	}
	if len(first) != 3 || first["message_stats"].(map[string]any)["publish"] == nil || len(first["message_stats"].(map[string]any)) != 1 {
		t.Errorf("columns: %v", first)
	}
	var prev float64 = 1e18
	for _, e := range l {
		m := e.(map[string]any)["messages"].(float64)
		if m > prev {
			t.Fatalf("not sorted by messages descending")
		}
		prev = m
	}
	for q, reason := range map[string]string{
		"page=x":               "Pagination parameters are invalid",
		"page=1&page_size=x":   "Pagination parameters are invalid",
		"page=0":               "Invalid pagination parameters: page number 0, page size undefined",
		"page=1&page_size=501": "Invalid pagination parameters: page number 1, page size 501",
		"page=1&page_size=0":   "Invalid pagination parameters: page number 1, page size 0",
	} {
		if r := call(t, h, "GET", "/api/queues?"+q, "guest", ""); r.status != 400 || r.field("reason") != reason {
			t.Errorf("%s: %d %s", q, r.status, r.raw)
		}
	}
	// page_size without page is ignored, as in RabbitMQ.
	if r := call(t, h, "GET", "/api/queues?page_size=2", "guest", ""); len(r.names()) != 252 || r.field("items") != nil {
		t.Errorf("page_size alone: %d items", len(r.names()))
	}
	if r := call(t, h, "GET", "/api/queues?page=4&page_size=100", "guest", ""); r.status != 400 || r.field("error") != "page_out_of_range" {
		t.Errorf("page out of range: %d %s", r.status, r.raw)
	}
	if r := call(t, h, "GET", "/api/queues?page=1&name=(&use_regex=true", "guest", ""); r.status != 400 {
		t.Errorf("bad regex: %d %s", r.status, r.raw)
	}
	// RabbitMQ ignores the name filter of an unpaged request; KEDA's regex mode sends page=1.
	if r := call(t, h, "GET", "/api/queues?name=p007", "guest", ""); len(r.names()) != 252 {
		t.Errorf("unpaged name filter: %d queues", len(r.names()))
	}
	r = call(t, h, "GET", "/api/queues/%2F?page=1&use_regex=true&pagination=false&name=%5Ep007%24&page_size=100", "guest", "")
	if fmt.Sprint(r.names()) != "[p007]" || r.field("items") == nil {
		t.Errorf("KEDA's regex request: %s", r.raw)
	}
	r = call(t, h, "GET", "/api/queues?disable_stats=true", "guest", "")
	if m := r.body.([]any)[0].(map[string]any); m["message_stats"] != nil || m["messages"] != nil || m["name"] == nil {
		t.Errorf("disable_stats: %v", m)
	}
	r = call(t, h, "GET", "/api/queues/%2F/q1?columns=name,consumers", "guest", "")
	if m := r.body.(map[string]any); len(m) != 2 || m["consumers"] != float64(1) {
		t.Errorf("columns on one object: %v", m)
	}
}

func TestBadInput(t *testing.T) {
	f := newFake()
	h := NewHandler(f, Options{MaxBodyBytes: 1000})
	tests := []struct {
		name, method, path, body string
		status                   int
		errText, reasonHas       string
	}{
		{"malformed JSON", "PUT", "/api/queues/%2F/x", `{"durable": `, 400, "bad_request", "not_json"},
		{"JSON with trailing junk", "PUT", "/api/queues/%2F/x", `{"durable": true} {"x":1}`, 400, "bad_request", "not_json"},
		{"JSON of the wrong shape", "PUT", "/api/queues/%2F/x", `[1,2]`, 400, "bad_request", "not_json"},
		{"body too large", "PUT", "/api/queues/%2F/x", `{"arguments":{"x":"` + strings.Repeat("a", 2000) + `"}}`, 413, "bad_request", "larger than 1000"},
		{"unknown vhost", "GET", "/api/queues/nope", "", 404, "Object Not Found", "Not Found"},
		{"unknown vhost on declare", "PUT", "/api/queues/nope/x", "{}", 404, "Object Not Found", "Not Found"},
		{"unknown queue", "DELETE", "/api/queues/%2F/nope", "", 404, "Object Not Found", "Not Found"},
		{"not a boolean", "PUT", "/api/queues/%2F/x", `{"durable":"maybe"}`, 400, "bad_request", "[not_boolean maybe]"},
		{"arguments not an object", "PUT", "/api/queues/%2F/x", `{"arguments":[1]}`, 400, "bad_request", "JSON object"},
		{"bad argument", "PUT", "/api/queues/%2F/x", `{"arguments":{"x-max-length":"abc"}}`, 400, "bad_request", "invalid arg 'x-max-length'"},
		{"reserved name", "PUT", "/api/exchanges/%2F/amq.x", `{"type":"direct"}`, 401, "not_authorised", "Access refused."},
		{"vhost / not encoded", "GET", "/api/queues//q1", "", 404, "Object Not Found", "Not Found"},
		{"unknown path", "GET", "/api/nothing/here", "", 404, "Object Not Found", "Not Found"},
		{"outside /api", "GET", "/index.html", "", 404, "Object Not Found", "Not Found"},
		{"bad binding destination type", "POST", "/api/bindings/%2F/e/ex1/x/q1", "{}", 404, "Object Not Found", "Not Found"},
		{"unknown ackmode", "POST", "/api/queues/%2F/q1/get", `{"count":1,"ackmode":"x","encoding":"auto"}`, 400, "bad_request", "ack_requeue_true"},
		{"bad encoding", "POST", "/api/queues/%2F/q1/get", `{"count":1,"ackmode":"ack_requeue_true","encoding":"hex"}`, 400, "bad_request", ""},
		{"bad base64 payload", "POST", "/api/exchanges/%2F/ex1/publish", `{"properties":{},"routing_key":"","payload":"!!","payload_encoding":"base64"}`, 400, "bad_request", "base64"},
		{"port not a number", "GET", "/api/health/checks/port-listener/abc", "", 400, "bad_request", "invalid port"},
		{"user write refused", "PUT", "/api/users/bob", `{"password":"x","tags":""}`, 405, "method_not_allowed", `"users" key of config.yaml`},
		{"user delete refused", "DELETE", "/api/users/guest", "", 405, "method_not_allowed", `"users" key`},
		{"vhost write refused", "PUT", "/api/vhosts/new", "", 405, "method_not_allowed", `"vhosts" key`},
		{"permission write refused", "PUT", "/api/permissions/%2F/mon", `{"configure":".*","write":".*","read":".*"}`, 405, "method_not_allowed", `"permissions" key`},
		{"policy write refused", "PUT", "/api/policies/%2F/p", `{"pattern":".*","definition":{}}`, 405, "method_not_allowed", `"policies" key`},
		{"vhost limit refused", "PUT", "/api/vhost-limits/%2F/max-queues", `{"value":1}`, 405, "method_not_allowed", `"vhosts[].limits" key`},
		{"definitions import refused", "POST", "/api/definitions", `{}`, 405, "method_not_allowed", `"load_definitions" key`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := call(t, h, tc.method, tc.path, "guest", tc.body)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.raw)
			}
			if r.field("error") != tc.errText {
				t.Errorf("error %v, want %q", r.field("error"), tc.errText)
			}
			if reason := fmt.Sprint(r.field("reason")); !strings.Contains(reason, tc.reasonHas) {
				t.Errorf("reason %q lacks %q", reason, tc.reasonHas)
			}
		})
	}
	if r := call(t, h, "GET", "/api/queues/%2F/q1/", "guest", ""); r.status != 200 || r.field("name") != "q1" {
		t.Errorf("trailing slash: %d %s", r.status, r.raw)
	}
	// Method not allowed on an existing path: 405 with Allow, as RabbitMQ.
	if r := call(t, h, "POST", "/api/overview", "guest", "{}"); r.status != 405 || r.header.Get("Allow") == "" {
		t.Errorf("POST /api/overview: %d Allow=%q", r.status, r.header.Get("Allow"))
	}
}

func TestMessagesThroughTheAPI(t *testing.T) {
	f := newFake()
	h := NewHandler(f, Options{})
	must := func(r apiResp, status int) apiResp {
		t.Helper()
		if r.status != status {
			t.Fatalf("status %d, want %d: %s", r.status, status, r.raw)
		}
		return r
	}
	must(call(t, h, "PUT", "/api/queues/%2F/a%2Fb", "guest", `{"durable":true,"arguments":{"x-max-length":10}}`), 201)
	must(call(t, h, "PUT", "/api/queues/%2F/a%2Fb", "guest", `{"durable":true,"arguments":{"x-max-length":10}}`), 204)
	if q, ok := f.findQueueForTest("/", "a/b"); !ok || !q.Durable || q.Arguments["x-max-length"] != int64(10) {
		t.Fatalf("queue with a slash in its name: %+v %v", q, ok)
	}
	r := must(call(t, h, "POST", "/api/exchanges/%2F/amq.default/publish", "guest",
		`{"properties":{"delivery_mode":2,"headers":{"n":1}},"routing_key":"a/b","payload":"hello world","payload_encoding":"string"}`), 200)
	if r.field("routed") != true {
		t.Errorf("routed %v", r.field("routed"))
	}
	must(call(t, h, "POST", "/api/exchanges/%2F/amq.default/publish", "guest",
		`{"properties":{},"routing_key":"a/b","payload":"AAEC/w==","payload_encoding":"base64"}`), 200)
	r = must(call(t, h, "POST", "/api/exchanges/%2F/ex1/publish", "guest",
		`{"properties":{},"routing_key":"nowhere","payload":"x","payload_encoding":"string"}`), 200)
	if r.field("routed") != false {
		t.Errorf("unroutable message routed: %v", r.raw)
	}
	r = must(call(t, h, "POST", "/api/queues/%2F/a%2Fb/get", "guest", `{"count":5,"ackmode":"ack_requeue_true","encoding":"auto","truncate":5}`), 200)
	l := r.body.([]any)
	if len(l) != 2 {
		t.Fatalf("got %d messages", len(l))
	}
	m0, m1 := l[0].(map[string]any), l[1].(map[string]any)
	if m0["payload"] != "hello" || m0["payload_bytes"] != float64(11) || m0["payload_encoding"] != "string" || m0["message_count"] != float64(1) {
		t.Errorf("first message %v", m0)
	}
	if m0["properties"].(map[string]any)["delivery_mode"] != float64(2) {
		t.Errorf("properties %v", m0["properties"])
	}
	if m1["payload_encoding"] != "base64" || m1["payload"] != "AAEC/w==" {
		t.Errorf("binary message %v", m1)
	}
	// ack_requeue_true kept them; ack_requeue_false takes them.
	r = must(call(t, h, "POST", "/api/queues/%2F/a%2Fb/get", "guest", `{"count":5,"ackmode":"ack_requeue_false","encoding":"base64"}`), 200)
	if l := r.body.([]any); len(l) != 2 || l[0].(map[string]any)["redelivered"] != true || l[0].(map[string]any)["payload"] != "aGVsbG8gd29ybGQ=" {
		t.Errorf("second get %v", r.raw)
	}
	r = must(call(t, h, "POST", "/api/queues/%2F/a%2Fb/get", "guest", `{"count":5,"ackmode":"ack_requeue_false","encoding":"auto"}`), 200)
	if l := r.body.([]any); len(l) != 0 {
		t.Errorf("queue not emptied: %v", r.raw)
	}
	// Purge, bind with arguments, find and delete the binding by its properties key.
	must(call(t, h, "DELETE", "/api/queues/%2F/q2/contents", "guest", ""), 204)
	if n := f.readyCount("/", "q2"); n != 0 {
		t.Errorf("q2 not purged: %d left", n)
	}
	r = must(call(t, h, "POST", "/api/bindings/%2F/e/ex1/q/q2", "guest", `{"routing_key":"k.#","arguments":{"x-match":"any"}}`), 201)
	loc := r.header.Get("Location")
	if !strings.HasPrefix(loc, "q2/k.%23~") {
		t.Fatalf("Location %q", loc)
	}
	r = must(call(t, h, "GET", "/api/bindings/%2F/e/ex1/q/"+loc, "guest", ""), 200)
	if r.field("routing_key") != "k.#" || r.field("arguments.x-match") != "any" {
		t.Errorf("binding %s", r.raw)
	}
	must(call(t, h, "DELETE", "/api/bindings/%2F/e/ex1/q/"+loc, "guest", ""), 204)
	must(call(t, h, "DELETE", "/api/bindings/%2F/e/ex1/q/"+loc, "guest", ""), 404)
	must(call(t, h, "DELETE", "/api/queues/%2F/a%2Fb?if-empty=true", "guest", ""), 204)
	// The default exchange is amq.default in paths.
	r = must(call(t, h, "GET", "/api/exchanges/%2F/amq.default", "guest", ""), 200)
	if r.field("name") != "" {
		t.Errorf("default exchange %s", r.raw)
	}
}

// readyCount and closedReason read the fake under its lock: a test reading it after an HTTP
// round trip through another process has no happens-before edge with the server's goroutine.
func (f *fakeBroker) readyCount(vhost, name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.queues[key(vhost, name)].msgs)
}

func (f *fakeBroker) closedReason(name string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.closed[name]
	return r, ok
}

func (f *fakeBroker) findQueueForTest(vhost, name string) (QueueInfo, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	q, ok := f.queues[key(vhost, name)]
	if !ok {
		return QueueInfo{}, false
	}
	return q.info, true
}

func TestRatesAreSampled(t *testing.T) {
	f := newFake()
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	h := NewHandler(f, Options{now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }})
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	rate := func() any {
		return call(t, h, "GET", "/api/queues/%2F/q2", "guest", "").field("message_stats.publish_details.rate")
	}
	if r := rate(); r != float64(0) {
		t.Fatalf("first sample rate %v", r)
	}
	for range 10 {
		if _, err := f.Publish("/", "", Publishing{RoutingKey: "q2", Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	advance(2 * time.Second)
	if r := rate(); r != float64(0) {
		t.Errorf("rate changed before the interval: %v", r)
	}
	advance(3 * time.Second)
	if r := rate(); r != float64(2) {
		t.Errorf("rate after 10 messages in 5 s: %v, want 2", r)
	}
	if r := call(t, h, "GET", "/api/queues/%2F/q2", "guest", "").field("messages_details.rate"); r != float64(2) {
		t.Errorf("messages_details.rate %v, want 2", r)
	}
}

func TestDefinitionsAndHealth(t *testing.T) {
	f := newFake()
	if _, err := f.DeclareQueue("/", "excl", QueueOptions{}); err != nil {
		t.Fatal(err)
	}
	f.queues[key("/", "excl")].info.Exclusive = true
	h := NewHandler(f, Options{})
	r := call(t, h, "GET", "/api/definitions", "guest", "")
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.raw)
	}
	var d struct {
		Queues     []map[string]any `json:"queues"`
		Exchanges  []map[string]any `json:"exchanges"`
		Bindings   []map[string]any `json:"bindings"`
		Users      []map[string]any `json:"users"`
		Parameters []map[string]any `json:"parameters"`
		Policies   []map[string]any `json:"policies"`
	}
	if err := json.Unmarshal([]byte(r.raw), &d); err != nil {
		t.Fatal(err)
	}
	var qs, xs []string
	for _, q := range d.Queues {
		qs = append(qs, q["name"].(string))
	}
	for _, x := range d.Exchanges {
		xs = append(xs, x["name"].(string))
	}
	if strings.Contains(fmt.Sprint(qs), "excl") || !strings.Contains(fmt.Sprint(qs), "q1") || fmt.Sprint(xs) != "[ex1]" {
		t.Errorf("queues %v exchanges %v", qs, xs)
	}
	if len(d.Bindings) != 2 || len(d.Users) != 5 || len(d.Policies) != 1 || len(d.Parameters) != 1 || d.Parameters[0]["component"] != "vhost-limits" {
		t.Errorf("bindings %v users %d policies %v parameters %v", d.Bindings, len(d.Users), d.Policies, d.Parameters)
	}
	if r := call(t, h, "GET", "/api/definitions/%2F", "guest", ""); r.status != 200 || r.field("users") != nil {
		t.Errorf("vhost definitions: %d %s", r.status, r.raw)
	}

	if r := call(t, h, "GET", "/api/aliveness-test/%2F", "guest", ""); r.status != 200 || r.field("status") != "ok" {
		t.Errorf("aliveness: %d %s", r.status, r.raw)
	}
	if _, ok := f.findQueueForTest("/", alivenessQueue); !ok {
		t.Errorf("aliveness test did not use its queue")
	}
	if r := call(t, h, "GET", "/api/health/checks/port-listener/15692", "mon", ""); r.status != 200 {
		t.Errorf("port listener: %d %s", r.status, r.raw)
	}
	if r := call(t, h, "GET", "/api/health/checks/protocol-listener/amqp", "mon", ""); r.status != 200 {
		t.Errorf("protocol listener: %d %s", r.status, r.raw)
	}
	if r := call(t, h, "GET", "/api/health/checks/protocol-listener/stomp", "mon", ""); r.status != 503 {
		t.Errorf("missing protocol listener: %d %s", r.status, r.raw)
	}
	f.overview.DiskAlarm = true
	for _, p := range []string{"alarms", "local-alarms"} {
		r := call(t, h, "GET", "/api/health/checks/"+p, "mon", "")
		if r.status != 503 || r.field("status") != "failed" || !strings.Contains(r.raw, `"resource":"disk"`) {
			t.Errorf("%s with a disk alarm: %d %s", p, r.status, r.raw)
		}
	}
}

// TestReadEndpoints covers the single-object and less used read paths.
func TestReadEndpoints(t *testing.T) {
	f := newFake()
	f.users["guest"] = fakeUser{pass: "guest", info: UserInfo{Name: "guest", Tags: []string{"administrator"}, Limits: map[string]any{"max-connections": int64(5)}}}
	h := NewHandler(f, Options{})
	conn := "127.0.0.1%3A33296%20-%3E%20127.0.0.1%3A5672"
	for _, tc := range []struct {
		path, user string
		status     int
		field      string // dotted field of an object answer, or "len" for a list's length
		want       any
	}{
		{"/api/cluster-name", "guest", 200, "name", "warren@test"},
		{"/api/nodes/warren@test", "mon", 200, "name", "warren@test"},
		{"/api/nodes/other@host", "mon", 404, "error", "Object Not Found"},
		{"/api/whoami", "mgr", 200, "tags", []any{"management"}},
		{"/api/connections/" + conn + "/channels", "guest", 200, "len", 2},
		{"/api/channels/" + conn + "%20(2)", "guest", 200, "consumer_count", float64(1)},
		{"/api/channels/nope", "guest", 404, "error", "Object Not Found"},
		{"/api/vhosts/%2F/connections", "guest", 200, "len", 1},
		{"/api/vhosts/other/channels", "guest", 200, "len", 0},
		{"/api/consumers/%2F", "guest", 200, "len", 1},
		{"/api/exchanges/%2F/amq.fanout/bindings/destination", "guest", 200, "len", 1},
		{"/api/exchanges/%2F/nope/bindings/source", "guest", 404, "error", "Object Not Found"},
		{"/api/queues/%2F/q1/bindings", "guest", 200, "len", 2}, // default exchange + ex1
		{"/api/queues/%2F/nope/bindings", "guest", 404, "error", "Object Not Found"},
		{"/api/users/guest", "guest", 200, "limits.max-connections", float64(5)},
		{"/api/users/nobody", "guest", 404, "error", "Object Not Found"},
		{"/api/users/guest/permissions", "guest", 200, "len", 1},
		{"/api/vhosts/%2F/permissions", "guest", 200, "len", 1},
		{"/api/permissions/other/mgr", "guest", 200, "configure", ".*"},
		{"/api/permissions/other/guest", "guest", 404, "error", "Object Not Found"},
		{"/api/user-limits", "guest", 200, "len", 1},
		{"/api/user-limits", "mgr", 200, "len", 0},
		{"/api/policies/%2F/ttlpol", "guest", 200, "definition.message-ttl", float64(120000)},
		{"/api/policies/%2F/nope", "guest", 404, "error", "Object Not Found"},
		{"/api/policies/other/ttlpol", "mgr", 401, "reason", "Not policymaker user"},
		{"/api/vhost-limits/other", "guest", 200, "len", 1},
		{"/api/vhosts/%2F", "guest", 200, "messages", float64(10)},
		{"/api/topic-permissions", "guest", 200, "len", 0},
		{"/api/topic-permissions", "mon", 401, "reason", "Not administrator user"},
		{"/api/extensions", "mgr", 200, "len", 0},
		{"/api/overview?columns=object_totals.queues,node", "guest", 200, "object_totals.queues", float64(2)},
		{"/api/overview", "mgr", 200, "object_totals.queues", float64(0)}, // mgr sees only vhost other
		{"/api/health/checks/virtual-hosts", "mgr", 200, "status", "ok"},
		{"/api/health/checks/port-listener/1234", "mgr", 503, "missing", float64(1234)},
		{"/api/aliveness-test/other", "guest", 401, "reason", vhostRefused},
	} {
		r := call(t, h, "GET", tc.path, tc.user, "")
		if r.status != tc.status {
			t.Errorf("%s as %s: %d, want %d: %s", tc.path, tc.user, r.status, tc.status, r.raw)
			continue
		}
		var got any
		if tc.field == "len" {
			l, _ := r.body.([]any)
			got = len(l)
		} else {
			got = r.field(tc.field)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s as %s: %s = %v, want %v", tc.path, tc.user, tc.field, got, tc.want)
		}
	}
}

// failingBroker answers every declare with the given error, to check the error mapping.
type failingBroker struct {
	*fakeBroker
	err error
}

func (b failingBroker) DeclareQueue(string, string, QueueOptions) (bool, error) { return false, b.err }

func TestBrokerErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		err     error
		status  int
		errText string
		reason  string
	}{
		{NotFound(""), 404, "Object Not Found", "Not Found"},
		{NotFound("no vhost 'x'"), 404, "not_found", "no vhost 'x'"},
		{PreconditionFailed("in use"), 400, "bad_request", "in use"},
		{ResourceLocked("cannot obtain exclusive access to locked queue 'q'"), 400, "bad_request", "cannot obtain exclusive access to locked queue 'q'"},
		{BadRequest("bad arg"), 400, "bad_request", "bad arg"},
		{AccessRefused("reserved"), 401, "not_authorised", "Access refused."},
		{fmt.Errorf("declaring: %w", PreconditionFailed("wrapped")), 400, "bad_request", "wrapped"},
		{fmt.Errorf("disk on fire"), 500, "internal_server_error", "disk on fire"},
	} {
		h := NewHandler(failingBroker{newFake(), tc.err}, Options{})
		r := call(t, h, "PUT", "/api/queues/%2F/x", "guest", "{}")
		if r.status != tc.status || r.field("error") != tc.errText || r.field("reason") != tc.reason {
			t.Errorf("%v: %d %s", tc.err, r.status, r.raw)
		}
		// The aliveness test reports a broker failure as 503.
		if tc.status == 500 {
			if r := call(t, h, "GET", "/api/aliveness-test/%2F", "guest", ""); r.status != 503 || r.field("status") != "failed" {
				t.Errorf("aliveness with a failing broker: %d %s", r.status, r.raw)
			}
		}
	}
	var e *Error
	if err := fmt.Errorf("x: %w", NotFound("y")); !errors.As(err, &e) || e.Kind != KindNotFound || err.Error() != "x: y" {
		t.Errorf("Error wrapping: %v", err)
	}
}
