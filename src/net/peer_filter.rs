//! The peer filter of a running server: the configured policy plus the server's own
//! addresses, including every local interface address (getifaddrs). The proto crate's
//! [`PeerFilter`] takes the list; enumerating interfaces is I/O, so it lives here.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use turnd_proto::policy::PeerFilter;

use crate::config::Config;

/// The filter a server uses: the configured policy, its bound `listeners`, and as own
/// IPs every local interface address, the relay addresses and both sides of every
/// `relay.external` mapping. Called at start and on every reload, so addresses added
/// since are picked up. Fails when the interfaces cannot be listed (closed, not open).
pub fn for_server(config: &Config, listeners: &[SocketAddr]) -> io::Result<PeerFilter> {
    let mut ips = interface_addresses()?;
    ips.extend(config.relay.ipv4.map(IpAddr::V4));
    ips.extend(config.relay.ipv6.map(IpAddr::V6));
    for m in &config.relay.external {
        ips.extend([m.public, m.private]);
    }
    ips.extend(listeners.iter().map(SocketAddr::ip));
    Ok(PeerFilter::new(&config.policy, listeners.to_vec()).with_own_ips(ips, config.relay.ports))
}

/// Every address of every local interface (getifaddrs), as the kernel reports them now.
pub fn interface_addresses() -> io::Result<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(Ipv4Addr::from(v4.ip())))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnd_proto::policy::{canonical, PeerPolicy};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_own_ips_are_left_to_the_lists() {
        // The development profile allows loopback peers; its loopback relays are not "own IPs".
        let c = Config::development();
        let f = PeerFilter::new(&c.policy, c.listen.udp.clone())
            .with_own_ips([ip("127.0.0.1"), ip("::1")], c.relay.ports);
        assert!(f.permits(sa("127.0.0.1:5000")));
        assert!(f.permits(sa("[::1]:5000")));
        assert!(!f.permits(sa("127.0.0.1:3478")));
        assert!(f.own_ips().is_empty());
    }

    #[test]
    fn for_server_collects_interfaces_relays_and_both_sides_of_external() {
        let mut c = Config::secure_default();
        c.relay.ipv4 = Some("8.8.4.4".parse().unwrap());
        c.relay.ipv6 = Some("2606:4700::1".parse().unwrap());
        c.relay.external = vec![crate::config::ExternalMapping {
            public: ip("1.0.0.1"),
            private: ip("8.8.4.4"),
        }];
        let f = for_server(&c, &[sa("9.9.9.9:3478"), sa("0.0.0.0:3478")]).unwrap();
        for own in ["8.8.4.4", "2606:4700::1", "1.0.0.1", "9.9.9.9"] {
            assert!(f.own_ips().contains(&ip(own)), "{own}: {:?}", f.own_ips());
            assert!(!f.permits(SocketAddr::new(ip(own), 5353)), "{own}");
            assert!(f.permits(SocketAddr::new(ip(own), 50000)), "{own}");
        }
        // Every interface address (whatever this machine has) is in, loopback aside.
        for a in interface_addresses().unwrap() {
            let a = canonical(a);
            assert_eq!(
                f.own_ips().contains(&a),
                !a.is_loopback() && !a.is_unspecified(),
                "{a}"
            );
        }
        assert!(!f.permits(sa("9.9.9.9:3478")));
        assert!(f.permits(sa("8.8.8.8:5353")));
    }

    #[test]
    fn development_profile_allows_loopback_peers() {
        let c = Config::development();
        let f = PeerFilter::new(&c.policy, c.listen.udp.clone());
        assert!(f.permits(sa("127.0.0.1:5000")));
        assert!(f.permits(sa("[::1]:5000")));
        assert!(!f.permits(sa("127.0.0.1:3478")));
        assert!(!f.permits(sa("[::1]:3478")));
        assert!(!f.permits(sa("10.0.0.1:5000")));
    }
}
