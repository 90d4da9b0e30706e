use super::*;
use crate::settings::{self, PortRange};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn policy(allow: &[&str], deny: &[&str]) -> settings::Policy {
    settings::Policy {
        allow_peers: allow.iter().map(|n| n.parse().unwrap()).collect(),
        deny_peers: deny.iter().map(|n| n.parse().unwrap()).collect(),
        ..Default::default()
    }
}

fn filter(allow: &[&str], deny: &[&str], own: &[&str]) -> PeerFilter {
    PeerFilter::new(&policy(allow, deny), own.iter().map(|a| sa(a)).collect())
}

/// Network, broadcast and one address in between.
fn samples(net: IpNet) -> [IpAddr; 3] {
    let (first, last) = (net.network(), net.broadcast());
    let middle = match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => IpAddr::V4(Ipv4Addr::from(
            ((u64::from(u32::from(a)) + u64::from(u32::from(b))) / 2) as u32,
        )),
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            IpAddr::V6(Ipv6Addr::from(u128::from(a) / 2 + u128::from(b) / 2))
        }
        _ => unreachable!("a network has one family"),
    };
    [first, middle, last]
}

#[test]
fn default_deny_table_is_valid_and_cites_an_rfc_per_entry() {
    let nets = default_deny_list();
    assert_eq!(nets.len(), DEFAULT_DENY.len());
    for (e, net) in DEFAULT_DENY.iter().zip(&nets) {
        assert_eq!(net.to_string(), e.net, "{} is written canonically", e.net);
        assert_eq!(net.trunc(), *net, "{} is prefix-aligned", e.net);
        assert!(
            e.rfc.starts_with("RFC ") && e.rfc[4..].parse::<u32>().is_ok(),
            "{e:?}"
        );
        assert!(!e.note.is_empty(), "{e:?}");
    }
    for documented in [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "fe80::/10",
        "fc00::/7",
        "fec0::/10",
        "ff00::/8",
        "2001:db8::/32",
        "64:ff9b:1::/48",
        "3fff::/20",
        "2001:2::/48",
        "100::/64",
        "2001:10::/28",
        "2001:20::/28",
        "5f00::/16",
    ] {
        let net: IpNet = documented.parse().unwrap();
        assert!(nets.contains(&net), "{documented} missing from the table");
    }
}

#[test]
fn every_default_deny_net_denied() {
    let f = filter(&[], &[], &[]);
    for net in default_deny_list() {
        for addr in samples(net) {
            assert!(!f.permits(SocketAddr::new(addr, 5000)), "{addr} in {net}");
            if let IpAddr::V4(v4) = addr {
                let mapped = IpAddr::V6(v4.to_ipv6_mapped());
                assert!(
                    !f.permits(SocketAddr::new(mapped, 5000)),
                    "{mapped} in {net}"
                );
                let nat64 = IpAddr::V6(Ipv6Addr::from(
                    0x0064_ff9b_u128 << 96 | u128::from(u32::from(v4)),
                ));
                assert!(!f.permits(SocketAddr::new(nat64, 5000)), "{nat64} in {net}");
            }
        }
    }
}

#[test]
fn canonical_maps_embedded_ipv4() {
    let cases = [
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::127.0.0.1", "127.0.0.1"),
        ("::0.0.0.2", "0.0.0.2"),
        ("64:ff9b::7f00:1", "127.0.0.1"),
        ("64:ff9b::808:808", "8.8.8.8"),
        ("2002:7f00:1::", "127.0.0.1"),
        ("2002:a9fe:a9fe:1234::1", "169.254.169.254"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1"),
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "8.8.8.8"),
        ("8.8.8.8", "8.8.8.8"),
    ];
    for (from, to) in cases {
        assert_eq!(canonical(ip(from)), ip(to), "{from}");
    }
}

#[test]
fn canonical_leaves_other_addresses_alone() {
    for a in [
        "::",
        "::1",
        "2001:db8::1",
        "2606:4700:4700::1111",
        "64:ff9b:1::1",
        "2001:1::1",
    ] {
        assert_eq!(canonical(ip(a)), ip(a), "{a}");
    }
}

