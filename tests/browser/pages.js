// Drives turnd's pages in headless Chromium (Debian's /usr/bin/chromium via playwright-core)
// and prints one JSON object with what the pages showed. Run by tests/browser_pages.rs:
//
//   node pages.js <base-url> <spki-sha256> <screenshot-dir> <chromium-path> <silent-udp-port>
//                 <no-peers-base-url>
//
// <silent-udp-port> is a 127.0.0.1 UDP port whose socket never answers: the "UDP blocked"
// scenario points the tester's turn:...?transport=udp URL at it. <no-peers-base-url> is a
// second turnd whose peer policy refuses every peer (relays are allocated, nothing flows).
//
// It asserts nothing itself (the Rust test does); it exits 1 with {"error": ...} when a page
// never reached the state it waited for.
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const [base, spki, shots, exe, silentPort, noPeersBase] = process.argv.slice(2);
if (!base || !spki || !shots || !exe || !silentPort || !noPeersBase) {
  console.error('usage: node pages.js <base-url> <spki-sha256> <screenshot-dir> <chromium> <silent-udp-port> <no-peers-base-url>');
  process.exit(2);
}
const TRANSPORTS = ['udp', 'tcp', 'tls'];
const step = (text) => process.stderr.write(`[pages.js ${new Date().toISOString().slice(11, 23)}] ${text}\n`);

/** A new page whose console errors and exceptions go to stderr. */
async function newPage(browserOrContext, opts) {
  const page = await browserOrContext.newPage(opts);
  page.on('pageerror', (e) => step(`page error on ${page.url()}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') step(`console on ${page.url()}: ${m.text()}`); });
  return page;
}

/** Wait for `selector`; on timeout the error carries the page's state and a screenshot. */
async function waitFor(page, selector, timeout, what) {
  try {
    await page.waitForSelector(selector, { timeout, state: 'attached' });
  } catch (e) {
    const file = path.join(shots, `failed-${what}.png`);
    await page.screenshot({ path: file, fullPage: true }).catch(() => {});
    const text = await page.evaluate(() => document.querySelector('main').innerText).catch(() => '');
    throw new Error(`${what}: ${selector} not reached in ${timeout} ms (screenshot ${file}); page text:\n${text}`);
  }
}

async function launch({ trustDevCert = true } = {}) {
  return chromium.launch({
    executablePath: exe,
    headless: true,
    timeout: 30000,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      '--autoplay-policy=no-user-gesture-required',
      ...(trustDevCert ? [`--ignore-certificate-errors-spki-list=${spki}`] : []),
    ],
  });
}

/** Index page: wait for /api/info to be shown, screenshot. */
async function index(browser) {
  const page = await newPage(browser, { viewport: { width: 1100, height: 760 } });
  await page.goto(`${base}/`);
  await waitFor(page, '#offers[data-state="ready"]', 10000, 'index');
  await page.screenshot({ path: path.join(shots, 'index.png'), fullPage: true });
  const turn = await page.locator('#info-turn div').allTextContents();
  await page.close();
  return { turn };
}

/** What the tester page shows: verdicts, candidate rows, error rows. */
async function testerResult(page) {
  return page.evaluate(() => {
    const rows = (id) => [...document.querySelectorAll(`#${id} tbody tr`)];
    const v = document.getElementById('verdicts').dataset;
    return {
      verdicts: { udp: v.verdictUdp, tcp: v.verdictTcp, tls: v.verdictTls },
      reasons: Object.fromEntries(['udp', 'tcp', 'tls'].map((t) => [t,
        document.querySelector(`#verdict-${t} .reason`).textContent])),
      candidates: rows('candidates').map((r) => ({
        transport: r.dataset.transport, type: r.dataset.type,
        relayProtocol: r.dataset.relayProtocol, cells: [...r.cells].map((c) => c.textContent),
      })),
      errors: rows('errors').map((r) => ({
        transport: r.dataset.transport, code: Number(r.dataset.code),
        cells: [...r.cells].map((c) => c.textContent),
      })),
      diagnosis: [...document.querySelectorAll('#diagnosis li')].map((li) => ({
        transport: li.dataset.transport, level: li.dataset.level, text: li.querySelector('b').textContent,
        evidence: li.querySelector('div').textContent,
      })),
      measured: rows('measure').map((r) => ({ transport: r.dataset.transport, connected: r.dataset.connected === '1' })),
    };
  });
}

