//! The admin API: a known workload moves the metrics by known amounts; the session API
//! needs the token, lists live allocations and ends them.

use std::time::Duration;

use crate::raw::*;
use stun::message::*;
use tokio::net::UdpSocket;

const TOKEN: &str = "test-admin-token";

fn get(m: &std::collections::HashMap<String, f64>, k: &str) -> f64 {
    *m.get(k).unwrap_or_else(|| panic!("metric {k} missing"))
}

#[tokio::test]
async fn a_known_workload_moves_the_metrics() {
    let srv = turnd::start(turnd::Config::for_tests()).unwrap();
    let admin = srv.admin.unwrap();
    let before = metrics(admin).await;
    assert_eq!(get(&before, "turnd_allocations_total"), 0.0);

    let mut c = UdpTurn::new(srv.udp[0]).await;
    let relay = c.allocate().await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.channel_bind(0x4000, peer.local_addr().unwrap()).await;
    let mut buf = vec![0u8; 2048];
    for _ in 0..10 {
        c.sock
            .send_to(&channel_data(0x4000, &[1; 100]), c.server)
            .await
            .unwrap();
        peer.recv_from(&mut buf).await.unwrap();
    }
    for _ in 0..4 {
        peer.send_to(&[2; 50], relay).await.unwrap();
        c.sock.recv_from(&mut buf).await.unwrap();
    }
    // A wrong password: one more 401 for a bad password.
    let mut bad = UdpTurn::new(srv.udp[0]).await;
    bad.pass = "wrong".into();
    let r = bad.ask(METHOD_ALLOCATE, &[&udp_transport()]).await;
    assert_eq!(code(&r), Some(401));

    let m = metrics(admin).await;
    assert_eq!(get(&m, "turnd_allocations_total"), 1.0);
    assert_eq!(
        get(
            &m,
            r#"turnd_allocations_active{transport="udp",family="ipv4"}"#
        ),
        1.0
    );
    assert_eq!(get(&m, "turnd_channels_active"), 1.0);
    assert_eq!(get(&m, "turnd_permissions_active"), 1.0);
    assert_eq!(
        get(
            &m,
            r#"turnd_relayed_packets_total{direction="to_peer",transport="udp"}"#
        ),
        10.0
    );
    assert_eq!(
        get(
            &m,
            r#"turnd_relayed_bytes_total{direction="to_peer",transport="udp"}"#
        ),
        1000.0
    );
    assert_eq!(
        get(
            &m,
            r#"turnd_relayed_packets_total{direction="to_client",transport="udp"}"#
        ),
        4.0
    );
    assert_eq!(
        get(
            &m,
            r#"turnd_relayed_bytes_total{direction="to_client",transport="udp"}"#
        ),
        200.0
    );
    assert_eq!(
        get(&m, r#"turnd_responses_total{method="allocate",code="0"}"#),
        1.0
    );
    assert_eq!(
        get(&m, r#"turnd_responses_total{method="allocate",code="401"}"#),
        3.0
    );
    assert_eq!(
        get(
            &m,
            r#"turnd_responses_total{method="channel_bind",code="0"}"#
        ),
        1.0
    );
    assert_eq!(
        get(&m, r#"turnd_auth_failures_total{reason="challenge"}"#),
        2.0
    );
    assert_eq!(
        get(&m, r#"turnd_auth_failures_total{reason="bad_password"}"#),
        1.0
    );
    // The refusals behind those 401s, by variant of the engine's `Refusal`.
    assert_eq!(
        get(&m, r#"turnd_refusals_total{reason="unauthorized"}"#),
        3.0
    );

    // Ending the allocation keeps its traffic in the totals and fills the histogram.
    let r = c.ask(METHOD_REFRESH, &[&lifetime(0)]).await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    let m = metrics(admin).await;
    assert_eq!(
        get(
            &m,
            r#"turnd_allocations_active{transport="udp",family="ipv4"}"#
        ),
        0.0
    );
    assert_eq!(
        get(
            &m,
            r#"turnd_relayed_packets_total{direction="to_peer",transport="udp"}"#
        ),
        10.0
    );
    assert_eq!(get(&m, "turnd_allocation_duration_seconds_count"), 1.0);
    assert_eq!(
        get(&m, r#"turnd_allocation_duration_seconds_bucket{le="10"}"#),
        1.0
    );
    let (status, _) = http("GET", admin, "/healthz", None).await;
    assert_eq!(status, 200);
    let (status, _) = http("GET", admin, "/readyz", None).await;
    assert_eq!(status, 200);
    srv.control.drain();
    let (status, _) = http("GET", admin, "/readyz", None).await;
    assert_eq!(status, 503, "draining is not ready");
    srv.stop();
}

#[tokio::test]
async fn session_api_needs_the_token_lists_and_ends_allocations() {
    let srv = turnd::start(turnd::Config::for_tests()).unwrap();
    let admin = srv.admin.unwrap();
    let mut c = UdpTurn::new(srv.udp[0]).await;
    let relay = c.allocate().await;

    assert_eq!(http("GET", admin, "/api/sessions", None).await.0, 401);
    assert_eq!(
        http("GET", admin, "/api/sessions", Some("wrong")).await.0,
        401
    );
    let (status, body) = http("GET", admin, "/api/sessions?user=dev", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sessions = v["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    assert_eq!(s["user"], "dev");
    assert_eq!(s["transport"], "udp");
    assert_eq!(s["client"], c.sock.local_addr().unwrap().to_string());
    assert_eq!(s["relays"][0], relay.to_string());
    let (_, body) = http("GET", admin, "/api/sessions?user=nobody", Some(TOKEN)).await;
    assert!(body.contains(r#""sessions":[]"#), "{body}");

    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(
        http("DELETE", admin, &format!("/api/sessions/{id}"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        http("DELETE", admin, &format!("/api/sessions/{id}"), Some(TOKEN))
            .await
            .0,
        204
    );
    assert_eq!(
        http("DELETE", admin, &format!("/api/sessions/{id}"), Some(TOKEN))
            .await
            .0,
        404
    );
    assert_eq!(srv.stats().allocations, 0);
    let r = c.ask(METHOD_REFRESH, &[]).await;
    assert_eq!(code(&r), Some(437), "the client's next Refresh gets 437");

    // Ending all of a user's sessions.
    let mut c2 = UdpTurn::new(srv.udp[1]).await;
    c.allocate().await;
    c2.allocate().await;
    let (status, body) = http("DELETE", admin, "/api/users/dev/sessions", Some(TOKEN)).await;
    assert_eq!((status, body.trim()), (200, r#"{"ended":2}"#));
    assert_eq!(srv.stats().allocations, 0);
    tokio::time::sleep(Duration::from_millis(10)).await;
    srv.stop();
}

#[tokio::test]
async fn session_api_is_off_without_a_token() {
    let mut cfg = turnd::Config::for_tests();
    cfg.admin.token = None;
    let srv = turnd::start(cfg).unwrap();
    let admin = srv.admin.unwrap();
    assert_eq!(
        http("GET", admin, "/api/sessions", Some(TOKEN)).await.0,
        404
    );
    assert_eq!(http("GET", admin, "/metrics", None).await.0, 200);
    srv.stop();
}
