//! The built `turnctl` binary against turnd (in-process, port 0) and against coturn's
//! `turnserver` (Debian package `coturn`; these tests panic with an install hint when it is
//! missing): probe over udp/tcp/tls, the failures an operator must be able to tell apart,
//! REST credentials accepted by both servers, and a load run without loss.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::common::turnctl_bin;

fn turnctl(args: &[&str]) -> Output {
    Command::new(turnctl_bin())
        .args(args)
        .env_remove("TURNCTL_SECRET")
        .env_remove("TURNCTL_PASSWORD")
        .env_remove("TURNCTL_USER")
        .output()
        .expect("run turnctl")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn assert_passes(o: &Output) {
    assert!(o.status.success(), "turnctl failed:\n{}", text(o));
}

#[track_caller]
fn assert_fails_with(o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "turnctl should have failed:\n{}",
        text(o)
    );
    assert!(
        text(o).contains(needle),
        "expected {needle:?} in:\n{}",
        text(o)
    );
}

fn url(scheme: &str, addr: SocketAddr, query: &str) -> String {
    format!("{scheme}:{addr}{query}")
}

/// The server certificate as a PEM file turnctl can trust with --ca.
fn write_ca(dir: &Path, running: &turnd::Running) -> String {
    let cert = running
        .certificate
        .as_ref()
        .expect("TLS listeners have a certificate");
    let mut pem = String::new();
    for der in cert.chain() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    let path = dir.join("ca.pem");
    std::fs::write(&path, pem).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn probe_passes_against_turnd_over_udp_tcp_and_tls() {
    let running = turnd::start(turnd::Config::for_tests()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), &running);
    let auth = ["--user", "dev", "--password", "devpass"];
    for server in [
        url("turn", running.udp[0], "?transport=udp"),
        url("turn", running.udp[1], "?transport=udp"),
        url("turn", running.tcp[0], "?transport=tcp"),
    ] {
        let o = turnctl(&[&["probe", "--server", &server][..], &auth].concat());
        assert_passes(&o);
        assert!(
            text(&o).contains("PASS: all 7 checks passed"),
            "{}",
            text(&o)
        );
    }
    let tls = url("turns", running.tls[0], "");
    let o = turnctl(
        &[
            &["probe", "--server", &tls, "--ca", &ca, "--json"][..],
            &auth,
        ]
        .concat(),
    );
    assert_passes(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["realm"], "turnd");
    assert_eq!(v["steps"].as_array().unwrap().len(), 7);
    // Without the CA the self-signed certificate is refused, with a hint.
    let o = turnctl(
        &[
            &[
                "probe",
                "--server",
                &tls,
                "--ca",
                "/etc/ssl/certs/ca-certificates.crt",
            ][..],
            &auth,
        ]
        .concat(),
    );
    if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
        assert_fails_with(&o, "TLS handshake");
    }
    assert_eq!(
        running.stats().allocations,
        0,
        "Refresh(0) freed every allocation"
    );
    running.stop();
}

