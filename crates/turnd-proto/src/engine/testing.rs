//! A deterministic driver of the engine for generated-input tests: the post-authentication
//! property test in `engine/props.rs` and the `fuzz/` targets (cargo feature `fuzzing`).
//!
//! A [`Step`] describes a request by its parts (method, attributes with arbitrary types,
//! lengths and values). [`Harness::run`] builds the bytes and **signs them after the
//! mutation** (USERNAME, REALM, a valid NONCE, MESSAGE-INTEGRITY, optional FINGERPRINT), so
//! the handlers behind authentication see malformed input, which mutating already-signed
//! messages never reaches. [`Harness::check`] asserts the invariants after every step and
//! [`Harness::finish`] that everything is given back once all allocations expired.
//!
//! Not part of the server: compiled only for tests and with the `fuzzing` feature.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::{
    BoundRelay, ClientAddr, Command, Engine, EngineConfig, Family, PeerAddr, Quotas, Refusal,
    RelayAddr, RelayHandle, Route, RouteChange, RouteKey, Shared, Transport, HEADROOM, TAILROOM,
};
use crate::auth::{long_term_key, Authenticator, FailureBudget, Key, Lookup, NonceMint};
use crate::policy::PeerPolicy;
use crate::settings::Lifetimes;

/// The realm of the harness's engine.
pub const REALM: &str = "fuzz";
/// The harness's users and passwords.
pub const USERS: [(&str, &str); 2] = [("alice", "secret"), ("bob", "hunter2")];
/// Quotas of the harness engine: allocations in total and per user.
pub const MAX_TOTAL: usize = 6;
/// The harness engine's allocations per user.
pub const MAX_PER_USER: usize = 4;
/// The harness engine's permissions per allocation.
pub const MAX_PERMISSIONS: usize = 4;
/// The harness engine's channels per allocation.
pub const MAX_CHANNELS: usize = 3;
/// The harness engine's peer connections per TCP allocation.
pub const MAX_TCP_CONNECTIONS: usize = 2;
/// Clients the steps choose from (index modulo this).
pub const CLIENTS: usize = 6;
const MAGIC: [u8; 4] = 0x2112_A442u32.to_be_bytes();

/// Which attribute type to put in a request: one the engine knows (index into a list), or any.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum AttrType {
    /// One of the attribute types the engine understands (index, wrapping).
    Known(u8),
    /// Any type.
    Any(u16),
}

/// An attribute value: well-formed shapes (to get deep) and raw bytes (to break things).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum Value {
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A 32-bit number.
    U32(u32),
    /// A family byte then three zero bytes (REQUESTED-/ADDITIONAL-ADDRESS-FAMILY).
    Family(u8),
    /// An XOR-encoded peer address (see [`peer_addr`]).
    Peer(u8),
    /// A CHANNEL-NUMBER value.
    Channel(u16),
    /// The last RESERVATION-TOKEN handed out (or zeros).
    Token,
    /// An EVEN-PORT flags byte.
    EvenPort(u8),
    /// REQUESTED-TRANSPORT UDP.
    Udp,
    /// REQUESTED-TRANSPORT TCP (RFC 6062).
    Tcp,
    /// The last CONNECTION-ID handed out (or zeros).
    ConnectionId,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
/// One attribute of a generated request.
pub struct Attr {
    /// Its type.
    pub typ: AttrType,
    /// Its value.
    pub value: Value,
    /// Cut the value to this many bytes (lengths are where parsers go wrong).
    pub truncate: Option<u8>,
}

#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
/// The method of a generated request.
pub enum Method {
    /// Allocate.
    Allocate,
    /// Refresh.
    Refresh,
    /// CreatePermission.
    CreatePermission,
    /// ChannelBind.
    ChannelBind,
    /// Binding.
    Binding,
    /// Connect (RFC 6062).
    Connect,
    /// ConnectionBind (RFC 6062).
    ConnectionBind,
    /// Any other method number.
    Other(u16),
}

