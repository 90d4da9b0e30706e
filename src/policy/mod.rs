//! Peer-address policy (SECURITY.md "Peer policy"): which peers a relay may talk to.
//!
//! Owns the built-in special-purpose deny list, the canonicalisation of IPv6 forms that carry
//! an IPv4 address, and [`PeerFilter`], which combines them with the operator's allow and deny
//! lists and the server's own addresses.
//!
//! CONTRACT (used by the engine; keep these signatures): [`PeerPolicy::permits`] is called on
//! ChannelBind and Send, and on data from peers; [`PeerPolicy::permits_ip`] on
//! CreatePermission, whose peer port is meaningless. `permits_ip` applies only the allow and
//! deny lists; the per-port checks (port 0, the server's own addresses) happen in `permits`,
//! on every datagram. Neither allocates: the lists are split by family, aggregated and checked
//! with a short linear scan.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config;

pub trait PeerPolicy: Send + Sync {
    /// May a relay exchange datagrams with `peer`?
    fn permits(&self, peer: SocketAddr) -> bool;
    /// May a permission be installed for `ip` (CreatePermission has no meaningful port)?
    fn permits_ip(&self, ip: IpAddr) -> bool;
    /// [`Self::permits`] for an allocation of `user` (its principal). The default ignores the
    /// user; `crate::probe` uses it to let only the ready probe reach its loopback echo.
    fn permits_for(&self, _user: &str, peer: SocketAddr) -> bool {
        self.permits(peer)
    }
    /// [`Self::permits_ip`] for an allocation of `user` (its principal).
    fn permits_ip_for(&self, _user: &str, ip: IpAddr) -> bool {
        self.permits_ip(ip)
    }
}

/// The special-purpose networks denied by default. IPv4-mapped, IPv4-compatible, NAT64
/// (64:ff9b::/96), 6to4 and Teredo forms are not listed: [`canonical`] maps them to IPv4 first.
const DEFAULT_DENY: [&str; 22] = [
    "0.0.0.0/8",       // "this network", includes 0.0.0.0 (CVE-2020-26262)
    "127.0.0.0/8",     // loopback
    "10.0.0.0/8",      // RFC 1918
    "100.64.0.0/10",   // shared address space (CGNAT), RFC 6598
    "169.254.0.0/16",  // link local, cloud metadata (169.254.169.254)
    "172.16.0.0/12",   // RFC 1918
    "192.0.0.0/24",    // IETF protocol assignments, RFC 6890
    "192.0.2.0/24",    // TEST-NET-1, RFC 5737
    "192.168.0.0/16",  // RFC 1918
    "198.18.0.0/15",   // benchmarking, RFC 2544
    "198.51.100.0/24", // TEST-NET-2
    "203.0.113.0/24",  // TEST-NET-3
    "224.0.0.0/4",     // multicast
    "240.0.0.0/4",     // reserved, includes 255.255.255.255
    "::/128",          // unspecified (CVE-2020-26262)
    "::1/128",         // loopback
    "fe80::/10",       // link local
    "fc00::/7",        // unique local, includes fd00:ec2::254 (AWS metadata)
    "fec0::/10",       // deprecated site local
    "ff00::/8",        // multicast
    "2001:db8::/32",   // documentation, RFC 3849
    "64:ff9b:1::/48",  // local-use NAT64, RFC 8215
];

/// The built-in special-purpose deny list (SECURITY.md).
pub fn default_deny_list() -> Vec<IpNet> {
    DEFAULT_DENY
        .iter()
        // Invariant: the constants above are valid CIDR (checked by a unit test).
        .map(|net| net.parse().expect("built-in deny list is valid CIDR"))
        .collect()
}

/// Map IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96), 6to4 (2002::/16) and Teredo
/// (2001::/32) forms to the IPv4 address they carry; other addresses are returned unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => embedded_ipv4(v6).map_or(ip, IpAddr::V4),
    }
}

/// The IPv4 address an IPv6 address stands for, if it is one of the forms that carry one.
fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = v6.octets();
    let seg = v6.segments();
    let low32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        // ::ffff:a.b.c.d (RFC 4291 §2.5.5.2)
        return Some(v4);
    }
    if o[..12] == [0; 12] {
        // ::a.b.c.d, deprecated IPv4-compatible (RFC 4291 §2.5.5.1); :: and ::1 are themselves.
        return (u32::from(low32) > 1).then_some(low32);
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 well-known prefix (RFC 6052 §2.1)
        return Some(low32);
    }
    if seg[0] == 0x2002 {
        // 6to4 (RFC 3056 §2): 2002:AABB:CCDD::/48
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo (RFC 4380 §4): the client's IPv4 address, bitwise inverted, in the low 32 bits.
        return Some(Ipv4Addr::from(!u32::from(low32)));
    }
    None
}

