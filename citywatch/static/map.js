// The district map: zones from GET /api/zones drawn as SVG (the district's boundaries, streets,
// grid cells, roads and hazard zones, all from the zones GeoJSON), devices from GET /api/devices.
// Zones take their warning level's colour, a fill pattern and the level's letter, so that they read
// without telling colours apart; zones with an active alert pulse. Hover shows details, click pins
// them. No map library and no tiles: nothing is fetched from outside citywatch.

import { t, tOr } from './i18n.js';
import { sortedAlerts, state, zoneLevels, zoneName } from './state.js';
import { $, ageText, el, fmt, hazardName, levelChip, levelOf, sel, shortTime } from './util.js';

const MAX_ZOOM = 40;
const MARK_BELOW = 16; // a hazard zone smaller than this on screen (px) also gets a round marker
const AREA_TYPES = ['grid_cell', 'street', 'district']; // drawing order: finest first
const HAZARD_TYPES = new Set(['underpass', 'low_road', 'fall_zone', 'intersection', 'road_segment']);
const ROAD_TYPES = new Set(['low_road', 'road_segment']);
export const KIND_LETTERS = { camera: 'c', water: 'w', rain: 'r', traffic: 't', grid: 'g' };

// The map's own state; `state` (shared) holds the data.
const map = {
  proj: null,
  view: null, // current viewBox {x, y, w, h}: the map zooms and pans
  zoneEls: new Map(), // id -> {shape, mark, label, pulse, size, anchor}
  signature: '',
  pinned: null, // {kind: 'zone'|'device', id}
  onZone: () => {}, // called with a zone id when the operator clicks a zone
  picking: null, // the hotline form waits for a place: the next click gives it
};

const svg = $('map');

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
    unproject: ([x, y]) => [minLon + (x - offX) / (k * s), maxLat - (y - offY) / s],
  };
}

