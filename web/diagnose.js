// The tester's diagnosis: from what gathering and the relay measurement saw per transport,
// one line per transport in words a tester understands, each with its evidence. Pure
// functions (no DOM), used by tester.js.
'use strict';

const turndDiagnose = (() => {
  const NAMES = { udp: 'UDP', tcp: 'TCP', tls: 'TLS' };
  const ALLOWED_LOW_PORTS = [53, 80, 443];

  /** The port of a stun:/turn:/turns: URL, with the RFC 7064/7065 defaults. */
  function portOf(url) {
    const u = String(url).trim().toLowerCase();
    const rest = u.replace(/^[a-z]+:/, '').split('?')[0];
    const m = /:(\d+)$/.exec(rest);
    if (m && !rest.endsWith(']')) return Number(m[1]);
    return u.startsWith('turns:') || u.startsWith('stuns:') ? 5349 : 3478;
  }

  /** True if the host of a stun:/turn:/turns: URL is an IPv4 or IPv6 literal. */
  function hostIsIp(url) {
    const rest = String(url).trim().replace(/^[a-z]+:/i, '').split('?')[0];
    if (rest.startsWith('[')) return true;
    return /^\d{1,3}(\.\d{1,3}){3}(:\d+)?$/.test(rest);
  }

  /** The expiry (Unix seconds) in a TURN REST username (`expiry:user`), else null. */
  function restExpiry(username) {
    const m = /^(\d{9,12})(?:\D|$)/.exec(String(username || ''));
    return m ? Number(m[1]) : null;
  }

  /** A duration in words: seconds up to 2 h, then hours up to 2 days, then days. */
  const secs = (n) => {
    if (n >= 172800) return `${Math.round(n / 86400)} days`;
    if (n >= 7200) return `${Math.round(n / 3600)} h`;
    return `${Math.round(n)} s`;
  };

  /** Why this failing transport failed: {text, evidence}. */
  function failure(t, g, ctx) {
    const rs = g.results;
    const urls = rs.map((r) => r.url).join(', ');
    const invalid = rs.find((r) => r.invalid);
    if (invalid) return { text: `${NAMES[t]}: ${invalid.invalid}`, evidence: invalid.url };
    const errs = rs.flatMap((r) => r.errors.map((e) => ({ ...e, url: r.url, username: r.username })));
    const e401 = errs.find((e) => e.code === 401);
    if (e401) {
      const exp = restExpiry(e401.username);
      const now = Date.now() / 1000;
      const skew = ctx.skewS;
      const skewText = skew === null || skew === undefined ? 'clock skew unknown' : `clock skew of ${skew} s`;
      let why;
      if (exp !== null && exp < now) why = `expired ${secs(now - exp)} ago by this browser's clock, ${skewText}`;
      else if (exp !== null) why = `not expired (${secs(exp - now)} left), ${skewText}: wrong username, password or secret?`;
      else why = `expired? ${skewText}?`;
      const ev = [`${e401.code} ${e401.text || ''}`.trim(), `username ${e401.username || '(empty)'}`];
      if (exp !== null) ev.push(`username expires ${new Date(exp * 1000).toISOString()}`);
      if (ctx.serverDate) ev.push(`server clock ${ctx.serverDate}, browser clock ${ctx.browserDate}`);
      return { text: `${NAMES[t]}: 401: credentials rejected — ${why}`, evidence: `${ev.join('; ')} — ${e401.url}` };
    }
    const other = errs.find((e) => e.code !== 701 && e.code);
    if (other) {
      return { text: `${NAMES[t]}: the server answered ${other.code} ${other.text || ''}`.trim(), evidence: other.url };
    }
    const low = rs.map((r) => portOf(r.url)).find((p) => p < 1024 && !ALLOWED_LOW_PORTS.includes(p));
    if (low !== undefined && ctx.chromium) {
      return {
        text: `${NAMES[t]}: port ${low} is below 1024 and not 53/80/443, so Chromium ignores this server`,
        evidence: `no candidate and no error at all — ${urls}`,
      };
    }
    if (t === 'tls' && !ctx.chromium && !errs.length && rs.every((r) => hostIsIp(r.url))) {
      return {
        text: 'TLS: Firefox ignores turns: URLs with an IP address (no name to check the certificate against); use the server\'s name',
        evidence: `no candidate and no error — ${urls}`,
      };
    }
    const e701 = errs.find((e) => e.code === 701);
    const timeoutS = Math.max(...rs.map((r) => r.timeoutS));
    const tcpOk = ctx.verdicts.tcp === 'ok';
    if (t === 'tls' && e701 && tcpOk) {
      return {
        text: 'TLS: certificate not trusted or name mismatch (701)',
        evidence: `701 ${e701.text || ''} while TURN over plain TCP to this server works — ${e701.url}`.replace(/ {2,}/g, ' '),
      };
    }
    if (t === 'tls' && e701) {
      return { text: 'TLS: server unreachable, or certificate not trusted or name mismatch (701)', evidence: `701 ${e701.text || ''} — ${e701.url}` };
    }
    if (t === 'tls' && !errs.length && tcpOk) {
      return {
        text: 'TLS: certificate not trusted or name mismatch? (no relay over TLS while TCP works; this browser gave no error code)',
        evidence: `no relay candidate — ${urls}`,
      };
    }
    const complete = rs.every((r) => r.complete);
    const noAnswer = !complete || (e701 && /time|timeout|timed out/i.test(e701.text || ''));
    if (noAnswer || e701) {
      const where = t === 'udp' ? 'UDP blocked on this network' : `${NAMES[t]} blocked on this network or server down`;
      const others = ['udp', 'tcp', 'tls'].filter((x) => x !== t && ctx.verdicts[x] === 'ok').map((x) => NAMES[x]);
      const also = others.length ? `, ${others.join(' and ')} ${others.length > 1 ? 'work' : 'works'}` : '';
      const wait = complete ? `gathering gave up${e701 ? ` with 701 ${e701.text || ''}` : ''}` : `no answer in ${timeoutS} s`;
      return { text: `${where} (${wait.trim()})${also}`, evidence: `${e701 ? `701 ${e701.text || ''}; ` : ''}no relay candidate — ${urls}` };
    }
    return { text: `${NAMES[t]}: gathering finished without a relay candidate`, evidence: urls };
  }

  /**
   * `ctx`: {verdicts: {udp, tcp, tls}, gathers: {t: {results}}, measures: {t: result},
   * skewS, serverDate, browserDate, chromium}. Returns [{transport, level, text, evidence}].
   */
  function diagnose(ctx) {
    const out = [];
    for (const t of ['udp', 'tcp', 'tls']) {
      const v = ctx.verdicts[t];
      const g = ctx.gathers[t];
      if (v === 'untested' || !g || !g.results.length) continue;
      if (v === 'fail') {
        out.push({ transport: t, level: 'fail', ...failure(t, g, ctx) });
        continue;
      }
      const m = ctx.measures[t];
      if (!m) {
        out.push({ transport: t, level: 'ok', text: `${NAMES[t]}: relay allocated (not measured)`, evidence: g.okUrl || '' });
        continue;
      }
      if (!m.connected) {
        const ev = [`ICE ${m.iceState || '?'}`, `connection ${m.connectionState || '?'}`,
          `relay candidates ${m.relayCandidates ? `${m.relayCandidates.a}+${m.relayCandidates.b}` : '?'}`,
          `candidate pairs: ${(m.pair && m.pair.pairs && m.pair.pairs.join(', ')) || 'none'}`,
          `waited ${m.waitedMs} ms`];
        if (m.error) ev.unshift(m.error);
        out.push({
          transport: t, level: 'fail',
          text: `${NAMES[t]}: relay candidate but no media: peer policy or firewall on the relay ports`,
          evidence: `${ev.join('; ')} — ${m.url}`,
        });
        continue;
      }
      const r = m.rttMs;
      const line = `${NAMES[t]}: works — connected in ${m.connectMs} ms, RTT p50 ${r.p50} / p95 ${r.p95} / p99 ${r.p99} ms, loss ${m.lossPct} %, ${m.throughput.mbitPerS} Mbit/s`;
      const ev = `${m.probes.echoed}/${m.probes.sent} probes echoed; ${m.throughput.bytes} B in ${m.throughput.seconds} s; ${m.pair.local || '?'} <-> ${m.pair.remote || '?'} — ${m.url}`;
      const lossy = m.lossPct > 5;
      out.push({ transport: t, level: lossy ? 'warn' : 'ok', text: lossy ? `${line} (high loss)` : line, evidence: ev });
    }
    return out;
  }

  return {
    diagnose, portOf, restExpiry, hostIsIp,
  };
})();
