// Exchanges: the list with a declare form, and an exchange's page with its bindings in and
// out, a bind form, a test-publish form and delete.

import { h, fill, setText, rate, at, dl, toast, confirmAction, showValue, parseArgs } from '../dom.js';
import { call, get, path } from '../api.js';
import { ListView, smallTable } from '../table.js';
import { stateFromQuery, keepStateInURL, features, objectLink } from './common.js';
import { unbindButton } from './queues.js';

const TYPES = ['direct', 'fanout', 'topic', 'headers'];
const displayName = (n) => (n === '' ? '(AMQP default)' : n);

/** Builds the exchange list, or an exchange's page for #/exchanges/<vhost>/<name>. */
export function mount(view, route) {
  if (route.args.length >= 2) return exchangePage(view, route.args[0], route.args.slice(1).join('/'));
  const list = new ListView({
    label: 'Exchanges',
    endpoint: (vhost) => (vhost ? path('exchanges', vhost) : '/api/exchanges'),
    rowKey: (x) => `${x.vhost}\u0000${x.name}`,
    state: stateFromQuery(route.query),
    onState: keepStateInURL('exchanges'),
    columns: [
      { label: 'Vhost', key: 'vhost', width: '8%', text: (x) => x.vhost },
      { label: 'Name', key: 'name', width: '30%', cell: (x) => objectLink('exchanges', x.vhost, x.name, displayName(x.name)) },
      { label: 'Type', key: 'type', text: (x) => x.type },
      { label: 'Features', key: null, text: (x) => features(x) },
      { label: 'Policy', key: 'policy', text: (x) => x.policy || '' },
      { label: 'Rate in', key: 'message_stats.publish_in_details.rate', num: true, text: (x) => rate(at(x, 'message_stats.publish_in_details.rate') ?? 0) },
      { label: 'Rate out', key: 'message_stats.publish_out_details.rate', num: true, text: (x) => rate(at(x, 'message_stats.publish_out_details.rate') ?? 0) },
    ],
  });
  view.append(h('h1', null, 'Exchanges'), list.el, declareForm(list));
  return { title: 'Exchanges', refresh: () => list.refresh() };
}

function declareForm(list) {
  const vhost = h('input', { name: 'vhost', value: '/', required: true });
  const name = h('input', { name: 'name', required: true, size: 30 });
  const type = h('select', { name: 'type' }, TYPES.map((t) => h('option', { value: t }, t)));
  const durable = h('select', { name: 'durable' }, h('option', { value: 'true' }, 'Durable'), h('option', { value: 'false' }, 'Transient'));
  const autoDelete = h('input', { type: 'checkbox', name: 'auto_delete' });
  const internal = h('input', { type: 'checkbox', name: 'internal' });
  const args = h('textarea', { name: 'arguments', rows: 2, cols: 40, placeholder: 'alternate-exchange=my-ae' });
  const form = h('form', { class: 'form', id: 'declare-exchange' },
    h('fieldset', null, h('legend', null, 'Declare an exchange'),
      h('label', null, 'Vhost ', vhost), h('label', null, 'Name ', name), h('label', null, 'Type ', type),
      h('label', null, 'Durability ', durable), h('label', { class: 'check' }, autoDelete, ' Auto-delete'),
      h('label', { class: 'check' }, internal, ' Internal'),
      h('label', null, 'Arguments (key=value per line, or JSON) ', args),
      h('button', { type: 'submit' }, 'Declare exchange')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await call(path('exchanges', vhost.value, name.value), {
        method: 'PUT',
        body: { type: type.value, durable: durable.value === 'true', auto_delete: autoDelete.checked, internal: internal.checked, arguments: parseArgs(args.value) },
      });
      toast(`Exchange ${name.value} declared.`);
      name.value = '';
      list.refresh();
    } catch (e) { toast(`Declare failed: ${e.message}`, true); }
  });
  return form;
}

