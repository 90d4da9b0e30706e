// Headless Chromium (Debian's /usr/bin/chromium via playwright-core) gathers relay
// candidates from one TURN server per run and prints one JSON object with what it got. Run by
// tests/it/fleet.rs (the fleet's 300 Try Alternate):
//
//   node redirect.js <chromium-path> <json: [{name, url, username, credential}]>
//
// For each entry: a fresh RTCPeerConnection with that one TURN URL, iceTransportPolicy
// "relay", a data channel, an offer, then every candidate (address, port, type,
// relayProtocol, url) and icecandidateerror event until gathering completes (20 s at most).
// It asserts nothing itself; it exits 1 with {"error": ...} when the browser fails.
'use strict';

const { chromium } = require('playwright-core');

const [exe, spec] = process.argv.slice(2);
if (!exe || !spec) {
  console.error('usage: node redirect.js <chromium> <json servers>');
  process.exit(2);
}

async function gather(page, server) {
  return page.evaluate(async ({ url, username, credential }) => {
    const pc = new RTCPeerConnection({
      iceServers: [{ urls: url, username, credential }],
      iceTransportPolicy: 'relay',
    });
    const candidates = [];
    const errors = [];
    const done = new Promise((resolve) => {
      const timer = setTimeout(() => resolve('timeout'), 20000);
      pc.onicecandidate = (e) => {
        if (!e.candidate) { clearTimeout(timer); resolve('complete'); return; }
        const c = e.candidate;
        candidates.push({
          type: c.type, address: c.address, port: c.port, protocol: c.protocol,
          relayProtocol: c.relayProtocol, url: c.url,
        });
      };
      pc.onicecandidateerror = (e) => errors.push({ code: e.errorCode, text: e.errorText, url: e.url });
    });
    pc.createDataChannel('probe');
    await pc.setLocalDescription(await pc.createOffer());
    const gathering = await done;
    pc.close();
    return { gathering, candidates, errors };
  }, server);
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
    const results = {};
    for (const server of JSON.parse(spec)) {
      process.stderr.write(`[redirect.js] gathering from ${server.url}\n`);
      results[server.name] = await gather(page, server);
    }
    console.log(JSON.stringify({ results }));
  } catch (e) {
    console.log(JSON.stringify({ error: String(e && e.stack || e) }));
    process.exitCode = 1;
  } finally {
    if (browser) await browser.close().catch(() => {});
  }
})();
