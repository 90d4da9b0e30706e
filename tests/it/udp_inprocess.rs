//! Tier 2: turnd started in-process at port 0, driven over real UDP sockets with raw STUN
//! and with webrtc-rs `turn::client`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::raw::*;
use stun::message::*;
use stun::xoraddr::XorMappedAddress;
use tokio::net::UdpSocket;
use webrtc_util::Conn;

fn server() -> turnd::Running {
    turnd::start(turnd::Config::for_tests()).expect("turnd starts")
}

#[tokio::test]
async fn binding_over_ipv4_and_ipv6() {
    let s = server();
    for addr in s.udp.clone() {
        let sock = UdpSocket::bind(SocketAddr::new(addr.ip(), 0))
            .await
            .unwrap();
        let r = udp_ask(&sock, addr, &request(METHOD_BINDING, &[], None)).await;
        let mut x = XorMappedAddress::default();
        x.get_from(&r).unwrap();
        assert_eq!(SocketAddr::new(x.ip, x.port), sock.local_addr().unwrap());
    }
    s.stop();
}

#[tokio::test]
async fn raw_relay_of_large_datagrams_and_port_reuse_after_refresh_zero() {
    let s = server();
    for server in s.udp.clone() {
        let mut c = UdpTurn::new(server).await;
        let relay = c.allocate().await;
        assert_eq!(relay.ip(), server.ip(), "loopback relay of the same family");
        let peer = UdpSocket::bind(SocketAddr::new(server.ip(), 0))
            .await
            .unwrap();
        c.channel_bind(0x4001, peer.local_addr().unwrap()).await;
        // 8000 bytes: more than any MTU, nothing truncated either way.
        let payload: Vec<u8> = (0..8000u32).map(|i| i as u8).collect();
        let cd = channel_data(0x4001, &payload);
        c.sock.send_to(&cd, server).await.unwrap();
        let mut buf = vec![0u8; 65536];
        let (n, from) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((from, &buf[..n]), (relay, &payload[..]));
        peer.send_to(&payload, relay).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), c.sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], &cd[..]);
        assert_eq!(s.stats().channels, 1);

        let r = c.ask(METHOD_REFRESH, &[&lifetime(0)]).await;
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
        wait_until("relay port bindable after Refresh(0)", || {
            std::net::UdpSocket::bind(relay).is_ok()
        })
        .await;
        assert_eq!(s.stats().allocations, 0);
    }
    s.stop();
}

#[tokio::test]
async fn webrtc_rs_turn_client_relays_to_an_echo_peer() {
    let s = server();
    let server_addr = s.udp[0];
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let client = crate::raw::turn_client(server_addr, USER, PASS, REALM).await;
    let mapped = client.send_binding_request().await.unwrap();
    assert_eq!(mapped.ip(), server_addr.ip());
    let relay = client.allocate().await.unwrap();
    assert_ne!(relay.local_addr().unwrap().port(), 0);
    let mut buf = vec![0u8; 2048];
    // The client sends with Send indications first and binds a channel meanwhile.
    for i in 0..20u8 {
        relay.send_to(&[i; 100], echo_addr).await.unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(3), relay.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((n, from, buf[0]), (100, echo_addr, i));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.stats().allocations, 1);
    relay.close().await.unwrap();
    client.close().await.unwrap();
    s.stop();
}
