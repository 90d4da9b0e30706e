//! The route table: one hash lookup per relayed packet (issue 12 item 3), and the table a
//! kernel fast path (XDP, issue 13) mirrors through [`Engine::poll_route_change`].
//!
//! The allocations (`Allocation::permissions`, `channels_by_number`, `channels_by_peer`)
//! stay the authority; this table is derived from them and kept in step by the engine on
//! every change (ChannelBind new and refresh, CreatePermission, channel and permission expiry
//! in `handle_timeout`, Refresh(0), `kill_session`/`kill_user`, `client_closed`,
//! `set_shared`, allocation expiry). Three kinds of route:
//!
//! - **Forward** `(client, channel) -> (relay, peer)`: ChannelData from the client. Live
//!   while the channel is (as before: a channel relays to its peer until it expires).
//! - **Reverse** `(relay, peer) -> (client, channel)`: a datagram from a channel's peer is
//!   sent as ChannelData. Exists while the channel *and* its peer IP's permission do; expires
//!   at the earlier of the two.
//! - **Permission** `(relay, peer IP) -> client`: any other datagram from a permitted IP is
//!   sent as a Data indication, and a Send indication to it is relayed. Expires with the
//!   permission.
//!
//! Each entry carries its expiry, so the per-packet check is one lookup and one time
//! comparison; expired entries are removed at the timer tick of the allocation, which is
//! never later than the earliest expiry among its routes (`Allocation::next_deadline`).
//! A Refresh that keeps the allocation changes no route (routes carry the channel's and the
//! permission's expiry); the allocation's own expiry removes them all at its tick. Draining
//! changes none either: existing allocations carry on.
//!
//! Permission routes are keyed by IP, not by (relay, peer) like channels: a permission
//! covers every port of its IP, so a (relay, peer) key for it would need the port in
//! advance. A peer datagram without a live channel route costs a second lookup.
//!
//! **Policy.** A channel's peer is a whole address, checked by the whole policy
//! (`permits_for`) at ChannelBind, and the policy's answer for an address cannot change until
//! a reload, which prunes (`set_shared`): so channel routes carry no per-packet policy check.
//! Permission routes are per IP while the port varies per packet, so Send and Data
//! indications still ask `permits_port_for` per packet (port 0, the server's own services).
//!
//! **Counters.** Per-allocation traffic counters live in a slab here, indexed by the
//! allocation's [`Slot`] that every route carries: counting is an array index, not a second
//! lookup, and stays exact for the sessions API, usage records and metrics.
//!
//! **Hasher.** The maps use foldhash (`foldhash::fast::RandomState`, hashbrown's own default
//! hasher, already in the dependency tree): several times cheaper than SipHash on these
//! small keys, and seeded per map at random, so key sets cannot be precomputed to collide;
//! inserts take an authenticated request and are bounded by the quotas.

#![deny(clippy::indexing_slicing)]

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::allocation::{Allocation, Counters};
use super::control::ChannelNumber;
use super::{ClientAddr, Engine, PeerAddr, RelayAddr, RelayHandle};

/// A hash map with the route table's hasher (see the module docs).
pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A [`FastMap`] that costs one pointer while empty (an idle allocation's permissions and
/// channels): the map is boxed on the first insert and dropped again when it empties.
/// Only the methods the engine uses.
#[derive(Debug)]
pub struct LazyMap<K, V>(Option<Box<FastMap<K, V>>>);

impl<K, V> Default for LazyMap<K, V> {
    fn default() -> Self {
        LazyMap(None)
    }
}

impl<K: std::hash::Hash + Eq, V> LazyMap<K, V> {
    /// As `HashMap::get`.
    pub fn get(&self, k: &K) -> Option<&V> {
        self.0.as_ref()?.get(k)
    }
    /// As `HashMap::get_mut`.
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.0.as_mut()?.get_mut(k)
    }
    /// As `HashMap::contains_key`.
    pub fn contains_key(&self, k: &K) -> bool {
        self.get(k).is_some()
    }
    /// As `HashMap::insert` (boxes the map on the first entry).
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.0.get_or_insert_with(Default::default).insert(k, v)
    }
    /// As `HashMap::remove` (drops the map when it empties).
    pub fn remove(&mut self, k: &K) -> Option<V> {
        let m = self.0.as_mut()?;
        let v = m.remove(k);
        if m.is_empty() {
            self.0 = None;
        }
        v
    }
    /// As `HashMap::len`.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }
    /// As `HashMap::is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// As `HashMap::retain` (drops the map when it empties).
    pub fn retain(&mut self, f: impl FnMut(&K, &mut V) -> bool) {
        if let Some(m) = &mut self.0 {
            m.retain(f);
            if m.is_empty() {
                self.0 = None;
            }
        }
    }
    /// As `HashMap::iter`.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().flat_map(|m| m.iter())
    }
    /// As `HashMap::keys`.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }
    /// As `HashMap::values`.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<'a, K: std::hash::Hash + Eq, V> IntoIterator for &'a LazyMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Flatten<std::option::IntoIter<&'a FastMap<K, V>>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.as_deref().into_iter().flatten()
    }
}

