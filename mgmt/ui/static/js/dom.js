// Small DOM and formatting helpers. Everything from the API is inserted as text (never as
// HTML), so a queue named "<img onerror=...>" is just a name.

/**
 * Creates an element: h('a', {href: '#/', class: 'x', onclick: fn}, 'text', child).
 * Attributes whose value is false, null or undefined are left out; on* keys add listeners.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === false || v === null || v === undefined) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Sets an element's text only when it changed (no needless re-layout on refresh). */
export function setText(el, text) {
  const s = String(text);
  if (el.textContent !== s) el.textContent = s;
}

const nf = new Intl.NumberFormat('en-US');

/** Formats a count: 12,345. Missing values are shown as an en dash. */
export function num(n) {
  return typeof n === 'number' ? nf.format(n) : '–';
}

/** Formats a rate in messages (or bytes) per second. */
export function rate(r) {
  if (typeof r !== 'number') return '–';
  if (r === 0) return '0/s';
  if (r < 10) return `${r.toFixed(1)}/s`;
  return `${nf.format(Math.round(r))}/s`;
}

/** Formats a byte count: 1.5 MiB. */
export function bytes(n) {
  if (typeof n !== 'number') return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

/** Formats milliseconds as "3d 4h", "5h 2m", "2m 10s". */
export function duration(ms) {
  if (typeof ms !== 'number') return '–';
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hh = Math.floor(s / 3600); s -= hh * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

/** Reads a dotted path from an object: at(q, 'message_stats.publish_details.rate'). */
export function at(obj, dotted) {
  let v = obj;
  for (const k of dotted.split('.')) {
    if (v === null || v === undefined) return undefined;
    v = v[k];
  }
  return v;
}

/** Shows a short message in the polite live region for a few seconds. */
export function toast(message, isError = false) {
  const t = document.getElementById('toast');
  t.textContent = message;
  t.classList.toggle('error', isError);
  t.classList.add('shown');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove('shown'), isError ? 8000 : 4000);
}

/**
 * Asks for confirmation in a modal <dialog> (keyboard and screen-reader friendly, unlike
 * window.confirm, and scriptable by tests). With withReason the dialog has a reason field.
 * Resolves to null when cancelled, else to the reason ('' without a reason field).
 */
export function confirmAction({ title, text, ok, withReason = false, reason = '' }) {
  const dlg = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = ok;
  const label = document.getElementById('confirm-reason-label');
  const input = document.getElementById('confirm-reason');
  label.hidden = !withReason;
  input.value = reason;
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => {
      resolve(dlg.returnValue === 'ok' ? (withReason ? input.value : '') : null);
    }, { once: true });
    dlg.returnValue = '';
    dlg.showModal();
    (withReason ? input : document.getElementById('confirm-cancel')).focus();
  });
}

/** A definition list from [label, value] pairs; values may be nodes. */
export function dl(pairs) {
  return h('dl', { class: 'kv' }, pairs.flatMap(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
}

/** Renders an AMQP table / JSON value compactly for display. */
export function showValue(v) {
  if (v === null || v === undefined) return '';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

/** Parses "k=v" lines or a JSON object from a textarea into an arguments object. Numbers and
 * booleans in k=v form become numbers and booleans, as RabbitMQ's UI does for typed fields. */
export function parseArgs(text) {
  const t = text.trim();
  if (!t) return {};
  if (t.startsWith('{')) return JSON.parse(t);
  const out = {};
  for (const line of t.split('\n')) {
    const l = line.trim();
    if (!l) continue;
    const i = l.indexOf('=');
    if (i <= 0) throw new Error(`"${l}" is not key=value`);
    const k = l.slice(0, i).trim();
    const raw = l.slice(i + 1).trim();
    out[k] = raw === 'true' ? true : raw === 'false' ? false : raw !== '' && !isNaN(Number(raw)) ? Number(raw) : raw;
  }
  return out;
}
