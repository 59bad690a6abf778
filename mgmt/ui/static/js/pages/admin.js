// Admin: users, vhosts, permissions, policies and limits. In Warren these come from
// config.yaml (the API refuses to change them), so this page is read-only and every column
// names the config.yaml key it is read from; a few runtime columns are marked as such.

import { h, num, showValue } from '../dom.js';
import { get, ApiError } from '../api.js';
import { smallTable } from '../table.js';

function keyed(label, key) {
  return [label, h('br'), h('code', { class: 'cfgkey' }, key)];
}

// Each section: which tags may read it (RabbitMQ's rules), its endpoint and its columns.
const SECTIONS = [
  {
    id: 'users', title: 'Users', key: 'users', tags: ['administrator'], endpoint: '/api/users',
    columns: [
      { label: keyed('Name', 'users[].name'), render: (u) => u.name },
      { label: keyed('Tags', 'users[].tags'), render: (u) => (Array.isArray(u.tags) ? u.tags.join(', ') : u.tags || '') },
      { label: keyed('Password', 'users[].password / password_hash'), render: (u) => (u.password_hash ? 'set (hash hidden)' : 'none: EXTERNAL only') },
      { label: keyed('Limits', 'users[].limits'), render: (u) => showValue(u.limits && Object.keys(u.limits).length ? u.limits : '') },
    ],
  },
  {
    id: 'vhosts', title: 'Virtual hosts', key: 'vhosts', tags: null, endpoint: '/api/vhosts',
    columns: [
      { label: keyed('Name', 'vhosts[].name'), render: (v) => v.name },
      { label: keyed('Description', 'vhosts[].description'), render: (v) => v.description || '' },
      { label: ['Messages', h('br'), h('span', { class: 'muted' }, 'runtime')], num: true, render: (v) => num(v.messages) },
    ],
  },
  {
    id: 'permissions', title: 'Permissions', key: 'permissions', tags: ['administrator'], endpoint: '/api/permissions',
    columns: [
      { label: keyed('User', 'permissions[].user'), render: (p) => p.user },
      { label: keyed('Vhost', 'permissions[].vhost'), render: (p) => p.vhost },
      { label: keyed('Configure', 'permissions[].configure'), render: (p) => h('code', null, p.configure) },
      { label: keyed('Write', 'permissions[].write'), render: (p) => h('code', null, p.write) },
      { label: keyed('Read', 'permissions[].read'), render: (p) => h('code', null, p.read) },
    ],
  },
  {
    id: 'policies', title: 'Policies', key: 'policies', tags: ['administrator', 'policymaker'], endpoint: '/api/policies',
    columns: [
      { label: keyed('Vhost', 'policies[].vhost'), render: (p) => p.vhost },
      { label: keyed('Name', 'policies[].name'), render: (p) => p.name },
      { label: keyed('Pattern', 'policies[].pattern'), render: (p) => h('code', null, p.pattern) },
      { label: keyed('Apply to', 'policies[].apply-to'), render: (p) => p['apply-to'] },
      { label: keyed('Definition', 'policies[].definition'), render: (p) => showValue(p.definition) },
      { label: keyed('Priority', 'policies[].priority'), num: true, render: (p) => num(p.priority) },
    ],
  },
  {
    id: 'vhost-limits', title: 'Virtual host limits', key: 'vhosts[].limits', tags: ['administrator', 'policymaker'], endpoint: '/api/vhost-limits',
    columns: [
      { label: keyed('Vhost', 'vhosts[].name'), render: (l) => l.vhost },
      { label: keyed('Limits', 'vhosts[].limits'), render: (l) => showValue(l.value) },
    ],
  },
  {
    id: 'user-limits', title: 'User limits', key: 'users[].limits', tags: ['administrator'], endpoint: '/api/user-limits',
    columns: [
      { label: keyed('User', 'users[].name'), render: (l) => l.user },
      { label: keyed('Limits', 'users[].limits'), render: (l) => showValue(l.value) },
    ],
  },
];

/** Builds the admin page, showing the sections the user's tags allow. */
export function mount(view, route, ctx) {
  const shown = SECTIONS.filter((s) => !s.tags || ctx.has(...s.tags));
  const bodies = new Map(shown.map((s) => [s.id, h('div', { id: `admin-${s.id}` })]));
  view.append(h('h1', null, 'Admin'),
    h('p', { class: 'note' }, 'Warren is configured by its configuration file: users, virtual hosts, permissions, policies and limits are edited in ',
      h('code', null, 'config.yaml'), ' and applied by a reload (SIGHUP or saving the file). They are read-only here; each column names the key it comes from.'),
    h('nav', { 'aria-label': 'Admin sections', class: 'subnav' }, h('ul', null, shown.map((s) => h('li', null, h('a', { href: `#/admin`, 'data-target': `sec-${s.id}`, onclick: (ev) => { ev.preventDefault(); document.getElementById(`sec-${s.id}`).scrollIntoView(); document.getElementById(`sec-${s.id}`).focus(); } }, s.title))))),
    ...shown.map((s) => h('section', { id: `sec-${s.id}`, tabindex: -1 },
      h('h2', null, s.title, ' ', h('code', { class: 'cfgkey' }, `config.yaml: ${s.key}`)), bodies.get(s.id))));
  return {
    title: 'Admin',
    async refresh() {
      await Promise.all(shown.map(async (s) => {
        let rows;
        try {
          rows = await get(s.endpoint);
        } catch (e) {
          if (e instanceof ApiError && e.status === 401) { bodies.get(s.id).textContent = 'Your tags do not allow reading this.'; return; }
          throw e;
        }
        smallTable(bodies.get(s.id), s.title, s.columns, rows);
      }));
    },
  };
}
