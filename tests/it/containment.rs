//! Issue 9 item 2: a panic never black-holes clients. Faults are injected with magic
//! datagrams that only the `fault-injection` feature honours (enabled for test builds by the
//! self dev-dependency in Cargo.toml). In-process and with the real binary.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::common::Daemon;
use crate::raw::*;
use stun::message::*;
use tokio::net::UdpSocket;
use turnd_proto::engine::fault;

fn config(workers: usize) -> turnd::Config {
    let mut c = turnd::Config::for_tests();
    c.workers = workers;
    c.listen.udp = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))];
    c.listen.tcp = c.listen.udp.clone();
    c.listen.tls.clear();
    c.relay.ipv6 = None;
    c
}

/// Relay `payload` client -> peer over channel 0x4000 and back; panics if either is lost.
async fn relays(c: &UdpTurn, peer: &UdpSocket, relay: SocketAddr, payload: &[u8]) {
    let mut buf = [0u8; 256];
    c.sock
        .send_to(&channel_data(0x4000, payload), c.server)
        .await
        .unwrap();
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
        .await
        .expect("relayed to the peer")
        .unwrap();
    assert_eq!((&buf[..n], from), (payload, relay));
    peer.send_to(payload, relay).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), c.sock.recv_from(&mut buf))
        .await
        .expect("relayed to the client")
        .unwrap();
    assert_eq!(&buf[..n], &channel_data(0x4000, payload)[..]);
}

/// A panic while the engine handles a datagram drops that datagram only: it is counted, the
/// same 5-tuple's allocation keeps relaying, requests are answered, health stays green.
#[tokio::test]
async fn engine_panic_drops_one_packet_and_the_shard_keeps_serving() {
    let s = turnd::start(config(2)).unwrap();
    let admin = s.admin.unwrap();
    let mut c = UdpTurn::new(s.udp[0]).await;
    let relay = c.allocate().await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.channel_bind(0x4000, peer.local_addr().unwrap()).await;
    relays(&c, &peer, relay, b"before").await;

    // From the allocation's own 5-tuple, so the panics hit the shard that serves it.
    for _ in 0..5 {
        c.sock.send_to(fault::PANIC, c.server).await.unwrap();
    }
    wait_until_async(|| async { metric(admin, "turnd_engine_panics_total").await == 5.0 }).await;
    relays(&c, &peer, relay, b"after").await;
    let r = c.ask(METHOD_REFRESH, &[&lifetime(600)]).await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    assert_eq!(
        http("GET", admin, "/healthz", None).await,
        (200, "ok\n".into())
    );
    assert_eq!(http("GET", admin, "/readyz", None).await.0, 200);
    assert_eq!(s.stats().allocations, 1);
    s.stop();
}

