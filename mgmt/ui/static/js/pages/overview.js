// Overview: object totals, queued messages, message-rate and queue-depth charts over the last
// 10 minutes (sampled here every 5 s from the API's *_details.rate), alarms, node, listeners.

import { h, fill, setText, num, bytes, duration, dl } from '../dom.js';
import { get, ApiError } from '../api.js';
import { Chart, addSample, history } from '../chart.js';
import { smallTable } from '../table.js';

/** The rate series shown on the overview, as RabbitMQ's overview names them. */
export const RATE_SERIES = [
  { key: 'publish', label: 'Published' },
  { key: 'deliver_get', label: 'Delivered' },
  { key: 'ack', label: 'Acknowledged' },
  { key: 'redeliver', label: 'Redelivered' },
  { key: 'confirm', label: 'Confirmed' },
];

const DEPTH_SERIES = [
  { key: 'messages_ready', label: 'Ready' },
  { key: 'messages_unacknowledged', label: 'Unacked' },
];

const TOTALS = [
  ['connections', 'Connections'], ['channels', 'Channels'], ['exchanges', 'Exchanges'],
  ['queues', 'Queues'], ['consumers', 'Consumers'],
];
const QUEUED = [['messages_ready', 'Ready'], ['messages_unacknowledged', 'Unacked'], ['messages', 'Total']];

function tile(label, field) {
  const v = h('span', { class: 'tile-value', 'data-field': field }, '–');
  return [h('div', { class: 'tile' }, h('span', { class: 'tile-label' }, label), v), v];
}

/** Builds the overview page. */
export function mount(view, route, ctx) {
  const totals = TOTALS.map(([k, l]) => tile(l, k));
  const queued = QUEUED.map(([k, l]) => tile(l, k));
  const rates = new Chart({ title: 'Message rates', series: RATE_SERIES, kind: 'rate', id: 'chart-rates' });
  const depth = new Chart({ title: 'Queued messages', series: DEPTH_SERIES, kind: 'count', id: 'chart-queued' });
  const alarms = h('div', { id: 'alarms', class: 'alarms', role: 'status' }, 'Checking alarms…');
  const node = h('div', { id: 'node' });
  const listeners = h('div', { id: 'listeners' });

  view.append(h('h1', null, 'Overview'),
    h('section', { 'aria-label': 'Totals', class: 'tiles' }, totals.map((t) => t[0]), h('span', { class: 'tile-gap' }), queued.map((t) => t[0])),
    alarms,
    h('div', { class: 'charts' }, rates.el, depth.el),
    h('div', { class: 'columns' },
      h('section', null, h('h2', null, 'Node'), node),
      h('section', null, h('h2', null, 'Listeners'), listeners)));

  return {
    title: 'Overview',
    async refresh() {
      const [ov, nodes, alarm] = await Promise.all([
        get('/api/overview'),
        // /api/nodes is for monitoring and administrator users only; others see no node details.
        get('/api/nodes').catch((e) => { if (e.status === 401 && !ctx.has('administrator', 'monitoring')) return []; throw e; }),
        get('/api/health/checks/alarms').then((b) => b, (e) => {
          if (e instanceof ApiError && e.status === 503) return e.body;
          return { status: 'unknown', reason: e.message };
        }),
      ]);
      const ot = ov.object_totals || {};
      const qt = ov.queue_totals || {};
      TOTALS.forEach(([k], i) => setText(totals[i][1], num(ot[k])));
      QUEUED.forEach(([k], i) => setText(queued[i][1], num(qt[k])));

      const ms = ov.message_stats || {};
      const sample = {};
      for (const s of RATE_SERIES) sample[s.key] = (ms[`${s.key}_details`] || {}).rate || 0;
      addSample('overview.rates', sample);
      rates.update(history('overview.rates'));
      addSample('overview.queued', { messages_ready: qt.messages_ready || 0, messages_unacknowledged: qt.messages_unacknowledged || 0 });
      depth.update(history('overview.queued'));

      const failed = alarm && alarm.status === 'failed';
      alarms.classList.toggle('bad', !!failed);
      alarms.dataset.status = alarm ? alarm.status : 'unknown';
      const alarmText = failed
        ? `Alarm: ${alarm.reason || ''} ${(alarm.alarms || []).map((a) => `${a.resource} on ${a.node}`).join(', ')}`.trim()
        : alarm && alarm.status === 'ok' ? 'No alarms: publishers are not blocked.' : `Alarm check: ${alarm && alarm.reason}`;
      setText(alarms, alarmText);

      const n = nodes[0];
      const pairs = [
        ['Name', ov.node || (n && n.name) || '–'],
        ['Version', `${ov.product_name || 'RabbitMQ'} ${ov.product_version || ov.rabbitmq_version || ''}`],
        ['Management API', ov.management_version || '–'],
        ['Runtime', ov.erlang_version || '–'],
      ];
      if (n) {
        pairs.push(['Uptime', duration(n.uptime)],
          ['Memory', `${bytes(n.mem_used)} of ${bytes(n.mem_limit)}${n.mem_alarm ? ' (ALARM)' : ''}`],
          ['Disk free', `${bytes(n.disk_free)} (limit ${bytes(n.disk_free_limit)})${n.disk_free_alarm ? ' (ALARM)' : ''}`],
          ['File descriptors', n.fd_total ? `${num(n.fd_used)} of ${num(n.fd_total)}` : '–']);
      }
      const sig = JSON.stringify(pairs);
      if (node.dataset.sig !== sig) { node.dataset.sig = sig; fill(node, dl(pairs)); }
      smallTable(listeners, 'Listeners', [
        { label: 'Protocol', render: (l) => l.protocol },
        { label: 'Address', render: (l) => l.ip_address },
        { label: 'Port', render: (l) => String(l.port), num: true },
      ], ov.listeners || []);
    },
  };
}
