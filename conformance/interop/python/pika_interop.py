"""Interop cases with the Python pika client (Debian python3-pika)."""
import datetime
import decimal
import time

import pika
import pika.exceptions

from common import (CASE_LIMIT, HEADERS, HOST, LARGE_BODY, PASS, PORT, USER,
                    VHOST, WAIT, check, diff, name, run_cases, first_diff)

CLIENT = "pika"


def params(password=PASS):
    return pika.ConnectionParameters(
        host=HOST, port=PORT, virtual_host=VHOST,
        credentials=pika.PlainCredentials(USER, password),
        socket_timeout=WAIT, blocked_connection_timeout=WAIT,
        stack_timeout=WAIT, connection_attempts=1, heartbeat=30)


def connect():
    return pika.BlockingConnection(params())


class Session:
    """One connection + channel per case, so a broken case cannot poison the next."""

    def __enter__(self):
        self.conn = connect()
        self.ch = self.conn.channel()
        return self

    def __exit__(self, *exc):
        try:
            if self.conn.is_open:
                self.conn.close()
        except Exception:  # noqa: BLE001
            pass


def consume(conn, ch, queue, n, no_ack=True):
    """Consume n deliveries from queue within WAIT seconds; returns (method, props, body) tuples."""
    got = []

    def on_msg(c, method, props, body):
        got.append((method, props, body))

    tag = ch.basic_consume(queue, on_msg, auto_ack=no_ack)
    deadline = time.monotonic() + WAIT
    while len(got) < n and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    check(len(got) >= n, "expected %d deliveries from %s, got %d within %.0fs" % (n, queue, len(got), WAIT))
    return got


def assert_empty(ch, queue):
    m, _, _ = ch.basic_get(queue, auto_ack=True)
    check(m is None, "queue %s should be empty" % queue)


def case_connect():
    conn = connect()
    check(conn.is_open, "connection not open")
    ch = conn.channel()
    check(ch.is_open, "channel not open")
    conn.close()


def case_auth_refused():
    try:
        c = pika.BlockingConnection(params(PASS + "-wrong"))
    except (pika.exceptions.ProbableAuthenticationError,
            pika.exceptions.AuthenticationError):
        return
    except pika.exceptions.AMQPConnectionError as e:
        # Any refusal is a refusal; name it so a mismatch is visible in logs.
        raise AssertionError("refused, but not as an authentication error: %r" % e)
    c.close()
    raise AssertionError("connection with a wrong password succeeded")


def exchange_case(kind, bindings, publishes, expect):
    """Declare exchange + queues, bind, publish, and check each queue got exactly expect[q] bodies."""
    ex = name("ex-" + kind)
    with Session() as s:
        s.ch.exchange_declare(ex, exchange_type=kind, auto_delete=False)
        queues = {}
        try:
            for qkey, rk, args in bindings:
                if qkey not in queues:
                    queues[qkey] = name("q-%s-%s" % (kind, qkey))
                    s.ch.queue_declare(queues[qkey])
                s.ch.queue_bind(queues[qkey], ex, routing_key=rk, arguments=args)
            for rk, hdrs, body in publishes:
                s.ch.basic_publish(ex, rk, body, pika.BasicProperties(headers=hdrs))
            for qkey, bodies in expect.items():
                got = consume(s.conn, s.ch, queues[qkey], len(bodies))
                gb = [b for _, _, b in got]
                check(gb == bodies, "%s: %s" % (qkey, diff(bodies, gb)))
                assert_empty(s.ch, queues[qkey])
        finally:
            for q in queues.values():
                s.ch.queue_delete(q)
            s.ch.exchange_delete(ex)


def case_direct():
    exchange_case("direct", [("a", "k1", None)],
                  [("k2", None, b"no"), ("k1", None, b"yes")], {"a": [b"yes"]})


def case_fanout():
    exchange_case("fanout", [("a", "", None), ("b", "", None)],
                  [("whatever", None, b"m1")], {"a": [b"m1"], "b": [b"m1"]})


def case_topic():
    exchange_case("topic", [("a", "a.*.c", None), ("a", "x.#", None), ("b", "#", None)],
                  [("a.b.d", None, b"no"), ("a.b.c", None, b"abc"), ("x.y.z", None, b"xyz")],
                  {"a": [b"abc", b"xyz"], "b": [b"no", b"abc", b"xyz"]})


def case_headers():
    exchange_case(
        "headers",
        [("all", "", {"x-match": "all", "h1": "v1", "h2": "v2"}),
         ("any", "", {"x-match": "any", "h1": "v1", "h3": "v3"})],
        [("", {"h1": "v1"}, b"one"), ("", {"h4": "v4"}, b"none"),
         ("", {"h1": "v1", "h2": "v2"}, b"both")],
        {"all": [b"both"], "any": [b"one", b"both"]})


