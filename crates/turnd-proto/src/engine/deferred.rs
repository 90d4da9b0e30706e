//! Requests parked while the authenticator asks elsewhere ([`Lookup::Pending`], the
//! webhook): kept here, bounded, and run again from the timer every [`RETRY`] until the
//! lookup answers, so the shard never waits. A parked request that still has no answer after
//! [`GIVE_UP`] is dropped (the webhook's own timeout answers long before).
//!
//! [`Lookup::Pending`]: crate::auth::Lookup::Pending

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{ClientAddr, Engine};

/// How often a parked request is run again.
pub(super) const RETRY: Duration = Duration::from_millis(5);
/// How long a request stays parked at most.
pub(super) const GIVE_UP: Duration = Duration::from_secs(10);
/// Parked requests per engine at most; more are dropped (UDP clients send again).
pub(super) const MAX_PARKED: usize = 256;
/// Parked requests per client address at most.
const MAX_PER_CLIENT: usize = 4;
/// A request longer than this is not parked (an Allocate is a few hundred bytes).
const MAX_LEN: usize = 2048;

/// One parked request.
#[derive(Debug)]
pub(super) struct Parked {
    retry_at: Instant,
    give_up: Instant,
    from: ClientAddr,
    raw: Vec<u8>,
}

/// The parked requests, in order of their next retry.
#[derive(Debug, Default)]
pub(super) struct Deferred {
    queue: VecDeque<Parked>,
    /// While a parked request runs again: its original give-up time.
    rerun: Option<Instant>,
    /// A request was parked since [`Engine::timeout_moved`] was last asked.
    moved: bool,
}

impl Deferred {
    /// The next retry, if any.
    pub(super) fn next(&self) -> Option<Instant> {
        self.queue.front().map(|p| p.retry_at)
    }

    /// How many are parked.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Forget `client`'s parked requests (its connection closed).
    pub(super) fn forget(&mut self, client: &ClientAddr) {
        self.queue.retain(|p| p.from != *client);
    }
}

impl Engine {
    /// Whether [`poll_timeout`](Engine::poll_timeout) may have moved earlier without any
    /// command or transmit (a request was parked) since the last call; clears the flag. An
    /// I/O layer that re-reads the timeout only after outputs asks this too.
    pub fn timeout_moved(&mut self) -> bool {
        std::mem::take(&mut self.deferred.moved)
    }

    /// Park `raw` from `from` until the lookup answers. A copy already parked (the same
    /// bytes: a UDP retransmission) is not parked twice.
    pub(super) fn defer(&mut self, now: Instant, from: ClientAddr, raw: &[u8]) {
        let d = &mut self.deferred;
        let give_up = d.rerun.unwrap_or(now + GIVE_UP);
        if now >= give_up || raw.len() > MAX_LEN || d.queue.len() >= MAX_PARKED {
            return;
        }
        let mine = d.queue.iter().filter(|p| p.from == from);
        if mine.clone().count() >= MAX_PER_CLIENT || mine.clone().any(|p| p.raw == raw) {
            return;
        }
        d.moved |= d.rerun.is_none();
        d.queue.push_back(Parked {
            retry_at: now + RETRY,
            give_up,
            from,
            raw: raw.to_vec(),
        });
    }

    /// Run the parked requests that are due at `now` again (each parks itself again if its
    /// lookup is still pending).
    pub(super) fn retry_deferred(&mut self, now: Instant) {
        let due = self
            .deferred
            .queue
            .iter()
            .take_while(|p| p.retry_at <= now)
            .count();
        let batch: Vec<Parked> = self.deferred.queue.drain(..due).collect();
        for p in batch {
            self.deferred.rerun = Some(p.give_up);
            self.on_stun(now, p.from, &p.raw);
        }
        self.deferred.rerun = None;
    }
}
