// The management API client: every request carries the logged-in user's HTTP basic
// credentials (kept in sessionStorage, so they die with the tab) and answers are JSON.
// Errors are thrown as ApiError with RabbitMQ's "error" and "reason" fields.

const KEY = 'warren.auth';

/** An HTTP error from the API, with RabbitMQ's error body fields. */
export class ApiError extends Error {
  constructor(status, body) {
    const reason = body && (body.reason || body.error);
    super(reason ? `${status}: ${typeof reason === 'string' ? reason : JSON.stringify(reason)}` : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

let auth = sessionStorage.getItem(KEY);

/** Stores credentials for later requests (base64 of "user:password", UTF-8 safe). */
export function setCredentials(user, password) {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  auth = btoa(String.fromCharCode(...bytes));
  sessionStorage.setItem(KEY, auth);
}

/** Forgets the credentials. */
export function clearCredentials() {
  auth = null;
  sessionStorage.removeItem(KEY);
}

/** Reports whether credentials are stored. */
export function hasCredentials() {
  return auth !== null;
}

/** Encodes one path segment; vhost "/" becomes %2F as the API expects. */
export const seg = (s) => encodeURIComponent(s);

/** Joins API path segments, encoding each: path('queues', vhost, name). */
export function path(...parts) {
  return '/api/' + parts.map((p, i) => (i === 0 ? p : seg(p))).join('/');
}

/**
 * Calls the API. opts: {method, body (JSON-encoded), headers, query (object)}.
 * Resolves to the parsed JSON body, or null for an empty one (204).
 */
export async function call(p, opts = {}) {
  let url = p;
  if (opts.query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(opts.query)) {
      if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
    }
    const s = q.toString();
    if (s) url += '?' + s;
  }
  // No Accept header: fetch's default */* is what RabbitMQ's endpoints accept; some (purge)
  // answer 406 to "Accept: application/json" because they have no JSON body to offer.
  const headers = { ...(opts.headers || {}) };
  if (auth) headers.Authorization = 'Basic ' + auth;
  let body;
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.body);
  }
  const res = await fetch(url, { method: opts.method || 'GET', headers, body, credentials: 'omit', cache: 'no-store' });
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { reason: text.slice(0, 200) }; }
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

/** GET shorthand. */
export const get = (p, query) => call(p, { query });