#[test]
fn internal_ipv4_in_ipv6_forms_denied() {
    let f = filter(&[], &[], &[]);
    let denied = [
        "[::ffff:127.0.0.1]:5000",
        "[::127.0.0.1]:5000",
        "[64:ff9b::7f00:1]:5000",
        "[2002:7f00:1::]:5000",
        "[2002:7f00:1::1]:5000",
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]:5000", // Teredo, client 127.0.0.1
        "[::ffff:10.1.2.3]:5000",
        "[::ffff:169.254.169.254]:80",
        "[64:ff9b::a9fe:a9fe]:80",
        "[::ffff:0.0.0.0]:5000",
    ];
    for peer in denied {
        assert!(!f.permits(sa(peer)), "{peer}");
    }
}

#[test]
fn unspecified_and_metadata_denied() {
    let f = filter(&[], &[], &[]);
    for peer in [
        "0.0.0.0:5000",
        "[::]:5000",
        "169.254.169.254:80",
        "[fd00:ec2::254]:80",
        "255.255.255.255:5000",
        "[::1]:5000",
        "127.0.0.1:5000",
    ] {
        assert!(!f.permits(sa(peer)), "{peer}");
    }
}

#[test]
fn public_addresses_permitted() {
    let f = filter(&[], &[], &["0.0.0.0:3478", "[::]:3478"]);
    for peer in [
        "8.8.8.8:53",
        "[2606:4700:4700::1111]:443",
        "[::ffff:8.8.8.8]:53",
        "[2002:808:808::1]:5000",
        "[2001:0:4136:e378:8000:63bf:f7f7:f7f7]:5000", // Teredo, client 8.8.8.8
        "1.1.1.1:65535",
    ] {
        assert!(f.permits(sa(peer)), "{peer}");
    }
}

#[test]
fn port_zero_refused() {
    let f = filter(&["0.0.0.0/0", "::/0"], &[], &[]);
    assert!(!f.permits(sa("8.8.8.8:0")));
    assert!(!f.permits(sa("[2606:4700:4700::1111]:0")));
    assert!(f.permits(sa("8.8.8.8:1")));
}

#[test]
fn allow_list_beats_deny_list_but_not_own_listener() {
    let f = filter(&["127.0.0.0/8"], &[], &["127.0.0.1:3478"]);
    assert!(f.permits(sa("127.0.0.1:5000")));
    assert!(f.permits(sa("[::ffff:127.0.0.1]:5000")));
    assert!(!f.permits(sa("127.0.0.1:3478")));
    assert!(!f.permits(sa("[::ffff:127.0.0.1]:3478")));
    assert!(!f.permits(sa("[64:ff9b::7f00:1]:3478")));
    // Only what was allowed.
    assert!(!f.permits(sa("10.0.0.1:5000")));
    assert!(!f.permits(sa("[::1]:5000")));
}

#[test]
fn allow_list_matches_raw_form() {
    let f = filter(&["2002::/16"], &[], &[]);
    assert!(f.permits(sa("[2002:7f00:1::]:5000")));
    assert!(!f.permits(sa("127.0.0.1:5000")));
}

#[test]
fn own_listener_denied_even_when_public() {
    let f = filter(&[], &[], &["8.8.4.4:3478", "[2606:4700::1]:5349"]);
    assert!(!f.permits(sa("8.8.4.4:3478")));
    assert!(!f.permits(sa("[::ffff:8.8.4.4]:3478")));
    assert!(!f.permits(sa("[2606:4700::1]:5349")));
    assert!(f.permits(sa("8.8.4.4:3479")));
    assert!(f.permits(sa("[2606:4700::1]:3478")));
}

#[test]
fn own_wildcard_listener_matches_any_ip() {
    let f = filter(&[], &[], &["0.0.0.0:3478"]);
    assert!(!f.permits(sa("8.8.8.8:3478")));
    assert!(!f.permits(sa("[2606:4700:4700::1111]:3478")));
    assert!(f.permits(sa("8.8.8.8:3479")));
    let f = filter(&[], &[], &["[::]:8443"]);
    assert!(!f.permits(sa("1.1.1.1:8443")));
}

#[test]
fn own_mapped_listener_matches_ipv4_peer() {
    let f = filter(&["0.0.0.0/0"], &[], &["[::ffff:8.8.4.4]:3478"]);
    assert!(!f.permits(sa("8.8.4.4:3478")));
}

const RELAY_PORTS: PortRange = PortRange {
    min: 49152,
    max: 65535,
};