/// `--tcp-relay` (issue 16 item 4): RFC 6062 over TCP and TLS; refused (442) while
/// `[relay] tcp` is off; a UDP URL is a usage error.
#[test]
fn probe_tcp_relay_against_turnd_over_tcp_and_tls() {
    let mut config = turnd::Config::for_tests();
    config.relay.tcp = true;
    let running = turnd::start(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), &running);
    let auth = ["--user", "dev", "--password", "devpass", "--tcp-relay"];
    for server in [
        url("turn", running.tcp[0], "?transport=tcp"),
        url("turn", running.tcp[1], "?transport=tcp"),
    ] {
        let o = turnctl(&[&["probe", "--server", &server][..], &auth].concat());
        assert_passes(&o);
        for step in ["Allocate (TCP)", "Connect", "ConnectionBind", "TCP data"] {
            assert!(text(&o).contains(&format!("ok   {step}")), "{}", text(&o));
        }
        assert!(
            text(&o).contains("PASS: all 6 checks passed"),
            "{}",
            text(&o)
        );
    }
    let tls = url("turns", running.tls[0], "");
    let o = turnctl(
        &[
            &["probe", "--server", &tls, "--ca", &ca, "--json"][..],
            &auth,
        ]
        .concat(),
    );
    assert_passes(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["steps"].as_array().unwrap().len(), 6);
    let udp = url("turn", running.udp[0], "?transport=udp");
    let o = turnctl(&[&["probe", "--server", &udp][..], &auth].concat());
    assert_fails_with(&o, "--tcp-relay needs a TCP or TLS server URL");
    assert_eq!(
        running.stats().allocations,
        0,
        "Refresh(0) freed every allocation"
    );
    running.stop();

    let running = turnd::start(turnd::Config::for_tests()).unwrap();
    let server = url("turn", running.tcp[0], "?transport=tcp");
    let o = turnctl(&[&["probe", "--server", &server][..], &auth].concat());
    assert_fails_with(&o, "442");
    running.stop();
}

#[test]
fn probe_failures_are_explained() {
    let running = turnd::start(turnd::Config::for_tests()).unwrap();
    let udp = url("turn", running.udp[0], "");
    let o = turnctl(&[
        "probe",
        "--server",
        &udp,
        "--user",
        "dev",
        "--password",
        "wrong",
    ]);
    assert_fails_with(
        &o,
        "Allocate failed: 401 Unauthorized (wrong user or password?)",
    );
    let o = turnctl(&["probe", "--server", &udp]);
    assert_fails_with(&o, "give --user and --password, or --secret");

    // A UDP socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = url("turn", silent.local_addr().unwrap(), "");
    let o = turnctl(&[
        "probe",
        "--server",
        &addr,
        "-u",
        "dev",
        "-p",
        "devpass",
        "--timeout",
        "1s",
    ]);
    assert_fails_with(
        &o,
        &format!(
            "unreachable: no answer from {} within 1s",
            silent.local_addr().unwrap()
        ),
    );
    // A closed TCP port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let o = turnctl(&[
        "probe",
        "--server",
        &url("turn", closed, "?transport=tcp"),
        "-u",
        "dev",
        "-p",
        "devpass",
    ]);
    assert_fails_with(&o, "unreachable");
    running.stop();

    // A server whose policy denies loopback peers.
    let mut config = turnd::Config::for_tests();
    config.policy.allow_peers = vec![];
    let running = turnd::start(config).unwrap();
    let udp = url("turn", running.udp[0], "");
    let o = turnctl(&[
        "probe",
        "--server",
        &udp,
        "-u",
        "dev",
        "-p",
        "devpass",
        "--peer",
        "127.0.0.1:9",
    ]);
    assert_fails_with(&o, "CreatePermission failed: 403");
    assert_fails_with(&o, "(peer address denied by server policy)");
    assert_eq!(
        running.stats().allocations,
        0,
        "the failed probe released its allocation"
    );
    running.stop();
}

/// `turnctl creds` output: (username, password).
fn creds(secret: &str, user: &str) -> (String, String) {
    let o = Command::new(turnctl_bin())
        .args(["creds", "--user", user, "--ttl", "1h"])
        .env("TURNCTL_SECRET", secret)
        .output()
        .unwrap();
    assert_passes(&o);
    let out = String::from_utf8(o.stdout).unwrap();
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .trim()
            .to_string()
    };
    (field("username:"), field("password:"))
}

