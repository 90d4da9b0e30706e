//! Load-aware redirects. Every heartbeat a node writes its load to `turnd:load:<node>`
//! (allocations, whether it is over `redirect_above` or draining, its public address per
//! transport; expiring after `lease`) and reads every live node's. While this node is over
//! its threshold or draining, each transport's [`Redirect`] names the least-loaded other node
//! that is neither, with an address for that transport; new Allocates there get 300 (Try
//! Alternate). No such node: no redirect (the node keeps admitting up to its quotas). Load is
//! allocations only (not packet rates or CPU) and as old as the last heartbeat.

use std::collections::HashMap;
use std::net::SocketAddr;

use redis::AsyncCommands as _;
use turnd_proto::engine::{Alternate, Redirect, Transport};

use super::PREFIX;
use crate::config::Cluster;

const TRANSPORTS: [(Transport, &str); 3] = [
    (Transport::Udp, "udp"),
    (Transport::Tcp, "tcp"),
    (Transport::Tls, "tls"),
];

/// One node's published load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Load {
    pub node: String,
    pub allocations: usize,
    /// Over its threshold or draining: not a target.
    pub busy: bool,
    pub public: HashMap<String, String>,
}

/// Write this node's load, then read every live node's.
pub(super) async fn exchange(
    conn: &mut redis::aio::MultiplexedConnection,
    cfg: &Cluster,
    allocations: usize,
    busy: bool,
) -> redis::RedisResult<Vec<Load>> {
    let key = format!("{PREFIX}load:{}", cfg.node_id);
    let mut fields: Vec<(String, String)> = vec![
        ("allocations".into(), allocations.to_string()),
        ("busy".into(), u8::from(busy).to_string()),
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
                        Some((l.allocations, &l.node, server, l))
                    })
                    .min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
                    .map(|(_, _, server, l)| Alternate {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(node: &str, allocations: usize, busy: bool, public: &[(&str, &str)]) -> Load {
        Load {
            node: node.into(),
            allocations,
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
}
