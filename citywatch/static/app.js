// citywatch live dashboard: a map of zones and devices, the alert list and the work orders.
// Plain ES module, no dependencies, nothing fetched from outside the citywatch API (CONTRACT section 4).
// Every piece of data goes into the page through textContent or attributes, never innerHTML.

// ---------------------------------------------------------------------------------------------
// Strings: every label the page shows. Add a language by adding a key beside `en` (e.g. `zh`);
// missing keys fall back to English. Pick one with ?lang=zh.
// ---------------------------------------------------------------------------------------------
const STRINGS = {
  en: {
    title: 'citywatch — Gusu District',
    alerts: 'Alerts',
    workOrders: 'Work orders',
    live: 'live',
    connecting: 'connecting…',
    disconnected: 'disconnected — retrying',
    lastUpdate: 'last update {time}',
    services: { broker: 'broker', database: 'database' },
    serviceOk: '{name}: connected',
    serviceDown: '{name}: not connected',
    serviceUnknown: '{name}: unknown',
    counts: {
      messages: 'messages', stored: 'stored', rejected: 'rejected',
      alerts_active: 'active alerts', work_orders: 'work orders', devices: 'devices',
      devices_online: 'devices online',
    },
    levels: {
      1: { letter: 'R', name: 'Red', meaning: 'Extreme — danger to life' },
      2: { letter: 'O', name: 'Orange', meaning: 'Severe' },
      3: { letter: 'Y', name: 'Yellow', meaning: 'Moderate — threshold crossed' },
      4: { letter: 'B', name: 'Blue', meaning: 'Minor — watch' },
    },
    noLevel: 'no warning',
    hazards: { waterlogging: 'Waterlogging', falling_object: 'Falling object', traffic: 'Traffic' },
    zoneTypes: {
      district: 'district', street: 'street', grid_cell: 'grid cell', underpass: 'underpass',
      low_road: 'low road', fall_zone: 'fall zone', intersection: 'intersection',
      road_segment: 'road segment',
    },
    deviceKinds: {
      camera: 'camera', water: 'water depth', rain: 'rain gauge', traffic: 'traffic detector',
      grid: 'grid worker',
    },
    alertStates: { active: 'active', acknowledged: 'acknowledged', resolved: 'resolved' },
    woStates: {
      open: 'open', assigned: 'assigned', accepted: 'accepted', resolved: 'resolved', closed: 'closed',
    },
    acknowledge: 'Acknowledge',
    resolve: 'Resolve',
    working: 'working…',
    actionFailed: 'Could not {action}: {detail}',
    actionNames: { acknowledge: 'acknowledge', resolve: 'resolve' },
    noConnection: 'no connection to the server',
    timeout: 'the server did not answer in time',
    httpError: 'the server answered {status}',
    unavailable: 'Not available: {detail}',
    noAlerts: 'No active or acknowledged alerts.',
    noWorkOrders: 'No work orders.',
    alertCounts: '{active} active · {ack} ack',
    woCounts: '{open} open · {total} total',
    woColumns: {
      id: 'id', hazard: 'hazard', severity: 'sev', zone: 'zone', department: 'dept', team: 'team',
      state: 'state', created: 'created', respond_by: 'respond by',
    },
    overdue: 'overdue',
    workOrderShort: 'WO {id}',
    ago: '{t} ago',
    justNow: 'just now',
    unitS: '{n} s', unitMin: '{n} min', unitH: '{n} h', unitHMin: '{h} h {m} min', unitD: '{n} d',
    tip: {
      type: 'type', level: 'level', hazards: 'hazards', parent: 'in', alerts: 'alerts',
      none: 'none', kind: 'kind', status: 'status', online: 'online', offline: 'offline',
      lastSeen: 'last seen', zones: 'zones', never: 'never', close: 'Close',
    },
    legend: {
      levels: 'Warning level', devices: 'Devices', online: 'online', offline: 'offline',
      pulsing: 'pulsing outline: active alert',
    },
    zoomIn: 'Zoom in', zoomOut: 'Zoom out', zoomReset: 'Whole district (double-click the map)',
    mapUnavailable: 'Map unavailable: {detail}',
    mapEmpty: 'No zones to draw yet.',
    dash: '—',
  },
};

const LANG = (() => {
  const asked = new URLSearchParams(window.location.search).get('lang');
  return asked && STRINGS[asked] ? asked : 'en';
})();

function lookup(table, path) {
  return path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), table);
}

/** Look up a string by dotted key and fill {placeholders}. */
function t(key, vars = {}) {
  let s = lookup(STRINGS[LANG], key);
  if (s === undefined) s = lookup(STRINGS.en, key);
  if (typeof s !== 'string') return key;
  return s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
}

