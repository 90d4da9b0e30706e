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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{Authenticator, FailureBudget, NonceMint};
use crate::policy::PeerPolicy;
use crate::settings::{ExternalMapping, Lifetimes};

mod allocation;
mod control;
mod data;
pub mod metrics;
mod quota;
mod redirect;
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
pub use control::{CHANNEL_MAX, CHANNEL_MIN};
pub use metrics::{EngineMetrics, MetricsSnapshot, SessionInfo};
pub use quota::{FleetCounts, Quotas};
pub use redirect::{Alternate, Redirect};
pub use usage::{UsageRecord, UsageSink};

/// Bytes the caller leaves free before a peer datagram: the largest Data indication header
/// (20 header + 24 XOR-PEER-ADDRESS for IPv6 + 4 DATA header).
pub const HEADROOM: usize = 48;
/// Bytes the caller leaves free after a peer datagram, for padding to a multiple of 4.
pub const TAILROOM: usize = 4;

/// How a client reaches us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Streams pad ChannelData to a multiple of 4 (RFC 8656 §12.5).
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// The client side of a 5-tuple: transport, the client's address, and our listener address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientAddr {
    pub transport: Transport,
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// A control-plane message for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: ClientAddr,
    pub bytes: Vec<u8>,
}

/// Send `buf[range]` from the relay socket bound at `relay` to `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToPeer {
    pub relay: SocketAddr,
    pub peer: SocketAddr,
    pub range: std::ops::Range<usize>,
}

/// Send `buf[range]` to `client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToClient {
    pub client: ClientAddr,
    pub range: std::ops::Range<usize>,
}

/// Address families of relay sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
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
    Any,
    Even,
    /// An even port, and hold the next one under this token for a later Allocate.
    EvenReserveNext([u8; 8]),
    /// The port held under this token (its family is the reserved socket's).
    Reserved([u8; 8]),
}

/// Requests to the I/O layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Bind one relay socket per family (in order) for `client`'s pending Allocate, then call
    /// [`Engine::relay_bound`] with the results in the same order.
    BindRelays {
        client: ClientAddr,
        families: Vec<Family>,
        port: PortChoice,
    },
    /// Close the relay socket bound at this address; its port is free again.
    ReleaseRelay(SocketAddr),
    /// Close a stream client's connection.
    CloseClient(ClientAddr),
}

/// Fixed settings of an engine.
#[derive(Clone)]
pub struct EngineConfig {
    pub realm: String,
    pub software: Option<String>,
    pub lifetimes: Lifetimes,
    pub relay_v4: bool,
    pub relay_v6: bool,
    pub external: Vec<ExternalMapping>,
    pub max_permissions: usize,
    pub max_channels: usize,
    pub nonce_lifetime: Duration,
    /// The instant all shards count nonce time from.
    pub epoch: Instant,
    /// Unix time (seconds) at `epoch`.
    pub unix_at_epoch: u64,
    /// Log client addresses and usernames redacted.
    pub redact: bool,
}

/// The pluggable parts, shared by all shards and swappable on reload.
#[derive(Clone)]
pub struct Shared {
    pub auth: Arc<dyn Authenticator>,
    pub policy: Arc<dyn PeerPolicy>,
    pub nonces: Arc<NonceMint>,
    pub budget: Arc<FailureBudget>,
    pub quotas: Arc<Quotas>,
}

/// Counts of what an engine holds (tests and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub allocations: usize,
    pub pending_allocations: usize,
    pub permissions: usize,
    pub channels: usize,
    pub timers: usize,
}

/// An Allocate waiting for its relay sockets.
struct PendingAllocate {
    user: String,
    key: crate::auth::Key,
    tid: [u8; 12],
    lifetime: Duration,
    families: Vec<Family>,
    /// Families requested but unavailable: reported in ADDRESS-ERROR-CODE.
    refused_v6: bool,
    /// The token to hand back when the next port was reserved.
    reserved: Option<[u8; 8]>,
    fingerprint: bool,
}