/// At most this many route changes wait in the queue ([`Engine::poll_route_change`]); one
/// more replaces them all with a single [`RouteChange::Reset`].
pub const ROUTE_EVENTS_MAX: usize = 65_536;

/// An allocation's place in the route table's counter slab.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(u32);

impl Slot {
    /// The slab index (dense: freed slots are reused), for per-slot state kept elsewhere.
    pub(super) fn index(self) -> usize {
        self.0 as usize
    }

    #[cfg(test)]
    pub(super) fn from_index(i: u32) -> Self {
        Slot(i)
    }
}

/// What a route is looked up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKey {
    /// ChannelData from `client` on `channel`.
    Forward {
        /// The client's 5-tuple.
        client: ClientAddr,
        /// The channel number.
        channel: ChannelNumber,
    },
    /// A datagram from `peer` on the relay socket bound at `relay`.
    Reverse {
        /// The relay socket.
        relay: RelayAddr,
        /// The peer's address.
        peer: PeerAddr,
    },
    /// A datagram from any port of `ip` on the relay socket bound at `relay`.
    Permission {
        /// The relay socket.
        relay: RelayAddr,
        /// The peer's IP.
        ip: IpAddr,
    },
}

/// One route: its key, where it leads, and when it expires (the packet is dropped at or after
/// `expires`; the route is removed at the next timer tick).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// ChannelData from `client` on `channel`: send its payload from `relay` to `peer`.
    Forward {
        /// The client's 5-tuple.
        client: ClientAddr,
        /// The channel number.
        channel: ChannelNumber,
        /// The relay socket to send from.
        relay: RelayAddr,
        /// Where to send.
        peer: PeerAddr,
        /// The channel's expiry.
        expires: Instant,
    },
    /// A datagram from `peer` on `relay`: send it to `client` as ChannelData on `channel`.
    Reverse {
        /// The relay socket it arrives on.
        relay: RelayAddr,
        /// Its source.
        peer: PeerAddr,
        /// Where it goes.
        client: ClientAddr,
        /// The channel number of the ChannelData header.
        channel: ChannelNumber,
        /// The earlier of the channel's and its peer IP's permission's expiry.
        expires: Instant,
    },
    /// A datagram from any port of `ip` on `relay` (no channel for that port): send it to
    /// `client` as a Data indication, if the policy's per-port check allows the port. A Send
    /// indication from `client` to `ip` goes out on `relay` under the same condition.
    Permission {
        /// The relay socket.
        relay: RelayAddr,
        /// The permitted IP.
        ip: IpAddr,
        /// The allocation's client.
        client: ClientAddr,
        /// The permission's expiry.
        expires: Instant,
    },
}

impl Route {
    /// What this route is looked up by.
    pub fn key(&self) -> RouteKey {
        match *self {
            Route::Forward {
                client, channel, ..
            } => RouteKey::Forward { client, channel },
            Route::Reverse { relay, peer, .. } => RouteKey::Reverse { relay, peer },
            Route::Permission { relay, ip, .. } => RouteKey::Permission { relay, ip },
        }
    }
    /// When it expires.
    pub fn expires(&self) -> Instant {
        match *self {
            Route::Forward { expires, .. }
            | Route::Reverse { expires, .. }
            | Route::Permission { expires, .. } => expires,
        }
    }
    /// The client of the allocation it belongs to.
    pub fn client(&self) -> ClientAddr {
        match *self {
            Route::Forward { client, .. }
            | Route::Reverse { client, .. }
            | Route::Permission { client, .. } => client,
        }
    }
}