#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
/// How a generated request is signed.
pub enum Signing {
    /// The right user's key, a fresh nonce.
    Good,
    /// With a key from a wrong password.
    WrongKey,
    /// USERNAME, REALM and NONCE but no MESSAGE-INTEGRITY.
    Unsigned,
    /// A nonce issued for another client address.
    ForeignNonce,
}

/// One input to the engine.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum Step {
    /// A STUN request.
    Request {
        /// Which client (index, wrapping).
        client: u8,
        /// Which user (of [`USERS`]).
        user: bool,
        /// The method.
        method: Method,
        /// Attributes before MESSAGE-INTEGRITY.
        attrs: Vec<Attr>,
        /// Attributes after MESSAGE-INTEGRITY: never acted on.
        after_integrity: Vec<Attr>,
        /// How it is signed.
        signing: Signing,
        /// End with FINGERPRINT.
        fingerprint: bool,
        /// Reuse a transaction id (retransmissions hit the response cache).
        tid: u8,
    },
    /// A Send indication.
    Send {
        /// Which client.
        client: u8,
        /// Which peer.
        peer: u8,
        /// Payload bytes.
        data_len: u16,
        /// More attributes.
        extra: Vec<Attr>,
    },
    /// A ChannelData message.
    ChannelData {
        /// Which client.
        client: u8,
        /// The channel number.
        number: u16,
        /// Payload bytes.
        len: u16,
        /// A length field other than the payload's.
        declared: Option<u16>,
    },
    /// A datagram from a peer on a relay.
    FromPeer {
        /// Which client's allocation.
        client: u8,
        /// Which of its relays.
        relay: u8,
        /// Which peer.
        peer: u8,
        /// Payload bytes.
        len: u16,
    },
    /// Arbitrary bytes from a client.
    Raw {
        /// Which client.
        client: u8,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Answer the pending relay binds (`ok`: bind them, otherwise fail).
    ServeBinds {
        /// Bind them, or fail them.
        ok: bool,
    },
    /// Let time pass.
    Advance {
        /// Seconds.
        secs: u16,
    },
    /// A stream client's connection closes.
    Close {
        /// Which client.
        client: u8,
    },
}

/// Attribute types the engine understands, for [`AttrType::Known`].
const KNOWN_TYPES: &[u16] = &[
    0x0006, // USERNAME
    0x000C, // CHANNEL-NUMBER
    0x000D, // LIFETIME
    0x0012, // XOR-PEER-ADDRESS
    0x0013, // DATA
    0x0014, // REALM
    0x0015, // NONCE
    0x0017, // REQUESTED-ADDRESS-FAMILY
    0x0018, // EVEN-PORT
    0x0019, // REQUESTED-TRANSPORT
    0x001A, // DONT-FRAGMENT
    0x0022, // RESERVATION-TOKEN
    0x8000, // ADDITIONAL-ADDRESS-FAMILY
    0x8028, // FINGERPRINT (misplaced)
    0x0008, // MESSAGE-INTEGRITY (misplaced)
    0x8022, // SOFTWARE
    0x002A, // CONNECTION-ID
];

/// Peer addresses the steps choose from: allowed, denied by the harness policy (10/8, port 0),
/// IPv6, and IPv4-mapped forms.
pub fn peer_addr(n: u8) -> SocketAddr {
    let port = 7000 + u16::from(n % 4);
    match n % 8 {
        0..=2 => SocketAddr::from(([203, 0, 113, n % 8 + 1], port)),
        3 => SocketAddr::from(([10, 0, 0, 1], port)),
        4 => SocketAddr::from(([203, 0, 113, 1], 0)),
        5 => SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9)),
            port,
        ),
        6 => SocketAddr::new(
            IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
            port,
        ),
        _ => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
    }
}

struct Auth(Vec<(String, Key)>);
impl Authenticator for Auth {
    fn lookup(&self, username: &str, _realm: &str, _unix_now: u64) -> Lookup {
        match self.0.iter().find(|(u, _)| u == username) {
            Some((_, k)) => Lookup::Keys(vec![*k]),
            None => Lookup::Unknown,
        }
    }
}