function tOr(key, fallback) {
  const s = lookup(STRINGS[LANG], key) ?? lookup(STRINGS.en, key);
  return typeof s === 'string' ? s : fallback;
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------
const POLL_MS = 2000;
const DEVICE_POLL_MS = 10000;
const FETCH_TIMEOUT_MS = 5000;
const ACTION_ERROR_MS = 20000;
const MAX_WORK_ORDER_ROWS = 200;
const MAX_ZOOM = 40;
const MARK_BELOW = 16; // a hazard zone smaller than this on screen (px) also gets a round marker

const AREA_TYPES = ['grid_cell', 'street', 'district']; // drawing order: finest first
const HAZARD_TYPES = new Set(['underpass', 'low_road', 'fall_zone', 'intersection', 'road_segment']);
const OPEN_WO_STATES = new Set(['open', 'assigned']);
const ACTIVE_WO_STATES = new Set(['open', 'assigned', 'accepted']);
const KIND_LETTERS = { camera: 'c', water: 'w', rain: 'r', traffic: 't', grid: 'g' };

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------
const state = {
  zones: new Map(), // id -> feature
  zoneSignature: '',
  zoneEls: new Map(), // id -> {shape, mark, label, size, anchor}
  view: null, // current viewBox {x, y, w, h}: the map zooms and pans
  devices: [],
  alerts: [],
  workOrders: [],
  health: null,
  proj: null,
  pinned: null, // {kind: 'zone'|'device', id}
  busy: new Set(), // alert ids with an action in flight
  actionErrors: new Map(), // alert id -> {text, until}
  alertEls: new Map(), // alert id -> li
  lastOk: null,
  connected: null,
  loaded: { alerts: false, workOrders: false },
};

const $ = (id) => document.getElementById(id);
const svg = $('map');
const SVG_NS = svg.namespaceURI; // taken from the parsed page: no namespace literal needed here

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function sel(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    node.setAttribute(k, String(v));
  }
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------
class NetError extends Error {}
class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

/** FastAPI puts the reason in `detail`: a string, or a list of validation errors. */
function detailText(body, status) {
  const d = body && typeof body === 'object' ? body.detail : undefined;
  if (typeof d === 'string' && d) return d;
  if (Array.isArray(d) && d.length) {
    return d.map((x) => (x && typeof x === 'object' && x.msg ? String(x.msg) : JSON.stringify(x))).join('; ');
  }
  if (d && typeof d === 'object') return JSON.stringify(d);
  return t('httpError', { status });
}

async function fetchJSON(path, options = {}) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
  let resp;
  try {
    resp = await fetch(path, {
      cache: 'no-store',
      headers: { Accept: 'application/json', ...(options.body ? { 'Content-Type': 'application/json' } : {}) },
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
  // A gateway that cannot reach the API is as good as no connection.
  if ([502, 503, 504].includes(resp.status)) throw new NetError(detailText(body, resp.status));
  if (!resp.ok) throw new ApiError(resp.status, detailText(body, resp.status));
  return body;
}

function errorText(err) {
  if (err instanceof NetError || err instanceof ApiError) return err.message;
  return String(err && err.message ? err.message : err);
}

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------
function parseTime(iso) {
  if (!iso) return null;
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? null : ms;
}

function ageText(iso, now = Date.now()) {
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

const pad2 = (n) => String(n).padStart(2, '0');

function shortTime(iso, now = new Date()) {
  const ms = parseTime(iso);
  if (ms === null) return t('dash');
  const d = new Date(ms);
  const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  const sameDay = d.toDateString() === now.toDateString();
  return sameDay ? hm : `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${hm}`;
}

function humanKey(key) {
  const units = { s: '(s)', ms: '(ms)', pct: '(%)' };
  const parts = String(key).split('_');
  const last = parts[parts.length - 1];
  if (parts.length > 1 && units[last]) parts[parts.length - 1] = units[last];
  return parts.join(' ');
}

function levelOf(v) {
  const n = Number(v);
  return Number.isInteger(n) && n >= 1 && n <= 4 ? n : null;
}

function levelChip(level, extraClass = '') {
  const lv = levelOf(level);
  const chip = el('span', { class: `chip lvl-${lv ?? 'none'} ${extraClass}`.trim() });
  chip.textContent = lv ? t(`levels.${lv}.letter`) : '–';
  chip.title = lv ? `${t(`levels.${lv}.name`)} (${lv}) — ${t(`levels.${lv}.meaning`)}` : t('noLevel');
  return chip;
}

function hazardName(h) {
  return tOr(`hazards.${h}`, h ? humanKey(h) : t('dash'));
}

function zoneName(id) {
  if (id === null || id === undefined || id === '') return t('dash');
  const z = state.zones.get(id);
  return z && z.properties && z.properties.name ? String(z.properties.name) : String(id);
}

// ---------------------------------------------------------------------------------------------
// Map: projection and geometry
// ---------------------------------------------------------------------------------------------
function eachPosition(geom, fn) {
  if (!geom) return;
  if (geom.type === 'GeometryCollection') {
    (geom.geometries || []).forEach((g) => eachPosition(g, fn));
    return;
  }
  const walk = (c) => {
    if (!Array.isArray(c)) return;
    if (typeof c[0] === 'number') fn(c);
    else c.forEach(walk);
  };
  walk(geom.coordinates);
}

const VIEW_W = 1000;
const VIEW_PAD = 24;
const VIEW_PAD_BOTTOM = 44; // room for the scale bar

/** Equirectangular projection scaled by cos(mid latitude), fitted into a 1000-wide viewBox. */
function makeProjection(features) {
  let minLon = Infinity;
  let maxLon = -Infinity;
  let minLat = Infinity;
  let maxLat = -Infinity;
  for (const f of features) {
    eachPosition(f.geometry, ([lon, lat]) => {
      if (!Number.isFinite(lon) || !Number.isFinite(lat)) return;
      minLon = Math.min(minLon, lon);
      maxLon = Math.max(maxLon, lon);
      minLat = Math.min(minLat, lat);
      maxLat = Math.max(maxLat, lat);
    });
  }
  if (!Number.isFinite(minLon)) return null;
  const lat0 = (minLat + maxLat) / 2;
  const k = Math.cos((lat0 * Math.PI) / 180);
  const spanX = Math.max((maxLon - minLon) * k, 1e-4);
  const spanY = Math.max(maxLat - minLat, 1e-4);
  const maxH = VIEW_W * 1.6; // a very tall district is fitted by height instead
  const s = Math.min((VIEW_W - 2 * VIEW_PAD) / spanX, (maxH - VIEW_PAD - VIEW_PAD_BOTTOM) / spanY); // units per degree
  const height = Math.max(spanY * s + VIEW_PAD + VIEW_PAD_BOTTOM, 300);
  const offX = (VIEW_W - spanX * s) / 2;
  const offY = VIEW_PAD + (height - VIEW_PAD - VIEW_PAD_BOTTOM - spanY * s) / 2;
  return {
    width: VIEW_W,
    height,
    unitsPerMetre: s / 111320,
    project: ([lon, lat]) => [offX + (lon - minLon) * k * s, offY + (maxLat - lat) * s],
  };
}

const fmt = (v) => (Math.round(v * 100) / 100).toString();

function ringPath(ring, close) {
  let d = '';
  ring.forEach((p, i) => {
    const [x, y] = state.proj.project(p);
    d += `${i ? 'L' : 'M'}${fmt(x)} ${fmt(y)}`;
  });
  return close && d ? `${d}Z` : d;
}

function pathData(geom) {
  if (!geom) return '';
  switch (geom.type) {
    case 'Polygon':
      return geom.coordinates.map((r) => ringPath(r, true)).join('');
    case 'MultiPolygon':
      return geom.coordinates.map((p) => p.map((r) => ringPath(r, true)).join('')).join('');
    case 'LineString':
      return ringPath(geom.coordinates, false);
    case 'MultiLineString':
      return geom.coordinates.map((l) => ringPath(l, false)).join('');
    case 'GeometryCollection':
      return (geom.geometries || []).map(pathData).join('');
    default:
      return '';
  }
}

function geomKind(geom) {
  const type = geom && geom.type;
  if (type === 'Point' || type === 'MultiPoint') return 'point';
  if (type === 'LineString' || type === 'MultiLineString') return 'line';
  return 'area';
}

function ringArea(ring) {
  // Signed area and centroid of a ring in projected units.
  let a = 0;
  let cx = 0;
  let cy = 0;
  const pts = ring.map((p) => state.proj.project(p));
  for (let i = 0, j = pts.length - 1; i < pts.length; j = i++) {
    const [x0, y0] = pts[j];
    const [x1, y1] = pts[i];
    const f = x0 * y1 - x1 * y0;
    a += f;
    cx += (x0 + x1) * f;
    cy += (y0 + y1) * f;
  }
  a /= 2;
  if (Math.abs(a) < 1e-9) {
    const n = pts.length || 1;
    return { area: 0, c: [pts.reduce((s, p) => s + p[0], 0) / n, pts.reduce((s, p) => s + p[1], 0) / n] };
  }
  return { area: Math.abs(a), c: [cx / (6 * a), cy / (6 * a)] };
}

function lineMidpoint(coords) {
  const pts = coords.map((p) => state.proj.project(p));
  let total = 0;
  for (let i = 1; i < pts.length; i++) total += Math.hypot(pts[i][0] - pts[i - 1][0], pts[i][1] - pts[i - 1][1]);
  let half = total / 2;
  for (let i = 1; i < pts.length; i++) {
    const seg = Math.hypot(pts[i][0] - pts[i - 1][0], pts[i][1] - pts[i - 1][1]);
    if (seg >= half && seg > 0) {
      const f = half / seg;
      return { len: total, c: [pts[i - 1][0] + f * (pts[i][0] - pts[i - 1][0]), pts[i - 1][1] + f * (pts[i][1] - pts[i - 1][1])] };
    }
    half -= seg;
  }
  return { len: total, c: pts[0] || [0, 0] };
}

/** Where to put a label, and a size used to draw big shapes under small ones. */
function anchorOf(geom) {
  const polys = [];
  const lines = [];
  const points = [];
  const collect = (g) => {
    if (!g) return;
    if (g.type === 'Polygon') polys.push(g.coordinates);
    else if (g.type === 'MultiPolygon') polys.push(...g.coordinates);
    else if (g.type === 'LineString') lines.push(g.coordinates);
    else if (g.type === 'MultiLineString') lines.push(...g.coordinates);
    else if (g.type === 'Point') points.push(g.coordinates);
    else if (g.type === 'MultiPoint') points.push(...g.coordinates);
    else if (g.type === 'GeometryCollection') (g.geometries || []).forEach(collect);
  };
  collect(geom);
  let best = null;
  for (const p of polys) {
    if (!p.length || !p[0].length) continue;
    const r = ringArea(p[0]);
    if (!best || r.area > best.size) best = { size: r.area, c: r.c };
  }
  if (best) return best;
  for (const l of lines) {
    if (!l.length) continue;
    const r = lineMidpoint(l);
    if (!best || r.len > best.size) best = { size: r.len, c: r.c };
  }
  if (best) return { size: 0, c: best.c };
  if (points.length) return { size: 0, c: state.proj.project(points[0]) };
  return null;
}

// ---------------------------------------------------------------------------------------------
// Map: drawing
// ---------------------------------------------------------------------------------------------
const layers = {
  areas: $('layer-areas'),
  hazards: $('layer-hazards'),
  marks: $('layer-marks'),
  labels: $('layer-labels'),
  devices: $('layer-devices'),
};

function isHazardZone(props) {
  return HAZARD_TYPES.has(props.type) || (Array.isArray(props.hazards) && props.hazards.length > 0);
}

function zoneSignature(features) {
  return features
    .map((f) => {
      let n = 0;
      eachPosition(f.geometry, () => n++);
      return `${f.properties && f.properties.id}:${f.geometry && f.geometry.type}:${n}`;
    })
    .join('|');
}

function projectedSize(geom) {
  let minX = Infinity;
  let maxX = -Infinity;
  let minY = Infinity;
  let maxY = -Infinity;
  eachPosition(geom, (p) => {
    const [x, y] = state.proj.project(p);
    minX = Math.min(minX, x);
    maxX = Math.max(maxX, x);
    minY = Math.min(minY, y);
    maxY = Math.max(maxY, y);
  });
  return Number.isFinite(minX) ? Math.max(maxX - minX, maxY - minY) : 0;
}

function shapeFor(geom, cls, isZone) {
  const kind = geomKind(geom);
  const prefix = isZone ? 'zone' : 'area';
  if (kind === 'point') {
    const g = sel('g', { class: `${cls} ${prefix}-point` });
    const pts = [];
    eachPosition(geom, (p) => pts.push(p));
    for (const p of pts) {
      const [x, y] = state.proj.project(p);
      g.appendChild(sel('circle', { cx: fmt(x), cy: fmt(y), r: 9, class: 'zpoint' }));
    }
    return g;
  }
  return sel('path', {
    d: pathData(geom),
    class: `${cls} ${prefix}-${kind}`,
    'fill-rule': 'evenodd',
  });
}

function drawScaleBar() {
  const old = svg.querySelector('#scalebar');
  if (old) old.remove();
  const p = state.proj;
  const v = state.view;
  const k = v.w / VIEW_W;
  const target = v.w * 0.15;
  const nice = [10, 20, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000];
  let metres = nice[0];
  for (const m of nice) if (m * p.unitsPerMetre <= target) metres = m;
  const len = metres * p.unitsPerMetre;
  const x = v.x + v.w - VIEW_PAD * k - len;
  const y = v.y + v.h - 14 * k;
  const g = sel('g', { id: 'scalebar', class: 'scalebar' });
  g.appendChild(sel('path', { d: `M${fmt(x)} ${fmt(y - 6 * k)}V${fmt(y)}H${fmt(x + len)}V${fmt(y - 6 * k)}` }));
  g.appendChild(sel('text', { x: fmt(x + len / 2), y: fmt(y - 9 * k) }, metres >= 1000 ? `${metres / 1000} km` : `${metres} m`));
  svg.appendChild(g);
}

// ---------------------------------------------------------------------------------------------
// Map: zoom (wheel, buttons) and pan (drag); double-click resets
// ---------------------------------------------------------------------------------------------
function baseView() {
  return { x: 0, y: 0, w: VIEW_W, h: state.proj.height };
}

function clampView(v) {
  const b = baseView();
  if (v.w >= b.w - 1e-6) return b;
  // Keep the centre of the view over the map.
  const cx = Math.min(Math.max(v.x + v.w / 2, b.x), b.x + b.w);
  const cy = Math.min(Math.max(v.y + v.h / 2, b.y), b.y + b.h);
  return { x: cx - v.w / 2, y: cy - v.h / 2, w: v.w, h: v.h };
}

function applyView() {
  if (!state.proj) return;
  const v = state.view;
  svg.setAttribute('viewBox', `${fmt(v.x)} ${fmt(v.y)} ${fmt(v.w)} ${fmt(v.h)}`);
  const k = v.w / VIEW_W; // 1 when the whole map shows, smaller when zoomed in
  svg.style.setProperty('--k', String(k));
  const hatch = svg.querySelector('#hatch-red');
  if (hatch) hatch.setAttribute('patternTransform', `rotate(45) scale(${k})`);
  for (const z of state.zoneEls.values()) {
    if (z.mark) z.mark.classList.toggle('show-mark', z.size / k < MARK_BELOW);
  }
  drawScaleBar();
}

function zoomAt(factor, cx, cy) {
  if (!state.proj) return;
  const b = baseView();
  const v = state.view;
  const w = Math.min(b.w, Math.max(b.w / MAX_ZOOM, v.w / factor));
  const s = w / v.w;
  state.view = clampView({ x: cx - (cx - v.x) * s, y: cy - (cy - v.y) * s, w, h: v.h * s });
  applyView();
}

function zoomCentre(factor) {
  if (!state.view) return;
  zoomAt(factor, state.view.x + state.view.w / 2, state.view.y + state.view.h / 2);
}

function resetView() {
  if (!state.proj) return;
  state.view = baseView();
  applyView();
}

/** Bring a zone into view when the map is zoomed in and the zone is off screen. */
function revealZone(id) {
  const z = state.zoneEls.get(id);
  const v = state.view;
  if (!z || !z.anchor || !v) return;
  const [x, y] = z.anchor;
  const margin = v.w * 0.1;
  if (x > v.x + margin && x < v.x + v.w - margin && y > v.y + margin && y < v.y + v.h - margin) return;
  state.view = clampView({ x: x - v.w / 2, y: y - v.h / 2, w: v.w, h: v.h });
  applyView();
}

function toUser(evt) {
  const ctm = svg.getScreenCTM();
  if (!ctm) return null;
  return new DOMPoint(evt.clientX, evt.clientY).matrixTransform(ctm.inverse());
}

let drag = null;
let suppressClick = false;

svg.addEventListener(
  'wheel',
  (evt) => {
    if (!state.proj) return;
    evt.preventDefault();
    const p = toUser(evt);
    if (!p) return;
    const dy = evt.deltaMode === 1 ? evt.deltaY * 16 : evt.deltaY;
    zoomAt(Math.exp(-dy * 0.002), p.x, p.y);
  },
  { passive: false },
);

svg.addEventListener('pointerdown', (evt) => {
  if (evt.button !== 0 || !state.view) return;
  const ctm = svg.getScreenCTM();
  drag = { x: evt.clientX, y: evt.clientY, view: { ...state.view }, scale: ctm ? 1 / ctm.a : 1, moved: false };
});

window.addEventListener('pointermove', (evt) => {
  if (!drag) return;
  const dx = evt.clientX - drag.x;
  const dy = evt.clientY - drag.y;
  if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 5) return;
  drag.moved = true;
  svg.classList.add('dragging');
  if (!state.pinned) tooltip.hidden = true;
  const v = drag.view;
  state.view = clampView({ x: v.x - dx * drag.scale, y: v.y - dy * drag.scale, w: v.w, h: v.h });
  applyView();
});

window.addEventListener('pointerup', () => {
  if (drag && drag.moved) suppressClick = true;
  drag = null;
  svg.classList.remove('dragging');
});

svg.addEventListener('dblclick', (evt) => {
  evt.preventDefault();
  resetView();
});

function buildMap(features) {
  state.proj = makeProjection(features);
  for (const layer of Object.values(layers)) layer.replaceChildren();
  state.zoneEls.clear();
  if (!state.proj) return;
  state.view = baseView();

  const areas = [];
  const hazards = [];
  for (const f of features) {
    const props = f.properties || {};
    if (!f.geometry || props.id === undefined) continue;
    if (isHazardZone(props)) hazards.push(f);
    else areas.push(f);
  }
  const areaRank = (f) => {
    const i = AREA_TYPES.indexOf(f.properties.type);
    return i < 0 ? -1 : i;
  };
  areas.sort((a, b) => areaRank(a) - areaRank(b));
  for (const f of areas) {
    const type = String(f.properties.type || 'area').replace(/[^\w-]/g, '');
    const shape = shapeFor(f.geometry, `area area-${type}`, false);
    layers.areas.appendChild(shape);
  }

  // Larger shapes first so that small zones stay on top and can be hovered.
  const withAnchor = hazards.map((f) => ({ f, a: anchorOf(f.geometry) }));
  const rank = (x) => ({ area: 0, line: 1, point: 2 })[geomKind(x.f.geometry)];
  withAnchor.sort((x, y) => rank(x) - rank(y) || (y.a ? y.a.size : 0) - (x.a ? x.a.size : 0));
  for (const { f, a } of withAnchor) {
    const id = String(f.properties.id);
    const type = String(f.properties.type || 'zone').replace(/[^\w-]/g, '');
    const shape = shapeFor(f.geometry, `zone zone-${type}`, true);
    shape.dataset.zoneId = id;
    layers.hazards.appendChild(shape);
    let label = null;
    let mark = null;
    if (a) {
      label = sel('text', { x: fmt(a.c[0]), y: fmt(a.c[1]), class: 'zlabel' });
      layers.labels.appendChild(label);
      if (geomKind(f.geometry) !== 'point') {
        // Hazard zones are often a few tens of metres: a marker keeps them visible and clickable.
        mark = sel('circle', { cx: fmt(a.c[0]), cy: fmt(a.c[1]), r: 9, class: 'zone zmark' });
        mark.dataset.zoneId = id;
        layers.marks.appendChild(mark);
      }
    }
    state.zoneEls.set(id, { shape, mark, label, size: projectedSize(f.geometry), anchor: a ? a.c : null });
  }
  applyView();
  drawDevices();
}

function updateZoneStyles() {
  const alerting = new Set(state.alerts.filter((a) => a.state === 'active').map((a) => String(a.zone_id)));
  for (const [id, { shape, mark, label }] of state.zoneEls) {
    const f = state.zones.get(id);
    const lv = levelOf(f && f.properties ? f.properties.level : null);
    for (const node of mark ? [shape, mark] : [shape]) {
      for (let i = 1; i <= 4; i++) node.classList.toggle(`lvl-${i}`, lv === i);
      node.classList.toggle('lvl-none', lv === null);
      node.classList.toggle('alerting', alerting.has(id));
      node.classList.toggle('selected', !!state.pinned && state.pinned.kind === 'zone' && state.pinned.id === id);
    }
    if (label) {
      label.textContent = lv ? t(`levels.${lv}.letter`) : '';
    }
  }
}

function drawDevices() {
  layers.devices.replaceChildren();
  if (!state.proj) return;
  for (const f of state.devices) {
    const props = f.properties || {};
    if (!f.geometry || f.geometry.type !== 'Point') continue;
    const [lon, lat] = f.geometry.coordinates || [];
    if (!Number.isFinite(lon) || !Number.isFinite(lat)) continue;
    const [x, y] = state.proj.project([lon, lat]);
    const online = props.online === true;
    const kind = String(props.kind || '?');
    const id = String(props.id);
    const g = sel('g', {
      class: `dev ${online ? 'online' : 'offline'}`,
      transform: `translate(${fmt(x)} ${fmt(y)})`,
    });
    g.dataset.deviceId = id;
    g.classList.toggle('selected', !!state.pinned && state.pinned.kind === 'device' && state.pinned.id === id);
    g.appendChild(sel('circle', { r: 7 }));
    g.appendChild(sel('text', {}, KIND_LETTERS[kind] || kind.charAt(0).toLowerCase()));
    layers.devices.appendChild(g);
  }
}

// ---------------------------------------------------------------------------------------------
// Map: tooltip and pinned panel
// ---------------------------------------------------------------------------------------------
const tooltip = $('tooltip');
const mapPane = svg.parentElement;

function row(dl, label, value) {
  dl.appendChild(el('dt', {}, label));
  const dd = el('dd');
  if (value instanceof Node) dd.appendChild(value);
  else dd.textContent = value === undefined || value === null || value === '' ? t('dash') : String(value);
  dl.appendChild(dd);
}

function zoneContent(id) {
  const f = state.zones.get(id);
  const p = (f && f.properties) || { id };
  const frag = document.createDocumentFragment();
  frag.appendChild(el('div', { class: 'tip-title' }, p.name || id));
  const dl = el('dl');
  row(dl, 'id', id);
  row(dl, t('tip.type'), tOr(`zoneTypes.${p.type}`, p.type));
  const lv = levelOf(p.level);
  const lvNode = el('span');
  lvNode.appendChild(levelChip(lv));
  lvNode.appendChild(document.createTextNode(` ${lv ? `${t(`levels.${lv}.name`)} — ${t(`levels.${lv}.meaning`)}` : t('noLevel')}`));
  row(dl, t('tip.level'), lvNode);
  const hz = Array.isArray(p.hazards) ? p.hazards.map(hazardName).join(', ') : '';
  row(dl, t('tip.hazards'), hz || t('tip.none'));
  if (p.parent_id) row(dl, t('tip.parent'), zoneName(p.parent_id));
  frag.appendChild(dl);
  const alerts = sortedAlerts().filter((a) => String(a.zone_id) === id);
  frag.appendChild(el('div', { class: 'tip-sub' }, `${t('tip.alerts')}: ${alerts.length || t('tip.none')}`));
  if (alerts.length) {
    const ul = el('ul', { class: 'tip-alerts' });
    for (const a of alerts) {
      const li = el('li');
      li.appendChild(levelChip(a.severity));
      li.appendChild(el('span', {}, ` ${a.title || hazardName(a.hazard)}`));
      li.appendChild(el('span', { class: 'muted' }, ` · ${tOr(`alertStates.${a.state}`, a.state)} · ${ageText(a.raised)}`));
      ul.appendChild(li);
    }
    frag.appendChild(ul);
  }
  return frag;
}

function deviceContent(id) {
  const f = state.devices.find((d) => String(d.properties && d.properties.id) === id);
  const p = (f && f.properties) || { id };
  const frag = document.createDocumentFragment();
  frag.appendChild(el('div', { class: 'tip-title' }, id));
  const dl = el('dl');
  row(dl, t('tip.kind'), tOr(`deviceKinds.${p.kind}`, p.kind));
  const st = el('span', { class: p.online ? 'ok' : 'bad' }, p.online ? t('tip.online') : t('tip.offline'));
  row(dl, t('tip.status'), st);
  row(dl, t('tip.lastSeen'), p.last_seen ? `${ageText(p.last_seen)} (${shortTime(p.last_seen)})` : t('tip.never'));
  const zs = Array.isArray(p.zone_ids) ? p.zone_ids.map(zoneName).join(', ') : '';
  row(dl, t('tip.zones'), zs || t('tip.none'));
  frag.appendChild(dl);
  return frag;
}

function targetOf(node) {
  const dev = node.closest && node.closest('[data-device-id]');
  if (dev) return { kind: 'device', id: dev.dataset.deviceId };
  const zone = node.closest && node.closest('[data-zone-id]');
  if (zone) return { kind: 'zone', id: zone.dataset.zoneId };
  return null;
}

function fillTooltip(target) {
  tooltip.replaceChildren();
  if (state.pinned) {
    const close = el('button', { class: 'tip-close', type: 'button', 'aria-label': t('tip.close'), title: t('tip.close') }, '×');
    close.addEventListener('click', (e) => {
      e.stopPropagation();
      unpin();
    });
    tooltip.appendChild(close);
  }
  tooltip.appendChild(target.kind === 'zone' ? zoneContent(target.id) : deviceContent(target.id));
}

function placeTooltip(evt) {
  const box = mapPane.getBoundingClientRect();
  const w = tooltip.offsetWidth;
  const h = tooltip.offsetHeight;
  let x = evt.clientX - box.left + 14;
  let y = evt.clientY - box.top + 14;
  if (x + w > box.width - 8) x = Math.max(8, evt.clientX - box.left - w - 14);
  if (y + h > box.height - 8) y = Math.max(8, box.height - h - 8);
  tooltip.style.left = `${x}px`;
  tooltip.style.top = `${y}px`;
}

function pin(target) {
  state.pinned = target;
  tooltip.classList.add('pinned');
  tooltip.style.left = '';
  tooltip.style.top = '';
  fillTooltip(target);
  tooltip.hidden = false;
  updateZoneStyles();
  drawDevices();
}

function unpin() {
  state.pinned = null;
  tooltip.classList.remove('pinned');
  tooltip.hidden = true;
  updateZoneStyles();
  drawDevices();
}

svg.addEventListener('mousemove', (evt) => {
  if (state.pinned || (drag && drag.moved)) return;
  const target = targetOf(evt.target);
  if (!target) {
    tooltip.hidden = true;
    return;
  }
  fillTooltip(target);
  tooltip.hidden = false;
  placeTooltip(evt);
});
svg.addEventListener('mouseleave', () => {
  if (!state.pinned) tooltip.hidden = true;
});
svg.addEventListener('click', (evt) => {
  if (suppressClick) {
    suppressClick = false;
    return;
  }
  const target = targetOf(evt.target);
  if (target) pin(target);
  else if (state.pinned) unpin();
});
document.addEventListener('keydown', (evt) => {
  if (evt.key === 'Escape' && state.pinned) unpin();
});

function refreshPinned() {
  if (state.pinned) fillTooltip(state.pinned);
}

// ---------------------------------------------------------------------------------------------
// Legend
// ---------------------------------------------------------------------------------------------
function buildLegend() {
  const legend = $('legend');
  legend.replaceChildren();
  const group = (heading) => {
    const g = el('div', { class: 'legend-group' });
    if (heading) g.appendChild(el('span', { class: 'legend-h' }, heading));
    legend.appendChild(g);
    return g;
  };
  const item = (parent, key, text) => {
    const span = el('span', { class: 'legend-item' });
    span.append(key, document.createTextNode(text));
    parent.appendChild(span);
  };
  const levels = group(t('legend.levels'));
  for (const lv of [1, 2, 3, 4]) item(levels, levelChip(lv), t(`levels.${lv}.name`));
  item(levels, levelChip(null), t('noLevel'));
  item(group(''), el('span', { class: 'pulse-key', 'aria-hidden': 'true' }), t('legend.pulsing'));
  const devs = group(t('legend.devices'));
  for (const [kind, letter] of Object.entries(KIND_LETTERS)) {
    item(devs, el('span', { class: 'dev-key' }, letter), tOr(`deviceKinds.${kind}`, kind));
  }
  item(devs, el('span', { class: 'dev-key' }), t('legend.online'));
  item(devs, el('span', { class: 'dev-key off' }), t('legend.offline'));
}

// ---------------------------------------------------------------------------------------------
// Alerts
// ---------------------------------------------------------------------------------------------
function sortedAlerts() {
  return [...state.alerts].sort((a, b) => {
    const sa = levelOf(a.severity) ?? 5;
    const sb = levelOf(b.severity) ?? 5;
    if (sa !== sb) return sa - sb;
    return (parseTime(a.raised) ?? Infinity) - (parseTime(b.raised) ?? Infinity); // oldest first
  });
}

function workOrderLabel(id) {
  const s = String(id);
  return /^wo\b|^wo-/i.test(s) ? s : t('workOrderShort', { id: s });
}

const alertParts = new WeakMap(); // li -> the nodes updated on every poll

function createAlertEl(id) {
  const li = el('li', { class: 'alert' });
  li.dataset.alertId = id;
  const chip = el('span', { class: 'chip' });
  const body = el('div', { class: 'alert-body' });
  const title = el('div', { class: 'alert-title' });
  const meta = el('div', { class: 'alert-meta' });
  const err = el('div', { class: 'alert-err', role: 'alert' });
  err.hidden = true;
  body.append(title, meta, err);
  const actions = el('div', { class: 'alert-actions' });
  const ack = el('button', { type: 'button', class: 'btn btn-ack' }, t('acknowledge'));
  const res = el('button', { type: 'button', class: 'btn btn-resolve' }, t('resolve'));
  ack.addEventListener('click', (e) => {
    e.stopPropagation();
    act(id, 'acknowledge');
  });
  res.addEventListener('click', (e) => {
    e.stopPropagation();
    act(id, 'resolve');
  });
  actions.append(ack, res);
  li.append(chip, body, actions);
  li.addEventListener('click', () => {
    const a = state.alerts.find((x) => String(x.id) === id);
    if (a && state.zoneEls.has(String(a.zone_id))) {
      pin({ kind: 'zone', id: String(a.zone_id) });
      revealZone(String(a.zone_id));
    }
  });
  alertParts.set(li, { chip, title, meta, err, ack, res });
  return li;
}

function updateAlertEl(li, a, now) {
  const { chip, title, meta, err, ack, res } = alertParts.get(li);
  const lv = levelOf(a.severity);
  chip.className = `chip lvl-${lv ?? 'none'}`;
  chip.textContent = lv ? t(`levels.${lv}.letter`) : '–';
  chip.title = lv ? `${t(`levels.${lv}.name`)} — ${t(`levels.${lv}.meaning`)}` : t('noLevel');
  title.textContent = a.title || hazardName(a.hazard);
  // Most important first, since a narrow screen cuts the end of the line.
  meta.replaceChildren(document.createTextNode(`${zoneName(a.zone_id)} · ${ageText(a.raised, now)} · `));
  meta.appendChild(el('span', { class: `state state-${a.state}` }, tOr(`alertStates.${a.state}`, a.state)));
  const rest = [hazardName(a.hazard)];
  if (a.work_order_id) rest.push(workOrderLabel(a.work_order_id));
  meta.appendChild(document.createTextNode(` · ${rest.join(' · ')}`));
  meta.title = `raised ${a.raised || ''}${a.updated ? `, updated ${a.updated}` : ''}`;
  li.classList.toggle('acknowledged', a.state === 'acknowledged');
  const busy = state.busy.has(String(a.id));
  li.classList.toggle('busy', busy);
  ack.disabled = busy || a.state !== 'active';
  res.disabled = busy;
  ack.textContent = busy ? t('working') : t('acknowledge');
  const e = state.actionErrors.get(String(a.id));
  if (e && e.until > now) {
    err.textContent = e.text;
    err.hidden = false;
  } else {
    err.hidden = true;
    err.textContent = '';
  }
}

function renderAlerts() {
  const list = $('alerts');
  const now = Date.now();
  const alerts = sortedAlerts();
  const seen = new Set();
  const order = [];
  for (const a of alerts) {
    const id = String(a.id);
    seen.add(id);
    let li = state.alertEls.get(id);
    if (!li) {
      li = createAlertEl(id);
      state.alertEls.set(id, li);
    }
    updateAlertEl(li, a, now);
    order.push(li);
  }
  for (const [id, li] of state.alertEls) {
    if (!seen.has(id)) {
      li.remove();
      state.alertEls.delete(id);
    }
  }
  // Move nodes only where the order changed, so a click in progress is not disturbed.
  order.forEach((li, i) => {
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
  const empty = list.querySelector('.empty');
  const showEmpty = !alerts.length && state.loaded.alerts;
  if (showEmpty && !empty) list.appendChild(el('li', { class: 'empty' }, t('noAlerts')));
  if (!showEmpty && empty) empty.remove();
  const active = alerts.filter((a) => a.state === 'active').length;
  $('alerts-count').textContent = t('alertCounts', { active, ack: alerts.length - active });
}

async function act(id, action) {
  if (state.busy.has(id)) return;
  state.busy.add(id);
  state.actionErrors.delete(id);
  renderAlerts();
  try {
    await fetchJSON(`/api/alerts/${encodeURIComponent(id)}/${action}`, { method: 'POST', body: '{}' });
  } catch (err) {
    const text = t('actionFailed', { action: tOr(`actionNames.${action}`, action), detail: errorText(err) });
    state.actionErrors.set(id, { text, until: Date.now() + ACTION_ERROR_MS });
  } finally {
    state.busy.delete(id);
  }
  renderAlerts();
  requestRefresh();
}

// ---------------------------------------------------------------------------------------------
// Work orders
// ---------------------------------------------------------------------------------------------
const WO_COLUMNS = ['id', 'hazard', 'severity', 'zone', 'department', 'team', 'state', 'created', 'respond_by'];

function buildWorkOrderHead() {
  const tr = $('wo-head');
  tr.replaceChildren(...WO_COLUMNS.map((c) => el('th', { scope: 'col', class: `col-${c}` }, t(`woColumns.${c}`))));
}

function renderWorkOrders() {
  const now = new Date();
  const rows = [...state.workOrders].sort((a, b) => {
    const aa = ACTIVE_WO_STATES.has(a.state) ? 0 : 1;
    const ab = ACTIVE_WO_STATES.has(b.state) ? 0 : 1;
    if (aa !== ab) return aa - ab;
    const sa = levelOf(a.severity) ?? 5;
    const sb = levelOf(b.severity) ?? 5;
    if (sa !== sb) return sa - sb;
    return (parseTime(b.created) ?? 0) - (parseTime(a.created) ?? 0); // newest first
  });
  const body = $('wo-body');
  const frag = document.createDocumentFragment();
  for (const w of rows.slice(0, MAX_WORK_ORDER_ROWS)) {
    const overdue = OPEN_WO_STATES.has(w.state) && (parseTime(w.respond_by) ?? Infinity) < now.getTime();
    const tr = el('tr', { class: `wo-${w.state}${overdue ? ' overdue' : ''}` });
    tr.appendChild(el('td', { class: 'col-id mono', title: w.id }, w.id));
    tr.appendChild(el('td', { class: 'col-hazard', title: hazardName(w.hazard) }, hazardName(w.hazard)));
    const sev = el('td', { class: 'col-severity' });
    sev.appendChild(levelChip(w.severity));
    tr.appendChild(sev);
    tr.appendChild(el('td', { class: 'col-zone', title: w.zone_id }, zoneName(w.zone_id)));
    tr.appendChild(el('td', { class: 'col-department', title: w.department }, w.department ? humanKey(w.department) : t('dash')));
    tr.appendChild(el('td', { class: 'col-team mono', title: w.team_id }, w.team_id || t('dash')));
    tr.appendChild(el('td', { class: `col-state state-${w.state}` }, tOr(`woStates.${w.state}`, w.state)));
    tr.appendChild(el('td', { class: 'col-created mono', title: w.created }, shortTime(w.created, now)));
    const rb = el('td', { class: 'col-respond_by mono', title: w.respond_by }, shortTime(w.respond_by, now));
    if (overdue) {
      rb.classList.add('overdue-cell');
      rb.title = `${t('overdue')}: ${w.respond_by}`;
      rb.prepend(el('span', { class: 'overdue-tag', 'aria-label': t('overdue') }, '!'));
      rb.appendChild(el('span', { class: 'overdue-word' }, ` ${t('overdue')}`));
    }
    tr.appendChild(rb);
    frag.appendChild(tr);
  }
  if (!rows.length && state.loaded.workOrders) {
    const tr = el('tr', { class: 'empty' });
    tr.appendChild(el('td', { colspan: WO_COLUMNS.length }, t('noWorkOrders')));
    frag.appendChild(tr);
  }
  body.replaceChildren(frag);
  const open = rows.filter((w) => ACTIVE_WO_STATES.has(w.state)).length;
  $('wo-count').textContent = t('woCounts', { open, total: rows.length });
}

// ---------------------------------------------------------------------------------------------
// Header: health, clock, connection
// ---------------------------------------------------------------------------------------------
/** A service's status may be a boolean, a word, or an object with ok/connected/status. */
function serviceOk(v) {
  if (typeof v === 'boolean') return v;
  if (typeof v === 'number') return v > 0;
  if (typeof v === 'string') {
    if (/^(ok|up|connected|healthy|online|true|ready)$/i.test(v)) return true;
    if (/^(down|error|disconnected|unreachable|offline|false|failed|fail)$/i.test(v)) return false;
    return null;
  }
  if (v && typeof v === 'object') {
    for (const k of ['ok', 'connected', 'up', 'healthy', 'status', 'state']) {
      if (k in v) return serviceOk(v[k]);
    }
  }
  return null;
}

function formatNumber(n) {
  if (!Number.isInteger(n)) return (Math.round(n * 100) / 100).toLocaleString('en-US');
  return n.toLocaleString('en-US');
}

function renderHealth() {
  const h = state.health;
  const counts = $('counts');
  const services = $('services');
  counts.replaceChildren();
  services.replaceChildren();
  if (!h || typeof h !== 'object') return;
  const entries = [];
  if (h.counts && typeof h.counts === 'object') {
    for (const [k, v] of Object.entries(h.counts)) if (typeof v === 'number') entries.push([k, v]);
  }
  for (const [k, v] of Object.entries(h)) if (typeof v === 'number') entries.push([k, v]); // e.g. lag
  for (const [k, v] of entries) {
    const li = el('li');
    li.appendChild(el('span', { class: 'count-v' }, formatNumber(v)));
    li.appendChild(el('span', { class: 'count-k' }, tOr(`counts.${k}`, humanKey(k))));
    counts.appendChild(li);
  }
  for (const key of ['broker', 'database']) {
    if (!(key in h)) continue;
    const ok = serviceOk(h[key]);
    const name = tOr(`services.${key}`, key);
    const li = el('li', { class: `svc ${ok === true ? 'svc-ok' : ok === false ? 'svc-bad' : 'svc-unknown'}` });
    li.appendChild(el('span', { class: 'dot', 'aria-hidden': 'true' }));
    li.appendChild(el('span', {}, name));
    li.title = `${t(ok === true ? 'serviceOk' : ok === false ? 'serviceDown' : 'serviceUnknown', { name })}\n${JSON.stringify(h[key])}`;
    services.appendChild(li);
  }
}

function renderConn() {
  const c = $('conn');
  if (state.connected === null) {
    c.className = 'conn conn-wait';
    c.textContent = t('connecting');
  } else {
    c.className = `conn ${state.connected ? 'conn-live' : 'conn-down'}`;
    c.textContent = state.connected ? t('live') : t('disconnected');
  }
  document.body.classList.toggle('stale', state.connected === false);
  c.title = state.lastOk ? t('lastUpdate', { time: new Date(state.lastOk).toLocaleTimeString('en-GB') }) : '';
}

function tickClock() {
  const d = new Date();
  const clock = $('clock');
  clock.textContent = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  clock.setAttribute('datetime', d.toISOString());
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------
function showMsg(id, text) {
  const m = $(id);
  m.textContent = text || '';
  m.hidden = !text;
}

async function loadZones() {
  try {
    const fc = await fetchJSON('/api/zones');
    const features = fc && Array.isArray(fc.features) ? fc.features : [];
    state.zones = new Map(features.filter((f) => f && f.properties).map((f) => [String(f.properties.id), f]));
    const sig = zoneSignature(features);
    if (sig !== state.zoneSignature) {
      state.zoneSignature = sig;
      buildMap(features);
    }
    const msg = $('map-empty');
    msg.textContent = features.length ? '' : t('mapEmpty');
    msg.hidden = features.length > 0;
  } catch (err) {
    if (!state.zoneEls.size) {
      const msg = $('map-empty');
      msg.textContent = t('mapUnavailable', { detail: errorText(err) });
      msg.hidden = false;
    }
    throw err;
  }
}

async function loadAlerts() {
  try {
    const [active, acked] = await Promise.all([
      fetchJSON('/api/alerts?state=active'),
      fetchJSON('/api/alerts?state=acknowledged'),
    ]);
    const byId = new Map();
    for (const a of [...(Array.isArray(active) ? active : []), ...(Array.isArray(acked) ? acked : [])]) {
      if (a && a.id !== undefined && (a.state === 'active' || a.state === 'acknowledged')) byId.set(String(a.id), a);
    }
    state.alerts = [...byId.values()];
    state.loaded.alerts = true;
    showMsg('alerts-msg', '');
  } catch (err) {
    showMsg('alerts-msg', t('unavailable', { detail: errorText(err) }));
    throw err;
  }
}

async function loadWorkOrders() {
  try {
    const wos = await fetchJSON('/api/work-orders');
    state.workOrders = Array.isArray(wos) ? wos.filter((w) => w && typeof w === 'object') : [];
    state.loaded.workOrders = true;
    showMsg('wo-msg', '');
  } catch (err) {
    showMsg('wo-msg', t('unavailable', { detail: errorText(err) }));
    throw err;
  }
}

async function loadHealth() {
  state.health = await fetchJSON('/api/health');
}

async function loadDevices() {
  const fc = await fetchJSON('/api/devices');
  state.devices = fc && Array.isArray(fc.features) ? fc.features : [];
}

function noteResults(results) {
  const netDown = results.some((r) => r.status === 'rejected' && r.reason instanceof NetError);
  const anyOk = results.some((r) => r.status === 'fulfilled');
  state.connected = !netDown;
  if (anyOk && !netDown) state.lastOk = Date.now();
  for (const r of results) {
    if (r.status === 'rejected' && !(r.reason instanceof NetError) && !(r.reason instanceof ApiError)) {
      console.error(r.reason); // our own bug: show it to whoever opens the console
    }
  }
}

async function fastCycle() {
  const results = await Promise.allSettled([loadZones(), loadAlerts(), loadWorkOrders(), loadHealth()]);
  noteResults(results);
  updateZoneStyles();
  renderAlerts();
  renderWorkOrders();
  renderHealth();
  renderConn();
  refreshPinned();
}

let cycle = null;
let again = false;

/** Run a refresh now; if one is running, run another right after it. */
function requestRefresh() {
  if (cycle) {
    again = true;
    return cycle;
  }
  cycle = fastCycle().finally(() => {
    cycle = null;
    if (again) {
      again = false;
      requestRefresh();
    }
  });
  return cycle;
}

async function pollFast() {
  await requestRefresh();
  setTimeout(pollFast, POLL_MS);
}

async function pollDevices() {
  try {
    await loadDevices();
    drawDevices();
    refreshPinned();
  } catch (err) {
    if (err instanceof NetError) {
      state.connected = false;
      renderConn();
    } else if (!(err instanceof ApiError)) console.error(err);
  }
  setTimeout(pollDevices, DEVICE_POLL_MS);
}

// ---------------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------------
function buildMapTools() {
  const tools = $('map-tools');
  const button = (text, title, fn) => {
    const b = el('button', { type: 'button', class: 'btn map-btn', title, 'aria-label': title }, text);
    b.addEventListener('click', fn);
    return b;
  };
  tools.replaceChildren(
    button('+', t('zoomIn'), () => zoomCentre(1.6)),
    button('−', t('zoomOut'), () => zoomCentre(1 / 1.6)),
    button('⤢', t('zoomReset'), resetView),
  );
}

function start() {
  document.documentElement.lang = LANG;
  document.title = t('title');
  for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
  buildLegend();
  buildMapTools();
  buildWorkOrderHead();
  renderConn();
  tickClock();
  setInterval(tickClock, 1000);
  pollFast();
  pollDevices();
}

start();
