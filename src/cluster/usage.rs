//! Usage records for billing: each ended allocation's record (node, user, realm, session id,
//! client, transport, start, end, bytes and packets each way) is logged at info (`event =
//! "usage"`, the JSON log) and appended to the Redis Stream `turnd:usage` (`XADD MAXLEN ~`
//! [`STREAM_MAX`]). The shards only `try_send` into a bounded queue ([`QUEUE`]); the
//! heartbeat thread writes the queue out. While Redis is down records wait in the queue and
//! go out when it is back; beyond [`QUEUE`] they are dropped and counted
//! (`turnd_cluster_usage_dropped_total`). Per-user labels stay out of Prometheus.
//!
//! Long allocations also get an interim record (`reason = "interim"`, counters so far,
//! `end` = when it was taken) every `usage_interval`, from the sessions the heartbeat
//! publishes; the final record carries the totals.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use turnd_proto::engine::{SessionId, SessionInfo, UsageRecord, UsageSink};

use super::PREFIX;

/// Records waiting for Redis, at most.
pub const QUEUE: usize = 65_536;
/// The stream's approximate cap (`MAXLEN ~`): the oldest records go first.
pub const STREAM_MAX: usize = 1_000_000;
/// Records per `XADD` pipeline.
const BATCH: usize = 1024;

/// The shards' side: log, then queue without waiting.
pub struct Queue {
    tx: mpsc::Sender<UsageRecord>,
    redact: bool,
    pub dropped: AtomicU64,
}

impl Queue {
    pub fn new(redact: bool) -> (Arc<Queue>, mpsc::Receiver<UsageRecord>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let q = Queue {
            tx,
            redact,
            dropped: AtomicU64::new(0),
        };
        (Arc::new(q), rx)
    }
}

fn secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl UsageSink for Queue {
    fn record(&self, r: UsageRecord) {
        let s = &r.session;
        tracing::info!(
            event = "usage",
            session = s.id.get(),
            user = %turnd_proto::redact::redact_user(&s.user, self.redact),
            realm = %r.realm,
            client = %turnd_proto::redact::redact_addr(&s.client, self.redact),
            transport = s.transport.as_str(),
            start = secs(s.created),
            end = secs(r.ended),
            reason = r.reason,
            bytes_to_peer = s.bytes_to_peer,
            bytes_to_client = s.bytes_to_client,
            packets_to_peer = s.packets_to_peer,
            packets_to_client = s.packets_to_client,
            bandwidth_dropped_to_peer = s.bandwidth_dropped[0],
            bandwidth_dropped_to_client = s.bandwidth_dropped[1],
            "usage"
        );
        if self.tx.try_send(r).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The stream entry's fields.
fn fields(node: &str, r: &UsageRecord) -> Vec<(&'static str, String)> {
    let s = &r.session;
    vec![
        ("node", node.to_string()),
        ("user", s.user.clone()),
        ("realm", r.realm.clone()),
        ("session", s.id.to_string()),
        ("client", s.client.to_string()),
        ("transport", s.transport.as_str().to_string()),
        ("start", secs(s.created).to_string()),
        ("end", secs(r.ended).to_string()),
        ("reason", r.reason.to_string()),
        ("bytes_to_peer", s.bytes_to_peer.to_string()),
        ("bytes_to_client", s.bytes_to_client.to_string()),
        ("packets_to_peer", s.packets_to_peer.to_string()),
        ("packets_to_client", s.packets_to_client.to_string()),
        (
            "bandwidth_dropped_to_peer",
            s.bandwidth_dropped[0].to_string(),
        ),
        (
            "bandwidth_dropped_to_client",
            s.bandwidth_dropped[1].to_string(),
        ),
    ]
}

/// Take up to [`BATCH`] queued records into `pending` (only when it is empty: what failed
/// to go out is retried first, so memory stays bounded by [`QUEUE`] + [`BATCH`]).
pub(super) fn take(rx: &mut mpsc::Receiver<UsageRecord>, pending: &mut Vec<UsageRecord>) {
    while pending.len() < BATCH {
        match rx.try_recv() {
            Ok(r) => pending.push(r),
            Err(_) => break,
        }
    }
}

/// `XADD` every pending record in one pipeline; cleared on success.
pub(super) async fn flush(
    conn: &mut redis::aio::MultiplexedConnection,
    node: &str,
    pending: &mut Vec<UsageRecord>,
) -> redis::RedisResult<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let key = format!("{PREFIX}usage");
    let mut pipe = redis::pipe();
    for r in pending.iter() {
        pipe.xadd_maxlen(
            &key,
            redis::streams::StreamMaxlen::Approx(STREAM_MAX),
            "*",
            &fields(node, r),
        )
        .ignore();
    }
    pipe.exec_async(conn).await?;
    pending.clear();
    Ok(())
}

/// Interim records for long allocations: when each live session was last reported.
pub(super) struct Interim {
    every: Duration,
    last: HashMap<SessionId, Instant>,
}

impl Interim {
    /// `every` zero: no interim records.
    pub(super) fn new(every: Duration) -> Self {
        Interim {
            every,
            last: HashMap::new(),
        }
    }

    /// Append a record for every session of `live` not reported for `every` (counted from
    /// when it was first seen) to `out`, unless `out` is already full.
    pub(super) fn due(&mut self, live: &[SessionInfo], realm: &str, out: &mut Vec<UsageRecord>) {
        if self.every.is_zero() {
            return;
        }
        let ids: HashSet<SessionId> = live.iter().map(|s| s.id).collect();
        self.last.retain(|id, _| ids.contains(id));
        let now = Instant::now();
        for s in live {
            let at = self.last.entry(s.id).or_insert(now);
            if now.duration_since(*at) >= self.every && out.len() < QUEUE {
                *at = now;
                out.push(UsageRecord {
                    session: s.clone(),
                    realm: realm.to_string(),
                    ended: SystemTime::now(),
                    reason: "interim",
                });
            }
        }
    }
}
