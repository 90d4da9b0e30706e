// Shared helpers of the turnd pages (no dependencies, no build step).
'use strict';

const turnd = (() => {
  /** Element by id. */
  const $ = (id) => document.getElementById(id);

  /** Create an element with attributes (data-* via `dataset`) and text. */
  function el(tag, attrs = {}, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'dataset') Object.assign(e.dataset, v);
      else if (k === 'class') e.className = v;
      else e.setAttribute(k, v);
    }
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  /** `udp`, `tcp` or `tls` for a turn:/turns: URL (RFC 7065), `stun` for stun:/stuns:. */
  function transportOf(url) {
    const u = String(url).trim().toLowerCase();
    if (u.startsWith('turns:')) return 'tls';
    if (u.startsWith('stun')) return 'stun';
    if (u.startsWith('turn:')) return /[?&]transport=tcp\b/.test(u) ? 'tcp' : 'udp';
    return 'unknown';
  }

  /**
   * GET /api/ice-servers: `{iceServers, ttl}`; throws with the server's message. A mint token
   * in the URL fragment (`#token=...`, never sent to the server as part of the URL) goes in
   * an `Authorization: Bearer` header (`[signaling] mint = "token"`).
   */
  async function fetchIceServers() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    const headers = m ? { Authorization: `Bearer ${decodeURIComponent(m[1])}` } : {};
    const res = await fetch('/api/ice-servers', { cache: 'no-store', headers });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      throw new Error(`/api/ice-servers: ${res.status} ${body.message || body.error || ''}`);
    }
    return body;
  }

  /**
   * Keep only the TURN URLs of one transport (`udp`, `tcp`, `tls`); `all` keeps everything.
   * STUN URLs stay: they never produce relay candidates.
   */
  function filterIceServers(servers, transport) {
    if (transport === 'all') return servers;
    const out = [];
    for (const s of servers) {
      const urls = [].concat(s.urls).filter((u) => {
        const t = transportOf(u);
        return t === 'stun' || t === transport;
      });
      if (urls.length) out.push({ ...s, urls });
    }
    return out;
  }

  /** Mark the current page in the navigation bar. */
  function markNav() {
    for (const a of document.querySelectorAll('header.top nav a')) {
      if (a.getAttribute('href') === location.pathname) a.setAttribute('aria-current', 'page');
    }
  }
  document.addEventListener('DOMContentLoaded', markNav);

  return { $, el, transportOf, fetchIceServers, filterIceServers };
})();
