//! Allocation quotas shared by all shards: total and per user (486 when exceeded), and for
//! credentials minted by `/api/ice-servers` (principals `web:<network>`) their own caps per
//! client network and in total, so browsers can never take the whole server.
//!
//! Touched only when an allocation is created or deleted, never per packet.
//!
//! In a fleet (`[cluster]`) the daemon's cluster task also keeps a [`FleetCounts`] here: what
//! the other nodes hold, read from their Redis leases. [`Quotas::acquire`] admits against
//! `limit - others' counts` from that cache and never waits on the network; the cache is as
//! old as the last heartbeat, so nodes admitting at the same moment can over-admit by what
//! they admit within one heartbeat interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Allocation counters and limits, shared by every shard of a server.
pub struct Quotas {
    max_total: AtomicUsize,
    max_per_user: AtomicUsize,
    total: AtomicUsize,
    by_user: Mutex<HashMap<String, usize>>,
    /// Per minted principal (never above `max_per_user`) and for all minted ones together.
    max_per_minted: AtomicUsize,
    max_minted_total: AtomicUsize,
    minted_total: AtomicUsize,
    /// What the rest of the fleet holds (empty when standalone or on local limits).
    fleet: Mutex<FleetCounts>,
    /// `[policy] max_bps_per_allocation`: bits per second per allocation and direction, 0
    /// unlimited. Engines copy it when they start and on reload (`Engine::set_shared`), so
    /// the data path never reads this atomic.
    max_bps_per_allocation: AtomicU64,
}

/// Allocations held by the other nodes of a fleet, as last read from Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Allocations of all other nodes together.
    pub total: usize,
    /// Allocations of the other nodes per principal (only principals holding some).
    pub by_user: HashMap<String, usize>,
    /// Refuse every new allocation (Redis unreachable and `quota_fail = "closed"`).
    pub closed: bool,
}

impl Quotas {
    /// Limits in total and per principal.
    pub fn new(max_total: usize, max_per_user: usize) -> Self {
        Quotas {
            max_total: AtomicUsize::new(max_total),
            max_per_user: AtomicUsize::new(max_per_user),
            total: AtomicUsize::new(0),
            by_user: Mutex::new(HashMap::new()),
            max_per_minted: AtomicUsize::new(usize::MAX),
            max_minted_total: AtomicUsize::new(usize::MAX),
            minted_total: AtomicUsize::new(0),
            fleet: Mutex::new(FleetCounts::default()),
            max_bps_per_allocation: AtomicU64::new(0),
        }
    }

    /// The bandwidth cap per allocation and direction, in bits per second (0: none). Set it
    /// before the shards' engines start or before the reload that hands them this `Quotas`.
    pub fn set_max_bps_per_allocation(&self, bps: u64) {
        self.max_bps_per_allocation.store(bps, Ordering::Relaxed);
    }

    /// The bandwidth cap per allocation and direction, in bits per second (0: none).
    pub fn max_bps_per_allocation(&self) -> u64 {
        self.max_bps_per_allocation.load(Ordering::Relaxed)
    }

    /// Replace the view of the other nodes' allocations (the cluster task, each heartbeat);
    /// `FleetCounts::default()` goes back to local limits.
    pub fn set_fleet(&self, fleet: FleetCounts) {
        *self.fleet.lock().unwrap_or_else(|e| e.into_inner()) = fleet;
    }

    /// This node's own allocations: in total and per principal (what it leases in a fleet).
    pub fn local_counts(&self) -> (usize, Vec<(String, usize)>) {
        let by_user = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let users = by_user.iter().map(|(u, n)| (u.clone(), *n)).collect();
        (self.total.load(Ordering::Relaxed), users)
    }

    /// Caps of minted principals: per client network and in total.
    pub fn set_minted_limits(&self, per_client: usize, total: usize) {
        self.max_per_minted.store(per_client, Ordering::Relaxed);
        self.max_minted_total.store(total, Ordering::Relaxed);
    }

