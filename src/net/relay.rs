//! Relay sockets: bind a UDP socket on the relay address of a family, with a port from the
//! configured range. Ports are not tracked: the kernel says which are taken, so a port is
//! free again as soon as its socket closes, and shards need no shared state.
//!
//! The search is bounded: [`BIND_TRIES`] random ports (or even/odd pairs), then failure
//! (the Allocate gets 508). A nearly full range costs at most that many `bind` calls on the
//! shard thread, never a scan of the range.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{PortRange, Relay as RelayConfig};
use turnd_proto::engine::{Family, Quotas};

/// How many random ports (or pairs) one Allocate tries before it fails with 508.
pub const BIND_TRIES: u32 = 32;

fn relay_ip(cfg: &RelayConfig, family: Family) -> io::Result<IpAddr> {
    match family {
        Family::V4 => cfg.ipv4.map(IpAddr::V4),
        Family::V6 => cfg.ipv6.map(IpAddr::V6),
    }
    .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "no relay address for family"))
}

/// Try `bind` on up to `tries` candidates `first + step * k`, `k` random in `0..count`;
/// the first success wins. Errors other than "in use" end the search.
fn search<T>(
    first: u32,
    step: u32,
    count: u32,
    tries: u32,
    mut bind: impl FnMut(u16) -> io::Result<T>,
) -> io::Result<T> {
    let mut last_err = io::Error::new(io::ErrorKind::AddrInUse, "relay port range exhausted");
    if count == 0 {
        return Err(last_err);
    }
    // A random start and a stride coprime to `count`: distinct candidates while tries <= count.
    let start = rand::random::<u32>() % count;
    let stride = coprime_stride(count);
    for i in 0..tries.min(count) {
        let k = (u64::from(start) + u64::from(i) * u64::from(stride)) % u64::from(count);
        let port = (first + step * k as u32) as u16;
        match bind(port) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_err = e,
            Err(e) => return Err(e),
        }
    }
    Err(last_err)
}

/// A random stride in `1..count` coprime to `count` (1 when there is none cheaper to find).
fn coprime_stride(count: u32) -> u32 {
    fn gcd(mut a: u32, mut b: u32) -> u32 {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }
    for _ in 0..8 {
        let s = 1 + rand::random::<u32>() % count.max(1);
        if gcd(s, count) == 1 {
            return s;
        }
    }
    1
}

/// Bind a relay socket of `family` with a random free port from the range (even if
/// `even_port`), trying at most [`BIND_TRIES`] ports.
pub fn bind_relay(cfg: &RelayConfig, family: Family, even_port: bool) -> io::Result<UdpSocket> {
    let ip = relay_ip(cfg, family)?;
    let PortRange { min, max } = cfg.ports;
    let (min, max) = (u32::from(min), u32::from(max));
    let (first, step) = if even_port {
        (min.next_multiple_of(2), 2)
    } else {
        (min, 1)
    };
    let count = if first > max {
        0
    } else {
        (max - first) / step + 1
    };
    search(first, step, count, BIND_TRIES, |port| {
        bind_udp(SocketAddr::new(ip, port), false)
    })
}

/// Bind with `bind` at the relay address of `family` and a random port of the range, trying
/// at most [`BIND_TRIES`] ports (the TCP relays of RFC 6062, `net/tcp_relay.rs`).
pub fn bind_in_range<T>(
    cfg: &RelayConfig,
    family: Family,
    mut bind: impl FnMut(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let ip = relay_ip(cfg, family)?;
    let PortRange { min, max } = cfg.ports;
    let (min, max) = (u32::from(min), u32::from(max));
    let count = if min > max { 0 } else { max - min + 1 };
    search(min, 1, count, BIND_TRIES, |port| {
        bind(SocketAddr::new(ip, port))
    })
}

/// Bind an even port and the odd port after it (RTP and RTCP), both free, trying at most
/// [`BIND_TRIES`] pairs.
pub fn bind_pair(cfg: &RelayConfig, family: Family) -> io::Result<(UdpSocket, UdpSocket)> {
    let ip = relay_ip(cfg, family)?;
    let PortRange { min, max } = cfg.ports;
    let first_even = u32::from(min).next_multiple_of(2);
    if first_even + 1 > u32::from(max) {
        let e = io::Error::new(io::ErrorKind::AddrInUse, "relay port range too small");
        return Err(e);
    }
    // Even ports whose odd neighbour is still in the range.
    let pairs = (u32::from(max) - first_even - 1) / 2 + 1;
    search(first_even, 2, pairs, BIND_TRIES, |even| {
        let a = bind_udp(SocketAddr::new(ip, even), false)?;
        let b = bind_udp(SocketAddr::new(ip, even + 1), false)?;
        Ok((a, b))
    })
    .map_err(|_| io::Error::new(io::ErrorKind::AddrInUse, "no free even/odd port pair"))
}

/// Why a reservation was not held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldRefused {
    /// The user holds `max_reservations_per_user` already.
    UserCap,
    /// The user's (or the server's) allocation quota is used up.
    Quota,
    /// The table is full.
    Full,
}

