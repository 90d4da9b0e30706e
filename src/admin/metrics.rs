//! `/metrics`: the shards' snapshots rendered by `prometheus-client` in the Prometheus text
//! format (0.0.4). Nothing is counted here: the shards count in plain integers on their
//! threads (zero per-packet cost beyond that), the admin API takes one snapshot per shard at
//! scrape time, and [`ShardsCollector`] turns those snapshots into metric families. Each
//! family is one `family(...)` call below: a name (a constant, as exposed, counters with
//! their `_total`), its HELP, its type, and its samples.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use turnd_proto::engine::metrics::{AuthFailure, Traffic, DURATION_BUCKETS};

use crate::net::ShardMetrics;
use crate::tls::HandshakeFailure;

pub const BUILD_INFO: &str = "turnd_build_info";
pub const FASTPATH_PACKETS_TOTAL: &str = "turnd_fastpath_packets_total";
pub const FASTPATH_INTERFACES: &str = "turnd_fastpath_interfaces";
pub const ALLOCATIONS_ACTIVE: &str = "turnd_allocations_active";
pub const ALLOCATIONS_TOTAL: &str = "turnd_allocations_total";
pub const ALLOCATION_DURATION: &str = "turnd_allocation_duration_seconds";
pub const RESPONSES_TOTAL: &str = "turnd_responses_total";
pub const REFUSALS_TOTAL: &str = "turnd_refusals_total";
pub const AUTH_FAILURES_TOTAL: &str = "turnd_auth_failures_total";
pub const STALE_NONCE_TOTAL: &str = "turnd_stale_nonce_total";
pub const POLICY_DENIALS_TOTAL: &str = "turnd_policy_denials_total";
pub const CLUSTER_UP: &str = "turnd_cluster_up";
pub const CLUSTER_NODES: &str = "turnd_cluster_nodes";
pub const CLUSTER_USAGE_DROPPED: &str = "turnd_cluster_usage_dropped_total";
pub const QUOTA_REFUSALS_TOTAL: &str = "turnd_quota_refusals_total";
pub const BANDWIDTH_DROPPED_TOTAL: &str = "turnd_bandwidth_dropped_total";
pub const RELAYED_PACKETS_TOTAL: &str = "turnd_relayed_packets_total";
pub const RELAYED_BYTES_TOTAL: &str = "turnd_relayed_bytes_total";
pub const PERMISSIONS_ACTIVE: &str = "turnd_permissions_active";
pub const CHANNELS_ACTIVE: &str = "turnd_channels_active";
pub const CONNECTIONS_ACTIVE: &str = "turnd_connections_active";
pub const CONNECTIONS_REFUSED_TOTAL: &str = "turnd_connections_refused_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "turnd_tls_handshake_failures_total";
pub const ENGINE_PANICS_TOTAL: &str = "turnd_engine_panics_total";
pub const RESERVATIONS_HELD: &str = "turnd_reservations_held";
pub const SHARD_ALLOCATIONS: &str = "turnd_shard_allocations";
pub const SHARD_RELAYED_PACKETS_TOTAL: &str = "turnd_shard_relayed_packets_total";
pub const TLS_CERTIFICATE_EXPIRY: &str = "turnd_tls_certificate_expiry_seconds";
pub const WEBHOOK_REQUESTS_TOTAL: &str = "turnd_webhook_requests_total";
pub const WEBHOOK_BREAKER_OPEN: &str = "turnd_webhook_breaker_open";
pub const WEBHOOK_CACHE_ENTRIES: &str = "turnd_webhook_cache_entries";
pub const READY_PROBE_SUCCESS: &str = "turnd_ready_probe_success";
pub const READY_PROBE_FAILURES_TOTAL: &str = "turnd_ready_probe_failures_total";
pub const UDP_KERNEL_DROPS_TOTAL: &str = "turnd_udp_kernel_drops_total";
pub const ALLOCATIONS_LIMIT: &str = "turnd_allocations_limit";
pub const UDP_SEND_DROPPED_TOTAL: &str = "turnd_udp_send_dropped_total";
pub const UDP_COALESCE_HOLDS_TOTAL: &str = "turnd_udp_coalesce_holds_total";
pub const UDP_GSO_DATAGRAMS_TOTAL: &str = "turnd_udp_gso_datagrams_total";
pub const DTLS_SESSIONS: &str = "turnd_dtls_sessions";
pub const TCP_RELAY_CONNECTIONS: &str = "turnd_tcp_relay_connections";
pub const DTLS_HELLO_VERIFY_TOTAL: &str = "turnd_dtls_hello_verify_requests_total";
pub const DTLS_ESTABLISHED_TOTAL: &str = "turnd_dtls_sessions_established_total";
pub const DTLS_REFUSED_TOTAL: &str = "turnd_dtls_sessions_refused_total";
pub const DTLS_HANDSHAKE_TIMEOUTS_TOTAL: &str = "turnd_dtls_handshake_timeouts_total";
pub const DTLS_OLD_VERSION_TOTAL: &str = "turnd_dtls_old_version_refused_total";
pub const UDP_BATCH_CALLS_TOTAL: &str = "turnd_udp_batch_calls_total";
pub const UDP_BATCH_DATAGRAMS_TOTAL: &str = "turnd_udp_batch_datagrams_total";