def case_properties():
    q = name("q-props")
    headers = dict(HEADERS)
    # pika has no float encoder; it has Decimal ('D'), bytes ('x') and datetime ('T').
    headers["decimal"] = decimal.Decimal("12.345")
    headers["bytes"] = b"\x00\xffraw"
    headers["time"] = datetime.datetime(2023, 11, 14, 22, 13, 20)
    headers["nested"] = dict(headers["nested"], dec=decimal.Decimal("-0.5"))
    props = pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8", headers=headers,
        delivery_mode=2, priority=5, correlation_id="corr-1", reply_to="reply.q",
        expiration="600000", message_id="msg-1", timestamp=1700000000, type="t.type",
        user_id=USER, app_id="interop-app", cluster_id="cluster-x")
    with Session() as s:
        s.ch.queue_declare(q)
        try:
            s.ch.basic_publish("", q, b'{"k":1}', props)
            (_, got, body), = consume(s.conn, s.ch, q, 1)
            check(body == b'{"k":1}', diff(b'{"k":1}', body))
            for f in ("content_type", "content_encoding", "delivery_mode", "priority",
                      "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                      "type", "user_id", "app_id", "cluster_id", "headers"):
                d = first_diff(getattr(props, f), getattr(got, f), f)
                check(d is None, d)
        finally:
            s.ch.queue_delete(q)


def case_large_body():
    q = name("q-large")
    with Session() as s:
        s.ch.queue_declare(q)
        try:
            s.ch.basic_publish("", q, LARGE_BODY)
            (_, _, body), = consume(s.conn, s.ch, q, 1)
            check(body == LARGE_BODY, "1 MiB body differs (got %d bytes)" % len(body))
        finally:
            s.ch.queue_delete(q)


def case_ack_nack():
    q = name("q-acknack")
    with Session() as s:
        s.ch.queue_declare(q)
        try:
            s.ch.basic_publish("", q, b"redo")
            s.ch.basic_qos(prefetch_count=1)
            seen = []

            def on_msg(c, m, p, b):
                seen.append((m.redelivered, b))
                if len(seen) == 1:
                    c.basic_nack(m.delivery_tag, requeue=True)
                else:
                    c.basic_ack(m.delivery_tag)

            tag = s.ch.basic_consume(q, on_msg, auto_ack=False)
            deadline = time.monotonic() + WAIT
            while len(seen) < 2 and time.monotonic() < deadline:
                s.conn.process_data_events(time_limit=0.05)
            s.ch.basic_cancel(tag)
            check(seen == [(False, b"redo"), (True, b"redo")],
                  "deliveries (redelivered, body): %r" % seen)
            assert_empty(s.ch, q)
        finally:
            s.ch.queue_delete(q)


def case_confirms():
    q = name("q-confirm")
    with Session() as s:
        s.ch.queue_declare(q)
        try:
            s.ch.confirm_delivery()
            for i in range(10):
                # With confirms on, pika's blocking publish waits for the ack and
                # raises NackError on a nack.
                s.ch.basic_publish("", q, b"c%d" % i)
            ok = s.ch.queue_declare(q, passive=True)
            check(ok.method.message_count == 10, "message_count %d, want 10" % ok.method.message_count)
        finally:
            s.ch.queue_delete(q)


def case_tx_commit():
    q = name("q-txc")
    with Session() as s:
        s.ch.queue_declare(q)
        try:
            tx = s.conn.channel()
            tx.tx_select()
            tx.basic_publish("", q, b"committed")
            m, _, _ = s.ch.basic_get(q, auto_ack=True)
            check(m is None, "message visible before commit")
            tx.tx_commit()
            m, _, body = s.ch.basic_get(q, auto_ack=True)
            check(m is not None and body == b"committed", "committed message missing: %r" % (body,))
        finally:
            s.ch.queue_delete(q)


def case_tx_rollback():
    q = name("q-txr")
    with Session() as s:
        s.ch.queue_declare(q)
        try:
            tx = s.conn.channel()
            tx.tx_select()
            tx.basic_publish("", q, b"rolled-back")
            tx.tx_rollback()
            tx.tx_commit()  # nothing left to commit
            assert_empty(s.ch, q)
        finally:
            s.ch.queue_delete(q)


def case_basic_get():
    q = name("q-get")
    with Session() as s:
        s.ch.queue_declare(q)
        try:
            s.ch.basic_publish("", q, b"g1")
            s.ch.basic_publish("", q, b"g2")
            m, _, body = s.ch.basic_get(q, auto_ack=False)
            check(m is not None, "basic.get returned empty")
            check(body == b"g1", diff(b"g1", body))
            check(m.message_count == 1, "message_count %r, want 1" % m.message_count)
            check(not m.redelivered, "redelivered set on first get")
            s.ch.basic_ack(m.delivery_tag)
        finally:
            s.ch.queue_delete(q)


def case_get_empty():
    q = name("q-getempty")
    with Session() as s:
        s.ch.queue_declare(q)
        try:
            m, p, b = s.ch.basic_get(q)
            check(m is None, "basic.get on an empty queue returned a message")
        finally:
            s.ch.queue_delete(q)


def case_mandatory_return():
    ex = name("ex-mand")
    with Session() as s:
        s.ch.exchange_declare(ex, exchange_type="direct")
        try:
            returned = []
            s.ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, b)))
            s.ch.basic_publish(ex, "nowhere", b"bounce", mandatory=True)
            deadline = time.monotonic() + WAIT
            while not returned and time.monotonic() < deadline:
                s.conn.process_data_events(time_limit=0.05)
            check(returned, "no basic.return within %.0fs" % WAIT)
            m, b = returned[0]
            check(m.reply_code == 312 and b == b"bounce" and m.routing_key == "nowhere",
                  "return: code %r text %r body %r" % (m.reply_code, m.reply_text, b))
        finally:
            s.ch.exchange_delete(ex)


