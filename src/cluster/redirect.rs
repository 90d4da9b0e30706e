//! Load-aware redirects. Every heartbeat a node writes its load to `turnd:load:<node>`
//! (allocations, relayed packets per second and process CPU over the last heartbeat, whether
//! it is over `redirect_above` or draining, its public address per transport; expiring after
//! `lease`) and reads every live node's. While this node is over its threshold or draining,
//! each transport's [`Redirect`] names the least-loaded other node that is neither, with an
//! address for that transport; new Allocates there get 300 (Try Alternate). No such node: no
//! redirect (the node keeps admitting up to its quotas). The load is as old as the last
//! heartbeat.
//!
//! "Least loaded" ([`rank`]): a node whose CPU is at or above [`HOT_CPU`] of all its cores
//! comes after every cooler one; then fewer allocations; then fewer relayed packets per
//! second; then the node id (so every node picks the same one).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use redis::AsyncCommands as _;
use turnd_proto::engine::{Alternate, Redirect, Transport};

use super::PREFIX;
use crate::config::Cluster;

const TRANSPORTS: [(Transport, &str); 3] = [
    (Transport::Udp, "udp"),
    (Transport::Tcp, "tcp"),
    (Transport::Tls, "tls"),
];

/// A node at or above this fraction of all its cores is "hot": a target only when every
/// other candidate is hot too.
pub(super) const HOT_CPU: f64 = 0.8;

/// One node's published load.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Load {
    pub node: String,
    pub allocations: usize,
    /// Packets relayed (both directions, every transport) per second over its last heartbeat.
    pub pkts: u64,
    /// Process CPU (user + system) over its last heartbeat, as a fraction of all the cores
    /// it may run on (0.5: half of them busy).
    pub cpu: f64,
    /// Over its threshold or draining: not a target.
    pub busy: bool,
    pub public: HashMap<String, String>,
}

/// This node's relayed packets and CPU time at the previous heartbeat, for the rates.
pub(super) struct Sampler {
    last: Option<(Instant, u64, Option<u64>)>,
    cores: f64,
    ticks_per_sec: f64,
}

impl Sampler {
    pub(super) fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|&t| t > 0)
            .unwrap_or(100);
        Sampler {
            last: None,
            cores: cores as f64,
            ticks_per_sec: tick as f64,
        }
    }

    /// (packets per second, CPU fraction of all cores) since the previous call, from the
    /// shards' packet total now; zeros on the first call (and CPU zero without `/proc`).
    pub(super) fn sample(&mut self, packets: u64) -> (u64, f64) {
        let now = Instant::now();
        let ticks = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| cpu_ticks(&s));
        let out = match self.last {
            Some((then, p0, t0)) => {
                let secs = now.duration_since(then).as_secs_f64();
                if secs <= 0.0 {
                    (0, 0.0)
                } else {
                    let pkts = (packets.saturating_sub(p0) as f64 / secs).round() as u64;
                    let cpu = match (t0, ticks) {
                        (Some(a), Some(b)) => {
                            b.saturating_sub(a) as f64 / self.ticks_per_sec / secs / self.cores
                        }
                        _ => 0.0,
                    };
                    (pkts, cpu.clamp(0.0, 1.0))
                }
            }
            None => (0, 0.0),
        };
        self.last = Some((now, packets, ticks));
        out
    }
}

/// utime + stime (clock ticks) from `/proc/self/stat`: fields 14 and 15, counted after the
/// command name (which may hold spaces and parentheses, so after its last ')').
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut f = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// What this node publishes besides its addresses.
pub(super) struct Own {
    pub allocations: usize,
    pub pkts: u64,
    pub cpu: f64,
    pub busy: bool,
}

/// Write this node's load, then read every live node's.
pub(super) async fn exchange(
    conn: &mut redis::aio::MultiplexedConnection,
    cfg: &Cluster,
    own: &Own,
) -> redis::RedisResult<Vec<Load>> {
    let key = format!("{PREFIX}load:{}", cfg.node_id);
    let mut fields: Vec<(String, String)> = vec![
        ("allocations".into(), own.allocations.to_string()),
        ("pkts".into(), own.pkts.to_string()),
        ("cpu".into(), format!("{:.3}", own.cpu)),
        ("busy".into(), u8::from(own.busy).to_string()),
    ];
    for ((_, name), addr) in TRANSPORTS.iter().zip(&cfg.public) {
        if let Some(a) = addr {
            fields.push(((*name).into(), a.to_string()));
        }
    }
    if let Some(d) = &cfg.public_tls_domain {
        fields.push(("tls_domain".into(), d.clone()));
    }
    redis::pipe()
        .atomic()
        .del(&key)
        .ignore()
        .hset_multiple(&key, &fields)
        .ignore()
        .pexpire(&key, cfg.lease.as_millis() as i64)
        .ignore()
        .exec_async(conn)
        .await?;
    let nodes: Vec<String> = conn.zrange(format!("{PREFIX}nodes"), 0, -1).await?;
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        let h: HashMap<String, String> = conn.hgetall(format!("{PREFIX}load:{node}")).await?;
        if h.is_empty() {
            continue;
        }
        out.push(Load {
            allocations: h
                .get("allocations")
                .and_then(|v| v.parse().ok())
                .unwrap_or(usize::MAX),
            pkts: h
                .get("pkts")
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX),
            cpu: h
                .get("cpu")
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|c| c.is_finite())
                .unwrap_or(1.0),
            busy: h.get("busy").is_none_or(|v| v != "0"),
            public: h,
            node,
        });
    }
    Ok(out)
}

