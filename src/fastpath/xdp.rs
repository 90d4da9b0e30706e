//! The BPF side (feature `xdp`): the object build.rs compiled from bpf/turnd_xdp.c, loaded
//! and attached with aya; the maps' Rust views; one shard's mirror of its routes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use aya::maps::{
    DevMapHash, HashMap as BpfHash, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
};
use aya::programs::{Xdp, XdpFlags};
use aya::{Ebpf, Pod};
use turnd_proto::engine::{ClientAddr, Engine, Route, RouteChange, RouteKey, Transport};

use super::FastPathStats;
use crate::config::{Config, XdpMode};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/turnd_xdp.o"));

// The map layouts of bpf/turnd_xdp.c: addresses and ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FwdKey {
    client_ip: u32,
    listen_ip: u32,
    client_port: u16,
    listen_port: u16,
    channel: u16,
    pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FwdVal {
    relay_ip: u32,
    peer_ip: u32,
    relay_port: u16,
    peer_port: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct RevKey {
    peer_ip: u32,
    relay_ip: u32,
    peer_port: u16,
    relay_port: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RevVal {
    client_ip: u32,
    listen_ip: u32,
    client_port: u16,
    listen_port: u16,
    channel: u16,
    pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counter {
    packets: u64,
    bytes: u64,
}

// SAFETY: plain `repr(C)` structs of integers without implicit padding (sizes 16, 12, 12,
// 16, 16), as `Pod` requires.
unsafe impl Pod for FwdKey {}
unsafe impl Pod for FwdVal {}
unsafe impl Pod for RevKey {}
unsafe impl Pod for RevVal {}
unsafe impl Pod for Counter {}

/// An IPv4 address with a port of its own (not 0.0.0.0), as the wire carries it.
fn v4(a: SocketAddr) -> Option<(u32, u16)> {
    match a {
        SocketAddr::V4(a) if !a.ip().is_unspecified() && a.port() != 0 => Some((
            u32::from_ne_bytes(a.ip().octets()),
            u16::from_ne_bytes(a.port().to_be_bytes()),
        )),
        _ => None,
    }
}

struct Maps {
    fwd: BpfHash<MapData, FwdKey, FwdVal>,
    rev: BpfHash<MapData, RevKey, RevVal>,
    fwd_stats: PerCpuHashMap<MapData, FwdKey, Counter>,
    rev_stats: PerCpuHashMap<MapData, RevKey, Counter>,
    actions: PerCpuArray<MapData, u64>,
}

/// The program, attached, and its maps (route updates are control-plane only: a mutex).
pub(crate) struct Loaded {
    maps: Mutex<Maps>,
    cpus: usize,
    interfaces: u64,
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

impl Loaded {
    pub(crate) fn load(config: &Config) -> Result<Loaded, String> {
        // Routes need concrete IPv4 addresses: the kernel sees the packet's own addresses.
        let concrete_v4 =
            |a: &SocketAddr| matches!(a, SocketAddr::V4(a) if !a.ip().is_unspecified());
        if !config.listen.udp.iter().any(concrete_v4) {
            return Err(
                "listen.udp has no IPv4 address of its own (0.0.0.0 is not one): \
                 the fast path matches packets by the listener address"
                    .into(),
            );
        }
        if config.relay.ipv4.is_none_or(|ip| ip.is_unspecified()) {
            return Err(
                "relay.ipv4 is not a concrete address (0.0.0.0 or unset): the fast \
                 path matches packets by the relay address"
                    .into(),
            );
        }
        let mut ifaces = Vec::new();
        for name in &config.fastpath.xdp {
            let index = ifindex(name)?;
            // bpf_fib_lookup (the next hop and its MAC) answers only where forwarding is on.
            let sysctl = format!("/proc/sys/net/ipv4/conf/{name}/forwarding");
            match std::fs::read_to_string(&sysctl) {
                Ok(v) if v.trim() == "1" => {}
                Ok(_) => {
                    return Err(format!(
                        "net.ipv4.conf.{name}.forwarding is 0 (the program's next-hop lookup, \
                         bpf_fib_lookup, needs it on)"
                    ))
                }
                Err(e) => return Err(format!("{sysctl}: {e}")),
            }
            ifaces.push((name.as_str(), index));
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| format!("{what}: {e}"))?;
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| {
            format!("loading the BPF object: {e} (needs CAP_BPF and CAP_PERFMON, or root)")
        })?;
        let maps = Maps {
            fwd: take(&mut ebpf, "TURND_FWD")?,
            rev: take(&mut ebpf, "TURND_REV")?,
            fwd_stats: take(&mut ebpf, "TURND_FWD_STATS")?,
            rev_stats: take(&mut ebpf, "TURND_REV_STATS")?,
            actions: take(&mut ebpf, "TURND_ACTIONS")?,
        };
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
            cpus,
            interfaces: ifaces.len() as u64,
            _ebpf: Mutex::new(ebpf),
        })
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

    fn zeros(&self) -> Option<PerCpuValues<Counter>> {
        PerCpuValues::try_from(vec![Counter::default(); self.cpus]).ok()
    }
}

/// A route as the kernel holds it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Fwd(FwdKey, FwdVal),
    Rev(RevKey, RevVal),
}

struct Entry {
    route: Kernel,
    client: ClientAddr,
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
/// UDP clients, every address IPv4 and concrete.
fn kernel_route(route: &Route) -> Option<(ClientAddr, Kernel)> {
    match *route {
        Route::Forward {
            client,
            channel,
            relay,
            peer,
            ..
        } if client.transport == Transport::Udp => {
            let (client_ip, client_port) = v4(client.remote)?;
            let (listen_ip, listen_port) = v4(client.local)?;
            let (relay_ip, relay_port) = v4(relay.0)?;
            let (peer_ip, peer_port) = v4(peer.0)?;
            let k = FwdKey {
                client_ip,
                listen_ip,
                client_port,
                listen_port,
                channel: channel.get().to_be(),
                pad: 0,
            };
            let v = FwdVal {
                relay_ip,
                peer_ip,
                relay_port,
                peer_port,
            };
            Some((client, Kernel::Fwd(k, v)))
        }
        Route::Reverse {
            relay,
            peer,
            client,
            channel,
            ..
        } if client.transport == Transport::Udp => {
            let (client_ip, client_port) = v4(client.remote)?;
            let (listen_ip, listen_port) = v4(client.local)?;
            let (relay_ip, relay_port) = v4(relay.0)?;
            let (peer_ip, peer_port) = v4(peer.0)?;
            let k = RevKey {
                peer_ip,
                relay_ip,
                peer_port,
                relay_port,
            };
            let v = RevVal {
                client_ip,
                listen_ip,
                client_port,
                listen_port,
                channel: channel.get().to_be(),
                pad: 0,
            };
            Some((client, Kernel::Rev(k, v)))
        }
        _ => None,
    }
}

impl Maps {
    /// Insert a new route, its zeroed counters first (the program counts only what it finds).
    fn insert(&mut self, r: &Kernel, zeros: PerCpuValues<Counter>) -> bool {
        match *r {
            Kernel::Fwd(k, v) => {
                self.fwd_stats.insert(k, zeros, 0).is_ok() && self.fwd.insert(k, v, 0).is_ok()
            }
            Kernel::Rev(k, v) => {
                self.rev_stats.insert(k, zeros, 0).is_ok() && self.rev.insert(k, v, 0).is_ok()
            }
        }
    }

    /// The route's counts, summed over the CPUs.
    fn counts(&self, r: &Kernel) -> Counter {
        let v = match r {
            Kernel::Fwd(k, _) => self.fwd_stats.get(k, 0),
            Kernel::Rev(k, _) => self.rev_stats.get(k, 0),
        };
        v.map(|v| {
            v.iter().fold(Counter::default(), |a, c| Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            })
        })
        .unwrap_or_default()
    }

    /// Remove the route first (no new counts), then its counters; their last value.
    fn remove(&mut self, r: &Kernel) -> Counter {
        match r {
            Kernel::Fwd(k, _) => {
                let _ = self.fwd.remove(k);
            }
            Kernel::Rev(k, _) => {
                let _ = self.rev.remove(k);
            }
        }
        let last = self.counts(r);
        match r {
            Kernel::Fwd(k, _) => {
                let _ = self.fwd_stats.remove(k);
            }
            Kernel::Rev(k, _) => {
                let _ = self.rev_stats.remove(k);
            }
        }
        last
    }
}

/// Give the engine what the kernel counted since the last fold.
fn fold(engine: &mut Engine, e: &mut Entry, now: Counter) {
    let packets = now.packets.saturating_sub(e.folded.packets);
    let bytes = now.bytes.saturating_sub(e.folded.bytes);
    if packets == 0 && bytes == 0 {
        return;
    }
    e.folded = now;
    match e.route {
        Kernel::Fwd(..) => engine.add_fastpath_counts(&e.client, (packets, bytes), (0, 0)),
        Kernel::Rev(..) => engine.add_fastpath_counts(&e.client, (0, 0), (packets, bytes)),
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
        let key = route.key();
        let Some((client, kernel)) = kernel_route(route) else {
            return;
        };
        if let Some(e) = self.routes.get(&key) {
            if e.route == kernel {
                return; // a refreshed expiry: the kernel does not look at it
            }
            // Another destination under the same key: the old counts belong to the old one.
            self.remove(engine, &key);
        }
        let Some(zeros) = self.loaded.zeros() else {
            return;
        };
        let ok = self.loaded.maps().insert(&kernel, zeros);
        if !ok {
            // Whatever half was written goes again: the route stays in user space.
            let _ = self.loaded.maps().remove(&kernel);
            if !self.refused_logged {
                self.refused_logged = true;
                tracing::warn!(
                    "kernel fast path: a route map is full; further routes stay in user space \
                     (logged once per shard)"
                );
            }
            return;
        }
        self.routes.insert(
            key,
            Entry {
                route: kernel,
                client,
                folded: Counter::default(),
            },
        );
        self.by_client.entry(client).or_default().insert(key);
    }

    fn remove(&mut self, engine: &mut Engine, key: &RouteKey) {
        let Some(mut e) = self.routes.remove(key) else {
            return;
        };
        let last = self.loaded.maps().remove(&e.route);
        fold(engine, &mut e, last);
        if let Some(set) = self.by_client.get_mut(&e.client) {
            set.remove(key);
            if set.is_empty() {
                self.by_client.remove(&e.client);
            }
        }
    }

    pub(crate) fn fold_all(&mut self, engine: &mut Engine) {
        if self.routes.is_empty() {
            return;
        }
        let maps = self.loaded.maps();
        for e in self.routes.values_mut() {
            let now = maps.counts(&e.route);
            fold(engine, e, now);
        }
    }

    pub(crate) fn fold_client(&mut self, engine: &mut Engine, client: &ClientAddr) {
        let Some(keys) = self.by_client.get(client) else {
            return;
        };
        let maps = self.loaded.maps();
        for key in keys {
            if let Some(e) = self.routes.get_mut(key) {
                let now = maps.counts(&e.route);
                fold(engine, e, now);
            }
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        // The shard is going: its routes must not outlive it in a program that stays
        // attached for the other shards.
        let mut maps = self.loaded.maps();
        for e in self.routes.values() {
            let _ = maps.remove(&e.route);
        }
    }
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
