//! Tier 2: turnd started in-process at port 0, driven over real UDP sockets with raw STUN
//! and with webrtc-rs `turn::client`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use stun::attributes::*;
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

fn server() -> turnd::Running {
    turnd::start(turnd::Config::for_tests()).expect("turnd starts")
}

async fn roundtrip(sock: &UdpSocket, to: SocketAddr, m: &Message) -> Message {
    for _ in 0..5 {
        sock.send_to(&m.raw, to).await.unwrap();
        let mut buf = vec![0u8; 2048];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await
        {
            let mut r = Message::new();
            r.unmarshal_binary(&buf[..n]).unwrap();
            assert_eq!(r.transaction_id, m.transaction_id);
            return r;
        }
    }
    panic!("no answer from {to}");
}

fn request(method: Method, setters: &[&dyn Setter]) -> Message {
    let mut m = Message::new();
    m.typ = MessageType::new(method, CLASS_REQUEST);
    m.new_transaction_id().unwrap();
    m.write_header();
    for s in setters {
        s.add_to(&mut m).unwrap();
    }
    m
}

fn code(m: &Message) -> Option<u16> {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|_| e.code.0)
}

struct Raw(AttrType, Vec<u8>);
impl Setter for Raw {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

/// Allocate with raw STUN; returns (relayed address, nonce, key).
async fn raw_allocate(sock: &UdpSocket, server: SocketAddr, family: u8) -> (SocketAddr, String) {
    let transport = Raw(ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0]);
    let fam = Raw(ATTR_REQUESTED_ADDRESS_FAMILY, vec![family, 0, 0, 0]);
    let r = roundtrip(sock, server, &request(METHOD_ALLOCATE, &[&transport, &fam])).await;
    assert_eq!(code(&r), Some(401));
    let nonce = TextAttribute::get_from_as(&r, ATTR_NONCE).unwrap().text;
    let r = roundtrip(
        sock,
        server,
        &authed(METHOD_ALLOCATE, &[&transport, &fam], &nonce),
    )
    .await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", code(&r));
    let mut x = XorMappedAddress::default();
    x.get_from_as(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap();
    (SocketAddr::new(x.ip, x.port), nonce)
}

fn authed(method: Method, setters: &[&dyn Setter], nonce: &str) -> Message {
    let mut m = request(method, setters);
    for (t, v) in [
        (ATTR_USERNAME, "dev"),
        (ATTR_REALM, "turnd"),
        (ATTR_NONCE, nonce),
    ] {
        TextAttribute::new(t, v.to_string()).add_to(&mut m).unwrap();
    }
    MessageIntegrity::new_long_term_integrity("dev".into(), "turnd".into(), "devpass".into())
        .add_to(&mut m)
        .unwrap();
    m
}

#[tokio::test]
async fn binding_over_ipv4_and_ipv6() {
    let s = server();
    for addr in s.udp.clone() {
        let sock = UdpSocket::bind(SocketAddr::new(addr.ip(), 0))
            .await
            .unwrap();
        let r = roundtrip(&sock, addr, &request(METHOD_BINDING, &[])).await;
        let mut x = XorMappedAddress::default();
        x.get_from(&r).unwrap();
        assert_eq!(SocketAddr::new(x.ip, x.port), sock.local_addr().unwrap());
    }
    s.stop();
}

#[tokio::test]
async fn raw_relay_of_large_datagrams_and_port_reuse_after_refresh_zero() {
    let s = server();
    for (server, family) in [(s.udp[0], 1u8), (s.udp[1], 2u8)] {
        let sock = UdpSocket::bind(SocketAddr::new(server.ip(), 0))
            .await
            .unwrap();
        let (relay, nonce) = raw_allocate(&sock, server, family).await;
        assert_eq!(relay.ip(), server.ip(), "loopback relay of the same family");
        let peer = UdpSocket::bind(SocketAddr::new(server.ip(), 0))
            .await
            .unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let p = XorMappedAddress {
            ip: peer_addr.ip(),
            port: peer_addr.port(),
        };
        struct Peer<'a>(&'a XorMappedAddress);
        impl Setter for Peer<'_> {
            fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
                self.0.add_to_as(m, ATTR_XOR_PEER_ADDRESS)
            }
        }
        let ch = Raw(ATTR_CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0]);
        let r = roundtrip(
            &sock,
            server,
            &authed(METHOD_CHANNEL_BIND, &[&ch, &Peer(&p)], &nonce),
        )
        .await;
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
        // 8000 bytes: more than any MTU, nothing truncated either way.
        let payload: Vec<u8> = (0..8000u32).map(|i| i as u8).collect();
        let mut cd = vec![0x40, 0x01];
        cd.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        cd.extend_from_slice(&payload);
        sock.send_to(&cd, server).await.unwrap();
        let mut buf = vec![0u8; 65536];
        let (n, from) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((from, &buf[..n]), (relay, &payload[..]));
        peer.send_to(&payload, relay).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], &cd[..]);
        assert_eq!(s.stats().channels, 1);

        let zero = Raw(ATTR_LIFETIME, vec![0; 4]);
        let r = roundtrip(&sock, server, &authed(METHOD_REFRESH, &[&zero], &nonce)).await;
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
        // The relay port is free again (allow the shard a moment to drop the socket).
        let mut rebound = false;
        for _ in 0..50 {
            if std::net::UdpSocket::bind(relay).is_ok() {
                rebound = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(rebound, "relay port {relay} is bindable after Refresh(0)");
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
    let conn = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let client = Client::new(ClientConfig {
        stun_serv_addr: server_addr.to_string(),
        turn_serv_addr: server_addr.to_string(),
        username: "dev".into(),
        password: "devpass".into(),
        realm: "turnd".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    let mapped = client.send_binding_request().await.unwrap();
    assert_eq!(mapped.ip(), server_addr.ip());
    let relay = client.allocate().await.unwrap();
    let relayed = relay.local_addr().unwrap();
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
    assert!(relayed.port() != 0);
    relay.close().await.unwrap();
    client.close().await.unwrap();
    s.stop();
}
