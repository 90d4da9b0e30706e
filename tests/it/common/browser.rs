//! Shared by the browser-tier tests (`browser_pages.rs`: Chromium, `browser_firefox.rs`:
//! Firefox): the node drivers in `tests/browser`, run with a deadline, their JSON result, and
//! the checks both browsers must pass. A missing tool fails the test with the install hint.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const INSTALL_HINT: &str = "install the browser test tools: `apt-get install -y chromium \
     firefox-esr libnss3-tools`, Node.js >= 20 with npm, then `PUPPETEER_SKIP_DOWNLOAD=1 npm ci \
     --prefix tests/browser`";

pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("screenshots")
}

/// Fail loudly, never skip, when node, an npm module or a program is missing.
pub fn check_tools(module: &str, programs: &[&str]) {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: {INSTALL_HINT}"
    );
    assert!(
        browser_dir().join("node_modules").join(module).is_dir(),
        "tests/browser/node_modules/{module} is missing: {INSTALL_HINT}"
    );
    for p in programs {
        assert!(Path::new(p).exists(), "{p} is missing: {INSTALL_HINT}");
    }
}

/// Run `node <script> <args>` in `tests/browser` with a deadline; its last stdout line is the
/// JSON result, which must not carry `error`.
pub fn run_driver(script: &str, args: &[&str], timeout: Duration) -> Value {
    let mut child = Command::new("node")
        .arg(browser_dir().join(script))
        .args(args)
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
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{script} took longer than {timeout:?}");
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
        "{script} failed: {}",
        v["error"]
    );
    v
}

/// The tester's diagnosis line of `transport` in `diagnosis` (an array): (level, text).
pub fn diagnosis<'a>(diagnosis: &'a Value, transport: &str) -> (&'a str, &'a str) {
    let d = diagnosis
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["transport"] == transport)
        .unwrap_or_else(|| panic!("no {transport} diagnosis: {diagnosis}"));
    (d["level"].as_str().unwrap(), d["text"].as_str().unwrap())
}

/// True if any object in `v` has the key `key`.
pub fn has_key(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(m) => m.contains_key(key) || m.values().any(|x| has_key(x, key)),
        Value::Array(a) => a.iter().any(|x| has_key(x, key)),
        _ => false,
    }
}

/// In a tester report: the relay measurement of `transport` connected through a relay and
/// moved data, and its diagnosis says it works. Returns the figures as one line.
pub fn check_measured(report: &Value, transport: &str) -> String {
    let m = &report["measures"][transport];
    assert_eq!(m["connected"], true, "{transport}: {m}");
    assert_eq!(m["pair"]["localType"], "relay", "{transport}: {m}");
    let echoed = m["probes"]["echoed"].as_u64().unwrap();
    let sent = m["probes"]["sent"].as_u64().unwrap();
    assert!(sent >= 50 && echoed * 10 >= sent * 8, "{transport}: {m}");
    for q in ["p50", "p95", "p99"] {
        assert!(m["rttMs"][q].as_f64().is_some(), "{transport}: {m}");
    }
    assert!(
        m["rttMs"]["p50"].as_f64() <= m["rttMs"]["p99"].as_f64(),
        "{m}"
    );
    assert!(
        m["throughput"]["bytes"].as_u64().unwrap() > 100_000,
        "{transport}: {m}"
    );
    assert!(!m["samples"].as_array().unwrap().is_empty(), "{m}");
    let (level, text) = diagnosis(&report["diagnosis"], transport);
    assert!(
        level == "ok" && text.contains("works"),
        "{transport}: {text}"
    );
    assert!(!has_key(report, "credential"), "credential in the report");
    format!(
        "{transport}: connect {} ms, rtt p50/p95/p99 {}/{}/{} ms, loss {} %, {} Mbit/s",
        m["connectMs"],
        m["rttMs"]["p50"],
        m["rttMs"]["p95"],
        m["rttMs"]["p99"],
        m["lossPct"],
        m["throughput"]["mbitPerS"]
    )
}

/// One side of a relay-only `/call` over `transport`: connected relay to relay over the
/// right protocol, media and chat flowing, and the live stats (bitrate, RTT, loss, jitter).
pub fn check_call_side(transport: &str, side: &str, s: &Value, with_dc_stats: bool) {
    let n = |k: &str| s[k].as_str().unwrap_or("0").parse::<u64>().unwrap_or(0);
    let f = |k: &str| s[k].as_str().and_then(|v| v.parse::<f64>().ok());
    assert_eq!(s["connection"], "connected", "{transport}/{side}: {s}");
    assert_eq!(s["localType"], "relay", "{transport}/{side}: {s}");
    assert_eq!(s["remoteType"], "relay", "{transport}/{side}: {s}");
    assert_eq!(s["relayProtocol"], transport, "{transport}/{side}: {s}");
    assert!(
        n("mediaIn") > 20_000 && n("mediaOut") > 20_000,
        "{transport}/{side}: {s}"
    );
    if with_dc_stats {
        assert!(n("dcIn") > 0 && n("dcOut") > 0, "{transport}/{side}: {s}");
    }
    assert!(n("chatIn") >= 1, "{transport}/{side}: {s}");
    assert!(s.get("rttMs").is_some(), "{transport}/{side}: {s}");
    assert!(
        n("kbpsIn") > 50 && n("kbpsOut") > 50,
        "{transport}/{side}: {s}"
    );
    assert!(
        f("lossPct").is_some_and(|l| (0.0..=100.0).contains(&l)),
        "{s}"
    );
    assert!(f("jitterMs").is_some_and(|j| j >= 0.0), "{s}");
}