#[test]
fn own_ips_denied_on_every_port_but_the_relay_range() {
    let f = filter(&[], &[], &["0.0.0.0:3478"]).with_own_ips(
        [ip("8.8.4.4"), ip("2606:4700::1"), ip("0.0.0.0"), ip("::")],
        RELAY_PORTS,
    );
    for peer in [
        "8.8.4.4:5353",
        "8.8.4.4:22",
        "8.8.4.4:49151",
        "[::ffff:8.8.4.4]:53",
        "[::ffff:0:808:404]:53",
        "[64:ff9b::808:404]:53",
        "[2002:808:404::1]:53",
        "[2606:4700::1]:443",
        "8.8.4.4:3478",
    ] {
        assert!(!f.permits(sa(peer)), "{peer}");
        assert!(!f.permits_permission(sa(peer)), "{peer}");
    }
    // Relay to relay: the relay port range stays reachable.
    for peer in ["8.8.4.4:49152", "8.8.4.4:65535", "[2606:4700::1]:50000"] {
        assert!(f.permits(sa(peer)), "{peer}");
        assert!(f.permits_permission(sa(peer)), "{peer}");
    }
    // The unspecified addresses are skipped rather than matching every peer.
    assert!(f.permits(sa("8.8.8.8:5353")));
    assert!(f.permits(sa("[2606:4700:4700::1111]:53")));
    // permits_ip is the lists only: the own-IP rule needs a port.
    assert!(f.permits_ip(ip("8.8.4.4")));
}

#[test]
fn allow_list_host_entry_lifts_the_own_ip_rule_but_a_range_does_not() {
    let own = [ip("8.8.4.4"), ip("1.1.1.1")];
    let f = filter(&["8.8.4.4/32", "1.1.1.0/24"], &[], &["8.8.4.4:3478"])
        .with_own_ips(own, RELAY_PORTS);
    assert!(f.permits(sa("8.8.4.4:5353")));
    assert!(f.permits_permission(sa("8.8.4.4:5353")));
    assert!(!f.permits(sa("8.8.4.4:3478")), "listeners stay denied");
    assert!(!f.permits(sa("1.1.1.1:5353")), "a range does not lift it");
    assert!(!f.permits_permission(sa("1.1.1.1:5353")));
}

#[test]
fn configured_deny_list_applies() {
    let f = filter(
        &[],
        &["8.8.8.0/24", "2606:4700::/32", "::ffff:1.1.1.0/120"],
        &[],
    );
    assert!(!f.permits(sa("8.8.8.8:53")));
    assert!(!f.permits(sa("[::ffff:8.8.8.8]:53")));
    assert!(!f.permits(sa("[2002:808:808::]:53")));
    assert!(!f.permits(sa("[2606:4700:4700::1111]:443")));
    // An IPv4-mapped deny entry also covers the plain IPv4 form.
    assert!(!f.permits(sa("1.1.1.1:53")));
    assert!(f.permits(sa("8.8.4.4:53")));
    assert!(f.permits(sa("1.0.0.1:53")));
}

#[test]
fn configured_deny_list_matches_raw_form() {
    // The canonical form (8.8.8.8) is public; the raw 6to4 form is what the operator denied.
    let f = filter(&[], &["2002::/16", "2001::/32"], &[]);
    assert!(!f.permits(sa("[2002:808:808::1]:53")));
    assert!(!f.permits(sa("[2001:0:4136:e378:8000:63bf:f7f7:f7f7]:53")));
    assert!(f.permits(sa("8.8.8.8:53")));
}

#[test]
fn filter_is_a_send_sync_policy() {
    fn assert_policy<T: PeerPolicy>() {}
    assert_policy::<PeerFilter>();
}

#[test]
fn permits_ip_applies_allow_and_deny_lists_only() {
    let f = filter(
        &["127.0.0.0/8"],
        &["8.8.8.0/24"],
        &["127.0.0.1:3478", "0.0.0.0:3478"],
    );
    // Own addresses are per port: the permission is fine, datagrams to the listener are not.
    assert!(f.permits_ip(ip("127.0.0.1")));
    assert!(!f.permits(sa("127.0.0.1:3478")));
    assert!(f.permits_ip(ip("::ffff:127.0.0.2")));
    assert!(f.permits_ip(ip("1.1.1.1")));
    assert!(!f.permits_ip(ip("8.8.8.8")));
    assert!(!f.permits_ip(ip("::ffff:8.8.8.8")));
    for denied in [
        "10.0.0.1",
        "::",
        "0.0.0.0",
        "169.254.169.254",
        "fd00:ec2::254",
        "::1",
    ] {
        assert!(!f.permits_ip(ip(denied)), "{denied}");
    }
    for net in default_deny_list() {
        for addr in samples(net) {
            let allowed = matches!(addr, IpAddr::V4(v4) if v4.octets()[0] == 127);
            assert_eq!(f.permits_ip(addr), allowed, "{addr} in {net}");
        }
    }
}