/// Denies 10.0.0.0/8 (also IPv4-mapped), loopback and port 0.
struct Policy;
impl PeerPolicy for Policy {
    fn permits(&self, peer: SocketAddr) -> bool {
        peer.port() != 0 && self.permits_ip(peer.ip())
    }
    fn permits_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !ip.is_loopback() && !matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 10)
    }
}

/// The engine under test, its clock, and the relay ports it holds.
pub struct Harness {
    /// The engine under test.
    pub engine: Engine,
    /// The injected clock.
    pub now: Instant,
    nonces: Arc<NonceMint>,
    quotas: Arc<Quotas>,
    epoch: Instant,
    /// Relay addresses bound for the engine and not yet released.
    pub bound: BTreeSet<SocketAddr>,
    pending_binds: VecDeque<(ClientAddr, Vec<Family>)>,
    next_port: u16,
    token: [u8; 8],
    /// The last CONNECTION-ID in a Connect answer.
    connection_id: [u8; 4],
    /// Peer connections the engine asked for and did not close yet.
    pub peer_connections: BTreeSet<u32>,
    tids: Vec<[u8; 12]>,
    tid_counter: u32,
    /// Requests that got a success answer (how deep a run went).
    pub successes: u64,
    /// Packets the engine relayed (client to peer and peer to client).
    pub relayed: u64,
    /// A mirror of the route table built from the engine's route changes alone
    /// ([`Harness::with_route_events`]).
    pub mirror: Option<BTreeMap<RouteKey, Route>>,
    /// Route-change queue overflows seen (each a [`RouteChange::Reset`] after the first).
    pub resets: u64,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A harness around a fresh, seeded engine with the users of [`USERS`] and a fixed test
    /// peer policy.
    pub fn new() -> Self {
        let now = Instant::now();
        let nonces = Arc::new(NonceMint::new([9; 32]));
        let quotas = Arc::new(Quotas::new(MAX_TOTAL, MAX_PER_USER));
        let cfg = EngineConfig {
            realm: REALM.into(),
            software: None,
            lifetimes: Lifetimes {
                allocation_default: Duration::from_secs(600),
                allocation_max: Duration::from_secs(3600),
                permission: Duration::from_secs(300),
                channel: Duration::from_secs(600),
                reservation: Duration::from_secs(30),
            },
            relay_v4: true,
            relay_v6: true,
            external: vec![],
            max_permissions: MAX_PERMISSIONS,
            max_channels: MAX_CHANNELS,
            nonce_lifetime: Duration::from_secs(600),
            epoch: now,
            unix_at_epoch: 1_700_000_000,
            redact: true,
            auth_features: Default::default(),
            rng_seed: Some(0),
        };
        let users = USERS
            .iter()
            .map(|(u, p)| (u.to_string(), long_term_key(u, REALM, p)))
            .collect();
        let shared = Shared {
            auth: Arc::new(Auth(users)),
            policy: Arc::new(Policy),
            nonces: nonces.clone(),
            budget: Arc::new(FailureBudget::new(1_000_000)),
            quotas: quotas.clone(),
        };
        Harness {
            engine: Engine::new(cfg, shared).with_tcp_relay(super::TcpRelayConfig {
                enabled: true,
                max_connections: MAX_TCP_CONNECTIONS,
            }),
            now,
            nonces,
            quotas,
            epoch: now,
            bound: BTreeSet::new(),
            pending_binds: VecDeque::new(),
            next_port: 49152,
            token: [0; 8],
            connection_id: [0; 4],
            peer_connections: BTreeSet::new(),
            tids: vec![],
            tid_counter: 0,
            successes: 0,
            relayed: 0,
            mirror: None,
            resets: 0,
        }
    }

    /// Turn the engine's route changes on, with a queue of at most `queue_max`, and keep a
    /// mirror of the table from them: [`Harness::check`] then also asserts the mirror equals
    /// the table after every step.
    pub fn with_route_events(mut self, queue_max: usize) -> Self {
        self.engine.routes.events_max = queue_max.max(1);
        self.engine.set_route_events(true);
        self.mirror = Some(BTreeMap::new());
        self.drain_routes();
        self.resets = 0;
        self
    }

