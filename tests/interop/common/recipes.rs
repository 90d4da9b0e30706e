//! Scenarios: one client run plus its checks, against any server (turnd, or coturn to
//! validate the harness). Each asserts real counters and returns the report for server-side
//! checks. Stream scenarios: TCP and TLS client legs; relays to peers are UDP.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;

/// Every relayed address is on loopback in `ip`'s family, and there are `count` of them.
pub fn assert_relays(r: &UclientReport, ip: IpAddr, count: usize) {
    let ctx = r.context();
    assert_eq!(
        r.relay_addrs.len(),
        count,
        "allocations (relay addresses)\n{ctx}"
    );
    for a in &r.relay_addrs {
        assert!(
            a.ip().is_loopback() && a.is_ipv4() == ip.is_ipv4(),
            "relay {a} for {ip}\n{ctx}"
        );
    }
}

/// The peer saw exactly `datagrams` datagrams, all from `relay`.
pub fn assert_peer_saw(peer: &EchoPeer, datagrams: u64, relay: SocketAddr) {
    let s = peer.stats();
    assert_eq!(s.datagrams, datagrams, "datagrams at the peer: {s:?}");
    assert_eq!(
        s.sources,
        vec![relay],
        "the peer must see only the relayed address: {s:?}"
    );
}

/// uclient `-c` with channels: a probe allocation plus one client allocation; ChannelBind
/// twice to `peer + 1` and twice to `peer` (4 successes, 2 numbers); `messages` ChannelData
/// messages of 200 bytes to the echo peer and back. uclient relays to a peer of the server's
/// family (an IPv6 peer makes it request an IPv6 relay by itself).
pub fn uclient_channels(server: SocketAddr, messages: u32) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .no_rtcp()
        .messages(messages)
        .length(200);
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_relays(&r, server.ip(), 2);
    assert_eq!(
        r.channels.len(),
        4,
        "ChannelBind successes\n{}",
        r.context()
    );
    assert_peer_saw(&peer, u.expected_messages(), r.relay_addrs[1]);
    r
}

/// uclient `-c -s`: CreatePermission, then Send indications out and Data indications back.
pub fn uclient_send_indications(server: SocketAddr) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .no_rtcp()
        .send_indications()
        .messages(10)
        .length(300);
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_relays(&r, server.ip(), 2);
    assert!(
        r.channels.is_empty(),
        "no ChannelBind with -s\n{}",
        r.context()
    );
    assert_peer_saw(&peer, u.expected_messages(), r.relay_addrs[1]);
    r
}

/// uclient without `-c`: per client an RTP and an RTCP allocation. uclient's Allocates
/// alternate: EVEN-PORT with R=1 (the probe, which gets a RESERVATION-TOKEN), then one with that
/// RESERVATION-TOKEN (must get the reserved port, probe + 1), then EVEN-PORT R=1 again.
pub fn uclient_rtp_rtcp_pair(server: SocketAddr) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .messages(5);
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_relays(&r, server.ip(), 3);
    let ports: Vec<u16> = r.relay_addrs.iter().map(SocketAddr::port).collect();
    let ctx = r.context();
    assert_eq!(
        ports[0] % 2,
        0,
        "EVEN-PORT gives an even port: {ports:?}\n{ctx}"
    );
    assert_eq!(
        ports[1],
        ports[0] + 1,
        "RESERVATION-TOKEN gives the reserved port: {ports:?}\n{ctx}"
    );
    assert_eq!(
        ports[2] % 2,
        0,
        "EVEN-PORT gives an even port: {ports:?}\n{ctx}"
    );
    assert_eq!(
        peer.stats().datagrams,
        u.expected_messages(),
        "datagrams at the peer (both ports)"
    );
    r
}

/// uclient `-y -c`: two clients relay to each other's relayed addresses (no external peer).
/// On IPv6 `-x` asks for IPv6 relays (without a peer uclient would request IPv4).
pub fn uclient_client_to_client(server: SocketAddr) -> UclientReport {
    let mut u = Uclient::new(server)
        .user(USER, PASSWORD)
        .client_to_client()
        .no_rtcp()
        .messages(10);
    if server.is_ipv6() {
        u = u.ipv6_relay();
    }
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_relays(&r, server.ip(), 3);
    r
}

/// uclient over IPv6 asking for an IPv4 relay (`-X`, RFC 6156 cross-family) to an IPv4 peer.
pub fn uclient_ipv6_client_ipv4_relay(server_v6: SocketAddr) -> UclientReport {
    assert!(server_v6.is_ipv6());
    let peer = EchoPeer::start(V4);
    let u = Uclient::new(server_v6)
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .no_rtcp()
        .ipv4_relay()
        .messages(5);
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_relays(&r, V4, 2);
    assert_peer_saw(&peer, u.expected_messages(), r.relay_addrs[1]);
    r
}

