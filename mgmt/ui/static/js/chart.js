// A hand-written SVG line chart over a sliding window, fed with samples taken by the page
// every 5 s. No library: the UI loads nothing from the network and has no build step.

import { h, rate, num } from './dom.js';

const SVG = 'http://www.w3.org/2000/svg';
/** How much history a chart shows and keeps: 10 minutes. */
export const WINDOW_MS = 10 * 60 * 1000;
const W = 600, H = 150, PAD_L = 48, PAD_R = 8, PAD_T = 8, PAD_B = 20;

// Histories live at module level, keyed by what they measure ("overview", "queue /|q"), so
// leaving a page and coming back keeps the last 10 minutes instead of starting empty.
const histories = new Map();

/** Returns the history (array of {t, v: {key: value}}) kept under id. */
export function history(id) {
  let hs = histories.get(id);
  if (!hs) { hs = []; histories.set(id, hs); }
  return hs;
}

/** Appends one sample (values by series key) to a history and drops what left the window. */
export function addSample(id, values, t = Date.now()) {
  const hs = history(id);
  hs.push({ t, v: values });
  while (hs.length && hs[0].t < t - WINDOW_MS) hs.shift();
}

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

// niceMax rounds a maximum up to 1, 2 or 5 times a power of ten so the axis reads well.
function niceMax(m) {
  if (!(m > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(m)));
  for (const f of [1, 2, 5, 10]) if (m <= f * p) return f * p;
  return 10 * p;
}

/**
 * A chart with a fixed size (so refreshes never move the page) and a legend giving each
 * series' latest value. series: [{key, label}]; kind: 'rate' (per second) or 'count'.
 */
export class Chart {
  constructor({ title, series, kind = 'rate', id }) {
    this.series = series;
    this.kind = kind;
    this.fmt = kind === 'rate' ? rate : num;
    this.svg = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart-svg', role: 'img', 'aria-label': title });
    this.grid = svg('g', { class: 'grid' });
    this.lines = svg('g', { class: 'lines' });
    this.svg.append(this.grid, this.lines);
    this.paths = series.map((s, i) => {
      const p = svg('polyline', { class: `series s${i}`, fill: 'none', points: '' });
      p.dataset.series = s.key;
      this.lines.append(p);
      return p;
    });
    this.legendValues = series.map(() => h('span', { class: 'value' }, '–'));
    const legend = h('ul', { class: 'legend' }, series.map((s, i) =>
      h('li', { 'data-series': s.key, class: `s${i}` }, h('span', { class: 'swatch', 'aria-hidden': 'true' }), s.label, ' ', this.legendValues[i])));
    this.el = h('figure', { class: 'chart', id }, h('figcaption', null, title), this.svg, legend);
  }

  /** Redraws from a history (see history()). */
  update(hs, now = Date.now()) {
    let max = 0;
    for (const smp of hs) for (const s of this.series) max = Math.max(max, smp.v[s.key] || 0);
    const top = niceMax(max);
    const x = (t) => PAD_L + (W - PAD_L - PAD_R) * (1 - (now - t) / WINDOW_MS);
    const y = (v) => PAD_T + (H - PAD_T - PAD_B) * (1 - (v || 0) / top);

    this.grid.replaceChildren();
    for (const f of [0, 0.5, 1]) {
      const yy = y(top * f);
      this.grid.append(svg('line', { x1: PAD_L, x2: W - PAD_R, y1: yy, y2: yy }));
      const label = svg('text', { x: PAD_L - 4, y: yy + 4, 'text-anchor': 'end' });
      label.textContent = this.kind === 'rate' ? rate(top * f) : num(top * f);
      this.grid.append(label);
    }
    for (const [min, anchor] of [[10, 'start'], [5, 'middle'], [0, 'end']]) {
      const t = svg('text', { x: x(now - min * 60000), y: H - 4, 'text-anchor': anchor });
      t.textContent = min ? `-${min} min` : 'now';
      this.grid.append(t);
    }
    this.series.forEach((s, i) => {
      const pts = hs.filter((smp) => now - smp.t <= WINDOW_MS)
        .map((smp) => `${x(smp.t).toFixed(1)},${y(smp.v[s.key]).toFixed(1)}`);
      this.paths[i].setAttribute('points', pts.join(' '));
      const last = hs.length ? hs[hs.length - 1].v[s.key] : undefined;
      this.legendValues[i].textContent = this.fmt(last);
      // For tests and assistive tech: the latest value and the window's peak, machine-readable.
      const li = this.legendValues[i].parentElement;
      li.dataset.last = String(last ?? '');
      li.dataset.peak = String(Math.max(0, ...hs.map((smp) => smp.v[s.key] || 0)));
      li.dataset.points = String(pts.length);
    });
  }
}