function exchangePage(view, vhost, name) {
  // The API names the default exchange "amq.default" in paths (its real name is "").
  const xpath = path('exchanges', vhost, name || 'amq.default');
  const details = h('div', { id: 'exchange-details' });
  const out = h('div', { id: 'bindings-out' });
  const inb = h('div', { id: 'bindings-in' });
  const status = h('p', { class: 'list-status', role: 'alert' });
  const builtin = name === '' || name.startsWith('amq.');
  let page;
  const del = h('button', { type: 'button', id: 'delete-exchange', class: 'danger', disabled: builtin }, 'Delete…');
  del.addEventListener('click', async () => {
    if (await confirmAction({ title: 'Delete exchange', text: `Delete exchange "${name}" and its bindings?`, ok: 'Delete' }) === null) return;
    try {
      await call(xpath, { method: 'DELETE' });
      toast(`Exchange ${name} deleted.`);
      location.hash = '#/exchanges';
    } catch (e) { toast(`Delete failed: ${e.message}`, true); }
  });

  view.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/exchanges' }, 'Exchanges'), ` › ${vhost} › `),
    h('h1', null, 'Exchange ', h('span', { class: 'objname' }, displayName(name)), ' ', del),
    status,
    h('section', null, h('h2', null, 'Details'), details),
    h('div', { class: 'columns' },
      h('section', null, h('h2', null, 'Bindings from this exchange'), out, name === '' ? null : bindForm(vhost, name, () => page.refresh())),
      h('section', null, h('h2', null, 'Bindings to this exchange'), inb)),
    publishForm(xpath));

  page = {
    title: `Exchange ${displayName(name)}`,
    async refresh() {
      let x;
      try {
        x = await get(xpath);
      } catch (e) {
        if (e.status === 404) { setText(status, `Exchange "${name}" does not exist (any more) in vhost "${vhost}".`); return; }
        throw e;
      }
      setText(status, '');
      const pairs = [
        ['Vhost', x.vhost], ['Type', x.type], ['Durable', String(!!x.durable)], ['Auto-delete', String(!!x.auto_delete)],
        ['Internal', String(!!x.internal)], ['Arguments', showValue(x.arguments) || '{}'], ['Policy', x.policy || 'none'],
        ['Rate in', rate(at(x, 'message_stats.publish_in_details.rate') ?? 0)], ['Rate out', rate(at(x, 'message_stats.publish_out_details.rate') ?? 0)],
      ];
      const sig = JSON.stringify(pairs);
      if (details.dataset.sig !== sig) { details.dataset.sig = sig; fill(details, dl(pairs)); }
      const [src, dst] = name === '' ? [[], []] : await Promise.all([get(`${xpath}/bindings/source`), get(`${xpath}/bindings/destination`)]);
      smallTable(out, 'Bindings from this exchange', [
        { label: 'To', render: (b) => objectLink(b.destination_type === 'queue' ? 'queues' : 'exchanges', b.vhost, b.destination) },
        { label: 'Type', render: (b) => b.destination_type },
        { label: 'Routing key', render: (b) => b.routing_key },
        { label: 'Arguments', render: (b) => showValue(b.arguments) },
        { label: 'Actions', render: (b) => unbindButton(b, () => page.refresh()) },
      ], src);
      smallTable(inb, 'Bindings to this exchange', [
        { label: 'From', render: (b) => objectLink('exchanges', b.vhost, b.source) },
        { label: 'Routing key', render: (b) => b.routing_key },
        { label: 'Arguments', render: (b) => showValue(b.arguments) },
        { label: 'Actions', render: (b) => unbindButton(b, () => page.refresh()) },
      ], dst);
    },
  };
  return page;
}

function bindForm(vhost, exchange, done) {
  const dtype = h('select', { name: 'destination_type' }, h('option', { value: 'q' }, 'queue'), h('option', { value: 'e' }, 'exchange'));
  const dest = h('input', { name: 'destination', required: true });
  const key = h('input', { name: 'routing_key' });
  const args = h('input', { name: 'arguments', size: 24, placeholder: 'x-match=all' });
  const form = h('form', { class: 'form inline', id: 'bind-exchange' },
    h('fieldset', null, h('legend', null, 'Add a binding from this exchange'),
      h('label', null, 'To ', dtype), h('label', null, 'Name ', dest), h('label', null, 'Routing key ', key),
      h('label', null, 'Arguments ', args), h('button', { type: 'submit' }, 'Bind')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await call(path('bindings', vhost, 'e', exchange, dtype.value, dest.value), { method: 'POST', body: { routing_key: key.value, arguments: parseArgs(args.value.replace(/,\s*/g, '\n')) } });
      toast('Bound.');
      done();
    } catch (e) { toast(`Bind failed: ${e.message}`, true); }
  });
  return form;
}

function publishForm(xpath) {
  const key = h('input', { name: 'routing_key', size: 30 });
  const mode = h('select', { name: 'delivery_mode' }, h('option', { value: '1' }, '1 - non-persistent'), h('option', { value: '2' }, '2 - persistent'));
  const headers = h('textarea', { name: 'headers', rows: 2, cols: 30, placeholder: 'key=value per line' });
  const props = h('textarea', { name: 'properties', rows: 2, cols: 30, placeholder: 'content_type=text/plain\ncorrelation_id=42' });
  const payload = h('textarea', { name: 'payload', rows: 4, cols: 60 });
  const enc = h('select', { name: 'payload_encoding' }, h('option', { value: 'string' }, 'string'), h('option', { value: 'base64' }, 'base64'));
  const result = h('p', { id: 'publish-result', role: 'status' });
  const form = h('form', { class: 'form', id: 'publish' },
    h('fieldset', null, h('legend', null, 'Publish a message'),
      h('label', null, 'Routing key ', key), h('label', null, 'Delivery mode ', mode),
      h('label', null, 'Headers ', headers), h('label', null, 'Properties ', props),
      h('label', null, 'Payload ', payload), h('label', null, 'Payload encoding ', enc),
      h('button', { type: 'submit' }, 'Publish message'), result));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const properties = { ...parseArgs(props.value), delivery_mode: Number(mode.value) };
      const hd = parseArgs(headers.value);
      if (Object.keys(hd).length) properties.headers = hd;
      const r = await call(`${xpath}/publish`, { method: 'POST', body: { routing_key: key.value, properties, payload: payload.value, payload_encoding: enc.value } });
      setText(result, r && r.routed ? 'Message published and routed.' : 'Message published, but not routed to any queue.');
    } catch (e) { setText(result, `Publish failed: ${e.message}`); }
  });
  return h('section', null, h('h2', null, 'Publish a test message'), form);
}
