//! The ready probe (`[admin] ready_probe = true`): `/readyz` proves the relay path.
//!
//! At start and every `ready_probe_interval`, a thread allocates through the server's own
//! first UDP listener (401, then an authenticated Allocate), installs a permission for a
//! loopback echo socket it owns, sends a random token in a Send indication, reflects it from
//! the echo back to the relay, expects it in a Data indication, and frees the allocation
//! (Refresh 0). The server is ready only while the last round succeeded.
//!
//! The probe's credential is a random username and password made at start, known only to
//! this process and never logged. The peer policy lets exactly that user reach exactly the
//! echo's address ([`Probe::wrap_policy`]); no other username can claim the probe's
//! principal ([`Probe::wrap_auth`]), so loopback stays closed to users.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use md5::{Digest, Md5};
use stun::attributes::*;
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use turnd_proto::auth::{Authenticator, Key, Lookup};
use turnd_proto::policy::PeerPolicy;

/// How long one request waits for its answer before it is sent again.
const RETRANSMIT: Duration = Duration::from_millis(400);
/// Sends per request.
const TRIES: u32 = 4;
/// A round that takes longer than this failed.
const ROUND_DEADLINE: Duration = Duration::from_secs(3);

/// The probe's identity and the address of its echo, fixed for the life of the process.
pub struct Probe {
    user: String,
    password: String,
    key: Key,
    realm: String,
    echo_addr: SocketAddr,
    /// The server listener the probe allocates through.
    target: Mutex<Option<SocketAddr>>,
    interval: Duration,
    status: Status,
    echo: Mutex<Option<UdpSocket>>,
}

/// The outcome of the last round, read by `/readyz` and `/metrics`.
#[derive(Default)]
pub struct Status {
    ok: AtomicBool,
    rounds: AtomicU64,
    failures: AtomicU64,
    detail: Mutex<String>,
}

