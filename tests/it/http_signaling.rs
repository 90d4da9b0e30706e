//! Tier 2 for the HTTP listener: turnd started in-process at port 0; `/api/ice-servers`
//! checked with raw HTTP/1.1 and its credentials used for a real Allocate with
//! `turn::client`; the `/ws` signaling protocol driven with tokio-tungstenite.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{http_get, tls_connector, HttpResponse};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn start(edit: impl FnOnce(&mut turnd::Config)) -> turnd::Running {
    let mut cfg = turnd::Config::for_tests();
    edit(&mut cfg);
    turnd::start(cfg).expect("turnd starts")
}

/// A one-shot HTTP/1.1 GET with `Connection: close`.
async fn get(addr: SocketAddr, path: &str, host: &str) -> HttpResponse {
    http_get(addr, path, host, "").await
}

async fn allocate(server: SocketAddr, username: &str, password: &str) -> Result<(), String> {
    let client = crate::raw::turn_client(server, username, password, "turnd").await;
    let r = client
        .allocate()
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    client.close().await.unwrap();
    r
}

#[tokio::test]
async fn ice_servers_lists_every_transport_with_working_credentials() {
    let running = start(|_| {});
    let http = running.http.unwrap();
    let r = get(
        http,
        "/api/ice-servers",
        &format!("127.0.0.1:{}", http.port()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json();
    assert_eq!(body["ttl"], 3600);
    let (udp, tcp, tls) = (running.udp[0], running.tcp[0], running.tls[0]);
    assert!(udp.is_ipv4() && tcp.is_ipv4() && tls.is_ipv4());
    let servers = body["iceServers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    assert_eq!(
        servers[0],
        json!({ "urls": [format!("stun:127.0.0.1:{}", udp.port())] })
    );
    let turn = &servers[1];
    assert_eq!(
        turn["urls"],
        json!([
            format!("turn:127.0.0.1:{}?transport=udp", udp.port()),
            format!("turn:127.0.0.1:{}?transport=tcp", tcp.port()),
            format!("turns:127.0.0.1:{}?transport=tcp", tls.port()),
        ])
    );
    let username = turn["username"].as_str().unwrap();
    let credential = turn["credential"].as_str().unwrap();
    let (expiry, _user) = username.split_once(':').unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (now + 3590..=now + 3610).contains(&expiry),
        "{expiry} vs {now}"
    );

    allocate(udp, username, credential)
        .await
        .expect("the minted credential allocates");
    let wrong = allocate(udp, username, "not-the-credential").await;
    assert!(wrong.is_err(), "a wrong credential must not allocate");

    // Every credential for one client network names the same principal (one quota).
    let again = get(http, "/api/ice-servers", "127.0.0.1").await.json();
    let again = again["iceServers"][1]["username"].as_str().unwrap();
    assert_eq!(again.split_once(':').unwrap().1, "web:127.0.0.0/24");
    running.stop();
}

#[tokio::test]
async fn ice_servers_use_the_host_header_or_public_host() {
    let running = start(|_| {});
    let http = running.http.unwrap();
    let body = get(http, "/api/ice-servers", "[::1]:8080").await.json();
    let v6_udp = running.udp[1];
    assert!(v6_udp.is_ipv6());
    assert_eq!(
        body["iceServers"][0]["urls"][0],
        format!("stun:[::1]:{}", v6_udp.port())
    );
    let bad = get(http, "/api/ice-servers", "bad host").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "bad-host");
    running.stop();

    let running = start(|c| c.signaling.public_host = Some("turn.example.net".into()));
    let body = get(
        running.http.unwrap(),
        "/api/ice-servers",
        "turn.example.net",
    )
    .await
    .json();
    let url = body["iceServers"][1]["urls"][0].as_str().unwrap();
    assert!(url.starts_with("turn:turn.example.net:"), "{url}");
    running.stop();
}

#[tokio::test]
async fn ice_servers_are_rate_limited_per_ip() {
    let running = start(|c| c.signaling.ice_requests_per_minute = 3);
    let http = running.http.unwrap();
    for _ in 0..3 {
        assert_eq!(get(http, "/api/ice-servers", "127.0.0.1").await.status, 200);
    }
    let r = get(http, "/api/ice-servers", "127.0.0.1").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate-limited");
    // Pages are not limited.
    assert_eq!(get(http, "/api/info", "127.0.0.1").await.status, 200);
    running.stop();
}

