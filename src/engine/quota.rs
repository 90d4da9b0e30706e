//! Allocation quotas shared by all shards: total and per user (486 when exceeded).
//!
//! Touched only when an allocation is created or deleted, never per packet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

pub struct Quotas {
    max_total: AtomicUsize,
    max_per_user: AtomicUsize,
    total: AtomicUsize,
    by_user: Mutex<HashMap<String, usize>>,
}

impl Quotas {
    pub fn new(max_total: usize, max_per_user: usize) -> Self {
        Quotas {
            max_total: AtomicUsize::new(max_total),
            max_per_user: AtomicUsize::new(max_per_user),
            total: AtomicUsize::new(0),
            by_user: Mutex::new(HashMap::new()),
        }
    }

    /// New limits (reload); allocations over them are kept, new ones refused.
    pub fn set_limits(&self, max_total: usize, max_per_user: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_user.store(max_per_user, Ordering::Relaxed);
    }

    /// Reserve one allocation for `user`; false: quota reached.
    pub fn acquire(&self, user: &str) -> bool {
        let mut by_user = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) >= self.max_total.load(Ordering::Relaxed) {
            return false;
        }
        let n = by_user.get(user).copied().unwrap_or(0);
        if n >= self.max_per_user.load(Ordering::Relaxed) {
            return false;
        }
        by_user.insert(user.to_string(), n + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn release(&self, user: &str) {
        let mut by_user = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                by_user.remove(user);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}
