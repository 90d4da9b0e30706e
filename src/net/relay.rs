//! Relay sockets: bind a UDP socket on the relay address of a family, with a port from the
//! configured range. Ports are not tracked: the kernel says which are taken, so a port is
//! free again as soon as its socket closes, and shards need no shared state.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{PortRange, Relay as RelayConfig};
use crate::engine::Family;

/// How long a port reserved with EVEN-PORT's R bit is held (RFC 8656 §7.2: 30 s).
pub const RESERVATION_TTL: Duration = Duration::from_secs(30);

fn relay_ip(cfg: &RelayConfig, family: Family) -> io::Result<IpAddr> {
    match family {
        Family::V4 => cfg.ipv4.map(IpAddr::V4),
        Family::V6 => cfg.ipv6.map(IpAddr::V6),
    }
    .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "no relay address for family"))
}

/// Bind a relay socket of `family` with a port from `ports` (even if `even_port`), starting
/// the search at a random port. Every port of the range is tried at most once.
pub fn bind_relay(cfg: &RelayConfig, family: Family, even_port: bool) -> io::Result<UdpSocket> {
    let ip = relay_ip(cfg, family)?;
    let PortRange { min, max } = cfg.ports;
    let span = u32::from(max) - u32::from(min) + 1;
    let start = rand::random::<u32>() % span;
    let mut last_err = io::Error::new(io::ErrorKind::AddrInUse, "relay port range exhausted");
    for i in 0..span {
        let port = (u32::from(min) + (start + i) % span) as u16;
        if even_port && port % 2 == 1 {
            continue;
        }
        match bind_udp(SocketAddr::new(ip, port), false) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_err = e,
            Err(e) => return Err(e),
        }
    }
    Err(last_err)
}

/// Bind an even port and the odd port after it (RTP and RTCP), both free.
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
    let start = rand::random::<u32>() % pairs;
    for i in 0..pairs {
        let even = (first_even + 2 * ((start + i) % pairs)) as u16;
        let Ok(a) = bind_udp(SocketAddr::new(ip, even), false) else {
            continue;
        };
        if let Ok(b) = bind_udp(SocketAddr::new(ip, even + 1), false) {
            return Ok((a, b));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free even/odd port pair",
    ))
}

/// Ports held for a later Allocate with RESERVATION-TOKEN. Shared by all shards, since that
/// Allocate comes from another 5-tuple; the sockets wait unregistered. Bounded in size;
/// expired entries are dropped (and their ports freed) whenever the table is touched.
pub struct Reservations {
    held: Mutex<HashMap<[u8; 8], (UdpSocket, Instant)>>,
    max: usize,
}

impl Reservations {
    pub fn new(max: usize) -> Self {
        Reservations {
            held: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// Hold `sock` under `token` until `now + RESERVATION_TTL`; false when the table is full.
    pub fn hold(&self, token: [u8; 8], sock: UdpSocket, now: Instant) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, (_, until)| *until > now);
        if held.len() >= self.max {
            return false;
        }
        held.insert(token, (sock, now + RESERVATION_TTL));
        true
    }

    /// The socket held under `token`, if it has not expired.
    pub fn take(&self, token: &[u8; 8], now: Instant) -> Option<UdpSocket> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, (_, until)| *until > now);
        held.remove(token).map(|(s, _)| s)
    }

    pub fn len(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
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

    #[test]
    fn reservations_expire_and_are_bounded() {
        let r = Reservations::new(1);
        let now = Instant::now();
        let s = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let port = s.local_addr().unwrap();
        assert!(r.hold([1; 8], s, now));
        let s2 = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert!(!r.hold([2; 8], s2, now), "full");
        assert!(r.take(&[9; 8], now).is_none());
        assert_eq!(r.take(&[1; 8], now).unwrap().local_addr().unwrap(), port);
        let s3 = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert!(r.hold([3; 8], s3, now));
        assert!(r.take(&[3; 8], now + RESERVATION_TTL).is_none(), "expired");
        assert!(r.is_empty());
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
        };
        let (a, b) = bind_pair(&cfg, Family::V4).unwrap();
        let (pa, pb) = (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        );
        assert_eq!((pa % 2, pb), (0, pa + 1));
        assert!((40002..=40100).contains(&pa));
    }
}