    /// Apply the queued route changes to the mirror, the way a fast path would.
    fn drain_routes(&mut self) {
        let Some(mirror) = &mut self.mirror else {
            return;
        };
        while let Some(c) = self.engine.poll_route_change() {
            match c {
                RouteChange::Added(r) => {
                    mirror.insert(r.key(), r);
                }
                RouteChange::Removed(k) => {
                    mirror.remove(&k);
                }
                RouteChange::Reset => {
                    self.resets += 1;
                    mirror.clear();
                    mirror.extend(self.engine.routes().into_iter().map(|r| (r.key(), r)));
                }
            }
        }
    }

    /// The address of client `n`.
    pub fn client(n: u8) -> ClientAddr {
        let n = usize::from(n) % CLIENTS;
        let transport = match n % 3 {
            0 => Transport::Udp,
            1 => Transport::Tcp,
            _ => Transport::Tls,
        };
        ClientAddr {
            transport,
            remote: SocketAddr::from(([192, 0, 2, 1 + n as u8], 40000 + n as u16)),
            local: SocketAddr::from(([198, 51, 100, 1], 3478)),
        }
    }

    fn attr_bytes(&self, a: &Attr, tid: &[u8; 12]) -> (u16, Vec<u8>) {
        let typ = match a.typ {
            AttrType::Known(i) => KNOWN_TYPES[usize::from(i) % KNOWN_TYPES.len()],
            AttrType::Any(t) => t,
        };
        let mut v = match &a.value {
            Value::Bytes(b) => b.iter().copied().take(600).collect(),
            Value::U32(x) => x.to_be_bytes().to_vec(),
            Value::Family(f) => vec![*f, 0, 0, 0],
            Value::Peer(n) => {
                let mut out = [0u8; 20];
                let l = super::wire::encode_xor_addr(peer_addr(*n), tid, &mut out);
                out[..l].to_vec()
            }
            Value::Channel(c) => {
                let mut v = c.to_be_bytes().to_vec();
                v.extend_from_slice(&[0, 0]);
                v
            }
            Value::Token => self.token.to_vec(),
            Value::EvenPort(b) => vec![*b],
            Value::Udp => vec![17, 0, 0, 0],
            Value::Tcp => vec![6, 0, 0, 0],
            Value::ConnectionId => self.connection_id.to_vec(),
        };
        if let Some(t) = a.truncate {
            v.truncate(usize::from(t));
        }
        (typ, v)
    }