/// The `Content-Type` of [`render`]'s output.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

const TRANSPORTS: [&str; 4] = ["udp", "tcp", "tls", "dtls"];
/// The methods the engine answers (`engine::wire::method_name`).
const ANSWERED_METHODS: [&str; 5] = [
    "binding",
    "allocate",
    "refresh",
    "create_permission",
    "channel_bind",
];
const FAMILIES: [&str; 3] = ["ipv4", "ipv6", "dual"];

/// Render every metric from the shards' snapshots (shard index = position) and the
/// process-wide values.
pub fn render(shards: &[ShardMetrics], process: &ProcessMetrics) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ShardsCollector(shards.to_vec())));
    registry.register_collector(Box::new(ProcessCollector(process.clone())));
    let mut out = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// One scrape's snapshots, one per shard, as a custom collector.
#[derive(Debug)]
pub struct ShardsCollector(pub Vec<ShardMetrics>);

/// One sample's value, as the family's type encodes it.
enum Value {
    Counter(u64),
    Gauge(u64),
}

impl Value {
    fn encode(&self, e: prometheus_client::encoding::MetricEncoder<'_>) -> fmt::Result {
        match self {
            Value::Counter(v) => ConstCounter::new(*v).encode(e),
            Value::Gauge(v) => ConstGauge::new(*v).encode(e),
        }
    }
}

