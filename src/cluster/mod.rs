//! `[cluster]`: a fleet of turnd nodes sharing state through Redis (`redis://`, `rediss://`).
//!
//! What is shared:
//! - the stateless-nonce key (`turnd:nonce-key`, set once by the first node with `SET NX`), so
//!   a retry that lands on another node keeps its nonce (no new 401/438 round trip);
//! - allocation quotas: every `heartbeat` one Lua script (atomic) renews this node's lease
//!   (`turnd:nodes`, a sorted set scored by lease expiry in Redis's own clock) and its counts
//!   (`turnd:quota:<node>`, a hash with a `PEXPIRE` of `lease`), drops expired nodes, and
//!   returns the sum of the other live nodes' counts. A crashed node's counts vanish within
//!   one `lease`;
//! - credentials changed without a reload ([`auth`]): REST secrets (`turnd:rest-secrets`) and
//!   static users (`turnd:users`), read at start and every heartbeat.
//!
//! The shards never wait on Redis: the counts land in [`Quotas`]' fleet cache, read by
//! `Quotas::acquire` on the control plane. The cache is at most one heartbeat old, so two
//! nodes admitting at the same moment can together over-admit by what they admit within one
//! heartbeat. Every Redis round trip has `timeout`; when one fails the node is "down"
//! (`turnd_cluster_up 0`, one warning per change of state) and quotas fall back to
//! `quota_fail`: `local` (this node's limits alone) or `closed` (refuse new allocations). It
//! reconnects every heartbeat and republishes at once when Redis is back.
//!
//! `rediss://` is TLS (rustls): the server's certificate is checked against the public roots,
//! or only against `ca_file`'s CA(s); `password_file` is sent with `AUTH`. Each node's load
//! for redirects (allocations, relayed pkt/s, CPU) is in `redirect.rs`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands as _;
use tokio_util::sync::CancellationToken;
use turnd_proto::engine::{FleetCounts, Quotas, Transport};

use crate::config::{Cluster, QuotaFail};

pub mod auth;
mod redirect;
pub mod sessions;
pub mod usage;
pub use auth::FleetCreds;

/// Key prefix of everything turnd keeps in Redis.
const PREFIX: &str = "turnd:";

