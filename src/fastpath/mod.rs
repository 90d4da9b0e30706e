//! `[fastpath]`: the XDP kernel fast path (issue 13): UDP ChannelData over IPv4 and IPv6 in
//! both directions.
//!
//! The engine stays the authority. With the fast path on, each shard turns on the engine's
//! route events ([`Engine::set_route_events`]) and, after every engine step
//! ([`ShardFastPath::sync`], called from `flush_outputs`), mirrors the channel routes of UDP
//! clients into the BPF program's maps: `Added` inserts or updates, `Removed` deletes,
//! `Reset` reloads from [`Engine::routes`]. A route leaves the kernel at the same engine
//! step that removes it from the engine (expiry at the timer tick, Refresh(0), kill, reload
//! pruning, allocation end). Permission routes (Send and Data indications), TCP/TLS
//! clients and routes whose client and peer differ in family stay in user space.
//!
//! Counters: the program counts packets and payload bytes per route in an array map that
//! turnd maps into its memory (a slot per route), so a fold reads memory, no syscall; the
//! shard folds what is new into the allocation ([`Engine::add_fastpath_counts`]) at every
//! timer tick, before kill and metrics/session requests, before a STUN message of a client
//! that has routes (a Refresh(0) ends the allocation), and when the route is removed: the
//! session API, usage records, lifecycle logs and `/metrics` show the same totals as
//! without the fast path.
//!
//! The program and its loader exist only with the cargo feature `xdp` (`xdp.rs`); without
//! it a configured `[fastpath] xdp` logs one line and turnd relays in user space.

use std::sync::Arc;

use turnd_proto::engine::{ClientAddr, Engine};

use crate::config::Config;

#[cfg(feature = "xdp")]
mod xdp;

/// Packets that matched a route, by direction and what the program did with them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastPathStats {
    /// Interfaces the program is attached to.
    pub interfaces: u64,
    /// `[direction][action]`: direction 0 `to_peer`, 1 `to_client`; action 0 `tx`,
    /// 1 `redirect`, 2 `pass` (to user space: no next hop yet, over the MTU), 3 `drop`
    /// (over the bandwidth cap, or a rewrite the kernel refused half-way).
    pub packets: [[u64; 4]; 2],
}

