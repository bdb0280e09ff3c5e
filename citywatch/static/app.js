// citywatch operators' console: the district map, the alert queue with evidence, the work-order
// board, zone charts and the day's load, kept live from GET /api/stream.
// Plain ES modules, no dependencies, nothing fetched from outside the citywatch API (CONTRACT §4).

import { appealsBlock, funnelAppeals, initHotline, labelHotline, setCategories } from './appeals.js';
import { lineChart, funnelChart } from './charts.js';
import { LANGS, addHazardLabels, getLang, setLang, t, tOr } from './i18n.js';
import { Live } from './live.js';
import {
  buildLegend, buildMap, buildMapTools, drawDevices, isPinned, onZonePicked, pin, refreshPinned,
  revealZone, unpin, updateZoneStyles,
} from './map.js';
import {
  isOverdue, putAlert, putWorkOrder, replaceAlerts, replaceWorkOrders, sortedAlerts, state, zoneName,
} from './state.js';
import {
  $, ApiError, NetError, ageText, clockTime, el, errorText, fetchJSON, formatNumber, hazardName,
  humanKey, levelChip, levelOf, pad2, parseTime, setCsrf, shortTime,
} from './util.js';

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------
const RESYNC_MS = 15000; // lists again while the stream is live: catches what it cannot see
const HEALTH_MS = 5000;
const DEVICES_MS = 10000;
const ZONES_MS = 60000;
const SERIES_MS = 30000;
const FUNNEL_MS = 30000;
const ACTION_ERROR_MS = 20000;
const CHART_HOURS = [1, 3, 6, 12, 24];
const WO_STATES = ['open', 'assigned', 'accepted', 'resolved', 'closed'];
const WO_ACTIONS = ['assign', 'accept', 'resolve', 'close', 'reopen'];
const CLOSED_SHOWN = 30; // the closed column shows the newest few
const HEADER_COUNTS = ['messages', 'stored', 'rejected', 'alerts_open', 'work_orders_open', 'dispatched'];
// hazard -> the reading its evidence shows, and reading -> unit: from GET /api/hazards.
const EVIDENCE_KEYS = {};
const METRIC_UNITS = { rain_rate_mm_h: 'mm/h' };

const ui = {
  busy: new Set(), // alert ids with an action in flight
  actionErrors: new Map(), // alert id -> {text, until}
  alertEls: new Map(), // alert id -> li
  evidence: new Map(), // alert id -> {updated, items} | {error}
  series: new Map(), // zone id -> {hours, at, data}
  chartHours: 6,
  funnel: null,
  dialogOrder: null, // work-order id shown in the dialog
  mode: 'connecting',
  lastOk: null,
  me: null, // GET /api/session: the user, the role and what it may do
};

// ---------------------------------------------------------------------------------------------
// What the logged-in role may do: the page offers only that (the server checks it again).
// ---------------------------------------------------------------------------------------------
function mayAlert(action) {
  const may = ui.me && ui.me.may;
  return Boolean(may && Array.isArray(may.alerts) && may.alerts.includes(action));
}

function mayOrder(w, action) {
  const o = ui.me && ui.me.may ? ui.me.may.work_orders : null;
  if (!o || !Array.isArray(o.actions) || !o.actions.includes(action) || !w) return false;
  if (o.scope === 'all') return true;
  if (o.scope === 'department') return w.department === o.department;
  if (o.scope === 'team') return w.team_id === o.team;
  return false;
}

// ---------------------------------------------------------------------------------------------
// Rendering is batched: a burst of streamed rows redraws once.
// ---------------------------------------------------------------------------------------------
let renderTimer = null;

function scheduleRender() {
  if (renderTimer) return;
  renderTimer = setTimeout(() => {
    renderTimer = null;
    renderAll();
  }, 30);
}

function renderAll() {
  updateZoneStyles();
  renderAlerts();
  renderBoard();
  renderDialog();
  refreshPinned();
  followChartZone();
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
    const features = fc && Array.isArray(fc.features) ? fc.features.filter((f) => f && f.properties) : [];
    state.zones = new Map(features.map((f) => [String(f.properties.id), f]));
    buildMap(features);
    const msg = $('map-empty');
    msg.textContent = features.length ? '' : t('mapEmpty');
    msg.hidden = features.length > 0;
  } catch (err) {
    if (!state.zones.size) {
      const msg = $('map-empty');
      msg.textContent = t('mapUnavailable', { detail: errorText(err) });
      msg.hidden = false;
    }
    throw err;
  }
}

async function loadAlerts() {
  const started = Date.now();
  try {
    const [active, acked] = await Promise.all([
      fetchJSON('/api/alerts?state=active'),
      fetchJSON('/api/alerts?state=acknowledged'),
    ]);
    replaceAlerts([...(Array.isArray(active) ? active : []), ...(Array.isArray(acked) ? acked : [])], started);
    state.loaded.alerts = true;
    showMsg('alerts-msg', '');
  } catch (err) {
    showMsg('alerts-msg', t('unavailable', { detail: errorText(err) }));
    throw err;
  }
}

async function loadWorkOrders() {
  const started = Date.now();
  try {
    const wos = await fetchJSON('/api/work-orders');
    replaceWorkOrders(Array.isArray(wos) ? wos.filter((w) => w && typeof w === 'object') : [], started);
    state.loaded.workOrders = true;
    showMsg('wo-msg', '');
  } catch (err) {
    showMsg('wo-msg', t('unavailable', { detail: errorText(err) }));
    throw err;
  }
}

function reportUnexpected(results) {
  for (const r of results) {
    if (r.status === 'rejected' && !(r.reason instanceof NetError) && !(r.reason instanceof ApiError)) {
      console.error(r.reason); // our own bug: show it to whoever opens the browser console
    }
  }
}

