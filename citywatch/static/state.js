// What the console knows, shared by its modules. Alerts and work orders are kept by id, so that a
// row from the stream replaces the one from the last list fetch.

import { t } from './i18n.js';
import { levelOf, parseTime } from './util.js';

export const state = {
  zones: new Map(), // id -> GeoJSON feature
  devices: [], // GeoJSON features
  alerts: new Map(), // id -> alert, active and acknowledged only
  workOrders: new Map(), // id -> work order
  health: null,
  selectedAlert: null, // alert id
  chartZone: null, // zone id the charts show
  chartZonePicked: false, // the operator chose it (else it follows the selected or top alert)
  department: '', // work-order board filter; '' = all
  showClosed: false,
  loaded: { alerts: false, workOrders: false },
};

// When a row last came from the stream: a list fetched before that must not undo it.
const streamedAt = { alert: new Map(), work_order: new Map() };

const isLive = (a) => a.state === 'active' || a.state === 'acknowledged';

/** A changed alert from the stream or an action's answer; resolved ones leave the queue. */
export function putAlert(a) {
  if (!a || a.id === undefined) return;
  const id = String(a.id);
  streamedAt.alert.set(id, Date.now());
  if (isLive(a)) state.alerts.set(id, a);
  else state.alerts.delete(id);
}

export function putWorkOrder(w) {
  if (!w || w.id === undefined) return;
  const id = String(w.id);
  streamedAt.work_order.set(id, Date.now());
  state.workOrders.set(id, w);
}

/** Replace what is known by a list fetched from ``startedAt`` (ms), keeping newer changes. */
function replaceAll(current, list, keep, startedAt, seen) {
  const next = new Map();
  for (const row of list) {
    if (row && row.id !== undefined && keep(row)) next.set(String(row.id), row);
  }
  for (const [id, at] of seen) {
    if (at < startedAt) {
      seen.delete(id);
      continue;
    }
    if (current.has(id)) next.set(id, current.get(id));
    else next.delete(id);
  }
  return next;
}

export function replaceAlerts(list, startedAt) {
  state.alerts = replaceAll(state.alerts, list, isLive, startedAt, streamedAt.alert);
}

export function replaceWorkOrders(list, startedAt) {
  state.workOrders = replaceAll(state.workOrders, list, () => true, startedAt, streamedAt.work_order);
}

/** The queue's order: active before acknowledged, then the most severe, then the oldest. */
export function sortedAlerts() {
  return [...state.alerts.values()].sort((a, b) => {
    const ra = a.state === 'active' ? 0 : 1;
    const rb = b.state === 'active' ? 0 : 1;
    if (ra !== rb) return ra - rb;
    const sa = levelOf(a.severity) ?? 5;
    const sb = levelOf(b.severity) ?? 5;
    if (sa !== sb) return sa - sb;
    return (parseTime(a.raised) ?? Infinity) - (parseTime(b.raised) ?? Infinity);
  });
}

/** A zone's level: its most severe alert that is not resolved (as GET /api/zones computes it). */
export function zoneLevels() {
  const levels = new Map();
  for (const a of state.alerts.values()) {
    const lv = levelOf(a.severity);
    const z = String(a.zone_id);
    if (lv && (!levels.has(z) || lv < levels.get(z))) levels.set(z, lv);
  }
  return levels;
}

export function zoneName(id) {
  if (id === null || id === undefined || id === '') return t('dash');
  const z = state.zones.get(String(id));
  return z && z.properties && z.properties.name ? String(z.properties.name) : String(id);
}

/** Overdue: not answered by respond_by, or not done by resolve_by. */
export function isOverdue(w, now = Date.now()) {
  if (w.state === 'resolved' || w.state === 'closed') return false;
  const respond = parseTime(w.respond_by);
  const resolve = parseTime(w.resolve_by);
  if (resolve !== null && now > resolve) return true;
  return w.state !== 'accepted' && respond !== null && now > respond;
}
