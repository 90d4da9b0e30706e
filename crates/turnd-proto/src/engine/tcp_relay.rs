//! RFC 6062 TCP relay allocations: Connect, ConnectionBind, ConnectionAttempt, and the peer
//! connections of each TCP allocation.
//!
//! The engine keeps the state of every peer connection (its CONNECTION-ID, its allocation,
//! its peer, connecting / waiting for a ConnectionBind / bound) and its timers; the I/O layer
//! holds the sockets. Outputs: [`Command::BindTcpRelay`] (a TCP listener on the relayed
//! address), [`Command::ConnectPeer`] (answered by [`Engine::peer_connected`]),
//! [`Command::SpliceData`] (a ConnectionBind succeeded: copy raw bytes between that client
//! connection and the peer connection), [`Command::ClosePeer`]. Inputs besides requests:
//! [`Engine::peer_inbound`] (a peer connected to a relayed address) and
//! [`Engine::peer_closed`] (a peer connection or its data connection ended).
//!
//! The peer policy is applied to every Connect and to every inbound connection (with the
//! permission check RFC 6062 §5.3 asks for), and again on reload.

#![deny(clippy::indexing_slicing)]

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use stun::attributes::{ATTR_CONNECTION_ID, ATTR_XOR_PEER_ADDRESS};
use stun::message as msg;

use super::integrity::Signer;
use super::refusal::{BadRequest, Capacity, Refusal};
use super::wire::{Parsed, Reply};
use super::{ClientAddr, Command, Engine, PeerAddr, RelayAddr, Transmit};

/// How long a peer connection waits for its ConnectionBind (RFC 6062 §5.2 and §5.3: 30 s).
pub const BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the I/O layer tries an outgoing connection before the Connect gets 447.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The engine gives up on a Connect the I/O layer never answered after this long.
const CONNECT_GIVE_UP: Duration = Duration::from_secs(35);

/// REQUESTED-TRANSPORT's protocol number for TCP.
pub(super) const PROTO_TCP: u8 = 6;
/// STUN message type of a Connect request (RFC 6062 §6.1).
const MSG_CONNECT_REQUEST: u16 = 0x000A;
/// STUN message type of a ConnectionBind request (RFC 6062 §6.1).
const MSG_CONNECTION_BIND_REQUEST: u16 = 0x000B;
/// STUN message type of a ConnectionAttempt indication (RFC 6062 §6.1).
const MSG_CONNECTION_ATTEMPT_INDICATION: u16 = 0x001C;

/// A peer connection's CONNECTION-ID (RFC 6062 §6.2.1), unique across the shards of a
/// server: the shard number (modulo 1024) in the top [`SHARD_BITS`] bits, random bits below.
/// A ConnectionBind may arrive on any shard (SO_REUSEPORT picks one per connection); the
/// shard number says which engine holds the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u32);

/// Bits of a [`ConnectionId`] that name its shard.
pub const SHARD_BITS: u32 = 10;

impl ConnectionId {
    /// The shard (modulo 1024) whose engine holds this connection.
    pub fn shard(self) -> u16 {
        (self.0 >> (32 - SHARD_BITS)) as u16
    }
}

/// A ConnectionBind for another shard's connection, waiting for that shard's answer.
struct RemoteBind {
    id: ConnectionId,
    tid: [u8; 12],
    fingerprint: bool,
    key: Signer,
}

/// Settings of TCP relay allocations (off unless [`Engine::with_tcp_relay`]).
#[derive(Debug, Clone, Copy)]
pub struct TcpRelayConfig {
    /// Allocations with REQUESTED-TRANSPORT TCP are offered (over TCP/TLS clients only).
    pub enabled: bool,
    /// Peer connections (connecting, waiting for a bind, or bound) per allocation; more
    /// Connects get 508 and more inbound connections are refused.
    pub max_connections: usize,
}

