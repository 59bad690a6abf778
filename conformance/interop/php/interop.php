<?php
// Interop cases with php-amqplib (Debian php-amqplib).
// Prints one "PASS php-amqplib <case>" / "FAIL php-amqplib <case>: <reason>" line per case.
// The connection uses php-amqplib's default AMQPLAIN login, as its users get.

require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Exception\AMQPBasicCancelException;
use PhpAmqpLib\Exception\AMQPConnectionClosedException;
use PhpAmqpLib\Exception\AMQPTimeoutException;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPTable;

const CLIENT = 'php-amqplib';

function envv($k, $d)
{
    $v = getenv($k);
    return ($v === false || $v === '') ? $d : $v;
}

$HOST = envv('AMQP_HOST', '127.0.0.1');
$PORT = (int) envv('AMQP_PORT', '5672');
$USER = envv('AMQP_USER', 'guest');
$PASS = envv('AMQP_PASS', 'guest');
$VHOST = envv('AMQP_VHOST', '/');
$WAIT = (float) envv('INTEROP_WAIT', '5');
$CASE_LIMIT = (int) envv('INTEROP_CASE_LIMIT', '12');
$SUFFIX = bin2hex(random_bytes(5));
$LARGE = '';
for ($i = 0; $i < (1 << 20); $i++) {
    $LARGE .= chr(($i * 7 + ($i >> 10)) & 0xff);
}

class CheckFailed extends Exception
{
}

function check($cond, $msg)
{
    if (!$cond) {
        throw new CheckFailed($msg);
    }
}

function name($kind)
{
    global $SUFFIX;
    return "interop.$kind.$SUFFIX";
}

function connect($password = null)
{
    global $HOST, $PORT, $USER, $PASS, $VHOST, $WAIT;
    return new AMQPStreamConnection($HOST, $PORT, $USER, $password ?? $PASS, $VHOST, false, 'AMQPLAIN', null,
        'en_US', $WAIT, $WAIT, null, false, 0, $WAIT);
}

function session(callable $fn)
{
    $conn = connect();
    try {
        $fn($conn, $conn->channel());
    } finally {
        try {
            $conn->close();
        } catch (Throwable $e) {
        }
    }
}

// drain processes incoming frames on $ch until $done() or $WAIT seconds pass.
function drain($ch, callable $done)
{
    global $WAIT;
    $deadline = microtime(true) + $WAIT;
    while (!$done()) {
        $left = $deadline - microtime(true);
        if ($left <= 0) {
            return false;
        }
        try {
            $ch->wait(null, false, min($left, 0.2));
        } catch (AMQPTimeoutException $e) {
        }
    }
    return true;
}

function consume($ch, $queue, $n)
{
    global $WAIT;
    $got = [];
    $tag = $ch->basic_consume($queue, '', false, true, false, false, function ($m) use (&$got) {
        $got[] = $m;
    });
    drain($ch, function () use (&$got, $n) {
        return count($got) >= $n;
    });
    $ch->basic_cancel($tag);
    check(count($got) >= $n, "expected $n deliveries from $queue, got " . count($got));
    return $got;
}

function declare_queue($ch, $q)
{
    $ch->queue_declare($q, false, false, false, false);
}

function assert_empty($ch, $q)
{
    check($ch->basic_get($q, true) === null, "queue $q should be empty");
}

function case_connect()
{
    $c = connect();
    $ch = $c->channel();
    check($ch->is_open(), 'channel not open');
    $c->close();
}

function case_auth_refused()
{
    global $PASS;
    try {
        $c = connect($PASS . '-wrong');
    } catch (AMQPConnectionClosedException $e) {
        check($e->getCode() == 403, 'refused with code ' . $e->getCode() . ': ' . $e->getMessage());
        return;
    }
    $c->close();
    throw new CheckFailed('connection with a wrong password succeeded');
}

