// Headless Chromium (Debian's /usr/bin/chromium via playwright-core) makes one relay-only call
// between two peer connections in one page and prints one JSON object with what happened. Run
// by tests/it/fastpath_clients.rs (the XDP fast path with a browser):
//
//   node fastpath_call.js <chromium-path> <json: {a: iceServer, b: iceServer, messages, size}>
//
// Peer connection A has only TURN server `a`, B only `b`, both iceTransportPolicy "relay";
// candidates go straight from one to the other in the page (no signaling server). A opens a
// reliable, ordered data channel and sends `messages` messages of `size` bytes (a sequence
// number, then a pattern derived from it); B echoes each one; A checks every echo byte for
// byte. The result: connected, sent, echoed, intact, the selected candidate pair (types and
// addresses, from getStats) and milliseconds to connect. It asserts nothing itself; it exits
// 1 with {"error": ...} when the browser fails. Every wait is bounded (30 s for the call).
'use strict';

const { chromium } = require('playwright-core');

const [exe, spec] = process.argv.slice(2);
if (!exe || !spec) {
  console.error('usage: node fastpath_call.js <chromium> <json spec>');
  process.exit(2);
}

async function call(page, s) {
  return page.evaluate(async ({ a, b, messages, size }) => {
    const t0 = performance.now();
    const pa = new RTCPeerConnection({ iceServers: [a], iceTransportPolicy: 'relay' });
    const pb = new RTCPeerConnection({ iceServers: [b], iceTransportPolicy: 'relay' });
    const errors = [];
    for (const [pc, other, name] of [[pa, pb, 'a'], [pb, pa, 'b']]) {
      pc.onicecandidate = (e) => { if (e.candidate) other.addIceCandidate(e.candidate).catch((x) => errors.push(`${name}: ${x}`)); };
      pc.onicecandidateerror = (e) => errors.push(`${name}: ${e.errorCode} ${e.errorText} ${e.url}`);
    }
    pb.ondatachannel = (e) => { e.channel.binaryType = 'arraybuffer'; e.channel.onmessage = (m) => e.channel.send(m.data); };
    const dc = pa.createDataChannel('fastpath', { ordered: true });
    dc.binaryType = 'arraybuffer';
    const opened = new Promise((resolve) => { dc.onopen = () => resolve(true); });
    await pa.setLocalDescription(await pa.createOffer());
    await pb.setRemoteDescription(pa.localDescription);
    await pb.setLocalDescription(await pb.createAnswer());
    await pa.setRemoteDescription(pb.localDescription);
    const timeout = (ms) => new Promise((resolve) => setTimeout(() => resolve(false), ms));
    const connected = await Promise.race([opened, timeout(30000)]);
    const connectMs = performance.now() - t0;
    const result = { connected, connectMs, sent: 0, echoed: 0, intact: true, errors, pair: null };
    if (connected) {
      const payload = (i) => {
        const u = new Uint8Array(size);
        new DataView(u.buffer).setUint32(0, i);
        for (let k = 4; k < size; k++) u[k] = (i * 31 + k) & 0xff;
        return u;
      };
      const done = new Promise((resolve) => {
        dc.onmessage = (m) => {
          const got = new Uint8Array(m.data);
          const want = payload(result.echoed);
          if (got.length !== want.length || got.some((v, k) => v !== want[k])) result.intact = false;
          result.echoed += 1;
          if (result.echoed === messages) resolve(true);
        };
      });
      for (let i = 0; i < messages; i++) {
        // Keep the send buffer short: the test is about the path, not SCTP's queue.
        while (dc.bufferedAmount > 64 * 1024) await new Promise((r) => setTimeout(r, 5));
        dc.send(payload(i));
        result.sent += 1;
      }
      await Promise.race([done, timeout(30000)]);
      const stats = await pa.getStats();
      let selected = null;
      stats.forEach((r) => { if (r.type === 'transport' && r.selectedCandidatePairId) selected = r.selectedCandidatePairId; });
      const pair = selected && stats.get(selected);
      if (pair) {
        const side = (id) => { const c = stats.get(id); return c && { candidateType: c.candidateType, address: c.address, port: c.port, relayProtocol: c.relayProtocol }; };
        result.pair = { local: side(pair.localCandidateId), remote: side(pair.remoteCandidateId), state: pair.state };
      }
    }
    pa.close();
    pb.close();
    return result;
  }, s);
}

(async () => {
  let browser;
  try {
    browser = await chromium.launch({
      executablePath: exe,
      headless: true,
      timeout: 30000,
      args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync'],
    });
    const page = await browser.newPage();
    await page.goto('about:blank');
    const s = JSON.parse(spec);
    process.stderr.write(`[fastpath_call.js] ${s.a.urls} <-> ${s.b.urls}\n`);
    console.log(JSON.stringify(await call(page, s)));
  } catch (e) {
    console.log(JSON.stringify({ error: String(e && e.stack || e) }));
    process.exitCode = 1;
  } finally {
    if (browser) await browser.close().catch(() => {});
  }
})();