/** The hazards the server knows (built in and plug-ins): their names, readings, categories. */
async function loadHazards() {
  const doc = await fetchJSON('/api/hazards');
  const list = doc && Array.isArray(doc.hazards) ? doc.hazards : [];
  addHazardLabels(list);
  for (const h of list) {
    if (h.metric && typeof h.metric.key === 'string') {
      EVIDENCE_KEYS[h.name] = h.metric.key;
      METRIC_UNITS[h.metric.key] = h.metric.unit || '';
    }
  }
  setCategories(list.filter((h) => h.service_code).map((h) => h.service_code));
  ui.hazardsLoaded = true;
  applyLabels();
}

/** Fetch the lists (and the zones the first time). True when the server answered. */
async function resync() {
  if (!ui.me && (await loadSession())) {
    applyLabels(); // the server was away when the page loaded: now it says who we are
    scheduleRender();
  }
  const jobs = [loadAlerts(), loadWorkOrders()];
  if (!state.zones.size) jobs.push(loadZones()); // the map needs them once, then every ZONES_MS
  if (!ui.hazardsLoaded) jobs.push(loadHazards());
  const results = await Promise.allSettled(jobs);
  reportUnexpected(results);
  const ok = results.every((r) => r.status === 'fulfilled');
  if (ok) ui.lastOk = Date.now();
  scheduleRender();
  return ok;
}

function every(ms, fn) {
  const run = async () => {
    try {
      await fn();
    } catch (err) {
      if (!(err instanceof NetError) && !(err instanceof ApiError)) console.error(err);
    }
    setTimeout(run, ms);
  };
  run();
}

// ---------------------------------------------------------------------------------------------
// Header: health, connection, clock
// ---------------------------------------------------------------------------------------------
function serviceOk(v) {
  if (typeof v === 'boolean') return v;
  if (v && typeof v === 'object') {
    for (const k of ['connected', 'ok', 'up']) if (k in v) return serviceOk(v[k]);
  }
  return null;
}

function renderHealth() {
  const h = state.health;
  const counts = $('counts');
  const services = $('services');
  counts.replaceChildren();
  services.replaceChildren();
  if (!h || typeof h !== 'object') return;
  const all = { ...(h.counts && typeof h.counts === 'object' ? h.counts : {}), lag_s: h.lag_s };
  for (const k of [...HEADER_COUNTS, 'lag_s']) {
    if (typeof all[k] !== 'number') continue;
    const li = el('li');
    li.appendChild(el('span', { class: 'count-v' }, formatNumber(all[k])));
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
    li.title = t(ok === true ? 'serviceOk' : ok === false ? 'serviceDown' : 'serviceUnknown', { name });
    services.appendChild(li);
  }
  if (typeof h.status === 'string') {
    // The pipeline itself: working, degraded (warnings) or failing (a worker dead or stuck).
    const why = [...(h.problems || []), ...(h.warnings || [])].join('; ');
    const cls = { ok: 'svc-ok', degraded: 'svc-warn', failing: 'svc-bad' }[h.status] || 'svc-unknown';
    const li = el('li', { class: `svc ${cls}`, id: 'pipeline-state', 'data-status': h.status });
    li.appendChild(el('span', { class: 'dot', 'aria-hidden': 'true' }));
    li.appendChild(el('span', {}, tOr(`pipeline.${h.status}`, h.status)));
    li.title = why || tOr(`pipeline.${h.status}`, h.status);
    services.appendChild(li);
  }
}

function renderConn() {
  const c = $('conn');
  const text = { connecting: 'connecting', live: 'live', polling: 'polling', down: 'disconnected' }[ui.mode];
  const cls = { connecting: 'conn-wait', live: 'conn-live', polling: 'conn-poll', down: 'conn-down' }[ui.mode];
  c.className = `conn ${cls}`;
  c.dataset.mode = ui.mode;
  c.textContent = t(text);
  c.title = ui.lastOk ? t('lastUpdate', { time: clockTime(ui.lastOk) }) : '';
  document.body.classList.toggle('stale', ui.mode === 'down');
}

