//! What an engine counts, and the session view the admin API lists.
//!
//! Nothing here costs anything per relayed packet: traffic counters live in each allocation
//! (they are needed for the lifecycle log anyway) and are summed when metrics are scraped;
//! counters of deleted allocations are folded into [`EngineMetrics::traffic`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use super::{ClientAddr, Engine, Transport};

/// Why an authenticated-method request was refused before its handler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthFailure {
    /// No MESSAGE-INTEGRITY: the normal first 401 of every client.
    Challenge,
    /// Stale or foreign nonce (438).
    Nonce,
    /// A username the authenticator does not know.
    UnknownUser,
    /// A TURN REST username past its expiry.
    Expired,
    /// MESSAGE-INTEGRITY matched none of the user's keys.
    BadPassword,
    /// Another user on an existing allocation (441).
    WrongUser,
    /// Over the per-IP budget: dropped without an answer.
    Budget,
}

impl AuthFailure {
    /// Every reason, in the order metrics list them.
    pub const ALL: [AuthFailure; 7] = [
        AuthFailure::Challenge,
        AuthFailure::Nonce,
        AuthFailure::UnknownUser,
        AuthFailure::Expired,
        AuthFailure::BadPassword,
        AuthFailure::WrongUser,
        AuthFailure::Budget,
    ];
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Challenge => "challenge",
            AuthFailure::Nonce => "stale_nonce",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::Expired => "expired",
            AuthFailure::BadPassword => "bad_password",
            AuthFailure::WrongUser => "wrong_user",
            AuthFailure::Budget => "over_budget",
        }
    }
}

/// Upper bounds (seconds) of the allocation-duration histogram buckets.
pub const DURATION_BUCKETS: [u64; 7] = [10, 60, 300, 600, 1800, 3600, 14400];

/// Client-leg transports counted: udp, tcp, tls, dtls.
pub const TRANSPORTS: usize = 4;

/// Traffic by transport of the client leg: [udp, tcp, tls, dtls].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets relayed client -> peer.
    pub packets_to_peer: [u64; TRANSPORTS],
    /// Payload bytes relayed client -> peer.
    pub bytes_to_peer: [u64; TRANSPORTS],
    /// Packets relayed peer -> client.
    pub packets_to_client: [u64; TRANSPORTS],
    /// Payload bytes relayed peer -> client.
    pub bytes_to_client: [u64; TRANSPORTS],
}

/// Counters of one engine since it started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineMetrics {
    /// Allocations that succeeded.
    pub allocations_created: u64,
    /// (method name, error code or 0 for success) -> responses sent.
    pub responses: BTreeMap<(&'static str, u16), u64>,
    /// Authentication failures by reason.
    pub auth_failures: BTreeMap<AuthFailure, u64>,
    /// [`Refusal::label`](super::Refusal::label) -> error answers sent for it.
    pub refusals: BTreeMap<&'static str, u64>,
    /// 403 answers.
    pub policy_denials: u64,
    /// 486 answers.
    pub quota_refusals: u64,
    /// Histogram of ended allocations' durations: counts per bucket (+Inf last), sum.
    pub duration_buckets: [u64; DURATION_BUCKETS.len() + 1],
    /// Sum of ended allocations' durations, in seconds.
    pub duration_sum_secs: f64,
    /// Traffic of allocations that have ended (live ones are added in snapshots).
    pub traffic: Traffic,
    /// Relayed datagrams dropped by `[policy] max_bps_per_allocation`: [to_peer, to_client].
    pub bandwidth_dropped: [u64; 2],
}

/// A point-in-time view of an engine for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// The engine's counters.
    pub counters: EngineMetrics,
    /// Live allocations by [transport][family: 0 = IPv4 relay, 1 = IPv6 relay, 2 = dual].
    pub allocations: [[u64; 3]; TRANSPORTS],
    /// Live permissions.
    pub permissions: u64,
    /// Live channels.
    pub channels: u64,
    /// Traffic of ended and live allocations.
    pub traffic: Traffic,
}

/// One allocation as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The allocation's id (carries the shard).
    pub id: super::SessionId,
    /// The principal.
    pub user: String,
    /// The client's address.
    pub client: SocketAddr,
    /// How the client reaches us.
    pub transport: Transport,
    /// Advertised relay addresses.
    pub relays: Vec<SocketAddr>,
    /// When the allocation was created (wall clock).
    pub created: SystemTime,
    /// When it expires unless refreshed (wall clock).
    pub expires: SystemTime,
    /// Payload bytes relayed client -> peer.
    pub bytes_to_peer: u64,
    /// Payload bytes relayed peer -> client.
    pub bytes_to_client: u64,
    /// Packets relayed client -> peer.
    pub packets_to_peer: u64,
    /// Packets relayed peer -> client.
    pub packets_to_client: u64,
    /// Datagrams dropped over `[policy] max_bps_per_allocation`: [to_peer, to_client] (0
    /// without a cap; counted since the cap was last set from 0).
    pub bandwidth_dropped: [u64; 2],
    /// Live permissions.
    pub permissions: usize,
    /// Live channels.
    pub channels: usize,
}

pub(super) fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
        Transport::Dtls => 3,
    }
}

