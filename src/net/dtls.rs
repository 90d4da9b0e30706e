//! TURN over DTLS (RFC 7350): the shard's DTLS sessions.
//!
//! A DTLS listener is a UDP socket of its own in the shard's poll set (plain UDP listeners
//! never see this code). A datagram from an address without a session is read by
//! [`client_hello`] alone: a ClientHello without a valid cookie is answered with a
//! HelloVerifyRequest whose cookie is a truncated HMAC-SHA256 of (source address, coarse
//! time) under a per-process secret, and **nothing is kept** (RFC 6347 section 4.2.1). Only a
//! ClientHello with a valid cookie, under the total and per-IP caps, makes a session: a
//! sans-IO [`dimpl::Dtls`] DTLS 1.2 server (vendored with one patch so that it starts after
//! our HelloVerifyRequest) that answers with ServerHello. Once established, every decrypted
//! datagram goes to the engine as a UDP datagram would (a [`ClientAddr`] with
//! [`Transport::Dtls`]) and every answer or relayed datagram for the client goes back
//! encrypted. A session that does not finish its handshake within `handshake_timeout`, or
//! that is silent for `idle_timeout`, is dropped (its allocation with it).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use turnd_proto::engine::{ClientAddr, Transport};

use super::stream::{ConnLimits, ConnSlot};
use super::udp;

/// Bytes of the cookie (a truncated HMAC-SHA256).
pub const COOKIE_LEN: usize = 16;

/// A cookie is valid in the time bucket it was made in and the next one.
const COOKIE_BUCKET_SECS: u64 = 30;

/// Outputs taken from one session per input at most (a session cannot hold the shard).
const MAX_OUTPUTS: usize = 256;

/// The largest record buffer a session may ask for.
const MAX_RECORD: usize = 1 << 16;

/// Content type of a DTLS handshake record, and the ClientHello handshake type.
const CONTENT_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const HELLO_VERIFY_REQUEST: u8 = 3;

/// What is shared by every shard's DTLS sessions.
pub struct DtlsSetup {
    pub config: Arc<dimpl::Config>,
    /// The certificate new handshakes get; replaced whole on reload (SIGHUP), while the
    /// sessions already made keep the one they started with.
    certificate: std::sync::RwLock<dimpl::DtlsCertificate>,
    pub limits: Arc<ConnLimits>,
    pub limits_cfg: crate::config::Dtls,
    /// Keys the cookies; per process, never logged.
    pub cookie_secret: [u8; 32],
}

impl DtlsSetup {
    /// The DTLS server configuration for `cfg`, with the certificate (DER) and its key
    /// (PKCS#8, SEC1 DER). Fails when dimpl cannot use the key (it signs with ECDSA P-256 or
    /// P-384 only).
    pub fn new(
        cfg: crate::config::Dtls,
        certificate: Vec<u8>,
        private_key: Vec<u8>,
    ) -> anyhow::Result<Arc<Self>> {
        let config = dimpl::Config::builder()
            .require_client_certificate(false)
            .handshake_timeout(cfg.handshake_timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("DTLS configuration: {e}"))?;
        let certificate = dimpl::DtlsCertificate {
            certificate,
            private_key,
        };
        let config = Arc::new(config);
        usable(&config, &certificate)?;
        let certificate = std::sync::RwLock::new(certificate);
        let mut cookie_secret = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut cookie_secret[..]);
        Ok(Arc::new(DtlsSetup {
            config,
            certificate,
            limits: ConnLimits::new(cfg.max_sessions, cfg.max_sessions_per_ip),
            limits_cfg: cfg,
            cookie_secret,
        }))
    }

    /// The certificate the next handshake gets.
    pub fn certificate(&self) -> dimpl::DtlsCertificate {
        self.certificate
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Read the `[tls]` files again and check that DTLS can use them; nothing changes yet
    /// ([`DtlsSetup::set_certificate`] installs what this returns).
    pub fn load(&self, cert: &Path, key: &Path) -> anyhow::Result<dimpl::DtlsCertificate> {
        let (certificate, private_key) = der_from_files(cert, key)?;
        let c = dimpl::DtlsCertificate {
            certificate,
            private_key,
        };
        usable(&self.config, &c)?;
        Ok(c)
    }

    /// New handshakes get `c` from now on; established sessions keep theirs.
    pub fn set_certificate(&self, c: dimpl::DtlsCertificate) {
        *self.certificate.write().unwrap_or_else(|e| e.into_inner()) = c;
    }

    fn cookie(&self, remote: SocketAddr, bucket: u64) -> [u8; COOKIE_LEN] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.cookie_secret)
            .expect("HMAC takes any key length");
        mac.update(&bucket.to_be_bytes());
        match remote.ip() {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        mac.update(&remote.port().to_be_bytes());
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; COOKIE_LEN];
        out.copy_from_slice(&tag[..COOKIE_LEN]);
        out
    }

    fn cookie_valid(&self, remote: SocketAddr, cookie: &[u8], now_secs: u64) -> bool {
        use subtle::ConstantTimeEq;
        let bucket = now_secs / COOKIE_BUCKET_SECS;
        cookie.len() == COOKIE_LEN
            && [bucket, bucket.saturating_sub(1)]
                .iter()
                .any(|b| bool::from(self.cookie(remote, *b).ct_eq(cookie)))
    }
}