impl std::fmt::Display for HoldRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HoldRefused::UserCap => "the user holds the most port reservations allowed",
            HoldRefused::Quota => "allocation quota reached",
            HoldRefused::Full => "too many port reservations",
        })
    }
}

impl std::error::Error for HoldRefused {}

struct Held {
    sock: UdpSocket,
    until: Instant,
    user: String,
}

/// Ports held for a later Allocate with RESERVATION-TOKEN. Shared by all shards, since that
/// Allocate comes from another 5-tuple; the sockets wait unregistered.
///
/// Each reservation belongs to the user whose Allocate made it: it counts against that
/// user's allocation quota (acquired on hold, released on take or expiry) and against
/// `max_reservations_per_user`. Expired ones are dropped by [`Reservations::sweep`], which
/// the shards' timers call every second, so nothing relies on later traffic to free them.
pub struct Reservations {
    inner: Mutex<Table>,
    max: usize,
    per_user: AtomicUsize,
    ttl: Duration,
    quotas: Arc<Quotas>,
}

#[derive(Default)]
struct Table {
    held: HashMap<[u8; 8], Held>,
    by_user: HashMap<String, usize>,
}

impl Table {
    fn remove(&mut self, token: &[u8; 8], quotas: &Quotas) -> Option<UdpSocket> {
        let h = self.held.remove(token)?;
        if let Some(n) = self.by_user.get_mut(&h.user) {
            *n -= 1;
            if *n == 0 {
                self.by_user.remove(&h.user);
            }
        }
        quotas.release(&h.user);
        Some(h.sock)
    }
}