/// uclient `-W secret -u dev`: TURN REST credentials computed by the client (expiry now + 1 day).
pub fn uclient_rest_secret(server: SocketAddr) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .user_only(USER)
        .rest_secret(SECRET)
        .peer(peer.addr())
        .no_rtcp()
        .messages(5);
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_relays(&r, server.ip(), 2);
    r
}

/// uclient with given (e.g. precomputed REST) credentials; everything must be relayed.
pub fn uclient_with_credentials(server: SocketAddr, user: &str, password: &str) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .user(user, password)
        .peer(peer.addr())
        .no_rtcp()
        .messages(5);
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_relays(&r, server.ip(), 2);
    r
}

/// uclient with credentials the server must refuse: no allocation, nothing relayed, and the
/// peer never hears anything.
pub fn uclient_refused(server: SocketAddr, user: &str, password: &str) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let r = Uclient::new(server)
        .user(user, password)
        .peer(peer.addr())
        .no_rtcp()
        .messages(5)
        .timeout(Duration::from_secs(20))
        .run();
    r.assert_refused();
    assert_eq!(
        peer.stats(),
        EchoStats::default(),
        "the peer must hear nothing"
    );
    r
}

/// aioice allocates over `server`, relays 3 x {100, 1200, 4000} bytes to an echo peer on
/// `peer_ip` and gets every echo back byte for byte; the peer saw only the relayed address.
/// aioice 0.13 never sends REQUESTED-ADDRESS-FAMILY, so its relay is IPv4 whatever the
/// server's family: use an IPv4 peer.
pub fn aioice_relay(server: SocketAddr, peer_ip: IpAddr) -> AioiceReport {
    let peer = EchoPeer::start(peer_ip);
    let r = run_aioice(server.ip(), server.port(), USER, PASSWORD, peer.addr())
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!((r.sent, r.received), (9, 9), "datagrams\n{}", r.raw);
    assert_eq!(
        (r.bytes_sent, r.bytes_received),
        (15_900, 15_900),
        "bytes\n{}",
        r.raw
    );
    assert_eq!(r.max_size, 4000, "largest echoed datagram\n{}", r.raw);
    assert!(
        r.relayed.ip().is_loopback() && r.relayed.is_ipv4() == peer_ip.is_ipv4(),
        "{}",
        r.raw
    );
    assert_eq!(
        r.mapped.ip(),
        server.ip(),
        "XOR-MAPPED-ADDRESS is the client's loopback address"
    );
    let s = peer.stats();
    assert_eq!((s.datagrams, s.bytes), (9, 15_900), "at the peer: {s:?}");
    assert_eq!(
        s.sources,
        vec![r.relayed],
        "the peer must see only the relayed address"
    );
    r
}

/// All relayed, over `t`: over TLS the retries of old TLS versions are allowed and there is
/// one TLS session per allocation (uclient opens one connection per allocation); over TCP
/// there is no TLS at all.
pub fn assert_stream_run(r: &UclientReport, t: ClientTransport, expected_msgs: u64) {
    let ctx = r.context();
    match t {
        ClientTransport::Tls => {
            r.assert_all_relayed_tls(expected_msgs);
            assert_eq!(
                r.tls_sessions.len(),
                r.relay_addrs.len(),
                "one TLS connection per allocation\n{ctx}"
            );
        }
        ClientTransport::Tcp | ClientTransport::Udp => {
            r.assert_all_relayed(expected_msgs);
            assert!(r.tls_sessions.is_empty(), "no TLS expected\n{ctx}");
        }
    }
}

/// [`uclient_channels`] over `t`: a probe allocation plus one client allocation, each on its
/// own connection; 4 ChannelBind successes; ChannelData 200 bytes to the echo peer and back.
pub fn uclient_stream_channels(
    server: SocketAddr,
    t: ClientTransport,
    messages: u32,
) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .transport(t)
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .no_rtcp()
        .messages(messages)
        .length(200);
    let r = u.run();
    assert_stream_run(&r, t, u.expected_messages());
    assert_relays(&r, server.ip(), 2);
    assert_eq!(
        r.channels.len(),
        4,
        "ChannelBind successes\n{}",
        r.context()
    );
    assert_peer_saw(&peer, u.expected_messages(), r.relay_addrs[1]);
    r
}