/// dimpl panics on a key it cannot use: try once (at start-up and on reload), not per client.
fn usable(config: &Arc<dimpl::Config>, c: &dimpl::DtlsCertificate) -> anyhow::Result<()> {
    let (config, certificate) = (config.clone(), c.clone());
    let probe = std::panic::catch_unwind(move || {
        dimpl::Dtls::new_12_hello_verified(config, certificate, Instant::now())
    });
    if probe.is_err() {
        anyhow::bail!(
            "the [tls] key cannot be used for DTLS: it must be an ECDSA P-256 or P-384 key"
        );
    }
    Ok(())
}

/// What the first record of a datagram is, as far as the stateless layer cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello<'a> {
    /// A complete (unfragmented) DTLS 1.2 ClientHello in epoch 0 with this cookie (maybe
    /// empty).
    ClientHello { cookie: &'a [u8] },
    /// A ClientHello offering only DTLS 1.0: answered with a protocol_version alert.
    OldVersion,
    /// Anything else: dropped without an answer when there is no session.
    Other,
}

/// Read the first record of `d` as a ClientHello, every length checked before use.
pub fn client_hello(d: &[u8]) -> Hello<'_> {
    match parse_client_hello(d) {
        Some((DTLS_1_2, cookie)) => Hello::ClientHello { cookie },
        Some(_) => Hello::OldVersion,
        None => Hello::Other,
    }
}

/// The DTLS 1.2 version number (RFC 6347: 1's complement of 1.2).
const DTLS_1_2: [u8; 2] = [0xfe, 0xfd];

/// A fatal protocol_version alert in epoch 0 (RFC 5246 section 7.2).
pub const PROTOCOL_VERSION_ALERT: [u8; 15] = [21, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 70];

fn be(b: &[u8]) -> usize {
    b.iter().fold(0usize, |n, x| (n << 8) | usize::from(*x))
}

fn parse_client_hello(d: &[u8]) -> Option<([u8; 2], &[u8])> {
    // Record: type, version(2), epoch(2), sequence(6), length(2).
    let (&[ty, major, _], rest) = d.split_first_chunk::<3>()?;
    if ty != CONTENT_HANDSHAKE || major != 0xfe {
        return None;
    }
    let (epoch, rest) = rest.split_first_chunk::<2>()?;
    if *epoch != [0, 0] {
        return None;
    }
    let (_seq, rest) = rest.split_first_chunk::<6>()?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let fragment = rest.get(..be(len))?;
    // Handshake: type, length(3), message_seq(2), fragment_offset(3), fragment_length(3).
    let (&[msg], rest) = fragment.split_first_chunk::<1>()?;
    let (length, rest) = rest.split_first_chunk::<3>()?;
    let (_mseq, rest) = rest.split_first_chunk::<2>()?;
    let (offset, rest) = rest.split_first_chunk::<3>()?;
    let (frag_len, rest) = rest.split_first_chunk::<3>()?;
    if msg != CLIENT_HELLO || be(offset) != 0 || be(frag_len) != be(length) {
        return None;
    }
    let body = rest.get(..be(length))?;
    // ClientHello: client_version(2), random(32), session_id<0..32>, cookie<0..255>.
    let (&version, rest) = body.split_first_chunk::<2>()?;
    let rest = rest.get(32..)?;
    let (&[sid_len], rest) = rest.split_first_chunk::<1>()?;
    let rest = rest.get(usize::from(sid_len)..)?;
    let (&[cookie_len], rest) = rest.split_first_chunk::<1>()?;
    Some((version, rest.get(..usize::from(cookie_len))?))
}

