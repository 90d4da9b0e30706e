//! Per-source-IP budgets of unauthenticated answers in fixed memory, shared by all shards:
//! owns the bucket tables and the rate decisions.
//!
//! Two budgets, so that one kind of traffic cannot starve the other (issue 10, item 10):
//! - **challenges**: answers to requests without MESSAGE-INTEGRITY (the plain 401 every
//!   client needs first, and 400/420 to unauthenticated requests). Their cost is reflection.
//! - **failures**: answers to requests that carried MESSAGE-INTEGRITY and failed (401 for a
//!   wrong password or unknown user, 438, 400). Their cost is password guessing. A NAT
//!   neighbour guessing (or a spoofer replaying garbage) from the victim's IP spends this one
//!   and leaves the victim's first challenge alone.
//!
//! Each source maps through a keyed hash (random key per process, so an attacker cannot aim
//! at a victim's bucket) to one of [`BUCKETS`] lock-free cells. Each cell runs GCRA, the
//! single-word form of a token bucket: it stores the "theoretical arrival time" in nanoseconds
//! and admits `per_sec` units per second with bursts of `2 * per_sec`.
//!
//! The source is the IP only, never the port. IPv6 sources are keyed by their /64 so that one
//! host cannot dodge the budget by rotating addresses inside its prefix; IPv4-mapped IPv6 is
//! keyed as the IPv4 address it carries.
//!
//! Collisions are accepted: sources sharing a cell share a budget. With 4096 cells that only
//! matters when thousands of sources are failing auth at once, and then dropping answers is
//! what we want anyway. Memory stays 32 KiB per budget whatever the traffic.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Number of cells; a power of two so the index is a mask.
const BUCKETS: usize = 4096;
const NANOS_PER_SEC: u64 = 1_000_000_000;
const NANOS_PER_MS: u64 = 1_000_000;

/// The two per-IP budgets of answers to requests that did not authenticate.
pub struct FailureBudget {
    challenges: Gcra,
    failures: Gcra,
}

impl FailureBudget {
    /// Both budgets at `per_sec` answers per IP per second, bursts up to `2 * per_sec`.
    pub fn new(per_sec: u32) -> Self {
        Self::split(per_sec, per_sec)
    }

    /// `challenges_per_sec` plain challenges and `failures_per_sec` failed attempts with
    /// MESSAGE-INTEGRITY per IP per second, each with bursts of twice that.
    pub fn split(challenges_per_sec: u32, failures_per_sec: u32) -> Self {
        FailureBudget {
            challenges: Gcra::new(challenges_per_sec),
            failures: Gcra::new(failures_per_sec),
        }
    }

    /// Spend one challenge (an answer to a request without MESSAGE-INTEGRITY) for `ip` at
    /// `now_ms`; false means: over budget, drop silently.
    pub fn try_challenge(&self, ip: IpAddr, now_ms: u64) -> bool {
        self.challenges.try_spend(ip, now_ms)
    }

    /// Spend one failure (an answer to a request whose MESSAGE-INTEGRITY did not verify, or
    /// whose nonce or user was bad) for `ip` at `now_ms`; false: drop silently.
    pub fn try_failure(&self, ip: IpAddr, now_ms: u64) -> bool {
        self.failures.try_spend(ip, now_ms)
    }

    /// The rates this budget was built with: (challenges, failures) per second.
    pub fn rates(&self) -> (u32, u32) {
        (self.challenges.per_sec, self.failures.per_sec)
    }
}

/// One table of GCRA cells.
struct Gcra {
    per_sec: u32,
    /// Nanoseconds one unit costs (`1 s / per_sec`); 0 when the budget is unlimited.
    cost_ns: u64,
    /// How far ahead of now a cell's arrival time may run: the burst, in nanoseconds.
    burst_ns: u64,
    /// Keyed SipHash; `salt` adds process randomness on top of std's per-instance keys.
    hasher: RandomState,
    salt: u64,
    /// Theoretical arrival time per cell, in nanoseconds on the caller's clock.
    cells: Box<[AtomicU64]>,
}

impl Gcra {
    /// `per_sec` answers per IP per second, bursts up to `2 * per_sec`; 0 is unlimited.
    fn new(per_sec: u32) -> Self {
        let (cost_ns, burst_ns) = if per_sec == 0 {
            (0, 0)
        } else {
            // At least 1 ns per unit so absurd rates stay finite.
            let cost = (NANOS_PER_SEC / u64::from(per_sec)).max(1);
            (cost, cost * 2 * u64::from(per_sec))
        };
        let cells = if per_sec == 0 { 0 } else { BUCKETS };
        Gcra {
            per_sec,
            cost_ns,
            burst_ns,
            hasher: RandomState::new(),
            salt: rand::random(),
            cells: (0..cells).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Spend one unit for `ip` at `now_ms`; false means: over budget.
    fn try_spend(&self, ip: IpAddr, now_ms: u64) -> bool {
        if self.cost_ns == 0 {
            return true;
        }
        let now = now_ms.saturating_mul(NANOS_PER_MS);
        let cell = &self.cells[self.index(ip)];
        let mut tat = cell.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(self.cost_ns);
            if next - now > self.burst_ns {
                return false;
            }
            match cell.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(current) => tat = current,
            }
        }
    }