/// A change of the route table, for a mirror of it ([`Engine::set_route_events`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// A new route, or new values (a refreshed expiry) for the route of the same key.
    Added(Route),
    /// The route of this key is gone.
    Removed(RouteKey),
    /// The queue overflowed (or events were just turned on): clear the mirror and load
    /// [`Engine::routes`], then apply the changes that follow.
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fwd {
    relay: RelayAddr,
    /// The I/O layer's handle of `relay`, for [`ToPeer`](super::ToPeer).
    handle: RelayHandle,
    peer: PeerAddr,
    expires: Instant,
    slot: Slot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rev {
    client: ClientAddr,
    channel: ChannelNumber,
    expires: Instant,
    slot: Slot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Perm {
    client: ClientAddr,
    expires: Instant,
    slot: Slot,
}

/// One allocation's entry of the counter slab.
#[derive(Debug, Default)]
struct SlotEntry {
    stats: Counters,
    /// The allocation's principal, for the per-packet port check of permission routes
    /// (the allocation's own string, shared).
    user: std::sync::Arc<str>,
}

/// One shard's routes, and its allocations' traffic counters (see the module docs).
pub(super) struct RouteTable {
    forward: FastMap<(ClientAddr, ChannelNumber), Fwd>,
    reverse: FastMap<(RelayAddr, PeerAddr), Rev>,
    permission: FastMap<(RelayAddr, IpAddr), Perm>,
    slots: Vec<SlotEntry>,
    free: Vec<u32>,
    /// `Some` while route events are on ([`Engine::set_route_events`]).
    pub(super) events: Option<VecDeque<RouteChange>>,
    /// [`ROUTE_EVENTS_MAX`]; lowered by tests.
    pub(super) events_max: usize,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            forward: FastMap::default(),
            reverse: FastMap::default(),
            permission: FastMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            events: None,
            events_max: ROUTE_EVENTS_MAX,
        }
    }
}

impl RouteTable {
    /// A counter slot for a new allocation of `user`.
    pub(super) fn open(&mut self, user: &std::sync::Arc<str>) -> Slot {
        let entry = SlotEntry {
            stats: Counters::default(),
            user: user.clone(),
        };
        if let Some(i) = self.free.pop() {
            if let Some(e) = self.slots.get_mut(i as usize) {
                *e = entry;
                return Slot(i);
            }
        }
        self.slots.push(entry);
        Slot((self.slots.len() - 1) as u32)
    }

    /// Give an ended allocation's slot back (its routes were removed first).
    pub(super) fn close(&mut self, slot: Slot) {
        if let Some(e) = self.slots.get_mut(slot.0 as usize) {
            *e = SlotEntry::default();
            self.free.push(slot.0);
        }
    }

    /// The traffic counters of the allocation in `slot`.
    pub(super) fn stats(&self, slot: Slot) -> Counters {
        self.slots
            .get(slot.0 as usize)
            .map(|e| e.stats)
            .unwrap_or_default()
    }

    fn user(&self, slot: Slot) -> &str {
        self.slots.get(slot.0 as usize).map_or("", |e| &e.user)
    }

    pub(super) fn count_to_peer(&mut self, slot: Slot, len: usize) {
        if let Some(e) = self.slots.get_mut(slot.0 as usize) {
            e.stats.packets_to_peer += 1;
            e.stats.bytes_to_peer += len as u64;
        }
    }

    fn count_to_client(&mut self, slot: Slot, len: usize) {
        if let Some(e) = self.slots.get_mut(slot.0 as usize) {
            e.stats.packets_to_client += 1;
            e.stats.bytes_to_client += len as u64;
        }
    }

    /// ChannelData from `client` on `channel`: where it goes and the allocation's slot (the
    /// caller counts it with [`count_to_peer`](Self::count_to_peer)), or `None` (no live
    /// channel).
    pub(super) fn channel_out(
        &self,
        now: Instant,
        client: ClientAddr,
        channel: ChannelNumber,
    ) -> Option<(RelayAddr, RelayHandle, PeerAddr, Slot)> {
        let f = self.forward.get(&(client, channel))?;
        (f.expires > now).then_some((f.relay, f.handle, f.peer, f.slot))
    }