/// A HelloVerifyRequest carrying `cookie`: epoch 0, record sequence 0, message_seq 0 (the
/// session made later starts its own records at sequence 1 and messages at 1).
pub fn hello_verify_request(cookie: &[u8]) -> Vec<u8> {
    let body_len = 2 + 1 + cookie.len();
    let frag_len = 12 + body_len;
    let mut v = Vec::with_capacity(13 + frag_len);
    v.extend_from_slice(&[CONTENT_HANDSHAKE, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&(frag_len as u16).to_be_bytes());
    let l = (body_len as u32).to_be_bytes();
    v.push(HELLO_VERIFY_REQUEST);
    v.extend_from_slice(&l[1..]);
    v.extend_from_slice(&[0, 0, 0, 0, 0]);
    v.extend_from_slice(&l[1..]);
    // server_version DTLS 1.0 (RFC 6347 section 4.2.1), the cookie.
    v.extend_from_slice(&[0xfe, 0xff, cookie.len() as u8]);
    v.extend_from_slice(cookie);
    v
}

struct Session {
    dtls: dimpl::Dtls,
    fd: RawFd,
    connected: bool,
    started: Instant,
    last_rx: Instant,
    next_timeout: Option<Instant>,
    closed: bool,
    _slot: ConnSlot,
}

/// Per-shard DTLS counters (plain integers on the shard's thread).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DtlsCounters {
    /// Sessions open now (handshaking or established).
    pub sessions: u64,
    /// HelloVerifyRequests sent (ClientHellos without a valid cookie: no state kept).
    pub hello_verify_sent: u64,
    /// ClientHellos with a valid cookie refused by the session caps.
    pub refused: u64,
    /// Sessions dropped because their handshake did not finish in time.
    pub handshake_timeouts: u64,
    /// Sessions established.
    pub established: u64,
    /// ClientHellos offering only DTLS 1.0, answered with a protocol_version alert.
    pub old_version: u64,
}

/// The shard's DTLS sessions, by (listener address, client address).
pub struct DtlsTable {
    setup: Option<Arc<DtlsSetup>>,
    sessions: RefCell<HashMap<(SocketAddr, SocketAddr), Session>>,
    buf: RefCell<Vec<u8>>,
    hello_verify_sent: Cell<u64>,
    refused: Cell<u64>,
    handshake_timeouts: Cell<u64>,
    established: Cell<u64>,
    old_version: Cell<u64>,
    /// Established sessions replaced by a new handshake from the same address: their
    /// allocations are to be freed ([`DtlsTable::take_replaced`]).
    replaced: RefCell<Vec<ClientAddr>>,
}

/// The certificate (leaf, DER) and key (DER) for DTLS: the `[tls]` files, or in the
/// development profile without them a self-signed ECDSA P-256 one for localhost.
pub fn certificate_der(config: &crate::config::Config) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    match &config.tls {
        Some(files) => der_from_files(&files.cert, &files.key),
        None => self_signed_der(),
    }
}

