//! The TURN state machine: sans-IO, no tokio, no sockets, no clock.
//!
//! One [`Engine`] per shard owns the allocations, permissions and channels of the clients that
//! shard serves. The I/O layer drives it (the quinn-proto / str0m pattern):
//!
//! - [`Engine::handle_client`]: a datagram (or one framed message) from a client. Data-path
//!   packets (ChannelData, Send) return a [`ToPeer`]: which relay socket sends which byte
//!   range of the caller's buffer to which peer; nothing is copied or allocated.
//!   Control-plane answers are queued for [`Engine::poll_transmit`].
//! - [`Engine::handle_peer`]: a datagram that arrived on a relay socket. The caller receives
//!   it at offset [`HEADROOM`] of its buffer with [`TAILROOM`] spare bytes after it, so the
//!   engine can write the ChannelData or Data-indication header in place; it returns a
//!   [`ToClient`] naming the byte range to send.
//! - [`Engine::handle_timeout`] / [`Engine::poll_timeout`]: one ordered timer structure.
//! - [`Engine::poll_command`]: requests to the I/O layer (bind relay sockets, free one,
//!   close a client connection). Bind results come back through [`Engine::relay_bound`]; a
//!   failure answers the Allocate with 508.
//!
//! Time is always passed in as `now`; [`EngineConfig::epoch`] and `unix_at_epoch` map it to
//! the shared nonce clock and to wall-clock time for TURN REST expiry.

use std::collections::{BTreeSet, HashMap, VecDeque};

use route::{FastMap, RouteTable};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::auth::{Authenticator, FailureBudget, NonceMint};
use crate::policy::PeerPolicy;
use crate::settings::{ExternalMapping, Lifetimes};

mod allocation;
mod bandwidth;
mod control;
mod data;
mod deferred;
pub mod integrity;
pub mod metrics;
mod quota;
mod redirect;
pub mod refusal;
pub mod route;
mod tcp_relay;
mod usage;
pub mod wire;

#[cfg(test)]
mod props;
#[cfg(any(test, feature = "fuzzing"))]
pub mod testing;
#[cfg(test)]
mod tests;

/// Injected faults for the containment tests; compiled only with the `fault-injection`
/// feature, which only the test build enables (see Cargo.toml). Never in a release binary.
#[cfg(feature = "fault-injection")]
pub mod fault {
    /// A client datagram starting with this makes the engine panic while handling it.
    pub const PANIC: &[u8] = b"TURND-FAULT:engine-panic";
    /// A client datagram starting with this ends the UDP listener task that read it.
    pub const END_LISTENER: &[u8] = b"TURND-FAULT:end-listener";
    /// A client datagram starting with this ends the shard thread that read it.
    pub const END_SHARD: &[u8] = b"TURND-FAULT:end-shard";

    pub(super) fn check(buf: &[u8]) {
        if buf.starts_with(PANIC) {
            panic!("injected engine fault");
        }
    }
}

pub use allocation::Allocation;
pub use control::{ChannelNumber, CHANNEL_MAX, CHANNEL_MIN};
pub use metrics::{EngineMetrics, MetricsSnapshot, SessionInfo};
pub use quota::{FleetCounts, Quotas};
pub use redirect::{Alternate, Redirect};
pub use refusal::{BadRequest, Capacity, Refusal};
pub use route::{Route, RouteChange, RouteKey, ROUTE_EVENTS_MAX};
pub use tcp_relay::{ConnectionId, TcpRelayConfig, BIND_TIMEOUT, CONNECT_TIMEOUT, SHARD_BITS};
pub use usage::{UsageRecord, UsageSink};

/// Bytes the caller leaves free before a peer datagram: the largest Data indication header
/// (20 header + 24 XOR-PEER-ADDRESS for IPv6 + 4 DATA header).
pub const HEADROOM: usize = 48;
/// Bytes the caller leaves free after a peer datagram, for padding to a multiple of 4.
pub const TAILROOM: usize = 4;

