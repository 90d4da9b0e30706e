//! `[relay] coalesce`: interrupt moderation for the shard's UDP loop.
//!
//! At high packet rates spread over many allocations, each relay socket holds a datagram or
//! two when the loop reaches it, so every datagram pays its own wake-up, `epoll_wait`,
//! `recvmmsg` and `sendmmsg`. When the shard has been receiving more than
//! [`EXPECTED_PER_HOLD`] datagrams per hold interval and a loop turn found fewer than
//! [`SMALL_TURN`], the loop waits that interval before it polls again, so that the next
//! turn's calls carry several datagrams each (what a NIC's adaptive interrupt moderation
//! does). Nothing that was received waits: the turn's outputs have left before the hold.
//! Below the rate, or with full turns, the loop never holds, so latency at moderate load is
//! untouched. Measured in `docs/benchmarks.md`.

use std::time::{Duration, Instant};

/// A turn that received fewer datagrams than this is small: holding would gather more.
pub const SMALL_TURN: u64 = 16;
/// Holding pays when this many datagrams are expected to arrive during one hold: at 2.5 per
/// 50 µs hold (50k pkt/s) a hold cost more CPU per packet than it saved, at 10 it saved 20 %.
/// With 50 µs: holding from 80k datagrams/s.
pub const EXPECTED_PER_HOLD: f64 = 4.0;
/// The receive rate is measured over windows of this length (long enough that a paced 50k
/// pkt/s with bursts does not cross 80k in a window: 2 ms windows did, and held).
pub const WINDOW: Duration = Duration::from_millis(10);

/// The hold decision of one shard's UDP loop (plain state on the shard's thread).
pub struct Coalesce {
    hold: Duration,
    /// Datagrams per second above which holding pays.
    min_rate: f64,
    window_start: Instant,
    /// The loop's received count when the window started, and after the previous turn.
    window_from: u64,
    last: u64,
    /// The last window's receive rate, datagrams per second.
    rate: f64,
    /// Whether the thread's timer slack has been tightened (at the first hold, never at low
    /// rates).
    slack_tight: bool,
}

impl Coalesce {
    /// `hold` zero: never hold.
    pub fn new(hold: Duration, now: Instant) -> Coalesce {
        let min_rate = if hold.is_zero() {
            f64::INFINITY
        } else {
            EXPECTED_PER_HOLD / hold.as_secs_f64()
        };
        Coalesce {
            hold,
            min_rate,
            window_start: now,
            window_from: 0,
            last: 0,
            rate: 0.0,
            slack_tight: false,
        }
    }

    /// The loop's call after each turn: [`Coalesce::after_turn`] at the current time. Off, it
    /// returns at once without reading the clock; before the first hold it tightens the
    /// thread's timer slack ([`tighten_timer_slack`]).
    pub fn after_turn_now(&mut self, received: u64, idle: bool) -> Option<Duration> {
        if self.hold.is_zero() {
            return None;
        }
        let hold = self.after_turn(Instant::now(), received, idle)?;
        if !self.slack_tight {
            tighten_timer_slack();
            self.slack_tight = true;
        }
        Some(hold)
    }

    /// After every loop turn, given the loop's running count of received datagrams and
    /// whether the turn left nothing queued: how long to wait before polling again, if at
    /// all (never when work is queued).
    pub fn after_turn(&mut self, now: Instant, received: u64, idle: bool) -> Option<Duration> {
        let turn = received.saturating_sub(self.last);
        self.last = received;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW {
            self.rate = received.saturating_sub(self.window_from) as f64 / elapsed.as_secs_f64();
            self.window_start = now;
            self.window_from = received;
        }
        (idle && self.rate > self.min_rate && turn < SMALL_TURN).then_some(self.hold)
    }
}

