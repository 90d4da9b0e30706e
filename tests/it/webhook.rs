//! `[auth] webhook` over real sockets: turnd in-process asking a real HTTP server on loopback
//! (`common::webhook_server`). Allow by password and by key (UDP and TCP, first attempt),
//! deny, a slow webhook (timeout: 401, the shard keeps serving others meanwhile), a failing
//! one (the breaker opens, cached users keep working, it recovers), a random-username flood
//! (calls and concurrency bounded), the contract of the request, and the config rules.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::webhook_server::*;
use crate::raw::*;
use stun::message::*;
use tokio::net::{TcpStream, UdpSocket};

struct Srv(Option<turnd::Running>);
impl Srv {
    fn start(c: turnd::Config) -> Srv {
        Srv(Some(turnd::start(c).expect("turnd starts")))
    }
    fn udp(&self) -> SocketAddr {
        self.r().udp[0]
    }
    fn r(&self) -> &turnd::Running {
        self.0.as_ref().unwrap()
    }
    fn stats(&self) -> turnd_proto::auth::WebhookStats {
        self.r().control.webhook().expect("webhook on").stats()
    }
}
impl Drop for Srv {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.stop();
        }
    }
}

async fn client(srv: &Srv, user: &str, pass: &str) -> UdpTurn {
    let mut c = UdpTurn::new(srv.udp()).await;
    c.user = user.into();
    c.pass = pass.into();
    c
}

/// One Allocate (with the nonce dance); the error code, `None` on success.
async fn allocate_code(c: &mut UdpTurn) -> Option<u16> {
    let r = c.ask(METHOD_ALLOCATE, &[&udp_transport()]).await;
    code(&r)
}

fn md5_hex(user: &str, pass: &str) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(format!("{user}:{REALM}:{pass}")))
}

#[tokio::test]
async fn webhook_allows_by_password_and_by_key_with_the_documented_request() {
    let hook = Hook::start();
    hook.state.set("alice", Reply::Password("alice-pw".into()));
    hook.state.set("bob", Reply::Key(md5_hex("bob", "bob-pw")));
    let srv = Srv::start(config_with_hook(&hook));

    let mut alice = client(&srv, "alice", "alice-pw").await;
    let t = Instant::now();
    alice.allocate().await;
    let first = t.elapsed();
    let mut bob = client(&srv, "bob", "bob-pw").await;
    bob.allocate().await;
    let mut wrong = client(&srv, "bob", "not-bobs").await;
    assert_eq!(allocate_code(&mut wrong).await, Some(401));

    // The request: username, realm, client address and transport, the bearer token.
    let bodies = hook.state.bodies.lock().unwrap().clone();
    let a = bodies.iter().find(|b| b["username"] == "alice").unwrap();
    assert_eq!(a["realm"], REALM);
    assert_eq!(a["client"], alice.sock.local_addr().unwrap().to_string());
    assert_eq!(a["transport"], "udp");
    assert!(hook
        .state
        .authorizations
        .lock()
        .unwrap()
        .iter()
        .all(|h| h.as_deref() == Some(&format!("Bearer {HOOK_TOKEN}"))));
    // Cached: a second client of alice's, a refresh and bob's wrong password ask nobody.
    let mut alice2 = client(&srv, "alice", "alice-pw").await;
    alice2.allocate().await;
    let r = alice.ask(METHOD_REFRESH, &[&lifetime(600)]).await;
    assert_eq!(code(&r), None);
    assert_eq!(hook.state.calls_for("alice"), 1);
    assert_eq!(hook.state.calls_for("bob"), 1);
    // Static users never reach the webhook.
    client(&srv, USER, PASS).await.allocate().await;
    assert_eq!(hook.state.calls_for(USER), 0);
    let s = srv.stats();
    assert_eq!((s.allowed, s.denied, s.failed), (2, 0, 0), "{s:?}");
    // On loopback the first Allocate is answered without waiting for a retransmission.
    assert!(
        first < Duration::from_millis(400),
        "first allocate {first:?}"
    );
    eprintln!("first allocate through the webhook: {first:?}");
}