function ringPath(ring, close) {
  let d = '';
  ring.forEach((p, i) => {
    const [x, y] = map.proj.project(p);
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
  const pts = ring.map((p) => map.proj.project(p));
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
  const pts = coords.map((p) => map.proj.project(p));
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
  if (points.length) return { size: 0, c: map.proj.project(points[0]) };
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
  pulses: $('layer-pulses'),
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
    const [x, y] = map.proj.project(p);
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
      const [x, y] = map.proj.project(p);
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
  const p = map.proj;
  const v = map.view;
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
  return { x: 0, y: 0, w: VIEW_W, h: map.proj.height };
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
  if (!map.proj) return;
  const v = map.view;
  svg.setAttribute('viewBox', `${fmt(v.x)} ${fmt(v.y)} ${fmt(v.w)} ${fmt(v.h)}`);
  const k = v.w / VIEW_W; // 1 when the whole map shows, smaller when zoomed in
  svg.style.setProperty('--k', String(k));
  // Patterns keep their on-screen size whatever the zoom.
  for (let i = 1; i <= 4; i++) {
    const pat = svg.querySelector(`#pat-${i}`);
    if (pat) pat.setAttribute('patternTransform', `${i === 1 ? 'rotate(45) ' : ''}scale(${k})`);
  }
  for (const z of map.zoneEls.values()) {
    if (z.mark) z.mark.classList.toggle('show-mark', z.size / k < MARK_BELOW);
  }
  drawScaleBar();
}

function zoomAt(factor, cx, cy) {
  if (!map.proj) return;
  const b = baseView();
  const v = map.view;
  const w = Math.min(b.w, Math.max(b.w / MAX_ZOOM, v.w / factor));
  const s = w / v.w;
  map.view = clampView({ x: cx - (cx - v.x) * s, y: cy - (cy - v.y) * s, w, h: v.h * s });
  applyView();
}

function zoomCentre(factor) {
  if (!map.view) return;
  zoomAt(factor, map.view.x + map.view.w / 2, map.view.y + map.view.h / 2);
}

function resetView() {
  if (!map.proj) return;
  map.view = baseView();
  applyView();
}

/** Bring a zone into view when the map is zoomed in and the zone is off screen. */
export function revealZone(id) {
  const z = map.zoneEls.get(id);
  const v = map.view;
  if (!z || !z.anchor || !v) return;
  const [x, y] = z.anchor;
  const margin = v.w * 0.1;
  if (x > v.x + margin && x < v.x + v.w - margin && y > v.y + margin && y < v.y + v.h - margin) return;
  map.view = clampView({ x: x - v.w / 2, y: y - v.h / 2, w: v.w, h: v.h });
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
    if (!map.proj) return;
    evt.preventDefault();
    const p = toUser(evt);
    if (!p) return;
    const dy = evt.deltaMode === 1 ? evt.deltaY * 16 : evt.deltaY;
    zoomAt(Math.exp(-dy * 0.002), p.x, p.y);
  },
  { passive: false },
);

svg.addEventListener('pointerdown', (evt) => {
  if (evt.button !== 0 || !map.view) return;
  const ctm = svg.getScreenCTM();
  drag = { x: evt.clientX, y: evt.clientY, view: { ...map.view }, scale: ctm ? 1 / ctm.a : 1, moved: false };
});

window.addEventListener('pointermove', (evt) => {
  if (!drag) return;
  const dx = evt.clientX - drag.x;
  const dy = evt.clientY - drag.y;
  if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 5) return;
  drag.moved = true;
  svg.classList.add('dragging');
  if (!map.pinned) tooltip.hidden = true;
  const v = drag.view;
  map.view = clampView({ x: v.x - dx * drag.scale, y: v.y - dy * drag.scale, w: v.w, h: v.h });
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

/** Draw the zones; nothing is redrawn when their geometry has not changed since the last call. */
export function buildMap(features) {
  const signature = zoneSignature(features);
  if (signature === map.signature) return;
  map.signature = signature;
  map.proj = makeProjection(features);
  for (const layer of Object.values(layers)) layer.replaceChildren();
  map.zoneEls.clear();
  if (!map.proj) return;
  map.view = baseView();

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
    const road = ROAD_TYPES.has(f.properties.type) ? ' road' : '';
    const shape = shapeFor(f.geometry, `zone zone-${type}${road}`, true);
    shape.dataset.zoneId = id;
    layers.hazards.appendChild(shape);
    let label = null;
    let mark = null;
    let pulse = null;
    if (a) {
      pulse = sel('circle', { cx: fmt(a.c[0]), cy: fmt(a.c[1]), class: 'pulse' });
      layers.pulses.appendChild(pulse);
      label = sel('text', { x: fmt(a.c[0]), y: fmt(a.c[1]), class: 'zlabel' });
      layers.labels.appendChild(label);
      if (geomKind(f.geometry) !== 'point') {
        // Hazard zones are often a few tens of metres: a marker keeps them visible and clickable.
        mark = sel('circle', { cx: fmt(a.c[0]), cy: fmt(a.c[1]), r: 9, class: 'zone zmark' });
        mark.dataset.zoneId = id;
        layers.marks.appendChild(mark);
      }
    }
    map.zoneEls.set(id, { shape, mark, label, pulse, size: projectedSize(f.geometry), anchor: a ? a.c : null });
  }
  applyView();
  drawDevices();
}

/** Colour, pattern, letter and pulse of every zone, from the alerts the page holds. */
export function updateZoneStyles() {
  const levels = zoneLevels();
  const alerting = new Set([...state.alerts.values()].filter((a) => a.state === 'active').map((a) => String(a.zone_id)));
  const selectedAlert = state.selectedAlert ? state.alerts.get(state.selectedAlert) : null;
  const focus = selectedAlert ? String(selectedAlert.zone_id) : null;
  for (const [id, { shape, mark, label, pulse }] of map.zoneEls) {
    const lv = levelOf(levels.get(id));
    shape.dataset.level = lv ? String(lv) : '';
    if (pulse) {
      pulse.classList.toggle('on', alerting.has(id));
      for (let i = 1; i <= 4; i++) pulse.classList.toggle(`lvl-${i}`, lv === i);
    }
    for (const node of mark ? [shape, mark] : [shape]) {
      node.classList.toggle('focus', focus === id);
      for (let i = 1; i <= 4; i++) node.classList.toggle(`lvl-${i}`, lv === i);
      node.classList.toggle('lvl-none', lv === null);
      node.classList.toggle('alerting', alerting.has(id));
      node.classList.toggle('selected', !!map.pinned && map.pinned.kind === 'zone' && map.pinned.id === id);
    }
    if (label) {
      label.textContent = lv ? t(`levels.${lv}.letter`) : '';
    }
  }
}

export function drawDevices() {
  layers.devices.replaceChildren();
  if (!map.proj) return;
  for (const f of state.devices) {
    const props = f.properties || {};
    if (!f.geometry || f.geometry.type !== 'Point') continue;
    const [lon, lat] = f.geometry.coordinates || [];
    if (!Number.isFinite(lon) || !Number.isFinite(lat)) continue;
    const [x, y] = map.proj.project([lon, lat]);
    const online = props.online === true;
    const kind = String(props.kind || '?');
    const id = String(props.id);
    const g = sel('g', {
      class: `dev ${online ? 'online' : 'offline'}`,
      transform: `translate(${fmt(x)} ${fmt(y)})`,
    });
    g.dataset.deviceId = id;
    g.classList.toggle('selected', !!map.pinned && map.pinned.kind === 'device' && map.pinned.id === id);
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
  const lv = levelOf(zoneLevels().get(id));
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
  if (map.pinned) {
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

export function pin(target) {
  map.pinned = target;
  tooltip.classList.add('pinned');
  tooltip.style.left = '';
  tooltip.style.top = '';
  fillTooltip(target);
  tooltip.hidden = false;
  updateZoneStyles();
  drawDevices();
}

export function unpin() {
  map.pinned = null;
  tooltip.classList.remove('pinned');
  tooltip.hidden = true;
  updateZoneStyles();
  drawDevices();
}

svg.addEventListener('mousemove', (evt) => {
  if (map.pinned || (drag && drag.moved)) return;
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
  if (!map.pinned) tooltip.hidden = true;
});
svg.addEventListener('click', (evt) => {
  if (suppressClick) {
    suppressClick = false;
    return;
  }
  if (map.picking && map.proj) {
    // The hotline form asked for a place: this click is the place, not a zone to pin.
    const p = toUser(evt);
    const done = map.picking;
    map.picking = null;
    svg.classList.remove('picking');
    if (p) {
      const [lon, lat] = map.proj.unproject([p.x, p.y]);
      markPicked([p.x, p.y]);
      done([Math.round(lon * 1e6) / 1e6, Math.round(lat * 1e6) / 1e6]);
    }
    return;
  }
  const target = targetOf(evt.target);
  if (target) {
    pin(target);
    if (target.kind === 'zone') map.onZone(target.id);
  } else if (map.pinned) unpin();
});
/** The next click on the map is a place: ``fn([lon, lat])`` gets it (the hotline form). */
export function pickPoint(fn) {
  map.picking = fn;
  svg.classList.add('picking');
}

export function cancelPick() {
  map.picking = null;
  svg.classList.remove('picking');
}

/** A marker where the hotline's place is (none: ``null``). */
export function markPicked(xy) {
  const layer = $('layer-marks');
  const old = layer.querySelector('.picked');
  if (old) old.remove();
  if (!xy) return;
  const r = Math.max(4, (map.view ? map.view.w : 1000) / 120);
  const mark = document.createElementNS(svg.namespaceURI, 'circle');
  mark.setAttribute('class', 'picked');
  mark.setAttribute('cx', fmt(xy[0]));
  mark.setAttribute('cy', fmt(xy[1]));
  mark.setAttribute('r', fmt(r));
  layer.appendChild(mark);
}

export function isPinned() {
  return map.pinned !== null;
}

export function onZonePicked(fn) {
  map.onZone = fn;
}

export function refreshPinned() {
  if (map.pinned) fillTooltip(map.pinned);
}

// ---------------------------------------------------------------------------------------------
// Legend
// ---------------------------------------------------------------------------------------------
export function buildLegend() {
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


export function buildMapTools() {
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
