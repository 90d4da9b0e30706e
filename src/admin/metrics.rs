//! Prometheus text exposition of the shards' snapshots. Metric names are constants and each
//! is described (HELP/TYPE) exactly once.

use std::fmt::Write;

use crate::net::ShardMetrics;
use turnd_proto::engine::metrics::{AuthFailure, DURATION_BUCKETS};

pub const BUILD_INFO: &str = "turnd_build_info";
pub const ALLOCATIONS_ACTIVE: &str = "turnd_allocations_active";
pub const ALLOCATIONS_TOTAL: &str = "turnd_allocations_total";
pub const ALLOCATION_DURATION: &str = "turnd_allocation_duration_seconds";
pub const RESPONSES_TOTAL: &str = "turnd_responses_total";
pub const AUTH_FAILURES_TOTAL: &str = "turnd_auth_failures_total";
pub const STALE_NONCE_TOTAL: &str = "turnd_stale_nonce_total";
pub const POLICY_DENIALS_TOTAL: &str = "turnd_policy_denials_total";
pub const CLUSTER_UP: &str = "turnd_cluster_up";
pub const CLUSTER_NODES: &str = "turnd_cluster_nodes";
pub const CLUSTER_USAGE_DROPPED: &str = "turnd_cluster_usage_dropped_total";
pub const QUOTA_REFUSALS_TOTAL: &str = "turnd_quota_refusals_total";
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
pub const READY_PROBE_SUCCESS: &str = "turnd_ready_probe_success";
pub const READY_PROBE_FAILURES_TOTAL: &str = "turnd_ready_probe_failures_total";
pub const UDP_KERNEL_DROPS_TOTAL: &str = "turnd_udp_kernel_drops_total";
pub const ALLOCATIONS_LIMIT: &str = "turnd_allocations_limit";

