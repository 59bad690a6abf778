// Queues: the server-side paged list, and a queue's own page with its charts, consumers,
// bindings, arguments and effective policy; get messages, purge, delete and bind.

import { h, fill, setText, num, rate, bytes, at, dl, toast, confirmAction, showValue, parseArgs } from '../dom.js';
import { call, get, path } from '../api.js';
import { ListView, smallTable } from '../table.js';
import { Chart, addSample, history } from '../chart.js';
import { stateFromQuery, keepStateInURL, features, objectLink } from './common.js';

/** Builds the queue list, or a queue's page for #/queues/<vhost>/<name>. */
export function mount(view, route, ctx) {
  if (route.args.length >= 2) return queuePage(view, route.args[0], route.args.slice(1).join('/'), ctx);
  const list = new ListView({
    label: 'Queues',
    endpoint: (vhost) => (vhost ? path('queues', vhost) : '/api/queues'),
    rowKey: (q) => `${q.vhost}\u0000${q.name}`,
    state: stateFromQuery(route.query),
    onState: keepStateInURL('queues'),
    columns: [
      { label: 'Vhost', key: 'vhost', width: '7%', text: (q) => q.vhost },
      { label: 'Name', key: 'name', width: '22%', cell: (q) => objectLink('queues', q.vhost, q.name) },
      { label: 'Features', key: null, text: (q) => features(q) },
      { label: 'Policy', key: 'policy', text: (q) => q.policy || '' },
      { label: 'State', key: 'state', text: (q) => q.state || '' },
      { label: 'Ready', key: 'messages_ready', num: true, text: (q) => num(q.messages_ready) },
      { label: 'Unacked', key: 'messages_unacknowledged', num: true, text: (q) => num(q.messages_unacknowledged) },
      { label: 'Total', key: 'messages', num: true, text: (q) => num(q.messages) },
      { label: 'Consumers', key: 'consumers', num: true, text: (q) => num(q.consumers) },
      { label: 'Incoming', key: 'message_stats.publish_details.rate', num: true, text: (q) => rate(at(q, 'message_stats.publish_details.rate') ?? 0) },
      { label: 'Deliver/get', key: 'message_stats.deliver_get_details.rate', num: true, text: (q) => rate(at(q, 'message_stats.deliver_get_details.rate') ?? 0) },
      { label: 'Ack', key: 'message_stats.ack_details.rate', num: true, text: (q) => rate(at(q, 'message_stats.ack_details.rate') ?? 0) },
    ],
  });
  view.append(h('h1', null, 'Queues'), list.el, declareForm(list));
  return { title: 'Queues', refresh: () => list.refresh() };
}

function declareForm(list) {
  const vhost = h('input', { name: 'vhost', value: '/', required: true });
  const name = h('input', { name: 'name', required: true, size: 30 });
  const durable = h('select', { name: 'durable' }, h('option', { value: 'true' }, 'Durable'), h('option', { value: 'false' }, 'Transient'));
  const autoDelete = h('input', { type: 'checkbox', name: 'auto_delete' });
  const args = h('textarea', { name: 'arguments', rows: 2, cols: 40, placeholder: 'x-max-length=1000\nx-message-ttl=60000' });
  const form = h('form', { class: 'form', id: 'declare-queue' },
    h('fieldset', null, h('legend', null, 'Declare a queue'),
      h('label', null, 'Vhost ', vhost), h('label', null, 'Name ', name), h('label', null, 'Durability ', durable),
      h('label', { class: 'check' }, autoDelete, ' Auto-delete'),
      h('label', null, 'Arguments (key=value per line, or JSON) ', args),
      h('button', { type: 'submit' }, 'Declare queue')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await call(path('queues', vhost.value, name.value), { method: 'PUT', body: { durable: durable.value === 'true', auto_delete: autoDelete.checked, arguments: parseArgs(args.value) } });
      toast(`Queue ${name.value} declared.`);
      name.value = '';
      list.refresh();
    } catch (e) { toast(`Declare failed: ${e.message}`, true); }
  });
  return form;
}