/// How a client reaches us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// Plain UDP.
    Udp,
    /// TCP (RFC 6062 framing of STUN and ChannelData).
    Tcp,
    /// TLS over TCP.
    Tls,
    /// DTLS over UDP (RFC 7350): datagrams, like UDP, once the handshake is done.
    Dtls,
}

impl Transport {
    /// Streams pad ChannelData to a multiple of 4 (RFC 8656 §12.5).
    pub fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }
    /// The metrics and log label.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Dtls => "dtls",
        }
    }
}

/// The client side of a 5-tuple: transport, the client's address, and our listener address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClientAddr {
    /// How the client reaches us.
    pub transport: Transport,
    /// The client's address (after any NAT).
    pub remote: SocketAddr,
    /// Our listener address the client sent to.
    pub local: SocketAddr,
}

/// A peer's address: the far side of a relay (XOR-PEER-ADDRESS, the source of a datagram
/// on a relay socket). A type of its own so it cannot be swapped with a [`RelayAddr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerAddr(pub SocketAddr);

/// The local address a relay socket is bound at (not the advertised one behind a NAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RelayAddr(pub SocketAddr);

// The data path hashes these once per packet (engine/route.rs): a few whole words instead of
// the derived field-by-field hash of `SocketAddr` (discriminants, octet slices). Equal values
// hash equally (every word is a function of fields `Eq` compares).
fn addr_word(a: &SocketAddr) -> (u64, u64) {
    match a {
        SocketAddr::V4(v4) => (
            1 << 48 | u64::from(u32::from(*v4.ip())) << 16 | u64::from(v4.port()),
            0,
        ),
        SocketAddr::V6(v6) => {
            let ip = u128::from(*v6.ip());
            (
                (ip >> 64) as u64,
                ip as u64 ^ u64::from(v6.port()) << 48 ^ 2,
            )
        }
    }
}

impl std::hash::Hash for ClientAddr {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let (r0, r1) = addr_word(&self.remote);
        let (l0, l1) = addr_word(&self.local);
        let t = self.transport as u64;
        h.write_u64(r0);
        h.write_u64(l0 ^ t << 56);
        if r1 | l1 != 0 {
            h.write_u64(r1);
            h.write_u64(l1);
        }
    }
}

impl std::hash::Hash for PeerAddr {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let (a, b) = addr_word(&self.0);
        h.write_u64(a);
        if b != 0 {
            h.write_u64(b);
        }
    }
}

impl std::hash::Hash for RelayAddr {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        PeerAddr(self.0).hash(h)
    }
}

/// A control-plane message for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The client to send to.
    pub to: ClientAddr,
    /// The encoded STUN message.
    pub bytes: Vec<u8>,
}

/// The I/O layer's own name for a relay socket (a slab key, say): handed to the engine with
/// the socket's address in [`Engine::relay_bound`] and carried back in [`ToPeer`] and
/// [`Command::ReleaseRelay`], so the I/O layer finds the socket without a lookup. The
/// engine never interprets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayHandle(pub u32);

/// A relay socket the I/O layer bound for a pending Allocate ([`Engine::relay_bound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BoundRelay {
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// The I/O layer's handle of it.
    pub handle: RelayHandle,
}

/// Send `buf[range]` from the relay socket bound at `relay` to `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToPeer {
    /// The relay socket to send from.
    pub relay: RelayAddr,
    /// Its handle, as given to [`Engine::relay_bound`].
    pub handle: RelayHandle,
    /// Where to send.
    pub peer: PeerAddr,
    /// The bytes to send, in the buffer the caller passed in.
    pub range: std::ops::Range<usize>,
}

/// Send `buf[range]` to `client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToClient {
    /// Where to send.
    pub client: ClientAddr,
    /// The bytes to send, in the buffer the caller passed in.
    pub range: std::ops::Range<usize>,
}