#[tokio::test]
async fn webhook_user_over_tcp_is_answered_on_its_first_attempt() {
    // TCP clients never retransmit: the parked request itself must be answered.
    let hook = Hook::start();
    hook.state.set(
        "tina",
        Reply::Slow(
            Duration::from_millis(150),
            Box::new(Reply::Password("tpw".into())),
        ),
    );
    let srv = Srv::start(config_with_hook(&hook));
    let mut s = TcpStream::connect(srv.r().tcp[0]).await.unwrap();
    let r = stream_ask(&mut s, &request(METHOD_ALLOCATE, &[&udp_transport()], None)).await;
    assert_eq!(code(&r), Some(401));
    let nonce = nonce_of(&r);
    let req = request(
        METHOD_ALLOCATE,
        &[&udp_transport()],
        Some(("tina", "tpw", &nonce)),
    );
    let t = Instant::now();
    let r = stream_ask(&mut s, &req).await;
    assert_eq!(code(&r), None, "Allocate over TCP through a 150 ms webhook");
    assert!(t.elapsed() >= Duration::from_millis(150));
    let bodies = hook.state.bodies.lock().unwrap().clone();
    assert_eq!(bodies[0]["transport"], "tcp");
}

#[tokio::test]
async fn webhook_denial_is_401_and_cached() {
    let hook = Hook::start();
    hook.state.set("carol", Reply::Deny);
    let srv = Srv::start(config_with_hook(&hook));
    let mut carol = client(&srv, "carol", "whatever").await;
    assert_eq!(allocate_code(&mut carol).await, Some(401));
    let mut again = client(&srv, "carol", "whatever").await;
    assert_eq!(allocate_code(&mut again).await, Some(401));
    assert_eq!(hook.state.calls_for("carol"), 1, "the denial is cached");
    assert_eq!(srv.stats().denied, 1);
}

#[tokio::test]
async fn slow_webhook_times_out_to_401_and_never_blocks_the_shard() {
    let hook = Hook::start();
    hook.state.set(
        "dave",
        Reply::Slow(
            Duration::from_secs(3),
            Box::new(Reply::Password("d".into())),
        ),
    );
    let mut c = config_with_hook(&hook);
    c.workers = 1; // everyone on the one shard
    c.webhook.timeout = Duration::from_millis(500);
    let srv = Srv::start(c);

    // A static user's relay, with a peer, before and during dave's lookup.
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut dev = client(&srv, USER, PASS).await;
    dev.allocate().await;
    dev.channel_bind(0x4000, peer_addr).await;

    let mut dave = client(&srv, "dave", "d").await;
    let t = Instant::now();
    let dave_fut = async {
        let code = allocate_code(&mut dave).await;
        (code, t.elapsed())
    };
    let others = async {
        wait_until("dave's lookup in flight", || {
            hook.state.inflight.load(Ordering::SeqCst) == 1
        })
        .await;
        // While it hangs: 50 relayed round trips and a new allocation, each fast.
        let mut worst = Duration::ZERO;
        let mut buf = [0u8; 1500];
        for i in 0..50u32 {
            let t = Instant::now();
            let payload = i.to_be_bytes();
            dev.sock
                .send_to(&channel_data(0x4000, &payload), srv.udp())
                .await
                .unwrap();
            let (n, _) = tokio::time::timeout(Duration::from_secs(1), peer.recv_from(&mut buf))
                .await
                .expect("relayed to the peer while the webhook hangs")
                .unwrap();
            assert_eq!(&buf[..n], &payload);
            worst = worst.max(t.elapsed());
        }
        let t = Instant::now();
        client(&srv, USER, PASS).await.allocate().await;
        let alloc = t.elapsed();
        assert_eq!(
            hook.state.inflight.load(Ordering::SeqCst),
            1,
            "all of that happened during the lookup"
        );
        (worst, alloc)
    };
    let ((dave_code, dave_took), (worst, alloc)) = tokio::join!(dave_fut, others);
    assert_eq!(dave_code, Some(401), "a timed-out lookup refuses");
    assert!(
        dave_took >= Duration::from_millis(500) && dave_took < Duration::from_millis(2500),
        "dave answered after {dave_took:?}"
    );
    assert!(worst < Duration::from_millis(200), "relay worst {worst:?}");
    assert!(alloc < Duration::from_millis(400), "allocate {alloc:?}");
    assert_eq!(srv.stats().failed, 1);
    eprintln!("during a hung lookup: relay worst {worst:?}, allocate {alloc:?}; dave 401 after {dave_took:?}");
}

