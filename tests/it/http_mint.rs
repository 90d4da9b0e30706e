//! Tier 2 for the credential mint (`/api/ice-servers`) and the Host/Origin checks (issue 10
//! #3, #13): turnd in-process at port 0, raw HTTP/1.1, real Allocates with `turn::client`.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;
use turn::client::Client;

fn start(edit: impl FnOnce(&mut turnd::Config)) -> turnd::Running {
    let mut cfg = turnd::Config::for_tests();
    edit(&mut cfg);
    turnd::start(cfg).expect("turnd starts")
}

/// A one-shot HTTP/1.1 GET with extra header lines; (status, body).
async fn get(addr: SocketAddr, path: &str, host: &str, extra: &str) -> (u16, String) {
    let r = crate::common::http_get(addr, path, host, extra).await;
    (r.status, r.body)
}

async fn mint(http: SocketAddr) -> (String, String) {
    mint_from("127.0.0.1".parse().unwrap(), http).await
}

/// Mint with the HTTP request coming from `src` (another loopback /24 is another network).
async fn mint_from(src: std::net::IpAddr, http: SocketAddr) -> (String, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(src, 0)).unwrap();
    let mut s = sock.connect(http).await.unwrap();
    s.write_all(b"GET /api/ice-servers HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = crate::common::read_response(&mut s).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let turn = &v["iceServers"][1];
    (
        turn["username"].as_str().unwrap().into(),
        turn["credential"].as_str().unwrap().into(),
    )
}

/// An Allocate from a fresh client socket; the client is kept (and so the allocation).
async fn allocate(server: SocketAddr, username: &str, password: &str) -> Option<Client> {
    let client = crate::raw::turn_client(server, username, password, "turnd").await;
    match client.allocate().await {
        Ok(relay) => {
            // Keep the relay conn alive with the client: dropping it would not free it, but
            // leaking it keeps the allocation for the test's duration.
            std::mem::forget(relay);
            Some(client)
        }
        Err(_) => {
            client.close().await.unwrap();
            None
        }
    }
}

/// Issue 10 #3: 4 minted credentials gave 20 allocations under a per-user limit of 5,
/// because each credential had a random user part of its own.
#[tokio::test]
async fn minted_credentials_share_one_quota_per_client_prefix() {
    let running = start(|c| c.policy.max_allocations_per_user = 5);
    let http = running.http.unwrap();
    let udp = running.udp[0];
    let mut kept = Vec::new();
    for _ in 0..4 {
        let (user, pass) = mint(http).await;
        for _ in 0..5 {
            if let Some(c) = allocate(udp, &user, &pass).await {
                kept.push(c);
            }
        }
    }
    assert_eq!(kept.len(), 5, "allocations under a per-client limit of 5");
    let (user, _) = mint(http).await;
    assert!(user.ends_with(":web:127.0.0.0/24"), "{user}");
    for c in kept {
        c.close().await.unwrap();
    }
    running.stop();
}

/// Minted credentials are signed with the mint secret, never an `[auth]` secret: holding one
/// says nothing about the operator's REST secret, and a `web:` name signed with the operator's
/// secret is not accepted as minted.
#[tokio::test]
async fn minted_credentials_are_not_signed_with_an_auth_secret() {
    let running = start(|_| {});
    let http = running.http.unwrap();
    let udp = running.udp[0];
    let (user, pass) = mint(http).await;
    let with_auth_secret =
        turnd_proto::auth::rest_password(turnd::config::DEV_SECRET.as_bytes(), &user);
    assert_ne!(pass, with_auth_secret);
    assert!(allocate(udp, &user, &pass).await.is_some());
    assert!(allocate(udp, &user, &with_auth_secret).await.is_none());
    running.stop();
}

/// Issue 10 #3 (DNS rebinding): the Host header is never echoed into URLs unchecked.
#[tokio::test]
async fn ice_servers_refuse_a_host_that_is_not_ours() {
    let running = start(|c| c.signaling.public_host = Some("turn.example.net".into()));
    let http = running.http.unwrap();
    let (status, body) = get(http, "/api/ice-servers", "evil.example", "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad-host"), "{body}");
    let (status, body) = get(http, "/api/ice-servers", "turn.example.net:8080", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("turn:turn.example.net:"), "{body}");
    running.stop();

    // Without public_host only addresses (and localhost) are answered, never a name.
    let running = start(|_| {});
    let http = running.http.unwrap();
    let (status, body) = get(http, "/api/ice-servers", "evil.example", "").await;
    assert_eq!(status, 400, "{body}");
    assert!(!body.contains("evil.example:"), "{body}");
    assert_eq!(
        get(http, "/api/ice-servers", "localhost:1", "").await.0,
        200
    );
    running.stop();
}