/// The heartbeat: renew this node's lease and counts, drop expired nodes, sum the others'.
/// ARGV: prefix, node, lease in ms, this node's total, then (principal, count) pairs.
/// Returns: the others' total, then ("u:" principal, count) pairs (one per node holding some).
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p, node, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local nodes = p .. 'nodes'
redis.call('ZADD', nodes, now + lease, node)
redis.call('ZREMRANGEBYSCORE', nodes, '-inf', now)
local mine = p .. 'quota:' .. node
redis.call('DEL', mine)
redis.call('HSET', mine, 't', ARGV[4])
for i = 5, #ARGV - 1, 2 do
  redis.call('HSET', mine, 'u:' .. ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', mine, lease)
local total = 0
local out = {''}
for _, n in ipairs(redis.call('ZRANGE', nodes, 0, -1)) do
  if n ~= node then
    local h = redis.call('HGETALL', p .. 'quota:' .. n)
    for j = 1, #h - 1, 2 do
      if h[j] == 't' then
        total = total + tonumber(h[j + 1])
      else
        out[#out + 1] = h[j]
        out[#out + 1] = h[j + 1]
      end
    end
  end
end
out[1] = tostring(total)
return out
";

/// A graceful stop: this node's lease and counts go at once.
const LEAVE: &str = r"
redis.call('ZREM', ARGV[1] .. 'nodes', ARGV[2])
redis.call('DEL', ARGV[1] .. 'quota:' .. ARGV[2])
redis.call('DEL', ARGV[1] .. 'sessions:' .. ARGV[2])
redis.call('DEL', ARGV[1] .. 'load:' .. ARGV[2])
return 1
";

/// The node's view of the fleet, for `/metrics`.
#[derive(Debug, Default)]
pub struct Status {
    /// 0: Redis unreachable, 1: up.
    up: AtomicU8,
    /// Nodes in the fleet at the last heartbeat (this one included).
    nodes: AtomicU8,
}

impl Status {
    /// Whether the last Redis round trip succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) == 1
    }

    /// Live nodes at the last heartbeat, this one included (255 at most).
    pub fn nodes(&self) -> u8 {
        self.nodes.load(Ordering::Relaxed)
    }
}

/// What the rest of the daemon holds of a cluster member: its status and the credentials
/// it reads from Redis.
#[derive(Clone)]
pub struct Handle {
    pub status: Arc<Status>,
    pub creds: Arc<FleetCreds>,
    /// This node's `node_id`.
    pub node: String,
    /// Usage records on their way to `turnd:usage`.
    pub usage: Arc<usage::Queue>,
    /// Where new allocations go while this node is over `redirect_above` or draining.
    pub redirect: Arc<turnd_proto::engine::Redirect>,
    client: redis::Client,
    timeout: Duration,
}

impl Handle {
    /// The fleet's sessions (`[cluster]` admin API), each with its `node`.
    pub async fn sessions(&self, user: Option<&str>) -> anyhow::Result<Vec<serde_json::Value>> {
        sessions::list(&self.client, self.timeout, user).await
    }

    /// Ask the owning node(s) to end sessions; how many nodes received the request.
    pub async fn kill(&self, kill: &sessions::Kill) -> anyhow::Result<usize> {
        sessions::send(&self.client, self.timeout, kill).await
    }

    /// `inner` with the fleet's credentials added (start, reload and revocation changes
    /// rebuild the authenticator from it; revocations wrap the result).
    pub fn wrap_auth(
        &self,
        inner: std::sync::Arc<dyn turnd_proto::auth::Authenticator>,
    ) -> std::sync::Arc<dyn turnd_proto::auth::Authenticator> {
        self.creds.wrap(inner)
    }
}

/// The hostname (the default `node_id`); "turnd" when it cannot be read.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "turnd".to_string())
}

/// A started cluster member: the shared nonce key and the heartbeat thread.
pub struct Member {
    /// The fleet's nonce key, or `None` when Redis was unreachable at start (the node then
    /// uses a key of its own: nonces from other nodes get one 438 round trip).
    pub nonce_key: Option<[u8; 32]>,
    pub handle: Handle,
    cfg: Cluster,
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    usage_rx: tokio::sync::mpsc::Receiver<turnd_proto::engine::UsageRecord>,
    /// Records taken from the queue that did not reach Redis yet.
    pending: Vec<turnd_proto::engine::UsageRecord>,
    interim: usage::Interim,
    /// The realm, for interim usage records.
    realm: String,
    /// Relayed packets and CPU time at the last heartbeat, for the published rates.
    sampler: redirect::Sampler,
}

fn client(cfg: &Cluster) -> anyhow::Result<redis::Client> {
    let mut info: redis::ConnectionInfo =
        redis::IntoConnectionInfo::into_connection_info(cfg.redis.0.as_str())
            // The URL may hold a password: its parse error is not repeated.
            .map_err(|_| anyhow::anyhow!("[cluster] redis is not a valid Redis URL"))?;
    if let Some(p) = &cfg.password {
        info.redis.password = Some(p.0.clone());
    }
    match &cfg.ca_pem {
        // `ca_file`: this CA instead of the public roots.
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        ),
        None => redis::Client::open(info),
    }
    .context("[cluster] redis")
}

async fn connect(
    client: &redis::Client,
    timeout: Duration,
) -> anyhow::Result<MultiplexedConnection> {
    let conn = tokio::time::timeout(
        timeout,
        client.get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout),
        ),
    )
    .await
    .context("Redis connect timed out")??;
    Ok(conn)
}

async fn shared_nonce_key(conn: &mut MultiplexedConnection) -> anyhow::Result<[u8; 32]> {
    let key = format!("{PREFIX}nonce-key");
    let fresh: [u8; 32] = rand::random();
    let _: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(hex::encode(fresh))
        .arg("NX")
        .query_async(conn)
        .await?;
    let stored: String = conn.get(&key).await?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(stored.trim(), &mut out)
        .map_err(|_| anyhow::anyhow!("{key} in Redis is not 64 hex digits"))?;
    Ok(out)
}

