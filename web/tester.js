// The relay tester: one RTCPeerConnection per server URL with iceTransportPolicy 'relay'
// (stun: URLs use 'all' and get no verdict), a live table of candidates and of
// icecandidateerror events, and a verdict per transport. After "Gather all", each transport
// with a relay is measured end to end (measure.js: two relay-only peer connections in this
// page, RTT/loss/throughput over data channels, RTT chart), and every transport gets a
// diagnosis line (diagnose.js). "Report" downloads the run as JSON and copies a summary.
//
// URL parameters: gather=1 gathers every server once the list is loaded; timeout=N (s);
// measure=0 skips the relay measurement.
// Test hooks: main#tester[data-state] is idle|loading|gathering|measuring|done; #verdicts
// carries data-verdict-udp/-tcp/-tls = untested|running|ok|fail (reasons in #verdict-udp
// .reason ...); candidate rows carry data-transport, data-type, data-relay-protocol; error
// rows data-code; #diagnosis li carry data-transport and data-level (ok|warn|fail);
// #measure rows data-transport and data-connected; window.turndTesterReport() is the report.
'use strict';

(() => {
  const { $, el, transportOf, fetchIceServers } = turnd;
  const TRANSPORTS = ['udp', 'tcp', 'tls'];
  const state = {
    nextId: 1, results: new Map(), phase: null, measures: {}, diagnosis: [], clock: {}, startedAt: null, rttChart: null,
  };
  const params = new URLSearchParams(location.search);
  const isChromium = /Chrome\//.test(navigator.userAgent);

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

  /**
   * True when gathering completes within `ms`; false on timeout, or once the candidate the row
   * is for (relay; srflx for stun:) is in and nothing new came for 2 s (Firefox may not finish
   * gathering until its own timeout).
   */
  function waitGathered(pc, ms, result) {
    return new Promise((resolve) => {
      const t0 = performance.now();
      let timer = null;
      const done = (v) => { clearInterval(timer); resolve(v); };
      const check = () => {
        const now = performance.now();
        if (pc.iceGatheringState === 'complete') done(true);
        else if (now - t0 > ms) done(false);
        else if (result.wanted > 0 && now - result.lastCandidateAt > 2000) { result.settled = true; done(false); }
      };
      timer = setInterval(check, 100);
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
    const result = {
      url, username, credential, transport, relay: 0, firstMs: null, errors: [], done: false, complete: false, timeoutS,
    };
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
      result.lastCandidateAt = performance.now();
      // What this row is for: a relay (turn:, turns:) or a server-reflexive address (stun:).
      if (e.candidate.type === (transport === 'stun' ? 'srflx' : 'relay')) result.wanted = (result.wanted || 0) + 1;
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
    result.complete = await waitGathered(pc, timeoutS * 1000, result);
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
    $('tester').dataset.state = state.phase
      || (!all.length ? 'idle' : all.some((r) => !r.done) ? 'gathering' : 'done');
  }

  function clearResults() {
    state.results.clear();
    state.measures = {};
    state.diagnosis = [];
    state.phase = null;
    $('candidates').tBodies[0].textContent = '';
    $('errors').tBodies[0].textContent = '';
    $('measure').tBodies[0].textContent = '';
    $('diagnosis').textContent = '';
    $('summary').textContent = '';
    if (state.rttChart) state.rttChart.clear();
    refresh();
  }

  /** This browser's clock against the server's (HTTP Date header of /api/info, 1 s resolution). */
  async function readClock() {
    try {
      const t0 = Date.now();
      const res = await fetch('/api/info', { cache: 'no-store' });
      const t1 = Date.now();
      const date = res.headers.get('Date');
      if (!date) { state.clock = { skewS: null }; return; }
      const server = Date.parse(date);
      state.clock = {
        // Date has whole seconds (truncated): the server's clock was within [server, server + 1 s).
        skewS: Math.round(((t0 + t1) / 2 - server - 500) / 1000),
        serverDate: new Date(server).toISOString(),
        browserDate: new Date((t0 + t1) / 2).toISOString(),
      };
    } catch (e) {
      state.clock = { skewS: null };
    }
  }

  const fmt = (v, unit = '') => (v === null || v === undefined ? '–' : `${v}${unit}`);

  function showMeasure(t, m) {
    const tr = el('tr', { dataset: { transport: t, connected: m.connected ? '1' : '0' } });
    const r = m.rttMs || {};
    const cells = m.connected
      ? [t, `${m.connectMs} ms`, fmt(r.p50), fmt(r.p95), fmt(r.p99), fmt(m.lossPct, ' %'),
        fmt(m.throughput.mbitPerS, ' Mbit/s'), m.pair.relayProtocol || '?', `${m.pair.local || '?'} ⇄ ${m.pair.remote || '?'}`]
      : [t, `no connection in ${m.waitedMs} ms`, '–', '–', '–', '–', '–', '–', `ICE ${m.iceState || '?'}`];
    for (const v of cells) tr.append(el('td', { class: 'mono' }, v));
    $('measure').tBodies[0].append(tr);
  }

  /** Measure every transport that has a relay, one after the other (cleaner numbers). */
  async function measureAll() {
    state.phase = 'measuring';
    refresh();
    for (const t of TRANSPORTS) {
      const ok = [...state.results.values()].find((r) => r.transport === t && r.relay > 0);
      if (!ok) continue;
      $('measure-status').textContent = `measuring ${t}: connecting two relay-only peer connections…`;
      const server = { urls: [ok.url], username: ok.username, credential: ok.credential };
      const m = await turndMeasure.run(server, {
        connectTimeoutMs: Math.min(60, Math.max(1, Number($('timeout').value) || 10)) * 1000,
        onSample: (x, rtt) => state.rttChart.add(t, x, rtt),
      });
      m.url = ok.url;
      state.measures[t] = m;
      showMeasure(t, m);
    }
    $('measure-status').textContent = Object.keys(state.measures).length
      ? 'each row: two relay-only peer connections in this page, 2.5 s of 200-byte probes every 20 ms on an unreliable data channel (RTT, loss), then 2 s of bulk on a reliable one (throughput)'
      : 'nothing to measure: no transport got a relay candidate';
  }

  function showDiagnosis() {
    const byT = {};
    for (const t of TRANSPORTS) {
      const results = [...state.results.values()].filter((r) => r.transport === t);
      const ok = results.find((r) => r.relay > 0);
      byT[t] = { results, okUrl: ok && ok.url };
    }
    const verdicts = Object.fromEntries(TRANSPORTS.map((t) => [t, verdict(t)[0]]));
    state.diagnosis = turndDiagnose.diagnose({
      verdicts, gathers: byT, measures: state.measures, chromium: isChromium, ...state.clock,
    });
    const ul = $('diagnosis');
    ul.textContent = '';
    for (const d of state.diagnosis) {
      const li = el('li', { dataset: { transport: d.transport, level: d.level } });
      li.append(el('span', { class: `badge ${d.level}` }, d.level), ' ', el('b', {}, d.text), el('div', { class: 'small muted mono' }, d.evidence));
      ul.append(li);
    }
  }

  /** The whole run as a JSON-ready object (credentials left out). */
  function report() {
    const strip = ({ credential, ...r }) => r;
    return {
      tool: 'turnd relay tester',
      page: location.origin + location.pathname,
      userAgent: navigator.userAgent,
      startedAt: state.startedAt,
      finishedAt: new Date().toISOString(),
      clock: state.clock,
      verdicts: Object.fromEntries(TRANSPORTS.map((t) => [t, verdict(t)[0]])),
      diagnosis: state.diagnosis,
      gathers: [...state.results.values()].map(strip),
      measures: state.measures,
      candidates: [...$('candidates').tBodies[0].rows].map((r) => [...r.cells].map((c) => c.textContent)),
      errors: [...$('errors').tBodies[0].rows].map((r) => [...r.cells].map((c) => c.textContent)),
    };
  }

  function summaryText(rep) {
    const lines = [`turnd relay tester — ${rep.page} — ${rep.finishedAt}`, rep.userAgent];
    for (const t of TRANSPORTS) lines.push(`${t}: ${rep.verdicts[t]}`);
    for (const d of rep.diagnosis) lines.push(`[${d.level}] ${d.text}`, `    ${d.evidence}`);
    return lines.join('\n');
  }

  async function downloadReport() {
    const rep = report();
    const text = summaryText(rep);
    $('summary').textContent = text;
    const blob = new Blob([JSON.stringify(rep, null, 2)], { type: 'application/json' });
    const a = el('a', { href: URL.createObjectURL(blob), download: `turnd-tester-${rep.finishedAt.replace(/[:.]/g, '-')}.json` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    try {
      await navigator.clipboard.writeText(text);
      flash('');
      $('report-status').textContent = 'JSON downloaded; summary copied to the clipboard (and shown below)';
    } catch (e) {
      $('report-status').textContent = 'JSON downloaded; copy the summary below by hand (clipboard not available)';
    }
  }

  async function gatherAll() {
    clearResults();
    state.startedAt = new Date().toISOString();
    state.phase = 'gathering';
    refresh();
    await Promise.all([readClock(), ...[...$('servers').tBodies[0].rows].map((tr) => gatherRow(tr))]);
    if ($('measure-on').checked) await measureAll();
    else $('measure-status').textContent = 'measurement off (tick “measure the relay” and gather again)';
    showDiagnosis();
    state.phase = null;
    refresh();
  }

  async function init() {
    $('gather-all').addEventListener('click', gatherAll);
    $('add').addEventListener('click', () => addServer().querySelector('input.url').focus());
    $('reload').addEventListener('click', () => { clearResults(); loadFromServer(); });
    $('clear').addEventListener('click', clearResults);
    $('report').addEventListener('click', downloadReport);
    if (params.get('measure') === '0') $('measure-on').checked = false;
    if (Number(params.get('timeout')) > 0) $('timeout').value = String(Math.min(60, Number(params.get('timeout'))));
    state.rttChart = new turndChart.Chart($('rtt-chart'), { unit: 'ms' });
    state.rttChart.draw();
    window.turndTesterReport = report;
    await loadFromServer();
    if (params.get('gather') === '1') gatherAll();
  }

  init();
})();