/// Minted credentials are signed with the mint secret: no `[auth]` secret is needed.
#[tokio::test]
async fn minted_credentials_work_without_an_auth_secret() {
    let running = start(|c| c.auth.secrets.clear());
    let r = get(running.http.unwrap(), "/api/ice-servers", "127.0.0.1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let turn = &r.json()["iceServers"][1];
    allocate(
        running.udp[0],
        turn["username"].as_str().unwrap(),
        turn["credential"].as_str().unwrap(),
    )
    .await
    .expect("a minted credential allocates without [auth] secrets");
    running.stop();
}

#[tokio::test]
async fn pages_are_served_with_a_strict_policy() {
    let running = start(|_| {});
    let http = running.http.unwrap();
    for (path, kind, needle) in [
        ("/", "text/html", "/call"),
        ("/call", "text/html", "call.js"),
        ("/tester", "text/html", "tester.js"),
        ("/call.js", "text/javascript", "RTCPeerConnection"),
        ("/tester.js", "text/javascript", "icecandidateerror"),
        ("/common.js", "text/javascript", "transportOf"),
        ("/turnd.css", "text/css", "@media"),
    ] {
        let r = get(http, path, "127.0.0.1").await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        assert!(r.body.contains(needle), "{path} lacks {needle}");
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert!(
            !r.body.contains("http://") && !r.body.contains("https://"),
            "{path}"
        );
    }
    let info = get(http, "/api/info", "127.0.0.1").await.json();
    assert_eq!(info["realm"], "turnd");
    assert_eq!(info["credentials"], true);
    assert_eq!(info["turn"].as_array().unwrap().len(), 3);
    assert_eq!(get(http, "/nope", "127.0.0.1").await.status, 404);
    running.stop();
}

async fn connect_with_origin(http: SocketAddr, origin: Option<&str>) -> Result<Ws, WsError> {
    let mut req = format!("ws://{http}/ws").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

async fn connect(http: SocketAddr) -> Ws {
    connect_with_origin(http, Some(&format!("http://{http}")))
        .await
        .expect("WebSocket connects")
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next text message as JSON (pings are skipped).
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("no error");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Nothing arrives within a short while.
async fn silent(ws: &mut Ws) {
    let r = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(r.is_err(), "unexpected {r:?}");
}

/// The close frame the server sends (None: closed without one).
async fn closed(ws: &mut Ws) -> Option<(CloseCode, String)> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(f))) => return f.map(|f| (f.code, f.reason.to_string())),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

async fn join(ws: &mut Ws, room: &str) -> Value {
    send(ws, json!({ "type": "join", "room": room })).await;
    recv(ws).await
}

#[tokio::test]
async fn two_peers_meet_and_exchange_offer_answer_and_candidates() {
    let running = start(|_| {});
    let http = running.http.unwrap();
    let mut a = connect(http).await;
    let mut b = connect(http).await;
    assert_eq!(
        join(&mut a, "room-1").await,
        json!({ "type": "joined", "room": "room-1", "peers": 0, "initiator": false })
    );
    assert_eq!(
        join(&mut b, "room-1").await,
        json!({ "type": "joined", "room": "room-1", "peers": 1, "initiator": true })
    );
    assert_eq!(recv(&mut a).await, json!({ "type": "peer-joined" }));

    let offer = r#"{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n","x":[1]}"#;
    b.send(Message::text(offer)).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), a.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), offer, "relayed verbatim"),
        other => panic!("{other:?}"),
    }
    send(&mut a, json!({ "type": "answer", "sdp": "v=0" })).await;
    assert_eq!(recv(&mut b).await["type"], "answer");
    let cand = json!({ "type": "candidate", "candidate": { "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ relay", "sdpMid": "0" } });
    send(&mut b, cand.clone()).await;
    assert_eq!(recv(&mut a).await, cand);
    silent(&mut b).await;
    running.stop();
}

#[tokio::test]
async fn a_third_participant_gets_room_full() {
    let running = start(|_| {});
    let http = running.http.unwrap();
    let (mut a, mut b, mut c) = (
        connect(http).await,
        connect(http).await,
        connect(http).await,
    );
    join(&mut a, "full").await;
    join(&mut b, "full").await;
    let r = join(&mut c, "full").await;
    assert_eq!(r["type"], "error");
    assert_eq!(r["code"], "room-full");
    // The refused socket stays usable: another room works.
    assert_eq!(join(&mut c, "other").await["type"], "joined");
    // The two in the room saw nothing of it (a got peer-joined for b only).
    assert_eq!(recv(&mut a).await["type"], "peer-joined");
    silent(&mut a).await;
    silent(&mut b).await;
    running.stop();
}

