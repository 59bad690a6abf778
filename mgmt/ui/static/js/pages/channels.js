// Channels: every open channel the user may see, with its mode, prefetch and message rates.

import { h, num, rate, at } from '../dom.js';
import { path } from '../api.js';
import { ListView } from '../table.js';
import { stateFromQuery, keepStateInURL } from './common.js';

/** Builds the channels page. */
export function mount(view, route) {
  const list = new ListView({
    label: 'Channels',
    endpoint: (vhost) => (vhost ? path('vhosts', vhost, 'channels') : '/api/channels'),
    rowKey: (c) => c.name,
    state: stateFromQuery(route.query),
    onState: keepStateInURL('channels'),
    columns: [
      { label: 'Channel', key: 'name', width: '24%', text: (c) => c.name },
      { label: 'Vhost', key: 'vhost', text: (c) => c.vhost },
      { label: 'User', key: 'user', text: (c) => c.user },
      { label: 'Mode', key: null, text: (c) => [c.confirm ? 'confirm' : '', c.transactional ? 'tx' : ''].filter(Boolean).join(' ') },
      { label: 'State', key: 'state', text: (c) => c.state || '' },
      { label: 'Consumers', key: 'consumer_count', num: true, text: (c) => num(c.consumer_count) },
      { label: 'Prefetch', key: 'prefetch_count', num: true, text: (c) => num(c.prefetch_count) },
      { label: 'Unacked', key: 'messages_unacknowledged', num: true, text: (c) => num(c.messages_unacknowledged) },
      { label: 'Publish', key: 'message_stats.publish_details.rate', num: true, text: (c) => rate(at(c, 'message_stats.publish_details.rate') ?? 0) },
      { label: 'Deliver', key: 'message_stats.deliver_get_details.rate', num: true, text: (c) => rate(at(c, 'message_stats.deliver_get_details.rate') ?? 0) },
      { label: 'Ack', key: 'message_stats.ack_details.rate', num: true, text: (c) => rate(at(c, 'message_stats.ack_details.rate') ?? 0) },
    ],
  });
  view.append(h('h1', null, 'Channels'), list.el);
  return { title: 'Channels', refresh: () => list.refresh() };
}
