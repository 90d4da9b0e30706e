//! Usage records: what each allocation relayed, reported once when it ends (billing). The
//! engine hands a [`UsageRecord`] to the [`UsageSink`] set with [`Engine::with_usage`]; the
//! daemon's sink queues it for Redis and the log. Without a sink nothing is built.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::allocation::Counters;
use super::{Allocation, ClientAddr, Engine, SessionInfo};

/// One ended allocation: the session as the admin API shows it, with its realm, its end and
/// why it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// Id, user, client, transport, relays, start (`created`), bytes and packets each way.
    pub session: SessionInfo,
    /// The engine's realm.
    pub realm: String,
    /// When the allocation ended (whole seconds).
    pub ended: SystemTime,
    /// "expired", "refresh 0", "killed", ... (the "allocation deleted" log's reason).
    pub reason: &'static str,
}

/// Receives usage records on the shard thread: must queue and return, never block.
pub trait UsageSink: Send + Sync {
    /// Take one record (dropping it when full is the sink's choice, not the engine's).
    fn record(&self, record: UsageRecord);
}

impl Engine {
    /// Report every allocation's usage to `sink` when it ends.
    pub fn with_usage(mut self, sink: Arc<dyn UsageSink>) -> Self {
        self.usage = Some(sink);
        self
    }

    /// Wall-clock time of an engine instant (whole seconds, like the session API).
    pub(super) fn wall(&self, t: Instant) -> SystemTime {
        let unix = self.cfg.unix_at_epoch as i128
            + (t.saturating_duration_since(self.cfg.epoch).as_secs() as i128);
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64)
    }

    /// Hand `a`'s usage to the sink, if there is one.
    pub(super) fn report_usage(
        &self,
        now: Instant,
        client: ClientAddr,
        a: &Allocation,
        stats: &Counters,
        reason: &'static str,
    ) {
        let Some(sink) = &self.usage else { return };
        sink.record(UsageRecord {
            session: SessionInfo {
                id: a.id,
                user: a.user.to_string(),
                client: client.remote,
                transport: client.transport,
                relays: a.relays.iter().map(|r| self.advertise(r.bound)).collect(),
                created: self.wall(a.created),
                expires: self.wall(a.expires),
                bytes_to_peer: stats.bytes_to_peer,
                bytes_to_client: stats.bytes_to_client,
                packets_to_peer: stats.packets_to_peer,
                packets_to_client: stats.packets_to_client,
                bandwidth_dropped: self.bandwidth.dropped(a.slot),
                permissions: a.permissions.len(),
                channels: a.channels_by_number.len(),
            },
            realm: self.cfg.realm.clone(),
            ended: self.wall(now),
            reason,
        });
    }
}
