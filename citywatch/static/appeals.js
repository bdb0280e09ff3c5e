// Residents' appeals in the console: the appeals an incident has (count, callers, newest words),
// and the hotline operator's form (the caller's words, a place picked on the map or typed, the
// caller's number), filed as POST /api/appeals under the logged-in operator.

import { getLang, t, tOr } from './i18n.js';
import { cancelPick, markPicked, pickPoint } from './map.js';
import { $, el, errorText, fetchJSON, shortTime } from './util.js';

// 'auto', the hazards residents can report (GET /api/hazards: setCategories), 'other'.
let CATEGORIES = ['auto', 'other'];
const SHOWN = 3; // the newest appeals listed on an incident

const cache = new Map(); // alert id -> {duplicates, data} | {duplicates, error}
const loading = new Set();

/** The appeals block of an incident (nothing when it has none). */
export function appealsBlock(a, rerender) {
  const id = String(a.id);
  const got = cache.get(id);
  // An appeal merged into the incident counts in its duplicates: reload when they change.
  if (!got || got.duplicates !== a.duplicates) load(id, a.duplicates, rerender);
  const box = el('div', { class: 'appeals-block' });
  if (!got || got.error || !got.data || !got.data.appeals) {
    box.hidden = true;
    return box;
  }
  const d = got.data;
  box.appendChild(el('div', { class: 'detail-head appeals-count' },
    t('appealsCount', { n: d.appeals, callers: d.callers })));
  const list = el('ul', { class: 'appeals-list' });
  for (const item of d.items.slice(0, SHOWN)) {
    const li = el('li', { class: 'appeal-item' });
    li.dataset.appealId = item.id;
    li.appendChild(el('span', { class: 'mono small' }, `${shortTime(item.received)} `));
    li.appendChild(el('span', { class: 'badge' }, tOr(`appealSources.${item.source}`, item.source)));
    li.appendChild(el('span', { class: 'appeal-text' }, ` ${item.description || '—'}`));
    li.title = `${item.id} · ${item.how || ''}`;
    list.appendChild(li);
  }
  box.appendChild(list);
  return box;
}

async function load(id, duplicates, rerender) {
  if (loading.has(id)) return;
  loading.add(id);
  try {
    const data = await fetchJSON(`/api/appeals?alert_id=${encodeURIComponent(id)}&limit=${SHOWN}`);
    cache.set(id, { duplicates, data });
  } catch (err) {
    cache.set(id, { duplicates, error: errorText(err) });
  } finally {
    loading.delete(id);
  }
  rerender();
}

/** The day's appeals under the load funnel. */
export function funnelAppeals(f) {
  if (!f || typeof f.appeals !== 'number' || !f.appeals) return null;
  return el('p', { class: 'caption funnel-appeals' }, t('funnelAppeals', {
    appeals: f.appeals, callers: f.appeal_callers, problems: f.appeal_problems,
    orders: f.appeal_orders,
  }));
}

// --- the hotline form --------------------------------------------------------------------------
const dlg = () => $('hotline-dialog');
let picked = null; // [lon, lat] picked on the map

function setWhere() {
  $('hotline-where').textContent = picked
    ? t('hotlinePicked', { lon: picked[0].toFixed(5), lat: picked[1].toFixed(5) }) : '';
}

export function setCategories(codes) {
  CATEGORIES = ['auto', ...codes, 'other'];
  labelHotline();
}

export function labelHotline() {
  const sel = $('hotline-category');
  const keep = sel.value || 'auto';
  sel.replaceChildren(...CATEGORIES.map((c) => el('option', { value: c },
    c === 'auto' ? t('hotlineAuto') : tOr(`hazards.${c}`, t('hotlineOther')))));
  sel.value = keep;
  $('hotline-btn').textContent = t('hotline');
  $('hotline-close').setAttribute('aria-label', t('close'));
  setWhere();
}

/** ``onFiled(appeal)`` is called with the filed appeal (to show its incident). */
export function initHotline({ mayFile, onFiled }) {
  const btn = $('hotline-btn');
  btn.hidden = !mayFile();
  btn.addEventListener('click', () => openHotline());
  $('hotline-close').addEventListener('click', () => dlg().close());
  $('hotline-pick').addEventListener('click', () => {
    // The map is under the dialog: close it, take the click, open it again.
    dlg().close();
    document.body.classList.add('picking-place');
    pickPoint((lonlat) => {
      document.body.classList.remove('picking-place');
      picked = lonlat;
      setWhere();
      openHotline(false);
    });
  });
  document.addEventListener('keydown', (evt) => {
    if (evt.key === 'Escape' && document.body.classList.contains('picking-place')) {
      document.body.classList.remove('picking-place');
      cancelPick();
      openHotline(false);
    }
  });
  $('hotline-form').addEventListener('submit', async (evt) => {
    evt.preventDefault();
    const result = $('hotline-result');
    const text = $('hotline-text').value.trim();
    const address = $('hotline-address').value.trim();
    if (!text || (!picked && !address)) {
      result.className = 'wo-result bad';
      result.textContent = t(!text ? 'hotlineNeedsText' : 'hotlineNeedsPlace');
      result.hidden = false;
      return;
    }
    const body = { text, category: $('hotline-category').value, phone: $('hotline-phone').value.trim() };
    if (picked) {
      body.long = picked[0];
      body.lat = picked[1];
    } else body.address = address;
    $('hotline-submit').disabled = true;
    try {
      const out = await fetchJSON('/api/appeals', { method: 'POST', body: JSON.stringify(body) });
      result.className = 'wo-result good';
      result.replaceChildren(
        el('div', { class: 'hotline-filed' }, t('hotlineFiled', {
          id: out.id, place: out.place, n: out.appeals, callers: out.callers,
        })),
        el('div', { class: 'hotline-how small muted' }, out.how || ''),
        el('div', { class: 'hotline-reply' }, (out.reply && out.reply[getLang()]) || ''),
      );
      result.hidden = false;
      result.dataset.appealId = out.id;
      if (out.alert_id) cache.delete(String(out.alert_id));
      onFiled(out);
    } catch (err) {
      result.className = 'wo-result bad';
      result.textContent = errorText(err);
      result.hidden = false;
    } finally {
      $('hotline-submit').disabled = false;
    }
  });
  dlg().addEventListener('close', () => {
    if (!document.body.classList.contains('picking-place')) {
      picked = null;
      markPicked(null);
    }
  });
}

export function openHotline(fresh = true) {
  if (fresh) {
    for (const id of ['hotline-text', 'hotline-address', 'hotline-phone']) $(id).value = '';
    $('hotline-category').value = 'auto';
    $('hotline-result').hidden = true;
    picked = null;
    markPicked(null);
  }
  setWhere();
  if (!dlg().open) dlg().showModal();
  $('hotline-text').focus();
}
