//! Revocation through the admin API, over real sockets: a revoked static user, user part or
//! REST username gets 401 at once, a revoked user's live allocations end, and revocations
//! survive a reload (SIGHUP's path) and a restart (the revocations file).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::raw::*;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use stun::message::*;

const TOKEN: &str = "test-admin-token";

fn config(file: &Path) -> turnd::Config {
    let mut c = turnd::Config::for_tests();
    c.auth.revocations_file = Some(file.to_path_buf());
    c
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A TURN REST credential for `user` with the test secret.
fn rest(user: &str, expiry: u64) -> (String, String) {
    let name = format!("{expiry}:{user}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"devsecret").unwrap();
    mac.update(name.as_bytes());
    let pass = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (name, pass)
}

async fn client(srv: &turnd::Running, user: &str, pass: &str) -> UdpTurn {
    let mut c = UdpTurn::new(srv.udp[0]).await;
    c.user = user.into();
    c.pass = pass.into();
    c
}

async fn allocate_code(c: &mut UdpTurn) -> Option<u16> {
    let r = c.ask(METHOD_ALLOCATE, &[&udp_transport()]).await;
    code(&r)
}

#[tokio::test]
async fn revoked_credentials_get_401_and_their_allocations_end() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("revocations.json");
    let srv = turnd::start(config(&file)).unwrap();
    let admin = srv.admin.unwrap();

    let mut dev = client(&srv, USER, PASS).await;
    dev.allocate().await;
    let (alice1, alice1_pass) = rest("alice", unix_now() + 3600);
    let (alice2, alice2_pass) = rest("alice", unix_now() + 7200);
    let (carol1, carol1_pass) = rest("carol", unix_now() + 3600);
    let (carol2, carol2_pass) = rest("carol", unix_now() + 7200);
    let mut a1 = client(&srv, &alice1, &alice1_pass).await;
    a1.allocate().await;
    let mut c1 = client(&srv, &carol1, &carol1_pass).await;
    c1.allocate().await;
    assert_eq!(srv.stats().allocations, 3);

    // The token is needed; a request names exactly one target and a time.
    assert_eq!(
        http("POST", admin, "/api/revocations?user=dev&for=60", None)
            .await
            .0,
        401
    );
    assert_eq!(
        http("POST", admin, "/api/revocations?for=60", Some(TOKEN))
            .await
            .0,
        400
    );
    assert_eq!(
        http("POST", admin, "/api/revocations?user=dev", Some(TOKEN))
            .await
            .0,
        400
    );

    // A static user: its allocation ends, its next Refresh and any new Allocate get 401.
    let (status, body) = http(
        "POST",
        admin,
        "/api/revocations?user=dev&for=3600",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""ended":1"#), "{body}");
    assert_eq!(srv.stats().allocations, 2);
    assert_eq!(code(&dev.ask(METHOD_REFRESH, &[]).await), Some(401));
    let mut dev2 = client(&srv, USER, PASS).await;
    assert_eq!(allocate_code(&mut dev2).await, Some(401));

    // A user part: every REST credential minted for alice.
    let (status, body) = http(
        "POST",
        admin,
        "/api/revocations?user=alice&for=3600",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""ended":1"#), "{body}");
    let mut a2 = client(&srv, &alice2, &alice2_pass).await;
    assert_eq!(allocate_code(&mut a2).await, Some(401));

    // One REST username: its allocation ends at once; carol's other credential still works.
    let before = srv.stats().allocations;
    let q = format!("/api/revocations?username={carol1}&for=3600");
    let (status, body) = http("POST", admin, &q, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""ended":1"#), "{body}");
    assert_eq!(srv.stats().allocations, before - 1);
    assert_eq!(code(&c1.ask(METHOD_REFRESH, &[]).await), Some(401));
    let mut c2 = client(&srv, &carol2, &carol2_pass).await;
    c2.allocate().await;

    // A revocation that already ended changes nothing.
    let (bob, bob_pass) = rest("bob", unix_now() + 3600);
    let q = format!("/api/revocations?user=bob&until={}", unix_now() - 1);
    assert_eq!(http("POST", admin, &q, Some(TOKEN)).await.0, 200);
    client(&srv, &bob, &bob_pass).await.allocate().await;

    let (status, body) = http("GET", admin, "/api/revocations", Some(TOKEN)).await;
    assert_eq!(status, 200);
    for needle in [
        r#""user":"dev""#,
        r#""user":"alice""#,
        &format!(r#""username":"{carol1}""#),
    ] {
        assert!(body.contains(needle), "{needle} in {body}");
    }
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(
        stored.contains("\"alice\"") && stored.contains(&carol1),
        "{stored}"
    );

    // A reload (what SIGHUP does) keeps them.
    srv.control.reload(config(&file)).unwrap();
    let mut dev3 = client(&srv, USER, PASS).await;
    assert_eq!(allocate_code(&mut dev3).await, Some(401));
    srv.stop();

    // So does a restart: they are read from the file.
    let srv = turnd::start(config(&file)).unwrap();
    let admin = srv.admin.unwrap();
    let mut dev4 = client(&srv, USER, PASS).await;
    assert_eq!(allocate_code(&mut dev4).await, Some(401));
    let mut a3 = client(&srv, &alice2, &alice2_pass).await;
    assert_eq!(allocate_code(&mut a3).await, Some(401));

    // Lifting one: dev works again; lifting it twice is 404.
    assert_eq!(
        http("DELETE", admin, "/api/revocations?user=dev", Some(TOKEN))
            .await
            .0,
        204
    );
    assert_eq!(
        http("DELETE", admin, "/api/revocations?user=dev", Some(TOKEN))
            .await
            .0,
        404
    );
    let mut dev5 = client(&srv, USER, PASS).await;
    dev5.allocate().await;
    srv.stop();
}