pub struct Engine {
    cfg: EngineConfig,
    shared: Shared,
    /// Boxed: the table rounds up to a power of two, and empty slots should cost a pointer,
    /// not a whole allocation (about 1 KB per allocation saved at 10k idle allocations).
    allocations_by_client: HashMap<ClientAddr, Box<Allocation>>,
    pending_by_client: HashMap<ClientAddr, PendingAllocate>,
    /// (deadline, allocation): each allocation has at most one entry, at its next deadline.
    timers: BTreeSet<(Instant, ClientAddr)>,
    transmits: VecDeque<Transmit>,
    commands: VecDeque<Command>,
    /// State for Data-indication transaction ids (not security relevant).
    tid_state: u64,
    /// The last allocation id handed out.
    next_id: u64,
    metrics: EngineMetrics,
    /// Shutting down: new Allocates are refused.
    draining: bool,
    /// Where ended allocations' usage goes (`with_usage`); `None`: nowhere.
    usage: Option<Arc<dyn UsageSink>>,
    /// New allocations go elsewhere while this names an alternate (`with_redirect`).
    redirect: Option<Arc<Redirect>>,
}

impl Engine {
    pub fn new(cfg: EngineConfig, shared: Shared) -> Self {
        let tid_state = rand::random::<u64>() | 1;
        Engine {
            cfg,
            shared,
            allocations_by_client: HashMap::new(),
            pending_by_client: HashMap::new(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            commands: VecDeque::new(),
            tid_state,
            next_id: 0,
            metrics: EngineMetrics::default(),
            draining: false,
            usage: None,
            redirect: None,
        }
    }

    /// Number this engine's allocation ids with the shard number in the top 16 bits.
    pub fn with_shard(mut self, shard: u16) -> Self {
        self.next_id = u64::from(shard) << 48;
        self
    }

    /// Refuse new allocations (508) while existing ones carry on.
    pub fn set_draining(&mut self, on: bool) {
        self.draining = on;
    }

    /// Swap credentials and policy (reload). Existing allocations keep their keys; their
    /// permissions and channels that the new peer policy forbids are removed, so that
    /// ChannelData, Send and peer data all follow the new policy. Returns how many
    /// (permissions, channels) were removed.
    pub fn set_shared(&mut self, shared: Shared) -> (usize, usize) {
        self.shared = shared;
        let policy = self.shared.policy.clone();
        let (mut perms, mut chans) = (0, 0);
        for a in self.allocations_by_client.values_mut() {
            let (p, c) = a.retain_allowed(&*policy);
            perms += p;
            chans += c;
        }
        (perms, chans)
    }

    /// The user of `client`'s Allocate that waits for its relay sockets.
    pub fn pending_user(&self, client: &ClientAddr) -> Option<&str> {
        self.pending_by_client.get(client).map(|p| p.user.as_str())
    }

    /// The allocation quotas this engine counts against (shared by all shards).
    pub fn quotas(&self) -> &Arc<Quotas> {
        &self.shared.quotas
    }

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
                if buf.len() >= 20 && buf.starts_with(&[0x00, 0x16]) {
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

    pub fn has_allocation(&self, client: &ClientAddr) -> bool {
        self.allocations_by_client.contains_key(client)
    }

    /// The stream connection of `client` closed: free its allocation now.
    pub fn client_closed(&mut self, now: Instant, client: ClientAddr) {
        if let Some(p) = self.pending_by_client.remove(&client) {
            // Its relay sockets come back through relay_bound and are released there.
            self.shared.quotas.release(&p.user);
        }
        self.delete_allocation(now, client, "connection closed");
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, client)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.expire(now, client);
        }
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
        a.expire_children(now);
        // wake_at was popped from the set; force re-insertion.
        a.wake_at = now;
        let next = a.next_deadline();
        self.schedule(client, next);
    }

    fn delete_allocation(&mut self, now: Instant, client: ClientAddr, why: &'static str) {
        let Some(a) = self.allocations_by_client.remove(&client) else {
            return;
        };
        self.timers.remove(&(a.wake_at, client));
        for r in &a.relays {
            self.commands.push_back(Command::ReleaseRelay(r.bound));
        }
        self.shared.quotas.release(&a.user);
        self.report_usage(now, client, &a, why);
        self.metrics.count_ended(
            now.saturating_duration_since(a.created),
            client.transport,
            &a.stats,
        );
        tracing::info!(
            event = "allocation deleted",
            reason = why,
            user = %crate::redact::redact_user(&a.user, self.cfg.redact),
            client = %crate::redact::redact_addr(&client.remote, self.cfg.redact),
            transport = client.transport.as_str(),
            relay = %a.relays.iter().map(|r| r.advertised.to_string()).collect::<Vec<_>>().join(","),
            bytes_to_peer = a.stats.bytes_to_peer,
            bytes_to_client = a.stats.bytes_to_client,
            packets_to_peer = a.stats.packets_to_peer,
            packets_to_client = a.stats.packets_to_client,
            "allocation deleted"
        );
    }
}