/// Make this thread's timers (the hold's sleep) fire within a microsecond of their time
/// instead of the default 50 µs slack, which would stretch a 50 µs hold to 100.
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a value and changes only the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_micros(50);

    /// Feed turns of `per_turn` datagrams every `every` for `turns` turns; count the holds.
    fn holds(c: &mut Coalesce, t0: Instant, every: Duration, per_turn: u64, turns: u32) -> u32 {
        let (mut received, mut n) = (0, 0);
        for i in 1..=turns {
            received += per_turn;
            if c.after_turn(t0 + every * i, received, true).is_some() {
                n += 1;
            }
        }
        n
    }

    #[test]
    fn off_never_holds() {
        let t0 = Instant::now();
        let mut c = Coalesce::new(Duration::ZERO, t0);
        // 1M datagrams/s in turns of one.
        assert_eq!(holds(&mut c, t0, Duration::from_micros(1), 1, 10_000), 0);
        // The loop's call: off, it never holds and never touches the thread's timer slack.
        for received in 1..=10_000 {
            assert_eq!(c.after_turn_now(received, true), None);
        }
        assert!(!c.slack_tight);
    }

    #[test]
    fn the_loops_call_holds_at_a_high_rate_and_tightens_the_slack_once() {
        // Turns of two datagrams, 10 µs apart on the real clock (200k/s): after the first
        // window, every turn holds.
        let t0 = Instant::now();
        let mut c = Coalesce::new(HOLD, t0);
        let mut received = 0;
        let mut held = 0;
        while t0.elapsed() < Duration::from_millis(40) {
            let next = Instant::now() + Duration::from_micros(10);
            while Instant::now() < next {
                std::hint::spin_loop();
            }
            received += 2;
            if c.after_turn_now(received, true) == Some(HOLD) {
                held += 1;
                assert!(c.slack_tight);
            }
        }
        assert!(held > 0, "no hold at 200k datagrams/s");
    }

    #[test]
    fn a_moderate_rate_never_holds() {
        // 50k datagrams/s (2.5 per hold, under EXPECTED_PER_HOLD) in turns of one.
        let t0 = Instant::now();
        let mut c = Coalesce::new(HOLD, t0);
        assert_eq!(holds(&mut c, t0, Duration::from_micros(20), 1, 10_000), 0);
    }

    #[test]
    fn a_high_rate_of_small_turns_holds_after_the_first_window() {
        // 200k datagrams/s in turns of two: the first window measures, then every turn holds.
        let t0 = Instant::now();
        let mut c = Coalesce::new(HOLD, t0);
        let n = holds(&mut c, t0, Duration::from_micros(10), 2, 3_000);
        assert!((1_995..=2_005).contains(&n), "{n} holds of 3000 turns");
        assert_eq!(
            c.after_turn(t0 + Duration::from_millis(31), 6_002, true),
            Some(HOLD)
        );
        assert_eq!(
            c.after_turn(t0 + Duration::from_millis(32), 6_004, false),
            None,
            "never with work queued"
        );
    }

    #[test]
    fn full_turns_never_hold_at_any_rate() {
        // 1.6M datagrams/s in turns of SMALL_TURN: batches already carry enough.
        let t0 = Instant::now();
        let mut c = Coalesce::new(HOLD, t0);
        assert_eq!(
            holds(&mut c, t0, Duration::from_micros(10), SMALL_TURN, 3_000),
            0
        );
    }

    #[test]
    fn holding_stops_when_the_rate_falls() {
        let t0 = Instant::now();
        let mut c = Coalesce::new(HOLD, t0);
        assert!(holds(&mut c, t0, Duration::from_micros(10), 2, 3_000) > 0);
        // Then 10k datagrams/s: after at most one more window, no holds.
        let t1 = t0 + Duration::from_millis(30);
        let mut received = 6_000;
        let mut last_hold = None;
        for i in 1..=1_000u32 {
            received += 1;
            if c.after_turn(t1 + Duration::from_micros(100) * i, received, true)
                .is_some()
            {
                last_hold = Some(i);
            }
        }
        assert!(
            last_hold.unwrap_or(0) <= 100,
            "held until turn {last_hold:?}"
        );
    }
}