impl Member {
    /// Connect (bounded by `timeout`) and read or create the fleet's nonce key. Never fails
    /// on Redis being down: the node starts on local state and joins when Redis answers.
    pub fn join(
        cfg: &Cluster,
        auth: &turnd_proto::settings::Auth,
        realm: &str,
        redact: bool,
    ) -> anyhow::Result<Member> {
        let client = client(cfg)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let timeout = cfg.timeout;
        let creds = Arc::new(FleetCreds::new(auth, realm));
        let (conn, nonce_key) = rt.block_on(async {
            let mut conn = match connect(&client, timeout).await {
                Ok(c) => c,
                Err(e) => return (None, Err(e)),
            };
            let key = tokio::time::timeout(timeout, async {
                let key = shared_nonce_key(&mut conn).await?;
                read_creds(&mut conn, &creds).await?;
                Ok(key)
            })
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("Redis timed out")));
            (Some(conn), key)
        });
        let status = Arc::new(Status::default());
        let nonce_key = match nonce_key {
            Ok(k) => {
                status.up.store(1, Ordering::Relaxed);
                Some(k)
            }
            Err(e) => {
                tracing::warn!(node = %cfg.node_id, error = %e,
                    "cluster: Redis unreachable at start; own nonce key, local quota limits");
                None
            }
        };
        // The connection belongs to `rt`'s reactor only while it runs; the heartbeat thread
        // has its own runtime and connects again.
        drop(conn);
        let (usage, usage_rx) = usage::Queue::new(redact);
        Ok(Member {
            usage_rx,
            pending: Vec::new(),
            interim: usage::Interim::new(cfg.usage_interval),
            realm: realm.to_string(),
            sampler: redirect::Sampler::new(),
            nonce_key,
            handle: Handle {
                status,
                creds,
                node: cfg.node_id.clone(),
                usage,
                redirect: Arc::default(),
                client: client.clone(),
                timeout,
            },
            cfg: cfg.clone(),
            client,
            conn: None,
        })
    }

    /// The heartbeat thread: until `shutdown`, then it leaves the fleet (best effort).
    pub fn spawn(
        mut self,
        quotas: Arc<Quotas>,
        control: Arc<crate::net::Control>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<JoinHandle<()>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("turnd-cluster".into())
            .spawn(move || {
                rt.block_on(async {
                    let listener = tokio::spawn(sessions::listen(
                        self.client.clone(),
                        self.cfg.node_id.clone(),
                        control.clone(),
                        self.cfg.heartbeat,
                        shutdown.clone(),
                    ));
                    self.run(quotas, control, shutdown).await;
                    let _ = listener.await;
                })
            })
            .context("cannot start the cluster thread")
    }

    async fn run(
        &mut self,
        quotas: Arc<Quotas>,
        control: Arc<crate::net::Control>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Start from the state `join` found, so only changes are logged.
        let mut was_up = self.handle.status.is_up();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            let result = self.heartbeat(&quotas, &control).await;
            let up = result.is_ok();
            match result {
                Ok((fleet, nodes)) => {
                    quotas.set_fleet(fleet);
                    self.handle
                        .status
                        .nodes
                        .store(nodes.min(255) as u8, Ordering::Relaxed);
                }
                Err(ref e) => {
                    self.conn = None;
                    // No fresh view of the others: admit here.
                    for t in [Transport::Udp, Transport::Tcp, Transport::Tls] {
                        self.handle.redirect.set(t, None);
                    }
                    quotas.set_fleet(FleetCounts {
                        closed: self.cfg.quota_fail == QuotaFail::Closed,
                        ..FleetCounts::default()
                    });
                    if was_up {
                        tracing::warn!(node = %self.cfg.node_id, error = %e,
                            quota_fail = ?self.cfg.quota_fail,
                            "cluster: Redis unreachable; quotas on local limits");
                    }
                }
            }
            if up && !was_up {
                tracing::warn!(node = %self.cfg.node_id, "cluster: Redis reachable; fleet quotas again");
            }
            self.handle.status.up.store(up as u8, Ordering::Relaxed);
            was_up = up;
        }
        if let Some(conn) = self.conn.as_mut() {
            // What ended before the stop still goes out (best effort, one timeout).
            usage::take(&mut self.usage_rx, &mut self.pending);
            let _ = tokio::time::timeout(
                self.cfg.timeout,
                usage::flush(conn, &self.cfg.node_id, &mut self.pending),
            )
            .await;
            let leave = redis::Script::new(LEAVE);
            let _ = tokio::time::timeout(
                self.cfg.timeout,
                leave
                    .arg(PREFIX)
                    .arg(&self.cfg.node_id)
                    .invoke_async::<i64>(conn),
            )
            .await;
        }
    }

    /// One heartbeat: (the other nodes' counts, the number of live nodes).
    async fn heartbeat(
        &mut self,
        quotas: &Quotas,
        control: &Arc<crate::net::Control>,
    ) -> anyhow::Result<(FleetCounts, usize)> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.client, self.cfg.timeout).await?);
        }
        let conn = self.conn.as_mut().context("no connection")?;
        let (total, users) = quotas.local_counts();
        let script = redis::Script::new(HEARTBEAT);
        let mut inv = script.prepare_invoke();
        inv.arg(PREFIX)
            .arg(&self.cfg.node_id)
            .arg(self.cfg.lease.as_millis() as u64)
            .arg(total);
        for (user, n) in &users {
            inv.arg(user).arg(*n);
        }
        let reply: Vec<String> = tokio::time::timeout(self.cfg.timeout, inv.invoke_async(conn))
            .await
            .context("Redis timed out")??;
        let nodes: usize = tokio::time::timeout(
            self.cfg.timeout,
            conn.zcard::<_, usize>(format!("{PREFIX}nodes")),
        )
        .await
        .context("Redis timed out")??;
        tokio::time::timeout(self.cfg.timeout, read_creds(conn, &self.handle.creds))
            .await
            .context("Redis timed out")??;
        let live = tokio::time::timeout(
            self.cfg.timeout,
            sessions::publish(conn, control, &self.cfg.node_id, self.cfg.lease),
        )
        .await
        .context("Redis timed out")??;
        self.interim.due(&live, &self.realm, &mut self.pending);
        let busy = (self.cfg.redirect_above > 0 && total > self.cfg.redirect_above)
            || control.is_draining();
        let c = control.clone();
        let packets = tokio::task::spawn_blocking(move || relayed_packets(&c))
            .await
            .context("metrics")?;
        let (pkts, cpu) = self.sampler.sample(packets);
        let own = redirect::Own {
            allocations: total,
            pkts,
            cpu,
            busy,
        };
        let loads =
            tokio::time::timeout(self.cfg.timeout, redirect::exchange(conn, &self.cfg, &own))
                .await
                .context("Redis timed out")??;
        redirect::apply(&self.handle.redirect, &self.cfg.node_id, busy, &loads);
        if self.pending.is_empty() {
            usage::take(&mut self.usage_rx, &mut self.pending);
        }
        tokio::time::timeout(
            self.cfg.timeout,
            usage::flush(conn, &self.cfg.node_id, &mut self.pending),
        )
        .await
        .context("Redis timed out")??;
        Ok((parse_fleet(&reply), nodes))
    }
}