    /// Run one step and check the invariants.
    pub fn run(&mut self, step: &Step) {
        match step {
            Step::Request {
                client,
                user,
                method,
                attrs,
                after_integrity,
                signing,
                fingerprint,
                tid,
            } => {
                let c = Self::client(*client);
                let tid = self.tid(*tid);
                let m = match method {
                    Method::Allocate => 0x0003,
                    Method::Refresh => 0x0004,
                    Method::CreatePermission => 0x0008,
                    Method::ChannelBind => 0x0009,
                    Method::Binding => 0x0001,
                    Method::Connect => 0x000A,
                    Method::ConnectionBind => 0x000B,
                    Method::Other(m) => m & 0x3EEF,
                };
                let (user, pass) = USERS[usize::from(*user)];
                let mut msg = header(m, &tid, 0);
                for a in attrs.iter().take(24) {
                    let (t, v) = self.attr_bytes(a, &tid);
                    push_attr(&mut msg, t, &v);
                }
                let nonce_for = super::control::nonce_subject(&match signing {
                    Signing::ForeignNonce => Self::client(client.wrapping_add(1)),
                    _ => c,
                });
                let secs = self.now.saturating_duration_since(self.epoch).as_secs();
                let nonce = self.nonces.issue(nonce_for, secs);
                push_attr(&mut msg, 0x0006, user.as_bytes());
                push_attr(&mut msg, 0x0014, REALM.as_bytes());
                push_attr(&mut msg, 0x0015, nonce.as_bytes());
                if !matches!(signing, Signing::Unsigned) {
                    let key = match signing {
                        Signing::WrongKey => long_term_key(user, REALM, "wrong"),
                        _ => long_term_key(user, REALM, pass),
                    };
                    sign(&mut msg, key.as_bytes());
                }
                for a in after_integrity.iter().take(4) {
                    let (t, v) = self.attr_bytes(a, &tid);
                    push_attr(&mut msg, t, &v);
                }
                if *fingerprint {
                    add_fingerprint(&mut msg);
                }
                self.client_bytes(c, &msg);
            }
            Step::Send {
                client,
                peer,
                data_len,
                extra,
            } => {
                let c = Self::client(*client);
                let tid = self.tid(0);
                let mut msg = header(0x0016, &tid, 0);
                let (t, v) = self.attr_bytes(
                    &Attr {
                        typ: AttrType::Any(0x0012),
                        value: Value::Peer(*peer),
                        truncate: None,
                    },
                    &tid,
                );
                push_attr(&mut msg, t, &v);
                for a in extra.iter().take(4) {
                    let (t, v) = self.attr_bytes(a, &tid);
                    push_attr(&mut msg, t, &v);
                }
                let room = (65_535 + 20usize).saturating_sub(msg.len() + 4);
                push_attr(
                    &mut msg,
                    0x0013,
                    &vec![0x5A; usize::from(*data_len).min(room)],
                );
                self.client_bytes(c, &msg);
            }
            Step::ChannelData {
                client,
                number,
                len,
                declared,
            } => {
                let c = Self::client(*client);
                let mut msg = number.to_be_bytes().to_vec();
                msg.extend_from_slice(&declared.unwrap_or(*len).to_be_bytes());
                msg.resize(4 + usize::from(*len), 0x33);
                self.client_bytes(c, &msg);
            }
            Step::FromPeer {
                client,
                relay,
                peer,
                len,
            } => {
                let c = Self::client(*client);
                let own = self
                    .engine
                    .allocations_by_client
                    .get(&c)
                    .and_then(|a| a.relays.first())
                    .map(|r| r.bound);
                let relay = own
                    .filter(|_| relay % 2 == 0)
                    .or_else(|| {
                        let n = usize::from(*relay) % self.bound.len().max(1);
                        self.bound.iter().nth(n).copied()
                    })
                    .unwrap_or(SocketAddr::from(([198, 51, 100, 1], 1)));
                let len = usize::from(*len).min(65_507);
                let mut buf = vec![0xA5u8; HEADROOM + len + TAILROOM];
                if let Some(out) = self.engine.handle_peer(
                    self.now,
                    c,
                    RelayAddr(relay),
                    PeerAddr(peer_addr(*peer)),
                    &mut buf,
                    len,
                ) {
                    self.relayed += 1;
                    assert!(out.range.end <= buf.len(), "range inside the buffer");
                    assert!(out.range.len() >= len, "payload not truncated");
                }
            }
            Step::Raw { client, bytes } => {
                let c = Self::client(*client);
                self.client_bytes(c, bytes);
            }
            Step::ServeBinds { ok } => self.serve_binds(*ok),
            Step::Advance { secs } => {
                self.now += Duration::from_secs(u64::from(*secs % 4000));
                self.engine.handle_timeout(self.now);
            }
            Step::Close { client } => {
                let c = Self::client(*client);
                if c.transport.is_stream() {
                    self.engine.client_closed(self.now, c);
                }
            }
        }
        self.drain();
        self.check();
    }

    fn tid(&mut self, reuse: u8) -> [u8; 12] {
        if reuse >= 200 {
            if let Some(t) = self.tids.get(usize::from(reuse - 200)) {
                return *t;
            }
        }
        self.tid_counter += 1;
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(&self.tid_counter.to_be_bytes());
        t[4] = reuse;
        if self.tids.len() < 50 {
            self.tids.push(t);
        }
        t
    }

    fn client_bytes(&mut self, c: ClientAddr, bytes: &[u8]) {
        if let Some(out) = self.engine.handle_client(self.now, c, bytes) {
            self.relayed += 1;
            assert!(
                out.range.end <= bytes.len(),
                "ToPeer range inside the packet"
            );
            assert!(out.range.start <= out.range.end);
            assert_eq!(
                out.handle,
                handle_of(out.relay.0),
                "ToPeer carries the handle its relay was bound with"
            );
        }
    }