#[tokio::test]
async fn failing_webhook_opens_the_breaker_keeps_cached_users_and_recovers() {
    let hook = Hook::start();
    hook.state.set("alice", Reply::Password("apw".into()));
    let mut c = config_with_hook(&hook);
    c.webhook.breaker_failures = 3;
    c.webhook.breaker_cooldown = Duration::from_secs(1);
    let srv = Srv::start(c);
    client(&srv, "alice", "apw").await.allocate().await;

    hook.state.set_default(Some(Reply::Status(500)));
    for i in 0..3 {
        let mut u = client(&srv, &format!("user{i}"), "pw").await;
        assert_eq!(allocate_code(&mut u).await, Some(401), "user{i}");
    }
    let s = srv.stats();
    assert!(s.breaker_open, "{s:?}");
    assert_eq!(s.failed, 3);
    let metrics = http("GET", srv.r().admin.unwrap(), "/metrics", None)
        .await
        .1;
    let m = prometheus(&metrics);
    assert_eq!(m.get("turnd_webhook_breaker_open"), Some(&1.0), "{metrics}");
    assert_eq!(
        m.get("turnd_webhook_requests_total{result=\"failed\"}"),
        Some(&3.0)
    );
    // Open: an unknown user is refused unasked; the cached one keeps allocating.
    hook.state.set("erin", Reply::Password("epw".into()));
    let calls = hook.state.calls();
    let mut erin = client(&srv, "erin", "epw").await;
    assert_eq!(allocate_code(&mut erin).await, Some(401));
    assert_eq!(hook.state.calls(), calls, "nobody asked while open");
    client(&srv, "alice", "apw").await.allocate().await;
    // After the cool-down the next lookup goes through and closes it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut erin = client(&srv, "erin", "epw").await;
    erin.allocate().await;
    assert!(!srv.stats().breaker_open);
}

#[tokio::test]
async fn random_username_flood_is_bounded() {
    let hook = Hook::start();
    hook.state.set_default(Some(Reply::Slow(
        Duration::from_millis(100),
        Box::new(Reply::Deny),
    )));
    let mut c = config_with_hook(&hook);
    c.webhook.max_inflight = 8;
    c.webhook.cache_entries = 100;
    let srv = Srv::start(c);
    let server = srv.udp();
    // 20 sources (127.0.0.x), each with its nonce, 100 random usernames each, as fast as
    // they go: 2000 requests in well under a second.
    let mut socks = Vec::new();
    for n in 0..20u8 {
        let s = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 10 + n], 0)))
            .await
            .unwrap();
        let r = udp_ask(
            &s,
            server,
            &request(METHOD_ALLOCATE, &[&udp_transport()], None),
        )
        .await;
        socks.push((s, nonce_of(&r)));
    }
    let t = Instant::now();
    for i in 0..100 {
        for (n, (s, nonce)) in socks.iter().enumerate() {
            let name = format!("rnd-{n}-{i}-{}", rand::random::<u32>());
            let m = request(
                METHOD_ALLOCATE,
                &[&udp_transport()],
                Some((&name, "x", nonce)),
            );
            s.send_to(&m.raw, server).await.unwrap();
        }
    }
    let sent_in = t.elapsed();
    // A legitimate user gets through meanwhile.
    client(&srv, USER, PASS).await.allocate().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let calls = hook.state.calls();
    let max = hook.state.max_inflight.load(Ordering::SeqCst);
    let s = srv.stats();
    eprintln!(
        "flood: 2000 random names in {sent_in:?} -> {calls} webhook calls, at most {max} at \
         once, {} shed, {} cache entries",
        s.shed, s.entries
    );
    assert!(max <= 8, "global in-flight cap: {max}");
    // 8 in flight overall at 100 ms each: at most 8 per 100 ms since the flood began.
    let windows = t.elapsed().as_millis().div_ceil(100) as usize;
    assert!(
        calls <= 8 * windows + 8,
        "{calls} calls in {:?}",
        t.elapsed()
    );
    assert!(calls <= 20 * 40, "per-source budget: {calls} calls");
    assert!(s.entries <= 100, "{s:?}");
    assert!(s.shed > 1000, "{s:?}");
    assert_eq!(s.inflight, 0);
}

