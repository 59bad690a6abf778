'use strict';
// Interop cases with the Node amqplib client (promise API).
// Prints one "PASS amqplib <case>" / "FAIL amqplib <case>: <reason>" line per case.

const amqp = require('amqplib');
// defs (the method table) is not in amqplib's "exports"; load it by file path.
const path = require('path');
const defs = require(path.join(path.dirname(require.resolve('amqplib')), 'lib', 'defs.js'));
const crypto = require('crypto');
const util = require('util');

const CLIENT = 'amqplib';
const HOST = process.env.AMQP_HOST || '127.0.0.1';
const PORT = parseInt(process.env.AMQP_PORT || '5672', 10);
const USER = process.env.AMQP_USER || 'guest';
const PASS = process.env.AMQP_PASS || 'guest';
const VHOST = process.env.AMQP_VHOST || '/';
const WAIT = parseFloat(process.env.INTEROP_WAIT || '5') * 1000;
const CASE_LIMIT = parseInt(process.env.INTEROP_CASE_LIMIT || '12', 10) * 1000;
const SUFFIX = crypto.randomBytes(5).toString('hex');

const LARGE = Buffer.alloc(1 << 20);
for (let i = 0; i < LARGE.length; i++) LARGE[i] = (i * 7 + (i >> 10)) & 0xff;

function name(kind) { return `interop.${kind}.${SUFFIX}`; }

function check(cond, msg) { if (!cond) throw new Error(msg); }

function show(v) { return util.inspect(v, { depth: 10, breakLength: Infinity }); }