    /// The live channel of a datagram from `peer` on `relay` for `client`, and its slot.
    pub(super) fn channel_in(
        &self,
        now: Instant,
        relay: RelayAddr,
        peer: PeerAddr,
        client: ClientAddr,
    ) -> Option<(ChannelNumber, Slot)> {
        let r = self.reverse.get(&(relay, peer))?;
        (r.client == client && r.expires > now).then_some((r.channel, r.slot))
    }

    /// The slot and user of `client`'s live permission for `ip` on `relay`.
    pub(super) fn permission_in(
        &self,
        now: Instant,
        relay: RelayAddr,
        ip: IpAddr,
        client: ClientAddr,
    ) -> Option<(Slot, &str)> {
        let p = self.permission.get(&(relay, ip))?;
        (p.client == client && p.expires > now).then(|| (p.slot, self.user(p.slot)))
    }

    /// Add traffic relayed outside the engine (a kernel fast path) to `slot`'s counters.
    fn add_counts(&mut self, slot: Slot, c: Counters) {
        if let Some(e) = self.slots.get_mut(slot.0 as usize) {
            e.stats.packets_to_peer += c.packets_to_peer;
            e.stats.bytes_to_peer += c.bytes_to_peer;
            e.stats.packets_to_client += c.packets_to_client;
            e.stats.bytes_to_client += c.bytes_to_client;
        }
    }

    /// Count a datagram sent to a client on `slot`'s allocation.
    pub(super) fn counted_to_client(&mut self, slot: Slot, len: usize) {
        self.count_to_client(slot, len);
    }

    fn emit(&mut self, change: RouteChange) {
        let Some(q) = &mut self.events else { return };
        if q.len() >= self.events_max {
            q.clear();
            q.push_back(RouteChange::Reset);
        }
        q.push_back(change);
    }

    fn set_forward(&mut self, client: ClientAddr, channel: ChannelNumber, want: Option<Fwd>) {
        let key = (client, channel);
        let changed = match want {
            Some(v) => self.forward.insert(key, v) != Some(v),
            None => self.forward.remove(&key).is_some(),
        };
        if changed {
            self.emit(match want {
                Some(f) => RouteChange::Added(Route::Forward {
                    client,
                    channel,
                    relay: f.relay,
                    peer: f.peer,
                    expires: f.expires,
                }),
                None => RouteChange::Removed(RouteKey::Forward { client, channel }),
            });
        }
    }

    fn set_reverse(&mut self, relay: RelayAddr, peer: PeerAddr, slot: Slot, want: Option<Rev>) {
        let key = (relay, peer);
        let changed = match want {
            Some(v) => self.reverse.insert(key, v) != Some(v),
            // Only the owner's entry (a relay address is one allocation's while it lives).
            None => self.reverse.remove_if_slot(&key, slot),
        };
        if changed {
            self.emit(match want {
                Some(r) => RouteChange::Added(Route::Reverse {
                    relay,
                    peer,
                    client: r.client,
                    channel: r.channel,
                    expires: r.expires,
                }),
                None => RouteChange::Removed(RouteKey::Reverse { relay, peer }),
            });
        }
    }

    fn set_permission(&mut self, relay: RelayAddr, ip: IpAddr, slot: Slot, want: Option<Perm>) {
        let key = (relay, ip);
        let changed = match want {
            Some(v) => self.permission.insert(key, v) != Some(v),
            None => self.permission.remove_if_slot(&key, slot),
        };
        if changed {
            self.emit(match want {
                Some(p) => RouteChange::Added(Route::Permission {
                    relay,
                    ip,
                    client: p.client,
                    expires: p.expires,
                }),
                None => RouteChange::Removed(RouteKey::Permission { relay, ip }),
            });
        }
    }

    fn len(&self) -> usize {
        self.forward.len() + self.reverse.len() + self.permission.len()
    }

    fn all(&self) -> Vec<Route> {
        let mut v = Vec::with_capacity(self.len());
        v.extend(
            self.forward
                .iter()
                .map(|(&(client, channel), f)| Route::Forward {
                    client,
                    channel,
                    relay: f.relay,
                    peer: f.peer,
                    expires: f.expires,
                }),
        );
        v.extend(
            self.reverse
                .iter()
                .map(|(&(relay, peer), r)| Route::Reverse {
                    relay,
                    peer,
                    client: r.client,
                    channel: r.channel,
                    expires: r.expires,
                }),
        );
        v.extend(
            self.permission
                .iter()
                .map(|(&(relay, ip), p)| Route::Permission {
                    relay,
                    ip,
                    client: p.client,
                    expires: p.expires,
                }),
        );
        v.sort_unstable();
        v
    }
}