#[test]
fn config_keys_and_rules() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("turnd.toml");
    std::fs::write(dir.path().join("token"), "tok\n").unwrap();
    let load = |auth: &str| {
        let text = format!("[auth]\nsecrets = [\"s\"]\n{auth}\n");
        turnd::config::load_str(&text, &file)
    };
    let c = load(
        "webhook = \"https://auth.example.org/turn\"\nwebhook_token_file = \"token\"\n\
         webhook_timeout = \"250ms\"\nwebhook_cache = \"1m\"\nwebhook_negative_cache = \"5s\"\n\
         webhook_cache_entries = 7\nwebhook_max_inflight = 3\nwebhook_breaker_failures = 2\n\
         webhook_breaker_cooldown = \"3s\"",
    )
    .unwrap();
    let w = &c.webhook;
    assert_eq!(w.token.as_ref().unwrap().0, "tok");
    assert_eq!(
        (w.timeout, w.cache, w.negative_cache, w.breaker_cooldown),
        (
            Duration::from_millis(250),
            Duration::from_secs(60),
            Duration::from_secs(5),
            Duration::from_secs(3)
        )
    );
    assert_eq!(
        (w.cache_entries, w.max_inflight, w.breaker_failures),
        (7, 3, 2)
    );
    let err = load("webhook = \"http://auth.example.org/turn?k=s3cr3t\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("auth.webhook") && !err.contains("s3cr3t"),
        "{err}"
    );
    load("webhook = \"http://auth.example.org/turn\"\nwebhook_allow_http = true").unwrap();
    load("webhook = \"http://127.0.0.1:9/turn\"").unwrap();
    let err = load("webhook = \"https://a.example/\"\nwebhook_timeout = \"0s\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("webhook_timeout"), "{err}");
    assert!(load("webhook_bogus = 1").is_err(), "unknown keys refused");
    for bad in [
        "webhook_breaker_cooldown = \"0s\"",
        "webhook_max_inflight = 0",
        "webhook_cache_entries = 0",
        "webhook_breaker_failures = 0",
        "webhook_timeout = \"6s\"",
        "webhook = \"ftp://127.0.0.1/\"",
    ] {
        let err = load(bad).unwrap_err().to_string();
        assert!(err.contains("auth.webhook"), "{bad}: {err}");
    }
    // A webhook alone is enough to authenticate.
    let text = "[auth]\nwebhook = \"https://auth.example.org/turn\"\n";
    turnd::config::load_str(text, &file).unwrap();
    let c = turnd::config::load_str("[auth]\nsecrets = [\"s\"]\n", &file).unwrap();
    assert!(c.webhook.url.is_none(), "off by default");
}

