//! `[policy] max_bps_per_allocation`: a token bucket per allocation and direction.
//!
//! Each bucket is kept as one number, GCRA style: the instant (nanoseconds since the
//! engine's epoch) at which it would be full again. A datagram of `len` payload bytes costs
//! `len × 8 / bps` seconds; it passes when the bucket owes less than the burst after paying
//! for it, or when the bucket is full (so a datagram larger than the burst still passes, then
//! the bucket owes it). Over the cap the datagram is dropped: relayed data has no error path.
//!
//! Burst: a quarter second of the rate, at least [`MIN_BURST_BYTES`].
//!
//! Cost: with the cap at 0 (the default) the data path pays one branch and the state is an
//! empty `Vec`; with a cap, 24 bytes per allocation slot ([`RouteTable`](super::route)'s
//! slot numbers index it; grown on first use): the two buckets and the allocation's drops
//! per direction (for the session API; they start again when the cap is set to 0 and back).
//! Time is the `now` the caller passes in.

#![deny(clippy::indexing_slicing)]

use std::time::Instant;

use super::route::Slot;

/// Direction index: client -> peer.
pub(super) const TO_PEER: usize = 0;
/// Direction index: peer -> client.
pub(super) const TO_CLIENT: usize = 1;

/// The burst is never smaller than one full-size Ethernet datagram.
pub(super) const MIN_BURST_BYTES: u64 = 1500;

/// One engine's buckets and the cap they enforce.
#[derive(Debug, Default)]
pub(super) struct Bandwidth {
    /// The cap in bits per second; 0: off.
    bps: u64,
    /// Nanoseconds per payload byte, 32.32 fixed point.
    ns_per_byte: u128,
    /// How far (ns) a bucket may owe before a datagram is dropped.
    burst_ns: u64,
    /// Per slot: the buckets and drops.
    slots: Vec<Buckets>,
}

/// One allocation's buckets, per direction ([`TO_PEER`], [`TO_CLIENT`]).
#[derive(Debug, Default, Clone, Copy)]
struct Buckets {
    /// When the bucket is full again (ns since the epoch).
    full_at: [u64; 2],
    /// Datagrams dropped (saturating).
    dropped: [u32; 2],
}

impl Bandwidth {
    /// Is a cap set? The data path's only cost when it is not.
    #[inline(always)]
    pub(super) fn on(&self) -> bool {
        self.bps != 0
    }

    /// A new cap (start, reload). Existing buckets keep what they owe; 0 frees them.
    pub(super) fn set_cap(&mut self, bps: u64) {
        if bps == self.bps {
            return;
        }
        self.bps = bps;
        if bps == 0 {
            self.ns_per_byte = 0;
            self.burst_ns = 0;
            self.slots = Vec::new();
            return;
        }
        // 8e9 ns-bits per byte-second, in 32.32 fixed point.
        self.ns_per_byte = (8_000_000_000u128 << 32) / u128::from(bps);
        let burst_bytes = (bps / 8 / 4).max(MIN_BURST_BYTES);
        self.burst_ns = self.cost_ns(burst_bytes);
    }

    fn cost_ns(&self, bytes: u64) -> u64 {
        u64::try_from(u128::from(bytes).saturating_mul(self.ns_per_byte) >> 32).unwrap_or(u64::MAX)
    }

    /// A new allocation took `slot`: its buckets start full, its drops at 0.
    pub(super) fn reset(&mut self, slot: Slot) {
        if let Some(b) = self.slots.get_mut(slot.index()) {
            *b = Buckets::default();
        }
    }

    /// Datagrams of `slot`'s allocation dropped over the cap: [to_peer, to_client]. Still
    /// there after the allocation ended, until its slot is taken again.
    pub(super) fn dropped(&self, slot: Slot) -> [u64; 2] {
        self.slots
            .get(slot.index())
            .map_or([0, 0], |b| b.dropped.map(u64::from))
    }

    /// Drops counted elsewhere (the kernel fast path) for `slot`'s allocation.
    pub(super) fn add_dropped(&mut self, slot: Slot, dropped: [u64; 2]) {
        let i = slot.index();
        if i >= self.slots.len() {
            self.slots.resize(i + 1, Buckets::default());
        }
        if let Some(b) = self.slots.get_mut(i) {
            for (n, d) in b.dropped.iter_mut().zip(dropped) {
                *n = n.saturating_add(u32::try_from(d).unwrap_or(u32::MAX));
            }
        }
    }

