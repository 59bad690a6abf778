"""Shared helpers for the Python interop programs (pika, py-amqp, kombu).

Every program prints exactly one line per case: "PASS <client> <case>" or
"FAIL <client> <case>: <reason>". run.sh counts those lines.
"""
import os
import random
import signal
import string
import sys
import traceback

HOST = os.environ.get("AMQP_HOST", "127.0.0.1")
PORT = int(os.environ.get("AMQP_PORT", "5672"))
USER = os.environ.get("AMQP_USER", "guest")
PASS = os.environ.get("AMQP_PASS", "guest")
VHOST = os.environ.get("AMQP_VHOST", "/")
# Per-wait timeout and per-case hard limit, in seconds.
WAIT = float(os.environ.get("INTEROP_WAIT", "5"))
CASE_LIMIT = int(os.environ.get("INTEROP_CASE_LIMIT", "12"))

SUFFIX = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(10))

# 1 MiB body with a non-repeating-ish pattern so truncation or reordering shows.
LARGE_BODY = bytes((i * 7 + (i >> 10)) & 0xFF for i in range(1 << 20))

# Header table sent with the properties case. Only types every Python client
# encodes and decodes unambiguously: str, int, bool, nested dict, list. Each
# program adds the extra types its client supports (float, Decimal, bytes...).
HEADERS = {
    "str": "hello w\u00f6rld",
    "empty": "",
    "int": 42,
    "neg": -12345,
    "long": 1 << 40,
    "bool": True,
    "false": False,
    "nested": {"inner": "x", "n": 7, "deeper": {"flag": False, "s": "deep"}},
    "array": [1, "two", {"three": 3}, [4, "five"]],
}


def name(kind):
    """Unique resource name so concurrent runs never collide."""
    return "interop.%s.%s" % (kind, SUFFIX)


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout("case exceeded %ds" % CASE_LIMIT)


def run_cases(client, cases, cleanup=None):
    """Run each (case, fn) in order; fn returns None on success or raises."""
    signal.signal(signal.SIGALRM, _alarm)
    failed = 0
    connected = True
    for case, fn in cases:
        if not connected:
            # Without a broker every case would wait its full timeout: fail fast.
            failed += 1
            print("FAIL %s %s: not run, connect failed" % (client, case), flush=True)
            continue
        signal.alarm(CASE_LIMIT)
        try:
            fn()
            signal.alarm(0)
            print("PASS %s %s" % (client, case), flush=True)
        except BaseException as e:  # noqa: BLE001 - any failure is a FAIL line
            signal.alarm(0)
            failed += 1
            connected = case != "connect"
            reason = ("%s: %s" % (type(e).__name__, e)).replace("\n", " ")
            print("FAIL %s %s: %s" % (client, case, reason[:300]), flush=True)
            if os.environ.get("INTEROP_DEBUG"):
                traceback.print_exc()
    if cleanup:
        signal.alarm(CASE_LIMIT)
        try:
            cleanup()
        except BaseException as e:  # noqa: BLE001
            print("cleanup: %s" % e, file=sys.stderr)
        signal.alarm(0)
    sys.stdout.flush()
    os._exit(1 if failed else 0)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def diff(sent, got):
    """Readable description of the first difference between two values."""
    return "sent %r got %r" % (sent, got)



def first_diff(sent, got, path="$"):
    """Describe the first difference between sent and got, requiring identical
    value types (True != 1, b"x" != "x"); None when they are equal. int
    subclasses (pika decodes 'l' as its own long type) count as int."""
    def kind(v):
        if isinstance(v, bool):
            return bool
        if isinstance(v, int):
            return int
        return type(v)
    if kind(sent) is not kind(got):
        return "%s: sent %r (%s) got %r (%s)" % (path, sent, type(sent).__name__, got, type(got).__name__)
    if isinstance(sent, dict):
        if sent.keys() != got.keys():
            return "%s: keys sent %s got %s" % (path, sorted(sent), sorted(got))
        for k in sent:
            d = first_diff(sent[k], got[k], "%s.%s" % (path, k))
            if d:
                return d
        return None
    if isinstance(sent, (list, tuple)):
        if len(sent) != len(got):
            return "%s: length sent %d got %d" % (path, len(sent), len(got))
        for i, (x, y) in enumerate(zip(sent, got)):
            d = first_diff(x, y, "%s[%d]" % (path, i))
            if d:
                return d
        return None
    if sent != got:
        return "%s: sent %r got %r" % (path, sent, got)
    return None