    /// Collect transmits and commands; bind relays on request.
    fn drain(&mut self) {
        while let Some(t) = self.engine.poll_transmit() {
            if let Some(&[0x01, _]) = t.bytes.get(..2) {
                self.successes += 1;
            }
            // A RESERVATION-TOKEN in an Allocate success: remember it for Value::Token.
            if let Some(i) = t
                .bytes
                .windows(4)
                .position(|w| w == [0x00, 0x22, 0x00, 0x08])
            {
                if let Some(tok) = t.bytes.get(i + 4..i + 12) {
                    self.token.copy_from_slice(tok);
                }
            }
            // A CONNECTION-ID (Connect answer, ConnectionAttempt): for Value::ConnectionId.
            if let Some(i) = t
                .bytes
                .windows(4)
                .position(|w| w == [0x00, 0x2A, 0x00, 0x04])
            {
                if let Some(id) = t.bytes.get(i + 4..i + 8) {
                    self.connection_id.copy_from_slice(id);
                }
            }
        }
        while let Some(c) = self.engine.poll_command() {
            match c {
                Command::BindRelays {
                    client, families, ..
                } => self.pending_binds.push_back((client, families)),
                Command::ReleaseRelay(b) => {
                    let addr = b.addr;
                    assert_eq!(b.handle, handle_of(addr), "released with its handle");
                    assert!(
                        self.bound.remove(&addr),
                        "released {addr} twice or never bound"
                    );
                }
                Command::BindTcpRelay { client, family } => {
                    self.pending_binds.push_back((client, vec![family]))
                }
                Command::ConnectPeer { id, .. } => {
                    assert!(
                        self.peer_connections.insert(id.0),
                        "connection {id:?} twice"
                    );
                    // Every other connection attempt fails (447).
                    if !self.engine.peer_connected(self.now, id, id.0 % 2 == 0) {
                        self.peer_connections.remove(&id.0);
                    }
                    self.drain();
                }
                Command::ClosePeer(id) => {
                    self.peer_connections.remove(&id.0);
                }
                Command::CloseClient(_)
                | Command::SpliceData { .. }
                | Command::ClaimPeer { .. } => {}
            }
        }
        self.drain_routes();
    }

    fn serve_binds(&mut self, ok: bool) {
        while let Some((client, families)) = self.pending_binds.pop_front() {
            let bound: Vec<Result<BoundRelay, Refusal>> = families
                .iter()
                .map(|f| {
                    if !ok {
                        return Err(Refusal::Capacity(super::Capacity::RelayPorts));
                    }
                    self.next_port = self.next_port.wrapping_add(2).max(49152);
                    let ip: IpAddr = match f {
                        Family::V4 => Ipv4Addr::new(198, 51, 100, 1).into(),
                        Family::V6 => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
                    };
                    let a = SocketAddr::new(ip, self.next_port);
                    assert!(self.bound.insert(a), "bound {a} twice");
                    Ok(BoundRelay {
                        addr: a,
                        handle: handle_of(a),
                    })
                })
                .collect();
            self.engine.relay_bound(self.now, client, bound);
            self.drain();
        }
    }

    /// Allocations this engine created so far (how deep a run got).
    pub fn allocations_created(&self) -> u64 {
        self.engine.metrics.allocations_created
    }

    /// State bounded by the quotas, one timer per allocation, every bound port accounted for.
    pub fn check(&self) {
        let s = self.engine.stats();
        assert!(s.allocations <= MAX_TOTAL, "{s:?}");
        assert!(s.permissions <= s.allocations * MAX_PERMISSIONS, "{s:?}");
        assert!(s.channels <= s.allocations * MAX_CHANNELS, "{s:?}");
        assert_eq!(s.timers, s.allocations, "one timer per allocation: {s:?}");
        let (conns, _) = self.engine.tcp_connections();
        assert!(
            conns <= s.allocations * MAX_TCP_CONNECTIONS,
            "{conns} peer connections for {s:?}"
        );
        assert_eq!(
            conns,
            self.peer_connections.len(),
            "peer connections accounted for"
        );
        assert!(s.pending_allocations <= CLIENTS, "{s:?}");
        assert_eq!(
            self.quotas.total(),
            s.allocations + s.pending_allocations,
            "quota held by live and pending allocations only: {s:?}"
        );
        let held: BTreeSet<SocketAddr> = self
            .engine
            .sessions(self.now, None)
            .into_iter()
            .flat_map(|i| i.relays)
            .collect();
        assert_eq!(
            held, self.bound,
            "every bound port belongs to a live allocation"
        );
        self.check_routes();
    }

