//! Issue 9 item 5: after a reload, ChannelData, Send and peer data follow the new peer
//! policy: permissions and channels it forbids are removed. In-process, real sockets.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::raw::*;
use stun::message::*;
use tokio::net::UdpSocket;

async fn nothing_arrives(sock: &UdpSocket) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf))
        .await
        .is_err()
}

#[tokio::test]
async fn tightened_policy_stops_relaying_on_bound_channels_after_reload() {
    let mut c = turnd::Config::for_tests();
    c.listen.udp = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))];
    c.listen.tcp.clear();
    c.listen.tls.clear();
    c.relay.ipv6 = None;
    let s = turnd::start(c.clone()).unwrap();
    let mut client = UdpTurn::new(s.udp[0]).await;
    let relay = client.allocate().await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client
        .channel_bind(0x4000, peer.local_addr().unwrap())
        .await;
    let mut buf = [0u8; 256];
    client
        .sock
        .send_to(&channel_data(0x4000, b"allowed"), s.udp[0])
        .await
        .unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
        .await
        .expect("relayed while loopback peers are allowed")
        .unwrap();
    assert_eq!(&buf[..n], b"allowed");
    assert_eq!((s.stats().permissions, s.stats().channels), (1, 1));

    // Tighten: loopback peers are no longer allowed (the built-in deny list applies).
    let mut tight = c.clone();
    tight.policy.allow_peers.clear();
    s.control.reload(tight).unwrap();
    wait_until("the channel is removed", || s.stats().channels == 0).await;
    assert_eq!(s.stats().permissions, 0);

    client
        .sock
        .send_to(&channel_data(0x4000, b"forbidden"), s.udp[0])
        .await
        .unwrap();
    assert!(
        nothing_arrives(&peer).await,
        "ChannelData relayed after the reload"
    );
    peer.send_to(b"from the peer", relay).await.unwrap();
    assert!(
        nothing_arrives(&client.sock).await,
        "peer data relayed after the reload"
    );
    // A ChannelBind to the same peer is refused now (403).
    let r = client
        .ask(
            METHOD_CHANNEL_BIND,
            &[
                &channel_number(0x4000),
                &peer_attr(peer.local_addr().unwrap()),
            ],
        )
        .await;
    assert_eq!(code(&r), Some(403));
    s.stop();
}