    /// May `len` payload bytes go in direction `dir` (`TO_PEER`, `TO_CLIENT`) of `slot`'s
    /// allocation at `now`? Charges the bucket when they may. Call only when [`on`](Self::on).
    pub(super) fn admit(
        &mut self,
        epoch: Instant,
        now: Instant,
        slot: Slot,
        dir: usize,
        len: usize,
    ) -> bool {
        let t = u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
        let cost = self.cost_ns(len as u64);
        let i = slot.index();
        if i >= self.slots.len() {
            // Slots are dense (the route table reuses freed ones): bounded by allocations.
            self.slots.resize(i + 1, Buckets::default());
        }
        let burst = self.burst_ns;
        let Some(b) = self.slots.get_mut(i) else {
            return false;
        };
        let (Some(full_at), Some(dropped)) = (b.full_at.get_mut(dir), b.dropped.get_mut(dir))
        else {
            return false;
        };
        let start = (*full_at).max(t);
        let owed = start - t;
        if owed != 0 && owed.saturating_add(cost) > burst {
            *dropped = dropped.saturating_add(1);
            return false;
        }
        *full_at = start.saturating_add(cost);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn slot(i: u32) -> Slot {
        Slot::from_index(i)
    }

    /// How many of `n` datagrams of `len` bytes pass at one instant.
    fn burst_of(b: &mut Bandwidth, epoch: Instant, at: Instant, s: Slot, len: usize) -> usize {
        (0..100_000)
            .take_while(|_| b.admit(epoch, at, s, TO_PEER, len))
            .count()
    }

    #[test]
    fn the_burst_is_a_quarter_second_then_the_rate_refills_it() {
        let epoch = Instant::now();
        let mut b = Bandwidth::default();
        b.set_cap(800_000); // 100 kB/s: a burst of 25 000 bytes
        assert_eq!(burst_of(&mut b, epoch, epoch, slot(0), 1000), 25);
        // 10 ms refill 1000 bytes.
        let later = epoch + Duration::from_millis(10);
        assert_eq!(burst_of(&mut b, epoch, later, slot(0), 1000), 1);
        // Nothing more at the same instant, in either size.
        assert!(!b.admit(epoch, later, slot(0), TO_PEER, 1));
        // The other direction and another slot have their own buckets.
        assert!(b.admit(epoch, later, slot(0), TO_CLIENT, 1000));
        assert_eq!(burst_of(&mut b, epoch, later, slot(3), 1000), 25);
    }

    #[test]
    fn the_burst_is_at_least_one_full_size_datagram_and_bigger_ones_pass_when_full() {
        let epoch = Instant::now();
        let mut b = Bandwidth::default();
        b.set_cap(8_000); // 1 kB/s: a quarter second is 250 bytes, the burst 1500
        assert_eq!(burst_of(&mut b, epoch, epoch, slot(0), 500), 3);
        // A full bucket passes a datagram larger than the burst, then owes it.
        let full = epoch + Duration::from_secs(2);
        assert!(b.admit(epoch, full, slot(0), TO_PEER, 9000));
        // It owes 9 s; a 1-byte datagram passes once it owes no more than the burst, 1.5 s.
        assert!(!b.admit(epoch, full + Duration::from_secs(1), slot(0), TO_PEER, 1));
        assert!(!b.admit(
            epoch,
            full + Duration::from_millis(7400),
            slot(0),
            TO_PEER,
            1
        ));
        assert!(b.admit(
            epoch,
            full + Duration::from_millis(7600),
            slot(0),
            TO_PEER,
            1
        ));
    }

    #[test]
    fn over_a_long_run_the_rate_holds_within_a_datagram() {
        let epoch = Instant::now();
        let mut b = Bandwidth::default();
        let bps = 500_000u64;
        b.set_cap(bps);
        // Offered: 1200 bytes every millisecond (9.6 Mbit/s) for 10 s.
        let mut passed = 0u64;
        for ms in 0..10_000u64 {
            let at = epoch + Duration::from_millis(ms);
            if b.admit(epoch, at, slot(1), TO_CLIENT, 1200) {
                passed += 1200;
            }
        }
        let expected = bps / 8 * 10 + bps / 8 / 4; // rate x time + burst
        assert!(
            passed.abs_diff(expected) <= 1200,
            "passed {passed} bytes, expected {expected}"
        );
    }

    #[test]
    fn a_reused_slot_starts_full_and_cap_zero_frees_the_buckets() {
        let epoch = Instant::now();
        let mut b = Bandwidth::default();
        assert!(!b.on());
        b.set_cap(800_000);
        assert_eq!(burst_of(&mut b, epoch, epoch, slot(2), 1000), 25);
        b.reset(slot(2));
        assert_eq!(burst_of(&mut b, epoch, epoch, slot(2), 1000), 25);
        assert_eq!(b.slots.len(), 3);
        assert_eq!(b.dropped(slot(2)), [1, 0], "the one that stopped the count");
        b.reset(slot(2));
        assert_eq!(b.dropped(slot(2)), [0, 0]);
        assert_eq!(std::mem::size_of::<Buckets>(), 24);
        b.set_cap(0);
        assert!(!b.on());
        assert_eq!(b.slots.capacity(), 0);
    }

    #[test]
    fn extreme_caps_and_lengths_do_not_overflow() {
        let epoch = Instant::now();
        let mut b = Bandwidth::default();
        b.set_cap(u64::MAX);
        assert_eq!(
            burst_of(&mut b, epoch, epoch, slot(0), 65_535),
            100_000,
            "unlimited in effect"
        );
        b.set_cap(1);
        assert!(b.admit(epoch, epoch, slot(0), TO_PEER, usize::MAX));
        assert!(!b.admit(
            epoch,
            epoch + Duration::from_secs(3600),
            slot(0),
            TO_PEER,
            1
        ));
    }
}