    /// The cell for `ip`: keyed hash of the IPv4 address or of the IPv6 /64.
    fn index(&self, ip: IpAddr) -> usize {
        let mut h = self.hasher.build_hasher();
        self.salt.hash(&mut h);
        match ip {
            IpAddr::V4(v4) => (4u8, v4.octets()).hash(&mut h),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (4u8, v4.octets()).hash(&mut h),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    (6u8, prefix).hash(&mut h);
                }
            },
        }
        // Truncation intended: only the low bits pick the cell.
        (h.finish() as usize) & (BUCKETS - 1)
    }
}

impl fmt::Debug for FailureBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureBudget")
            .field("challenges_per_sec", &self.challenges.per_sec)
            .field("failures_per_sec", &self.failures.per_sec)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Spends until refused; returns how many were granted (capped to catch "never refuses").
    fn drain(b: &Gcra, ip: IpAddr, now_ms: u64) -> u32 {
        (0..10_000).take_while(|_| b.try_spend(ip, now_ms)).count() as u32
    }

    /// An address that does not share a cell with `ip` under this budget's key.
    fn other_cell(b: &Gcra, ip: IpAddr) -> IpAddr {
        (1..=255u8)
            .map(|i| IpAddr::from([198, 51, 100, i]))
            .find(|o| b.index(*o) != b.index(ip))
            .expect("255 addresses cannot all share one of 4096 cells")
    }

    #[test]
    fn budget_denies_after_burst() {
        let b = Gcra::new(10);
        assert_eq!(drain(&b, ip("192.0.2.1"), T0), 20);
        assert!(!b.try_spend(ip("192.0.2.1"), T0));
    }

    #[test]
    fn budget_refills_over_time() {
        let b = Gcra::new(10);
        let a = ip("192.0.2.1");
        assert_eq!(drain(&b, a, T0), 20);
        // 100 ms buys one unit at 10/s.
        assert!(!b.try_spend(a, T0 + 99));
        assert!(b.try_spend(a, T0 + 100));
        assert!(!b.try_spend(a, T0 + 100));
        // One second later: per_sec more.
        assert_eq!(drain(&b, a, T0 + 1_100), 10);
        // Long idle: the full burst again, never more.
        assert_eq!(drain(&b, a, T0 + 60_000), 20);
    }

    #[test]
    fn budget_sustained_rate_is_per_sec() {
        let b = Gcra::new(5);
        let a = ip("192.0.2.1");
        let granted: u32 = (0..100u64).map(|s| drain(&b, a, T0 + s * 1000)).sum();
        // Burst of 10 first, then 5 per second for the remaining 99 seconds.
        assert_eq!(granted, 10 + 99 * 5);
    }

    #[test]
    fn budget_ports_of_one_ip_share_a_bucket() {
        let b = Gcra::new(3);
        let c1: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let c2: SocketAddr = "192.0.2.1:2000".parse().unwrap();
        for _ in 0..3 {
            assert!(b.try_spend(c1.ip(), T0));
            assert!(b.try_spend(c2.ip(), T0));
        }
        assert!(!b.try_spend(c1.ip(), T0));
        assert!(!b.try_spend(c2.ip(), T0));
    }

    #[test]
    fn budget_ipv6_keyed_by_slash_64() {
        let b = Gcra::new(2);
        let addrs = [
            "2001:db8:1:2::1",
            "2001:db8:1:2::2",
            "2001:db8:1:2:ffff:ffff:ffff:ffff",
        ];
        let granted: u32 = addrs.iter().map(|a| drain(&b, ip(a), T0)).sum();
        assert_eq!(granted, 4);
        assert_eq!(b.index(ip("::ffff:192.0.2.1")), b.index(ip("192.0.2.1")));
    }

    #[test]
    fn budget_separate_ips_are_independent() {
        let b = Gcra::new(2);
        let a = ip("192.0.2.1");
        assert_eq!(drain(&b, a, T0), 4);
        assert_eq!(drain(&b, other_cell(&b, a), T0), 4);
    }

    #[test]
    fn budget_zero_is_unlimited() {
        let b = Gcra::new(0);
        assert_eq!(drain(&b, ip("192.0.2.1"), T0), 10_000);
    }

    #[test]
    fn budget_clock_going_backwards_does_not_grant_more() {
        let b = Gcra::new(10);
        let a = ip("192.0.2.1");
        assert_eq!(drain(&b, a, T0), 20);
        assert_eq!(drain(&b, a, T0 - 5_000), 0);
    }

    #[test]
    fn budget_shared_across_threads() {
        let b = Arc::new(Gcra::new(100));
        let a = ip("192.0.2.1");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || drain(&b, a, T0))
            })
            .collect();
        let granted: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(granted, 200);
    }

    #[test]
    fn challenges_and_failures_are_separate_budgets() {
        let b = FailureBudget::split(5, 3);
        let a = ip("192.0.2.1");
        let failures = (0..100).take_while(|_| b.try_failure(a, T0)).count();
        assert_eq!(failures, 6);
        // Guessing spent its budget; the first challenge of the same IP is still answered.
        let challenges = (0..100).take_while(|_| b.try_challenge(a, T0)).count();
        assert_eq!(challenges, 10);
        assert!(!b.try_failure(a, T0));
        assert_eq!(b.rates(), (5, 3));
    }
}
