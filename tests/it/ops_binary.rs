//! Tier 4: the built `turnd` binary with a config file: SIGHUP reload, SIGTERM shutdown and
//! drain, systemd readiness notification, and the shipped unit file.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::Daemon;
use crate::raw::*;
use stun::message::*;
use tokio::net::UdpSocket;

fn config_text(users: &str, drain: &str) -> String {
    format!(
        r#"realm = "turnd"
workers = 2
[listen]
udp = ["127.0.0.1:0"]
[relay]
ipv4 = "127.0.0.1"
ipv6 = "none"
ports = "50000-50999"
[auth]
users = [{users}]
[policy]
allow_peers = ["127.0.0.0/8"]
[admin]
listen = "127.0.0.1:0"
token = "ops-test-token-0123456789"
[server]
drain_timeout = "{drain}"
[log]
format = "json"
level = "info"
"#
    )
}

async fn client(d: &Daemon, user: &str, pass: &str) -> UdpTurn {
    let mut c = UdpTurn::new(d.udp).await;
    c.user = user.into();
    c.pass = pass.into();
    c
}

async fn try_allocate(d: &Daemon, user: &str, pass: &str) -> Option<u16> {
    let mut c = client(d, user, pass).await;
    code(&c.ask(METHOD_ALLOCATE, &[&udp_transport()]).await)
}

#[tokio::test]
async fn sighup_changes_a_password_while_an_allocation_keeps_relaying() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("turnd.toml");
    std::fs::write(&file, config_text(r#""alice:old-password""#, "0s")).unwrap();
    let mut d = Daemon::start(&file);

    let mut alice = client(&d, "alice", "old-password").await;
    let relay = alice.allocate().await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    alice.channel_bind(0x4000, peer.local_addr().unwrap()).await;

    std::fs::write(&file, config_text(r#""alice:new-password""#, "0s")).unwrap();
    d.signal("HUP");
    d.wait_for("reloaded", |v| {
        v["message"] == "SIGHUP: configuration reloaded"
    });
    assert_eq!(
        try_allocate(&d, "alice", "old-password").await,
        Some(401),
        "the old password is refused"
    );
    assert_eq!(
        try_allocate(&d, "alice", "new-password").await,
        None,
        "the new password works"
    );
    // The allocation made before the reload still relays both ways.
    let mut buf = [0u8; 64];
    alice
        .sock
        .send_to(&channel_data(0x4000, b"still here"), d.udp)
        .await
        .unwrap();
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"still here"[..], relay));
    peer.send_to(b"back", relay).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), alice.sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], &channel_data(0x4000, b"back")[..]);

    // An invalid file on SIGHUP: logged, and the old configuration stays.
    std::fs::write(&file, "[auth]\nusers = [\"alice:x\"]\nbogus_key = 1\n").unwrap();
    d.signal("HUP");
    let e = d.wait_for("invalid", |v| {
        v["message"] == "SIGHUP: the configuration is invalid; keeping the old one"
    });
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("bogus_key: unknown key"),
        "{e}"
    );
    assert_eq!(try_allocate(&d, "alice", "new-password").await, None);
    assert_eq!(try_allocate(&d, "alice", "x").await, Some(401));
    d.signal("TERM");
    assert_eq!(d.exit_within(Duration::from_secs(5)), Some(0));
}

#[tokio::test]
async fn sigterm_exits_zero_and_frees_every_relay_port() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("turnd.toml");
    std::fs::write(&file, config_text(r#""alice:pw""#, "0s")).unwrap();
    let mut d = Daemon::start(&file);
    let mut relays = vec![];
    let mut clients = vec![];
    for _ in 0..3 {
        let mut c = client(&d, "alice", "pw").await;
        relays.push(c.allocate().await);
        clients.push(c);
    }
    let t0 = Instant::now();
    d.signal("TERM");
    assert_eq!(d.exit_within(Duration::from_secs(5)), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "no drain configured: prompt exit"
    );
    for r in relays {
        assert!(
            std::net::UdpSocket::bind(r).is_ok(),
            "relay port {r} is free"
        );
    }
}

#[tokio::test]
async fn drain_waits_for_live_allocations_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("turnd.toml");
    std::fs::write(&file, config_text(r#""alice:pw""#, "20s")).unwrap();
    let mut d = Daemon::start(&file);
    let mut live = client(&d, "alice", "pw").await;
    live.allocate().await;
    d.signal("TERM");
    d.wait_for("shutting down", |v| v["message"] == "shutting down");
    assert_eq!(
        d.exit_within(Duration::from_millis(800)),
        None,
        "still draining"
    );
    let (status, _) = http("GET", d.admin, "/readyz", None).await;
    assert_eq!(status, 503, "not ready while draining");
    assert_eq!(
        try_allocate(&d, "alice", "pw").await,
        Some(508),
        "no new allocations while draining"
    );
    let r = live.ask(METHOD_REFRESH, &[&lifetime(0)]).await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    let t0 = Instant::now();
    assert_eq!(d.exit_within(Duration::from_secs(5)), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "exits once the last allocation ended"
    );
    d.wait_for("drained", |v| {
        v["message"] == "drained: no allocations left"
    });
}

#[tokio::test]
async fn systemd_ready_only_after_listeners_accept_then_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("turnd.toml");
    std::fs::write(&file, config_text(r#""alice:pw""#, "0s")).unwrap();
    let sock_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut d = Daemon::spawn(
        Daemon::command(&file)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "200000"),
    );
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("a notification");
    let first = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(first.starts_with("READY=1"), "{first}");
    // READY means the listener answers right away.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_millis(500),
        udp_ask(&sock, d.udp, &request(METHOD_BINDING, &[], None)),
    )
    .await;
    assert!(r.is_ok(), "answered right after READY=1");
    let mut watchdog = 0;
    let end = Instant::now() + Duration::from_secs(2);
    while watchdog < 2 && Instant::now() < end {
        let n = notify.recv(&mut buf).unwrap();
        if &buf[..n] == b"WATCHDOG=1" {
            watchdog += 1;
        }
    }
    assert_eq!(watchdog, 2, "watchdog pings at half of WATCHDOG_USEC");
    d.signal("TERM");
    let mut stopping = false;
    while let Ok(n) = notify.recv(&mut buf) {
        if buf[..n].starts_with(b"STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on shutdown");
    assert_eq!(d.exit_within(Duration::from_secs(5)), Some(0));
}

#[test]
fn the_systemd_unit_verifies() {
    assert!(
        Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok(),
        "systemd-analyze is missing: apt-get install systemd"
    );
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/turnd.service"
    ))
    .unwrap();
    for needed in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=",
        "/etc/turnd/turnd.toml",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    // Point the unit at the built binary so `verify` can check the command exists.
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("turnd.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/turnd", env!("CARGO_BIN_EXE_turnd")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("turnd.service"))
        .collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
