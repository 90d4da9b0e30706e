//! The route table (engine/route.rs): kept in step with channels and permissions, removed no
//! later than the tick at which they expire, pruned on reload, gone with the allocation;
//! the route change queue; exact counters.

use std::collections::BTreeMap;

use super::*;

fn peer_at(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, last], port))
}

/// Apply the engine's route changes to `mirror` the documented way.
fn apply(t: &mut T, mirror: &mut BTreeMap<RouteKey, Route>) -> Vec<RouteChange> {
    let mut seen = vec![];
    while let Some(c) = t.e.poll_route_change() {
        match c {
            RouteChange::Added(r) => {
                mirror.insert(r.key(), r);
            }
            RouteChange::Removed(k) => {
                assert!(mirror.remove(&k).is_some(), "removed {k:?} never added");
            }
            RouteChange::Reset => {
                mirror.clear();
                mirror.extend(t.e.routes().into_iter().map(|r| (r.key(), r)));
            }
        }
        seen.push(c);
    }
    seen
}

fn mirrored(mirror: &BTreeMap<RouteKey, Route>) -> Vec<Route> {
    mirror.values().copied().collect()
}

fn assert_derived(t: &T) {
    assert_eq!(
        t.e.routes(),
        t.e.derived_routes(),
        "table follows the allocations"
    );
}

fn bind(t: &mut T, c: ClientAddr, n: &str, number: u16, p: SocketAddr) {
    let r = t.authed(c, n, Req::new(METHOD_CHANNEL_BIND).channel(number).peer(p));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&r));
}

fn permit(t: &mut T, c: ClientAddr, n: &str, p: SocketAddr) {
    let r = t.authed(c, n, Req::new(METHOD_CREATE_PERMISSION).peer(p));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&r));
}

#[test]
fn routes_follow_channel_bind_and_go_at_the_tick_their_channel_or_permission_expires() {
    let mut t = engine();
    t.e.set_route_events(true);
    let mut mirror = BTreeMap::new();
    let c = client(1);
    let (relay, n) = t.allocate(c);
    t.authed(c, &n, Req::new(METHOD_REFRESH).lifetime(3600));
    let p = peer_at(9, 7001);
    let bound = t.now;
    bind(&mut t, c, &n, 0x4000, p);
    assert_derived(&t);
    let (relay, peer, channel) = (
        RelayAddr(relay),
        PeerAddr(p),
        ChannelNumber::new(0x4000).unwrap(),
    );
    let perm_at = bound + t.e.cfg.lifetimes.permission;
    let chan_at = bound + t.e.cfg.lifetimes.channel;
    assert_eq!(
        t.e.routes(),
        vec![
            Route::Forward {
                client: c,
                channel,
                relay,
                peer,
                expires: chan_at
            },
            Route::Reverse {
                relay,
                peer,
                client: c,
                channel,
                expires: perm_at
            },
            Route::Permission {
                relay,
                ip: p.ip(),
                client: c,
                expires: perm_at
            },
        ]
    );
    let seen = apply(&mut t, &mut mirror);
    assert_eq!(
        seen.first(),
        Some(&RouteChange::Reset),
        "turning events on starts with a reset"
    );
    assert_eq!(
        seen.iter()
            .filter(|c| matches!(c, RouteChange::Added(_)))
            .count(),
        3
    );
    assert_eq!(mirrored(&mirror), t.e.routes());
    // The next tick is the permission's expiry: no route outlives its tick.
    assert_eq!(t.e.poll_timeout(), Some(perm_at));

    // Just before it everything relays; at it (before the tick runs) the engine already drops
    // peer data, since the routes carry their expiry.
    t.now = perm_at - Duration::from_millis(1);
    t.e.handle_timeout(t.now);
    assert!(from_peer(&mut t, c, relay.0, p, b"x").is_some());
    t.now = perm_at;
    assert!(
        from_peer(&mut t, c, relay.0, p, b"x").is_none(),
        "expired, tick not run yet"
    );
    assert!(
        t.send(c, &channel_data(0x4000, b"x")).is_some(),
        "the channel lives on"
    );
    t.e.handle_timeout(t.now);
    let seen = apply(&mut t, &mut mirror);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.contains(&RouteChange::Removed(RouteKey::Reverse { relay, peer }))
            && seen.contains(&RouteChange::Removed(RouteKey::Permission {
                relay,
                ip: p.ip()
            })),
        "removed at the tick at which the permission expired: {seen:?}"
    );
    assert_eq!(
        t.e.routes(),
        vec![Route::Forward {
            client: c,
            channel,
            relay,
            peer,
            expires: chan_at
        }]
    );
    assert_derived(&t);

    // A new permission for the channel's IP (a little later) brings its reverse route back.
    t.advance(Duration::from_secs(10));
    permit(&mut t, c, &n, peer_at(9, 1));
    assert_derived(&t);
    assert_eq!(t.e.route_count(), 3);
    let (_, bytes) = from_peer(&mut t, c, relay.0, p, b"back").unwrap();
    assert_eq!(bytes, channel_data(0x4000, b"back"));
    apply(&mut t, &mut mirror);
    assert_eq!(mirrored(&mirror), t.e.routes());

    // The channel's own expiry (the next tick) takes the forward and reverse routes; the
    // permission (renewed after perm_at) stays a Data-indication route.
    assert_eq!(t.e.poll_timeout(), Some(chan_at));
    t.advance(chan_at - t.now);
    assert!(t.send(c, &channel_data(0x4000, b"x")).is_none());
    let seen = apply(&mut t, &mut mirror);
    assert!(seen.contains(&RouteChange::Removed(RouteKey::Forward {
        client: c,
        channel
    })));
    assert!(seen.contains(&RouteChange::Removed(RouteKey::Reverse { relay, peer })));
    assert_eq!(mirrored(&mirror), t.e.routes());
    assert_derived(&t);
    let (_, bytes) = from_peer(&mut t, c, relay.0, p, b"di").unwrap();
    assert_eq!(
        decode(&bytes).typ,
        MessageType::new(METHOD_DATA, CLASS_INDICATION)
    );
}

