// A list of API objects with server-side filtering, sorting and paging (RabbitMQ's page,
// page_size, name, use_regex, sort and sort_reverse parameters), so a broker with 10,000 queues
// sends one page, never the whole list. Refreshes update rows in place: a focused button keeps
// its focus and the table keeps its size.

import { h, fill, setText, num } from './dom.js';
import { get, ApiError } from './api.js';

let nextId = 0;

/**
 * ListView options:
 *   endpoint(vhost) -> API path for the list ('' vhost = all vhosts)
 *   columns: [{label, key (dotted sort key, or null if not sortable), text(row) -> string,
 *              cell(row) -> Node (made once per row, for links and buttons), num: bool, width}]
 *   rowKey(row) -> stable id; state: {name, regex, sort, reverse, page, pageSize, vhost}
 *   onState(state): called when the user changes the view (the page keeps it in the URL)
 *   label: accessible name of the table; filterLabel: text of the filter box
 */
export class ListView {
  constructor(opts) {
    this.o = opts;
    this.s = { name: '', regex: false, sort: opts.defaultSort || 'name', reverse: false, page: 1, pageSize: 100, vhost: '', ...opts.state };
    this.rows = new Map();
    const id = `lv${nextId++}`;

    this.filter = h('input', { type: 'search', id: `${id}-filter`, value: this.s.name, size: 30, 'aria-describedby': `${id}-count` });
    this.filter.addEventListener('input', () => { this.s.name = this.filter.value; this.s.page = 1; this.changed(true); });
    this.regex = h('input', { type: 'checkbox', id: `${id}-regex`, checked: this.s.regex });
    this.regex.addEventListener('change', () => { this.s.regex = this.regex.checked; this.s.page = 1; this.changed(); });
    this.size = h('select', { id: `${id}-size` }, [20, 50, 100, 200, 500].map((n) => h('option', { value: n, selected: n === Number(this.s.pageSize) }, n)));
    this.size.addEventListener('change', () => { this.s.pageSize = Number(this.size.value); this.s.page = 1; this.changed(); });
    this.vhostSel = h('select', { id: `${id}-vhost` }, h('option', { value: '' }, 'All'));
    this.vhostSel.addEventListener('change', () => { this.s.vhost = this.vhostSel.value; this.s.page = 1; this.changed(); });
    get('/api/vhosts', { columns: 'name' }).then((vs) => {
      for (const v of vs) this.vhostSel.append(h('option', { value: v.name, selected: v.name === this.s.vhost }, v.name));
    }).catch(() => {});

    this.prev = h('button', { type: 'button', class: 'pager-prev' }, '‹ Previous');
    this.next = h('button', { type: 'button', class: 'pager-next' }, 'Next ›');
    this.prev.addEventListener('click', () => { if (this.s.page > 1) { this.s.page--; this.changed(); } });
    this.next.addEventListener('click', () => { this.s.page++; this.changed(); });
    this.count = h('span', { id: `${id}-count`, class: 'count', 'aria-live': 'polite' }, '');
    this.status = h('p', { class: 'list-status', role: 'alert' });

    this.headers = opts.columns.map((c) => {
      const th = h('th', { scope: 'col', class: c.num ? 'num' : null });
      // Through CSSOM, not a style attribute: the CSP forbids inline style attributes.
      if (c.width) th.style.width = c.width;
      if (c.key) {
        const b = h('button', { type: 'button', class: 'sort', 'data-sort': c.key }, c.label);
        b.addEventListener('click', () => {
          if (this.s.sort === c.key) this.s.reverse = !this.s.reverse;
          else { this.s.sort = c.key; this.s.reverse = false; }
          this.changed();
        });
        th.append(b);
      } else th.append(c.label);
      return th;
    });
    this.tbody = h('tbody');
    this.table = h('table', { class: 'list', 'aria-label': opts.label }, h('thead', null, h('tr', null, this.headers)), this.tbody);

    this.el = h('div', { class: 'listview' },
      h('div', { class: 'controls' },
        h('label', { for: `${id}-filter` }, opts.filterLabel || 'Filter by name'), this.filter,
        h('label', { class: 'check' }, this.regex, ' Regex'),
        opts.vhosts === false ? null : [h('label', { for: `${id}-vhost` }, 'Vhost'), this.vhostSel],
        h('label', { for: `${id}-size` }, 'Per page'), this.size,
        h('span', { class: 'pager' }, this.prev, this.count, this.next)),
      this.status,
      h('div', { class: 'table-wrap' }, this.table));
    this.paintHeaders();
  }