impl Status {
    /// Did the last round succeed?
    pub fn ok(&self) -> bool {
        self.ok.load(Ordering::SeqCst)
    }
    /// Why the last round failed ("not run yet" before the first).
    pub fn detail(&self) -> String {
        self.detail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

impl Probe {
    /// Make the credential and bind the echo on loopback, in the family relays are bound in
    /// (IPv4 when both are).
    pub fn new(config: &Config) -> anyhow::Result<Arc<Self>> {
        let ip: IpAddr = if config.relay.ipv4.is_some() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        };
        let echo = UdpSocket::bind(SocketAddr::new(ip, 0))
            .context("ready probe: cannot bind the loopback echo")?;
        let echo_addr = echo.local_addr()?;
        // No separator character of TURN REST usernames can make this name's principal
        // another user's: `wrap_auth` pins the principal to the whole name.
        let user = format!("turnd-ready-probe-{}", random_hex(8));
        let password = random_hex(16);
        let mut md5 = Md5::new();
        md5.update(user.as_bytes());
        md5.update(b":");
        md5.update(config.realm.as_bytes());
        md5.update(b":");
        md5.update(password.as_bytes());
        let key = Key::from(<[u8; 16]>::from(md5.finalize()));
        Ok(Arc::new(Probe {
            user,
            password,
            key,
            realm: config.realm.clone(),
            echo_addr,
            target: Mutex::new(None),
            interval: config.admin.ready_probe_interval,
            status: Status {
                detail: Mutex::new("not run yet".into()),
                ..Status::default()
            },
            echo: Mutex::new(Some(echo)),
        }))
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The loopback echo's address (the one peer only the probe may reach).
    pub fn echo_addr(&self) -> SocketAddr {
        self.echo_addr
    }

    /// `shared` with the probe's credential and its one policy exception added.
    pub fn wrap(
        self: &Arc<Self>,
        shared: turnd_proto::engine::Shared,
    ) -> turnd_proto::engine::Shared {
        turnd_proto::engine::Shared {
            auth: self.wrap_auth(shared.auth),
            policy: self.wrap_policy(shared.policy),
            ..shared
        }
    }

    /// `inner` plus the probe's credential.
    pub fn wrap_auth(self: &Arc<Self>, inner: Arc<dyn Authenticator>) -> Arc<dyn Authenticator> {
        Arc::new(ProbeAuth {
            inner,
            probe: self.clone(),
        })
    }

    /// `inner` plus one exception: the probe's user may reach the echo.
    pub fn wrap_policy(self: &Arc<Self>, inner: Arc<dyn PeerPolicy>) -> Arc<dyn PeerPolicy> {
        Arc::new(ProbePolicy {
            inner,
            probe: self.clone(),
        })
    }

    /// Start the probe thread against the UDP listener bound at `listener` (an unspecified
    /// address is reached on loopback). It ends when `shutdown` is cancelled.
    pub fn spawn(
        self: &Arc<Self>,
        listener: SocketAddr,
        shutdown: CancellationToken,
    ) -> anyhow::Result<JoinHandle<()>> {
        let target = match listener.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listener.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listener.port())
            }
            _ => listener,
        };
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(target);
        let echo = self
            .echo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .context("ready probe started twice")?;
        echo.set_nonblocking(true)
            .context("ready probe: echo socket")?;
        let probe = self.clone();
        std::thread::Builder::new()
            .name("turnd-probe".into())
            .spawn(move || probe.run(target, echo, shutdown))
            .context("cannot start the ready probe thread")
    }

    fn run(&self, target: SocketAddr, echo: UdpSocket, shutdown: CancellationToken) {
        let mut was_ok: Option<bool> = None;
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            let result = Round {
                probe: self,
                target,
                echo: &echo,
                shutdown: &shutdown,
                deadline: started + ROUND_DEADLINE,
            }
            .run();
            if shutdown.is_cancelled() {
                break;
            }
            self.status.rounds.fetch_add(1, Ordering::Relaxed);
            let ok = result.is_ok();
            match &result {
                Ok(()) => {
                    *self.status.detail.lock().unwrap_or_else(|e| e.into_inner()) = String::new()
                }
                Err(why) => {
                    self.status.failures.fetch_add(1, Ordering::Relaxed);
                    *self.status.detail.lock().unwrap_or_else(|e| e.into_inner()) = why.clone();
                }
            }
            self.status.ok.store(ok, Ordering::SeqCst);
            // One line per change of state, not per round.
            if was_ok != Some(ok) {
                match &result {
                    Ok(()) => tracing::info!(
                        rtt_ms = started.elapsed().as_millis() as u64,
                        "ready probe: relay path works"
                    ),
                    Err(why) => tracing::warn!(
                        reason = %why,
                        "ready probe failed: the relay path does not work; /readyz is 503"
                    ),
                }
                was_ok = Some(ok);
            }
            let next = started + self.interval;
            while !shutdown.is_cancelled() && Instant::now() < next {
                std::thread::sleep(Duration::from_millis(50).min(next - Instant::now()));
            }
        }
    }
}

struct ProbeAuth {
    inner: Arc<dyn Authenticator>,
    probe: Arc<Probe>,
}

impl Authenticator for ProbeAuth {
    fn lookup(&self, username: &str, realm: &str, unix_now: u64) -> Lookup {
        if username == self.probe.user && realm == self.probe.realm {
            return Lookup::Keys(vec![self.probe.key]);
        }
        self.inner.lookup(username, realm, unix_now)
    }

    fn lookup_from(
        &self,
        username: &str,
        realm: &str,
        unix_now: u64,
        origin: turnd_proto::auth::Origin,
    ) -> Lookup {
        if username == self.probe.user && realm == self.probe.realm {
            return Lookup::Keys(vec![self.probe.key]);
        }
        self.inner.lookup_from(username, realm, unix_now, origin)
    }

