//! Issue 12: the shard's one UDP loop. recvmmsg/sendmmsg batches are bounded and used under
//! load; a flooded relay socket does not stall another allocation's traffic on the same
//! shard; a lone packet is relayed at once (nothing waits for a batch to fill).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::raw::*;
use tokio::net::UdpSocket;

fn config() -> turnd::Config {
    let mut c = turnd::Config::for_tests();
    c.workers = 1;
    c.listen.udp = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))];
    c.listen.tcp.clear();
    c.listen.tls.clear();
    c.relay.ipv6 = None;
    c
}

async fn metrics(admin: SocketAddr) -> std::collections::HashMap<String, f64> {
    let (status, body) = http("GET", admin, "/metrics", None).await;
    assert_eq!(status, 200);
    prometheus(&body)
}

/// One ChannelData round trip client -> peer -> client; the time it took, or None if lost.
async fn round_trip(c: &UdpTurn, peer: &UdpSocket, relay: SocketAddr, i: u8) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 2048];
    c.sock
        .send_to(&channel_data(0x4000, &[i; 16]), c.server)
        .await
        .unwrap();
    let (n, from) = tokio::time::timeout(Duration::from_millis(500), peer.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    if buf[..n] != [i; 16] {
        return None;
    }
    peer.send_to(&buf[..n], relay).await.unwrap();
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        let r = tokio::time::timeout_at(deadline.into(), c.sock.recv_from(&mut buf)).await;
        match r {
            Ok(Ok((n, _))) if buf[..n] == channel_data(0x4000, &[i; 16])[..] => {
                let _ = from;
                return Some(t.elapsed());
            }
            Ok(Ok(_)) => continue,
            _ => return None,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_used_under_load_and_bounded_and_a_flooded_relay_does_not_stall_another() {
    let s = turnd::start(config()).unwrap();
    let admin = s.admin.unwrap();
    // Two allocations on the one shard: A gets flooded by its peer, B must keep relaying.
    let mut a = UdpTurn::new(s.udp[0]).await;
    let relay_a = a.allocate().await;
    let peer_a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    a.channel_bind(0x4000, peer_a.local_addr().unwrap()).await;
    let mut b = UdpTurn::new(s.udp[0]).await;
    let relay_b = b.allocate().await;
    let peer_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    b.channel_bind(0x4000, peer_b.local_addr().unwrap()).await;

    // A lone packet at an idle server goes through at once.
    let lone = round_trip(&b, &peer_b, relay_b, 1).await.expect("relayed");
    assert!(
        lone < Duration::from_millis(100),
        "lone round trip {lone:?}"
    );

    let before = metrics(admin).await;
    // Bounded flood from A's peer to A's relay (count and time): permitted data that the
    // shard relays to client A, who never reads it.
    let peer_a_std = peer_a.into_std().unwrap();
    let flood = std::thread::spawn(move || {
        peer_a_std.set_nonblocking(false).unwrap();
        let end = Instant::now() + Duration::from_secs(3);
        let mut sent = 0u64;
        while sent < 5_000_000 && Instant::now() < end {
            let _ = peer_a_std.send_to(&[7u8; 100], relay_a);
            sent += 1;
        }
        sent
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got = 0;
    for i in 0..10u8 {
        if round_trip(&b, &peer_b, relay_b, 10 + i).await.is_some() {
            got += 1;
        }
    }
    let sent = flood.join().unwrap();
    let after = metrics(admin).await;
    let delta =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let recv_calls = delta("turnd_udp_batch_calls_total{call=\"recvmmsg\"}");
    let recv_dgrams = delta("turnd_udp_batch_datagrams_total{call=\"recvmmsg\"}");
    let send_calls = delta("turnd_udp_batch_calls_total{call=\"sendmmsg\"}");
    let send_dgrams = delta("turnd_udp_batch_datagrams_total{call=\"sendmmsg\"}");
    println!(
        "flood {sent} datagrams; B relayed {got}/10; recvmmsg {recv_dgrams}/{recv_calls}, \
         sendmmsg {send_dgrams}/{send_calls}"
    );
    assert!(
        got >= 8,
        "only {got} of 10 round trips of B during A's flood"
    );
    assert!(recv_calls > 0.0 && send_calls > 0.0);
    // Batching happened (a flooded socket is read many datagrams per call) and no call
    // carried more than a batch.
    assert!(
        recv_dgrams / recv_calls > 2.0,
        "recvmmsg carried {recv_dgrams} datagrams in {recv_calls} calls"
    );
    assert!(recv_dgrams / recv_calls <= turnd::net::udp::BATCH as f64);
    assert!(
        send_dgrams / send_calls > 2.0,
        "sendmmsg carried {send_dgrams} datagrams in {send_calls} calls"
    );
    assert!(send_dgrams / send_calls <= turnd::net::udp::BATCH as f64);
    s.stop();
}
