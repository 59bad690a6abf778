"""Interop cases with py-amqp (the transport under kombu/Celery) and kombu itself.

Client names in the output: "py-amqp" for the full case list on the raw
amqp.Connection API, "kombu" for the same wire seen through kombu's
Exchange/Queue/Producer/Consumer/SimpleQueue API.
"""
import datetime
import decimal
import socket
import time

import amqp
import amqp.exceptions
import kombu
import kombu.exceptions

from common import (HEADERS, HOST, LARGE_BODY, PASS, PORT, USER, VHOST, WAIT,
                    check, diff, first_diff, name, run_cases)

CLIENT = "py-amqp"


def connect(password=PASS):
    c = amqp.Connection(host="%s:%d" % (HOST, PORT), userid=USER, password=password,
                        virtual_host=VHOST, connect_timeout=WAIT, read_timeout=WAIT,
                        write_timeout=WAIT, heartbeat=0)
    c.connect()
    return c


class Session:
    def __enter__(self):
        self.conn = connect()
        self.ch = self.conn.channel()
        return self

    def __exit__(self, *exc):
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            try:
                self.conn.collect()
            except Exception:  # noqa: BLE001
                pass


def drain_until(conn, pred):
    """Process incoming frames until pred() is true or WAIT seconds pass."""
    deadline = time.monotonic() + WAIT
    while not pred():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            conn.drain_events(timeout=min(left, 0.2))
        except socket.timeout:
            pass
    return True


def consume(s, queue, n):
    got = []
    tag = s.ch.basic_consume(queue, no_ack=True, callback=got.append)
    drain_until(s.conn, lambda: len(got) >= n)
    s.ch.basic_cancel(tag)
    check(len(got) >= n, "expected %d deliveries from %s, got %d within %.0fs" % (n, queue, len(got), WAIT))
    return got


def declare_queue(s, q):
    s.ch.queue_declare(q, durable=False, exclusive=False, auto_delete=False)


def assert_empty(s, q):
    m = s.ch.basic_get(q, no_ack=True)
    check(m is None, "queue %s should be empty" % q)


def case_connect():
    c = connect()
    check(c.connected, "not connected")
    ch = c.channel()
    check(ch.is_open, "channel not open")
    c.close()


def case_auth_refused():
    try:
        c = connect(PASS + "-wrong")
    except amqp.exceptions.AccessRefused:
        return
    except (amqp.exceptions.AMQPError, OSError) as e:
        raise AssertionError("refused, but not as ACCESS_REFUSED: %r" % e)
    c.close()
    raise AssertionError("connection with a wrong password succeeded")


def exchange_case(kind, bindings, publishes, expect):
    ex = name("ex-" + kind)
    with Session() as s:
        s.ch.exchange_declare(ex, kind, durable=False, auto_delete=False)
        queues = {}
        try:
            for qkey, rk, args in bindings:
                if qkey not in queues:
                    queues[qkey] = name("q-%s-%s" % (kind, qkey))
                    declare_queue(s, queues[qkey])
                s.ch.queue_bind(queues[qkey], ex, routing_key=rk, arguments=args)
            for rk, hdrs, body in publishes:
                msg = amqp.Message(body, application_headers=hdrs) if hdrs else amqp.Message(body)
                s.ch.basic_publish(msg, exchange=ex, routing_key=rk)
            for qkey, bodies in expect.items():
                got = [m.body for m in consume(s, queues[qkey], len(bodies))]
                check(got == bodies, "%s: %s" % (qkey, diff(bodies, got)))
                assert_empty(s, queues[qkey])
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


def sent_headers():
    h = dict(HEADERS)
    # py-amqp also encodes float ('d'), Decimal ('D'), datetime ('T') and None ('V').
    h["float"] = 2.5
    h["decimal"] = decimal.Decimal("12.345")
    h["time"] = datetime.datetime(2023, 11, 14, 22, 13, 20)
    h["void"] = None
    h["nested"] = dict(h["nested"], f=-0.125)
    return h


PROPS = dict(content_type="application/json", content_encoding="utf-8",
             delivery_mode=2, priority=5, correlation_id="corr-1", reply_to="reply.q",
             expiration="600000", message_id="msg-1",
             timestamp=1700000000, type="t.type",
             user_id=USER, app_id="interop-app", cluster_id="cluster-x")


def case_properties():
    q = name("q-props")
    headers = sent_headers()
    with Session() as s:
        declare_queue(s, q)
        try:
            s.ch.basic_publish(amqp.Message(b'{"k":1}', application_headers=headers, **PROPS),
                               exchange="", routing_key=q)
            m, = consume(s, q, 1)
            # py-amqp decodes the body with the content_encoding property (utf-8 here).
            body = m.body.encode("utf-8") if isinstance(m.body, str) else m.body
            check(body == b'{"k":1}', diff(b'{"k":1}', m.body))
            sent = dict(PROPS, application_headers=headers)
            d = first_diff(sent, dict(m.properties), "properties")
            check(d is None, d)
        finally:
            s.ch.queue_delete(q)


