//! Issue 10 H1: EVEN-PORT reservations cannot exhaust the relay range, expire on the timer,
//! and the port search is bounded. Real sockets, in-process server.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::raw::*;
use stun::attributes::*;
use stun::message::*;

fn even_port_r() -> RawAttribute {
    raw_attr(ATTR_EVEN_PORT, vec![0x80])
}

fn config(ports: (u16, u16)) -> turnd::Config {
    let mut c = turnd::Config::for_tests();
    c.listen.udp = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))];
    c.listen.tcp.clear();
    c.listen.tls.clear();
    c.relay.ipv6 = None;
    c.relay.ports = turnd::config::PortRange {
        min: ports.0,
        max: ports.1,
    };
    c
}

fn token_of(m: &Message) -> Option<Vec<u8>> {
    m.get(ATTR_RESERVATION_TOKEN).ok()
}

/// The reproducer of the report: one 5-tuple loops Allocate(EVEN-PORT R=1) + Refresh(0).
/// Only `max_reservations_per_user` reservations are ever held (beyond: 486 Allocation Quota
/// Reached, the user's cap, not 508); they vanish after their lifetime, swept by the timer
/// with no other traffic, and the ports are free again.
#[tokio::test]
async fn reservation_loop_holds_at_most_the_cap_and_expires() {
    let mut c = config((21000, 21199));
    c.policy.max_reservations_per_user = 2;
    c.lifetimes.reservation = Duration::from_secs(1);
    let s = turnd::start(c).unwrap();
    let admin = s.admin.unwrap();
    let mut client = UdpTurn::new(s.udp[0]).await;
    let (mut reserved, mut refused) = (0, 0);
    for _ in 0..40 {
        let r = client
            .ask(METHOD_ALLOCATE, &[&udp_transport(), &even_port_r()])
            .await;
        if r.typ.class == CLASS_SUCCESS_RESPONSE {
            assert!(token_of(&r).is_some(), "a RESERVATION-TOKEN");
            reserved += 1;
            let r = client.ask(METHOD_REFRESH, &[&lifetime(0)]).await;
            assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
        } else {
            assert_eq!(code(&r), Some(486), "refused with Allocation Quota Reached");
            refused += 1;
        }
    }
    assert_eq!((reserved, refused), (2, 38));
    assert_eq!(metric(admin, "turnd_reservations_held").await, 2.0);
    // A plain Allocate of the same user still works: the held reservations count against
    // the quota of 100, not more.
    let relay = client.allocate().await;
    assert!((21000..=21199).contains(&relay.port()));
    let r = client.ask(METHOD_REFRESH, &[&lifetime(0)]).await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);

    // Expiry by the timer: no request touches the table meanwhile.
    let admin_c = admin;
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if metric(admin_c, "turnd_reservations_held").await == 0.0 {
            break;
        }
        assert!(Instant::now() < end, "reservations not swept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client
        .ask(METHOD_ALLOCATE, &[&udp_transport(), &even_port_r()])
        .await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", code(&r));
    s.stop();
}

/// A reservation is taken by a later Allocate with its token (from another 5-tuple), which
/// gets the odd port after the even one.
#[tokio::test]
async fn reservation_token_gives_the_next_port() {
    let s = turnd::start(config((21200, 21399))).unwrap();
    let mut a = UdpTurn::new(s.udp[0]).await;
    let r = a
        .ask(METHOD_ALLOCATE, &[&udp_transport(), &even_port_r()])
        .await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", code(&r));
    let even = xor_addr(&r, ATTR_XOR_RELAYED_ADDRESS);
    assert_eq!(even.port() % 2, 0);
    let token = token_of(&r).expect("a token");
    let mut b = UdpTurn::new(s.udp[0]).await;
    let r = b
        .ask(
            METHOD_ALLOCATE,
            &[
                &udp_transport(),
                &raw_attr(ATTR_RESERVATION_TOKEN, token.clone()),
            ],
        )
        .await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", code(&r));
    assert_eq!(
        xor_addr(&r, ATTR_XOR_RELAYED_ADDRESS).port(),
        even.port() + 1
    );
    assert_eq!(
        metric(s.admin.unwrap(), "turnd_reservations_held").await,
        0.0
    );
    // The token is used up.
    let mut c = UdpTurn::new(s.udp[0]).await;
    let r = c
        .ask(
            METHOD_ALLOCATE,
            &[&udp_transport(), &raw_attr(ATTR_RESERVATION_TOKEN, token)],
        )
        .await;
    assert_eq!(code(&r), Some(508));
    s.stop();
}

/// On a relay range with every port taken, Allocate and Allocate(EVEN-PORT R) fail with 508
/// after a bounded number of tries instead of scanning the range on the shard thread, and
/// Bindings of other clients are answered meanwhile.
#[tokio::test]
async fn full_range_allocate_fails_fast() {
    const MIN: u16 = 22000;
    const MAX: u16 = 29999;
    // Every port of the range taken on the relay address: by this test, or (a port it could
    // not bind) by another process, which makes it just as unavailable to the server.
    let mut held = Vec::new();
    for p in MIN..=MAX {
        if let Ok(s) = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, p)) {
            held.push(s);
        }
    }
    assert!(!held.is_empty());
    let s = turnd::start(config((MIN, MAX))).unwrap();
    let mut client = UdpTurn::new(s.udp[0]).await;
    let (transport, even) = (udp_transport(), even_port_r());
    // Learn the nonce first so that one round trip is one Allocate.
    let r = client.ask(METHOD_ALLOCATE, &[&transport]).await;
    assert_eq!(code(&r), Some(508));
    let mut times = Vec::new();
    for i in 0..20 {
        let setters: Vec<&dyn Setter> = if i % 2 == 0 {
            vec![&transport]
        } else {
            vec![&transport, &even]
        };
        let t = Instant::now();
        let r = client.ask(METHOD_ALLOCATE, &setters).await;
        times.push(t.elapsed());
        assert_eq!(code(&r), Some(508));
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "Allocate on a full range of 8000 ports: median {median:?}, max {:?}",
        times.last().unwrap()
    );
    assert!(
        median < Duration::from_millis(10),
        "an Allocate on a full range took {median:?}"
    );
    drop(held);
    s.stop();
}
