// Small helpers shared by the console's modules: DOM building, HTTP, formatting.
// Every piece of data goes into the page through textContent or attributes, never innerHTML.

import { t, tOr } from './i18n.js';

// Taken from an SVG element of the page, so that no namespace URL literal is needed here.
export const SVG_NS = document.getElementById('map').namespaceURI;
const FETCH_TIMEOUT_MS = 5000;

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

export function sel(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    node.setAttribute(k, String(v));
  }
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

export const fmt = (v) => (Math.round(v * 100) / 100).toString();

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------
export class NetError extends Error {}

export class ApiError extends Error {
  constructor(status, detail, body) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.body = body;
  }
}

/** FastAPI puts the reason in `detail`: a string, or a list of validation errors. */
export function detailText(body, status) {
  const d = body && typeof body === 'object' ? body.detail : undefined;
  if (typeof d === 'string' && d) return d;
  if (Array.isArray(d) && d.length) {
    return d
      .map((x) => {
        if (!x || typeof x !== 'object' || !x.msg) return JSON.stringify(x);
        const where = Array.isArray(x.loc) ? x.loc.filter((p) => p !== 'body').join('.') : '';
        return where ? `${where}: ${x.msg}` : String(x.msg);
      })
      .join('; ');
  }
  if (d && typeof d === 'object') return JSON.stringify(d);
  return t('httpError', { status });
}

// The session's CSRF token (from GET /api/session), sent with every request that changes
// something; the session cookie itself is HttpOnly and never seen here.
let csrfToken = null;

export function setCsrf(token) {
  csrfToken = token || null;
}

export async function fetchJSON(path, options = {}) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
  const method = (options.method || 'GET').toUpperCase();
  const unsafe = !['GET', 'HEAD'].includes(method);
  let resp;
  try {
    resp = await fetch(path, {
      cache: 'no-store',
      credentials: 'same-origin',
      headers: {
        Accept: 'application/json',
        ...(options.body ? { 'Content-Type': 'application/json' } : {}),
        ...(unsafe && csrfToken ? { 'X-CSRF-Token': csrfToken } : {}),
      },
      ...options,
      signal: ctrl.signal,
    });
  } catch (err) {
    throw new NetError(err && err.name === 'AbortError' ? t('timeout') : t('noConnection'));
  } finally {
    clearTimeout(timer);
  }
  let body = null;
  const text = await resp.text().catch(() => '');
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  // An answer the caller can read whatever its status (the health check's 503 says what is stuck).
  if ((options.acceptStatus || []).includes(resp.status) && body && typeof body === 'object') {
    return body;
  }
  // A gateway that cannot reach the API is as good as no connection.
  if ([502, 503, 504].includes(resp.status)) throw new NetError(detailText(body, resp.status));
  // The session ended (expired, logged out elsewhere, the user disabled): log in again.
  if (resp.status === 401 && !options.noLoginRedirect) window.location.assign('/login');
  if (!resp.ok) throw new ApiError(resp.status, detailText(body, resp.status), body);
  return body;
}

export function errorText(err) {
  if (err instanceof NetError || err instanceof ApiError) return err.message;
  return String(err && err.message ? err.message : err);
}

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------
export function parseTime(iso) {
  if (!iso) return null;
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? null : ms;
}

export function ageText(iso, now = Date.now()) {
  const ms = parseTime(iso);
  if (ms === null) return t('dash');
  const s = Math.floor((now - ms) / 1000);
  if (s < 5) return t('justNow');
  let span;
  if (s < 60) span = t('unitS', { n: s });
  else if (s < 3600) span = t('unitMin', { n: Math.floor(s / 60) });
  else if (s < 86400) {
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    span = h < 10 && m ? t('unitHMin', { h, m }) : t('unitH', { n: h });
  } else span = t('unitD', { n: Math.floor(s / 86400) });
  return t('ago', { t: span });
}

export const pad2 = (n) => String(n).padStart(2, '0');

export function shortTime(iso, now = new Date()) {
  const ms = parseTime(iso);
  if (ms === null) return t('dash');
  const d = new Date(ms);
  const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  const sameDay = d.toDateString() === now.toDateString();
  return sameDay ? hm : `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${hm}`;
}

export function clockTime(ms) {
  const d = new Date(ms);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

export function humanKey(key) {
  const units = { s: '(s)', ms: '(ms)', pct: '(%)' };
  const parts = String(key).split('_');
  const last = parts[parts.length - 1];
  if (parts.length > 1 && units[last]) parts[parts.length - 1] = units[last];
  return parts.join(' ');
}

export function formatNumber(n) {
  if (!Number.isInteger(n)) return (Math.round(n * 100) / 100).toLocaleString('en-US');
  return n.toLocaleString('en-US');
}

export function levelOf(v) {
  const n = Number(v);
  return Number.isInteger(n) && n >= 1 && n <= 4 ? n : null;
}

/** A level as colour, letter and (in the title) its name: readable without telling colours apart. */
export function levelChip(level, extraClass = '') {
  const lv = levelOf(level);
  const chip = el('span', { class: `chip lvl-${lv ?? 'none'} ${extraClass}`.trim() });
  chip.textContent = lv ? t(`levels.${lv}.letter`) : '–';
  chip.title = lv ? `${t(`levels.${lv}.name`)} (${lv}) — ${t(`levels.${lv}.meaning`)}` : t('noLevel');
  return chip;
}

export function hazardName(h) {
  return tOr(`hazards.${h}`, h ? humanKey(h) : t('dash'));
}