/// Describe `name` (HELP/TYPE once) and write its samples. A counter's `name` ends in
/// `_total` as exposed; prometheus-client adds that suffix itself.
fn family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let base = match kind {
        MetricType::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    let mut m = enc.encode_descriptor(base, help, None, kind)?;
    for (labels, v) in samples {
        let value = match kind {
            MetricType::Counter => Value::Counter(v),
            _ => Value::Gauge(v),
        };
        value.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family of one sample without labels.
fn single(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    v: u64,
) -> fmt::Result {
    let base = match kind {
        MetricType::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    let m = enc.encode_descriptor(base, help, None, kind)?;
    match kind {
        MetricType::Counter => Value::Counter(v),
        _ => Value::Gauge(v),
    }
    .encode(m)
}

type Labels = Vec<(&'static str, String)>;

/// The metrics that are not per shard, read at scrape time: the allocation cap, the served
/// certificates' expiry, the ready probe, the kernel's UDP drops.
#[derive(Debug, Clone, Default)]
pub struct ProcessMetrics {
    pub allocations_limit: u64,
    pub certificates: Vec<crate::tls::Expiry>,
    /// (last round relayed, failed rounds), when the ready probe runs.
    pub probe: Option<(bool, u64)>,
    /// (RcvbufErrors, SndbufErrors), when /proc/net/snmp can be read.
    pub kernel_drops: Option<(u64, u64)>,
    /// The fleet's view, with `[cluster]`.
    pub cluster: Option<ClusterMetrics>,
    /// `[auth] webhook`: its counters and breaker.
    pub webhook: Option<turnd_proto::auth::WebhookStats>,
    /// `[fastpath] xdp`, when attached: the program's counters.
    pub fastpath: Option<crate::fastpath::FastPathStats>,
}

/// `[cluster]`: Redis reachable, live nodes, usage records dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterMetrics {
    pub up: bool,
    pub nodes: u64,
    pub usage_dropped: u64,
}

impl ProcessMetrics {
    pub fn read(control: &crate::net::Control) -> Self {
        ProcessMetrics {
            allocations_limit: control.max_allocations() as u64,
            certificates: control
                .certificate()
                .map(|c| c.expiry())
                .unwrap_or_default(),
            probe: control.probe().map(|p| {
                let st = p.status();
                (st.ok(), st.failures())
            }),
            kernel_drops: kernel_drops(),
            cluster: control.cluster().map(|c| ClusterMetrics {
                up: c.status.is_up(),
                nodes: u64::from(c.status.nodes()),
                usage_dropped: c.usage.dropped.load(std::sync::atomic::Ordering::Relaxed),
            }),
            webhook: control.webhook().map(|w| w.stats()),
            fastpath: control.fastpath().stats(),
        }
    }
}

/// The process-wide values as a collector.
#[derive(Debug)]
pub struct ProcessCollector(pub ProcessMetrics);

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let p = &self.0;
        let e = &mut enc;
        let help = "The configured cap on allocations in total (policy.max_allocations).";
        single(e, ALLOCATIONS_LIMIT, help, Gauge, p.allocations_limit)?;
        if let Some(c) = p.cluster {
            let help = "Usage records dropped: queue full while Redis was away.";
            single(e, CLUSTER_USAGE_DROPPED, help, Counter, c.usage_dropped)?;
            let help = "1 while Redis answers ([cluster]); 0: local quota limits.";
            single(e, CLUSTER_UP, help, Gauge, u64::from(c.up))?;
            let help = "Live nodes of the fleet at the last heartbeat.";
            single(e, CLUSTER_NODES, help, Gauge, c.nodes)?;
        }
        if let Some(f) = p.fastpath {
            use crate::fastpath::FastPathStats as S;
            let help = "Interfaces the XDP fast path is attached to.";
            single(e, FASTPATH_INTERFACES, help, Gauge, f.interfaces)?;
            let samples = f.packets.iter().enumerate().flat_map(|(d, row)| {
                row.iter().enumerate().map(move |(a, n)| {
                    let labels = vec![
                        ("direction", S::DIRECTIONS[d].to_string()),
                        ("action", S::ACTIONS[a].to_string()),
                    ];
                    (labels, *n)
                })
            });
            let help = "Packets of a fast-path route, by direction and what the XDP program \
                 did: tx/redirect (relayed in the kernel), pass (to user space: no next hop \
                 yet, over the MTU), drop (over the bandwidth cap, or a rewrite the kernel \
                 refused half-way).";
            family(e, FASTPATH_PACKETS_TOTAL, help, Counter, samples)?;
        }
        if let Some(w) = p.webhook {
            let results = [
                ("allow", w.allowed),
                ("deny", w.denied),
                ("failed", w.failed),
                ("shed", w.shed),
            ]
            .map(|(r, n)| (vec![("result", r.to_string())], n));
            let help = "Webhook lookups by result: allow, deny, failed (timeout, error, bad \
                 answer) and shed (refused unasked: breaker open, in-flight or source caps).";
            family(e, WEBHOOK_REQUESTS_TOTAL, help, Counter, results)?;
            let help = "1 while the webhook's circuit breaker is open (unknown users refused).";
            single(
                e,
                WEBHOOK_BREAKER_OPEN,
                help,
                Gauge,
                u64::from(w.breaker_open),
            )?;
            let help = "Users in the webhook's cache (allows and denies).";
            single(e, WEBHOOK_CACHE_ENTRIES, help, Gauge, w.entries as u64)?;
        }
        // notAfter is a Unix time: i64, as the certificate says.
        let help =
            "When each served certificate expires (notAfter, Unix seconds), end entity first.";
        let mut m = e.encode_descriptor(TLS_CERTIFICATE_EXPIRY, help, None, Gauge)?;
        for c in &p.certificates {
            let labels: Labels = vec![
                ("index", c.index.to_string()),
                ("subject", c.subject.clone()),
            ];
            ConstGauge::new(c.not_after).encode(m.encode_family(&labels)?)?;
        }
        let (ok, failures) = match p.probe {
            Some((ok, failures)) => (Some(u64::from(ok)), Some(failures)),
            None => (None, None),
        };
        let help = "1 if the last round of the ready probe relayed through the server, else 0.";
        optional(e, READY_PROBE_SUCCESS, help, Gauge, ok)?;
        let help = "Rounds of the ready probe that failed.";
        optional(e, READY_PROBE_FAILURES_TOTAL, help, Counter, failures)?;
        let drops = p
            .kernel_drops
            .map(|(rcv, snd)| [("rcvbuf", rcv), ("sndbuf", snd)])
            .into_iter()
            .flatten()
            .map(|(reason, n)| (vec![("reason", reason.to_string())], n));
        let help = "UDP datagrams the kernel dropped for a full socket buffer (RcvbufErrors, \
             SndbufErrors of /proc/net/snmp and snmp6). Host-wide, or network-namespace-wide: \
             other processes' sockets count too.";
        family(e, UDP_KERNEL_DROPS_TOTAL, help, Counter, drops)
    }
}

/// A family of at most one sample without labels: described always, a sample when known.
fn optional(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    v: Option<u64>,
) -> fmt::Result {
    match v {
        Some(v) => single(enc, name, help, kind, v),
        None => family(enc, name, help, kind, std::iter::empty::<(Labels, u64)>()),
    }
}

/// (RcvbufErrors, SndbufErrors) summed over UDP and UDP6 of this network namespace.
fn kernel_drops() -> Option<(u64, u64)> {
    let v4 = std::fs::read_to_string("/proc/self/net/snmp").ok()?;
    let (mut rcv, mut snd) = parse_snmp_udp(&v4)?;
    if let Ok(v6) = std::fs::read_to_string("/proc/self/net/snmp6") {
        for line in v6.lines() {
            let mut it = line.split_whitespace();
            match (it.next(), it.next().and_then(|n| n.parse::<u64>().ok())) {
                (Some("Udp6RcvbufErrors"), Some(n)) => rcv += n,
                (Some("Udp6SndbufErrors"), Some(n)) => snd += n,
                _ => {}
            }
        }
    }
    Some((rcv, snd))
}

/// The `Udp:` header and value lines of /proc/net/snmp -> (RcvbufErrors, SndbufErrors).
fn parse_snmp_udp(text: &str) -> Option<(u64, u64)> {
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse().ok()
    };
    Some((get("RcvbufErrors")?, get("SndbufErrors")?))
}

