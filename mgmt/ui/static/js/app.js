// Entry point: login, the hash router and the 5-second refresh loop. Each page module exports
// mount(container, params, ctx) returning {refresh()}; the page builds its layout once and
// refresh() only updates values, so nothing jumps while the data changes.

import { get, setCredentials, clearCredentials, hasCredentials, ApiError } from './api.js';
import { fill, setText } from './dom.js';
import * as overview from './pages/overview.js';
import * as connections from './pages/connections.js';
import * as channels from './pages/channels.js';
import * as exchanges from './pages/exchanges.js';
import * as queues from './pages/queues.js';
import * as admin from './pages/admin.js';

/** How often the visible page is refreshed; RabbitMQ samples its rates every 5 s too. */
const REFRESH_MS = 5000;

const $ = (id) => document.getElementById(id);
let ctx = null;
let page = null;
let timer = null;
let generation = 0;

// Routes: #/section[/vhost/name], with an optional ?query for list state.
function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [p, q] = raw.split('?');
  const parts = p ? p.split('/').map(decodeURIComponent) : [];
  return { section: parts[0] || 'overview', args: parts.slice(1), query: new URLSearchParams(q || '') };
}

const pages = { overview, connections, channels, exchanges, queues, admin };

function isManager(tags) {
  return tags.some((t) => ['administrator', 'monitoring', 'policymaker', 'management'].includes(t));
}

async function login(user, password) {
  setCredentials(user, password);
  const who = await get('/api/whoami');
  const tags = Array.isArray(who.tags) ? who.tags : String(who.tags || '').split(',').filter(Boolean);
  if (!isManager(tags)) {
    clearCredentials();
    throw new Error('This user has no management tag (administrator, monitoring, policymaker or management).');
  }
  return { name: who.name, tags };
}

function showLogin(message) {
  clearTimeout(timer);
  generation++;
  ctx = null;
  page = null;
  $('top').hidden = true;
  fill($('view'));
  $('login').hidden = false;
  setText($('login-error'), message || '');
  document.title = 'Log in · Warren management';
  $('login-user').focus();
}

function startApp(user) {
  ctx = {
    user,
    /** Reports whether the user has one of the tags. */
    has: (...tags) => tags.some((t) => user.tags.includes(t)),
    /** Called by pages on a 401: the credentials stopped working (user removed by a reload). */
    unauthorised: () => { clearCredentials(); showLogin('Your session is no longer valid; please log in again.'); },
  };
  ctx.isAdmin = ctx.has('administrator');
  $('login').hidden = true;
  $('top').hidden = false;
  setText($('who-name'), user.name);
  setText($('who-tags'), user.tags.join(', ') || 'no tags');
  route();
}

function route() {
  if (!ctx) return;
  clearTimeout(timer);
  const gen = ++generation;
  const r = parseRoute();
  const mod = pages[r.section] || overview;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.section === r.section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const view = $('view');
  fill(view);
  page = mod.mount(view, r, ctx);
  document.title = `${page.title || r.section} · Warren management`;
  const tick = async () => {
    if (gen !== generation) return;
    try {
      await page.refresh();
      setText($('refreshed'), `updated ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) { ctx.unauthorised(); return; }
      setText($('refreshed'), `refresh failed: ${e.message}`);
    }
    if (gen === generation) timer = setTimeout(tick, REFRESH_MS);
  };
  tick();
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const btn = $('login-submit');
  btn.disabled = true;
  try {
    const user = await login($('login-user').value, $('login-pass').value);
    $('login-pass').value = '';
    startApp(user);
  } catch (e) {
    clearCredentials();
    const msg = e instanceof ApiError && e.status === 401
      ? `Login failed: ${(e.body && e.body.reason) || 'wrong user name or password'}`
      : e.message;
    setText($('login-error'), msg);
    // A failed password is not kept for the next try.
    $('login-pass').value = '';
    $('login-pass').focus();
  } finally {
    btn.disabled = false;
  }
});

$('logout').addEventListener('click', () => { clearCredentials(); showLogin(''); });
window.addEventListener('hashchange', () => { route(); $('main').focus({ preventScroll: true }); });

// Start: reuse this tab's credentials if they still work.
(async () => {
  if (!hasCredentials()) return showLogin('');
  try {
    const who = await get('/api/whoami');
    startApp({ name: who.name, tags: Array.isArray(who.tags) ? who.tags : String(who.tags || '').split(',').filter(Boolean) });
  } catch (e) {
    clearCredentials();
    showLogin(e instanceof ApiError && e.status === 401 ? '' : `Cannot reach the management API: ${e.message}`);
  }
})();