/// Address families of relay sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `addr`.
    pub fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// Which relay port an Allocate asks for (RFC 8656 §7.2, EVEN-PORT and RESERVATION-TOKEN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortChoice {
    /// Any port of the relay range.
    Any,
    /// An even port (EVEN-PORT without the R bit).
    Even,
    /// An even port, and hold the next one under this token for a later Allocate.
    EvenReserveNext(ReservationToken),
    /// The port held under this token (its family is the reserved socket's).
    Reserved(ReservationToken),
}

/// An allocation's id, unique across the shards of a server: the shard number in the top
/// 16 bits ([`Engine::with_shard`]), a per-engine sequence number below. Shown and parsed as
/// the decimal number (the admin API's `/api/sessions/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// The id of the `seq`-th allocation of shard `shard`.
    pub fn new(shard: u16, seq: u64) -> Self {
        SessionId(u64::from(shard) << 48 | (seq & ((1 << 48) - 1)))
    }
    /// The shard that holds the allocation.
    pub fn shard(self) -> u16 {
        (self.0 >> 48) as u16
    }
    /// The id as one number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for SessionId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(SessionId)
    }
}

/// The RESERVATION-TOKEN of a port held by EVEN-PORT's R bit (RFC 8656 §7.2): 8 random
/// bytes from the engine's RNG, handed to the client and claimed by its next Allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationToken(pub [u8; 8]);

/// Requests to the I/O layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Bind one relay socket per family (in order) for `client`'s pending Allocate, then call
    /// [`Engine::relay_bound`] with the results in the same order.
    BindRelays {
        /// The client whose Allocate waits.
        client: ClientAddr,
        /// One relay per family, in this order.
        families: Vec<Family>,
        /// Which port to bind.
        port: PortChoice,
    },
    /// Close this relay socket; its port is free again.
    ReleaseRelay(BoundRelay),
    /// Close a stream client's connection.
    CloseClient(ClientAddr),
    /// Listen for TCP (RFC 6062) on a relayed address of `family` for `client`'s pending
    /// Allocate, then call [`Engine::relay_bound`] with the one result.
    BindTcpRelay {
        /// The client whose Allocate waits.
        client: ClientAddr,
        /// The relay's family.
        family: Family,
    },
    /// Connect from the relayed address `relay` to `peer` (within [`CONNECT_TIMEOUT`]), keep
    /// the connection under `id`, then call [`Engine::peer_connected`].
    ConnectPeer {
        /// The connection's CONNECTION-ID.
        id: ConnectionId,
        /// The TCP relay (listener) address to connect from.
        relay: RelayAddr,
        /// Where to connect.
        peer: PeerAddr,
    },
    /// ConnectionBind succeeded on the client connection `data`: once the answer queued for
    /// it is written, copy raw bytes both ways between it and peer connection `id`, then
    /// call [`Engine::peer_closed`].
    SpliceData {
        /// The peer connection.
        id: ConnectionId,
        /// The client's data connection.
        data: ClientAddr,
    },
    /// Close peer connection `id` (and stop its splice).
    ClosePeer(ConnectionId),
    /// A ConnectionBind on client connection `data` names connection `id` of shard
    /// `id.shard()`: ask that shard's engine ([`Engine::claim_peer`]) for it and its socket,
    /// then answer here with [`Engine::peer_claimed`].
    ClaimPeer {
        /// The peer connection.
        id: ConnectionId,
        /// The ConnectionBind's user (it must own the allocation).
        user: String,
        /// The client's data connection.
        data: ClientAddr,
    },
}

