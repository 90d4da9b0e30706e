// The index page: show what this server offers (GET /api/info, which mints no credentials).
'use strict';

(async () => {
  const { $, el } = turnd;
  const list = (id, urls) => {
    const dd = $(id);
    dd.textContent = '';
    if (!urls.length) dd.textContent = 'none configured';
    for (const u of urls) dd.append(el('div', {}, u));
  };
  try {
    const res = await fetch('/api/info', { cache: 'no-store' });
    const info = await res.json();
    $('info-realm').textContent = info.realm;
    list('info-stun', info.stun);
    list('info-turn', info.turn);
    $('info-creds').textContent = info.credentials
      ? `TURN REST credentials, valid ${info.ttl} s`
      : 'none: this server has no [auth] secret, so the pages cannot get credentials';
    $('info-ttl').textContent = `${info.ttl} seconds`;
    $('offers').dataset.state = 'ready';
  } catch (e) {
    $('offers').dataset.state = 'error';
    $('info-realm').textContent = `cannot load /api/info: ${e.message}`;
  }
})();