/// Packets relayed by every shard since start, both directions, every transport (from the
/// shards' metrics snapshots).
fn relayed_packets(control: &crate::net::Control) -> u64 {
    control
        .metrics()
        .iter()
        .flat_map(|m| {
            let t = &m.engine.traffic;
            t.packets_to_peer.iter().chain(&t.packets_to_client)
        })
        .fold(0u64, |a, &b| a.saturating_add(b))
}

/// REST secrets and static users from Redis into `creds`.
async fn read_creds(conn: &mut MultiplexedConnection, creds: &FleetCreds) -> anyhow::Result<()> {
    let secrets: Vec<String> = conn.smembers(format!("{PREFIX}rest-secrets")).await?;
    let users: Vec<(String, String)> = conn.hgetall(format!("{PREFIX}users")).await?;
    let bad = creds.install(secrets, users);
    if bad > 0 {
        tracing::warn!(
            count = bad,
            "cluster: users in {PREFIX}users whose value is not 32 hex digits are ignored"
        );
    }
    Ok(())
}

/// The heartbeat's reply: the others' total, then ("u:" principal, count) pairs, summed per
/// principal. Malformed entries are skipped.
fn parse_fleet(reply: &[String]) -> FleetCounts {
    let mut fleet = FleetCounts::default();
    let Some((total, pairs)) = reply.split_first() else {
        return fleet;
    };
    fleet.total = total.parse().unwrap_or(0);
    for pair in pairs.chunks_exact(2) {
        let [field, n] = pair else { continue };
        let (Some(user), Ok(n)) = (field.strip_prefix("u:"), n.parse::<usize>()) else {
            continue;
        };
        let slot = fleet.by_user.entry(user.to_string()).or_insert(0);
        *slot = slot.saturating_add(n);
    }
    fleet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_replies_sum_per_principal_and_skip_junk() {
        let r: Vec<String> = [
            "5", "u:alice", "2", "u:bob", "1", "u:alice", "1", "x", "y", "u:z",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let f = parse_fleet(&r);
        assert_eq!(f.total, 5);
        assert_eq!(f.by_user.get("alice"), Some(&3));
        assert_eq!(f.by_user.get("bob"), Some(&1));
        assert_eq!(f.by_user.len(), 2);
        assert_eq!(parse_fleet(&[]), FleetCounts::default());
    }
}