#[test]
fn channel_bind_refresh_updates_the_routes_expiry_and_queues_it() {
    let mut t = engine();
    let c = client(1);
    let (_, n) = t.allocate(c);
    let p = peer_at(9, 7001);
    bind(&mut t, c, &n, 0x4000, p);
    t.e.set_route_events(true);
    let mut mirror = BTreeMap::new();
    apply(&mut t, &mut mirror);
    t.advance(Duration::from_secs(100));
    bind(&mut t, c, &n, 0x4000, p);
    let seen = apply(&mut t, &mut mirror);
    assert_eq!(seen.len(), 3, "three routes refreshed: {seen:?}");
    assert!(seen.iter().all(
        |c| matches!(c, RouteChange::Added(r) if r.expires() > t.now + Duration::from_secs(299))
    ));
    assert_eq!(mirrored(&mirror), t.e.routes());
    assert_derived(&t);
}

/// Denies one IP (on top of the test policy).
struct DenyIp(IpAddr);
impl PeerPolicy for DenyIp {
    fn permits(&self, peer: SocketAddr) -> bool {
        TestPolicy.permits(peer) && peer.ip() != self.0
    }
    fn permits_ip(&self, ip: IpAddr) -> bool {
        TestPolicy.permits_ip(ip) && ip != self.0
    }
}

#[test]
fn reload_prunes_the_routes_the_new_policy_forbids() {
    let mut t = engine();
    let c = client(1);
    let (relay, n) = t.allocate(c);
    let (kept, denied) = (peer_at(9, 7001), peer_at(10, 7002));
    bind(&mut t, c, &n, 0x4000, kept);
    bind(&mut t, c, &n, 0x4001, denied);
    assert_eq!(t.e.route_count(), 6);
    t.e.set_route_events(true);
    let mut mirror = BTreeMap::new();
    apply(&mut t, &mut mirror);
    let mut shared = t.e.shared.clone();
    shared.policy = Arc::new(DenyIp(denied.ip()));
    assert_eq!(t.e.set_shared(shared), (1, 1));
    assert_derived(&t);
    assert_eq!(t.e.route_count(), 3);
    assert!(t.e.routes().iter().all(|r| match *r {
        Route::Forward { peer, .. } | Route::Reverse { peer, .. } => peer.0 == kept,
        Route::Permission { ip, .. } => ip == kept.ip(),
    }));
    let seen = apply(&mut t, &mut mirror);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|c| matches!(c, RouteChange::Removed(_))));
    assert_eq!(mirrored(&mirror), t.e.routes());
    // Both directions follow.
    assert!(t.send(c, &channel_data(0x4001, b"x")).is_none());
    assert!(from_peer(&mut t, c, relay, denied, b"x").is_none());
    assert!(t.send(c, &channel_data(0x4000, b"x")).is_some());
    assert!(from_peer(&mut t, c, relay, kept, b"x").is_some());
}