fn tls_hook(dir: &std::path::Path) -> Hook {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(dir.join("hook-ca.pem"), ck.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    Hook::start_tls(vec![ck.cert.der().clone()], key)
}

#[tokio::test]
async fn https_webhook_with_its_ca_file_and_refused_when_untrusted() {
    let dir = tempfile::tempdir().unwrap();
    let hook = tls_hook(dir.path());
    hook.state.set("tls-user", Reply::Password("tpw".into()));
    let mut c = config_with_hook(&hook);
    c.webhook.url = Some(turnd_proto::settings::Redacted(hook.https_url()));
    c.webhook.ca_file = Some(dir.path().join("hook-ca.pem"));
    let srv = Srv::start(c.clone());
    client(&srv, "tls-user", "tpw").await.allocate().await;
    assert_eq!(hook.state.calls_for("tls-user"), 1);
    drop(srv);
    // Another CA (a fresh self-signed one): the handshake fails, so the user is refused.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(dir.path().join("other-ca.pem"), other.cert.pem()).unwrap();
    c.webhook.ca_file = Some(dir.path().join("other-ca.pem"));
    let srv = Srv::start(c);
    let mut u = client(&srv, "tls-user", "tpw").await;
    assert_eq!(allocate_code(&mut u).await, Some(401));
    assert_eq!(
        hook.state.calls_for("tls-user"),
        1,
        "no request got through"
    );
    assert_eq!(srv.stats().failed, 1);
}

#[tokio::test]
async fn reload_keeps_the_webhook_and_reports_its_changes() {
    let hook = Hook::start();
    hook.state.set("rita", Reply::Password("rpw".into()));
    hook.state.set("ron", Reply::Password("ronpw".into()));
    let c = config_with_hook(&hook);
    let srv = Srv::start(c.clone());
    client(&srv, "rita", "rpw").await.allocate().await;
    let report = srv.r().control.reload(c.clone()).unwrap();
    assert!(
        !report.needs_restart.contains(&"auth.webhook"),
        "{report:?}"
    );
    // After the reload: a cached user and a new one both through the webhook.
    client(&srv, "rita", "rpw").await.allocate().await;
    client(&srv, "ron", "ronpw").await.allocate().await;
    assert_eq!(
        hook.state.calls_for("rita"),
        1,
        "the cache survives the reload"
    );
    let mut changed = c;
    changed.webhook.timeout = Duration::from_millis(300);
    let report = srv.r().control.reload(changed).unwrap();
    assert!(report.needs_restart.contains(&"auth.webhook"), "{report:?}");
}

#[test]
fn chromium_gathers_relay_candidates_through_the_webhook() {
    use crate::common::browser::{browser_dir, check_tools};
    check_tools("playwright-core", &["/usr/bin/chromium"]);
    let hook = Hook::start();
    hook.state
        .set("browser", Reply::Password("browser-pw".into()));
    let mut c = config_with_hook(&hook);
    c.auth.secrets.clear();
    let srv = Srv::start(c);
    let page = format!("http://{}/", srv.r().http.unwrap());
    let v4 = |a: &[SocketAddr]| *a.iter().find(|a| a.is_ipv4()).unwrap();
    let urls = [
        format!("turn:{}?transport=udp", v4(&srv.r().udp)),
        format!("turn:{}?transport=tcp", v4(&srv.r().tcp)),
    ];
    let out = std::process::Command::new("node")
        .arg(browser_dir().join("webhook.js"))
        .arg(&page)
        .arg("/usr/bin/chromium")
        .args(&urls)
        .env("WEBHOOK_USER", "browser")
        .env("WEBHOOK_PASS", "browser-pw")
        .current_dir(browser_dir())
        .output()
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success() && v.get("error").is_none(), "{v}");
    for url in &urls {
        let r = &v["results"][url];
        let relays = r["relays"].as_array().unwrap();
        assert!(!relays.is_empty(), "no relay candidate from {url}: {r}");
        assert!(r["errors"].as_array().unwrap().is_empty(), "{url}: {r}");
        eprintln!(
            "chromium via the webhook, {url}: {} ms, {}",
            r["ms"], relays[0]
        );
    }
    assert_eq!(
        hook.state.calls_for("browser"),
        1,
        "asked once, then cached"
    );
    let s = srv.stats();
    assert_eq!((s.allowed, s.failed, s.shed), (1, 0, 0), "{s:?}");
}