function exchange_case($kind, $bindings, $publishes, $expect)
{
    $ex = name("ex-$kind");
    session(function ($conn, $ch) use ($ex, $kind, $bindings, $publishes, $expect) {
        $ch->exchange_declare($ex, $kind, false, false, false);
        $queues = [];
        try {
            foreach ($bindings as [$qkey, $rk, $args]) {
                if (!isset($queues[$qkey])) {
                    $queues[$qkey] = name("q-$kind-$qkey");
                    declare_queue($ch, $queues[$qkey]);
                }
                $ch->queue_bind($queues[$qkey], $ex, $rk, false, new AMQPTable($args ?? []));
            }
            foreach ($publishes as [$rk, $headers, $body]) {
                $props = $headers ? ['application_headers' => new AMQPTable($headers)] : [];
                $ch->basic_publish(new AMQPMessage($body, $props), $ex, $rk);
            }
            foreach ($expect as $qkey => $bodies) {
                $got = array_map(function ($m) {
                    return $m->getBody();
                }, consume($ch, $queues[$qkey], count($bodies)));
                check($got === $bodies, "$qkey: sent " . json_encode($bodies) . ' got ' . json_encode($got));
                assert_empty($ch, $queues[$qkey]);
            }
        } finally {
            foreach ($queues as $q) {
                $ch->queue_delete($q);
            }
            $ch->exchange_delete($ex);
        }
    });
}

function case_direct()
{
    exchange_case('direct', [['a', 'k1', null]], [['k2', null, 'no'], ['k1', null, 'yes']], ['a' => ['yes']]);
}

function case_fanout()
{
    exchange_case('fanout', [['a', '', null], ['b', '', null]], [['whatever', null, 'm1']],
        ['a' => ['m1'], 'b' => ['m1']]);
}

function case_topic()
{
    exchange_case('topic', [['a', 'a.*.c', null], ['a', 'x.#', null], ['b', '#', null]],
        [['a.b.d', null, 'no'], ['a.b.c', null, 'abc'], ['x.y.z', null, 'xyz']],
        ['a' => ['abc', 'xyz'], 'b' => ['no', 'abc', 'xyz']]);
}

function case_headers()
{
    exchange_case('headers',
        [['all', '', ['x-match' => 'all', 'h1' => 'v1', 'h2' => 'v2']],
            ['any', '', ['x-match' => 'any', 'h1' => 'v1', 'h3' => 'v3']]],
        [['', ['h1' => 'v1'], 'one'], ['', ['h4' => 'v4'], 'none'], ['', ['h1' => 'v1', 'h2' => 'v2'], 'both']],
        ['all' => ['both'], 'any' => ['one', 'both']]);
}

// Native PHP values; AMQPTable picks the wire types (S, I/l, t, F, A, V).
// php-amqplib cannot write a float at all (a native float goes out as a string,
// its writer rejects T_DOUBLE), so headers_table() adds typed 's' (short) and
// 'x' (byte array) values instead.
function sent_headers()
{
    return [
        'str' => "hello w\u{00f6}rld",
        'empty' => '',
        'int' => 42,
        'neg' => -12345,
        'long' => 1 << 40,
        'bool' => true,
        'false' => false,
        'void' => null,
        'nested' => ['inner' => 'x', 'n' => 7, 'deeper' => ['flag' => false, 's' => 'deep', 'm' => -1]],
        'array' => [1, 'two', ['three' => 3], [4, 'five']],
    ];
}

function headers_table($headers)
{
    $t = new AMQPTable($headers);
    $t->set('short', -1000, AMQPTable::T_INT_SHORT);
    $t->set('bytes', "\x00\xffraw", AMQPTable::T_BYTES);
    return $t;
}

function first_diff($sent, $got, $path)
{
    if (is_array($sent) && is_array($got)) {
        if (array_keys($sent) !== array_keys($got)) {
            return "$path: keys sent " . json_encode(array_keys($sent)) . ' got ' . json_encode(array_keys($got));
        }
        foreach ($sent as $k => $v) {
            $d = first_diff($v, $got[$k], "$path.$k");
            if ($d !== null) {
                return $d;
            }
        }
        return null;
    }
    if ($sent === $got) {
        return null;
    }
    return "$path: sent " . var_export($sent, true) . ' got ' . var_export($got, true);
}