    fn principal<'a>(&self, username: &'a str) -> &'a str {
        if username == self.probe.user {
            return username;
        }
        match self.inner.principal(username) {
            // A REST username `expiry:turnd-ready-probe-…` must not become the probe.
            p if p == self.probe.user => username,
            p => p,
        }
    }

    fn lookup_sha256(
        &self,
        username: &str,
        realm: &str,
        unix_now: u64,
    ) -> Lookup<turnd_proto::auth::Sha256Key> {
        self.inner.lookup_sha256(username, realm, unix_now)
    }

    fn lookup_sha256_from(
        &self,
        username: &str,
        realm: &str,
        unix_now: u64,
        origin: turnd_proto::auth::Origin,
    ) -> Lookup<turnd_proto::auth::Sha256Key> {
        self.inner
            .lookup_sha256_from(username, realm, unix_now, origin)
    }

    fn user_of_hash(&self, hash: &[u8], realm: &str) -> Option<String> {
        self.inner.user_of_hash(hash, realm)
    }

    fn permits_client(&self, username: &str, client: std::net::IpAddr) -> bool {
        self.inner.permits_client(username, client)
    }
}

struct ProbePolicy {
    inner: Arc<dyn PeerPolicy>,
    probe: Arc<Probe>,
}

impl PeerPolicy for ProbePolicy {
    fn permits(&self, peer: SocketAddr) -> bool {
        self.inner.permits(peer)
    }
    fn permits_ip(&self, ip: IpAddr) -> bool {
        self.inner.permits_ip(ip)
    }
    fn permits_permission(&self, peer: SocketAddr) -> bool {
        self.inner.permits_permission(peer)
    }
    fn permits_permission_for(&self, user: &str, peer: SocketAddr) -> bool {
        (user == self.probe.user && peer.ip() == self.probe.echo_addr.ip())
            || self.inner.permits_permission_for(user, peer)
    }
    fn permits_for(&self, user: &str, peer: SocketAddr) -> bool {
        (user == self.probe.user && peer == self.probe.echo_addr)
            || self.inner.permits_for(user, peer)
    }
    fn permits_ip_for(&self, user: &str, ip: IpAddr) -> bool {
        (user == self.probe.user && ip == self.probe.echo_addr.ip())
            || self.inner.permits_ip_for(user, ip)
    }
}

/// One round of the probe: its own client socket, so rounds land on different shards.
struct Round<'a> {
    probe: &'a Probe,
    target: SocketAddr,
    echo: &'a UdpSocket,
    shutdown: &'a CancellationToken,
    deadline: Instant,
}

/// An attribute with raw bytes.
struct Raw(AttrType, Vec<u8>);
impl Setter for Raw {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

struct Peer(SocketAddr);
impl Setter for Peer {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        XorMappedAddress {
            ip: self.0.ip(),
            port: self.0.port(),
        }
        .add_to_as(m, ATTR_XOR_PEER_ADDRESS)
    }
}

fn error_code(m: &Message) -> Option<u16> {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|_| e.code.0)
}

fn describe(m: &Message) -> String {
    match error_code(m) {
        Some(c) => format!("error {c}"),
        None => "an unexpected answer".into(),
    }
}