/// Issue 10 item 14: special-purpose ranges the default list missed, one sample each.
#[test]
fn special_purpose_ranges_added_in_issue_10_are_denied() {
    let f = filter(&[], &[], &[]);
    for peer in [
        "[3fff::1]:5000",            // documentation, RFC 9637
        "[3fff:fff:ffff::1]:5000",   // the end of 3fff::/20
        "[2001:2::1]:5000",          // benchmarking, RFC 5180
        "[2001:2:0:ffff::1]:5000",   // the end of 2001:2::/48
        "[100::1]:5000",             // discard-only, RFC 6666
        "[2001:10::1]:5000",         // ORCHID, RFC 4843
        "[2001:1f:ffff::1]:5000",    // the end of 2001:10::/28
        "[2001:20::1]:5000",         // ORCHIDv2, RFC 7343
        "[2001:2f:ffff::1]:5000",    // the end of 2001:20::/28
        "[5f00::1]:5000",            // SRv6 SIDs, RFC 9602
        "192.88.99.1:5000",          // 6to4 relay anycast, RFC 7526
        "[::ffff:192.88.99.1]:5000", // the same, IPv4-mapped
    ] {
        assert!(!f.permits(sa(peer)), "{peer}");
        assert!(!f.permits_ip(sa(peer).ip()), "{peer}");
    }
    // Neighbours of the new ranges stay reachable.
    for peer in [
        "[3fff:1000::1]:5000",
        "[2001:3::1]:5000",
        "[100:0:0:1::1]:5000",
        "[2001:30::1]:5000",
        "[5f01::1]:5000",
        "192.88.100.1:5000",
    ] {
        assert!(f.permits(sa(peer)), "{peer}");
    }
}

/// SIIT's IPv4-translated form `::ffff:0:a.b.c.d` (RFC 2765 §2.1) carries an IPv4 address too.
#[test]
fn siit_translated_form_is_canonicalised() {
    assert_eq!(canonical(ip("::ffff:0:a9fe:a9fe")), ip("169.254.169.254"));
    assert_eq!(canonical(ip("::ffff:0:7f00:1")), ip("127.0.0.1"));
    assert_eq!(canonical(ip("::ffff:0:808:808")), ip("8.8.8.8"));
    let f = filter(&[], &[], &[]);
    for peer in [
        "[::ffff:0:a9fe:a9fe]:80",
        "[::ffff:0:7f00:1]:5000",
        "[::ffff:0:a01:203]:5000",
        "[::ffff:0:0:0]:5000",
    ] {
        assert!(!f.permits(sa(peer)), "{peer}");
        assert!(!f.permits_ip(sa(peer).ip()), "{peer}");
    }
    assert!(f.permits(sa("[::ffff:0:808:808]:53")));
}

/// The per-packet check after a permission (Send, peer datagrams) keeps every port rule of
/// `permits` and skips only the IP lists, which the permission already passed.
#[test]
fn per_packet_port_check_keeps_the_port_rules() {
    let f = filter(&[], &[], &["0.0.0.0:3478"]).with_own_ips([ip("8.8.4.4")], RELAY_PORTS);
    for peer in [
        "8.8.4.4:5353",
        "8.8.4.4:3478",
        "1.1.1.1:0",
        "[::ffff:8.8.4.4]:53",
    ] {
        assert!(!f.permits_port_for("alice", sa(peer)), "{peer}");
        assert!(!f.permits(sa(peer)), "{peer}");
    }
    for peer in ["8.8.4.4:49152", "1.1.1.1:53", "[2606:4700:4700::1111]:443"] {
        assert!(f.permits_port_for("alice", sa(peer)), "{peer}");
        assert_eq!(
            f.permits_port_for("alice", sa(peer)),
            f.permits(sa(peer)),
            "{peer}"
        );
    }
}
