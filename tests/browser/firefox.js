// Drives turnd's pages in headless Firefox (Debian's firefox-esr via puppeteer-core over
// WebDriver BiDi; no browser download) and prints one JSON object with what the pages
// showed. Firefox's ICE stack (nICEr) is a second, independent TURN client. Run by
// tests/browser_firefox.rs:
//
//   node firefox.js <base-url> <screenshot-dir> <firefox-path> <profile-dir>
//
// <profile-dir> is a Firefox profile prepared by the caller (its certificate database trusts
// turnd's test certificate, for turns:). It asserts nothing itself (the Rust test does); it
// exits 1 with {"error": ...} when a page never reached the state it waited for.
'use strict';

const fs = require('fs');
const path = require('path');
const puppeteer = require('puppeteer-core');

const [base, shots, exe, profile] = process.argv.slice(2);
if (!base || !shots || !exe || !profile) {
  console.error('usage: node firefox.js <base-url> <screenshot-dir> <firefox> <profile-dir>');
  process.exit(2);
}
const TRANSPORTS = ['udp', 'tcp', 'tls'];
const step = (text) => process.stderr.write(`[firefox.js ${new Date().toISOString().slice(11, 23)}] ${text}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function launch() {
  return puppeteer.launch({
    browser: 'firefox',
    executablePath: exe,
    headless: true,
    userDataDir: profile,
    timeout: 30000,
    protocolTimeout: 60000,
    dumpio: !!process.env.FF_DUMPIO,
    extraPrefsFirefox: {
      // Loopback ICE (everything here is on 127.0.0.1) and fake camera/microphone.
      'media.peerconnection.ice.loopback': true,
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      'media.autoplay.default': 0,
      'browser.download.dir': profile,
      'browser.download.folderList': 2,
    },
  });
}

async function newPage(ctx, width = 1100) {
  const page = await ctx.newPage();
  await page.setViewport({ width, height: 900 });
  page.on('pageerror', (e) => step(`page error on ${page.url()}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') step(`console on ${page.url()}: ${m.text()}`); });
  return page;
}

/** Poll `fn` in the page until it returns truthy; fail with a screenshot and the page text. */
async function waitUntil(page, what, fn, ms) {
  const until = Date.now() + ms;
  let last;
  while (Date.now() < until) {
    last = await page.evaluate(fn).catch((e) => `evaluate failed: ${e.message}`);
    if (last === true) return;
    await sleep(200);
  }
  const file = path.join(shots, `failed-firefox-${what}.png`);
  await page.screenshot({ path: file, fullPage: true }).catch(() => {});
  const text = await page.evaluate(() => document.querySelector('main').innerText).catch(() => '');
  throw new Error(`${what}: not reached in ${ms} ms (screenshot ${file}); last ${JSON.stringify(last)}; page text:\n${text}`);
}

/** The tester with this server's credentials: gather, measure, and the page's report. */
async function tester(browser) {
  const page = await newPage(browser);
  await page.goto(`${base}/tester?gather=1&timeout=10`);
  await waitUntil(page, 'tester', () => document.getElementById('tester').dataset.state === 'done', 60000);
  const report = await page.evaluate(() => window.turndTesterReport());
  const candidates = await page.evaluate(() => [...document.querySelectorAll('#candidates tbody tr')].map((r) => ({
    transport: r.dataset.transport, type: r.dataset.type, relayProtocol: r.dataset.relayProtocol,
  })));
  await page.screenshot({ path: path.join(shots, 'firefox-tester.png'), fullPage: true });
  await page.close();
  return { report, candidates };
}

/**
 * The tester opened by IP address (so every URL carries 127.0.0.1), without measurement: the
 * diagnosis must say that Firefox ignores turns: with an IP literal.
 */
async function testerByIp(browser) {
  const page = await newPage(browser);
  const ipBase = base.replace('//localhost:', '//127.0.0.1:');
  await page.goto(`${ipBase}/tester?gather=1&timeout=5&measure=0`);
  await waitUntil(page, 'tester-by-ip', () => document.getElementById('tester').dataset.state === 'done', 30000);
  const report = await page.evaluate(() => window.turndTesterReport());
  await page.screenshot({ path: path.join(shots, 'firefox-tester-by-ip.png'), fullPage: true });
  await page.close();
  return { report };
}

