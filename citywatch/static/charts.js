// Small SVG charts drawn by hand: a time series with its thresholds, and the load funnel.
// Sized in pixels from their container, so that text stays readable on a wall screen and a laptop.

import { t } from './i18n.js';
import { el, fmt, formatNumber, pad2, sel } from './util.js';

const LEVEL_ORDER = ['red', 'orange', 'yellow', 'blue'];
const LEVEL_NUMBER = { red: 1, orange: 2, yellow: 3, blue: 4 };
const SERIES_CLASSES = ['s0', 's1', 's2', 's3', 's4', 's5'];

function niceStep(span, count) {
  const raw = span / Math.max(count, 1);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const step = norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10;
  return step * mag;
}

function hhmm(ms, seconds = false) {
  const d = new Date(ms);
  const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  return seconds ? `${hm}:${pad2(d.getSeconds())}` : hm;
}

const TIME_STEPS = [10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600].map((s) => s * 1000);

/**
 * A time-series chart.
 * opts: {width, height, series: [{name, points: [{t, v}], band: [{t, v}]}], thresholds: {red: n, ...},
 *        unit, xDomain: [t0, t1], label}
 * Each series is a line through its points (dots when there are few); `band` (the bucket maxima)
 * is drawn as a thin shade above. Thresholds are dashed lines in their level's colour, with the
 * level's letter, so they read without colour.
 */