    /// The route table is exactly what the allocations' channels and permissions call for
    /// (no stale route, no missing one), and every route is removed no later than the next
    /// timer tick of its allocation.
    pub fn check_routes(&self) {
        let routes = self.engine.routes();
        assert_eq!(
            routes,
            self.engine.derived_routes(),
            "the route table follows the allocations"
        );
        assert_eq!(routes.len(), self.engine.route_count());
        if let Some(mirror) = &self.mirror {
            assert!(
                mirror.values().eq(routes.iter()),
                "the route changes rebuild the table"
            );
        }
        for r in &routes {
            assert!(
                r.expires() > self.now,
                "expired route left after the tick: {r:?}"
            );
            let a = &self.engine.allocations_by_client[&r.client()];
            assert!(
                a.wake_at <= r.expires(),
                "the allocation's tick comes after its route expires: {r:?}"
            );
        }
    }

    /// Serve what is pending, let every allocation expire, and check all was given back.
    pub fn finish(&mut self) {
        self.serve_binds(true);
        self.now += Duration::from_secs(24 * 3600);
        self.engine.handle_timeout(self.now);
        self.drain();
        self.check();
        let s = self.engine.stats();
        assert_eq!(s.allocations, 0, "{s:?}");
        assert!(self.bound.is_empty(), "ports leaked: {:?}", self.bound);
        assert_eq!(self.quotas.total(), 0, "quota leaked");
        assert_eq!(
            self.engine.tcp_connections(),
            (0, 0),
            "peer connections leaked"
        );
        assert!(
            self.peer_connections.is_empty(),
            "{:?}",
            self.peer_connections
        );
    }
}

fn header(method: u16, tid: &[u8; 12], len: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(&method.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(&MAGIC);
    m.extend_from_slice(tid);
    m
}

fn set_len(msg: &mut [u8], len: usize) {
    let l = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
    msg[2..4].copy_from_slice(&l);
}

/// Append an attribute (padded) and update the header length.
pub fn push_attr(msg: &mut Vec<u8>, typ: u16, v: &[u8]) {
    let v = &v[..v.len().min(65_535)];
    if msg.len() + 4 + v.len() + 3 > 20 + 65_535 {
        return;
    }
    msg.extend_from_slice(&typ.to_be_bytes());
    msg.extend_from_slice(&(v.len() as u16).to_be_bytes());
    msg.extend_from_slice(v);
    while msg.len() % 4 != 0 {
        msg.push(0);
    }
    let body = msg.len() - 20;
    set_len(msg, body);
}

/// Append MESSAGE-INTEGRITY over the message so far (RFC 8489 §14.5).
pub fn sign(msg: &mut Vec<u8>, key: &[u8]) {
    let body = msg.len() - 20 + 24;
    set_len(msg, body);
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
        return;
    };
    mac.update(msg);
    let tag = mac.finalize().into_bytes();
    push_attr(msg, 0x0008, &tag);
}

/// Append FINGERPRINT (RFC 8489 §14.7).
pub fn add_fingerprint(msg: &mut Vec<u8>) {
    let body = msg.len() - 20 + 8;
    set_len(msg, body);
    let fp = stun::fingerprint::fingerprint_value(msg);
    push_attr(msg, 0x8028, &fp.to_be_bytes());
}

/// The handle the harness binds a relay with (its port), so that outputs can be checked.
fn handle_of(addr: SocketAddr) -> RelayHandle {
    RelayHandle(u32::from(addr.port()))
}