const RATE_SERIES = [
  { key: 'publish', label: 'Published' },
  { key: 'deliver_get', label: 'Delivered' },
  { key: 'ack', label: 'Acknowledged' },
  { key: 'redeliver', label: 'Redelivered' },
];

function queuePage(view, vhost, name, ctx) {
  const qpath = path('queues', vhost, name);
  const histKey = `queue ${vhost}\u0000${name}`;
  const fields = {};
  const field = (k) => (fields[k] = h('span', { 'data-field': k }, '–'));
  const details = h('div', { id: 'queue-details' });
  const args = h('div', { id: 'queue-arguments' });
  const policy = h('div', { id: 'queue-policy' });
  const consumers = h('div', { id: 'queue-consumers' });
  const bindings = h('div', { id: 'queue-bindings' });
  const status = h('p', { class: 'list-status', role: 'alert' });
  const rates = new Chart({ title: 'Message rates', series: RATE_SERIES, kind: 'rate', id: 'chart-queue-rates' });
  const depth = new Chart({ title: 'Queued messages', series: [{ key: 'messages_ready', label: 'Ready' }, { key: 'messages_unacknowledged', label: 'Unacked' }], kind: 'count', id: 'chart-queue-depth' });

  const purge = h('button', { type: 'button', id: 'purge', class: 'danger' }, 'Purge…');
  const del = h('button', { type: 'button', id: 'delete-queue', class: 'danger' }, 'Delete…');
  let page;
  purge.addEventListener('click', async () => {
    if (await confirmAction({ title: 'Purge queue', text: `Remove all ready messages from "${name}"? Unacknowledged messages stay.`, ok: 'Purge' }) === null) return;
    try {
      await call(`${qpath}/contents`, { method: 'DELETE' });
      toast(`Queue ${name} purged.`);
      page.refresh();
    } catch (e) { toast(`Purge failed: ${e.message}`, true); }
  });
  del.addEventListener('click', async () => {
    if (await confirmAction({ title: 'Delete queue', text: `Delete "${name}" and all its messages?`, ok: 'Delete' }) === null) return;
    try {
      await call(qpath, { method: 'DELETE' });
      toast(`Queue ${name} deleted.`);
      location.hash = '#/queues';
    } catch (e) { toast(`Delete failed: ${e.message}`, true); }
  });

  view.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/queues' }, 'Queues'), ` › ${vhost} › `),
    h('h1', null, 'Queue ', h('span', { class: 'objname' }, name)),
    status,
    h('section', { class: 'tiles', 'aria-label': 'Depth' },
      ...[['messages', 'Total'], ['messages_ready', 'Ready'], ['messages_unacknowledged', 'Unacked'], ['consumers', 'Consumers']]
        .map(([k, l]) => h('div', { class: 'tile' }, h('span', { class: 'tile-label' }, l), h('span', { class: 'tile-value' }, field(k)))),
      h('span', { class: 'tile-gap' }), h('span', { class: 'actions' }, purge, ' ', del)),
    h('div', { class: 'charts' }, rates.el, depth.el),
    h('div', { class: 'columns' },
      h('section', null, h('h2', null, 'Details'), details),
      h('section', null, h('h2', null, 'Arguments'), args, h('h2', null, 'Effective policy'), policy)),
    h('section', null, h('h2', null, 'Consumers'), consumers),
    h('section', null, h('h2', null, 'Bindings'), bindings, bindForm(vhost, name, () => page.refresh())),
    getForm(qpath, name));

  page = {
    title: `Queue ${name}`,
    async refresh() {
      let q;
      try {
        [q] = await Promise.all([get(qpath)]);
      } catch (e) {
        if (e.status === 404) { setText(status, `Queue "${name}" does not exist (any more) in vhost "${vhost}".`); return; }
        throw e;
      }
      setText(status, '');
      for (const k of Object.keys(fields)) setText(fields[k], num(q[k]));
      const ms = q.message_stats || {};
      const sample = {};
      for (const s of RATE_SERIES) sample[s.key] = at(ms, `${s.key}_details.rate`) || 0;
      addSample(histKey + ' rates', sample);
      rates.update(history(histKey + ' rates'));
      addSample(histKey + ' depth', { messages_ready: q.messages_ready || 0, messages_unacknowledged: q.messages_unacknowledged || 0 });
      depth.update(history(histKey + ' depth'));

      const pairs = [
        ['Vhost', q.vhost], ['Type', q.type || 'classic'], ['State', q.state || '–'],
        ['Durable', String(!!q.durable)], ['Auto-delete', String(!!q.auto_delete)], ['Exclusive', String(!!q.exclusive)],
        ['Consumer utilisation', typeof q.consumer_utilisation === 'number' ? `${Math.round(q.consumer_utilisation * 100)}%` : '–'],
        ['Memory', bytes(q.memory)], ['Node', q.node || '–'], ['Policy', q.policy || 'none'],
      ];
      const sig = JSON.stringify(pairs);
      if (details.dataset.sig !== sig) { details.dataset.sig = sig; fill(details, dl(pairs)); }
      smallTable(args, 'Arguments', [{ label: 'Argument', render: (r) => r[0] }, { label: 'Value', render: (r) => showValue(r[1]) }], Object.entries(q.arguments || {}));
      smallTable(policy, 'Effective policy', [{ label: 'Key', render: (r) => r[0] }, { label: 'Value', render: (r) => showValue(r[1]) }], Object.entries(q.effective_policy_definition || {}));
      smallTable(consumers, 'Consumers', [
        { label: 'Channel', render: (c) => at(c, 'channel_details.name') || '' },
        { label: 'Consumer tag', render: (c) => c.consumer_tag },
        { label: 'Ack required', render: (c) => String(!!c.ack_required) },
        { label: 'Exclusive', render: (c) => String(!!c.exclusive) },
        { label: 'Prefetch', render: (c) => num(c.prefetch_count), num: true },
        { label: 'Active', render: (c) => (c.active === undefined ? '' : String(c.active)) },
        { label: 'Arguments', render: (c) => showValue(c.arguments) },
      ], q.consumer_details || []);
      const bs = await get(`${qpath}/bindings`);
      smallTable(bindings, 'Bindings', [
        { label: 'From exchange', render: (b) => (b.source === '' ? '(default exchange)' : objectLink('exchanges', b.vhost, b.source)) },
        { label: 'Routing key', render: (b) => b.routing_key },
        { label: 'Arguments', render: (b) => showValue(b.arguments) },
        { label: 'Actions', render: (b) => (b.source === '' ? '' : unbindButton(b, () => page.refresh())) },
      ], bs);
    },
  };
  return page;
}

