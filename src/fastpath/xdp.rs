//! The BPF side (feature `xdp`): the object build.rs compiled from bpf/turnd_xdp.c, loaded
//! and attached with aya; the maps' Rust views; one shard's mirror of its routes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use aya::maps::{Array, DevMapHash, HashMap as BpfHash, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpFlags};
use aya::{Ebpf, Pod};
use turnd_proto::engine::{ClientAddr, Engine, Route, RouteChange, RouteKey, Transport};

use super::FastPathStats;
use crate::config::{Config, XdpMode};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/turnd_xdp.o"));

/// The program's route capacity (`MAX_ROUTES` in bpf/turnd_xdp.c; both directions).
const MAX_ROUTES: u32 = 131_072;

/// The burst the cap lets through at once, as time at the capped rate (GCRA's tolerance):
/// the engine's (a quarter second of the rate, at least 1,500 bytes), plus the packet that
/// crosses it, so a route is capped alike in the kernel and in user space.
fn cap_burst_ns(bps: u64) -> u64 {
    if bps == 0 {
        return 0;
    }
    let bytes = u128::from((bps / 8 / 4).max(1500));
    u64::try_from(bytes * 8_000_000_000 / u128::from(bps)).unwrap_or(u64::MAX)
}

// The map layouts of bpf/turnd_xdp.c: addresses as 16 bytes (IPv4 v4-mapped), addresses and
// ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
    channel: u16,
    pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Val {
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
    channel: u16,
    pad: u16,
    slot: u32,
    pad2: u32,
    tat: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counter {
    packets: u64,
    bytes: u64,
    /// Datagrams dropped over `[policy] max_bps_per_allocation`.
    drops: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Cap {
    bps: u64,
    burst_ns: u64,
}

// SAFETY: plain `repr(C)` structs of integers without implicit padding (sizes 40, 56, 24,
// 16), as `Pod` requires.
unsafe impl Pod for Key {}
unsafe impl Pod for Val {}
unsafe impl Pod for Counter {}
unsafe impl Pod for Cap {}

/// An address with a port of its own (not unspecified, not port 0) as the program holds it:
/// 16 bytes, IPv4 v4-mapped, and the port in network byte order.
fn wire(a: SocketAddr) -> Option<([u32; 4], u16)> {
    if a.ip().is_unspecified() || a.port() == 0 {
        return None;
    }
    let v6 = match a.ip() {
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    };
    let o = v6.octets();
    let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    Some(([w(0), w(4), w(8), w(12)], a.port().to_be()))
}

/// The route counters, mapped from the kernel (`TURND_COUNTS`, `BPF_F_MMAPABLE`): the
/// program adds to them atomically, turnd reads them without a syscall.
struct Counts {
    ptr: *mut Counter,
    bytes: usize,
    // The mapping outlives the fd's use, but keep the map alive with it.
    _map: MapData,
}

// SAFETY: the mapping is shared memory of fixed size, only ever accessed through atomics.
unsafe impl Send for Counts {}
unsafe impl Sync for Counts {}

impl Counts {
    fn map(map: MapData) -> Result<Counts, String> {
        let bytes = MAX_ROUTES as usize * std::mem::size_of::<Counter>();
        // SAFETY: maps the array map's values (the kernel checks the size and the flag);
        // the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "mapping TURND_COUNTS: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Counts {
            ptr: ptr.cast(),
            bytes,
            _map: map,
        })
    }

    fn words(&self, slot: u32) -> Option<(&AtomicU64, &AtomicU64, &AtomicU64)> {
        if slot >= MAX_ROUTES {
            return None;
        }
        // SAFETY: in bounds (checked), 8-byte aligned (page-aligned mapping of 24-byte
        // values), and only accessed atomically on both sides.
        unsafe {
            let c = self.ptr.add(slot as usize);
            Some((
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*c).packets)),
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*c).bytes)),
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*c).drops)),
            ))
        }
    }

    fn get(&self, slot: u32) -> Counter {
        self.words(slot)
            .map_or_else(Counter::default, |(p, b, d)| Counter {
                packets: p.load(Ordering::Relaxed),
                bytes: b.load(Ordering::Relaxed),
                drops: d.load(Ordering::Relaxed),
            })
    }

    fn zero(&self, slot: u32) {
        if let Some((p, b, d)) = self.words(slot) {
            p.store(0, Ordering::Relaxed);
            b.store(0, Ordering::Relaxed);
            d.store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for Counts {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Counts::map`, unmapped once.
        unsafe {
            libc::munmap(self.ptr.cast(), self.bytes);
        }
    }
}

struct Maps {
    routes: BpfHash<MapData, Key, Val>,
    actions: PerCpuArray<MapData, u64>,
    cap: Array<MapData, Cap>,
    /// Counter slots no route holds, the longest free first (a slot is reused as late as
    /// possible: a CPU still finishing a packet of the route that had it adds to nothing new).
    free: VecDeque<u32>,
}

/// The program, attached, and its maps (route updates are control-plane only: a mutex).
pub(crate) struct Loaded {
    maps: Mutex<Maps>,
    counts: Counts,
    interfaces: u64,
    /// Whether IPv6 routes go into the kernel (`net.ipv6.conf.<if>.forwarding` on for all).
    v6: bool,
    // Last: dropping it detaches the program (aya's links are owned by the program).
    _ebpf: Mutex<Ebpf>,
}

fn take<T: TryFrom<aya::maps::Map>>(ebpf: &mut Ebpf, name: &str) -> Result<T, String>
where
    T::Error: std::fmt::Display,
{
    let m = ebpf
        .take_map(name)
        .ok_or_else(|| format!("the object has no map {name}"))?;
    T::try_from(m).map_err(|e| format!("map {name}: {e}"))
}

fn ifindex(name: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("{name:?}: not a name"))?;
    // SAFETY: a NUL-terminated string; the call only reads it.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!(
            "interface {name:?}: {}",
            std::io::Error::last_os_error()
        )),
        i => Ok(i),
    }
}

fn forwarding(family: &str, name: &str) -> Result<bool, String> {
    let sysctl = format!("/proc/sys/net/{family}/conf/{name}/forwarding");
    match std::fs::read_to_string(&sysctl) {
        Ok(v) => Ok(v.trim() == "1"),
        Err(e) => Err(format!("{sysctl}: {e}")),
    }
}

impl Loaded {
    pub(crate) fn load(config: &Config) -> Result<Loaded, String> {
        // Routes need concrete addresses: the kernel sees the packet's own addresses.
        let listens = |v6: bool| {
            config
                .listen
                .udp
                .iter()
                .any(|a| a.is_ipv6() == v6 && !a.ip().is_unspecified())
        };
        let relay4 = config.relay.ipv4.is_some_and(|ip| !ip.is_unspecified());
        let relay6 = config.relay.ipv6.is_some_and(|ip| !ip.is_unspecified());
        let v4_ok = listens(false) && relay4;
        let v6_ok = listens(true) && relay6;
        if !(v4_ok || v6_ok) {
            return Err(
                "no family has both a listen.udp address and a relay address of its own \
                 (0.0.0.0 and :: are not one): the fast path matches packets by the listener \
                 and relay addresses"
                    .into(),
            );
        }
        let mut ifaces = Vec::new();
        let mut v6 = v6_ok;
        for name in &config.fastpath.xdp {
            let index = ifindex(name)?;
            // bpf_fib_lookup (the next hop and its MAC) answers only where forwarding is on.
            if !forwarding("ipv4", name)? {
                return Err(format!(
                    "net.ipv4.conf.{name}.forwarding is 0 (the program's next-hop lookup, \
                     bpf_fib_lookup, needs it on)"
                ));
            }
            if v6 && !forwarding("ipv6", name)? {
                tracing::warn!(
                    interface = %name,
                    "kernel fast path: net.ipv6.conf.{name}.forwarding is 0, IPv6 stays in \
                     user space (bpf_fib_lookup needs it on)"
                );
                v6 = false;
            }
            ifaces.push((name.as_str(), index));
        }
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| {
            format!("loading the BPF object: {e} (needs CAP_BPF and CAP_PERFMON, or root)")
        })?;
        let (maps, counts) = Self::maps_of(&mut ebpf)?;
        let mut devmap: DevMapHash<MapData> = take(&mut ebpf, "TURND_IFACES")?;
        for &(name, index) in &ifaces {
            devmap
                .insert(index, index, None, 0)
                .map_err(|e| format!("interface {name}: devmap: {e}"))?;
        }
        let prog: &mut Xdp = ebpf
            .program_mut("turnd_xdp")
            .ok_or("the object has no program turnd_xdp")?
            .try_into()
            .map_err(|e| format!("turnd_xdp: {e}"))?;
        prog.load().map_err(|e| {
            format!("the kernel refused the program: {e} (needs CAP_BPF and CAP_PERFMON, or root)")
        })?;
        let flags = match config.fastpath.xdp_mode {
            XdpMode::Native => XdpFlags::DRV_MODE,
            XdpMode::Generic => XdpFlags::SKB_MODE,
        };
        for &(name, index) in &ifaces {
            prog.attach_to_if_index(index, flags).map_err(|e| {
                format!(
                    "attaching to {name} in {:?} mode: {e} (needs CAP_NET_ADMIN; a driver without \
                     native XDP needs xdp_mode = \"generic\")",
                    config.fastpath.xdp_mode
                )
            })?;
        }
        // The devmap is referenced by the program; keep our handle only through `ebpf`.
        drop(devmap);
        Ok(Loaded {
            maps: Mutex::new(maps),
            counts,
            interfaces: ifaces.len() as u64,
            v6,
            _ebpf: Mutex::new(ebpf),
        })
    }

    fn maps_of(ebpf: &mut Ebpf) -> Result<(Maps, Counts), String> {
        let counts: MapData = match ebpf.take_map("TURND_COUNTS") {
            Some(aya::maps::Map::Array(m)) => m,
            _ => return Err("the object has no array map TURND_COUNTS".into()),
        };
        let maps = Maps {
            routes: take(ebpf, "TURND_ROUTES")?,
            actions: take(ebpf, "TURND_ACTIONS")?,
            cap: take(ebpf, "TURND_CAP")?,
            free: (0..MAX_ROUTES).collect(),
        };
        Ok((maps, Counts::map(counts)?))
    }

    fn maps(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stats(&self) -> FastPathStats {
        let maps = self.maps();
        let mut s = FastPathStats {
            interfaces: self.interfaces,
            ..Default::default()
        };
        for (d, row) in s.packets.iter_mut().enumerate() {
            for (a, n) in row.iter_mut().enumerate() {
                let i = (d * 4 + a) as u32;
                if let Ok(v) = maps.actions.get(&i, 0) {
                    *n = v.iter().sum();
                }
            }
        }
        s
    }

    /// The program's (run_time_ns, run_cnt), counted while BPF run-time stats are on.
    pub(crate) fn run_stats(&self) -> Option<(u64, u64)> {
        let ebpf = self._ebpf.lock().unwrap_or_else(|e| e.into_inner());
        let info = ebpf.program("turnd_xdp")?.info().ok()?;
        Some((info.run_time().as_nanos() as u64, info.run_count()))
    }

    /// `[policy] max_bps_per_allocation` for the program (0: no cap): bits per second of
    /// payload, each route direction separately.
    pub(crate) fn set_max_bps(&self, bps: u64) -> Result<(), String> {
        let cap = Cap {
            bps,
            burst_ns: cap_burst_ns(bps),
        };
        self.maps()
            .cap
            .set(0, cap, 0)
            .map_err(|e| format!("TURND_CAP: {e}"))
    }

    /// Insert a route with a fresh counter slot; the slot, or `None` (map full).
    fn insert(&self, key: Key, mut val: Val) -> Option<u32> {
        let mut maps = self.maps();
        let slot = maps.free.pop_front()?;
        self.counts.zero(slot);
        val.slot = slot;
        val.tat = 0;
        if maps.routes.insert(key, val, 0).is_err() {
            maps.free.push_front(slot);
            return None;
        }
        Some(slot)
    }

    /// Remove the route first (no new counts), then free its slot; its last counts.
    fn remove(&self, key: &Key, slot: u32) -> Counter {
        let mut maps = self.maps();
        let _ = maps.routes.remove(key);
        let last = self.counts.get(slot);
        maps.free.push_back(slot);
        last
    }
}

/// Which way a kernel route relays.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    ToPeer,
    ToClient,
}

/// A route as the kernel holds it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Kernel {
    dir: Dir,
    key: Key,
    val: Val,
}

struct Entry {
    route: Kernel,
    client: ClientAddr,
    slot: u32,
    /// Kernel counts already folded into the engine.
    folded: Counter,
}

/// One shard's routes in the kernel, by the engine's key.
pub(crate) struct Mirror {
    loaded: Arc<Loaded>,
    routes: HashMap<RouteKey, Entry>,
    by_client: HashMap<ClientAddr, HashSet<RouteKey>>,
    /// Whether a refused insert (map full) was logged: those routes stay in user space.
    refused_logged: bool,
}

/// The kernel's form of an engine route, when the fast path carries it: channel routes of
/// UDP clients whose peer is of the client's family (IPv6 ones only with `v6`), every
/// address concrete. Both directions are built the same way: the packet's (source,
/// destination, channel or 0) to where it goes (source, destination, 0 or channel).
fn kernel_route(route: &Route, v6: bool) -> Option<(ClientAddr, Kernel)> {
    let (dir, client, channel, relay, peer) = match *route {
        Route::Forward {
            client,
            channel,
            relay,
            peer,
            ..
        } => (Dir::ToPeer, client, channel, relay, peer),
        Route::Reverse {
            relay,
            peer,
            client,
            channel,
            ..
        } => (Dir::ToClient, client, channel, relay, peer),
        Route::Permission { .. } => return None,
    };
    // v4 client with a v6 peer or the reverse: user space translates.
    if client.transport != Transport::Udp
        || client.remote.is_ipv4() != peer.0.is_ipv4()
        || (client.remote.is_ipv6() && !v6)
    {
        return None;
    }
    let c = wire(client.remote)?;
    let l = wire(client.local)?;
    let r = wire(relay.0)?;
    let p = wire(peer.0)?;
    let channel = channel.get().to_be();
    let key = |(src, sport): ([u32; 4], u16), (dst, dport): ([u32; 4], u16), channel| Key {
        src,
        dst,
        sport,
        dport,
        channel,
        pad: 0,
    };
    let val = |(src, sport): ([u32; 4], u16), (dst, dport): ([u32; 4], u16), channel| Val {
        src,
        dst,
        sport,
        dport,
        channel,
        pad: 0,
        slot: 0,
        pad2: 0,
        tat: 0,
    };
    let (key, val) = match dir {
        Dir::ToPeer => (key(c, l, channel), val(r, p, 0)),
        Dir::ToClient => (key(p, r, 0), val(l, c, channel)),
    };
    Some((client, Kernel { dir, key, val }))
}

/// What the kernel counted for `e` since the last fold, handed to `add` (the engine's
/// [`Engine::add_fastpath_counts`]) as (client, to_peer, to_client).
fn fold(add: &mut impl FnMut(&ClientAddr, Dir, Counter), e: &mut Entry, now: Counter) {
    let new = Counter {
        packets: now.packets.saturating_sub(e.folded.packets),
        bytes: now.bytes.saturating_sub(e.folded.bytes),
        drops: now.drops.saturating_sub(e.folded.drops),
    };
    if new == Counter::default() {
        return;
    }
    e.folded = now;
    add(&e.client, e.route.dir, new)
}

fn engine_add(engine: &mut Engine) -> impl FnMut(&ClientAddr, Dir, Counter) + '_ {
    |client, dir, c| {
        let (relayed, drops) = ((c.packets, c.bytes), c.drops);
        match dir {
            Dir::ToPeer => engine.add_fastpath_counts(client, relayed, (0, 0)),
            Dir::ToClient => engine.add_fastpath_counts(client, (0, 0), relayed),
        }
        if drops != 0 {
            let d = match dir {
                Dir::ToPeer => [drops, 0],
                Dir::ToClient => [0, drops],
            };
            engine.add_fastpath_drops(client, d);
        }
    }
}

impl Mirror {
    pub(crate) fn new(loaded: Arc<Loaded>) -> Mirror {
        Mirror {
            loaded,
            routes: HashMap::new(),
            by_client: HashMap::new(),
            refused_logged: false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.routes.len()
    }

    pub(crate) fn sync(&mut self, engine: &mut Engine) {
        while let Some(change) = engine.poll_route_change() {
            match change {
                RouteChange::Added(route) => self.add(engine, &route),
                RouteChange::Removed(key) => self.remove(engine, &key),
                RouteChange::Reset => {
                    let keys: Vec<RouteKey> = self.routes.keys().copied().collect();
                    for key in keys {
                        self.remove(engine, &key);
                    }
                    for route in engine.routes() {
                        self.add(engine, &route);
                    }
                }
            }
        }
    }

    fn add(&mut self, engine: &mut Engine, route: &Route) {
        let Some((client, kernel)) = kernel_route(route, self.loaded.v6) else {
            return;
        };
        self.add_kernel(&mut engine_add(engine), route.key(), client, kernel);
    }

    fn add_kernel(
        &mut self,
        add: &mut impl FnMut(&ClientAddr, Dir, Counter),
        key: RouteKey,
        client: ClientAddr,
        kernel: Kernel,
    ) {
        if let Some(e) = self.routes.get(&key) {
            if e.route == kernel {
                return; // a refreshed expiry: the kernel does not look at it
            }
            // Another destination under the same key: the old counts belong to the old one.
            self.remove_with(add, &key);
        }
        let Some(slot) = self.loaded.insert(kernel.key, kernel.val) else {
            if !self.refused_logged {
                self.refused_logged = true;
                tracing::warn!(
                    "kernel fast path: the route map is full; further routes stay in user space \
                     (logged once per shard)"
                );
            }
            return;
        };
        self.routes.insert(
            key,
            Entry {
                route: kernel,
                client,
                slot,
                folded: Counter::default(),
            },
        );
        self.by_client.entry(client).or_default().insert(key);
    }

    fn remove(&mut self, engine: &mut Engine, key: &RouteKey) {
        self.remove_with(&mut engine_add(engine), key)
    }

    fn remove_with(&mut self, add: &mut impl FnMut(&ClientAddr, Dir, Counter), key: &RouteKey) {
        let Some(mut e) = self.routes.remove(key) else {
            return;
        };
        let last = self.loaded.remove(&e.route.key, e.slot);
        fold(add, &mut e, last);
        if let Some(set) = self.by_client.get_mut(&e.client) {
            set.remove(key);
            if set.is_empty() {
                self.by_client.remove(&e.client);
            }
        }
    }

    /// Fold every route's new counts: one read of mapped memory per route, no syscall.
    pub(crate) fn fold_all(&mut self, engine: &mut Engine) {
        self.fold_all_with(&mut engine_add(engine))
    }

    fn fold_all_with(&mut self, add: &mut impl FnMut(&ClientAddr, Dir, Counter)) {
        let counts = &self.loaded.counts;
        for e in self.routes.values_mut() {
            let now = counts.get(e.slot);
            fold(add, e, now);
        }
    }

    pub(crate) fn fold_client(&mut self, engine: &mut Engine, client: &ClientAddr) {
        let Some(keys) = self.by_client.get(client) else {
            return;
        };
        let counts = &self.loaded.counts;
        let mut add = engine_add(engine);
        for key in keys {
            if let Some(e) = self.routes.get_mut(key) {
                let now = counts.get(e.slot);
                fold(&mut add, e, now);
            }
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        // The shard is going: its routes must not outlive it in a program that stays
        // attached for the other shards.
        for e in self.routes.values() {
            let _ = self.loaded.remove(&e.route.key, e.slot);
        }
    }
}

/// BPF run-time statistics on (machine-wide) until the returned fd is closed
/// (BPF_ENABLE_STATS; what `sysctl kernel.bpf_stats_enabled=1` does, undone on drop).
pub fn enable_run_stats() -> Result<std::os::fd::OwnedFd, String> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| format!("BPF_ENABLE_STATS: {e}"))
}

/// The `XDP_PASS` program attached to one interface, for tests (detached on drop).
pub struct PassProgram {
    _ebpf: Ebpf,
}

pub(crate) fn attach_pass(iface: &str) -> Result<PassProgram, String> {
    let index = ifindex(iface)?;
    let mut ebpf = Ebpf::load(OBJECT).map_err(|e| format!("loading the BPF object: {e}"))?;
    let prog: &mut Xdp = ebpf
        .program_mut("turnd_xdp_pass")
        .ok_or("the object has no program turnd_xdp_pass")?
        .try_into()
        .map_err(|e| format!("turnd_xdp_pass: {e}"))?;
    prog.load().map_err(|e| format!("turnd_xdp_pass: {e}"))?;
    prog.attach_to_if_index(index, XdpFlags::DRV_MODE)
        .map_err(|e| format!("attaching to {iface}: {e}"))?;
    Ok(PassProgram { _ebpf: ebpf })
}

#[cfg(test)]
impl Loaded {
    /// The object's maps without attaching the program (for tests; needs root).
    fn load_detached() -> Result<Loaded, String> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| format!("loading the BPF object: {e}"))?;
        let (maps, counts) = Self::maps_of(&mut ebpf)?;
        Ok(Loaded {
            maps: Mutex::new(maps),
            counts,
            interfaces: 0,
            v6: true,
            _ebpf: Mutex::new(ebpf),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Instant;
    use turnd_proto::engine::{ChannelNumber, PeerAddr, RelayAddr};

    /// `n` clients, each with a channel both ways: 2n routes (IPv4 and IPv6 alternating).
    fn routes(n: u32) -> Vec<Route> {
        let expires = Instant::now() + std::time::Duration::from_secs(600);
        let channel = ChannelNumber::new(0x4000).unwrap();
        let mut v = Vec::new();
        for i in 0..n {
            let (c, l, r, p): (IpAddr, IpAddr, IpAddr, IpAddr) = if i % 2 == 0 {
                (
                    Ipv4Addr::from(0x0a00_0000 + i).into(),
                    Ipv4Addr::new(10, 213, 0, 1).into(),
                    Ipv4Addr::new(10, 213, 0, 1).into(),
                    Ipv4Addr::from(0x0b00_0000 + i).into(),
                )
            } else {
                (
                    Ipv6Addr::from(0xfd13_u128 << 112 | u128::from(i)).into(),
                    "fd13::1".parse::<Ipv6Addr>().unwrap().into(),
                    "fd13::1".parse::<Ipv6Addr>().unwrap().into(),
                    Ipv6Addr::from(0xfd14_u128 << 112 | u128::from(i)).into(),
                )
            };
            let client = ClientAddr {
                transport: Transport::Udp,
                remote: SocketAddr::new(c, 40000),
                local: SocketAddr::new(l, 3478),
            };
            let relay = RelayAddr(SocketAddr::new(r, 50000 + (i % 10000) as u16));
            let peer = PeerAddr(SocketAddr::new(p, 9));
            v.push(Route::Forward {
                client,
                channel,
                relay,
                peer,
                expires,
            });
            v.push(Route::Reverse {
                relay,
                peer,
                client,
                channel,
                expires,
            });
        }
        v
    }

    /// Both directions' kernel forms from one builder: the reverse key is the forward value
    /// with source and destination swapped, channel moved to the value.
    #[test]
    fn both_directions_are_built_alike() {
        let r = routes(2);
        for pair in r.chunks(2) {
            let (_, f) = kernel_route(&pair[0], true).unwrap();
            let (_, b) = kernel_route(&pair[1], true).unwrap();
            assert_eq!((f.dir, b.dir), (Dir::ToPeer, Dir::ToClient));
            assert_eq!((f.key.src, f.key.dst), (b.val.dst, b.val.src));
            assert_eq!((f.val.src, f.val.dst), (b.key.dst, b.key.src));
            assert_eq!(f.key.channel, b.val.channel);
            assert_eq!((f.val.channel, b.key.channel), (0, 0));
        }
        // IPv4 addresses are v4-mapped.
        let (_, f) = kernel_route(&r[0], true).unwrap();
        assert_eq!(f.key.dst[2], 0xffff_u32.to_be());
        // IPv6 routes stay out when IPv6 is off; cross-family ones always.
        assert!(kernel_route(&r[2], false).is_none());
        let mut cross = r[0];
        if let Route::Forward { peer, .. } = &mut cross {
            *peer = PeerAddr("[fd14::1]:9".parse().unwrap());
        }
        assert!(kernel_route(&cross, true).is_none());
    }

    /// 10,000 routes: the fold reads mapped memory (printed: against one map syscall per
    /// route, what the per-CPU stats maps cost before), and it sees what the program counts.
    /// Needs root (loading the object creates the maps).
    #[test]
    fn folding_ten_thousand_routes_reads_memory() {
        let loaded = Arc::new(
            Loaded::load_detached()
                .unwrap_or_else(|e| panic!("needs root and a kernel that takes BPF: {e}")),
        );
        let mut m = Mirror::new(loaded.clone());
        let all = routes(5_000);
        let mut nothing = |_: &ClientAddr, _: Dir, _: Counter| {};
        for r in &all {
            let (client, k) = kernel_route(r, true).unwrap();
            m.add_kernel(&mut nothing, r.key(), client, k);
        }
        assert_eq!(m.len(), 10_000);

        // Before: one bpf(2) lookup per route (the old fold's per-CPU hash lookups).
        let t0 = Instant::now();
        let mut found = 0;
        {
            let maps = loaded.maps();
            for e in m.routes.values() {
                found += usize::from(maps.routes.get(&e.route.key, 0).is_ok());
            }
        }
        let syscalls = t0.elapsed();
        assert_eq!(found, 10_000);

        // The program's side, simulated: counts at every slot.
        for e in m.routes.values() {
            let (p, b, _) = loaded.counts.words(e.slot).unwrap();
            p.fetch_add(2, Ordering::Relaxed);
            b.fetch_add(200, Ordering::Relaxed);
        }
        let sum = std::cell::Cell::new((0u64, 0u64));
        let mut add = |_: &ClientAddr, _: Dir, c: Counter| {
            let s = sum.get();
            sum.set((s.0 + c.packets, s.1 + c.bytes));
        };
        let t0 = Instant::now();
        m.fold_all_with(&mut add);
        let mapped = t0.elapsed();
        assert_eq!(
            sum.get(),
            (20_000, 2_000_000),
            "every route's counts folded once"
        );
        // Nothing new: nothing folded.
        let t0 = Instant::now();
        m.fold_all_with(&mut add);
        let idle = t0.elapsed();
        assert_eq!(sum.get(), (20_000, 2_000_000));
        eprintln!(
            "10,000 routes: one map syscall per route {syscalls:?}; fold from mapped memory \
             {mapped:?} (idle {idle:?})"
        );
        // Removal frees the slots for the next routes.
        for r in &all {
            m.remove_with(&mut nothing, &r.key());
        }
        assert_eq!(loaded.maps().free.len(), MAX_ROUTES as usize);
    }
}