async fn wait_until_async<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(Instant::now() < end, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A UDP listener task that ends makes `/healthz` name the shard and `/readyz` 503; the
/// server still stops cleanly.
#[tokio::test]
async fn ended_listener_task_turns_health_red_and_names_the_shard() {
    let s = turnd::start(config(2)).unwrap();
    let admin = s.admin.unwrap();
    assert_eq!(http("GET", admin, "/healthz", None).await.0, 200);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(fault::END_LISTENER, s.udp[0]).await.unwrap();
    wait_until_async(|| async { http("GET", admin, "/healthz", None).await.0 == 503 }).await;
    let (_, body) = http("GET", admin, "/healthz", None).await;
    assert!(
        body.starts_with("shard 0 gone: UDP loop ended")
            || body.starts_with("shard 1 gone: UDP loop ended"),
        "{body}"
    );
    assert_eq!(
        http("GET", admin, "/readyz", None).await,
        (503, "a shard is gone\n".into())
    );
    assert_eq!(s.control.health().gone().len(), 1);
    s.stop();
}

/// A shard thread that ends (a panic outside any containment) is reported the same way.
#[tokio::test]
async fn ended_shard_thread_turns_health_red() {
    let s = turnd::start(config(1)).unwrap();
    let admin = s.admin.unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(fault::END_SHARD, s.udp[0]).await.unwrap();
    wait_until_async(|| async { http("GET", admin, "/healthz", None).await.0 == 503 }).await;
    let (_, body) = http("GET", admin, "/healthz", None).await;
    assert!(body.starts_with("shard 0 gone: "), "{body}");
    assert!(body.contains("(panic at src/net/shard.rs:"), "{body}");
    assert_eq!(http("GET", admin, "/readyz", None).await.0, 503);
    s.stop();
}

/// One flooded UDP listener does not starve a relay reader or a stop request of its shard:
/// the receive loop yields after a bounded batch. (Bounded flood: count and time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooded_listener_does_not_starve_relay_reader_or_stop() {
    let s = turnd::start(config(1)).unwrap();
    let mut c = UdpTurn::new(s.udp[0]).await;
    let relay = c.allocate().await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.channel_bind(0x4000, peer.local_addr().unwrap()).await;
    relays(&c, &peer, relay, b"warm").await;

    let server = s.udp[0];
    let stop_flood = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = Vec::new();
    for _ in 0..2 {
        let stop_flood = stop_flood.clone();
        flooders.push(std::thread::spawn(move || {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            // Binding requests: each costs the shard a parse and an answer, more than the
            // sender spends, so the listener socket never runs dry.
            let junk = request(METHOD_BINDING, &[], None).raw;
            let end = Instant::now() + Duration::from_secs(8);
            let mut sent = 0u64;
            while sent < 20_000_000
                && Instant::now() < end
                && !stop_flood.load(std::sync::atomic::Ordering::Relaxed)
            {
                let _ = sock.send_to(&junk, server);
                sent += 1;
            }
            sent
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The peer's datagrams arrive on the relay socket of the same shard while it floods.
    let mut buf = [0u8; 256];
    let mut got = 0;
    for i in 0..10u8 {
        peer.send_to(&[i; 8], relay).await.unwrap();
        let t = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_millis(300), c.sock.recv_from(&mut buf)).await
            {
                Ok(Ok((n, _))) if buf[..n] == channel_data(0x4000, &[i; 8])[..] => {
                    got += 1;
                    break;
                }
                Ok(_) if t.elapsed() < Duration::from_millis(300) => continue,
                _ => break,
            }
        }
    }
    // And a stop request is served while the flood goes on.
    let t = Instant::now();
    let stopped = tokio::task::spawn_blocking(move || s.stop());
    tokio::time::timeout(Duration::from_secs(3), stopped)
        .await
        .expect("stop within 3 s under flood")
        .unwrap();
    let stop_took = t.elapsed();
    stop_flood.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: u64 = flooders.into_iter().map(|f| f.join().unwrap()).sum();
    println!("flood: {sent} datagrams sent; peer data relayed {got}/10; stop took {stop_took:?}");
    assert!(
        got >= 8,
        "only {got} of 10 peer datagrams relayed during the flood"
    );
}

/// The real binary: panics are contained and logged once per interval; a shard that is
/// gone makes the process exit with 70 so that systemd restarts it.
#[tokio::test]
async fn binary_contains_panics_and_exits_70_when_a_shard_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("turnd.toml");
    std::fs::write(
        &file,
        r#"realm = "turnd"
workers = 2
[listen]
udp = ["127.0.0.1:0"]
[relay]
ipv4 = "127.0.0.1"
ipv6 = "none"
ports = "51000-51999"
[auth]
users = ["dev:devpass"]
[policy]
allow_peers = ["127.0.0.0/8"]
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
"#,
    )
    .unwrap();
    let mut d = Daemon::start(&file);
    let mut c = UdpTurn::new(d.udp).await;
    c.allocate().await;
    for _ in 0..5 {
        c.sock.send_to(fault::PANIC, d.udp).await.unwrap();
    }
    let admin = d.admin;
    wait_until_async(|| async { metric(admin, "turnd_engine_panics_total").await == 5.0 }).await;
    let r = c.ask(METHOD_REFRESH, &[&lifetime(600)]).await;
    assert_eq!(
        r.typ.class, CLASS_SUCCESS_RESPONSE,
        "the same 5-tuple is served"
    );
    let line = d.wait_for("panic logged", |v| {
        v["message"] == "a panic while handling one input: dropped it, the shard goes on"
    });
    assert_eq!(line["input"], "ChannelData");
    assert_eq!(line["panic"], "injected engine fault");
    assert!(line["at"]
        .as_str()
        .unwrap()
        .starts_with("crates/turnd-proto/src/engine/mod.rs:"));
    // Rate-limited: one line for five panics (the interval is 10 s), nothing on stderr else.
    std::thread::sleep(Duration::from_millis(300));
    d.drain_lines();
    let panic_lines = d
        .seen
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("a panic"))
        })
        .count();
    assert_eq!(panic_lines, 1);
    assert!(
        !d.raw
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("panicked at")),
        "the default panic hook printed"
    );

    c.sock.send_to(fault::END_LISTENER, d.udp).await.unwrap();
    assert_eq!(d.exit_within(Duration::from_secs(10)), Some(70));
    d.drain_lines();
    assert!(d
        .seen
        .iter()
        .any(|v| v["message"] == "a shard is gone; exiting so that the service is restarted"));
}
