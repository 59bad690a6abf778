# Captures RabbitMQ's management API answers for mgmt's golden tests (golden_test.go replays
# them in this file's order against Warren's handler). Reproduce with RabbitMQ 3.10.8:
#   rabbitmq-plugins enable rabbitmq_management rabbitmq_prometheus; rabbitmq-server -detached
#   rabbitmqctl add_user mon mon; rabbitmqctl set_user_tags mon monitoring
#   rabbitmqctl add_user mgr mgr; rabbitmqctl set_user_tags mgr management
#   rabbitmqctl add_user notag notag
#   rabbitmqctl add_user pm pm; rabbitmqctl set_user_tags pm policymaker
#   rabbitmqctl add_vhost other; rabbitmqctl set_permissions -p other mgr ".*" ".*" ".*"
#   rabbitmqctl set_policy -p / ttlpol '^q2$' '{"message-ttl":120000}' --apply-to queues
#   rabbitmqctl set_vhost_limits -p other '{"max-connections": 10}'
#   run capture_holder.go.txt (as a Go program with amqp091-go) and leave it running: it
#   declares q1, q2, ex1 and its bindings, publishes 10 messages and consumes from q1
#   python3 capture.py mgmt/testdata/rabbitmq   (the last step closes the holder's connection)
# The Prometheus lists come from curl localhost:15692/metrics and /metrics/per-object, reduced
# to "name type label-keys" lines.
import json, sys, urllib.request, urllib.error, base64, os, re
BASE = "http://127.0.0.1:15672"
OUT = sys.argv[1]
def req(name, method, path, user="guest", body=None, raw=None):
    data = None
    if body is not None: data = json.dumps(body).encode()
    if raw is not None: data = raw.encode()
    r = urllib.request.Request(BASE + path, data=data, method=method)
    if user:
        u, p = (user, user) if ":" not in user else user.split(":", 1)
        r.add_header("Authorization", "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode())
    if data is not None: r.add_header("Content-Type", "application/json")
    try:
        resp = urllib.request.urlopen(r); status = resp.status; hdrs = resp.headers; txt = resp.read().decode()
    except urllib.error.HTTPError as e:
        status = e.code; hdrs = e.headers; txt = e.read().decode()
    try: b = json.loads(txt) if txt else None
    except Exception: b = {"_nonjson": txt[:200]}
    keep = {k: hdrs.get(k) for k in ("Content-Type", "WWW-Authenticate", "Location") if hdrs.get(k)}
    rec = {"method": method, "path": path, "user": user, "request": body if body is not None else raw, "status": status, "headers": keep, "body": sanitise(b)}
    with open(os.path.join(OUT, name + ".json"), "w") as f: json.dump(rec, f, indent=1, sort_keys=True)
    print(status, method, path, user)
def sanitise(v, key=""):
    if isinstance(v, dict): return {k: sanitise(x, k) for k, x in v.items()}
    if isinstance(v, list): return [sanitise(x, key) for x in v[:3]]
    if isinstance(v, str):
        if key in ("password_hash",): return "<hash>"
        return v if len(v) < 80 else v[:77] + "..."
    return v
q = "/api/queues/%2F"
req("overview", "GET", "/api/overview")
req("overview_mgmt_user", "GET", "/api/overview", "mgr")
req("nodes", "GET", "/api/nodes")
req("whoami", "GET", "/api/whoami")
req("whoami_monitoring", "GET", "/api/whoami", "mon")
req("connections", "GET", "/api/connections")
req("channels", "GET", "/api/channels")
req("consumers", "GET", "/api/consumers")
req("exchanges", "GET", "/api/exchanges")
req("exchanges_vhost", "GET", "/api/exchanges/%2F")
req("exchange", "GET", "/api/exchanges/%2F/ex1")
req("exchange_404", "GET", "/api/exchanges/%2F/nope")
req("exchanges_vhost_404", "GET", "/api/exchanges/nope")
req("exchange_put_201", "PUT", "/api/exchanges/%2F/ex2", body={"type": "direct", "durable": True})
req("exchange_put_again_204", "PUT", "/api/exchanges/%2F/ex2", body={"type": "direct", "durable": True})
req("exchange_put_mismatch", "PUT", "/api/exchanges/%2F/ex2", body={"type": "fanout", "durable": True})
req("exchange_put_badtype", "PUT", "/api/exchanges/%2F/ex3", body={"type": "nosuch"})
req("exchange_put_notype", "PUT", "/api/exchanges/%2F/ex3", body={})
req("exchange_put_default", "PUT", "/api/exchanges/%2F/amq.newone", body={"type": "direct"})
req("exchange_delete_if_unused_inuse", "DELETE", "/api/exchanges/%2F/ex1?if-unused=true")
req("exchange_delete_204", "DELETE", "/api/exchanges/%2F/ex2?if-unused=true")
req("exchange_delete_404", "DELETE", "/api/exchanges/%2F/ex2")
req("exchange_publish", "POST", "/api/exchanges/%2F/ex1/publish", body={"properties": {"delivery_mode": 2, "headers": {"a": 1}}, "routing_key": "a.c", "payload": "x", "payload_encoding": "string"})
req("exchange_publish_unrouted", "POST", "/api/exchanges/%2F/ex1/publish", body={"properties": {}, "routing_key": "zzz", "payload": "x", "payload_encoding": "string"})
req("exchange_publish_badenc", "POST", "/api/exchanges/%2F/ex1/publish", body={"properties": {}, "routing_key": "zzz", "payload": "x", "payload_encoding": "nope"})
req("exchange_publish_missing", "POST", "/api/exchanges/%2F/ex1/publish", body={"routing_key": "zzz"})
req("exchange_bindings_source", "GET", "/api/exchanges/%2F/ex1/bindings/source")
req("exchange_bindings_destination", "GET", "/api/exchanges/%2F/amq.fanout/bindings/destination")
req("queues", "GET", "/api/queues")
req("queues_vhost", "GET", q)
req("queue", "GET", q + "/q1")
req("queue_404", "GET", q + "/nope")
req("queues_vhost_404", "GET", "/api/queues/nope")
req("queue_put_201", "PUT", q + "/q3", body={"durable": False, "auto_delete": False, "arguments": {"x-max-length": 10}})
req("queue_put_again_204", "PUT", q + "/q3", body={"durable": False, "auto_delete": False, "arguments": {"x-max-length": 10}})
req("queue_put_mismatch", "PUT", q + "/q3", body={"durable": True})
req("queue_put_badarg", "PUT", q + "/q4", body={"arguments": {"x-max-length": "abc"}})
req("queue_put_malformed", "PUT", q + "/q4", raw='{"durable": ')
req("queue_put_amq", "PUT", q + "/amq.q", body={})
req("queue_delete_if_unused_inuse", "DELETE", q + "/q1?if-unused=true")
req("queue_get", "POST", q + "/q1/get", body={"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 50000})
req("queue_get_q2", "POST", q + "/q2/get", body={"count": 1, "ackmode": "ack_requeue_true", "encoding": "base64"})
req("queue_get_badackmode", "POST", q + "/q2/get", body={"count": 1, "ackmode": "nope", "encoding": "auto"})
req("queue_get_missing", "POST", q + "/q2/get", body={"count": 1})
req("queue_delete_if_empty_notempty", "DELETE", q + "/q2?if-empty=true")
req("queue_purge", "DELETE", q + "/q2/contents")
req("queue_purge_404", "DELETE", q + "/nope/contents")
req("queue_delete_204", "DELETE", q + "/q3?if-empty=true")
req("queue_delete_404", "DELETE", q + "/q3")
req("queue_bindings", "GET", q + "/q1/bindings")
req("bindings", "GET", "/api/bindings")
req("bindings_vhost", "GET", "/api/bindings/%2F")
req("bindings_e_q", "GET", "/api/bindings/%2F/e/ex1/q/q1")
req("binding_post", "POST", "/api/bindings/%2F/e/ex1/q/q2", body={"routing_key": "x.y", "arguments": {}})
req("binding_get", "GET", "/api/bindings/%2F/e/ex1/q/q2/x.y")
req("binding_get_404", "GET", "/api/bindings/%2F/e/ex1/q/q2/zz")
req("binding_post_e_e", "POST", "/api/bindings/%2F/e/ex1/e/amq.direct", body={"routing_key": "r"})
req("bindings_e_e", "GET", "/api/bindings/%2F/e/ex1/e/amq.direct")
req("binding_delete", "DELETE", "/api/bindings/%2F/e/ex1/q/q2/x.y")
req("binding_delete_404", "DELETE", "/api/bindings/%2F/e/ex1/q/q2/x.y")
req("binding_post_404", "POST", "/api/bindings/%2F/e/ex1/q/nope", body={"routing_key": "x"})
req("vhosts", "GET", "/api/vhosts")
req("vhost", "GET", "/api/vhosts/%2F")
req("vhost_404", "GET", "/api/vhosts/nope")
req("vhosts_mgmt_user", "GET", "/api/vhosts", "mgr")
req("users", "GET", "/api/users")
req("user", "GET", "/api/users/guest")
req("users_mgmt_user", "GET", "/api/users", "mgr")
req("permissions", "GET", "/api/permissions")
req("policies", "GET", "/api/policies")
req("policies_vhost", "GET", "/api/policies/%2F")
req("vhost_limits", "GET", "/api/vhost-limits")
req("definitions", "GET", "/api/definitions")
req("aliveness", "GET", "/api/aliveness-test/%2F")
req("aliveness_404", "GET", "/api/aliveness-test/nope")
req("health_alarms", "GET", "/api/health/checks/alarms")
req("health_local_alarms", "GET", "/api/health/checks/local-alarms")
req("health_port_ok", "GET", "/api/health/checks/port-listener/5672")
req("health_port_bad", "GET", "/api/health/checks/port-listener/1234")
req("health_vhosts", "GET", "/api/health/checks/virtual-hosts")
req("auth_none", "GET", "/api/overview", None)
req("auth_wrong", "GET", "/api/overview", "guest:bad")
req("auth_notag", "GET", "/api/overview", "notag")
req("queues_mgmt_user", "GET", "/api/queues", "mgr")
req("queues_monitoring", "GET", "/api/queues", "mon")
req("queues_mgmt_user_forbidden_vhost", "GET", q, "mgr")
req("queues_paged", "GET", "/api/queues?page=1&page_size=2&name=q&use_regex=false&sort=name&sort_reverse=true")
req("queues_paged_regex", "GET", "/api/queues?page=1&page_size=100&name=%5Eq1%24&use_regex=true")
req("queues_page_out_of_range", "GET", "/api/queues?page=9&page_size=2")
req("queues_page_bad", "GET", "/api/queues?page=abc")
req("queues_columns", "GET", "/api/queues?columns=name,messages,message_stats.publish")
req("queues_disable_stats", "GET", "/api/queues?disable_stats=true&enable_queue_totals=true")
req("queue_put_policymaker", "PUT", q + "/q9", "pm", body={})
req("user_put", "PUT", "/api/users/new", body={"password": "x", "tags": ""})
req("unknown_path", "GET", "/api/nosuch")
req("method_not_allowed", "POST", "/api/overview", body={})
conns = json.load(urllib.request.urlopen(urllib.request.Request(BASE + "/api/connections", headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})))
name = conns[0]["name"]
import urllib.parse
req("connection", "GET", "/api/connections/" + urllib.parse.quote(name, safe=""))
req("connection_channels", "GET", "/api/connections/" + urllib.parse.quote(name, safe="") + "/channels")
req("connection_404", "GET", "/api/connections/nope")
r = urllib.request.Request(BASE + "/api/connections/" + urllib.parse.quote(name, safe=""), method="DELETE", headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(), "X-Reason": "bye"})
print("close", urllib.request.urlopen(r).status)