function case_properties()
{
    global $USER;
    $q = name('q-props');
    $headers = sent_headers();
    $props = [
        'content_type' => 'application/json', 'content_encoding' => 'utf-8',
        'delivery_mode' => 2, 'priority' => 5, 'correlation_id' => 'corr-1', 'reply_to' => 'reply.q',
        'expiration' => '600000', 'message_id' => 'msg-1', 'timestamp' => 1700000000, 'type' => 't.type',
        'user_id' => $USER, 'app_id' => 'interop-app', 'cluster_id' => 'cluster-x',
    ];
    session(function ($conn, $ch) use ($q, $headers, $props) {
        declare_queue($ch, $q);
        try {
            $ch->basic_publish(new AMQPMessage('{"k":1}', $props + ['application_headers' => headers_table($headers)]),
                '', $q);
            [$m] = consume($ch, $q, 1);
            check($m->getBody() === '{"k":1}', 'body ' . $m->getBody());
            foreach ($props as $k => $v) {
                check($m->has($k), "$k missing");
                $d = first_diff($v, $m->get($k), $k);
                check($d === null, $d);
            }
            $want = $headers + ['short' => -1000, 'bytes' => "\x00\xffraw"];
            $d = first_diff($want, $m->get('application_headers')->getNativeData(), 'headers');
            check($d === null, $d);
        } finally {
            $ch->queue_delete($q);
        }
    });
}

function case_large_body()
{
    global $LARGE;
    $q = name('q-large');
    session(function ($conn, $ch) use ($q, $LARGE) {
        declare_queue($ch, $q);
        try {
            $ch->basic_publish(new AMQPMessage($LARGE), '', $q);
            [$m] = consume($ch, $q, 1);
            check($m->getBody() === $LARGE, '1 MiB body differs (got ' . strlen($m->getBody()) . ' bytes)');
        } finally {
            $ch->queue_delete($q);
        }
    });
}

function case_ack_nack()
{
    $q = name('q-acknack');
    session(function ($conn, $ch) use ($q) {
        declare_queue($ch, $q);
        try {
            $ch->basic_publish(new AMQPMessage('redo'), '', $q);
            $ch->basic_qos(0, 1, false);
            $seen = [];
            $tag = $ch->basic_consume($q, '', false, false, false, false, function ($m) use (&$seen) {
                $seen[] = [$m->isRedelivered(), $m->getBody()];
                if (count($seen) == 1) {
                    $m->nack(true);
                } else {
                    $m->ack();
                }
            });
            drain($ch, function () use (&$seen) {
                return count($seen) >= 2;
            });
            $ch->basic_cancel($tag);
            check($seen === [[false, 'redo'], [true, 'redo']], 'deliveries ' . json_encode($seen));
            assert_empty($ch, $q);
        } finally {
            $ch->queue_delete($q);
        }
    });
}

function case_confirms()
{
    global $WAIT;
    $q = name('q-confirm');
    session(function ($conn, $ch) use ($q, $WAIT) {
        declare_queue($ch, $q);
        try {
            $acked = 0;
            $nacked = 0;
            $ch->set_ack_handler(function ($m) use (&$acked) {
                $acked++;
            });
            $ch->set_nack_handler(function ($m) use (&$nacked) {
                $nacked++;
            });
            $ch->confirm_select();
            for ($i = 0; $i < 10; $i++) {
                $ch->basic_publish(new AMQPMessage("c$i"), '', $q);
            }
            $ch->wait_for_pending_acks($WAIT);
            check($nacked == 0 && $acked == 10, "acked $acked nacked $nacked, want 10 acks");
            [, $count] = $ch->queue_declare($q, true);
            check($count == 10, "message_count $count, want 10");
        } finally {
            $ch->queue_delete($q);
        }
    });
}

function case_tx_commit()
{
    $q = name('q-txc');
    session(function ($conn, $ch) use ($q) {
        declare_queue($ch, $q);
        try {
            $tx = $conn->channel();
            $tx->tx_select();
            $tx->basic_publish(new AMQPMessage('committed'), '', $q);
            check($ch->basic_get($q, true) === null, 'message visible before commit');
            $tx->tx_commit();
            $m = $ch->basic_get($q, true);
            check($m !== null && $m->getBody() === 'committed', 'committed message missing');
        } finally {
            $ch->queue_delete($q);
        }
    });
}

function case_tx_rollback()
{
    $q = name('q-txr');
    session(function ($conn, $ch) use ($q) {
        declare_queue($ch, $q);
        try {
            $tx = $conn->channel();
            $tx->tx_select();
            $tx->basic_publish(new AMQPMessage('rolled-back'), '', $q);
            $tx->tx_rollback();
            $tx->tx_commit();
            assert_empty($ch, $q);
        } finally {
            $ch->queue_delete($q);
        }
    });
}