/// The leaf certificate (DER) of a PEM chain file and the key (DER) of a PEM key file.
fn der_from_files(cert: &Path, key: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    use anyhow::Context;
    let cert_pem =
        std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    let leaf = rustls_pemfile::certs(&mut &cert_pem[..])
        .next()
        .ok_or_else(|| anyhow::anyhow!("{}: no certificate found", cert.display()))?
        .with_context(|| format!("{}: not a PEM certificate", cert.display()))?;
    let key_der = rustls_pemfile::private_key(&mut &key_pem[..])
        .with_context(|| format!("{}: not a PEM private key", key.display()))?
        .ok_or_else(|| anyhow::anyhow!("{}: no private key found", key.display()))?;
    Ok((leaf.to_vec(), key_der.secret_der().to_vec()))
}

/// A self-signed ECDSA P-256 certificate for localhost, 127.0.0.1 and ::1.
pub fn self_signed_der() -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names)?;
    Ok((cert.der().to_vec(), signing_key.serialize_der()))
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn key(c: &ClientAddr) -> (SocketAddr, SocketAddr) {
    (c.local, c.remote)
}

impl DtlsTable {
    pub fn new(setup: Option<Arc<DtlsSetup>>) -> Self {
        DtlsTable {
            setup,
            sessions: RefCell::new(HashMap::new()),
            buf: RefCell::new(vec![0; 2048]),
            hello_verify_sent: Cell::new(0),
            refused: Cell::new(0),
            handshake_timeouts: Cell::new(0),
            established: Cell::new(0),
            old_version: Cell::new(0),
            replaced: RefCell::new(Vec::new()),
        }
    }

    pub fn counters(&self) -> DtlsCounters {
        DtlsCounters {
            sessions: self.sessions.borrow().len() as u64,
            hello_verify_sent: self.hello_verify_sent.get(),
            refused: self.refused.get(),
            handshake_timeouts: self.handshake_timeouts.get(),
            established: self.established.get(),
            old_version: self.old_version.get(),
        }
    }

    /// One datagram on DTLS listener `local` (descriptor `fd`) from `remote`. Decrypted
    /// application datagrams are appended to `app` for the engine, tagged with `remote`.
    pub fn on_datagram(
        &self,
        now: Instant,
        fd: RawFd,
        local: SocketAddr,
        remote: SocketAddr,
        packet: &[u8],
        app: &mut AppData,
    ) {
        let Some(setup) = &self.setup else {
            return;
        };
        let mut sessions = self.sessions.borrow_mut();
        let mut buf = self.buf.borrow_mut();
        let hello = client_hello(packet);
        // A new ClientHello on an established session (the client restarted on the same
        // port) goes through the cookie exchange again and replaces it (RFC 6347 4.2.8).
        let rehello = matches!(hello, Hello::ClientHello { .. })
            && sessions.get(&(local, remote)).is_some_and(|s| s.connected);
        if let Some(s) = sessions.get_mut(&(local, remote)).filter(|_| !rehello) {
            if s.closed {
                // Gone at the next tick; nothing more reaches the engine.
                return;
            }
            s.last_rx = now;
            if s.dtls.handle_packet(packet).is_err() {
                s.closed = true;
                return;
            }
            drain(s, remote, &mut buf, Some(app), &self.established);
            return;
        }
        let cookie = match hello {
            Hello::ClientHello { cookie } => cookie,
            Hello::OldVersion => {
                // Stateless, and smaller than the ClientHello: the client fails at once
                // instead of retransmitting into silence.
                udp::send_one(fd, &PROTOCOL_VERSION_ALERT, remote);
                self.old_version.set(self.old_version.get() + 1);
                return;
            }
            Hello::Other => return,
        };
        if !setup.cookie_valid(remote, cookie, unix_secs()) {
            let bucket = unix_secs() / COOKIE_BUCKET_SECS;
            let hvr = hello_verify_request(&setup.cookie(remote, bucket));
            udp::send_one(fd, &hvr, remote);
            self.hello_verify_sent.set(self.hello_verify_sent.get() + 1);
            return;
        }
        if let Some(old) = sessions.remove(&(local, remote)) {
            if old.connected {
                self.replaced.borrow_mut().push(ClientAddr {
                    transport: Transport::Dtls,
                    remote,
                    local,
                });
            }
        }
        let Some(slot) = setup.limits.acquire(remote.ip()) else {
            self.refused.set(self.refused.get() + 1);
            return;
        };
        let mut dtls =
            dimpl::Dtls::new_12_hello_verified(setup.config.clone(), setup.certificate(), now);
        // dimpl draws its random on its first timeout: before the ClientHello.
        if dtls.handle_timeout(now).is_err() || dtls.handle_packet(packet).is_err() {
            return;
        }
        let mut s = Session {
            dtls,
            fd,
            connected: false,
            started: now,
            last_rx: now,
            next_timeout: None,
            closed: false,
            _slot: slot,
        };
        drain(&mut s, remote, &mut buf, Some(app), &self.established);
        sessions.insert((local, remote), s);
    }