impl EngineMetrics {
    pub(super) fn count_response(&mut self, method: &'static str, code: u16) {
        *self.responses.entry((method, code)).or_default() += 1;
        match code {
            403 => self.policy_denials += 1,
            486 => self.quota_refusals += 1,
            _ => {}
        }
    }

    pub(super) fn count_refusal(&mut self, why: &super::Refusal) {
        *self.refusals.entry(why.label()).or_default() += 1;
    }

    pub(super) fn count_auth_failure(&mut self, why: AuthFailure) {
        *self.auth_failures.entry(why).or_default() += 1;
    }

    pub(super) fn count_ended(
        &mut self,
        lived: Duration,
        t: Transport,
        c: &super::allocation::Counters,
    ) {
        let secs = lived.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b as f64)
            .unwrap_or(DURATION_BUCKETS.len());
        self.duration_buckets[i] += 1;
        self.duration_sum_secs += secs;
        add_traffic(&mut self.traffic, t, c);
    }
}

impl EngineMetrics {
    /// Traffic relayed outside the engine for an allocation that has already ended.
    pub(super) fn add_ended_traffic(&mut self, t: Transport, c: &super::allocation::Counters) {
        add_traffic(&mut self.traffic, t, c);
    }
}

fn add_traffic(t: &mut Traffic, transport: Transport, c: &super::allocation::Counters) {
    let i = transport_index(transport);
    t.packets_to_peer[i] += c.packets_to_peer;
    t.bytes_to_peer[i] += c.bytes_to_peer;
    t.packets_to_client[i] += c.packets_to_client;
    t.bytes_to_client[i] += c.bytes_to_client;
}

impl Engine {
    /// The engine's counters plus what it holds now, for `/metrics` (computed at scrape time).
    pub fn metrics_snapshot(&self) -> MetricsSnapshot {
        let mut s = MetricsSnapshot {
            counters: self.metrics.clone(),
            traffic: self.metrics.traffic,
            ..Default::default()
        };
        for (client, a) in &self.allocations_by_client {
            let fam = match (a.relays.len(), a.relays.first().map(|r| r.bound.is_ipv4())) {
                (2, _) => 2,
                (_, Some(false)) => 1,
                _ => 0,
            };
            s.allocations[transport_index(client.transport)][fam] += 1;
            s.permissions += a.permissions.len() as u64;
            s.channels += a.channels_by_number.len() as u64;
            add_traffic(&mut s.traffic, client.transport, &self.routes.stats(a.slot));
        }
        s
    }

    /// Live allocations, optionally only those of `user`.
    pub fn sessions(&self, now: Instant, user: Option<&str>) -> Vec<SessionInfo> {
        let wall = |t: Instant| {
            let unix = self.cfg.unix_at_epoch as i128
                + (t.saturating_duration_since(self.cfg.epoch).as_secs() as i128);
            SystemTime::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64)
        };
        let _ = now;
        self.allocations_by_client
            .iter()
            .filter(|(_, a)| user.is_none_or(|u| &*a.user == u))
            .map(|(client, a)| (client, a, self.routes.stats(a.slot)))
            .map(|(client, a, stats)| SessionInfo {
                id: a.id,
                user: a.user.to_string(),
                client: client.remote,
                transport: client.transport,
                relays: a.relays.iter().map(|r| self.advertise(r.bound)).collect(),
                created: wall(a.created),
                expires: wall(a.expires),
                bytes_to_peer: stats.bytes_to_peer,
                bytes_to_client: stats.bytes_to_client,
                packets_to_peer: stats.packets_to_peer,
                packets_to_client: stats.packets_to_client,
                bandwidth_dropped: self.bandwidth.dropped(a.slot),
                permissions: a.permissions.len(),
                channels: a.channels_by_number.len(),
            })
            .collect()
    }

    /// End the allocation with this id now; true if this engine had it.
    pub fn kill_session(&mut self, now: Instant, id: super::SessionId) -> bool {
        let client = self
            .allocations_by_client
            .iter()
            .find(|(_, a)| a.id == id)
            .map(|(c, _)| *c);
        match client {
            Some(c) => {
                self.delete_allocation(now, c, "ended by the admin API");
                true
            }
            None => false,
        }
    }

    /// End every allocation of `user` now; returns how many.
    pub fn kill_user(&mut self, now: Instant, user: &str) -> usize {
        self.kill_where(now, |a| &*a.user == user)
    }

    /// End every allocation created with exactly this USERNAME (a TURN REST username, as
    /// revoked); returns how many.
    pub fn kill_username(&mut self, now: Instant, username: &str) -> usize {
        self.kill_where(now, |a| {
            a.username.as_deref() == Some(username) || &*a.user == username
        })
    }

    fn kill_where(
        &mut self,
        now: Instant,
        pick: impl Fn(&super::allocation::Allocation) -> bool,
    ) -> usize {
        let clients: Vec<ClientAddr> = self
            .allocations_by_client
            .iter()
            .filter(|(_, a)| pick(a))
            .map(|(c, _)| *c)
            .collect();
        for c in &clients {
            self.delete_allocation(now, *c, "ended by the admin API");
        }
        clients.len()
    }
}