  paintHeaders() {
    this.o.columns.forEach((c, i) => {
      const on = c.key && c.key === this.s.sort;
      if (c.key) this.headers[i].setAttribute('aria-sort', on ? (this.s.reverse ? 'descending' : 'ascending') : 'none');
      else this.headers[i].removeAttribute('aria-sort');
    });
  }

  changed(debounce = false) {
    this.paintHeaders();
    if (this.o.onState) this.o.onState({ ...this.s });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), debounce ? 250 : 0);
  }

  /** Fetches the current page and updates the rows. */
  async refresh() {
    const q = {
      page: this.s.page, page_size: this.s.pageSize, name: this.s.name,
      use_regex: this.s.regex ? 'true' : '', sort: this.s.sort, sort_reverse: this.s.reverse ? 'true' : 'false',
    };
    // A user's change and the 5 s refresh may overlap: only the latest request may paint.
    const seq = (this.seq = (this.seq || 0) + 1);
    let res;
    try {
      res = await get(this.o.endpoint(this.s.vhost), q);
      if (seq !== this.seq) return;
    } catch (e) {
      if (seq !== this.seq) return;
      if (e instanceof ApiError && e.status === 401) throw e; // the app logs out
      if (e instanceof ApiError && e.status === 400 && this.s.page > 1) {
        // page_out_of_range after the list shrank: go back to the first page.
        this.s.page = 1;
        return this.refresh();
      }
      setText(this.status, e.message);
      return;
    }
    setText(this.status, '');
    this.render(res);
  }

  render(res) {
    const items = res.items || [];
    const seen = new Set();
    items.forEach((row, i) => {
      const k = this.o.rowKey(row);
      seen.add(k);
      let r = this.rows.get(k);
      if (!r) {
        const tds = this.o.columns.map((c) => h('td', { class: c.num ? 'num' : null }, c.cell ? c.cell(row) : ''));
        r = { tr: h('tr', { 'data-key': k }, tds), tds };
        this.rows.set(k, r);
      }
      this.o.columns.forEach((c, j) => { if (c.text) setText(r.tds[j], c.text(row) ?? ''); });
      if (this.tbody.children[i] !== r.tr) this.tbody.insertBefore(r.tr, this.tbody.children[i] || null);
    });
    for (const [k, r] of this.rows) {
      if (!seen.has(k)) { r.tr.remove(); this.rows.delete(k); }
    }
    if (!items.length) {
      if (!this.empty) this.empty = h('tr', { class: 'empty' }, h('td', { colspan: this.o.columns.length }, 'Nothing to show.'));
      this.tbody.append(this.empty);
    } else if (this.empty) this.empty.remove();
    const pages = res.page_count || 1;
    this.prev.disabled = this.s.page <= 1;
    this.next.disabled = this.s.page >= pages;
    setText(this.count, `Page ${num(res.page || 1)} of ${num(pages)} · ${num(res.filtered_count)} shown of ${num(res.total_count)}`);
  }
}

/** A plain table for small lists (bindings, consumers) rebuilt only when its data changed,
 * so refreshing an unchanged table touches nothing. columns: [{label, render(row) -> Node|string, num}] */
export function smallTable(el, label, columns, rows) {
  const sig = JSON.stringify(rows);
  if (el.dataset.sig === sig) return;
  el.dataset.sig = sig;
  fill(el, rows.length === 0 ? h('p', { class: 'muted' }, 'None.') :
    h('table', { class: 'list', 'aria-label': label },
      h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.label)))),
      h('tbody', null, rows.map((r) => h('tr', null, columns.map((c) => h('td', { class: c.num ? 'num' : null }, c.render(r))))))));
}

