//! Sockets and shards: the I/O around the sans-IO engine. A shard ([`shard`]) is a thread
//! with its own engine, its UDP listener sockets, its stream connections ([`stream`]) and the
//! relay sockets ([`relay`]) of its allocations; [`Control`] reaches all shards from other
//! threads. Binding and wiring it all up is `crate::server`'s: `net` knows neither the admin
//! API nor the HTTP server.

pub mod coalesce;
mod control;
pub mod dtls;
pub mod health;
pub mod peer_filter;
pub mod relay;
pub mod revocations;
pub mod shard;
pub mod stream;
pub mod tcp_relay;
pub mod udp;

pub use control::{Control, ReloadReport};
pub use health::{Health, EXIT_SHARD_GONE};
pub use shard::ShardMetrics;

/// Counts summed over all shards, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub allocations: usize,
    pub permissions: usize,
    pub channels: usize,
}
