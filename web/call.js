// The call page: signaling over /ws (protocol in src/http/signaling.rs), one
// RTCPeerConnection with camera, microphone and a "chat" data channel, and a stats panel fed
// by getStats once a second: bitrate in/out, RTT, packet loss and jitter as numbers and as
// small live charts (chart.js), plus the selected pair and the relay protocol.
//
// URL parameters: room, transport (all|udp|tcp|tls), relay (1|0), autojoin (1).
// Test hooks: #status carries data-signaling, data-connection, data-local-type,
// data-remote-type, data-relay-protocol, data-rtt-ms, data-media-in, data-media-out,
// data-dc-in, data-dc-out, data-chat-in, data-chat-open, data-error, and per stats tick
// data-kbps-in, data-kbps-out, data-loss-pct, data-jitter-ms, data-stat-samples.
'use strict';

(() => {
  const { $, el, fetchIceServers, filterIceServers } = turnd;
  const S = {
    ws: null, pc: null, dc: null, stream: null, iceServers: [], relayOnly: true,
    queue: Promise.resolve(), pendingCandidates: [], statsTimer: null, prev: null, chatIn: 0,
    charts: null, t0: 0, samples: 0,
  };

  function show(key, value) {
    const camel = key.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    $('status').dataset[camel] = value;
    const dd = $(`s-${key}`);
    if (dd) dd.textContent = value;
  }

  function log(text) {
    const line = `${new Date().toISOString().slice(11, 23)} ${text}\n`;
    $('log').textContent = line + $('log').textContent.slice(0, 8000);
  }

  function chatLine(who, text) {
    const box = $('chatlog');
    box.append(el('div', { class: who }, who === 'sys' ? text : `${who === 'me' ? 'you' : 'peer'}: ${text}`));
    box.scrollTop = box.scrollHeight;
  }

  function fail(text) {
    $('status').dataset.error = text;
    log(`error: ${text}`);
    chatLine('sys', text);
  }

  function randomRoom() {
    const a = new Uint8Array(4);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  /** Point the share link (and the address bar) at the current form values. */
  function updateShare() {
    const q = new URLSearchParams({
      room: $('room').value.trim(), transport: $('transport').value, relay: $('relay').checked ? '1' : '0',
    });
    history.replaceState(null, '', `/call?${q}`);
    $('share').href = `/call?${q}`;
    $('share').textContent = `${location.origin}/call?${q}`;
  }

  function readForm() {
    const room = $('room').value.trim();
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(room)) throw new Error('room codes are 1-64 characters of A-Z a-z 0-9 _ -');
    updateShare();
    return { room, transport: $('transport').value, relay: $('relay').checked };
  }

  function send(msg) {
    if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify(msg));
  }

  async function join() {
    let form;
    try { form = readForm(); } catch (e) { fail(e.message); return; }
    $('join').disabled = true;
    $('hangup').disabled = false;
    delete $('status').dataset.error;
    S.relayOnly = form.relay;
    try {
      S.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 360 } });
      $('local').srcObject = S.stream;
    } catch (e) {
      log(`no camera/microphone (${e.name}); joining for chat and receiving only`);
      S.stream = null;
    }
    try {
      const { iceServers, ttl } = await fetchIceServers();
      S.iceServers = filterIceServers(iceServers, form.transport);
      log(`ICE servers (${form.transport}, credentials ${ttl} s): ${S.iceServers.map((s) => s.urls.join(' ')).join(' ')}`);
    } catch (e) {
      fail(e.message);
      hangup();
      return;
    }
    openSocket(form.room);
  }

  function openSocket(room) {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${scheme}://${location.host}/ws`);
    S.ws = ws;
    show('signaling', 'connecting');
    ws.onopen = () => send({ type: 'join', room });
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      S.queue = S.queue.then(() => onSignal(msg)).catch((e) => fail(`${msg.type}: ${e.message}`));
    };
    ws.onclose = (ev) => {
      if (S.ws !== ws) return;
      show('signaling', `closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})`);
    };
  }

  async function onSignal(msg) {
    switch (msg.type) {
      case 'joined':
        show('signaling', msg.initiator ? 'joined, calling peer' : 'joined, waiting for peer');
        log(`joined room ${msg.room} (${msg.peers} already there)`);
        if (msg.initiator) await call();
        break;
      case 'peer-joined':
        log('peer joined; waiting for its offer');
        closePeer();
        show('signaling', 'peer joined');
        break;
      case 'offer': await onOffer(msg); break;
      case 'answer':
        await S.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
        await flushCandidates();
        break;
      case 'candidate':
        if (S.pc && S.pc.remoteDescription) await S.pc.addIceCandidate(msg.candidate);
        else S.pendingCandidates.push(msg.candidate);
        break;
      case 'peer-left':
        log('peer left');
        chatLine('sys', 'peer left');
        closePeer();
        show('signaling', 'joined, waiting for peer');
        break;
      case 'error':
        fail(`${msg.code}: ${msg.message}`);
        show('signaling', `error: ${msg.code}`);
        break;
      default: break;
    }
  }

  function newPeer() {
    closePeer();
    const pc = new RTCPeerConnection({
      iceServers: S.iceServers,
      iceTransportPolicy: S.relayOnly ? 'relay' : 'all',
    });
    S.pc = pc;
    if (S.stream) {
      for (const t of S.stream.getTracks()) pc.addTrack(t, S.stream);
    } else {
      pc.addTransceiver('audio', { direction: 'recvonly' });
      pc.addTransceiver('video', { direction: 'recvonly' });
    }
    pc.onicecandidate = (e) => { if (e.candidate) send({ type: 'candidate', candidate: e.candidate.toJSON() }); };
    pc.onicecandidateerror = (e) => log(`ICE error ${e.errorCode} ${e.errorText} (${e.url})`);
    pc.ontrack = (e) => { $('remote').srcObject = e.streams[0] || new MediaStream([e.track]); };
    pc.oniceconnectionstatechange = () => show('ice', pc.iceConnectionState);
    pc.onconnectionstatechange = () => {
      show('connection', pc.connectionState);
      if (pc.connectionState === 'connected') show('signaling', 'in call');
      log(`connection ${pc.connectionState}`);
    };
    pc.ondatachannel = (e) => useChannel(e.channel);
    show('connection', pc.connectionState);
    S.statsTimer = setInterval(updateStats, 1000);
    S.t0 = performance.now();
    S.samples = 0;
    for (const c of Object.values(S.charts)) c.clear();
    return pc;
  }

  async function call() {
    const pc = newPeer();
    useChannel(pc.createDataChannel('chat'));
    await pc.setLocalDescription(await pc.createOffer());
    send({ type: 'offer', sdp: pc.localDescription.sdp });
  }

  async function onOffer(msg) {
    const pc = newPeer();
    await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    await flushCandidates();
    await pc.setLocalDescription(await pc.createAnswer());
    send({ type: 'answer', sdp: pc.localDescription.sdp });
  }

  async function flushCandidates() {
    const pending = S.pendingCandidates;
    S.pendingCandidates = [];
    for (const c of pending) await S.pc.addIceCandidate(c);
  }

  function useChannel(dc) {
    S.dc = dc;
    const open = (on) => {
      $('chat-input').disabled = !on;
      $('chat-send').disabled = !on;
      $('status').dataset.chatOpen = on ? '1' : '0';
    };
    dc.onopen = () => { open(true); chatLine('sys', 'chat connected'); };
    dc.onclose = () => open(false);
    dc.onmessage = (e) => {
      S.chatIn += 1;
      show('chat-in', String(S.chatIn));
      chatLine('peer', String(e.data));
    };
  }

  function closePeer() {
    clearInterval(S.statsTimer);
    S.statsTimer = null;
    S.prev = null;
    S.pendingCandidates = [];
    if (S.dc) S.dc.close();
    if (S.pc) S.pc.close();
    S.pc = null;
    S.dc = null;
    $('remote').srcObject = null;
  }

  function hangup() {
    send({ type: 'leave' });
    if (S.ws) { const ws = S.ws; S.ws = null; ws.close(1000); }
    closePeer();
    if (S.stream) for (const t of S.stream.getTracks()) t.stop();
    S.stream = null;
    $('local').srcObject = null;
    show('signaling', 'idle');
    show('connection', 'closed');
    $('join').disabled = false;
    $('hangup').disabled = true;
  }

  /** The selected candidate pair and byte counters from getStats. */
  function summarise(stats) {
    let pairId = null;
    const sum = {
      mediaIn: 0, mediaOut: 0, dcIn: 0, dcOut: 0, packetsIn: 0, packetsLost: 0, jitterMs: null, remoteRttMs: null,
    };
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
      if (r.type === 'inbound-rtp') {
        sum.mediaIn += r.bytesReceived || 0;
        sum.packetsIn += r.packetsReceived || 0;
        sum.packetsLost += Math.max(0, r.packetsLost || 0);
        if (r.jitter !== undefined) sum.jitterMs = Math.max(sum.jitterMs || 0, r.jitter * 1000);
      }
      if (r.type === 'outbound-rtp') sum.mediaOut += r.bytesSent || 0;
      if (r.type === 'remote-inbound-rtp' && r.roundTripTime !== undefined) sum.remoteRttMs = r.roundTripTime * 1000;
      if (r.type === 'data-channel') { sum.dcIn += r.bytesReceived || 0; sum.dcOut += r.bytesSent || 0; }
    });
    let pair = pairId ? stats.get(pairId) : null;
    // Firefox has no transport stats; it marks the pair with `selected`.
    if (!pair) stats.forEach((r) => { if (r.type === 'candidate-pair' && r.selected) pair = r; });
    if (!pair) stats.forEach((r) => { if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') pair = r; });
    sum.pair = pair;
    sum.local = pair ? stats.get(pair.localCandidateId) : null;
    sum.remote = pair ? stats.get(pair.remoteCandidateId) : null;
    return sum;
  }

  const describe = (c) => `${c.candidateType} ${c.protocol} ${c.address || c.ip}:${c.port}`;
  const kbps = (bytes, ms) => Math.round((bytes * 8) / ms);

  async function updateStats() {
    if (!S.pc) return;
    const now = performance.now();
    const sum = summarise(await S.pc.getStats());
    if (sum.local && sum.remote) {
      show('local-type', sum.local.candidateType);
      show('remote-type', sum.remote.candidateType);
      show('local', describe(sum.local));
      show('remote', describe(sum.remote));
      show('relay-protocol', sum.local.relayProtocol || (sum.local.candidateType === 'relay' ? '?' : 'none (not relayed)'));
    }
    const x = (now - S.t0) / 1000;
    // ICE consent RTT of the selected pair; else RTCP's (Firefox before the pair has one).
    let rtt = null;
    if (sum.pair && sum.pair.currentRoundTripTime !== undefined) rtt = sum.pair.currentRoundTripTime * 1000;
    else if (sum.remoteRttMs !== null) rtt = sum.remoteRttMs;
    if (rtt !== null) {
      const ms = Math.round(rtt);
      show('rtt', `${ms} ms`);
      $('status').dataset.rttMs = String(ms);
      S.charts.rtt.add('rtt', x, rtt);
    }
    if (S.prev) {
      const dt = now - S.prev.at;
      const kIn = kbps(sum.mediaIn - S.prev.mediaIn, dt);
      const kOut = kbps(sum.mediaOut - S.prev.mediaOut, dt);
      show('bitrate', `${kIn} / ${kOut} kbit/s`);
      const got = sum.packetsIn - S.prev.packetsIn;
      const lost = Math.max(0, sum.packetsLost - S.prev.packetsLost);
      const lossPct = got + lost > 0 ? Math.round((1000 * lost) / (got + lost)) / 10 : 0;
      show('loss', `${lossPct} % (${sum.packetsLost} packets in all)`);
      S.charts.bitrate.add('in', x, kIn);
      S.charts.bitrate.add('out', x, kOut);
      S.charts.loss.add('loss', x, lossPct);
      S.samples += 1;
      Object.assign($('status').dataset, {
        kbpsIn: kIn, kbpsOut: kOut, lossPct, statSamples: S.samples,
      });
    }
    if (sum.jitterMs !== null) {
      const j = Math.round(sum.jitterMs * 10) / 10;
      show('jitter', `${j} ms`);
      $('status').dataset.jitterMs = String(j);
      S.charts.jitter.add('jitter', x, sum.jitterMs);
    }
    show('media', `${sum.mediaIn} / ${sum.mediaOut}`);
    show('dc', `${sum.dcIn} / ${sum.dcOut}`);
    Object.assign($('status').dataset, {
      mediaIn: sum.mediaIn, mediaOut: sum.mediaOut, dcIn: sum.dcIn, dcOut: sum.dcOut,
    });
    S.prev = {
      at: now, mediaIn: sum.mediaIn, mediaOut: sum.mediaOut, packetsIn: sum.packetsIn, packetsLost: sum.packetsLost,
    };
  }

  function sendChat(ev) {
    ev.preventDefault();
    const text = $('chat-input').value;
    if (!text || !S.dc || S.dc.readyState !== 'open') return;
    S.dc.send(text);
    chatLine('me', text);
    $('chat-input').value = '';
  }

  function init() {
    const q = new URLSearchParams(location.search);
    $('room').value = q.get('room') || randomRoom();
    if (['all', 'udp', 'tcp', 'tls'].includes(q.get('transport'))) $('transport').value = q.get('transport');
    if (q.has('relay')) $('relay').checked = q.get('relay') !== '0';
    for (const id of ['room', 'transport', 'relay']) $(id).addEventListener('change', updateShare);
    updateShare();
    $('join-form').addEventListener('submit', (e) => { e.preventDefault(); join(); });
    $('hangup').addEventListener('click', hangup);
    $('chat-form').addEventListener('submit', sendChat);
    window.addEventListener('pagehide', () => send({ type: 'leave' }));
    show('chat-in', '0');
    const chart = (id, unit) => new turndChart.Chart($(id), { unit, max: 120 });
    S.charts = {
      bitrate: chart('c-bitrate', 'kbit/s'), rtt: chart('c-rtt', 'ms'), loss: chart('c-loss', '%'), jitter: chart('c-jitter', 'ms'),
    };
    for (const c of Object.values(S.charts)) c.draw();
    if (q.get('autojoin') === '1') join();
  }

  init();
})();
