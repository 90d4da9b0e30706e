// Measures one TURN server end to end inside the page: two RTCPeerConnections, both
// iceTransportPolicy 'relay' with the same server, exchange their candidates directly (no
// signaling), so every packet goes browser -> turnd relay -> turnd relay -> browser. Then:
//  - echo phase: an unreliable, unordered data channel (maxRetransmits 0) carries a numbered
//    probe every `intervalMs`; the other side echoes it; RTT per probe, loss = probes never
//    echoed (round trip);
//  - bulk phase: a reliable data channel is kept full for `bulkMs`; throughput is what the
//    receiver counted per second.
// Used by tester.js; no DOM access here.
'use strict';

const turndMeasure = (() => {
  const PROBE_BYTES = 200;
  const CHUNK_BYTES = 16 * 1024;
  const HIGH_WATER = 1024 * 1024;

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  /** The q-quantile (0..1) of sorted numbers, nearest rank; null when empty. */
  function quantile(sorted, q) {
    if (!sorted.length) return null;
    return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
  }

  /** Resolve when `dc` is open, reject after `ms`. */
  function opened(dc, ms) {
    if (dc.readyState === 'open') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('timeout')), ms);
      dc.addEventListener('open', () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }

  /** The selected candidate pair of `pc` as {local, remote, state} (Chromium and Firefox). */
  async function selectedPair(pc) {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
    });
    if (!pair) stats.forEach((r) => { if (r.type === 'candidate-pair' && (r.selected || (r.nominated && r.state === 'succeeded'))) pair = r; });
    const pairs = [];
    stats.forEach((r) => { if (r.type === 'candidate-pair') pairs.push(r.state); });
    if (!pair) return { pairs };
    const l = stats.get(pair.localCandidateId) || {};
    const rm = stats.get(pair.remoteCandidateId) || {};
    const d = (c) => `${c.candidateType} ${c.protocol} ${c.address || c.ip}:${c.port}`;
    return { local: d(l), remote: d(rm), localType: l.candidateType, relayProtocol: l.relayProtocol || null, pairs };
  }

  /**
   * Measure `server` ({urls, username, credential}). `onSample(ms, rttMs)` sees every RTT.
   * Resolves to a plain object (JSON-ready); never rejects.
   */
  async function run(server, {
    connectTimeoutMs = 10000, echoMs = 2500, intervalMs = 20, bulkMs = 2000, onSample = () => {},
  } = {}) {
    const out = { connected: false };
    const cfg = { iceServers: [server], iceTransportPolicy: 'relay' };
    let a;
    let b;
    try {
      a = new RTCPeerConnection(cfg);
      b = new RTCPeerConnection(cfg);
    } catch (e) {
      out.error = `invalid server entry: ${e.message}`;
      return out;
    }
    out.relayCandidates = { a: 0, b: 0 };
    out.errors = [];
    const wire = (from, to, side) => {
      from.onicecandidate = (e) => {
        if (!e.candidate || !e.candidate.candidate) return;
        if (e.candidate.type === 'relay') out.relayCandidates[side] += 1;
        to.addIceCandidate(e.candidate).catch(() => {});
      };
      from.onicecandidateerror = (e) => out.errors.push({ side, code: e.errorCode, text: e.errorText });
    };
    wire(a, b, 'a');
    wire(b, a, 'b');
    const probeA = a.createDataChannel('probe', { ordered: false, maxRetransmits: 0 });
    const bulkA = a.createDataChannel('bulk');
    probeA.binaryType = 'arraybuffer';
    const bulkRx = { bytes: 0, counting: false };
    b.ondatachannel = (e) => {
      const ch = e.channel;
      ch.binaryType = 'arraybuffer';
      if (ch.label === 'probe') ch.onmessage = (m) => { if (ch.readyState === 'open') ch.send(m.data); };
      if (ch.label === 'bulk') ch.onmessage = (m) => { if (bulkRx.counting) bulkRx.bytes += m.data.byteLength; };
    };
    const t0 = performance.now();
    try {
      await a.setLocalDescription(await a.createOffer());
      await b.setRemoteDescription(a.localDescription);
      await b.setLocalDescription(await b.createAnswer());
      await a.setRemoteDescription(b.localDescription);
      await Promise.all([opened(probeA, connectTimeoutMs), opened(bulkA, connectTimeoutMs)]);
    } catch (e) {
      out.iceState = a.iceConnectionState;
      out.connectionState = a.connectionState;
      out.pair = await selectedPair(a).catch(() => ({}));
      out.waitedMs = Math.round(performance.now() - t0);
      a.close();
      b.close();
      return out;
    }
    out.connected = true;
    out.connectMs = Math.round(performance.now() - t0);
    out.pair = await selectedPair(a).catch(() => ({}));

    // Echo phase.
    const sentAt = new Map();
    const rtts = [];
    const samples = [];
    let seq = 0;
    const start = performance.now();
    probeA.onmessage = (m) => {
      const now = performance.now();
      const n = new DataView(m.data).getUint32(0);
      const at = sentAt.get(n);
      if (at === undefined) return;
      sentAt.delete(n);
      const rtt = now - at;
      rtts.push(rtt);
      const x = (now - start) / 1000;
      samples.push([Math.round(x * 1000), Math.round(rtt * 100) / 100]);
      onSample(x, rtt);
    };
    const timer = setInterval(() => {
      if (probeA.readyState !== 'open') return;
      const buf = new ArrayBuffer(PROBE_BYTES);
      new DataView(buf).setUint32(0, seq);
      sentAt.set(seq, performance.now());
      seq += 1;
      try { probeA.send(buf); } catch (e) { /* closed */ }
    }, intervalMs);
    await sleep(echoMs);
    clearInterval(timer);
    await sleep(Math.min(1000, Math.max(300, 4 * (quantile([...rtts].sort((x, y) => x - y), 0.99) || 0))));
    const sorted = [...rtts].sort((x, y) => x - y);
    const r2 = (v) => (v === null ? null : Math.round(v * 100) / 100);
    out.probes = { sent: seq, echoed: rtts.length, bytes: PROBE_BYTES, intervalMs };
    out.lossPct = seq ? Math.round((1000 * (seq - rtts.length)) / seq) / 10 : null;
    out.rttMs = { p50: r2(quantile(sorted, 0.5)), p95: r2(quantile(sorted, 0.95)), p99: r2(quantile(sorted, 0.99)), min: r2(sorted[0] ?? null), max: r2(sorted[sorted.length - 1] ?? null) };
    out.samples = samples;

    // Bulk phase.
    const chunk = new ArrayBuffer(CHUNK_BYTES);
    bulkA.bufferedAmountLowThreshold = HIGH_WATER / 4;
    let sending = true;
    const fill = () => {
      while (sending && bulkA.readyState === 'open' && bulkA.bufferedAmount < HIGH_WATER) {
        try { bulkA.send(chunk); } catch (e) { return; }
      }
    };
    bulkA.onbufferedamountlow = fill;
    bulkRx.counting = true;
    const bulkStart = performance.now();
    fill();
    await sleep(bulkMs);
    bulkRx.counting = false;
    sending = false;
    const secs = (performance.now() - bulkStart) / 1000;
    out.throughput = {
      bytes: bulkRx.bytes,
      seconds: Math.round(secs * 100) / 100,
      mbitPerS: Math.round((bulkRx.bytes * 8) / secs / 1e4) / 100,
    };
    const after = await selectedPair(a).catch(() => null);
    if (after && after.local) out.pair = after;
    a.close();
    b.close();
    return out;
  }

  return { run, quantile };
})();
