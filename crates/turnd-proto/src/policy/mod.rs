//! Peer-address policy (SECURITY.md "Peer policy"): which peers a relay may talk to.
//!
//! Owns the built-in special-purpose deny list, the canonicalisation of IPv6 forms that carry
//! an IPv4 address, and [`PeerFilter`], which combines them with the operator's allow and deny
//! lists and the server's own addresses.
//!
//! CONTRACT (used by the engine; keep these signatures): [`PeerPolicy::permits`] is called on
//! ChannelBind and Send, and on data from peers; [`PeerPolicy::permits_permission`] on
//! CreatePermission, whose peer port only matters for the server's own IPs.
//! [`PeerPolicy::permits_ip`] applies only the allow and deny lists; the per-port checks
//! (port 0, the server's own addresses) happen in `permits`, on every datagram. Neither allocates: the lists are split by family, aggregated and checked
//! with a short linear scan.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::settings;

/// Which peers a relay may exchange datagrams with (see the module's CONTRACT).
pub trait PeerPolicy: Send + Sync {
    /// May a relay exchange datagrams with `peer`?
    fn permits(&self, peer: SocketAddr) -> bool;
    /// May a permission be installed for `ip` (CreatePermission has no meaningful port)?
    fn permits_ip(&self, ip: IpAddr) -> bool;
    /// May CreatePermission install a permission for `peer`? The permission is for the IP;
    /// the port is looked at only to refuse the server's own IPs outside the relay range
    /// (datagrams are checked per port by [`PeerPolicy::permits`] anyway).
    fn permits_permission(&self, peer: SocketAddr) -> bool {
        self.permits_ip(peer.ip())
    }
    /// [`Self::permits`] for an allocation of `user` (its principal). The default ignores the
    /// user; `crate::probe` uses it to let only the ready probe reach its loopback echo.
    fn permits_for(&self, _user: &str, peer: SocketAddr) -> bool {
        self.permits(peer)
    }
    /// [`Self::permits_ip`] for an allocation of `user` (its principal).
    fn permits_ip_for(&self, _user: &str, ip: IpAddr) -> bool {
        self.permits_ip(ip)
    }
    /// [`Self::permits_permission`] for an allocation of `user` (its principal).
    fn permits_permission_for(&self, _user: &str, peer: SocketAddr) -> bool {
        self.permits_permission(peer)
    }
}

/// One entry of the built-in deny list: the network, the RFC that reserves it, and why it is
/// not a peer a relay should reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    /// The network, as text.
    pub net: &'static str,
    /// The RFC that reserves it.
    pub rfc: &'static str,
    /// What it is.
    pub note: &'static str,
}

const fn r(net: &'static str, rfc: &'static str, note: &'static str) -> Reserved {
    Reserved { net, rfc, note }
}

/// The special-purpose networks denied by default (the IANA IPv4 and IPv6 special-purpose
/// registries, less the globally reachable entries), one table with the RFC of each.
/// IPv4-mapped, IPv4-compatible, SIIT, NAT64 (64:ff9b::/96), 6to4 and Teredo forms are not
/// listed: [`canonical`] maps them to IPv4 first.
pub const DEFAULT_DENY: &[Reserved] = &[
    r(
        "0.0.0.0/8",
        "RFC 791",
        "\"this network\", includes 0.0.0.0 (CVE-2020-26262)",
    ),
    r("10.0.0.0/8", "RFC 1918", "private"),
    r("100.64.0.0/10", "RFC 6598", "shared address space (CGNAT)"),
    r("127.0.0.0/8", "RFC 1122", "loopback"),
    r(
        "169.254.0.0/16",
        "RFC 3927",
        "link local, cloud metadata (169.254.169.254)",
    ),
    r("172.16.0.0/12", "RFC 1918", "private"),
    r("192.0.0.0/24", "RFC 6890", "IETF protocol assignments"),
    r("192.0.2.0/24", "RFC 5737", "TEST-NET-1"),
    r(
        "192.88.99.0/24",
        "RFC 7526",
        "deprecated 6to4 relay anycast",
    ),
    r("192.168.0.0/16", "RFC 1918", "private"),
    r("198.18.0.0/15", "RFC 2544", "benchmarking"),
    r("198.51.100.0/24", "RFC 5737", "TEST-NET-2"),
    r("203.0.113.0/24", "RFC 5737", "TEST-NET-3"),
    r("224.0.0.0/4", "RFC 5771", "multicast"),
    r(
        "240.0.0.0/4",
        "RFC 1112",
        "reserved, includes 255.255.255.255 (RFC 919)",
    ),
    r("::/128", "RFC 4291", "unspecified (CVE-2020-26262)"),
    r("::1/128", "RFC 4291", "loopback"),
    r("64:ff9b:1::/48", "RFC 8215", "local-use NAT64"),
    r("100::/64", "RFC 6666", "discard-only"),
    r("2001:2::/48", "RFC 5180", "benchmarking"),
    r("2001:10::/28", "RFC 4843", "ORCHID (deprecated)"),
    r("2001:20::/28", "RFC 7343", "ORCHIDv2"),
    r("2001:db8::/32", "RFC 3849", "documentation"),
    r("3fff::/20", "RFC 9637", "documentation"),
    r("5f00::/16", "RFC 9602", "SRv6 SIDs"),
    r(
        "fc00::/7",
        "RFC 4193",
        "unique local, includes fd00:ec2::254 (AWS metadata)",
    ),
    r("fe80::/10", "RFC 4291", "link local"),
    r("fec0::/10", "RFC 3879", "deprecated site local"),
    r("ff00::/8", "RFC 4291", "multicast"),
];