/// Fixed settings of an engine.
#[derive(Clone)]
pub struct EngineConfig {
    /// REALM of challenges and of the long-term keys.
    pub realm: String,
    /// SOFTWARE on answers to authenticated requests; `None`: never sent.
    pub software: Option<String>,
    /// Allocation, permission, channel and reservation lifetimes.
    pub lifetimes: Lifetimes,
    /// IPv4 relays are offered.
    pub relay_v4: bool,
    /// IPv6 relays are offered.
    pub relay_v6: bool,
    /// 1:1 NAT mappings: advertise `public` for relays bound at `private`.
    pub external: Vec<ExternalMapping>,
    /// Permissions per allocation; more are refused with 508.
    pub max_permissions: usize,
    /// Channels per allocation; more are refused with 508.
    pub max_channels: usize,
    /// How long a nonce is valid before 438.
    pub nonce_lifetime: Duration,
    /// The instant all shards count nonce time from.
    pub epoch: Instant,
    /// Unix time (seconds) at `epoch`.
    pub unix_at_epoch: u64,
    /// Log client addresses and usernames redacted.
    pub redact: bool,
    /// RFC 8489 security features offered (SHA-256, USERHASH); default: MD5 only.
    pub auth_features: integrity::AuthFeatures,
    /// Seed of the engine's random numbers (reservation tokens, the Data-indication
    /// transaction ids), so tests can predict them. `None` (every server): seeded from the
    /// operating system's entropy, so each engine has its own stream.
    pub rng_seed: Option<u64>,
}

/// The pluggable parts, shared by all shards and swappable on reload.
#[derive(Clone)]
pub struct Shared {
    /// Credentials.
    pub auth: Arc<dyn Authenticator>,
    /// Which peers relays may talk to.
    pub policy: Arc<dyn PeerPolicy>,
    /// Issues and checks nonces (one key for all shards).
    pub nonces: Arc<NonceMint>,
    /// Per-IP budgets of answers to unauthenticated requests.
    pub budget: Arc<FailureBudget>,
    /// Allocation quotas, counted across shards.
    pub quotas: Arc<Quotas>,
}

/// Counts of what an engine holds (tests and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Live allocations.
    pub allocations: usize,
    /// Allocates waiting for their relay sockets.
    pub pending_allocations: usize,
    /// Live permissions.
    pub permissions: usize,
    /// Live channels.
    pub channels: usize,
    /// Entries in the timer set (at most one per allocation).
    pub timers: usize,
}

/// An Allocate waiting for its relay sockets.
struct PendingAllocate {
    user: String,
    username: Option<Box<str>>,
    key: integrity::Signer,
    tid: [u8; 12],
    lifetime: Duration,
    families: Vec<Family>,
    /// Families requested but unavailable: reported in ADDRESS-ERROR-CODE.
    refused_v6: bool,
    /// The token to hand back when the next port was reserved.
    reserved: Option<ReservationToken>,
    fingerprint: bool,
    /// A TCP (RFC 6062) allocation.
    tcp: bool,
}