function tickClock() {
  const d = new Date();
  const clock = $('clock');
  clock.textContent = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${clockTime(d.getTime())}`;
  clock.setAttribute('datetime', d.toISOString());
}

// ---------------------------------------------------------------------------------------------
// Alert queue
// ---------------------------------------------------------------------------------------------
const alertParts = new WeakMap(); // li -> the nodes updated on every render

function createAlertEl(id) {
  const li = el('li', { class: 'alert', tabindex: '-1' });
  li.dataset.alertId = id;
  const chip = el('span', { class: 'chip' });
  const body = el('div', { class: 'alert-body' });
  const title = el('div', { class: 'alert-title' });
  const meta = el('div', { class: 'alert-meta' });
  const err = el('div', { class: 'alert-err', role: 'alert' });
  err.hidden = true;
  body.append(title, meta, err);
  const actions = el('div', { class: 'alert-actions' });
  const ack = el('button', { type: 'button', class: 'btn btn-ack' });
  const res = el('button', { type: 'button', class: 'btn btn-resolve' });
  ack.addEventListener('click', (e) => {
    e.stopPropagation();
    actOnAlert(id, 'acknowledge');
  });
  res.addEventListener('click', (e) => {
    e.stopPropagation();
    actOnAlert(id, 'resolve');
  });
  actions.append(ack, res);
  const detail = el('div', { class: 'alert-detail' });
  detail.hidden = true;
  li.append(chip, body, actions, detail);
  li.addEventListener('click', (e) => {
    if (e.target.closest('.alert-detail')) return;
    selectAlert(id, { reveal: true });
  });
  alertParts.set(li, { chip, title, meta, err, ack, res, detail });
  return li;
}

function workOrderLabel(id) {
  const s = String(id);
  return /^wo-/i.test(s) ? s : t('workOrderShort', { id: s });
}

function updateAlertEl(li, a, now) {
  const { chip, title, meta, err, ack, res, detail } = alertParts.get(li);
  const lv = levelOf(a.severity);
  chip.className = `chip lvl-${lv ?? 'none'}`;
  chip.textContent = lv ? t(`levels.${lv}.letter`) : '–';
  chip.title = lv ? `${t(`levels.${lv}.name`)} — ${t(`levels.${lv}.meaning`)}` : t('noLevel');
  title.textContent = a.title || hazardName(a.hazard);
  title.title = a.title || '';
  // Most important first, since a narrow screen cuts the end of the line.
  meta.replaceChildren(document.createTextNode(`${zoneName(a.zone_id)} · ${ageText(a.raised, now)} · `));
  meta.appendChild(el('span', { class: `state state-${a.state}` }, tOr(`alertStates.${a.state}`, a.state)));
  const rest = [hazardName(a.hazard)];
  if (a.work_order_id) rest.push(workOrderLabel(a.work_order_id));
  meta.appendChild(document.createTextNode(` · ${rest.join(' · ')}`));
  li.classList.toggle('acknowledged', a.state === 'acknowledged');
  const id = String(a.id);
  const selected = state.selectedAlert === id;
  li.classList.toggle('selected', selected);
  li.setAttribute('aria-selected', selected ? 'true' : 'false');
  const busy = ui.busy.has(id);
  li.classList.toggle('busy', busy);
  ack.disabled = busy || a.state !== 'active';
  res.disabled = busy;
  ack.hidden = !mayAlert('acknowledge');
  res.hidden = !mayAlert('resolve');
  ack.textContent = busy ? t('working') : t('acknowledge');
  res.textContent = t('resolve');
  const e = ui.actionErrors.get(id);
  if (e && e.until > now) {
    err.textContent = e.text;
    err.hidden = false;
  } else {
    err.hidden = true;
    err.textContent = '';
  }
  detail.hidden = !selected;
  if (selected) renderAlertDetail(detail, a);
}

function renderAlerts() {
  const list = $('alerts');
  const now = Date.now();
  const alerts = sortedAlerts();
  const seen = new Set();
  const order = [];
  const firstAck = alerts.findIndex((a) => a.state !== 'active');
  for (const a of alerts) {
    const id = String(a.id);
    seen.add(id);
    let li = ui.alertEls.get(id);
    if (!li) {
      li = createAlertEl(id);
      ui.alertEls.set(id, li);
    }
    updateAlertEl(li, a, now);
    order.push(li);
  }
  for (const [id, li] of ui.alertEls) {
    if (!seen.has(id)) {
      li.remove();
      ui.alertEls.delete(id);
      ui.evidence.delete(id);
    }
  }
  if (state.selectedAlert && !seen.has(state.selectedAlert)) state.selectedAlert = null;
  let divider = list.querySelector('.queue-divider');
  if (firstAck > 0 || (firstAck === 0 && alerts.length)) {
    if (!divider) divider = el('li', { class: 'queue-divider' });
    divider.textContent = t('acknowledgedHeading', { n: alerts.length - firstAck });
    order.splice(firstAck, 0, divider);
  } else if (divider) divider.remove();
  // Move nodes only where the order changed, so that a click in progress is not disturbed.
  order.forEach((node, i) => {
    if (list.children[i] !== node) list.insertBefore(node, list.children[i] || null);
  });
  const empty = list.querySelector('.empty');
  const showEmpty = !alerts.length && state.loaded.alerts;
  if (showEmpty && !empty) list.appendChild(el('li', { class: 'empty' }, t('noAlerts')));
  if (!showEmpty && empty) empty.remove();
  const active = alerts.filter((a) => a.state === 'active').length;
  $('alerts-count').textContent = t('alertCounts', { active, ack: alerts.length - active });
}

function selectAlert(id, { reveal = false, scroll = false } = {}) {
  state.selectedAlert = id;
  const a = state.alerts.get(id);
  if (a && reveal && !isPinned()) revealZone(String(a.zone_id));
  renderAll();
  const li = ui.alertEls.get(id);
  if (li && scroll) li.scrollIntoView({ block: 'nearest' });
}

function moveSelection(step) {
  const alerts = sortedAlerts();
  if (!alerts.length) return;
  let i = alerts.findIndex((a) => String(a.id) === state.selectedAlert);
  i = i < 0 ? (step > 0 ? 0 : alerts.length - 1) : (i + step + alerts.length) % alerts.length;
  selectAlert(String(alerts[i].id), { reveal: true, scroll: true });
}

async function actOnAlert(id, action, reason = '') {
  if (ui.busy.has(id) || !mayAlert(action)) return;
  if (action === 'resolve' && !reason) {
    openResolve(id); // a resolve needs a reason, recorded with the user's name
    return;
  }
  ui.busy.add(id);
  ui.actionErrors.delete(id);
  renderAlerts();
  try {
    const row = await fetchJSON(`/api/alerts/${encodeURIComponent(id)}/${action}`, {
      method: 'POST', body: JSON.stringify(reason ? { reason } : {}),
    });
    putAlert(row);
  } catch (err) {
    const text = t('actionFailed', { action: tOr(`actionNames.${action}`, action), detail: errorText(err) });
    ui.actionErrors.set(id, { text, until: Date.now() + ACTION_ERROR_MS });
  } finally {
    ui.busy.delete(id);
  }
  renderAll();
}

// --- resolving: the reason first -------------------------------------------------------------
const resolveDialog = $('resolve-dialog');
let resolving = null;

function openResolve(id) {
  resolving = id;
  $('resolve-title').textContent = t('resolveTitle', { id });
  $('resolve-reason').value = '';
  $('resolve-result').hidden = true;
  if (!resolveDialog.open) resolveDialog.showModal();
  $('resolve-reason').focus();
}

$('resolve-form').addEventListener('submit', (evt) => {
  evt.preventDefault();
  const reason = $('resolve-reason').value.trim();
  if (!reason) {
    $('resolve-result').textContent = t('resolveNeedsReason');
    $('resolve-result').hidden = false;
    return;
  }
  const id = resolving;
  resolveDialog.close();
  if (id) actOnAlert(id, 'resolve', reason);
});
$('resolve-close').addEventListener('click', () => resolveDialog.close());
resolveDialog.addEventListener('close', () => {
  resolving = null;
});

// --- the selected alert's evidence and work order ---------------------------------------------
function renderAlertDetail(box, a) {
  const id = String(a.id);
  const ev = ui.evidence.get(id);
  if (!ev || ev.updated !== a.updated) loadEvidence(id, a.updated);
  box.replaceChildren();
  const head = el('div', { class: 'detail-head' }, t('evidence'));
  box.appendChild(head);
  if (!ev) {
    box.appendChild(el('div', { class: 'muted small' }, t('evidenceLoading')));
  } else if (ev.error) {
    box.appendChild(el('div', { class: 'alert-err' }, ev.error));
  } else {
    box.appendChild(evidenceChart(a, ev.items, box));
  }
  box.appendChild(appealsBlock(a, scheduleRender)); // residents' appeals about it, if any
  const w = a.work_order_id ? state.workOrders.get(String(a.work_order_id)) : null;
  const line = el('div', { class: 'alert-wo' });
  if (w) {
    line.appendChild(el('span', { class: 'mono' }, w.id));
    line.appendChild(el('span', { class: `state state-${w.state}` }, tOr(`woStates.${w.state}`, w.state)));
    line.appendChild(el('span', {}, humanKey(w.department || '')));
    line.appendChild(el('span', { class: 'mono' }, w.team_id || t('noTeam')));
    line.appendChild(el('span', {}, `${t('respondBy')} ${shortTime(w.respond_by)}`));
    if (isOverdue(w)) line.appendChild(el('span', { class: 'overdue-tag' }, `! ${t('overdueTag')}`));
    const open = el('button', { type: 'button', class: 'btn btn-wo' }, `${t('openWorkOrder')} (W)`);
    open.addEventListener('click', (e) => {
      e.stopPropagation();
      openWorkOrder(String(w.id));
    });
    line.appendChild(open);
  } else {
    line.appendChild(el('span', { class: 'muted' }, a.work_order_id ? workOrderLabel(a.work_order_id) : t('noWorkOrder')));
  }
  box.appendChild(line);
}

const evidenceLoading = new Set();

async function loadEvidence(id, updated) {
  if (evidenceLoading.has(id)) return;
  evidenceLoading.add(id);
  try {
    const full = await fetchJSON(`/api/alerts/${encodeURIComponent(id)}`);
    ui.evidence.set(id, { updated, items: Array.isArray(full.evidence) ? full.evidence : [] });
  } catch (err) {
    ui.evidence.set(id, { updated, error: errorText(err) });
  } finally {
    evidenceLoading.delete(id);
  }
  scheduleRender();
}

/** The readings that raised the alert, one line per device, with the zone's thresholds. */
function evidenceChart(a, items, box) {
  const key = EVIDENCE_KEYS[a.hazard];
  const byDevice = new Map();
  for (const item of items) {
    const v = item ? Number(item[key]) : NaN;
    const ms = item ? parseTime(item.ts) : null;
    if (!Number.isFinite(v) || ms === null || item[key] === null) continue;
    const dev = String(item.device_id || '');
    if (!byDevice.has(dev)) byDevice.set(dev, []);
    byDevice.get(dev).push({ t: ms, v });
  }
  if (!byDevice.size) return el('div', { class: 'muted small' }, t('evidenceNone'));
  const series = [...byDevice.entries()].map(([name, points]) => ({ name, points: points.sort((p, q) => p.t - q.t) }));
  const cached = ui.series.get(String(a.zone_id));
  const thresholds = cached && cached.data && cached.data.metrics[key] ? cached.data.metrics[key].thresholds : {};
  const wrap = el('div', { class: 'evidence' });
  const width = Math.max((box.clientWidth || $('alerts').clientWidth || 400) - 24, 200);
  // Small enough on a laptop that the rest of the queue stays in view.
  const height = Math.round(Math.min(110, Math.max(64, $('alerts').clientHeight * 0.25)));
  wrap.appendChild(lineChart({
    width, height, series, thresholds, unit: METRIC_UNITS[key] || '', labelLone: true,
    label: `${t('evidence')}: ${tOr(`metrics.${key}`, key)}`,
  }));
  const legend = el('div', { class: 'evidence-legend small' });
  series.forEach((s, i) => {
    const last = s.points[s.points.length - 1];
    const item = el('span', { class: `ev-key s${i % 6}` });
    item.textContent = `${s.name}: ${formatNumber(last.v)} ${METRIC_UNITS[key] || ''} @ ${clockTime(last.t)}`;
    legend.appendChild(item);
  });
  wrap.appendChild(legend);
  return wrap;
}

// ---------------------------------------------------------------------------------------------
// Work-order board: a column per state, grouped by department inside, overdue marked.
// ---------------------------------------------------------------------------------------------
function renderDepartments() {
  const sel = $('wo-dept');
  const depts = [...new Set([...state.workOrders.values()].map((w) => w.department).filter(Boolean))].sort();
  const want = ['', ...depts];
  const have = [...sel.options].map((o) => o.value);
  if (want.join('|') !== have.join('|') || sel.dataset.lang !== getLang()) {
    sel.replaceChildren(...want.map((d) => el('option', { value: d }, d ? humanKey(d) : t('allDepartments'))));
    sel.dataset.lang = getLang();
  }
  sel.value = state.department;
  const teams = [...new Set([...state.workOrders.values()].map((w) => w.team_id).filter(Boolean))].sort();
  const list = $('team-list');
  if (list.children.length !== teams.length) list.replaceChildren(...teams.map((x) => el('option', { value: x })));
}

function renderBoard() {
  renderDepartments();
  const now = Date.now();
  const all = [...state.workOrders.values()];
  const shown = all.filter((w) => !state.department || w.department === state.department);
  const board = $('board');
  const states = state.showClosed ? WO_STATES : WO_STATES.filter((s) => s !== 'closed');
  board.style.setProperty('--cols', String(states.length));
  const columns = [];
  for (const st of states) {
    let rows = shown.filter((w) => w.state === st);
    rows.sort((a, b) => String(a.department).localeCompare(String(b.department))
      || (levelOf(a.severity) ?? 5) - (levelOf(b.severity) ?? 5)
      || (parseTime(b.created) ?? 0) - (parseTime(a.created) ?? 0));
    const total = rows.length;
    if (st === 'closed') rows = rows.slice(0, CLOSED_SHOWN);
    const col = el('section', { class: `wo-col col-${st}`, 'aria-label': tOr(`woStates.${st}`, st) });
    const overdue = rows.filter((w) => isOverdue(w, now)).length;
    const head = el('h3', { class: `col-head state-${st}` }, tOr(`woStates.${st}`, st));
    const count = el('span', { class: 'col-count' }, String(total));
    if (overdue) count.prepend(el('span', { class: 'overdue-tag', title: t('overdue') }, `! ${overdue}`), ' ');
    head.appendChild(count);
    col.appendChild(head);
    const list = el('div', { class: 'col-cards' });
    let dept = null;
    for (const w of rows) {
      if (w.department !== dept) {
        dept = w.department;
        list.appendChild(el('div', { class: 'dept-head', title: dept }, humanKey(dept || '—')));
      }
      list.appendChild(workOrderCard(w, now));
    }
    col.appendChild(list);
    columns.push(col);
  }
  board.replaceChildren(...columns);
  const inProgress = all.filter((w) => ['open', 'assigned', 'accepted'].includes(w.state)).length;
  const overdueAll = all.filter((w) => isOverdue(w, now)).length;
  $('wo-count').textContent = t('woCounts', { open: inProgress, overdue: overdueAll, total: all.length });
  const closed = all.filter((w) => w.state === 'closed').length;
  $('wo-closed-label').textContent = `${t('showClosed')} (${closed})`;
}

function workOrderCard(w, now) {
  const overdue = isOverdue(w, now);
  const card = el('button', { type: 'button', class: `wo-card${overdue ? ' overdue' : ''}`, title: w.title || '' });
  card.dataset.woId = w.id;
  const top = el('div', { class: 'card-top' });
  top.appendChild(levelChip(w.severity));
  top.appendChild(el('span', { class: 'mono card-id' }, w.id));
  card.appendChild(top);
  card.appendChild(el('div', { class: 'card-zone' }, zoneName(w.zone_id)));
  const meta = el('div', { class: 'card-meta' });
  meta.appendChild(el('span', { class: 'meta-text' }, `${hazardName(w.hazard)} · ${w.team_id || t('noTeam')}`));
  if (!['resolved', 'closed'].includes(w.state)) {
    // What is due next: a response until accepted, then the fix. Overdue: "!" and the word in
    // the tooltip, besides the red, so that it does not rest on colour alone.
    const due = w.state === 'accepted' ? w.resolve_by : w.respond_by;
    const label = t(w.state === 'accepted' ? 'resolveBy' : 'respondBy');
    meta.appendChild(el('span', {
      class: 'card-due mono', title: overdue ? `${t('overdue')}: ${label}` : label,
    }, `${overdue ? '! ' : ''}${shortTime(due)}`));
  }
  card.appendChild(meta);
  card.addEventListener('click', () => openWorkOrder(String(w.id)));
  return card;
}

// --- one work order: fields, history, actions --------------------------------------------------
const dialog = $('wo-dialog');

async function openWorkOrder(id) {
  ui.dialogOrder = id;
  showResult(null);
  $('wo-reason').value = '';
  const w = state.workOrders.get(id);
  $('wo-team').value = w && w.team_id ? w.team_id : '';
  renderDialog();
  if (!dialog.open) dialog.showModal();
  try {
    putWorkOrder(await fetchJSON(`/api/work-orders/${encodeURIComponent(id)}`));
    renderDialog();
  } catch (err) {
    showResult({ kind: 'bad', text: t('unavailable', { detail: errorText(err) }) });
  }
}

function renderDialog() {
  if (!dialog.open && ui.dialogOrder === null) return;
  const w = state.workOrders.get(ui.dialogOrder);
  if (!w) return;
  $('wo-d-title').replaceChildren(levelChip(w.severity), document.createTextNode(` ${w.id} — ${w.title || hazardName(w.hazard)}`));
  const dl = $('wo-d-fields');
  dl.replaceChildren();
  const add = (key, value, cls) => {
    dl.appendChild(el('dt', {}, t(`wo.${key}`)));
    const dd = el('dd', { class: cls || '' });
    if (value instanceof Node) dd.appendChild(value);
    else dd.textContent = value === undefined || value === null || value === '' ? t('dash') : String(value);
    dl.appendChild(dd);
  };
  const overdue = isOverdue(w);
  const stateNode = el('span', { class: `state state-${w.state}` }, tOr(`woStates.${w.state}`, w.state));
  add('state', stateNode);
  add('hazard', hazardName(w.hazard));
  add('zone', `${zoneName(w.zone_id)} (${w.zone_id})`);
  add('department', humanKey(w.department || ''));
  add('team', w.team_id || t('noTeam'));
  add('created', `${shortTime(w.created)} (${ageText(w.created)})`);
  const respond = el('span', {}, shortTime(w.respond_by));
  if (overdue) respond.appendChild(el('span', { class: 'overdue-tag' }, `! ${t('overdueTag')}`));
  add('respond_by', respond);
  add('resolve_by', shortTime(w.resolve_by));
  add('alerts', Array.isArray(w.alert_ids) ? w.alert_ids.join(', ') : '');
  if (w.duplicates) add('duplicates', w.duplicates);
  if (Array.isArray(w.flags) && w.flags.length) add('flags', w.flags.join(', '));
  if (w.escalation_level) add('escalation_level', w.escalation_level);
  $('wo-d-history-head').replaceChildren(...['ts', 'change', 'actor', 'reason'].map((k) => el('th', {}, t(`historyCols.${k}`))));
  const body = $('wo-d-history');
  const history = Array.isArray(w.history) ? [...w.history].reverse() : [];
  body.replaceChildren(...history.map((h) => {
    const tr = el('tr');
    tr.appendChild(el('td', { class: 'mono', title: h.ts }, shortTime(h.ts)));
    const from = h.from ? tOr(`woStates.${h.from}`, h.from) : '';
    tr.appendChild(el('td', {}, from && h.from !== h.to ? `${from} → ${tOr(`woStates.${h.to}`, h.to)}` : tOr(`woStates.${h.to}`, h.to)));
    tr.appendChild(el('td', {}, h.actor || ''));
    tr.appendChild(el('td', {}, h.reason || ''));
    return tr;
  }));
  const buttons = $('wo-buttons');
  if (buttons.dataset.lang !== getLang()) {
    buttons.replaceChildren(...WO_ACTIONS.map((a) => {
      const b = el('button', { type: 'button', class: `btn btn-${a}` }, tOr(`actionButtons.${a}`, a));
      b.dataset.action = a;
      b.addEventListener('click', () => actOnWorkOrder(a));
      return b;
    }));
    buttons.dataset.lang = getLang();
  }
  let any = false;
  for (const b of buttons.querySelectorAll('button')) {
    b.hidden = !mayOrder(w, b.dataset.action);
    any = any || !b.hidden;
  }
  $('wo-form').hidden = !any;
  $('wo-readonly').hidden = any;
}

function showResult(result) {
  const box = $('wo-result');
  box.replaceChildren();
  if (!result) {
    box.hidden = true;
    return;
  }
  box.className = `wo-result ${result.kind}`;
  box.appendChild(el('div', { class: 'result-main' }, result.text));
  if (result.detail) box.appendChild(el('div', { class: 'result-detail' }, result.detail));
  box.hidden = false;
}

/** The API's refusal in plain words, with its own reason underneath. */
function refusalText(err, id, action) {
  const body = err.body && typeof err.body === 'object' ? err.body : {};
  const server = t('serverSaid', { detail: err.detail });
  if (err.status === 409 && typeof body.state === 'string') {
    const stateName = tOr(`woStates.${body.state}`, body.state);
    const verb = tOr(`verbs.${action}`, action);
    let text = t('refused', { id, verb, state: stateName });
    const m = /allowed from '[^']*': ([^)]*)\)/.exec(err.detail || '');
    if (m) {
      const allowed = m[1].split(',').map((s) => s.trim()).filter(Boolean).map((a) => tOr(`verbs.${a}`, a));
      text += ` ${t('refusedAllowed', { state: stateName, allowed: allowed.join(', ') })}`;
    } else if (/it is final/.test(err.detail || '')) {
      text += ` ${t('refusedFinal')}`;
    }
    return { kind: 'bad', text, detail: server };
  }
  if (err.status === 409 && Array.isArray(body.evidence)) {
    // Refused because the sensors still see the hazard: no closing an order on paper only.
    const w = state.workOrders.get(id);
    const hazard = w ? hazardName(w.hazard).toLowerCase() : '';
    return { kind: 'bad', text: t('refusedSensors', { id, hazard, verb: tOr(`verbs.${action}`, action) }), detail: server };
  }
  if (err.status === 409) return { kind: 'bad', text: t('refusedOther', { detail: err.detail }) };
  if (err.status === 403) return { kind: 'bad', text: t('forbidden', { detail: err.detail }) };
  if (err.status === 404) return { kind: 'bad', text: t('notFound', { detail: err.detail }) };
  if (err.status === 422 || err.status === 400) return { kind: 'bad', text: t('invalid', { detail: err.detail }) };
  return { kind: 'bad', text: t('actionFailed', { action: tOr(`actionNames.${action}`, action), detail: err.detail }) };
}

async function actOnWorkOrder(action) {
  const id = ui.dialogOrder;
  if (!id) return;
  // The server records the logged-in user as the actor; no field of the request can change it.
  const body = { reason: $('wo-reason').value.trim() };
  const team = $('wo-team').value.trim();
  if (action === 'assign' && team) body.team_id = team;
  const buttons = [...$('wo-buttons').querySelectorAll('button')];
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const row = await fetchJSON(`/api/work-orders/${encodeURIComponent(id)}/${action}`, {
      method: 'POST', body: JSON.stringify(body),
    });
    putWorkOrder(row);
    showResult({ kind: 'good', text: t('done', { id, state: tOr(`woStates.${row.state}`, row.state) }) });
    $('wo-reason').value = '';
  } catch (err) {
    showResult(err instanceof ApiError ? refusalText(err, id, action) : { kind: 'bad', text: errorText(err) });
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
  renderAll();
}

dialog.addEventListener('close', () => {
  ui.dialogOrder = null;
});
$('wo-d-close').addEventListener('click', () => dialog.close());

// ---------------------------------------------------------------------------------------------
// Zone charts and the day's funnel
// ---------------------------------------------------------------------------------------------
function followChartZone() {
  if (state.chartZonePicked && state.chartZone) return;
  const sel = state.selectedAlert ? state.alerts.get(state.selectedAlert) : null;
  const top = sel || sortedAlerts()[0];
  const zone = top ? String(top.zone_id) : null;
  if (zone !== state.chartZone) {
    state.chartZone = zone;
    loadSeries(true);
  }
}

let seriesLoading = null;

async function loadSeries(render = false) {
  const zone = state.chartZone;
  if (!zone) {
    renderCharts();
    return;
  }
  const cached = ui.series.get(zone);
  if (render) renderCharts();
  if (seriesLoading === zone) return;
  if (cached && cached.hours === ui.chartHours && Date.now() - cached.at < 5000) return;
  seriesLoading = zone;
  try {
    const data = await fetchJSON(`/api/zones/${encodeURIComponent(zone)}/series?hours=${ui.chartHours}`);
    ui.series.set(zone, { hours: ui.chartHours, at: Date.now(), data });
  } catch (err) {
    ui.series.set(zone, { hours: ui.chartHours, at: Date.now(), error: errorText(err) });
  } finally {
    seriesLoading = null;
  }
  if (state.chartZone === zone) renderCharts();
  scheduleRender(); // the evidence chart draws the thresholds it now knows
}

function renderCharts() {
  const box = $('charts');
  const zone = state.chartZone;
  $('chart-zone').textContent = zone ? `${zoneName(zone)} · ${tOr(`zoneTypes.${state.zones.get(zone)?.properties?.type}`, '')}` : '';
  $('chart-caption').textContent = t('chartCaption');
  if (!zone) {
    box.replaceChildren(el('div', { class: 'muted chart-hint' }, t('noZone')));
    return;
  }
  const cached = ui.series.get(zone);
  if (!cached) {
    box.replaceChildren(el('div', { class: 'muted chart-hint' }, '…'));
    return;
  }
  if (cached.error) {
    box.replaceChildren(el('div', { class: 'alert-err' }, t('unavailable', { detail: cached.error })));
    return;
  }
  const data = cached.data;
  const t1 = parseTime(data.to) ?? Date.now();
  const t0 = parseTime(data.from) ?? t1 - ui.chartHours * 3600000;
  const boxes = [];
  // A metric the zone has neither sensors nor thresholds for is left out, not drawn empty.
  const shown = Object.entries(data.metrics || {}).filter(([, m]) => (m.buckets && m.buckets.length)
    || Object.keys(m.thresholds || {}).length);
  if (!shown.length) {
    box.replaceChildren(el('div', { class: 'muted chart-hint' }, t('noSensors')));
    return;
  }
  const n = shown.length;
  const width = Math.max(Math.floor((box.clientWidth - 20 - 12 * (n - 1)) / n), 160);
  const height = Math.max(box.clientHeight - 24, 80);
  for (const [key, m] of shown) {
    const cell = el('figure', { class: `chart-box metric-${key}` });
    const buckets = Array.isArray(m.buckets) ? m.buckets : [];
    const last = buckets[buckets.length - 1];
    const cap = el('figcaption');
    cap.appendChild(el('span', { class: 'chart-title' }, `${tOr(`metrics.${key}`, key)} (${m.unit})`));
    if (last) cap.appendChild(el('span', { class: 'chart-last' }, t('latest', { avg: formatNumber(last.avg), max: formatNumber(last.max) })));
    cell.appendChild(cap);
    // A bucket is drawn at its middle; the current one, still filling, at the present.
    const at = (b) => Math.min(parseTime(b.t) + (data.bucket_s || 300) * 500, t1);
    const points = buckets.map((b) => ({ t: at(b), v: b.avg }));
    const band = buckets.map((b) => ({ t: at(b), v: b.max }));
    cell.appendChild(lineChart({
      width, height, series: [{ name: tOr(`metrics.${key}`, key), points, band }],
      thresholds: m.thresholds || {}, unit: m.unit, xDomain: [t0, t1],
      label: `${tOr(`metrics.${key}`, key)} — ${zoneName(zone)}`,
    }));
    boxes.push(cell);
  }
  box.replaceChildren(...boxes);
}

async function loadFunnel() {
  ui.funnel = await fetchJSON('/api/funnel');
  renderFunnel();
}

function renderFunnel() {
  const f = ui.funnel;
  const box = $('funnel');
  if (!f) {
    box.replaceChildren();
    return;
  }
  const stages = ['messages', 'alerts', 'incidents', 'work_orders'].map((key) => ({
    key, label: t(`funnelStages.${key}`), count: Number(f[key]) || 0,
  }));
  const per = el('div', { class: 'funnel-per' });
  per.appendChild(el('span', { class: 'funnel-per-n mono' }, formatNumber(Number(f.orders_per_operator) || 0)));
  per.appendChild(el('span', {}, t('perOperator', { ops: f.operators })));
  const more = el('dl', { class: 'funnel-more' });
  for (const key of ['telemetry', 'events', 'rejected', 'duplicates_merged']) {
    if (typeof f[key] !== 'number') continue;
    more.appendChild(el('dt', {}, t(`funnelMore.${key}`)));
    more.appendChild(el('dd', { class: 'mono' }, formatNumber(f[key])));
  }
  box.replaceChildren(...[funnelChart(stages), per, more, funnelAppeals(f)].filter(Boolean));
  $('funnel-note').textContent = t('funnelNote', { tz: f.tz || '' });
}

// ---------------------------------------------------------------------------------------------
// Keyboard
// ---------------------------------------------------------------------------------------------
const KEYS = [
  ['J / N', 'next'], ['K / P', 'prev'], ['A', 'ack'], ['Shift + R', 'resolve'], ['W', 'order'],
  ['M', 'zoom'], ['L', 'lang'], ['?', 'help'], ['Esc', 'esc'],
];

function renderHelp() {
  const dl = $('help-keys');
  dl.replaceChildren();
  for (const [key, what] of KEYS) {
    const dt = el('dt');
    for (const part of key.split(' ')) {
      if (part === '/' || part === '+') dt.appendChild(document.createTextNode(` ${part} `));
      else dt.appendChild(el('kbd', {}, part));
    }
    dl.appendChild(dt);
    dl.appendChild(el('dd', {}, t(`keys.${what}`)));
  }
}

function toggleHelp() {
  const help = $('help-dialog');
  if (help.open) help.close();
  else {
    renderHelp();
    help.showModal();
  }
}

document.addEventListener('keydown', (evt) => {
  if (evt.ctrlKey || evt.metaKey || evt.altKey) return;
  const target = evt.target;
  const typing = target && (target.isContentEditable || ['INPUT', 'SELECT', 'TEXTAREA'].includes(target.tagName));
  if (typing) return;
  const anyDialog = dialog.open || $('help-dialog').open || resolveDialog.open
    || $('hotline-dialog').open;
  if (evt.key === '?') {
    evt.preventDefault();
    if (!dialog.open) toggleHelp();
    return;
  }
  if (evt.key === 'Escape') {
    if (!anyDialog && isPinned()) unpin();
    return;
  }
  if (anyDialog) return;
  const selected = state.selectedAlert;
  switch (evt.key) {
    case 'j': case 'n': case 'J': case 'N':
      moveSelection(1);
      break;
    case 'k': case 'p': case 'K': case 'P':
      moveSelection(-1);
      break;
    case 'a': case 'A':
      if (!mayAlert('acknowledge')) return;
      if (!selected) moveSelection(1);
      if (state.selectedAlert) actOnAlert(state.selectedAlert, 'acknowledge');
      break;
    case 'R': // Shift: resolving is not undone, so it is not one stray key away
      if (selected) actOnAlert(selected, 'resolve');
      break;
    case 'w': case 'W': {
      const a = selected ? state.alerts.get(selected) : null;
      if (a && a.work_order_id) openWorkOrder(String(a.work_order_id));
      break;
    }
    case 'm': case 'M': {
      const a = selected ? state.alerts.get(selected) : null;
      if (a) {
        pin({ kind: 'zone', id: String(a.zone_id) });
        revealZone(String(a.zone_id));
      }
      break;
    }
    case 'l': case 'L':
      switchLanguage();
      break;
    default:
      return;
  }
  evt.preventDefault();
});

// ---------------------------------------------------------------------------------------------
// Language
// ---------------------------------------------------------------------------------------------
function applyLabels() {
  const lang = getLang();
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
  document.title = t('title');
  for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
  const btn = $('lang-btn');
  btn.textContent = t('language');
  btn.title = t('languageTitle');
  const help = $('help-btn');
  help.title = t('helpButton');
  help.setAttribute('aria-label', t('helpButton'));
  const logout = $('logout-btn');
  logout.textContent = t('logout');
  logout.title = t('logoutTitle');
  renderWho();
  for (const id of ['wo-d-close', 'help-close', 'resolve-close']) {
    $(id).setAttribute('aria-label', t('close'));
    $(id).title = t('close');
  }
  const hours = $('chart-hours');
  hours.replaceChildren(...CHART_HOURS.map((h) => el('option', { value: h }, t('lastHours', { n: h }))));
  hours.value = String(ui.chartHours);
  buildLegend();
  buildMapTools();
  renderHelp();
  labelHotline();
}

function switchLanguage() {
  const langs = LANGS;
  setLang(langs[(langs.indexOf(getLang()) + 1) % langs.length]);
  applyLabels();
  ui.alertEls.forEach((li) => li.remove());
  ui.alertEls.clear();
  renderAll();
  renderHealth();
  renderConn();
  renderCharts();
  renderFunnel();
}

// ---------------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------------
function renderWho() {
  const me = ui.me;
  const who = $('who');
  who.textContent = me ? `${me.user} (${tOr(`roles.${me.role}`, me.role)})` : '';
  who.title = who.textContent;
  $('wo-actor').value = me ? me.user : '';
}

async function logOut() {
  try {
    await fetchJSON('/api/session', { method: 'DELETE', noLoginRedirect: true });
  } catch {
    // Gone already, or the server is away: the login page is where to go either way.
  }
  window.location.replace('/login');
}

/** Who is logged in; without a session, the login page. */
async function loadSession() {
  try {
    ui.me = await fetchJSON('/api/session', { noLoginRedirect: true });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      window.location.replace('/login');
      return false;
    }
    ui.me = null; // the server is away: the page shows that, and offers no actions
  }
  setCsrf(ui.me && ui.me.csrf_token);
  return true;
}

async function start() {
  if (!(await loadSession())) return;
  applyLabels();
  $('logout-btn').addEventListener('click', logOut);
  $('lang-btn').addEventListener('click', switchLanguage);
  $('help-btn').addEventListener('click', toggleHelp);
  $('help-close').addEventListener('click', () => $('help-dialog').close());
  $('wo-dept').addEventListener('change', (e) => {
    state.department = e.target.value;
    renderBoard();
  });
  $('wo-closed').addEventListener('change', (e) => {
    state.showClosed = e.target.checked;
    renderBoard();
  });
  $('chart-hours').addEventListener('change', (e) => {
    ui.chartHours = Number(e.target.value) || 6;
    ui.series.clear();
    loadSeries(true);
  });
  initHotline({
    mayFile: () => Boolean(ui.me && ui.me.may && ui.me.may.appeals),
    onFiled: (appeal) => {
      if (appeal.alert_id) selectAlert(String(appeal.alert_id), { scroll: true });
    },
  });
  onZonePicked((id) => {
    state.chartZone = id;
    state.chartZonePicked = true;
    loadSeries(true);
  });
  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      renderCharts();
      renderAlerts();
    }, 150);
  });
  renderConn();
  tickClock();
  setInterval(tickClock, 1000);
  setInterval(() => renderAlerts(), 10000); // ages and overdue marks move on with the clock
  setInterval(() => renderBoard(), 10000);

  const live = new Live('/api/stream', {
    alert: (row) => {
      putAlert(row);
      ui.lastOk = Date.now();
      if (row && String(row.zone_id) === state.chartZone) setTimeout(() => loadSeries(), 1500);
      scheduleRender();
    },
    workOrder: (row) => {
      putWorkOrder(row);
      ui.lastOk = Date.now();
      scheduleRender();
    },
    resync,
    status: (mode) => {
      ui.mode = mode;
      renderConn();
    },
  });
  live.start();
  every(ZONES_MS, async () => {
    if (state.zones.size) await loadZones();
  });
  every(RESYNC_MS, async () => {
    if (ui.mode === 'live') await resync();
  });
  every(HEALTH_MS, async () => {
    // 503 is the service saying its pipeline is stuck, with the reasons: show them, not "offline".
    state.health = await fetchJSON('/api/health', { acceptStatus: [503] });
    renderHealth();
  });
  every(DEVICES_MS, async () => {
    const fc = await fetchJSON('/api/devices');
    state.devices = fc && Array.isArray(fc.features) ? fc.features : [];
    drawDevices();
    refreshPinned();
  });
  every(SERIES_MS, () => loadSeries());
  every(FUNNEL_MS, loadFunnel);
}

start();