impl Collector for ShardsCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let shards = &self.0;
        let e = &mut enc;
        let sum = |f: &dyn Fn(&ShardMetrics) -> u64| -> u64 { shards.iter().map(f).sum() };

        let version: Labels = vec![("version", env!("CARGO_PKG_VERSION").to_string())];
        family(e, BUILD_INFO, "Build information.", Gauge, [(version, 1)])?;

        let mut active: Vec<(Labels, u64)> = Vec::new();
        for (t, tname) in TRANSPORTS.iter().enumerate() {
            for (f, fname) in FAMILIES.iter().enumerate() {
                let n = sum(&|s| s.engine.allocations[t][f]);
                let labels = vec![
                    ("transport", tname.to_string()),
                    ("family", fname.to_string()),
                ];
                active.push((labels, n));
            }
        }
        let help = "Live allocations by client transport and relay family.";
        family(e, ALLOCATIONS_ACTIVE, help, Gauge, active)?;
        let created = sum(&|s| s.engine.counters.allocations_created);
        single(
            e,
            ALLOCATIONS_TOTAL,
            "Allocations created.",
            Counter,
            created,
        )?;

        // Per-bucket counts; the encoder makes them cumulative and adds +Inf.
        let mut buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, bound)| {
                (
                    *bound as f64,
                    sum(&|s| s.engine.counters.duration_buckets[i]),
                )
            })
            .collect();
        let overflow = sum(&|s| s.engine.counters.duration_buckets[DURATION_BUCKETS.len()]);
        buckets.push((f64::INFINITY, overflow));
        let count = buckets.iter().map(|(_, n)| n).sum();
        let total_secs: f64 = shards
            .iter()
            .map(|s| s.engine.counters.duration_sum_secs)
            .sum();
        let help = "How long ended allocations lived.";
        enc.encode_descriptor(ALLOCATION_DURATION, help, None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(
                total_secs,
                count,
                &buckets,
                None::<&std::collections::HashMap<usize, Exemplar<NoLabelSet, f64>>>,
            )?;
        let e = &mut enc;

        // Every method and code the engine answers with is shown from the start (at 0), so
        // the series count stays put as answers first happen (scrapers and `scripts/soak`).
        let mut responses = std::collections::BTreeMap::new();
        let codes = std::iter::once(0).chain(
            turnd_proto::engine::Refusal::every()
                .into_iter()
                .map(|r| r.code()),
        );
        for code in codes {
            for method in ANSWERED_METHODS {
                responses.insert((method, code), 0u64);
            }
        }
        for s in shards {
            for (k, v) in &s.engine.counters.responses {
                *responses.entry(*k).or_insert(0u64) += v;
            }
        }
        let responses = responses.into_iter().map(|((method, code), n)| {
            let labels: Labels = vec![("method", method.to_string()), ("code", code.to_string())];
            (labels, n)
        });
        let help = "STUN/TURN responses sent, by method and code (0: success).";
        family(e, RESPONSES_TOTAL, help, Counter, responses)?;

        let mut refusals: std::collections::BTreeMap<&str, u64> =
            turnd_proto::engine::Refusal::every()
                .iter()
                .map(|r| (r.label(), 0))
                .collect();
        for s in shards {
            for (reason, n) in &s.engine.counters.refusals {
                *refusals.entry(*reason).or_insert(0u64) += n;
            }
        }
        let refusals = refusals
            .into_iter()
            .map(|(reason, n)| (vec![("reason", reason.to_string())], n));
        let help =
            "Error answers sent, by why (finer than the code: bad_request_lifetime, quota, ...).";
        family(e, REFUSALS_TOTAL, help, Counter, refusals)?;

        let auth = |why: AuthFailure| {
            sum(&|s| {
                s.engine
                    .counters
                    .auth_failures
                    .get(&why)
                    .copied()
                    .unwrap_or(0)
            })
        };
        let reasons =
            AuthFailure::ALL.map(|why| (vec![("reason", why.as_str().to_string())], auth(why)));
        let help = "Requests refused by authentication, by reason.";
        family(e, AUTH_FAILURES_TOTAL, help, Counter, reasons)?;
        let stale = auth(AuthFailure::Nonce);
        single(
            e,
            STALE_NONCE_TOTAL,
            "438 Stale Nonce answers.",
            Counter,
            stale,
        )?;
        let denials = sum(&|s| s.engine.counters.policy_denials);
        let help = "Requests refused by the peer policy (403).";
        single(e, POLICY_DENIALS_TOTAL, help, Counter, denials)?;
        let quota = sum(&|s| s.engine.counters.quota_refusals);
        let help = "Allocations refused by quotas (486).";
        single(e, QUOTA_REFUSALS_TOTAL, help, Counter, quota)?;
        let bw = [("to_peer", 0), ("to_client", 1)].map(|(dir, i)| {
            let n = sum(&|s| s.engine.counters.bandwidth_dropped[i]);
            (vec![("direction", dir.to_string())], n)
        });
        let help = "Relayed datagrams dropped by policy.max_bps_per_allocation, by direction.";
        family(e, BANDWIDTH_DROPPED_TOTAL, help, Counter, bw)?;

        let traffic = |pick: &dyn Fn(&Traffic, usize) -> [u64; 2]| -> Vec<(Labels, u64)> {
            let mut v = Vec::new();
            for (dir, d) in [("to_peer", 0), ("to_client", 1)] {
                for (t, tname) in TRANSPORTS.iter().enumerate() {
                    let n = sum(&|s| pick(&s.engine.traffic, t)[d]);
                    let labels = vec![
                        ("direction", dir.to_string()),
                        ("transport", tname.to_string()),
                    ];
                    v.push((labels, n));
                }
            }
            v
        };
        let packets = traffic(&|x, t| [x.packets_to_peer[t], x.packets_to_client[t]]);
        let help = "Relayed packets by direction and client transport.";
        family(e, RELAYED_PACKETS_TOTAL, help, Counter, packets)?;
        let bytes = traffic(&|x, t| [x.bytes_to_peer[t], x.bytes_to_client[t]]);
        let help = "Relayed payload bytes by direction and client transport.";
        family(e, RELAYED_BYTES_TOTAL, help, Counter, bytes)?;

        let permissions = sum(&|s| s.engine.permissions);
        single(
            e,
            PERMISSIONS_ACTIVE,
            "Installed permissions.",
            Gauge,
            permissions,
        )?;
        let channels = sum(&|s| s.engine.channels);
        single(e, CHANNELS_ACTIVE, "Bound channels.", Gauge, channels)?;

        let conns = [("tcp", 0), ("tls", 1)].map(|(t, i)| {
            (
                vec![("transport", t.to_string())],
                sum(&|s| s.streams_open[i]),
            )
        });
        let help = "Open TCP and TLS client connections.";
        family(e, CONNECTIONS_ACTIVE, help, Gauge, conns)?;
        let peers = sum(&|s| s.tcp_relay_connections);
        let help = "RFC 6062 peer data connections open (waiting for ConnectionBind or spliced).";
        single(e, TCP_RELAY_CONNECTIONS, help, Gauge, peers)?;
        let refused = sum(&|s| s.connections_refused);
        let help = "Connections refused by the connection caps.";
        single(e, CONNECTIONS_REFUSED_TOTAL, help, Counter, refused)?;
        let failures = HandshakeFailure::ALL.map(|why| {
            let n = sum(&|s| s.handshake_failures[why.index()]);
            (vec![("reason", why.as_str().to_string())], n)
        });
        let help = "TLS handshakes that failed or timed out, by reason.";
        family(e, TLS_HANDSHAKE_FAILURES_TOTAL, help, Counter, failures)?;
        for (name, kind, help, v) in [
            (
                DTLS_SESSIONS,
                Gauge,
                "DTLS sessions open (handshaking or established).",
                sum(&|s| s.dtls.sessions),
            ),
            (
                DTLS_HELLO_VERIFY_TOTAL,
                Counter,
                "DTLS ClientHellos without a valid cookie, answered statelessly with a \
                 HelloVerifyRequest.",
                sum(&|s| s.dtls.hello_verify_sent),
            ),
            (
                DTLS_ESTABLISHED_TOTAL,
                Counter,
                "DTLS handshakes completed.",
                sum(&|s| s.dtls.established),
            ),
            (
                DTLS_REFUSED_TOTAL,
                Counter,
                "DTLS ClientHellos with a valid cookie refused by dtls.max_sessions(_per_ip).",
                sum(&|s| s.dtls.refused),
            ),
            (
                DTLS_HANDSHAKE_TIMEOUTS_TOTAL,
                Counter,
                "DTLS sessions dropped because the handshake did not finish within \
                 dtls.handshake_timeout.",
                sum(&|s| s.dtls.handshake_timeouts),
            ),
            (
                DTLS_OLD_VERSION_TOTAL,
                Counter,
                "DTLS 1.0 ClientHellos answered with a protocol_version alert.",
                sum(&|s| s.dtls.old_version),
            ),
        ] {
            single(e, name, help, kind, v)?;
        }
        let panics = sum(&|s| s.engine_panics);
        let help = "Inputs dropped because handling them panicked (the shard went on).";
        single(e, ENGINE_PANICS_TOTAL, help, Counter, panics)?;
        // The table is shared: every shard reports the same number.
        let held = shards
            .iter()
            .map(|s| s.reservations_held)
            .max()
            .unwrap_or(0);
        let help = "Relay ports held by EVEN-PORT reservations.";
        single(e, RESERVATIONS_HELD, help, Gauge, held)?;
        let dropped = sum(&|s| s.udp_send_dropped);
        let help = "UDP datagrams the kernel would not take from turnd (full socket buffer, \
                    unreachable destination): dropped.";
        single(e, UDP_SEND_DROPPED_TOTAL, help, Counter, dropped)?;
        let call = |c: &str| vec![("call", c.to_string())];
        let calls = vec![
            (call("recvmmsg"), sum(&|s| s.udp_recv_calls)),
            (call("sendmmsg"), sum(&|s| s.udp_send_calls)),
        ];
        let help = "Batched UDP system calls of the shards' loops.";
        family(e, UDP_BATCH_CALLS_TOTAL, help, Counter, calls)?;
        let dgrams = vec![
            (call("recvmmsg"), sum(&|s| s.udp_received)),
            (call("sendmmsg"), sum(&|s| s.udp_sent)),
        ];
        let help = "UDP datagrams moved by those calls (datagrams / calls = the batch size).";
        family(e, UDP_BATCH_DATAGRAMS_TOTAL, help, Counter, dgrams)?;
        let gso = sum(&|s| s.udp_gso_sent);
        let help = "Of the datagrams sendmmsg moved, those that left inside a UDP GSO send of two \
                    or more ([relay] gso: equal-size runs to one destination).";
        single(e, UDP_GSO_DATAGRAMS_TOTAL, help, Counter, gso)?;
        let holds = sum(&|s| s.udp_coalesce_holds);
        let help = "Times a shard's UDP loop waited [relay] coalesce after a small turn at a high \
                    packet rate, so that its next system calls carried more datagrams.";
        single(e, UDP_COALESCE_HOLDS_TOTAL, help, Counter, holds)?;

        let per_shard = |f: &dyn Fn(&ShardMetrics) -> u64| -> Vec<(Labels, u64)> {
            let shard = |i: usize| vec![("shard", i.to_string())];
            shards
                .iter()
                .enumerate()
                .map(|(i, s)| (shard(i), f(s)))
                .collect()
        };
        let allocs = per_shard(&|s| s.engine.allocations.iter().flatten().sum());
        let help = "Live allocations per shard (load balance).";
        family(e, SHARD_ALLOCATIONS, help, Gauge, allocs)?;
        let pkts = per_shard(&|s| {
            let t = &s.engine.traffic;
            t.packets_to_peer.iter().chain(&t.packets_to_client).sum()
        });
        let help = "Relayed packets per shard (load balance).";
        family(e, SHARD_RELAYED_PACKETS_TOTAL, help, Counter, pkts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_line(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }

    /// Two shards with a bit of everything.
    fn sample() -> Vec<ShardMetrics> {
        let mut a = ShardMetrics::default();
        a.engine.counters.allocations_created = 3;
        a.engine.counters.responses.insert(("allocate", 401), 2);
        a.engine.counters.responses.insert(("allocate", 0), 3);
        a.engine
            .counters
            .auth_failures
            .insert(AuthFailure::Nonce, 4);
        a.engine.counters.refusals.insert("stale_nonce", 4);
        a.engine.counters.duration_buckets[0] = 1;
        a.engine.counters.duration_buckets[DURATION_BUCKETS.len()] = 2;
        a.engine.counters.duration_sum_secs = 20_005.5;
        a.engine.allocations[0][1] = 2;
        a.engine.traffic.packets_to_peer[0] = 7;
        a.engine.traffic.bytes_to_client[2] = 900;
        a.engine.counters.bandwidth_dropped = [5, 2];
        a.streams_open = [1, 2];
        a.handshake_failures[HandshakeFailure::Alert.index()] = 5;
        a.reservations_held = 1;
        a.udp_send_dropped = 3;
        a.udp_recv_calls = 2;
        a.udp_sent = 40;
        a.udp_gso_sent = 12;
        a.udp_coalesce_holds = 9;
        let mut b = a.clone();
        b.engine.counters.responses.insert(("refresh", 0), 1);
        b.engine_panics = 6;
        b.dtls.sessions = 6;
        b.tcp_relay_connections = 2;
        vec![a, b]
    }

    #[test]
    fn snmp_udp_counters_are_found_by_name() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n\
            Udp: 10 2 3 9 7 5 0\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(parse_snmp_udp(text), Some((7, 5)));
        assert_eq!(parse_snmp_udp("Udp: RcvbufErrors\n"), None);
        assert_eq!(
            parse_snmp_udp("Udp: RcvbufErrors SndbufErrors\nUdp: x 1\n"),
            None
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let process = ProcessMetrics {
            certificates: vec![crate::tls::Expiry {
                index: 0,
                subject: "CN=a\"b\\c\nd".to_string(),
                not_after: 1_899_936_000,
            }],
            ..Default::default()
        };
        let text = render(&[], &process);
        let line = concat!(
            "turnd_tls_certificate_expiry_seconds{index=\"0\",",
            "subject=\"CN=a\\\"b\\\\c\\nd\"} 1899936000"
        );
        assert_line(&text, line);
    }

    #[test]
    fn process_families_are_described_and_sampled_when_known() {
        let process = ProcessMetrics {
            allocations_limit: 100,
            certificates: Vec::new(),
            probe: Some((true, 2)),
            kernel_drops: Some((7, 5)),
            cluster: Some(ClusterMetrics {
                up: true,
                nodes: 3,
                usage_dropped: 4,
            }),
            webhook: Some(turnd_proto::auth::WebhookStats {
                allowed: 5,
                breaker_open: true,
                entries: 9,
                ..Default::default()
            }),
            fastpath: Some(crate::fastpath::FastPathStats {
                interfaces: 1,
                packets: [[6, 0, 1, 0], [0; 4]],
            }),
        };
        let text = render(&[], &process);
        for line in [
            "turnd_fastpath_interfaces 1",
            "turnd_fastpath_packets_total{direction=\"to_peer\",action=\"tx\"} 6",
            "turnd_fastpath_packets_total{direction=\"to_peer\",action=\"pass\"} 1",
            "turnd_fastpath_packets_total{direction=\"to_client\",action=\"drop\"} 0",
            "turnd_webhook_requests_total{result=\"allow\"} 5",
            "turnd_webhook_requests_total{result=\"shed\"} 0",
            "turnd_webhook_breaker_open 1",
            "turnd_webhook_cache_entries 9",
            "turnd_allocations_limit 100",
            "# TYPE turnd_tls_certificate_expiry_seconds gauge",
            "turnd_ready_probe_success 1",
            "turnd_ready_probe_failures_total 2",
            "turnd_udp_kernel_drops_total{reason=\"rcvbuf\"} 7",
            "turnd_udp_kernel_drops_total{reason=\"sndbuf\"} 5",
            "# TYPE turnd_cluster_up gauge",
            "turnd_cluster_up 1",
            "turnd_cluster_nodes 3",
            "# TYPE turnd_cluster_usage_dropped_total counter",
            "turnd_cluster_usage_dropped_total 4",
        ] {
            assert_line(&text, line);
        }
        let none = render(&[], &ProcessMetrics::default());
        assert!(none.contains("# HELP turnd_ready_probe_success "));
        assert!(!none
            .lines()
            .any(|l| l.starts_with("turnd_ready_probe_success ")));
        // Standalone: no cluster families at all.
        assert!(!none.contains("turnd_cluster_"));
    }

    #[test]
    fn families_keep_their_names_labels_and_help() {
        let text = render(&sample(), &ProcessMetrics::default());
        for line in [
            "# HELP turnd_allocations_total Allocations created.",
            "# TYPE turnd_allocations_total counter",
            "turnd_allocations_total 6",
            concat!(
                "turnd_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1"
            ),
            "# TYPE turnd_allocations_active gauge",
            "turnd_allocations_active{transport=\"udp\",family=\"ipv6\"} 4",
            "turnd_allocations_active{transport=\"tls\",family=\"dual\"} 0",
            "# TYPE turnd_allocation_duration_seconds histogram",
            "turnd_allocation_duration_seconds_bucket{le=\"10\"} 2",
            "turnd_allocation_duration_seconds_bucket{le=\"14400\"} 2",
            "turnd_allocation_duration_seconds_bucket{le=\"+Inf\"} 6",
            "turnd_allocation_duration_seconds_sum 40011.0",
            "turnd_allocation_duration_seconds_count 6",
            "turnd_responses_total{method=\"allocate\",code=\"401\"} 4",
            "turnd_responses_total{method=\"refresh\",code=\"0\"} 1",
            "turnd_auth_failures_total{reason=\"challenge\"} 0",
            "turnd_stale_nonce_total 8",
            "turnd_refusals_total{reason=\"stale_nonce\"} 8",
            "turnd_relayed_packets_total{direction=\"to_peer\",transport=\"udp\"} 14",
            "turnd_relayed_bytes_total{direction=\"to_client\",transport=\"tls\"} 1800",
            "turnd_connections_active{transport=\"tls\"} 4",
            "turnd_tls_handshake_failures_total{reason=\"alert\"} 10",
            "turnd_engine_panics_total 6",
            "turnd_reservations_held 1",
            "turnd_shard_allocations{shard=\"1\"} 2",
            "turnd_shard_relayed_packets_total{shard=\"0\"} 7",
            "# TYPE turnd_udp_send_dropped_total counter",
            "turnd_udp_send_dropped_total 6",
            "turnd_udp_batch_calls_total{call=\"recvmmsg\"} 4",
            "turnd_udp_batch_datagrams_total{call=\"sendmmsg\"} 80",
            "# TYPE turnd_dtls_sessions gauge",
            "turnd_dtls_sessions 6",
            "# TYPE turnd_dtls_hello_verify_requests_total counter",
            "turnd_dtls_hello_verify_requests_total 0",
            "# TYPE turnd_bandwidth_dropped_total counter",
            "turnd_bandwidth_dropped_total{direction=\"to_peer\"} 10",
            "turnd_bandwidth_dropped_total{direction=\"to_client\"} 4",
            "# TYPE turnd_tcp_relay_connections gauge",
            "turnd_tcp_relay_connections 2",
            "# TYPE turnd_udp_coalesce_holds_total counter",
            "turnd_udp_coalesce_holds_total 18",
            "# TYPE turnd_udp_gso_datagrams_total counter",
            "turnd_udp_gso_datagrams_total 24",
        ] {
            assert_line(&text, line);
        }
        // Each family is described exactly once.
        let helps: Vec<_> = text.lines().filter(|l| l.starts_with("# HELP ")).collect();
        let unique: std::collections::HashSet<_> = helps.iter().collect();
        assert_eq!(helps.len(), unique.len());
        assert_eq!(helps.len(), 39);
    }
}