def case_consumer_cancel():
    q = name("q-cancel")
    with Session() as s:
        s.ch.queue_declare(q)
        cancelled = []
        s.ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))
        s.ch.basic_consume(q, lambda *a: None, auto_ack=True)
        other = s.conn.channel()
        other.queue_delete(q)
        deadline = time.monotonic() + WAIT
        while not cancelled and time.monotonic() < deadline:
            s.conn.process_data_events(time_limit=0.05)
        check(cancelled, "no server basic.cancel within %.0fs" % WAIT)


def case_priority():
    # A priority queue delivers higher priorities first, FIFO within one; none counts as 0
    # and above the maximum as the maximum.
    q = name("q-prio")
    with Session() as s:
        s.ch.queue_declare(q, arguments={"x-max-priority": 10})
        try:
            s.ch.confirm_delivery()  # each publish waits for its ack: all are queued before the gets
            sent = [("p1", 1), ("p9a", 9), ("none", None), ("p5", 5), ("p200", 200), ("p9b", 9)]
            for body, prio in sent:
                s.ch.basic_publish("", q, body.encode(), pika.BasicProperties(priority=prio))
            got = []
            for _ in sent:
                m, p, body = s.ch.basic_get(q, auto_ack=True)
                check(m is not None, "queue emptied early after %r" % got)
                got.append(body.decode())
            want = ["p200", "p9a", "p9b", "p5", "p1", "none"]
            check(got == want, "order %r, want %r" % (got, want))
        finally:
            s.ch.queue_delete(q)


def case_direct_reply_to():
    # RPC over amq.rabbitmq.reply-to: the request's reply_to is stamped with a generated
    # name, and the reply published to it reaches the client's no-ack reply consumer.
    q = name("q-rpc")
    with Session() as s:
        srv = s.conn.channel()
        srv.queue_declare(q)
        try:
            replies, requests = [], []
            s.ch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append((m, p, b)), auto_ack=True)
            srv.basic_consume(q, lambda c, m, p, b: requests.append((m, p, b)), auto_ack=True)
            s.ch.basic_publish("", q, b"2+2", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c1"))
            deadline = time.monotonic() + WAIT
            while not requests and time.monotonic() < deadline:
                s.conn.process_data_events(time_limit=0.05)
            check(requests, "no request within %.0fs" % WAIT)
            _, props, _ = requests[0]
            check(props.reply_to.startswith("amq.rabbitmq.reply-to.") and len(props.reply_to) > 22,
                  "request reply_to %r, want a generated amq.rabbitmq.reply-to.<token>" % props.reply_to)
            srv.basic_publish("", props.reply_to, b"4", pika.BasicProperties(correlation_id=props.correlation_id))
            while not replies and time.monotonic() < deadline + WAIT:
                s.conn.process_data_events(time_limit=0.05)
            check(replies, "no reply within %.0fs" % WAIT)
            m, p, body = replies[0]
            check(body == b"4" and p.correlation_id == "c1" and m.routing_key == props.reply_to,
                  "reply body %r correlation_id %r routing_key %r" % (body, p.correlation_id, m.routing_key))
        finally:
            srv.queue_delete(q)


CASES = [
    ("connect", case_connect),
    ("auth-refused", case_auth_refused),
    ("direct", case_direct),
    ("fanout", case_fanout),
    ("topic", case_topic),
    ("headers", case_headers),
    ("properties", case_properties),
    ("large-body", case_large_body),
    ("ack-nack-requeue", case_ack_nack),
    ("confirms", case_confirms),
    ("tx-commit", case_tx_commit),
    ("tx-rollback", case_tx_rollback),
    ("basic-get", case_basic_get),
    ("get-empty", case_get_empty),
    ("mandatory-return", case_mandatory_return),
    ("consumer-cancel-notify", case_consumer_cancel),
    ("priority", case_priority),
    ("direct-reply-to", case_direct_reply_to),
]

if __name__ == "__main__":
    run_cases(CLIENT, CASES)