/// One shard's TURN state machine: sans-IO, driven by the I/O layer.
///
/// # Method groups
/// - **Inputs**: [`handle_client`](Engine::handle_client) (a datagram or one framed message
///   from a client), [`handle_peer`](Engine::handle_peer) (a datagram on a relay socket),
///   [`handle_timeout`](Engine::handle_timeout), [`relay_bound`](Engine::relay_bound) (the
///   answer to [`Command::BindRelays`]), [`client_closed`](Engine::client_closed).
/// - **Outputs**: [`poll_command`](Engine::poll_command),
///   [`poll_transmit`](Engine::poll_transmit), [`poll_timeout`](Engine::poll_timeout); the
///   data path returns [`ToPeer`] / [`ToClient`] directly from its input. For a fast path
///   that mirrors the route table: [`set_route_events`](Engine::set_route_events),
///   [`poll_route_change`](Engine::poll_route_change), [`routes`](Engine::routes).
/// - **Control**: [`set_shared`](Engine::set_shared) (reload),
///   [`set_draining`](Engine::set_draining), [`with_shard`](Engine::with_shard).
/// - **Views**: [`stats`](Engine::stats), [`metrics_snapshot`](Engine::metrics_snapshot),
///   sessions and [`has_allocation`](Engine::has_allocation), for metrics and the admin API.
///
/// # Contract
/// - After **every** input, drain [`poll_command`](Engine::poll_command) until `None`, then
///   [`poll_transmit`](Engine::poll_transmit) until `None`, then re-read
///   [`poll_timeout`](Engine::poll_timeout) and call
///   [`handle_timeout`](Engine::handle_timeout) when it is due. Commands first: a
///   transmit may answer an Allocate whose relay the I/O layer must already own. An input
///   may move the timeout without any output (a request parked while its lookup is asked
///   elsewhere, the webhook): an I/O layer that re-reads it only after outputs must also do
///   so when [`timeout_moved`](Engine::timeout_moved) says so.
/// - `now` never goes backwards between calls (pass a monotonic clock; equal is fine).
/// - A returned byte range ([`ToPeer::range`], [`ToClient::range`]) indexes the buffer the
///   caller passed to that same call, and is valid only until the caller's next call on the
///   engine (or its next write to that buffer). Send it before handing the engine more input.
/// - Every [`Command::BindRelays`] must be answered with [`relay_bound`](Engine::relay_bound)
///   for the same client, with one result per requested family, in order (`None` for a
///   failed bind), even if the client went away meanwhile: the engine releases what is no
///   longer needed with [`Command::ReleaseRelay`]. An unanswered one leaks a quota slot.
/// - Random numbers come from [`EngineConfig::rng_seed`]; with a seed, an engine's
///   reservation tokens and Data-indication transaction ids are reproducible.
pub struct Engine {
    cfg: EngineConfig,
    shared: Shared,
    /// Boxed: the table rounds up to a power of two, and empty slots should cost a pointer,
    /// not a whole allocation (about 1 KB per allocation saved at 10k idle allocations).
    allocations_by_client: FastMap<ClientAddr, Box<Allocation>>,
    /// The data path's routes and the allocations' traffic counters (`route.rs`), derived
    /// from the allocations and kept in step with them.
    routes: RouteTable,
    pending_by_client: HashMap<ClientAddr, PendingAllocate>,
    /// Requests waiting for a lookup that is asked elsewhere (the webhook).
    deferred: deferred::Deferred,
    /// (deadline, allocation): each allocation has at most one entry, at its next deadline.
    timers: BTreeSet<(Instant, ClientAddr)>,
    transmits: VecDeque<Transmit>,
    commands: VecDeque<Command>,
    /// Reservation tokens and the seed of `tid_state` ([`EngineConfig::rng_seed`]).
    rng: StdRng,
    /// State for Data-indication transaction ids (not security relevant).
    tid_state: u64,
    /// The sequence number of the last allocation id handed out.
    next_id: u64,
    /// This engine's shard number, in its [`SessionId`]s.
    shard: u16,
    metrics: EngineMetrics,
    /// Shutting down: new Allocates are refused.
    draining: bool,
    /// Where ended allocations' usage goes (`with_usage`); `None`: nowhere.
    usage: Option<Arc<dyn UsageSink>>,
    /// New allocations go elsewhere while this names an alternate (`with_redirect`).
    redirect: Option<Arc<Redirect>>,
    /// RFC 6062 TCP allocations and their peer connections.
    tcp: tcp_relay::TcpRelays,
    /// `[policy] max_bps_per_allocation` and its buckets (`bandwidth.rs`), copied from
    /// `shared.quotas` at start and on reload.
    bandwidth: bandwidth::Bandwidth,
}