#[tokio::test]
async fn malformed_messages_get_bad_message_and_keep_the_socket() {
    let running = start(|_| {});
    let mut a = connect(running.http.unwrap()).await;
    for bad in [
        "{not json",
        "[1,2,3]",
        r#"{"room":"x"}"#,
        r#"{"type":"dance"}"#,
    ] {
        a.send(Message::text(bad)).await.unwrap();
        let r = recv(&mut a).await;
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str()),
            (Some("error"), Some("bad-message")),
            "{bad}"
        );
    }
    a.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(recv(&mut a).await["code"], "bad-message");
    let r = join(&mut a, "no spaces allowed").await;
    assert_eq!(r["code"], "bad-room");
    send(&mut a, json!({ "type": "offer", "sdp": "" })).await;
    assert_eq!(recv(&mut a).await["code"], "not-in-room");
    assert_eq!(join(&mut a, "fine").await["type"], "joined");
    running.stop();
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let running = start(|c| c.signaling.max_message_bytes = 4096);
    let http = running.http.unwrap();
    let mut a = connect(http).await;
    let mut b = connect(http).await;
    join(&mut a, "big").await;
    join(&mut b, "big").await;
    recv(&mut a).await; // peer-joined
    let huge = json!({ "type": "offer", "sdp": "x".repeat(10_000) });
    let _ = b.send(Message::text(huge.to_string())).await;
    let mut saw_error = false;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), b.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["code"], "too-large");
                saw_error = true;
            }
            Some(Ok(Message::Close(f))) => break f,
            other => panic!("{other:?}"),
        }
    };
    assert!(saw_error);
    assert_eq!(close.unwrap().code, CloseCode::Size);
    // The other participant is told and was sent nothing of it.
    assert_eq!(recv(&mut a).await, json!({ "type": "peer-left" }));
    running.stop();
}

#[tokio::test]
async fn leaving_or_disconnecting_tells_the_peer_and_frees_the_room() {
    let running = start(|_| {});
    let http = running.http.unwrap();
    let mut a = connect(http).await;
    let mut b = connect(http).await;
    join(&mut a, "r").await;
    join(&mut b, "r").await;
    recv(&mut a).await;
    send(&mut b, json!({ "type": "leave" })).await;
    assert_eq!(recv(&mut a).await, json!({ "type": "peer-left" }));
    // b may join again (as the newcomer it initiates), then disconnect.
    assert_eq!(join(&mut b, "r").await["initiator"], true);
    assert_eq!(recv(&mut a).await["type"], "peer-joined");
    drop(b);
    assert_eq!(recv(&mut a).await, json!({ "type": "peer-left" }));
    // a leaves too; the room is gone, so a newcomer is alone in it.
    a.close(None).await.unwrap();
    let mut c = connect(http).await;
    let mut joined = join(&mut c, "r").await;
    for _ in 0..20 {
        if joined["peers"] == 0 {
            break;
        }
        // a's close may still be in flight: retry until the room was cleaned up.
        send(&mut c, json!({ "type": "leave" })).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        joined = join(&mut c, "r").await;
        if joined["type"] == "peer-joined" {
            joined = recv(&mut c).await;
        }
    }
    assert_eq!(joined["peers"], 0, "{joined}");
    running.stop();
}

#[tokio::test]
async fn origins_other_than_our_own_are_refused() {
    let running = start(|_| {});
    let http = running.http.unwrap();
    let err = connect_with_origin(http, Some("http://evil.example"))
        .await
        .expect_err("foreign origin refused");
    match err {
        WsError::Http(res) => assert_eq!(res.status(), 403),
        other => panic!("{other:?}"),
    }
    // Same origin and no Origin at all (not a browser) are accepted.
    assert!(connect_with_origin(http, Some(&format!("http://{http}")))
        .await
        .is_ok());
    assert!(connect_with_origin(http, None).await.is_ok());
    running.stop();

    let running = start(|c| c.signaling.allowed_origins = vec!["https://app.example".into()]);
    let http = running.http.unwrap();
    assert!(connect_with_origin(http, Some("https://app.example"))
        .await
        .is_ok());
    assert!(connect_with_origin(http, Some(&format!("http://{http}")))
        .await
        .is_err());
    running.stop();
}

#[tokio::test]
async fn connections_per_ip_are_capped() {
    let running = start(|c| c.signaling.max_connections_per_ip = 2);
    let http = running.http.unwrap();
    let a = connect(http).await;
    let _b = connect(http).await;
    match connect_with_origin(http, None).await {
        Err(WsError::Http(res)) => assert_eq!(res.status(), 429),
        other => panic!("{other:?}"),
    }
    drop(a);
    // The slot is released once the server sees the close.
    let mut ok = false;
    for _ in 0..50 {
        if connect_with_origin(http, None).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "slot released after a socket closed");
    running.stop();
}

