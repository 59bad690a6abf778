// Connections: every client connection the user may see, with rates, and a Close button that
// asks for a reason (sent as X-Reason; the client receives it in connection.close 320).

import { h, num, rate, at, toast, confirmAction } from '../dom.js';
import { call, path } from '../api.js';
import { ListView } from '../table.js';
import { stateFromQuery, keepStateInURL } from './common.js';

/** Builds the connections page. */
export function mount(view, route) {
  let list;
  const close = async (c) => {
    const reason = await confirmAction({
      title: 'Close connection', text: `Close ${c.name}${c.user_provided_name ? ` (${c.user_provided_name})` : ''}? The client is told the reason.`,
      ok: 'Close connection', withReason: true, reason: 'Closed via management UI',
    });
    if (reason === null) return;
    try {
      await call(path('connections', c.name), { method: 'DELETE', headers: reason ? { 'X-Reason': reason } : {} });
      toast(`Connection ${c.name} closed.`);
      list.refresh();
    } catch (e) { toast(`Could not close ${c.name}: ${e.message}`, true); }
  };
  list = new ListView({
    label: 'Connections',
    endpoint: (vhost) => (vhost ? path('vhosts', vhost, 'connections') : '/api/connections'),
    rowKey: (c) => c.name,
    state: stateFromQuery(route.query),
    onState: keepStateInURL('connections'),
    columns: [
      { label: 'Name', key: 'name', width: '20%', text: (c) => c.name },
      { label: 'Client name', key: 'user_provided_name', width: '14%', text: (c) => c.user_provided_name || at(c, 'client_properties.connection_name') || '' },
      { label: 'Vhost', key: 'vhost', text: (c) => c.vhost },
      { label: 'User', key: 'user', text: (c) => c.user },
      { label: 'State', key: 'state', text: (c) => c.state || '' },
      { label: 'Client', key: 'client_properties.product', text: (c) => [at(c, 'client_properties.product'), at(c, 'client_properties.version')].filter(Boolean).join(' ') },
      { label: 'TLS', key: 'ssl', text: (c) => (c.ssl ? 'yes' : 'no') },
      { label: 'Channels', key: 'channels', num: true, text: (c) => num(c.channels) },
      { label: 'From client', key: 'recv_oct_details.rate', num: true, text: (c) => `${rate(at(c, 'recv_oct_details.rate'))}`.replace('/s', ' B/s') },
      { label: 'To client', key: 'send_oct_details.rate', num: true, text: (c) => `${rate(at(c, 'send_oct_details.rate'))}`.replace('/s', ' B/s') },
      { label: 'Actions', key: null, cell: (c) => h('button', { type: 'button', class: 'danger small', 'data-action': 'close', 'aria-label': `Close connection ${c.name}`, onclick: () => close(c) }, 'Close…') },
    ],
  });
  view.append(h('h1', null, 'Connections'), list.el);
  return { title: 'Connections', refresh: () => list.refresh() };
}
