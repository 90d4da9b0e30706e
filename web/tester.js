// The relay tester: one RTCPeerConnection per server URL with iceTransportPolicy 'relay'
// (stun: URLs use 'all' and get no verdict), a live table of candidates and of
// icecandidateerror events, and a verdict per transport.
//
// URL parameters: gather=1 gathers every server once the list is loaded.
// Test hooks: main#tester[data-state] is idle|loading|gathering|done; #verdicts carries
// data-verdict-udp/-tcp/-tls = untested|running|ok|fail (reasons in #verdict-udp .reason ...);
// candidate rows carry data-transport, data-type, data-relay-protocol; error rows data-code.
'use strict';

(() => {
  const { $, el, transportOf, fetchIceServers } = turnd;
  const TRANSPORTS = ['udp', 'tcp', 'tls'];
  const state = { nextId: 1, results: new Map() };

  function flash(text) { $('flash').textContent = text || ''; }

  function addServer({ url = '', username = '', credential = '' } = {}) {
    const id = String(state.nextId++);
    const tr = el('tr', { dataset: { serverId: id } });
    const badge = el('span', { class: 'badge' });
    const input = (cls, value, label) => {
      const i = el('input', {
        type: 'text', class: cls, 'aria-label': label, placeholder: label, autocomplete: 'off', spellcheck: 'false',
      });
      i.value = value;
      return i;
    };
    const urlInput = input('url', url, 'turn:host:3478?transport=udp');
    const setBadge = () => {
      const t = transportOf(urlInput.value);
      tr.dataset.transport = t;
      badge.textContent = t;
    };
    urlInput.addEventListener('input', setBadge);
    setBadge();
    const gather = el('button', { type: 'button', class: 'gather' }, 'Gather');
    gather.addEventListener('click', () => gatherRow(tr));
    const remove = el('button', { type: 'button', class: 'secondary remove' }, 'Remove');
    remove.addEventListener('click', () => tr.remove());
    const cell = (child, cls) => { const td = el('td', cls ? { class: cls } : {}); td.append(child); return td; };
    const actions = el('td', { class: 'actions' });
    actions.append(gather, ' ', remove);
    tr.append(cell(badge), cell(urlInput, 'url'), cell(input('username', username, 'username')),
      cell(input('credential', credential, 'credential')), actions);
    $('servers').tBodies[0].append(tr);
    return tr;
  }

  async function loadFromServer() {
    $('tester').dataset.state = 'loading';
    $('servers').tBodies[0].textContent = '';
    flash('');
    try {
      const { iceServers } = await fetchIceServers();
      for (const s of iceServers) {
        for (const url of [].concat(s.urls)) addServer({ url, username: s.username || '', credential: s.credential || '' });
      }
    } catch (e) {
      flash(`${e.message} — enter a TURN server by hand.`);
      addServer();
    }
    $('tester').dataset.state = 'idle';
  }

  function addCandidate(url, transport, c, ms) {
    const tr = el('tr', { dataset: { transport, type: c.type || '', relayProtocol: c.relayProtocol || '' } });
    const cells = [Math.round(ms), url, c.type, c.protocol, c.relayProtocol || '', c.address, c.port, c.priority];
    for (const v of cells) tr.append(el('td', { class: 'mono' }, v ?? ''));
    $('candidates').tBodies[0].append(tr);
    return { tr, c };
  }

  function addError(url, transport, e, ms) {
    const tr = el('tr', { dataset: { transport, code: String(e.errorCode) } });
    const local = e.address ? `${e.address}:${e.port}` : '';
    for (const v of [Math.round(ms), e.url || url, e.errorCode, e.errorText, local]) tr.append(el('td', { class: 'mono' }, v ?? ''));
    $('errors').tBodies[0].append(tr);
  }

  /** Chromium leaves relayProtocol null for UDP relays in the event; getStats has it. */
  async function fillRelayProtocols(pc, rows, transport) {
    const byAddr = new Map();
    try {
      (await pc.getStats()).forEach((r) => {
        if (r.type === 'local-candidate' && r.relayProtocol) byAddr.set(`${r.address}:${r.port}`, r.relayProtocol);
      });
    } catch (e) { /* closed meanwhile */ }
    for (const { tr, c } of rows) {
      if (c.type !== 'relay' || c.relayProtocol) continue;
      const fromStats = byAddr.get(`${c.address}:${c.port}`);
      const value = fromStats || transport;
      tr.dataset.relayProtocol = value;
      tr.cells[4].textContent = fromStats ? `${value} (getStats)` : `${value} (from URL)`;
    }
  }

  function waitGathered(pc, ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      const check = () => {
        if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(true); }
      };
      pc.addEventListener('icegatheringstatechange', check);
      check();
    });
  }

  async function gatherRow(tr) {
    const url = tr.querySelector('input.url').value.trim();
    const username = tr.querySelector('input.username').value;
    const credential = tr.querySelector('input.credential').value;
    const transport = transportOf(url);
    const timeoutS = Math.min(60, Math.max(1, Number($('timeout').value) || 10));
    const result = { url, transport, relay: 0, firstMs: null, errors: [], done: false, complete: false, timeoutS };
    state.results.set(tr.dataset.serverId, result);
    refresh();
    const t0 = performance.now();
    let pc;
    try {
      const server = transport === 'stun' ? { urls: [url] } : { urls: [url], username, credential };
      pc = new RTCPeerConnection({ iceServers: [server], iceTransportPolicy: transport === 'stun' ? 'all' : 'relay' });
    } catch (e) {
      result.invalid = `invalid server entry: ${e.message}`;
      result.done = true;
      refresh();
      return;
    }
    const rows = [];
    pc.onicecandidate = (e) => {
      if (!e.candidate || !e.candidate.candidate) return;
      const ms = performance.now() - t0;
      rows.push(addCandidate(url, transport, e.candidate, ms));
      if (e.candidate.type === 'relay') {
        result.relay += 1;
        if (result.firstMs === null) result.firstMs = Math.round(ms);
      }
      refresh();
    };
    pc.onicecandidateerror = (e) => {
      result.errors.push({ code: e.errorCode, text: e.errorText });
      addError(url, transport, e, performance.now() - t0);
      refresh();
    };
    pc.createDataChannel('probe');
    await pc.setLocalDescription(await pc.createOffer());
    result.complete = await waitGathered(pc, timeoutS * 1000);
    await fillRelayProtocols(pc, rows, transport);
    pc.close();
    result.done = true;
    refresh();
  }

  function failureReason(rs) {
    for (const r of rs) if (r.invalid) return r.invalid;
    for (const r of rs) {
      for (const e of r.errors) {
        // 701 is Chromium's "could not reach the server" code; show it as such.
        const text = e.code === 701 ? `unreachable (701) ${e.text}` : `${e.code} ${e.text}`;
        return `${text.trim()} — ${r.url}`;
      }
    }
    const r = rs[0];
    return r.complete
      ? `gathering finished without a relay candidate — ${r.url}`
      : `no relay candidate within ${r.timeoutS} s (blocked or unreachable?) — ${r.url}`;
  }

  function verdict(t) {
    const rs = [...state.results.values()].filter((r) => r.transport === t);
    if (!rs.length) return ['untested', 'no server of this transport gathered yet'];
    const ok = rs.find((r) => r.relay > 0);
    if (ok) return ['ok', `relay candidate in ${ok.firstMs} ms — ${ok.url}`];
    if (rs.some((r) => !r.done)) return ['running', 'gathering…'];
    return ['fail', failureReason(rs)];
  }

  function refresh() {
    for (const t of TRANSPORTS) {
      const [v, reason] = verdict(t);
      const box = $(`verdict-${t}`);
      box.dataset.verdict = v;
      box.querySelector('.badge').textContent = v;
      box.querySelector('.reason').textContent = reason;
      $('verdicts').dataset[`verdict${t[0].toUpperCase()}${t.slice(1)}`] = v;
    }
    const all = [...state.results.values()];
    $('tester').dataset.state = !all.length ? 'idle' : all.some((r) => !r.done) ? 'gathering' : 'done';
  }

  function clearResults() {
    state.results.clear();
    $('candidates').tBodies[0].textContent = '';
    $('errors').tBodies[0].textContent = '';
    refresh();
  }

  async function gatherAll() {
    clearResults();
    await Promise.all([...$('servers').tBodies[0].rows].map((tr) => gatherRow(tr)));
  }

  async function init() {
    $('gather-all').addEventListener('click', gatherAll);
    $('add').addEventListener('click', () => addServer().querySelector('input.url').focus());
    $('reload').addEventListener('click', () => { clearResults(); loadFromServer(); });
    $('clear').addEventListener('click', clearResults);
    await loadFromServer();
    if (new URLSearchParams(location.search).get('gather') === '1') gatherAll();
  }

  init();
})();