/// Removal that leaves another slot's entry alone.
trait RemoveIfSlot<K> {
    fn remove_if_slot(&mut self, key: &K, slot: Slot) -> bool;
}

macro_rules! remove_if_slot {
    ($v:ty) => {
        impl<K: std::hash::Hash + Eq> RemoveIfSlot<K> for FastMap<K, $v> {
            fn remove_if_slot(&mut self, key: &K, slot: Slot) -> bool {
                if self.get(key).is_some_and(|e| e.slot == slot) {
                    self.remove(key);
                    true
                } else {
                    false
                }
            }
        }
    };
}
remove_if_slot!(Rev);
remove_if_slot!(Perm);

fn relay_of(a: &Allocation, peer_is_v4: bool) -> Option<RelayAddr> {
    relay_and_handle(a, peer_is_v4).map(|(r, _)| r)
}

fn relay_and_handle(a: &Allocation, peer_is_v4: bool) -> Option<(RelayAddr, RelayHandle)> {
    a.relays
        .iter()
        .find(|r| r.bound.is_ipv4() == peer_is_v4)
        .map(|r| (RelayAddr(r.bound), r.handle))
}

/// The reverse route `a` should have for its channel to `peer`, if any.
fn reverse_of(a: &Allocation, client: ClientAddr, peer: SocketAddr) -> Option<Rev> {
    let channel = *a.channels_by_peer.get(&peer)?;
    let ch = a.channels_by_number.get(&channel)?;
    let perm = a.permissions.get(&peer.ip())?;
    Some(Rev {
        client,
        channel,
        expires: ch.expires.min(*perm),
        slot: a.slot,
    })
}

impl Engine {
    /// Bring the permission route for `ip` and the reverse routes of `client`'s channels to
    /// `ip` in step with its allocation (after the permission was added, refreshed or
    /// removed).
    pub(super) fn sync_permission(&mut self, client: ClientAddr, ip: IpAddr) {
        let Some(a) = self.allocations_by_client.get(&client) else {
            return;
        };
        let Some(relay) = relay_of(a, ip.is_ipv4()) else {
            return;
        };
        let want = a.permissions.get(&ip).map(|&expires| Perm {
            client,
            expires,
            slot: a.slot,
        });
        self.routes.set_permission(relay, ip, a.slot, want);
        for ch in a.channels_by_number.values().filter(|c| c.peer.ip() == ip) {
            let want = reverse_of(a, client, ch.peer);
            self.routes
                .set_reverse(relay, PeerAddr(ch.peer), a.slot, want);
        }
    }

    /// Bring the routes of `client`'s channel `channel` (to `peer`) in step with its
    /// allocation (after the channel was bound, refreshed or removed).
    pub(super) fn sync_channel(
        &mut self,
        client: ClientAddr,
        channel: ChannelNumber,
        peer: SocketAddr,
    ) {
        let Some(a) = self.allocations_by_client.get(&client) else {
            return;
        };
        let Some(relay) = relay_of(a, peer.is_ipv4()) else {
            return;
        };
        let fwd = a.channels_by_number.get(&channel).and_then(|c| {
            let (relay, handle) = relay_and_handle(a, c.peer.is_ipv4())?;
            Some(Fwd {
                relay,
                handle,
                peer: PeerAddr(c.peer),
                expires: c.expires,
                slot: a.slot,
            })
        });
        self.routes.set_forward(client, channel, fwd);
        let rev = reverse_of(a, client, peer);
        self.routes.set_reverse(relay, PeerAddr(peer), a.slot, rev);
    }

    /// Remove every route of `a`, `client`'s allocation that was just taken out of the
    /// allocation map, and give its slot back.
    pub(super) fn drop_routes(&mut self, client: ClientAddr, a: &Allocation) {
        for (&channel, ch) in &a.channels_by_number {
            self.routes.set_forward(client, channel, None);
            if let Some(relay) = relay_of(a, ch.peer.is_ipv4()) {
                self.routes
                    .set_reverse(relay, PeerAddr(ch.peer), a.slot, None);
            }
        }
        for ip in a.permissions.keys() {
            if let Some(relay) = relay_of(a, ip.is_ipv4()) {
                self.routes.set_permission(relay, *ip, a.slot, None);
            }
        }
        self.routes.close(a.slot);
    }