/** The tester with every TURN credential replaced by a wrong one, without measurement. */
async function testerWrongPassword(browser) {
  const page = await newPage(browser);
  await page.goto(`${base}/tester?timeout=5&measure=0`);
  await waitUntil(page, 'tester-wrong-load', () => document.getElementById('tester').dataset.state === 'idle'
    && document.querySelectorAll('#servers tbody tr[data-transport="udp"]').length > 0, 10000);
  await page.evaluate(() => {
    for (const tr of [...document.querySelectorAll('#servers tbody tr')]) {
      if (tr.dataset.transport === 'stun') tr.remove();
      else tr.querySelector('input.credential').value = 'wrong-password';
    }
    document.getElementById('gather-all').click();
  });
  await sleep(300);
  await waitUntil(page, 'tester-wrong', () => document.getElementById('tester').dataset.state === 'done', 30000);
  const report = await page.evaluate(() => window.turndTesterReport());
  await page.screenshot({ path: path.join(shots, 'firefox-tester-wrong-password.png'), fullPage: true });
  await page.close();
  return { report };
}

const statusOf = (page) => page.evaluate(() => ({ ...document.getElementById('status').dataset }));

async function waitStatus(page, what, pred, ms = 20000) {
  const until = Date.now() + ms;
  let s;
  while (Date.now() < until) {
    s = await statusOf(page);
    if (pred(s)) return s;
    await sleep(200);
  }
  throw new Error(`call page: timed out waiting for ${what}; status ${JSON.stringify(s)}`);
}

/** Two browser contexts join one room, relay only, over `transport`. */
async function call(browser, transport) {
  const room = `ff-${transport}-${Math.random().toString(16).slice(2, 8)}`;
  const url = `${base}/call?room=${room}&transport=${transport}&relay=1&autojoin=1`;
  const contexts = [];
  const pages = [];
  for (let i = 0; i < 2; i += 1) {
    const ctx = await browser.createBrowserContext();
    contexts.push(ctx);
    const page = await newPage(ctx, 1000);
    await page.goto(url);
    pages.push(page);
    if (i === 0) await waitStatus(page, 'join', (s) => s.signaling && s.signaling.startsWith('joined'));
  }
  const t0 = Date.now();
  for (const p of pages) await waitStatus(p, 'connected', (s) => s.connection === 'connected');
  const connectMs = Date.now() - t0;
  for (const [i, p] of pages.entries()) {
    await waitStatus(p, 'chat open', (s) => s.chatOpen === '1');
    await p.evaluate((text) => {
      document.getElementById('chat-input').value = text;
      document.getElementById('chat-send').click();
    }, `hello from ${i === 0 ? 'A' : 'B'} over ${transport}`);
  }
  const flowing = (s) => Number(s.chatIn) >= 1 && Number(s.mediaIn) > 20000 && Number(s.mediaOut) > 20000
    && s.relayProtocol && s.rttMs !== undefined && Number(s.statSamples) >= 3 && s.kbpsIn !== undefined
    && s.lossPct !== undefined && s.jitterMs !== undefined;
  const status = [];
  for (const p of pages) status.push(await waitStatus(p, 'media, chat and stats', flowing));
  const chat = await pages[1].evaluate(() => document.getElementById('chatlog').textContent);
  await pages[0].screenshot({ path: path.join(shots, `firefox-call-${transport}.png`), fullPage: true });
  for (const c of contexts) await c.close();
  return { connectMs, a: status[0], b: status[1], chatB: chat };
}

(async () => {
  fs.mkdirSync(shots, { recursive: true });
  const started = Date.now();
  const browser = await launch();
  const out = { firefox: await browser.version() };
  try {
    step('tester'); out.tester = await tester(browser);
    step('tester by IP address'); out.testerByIp = await testerByIp(browser);
    step('tester, wrong password'); out.testerWrong = await testerWrongPassword(browser);
    out.calls = {};
    for (const t of TRANSPORTS) {
      step(`call over ${t}`);
      out.calls[t] = await call(browser, t);
    }
  } finally {
    await browser.close();
  }
  out.ms = Date.now() - started;
  process.stdout.write(`${JSON.stringify(out)}\n`);
})().catch((e) => {
  process.stdout.write(`${JSON.stringify({ error: String(e && e.stack ? e.stack : e) })}\n`);
  process.exit(1);
});