function case_basic_get()
{
    $q = name('q-get');
    session(function ($conn, $ch) use ($q) {
        declare_queue($ch, $q);
        try {
            $ch->basic_publish(new AMQPMessage('g1'), '', $q);
            $ch->basic_publish(new AMQPMessage('g2'), '', $q);
            $m = $ch->basic_get($q, false);
            check($m !== null, 'basic.get returned empty');
            check($m->getBody() === 'g1', 'body ' . $m->getBody());
            check($m->getMessageCount() === 1, 'message_count ' . var_export($m->getMessageCount(), true) . ', want 1');
            check($m->isRedelivered() === false, 'redelivered set on first get');
            $m->ack();
        } finally {
            $ch->queue_delete($q);
        }
    });
}

function case_get_empty()
{
    $q = name('q-getempty');
    session(function ($conn, $ch) use ($q) {
        declare_queue($ch, $q);
        try {
            check($ch->basic_get($q) === null, 'basic.get on an empty queue returned a message');
        } finally {
            $ch->queue_delete($q);
        }
    });
}

function case_mandatory_return()
{
    $ex = name('ex-mand');
    session(function ($conn, $ch) use ($ex) {
        $ch->exchange_declare($ex, 'direct', false, false, false);
        try {
            $returned = [];
            $ch->set_return_listener(function ($code, $text, $exchange, $rk, $m) use (&$returned) {
                $returned[] = [$code, $text, $exchange, $rk, $m->getBody()];
            });
            $ch->basic_publish(new AMQPMessage('bounce'), $ex, 'nowhere', true);
            drain($ch, function () use (&$returned) {
                return count($returned) > 0;
            });
            check(count($returned) == 1, 'no basic.return');
            [$code, $text, $exchange, $rk, $body] = $returned[0];
            check($code == 312 && $exchange === $ex && $rk === 'nowhere' && $body === 'bounce',
                "return $code $text $exchange $rk $body");
        } finally {
            $ch->exchange_delete($ex);
        }
    });
}

function case_consumer_cancel()
{
    $q = name('q-cancel');
    session(function ($conn, $ch) use ($q) {
        declare_queue($ch, $q);
        $tag = $ch->basic_consume($q, '', false, true, false, false, function ($m) {
        });
        $other = $conn->channel();
        $other->queue_delete($q);
        // php-amqplib reports a server basic.cancel by throwing from wait().
        try {
            drain($ch, function () {
                return false;
            });
        } catch (AMQPBasicCancelException $e) {
            check($e->getConsumerTag() === $tag, 'cancel for ' . $e->getConsumerTag() . ", want $tag");
            return;
        }
        throw new CheckFailed('no server basic.cancel');
    });
}

$cases = [
    ['connect', 'case_connect'],
    ['auth-refused', 'case_auth_refused'],
    ['direct', 'case_direct'],
    ['fanout', 'case_fanout'],
    ['topic', 'case_topic'],
    ['headers', 'case_headers'],
    ['properties', 'case_properties'],
    ['large-body', 'case_large_body'],
    ['ack-nack-requeue', 'case_ack_nack'],
    ['confirms', 'case_confirms'],
    ['tx-commit', 'case_tx_commit'],
    ['tx-rollback', 'case_tx_rollback'],
    ['basic-get', 'case_basic_get'],
    ['get-empty', 'case_get_empty'],
    ['mandatory-return', 'case_mandatory_return'],
    ['consumer-cancel-notify', 'case_consumer_cancel'],
];

$failed = 0;
$connected = true;
foreach ($cases as [$c, $fn]) {
    if (!$connected) {
        // Without a broker every case would wait its full timeout: fail fast.
        $failed++;
        echo 'FAIL ' . CLIENT . " $c: not run, connect failed\n";
        continue;
    }
    // Every socket read has $WAIT as its timeout; set_time_limit bounds CPU-bound
    // runaways, and run.sh's timeout bounds the whole program.
    set_time_limit($CASE_LIMIT);
    try {
        $fn();
        echo 'PASS ' . CLIENT . " $c\n";
    } catch (Throwable $e) {
        $failed++;
        $connected = $c !== 'connect';
        $reason = substr(preg_replace('/\s+/', ' ', get_class($e) . ': ' . $e->getMessage()), 0, 300);
        echo 'FAIL ' . CLIENT . " $c: $reason\n";
        if (getenv('INTEROP_DEBUG')) {
            fwrite(STDERR, $e->getTraceAsString() . "\n");
        }
    }
}
exit($failed ? 1 : 0);