    fn is_minted(user: &str) -> bool {
        user.starts_with(crate::auth::MINTED_USER_PREFIX)
    }

    /// New limits (reload); allocations over them are kept, new ones refused.
    pub fn set_limits(&self, max_total: usize, max_per_user: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_user.store(max_per_user, Ordering::Relaxed);
    }

    /// Reserve one allocation for `user`; false: quota reached.
    pub fn acquire(&self, user: &str) -> bool {
        let mut by_user = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let (others_total, others_user) = {
            let fleet = self.fleet.lock().unwrap_or_else(|e| e.into_inner());
            if fleet.closed {
                return false;
            }
            (fleet.total, fleet.by_user.get(user).copied().unwrap_or(0))
        };
        let total = self
            .total
            .load(Ordering::Relaxed)
            .saturating_add(others_total);
        if total >= self.max_total.load(Ordering::Relaxed) {
            return false;
        }
        let minted = Self::is_minted(user);
        let mut max_per_user = self.max_per_user.load(Ordering::Relaxed);
        if minted {
            let max = self.max_minted_total.load(Ordering::Relaxed);
            if self.minted_total.load(Ordering::Relaxed) >= max {
                return false;
            }
            max_per_user = max_per_user.min(self.max_per_minted.load(Ordering::Relaxed));
        }
        let n = by_user.get(user).copied().unwrap_or(0);
        if n.saturating_add(others_user) >= max_per_user {
            return false;
        }
        by_user.insert(user.to_string(), n + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        if minted {
            self.minted_total.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Give back one allocation of `user` taken by [`Quotas::acquire`].
    pub fn release(&self, user: &str) {
        let mut by_user = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                by_user.remove(user);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
            if Self::is_minted(user) {
                self.minted_total.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// This node's allocations (live and pending).
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_principals_have_their_own_caps() {
        let q = Quotas::new(100, 5);
        q.set_minted_limits(2, 3);
        assert!(q.acquire("web:192.0.2.0/24"));
        assert!(q.acquire("web:192.0.2.0/24"));
        assert!(!q.acquire("web:192.0.2.0/24"), "per network");
        assert!(q.acquire("web:198.51.100.0/24"));
        assert!(!q.acquire("web:203.0.113.0/24"), "in total");
        assert!(
            (0..5).all(|_| q.acquire("alice")),
            "others keep max_per_user"
        );
        q.release("web:192.0.2.0/24");
        assert!(q.acquire("web:203.0.113.0/24"));
        // Never above max_per_user.
        q.set_minted_limits(50, 50);
        let q2 = Quotas::new(100, 1);
        q2.set_minted_limits(50, 50);
        assert!(q2.acquire("web:x") && !q2.acquire("web:x"));
        assert_eq!(q.total(), 8);
    }

    #[test]
    fn fleet_counts_of_other_nodes_lower_the_local_room() {
        let q = Quotas::new(10, 3);
        q.set_fleet(FleetCounts {
            total: 8,
            by_user: [("alice".to_string(), 2)].into(),
            closed: false,
        });
        assert!(q.acquire("alice"));
        assert!(!q.acquire("alice"), "2 elsewhere + 1 here = 3");
        assert!(q.acquire("bob"));
        assert!(!q.acquire("carol"), "8 elsewhere + 2 here = 10 in total");
        assert_eq!(q.local_counts().0, 2);
        q.set_fleet(FleetCounts {
            closed: true,
            ..FleetCounts::default()
        });
        assert!(!q.acquire("carol"), "closed");
        q.set_fleet(FleetCounts::default());
        assert!(
            q.acquire("alice") && q.acquire("alice"),
            "local limits again"
        );
        let mut users = q.local_counts().1;
        users.sort();
        assert_eq!(users, [("alice".to_string(), 3), ("bob".to_string(), 1)]);
    }
}
