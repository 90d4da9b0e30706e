//! The ready probe (`[admin] ready_probe`): `/readyz` is 200 only while turnd can allocate
//! through its own UDP listener and relay to its loopback echo and back; `/healthz` stays
//! liveness. Real sockets on loopback; the relay path is broken by holding every port of a
//! tiny relay range from the test.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdp};
use std::time::{Duration, Instant};

use crate::raw::*;
use stun::message::*;

/// `n` consecutive free UDP ports on 127.0.0.1 (checked by binding them).
fn free_port_run(n: u16) -> u16 {
    for _ in 0..200 {
        let base = 20_000 + rand::random::<u16>() % 20_000;
        let held: Vec<_> = (base..base + n)
            .filter_map(|p| StdUdp::bind((Ipv4Addr::LOCALHOST, p)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
    panic!("no run of {n} free UDP ports on 127.0.0.1");
}

async fn wait_for(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

fn probe_config(base: u16) -> turnd::Config {
    let mut c = turnd::Config::for_tests();
    // No loopback peers for users: only the probe's exception lets it reach its echo.
    c.policy.allow_peers = vec![];
    c.relay.ipv6 = None;
    c.relay.ports = turnd::config::PortRange {
        min: base,
        max: base + 3,
    };
    c.admin.ready_probe = true;
    c.admin.ready_probe_interval = Duration::from_secs(1);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_relay_path_and_healthz_stays_liveness() {
    let base = free_port_run(4);
    let srv = turnd::start(probe_config(base)).unwrap();
    let admin = srv.admin.unwrap();

    let t = wait_for(
        "/readyz 200 after start",
        Duration::from_secs(5),
        async || http("GET", admin, "/readyz", None).await.0 == 200,
    )
    .await;
    eprintln!("ready {t:?} after start");
    let (_, metrics) = http("GET", admin, "/metrics", None).await;
    let m = prometheus(&metrics);
    assert_eq!(m.get("turnd_ready_probe_success"), Some(&1.0), "{metrics}");

    // A user cannot reach the probe's echo (nor any loopback peer): 403.
    let echo = srv.control.probe().expect("the probe is on").echo_addr();
    let mut user = UdpTurn::new(srv.udp[0]).await;
    user.allocate().await;
    for peer in [echo, SocketAddr::from((Ipv4Addr::LOCALHOST, 9))] {
        let r = user
            .ask(METHOD_CREATE_PERMISSION, &[&peer_attr(peer)])
            .await;
        assert_eq!(code(&r), Some(403), "CreatePermission to {peer}");
    }
    let r = user.ask(METHOD_REFRESH, &[&lifetime(0)]).await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);

    // Break the relay path: every relay port is held by the test (probe rounds free
    // their allocation, so the ports come free between rounds).
    let mut held: Vec<Option<StdUdp>> = (0..4).map(|_| None).collect();
    let start = Instant::now();
    while held.iter().any(Option::is_none) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "cannot hold the relay ports"
        );
        for (i, slot) in held.iter_mut().enumerate() {
            if slot.is_none() {
                *slot = StdUdp::bind((Ipv4Addr::LOCALHOST, base + i as u16)).ok();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Within one interval plus one round's deadline.
    let t = wait_for(
        "/readyz 503 with the relay ports gone",
        Duration::from_secs(5),
        async || {
            let (status, body) = http("GET", admin, "/readyz", None).await;
            status == 503 && body.contains("relay probe failing")
        },
    )
    .await;
    eprintln!("not ready {t:?} after the ports were taken");
    let (status, body) = http("GET", admin, "/readyz", None).await;
    assert_eq!(status, 503);
    assert!(body.contains("allocate: error 508"), "{body}");
    assert_eq!(
        http("GET", admin, "/healthz", None).await.0,
        200,
        "liveness is unaffected"
    );
    let (_, metrics) = http("GET", admin, "/metrics", None).await;
    let m = prometheus(&metrics);
    assert_eq!(m.get("turnd_ready_probe_success"), Some(&0.0));
    assert!(m["turnd_ready_probe_failures_total"] >= 1.0);

    drop(held);
    let t = wait_for(
        "/readyz 200 once the ports are free",
        Duration::from_secs(5),
        async || http("GET", admin, "/readyz", None).await.0 == 200,
    )
    .await;
    eprintln!("ready again {t:?} after the ports were freed");
    srv.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_from_the_start_when_the_relay_path_never_worked() {
    // A one-port relay range whose port the test holds before turnd starts: the first
    // round already fails, and /readyz never claims readiness.
    let base = free_port_run(4);
    let mut c = probe_config(base);
    c.relay.ports = turnd::config::PortRange {
        min: base,
        max: base,
    };
    let _hold = StdUdp::bind((Ipv4Addr::LOCALHOST, base)).unwrap();
    let srv = turnd::start(c).unwrap();
    let admin = srv.admin.unwrap();
    wait_for(
        "/readyz 503 from the first round",
        Duration::from_secs(5),
        async || {
            let (status, body) = http("GET", admin, "/readyz", None).await;
            status == 503 && body.contains("allocate: error 508")
        },
    )
    .await;
    assert_eq!(http("GET", admin, "/healthz", None).await.0, 200);
    srv.stop();
}

#[tokio::test]
async fn readyz_without_the_probe_does_not_claim_it() {
    let srv = turnd::start(turnd::Config::for_tests()).unwrap();
    let admin = srv.admin.unwrap();
    assert!(srv.control.probe().is_none());
    assert_eq!(http("GET", admin, "/readyz", None).await.0, 200);
    let (_, metrics) = http("GET", admin, "/metrics", None).await;
    assert!(
        !metrics.contains("\nturnd_ready_probe_success "),
        "{metrics}"
    );
    srv.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_keeps_its_credential_and_exception_across_a_reload() {
    let base = free_port_run(4);
    let c = probe_config(base);
    let srv = turnd::start(c.clone()).unwrap();
    let admin = srv.admin.unwrap();
    wait_for(
        "/readyz 200 after start",
        Duration::from_secs(5),
        async || http("GET", admin, "/readyz", None).await.0 == 200,
    )
    .await;
    // A reload replaces the authenticator and the peer policy on every shard.
    let mut new = c;
    new.policy.max_allocations_per_user = 50;
    srv.control.reload(new).unwrap();
    let probe = srv.control.probe().unwrap();
    let rounds = probe.status().rounds();
    wait_for(
        "two more probe rounds",
        Duration::from_secs(6),
        async || probe.status().rounds() >= rounds + 2,
    )
    .await;
    let (status, body) = http("GET", admin, "/readyz", None).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(probe.status().failures(), 0);
    srv.stop();
}