/** A button that deletes one binding by its properties key. */
export function unbindButton(b, done) {
  return h('button', {
    type: 'button', class: 'small', 'aria-label': `Unbind ${b.source} → ${b.destination} (${b.routing_key})`,
    onclick: async () => {
      const d = b.destination_type === 'queue' ? 'q' : 'e';
      try {
        await call(path('bindings', b.vhost, 'e', b.source, d, b.destination, b.properties_key), { method: 'DELETE' });
        toast('Binding removed.');
        done();
      } catch (e) { toast(`Unbind failed: ${e.message}`, true); }
    },
  }, 'Unbind');
}

function bindForm(vhost, queue, done) {
  const exchange = h('input', { name: 'exchange', required: true });
  const key = h('input', { name: 'routing_key' });
  const args = h('input', { name: 'arguments', size: 30, placeholder: 'x-match=all' });
  const form = h('form', { class: 'form inline', id: 'bind-queue' },
    h('fieldset', null, h('legend', null, 'Bind this queue to an exchange'),
      h('label', null, 'Exchange ', exchange), h('label', null, 'Routing key ', key),
      h('label', null, 'Arguments ', args), h('button', { type: 'submit' }, 'Bind')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await call(path('bindings', vhost, 'e', exchange.value, 'q', queue), { method: 'POST', body: { routing_key: key.value, arguments: parseArgs(args.value.replace(/,\s*/g, '\n')) } });
      toast('Bound.');
      done();
    } catch (e) { toast(`Bind failed: ${e.message}`, true); }
  });
  return form;
}