    /// Queue route changes for [`Engine::poll_route_change`] (`true`), or stop and drop the
    /// queue (`false`, the default: nothing grows when no one drains it). Turning them on
    /// queues a [`RouteChange::Reset`] first: load [`Engine::routes`], then apply what
    /// follows. The queue holds at most [`ROUTE_EVENTS_MAX`] changes; one more replaces them
    /// with a single `Reset`.
    ///
    /// Timing: a route is removed (and `Removed` queued) no later than the
    /// [`handle_timeout`](Engine::handle_timeout) tick at which its channel or permission
    /// expires ([`poll_timeout`](Engine::poll_timeout) is never later than any route's
    /// expiry); until then the engine itself drops packets on an expired route, so a mirror
    /// that does not compare expiry relays at most until that tick.
    pub fn set_route_events(&mut self, on: bool) {
        match (on, self.routes.events.is_some()) {
            (true, false) => self.routes.events = Some(VecDeque::from([RouteChange::Reset])),
            (false, _) => self.routes.events = None,
            (true, true) => {}
        }
    }

    /// The next route change, if route events are on ([`Engine::set_route_events`]).
    pub fn poll_route_change(&mut self) -> Option<RouteChange> {
        self.routes.events.as_mut()?.pop_front()
    }

    /// Fold traffic that a fast path relayed for `client`'s routes (packets and payload
    /// bytes each way) into its allocation, so the session API, usage records, lifecycle
    /// logs and metrics show the same totals as without it. An allocation that has already
    /// ended adds them to the ended allocations' traffic (metrics).
    pub fn add_fastpath_counts(
        &mut self,
        client: &ClientAddr,
        to_peer: (u64, u64),
        to_client: (u64, u64),
    ) {
        let c = Counters {
            packets_to_peer: to_peer.0,
            bytes_to_peer: to_peer.1,
            packets_to_client: to_client.0,
            bytes_to_client: to_client.1,
        };
        match self.allocations_by_client.get(client) {
            Some(a) => self.routes.add_counts(a.slot, c),
            None => self.metrics.add_ended_traffic(client.transport, &c),
        }
    }

    /// Datagrams the fast path dropped over `[policy] max_bps_per_allocation`
    /// ([to_peer, to_client]), folded in as [`add_fastpath_counts`](Self::add_fastpath_counts)
    /// folds what it relayed: `/metrics` and the session API count them as the engine's own.
    pub fn add_fastpath_drops(&mut self, client: &ClientAddr, dropped: [u64; 2]) {
        for (n, d) in self.metrics.bandwidth_dropped.iter_mut().zip(dropped) {
            *n += d;
        }
        if let Some(a) = self.allocations_by_client.get(client) {
            self.bandwidth.add_dropped(a.slot, dropped);
        }
    }

    /// Every route, sorted (a mirror's starting point after [`RouteChange::Reset`]).
    pub fn routes(&self) -> Vec<Route> {
        self.routes.all()
    }

    /// How many routes the table holds.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// The routes the allocations' channels and permissions call for, computed from them
    /// alone: [`Engine::routes`] must equal this after every input (tests, fuzz targets).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn derived_routes(&self) -> Vec<Route> {
        let mut v = Vec::new();
        for (&client, a) in &self.allocations_by_client {
            for (&channel, ch) in &a.channels_by_number {
                let Some(relay) = relay_of(a, ch.peer.is_ipv4()) else {
                    continue;
                };
                let peer = PeerAddr(ch.peer);
                v.push(Route::Forward {
                    client,
                    channel,
                    relay,
                    peer,
                    expires: ch.expires,
                });
                if let Some(perm) = a.permissions.get(&ch.peer.ip()) {
                    v.push(Route::Reverse {
                        relay,
                        peer,
                        client,
                        channel,
                        expires: ch.expires.min(*perm),
                    });
                }
            }
            for (&ip, &expires) in &a.permissions {
                if let Some(relay) = relay_of(a, ip.is_ipv4()) {
                    v.push(Route::Permission {
                        relay,
                        ip,
                        client,
                        expires,
                    });
                }
            }
        }
        v.sort_unstable();
        v
    }
}