impl Round<'_> {
    fn run(&self) -> Result<(), String> {
        let local = SocketAddr::new(
            if self.target.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            },
            0,
        );
        let local = if self.target.ip().is_loopback() {
            local
        } else {
            SocketAddr::new(
                match self.target.ip() {
                    IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                    IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
                },
                0,
            )
        };
        let sock = UdpSocket::bind(local).map_err(|e| format!("client socket: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| format!("client socket: {e}"))?;
        let echo_v6 = self.probe.echo_addr.is_ipv6();
        let transport = Raw(ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0]);
        let family = Raw(ATTR_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]);
        let lifetime = Raw(ATTR_LIFETIME, 60u32.to_be_bytes().to_vec());
        let mut base: Vec<&dyn Setter> = vec![&transport, &lifetime];
        if echo_v6 {
            base.push(&family);
        }
        let first = self.ask(&sock, METHOD_ALLOCATE, &base, None)?;
        let nonce = match error_code(&first) {
            Some(401) => {
                TextAttribute::get_from_as(&first, ATTR_NONCE)
                    .map_err(|_| "allocate: 401 without a NONCE".to_string())?
                    .text
            }
            _ => {
                return Err(format!(
                    "allocate: {} to a request without credentials",
                    describe(&first)
                ))
            }
        };
        let alloc = self.ask(&sock, METHOD_ALLOCATE, &base, Some(&nonce))?;
        if alloc.typ.class != CLASS_SUCCESS_RESPONSE {
            return Err(format!("allocate: {}", describe(&alloc)));
        }
        let result = self.relay(&sock, &nonce);
        // Free the allocation whatever happened (best effort: it expires anyway).
        let zero = Raw(ATTR_LIFETIME, vec![0, 0, 0, 0]);
        let _ = self.ask(&sock, METHOD_REFRESH, &[&zero], Some(&nonce));
        result
    }

    fn relay(&self, sock: &UdpSocket, nonce: &str) -> Result<(), String> {
        let echo = self.probe.echo_addr;
        let perm = self.ask(sock, METHOD_CREATE_PERMISSION, &[&Peer(echo)], Some(nonce))?;
        if perm.typ.class != CLASS_SUCCESS_RESPONSE {
            return Err(format!("create permission: {}", describe(&perm)));
        }
        let token: [u8; 16] = rand::random();
        let mut send = Message::new();
        send.typ = MessageType::new(METHOD_SEND, CLASS_INDICATION);
        send.new_transaction_id().map_err(|e| e.to_string())?;
        send.write_header();
        Peer(echo).add_to(&mut send).map_err(|e| e.to_string())?;
        send.add(ATTR_DATA, &token);
        let mut buf = [0u8; 1500];
        let (mut echoed, mut sent_at) = (false, Instant::now() - RETRANSMIT);
        let mut tries = 0;
        loop {
            if Instant::now() >= self.deadline || self.shutdown.is_cancelled() {
                return Err(if echoed {
                    "the echoed datagram did not come back through the relay".into()
                } else {
                    "the relayed datagram did not reach the echo".into()
                });
            }
            if !echoed && sent_at.elapsed() >= RETRANSMIT && tries < TRIES {
                sock.send_to(&send.raw, self.target)
                    .map_err(|e| format!("send: {e}"))?;
                sent_at = Instant::now();
                tries += 1;
            }
            // The echo (non-blocking) reflects only the token, to whoever relayed it.
            while let Ok((n, from)) = self.echo.recv_from(&mut buf) {
                if buf.get(..n) == Some(&token[..]) {
                    let _ = self.echo.send_to(&token, from);
                    echoed = true;
                }
            }
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                let mut m = Message::new();
                if m.unmarshal_binary(&buf[..n]).is_ok()
                    && m.typ == MessageType::new(METHOD_DATA, CLASS_INDICATION)
                    && m.get(ATTR_DATA).ok().as_deref() == Some(&token[..])
                {
                    return Ok(());
                }
            }
        }
    }

    /// Send a request until its answer arrives (by transaction id) or the round is over.
    fn ask(
        &self,
        sock: &UdpSocket,
        method: Method,
        setters: &[&dyn Setter],
        nonce: Option<&str>,
    ) -> Result<Message, String> {
        let mut m = Message::new();
        m.typ = MessageType::new(method, CLASS_REQUEST);
        let built = (|| -> Result<(), stun::Error> {
            m.new_transaction_id()?;
            m.write_header();
            for s in setters {
                s.add_to(&mut m)?;
            }
            if let Some(nonce) = nonce {
                let p = self.probe;
                TextAttribute::new(ATTR_USERNAME, p.user.clone()).add_to(&mut m)?;
                TextAttribute::new(ATTR_REALM, p.realm.clone()).add_to(&mut m)?;
                TextAttribute::new(ATTR_NONCE, nonce.to_string()).add_to(&mut m)?;
                MessageIntegrity::new_long_term_integrity(
                    p.user.clone(),
                    p.realm.clone(),
                    p.password.clone(),
                )
                .add_to(&mut m)?;
            }
            Ok(())
        })();
        built.map_err(|e| format!("building a request: {e}"))?;
        let mut buf = [0u8; 1500];
        for _ in 0..TRIES {
            sock.send_to(&m.raw, self.target)
                .map_err(|e| format!("send: {e}"))?;
            let until = Instant::now() + RETRANSMIT;
            while Instant::now() < until.min(self.deadline) && !self.shutdown.is_cancelled() {
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Some(b) = buf.get(..n) else { continue };
                if n >= 20 && b[0] >> 6 == 0 && b[8..20] == m.transaction_id.0 {
                    let mut r = Message::new();
                    if r.unmarshal_binary(b).is_ok() {
                        return Ok(r);
                    }
                }
            }
            if Instant::now() >= self.deadline || self.shutdown.is_cancelled() {
                break;
            }
        }
        Err(format!("{method}: no answer from {}", self.target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnd_proto::auth::Credentials;
    use turnd_proto::policy::PeerFilter;

    fn probe() -> (Arc<Probe>, Config) {
        let mut c = Config::for_tests();
        c.policy.allow_peers = vec![];
        c.admin.ready_probe = true;
        (Probe::new(&c).unwrap(), c)
    }

    #[test]
    fn only_the_probe_user_reaches_only_the_echo() {
        let (p, c) = probe();
        let policy = p.wrap_policy(Arc::new(PeerFilter::new(&c.policy, vec![])));
        let echo = p.echo_addr();
        assert!(policy.permits_for(&p.user, echo));
        assert!(policy.permits_ip_for(&p.user, echo.ip()));
        let other_port = SocketAddr::new(echo.ip(), echo.port().wrapping_add(1).max(1));
        assert!(
            !policy.permits_for(&p.user, other_port),
            "one address, not the host"
        );
        assert!(!policy.permits_for("dev", echo));
        assert!(!policy.permits_ip_for("dev", echo.ip()));
        assert!(!policy.permits(echo) && !policy.permits_ip(echo.ip()));
    }

    #[test]
    fn no_other_username_gets_the_probe_credential_or_principal() {
        let (p, c) = probe();
        let auth = p.wrap_auth(Arc::new(Credentials::from_config(&c.auth, &c.realm)));
        assert_eq!(auth.lookup(&p.user, &c.realm, 0), Lookup::Keys(vec![p.key]));
        assert_eq!(auth.principal(&p.user), p.user);
        // A TURN REST username whose user part is the probe's name stays itself.
        let rest = format!("4000000000:{}", p.user);
        assert_ne!(auth.principal(&rest), p.user);
        assert_eq!(auth.lookup(&p.user, "another-realm", 0), Lookup::Unknown);
        // Names are random per process.
        assert_ne!(probe().0.user, p.user);
    }

    /// The wrapper forwards the SHA-256, USERHASH and binding questions (before it did,
    /// `ready_probe = true` turned every SHA-256 login and USERHASH into a 401, and let a
    /// bound credential through from anywhere).
    #[test]
    fn the_probe_wrapper_forwards_sha256_userhash_and_bindings() {
        let (p, c) = probe();
        let inner = Credentials::from_config(&c.auth, &c.realm);
        let want = inner.lookup_sha256("dev", &c.realm, 0);
        assert!(matches!(want, Lookup::Keys(_)));
        let auth = p.wrap_auth(Arc::new(inner));
        assert_eq!(auth.lookup_sha256("dev", &c.realm, 0), want);
        let hash = turnd_proto::auth::userhash("dev", &c.realm);
        assert_eq!(auth.user_of_hash(&hash, &c.realm).as_deref(), Some("dev"));
        let bound = "4000000000:dev:ip=192.0.2.0/24";
        assert!(!auth.permits_client(bound, "127.0.0.1".parse().unwrap()));
    }
}