async fn ws_status(http: SocketAddr, host: &str, origin: &[u8]) -> Result<(), u16> {
    let mut req = format!("ws://{http}/ws").into_client_request().unwrap();
    req.headers_mut().insert("Host", host.parse().unwrap());
    req.headers_mut().insert("Origin", axum_free_header(origin));
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => Ok(()),
        Err(WsError::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("{e:?}"),
    }
}

fn axum_free_header(v: &[u8]) -> tokio_tungstenite::tungstenite::http::HeaderValue {
    tokio_tungstenite::tungstenite::http::HeaderValue::from_bytes(v).unwrap()
}

/// Issue 10 #13: a non-ASCII Origin was treated as no Origin (let in), and a rebound name
/// passed because Origin was compared with Host even when public_host is set.
#[tokio::test]
async fn ws_refuses_non_ascii_origins_and_rebound_hosts() {
    let running = start(|_| {});
    let http = running.http.unwrap();
    let host = http.to_string();
    assert_eq!(
        ws_status(http, &host, format!("http://{host}").as_bytes()).await,
        Ok(())
    );
    let mut odd = format!("http://{host}").into_bytes();
    odd.push(0xe9);
    assert_eq!(ws_status(http, &host, &odd).await, Err(403));
    running.stop();

    let running = start(|c| c.signaling.public_host = Some("turn.example.net".into()));
    let http = running.http.unwrap();
    let rebound = format!("evil.example:{}", http.port());
    assert!(
        ws_status(http, &rebound, format!("http://{rebound}").as_bytes())
            .await
            .is_err()
    );
    let ours = format!("turn.example.net:{}", http.port());
    assert_eq!(
        ws_status(http, &ours, format!("http://{ours}").as_bytes()).await,
        Ok(())
    );
    running.stop();
}

/// `[signaling] mint`: off answers 403, token needs the bearer token.
#[tokio::test]
async fn the_mint_gate_is_off_or_asks_for_a_token() {
    let running = start(|c| c.signaling.mint = turnd::config::Mint::Off);
    let http = running.http.unwrap();
    let (status, body) = get(http, "/api/ice-servers", "127.0.0.1", "").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("mint-off") && !body.contains("credential\""),
        "{body}"
    );
    running.stop();

    let running = start(|c| {
        c.signaling.mint = turnd::config::Mint::Token;
        c.signaling.mint_token = Some(turnd::config::Redacted("the-mint-token-123".into()));
    });
    let http = running.http.unwrap();
    assert_eq!(get(http, "/api/ice-servers", "127.0.0.1", "").await.0, 401);
    let wrong = "Authorization: Bearer the-mint-token-124\r\n";
    assert_eq!(
        get(http, "/api/ice-servers", "127.0.0.1", wrong).await.0,
        401
    );
    let right = "Authorization: Bearer the-mint-token-123\r\n";
    let (status, body) = get(http, "/api/ice-servers", "127.0.0.1", right).await;
    assert_eq!(status, 200, "{body}");
    running.stop();
}

/// A global cap on minting, whatever the number of client prefixes.
#[tokio::test]
async fn minting_has_a_global_rate_cap() {
    let running = start(|c| {
        c.signaling.mint_per_minute = 3;
        c.signaling.ice_requests_per_minute = 100;
    });
    let http = running.http.unwrap();
    for _ in 0..3 {
        mint(http).await;
    }
    let (status, body) = get(http, "/api/ice-servers", "127.0.0.1", "").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("mint-busy"), "{body}");
    running.stop();
}

/// Minted principals have their own quota per network and in total, whatever
/// `max_allocations_per_user` allows, and never touch the operator's users' room.
#[tokio::test]
async fn minted_allocations_have_their_own_caps() {
    let running = start(|c| {
        c.signaling.mint_allocations_per_client = 2;
        c.signaling.mint_allocations = 3;
    });
    let http = running.http.unwrap();
    let udp = running.udp[0];
    let mut kept = Vec::new();
    let mut count = |c: Option<Client>| match c {
        Some(c) => {
            kept.push(c);
            1
        }
        None => 0,
    };
    let (a_user, a_pass) = mint_from("127.0.0.1".parse().unwrap(), http).await;
    let (b_user, b_pass) = mint_from("127.0.1.1".parse().unwrap(), http).await;
    assert!(b_user.ends_with(":web:127.0.1.0/24"), "{b_user}");
    let mut a = 0;
    for _ in 0..3 {
        a += count(allocate(udp, &a_user, &a_pass).await);
    }
    assert_eq!(a, 2, "per network");
    let mut b = 0;
    for _ in 0..3 {
        b += count(allocate(udp, &b_user, &b_pass).await);
    }
    assert_eq!(b, 1, "in total");
    // The operator's own users are not counted against minted credentials.
    let dev = allocate(udp, turnd::config::DEV_USER, turnd::config::DEV_PASSWORD).await;
    assert!(dev.is_some());
    kept.extend(dev);
    for c in kept {
        c.close().await.unwrap();
    }
    running.stop();
}