def case_large_body():
    q = name("q-large")
    with Session() as s:
        declare_queue(s, q)
        try:
            s.ch.basic_publish(amqp.Message(LARGE_BODY), exchange="", routing_key=q)
            m, = consume(s, q, 1)
            check(m.body == LARGE_BODY, "1 MiB body differs (got %d bytes)" % len(m.body))
        finally:
            s.ch.queue_delete(q)


def case_ack_nack():
    q = name("q-acknack")
    with Session() as s:
        declare_queue(s, q)
        try:
            s.ch.basic_publish(amqp.Message(b"redo"), exchange="", routing_key=q)
            s.ch.basic_qos(0, 1, False)
            seen = []

            def on_msg(m):
                seen.append((m.delivery_info["redelivered"], m.body))
                if len(seen) == 1:
                    # py-amqp has no basic_nack; basic.reject is its single-message nack.
                    s.ch.basic_reject(m.delivery_tag, requeue=True)
                else:
                    s.ch.basic_ack(m.delivery_tag)

            tag = s.ch.basic_consume(q, no_ack=False, callback=on_msg)
            drain_until(s.conn, lambda: len(seen) >= 2)
            s.ch.basic_cancel(tag)
            check(seen == [(False, b"redo"), (True, b"redo")], "deliveries (redelivered, body): %r" % seen)
            assert_empty(s, q)
        finally:
            s.ch.queue_delete(q)


def case_confirms():
    q = name("q-confirm")
    with Session() as s:
        declare_queue(s, q)
        try:
            acked, nacked = set(), []
            s.ch.confirm_select()

            def on_ack(tag, multiple):
                if multiple:
                    acked.update(range(1, tag + 1))
                else:
                    acked.add(tag)

            s.ch.events["basic_ack"].add(on_ack)
            s.ch.events["basic_nack"].add(lambda tag, multiple: nacked.append(tag))
            for i in range(10):
                s.ch.basic_publish(amqp.Message(b"c%d" % i), exchange="", routing_key=q)
            drain_until(s.conn, lambda: len(acked) >= 10 or nacked)
            check(not nacked, "nacked: %r" % nacked)
            check(acked == set(range(1, 11)), "acked tags %r, want 1..10" % sorted(acked))
            _, count, _ = s.ch.queue_declare(q, passive=True)
            check(count == 10, "message_count %d, want 10" % count)
        finally:
            s.ch.queue_delete(q)


def case_tx_commit():
    q = name("q-txc")
    with Session() as s:
        declare_queue(s, q)
        try:
            tx = s.conn.channel()
            tx.tx_select()
            tx.basic_publish(amqp.Message(b"committed"), exchange="", routing_key=q)
            check(s.ch.basic_get(q, no_ack=True) is None, "message visible before commit")
            tx.tx_commit()
            m = s.ch.basic_get(q, no_ack=True)
            check(m is not None and m.body == b"committed", "committed message missing")
        finally:
            s.ch.queue_delete(q)


def case_tx_rollback():
    q = name("q-txr")
    with Session() as s:
        declare_queue(s, q)
        try:
            tx = s.conn.channel()
            tx.tx_select()
            tx.basic_publish(amqp.Message(b"rolled-back"), exchange="", routing_key=q)
            tx.tx_rollback()
            tx.tx_commit()
            assert_empty(s, q)
        finally:
            s.ch.queue_delete(q)


def case_basic_get():
    q = name("q-get")
    with Session() as s:
        declare_queue(s, q)
        try:
            s.ch.basic_publish(amqp.Message(b"g1"), exchange="", routing_key=q)
            s.ch.basic_publish(amqp.Message(b"g2"), exchange="", routing_key=q)
            m = s.ch.basic_get(q, no_ack=False)
            check(m is not None, "basic.get returned empty")
            check(m.body == b"g1", diff(b"g1", m.body))
            check(m.delivery_info["message_count"] == 1,
                  "message_count %r, want 1" % m.delivery_info["message_count"])
            check(not m.delivery_info["redelivered"], "redelivered set on first get")
            s.ch.basic_ack(m.delivery_tag)
        finally:
            s.ch.queue_delete(q)


def case_get_empty():
    q = name("q-getempty")
    with Session() as s:
        declare_queue(s, q)
        try:
            check(s.ch.basic_get(q) is None, "basic.get on an empty queue returned a message")
        finally:
            s.ch.queue_delete(q)


def case_mandatory_return():
    ex = name("ex-mand")
    with Session() as s:
        s.ch.exchange_declare(ex, "direct", durable=False, auto_delete=False)
        try:
            returned = []
            s.ch.events["basic_return"].add(
                lambda exc, exchange, rk, msg: returned.append((exc, exchange, rk, msg)))
            s.ch.basic_publish(amqp.Message(b"bounce"), exchange=ex, routing_key="nowhere",
                               mandatory=True)
            drain_until(s.conn, lambda: returned)
            check(returned, "no basic.return within %.0fs" % WAIT)
            exc, exchange, rk, msg = returned[0]
            code = exc.reply_code or exc.code or getattr(exc, "method_name", None)
            check(code == 312 and exchange == ex and rk == "nowhere" and msg.body == b"bounce",
                  "return: %r %r %r %r" % (exc, exchange, rk, msg.body))
        finally:
            s.ch.exchange_delete(ex)