/// A set of networks split by family, so a lookup scans only its own family.
#[derive(Debug, Clone, Default)]
struct NetSet {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl NetSet {
    /// Builds the set; an IPv6 net inside ::ffff:0:0/96 also counts as the IPv4 net it maps.
    fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push(n),
                IpNet::V6(n) => {
                    v4.extend(mapped_ipv4_net(n));
                    v6.push(n);
                }
            }
        }
        NetSet {
            v4: Ipv4Net::aggregate(&v4),
            v6: Ipv6Net::aggregate(&v6),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => self.v4.iter().any(|n| n.contains(&ip)),
            IpAddr::V6(ip) => self.v6.iter().any(|n| n.contains(&ip)),
        }
    }
}

/// `::ffff:a.b.c.d/96+n` -> `a.b.c.d/n`.
fn mapped_ipv4_net(net: Ipv6Net) -> Option<Ipv4Net> {
    let prefix = net.prefix_len().checked_sub(96)?;
    let v4 = net.network().to_ipv4_mapped()?;
    Ipv4Net::new(v4, prefix).ok()
}

/// Allow list > deny list (built-in + configured) > allowed. The server's own listener
/// addresses are always denied (no relay loops), and peer port 0 is refused.
#[derive(Debug, Clone)]
pub struct PeerFilter {
    allow: NetSet,
    deny: NetSet,
    /// Own addresses with a concrete IP, canonicalised.
    own: Vec<SocketAddr>,
    /// Ports of own addresses bound to 0.0.0.0 or [::]: denied on every IP.
    own_wildcard_ports: Vec<u16>,
    /// Relay IPs (canonicalised) with the relay port range: every port in it is denied.
    own_relays: Vec<(IpAddr, config::PortRange)>,
}

impl PeerFilter {
    pub fn new(policy: &config::Policy, own_addresses: Vec<SocketAddr>) -> Self {
        let mut own = Vec::new();
        let mut own_wildcard_ports = Vec::new();
        for addr in own_addresses {
            if addr.ip().is_unspecified() {
                own_wildcard_ports.push(addr.port());
            } else {
                own.push(SocketAddr::new(canonical(addr.ip()), addr.port()));
            }
        }
        own.sort_unstable();
        own.dedup();
        own_wildcard_ports.sort_unstable();
        own_wildcard_ports.dedup();
        PeerFilter {
            allow: NetSet::new(policy.allow_peers.iter().copied()),
            deny: NetSet::new(
                default_deny_list()
                    .into_iter()
                    .chain(policy.deny_peers.iter().copied()),
            ),
            own,
            own_wildcard_ports,
            own_relays: Vec::new(),
        }
    }

    /// Also deny every port of `ports` on each of `relay_ips` (the addresses relays are bound
    /// to or advertised as), so one allocation cannot relay into another. An unspecified IP
    /// is skipped: it cannot name the server from outside (pass the advertised addresses), and
    /// matching it against every IP would refuse most peers. Loopback and private relay
    /// addresses are denied by the default list anyway.
    pub fn with_relay_ports(mut self, relay_ips: &[IpAddr], ports: config::PortRange) -> Self {
        for ip in relay_ips.iter().filter(|ip| !ip.is_unspecified()) {
            self.own_relays.push((canonical(*ip), ports));
        }
        self
    }

    /// Is `ip:port` (ip canonical) one of the server's own addresses?
    fn is_own(&self, ip: IpAddr, port: u16) -> bool {
        self.own_wildcard_ports.contains(&port)
            || self
                .own
                .iter()
                .any(|own| own.ip() == ip && own.port() == port)
            || self
                .own_relays
                .iter()
                .any(|(own, ports)| *own == ip && ports.contains(port))
    }
}

impl PeerPolicy for PeerFilter {
    fn permits(&self, peer: SocketAddr) -> bool {
        peer.port() != 0
            && !self.is_own(canonical(peer.ip()), peer.port())
            && self.permits_ip(peer.ip())
    }

    fn permits_ip(&self, raw: IpAddr) -> bool {
        let ip = canonical(raw);
        if self.allow.contains(ip) || self.allow.contains(raw) {
            return true;
        }
        !(self.deny.contains(ip) || self.deny.contains(raw))
    }
}

#[cfg(test)]
mod tests;
