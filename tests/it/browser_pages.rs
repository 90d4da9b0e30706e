//! Tier 3: turnd's pages in headless Chromium (Debian's `chromium`, driven by playwright-core
//! from `tests/browser`). turnd runs in-process at port 0; `tests/browser/pages.js` loads
//! `/`, `/tester` (right and wrong credentials) and `/call` (two browser contexts, relay only,
//! once per transport), takes screenshots into `target/screenshots/`, and prints what the
//! pages showed as JSON, which this test checks.
//!
//! Needs `node`, `tests/browser/node_modules` (`npm ci` there) and `/usr/bin/chromium`; a
//! missing piece fails the test with the install hint (it is never skipped).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run must finish within this.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);
const INSTALL_HINT: &str = "install the browser test tools: `apt-get install -y chromium`, \
     Node.js >= 20 with npm, then `npm ci --prefix tests/browser` (scripts/test does all three)";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("screenshots")
}

/// Fail loudly, never skip, when a tool is missing.
fn check_tools() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: {INSTALL_HINT}"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules/playwright-core is missing: {INSTALL_HINT}"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: {INSTALL_HINT}"
    );
}

/// Run the driver with a deadline; its last stdout line is the JSON result.
fn run_driver(base: &str, spki: &str) -> Value {
    let shots = screenshot_dir();
    let mut child = Command::new("node")
        .arg(browser_dir().join("pages.js"))
        .args([base, spki, shots.to_str().unwrap(), CHROMIUM])
        .current_dir(browser_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node: {e}; {INSTALL_HINT}"));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser run took longer than {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let last = out.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("driver output is not JSON ({e}); status {status}: {out}"));
    assert!(
        status.success() && v.get("error").is_none(),
        "driver failed: {}",
        v["error"]
    );
    v
}

fn check_tester(t: &Value) {
    for transport in ["udp", "tcp", "tls"] {
        assert_eq!(
            t["verdicts"][transport], "ok",
            "{transport}: {}",
            t["reasons"][transport]
        );
        let relays: Vec<&Value> = t["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["transport"] == transport && c["type"] == "relay")
            .collect();
        assert!(!relays.is_empty(), "no {transport} relay candidate: {t}");
        assert!(
            relays.iter().all(|c| c["relayProtocol"] == transport),
            "{transport}: {relays:?}"
        );
    }
}

fn check_tester_wrong_password(t: &Value) {
    for transport in ["udp", "tcp", "tls"] {
        assert_eq!(t["verdicts"][transport], "fail", "{transport}: {t}");
        let reason = t["reasons"][transport].as_str().unwrap();
        assert!(reason.contains("401"), "{transport}: {reason}");
        assert!(
            t["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["transport"] == transport && e["code"] == 401),
            "{transport}: no 401 error row: {t}"
        );
    }
    let relays = t["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "relay")
        .count();
    assert_eq!(relays, 0, "relay candidates with a wrong password: {t}");
}

fn check_call(transport: &str, c: &Value) {
    for side in ["a", "b"] {
        let s = &c[side];
        let n = |k: &str| s[k].as_str().unwrap_or("0").parse::<u64>().unwrap_or(0);
        assert_eq!(s["connection"], "connected", "{transport}/{side}: {s}");
        assert_eq!(s["localType"], "relay", "{transport}/{side}: {s}");
        assert_eq!(s["remoteType"], "relay", "{transport}/{side}: {s}");
        assert_eq!(s["relayProtocol"], transport, "{transport}/{side}: {s}");
        assert!(
            n("mediaIn") > 20_000 && n("mediaOut") > 20_000,
            "{transport}/{side}: {s}"
        );
        assert!(n("dcIn") > 0 && n("dcOut") > 0, "{transport}/{side}: {s}");
        assert!(n("chatIn") >= 1, "{transport}/{side}: {s}");
        assert!(s.get("rttMs").is_some(), "{transport}/{side}: {s}");
    }
    let chat = c["chatB"].as_str().unwrap();
    assert!(
        chat.contains(&format!("hello from A over {transport}")),
        "{chat}"
    );
}

#[test]
fn pages_work_in_headless_chromium_over_every_transport() {
    check_tools();
    let running = turnd::start(turnd::Config::for_tests()).expect("turnd starts");
    let base = format!("http://{}", running.http.expect("HTTP listener"));
    let spki = running
        .certificate
        .as_ref()
        .and_then(|c| c.spki_sha256())
        .expect("dev certificate");
    let v = run_driver(&base, &spki);
    running.stop();

    eprintln!("chromium {}, browser run {} ms", v["chromium"], v["ms"]);
    assert_eq!(
        v["index"]["turn"].as_array().unwrap().len(),
        3,
        "{}",
        v["index"]
    );
    check_tester(&v["tester"]);
    check_tester_wrong_password(&v["testerWrong"]);
    for transport in ["udp", "tcp", "tls"] {
        let c = &v["calls"][transport];
        check_call(transport, c);
        let s = &c["a"];
        eprintln!(
            "call over {transport}: connected in {} ms; {} <-> {}; rtt {} ms; media in {} B",
            c["connectMs"], s["local"], s["remote"], s["rttMs"], s["mediaIn"]
        );
    }
    for shot in [
        "index",
        "tester",
        "tester-wrong-password",
        "call-udp",
        "call-phone",
    ] {
        let p = screenshot_dir().join(format!("{shot}.png"));
        assert!(p.is_file(), "missing screenshot {}", p.display());
    }
}
