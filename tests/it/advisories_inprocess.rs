//! Advisory regression tests against turnd started in-process, over real loopback sockets.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdp};

use crate::raw::*;
use stun::attributes::*;
use stun::message::Setter;
use stun::message::*;

/// 16 consecutive ports, starting even, that are all free on 127.0.0.1 right now.
fn free_range() -> turnd::config::PortRange {
    for base in (41_000u16..60_000)
        .step_by(64)
        .skip(usize::from(std::process::id() as u16 % 200))
    {
        if (base..base + 16).all(|p| StdUdp::bind((Ipv4Addr::LOCALHOST, p)).is_ok()) {
            return turnd::config::PortRange {
                min: base,
                max: base + 15,
            };
        }
    }
    panic!("no 16 free loopback ports");
}

fn free_ports(r: turnd::config::PortRange) -> usize {
    (r.min..=r.max)
        .filter(|p| StdUdp::bind((Ipv4Addr::LOCALHOST, *p)).is_ok())
        .count()
}

/// An Allocate; a 508 right after a Refresh(0) is retried: relay sockets close when their
/// task is dropped, a moment after the release. A leaked port never comes back, so a leak
/// still exhausts the 16-port range and fails here.
async fn allocate(c: &mut UdpTurn, setters: &[&dyn Setter], retries: &mut u32) -> Message {
    for _ in 0..40 {
        let r = c.ask(METHOD_ALLOCATE, setters).await;
        if code(&r) != Some(508) {
            return r;
        }
        *retries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("508 for 2 s: relay ports exhausted (leaked)");
}

#[tokio::test]
async fn even_port_r0_and_r1_never_leak_a_relay_port() {
    let range = free_range();
    let mut cfg = turnd::Config::for_tests();
    cfg.relay.ports = range;
    let s = turnd::start(cfg).expect("turnd starts");
    let server = *s.udp.iter().find(|a| a.is_ipv4()).unwrap();
    assert_eq!(free_ports(range), 16, "free before");
    let (mut a, mut b) = (UdpTurn::new(server).await, UdpTurn::new(server).await);
    let (mut requests, mut retries) = (0, 0u32);
    for i in 0..250 {
        // R=0: an even port, nothing held after Refresh(0).
        let r = allocate(
            &mut a,
            &[&udp_transport(), &raw_attr(ATTR_EVEN_PORT, vec![0x00])],
            &mut retries,
        )
        .await;
        assert_eq!(
            r.typ.class,
            CLASS_SUCCESS_RESPONSE,
            "R=0 #{i}: {:?}",
            code(&r)
        );
        assert_eq!(xor_addr(&r, ATTR_XOR_RELAYED_ADDRESS).port() % 2, 0);
        assert_eq!(
            a.ask(METHOD_REFRESH, &[&lifetime(0)]).await.typ.class,
            CLASS_SUCCESS_RESPONSE
        );
        // R=1: an even port and the next one held; claimed by the token, then both freed.
        let r = allocate(
            &mut a,
            &[&udp_transport(), &raw_attr(ATTR_EVEN_PORT, vec![0x80])],
            &mut retries,
        )
        .await;
        assert_eq!(
            r.typ.class,
            CLASS_SUCCESS_RESPONSE,
            "R=1 #{i}: {:?}",
            code(&r)
        );
        let even: SocketAddr = xor_addr(&r, ATTR_XOR_RELAYED_ADDRESS);
        let token = r.get(ATTR_RESERVATION_TOKEN).expect("a token");
        let r = b
            .ask(
                METHOD_ALLOCATE,
                &[&udp_transport(), &raw_attr(ATTR_RESERVATION_TOKEN, token)],
            )
            .await;
        assert_eq!(
            r.typ.class,
            CLASS_SUCCESS_RESPONSE,
            "token #{i}: {:?}",
            code(&r)
        );
        assert_eq!(
            xor_addr(&r, ATTR_XOR_RELAYED_ADDRESS).port(),
            even.port() + 1
        );
        assert_eq!(
            a.ask(METHOD_REFRESH, &[&lifetime(0)]).await.typ.class,
            CLASS_SUCCESS_RESPONSE
        );
        assert_eq!(
            b.ask(METHOD_REFRESH, &[&lifetime(0)]).await.typ.class,
            CLASS_SUCCESS_RESPONSE
        );
        requests += 6;
    }
    assert!(requests >= 1000);
    eprintln!("{requests} requests, {retries} Allocates retried after a 508");
    wait_until("every relay port free again", || free_ports(range) == 16).await;
    assert_eq!(s.stats().allocations, 0);
    s.stop();
}