impl Default for TcpRelayConfig {
    fn default() -> Self {
        TcpRelayConfig {
            enabled: false,
            max_connections: 16,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A Connect waits for the I/O layer's outgoing connection.
    Connecting { tid: [u8; 12], fingerprint: bool },
    /// Established, waiting for the client's ConnectionBind.
    Unbound,
    /// Spliced to this client data connection.
    Bound(ClientAddr),
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    control: ClientAddr,
    peer: SocketAddr,
    state: State,
    deadline: Option<Instant>,
}

/// The TCP relay state of one engine.
#[derive(Default)]
pub(super) struct TcpRelays {
    pub(super) cfg: TcpRelayConfig,
    conns: HashMap<ConnectionId, Conn>,
    /// TCP allocations (by control connection) -> their peer connections.
    by_control: HashMap<ClientAddr, Vec<ConnectionId>>,
    timers: BTreeSet<(Instant, ConnectionId)>,
    /// Data connections whose ConnectionBind names another shard's connection (at most one
    /// each; bounded by the stream connection caps).
    remote_binds: HashMap<ClientAddr, RemoteBind>,
}

impl TcpRelays {
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Is the allocation of `client` a TCP one?
    pub(super) fn is_tcp(&self, client: &ClientAddr) -> bool {
        self.by_control.contains_key(client)
    }

    /// Peer connections now: (all, bound).
    pub(super) fn counts(&self) -> (usize, usize) {
        let bound = self
            .conns
            .values()
            .filter(|c| matches!(c.state, State::Bound(_)))
            .count();
        (self.conns.len(), bound)
    }

    fn set_deadline(&mut self, id: ConnectionId, at: Option<Instant>) {
        if let Some(c) = self.conns.get_mut(&id) {
            if let Some(old) = c.deadline.take() {
                self.timers.remove(&(old, id));
            }
            c.deadline = at;
            if let Some(at) = at {
                self.timers.insert((at, id));
            }
        }
    }

    fn remove(&mut self, id: ConnectionId) -> Option<Conn> {
        let c = self.conns.remove(&id)?;
        if let Some(at) = c.deadline {
            self.timers.remove(&(at, id));
        }
        if let Some(v) = self.by_control.get_mut(&c.control) {
            v.retain(|x| *x != id);
        }
        Some(c)
    }
}

/// A fake request header, so that a later answer carries the method, id and fingerprint.
fn header(typ: u16, tid: &[u8; 12]) -> [u8; 20] {
    let mut hdr = [0u8; 20];
    if let Some(h) = hdr.get_mut(0..2) {
        h.copy_from_slice(&typ.to_be_bytes());
    }
    if let Some(h) = hdr.get_mut(4..8) {
        h.copy_from_slice(&msg::MAGIC_COOKIE.to_be_bytes());
    }
    if let Some(h) = hdr.get_mut(8..20) {
        h.copy_from_slice(tid);
    }
    hdr
}

impl Engine {
    /// Offer RFC 6062 TCP relay allocations with these settings.
    pub fn with_tcp_relay(mut self, cfg: TcpRelayConfig) -> Self {
        self.tcp.cfg = cfg;
        self
    }

    /// Peer connections of TCP allocations now: (all, bound to a data connection).
    pub fn tcp_connections(&self) -> (usize, usize) {
        self.tcp.counts()
    }

    /// Check an Allocate with REQUESTED-TRANSPORT TCP (RFC 6062 §5.1): only over TCP or TLS,
    /// only when offered, and without the UDP-only attributes.
    pub(super) fn check_tcp_allocate(
        &self,
        from: &ClientAddr,
        req: &Parsed<'_>,
    ) -> Result<(), Refusal> {
        if !self.tcp.cfg.enabled || !from.transport.is_stream() {
            return Err(Refusal::UnsupportedTransport);
        }
        use stun::attributes::{ATTR_DONT_FRAGMENT, ATTR_EVEN_PORT, ATTR_RESERVATION_TOKEN};
        let dual = super::wire::ATTR_ADDITIONAL_ADDRESS_FAMILY;
        if [
            ATTR_DONT_FRAGMENT,
            ATTR_EVEN_PORT,
            ATTR_RESERVATION_TOKEN,
            dual,
        ]
        .into_iter()
        .any(|t| req.has(t))
        {
            return Err(BadRequest::TcpAllocateOption.into());
        }
        Ok(())
    }

    /// A TCP allocation of `client` was created.
    pub(super) fn tcp_allocation_created(&mut self, client: ClientAddr) {
        self.tcp.by_control.insert(client, Vec::new());
    }

    /// The allocation of `client` ends: close its peer connections.
    pub(super) fn tcp_allocation_deleted(&mut self, client: &ClientAddr) {
        let Some(ids) = self.tcp.by_control.remove(client) else {
            return;
        };
        for id in ids {
            if let Some(c) = self.tcp.remove(id) {
                self.commands.push_back(Command::ClosePeer(id));
                if let State::Bound(data) = c.state {
                    self.commands.push_back(Command::CloseClient(data));
                }
            }
        }
    }

    /// Reload: close the peer connections the new policy forbids.
    pub(super) fn tcp_retain_allowed(&mut self) -> usize {
        let policy = self.shared.policy.clone();
        let forbidden: Vec<ConnectionId> = self
            .tcp
            .conns
            .iter()
            .filter(|(_, c)| {
                let user = self.allocations_by_client.get(&c.control).map(|a| &*a.user);
                !user.is_some_and(|u| policy.permits_for(u, c.peer))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &forbidden {
            if let Some(c) = self.tcp.remove(*id) {
                self.commands.push_back(Command::ClosePeer(*id));
                if let State::Bound(data) = c.state {
                    self.commands.push_back(Command::CloseClient(data));
                }
            }
        }
        forbidden.len()
    }

    fn new_connection_id(&mut self) -> ConnectionId {
        let shard = u32::from(self.shard) & ((1 << SHARD_BITS) - 1);
        loop {
            let low = self.rng.gen::<u32>() >> SHARD_BITS;
            let id = ConnectionId(shard << (32 - SHARD_BITS) | low);
            if low != 0 && !self.tcp.conns.contains_key(&id) {
                return id;
            }
        }
    }

    fn own_shard(&self, id: ConnectionId) -> bool {
        id.shard() == self.shard & ((1 << SHARD_BITS) - 1)
    }

    /// Another shard asks for peer connection `id` for a ConnectionBind of `user` on its
    /// client connection `data` ([`Command::ClaimPeer`]). `Ok`: the connection is now bound
    /// there; hand its socket over.
    pub fn claim_peer(
        &mut self,
        _now: Instant,
        id: ConnectionId,
        user: &str,
        data: ClientAddr,
    ) -> Result<(), Refusal> {
        self.bind_checks(id, user)?;
        if let Some(conn) = self.tcp.conns.get_mut(&id) {
            conn.state = State::Bound(data);
        }
        self.tcp.set_deadline(id, None);
        Ok(())
    }

    /// The owner shard's answer to [`Command::ClaimPeer`] for the data connection `data`:
    /// answers its ConnectionBind and, on success, issues [`Command::SpliceData`]. False when
    /// the data connection no longer waits (closed meanwhile): the I/O layer gives a claimed
    /// connection back.
    pub fn peer_claimed(
        &mut self,
        _now: Instant,
        data: ClientAddr,
        result: Result<(), Refusal>,
    ) -> bool {
        let Some(b) = self.tcp.remote_binds.remove(&data) else {
            return false;
        };
        let hdr = header(MSG_CONNECTION_BIND_REQUEST, &b.tid);
        let Ok(req) = Parsed::parse(&hdr) else {
            return false;
        };
        match result {
            Ok(()) => {
                let mut r = Reply::success(&req);
                r.set_fingerprint(b.fingerprint);
                self.commands
                    .push_back(Command::SpliceData { id: b.id, data });
                self.reply_signed(data, r, &b.key);
            }
            Err(why) => self.refuse_later(data, &req, b.fingerprint, &b.key, why),
        }
        true
    }

    /// A client connection closed: forget its ConnectionBind waiting for another shard.
    pub(super) fn tcp_client_closed(&mut self, client: &ClientAddr) {
        self.tcp.remote_binds.remove(client);
    }

    fn bind_checks(&self, id: ConnectionId, user: &str) -> Result<(), Refusal> {
        let Some(c) = self.tcp.conns.get(&id) else {
            return Err(BadRequest::ConnectionId.into());
        };
        if c.state != State::Unbound {
            return Err(BadRequest::ConnectionId.into());
        }
        if self
            .allocations_by_client
            .get(&c.control)
            .is_none_or(|a| *a.user != *user)
        {
            return Err(Refusal::WrongCredentials);
        }
        Ok(())
    }

    /// Connect (RFC 6062 §5.2): 437 without a TCP allocation, 446 for a peer already
    /// connected or connecting, 403 for a peer the policy denies, 508 over the cap.
    pub(super) fn on_connect(
        &mut self,
        now: Instant,
        from: ClientAddr,
        req: &Parsed<'_>,
    ) -> Result<(), Refusal> {
        if !self.tcp.is_tcp(&from) {
            return Err(Refusal::AllocationMismatch);
        }
        let peers = self.checked_peers_for_connect(&from, req)?;
        let &[peer] = peers.as_slice() else {
            return Err(BadRequest::ChannelPeers.into());
        };
        let Some(a) = self.allocations_by_client.get(&from) else {
            return Err(Refusal::AllocationMismatch);
        };
        if !self.shared.policy.permits_for(&a.user, peer) {
            return Err(Refusal::ForbiddenPeer);
        }
        let Some(relay) = a.relay_for(&peer).map(|r| r.bound) else {
            return Err(Refusal::PeerFamilyMismatch);
        };
        let ids = self.tcp.by_control.get(&from).cloned().unwrap_or_default();
        if ids
            .iter()
            .any(|id| self.tcp.conns.get(id).is_some_and(|c| c.peer == peer))
        {
            return Err(Refusal::ConnectionAlreadyExists);
        }
        if ids.len() >= self.tcp.cfg.max_connections {
            return Err(Refusal::Capacity(Capacity::TcpConnections));
        }
        let id = self.new_connection_id();
        self.tcp.conns.insert(
            id,
            Conn {
                control: from,
                peer,
                state: State::Connecting {
                    tid: req.tid.0,
                    fingerprint: req.has_fingerprint,
                },
                deadline: None,
            },
        );
        if let Some(v) = self.tcp.by_control.get_mut(&from) {
            v.push(id);
        }
        self.tcp.set_deadline(id, Some(now + CONNECT_GIVE_UP));
        self.commands.push_back(Command::ConnectPeer {
            id,
            relay: RelayAddr(relay),
            peer: PeerAddr(peer),
        });
        Ok(())
    }

    fn checked_peers_for_connect(
        &self,
        from: &ClientAddr,
        req: &Parsed<'_>,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let mut peers = Vec::new();
        for v in req.get_all(ATTR_XOR_PEER_ADDRESS) {
            peers.push(super::wire::decode_xor_addr(v, &req.tid.0).ok_or(BadRequest::PeerAddress)?);
        }
        if peers.is_empty() {
            return Err(BadRequest::NoPeer.into());
        }
        let _ = from;
        Ok(peers)
    }

    /// The I/O layer's answer to [`Command::ConnectPeer`]. Returns whether to keep the
    /// connection (false: close it; the Connect was given up or its allocation is gone).
    pub fn peer_connected(&mut self, now: Instant, id: ConnectionId, ok: bool) -> bool {
        let Some(c) = self.tcp.conns.get(&id).copied() else {
            return false;
        };
        let State::Connecting { tid, fingerprint } = c.state else {
            return false;
        };
        let Some(key) = self.allocations_by_client.get(&c.control).map(|a| a.key) else {
            self.tcp.remove(id);
            return false;
        };
        let hdr = header(MSG_CONNECT_REQUEST, &tid);
        let Ok(req) = Parsed::parse(&hdr) else {
            return false;
        };
        if ok {
            if let Some(conn) = self.tcp.conns.get_mut(&id) {
                conn.state = State::Unbound;
            }
            self.tcp.set_deadline(id, Some(now + BIND_TIMEOUT));
            let mut r = Reply::success(&req);
            r.set_fingerprint(fingerprint);
            r.u32(ATTR_CONNECTION_ID, id.0);
            self.reply_signed(c.control, r, &key);
            true
        } else {
            self.tcp.remove(id);
            self.refuse_later(
                c.control,
                &req,
                fingerprint,
                &key,
                Refusal::ConnectionFailure,
            );
            false
        }
    }

    fn reply_signed(&mut self, to: ClientAddr, r: Reply, key: &Signer) {
        self.metrics.count_response(r.method_name(), r.code);
        let bytes = r.sign(key).finish(self.cfg.software.as_deref());
        self.transmits.push_back(Transmit { to, bytes });
    }

    fn refuse_later(
        &mut self,
        to: ClientAddr,
        req: &Parsed<'_>,
        fingerprint: bool,
        key: &Signer,
        why: Refusal,
    ) {
        self.metrics.count_refusal(&why);
        let mut r = Reply::refusal(req, &why);
        r.set_fingerprint(fingerprint);
        self.reply_signed(to, r, key);
    }

    /// A peer connected to the relayed address of `client`'s TCP allocation (RFC 6062 §5.3).
    /// Returns its CONNECTION-ID and sends the ConnectionAttempt indication, or `None`:
    /// close the connection (no such allocation, no permission, the policy denies the peer,
    /// or the allocation has its maximum of connections).
    pub fn peer_inbound(
        &mut self,
        now: Instant,
        client: ClientAddr,
        peer: PeerAddr,
    ) -> Option<ConnectionId> {
        let peer = peer.0;
        let ids = self.tcp.by_control.get(&client)?;
        if ids.len() >= self.tcp.cfg.max_connections {
            self.metrics
                .count_refusal(&Refusal::Capacity(Capacity::TcpConnections));
            return None;
        }
        let a = self.allocations_by_client.get(&client)?;
        if !a.permitted(&peer.ip(), now) || !self.shared.policy.permits_for(&a.user, peer) {
            self.metrics.count_refusal(&Refusal::ForbiddenPeer);
            return None;
        }
        let id = self.new_connection_id();
        self.tcp.conns.insert(
            id,
            Conn {
                control: client,
                peer,
                state: State::Unbound,
                deadline: None,
            },
        );
        if let Some(v) = self.tcp.by_control.get_mut(&client) {
            v.push(id);
        }
        self.tcp.set_deadline(id, Some(now + BIND_TIMEOUT));
        let tid = self.next_tid();
        let hdr = header(MSG_CONNECTION_ATTEMPT_INDICATION, &tid);
        let Ok(ind) = Parsed::parse(&hdr) else {
            return None;
        };
        let mut r = Reply::new(&ind, msg::CLASS_INDICATION);
        r.xor_addr(ATTR_XOR_PEER_ADDRESS, peer);
        r.u32(ATTR_CONNECTION_ID, id.0);
        let bytes = r.finish(None);
        self.transmits.push_back(Transmit { to: client, bytes });
        Some(id)
    }

    /// A peer connection (or the data connection spliced to it) ended.
    pub fn peer_closed(&mut self, _now: Instant, id: ConnectionId) {
        if let Some(c) = self.tcp.remove(id) {
            if let State::Bound(data) = c.state {
                self.commands.push_back(Command::CloseClient(data));
            }
        }
    }

    /// ConnectionBind on a new client connection (RFC 6062 §5.4), authenticated by the
    /// dispatcher: 400 over UDP, on a connection with an allocation, or for an unknown or
    /// already bound CONNECTION-ID; 441 for another user's connection.
    pub(super) fn on_connection_bind(
        &mut self,
        from: ClientAddr,
        req: &Parsed<'_>,
        user: &str,
        key: &Signer,
    ) -> Result<bool, Refusal> {
        if !from.transport.is_stream()
            || self.allocations_by_client.contains_key(&from)
            || self.pending_by_client.contains_key(&from)
        {
            return Err(BadRequest::ConnectionBindConnection.into());
        }
        let id = match req.get(ATTR_CONNECTION_ID) {
            Some(&[a, b, c, d]) => ConnectionId(u32::from_be_bytes([a, b, c, d])),
            _ => return Err(BadRequest::ConnectionId.into()),
        };
        if !self.own_shard(id) {
            // Another shard's connection: ask it (answered in `peer_claimed`).
            if self.tcp.remote_binds.contains_key(&from) {
                return Err(BadRequest::ConnectionId.into());
            }
            self.tcp.remote_binds.insert(
                from,
                RemoteBind {
                    id,
                    tid: req.tid.0,
                    fingerprint: req.has_fingerprint,
                    key: *key,
                },
            );
            self.commands.push_back(Command::ClaimPeer {
                id,
                user: user.to_string(),
                data: from,
            });
            return Ok(false);
        }
        self.bind_checks(id, user)?;
        if let Some(conn) = self.tcp.conns.get_mut(&id) {
            conn.state = State::Bound(from);
        }
        self.tcp.set_deadline(id, None);
        self.commands
            .push_back(Command::SpliceData { id, data: from });
        Ok(true)
    }

    /// Expire Connects never answered and connections never bound.
    pub(super) fn tcp_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.tcp.timers.first() {
            if at > now {
                break;
            }
            self.tcp.timers.pop_first();
            if let Some(c) = self.tcp.conns.get_mut(&id) {
                c.deadline = None;
            }
            let Some(c) = self.tcp.remove(id) else {
                continue;
            };
            self.commands.push_back(Command::ClosePeer(id));
            if let State::Connecting { tid, fingerprint } = c.state {
                let key = self.allocations_by_client.get(&c.control).map(|a| a.key);
                let hdr = header(MSG_CONNECT_REQUEST, &tid);
                if let (Some(key), Ok(req)) = (key, Parsed::parse(&hdr)) {
                    self.refuse_later(
                        c.control,
                        &req,
                        fingerprint,
                        &key,
                        Refusal::ConnectionFailure,
                    );
                }
            }
        }
    }
}