/** Click "Report": the downloaded JSON file, parsed, and the summary shown on the page. */
async function downloadReport(page) {
  const [download] = await Promise.all([page.waitForEvent('download', { timeout: 10000 }), page.click('#report')]);
  const file = await download.path();
  const json = JSON.parse(fs.readFileSync(file, 'utf8'));
  await page.waitForFunction(() => document.getElementById('summary').textContent.length > 0, null, { timeout: 5000 });
  const summary = await page.locator('#summary').textContent();
  return { name: download.suggestedFilename(), json, summary };
}

/**
 * The tester page loaded with this server's rows, then edited: stun rows removed, `edit(row
 * transport) -> {url?, credential?}` applied, measurement on or off; gathered; result.
 */
async function testerEdited(browser, {
  shot, edit = () => ({}), measure, timeout, width = 1100, server = base,
}) {
  const page = await newPage(browser, { viewport: { width, height: 900 } });
  await page.goto(`${server}/tester?timeout=${timeout}${measure ? '' : '&measure=0'}`);
  await waitFor(page, '#servers tbody tr[data-transport="udp"]', 10000, `${shot}-load`);
  await waitFor(page, '#tester[data-state="idle"]', 10000, `${shot}-idle`);
  const rows = page.locator('#servers tbody tr');
  for (let i = 0; i < await rows.count(); i += 1) {
    const row = rows.nth(i);
    const t = await row.getAttribute('data-transport');
    const e = t === 'stun' ? { remove: true } : edit(t);
    if (e.remove) {
      await row.locator('button.remove').click();
      i -= 1;
      continue;
    }
    if (e.url) await row.locator('input.url').fill(e.url);
    if (e.username) await row.locator('input.username').fill(e.username);
    if (e.credential) await row.locator('input.credential').fill(e.credential);
  }
  await page.click('#gather-all');
  await waitFor(page, '#tester[data-state="done"]', 60000, shot);
  const result = await testerResult(page);
  result.report = await downloadReport(page);
  await page.screenshot({ path: path.join(shots, `${shot}.png`), fullPage: true });
  await page.close();
  return result;
}

/** The tester with this server's credentials, gathering every URL, then measuring. */
async function tester(browser, { width = 1100, shot = 'tester', isMobile = false } = {}) {
  const ctx = await browser.newContext({ viewport: { width, height: 900 }, isMobile, hasTouch: isMobile, acceptDownloads: true });
  const page = await newPage(ctx);
  await page.goto(`${base}/tester?gather=1&timeout=10`);
  await waitFor(page, '#tester[data-state="done"]', 60000, shot);
  const result = await testerResult(page);
  result.report = await downloadReport(page);
  await page.screenshot({ path: path.join(shots, `${shot}.png`), fullPage: true });
  // The result cards on their own (readable at phone width).
  await page.locator('section.card:has(#diagnosis)').screenshot({ path: path.join(shots, `${shot}-diagnosis.png`) });
  await page.locator('section.card:has(#measure)').screenshot({ path: path.join(shots, `${shot}-measure.png`) });
  await ctx.close();
  return result;
}

const statusOf = (page) => page.evaluate(() => ({ ...document.getElementById('status').dataset }));

/** Wait until `pred(status)` holds on the call page, or fail with the last status. */
async function waitStatus(page, what, pred, ms = 20000) {
  const until = Date.now() + ms;
  let s;
  while (Date.now() < until) {
    s = await statusOf(page);
    if (pred(s)) return s;
    await page.waitForTimeout(200);
  }
  throw new Error(`call page: timed out waiting for ${what}; status ${JSON.stringify(s)}`);
}

