//! RFC 8489 SHA-256 credentials end to end, over real UDP sockets on loopback: an independent
//! Python client (hashlib/hmac only) allocates with PASSWORD-ALGORITHM SHA-256 and
//! MESSAGE-INTEGRITY-SHA256 (full and truncated, USERNAME and USERHASH) and is refused a
//! bid-down; MD5-only clients we did not write (coturn's uclient, aioice) still work with the
//! feature on. Needs python3, coturn and aioice (scripts/test installs them).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use turnd_proto::auth::PasswordAlgorithm;

/// turnd with `Config::for_tests()` plus `password_algorithms = ["sha256", "md5"]` and
/// `userhash = true`; stopped on drop.
struct Turnd(Option<turnd::Running>);

/// The HMAC-SHA256 REST secret these tests configure next to the SHA-1 one.
const SECRET_SHA256: &str = "rest-sha256-secret";

impl Turnd {
    fn start() -> Turnd {
        let mut c = turnd::Config::for_tests();
        c.auth.password_algorithms = vec![PasswordAlgorithm::Sha256, PasswordAlgorithm::Md5];
        c.auth.userhash = true;
        c.auth.secrets_sha256 = vec![SECRET_SHA256.into()];
        Turnd(Some(turnd::start(c).expect("turnd starts")))
    }

    fn addr(&self, ip: IpAddr) -> SocketAddr {
        listener(self.0.as_ref().unwrap(), ClientTransport::Udp, ip)
    }

    /// Waits (at most 5 s) for `allocations` allocations.
    fn assert_allocations_settle(&self, allocations: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.0.as_ref().unwrap().stats();
            if s.allocations == allocations {
                return;
            }
            assert!(Instant::now() < deadline, "want {allocations}, have {s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Turnd {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.stop();
        }
    }
}

/// Runs tests/interop/sha256_client.py; returns (exit ok, JSON line).
fn python_client(server: SocketAddr, user: &str, password: &str, args: &[&str]) -> (bool, String) {
    require_tool("python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sha256_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg("--server")
        .arg(server.ip().to_string())
        .arg("--port")
        .arg(server.port().to_string())
        .arg("--user")
        .arg(user)
        .arg("--password")
        .arg(password)
        .args(args);
    let out = cmd.output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.is_empty(), "no report; stderr: {stderr}");
    (out.status.success(), stdout)
}

fn sha256_allocates(ip: IpAddr, args: &[&str], want_len: u32) {
    let turnd = Turnd::start();
    let (ok, report) = python_client(turnd.addr(ip), USER, PASSWORD, args);
    assert!(ok, "{report}");
    assert!(report.contains("\"nonce_cookie\": true"), "{report}");
    assert!(
        report.contains("\"algorithms\": \"0002000000010000\""),
        "{report}"
    );
    assert!(
        report.contains(&format!("\"answer_mi_sha256_len\": {want_len}")),
        "{report}"
    );
    turnd.assert_allocations_settle(0);
}

#[test]
fn python_sha256_client_allocates_v4() {
    sha256_allocates(V4, &[], 32);
}

#[test]
fn python_sha256_client_allocates_v6() {
    sha256_allocates(V6, &[], 32);
}

#[test]
fn python_sha256_client_with_truncated_integrity() {
    sha256_allocates(V4, &["--mi-len", "16"], 16);
}

#[test]
fn python_sha256_client_with_userhash() {
    sha256_allocates(V4, &["--userhash"], 32);
}

#[test]
fn python_sha256_client_wrong_password_is_refused() {
    let turnd = Turnd::start();
    let (ok, report) = python_client(turnd.addr(V4), USER, "wrong", &[]);
    assert!(!ok, "{report}");
    assert!(report.contains("\"code\": 401"), "{report}");
    turnd.assert_allocations_settle(0);
}

#[test]
fn python_bid_down_is_refused_with_400() {
    let turnd = Turnd::start();
    let (ok, report) = python_client(turnd.addr(V4), USER, PASSWORD, &["--bid-down"]);
    assert!(ok, "{report}");
    assert!(report.contains("\"code\": 400"), "{report}");
    turnd.assert_allocations_settle(0);
}

/// MD5-only clients are unaffected: they ignore PASSWORD-ALGORITHMS and the cookie.
#[test]
fn uclient_channels_with_sha256_on_v4() {
    let turnd = Turnd::start();
    uclient_channels(turnd.addr(V4), 10);
}

#[test]
fn aioice_relays_with_sha256_on_v4() {
    let turnd = Turnd::start();
    aioice_relay(turnd.addr(V4), V4);
    turnd.assert_allocations_settle(0);
}

/// base64(HMAC-SHA256(secret, username)) computed by Python's `hmac` module.
fn python_rest_password_sha256(secret: &str, username: &str) -> String {
    require_tool("python3");
    let o = Command::new("python3")
        .args([
            "-c",
            "import base64,hashlib,hmac,sys; print(base64.b64encode(hmac.new(\
             sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).digest()).decode())",
            secret,
            username,
        ])
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A SHA-256 REST credential (password from Python) works with an MD5 client (uclient) and
/// with the SHA-256 client; the same name with the SHA-1 formula under this secret fails.
#[test]
fn rest_credentials_with_hmac_sha256() {
    let turnd = Turnd::start();
    let expiry = unix_now() + 3600;
    let username = format!("{expiry}:alice");
    let password = python_rest_password_sha256(SECRET_SHA256, &username);
    let (ok, report) = python_client(turnd.addr(V4), &username, &password, &[]);
    assert!(ok, "SHA-256 key: {report}");
    let peer = EchoPeer::start(V4);
    let u = Uclient::new(turnd.addr(V4))
        .user(&username, &password)
        .peer(peer.addr())
        .no_rtcp()
        .messages(5)
        .length(100);
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    let (same, sha1_password) = rest_credentials(SECRET_SHA256, "alice", expiry);
    assert_eq!(same, username);
    let (ok, report) = python_client(turnd.addr(V4), &username, &sha1_password, &[]);
    assert!(!ok && report.contains("\"code\": 401"), "{report}");
}

/// `turnctl creds --hmac sha256` prints what Python computes.
#[test]
fn turnctl_creds_hmac_sha256_matches_python() {
    let o = Command::new(turnctl_bin())
        .args([
            "creds", "--user", "bob", "--ttl", "1h", "--hmac", "sha256", "--json",
        ])
        .env("TURNCTL_SECRET", SECRET_SHA256)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (username, password) = (
        v["username"].as_str().unwrap(),
        v["password"].as_str().unwrap(),
    );
    assert!(username.ends_with(":bob"), "{username}");
    assert_eq!(
        password,
        python_rest_password_sha256(SECRET_SHA256, username)
    );
    let turnd = Turnd::start();
    let (ok, report) = python_client(turnd.addr(V4), username, password, &[]);
    assert!(ok, "{report}");
}