impl FastPathStats {
    pub const DIRECTIONS: [&'static str; 2] = ["to_peer", "to_client"];
    pub const ACTIONS: [&'static str; 4] = ["tx", "redirect", "pass", "drop"];
}

/// The loaded program, shared by the shards; `off` when not configured or not loadable.
#[derive(Clone, Default)]
pub struct FastPath {
    #[cfg(feature = "xdp")]
    inner: Option<Arc<xdp::Loaded>>,
    #[cfg(not(feature = "xdp"))]
    inner: Option<Arc<()>>,
}

impl FastPath {
    /// Load and attach the program on `[fastpath] xdp`'s interfaces. When that is empty:
    /// off, silently. When it cannot load: one log line saying why, and off (user space
    /// relays everything, as without it).
    pub fn start(config: &Config) -> FastPath {
        let f = &config.fastpath;
        if f.xdp.is_empty() {
            return FastPath::default();
        }
        match Self::try_start(config) {
            Ok(p) => {
                tracing::info!(
                    interfaces = ?f.xdp,
                    mode = ?f.xdp_mode,
                    "kernel fast path (XDP) attached: UDP ChannelData is relayed in the kernel"
                );
                p
            }
            Err(why) => {
                tracing::warn!(
                    interfaces = ?f.xdp,
                    "kernel fast path (XDP) off, relaying in user space: {why}"
                );
                FastPath::default()
            }
        }
    }

    /// [`FastPath::start`] without the log line: why it cannot load, as an error.
    #[cfg(feature = "xdp")]
    pub fn try_start(config: &Config) -> Result<FastPath, String> {
        Ok(FastPath {
            inner: Some(Arc::new(xdp::Loaded::load(config)?)),
        })
    }

    /// [`FastPath::start`] without the log line: why it cannot load, as an error.
    #[cfg(not(feature = "xdp"))]
    pub fn try_start(_config: &Config) -> Result<FastPath, String> {
        Err("this turnd was built without the cargo feature `xdp`".into())
    }

    /// Whether the program is attached.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// One shard's mirror of its engine's routes.
    pub fn shard(&self) -> ShardFastPath {
        ShardFastPath {
            #[cfg(feature = "xdp")]
            inner: self.inner.clone().map(xdp::Mirror::new),
        }
    }

    /// `[policy] max_bps_per_allocation` for the program: bits per second of payload, each
    /// route direction separately (0, the default: no cap). Over it the program drops
    /// (`action="drop"`). Call at start and at every reload; nothing when off.
    pub fn set_max_bps(&self, bps: u64) -> Result<(), String> {
        #[cfg(feature = "xdp")]
        if let Some(l) = &self.inner {
            return l.set_max_bps(bps);
        }
        let _ = bps;
        Ok(())
    }

    /// The program's (run_time_ns, run_cnt): how long it ran and how often, counted while
    /// BPF run-time stats are on (`sysctl kernel.bpf_stats_enabled=1`); `None` when off.
    pub fn run_stats(&self) -> Option<(u64, u64)> {
        #[cfg(feature = "xdp")]
        {
            self.inner.as_ref().and_then(|l| l.run_stats())
        }
        #[cfg(not(feature = "xdp"))]
        {
            None
        }
    }

    /// The program's action counters (scrape time), `None` when off.
    pub fn stats(&self) -> Option<FastPathStats> {
        #[cfg(feature = "xdp")]
        {
            self.inner.as_ref().map(|l| l.stats())
        }
        #[cfg(not(feature = "xdp"))]
        {
            None
        }
    }
}

/// One shard's side: its routes in the kernel, and the counts already folded back.
#[derive(Default)]
pub struct ShardFastPath {
    #[cfg(feature = "xdp")]
    inner: Option<xdp::Mirror>,
}

impl ShardFastPath {
    /// Whether this shard mirrors routes (turn on the engine's route events then).
    pub fn is_on(&self) -> bool {
        #[cfg(feature = "xdp")]
        {
            self.inner.is_some()
        }
        #[cfg(not(feature = "xdp"))]
        {
            false
        }
    }

    /// Apply the engine's queued route changes to the kernel's maps.
    pub fn sync(&mut self, engine: &mut Engine) {
        #[cfg(feature = "xdp")]
        if let Some(m) = &mut self.inner {
            m.sync(engine);
        }
        #[cfg(not(feature = "xdp"))]
        let _ = engine;
    }

    /// Fold every route's new kernel counts into the engine.
    pub fn fold_all(&mut self, engine: &mut Engine) {
        #[cfg(feature = "xdp")]
        if let Some(m) = &mut self.inner {
            m.fold_all(engine);
        }
        #[cfg(not(feature = "xdp"))]
        let _ = engine;
    }

    /// Fold `client`'s routes' new kernel counts into the engine (cheap when it has none).
    pub fn fold_client(&mut self, engine: &mut Engine, client: &ClientAddr) {
        #[cfg(feature = "xdp")]
        if let Some(m) = &mut self.inner {
            m.fold_client(engine, client);
        }
        #[cfg(not(feature = "xdp"))]
        let _ = (engine, client);
    }

    /// Routes of this shard in the kernel.
    pub fn routes(&self) -> usize {
        #[cfg(feature = "xdp")]
        {
            self.inner.as_ref().map_or(0, |m| m.len())
        }
        #[cfg(not(feature = "xdp"))]
        {
            0
        }
    }
}

/// For tests: attach the program's `XDP_PASS` twin to `iface` (in the calling thread's
/// network namespace) until the returned guard is dropped. The far end of a veth needs an
/// XDP program of its own for frames sent with `XDP_TX` to arrive there.
#[cfg(feature = "xdp")]
pub use xdp::PassProgram;

/// For measurements: BPF run-time stats on until the fd is dropped.
#[cfg(feature = "xdp")]
pub use xdp::enable_run_stats;

/// See [`PassProgram`].
#[cfg(feature = "xdp")]
pub fn attach_pass_program(iface: &str) -> Result<xdp::PassProgram, String> {
    xdp::attach_pass(iface)
}