const ACKMODES = [
  ['ack_requeue_true', 'Nack, requeue (message stays in the queue)'],
  ['ack_requeue_false', 'Ack (message removed)'],
  ['reject_requeue_true', 'Reject, requeue'],
  ['reject_requeue_false', 'Reject, no requeue (dead-letters if configured)'],
];

function getForm(qpath, name) {
  const count = h('input', { type: 'number', name: 'count', min: 1, max: 1000, value: 1, size: 4 });
  const ackmode = h('select', { name: 'ackmode', id: 'get-ackmode' }, ACKMODES.map(([v, l]) => h('option', { value: v }, l)));
  const encoding = h('select', { name: 'encoding' }, h('option', { value: 'auto' }, 'Auto: string, or base64 if binary'), h('option', { value: 'base64' }, 'Always base64'));
  const truncate = h('input', { type: 'number', name: 'truncate', min: 1, value: 50000, size: 7 });
  const out = h('div', { id: 'get-results', 'aria-live': 'polite' });
  const form = h('form', { class: 'form', id: 'get-messages' },
    h('fieldset', null, h('legend', null, 'Get messages'),
      h('label', null, 'Ack mode ', ackmode), h('label', null, 'Encoding ', encoding),
      h('label', null, 'Messages ', count), h('label', null, 'Truncate body at (bytes) ', truncate),
      h('button', { type: 'submit', id: 'get-submit' }, 'Get messages')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const msgs = await call(`${qpath}/get`, { method: 'POST', body: { count: Number(count.value), ackmode: ackmode.value, encoding: encoding.value, truncate: Number(truncate.value) } });
      fill(out, msgs.length === 0 ? h('p', { class: 'muted' }, `Queue "${name}" is empty.`) : msgs.map(showMessage));
    } catch (e) { fill(out, h('p', { class: 'error' }, `Get failed: ${e.message}`)); }
    // The answer is below the form, often below the fold: bring it into view.
    out.scrollIntoView({ block: 'start' });
  });
  return h('section', null, h('h2', null, 'Get messages'),
    h('p', { class: 'muted' }, 'Getting a message is destructive unless it is requeued; a requeued message is marked redelivered.'),
    form, out);
}

function showMessage(m, i) {
  const props = { ...(m.properties || {}) };
  const headers = props.headers || {};
  delete props.headers;
  return h('article', { class: 'message', 'data-index': i },
    h('h3', null, `Message ${i + 1}`),
    dl([
      ['Exchange', m.exchange === '' ? '(default)' : m.exchange], ['Routing key', m.routing_key],
      ['Redelivered', String(!!m.redelivered)], ['Remaining in queue', num(m.message_count)],
      ['Payload', `${num(m.payload_bytes)} bytes, encoding: ${m.payload_encoding}`],
    ]),
    h('h4', null, 'Properties'),
    Object.keys(props).length ? dl(Object.entries(props).map(([k, v]) => [k, showValue(v)])) : h('p', { class: 'muted' }, 'None.'),
    h('h4', null, 'Headers'),
    Object.keys(headers).length ? dl(Object.entries(headers).map(([k, v]) => [k, showValue(v)])) : h('p', { class: 'muted' }, 'None.'),
    h('h4', null, 'Payload', m.payload_encoding === 'base64' ? ' (base64: the body is binary)' : ''),
    h('pre', { class: 'payload', 'data-encoding': m.payload_encoding, tabindex: 0 }, m.payload));
}