impl Reservations {
    pub fn new(max: usize, per_user: usize, ttl: Duration, quotas: Arc<Quotas>) -> Self {
        Reservations {
            inner: Mutex::new(Table::default()),
            max,
            per_user: AtomicUsize::new(per_user),
            ttl,
            quotas,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New per-user cap (reload); reservations over it are kept until they expire.
    pub fn set_per_user(&self, per_user: usize) {
        self.per_user.store(per_user, Ordering::Relaxed);
    }

    /// Could `user` hold one more reservation now? (Checked before binding a pair.)
    pub fn admits(&self, user: &str) -> Result<(), HoldRefused> {
        let t = self.table();
        self.admits_locked(&t, user)
    }

    fn admits_locked(&self, t: &Table, user: &str) -> Result<(), HoldRefused> {
        if t.held.len() >= self.max {
            return Err(HoldRefused::Full);
        }
        if t.by_user.get(user).copied().unwrap_or(0) >= self.per_user.load(Ordering::Relaxed) {
            return Err(HoldRefused::UserCap);
        }
        Ok(())
    }

    /// Hold `sock` under `token` for `user` until `now + ttl`.
    pub fn hold(
        &self,
        token: [u8; 8],
        sock: UdpSocket,
        user: &str,
        now: Instant,
    ) -> Result<(), HoldRefused> {
        let mut t = self.table();
        self.admits_locked(&t, user)?;
        if t.held.contains_key(&token) {
            // 64 random bits collided: refuse rather than replace someone's reservation.
            return Err(HoldRefused::Full);
        }
        if !self.quotas.acquire(user) {
            return Err(HoldRefused::Quota);
        }
        *t.by_user.entry(user.to_string()).or_default() += 1;
        let until = now + self.ttl;
        let user = user.to_string();
        t.held.insert(token, Held { sock, until, user });
        Ok(())
    }

    /// The socket held under `token`, if it has not expired; the reservation ends.
    pub fn take(&self, token: &[u8; 8], now: Instant) -> Option<UdpSocket> {
        let mut t = self.table();
        let live = t.held.get(token).is_some_and(|h| h.until > now);
        let sock = t.remove(token, &self.quotas);
        if live {
            sock
        } else {
            None
        }
    }

    /// Drop the reservations expired at `now` (their ports are free again); how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut t = self.table();
        let expired: Vec<[u8; 8]> = t
            .held
            .iter()
            .filter(|(_, h)| h.until <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in &expired {
            t.remove(k, &self.quotas);
        }
        expired.len()
    }

    pub fn len(&self) -> usize {
        self.table().held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A non-blocking UDP socket bound to `addr`; IPv6 sockets are IPv6-only.
pub fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
        // Larger buffers absorb bursts on the shared listener sockets; best effort.
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    fn sock() -> UdpSocket {
        bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap()
    }

    #[test]
    fn reservations_expire_and_are_bounded() {
        let q = Arc::new(Quotas::new(100, 100));
        let r = Reservations::new(1, 5, TTL, q.clone());
        let now = Instant::now();
        let s = sock();
        let port = s.local_addr().unwrap();
        assert_eq!(r.hold([1; 8], s, "u", now), Ok(()));
        assert_eq!(r.hold([2; 8], sock(), "u", now), Err(HoldRefused::Full));
        assert!(r.take(&[9; 8], now).is_none());
        assert_eq!(r.take(&[1; 8], now).unwrap().local_addr().unwrap(), port);
        assert_eq!(q.total(), 0, "taking releases the quota");
        assert_eq!(r.hold([3; 8], sock(), "u", now), Ok(()));
        assert!(r.take(&[3; 8], now + TTL).is_none(), "expired");
        assert!(r.is_empty());
        assert_eq!(q.total(), 0);
    }

    #[test]
    fn reservations_are_capped_per_user_count_against_quota_and_are_swept() {
        let q = Arc::new(Quotas::new(100, 3));
        let r = Reservations::new(100, 2, TTL, q.clone());
        let now = Instant::now();
        assert_eq!(r.hold([1; 8], sock(), "alice", now), Ok(()));
        assert_eq!(r.hold([2; 8], sock(), "alice", now), Ok(()));
        assert_eq!(r.admits("alice"), Err(HoldRefused::UserCap));
        assert_eq!(
            r.hold([3; 8], sock(), "alice", now),
            Err(HoldRefused::UserCap)
        );
        assert_eq!(r.hold([4; 8], sock(), "bob", now), Ok(()));
        assert_eq!(q.total(), 3, "each held reservation holds a quota slot");
        assert!(q.acquire("alice"), "alice's third slot");
        assert!(
            !q.acquire("alice"),
            "alice's quota is used up by 2 reservations + 1"
        );
        q.release("alice");
        assert_eq!(r.sweep(now + TTL - Duration::from_millis(1)), 0);
        assert_eq!(r.sweep(now + TTL), 3);
        assert!(r.is_empty());
        assert_eq!(q.total(), 0, "expiry releases the quota");
        assert_eq!(r.hold([5; 8], sock(), "alice", now + TTL), Ok(()));
        // Quota, not the cap: a user at the allocation quota cannot reserve.
        let q = Arc::new(Quotas::new(100, 1));
        let r = Reservations::new(100, 2, TTL, q.clone());
        assert!(q.acquire("carol"));
        assert_eq!(
            r.hold([6; 8], sock(), "carol", now),
            Err(HoldRefused::Quota)
        );
    }

    #[test]
    fn search_is_bounded_and_tries_distinct_candidates() {
        for count in [1u32, 2, 7, 31, 32, 33, 4096, 8191, 16384] {
            let mut seen = std::collections::HashSet::new();
            let r: io::Result<()> = search(1000, 2, count, BIND_TRIES, |p| {
                assert!(seen.insert(p), "port {p} tried twice");
                assert!(p >= 1000 && u32::from(p) < 1000 + 2 * count && p % 2 == 0);
                Err(io::ErrorKind::AddrInUse.into())
            });
            assert!(r.is_err());
            assert_eq!(seen.len() as u32, count.min(BIND_TRIES));
        }
        // A free candidate is found when there is one among the tries.
        let r = search(5000, 1, 10, BIND_TRIES, |p| {
            if p == 5007 {
                Ok(p)
            } else {
                Err(io::ErrorKind::AddrInUse.into())
            }
        });
        assert_eq!(r.unwrap(), 5007);
        // Other errors end the search at once.
        let mut calls = 0;
        let r: io::Result<()> = search(5000, 1, 100, BIND_TRIES, |_| {
            calls += 1;
            Err(io::ErrorKind::PermissionDenied.into())
        });
        assert_eq!(
            (r.unwrap_err().kind(), calls),
            (io::ErrorKind::PermissionDenied, 1)
        );
    }

    #[test]
    fn pairs_are_even_then_odd() {
        let cfg = RelayConfig {
            ipv4: Some(std::net::Ipv4Addr::LOCALHOST),
            ipv6: None,
            ports: PortRange {
                min: 40001,
                max: 40100,
            },
            external: vec![],
            socket_buffer: 1 << 16,
            gso: true,
            coalesce: std::time::Duration::ZERO,
            tcp: false,
            tcp_max_connections: 16,
        };
        let (a, b) = bind_pair(&cfg, Family::V4).unwrap();
        let (pa, pb) = (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        );
        assert_eq!((pa % 2, pb), (0, pa + 1));
        assert!((40002..=40100).contains(&pa));
        let s = bind_relay(&cfg, Family::V4, true).unwrap();
        assert_eq!(s.local_addr().unwrap().port() % 2, 0);
    }
}