#[tokio::test]
async fn stopping_the_server_closes_sockets_with_1001() {
    let running = start(|_| {});
    let mut a = connect(running.http.unwrap()).await;
    join(&mut a, "bye").await;
    let stopper = std::thread::spawn(move || running.stop());
    assert_eq!(closed(&mut a).await.map(|c| c.0), Some(CloseCode::Away));
    stopper.join().unwrap();
}

/// A TLS client trusting the server's (self-signed development) certificate.
fn tls_client(running: &turnd::Running) -> tokio_rustls::TlsConnector {
    let cert = running.certificate.as_ref().unwrap();
    tls_connector(&cert.chain()[..1], b"http/1.1")
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(connector: &tokio_rustls::TlsConnector, http: SocketAddr) -> TlsStream {
    let name = rustls::pki_types::ServerName::from(http.ip());
    let tcp = TcpStream::connect(http).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// GET over HTTPS; the raw response text.
async fn tls_get(connector: &tokio_rustls::TlsConnector, http: SocketAddr, path: &str) -> String {
    let mut tls = tls_connect(connector, http).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await; // a peer may skip close_notify
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test]
async fn https_uses_the_turn_certificate_and_carries_the_websocket() {
    let running = start(|c| c.signaling.tls = true);
    let http = running.http.unwrap();
    let connector = tls_client(&running);
    let text = tls_get(&connector, http, "/api/ice-servers").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("turns:127.0.0.1:"), "{text}");

    let tls = tls_connect(&connector, http).await;
    let mut req = format!("wss://{http}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", format!("https://{http}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    ws.send(Message::text(r#"{"type":"join","room":"secure"}"#))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert!(t.as_str().contains("joined"), "{t}"),
        other => panic!("{other:?}"),
    }
    running.stop();
}

#[tokio::test]
async fn stalled_or_plain_clients_do_not_block_https() {
    let running = start(|c| c.signaling.tls = true);
    let http = running.http.unwrap();
    // A client that never starts its handshake does not hold up the others.
    let _stalled = TcpStream::connect(http).await.unwrap();
    // Plain HTTP to the HTTPS listener is dropped.
    let mut plain = TcpStream::connect(http).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "the server drops a plain-HTTP connection");
    let text = tls_get(&tls_client(&running), http, "/").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    running.stop();
}

/// Issue 10 #15: a second participant's fast join/leave loop overflowed the waiter's outbox
/// and disconnected it with 1008. Presence events now coalesce and joins are rate-limited
/// per socket.
#[tokio::test]
async fn a_join_leave_loop_does_not_disconnect_a_lone_waiter() {
    let running = start(|_| {});
    let http = running.http.unwrap();
    let mut waiter = connect(http).await;
    join(&mut waiter, "lobby").await;
    let mut looper = connect(http).await;
    // 300 join/leave pairs in one burst, without waiting for answers.
    let join_msg = json!({ "type": "join", "room": "lobby" }).to_string();
    let leave_msg = json!({ "type": "leave" }).to_string();
    for _ in 0..300 {
        looper.feed(Message::text(join_msg.clone())).await.unwrap();
        looper.feed(Message::text(leave_msg.clone())).await.unwrap();
    }
    // A marker: its answer says every message before it has been handled.
    looper
        .feed(Message::text(json!({ "type": "dance" }).to_string()))
        .await
        .unwrap();
    looper.flush().await.unwrap();
    let mut answers = 0;
    loop {
        let m = recv(&mut looper).await;
        answers += 1;
        if m["code"] == "bad-message" {
            break;
        }
        assert!(answers <= 601, "looper: {m}");
    }
    // The waiter is still connected, saw a consistent end state (nobody there), and works.
    let mut last_presence = None;
    send(&mut waiter, json!({ "type": "dance" })).await;
    loop {
        let m = recv(&mut waiter).await;
        match m["type"].as_str() {
            Some("peer-joined") | Some("peer-left") => last_presence = Some(m["type"].clone()),
            Some("error") => {
                assert_eq!(m["code"], "bad-message");
                break;
            }
            other => panic!("waiter got {other:?}"),
        }
    }
    assert_ne!(last_presence, Some(json!("peer-joined")), "ends alone");
    // A real newcomer is announced.
    let mut newcomer = connect(http).await;
    assert_eq!(join(&mut newcomer, "lobby").await["initiator"], true);
    assert_eq!(recv(&mut waiter).await["type"], "peer-joined");
    running.stop();
}