impl Engine {
    /// An engine with no allocations.
    pub fn new(cfg: EngineConfig, shared: Shared) -> Self {
        let mut rng = match cfg.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let tid_state = rng.gen::<u64>() | 1;
        let mut bw = bandwidth::Bandwidth::default();
        bw.set_cap(shared.quotas.max_bps_per_allocation());
        Engine {
            rng,
            cfg,
            shared,
            allocations_by_client: FastMap::default(),
            routes: RouteTable::default(),
            pending_by_client: HashMap::new(),
            deferred: deferred::Deferred::default(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            commands: VecDeque::new(),
            tid_state,
            next_id: 0,
            shard: 0,
            metrics: EngineMetrics::default(),
            draining: false,
            usage: None,
            redirect: None,
            tcp: Default::default(),
            bandwidth: bw,
        }
    }

    /// Number this engine's allocation ids with the shard number in the top 16 bits
    /// ([`SessionId`]).
    pub fn with_shard(mut self, shard: u16) -> Self {
        self.shard = shard;
        self
    }

    /// Refuse new allocations (508) while existing ones carry on.
    pub fn set_draining(&mut self, on: bool) {
        self.draining = on;
    }

    /// Swap credentials and policy (reload), and take the bandwidth cap from the new
    /// `shared.quotas` (for existing allocations too). Existing allocations keep their keys;
    /// their permissions and channels that the new peer policy forbids are removed, with their
    /// routes, so that ChannelData, Send and peer data all follow the new policy. Returns how
    /// many (permissions, channels) were removed.
    pub fn set_shared(&mut self, shared: Shared) -> (usize, usize) {
        self.shared = shared;
        self.bandwidth
            .set_cap(self.shared.quotas.max_bps_per_allocation());
        let policy = self.shared.policy.clone();
        let (mut perms, mut chans) = (0, 0);
        let mut pruned = Vec::new();
        for (client, a) in self.allocations_by_client.iter_mut() {
            let gone = a.retain_allowed(&*policy);
            let (p, c) = gone.counts();
            perms += p;
            chans += c;
            if !gone.is_empty() {
                pruned.push((*client, gone));
            }
        }
        for (client, gone) in pruned {
            self.sync_removed(client, gone);
        }
        self.tcp_retain_allowed();
        (perms, chans)
    }

    /// Remove the routes of permissions and channels that `client`'s allocation just lost.
    fn sync_removed(&mut self, client: ClientAddr, gone: allocation::Removed) {
        for (number, peer) in gone.channels {
            self.sync_channel(client, number, peer);
        }
        for ip in gone.permissions {
            self.sync_permission(client, ip);
        }
    }

    /// The user of `client`'s Allocate that waits for its relay sockets.
    pub fn pending_user(&self, client: &ClientAddr) -> Option<&str> {
        self.pending_by_client.get(client).map(|p| p.user.as_str())
    }

    /// The allocation quotas this engine counts against (shared by all shards).
    pub fn quotas(&self) -> &Arc<Quotas> {
        &self.shared.quotas
    }

    /// What the engine holds now.
    pub fn stats(&self) -> EngineStats {
        let mut s = EngineStats {
            allocations: self.allocations_by_client.len(),
            pending_allocations: self.pending_by_client.len(),
            timers: self.timers.len(),
            ..Default::default()
        };
        for a in self.allocations_by_client.values() {
            s.permissions += a.permissions.len();
            s.channels += a.channels_by_number.len();
        }
        s
    }

    /// A datagram or framed message from a client. Returns where to relay data-path packets.
    pub fn handle_client(&mut self, now: Instant, from: ClientAddr, buf: &[u8]) -> Option<ToPeer> {
        #[cfg(feature = "fault-injection")]
        fault::check(buf);
        match buf.first()? >> 6 {
            0 => {
                if buf.len() >= 20 && buf.starts_with(&wire::MSG_SEND_INDICATION_BYTES) {
                    // Send indication: the hot path.
                    return self.on_send(now, from, buf);
                }
                self.on_stun(now, from, buf);
                None
            }
            1 => self.on_channel_data(now, from, buf),
            _ => None,
        }
    }

    /// Does `client` have an allocation?
    pub fn has_allocation(&self, client: &ClientAddr) -> bool {
        self.allocations_by_client.contains_key(client)
    }

    /// The stream connection of `client` closed: free its allocation now.
    pub fn client_closed(&mut self, now: Instant, client: ClientAddr) {
        self.deferred.forget(&client);
        self.tcp_client_closed(&client);
        if let Some(p) = self.pending_by_client.remove(&client) {
            // Its relay sockets come back through relay_bound and are released there.
            self.shared.quotas.release(&p.user);
        }
        self.delete_allocation(now, client, "connection closed");
    }

    /// The next control-plane answer to send, if any (see the contract on [`Engine`]).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next request to the I/O layer, if any (see the contract on [`Engine`]).
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`Engine::handle_timeout`] must be called next; `None`: no timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.first().map(|(t, _)| *t);
        [timer, self.deferred.next(), self.tcp.next_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Expire allocations, permissions and channels whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, client)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.expire(now, client);
        }
        self.tcp_timeout(now);
        self.retry_deferred(now);
    }

    /// Seconds on the nonce clock shared by all shards.
    fn clock_secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.cfg.epoch).as_secs()
    }

    fn unix_secs(&self, now: Instant) -> u64 {
        self.cfg.unix_at_epoch + self.clock_secs(now)
    }

    fn clock_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.cfg.epoch).as_millis() as u64
    }

    fn next_tid(&mut self) -> [u8; 12] {
        // xorshift64*: unpredictability does not matter for Data indications.
        let mut x = self.tid_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.tid_state = x;
        let a = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let mut t = [0u8; 12];
        t[..8].copy_from_slice(&a.to_le_bytes());
        t[8..].copy_from_slice(&(x as u32).to_le_bytes());
        t
    }

    fn schedule(&mut self, client: ClientAddr, at: Instant) {
        if let Some(a) = self.allocations_by_client.get_mut(&client) {
            if a.wake_at != at {
                self.timers.remove(&(a.wake_at, client));
                a.wake_at = at;
                self.timers.insert((at, client));
            }
        }
    }

    fn expire(&mut self, now: Instant, client: ClientAddr) {
        let Some(a) = self.allocations_by_client.get_mut(&client) else {
            return;
        };
        if a.expires <= now {
            self.delete_allocation(now, client, "expired");
            return;
        }
        let gone = a.expire_children(now);
        // wake_at was popped from the set; force re-insertion.
        a.wake_at = now;
        let next = a.next_deadline();
        self.schedule(client, next);
        self.sync_removed(client, gone);
    }

    fn delete_allocation(&mut self, now: Instant, client: ClientAddr, why: &'static str) {
        let Some(a) = self.allocations_by_client.remove(&client) else {
            return;
        };
        self.timers.remove(&(a.wake_at, client));
        let stats = self.routes.stats(a.slot);
        self.drop_routes(client, &a);
        self.tcp_allocation_deleted(&client);
        for r in &a.relays {
            self.commands
                .push_back(Command::ReleaseRelay(r.bound_relay()));
        }
        self.shared.quotas.release(&a.user);
        self.report_usage(now, client, &a, &stats, why);
        let dropped = self.bandwidth.dropped(a.slot);
        self.metrics.count_ended(
            now.saturating_duration_since(a.created),
            client.transport,
            &stats,
        );
        tracing::info!(
            event = "allocation deleted",
            reason = why,
            user = %crate::redact::redact_user(&a.user, self.cfg.redact),
            client = %crate::redact::redact_addr(&client.remote, self.cfg.redact),
            transport = client.transport.as_str(),
            relay = %a.relays.iter().map(|r| self.advertise(r.bound).to_string()).collect::<Vec<_>>().join(","),
            bytes_to_peer = stats.bytes_to_peer,
            bytes_to_client = stats.bytes_to_client,
            packets_to_peer = stats.packets_to_peer,
            packets_to_client = stats.packets_to_client,
            bandwidth_dropped_to_peer = dropped[0],
            bandwidth_dropped_to_client = dropped[1],
            "allocation deleted"
        );
    }
}
