//! Measurement for `turnctl load`: the counters threads share for the progress line, the
//! RTT histogram (fixed size, so recording never allocates), and turnctl's own CPU use
//! from /proc, to tell when the load generator rather than the server was the limit.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Totals all worker threads add to (per batch, not per packet), read by the progress line.
#[derive(Default)]
pub struct Counters {
    /// Datagrams/frames the clients handed to the kernel.
    pub sent: AtomicU64,
    /// Datagrams the echo peers received (relayed client -> peer).
    pub at_peer: AtomicU64,
    /// Echoes the clients got back (relayed peer -> client).
    pub received: AtomicU64,
    /// Payload bytes the echo peers received.
    pub peer_bytes: AtomicU64,
    /// Payload bytes the clients received.
    pub received_bytes: AtomicU64,
    pub allocated: AtomicU64,
    pub alloc_failed: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Relaxed);
        }
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
}

/// A histogram of round-trip times in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn rtt_histogram() -> Histogram<u64> {
    // Invariant: these bounds are valid (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// RTT percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Rtt {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Rtt {
    pub fn of(h: &Histogram<u64>) -> Rtt {
        if h.is_empty() {
            return Rtt::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Rtt {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// CPU ticks (user + system) of this process and of some of its threads at one moment.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    process: u64,
    threads: Vec<u64>,
}

/// How busy turnctl itself was between two samples.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuUse {
    /// Process CPU time / wall time, in percent of one core (200 = two cores busy).
    pub process_pct: f64,
    /// The busiest worker thread, in percent of one core.
    pub busiest_thread_pct: f64,
    /// Cores this process may run on (its affinity mask).
    pub cores: usize,
    /// True when turnctl was the limit: a worker thread or all allowed cores nearly full.
    pub saturated: bool,
}

/// The kernel thread id of the calling thread.
pub fn thread_id() -> i64 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// utime + stime from a /proc stat file (fields 14 and 15, counted after the `comm` field,
/// which may contain spaces and parentheses).
fn stat_ticks(path: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

impl CpuSample {
    pub fn now(thread_ids: &[i64]) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            process: stat_ticks("/proc/self/stat").unwrap_or(0),
            threads: thread_ids
                .iter()
                .map(|t| stat_ticks(&format!("/proc/self/task/{t}/stat")).unwrap_or(0))
                .collect(),
        }
    }

    /// CPU use from `self` (earlier) to `later`.
    pub fn until(&self, later: &CpuSample) -> CpuUse {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let wall = later
            .at
            .duration_since(self.at)
            .max(Duration::from_millis(1))
            .as_secs_f64();
        let pct = |ticks: u64| ticks as f64 / hz / wall * 100.0;
        let process_pct = pct(later.process.saturating_sub(self.process));
        let busiest_thread_pct = self
            .threads
            .iter()
            .zip(&later.threads)
            .map(|(a, b)| pct(b.saturating_sub(*a)))
            .fold(0.0, f64::max);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let usable = cores.min(self.threads.len().max(1)) as f64;
        CpuUse {
            process_pct,
            busiest_thread_pct,
            cores,
            saturated: busiest_thread_pct >= 90.0 || process_pct >= 90.0 * usable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_ticks() {
        let t = thread_id();
        let a = CpuSample::now(&[t]);
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(150) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        let u = a.until(&CpuSample::now(&[t]));
        // A 150 ms spin shows up as CPU time of this thread and process; the share depends on
        // how busy the machine is (14% seen with a full test suite beside it), so only > 0.
        assert!(u.busiest_thread_pct > 0.0, "{u:?}");
        assert!(u.process_pct > 0.0, "{u:?}");
    }

    #[test]
    fn percentiles_in_ms() {
        let mut h = rtt_histogram();
        for us in 1..=1000u64 {
            h.record(us).unwrap();
        }
        let r = Rtt::of(&h);
        assert!((r.p50_ms - 0.5).abs() < 0.01, "{r:?}");
        assert!((r.p99_ms - 0.99).abs() < 0.01, "{r:?}");
    }
}