/// Point `redirect` at the least-loaded other node per transport while `busy`, else clear it.
pub(super) fn apply(redirect: &Redirect, me: &str, busy: bool, loads: &[Load]) {
    for (transport, name) in TRANSPORTS {
        let target = busy
            .then(|| {
                loads
                    .iter()
                    .filter(|l| l.node != me && !l.busy)
                    .filter_map(|l| {
                        let server: SocketAddr = l.public.get(name)?.parse().ok()?;
                        Some((rank(l), server, l))
                    })
                    .min_by(|a, b| a.0.cmp(&b.0))
                    .map(|(_, server, l)| Alternate {
                        server,
                        domain: (transport == Transport::Tls)
                            .then(|| l.public.get("tls_domain").cloned())
                            .flatten(),
                    })
            })
            .flatten();
        redirect.set(transport, target);
    }
}

/// The order of candidates, least loaded first (see the module's note).
fn rank(l: &Load) -> (bool, usize, u64, &str) {
    (l.cpu >= HOT_CPU, l.allocations, l.pkts, &l.node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(node: &str, allocations: usize, busy: bool, public: &[(&str, &str)]) -> Load {
        Load {
            node: node.into(),
            allocations,
            pkts: 0,
            cpu: 0.0,
            busy,
            public: public
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_least_loaded_free_node_with_that_transport_is_named() {
        let r = Redirect::default();
        let loads = [
            load("a", 900, true, &[("udp", "192.0.2.1:3478")]),
            load("b", 300, false, &[("udp", "192.0.2.2:3478")]),
            load(
                "c",
                100,
                false,
                &[
                    ("udp", "192.0.2.3:3478"),
                    ("tls", "192.0.2.3:5349"),
                    ("tls_domain", "c.example"),
                ],
            ),
            load("d", 10, true, &[("udp", "192.0.2.4:3478")]),
        ];
        apply(&r, "a", true, &loads);
        assert_eq!(
            r.get(Transport::Udp).unwrap().server,
            "192.0.2.3:3478".parse().unwrap()
        );
        assert_eq!(r.get(Transport::Tcp), None, "nobody has TCP");
        let tls = r.get(Transport::Tls).unwrap();
        assert_eq!(tls.domain.as_deref(), Some("c.example"));
        apply(&r, "a", false, &loads);
        assert_eq!(r.get(Transport::Udp), None, "not busy: no redirect");
    }

    #[test]
    fn hot_cpu_then_allocations_then_packet_rate_decide() {
        let r = Redirect::default();
        let at = |node: &str, allocations, pkts, cpu| {
            let addr = format!("192.0.2.{}:3478", node.as_bytes()[0]);
            Load {
                pkts,
                cpu,
                ..load(node, allocations, false, &[("udp", addr.as_str())])
            }
        };
        let pick = |loads: &[Load]| -> Option<String> {
            apply(&r, "me", true, loads);
            let server = r.get(Transport::Udp)?.server;
            let node = loads.iter().find(|l| l.public["udp"] == server.to_string());
            node.map(|l| l.node.clone())
        };
        // Equal allocations: the lower packet rate wins, whatever the node ids.
        let mut v = [at("b", 5, 9000, 0.1), at("c", 5, 100, 0.1)];
        assert_eq!(pick(&v).as_deref(), Some("c"));
        v[1].pkts = 20_000;
        assert_eq!(pick(&v).as_deref(), Some("b"));
        // Fewer allocations beat a lower packet rate.
        let v = [at("b", 4, 50_000, 0.1), at("c", 5, 10, 0.1)];
        assert_eq!(pick(&v).as_deref(), Some("b"));
        // A hot CPU goes last, unless everyone is hot.
        let v = [at("b", 1, 10, 0.95), at("c", 50, 9000, 0.3)];
        assert_eq!(pick(&v).as_deref(), Some("c"));
        let v = [at("b", 1, 10, 0.95), at("c", 50, 9000, 0.85)];
        assert_eq!(pick(&v).as_deref(), Some("b"));
    }

    #[test]
    fn cpu_ticks_parse_and_the_sampler_measures_packet_rate_and_cpu() {
        let stat = "1234 (turnd (x) y) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    250 75 0 0 20 0 9 0 100 200000 300";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("1 (short) S 1 2"), None);
        assert_eq!(cpu_ticks("no parens"), None);
        let mut s = Sampler::new();
        assert_eq!(s.sample(1000), (0, 0.0), "first call: no rate yet");
        // Burn at least 200 ms of CPU (5 s at most on a crowded machine), then sample.
        let ticks = || {
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
            cpu_ticks(&stat).unwrap()
        };
        let (t0, start) = (ticks(), std::time::Instant::now());
        let mut x = 0u64;
        while ticks() < t0 + (s.ticks_per_sec / 5.0) as u64 && start.elapsed().as_secs() < 5 {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        let wall = start.elapsed().as_secs_f64();
        let (pkts, cpu) = s.sample(1000 + 500);
        let rate = 500.0 / wall;
        assert!(
            (pkts as f64 - rate).abs() <= rate * 0.2 + 1.0,
            "{pkts} vs {rate}"
        );
        let floor = 0.2 / wall.max(0.2) / s.cores * 0.5;
        assert!(
            cpu >= floor && cpu <= 1.0,
            "cpu {cpu}, floor {floor}, wall {wall}"
        );
    }
}
