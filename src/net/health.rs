//! Liveness of the shards and panic containment helpers.
//!
//! A panic while the engine handles one input is caught in the shard (see
//! `shard::Shard::guarded`): the input is dropped, `turnd_engine_panics_total` counts it and
//! a rate-limited line says where it happened. If a shard thread or one of its long-lived
//! tasks (UDP listener, TCP/TLS accept loop, timer) nevertheless ends while the server is not
//! stopping, [`Health`] records which, `/readyz` and `/healthz` turn 503, and the binary
//! exits with [`EXIT_SHARD_GONE`] so that the service manager restarts it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// The exit code of `turnd` when a shard is gone (EX_SOFTWARE in sysexits.h).
pub const EXIT_SHARD_GONE: u8 = 70;

/// Which shards are gone, shared by the shards, the admin API and `main`.
pub struct Health {
    gone: Mutex<Vec<Option<String>>>,
    stopping: AtomicBool,
    failed: tokio::sync::Notify,
}

impl Health {
    pub fn new(shards: usize) -> Arc<Self> {
        Arc::new(Health {
            gone: Mutex::new(vec![None; shards]),
            stopping: AtomicBool::new(false),
            failed: tokio::sync::Notify::new(),
        })
    }

    /// From now on tasks and threads end on purpose.
    pub(crate) fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// `what` of shard `shard` ended unexpectedly.
    pub(super) fn mark_gone(&self, shard: usize, what: &str) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let panic_at = LAST_PANIC.with(|p| p.take());
        let reason = match &panic_at {
            Some(at) => format!("{what} ended (panic at {at})"),
            None => format!("{what} ended"),
        };
        tracing::error!(
            shard,
            reason,
            "a shard is gone; the server is no longer whole"
        );
        let mut gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = gone.get_mut(shard) {
            slot.get_or_insert(reason);
        }
        drop(gone);
        self.failed.notify_one();
    }

    /// (shard, what ended) of every shard that is gone.
    pub fn gone(&self) -> Vec<(usize, String)> {
        let gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        gone.iter()
            .enumerate()
            .filter_map(|(i, g)| g.clone().map(|r| (i, r)))
            .collect()
    }

    pub fn is_whole(&self) -> bool {
        self.gone().is_empty()
    }

    /// Resolves once a shard is gone.
    pub async fn failed(&self) {
        while self.is_whole() {
            self.failed.notified().await;
        }
    }

    /// Marks `what` of `shard` gone when dropped (a task or thread ending by return, panic or
    /// cancellation), unless the server is stopping.
    pub(crate) fn guard(self: &Arc<Self>, shard: usize, what: &'static str) -> Guard {
        Guard {
            health: self.clone(),
            shard,
            what,
        }
    }
}

pub(crate) struct Guard {
    health: Arc<Health>,
    shard: usize,
    what: &'static str,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.health.mark_gone(self.shard, self.what);
    }
}

thread_local! {
    /// Where the last panic on this thread happened ("file:line"), set by the panic hook.
    static LAST_PANIC: Cell<Option<String>> = const { Cell::new(None) };
}

/// Where the last panic on this thread happened, if it was not asked for yet.
pub(super) fn take_panic_location() -> Option<String> {
    LAST_PANIC.with(|p| p.take())
}

/// Install (once per process) a panic hook that keeps panics on shard threads off stderr:
/// the shard logs them itself, rate-limited and without the payload of formatted messages
/// (which might carry request data). Other threads get the previous hook.
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let on_shard = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with(SHARD_THREAD_PREFIX));
            if on_shard {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()));
                LAST_PANIC.with(|p| p.set(at));
            } else {
                previous(info);
            }
        }));
    });
}

/// Shard threads are named `turnd-shard-<i>`.
pub(crate) const SHARD_THREAD_PREFIX: &str = "turnd-shard-";

/// The panic payload if it is a string literal (it cannot carry request data); formatted
/// messages are withheld.
pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &'static str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .unwrap_or("(formatted message withheld)")
}

/// At most one log line per `interval`; the lines in between are counted, and the next
/// line says how many were suppressed. One per shard and kind of event (single thread).
pub(super) struct LogLimit {
    interval: Duration,
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl LogLimit {
    pub(super) const fn new(interval: Duration) -> Self {
        LogLimit {
            interval,
            last: Cell::new(None),
            suppressed: Cell::new(0),
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub(super) fn allow(&self, now: Instant) -> Option<u64> {
        match self.last.get() {
            Some(t) if now.saturating_duration_since(t) < self.interval => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.replace(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limit_allows_one_line_per_interval_and_counts_the_rest() {
        let l = LogLimit::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(l.allow(t), Some(0));
        for i in 1..=5 {
            assert_eq!(l.allow(t + Duration::from_secs(i)), None);
        }
        assert_eq!(l.allow(t + Duration::from_secs(10)), Some(5));
        assert_eq!(l.allow(t + Duration::from_secs(11)), None);
        assert_eq!(l.allow(t + Duration::from_secs(25)), Some(1));
    }

    #[test]
    fn health_records_gone_shards_unless_stopping() {
        let h = Health::new(3);
        assert!(h.is_whole());
        drop(h.guard(1, "UDP loop"));
        assert_eq!(h.gone(), vec![(1, "UDP loop ended".to_string())]);
        let h = Health::new(1);
        h.set_stopping();
        drop(h.guard(0, "timer"));
        assert!(h.is_whole());
    }
}