export function lineChart(opts) {
  const width = Math.max(Math.floor(opts.width || 300), 120);
  const height = Math.max(Math.floor(opts.height || 120), 60);
  const m = { l: 34, r: 40, t: 8, b: 18 };
  const svg = sel('svg', {
    class: 'chart', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-label': opts.label || '',
  });
  const series = (opts.series || []).filter((s) => s.points && s.points.length);
  const thresholds = Object.entries(opts.thresholds || {}).filter(([, v]) => Number.isFinite(v));
  const values = [];
  for (const s of series) {
    for (const p of [...s.points, ...(s.band || [])]) if (Number.isFinite(p.v)) values.push(p.v);
  }
  let t0 = opts.xDomain ? opts.xDomain[0] : Infinity;
  let t1 = opts.xDomain ? opts.xDomain[1] : -Infinity;
  if (!opts.xDomain) {
    for (const s of series) {
      for (const p of s.points) {
        t0 = Math.min(t0, p.t);
        t1 = Math.max(t1, p.t);
      }
    }
  }
  if (!values.length || !Number.isFinite(t0)) {
    svg.appendChild(sel('text', { x: width / 2, y: height / 2, class: 'chart-empty' }, opts.emptyText || t('noReadings')));
    // Thresholds alone still tell what the zone is watched for.
    if (!thresholds.length) return svg;
  }
  if (t1 - t0 < 60000) {
    t0 -= 30000;
    t1 += 30000;
  }
  let lo = Math.min(0, ...values);
  let hi = Math.max(...values, ...thresholds.map(([, v]) => v), 1);
  hi += (hi - lo) * 0.08;
  if (hi === lo) hi = lo + 1;
  const x = (ms) => m.l + ((ms - t0) / (t1 - t0)) * (width - m.l - m.r);
  const y = (v) => m.t + (1 - (v - lo) / (hi - lo)) * (height - m.t - m.b);

  const axis = sel('g', { class: 'chart-axis' });
  const step = niceStep(hi - lo, Math.max(2, Math.floor((height - m.t - m.b) / 28)));
  for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) {
    axis.appendChild(sel('line', { x1: m.l, x2: width - m.r, y1: fmt(y(v)), y2: fmt(y(v)), class: 'grid' }));
    axis.appendChild(sel('text', { x: m.l - 4, y: fmt(y(v)), class: 'ytick' }, formatNumber(Math.round(v * 100) / 100)));
  }
  const ticks = Math.max(2, Math.floor((width - m.l - m.r) / 70));
  const tstep = TIME_STEPS.find((st) => (t1 - t0) / st <= ticks) || TIME_STEPS[TIME_STEPS.length - 1];
  for (let tt = Math.ceil(t0 / tstep) * tstep; tt <= t1; tt += tstep) {
    axis.appendChild(sel('text', { x: fmt(x(tt)), y: height - 4, class: 'xtick' }, hhmm(tt, tstep < 60000)));
  }
  svg.appendChild(axis);

  // Labels of thresholds close together are pushed apart so that each stays readable.
  const labelled = thresholds.filter(([name]) => LEVEL_NUMBER[name])
    .map(([name, v]) => ({ name, v, ly: y(v) })).sort((a, b) => a.ly - b.ly);
  for (let i = 1; i < labelled.length; i++) {
    labelled[i].ly = Math.max(labelled[i].ly, labelled[i - 1].ly + 10);
  }
  for (const { name, v, ly } of labelled) {
    const level = LEVEL_NUMBER[name];
    const g = sel('g', { class: `threshold lvl-${level}` });
    g.appendChild(sel('line', { x1: m.l, x2: width - m.r, y1: fmt(y(v)), y2: fmt(y(v)) }));
    g.appendChild(sel('text', { x: width - m.r + 3, y: fmt(ly) }, `${t(`levels.${level}.letter`)} ${formatNumber(v)}`));
    g.appendChild(sel('title', {}, `${t(`levelByName.${name}`)}: ${formatNumber(v)} ${opts.unit || ''}`));
    svg.appendChild(g);
  }

  series.forEach((s, i) => {
    const cls = SERIES_CLASSES[i % SERIES_CLASSES.length];
    const g = sel('g', { class: `series ${cls}` });
    if (s.band && s.band.length) {
      const pts = s.band.filter((p) => Number.isFinite(p.v));
      if (pts.length > 1) {
        const top = pts.map((p) => `${fmt(x(p.t))},${fmt(y(p.v))}`);
        const base = [...s.points].reverse().filter((p) => Number.isFinite(p.v)).map((p) => `${fmt(x(p.t))},${fmt(y(p.v))}`);
        g.appendChild(sel('polygon', { points: [...top, ...base].join(' '), class: 'band' }));
      }
      if (pts.length <= 3) {
        // Too few buckets for a shade: a whisker from the average up to the maximum instead.
        for (const p of pts) {
          const low = s.points.find((q) => q.t === p.t);
          if (!low || !Number.isFinite(low.v)) continue;
          g.appendChild(sel('line', { x1: fmt(x(p.t)), x2: fmt(x(p.t)), y1: fmt(y(low.v)), y2: fmt(y(p.v)), class: 'whisker' }));
          g.appendChild(sel('line', { x1: fmt(x(p.t) - 4), x2: fmt(x(p.t) + 4), y1: fmt(y(p.v)), y2: fmt(y(p.v)), class: 'whisker' }));
        }
      }
    }
    const pts = s.points.filter((p) => Number.isFinite(p.v));
    if (pts.length > 1) {
      g.appendChild(sel('polyline', { points: pts.map((p) => `${fmt(x(p.t))},${fmt(y(p.v))}`).join(' '), class: 'line' }));
    }
    if (pts.length <= 24) {
      for (const p of pts) {
        const c = sel('circle', { cx: fmt(x(p.t)), cy: fmt(y(p.v)), r: pts.length <= 3 ? 4 : 2.6, class: 'dot' });
        c.appendChild(sel('title', {}, `${s.name ? `${s.name} · ` : ''}${hhmm(p.t, true)} ${formatNumber(p.v)} ${opts.unit || ''}`));
        g.appendChild(c);
      }
    }
    // A lone reading (an alert raised by one message) gets its value written beside it.
    if (pts.length === 1 && opts.labelLone) {
      const p = pts[0];
      g.appendChild(sel('text', { x: fmt(x(p.t) + 7), y: fmt(y(p.v)), class: 'dot-label' }, formatNumber(p.v)));
    }
    svg.appendChild(g);
  });
  return svg;
}

/** The funnel as bars on a log scale: messages outnumber work orders a thousand to one. */
export function funnelChart(stages) {
  const wrap = el('div', { class: 'funnel-bars' });
  const max = Math.max(...stages.map((s) => s.count), 1);
  const scale = (n) => (n <= 0 ? 0 : Math.max(2, (Math.log10(n + 1) / Math.log10(max + 1)) * 100));
  for (const s of stages) {
    const row = el('div', { class: `funnel-row funnel-${s.key}` });
    row.appendChild(el('span', { class: 'funnel-label' }, s.label));
    const track = el('span', { class: 'funnel-track' });
    const bar = el('span', { class: 'funnel-bar' });
    bar.style.width = `${scale(s.count).toFixed(1)}%`;
    track.appendChild(bar);
    row.appendChild(track);
    row.appendChild(el('span', { class: 'funnel-count mono' }, formatNumber(s.count)));
    wrap.appendChild(row);
  }
  return wrap;
}

export { LEVEL_ORDER };
