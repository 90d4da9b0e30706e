// Headless Chromium gathering relay candidates from turnd with a user only the `[auth]
// webhook` knows. Run by tests/it/webhook.rs:
//
//   node webhook.js <page-url> <chromium-path> <turn-url>... (username and password in
//   WEBHOOK_USER / WEBHOOK_PASS)
//
// Prints one JSON object: per TURN URL the relay candidates gathered, the ICE candidate errors
// and how long gathering took. Asserts nothing itself; exits 1 with {"error": ...} on failure.
'use strict';

const { chromium } = require('playwright-core');

const [page_url, exe, ...turnUrls] = process.argv.slice(2);
const user = process.env.WEBHOOK_USER;
const pass = process.env.WEBHOOK_PASS;
if (!page_url || !exe || turnUrls.length === 0 || !user || !pass) {
  console.error('usage: WEBHOOK_USER=.. WEBHOOK_PASS=.. node webhook.js <page-url> <chromium> <turn-url>...');
  process.exit(2);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: exe,
    headless: true,
    timeout: 30000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage();
    await page.goto(page_url);
    const results = {};
    for (const url of turnUrls) {
      results[url] = await page.evaluate(async ({ url, user, pass }) => {
        const started = performance.now();
        const pc = new RTCPeerConnection({
          iceServers: [{ urls: url, username: user, credential: pass }],
          iceTransportPolicy: 'relay',
        });
        const relays = [];
        const errors = [];
        pc.onicecandidateerror = (e) => errors.push({ code: e.errorCode, text: e.errorText });
        const done = new Promise((resolve) => {
          pc.onicecandidate = (e) => {
            if (e.candidate && e.candidate.type === 'relay') relays.push(e.candidate.candidate);
            if (!e.candidate) resolve();
          };
          setTimeout(resolve, 15000);
        });
        pc.createDataChannel('x');
        await pc.setLocalDescription(await pc.createOffer());
        await done;
        pc.close();
        return { relays, errors, ms: Math.round(performance.now() - started) };
      }, { url, user, pass });
    }
    console.log(JSON.stringify({ results }));
  } catch (e) {
    console.log(JSON.stringify({ error: String(e && e.stack || e) }));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