#[test]
fn every_way_an_allocation_ends_removes_all_its_routes() {
    let mut t = engine();
    let tcp = ClientAddr {
        transport: Transport::Tcp,
        ..client(5)
    };
    let clients = [client(1), client(2), client(3), client(4), tcp];
    let mut nonces = vec![];
    for (i, &c) in clients.iter().enumerate() {
        let (_, n) = t.allocate(c);
        bind(&mut t, c, &n, 0x4000, peer_at(9, 7000 + i as u16));
        permit(&mut t, c, &n, peer_at(20, 1));
        nonces.push(n);
    }
    assert_eq!(t.e.route_count(), 4 * clients.len());
    t.e.set_route_events(true);
    let mut mirror = BTreeMap::new();
    apply(&mut t, &mut mirror);
    let gone = |t: &T, c: ClientAddr| t.e.routes().iter().all(|r| r.client() != c);
    let check = |t: &mut T, mirror: &mut BTreeMap<RouteKey, Route>, c: ClientAddr, left: usize| {
        assert!(gone(t, c), "{c:?} still routed");
        assert_eq!(t.e.route_count(), 4 * left);
        let seen = apply(t, mirror);
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(seen.iter().all(|c| matches!(c, RouteChange::Removed(_))));
        assert_eq!(mirrored(mirror), t.e.routes());
        assert_derived(t);
    };
    // Admin API: one session.
    let id =
        t.e.sessions(t.now, None)
            .into_iter()
            .find(|s| s.client == clients[0].remote)
            .unwrap()
            .id;
    assert!(t.e.kill_session(t.now, id));
    check(&mut t, &mut mirror, clients[0], 4);
    // Refresh(0).
    let r = t.authed(clients[1], &nonces[1], Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    check(&mut t, &mut mirror, clients[1], 3);
    // The stream closed.
    t.e.client_closed(t.now, tcp);
    check(&mut t, &mut mirror, tcp, 2);
    // Allocation expiry (the other two are refreshed past it).
    for i in [2, 3] {
        t.authed(
            clients[i],
            &nonces[i],
            Req::new(METHOD_REFRESH).lifetime(3600),
        );
    }
    let r = t.authed(
        clients[2],
        &nonces[2],
        Req::new(METHOD_REFRESH).lifetime(600),
    );
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    // Keep clients[3]'s channel and permission alive meanwhile; clients[2]'s lapse first,
    // then its allocation.
    for _ in 0..2 {
        t.advance(Duration::from_secs(290));
        bind(&mut t, clients[3], &nonces[3], 0x4000, peer_at(9, 7003));
        permit(&mut t, clients[3], &nonces[3], peer_at(20, 1));
    }
    t.advance(Duration::from_secs(30));
    assert!(!t.e.has_allocation(&clients[2]), "expired");
    assert!(gone(&t, clients[2]));
    apply(&mut t, &mut mirror);
    assert_eq!(mirrored(&mirror), t.e.routes());
    assert_eq!(t.e.route_count(), 4);
    // kill_user: the last one.
    assert_eq!(t.e.kill_user(t.now, "alice"), 1);
    check(&mut t, &mut mirror, clients[3], 0);
    assert!(t.e.routes().is_empty());
}

#[test]
fn route_events_are_off_by_default_and_the_queue_is_bounded() {
    let mut t = engine();
    let c = client(1);
    let (_, n) = t.allocate(c);
    bind(&mut t, c, &n, 0x4000, peer_at(9, 7000));
    assert_eq!(t.e.poll_route_change(), None, "off: nothing queued");
    assert!(t.e.routes.events.is_none());

    t.e.routes.events_max = 4;
    t.e.set_route_events(true);
    for i in 1..4 {
        bind(&mut t, c, &n, 0x4000 + i, peer_at(9, 7000 + i));
    }
    let q = t.e.routes.events.as_ref().unwrap();
    assert!(q.len() <= 5, "bounded: {}", q.len());
    assert_eq!(
        q.front(),
        Some(&RouteChange::Reset),
        "overflow leaves a reset first"
    );
    let mut mirror = BTreeMap::new();
    apply(&mut t, &mut mirror);
    assert_eq!(
        mirrored(&mirror),
        t.e.routes(),
        "a reset and what follows rebuild the mirror"
    );
    // Four channels to one IP: four forward and four reverse routes, one permission.
    assert_eq!(t.e.route_count(), 9);

    t.e.set_route_events(false);
    bind(&mut t, c, &n, 0x4000, peer_at(9, 7000));
    assert_eq!(
        t.e.poll_route_change(),
        None,
        "turned off: the queue is dropped"
    );
}

#[test]
fn counters_stay_exact_through_the_route_table() {
    let mut t = engine();
    let c = client(1);
    let (relay, n) = t.allocate(c);
    let (chan, plain) = (peer_at(9, 7000), peer_at(11, 7000));
    bind(&mut t, c, &n, 0x4000, chan);
    permit(&mut t, c, &n, plain);
    for i in 0..10u8 {
        let payload = vec![i; usize::from(i) + 1];
        assert!(t.send(c, &channel_data(0x4000, &payload)).is_some());
        assert!(t.send(c, &send_indication(plain, &payload)).is_some());
        assert!(from_peer(&mut t, c, relay, chan, &payload).is_some());
        assert!(from_peer(&mut t, c, relay, plain, &payload).is_some());
        // Dropped ones are not counted: unbound channel, port 0, unknown peer.
        assert!(t.send(c, &channel_data(0x4001, &payload)).is_none());
        assert!(from_peer(&mut t, c, relay, peer_at(12, 7000), &payload).is_none());
        assert!(from_peer(&mut t, c, relay, SocketAddr::new(plain.ip(), 0), &payload).is_none());
    }
    let bytes: u64 = (1..=10).sum::<u64>() * 2;
    let s = &t.e.sessions(t.now, None)[0];
    assert_eq!(
        (
            s.packets_to_peer,
            s.bytes_to_peer,
            s.packets_to_client,
            s.bytes_to_client
        ),
        (20, bytes, 20, bytes)
    );
    let m = t.e.metrics_snapshot();
    assert_eq!(
        (m.traffic.packets_to_peer[0], m.traffic.bytes_to_client[0]),
        (20, bytes)
    );
    // A later allocation reusing the slot starts from zero; the ended one's traffic moved
    // to the engine's totals.
    assert!(t.e.kill_user(t.now, "alice") == 1);
    let (_, _) = t.allocate(client(2));
    let s = &t.e.sessions(t.now, None)[0];
    assert_eq!((s.packets_to_peer, s.packets_to_client), (0, 0));
    let m = t.e.metrics_snapshot();
    assert_eq!(
        (m.traffic.packets_to_peer[0], m.traffic.bytes_to_client[0]),
        (20, bytes)
    );
}

#[test]
fn hand_written_address_hashes_keep_every_key_distinct() {
    use std::collections::{HashMap, HashSet};
    let addrs: Vec<SocketAddr> = [
        "192.0.2.1:40000",
        "192.0.2.1:40001",
        "[::ffff:192.0.2.1]:40000",
        "[::]:40000",
        "[2001:db8::1]:40000",
        "[2001:db8::1]:40001",
        "0.0.0.0:0",
        "[::]:0",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let transports = [Transport::Udp, Transport::Tcp, Transport::Tls];
    let mut keys = vec![];
    for &remote in &addrs {
        for &local in &addrs {
            for transport in transports {
                keys.push(ClientAddr {
                    transport,
                    remote,
                    local,
                });
            }
        }
    }
    let m: HashMap<ClientAddr, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    assert_eq!(m.len(), keys.len());
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(m.get(k), Some(&i));
    }
    let peers: HashSet<PeerAddr> = addrs.iter().map(|a| PeerAddr(*a)).collect();
    assert_eq!(peers.len(), addrs.len());
}