    /// Clients whose established session a new handshake replaced.
    pub fn take_replaced(&self) -> Vec<ClientAddr> {
        std::mem::take(&mut *self.replaced.borrow_mut())
    }

    /// Encrypt `bytes` (a STUN message or ChannelData) for an established session.
    pub fn send(&self, to: &ClientAddr, bytes: &[u8]) {
        let mut sessions = self.sessions.borrow_mut();
        let Some(s) = sessions.get_mut(&key(to)) else {
            return;
        };
        if !s.connected || s.closed {
            return;
        }
        if s.dtls.send_application_data(bytes).is_err() {
            s.closed = true;
            return;
        }
        let mut buf = self.buf.borrow_mut();
        drain(s, to.remote, &mut buf, None, &self.established);
    }

    /// The server ends a session (the engine's `CloseClient`).
    pub fn close(&self, client: &ClientAddr) {
        if let Some(mut s) = self.sessions.borrow_mut().remove(&key(client)) {
            let _ = s.dtls.close();
            let mut buf = self.buf.borrow_mut();
            drain(&mut s, client.remote, &mut buf, None, &self.established);
        }
    }

    /// Retransmissions, handshake and idle timeouts. Returns the established clients whose
    /// sessions ended (their allocations are to be freed).
    pub fn tick(&self, now: Instant) -> Vec<ClientAddr> {
        let Some(setup) = &self.setup else {
            return Vec::new();
        };
        let limits = setup.limits_cfg;
        let mut sessions = self.sessions.borrow_mut();
        let mut buf = self.buf.borrow_mut();
        let mut ended = Vec::new();
        let mut timeouts = 0;
        sessions.retain(|&(local, remote), s| {
            if !s.closed && s.next_timeout.is_some_and(|t| t <= now) {
                s.next_timeout = None;
                if s.dtls.handle_timeout(now).is_err() {
                    s.closed = true;
                } else {
                    drain(s, remote, &mut buf, None, &self.established);
                }
            }
            let handshake_late =
                !s.connected && now.duration_since(s.started) >= limits.handshake_timeout;
            let idle = now.duration_since(s.last_rx) >= limits.idle_timeout;
            if handshake_late {
                timeouts += 1;
            }
            let keep = !(s.closed || handshake_late || idle);
            if !keep && s.connected {
                ended.push(ClientAddr {
                    transport: Transport::Dtls,
                    remote,
                    local,
                });
            }
            keep
        });
        self.handshake_timeouts
            .set(self.handshake_timeouts.get() + timeouts);
        ended
    }

    /// How often [`DtlsTable::tick`] should run: `None` without DTLS listeners.
    pub fn tick_interval(&self) -> Option<Duration> {
        self.setup.as_ref().map(|_| Duration::from_millis(100))
    }

    pub fn close_all(&self) {
        self.sessions.borrow_mut().clear();
    }
}

/// The decrypted datagrams of a receive batch, one after the other in one buffer (no
/// allocation per record), each with its sender: handled together, so that what they relay
/// leaves in one `sendmmsg` per relay socket, as plain UDP's does.
#[derive(Default)]
pub struct AppData {
    pub buf: Vec<u8>,
    pub items: Vec<(SocketAddr, std::ops::Range<usize>)>,
}

impl AppData {
    fn push(&mut self, from: SocketAddr, d: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(d);
        self.items.push((from, start..self.buf.len()));
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }
}