def case_consumer_cancel():
    q = name("q-cancel")
    with Session() as s:
        declare_queue(s, q)
        cancelled = []
        tag = s.ch.basic_consume(q, no_ack=True, callback=lambda m: None,
                                 on_cancel=cancelled.append)
        other = s.conn.channel()
        other.queue_delete(q)
        drain_until(s.conn, lambda: cancelled)
        check(cancelled == [tag], "cancel notifications %r, want [%r]" % (cancelled, tag))


# --- kombu: the same broker through kombu's high-level API -------------------

def kombu_conn(password=PASS):
    return kombu.Connection(hostname=HOST, port=PORT, userid=USER, password=password,
                            virtual_host=VHOST, transport="pyamqp", connect_timeout=WAIT,
                            transport_options={"read_timeout": WAIT, "write_timeout": WAIT})


def kombu_connect():
    with kombu_conn() as c:
        c.connect()
        check(c.connected, "not connected")


def kombu_auth_refused():
    c = kombu_conn(PASS + "-wrong")
    try:
        c.ensure_connection(max_retries=1, timeout=WAIT)
    except (amqp.exceptions.AccessRefused, kombu.exceptions.OperationalError) as e:
        check("ACCESS_REFUSED" in str(e) or isinstance(e, amqp.exceptions.AccessRefused),
              "refused, but not as ACCESS_REFUSED: %r" % e)
        return
    finally:
        c.release()
    raise AssertionError("connection with a wrong password succeeded")


def kombu_topic_properties():
    """Producer -> topic exchange -> Consumer, with headers and properties."""
    ex = kombu.Exchange(name("kex-topic"), type="topic", durable=False, auto_delete=False)
    q = kombu.Queue(name("kq-topic"), exchange=ex, routing_key="k.*", durable=False,
                    auto_delete=False)
    headers = sent_headers()
    with kombu_conn() as c:
        ch = c.channel()
        q(ch).declare()
        try:
            prod = kombu.Producer(ch, exchange=ex)
            prod.publish(b"skip", routing_key="other.x", serializer=None,
                         content_type="application/octet-stream", content_encoding="binary")
            prod.publish(b"raw-bytes", routing_key="k.one", headers=headers, priority=3,
                         correlation_id="corr-k", reply_to="r.k", expiration=600,
                         message_id="mid-k", content_type="application/x-test",
                         content_encoding="binary", serializer=None)
            got = []
            with kombu.Consumer(ch, queues=[q], callbacks=[lambda body, msg: got.append(msg)],
                                accept=["application/x-test"], no_ack=True):
                deadline = time.monotonic() + WAIT
                while not got and time.monotonic() < deadline:
                    try:
                        c.drain_events(timeout=0.2)
                    except socket.timeout:
                        pass
            check(len(got) == 1, "got %d messages, want 1" % len(got))
            m = got[0]
            check(m.body == b"raw-bytes", diff(b"raw-bytes", m.body))
            check(m.delivery_info["routing_key"] == "k.one", "routing key %r" % m.delivery_info["routing_key"])
            d = first_diff(headers, m.headers, "headers")
            check(d is None, d)
            want = {"priority": 3, "correlation_id": "corr-k", "reply_to": "r.k",
                    "expiration": "600000", "message_id": "mid-k"}
            gotp = {k: m.properties.get(k) for k in want}
            d = first_diff(want, gotp, "properties")
            check(d is None, d)
            check(m.content_type == "application/x-test", "content_type %r" % m.content_type)
        finally:
            q(ch).delete()
            ex(ch).delete()


def kombu_simple_queue():
    qn = name("kq-simple")
    with kombu_conn() as c:
        sq = c.SimpleQueue(qn, queue_opts={"durable": False, "auto_delete": False})
        try:
            sq.put({"hello": "world", "n": [1, 2]}, serializer="json")
            m = sq.get(block=True, timeout=WAIT)
            check(m.payload == {"hello": "world", "n": [1, 2]}, "payload %r" % (m.payload,))
            m.ack()
            try:
                sq.get(block=False)
                raise AssertionError("queue should be empty")
            except sq.Empty:
                pass
        finally:
            sq.close()
            c.default_channel.queue_delete(qn)


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
]

KOMBU_CASES = [
    ("connect", kombu_connect),
    ("auth-refused", kombu_auth_refused),
    ("topic-properties", kombu_topic_properties),
    ("simple-queue", kombu_simple_queue),
]

if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["kombu"]:
        run_cases("kombu", KOMBU_CASES)
    else:
        run_cases(CLIENT, CASES)