function timeout(ms, what) {
  let t;
  const p = new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timeout: ${what} after ${ms} ms`)), ms); });
  p.cancel = () => clearTimeout(t);
  return p;
}

async function within(ms, what, promise) {
  const t = timeout(ms, what);
  try { return await Promise.race([promise, t]); } finally { t.cancel(); }
}

async function connect(password = PASS) {
  const conn = await within(WAIT, 'connect', amqp.connect({
    protocol: 'amqp', hostname: HOST, port: PORT, username: USER, password,
    vhost: VHOST, heartbeat: 30,
  }, { timeout: WAIT }));
  conn.on('error', () => {}); // surfaced through the failing operation instead
  return conn;
}

async function session(fn) {
  const conn = await connect();
  try {
    const ch = await conn.createChannel();
    ch.on('error', () => {});
    await fn(conn, ch);
  } finally {
    try { await within(WAIT, 'close', conn.close()); } catch (e) { /* already closed */ }
  }
}

// consume collects n deliveries from queue within WAIT ms.
async function consume(ch, queue, n, noAck = true) {
  const got = [];
  let done;
  const all = new Promise((res) => { done = res; });
  const { consumerTag } = await ch.consume(queue, (m) => {
    if (m) { got.push(m); if (got.length >= n) done(); }
  }, { noAck });
  try {
    await within(WAIT, `${n} deliveries from ${queue} (got ${got.length})`, all);
  } finally {
    await ch.cancel(consumerTag);
  }
  return got;
}

async function assertEmpty(ch, queue) {
  const m = await ch.get(queue, { noAck: true });
  check(m === false, `queue ${queue} should be empty`);
}

async function caseConnect() {
  const conn = await connect();
  const ch = await conn.createChannel();
  await ch.close();
  await conn.close();
}

async function caseAuthRefused() {
  let conn;
  try {
    conn = await connect(PASS + '-wrong');
  } catch (e) {
    check(/ACCESS_REFUSED|403/.test(String(e.message)), `refused, but not as ACCESS_REFUSED: ${e.message}`);
    return;
  }
  await conn.close();
  throw new Error('connection with a wrong password succeeded');
}

async function exchangeCase(kind, bindings, publishes, expect) {
  const ex = name(`ex-${kind}`);
  await session(async (conn, ch) => {
    await ch.assertExchange(ex, kind, { durable: false, autoDelete: false });
    const queues = {};
    try {
      for (const [qkey, rk, args] of bindings) {
        if (!queues[qkey]) {
          queues[qkey] = name(`q-${kind}-${qkey}`);
          await ch.assertQueue(queues[qkey], { durable: false });
        }
        await ch.bindQueue(queues[qkey], ex, rk, args || {});
      }
      for (const [rk, headers, body] of publishes) {
        ch.publish(ex, rk, Buffer.from(body), headers ? { headers } : {});
      }
      for (const [qkey, bodies] of Object.entries(expect)) {
        const got = (await consume(ch, queues[qkey], bodies.length)).map((m) => m.content.toString());
        check(util.isDeepStrictEqual(got, bodies), `${qkey}: sent ${show(bodies)} got ${show(got)}`);
        await assertEmpty(ch, queues[qkey]);
      }
    } finally {
      for (const q of Object.values(queues)) await ch.deleteQueue(q);
      await ch.deleteExchange(ex);
    }
  });
}

const caseDirect = () => exchangeCase('direct', [['a', 'k1']],
  [['k2', null, 'no'], ['k1', null, 'yes']], { a: ['yes'] });
const caseFanout = () => exchangeCase('fanout', [['a', ''], ['b', '']],
  [['whatever', null, 'm1']], { a: ['m1'], b: ['m1'] });
const caseTopic = () => exchangeCase('topic', [['a', 'a.*.c'], ['a', 'x.#'], ['b', '#']],
  [['a.b.d', null, 'no'], ['a.b.c', null, 'abc'], ['x.y.z', null, 'xyz']],
  { a: ['abc', 'xyz'], b: ['no', 'abc', 'xyz'] });
const caseHeaders = () => exchangeCase('headers',
  [['all', '', { 'x-match': 'all', h1: 'v1', h2: 'v2' }],
    ['any', '', { 'x-match': 'any', h1: 'v1', h3: 'v3' }]],
  [['', { h1: 'v1' }, 'one'], ['', { h4: 'v4' }, 'none'], ['', { h1: 'v1', h2: 'v2' }, 'both']],
  { all: ['both'], any: ['one', 'both'] });

// amqplib picks the narrowest integer type ('b', 's', 'I', 'l'), doubles for
// fractions, 'x' for Buffers, 'V' for null, and typed values for decimal/timestamp.
const HEADERS = {
  str: 'hello w\u00f6rld',
  empty: '',
  byte: 42,
  short: 1000,
  int: 100000,
  long: 2 ** 40,
  neg: -12345,
  bool: true,
  false: false,
  double: 2.5,
  void: null,
  bytes: Buffer.from([0, 255, 114, 97, 119]),
  decimal: { '!': 'decimal', value: { places: 3, digits: 12345 } },
  time: { '!': 'timestamp', value: 1700000000 },
  nested: { inner: 'x', n: 7, deeper: { flag: false, s: 'deep', f: -0.125 } },
  array: [1, 'two', { three: 3 }, [4, 'five']],
};

async function caseProperties() {
  const q = name('q-props');
  // clusterId is absent: amqplib always sends it unset.
  const props = {
    contentType: 'application/json', contentEncoding: 'utf-8', headers: HEADERS,
    deliveryMode: 2, priority: 5, correlationId: 'corr-1', replyTo: 'reply.q',
    expiration: '600000', messageId: 'msg-1', timestamp: 1700000000, type: 't.type',
    userId: USER, appId: 'interop-app',
  };
  await session(async (conn, ch) => {
    await ch.assertQueue(q, { durable: false });
    try {
      ch.publish('', q, Buffer.from('{"k":1}'), props);
      const [m] = await consume(ch, q, 1);
      check(m.content.toString() === '{"k":1}', `body ${show(m.content.toString())}`);
      for (const [k, v] of Object.entries(props)) {
        check(util.isDeepStrictEqual(m.properties[k], v), `${k}: sent ${show(v)} got ${show(m.properties[k])}`);
      }
      check(m.properties.clusterId === undefined, `clusterId ${show(m.properties.clusterId)}`);
    } finally {
      await ch.deleteQueue(q);
    }
  });
}

async function caseLargeBody() {
  const q = name('q-large');
  await session(async (conn, ch) => {
    await ch.assertQueue(q, { durable: false });
    try {
      ch.publish('', q, LARGE);
      const [m] = await consume(ch, q, 1);
      check(m.content.equals(LARGE), `1 MiB body differs (got ${m.content.length} bytes)`);
    } finally {
      await ch.deleteQueue(q);
    }
  });
}

async function caseAckNack() {
  const q = name('q-acknack');
  await session(async (conn, ch) => {
    await ch.assertQueue(q, { durable: false });
    try {
      ch.sendToQueue(q, Buffer.from('redo'));
      await ch.prefetch(1);
      const seen = [];
      let done;
      const two = new Promise((res) => { done = res; });
      const { consumerTag } = await ch.consume(q, (m) => {
        if (!m) return;
        seen.push([m.fields.redelivered, m.content.toString()]);
        if (seen.length === 1) ch.nack(m, false, true); else { ch.ack(m); done(); }
      }, { noAck: false });
      try {
        await within(WAIT, 'redelivery', two);
      } finally {
        await ch.cancel(consumerTag);
      }
      check(util.isDeepStrictEqual(seen, [[false, 'redo'], [true, 'redo']]), `deliveries ${show(seen)}`);
      await assertEmpty(ch, q);
    } finally {
      await ch.deleteQueue(q);
    }
  });
}

async function caseConfirms() {
  const q = name('q-confirm');
  const conn = await connect();
  try {
    const ch = await conn.createConfirmChannel();
    await ch.assertQueue(q, { durable: false });
    try {
      const acks = [];
      for (let i = 0; i < 10; i++) {
        acks.push(new Promise((res, rej) => {
          ch.sendToQueue(q, Buffer.from(`c${i}`), {}, (err) => (err ? rej(new Error(`nack ${i}`)) : res()));
        }));
      }
      await within(WAIT, 'publisher confirms', Promise.all(acks));
      await within(WAIT, 'waitForConfirms', ch.waitForConfirms());
      const { messageCount } = await ch.checkQueue(q);
      check(messageCount === 10, `message_count ${messageCount}, want 10`);
    } finally {
      await ch.deleteQueue(q);
    }
  } finally {
    await conn.close();
  }
}

// amqplib has no public tx API; Channel.rpc sends tx.* with the client's own codec.
async function txChannel(conn) {
  const tx = await conn.createChannel();
  await tx.rpc(defs.TxSelect, {}, defs.TxSelectOk);
  return tx;
}

async function caseTxCommit() {
  const q = name('q-txc');
  await session(async (conn, ch) => {
    await ch.assertQueue(q, { durable: false });
    try {
      const tx = await txChannel(conn);
      tx.sendToQueue(q, Buffer.from('committed'));
      check((await ch.get(q, { noAck: true })) === false, 'message visible before commit');
      await tx.rpc(defs.TxCommit, {}, defs.TxCommitOk);
      const m = await ch.get(q, { noAck: true });
      check(m && m.content.toString() === 'committed', 'committed message missing');
    } finally {
      await ch.deleteQueue(q);
    }
  });
}

async function caseTxRollback() {
  const q = name('q-txr');
  await session(async (conn, ch) => {
    await ch.assertQueue(q, { durable: false });
    try {
      const tx = await txChannel(conn);
      tx.sendToQueue(q, Buffer.from('rolled-back'));
      await tx.rpc(defs.TxRollback, {}, defs.TxRollbackOk);
      await tx.rpc(defs.TxCommit, {}, defs.TxCommitOk);
      await assertEmpty(ch, q);
    } finally {
      await ch.deleteQueue(q);
    }
  });
}

async function caseBasicGet() {
  const q = name('q-get');
  await session(async (conn, ch) => {
    await ch.assertQueue(q, { durable: false });
    try {
      ch.sendToQueue(q, Buffer.from('g1'));
      ch.sendToQueue(q, Buffer.from('g2'));
      const m = await ch.get(q, { noAck: false });
      check(m, 'basic.get returned empty');
      check(m.content.toString() === 'g1', `body ${m.content.toString()}`);
      check(m.fields.messageCount === 1, `message_count ${m.fields.messageCount}, want 1`);
      check(m.fields.redelivered === false, 'redelivered set on first get');
      ch.ack(m);
    } finally {
      await ch.deleteQueue(q);
    }
  });
}

async function caseGetEmpty() {
  const q = name('q-getempty');
  await session(async (conn, ch) => {
    await ch.assertQueue(q, { durable: false });
    try {
      check((await ch.get(q)) === false, 'basic.get on an empty queue returned a message');
    } finally {
      await ch.deleteQueue(q);
    }
  });
}

async function caseMandatoryReturn() {
  const ex = name('ex-mand');
  await session(async (conn, ch) => {
    await ch.assertExchange(ex, 'direct', { durable: false, autoDelete: false });
    try {
      const returned = new Promise((res) => ch.once('return', res));
      ch.publish(ex, 'nowhere', Buffer.from('bounce'), { mandatory: true });
      const m = await within(WAIT, 'basic.return', returned);
      check(m.fields.replyCode === 312 && m.fields.exchange === ex && m.fields.routingKey === 'nowhere'
        && m.content.toString() === 'bounce', `return ${show(m.fields)} body ${m.content.toString()}`);
    } finally {
      await ch.deleteExchange(ex);
    }
  });
}

async function caseConsumerCancel() {
  const q = name('q-cancel');
  await session(async (conn, ch) => {
    await ch.assertQueue(q, { durable: false });
    let cancelled;
    const got = new Promise((res) => { cancelled = res; });
    // amqplib calls the consumer with null when the server cancels it.
    await ch.consume(q, (m) => { if (m === null) cancelled(); }, { noAck: true });
    const other = await conn.createChannel();
    await other.deleteQueue(q);
    await within(WAIT, 'server basic.cancel', got);
  });
}

// A priority queue delivers higher priorities first, FIFO within one; none counts as 0 and
// above the maximum as the maximum.
async function casePriority() {
  const q = name('q-prio');
  const conn = await connect();
  try {
    const ch = await conn.createConfirmChannel();
    await ch.assertQueue(q, { durable: false, arguments: { 'x-max-priority': 10 } });
    try {
      const sent = [['p1', 1], ['p9a', 9], ['none', undefined], ['p5', 5], ['p200', 200], ['p9b', 9]];
      for (const [body, priority] of sent) {
        ch.sendToQueue(q, Buffer.from(body), priority === undefined ? {} : { priority });
      }
      await within(WAIT, 'publisher confirms', ch.waitForConfirms());
      const got = [];
      for (let i = 0; i < sent.length; i++) {
        const m = await ch.get(q, { noAck: true });
        check(m !== false, `queue emptied early after ${show(got)}`);
        got.push(m.content.toString());
      }
      const want = ['p200', 'p9a', 'p9b', 'p5', 'p1', 'none'];
      check(show(got) === show(want), `order ${show(got)}, want ${show(want)}`);
    } finally {
      await ch.deleteQueue(q);
    }
  } finally {
    await conn.close();
  }
}

// RPC over amq.rabbitmq.reply-to: the request's reply_to is stamped with a generated name, and
// the reply published to it reaches the client's no-ack reply consumer.
async function caseDirectReplyTo() {
  const q = name('q-rpc');
  await session(async (conn, cli) => {
    const srv = await conn.createChannel();
    await srv.assertQueue(q, { durable: false });
    try {
      let gotReply;
      const reply = new Promise((res) => { gotReply = res; });
      await cli.consume('amq.rabbitmq.reply-to', (m) => { if (m) gotReply(m); }, { noAck: true });
      let stamped;
      await srv.consume(q, (m) => {
        if (!m) return;
        stamped = m.properties.replyTo;
        srv.sendToQueue(stamped, Buffer.from('4'), { correlationId: m.properties.correlationId });
      }, { noAck: true });
      cli.sendToQueue(q, Buffer.from('2+2'), { replyTo: 'amq.rabbitmq.reply-to', correlationId: 'c1' });
      const m = await within(WAIT, 'reply', reply);
      check(stamped.startsWith('amq.rabbitmq.reply-to.') && stamped.length > 22,
        `request reply_to ${show(stamped)}, want a generated amq.rabbitmq.reply-to.<token>`);
      check(m.content.toString() === '4' && m.properties.correlationId === 'c1' && m.fields.routingKey === stamped,
        `reply ${show(m.content.toString())} correlationId ${show(m.properties.correlationId)} routingKey ${show(m.fields.routingKey)}`);
    } finally {
      await srv.deleteQueue(q);
    }
  });
}

const CASES = [
  ['connect', caseConnect],
  ['auth-refused', caseAuthRefused],
  ['direct', caseDirect],
  ['fanout', caseFanout],
  ['topic', caseTopic],
  ['headers', caseHeaders],
  ['properties', caseProperties],
  ['large-body', caseLargeBody],
  ['ack-nack-requeue', caseAckNack],
  ['confirms', caseConfirms],
  ['tx-commit', caseTxCommit],
  ['tx-rollback', caseTxRollback],
  ['basic-get', caseBasicGet],
  ['get-empty', caseGetEmpty],
  ['mandatory-return', caseMandatoryReturn],
  ['consumer-cancel-notify', caseConsumerCancel],
  ['priority', casePriority],
  ['direct-reply-to', caseDirectReplyTo],
];

async function main() {
  let failed = 0;
  let connected = true;
  for (const [c, fn] of CASES) {
    if (!connected) {
      // Without a broker every case would wait its full timeout: fail fast.
      failed++;
      console.log(`FAIL ${CLIENT} ${c}: not run, connect failed`);
      continue;
    }
    try {
      await within(CASE_LIMIT, `case ${c}`, fn());
      console.log(`PASS ${CLIENT} ${c}`);
    } catch (e) {
      failed++;
      connected = c !== 'connect';
      const reason = String((e && e.message) || e).replace(/\s+/g, ' ').slice(0, 300);
      console.log(`FAIL ${CLIENT} ${c}: ${reason}`);
      if (process.env.INTEROP_DEBUG) console.error(e);
    }
  }
  // Stray sockets of failed cases must not keep the process alive.
  process.exit(failed ? 1 : 0);
}

main();