/// Take a session's outputs: records go to the client, plaintext to `app`.
fn drain(
    s: &mut Session,
    remote: SocketAddr,
    buf: &mut Vec<u8>,
    mut app: Option<&mut AppData>,
    established: &Cell<u64>,
) {
    for _ in 0..MAX_OUTPUTS {
        match s.dtls.poll_output(buf) {
            dimpl::Output::Packet(p) => {
                udp::send_one(s.fd, p, remote);
            }
            dimpl::Output::BufferTooSmall { needed } if needed <= MAX_RECORD => {
                buf.resize(needed, 0);
            }
            dimpl::Output::BufferTooSmall { .. } => {
                s.closed = true;
                return;
            }
            dimpl::Output::Timeout(t) => {
                s.next_timeout = Some(t);
                return;
            }
            dimpl::Output::Connected => {
                if !s.connected {
                    established.set(established.get() + 1);
                }
                s.connected = true;
            }
            dimpl::Output::ApplicationData(d) => {
                if let Some(app) = app.as_deref_mut() {
                    app.push(remote, d);
                }
            }
            dimpl::Output::CloseNotify => {
                s.closed = true;
                return;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_hello_bytes(cookie: &[u8]) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 2, 0xc0, 0x2b, 1, 0]); // one suite, null compression
        let l = (body.len() as u32).to_be_bytes();
        let mut hs = vec![
            CLIENT_HELLO,
            l[1],
            l[2],
            l[3],
            0,
            0,
            0,
            0,
            0,
            l[1],
            l[2],
            l[3],
        ];
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn client_hello_cookie_is_read_and_every_truncation_is_other() {
        let d = client_hello_bytes(b"abcd");
        assert_eq!(client_hello(&d), Hello::ClientHello { cookie: b"abcd" });
        assert_eq!(
            client_hello(&client_hello_bytes(b"")),
            Hello::ClientHello { cookie: b"" }
        );
        // Every prefix short of the cookie's end, and garbage, is not a ClientHello.
        let end = 13 + 12 + 2 + 32 + 1 + 1 + 4;
        for n in 0..end {
            assert_eq!(client_hello(&d[..n]), Hello::Other, "prefix {n}");
        }
        assert_eq!(client_hello(&[0xff; 64]), Hello::Other);
        let mut old = d.clone();
        old[13 + 12 + 1] = 0xff; // client_version DTLS 1.0
        assert_eq!(client_hello(&old), Hello::OldVersion);
        let mut frag = d.clone();
        frag[13 + 8] = 1; // fragment_offset != 0
        assert_eq!(client_hello(&frag), Hello::Other);
    }

    #[test]
    fn hello_verify_request_is_well_formed() {
        let v = hello_verify_request(&[9; COOKIE_LEN]);
        assert_eq!(v.len(), 13 + 12 + 3 + COOKIE_LEN);
        assert_eq!(v[0], 22);
        assert_eq!(be(&v[11..13]), v.len() - 13);
        assert_eq!(v[13], HELLO_VERIFY_REQUEST);
        assert_eq!(v[13 + 12 + 2] as usize, COOKIE_LEN);
    }

    #[test]
    fn cookies_bind_the_address_and_expire() {
        let s = DtlsSetup::new(crate::config::Config::secure_default().dtls, vec![], vec![]);
        // An empty certificate cannot be used; build a setup by hand for the cookie test.
        assert!(s.is_err());
        let ck = self_signed_der().unwrap();
        let s = DtlsSetup::new(crate::config::Config::secure_default().dtls, ck.0, ck.1).unwrap();
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let t = 1_000_000 * COOKIE_BUCKET_SECS;
        let c = s.cookie(a, t / COOKIE_BUCKET_SECS);
        assert!(s.cookie_valid(a, &c, t));
        assert!(s.cookie_valid(a, &c, t + COOKIE_BUCKET_SECS));
        assert!(
            !s.cookie_valid(a, &c, t + 2 * COOKIE_BUCKET_SECS),
            "expired"
        );
        assert!(!s.cookie_valid(b, &c, t), "another port");
        assert!(!s.cookie_valid(a, &c[..8], t), "truncated");
        assert!(!s.cookie_valid(a, b"", t));
    }
}