/// [`uclient_send_indications`] over `t`: CreatePermission, Send indications out, Data
/// indications back (300 bytes).
pub fn uclient_stream_send_indications(server: SocketAddr, t: ClientTransport) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .transport(t)
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .no_rtcp()
        .send_indications()
        .messages(10)
        .length(300);
    let r = u.run();
    assert_stream_run(&r, t, u.expected_messages());
    assert_relays(&r, server.ip(), 2);
    assert!(
        r.channels.is_empty(),
        "no ChannelBind with -s\n{}",
        r.context()
    );
    assert_peer_saw(&peer, u.expected_messages(), r.relay_addrs[1]);
    r
}

/// [`uclient_rest_secret`] over `t`: `-W secret -u dev`, channels.
pub fn uclient_stream_rest_secret(server: SocketAddr, t: ClientTransport) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let u = Uclient::new(server)
        .transport(t)
        .user_only(USER)
        .rest_secret(SECRET)
        .peer(peer.addr())
        .no_rtcp()
        .messages(5);
    let r = u.run();
    assert_stream_run(&r, t, u.expected_messages());
    assert_relays(&r, server.ip(), 2);
    assert_peer_saw(&peer, u.expected_messages(), r.relay_addrs[1]);
    r
}

/// [`uclient_refused`] over `t`.
pub fn uclient_stream_refused(
    server: SocketAddr,
    t: ClientTransport,
    user: &str,
    password: &str,
) -> UclientReport {
    let peer = EchoPeer::start(server.ip());
    let r = Uclient::new(server)
        .transport(t)
        .user(user, password)
        .peer(peer.addr())
        .no_rtcp()
        .messages(5)
        .timeout(Duration::from_secs(20))
        .run();
    r.assert_refused();
    if t == ClientTransport::Tls {
        assert!(
            !r.tls_sessions.is_empty(),
            "refused at Allocate, not at the TLS handshake\n{}",
            r.context()
        );
    }
    assert_eq!(
        peer.stats(),
        EchoStats::default(),
        "the peer must hear nothing"
    );
    r
}

/// [`aioice_relay`] over TCP or TLS (`opts`): 3 x {100, 1200, 4000} bytes to an IPv4 echo
/// peer (aioice's relay is always IPv4) and back byte for byte; the peer sees only the
/// advertised relayed address, and XOR-MAPPED-ADDRESS is the client's own end of the
/// connection.
pub fn aioice_stream_relay(server: SocketAddr, opts: &AioiceOpts) -> AioiceReport {
    let peer = EchoPeer::start(V4);
    let r = run_aioice_with(server, USER, PASSWORD, peer.addr(), opts)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(r.transport, opts.transport.name(), "{}", r.raw);
    assert_eq!((r.sent, r.received), (9, 9), "datagrams\n{}", r.raw);
    assert_eq!(
        (r.bytes_sent, r.bytes_received),
        (15_900, 15_900),
        "bytes\n{}",
        r.raw
    );
    assert_eq!(r.max_size, 4000, "largest echoed datagram\n{}", r.raw);
    assert!(
        r.relayed.ip().is_loopback() && r.relayed.is_ipv4(),
        "{}",
        r.raw
    );
    assert_eq!(
        Some(r.mapped),
        r.local,
        "XOR-MAPPED-ADDRESS is the client's end of the connection\n{}",
        r.raw
    );
    assert_eq!(r.mapped.ip(), server.ip(), "{}", r.raw);
    if opts.transport == ClientTransport::Tls {
        let want: &[&str] = if opts.tls12_only {
            &["TLSv1.2"]
        } else {
            &["TLSv1.2", "TLSv1.3"]
        };
        assert!(
            want.contains(&r.tls_version.as_str()),
            "TLS version {:?}, want one of {want:?}\n{}",
            r.tls_version,
            r.raw
        );
    } else {
        assert_eq!(r.tls_version, "", "{}", r.raw);
    }
    let s = peer.stats();
    assert_eq!((s.datagrams, s.bytes), (9, 15_900), "at the peer: {s:?}");
    assert_eq!(
        s.sources,
        vec![r.relayed],
        "the peer must see only the relayed address"
    );
    r
}

/// Waits (at most 5 s) until `running`'s counts are `(allocations, permissions, channels)`:
/// the last messages of a client that already exited may still be in flight, and the server
/// sees a stream client's connection close a moment after the client exits.
pub fn assert_stats_settle(running: &turnd::Running, want: (usize, usize, usize), why: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = running.stats();
        if (s.allocations, s.permissions, s.channels) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{why}: want (allocations, permissions, channels) = {want:?}, have {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