/** Two browser contexts join one room, relay only, over `transport`. */
async function call(browser, transport, shot) {
  const room = `t-${transport}-${Math.random().toString(16).slice(2, 8)}`;
  const url = `${base}/call?room=${room}&transport=${transport}&relay=1&autojoin=1`;
  const contexts = [];
  const pages = [];
  for (let i = 0; i < 2; i += 1) {
    const ctx = await browser.newContext({ viewport: { width: 1000, height: 900 } });
    contexts.push(ctx);
    const page = await newPage(ctx);
    await page.goto(url);
    pages.push(page);
    // The first must be in the room before the second arrives (the newcomer calls).
    if (i === 0) await waitStatus(page, 'join', (s) => s.signaling && s.signaling.startsWith('joined'));
  }
  const t0 = Date.now();
  for (const p of pages) await waitStatus(p, 'connected', (s) => s.connection === 'connected');
  const connectMs = Date.now() - t0;
  for (const [i, p] of pages.entries()) {
    await waitStatus(p, 'chat open', (s) => s.chatOpen === '1');
    await p.fill('#chat-input', `hello from ${i === 0 ? 'A' : 'B'} over ${transport}`);
    await p.click('#chat-send');
  }
  const flowing = (s) => Number(s.chatIn) >= 1 && Number(s.mediaIn) > 20000 && Number(s.mediaOut) > 20000
    && Number(s.dcIn) > 0 && Number(s.dcOut) > 0 && s.relayProtocol && s.rttMs !== undefined
    && Number(s.statSamples) >= 3 && s.kbpsIn !== undefined && s.lossPct !== undefined && s.jitterMs !== undefined;
  const status = [];
  for (const p of pages) status.push(await waitStatus(p, 'media, chat and stats', flowing));
  const chat = await pages[1].locator('#chatlog').textContent();
  if (shot) await pages[0].screenshot({ path: path.join(shots, shot), fullPage: true });
  for (const c of contexts) await c.close();
  return { connectMs, a: status[0], b: status[1], chatB: chat };
}

/** The call page at phone size, before joining. */
async function phone(browser) {
  const ctx = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const page = await newPage(ctx);
  await page.goto(`${base}/call?room=phone`);
  await page.screenshot({ path: path.join(shots, 'call-phone.png'), fullPage: true });
  await ctx.close();
}

(async () => {
  fs.mkdirSync(shots, { recursive: true });
  const started = Date.now();
  const browser = await launch();
  const out = { chromium: browser.version() };
  try {
    step('index'); out.index = await index(browser);
    step('tester'); out.tester = await tester(browser);
    step('tester, wrong password');
    out.testerWrong = await testerEdited(browser, {
      shot: 'tester-wrong-password', measure: false, timeout: 10,
      // UDP: a TURN REST username that expired in 2020; TCP, TLS: a wrong password.
      edit: (t) => (t === 'udp' ? { username: '1600000000:expired', credential: 'x' } : { credential: 'wrong-password' }),
    });
    step('tester, port below 1024');
    out.testerLowPort = await testerEdited(browser, {
      shot: 'tester-low-port', measure: false, timeout: 5,
      edit: (t) => (t === 'udp' ? { url: 'turn:127.0.0.1:999?transport=udp' } : { remove: true }),
    });
    step('tester, UDP blocked');
    out.testerUdpBlocked = await testerEdited(browser, {
      shot: 'tester-udp-blocked', measure: true, timeout: 5,
      edit: (t) => (t === 'udp' ? { url: `turn:127.0.0.1:${silentPort}?transport=udp` } : {}),
    });
    step('tester, peers refused');
    out.testerNoPeers = await testerEdited(browser, {
      shot: 'tester-no-media', measure: true, timeout: 5, server: noPeersBase,
      edit: (t) => (t === 'udp' ? {} : { remove: true }),
    });
    step('tester, untrusted certificate');
    const untrusting = await launch({ trustDevCert: false });
    try {
      out.testerUntrusted = await testerEdited(untrusting, { shot: 'tester-untrusted-cert', measure: false, timeout: 10 });
    } finally {
      await untrusting.close();
    }
    out.calls = {};
    for (const t of TRANSPORTS) {
      step(`call over ${t}`);
      out.calls[t] = await call(browser, t, `call-${t}.png`);
    }
    step('phone'); await phone(browser);
    step('tester at phone width'); out.testerPhone = await tester(browser, { width: 390, shot: 'tester-phone', isMobile: true });
  } finally {
    await browser.close();
  }
  out.ms = Date.now() - started;
  process.stdout.write(`${JSON.stringify(out)}\n`);
})().catch((e) => {
  process.stdout.write(`${JSON.stringify({ error: String(e && e.stack ? e.stack : e) })}\n`);
  process.exit(1);
});
