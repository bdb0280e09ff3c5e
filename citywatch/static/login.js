// The console's login: POST /api/session with the form, then the console. The server sets the
// session cookie (HttpOnly, SameSite=Strict); this page never sees it.

import { LANGS, getLang, setLang, t } from './i18n.js';

const $ = (id) => document.getElementById(id);

function labels() {
  document.documentElement.lang = getLang() === 'zh' ? 'zh-CN' : 'en';
  document.title = t('login.title');
  $('login-heading').textContent = t('login.heading');
  $('login-user-label').textContent = t('login.user');
  $('login-password-label').textContent = t('login.password');
  $('login-submit').textContent = t('login.submit');
  $('lang-btn').textContent = t('language');
  $('lang-btn').title = t('languageTitle');
}

function say(text) {
  const msg = $('login-msg');
  msg.textContent = text || '';
  msg.hidden = !text;
}

async function login(evt) {
  evt.preventDefault();
  const button = $('login-submit');
  button.disabled = true;
  button.textContent = t('login.working');
  say('');
  try {
    const resp = await fetch('/api/session', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { Accept: 'application/json' },
      body: new URLSearchParams({ username: $('login-user').value, password: $('login-password').value }),
    });
    if (resp.ok) {
      window.location.replace('/');
      return;
    }
    if (resp.status === 401) say(t('login.wrong'));
    else if (resp.status === 429) say(t('login.throttled', { s: resp.headers.get('Retry-After') || '60' }));
    else {
      const body = await resp.json().catch(() => null);
      const detail = body && typeof body.detail === 'string' ? body.detail : t('httpError', { status: resp.status });
      say(t('login.failed', { detail }));
    }
  } catch {
    say(t('login.failed', { detail: t('noConnection') }));
  } finally {
    button.disabled = false;
    button.textContent = t('login.submit');
  }
  $('login-password').select();
}

$('login-form').addEventListener('submit', login);
$('lang-btn').addEventListener('click', () => {
  setLang(LANGS[(LANGS.indexOf(getLang()) + 1) % LANGS.length]);
  labels();
});
labels();
$('login-user').focus();