/// The built-in special-purpose deny list (SECURITY.md), in [`DEFAULT_DENY`] order.
pub fn default_deny_list() -> Vec<IpNet> {
    DEFAULT_DENY
        .iter()
        // Invariant: the table holds valid CIDR (checked by a unit test).
        .map(|e| e.net.parse().expect("built-in deny list is valid CIDR"))
        .collect()
}

/// Map IPv4-mapped, IPv4-compatible, SIIT (::ffff:0:0/96), NAT64 (64:ff9b::/96), 6to4
/// (2002::/16) and Teredo (2001::/32) forms to the IPv4 address they carry; other addresses
/// are returned unchanged.
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
    if seg[..6] == [0, 0, 0, 0, 0xffff, 0] {
        // ::ffff:0:a.b.c.d, SIIT's IPv4-translated form (RFC 2765 §2.1)
        return Some(low32);
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

/// Allow list > deny list (built-in + configured) > allowed, with two rules on top that the
/// allow list does not lift: the server's listener addresses are always denied (no relay
/// loops) and peer port 0 is refused. The server's own IPs (interfaces, relay and external
/// addresses, as the daemon collects them) are denied on every port outside the relay
/// port range, so relay-to-relay calls keep working; only an allow-list entry naming that
/// very address (/32 or /128) lifts this.
#[derive(Debug, Clone)]
pub struct PeerFilter {
    allow: NetSet,
    deny: NetSet,
    /// Host entries (/32, /128) of the allow list, canonicalised: they lift the own-IP rule.
    allow_hosts: Vec<IpAddr>,
    /// Own addresses with a concrete IP, canonicalised.
    own: Vec<SocketAddr>,
    /// Ports of own addresses bound to 0.0.0.0 or [::]: denied on every IP.
    own_wildcard_ports: Vec<u16>,
    /// The server's own IPs (canonicalised, no loopback): denied outside `relay_ports`.
    own_ips: Vec<IpAddr>,
    relay_ports: Option<settings::PortRange>,
}

impl PeerFilter {
    /// A filter from the operator's policy and the server's own listener addresses; add its own
    /// IPs with [`PeerFilter::with_own_ips`].
    pub fn new(policy: &settings::Policy, own_addresses: Vec<SocketAddr>) -> Self {
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
        let mut allow_hosts: Vec<IpAddr> = policy
            .allow_peers
            .iter()
            .filter(|n| n.prefix_len() == n.max_prefix_len())
            .map(|n| canonical(n.addr()))
            .collect();
        allow_hosts.sort_unstable();
        allow_hosts.dedup();
        PeerFilter {
            allow: NetSet::new(policy.allow_peers.iter().copied()),
            deny: NetSet::new(
                default_deny_list()
                    .into_iter()
                    .chain(policy.deny_peers.iter().copied()),
            ),
            allow_hosts,
            own,
            own_wildcard_ports,
            own_ips: Vec::new(),
            relay_ports: None,
        }
    }

    /// Deny `ips` on every port outside `relay_ports` (relay to relay stays possible).
    /// Unspecified addresses are skipped (they cannot name the server from outside; the
    /// interfaces do), and so is loopback: it is in the default deny list, and allowing it
    /// (as the development profile does) is an explicit choice to reach local services.
    pub fn with_own_ips(
        mut self,
        ips: impl IntoIterator<Item = IpAddr>,
        relay_ports: settings::PortRange,
    ) -> Self {
        for ip in ips {
            let ip = canonical(ip);
            if !ip.is_unspecified() && !ip.is_loopback() && !self.own_ips.contains(&ip) {
                self.own_ips.push(ip);
            }
        }
        self.own_ips.sort_unstable();
        self.relay_ports = Some(relay_ports);
        self
    }

    /// The server's own IPs this filter knows (canonical), for logs and tests.
    pub fn own_ips(&self) -> &[IpAddr] {
        &self.own_ips
    }

    /// Is `ip:port` (ip canonical) one of the server's listener addresses?
    fn is_listener(&self, ip: IpAddr, port: u16) -> bool {
        self.own_wildcard_ports.contains(&port)
            || self
                .own
                .iter()
                .any(|own| own.ip() == ip && own.port() == port)
    }

    /// Is `ip:port` (ip canonical) a port of one of the server's own IPs that is not a relay
    /// port, and not lifted by an allow-list host entry?
    fn is_own_service(&self, ip: IpAddr, port: u16) -> bool {
        self.own_ips.contains(&ip)
            && !self.relay_ports.is_some_and(|r| r.contains(port))
            && !self.allow_hosts.contains(&ip)
    }
}

impl PeerPolicy for PeerFilter {
    fn permits(&self, peer: SocketAddr) -> bool {
        let ip = canonical(peer.ip());
        peer.port() != 0
            && !self.is_listener(ip, peer.port())
            && !self.is_own_service(ip, peer.port())
            && self.permits_ip(peer.ip())
    }

    fn permits_ip(&self, raw: IpAddr) -> bool {
        let ip = canonical(raw);
        if self.allow.contains(ip) || self.allow.contains(raw) {
            return true;
        }
        !(self.deny.contains(ip) || self.deny.contains(raw))
    }

    fn permits_permission(&self, peer: SocketAddr) -> bool {
        !self.is_own_service(canonical(peer.ip()), peer.port()) && self.permits_ip(peer.ip())
    }
}

#[cfg(test)]
mod tests;