/// A Prometheus label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics that are not per shard: certificate expiry, the ready probe, kernel drops.
pub fn render_process(out: &mut String, control: &crate::net::Control) {
    let o = out;
    describe(
        o,
        ALLOCATIONS_LIMIT,
        "gauge",
        "The configured cap on allocations in total (policy.max_allocations).",
    );
    let _ = writeln!(o, "{ALLOCATIONS_LIMIT} {}", control.max_allocations());
    if let Some(u) = control.cluster().map(|c| &c.usage) {
        describe(
            o,
            CLUSTER_USAGE_DROPPED,
            "counter",
            "Usage records dropped: queue full while Redis was away.",
        );
        let dropped = u.dropped.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(o, "{CLUSTER_USAGE_DROPPED} {dropped}");
    }
    if let Some(c) = control.cluster().map(|c| &c.status) {
        describe(
            o,
            CLUSTER_UP,
            "gauge",
            "1 while Redis answers ([cluster]); 0: local quota limits.",
        );
        let _ = writeln!(o, "{CLUSTER_UP} {}", u8::from(c.is_up()));
        describe(
            o,
            CLUSTER_NODES,
            "gauge",
            "Live nodes of the fleet at the last heartbeat.",
        );
        let _ = writeln!(o, "{CLUSTER_NODES} {}", c.nodes());
    }
    describe(
        o,
        TLS_CERTIFICATE_EXPIRY,
        "gauge",
        "When each served certificate expires (notAfter, Unix seconds), end entity first.",
    );
    if let Some(cert) = control.certificate() {
        for e in cert.expiry() {
            let _ = writeln!(
                o,
                "{TLS_CERTIFICATE_EXPIRY}{{index=\"{}\",subject=\"{}\"}} {}",
                e.index,
                label(&e.subject),
                e.not_after
            );
        }
    }
    describe(
        o,
        READY_PROBE_SUCCESS,
        "gauge",
        "1 if the last round of the ready probe relayed through the server, else 0.",
    );
    describe(
        o,
        READY_PROBE_FAILURES_TOTAL,
        "counter",
        "Rounds of the ready probe that failed.",
    );
    if let Some(p) = control.probe() {
        let st = p.status();
        let _ = writeln!(o, "{READY_PROBE_SUCCESS} {}", u8::from(st.ok()));
        let _ = writeln!(o, "{READY_PROBE_FAILURES_TOTAL} {}", st.failures());
    }
    describe(
        o,
        UDP_KERNEL_DROPS_TOTAL,
        "counter",
        "UDP datagrams the kernel dropped for a full socket buffer (RcvbufErrors, \
         SndbufErrors of /proc/net/snmp and snmp6). Host-wide, or network-namespace-wide: \
         other processes' sockets count too.",
    );
    if let Some(d) = kernel_drops() {
        let _ = writeln!(o, "{UDP_KERNEL_DROPS_TOTAL}{{reason=\"rcvbuf\"}} {}", d.0);
        let _ = writeln!(o, "{UDP_KERNEL_DROPS_TOTAL}{{reason=\"sndbuf\"}} {}", d.1);
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

const TRANSPORTS: [&str; 3] = ["udp", "tcp", "tls"];
const FAMILIES: [&str; 3] = ["ipv4", "ipv6", "dual"];

fn describe(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Render every metric from the shards' snapshots (shard index = position).
pub fn render(shards: &[ShardMetrics]) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let o = &mut out;
    describe(o, BUILD_INFO, "gauge", "Build information.");
    let _ = writeln!(
        o,
        "{BUILD_INFO}{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );

    describe(
        o,
        ALLOCATIONS_ACTIVE,
        "gauge",
        "Live allocations by client transport and relay family.",
    );
    for (t, tname) in TRANSPORTS.iter().enumerate() {
        for (f, fname) in FAMILIES.iter().enumerate() {
            let n: u64 = shards.iter().map(|s| s.engine.allocations[t][f]).sum();
            let _ = writeln!(
                o,
                "{ALLOCATIONS_ACTIVE}{{transport=\"{tname}\",family=\"{fname}\"}} {n}"
            );
        }
    }
    let sum = |f: &dyn Fn(&ShardMetrics) -> u64| -> u64 { shards.iter().map(f).sum() };
    describe(o, ALLOCATIONS_TOTAL, "counter", "Allocations created.");
    let _ = writeln!(
        o,
        "{ALLOCATIONS_TOTAL} {}",
        sum(&|s| s.engine.counters.allocations_created)
    );

    describe(
        o,
        ALLOCATION_DURATION,
        "histogram",
        "How long ended allocations lived.",
    );
    let mut cumulative = 0;
    for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
        cumulative += sum(&|s| s.engine.counters.duration_buckets[i]);
        let _ = writeln!(
            o,
            "{ALLOCATION_DURATION}_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += sum(&|s| s.engine.counters.duration_buckets[DURATION_BUCKETS.len()]);
    let _ = writeln!(
        o,
        "{ALLOCATION_DURATION}_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let total_secs: f64 = shards
        .iter()
        .map(|s| s.engine.counters.duration_sum_secs)
        .sum();
    let _ = writeln!(
        o,
        "{ALLOCATION_DURATION}_sum {total_secs}\n{ALLOCATION_DURATION}_count {cumulative}"
    );

    describe(
        o,
        RESPONSES_TOTAL,
        "counter",
        "STUN/TURN responses sent, by method and code (0: success).",
    );
    let mut responses = std::collections::BTreeMap::new();
    for s in shards {
        for (k, v) in &s.engine.counters.responses {
            *responses.entry(*k).or_insert(0u64) += v;
        }
    }
    for ((method, code), n) in responses {
        let _ = writeln!(
            o,
            "{RESPONSES_TOTAL}{{method=\"{method}\",code=\"{code}\"}} {n}"
        );
    }

    describe(
        o,
        AUTH_FAILURES_TOTAL,
        "counter",
        "Requests refused by authentication, by reason.",
    );
    for why in AuthFailure::ALL {
        let n = sum(&|s| {
            s.engine
                .counters
                .auth_failures
                .get(&why)
                .copied()
                .unwrap_or(0)
        });
        let _ = writeln!(
            o,
            "{AUTH_FAILURES_TOTAL}{{reason=\"{}\"}} {n}",
            why.as_str()
        );
    }
    describe(o, STALE_NONCE_TOTAL, "counter", "438 Stale Nonce answers.");
    let stale = sum(&|s| {
        s.engine
            .counters
            .auth_failures
            .get(&AuthFailure::Nonce)
            .copied()
            .unwrap_or(0)
    });
    let _ = writeln!(o, "{STALE_NONCE_TOTAL} {stale}");
    describe(
        o,
        POLICY_DENIALS_TOTAL,
        "counter",
        "Requests refused by the peer policy (403).",
    );
    let _ = writeln!(
        o,
        "{POLICY_DENIALS_TOTAL} {}",
        sum(&|s| s.engine.counters.policy_denials)
    );
    describe(
        o,
        QUOTA_REFUSALS_TOTAL,
        "counter",
        "Allocations refused by quotas (486).",
    );
    let _ = writeln!(
        o,
        "{QUOTA_REFUSALS_TOTAL} {}",
        sum(&|s| s.engine.counters.quota_refusals)
    );

    describe(
        o,
        RELAYED_PACKETS_TOTAL,
        "counter",
        "Relayed packets by direction and client transport.",
    );
    describe(
        o,
        RELAYED_BYTES_TOTAL,
        "counter",
        "Relayed payload bytes by direction and client transport.",
    );
    for (t, tname) in TRANSPORTS.iter().enumerate() {
        let tr = |f: &dyn Fn(&turnd_proto::engine::metrics::Traffic) -> u64| {
            sum(&|s| f(&s.engine.traffic))
        };
        for (dir, p, b) in [
            (
                "to_peer",
                tr(&|x| x.packets_to_peer[t]),
                tr(&|x| x.bytes_to_peer[t]),
            ),
            (
                "to_client",
                tr(&|x| x.packets_to_client[t]),
                tr(&|x| x.bytes_to_client[t]),
            ),
        ] {
            let _ = writeln!(
                o,
                "{RELAYED_PACKETS_TOTAL}{{direction=\"{dir}\",transport=\"{tname}\"}} {p}"
            );
            let _ = writeln!(
                o,
                "{RELAYED_BYTES_TOTAL}{{direction=\"{dir}\",transport=\"{tname}\"}} {b}"
            );
        }
    }
    describe(o, PERMISSIONS_ACTIVE, "gauge", "Installed permissions.");
    let _ = writeln!(o, "{PERMISSIONS_ACTIVE} {}", sum(&|s| s.engine.permissions));
    describe(o, CHANNELS_ACTIVE, "gauge", "Bound channels.");
    let _ = writeln!(o, "{CHANNELS_ACTIVE} {}", sum(&|s| s.engine.channels));

    describe(
        o,
        CONNECTIONS_ACTIVE,
        "gauge",
        "Open TCP and TLS client connections.",
    );
    let _ = writeln!(
        o,
        "{CONNECTIONS_ACTIVE}{{transport=\"tcp\"}} {}",
        sum(&|s| s.streams_open[0])
    );
    let _ = writeln!(
        o,
        "{CONNECTIONS_ACTIVE}{{transport=\"tls\"}} {}",
        sum(&|s| s.streams_open[1])
    );
    describe(
        o,
        CONNECTIONS_REFUSED_TOTAL,
        "counter",
        "Connections refused by the connection caps.",
    );
    let _ = writeln!(
        o,
        "{CONNECTIONS_REFUSED_TOTAL} {}",
        sum(&|s| s.connections_refused)
    );
    describe(
        o,
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "counter",
        "TLS handshakes that failed or timed out, by reason.",
    );
    for why in crate::net::tls::HandshakeFailure::ALL {
        let n = sum(&|s| s.handshake_failures[why.index()]);
        let r = why.as_str();
        let _ = writeln!(o, "{TLS_HANDSHAKE_FAILURES_TOTAL}{{reason=\"{r}\"}} {n}");
    }
    describe(
        o,
        ENGINE_PANICS_TOTAL,
        "counter",
        "Inputs dropped because handling them panicked (the shard went on).",
    );
    let _ = writeln!(o, "{ENGINE_PANICS_TOTAL} {}", sum(&|s| s.engine_panics));
    describe(
        o,
        RESERVATIONS_HELD,
        "gauge",
        "Relay ports held by EVEN-PORT reservations.",
    );
    // The table is shared: every shard reports the same number.
    let held = shards
        .iter()
        .map(|s| s.reservations_held)
        .max()
        .unwrap_or(0);
    let _ = writeln!(o, "{RESERVATIONS_HELD} {held}");

    describe(
        o,
        SHARD_ALLOCATIONS,
        "gauge",
        "Live allocations per shard (load balance).",
    );
    describe(
        o,
        SHARD_RELAYED_PACKETS_TOTAL,
        "counter",
        "Relayed packets per shard (load balance).",
    );
    for (i, s) in shards.iter().enumerate() {
        let allocs: u64 = s.engine.allocations.iter().flatten().sum();
        let t = &s.engine.traffic;
        let pkts: u64 = t.packets_to_peer.iter().chain(&t.packets_to_client).sum();
        let _ = writeln!(o, "{SHARD_ALLOCATIONS}{{shard=\"{i}\"}} {allocs}");
        let _ = writeln!(o, "{SHARD_RELAYED_PACKETS_TOTAL}{{shard=\"{i}\"}} {pkts}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(label("CN=a\"b\\c\nd"), "CN=a\\\"b\\\\c\\nd");
    }
}
