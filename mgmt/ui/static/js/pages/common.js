// Helpers shared by the list pages: list state kept in the URL, and feature badges.

import { h } from '../dom.js';

/** Reads a ListView state from the route's query (?name=..&sort=..). */
export function stateFromQuery(q) {
  const s = {};
  if (q.has('name')) s.name = q.get('name');
  if (q.has('regex')) s.regex = q.get('regex') === '1';
  if (q.has('sort')) s.sort = q.get('sort');
  if (q.has('reverse')) s.reverse = q.get('reverse') === '1';
  if (q.has('page')) s.page = Math.max(1, Number(q.get('page')) || 1);
  if (q.has('size')) s.pageSize = Number(q.get('size')) || 100;
  if (q.has('vhost')) s.vhost = q.get('vhost');
  return s;
}

/** Writes a ListView state into the URL without a navigation (bookmarkable, Back-safe). */
export function keepStateInURL(section) {
  return (s) => {
    const q = new URLSearchParams();
    if (s.name) q.set('name', s.name);
    if (s.regex) q.set('regex', '1');
    if (s.sort) q.set('sort', s.sort);
    if (s.reverse) q.set('reverse', '1');
    if (s.page > 1) q.set('page', String(s.page));
    if (s.pageSize !== 100) q.set('size', String(s.pageSize));
    if (s.vhost) q.set('vhost', s.vhost);
    const qs = q.toString();
    history.replaceState(null, '', `#/${section}${qs ? '?' + qs : ''}`);
  };
}

/** Short feature flags, as RabbitMQ's UI shows them: D durable, AD auto-delete, Excl exclusive,
 * I internal, Args for arguments (listed in full on the object's page). */
export function features(o) {
  const f = [];
  if (o.durable) f.push(['D', 'durable']);
  if (o.auto_delete) f.push(['AD', 'auto-delete']);
  if (o.exclusive) f.push(['Excl', 'exclusive']);
  if (o.internal) f.push(['I', 'internal']);
  if (o.arguments && Object.keys(o.arguments).length) f.push(['Args', Object.keys(o.arguments).join(', ')]);
  return f.map(([t]) => t).join(' ');
}

/** Link to an object's own page: #/queues/<vhost>/<name>. */
export function objectLink(section, vhost, name, text) {
  return h('a', { href: `#/${section}/${encodeURIComponent(vhost)}/${encodeURIComponent(name)}` }, text ?? name);
}
