//! Relay sockets: bind a UDP socket on the relay address of a family, with a port from the
//! configured range. Ports are not tracked: the kernel says which are taken, so a port is
//! free again as soon as its socket closes, and shards need no shared state.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{PortRange, Relay as RelayConfig};
use crate::engine::Family;

/// Bind a relay socket of `family` with a port from `ports` (even if `even_port`), starting
/// the search at a random port. Every port of the range is tried at most once.
pub fn bind_relay(cfg: &RelayConfig, family: Family, even_port: bool) -> io::Result<UdpSocket> {
    let ip: IpAddr = match family {
        Family::V4 => cfg.ipv4.map(IpAddr::V4),
        Family::V6 => cfg.ipv6.map(IpAddr::V6),
    }
    .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "no relay address for family"))?;
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