#[test]
fn creds_are_accepted_by_turnd() {
    let running = turnd::start(turnd::Config::for_tests()).unwrap();
    let (username, password) = creds("devsecret", "alice");
    assert!(username.ends_with(":alice"), "{username}");
    let udp = url("turn", running.udp[0], "");
    assert_passes(&turnctl(&[
        "probe",
        "--server",
        &udp,
        "--user",
        &username,
        "--password",
        &password,
    ]));
    let (_, wrong) = creds("othersecret", "alice");
    let o = turnctl(&[
        "probe",
        "--server",
        &udp,
        "--user",
        &username,
        "--password",
        &wrong,
    ]);
    assert_fails_with(&o, "401");

    // The RTCConfiguration carries the same kind of credentials.
    let o = Command::new(turnctl_bin())
        .args([
            "creds",
            "--user",
            "bob",
            "--ice-servers",
            &format!("stun:{}", running.udp[0]),
            &udp,
        ])
        .env("TURNCTL_SECRET", "devsecret")
        .output()
        .unwrap();
    assert_passes(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let turn = &v["iceServers"][1];
    let (u, p) = (
        turn["username"].as_str().unwrap(),
        turn["credential"].as_str().unwrap(),
    );
    assert_passes(&turnctl(&[
        "probe",
        "--server",
        &udp,
        "--user",
        u,
        "--password",
        p,
    ]));
    running.stop();
}

#[test]
fn load_at_a_modest_rate_loses_nothing() {
    let running = turnd::start(turnd::Config::for_tests()).unwrap();
    for (server, mode) in [
        (url("turn", running.udp[0], ""), "channel"),
        (url("turn", running.udp[0], ""), "send"),
        (url("turn", running.tcp[0], "?transport=tcp"), "channel"),
    ] {
        let o = turnctl(&[
            "load",
            "--server",
            &server,
            "-u",
            "dev",
            "-p",
            "devpass",
            "--allocations",
            "8",
            "--mode",
            mode,
            "--rate",
            "50",
            "--duration",
            "2s",
            "--json",
            "--quiet",
        ]);
        assert_passes(&o);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let p = &v["packets"];
        assert_eq!(v["allocations"]["ok"], 8, "{v}");
        assert!(p["sent"].as_u64().unwrap() >= 8 * 90, "{v}");
        assert_eq!(p["lost"], 0, "{v}");
        assert_eq!(p["received"], p["sent"], "{v}");
        assert!(v["rtt"]["p99_ms"].as_f64().unwrap() > 0.0, "{v}");
        assert_eq!(v["allocations"]["released"], 8, "{v}");
    }
    assert_eq!(running.stats().allocations, 0);
    running.stop();
}

/// The benchmark's options: UDP GSO sends, one echo peer per allocation, the audio/video
/// mix, and `--direct` (no server: turnctl's own ceiling).
#[test]
fn load_with_gso_av_mix_and_a_peer_each_loses_nothing() {
    let running = turnd::start(turnd::Config::for_tests()).unwrap();
    let server = url("turn", running.udp[0], "");
    for extra in [
        &["--gso", "--peers", "0"][..],
        &["--mix", "av", "--peers", "0"][..],
    ] {
        let mut args = vec![
            "load",
            "--server",
            &server,
            "-u",
            "dev",
            "-p",
            "devpass",
            "--allocations",
            "8",
            "--rate",
            "100",
            "--duration",
            "2s",
            "--json",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let o = turnctl(&args);
        assert_passes(&o);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let p = &v["packets"];
        assert_eq!(v["allocations"]["usable"], 8, "{extra:?}: {v}");
        assert!(p["sent"].as_u64().unwrap() >= 8 * 180, "{extra:?}: {v}");
        assert_eq!(p["lost"], 0, "{extra:?}: {v}");
        assert_eq!(p["at_peer"], p["sent"], "{extra:?}: {v}");
        let w = v["data_window_unix"].as_array().unwrap();
        assert!(
            w[1].as_f64().unwrap() - w[0].as_f64().unwrap() >= 1.9,
            "{v}"
        );
        assert!(v["turnctl_us_per_pkt"].as_f64().unwrap() > 0.0, "{v}");
        // The av mix is mostly 60-200 B audio by count but 1,000-1,200 B video by bytes:
        // several hundred bytes per datagram on average; the fixed mix 100 B + 4 B header.
        let bytes =
            v["relayed_mbps"].as_f64().unwrap() * 1e6 / 8.0 / v["relayed_pps"].as_f64().unwrap();
        if extra.contains(&"av") {
            assert!(
                (300.0..900.0).contains(&bytes),
                "{bytes} B per datagram: {v}"
            );
        } else {
            assert!(
                (100.0..110.0).contains(&bytes),
                "{bytes} B per datagram: {v}"
            );
        }
    }
    assert_eq!(running.stats().allocations, 0);
    running.stop();
    let o = turnctl(&[
        "load",
        "--direct",
        "--server",
        "turn:127.0.0.1:9",
        "--saturate",
        "--allocations",
        "4",
        "--peers",
        "0",
        "--gso",
        "--duration",
        "1s",
        "--json",
        "--quiet",
    ]);
    assert_passes(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["packets"]["received"].as_u64().unwrap() > 1000, "{v}");
}

/// coturn's `turnserver` in the foreground on loopback, killed (by PID) on drop.
struct Coturn {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Coturn {
    fn start(auth: &[&str]) -> Coturn {
        let bin = ["/usr/bin/turnserver", "/usr/local/bin/turnserver"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("coturn's turnserver is not installed: apt-get install coturn")
            });
        let dir = tempfile::tempdir().unwrap();
        // A port free for both UDP and TCP right now.
        let port = loop {
            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            let p = u.local_addr().unwrap().port();
            if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() && p < 40000 {
                break p;
            }
        };
        let d = dir.path().display();
        let child = Command::new(bin)
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                "--realm=turnd",
            ])
            .arg(format!("--listening-port={port}"))
            .args([
                "--min-port=45000",
                "--max-port=45999",
                "--allow-loopback-peers",
                "--no-cli",
            ])
            .args([
                "--no-tls",
                "--no-dtls",
                "--simple-log",
                "--no-software-attribute",
            ])
            .arg(format!("--log-file={d}/turn.log"))
            .arg(format!("--pidfile={d}/turnserver.pid"))
            .args(auth)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        let c = Coturn {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        c.wait_ready();
        c
    }

    /// Poll with STUN Binding requests until coturn answers (bounded).
    fn wait_ready(&self) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        req.extend_from_slice(&[7u8; 12]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            let _ = s.send_to(&req, self.addr);
            if matches!(s.recv_from(&mut buf), Ok((n, _)) if n >= 20 && buf[0] == 0x01) {
                return;
            }
        }
        panic!("turnserver did not answer on {} within 10 s", self.addr);
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn probe_passes_against_coturn_over_udp() {
    let coturn = Coturn::start(&["--lt-cred-mech", "--user=dev:devpass"]);
    let server = url("turn", coturn.addr, "?transport=udp");
    let o = turnctl(&[
        "probe",
        "--server",
        &server,
        "--user",
        "dev",
        "--password",
        "devpass",
    ]);
    assert_passes(&o);
    let o = turnctl(&[
        "probe",
        "--server",
        &server,
        "--user",
        "dev",
        "--password",
        "nope",
    ]);
    assert_fails_with(&o, "Allocate failed: 401");
}

#[test]
fn creds_are_accepted_by_coturn() {
    let coturn = Coturn::start(&["--use-auth-secret", "--static-auth-secret=coturnsecret"]);
    let server = url("turn", coturn.addr, "");
    let (username, password) = creds("coturnsecret", "carol");
    assert_passes(&turnctl(&[
        "probe",
        "--server",
        &server,
        "--user",
        &username,
        "--password",
        &password,
    ]));
    // --secret straight on the probe, from a file.
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "coturnsecret").unwrap();
    let path = f.path().to_str().unwrap();
    assert_passes(&turnctl(&[
        "probe",
        "--server",
        &server,
        "--secret-file",
        path,
        "--user",
        "dave",
    ]));
    let o = turnctl(&[
        "probe",
        "--server",
        &server,
        "--secret",
        "wrongsecret",
        "--user",
        "dave",
    ]);
    assert_fails_with(&o, "401");
}
